//! What central's loop holds between events, and one handler for each kind of event it selects
//! (`on_*`): the link coming up, the roles loaded after a takeover, the meeting tick, stored
//! watermarks, the acknowledgement tick, room in the store thread's queue, and a message on
//! each of its three links. [`super::run`] sets it up; [`Central::serve`] picks the next event.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cuntong_core::lease::{self, Answer, Tenure};
use cuntong_core::topic::control_request;
use cuntong_terminal::link::{Incoming, Link, unix_ms};
use cuntong_terminal::throttle::LogLimiter;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::confirm::{Confirmations, StoredMarks, confirm};
use super::records::clear_retained_junk;
use super::requests::answer_command;
use super::roles::Roles;
use super::{CentralOptions, CentralStats, RETENTION_EVERY_MS, shed, to_record};
use crate::gaps::GapWatch;
use crate::store::{
    Record, RecordPermit, RecordSender, StateWriter, StoreError, TrySendError, Writer,
};

/// How long the meeting or control link may be down while the ingest link is up before central
/// says so.
const LINK_DOWN_MS: u64 = 10_000;

/// Where central's events come from: what [`Central::serve`] selects on.
pub(super) struct Events {
    pub(super) stop: CancellationToken,
    /// Whether the meeting link is connected.
    pub(super) meeting_up: watch::Receiver<bool>,
    /// The roles loaded after a takeover, with the epoch they were loaded for.
    pub(super) loaded: mpsc::Receiver<(u64, Roles)>,
    /// The lease thread's answers, with when each was asked.
    pub(super) lease_answers: mpsc::Receiver<(Answer, u64)>,
    /// Watermarks of the groups the store thread committed.
    pub(super) stored_marks: Arc<StoredMarks>,
    /// The store thread's queue, for room in it while records wait.
    pub(super) records: RecordSender,
    pub(super) requests: mpsc::Receiver<Incoming>,
    pub(super) meeting_uplinks: mpsc::Receiver<Incoming>,
    pub(super) incoming: mpsc::Receiver<Incoming>,
}

/// Central's state between events.
pub(super) struct Central {
    pub(super) opts: CentralOptions,
    pub(super) stats: Arc<CentralStats>,
    pub(super) instance: String,
    pub(super) tenure: Tenure,
    /// The roles, while this instance holds the host role.
    pub(super) roles: Option<Roles>,
    /// The fleet's records come in here; their confirmations go out here.
    pub(super) ingest_link: Link,
    /// The sites' meeting uplinks come in here; what the roles publish goes out here.
    pub(super) meeting_link: Link,
    /// The staff's requests come in here; their answers go out here.
    pub(super) control_link: Link,
    pub(super) writer: Arc<Writer>,
    pub(super) writer_state: StateWriter,
    pub(super) records: RecordSender,
    /// Where the roles loaded after a takeover are handed back, with their epoch.
    pub(super) loaded: mpsc::Sender<(u64, Roles)>,
    pub(super) to_confirm: Confirmations,
    pub(super) gaps: GapWatch,
    pub(super) last_meeting_tick: u64,
    pub(super) last_retention: u64,
    /// Since when the meeting and the control link have been down while the ingest link was
    /// up.
    pub(super) quiet_link_down_since: [Option<u64>; 2],
    /// Received records waiting for room in the store thread's queue (see
    /// [`super::LOOKAHEAD`]).
    pub(super) ahead: VecDeque<Record>,
    pub(super) log: LogLimiter,
}

impl Central {
    /// Handles each event as it comes until `events.stop` fires or a link or the store thread
    /// ends; then flushes and closes (see [`Central::finish`]).
    pub(super) async fn serve(mut self, events: Events) -> Result<(), StoreError> {
        let Events {
            stop,
            mut meeting_up,
            mut loaded,
            mut lease_answers,
            stored_marks,
            records,
            mut requests,
            mut meeting_uplinks,
            mut incoming,
        } = events;
        let mut ack_tick = tokio::time::interval(self.opts.ack_interval);
        ack_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut meeting_tick = tokio::time::interval(Duration::from_millis(200));
        meeting_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Under systemd: ready now (the store is open, the links started), then a ping from
        // this loop, so that a loop that hangs is restarted.
        let mut service = cuntong_terminal::service::Service::from_env();
        service.ready(&format!("central {}", self.instance));
        loop {
            let flow = tokio::select! {
                _ = stop.cancelled() => {
                    service.stopping();
                    break;
                }
                () = service.watchdog() => continue,
                changed = meeting_up.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    self.on_meeting_link(*meeting_up.borrow_and_update());
                    continue;
                }
                Some((epoch, roles)) = loaded.recv() => {
                    self.on_loaded(epoch, roles);
                    continue;
                }
                _ = meeting_tick.tick() => self.on_meeting_tick(&mut lease_answers),
                () = stored_marks.ready.notified() => {
                    self.on_stored(stored_marks.take());
                    continue;
                }
                _ = ack_tick.tick() => {
                    self.on_ack_tick();
                    continue;
                }
                room = records.room(), if !self.ahead.is_empty() => match room {
                    Ok(room) => {
                        self.on_room(room);
                        continue;
                    }
                    Err(_) => break,
                },
                m = requests.recv() => match m {
                    Some(m) => {
                        self.on_request(m);
                        continue;
                    }
                    None => break,
                },
                m = meeting_uplinks.recv() => match m {
                    Some(m) => {
                        self.on_meeting_uplink(m);
                        continue;
                    }
                    None => break,
                },
                m = incoming.recv() => match m {
                    Some(m) => self.on_record_message(m),
                    None => break,
                },
            };
            if flow.is_break() {
                break;
            }
        }
        // A loader of roles waiting to hand them over gives up, and with it its hold on the
        // writer.
        drop((records, loaded));
        self.finish().await
    }

    /// Does what the tenure says: loads the roles (off the loop; they arrive through
    /// `loaded`) or gives them up.
    fn change_roles(&mut self, change: lease::Change) {
        match change {
            lease::Change::Start { epoch } => {
                let instance = &self.instance;
                tracing::warn!(%instance, epoch, "taking over the host role: loading meetings and alarms");
                let (opts, writer, loaded) =
                    (self.opts.clone(), self.writer.clone(), self.loaded.clone());
                let runtime = tokio::runtime::Handle::current();
                tokio::task::spawn_blocking(move || {
                    let _in_runtime = runtime.enter();
                    match opts
                        .db
                        .open()
                        .and_then(|s| Roles::load(s.as_ref(), &opts, &writer, epoch))
                    {
                        Ok(r) => {
                            let _ = loaded.blocking_send((epoch, r));
                        }
                        Err(e) => tracing::error!(error = %e, "cannot load the host role's state"),
                    }
                });
            }
            lease::Change::Stop { epoch } => {
                if self.roles.take().is_some() {
                    let instance = &self.instance;
                    tracing::warn!(%instance, epoch, "the host role is no longer ours: standing by");
                }
            }
        }
    }

    /// The meeting link came up (`up`) or went down: meetings are published again.
    pub(super) fn on_meeting_link(&mut self, up: bool) {
        if up && let Some(r) = self.roles.as_mut() {
            r.meetings.republish();
            r.meetings.drain(&self.control_link, &self.meeting_link);
        }
    }

    /// Roles loaded after a takeover: taken only if the role is still ours, under the epoch
    /// they were loaded for.
    pub(super) fn on_loaded(&mut self, epoch: u64, mut loaded: Roles) {
        if self.tenure.epoch() == Some(epoch) {
            let instance = &self.instance;
            tracing::warn!(%instance, epoch, "holding the host role");
            loaded.meetings.republish();
            loaded
                .meetings
                .drain(&self.control_link, &self.meeting_link);
            self.roles = Some(loaded);
        }
    }

    /// Every 200 ms: the lease judged (after every answer that arrived), what waits published;
    /// the hosts' clocks once a second; retention once an hour. Breaks if the store thread
    /// is gone.
    pub(super) fn on_meeting_tick(
        &mut self,
        lease_answers: &mut mpsc::Receiver<(Answer, u64)>,
    ) -> ControlFlow<()> {
        let now = unix_ms();
        // A loop busy for a while has not lost the lease if its renewals came meanwhile.
        while let Ok((answer, asked)) = lease_answers.try_recv() {
            if let Some(change) = self.tenure.answered(answer, asked, now) {
                self.change_roles(change);
            }
        }
        if let Some(change) = self.tenure.tick(now) {
            self.change_roles(change);
        }
        if let Some(r) = self.roles.as_mut() {
            if now >= self.last_meeting_tick + 1000 {
                self.last_meeting_tick = now;
                r.meetings.tick(now);
                // Offline alarms need the fleet's presence, which the ingest link brings.
                r.alarms.tick(now, self.ingest_link.is_connected());
            }
            r.rollouts.tick(now, false);
            r.gather_outbound();
            // Retention is the host's too: once an hour, and after taking over.
            if let Some(keep) = self.opts.retain
                && now >= self.last_retention.saturating_add(RETENTION_EVERY_MS)
            {
                self.last_retention = now;
                let cut = now.saturating_sub(keep.as_millis() as u64);
                if self.writer_state.drop_before(cut).is_err() {
                    return ControlFlow::Break(());
                }
            }
            r.meetings.lay_out(now);
            r.meetings.drain(&self.control_link, &self.meeting_link);
            self.stats
                .meeting_dropped
                .store(r.meetings.dropped(), Ordering::Relaxed);
            self.stats
                .meeting_waiting
                .store(r.meetings.waiting() as u64, Ordering::Relaxed);
        }
        self.watch_quiet_links(now);
        let oversized = [&self.ingest_link, &self.meeting_link, &self.control_link]
            .iter()
            .map(|l| l.status().refused_oversized)
            .sum();
        self.stats.oversized.store(oversized, Ordering::Relaxed);
        ControlFlow::Continue(())
    }

    /// Says so when the meeting or the control link has been down for [`LINK_DOWN_MS`] while
    /// the ingest link is up (its identity refused, say), once a minute each: the ingest link
    /// says what the broker does to all of them.
    fn watch_quiet_links(&mut self, now: u64) {
        let links = [
            ("meeting", &self.meeting_link),
            ("control", &self.control_link),
        ];
        for ((name, link), down_since) in links.into_iter().zip(&mut self.quiet_link_down_since) {
            if link.is_connected() || !self.ingest_link.is_connected() {
                *down_since = None;
                continue;
            }
            let since = *down_since.get_or_insert(now);
            if now.saturating_sub(since) >= LINK_DOWN_MS
                && let Some(more) = self.log.allow(name)
            {
                let status = link.status();
                let broker = status
                    .broker
                    .unwrap_or_else(|| self.opts.broker.to_string());
                let why = status.last_error.unwrap_or_else(|| "no answer".into());
                let waiting = match name {
                    "meeting" => "the meetings wait for it",
                    _ => "the staff's requests wait for it",
                };
                tracing::warn!(
                    "the {name} link cannot reach the broker at {broker}: {why}; {waiting}{more}"
                );
            }
        }
    }

    /// The store thread committed groups: their watermarks (and numbering clashes) wait for
    /// the next acknowledgement tick.
    pub(super) fn on_stored(&mut self, stored: Confirmations) {
        for (terminal, marks) in &stored.marks {
            self.gaps.stored(*terminal, *marks);
        }
        self.to_confirm.extend(stored);
    }

    /// The acknowledgement tick: what was stored is confirmed to its terminals.
    pub(super) fn on_ack_tick(&mut self) {
        confirm(&self.ingest_link, &mut self.to_confirm, &self.stats);
    }

    /// Room in the store thread's queue: the oldest record waiting takes it.
    pub(super) fn on_room(&mut self, room: RecordPermit<'_>) {
        if let Some(r) = self.ahead.pop_front() {
            room.send(r);
        }
    }

    /// A request on the control link: the instance holding the host role answers; the others
    /// stand by.
    pub(super) fn on_request(&mut self, msg: Incoming) {
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        let Some(client) = msg.topic.strip_prefix(&control_request("")) else {
            return;
        };
        if let Some(r) = self.roles.as_mut() {
            answer_command(
                r,
                (&self.meeting_link, &self.control_link),
                &self.writer_state,
                &self.log,
                client,
                &msg.payload,
            );
        }
    }

    /// A site's meeting uplink, on the meeting link.
    pub(super) fn on_meeting_uplink(&mut self, msg: Incoming) {
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        // What a terminal may have left retained on its uplink (cleared below if junk).
        let left = (!msg.payload.is_empty()).then(|| (msg.topic.clone(), msg.retain));
        // Joins are answered by a layout of their session, on the meeting tick (every 200 ms):
        // a layout costs the whole session, so one for each join would make a province's join
        // storm quadratic.
        if let Some(r) = self.roles.as_mut()
            && r.meetings.on_message(&msg, unix_ms())
        {
            r.meetings.drain(&self.control_link, &self.meeting_link);
        }
        if let Some((topic, retained)) = left {
            clear_retained_junk(&self.meeting_link, &self.log, &topic, retained, false);
        }
    }

    /// A message on the ingest link: a record for the store. Breaks if the store thread is
    /// gone.
    pub(super) fn on_record_message(&mut self, msg: Incoming) -> ControlFlow<()> {
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        // What a terminal may have left retained on its uplink (cleared below if junk).
        let left = (!msg.payload.is_empty()).then(|| (msg.topic.clone(), msg.retain));
        let Some(record) = to_record(msg, unix_ms()) else {
            return ControlFlow::Continue(());
        };
        self.declare_lost_before(&record);
        if let Some((topic, retained)) = left {
            let refused = matches!(record, Record::Rejected { .. });
            clear_retained_junk(&self.ingest_link, &self.log, &topic, retained, refused);
        }
        if let Record::Rejected { reason, .. } = &record {
            // A flood of bad messages costs a line a minute (the counter has them all).
            if let Some(more) = self.log.allow("rejected") {
                tracing::warn!("rejected: {reason}{more}");
            }
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(r) = self.roles.as_mut() {
            let now = unix_ms();
            r.alarms.record(&record, now);
            r.meetings.record(&record);
            r.rollouts.record(&record, now);
            r.gather_outbound();
        }
        self.store(record)
    }

    /// A gap the terminal of `record` keeps sending past is declared lost, ahead of `record`.
    fn declare_lost_before(&mut self, record: &Record) {
        let Some((terminal, stream, seq)) = record.numbered() else {
            return;
        };
        let Some((first, last)) = self.gaps.received(terminal, stream, seq) else {
            return;
        };
        tracing::warn!(
            %terminal,
            stream = stream.as_str(),
            first,
            last,
            "records never arrived though the terminal sent what follows {} more times: declared lost",
            crate::gaps::GIVE_UP_ROUNDS
        );
        let lost = Record::Lost {
            terminal,
            stream,
            first,
            last,
        };
        if let Some(r) = self.roles.as_mut() {
            r.alarms.record(&lost, unix_ms());
            r.gather_outbound();
        }
        self.ahead.push_back(lost);
    }

    /// Hands a record to the store thread, or keeps it in `ahead` while the store thread is
    /// behind, so the loop keeps reading (commands and meeting uplinks behind it are answered
    /// at once); beyond [`super::LOOKAHEAD`], what terminals send again is shed and counted.
    fn store(&mut self, record: Record) -> ControlFlow<()> {
        if shed(&record, self.ahead.len()) {
            let n = self.stats.shed.fetch_add(1, Ordering::Relaxed) + 1;
            if let Some(more) = self.log.allow("shed") {
                tracing::warn!(
                    shed = n,
                    "the store is {} records behind: shedding what terminals send again{more}",
                    self.ahead.len()
                );
            }
            return ControlFlow::Continue(());
        }
        if !self.ahead.is_empty() {
            self.ahead.push_back(record);
            return ControlFlow::Continue(());
        }
        match self.records.try_send(record) {
            Ok(()) => ControlFlow::Continue(()),
            Err(TrySendError::Full(r)) => {
                self.ahead.push_back(*r);
                ControlFlow::Continue(())
            }
            Err(TrySendError::Gone) => ControlFlow::Break(()),
        }
    }

    /// Stops: the meetings saved, the link shut, what waited handed to the store thread, which
    /// writes everything and stops.
    pub(super) async fn finish(self) -> Result<(), StoreError> {
        let Central {
            mut roles,
            ingest_link,
            meeting_link,
            control_link,
            writer,
            writer_state,
            records,
            loaded,
            ahead,
            ..
        } = self;
        if let Some(r) = roles.as_mut()
            && let Err(e) = r.meetings.save_all()
        {
            tracing::error!(error = %e, "cannot save meetings at shutdown");
        }
        ingest_link.shutdown();
        meeting_link.shutdown();
        control_link.shutdown();
        for r in ahead {
            if records.send(r).await.is_err() {
                break;
            }
        }
        drop((records, writer_state, roles, loaded));
        let writer = Arc::try_unwrap(writer).map_err(|_| StoreError::Crashed)?;
        tokio::task::spawn_blocking(move || writer.join())
            .await
            .map_err(|_| StoreError::Crashed)?
    }
}
