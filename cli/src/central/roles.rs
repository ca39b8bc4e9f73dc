//! The roles only one central instance plays at a time, under the lease on the host role: the
//! meeting host, the alarm engine and the rollouts, loaded from the store when taken.

use cuntong_terminal::link::unix_ms;

use super::CentralOptions;
use crate::alarms::AlarmService;
use crate::host_lease::HOST_ROLE;
use crate::meetings::MeetingService;
use crate::rollouts::RolloutService;
use crate::store::{StoreError, Writer};

/// The roles only one central instance plays at a time, played by the one that holds the
/// lease on them: the meeting host (with its scheduled sessions), the alarm engine (with its
/// hooks) and the rollouts.
pub(super) struct Roles {
    pub(super) meetings: MeetingService,
    pub(super) alarms: AlarmService,
    pub(super) rollouts: RolloutService,
}

impl Roles {
    /// Hands what the alarms and rollouts have for the boxes to the meeting host's queue,
    /// which publishes it.
    pub(super) fn gather_outbound(&mut self) {
        for m in self
            .alarms
            .take_outbound()
            .into_iter()
            .chain(self.rollouts.take_outbound())
        {
            self.meetings.push(m);
        }
    }
}

impl Roles {
    /// Loads the roles' state from the store (blocking: the meetings and alarms as stored).
    /// Everything they write is fenced by `epoch`.
    pub(super) fn load(
        store: &dyn crate::store::Store,
        opts: &CentralOptions,
        writer: &Writer,
        epoch: u64,
    ) -> Result<Roles, StoreError> {
        let state = writer.state.fenced(HOST_ROLE, epoch);
        Ok(Roles {
            meetings: MeetingService::open(
                store,
                opts.meeting_heartbeat,
                state.clone(),
                writer.names.clone(),
            )?
            .recording_at(opts.media_host),
            alarms: AlarmService::open(
                store,
                opts.alarms.clone(),
                state.clone(),
                writer.names.clone(),
                unix_ms(),
            )?,
            rollouts: RolloutService::open(store, state, unix_ms())?,
        })
    }
}
