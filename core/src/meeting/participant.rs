//! The participant (on every terminal): follows the sessions its site is invited to, joins
//! them (on its own for scheduled ones, per configuration), applies the chair's desired state
//! to the media engine, answers roll calls, raises and lowers its hand, and tells the host what
//! it applied.
//!
//! [`Participant::handle`] takes an [`Input`] and the time and returns [`Output`]s: uplink
//! messages to publish and [`MediaCommand`]s for the media engine. It repeats its join until
//! admitted (backing off, each site at its own pace) and its status on every heartbeat of the
//! session (the host sets the pace), so lost messages cost a retry, never
//! correctness; after a reconnect it re-announces itself and drops sessions whose retained
//! state did not come back (they ended while it was away).

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

use super::{
    Answer, Applied, Downlink, Hand, Kind, MediaPlan, MediaProfile, MeetingId, MeetingState,
    Status, Tier, Uplink,
};
use crate::backoff::{Backoff, spread};
use crate::terminal_id::TerminalId;

/// Which invitations a terminal accepts without anybody at the box.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcceptPolicy {
    /// Scheduled sessions, when they start; ad hoc ones wait for the site's operator.
    Scheduled,
    /// Everything (unattended boxes, the simulator).
    All,
    /// Nothing: the operator accepts each one.
    Manual,
}

/// The default for [`ParticipantConfig::join_retry`].
pub const JOIN_RETRY: Backoff = Backoff {
    min: Duration::from_secs(3),
    max: Duration::from_secs(60),
};

/// The back-off of a site's joins in a session whose heartbeat is `heartbeat_ms`: `retry`,
/// its first repeat no sooner than a quarter of the heartbeat (a back-off's first wait is drawn
/// from the upper half of its `min`, so `min` is at least half the heartbeat). The host paces a
/// session's heartbeat to its size (a province's 54,000 sites: 80 s), and the plans of so large
/// a session take seconds to cross the brokers: a site repeating its join meanwhile only adds a
/// join to the queues its own plan waits in, and a province's sites repeating together double
/// the storm that slows the plans. Joins travel at QoS 1 and a site joins again at once when
/// its link comes back: a repeat is for the rare join or plan lost on the way.
pub fn paced_join_retry(retry: Backoff, heartbeat_ms: u32) -> Backoff {
    let min = retry
        .min
        .max(Duration::from_millis(u64::from(heartbeat_ms) / 2));
    Backoff {
        min,
        max: retry.max.max(min),
    }
}

/// How a participant behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParticipantConfig {
    pub accept: AcceptPolicy,
    /// After a reconnect, how long the retained states have to come back before the sessions
    /// they do not bring back are taken as ended.
    pub reconnect_grace_ms: u64,
    /// When an unanswered join is repeated: from 3 s (or half the session's heartbeat where
    /// that is longer, see [`paced_join_retry`]), doubling to a minute, each site at its own
    /// point of the range. A province's 54,000 sites waiting for their plans at a fixed
    /// 3 s would send 18,000 joins a second to a host busy laying them out.
    pub join_retry: Backoff,
    /// What the link carries now.
    pub tier: Tier,
    /// Where this terminal receives media.
    pub rtp_port: u16,
    /// The address its relay reaches it at.
    pub media_host: Option<String>,
    /// Where its relay role receives, if it is a relay.
    pub relay: Option<String>,
    /// A number that differs at each start of the process (the owner draws it), so that a
    /// joining after a restart is never taken for a repeat of one from before: the host keeps
    /// a repeat's SSRC, and a restarted media engine must never reuse one.
    pub boot: u64,
}

impl Default for ParticipantConfig {
    fn default() -> ParticipantConfig {
        ParticipantConfig {
            accept: AcceptPolicy::Scheduled,
            reconnect_grace_ms: 10_000,
            join_retry: JOIN_RETRY,
            tier: Tier::Full,
            rtp_port: 0,
            media_host: None,
            relay: None,
            boot: 0,
        }
    }
}

/// Where a session is for this site.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Invited; not accepted (yet).
    Invited,
    /// Accepted; waiting for the host's media plan.
    Joining,
    Joined,
    Declined,
    Left,
    Ended,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Invited => "invited",
            Phase::Joining => "joining",
            Phase::Joined => "joined",
            Phase::Declined => "declined",
            Phase::Left => "left",
            Phase::Ended => "ended",
        }
    }
}

/// One session as this site sees it.
#[derive(Clone, Debug)]
pub struct Session {
    /// The newest desired state received.
    pub state: MeetingState,
    pub phase: Phase,
    pub plan: Option<MediaPlan>,
    /// What the media engine was last told; `None` while media is off.
    pub applied: Option<Applied>,
    /// The answer to the newest roll call seen.
    pub answer: Option<Answer>,
    pub hand: Hand,
    /// The host's answer to this box's last chair operation: the operation, and why it was
    /// refused if it was.
    pub chair_answer: Option<(String, Option<String>)>,
    /// Joins sent since the site last started joining, when the last went, and when the next
    /// is due.
    joins_sent: u32,
    last_join_ms: u64,
    /// The number every join of the current joining carries (drawn at its first join).
    joining: u64,
    next_join_ms: u64,
    last_status_ms: u64,
    /// The state version the last status reported.
    reported: u64,
    /// After a reconnect: the retained state must come back by then, or the session ended.
    confirm_by: Option<u64>,
}

impl Session {
    /// Joining (again) from the start: a join now, the retries from the shortest wait.
    fn start_joining(&mut self) {
        self.phase = Phase::Joining;
        self.joins_sent = 0;
        self.next_join_ms = 0;
    }

    /// When the join sent last is repeated, at the pace of the state known now: a session
    /// created at the default heartbeat and paced at its start (a province's: 80 s) moves the
    /// repeat of a join sent before the start out with it, or a province's sites, invited at
    /// creation, would all repeat their joins seconds into the start's storm.
    fn schedule_next_join(&mut self, retry: Backoff, me: &TerminalId, id: &MeetingId) {
        let k = self.joins_sent.saturating_sub(1);
        let wait =
            paced_join_retry(retry, self.state.spec.heartbeat_ms).delay(k, spread(&(me, id, k)));
        self.next_join_ms = self
            .last_join_ms
            .saturating_add(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
    }

    fn media_on(&self) -> bool {
        self.phase == Phase::Joined && self.state.status == Status::Live && self.plan.is_some()
    }
}

/// What the participant is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A retained meeting state arrived (on one of the site's meeting topics).
    State(alloc::boxed::Box<MeetingState>),
    /// A meeting topic's retained state was cleared: the session is over.
    Cleared(MeetingId),
    Downlink(Downlink),
    /// Time passed (call at least every second or so).
    Tick,
    /// The link connected again.
    Reconnected,
    Accept(MeetingId),
    Decline(MeetingId, String),
    RaiseHand(MeetingId),
    LowerHand(MeetingId),
    Leave(MeetingId),
    /// Asks central for a video call to another terminal (under a fresh id from the owner).
    Call(MeetingId, TerminalId),
    /// A chair operation from this box, which is a delegated chair of the session.
    Chair(MeetingId, super::host::ChairOp),
    /// Asks to share content from this box (双流), or stops sharing it.
    ShareContent(MeetingId, bool),
    /// The link's capacity changed (from link telemetry): later joins use this tier, and
    /// joined sessions join again with it.
    SetTier(Tier),
}

/// What the media engine must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MediaCommand {
    Start {
        meeting: MeetingId,
        plan: MediaPlan,
        profile: MediaProfile,
    },
    /// Apply mute, role and the site shown.
    Apply {
        meeting: MeetingId,
        applied: Applied,
    },
    Stop {
        meeting: MeetingId,
    },
    /// This box relays: forward by `plan`.
    Relay {
        meeting: MeetingId,
        plan: super::relays::RelayPlan,
    },
}

/// What the participant asks its owner to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Publish on the terminal's `mt` uplink.
    Send(Uplink),
    Media(MediaCommand),
    /// The chair has this box (a SIP gateway) call a room system into a session it is
    /// invited to.
    Dial {
        meeting: MeetingId,
        uri: String,
    },
}

/// Whether `policy` accepts the session in `state` without the site's operator. The chair's
/// own box always joins its sessions (a caller joins its call).
fn auto_accepts(policy: AcceptPolicy, me: &TerminalId, state: &MeetingState) -> bool {
    if state.spec.chair.as_ref() == Some(me) && state.status == Status::Live {
        return true;
    }
    match policy {
        AcceptPolicy::All => true,
        AcceptPolicy::Scheduled => {
            state.spec.starts_ms.is_some()
                && state.status == Status::Live
                && state.spec.kind != Kind::Call
        }
        AcceptPolicy::Manual => false,
    }
}

/// Ended sessions remembered (so that a stale copy does not bring one back), at most.
const ENDED_KEPT: usize = 64;

/// The meeting side of one terminal.
#[derive(Clone, Debug)]
pub struct Participant {
    me: TerminalId,
    cfg: ParticipantConfig,
    sessions: BTreeMap<MeetingId, Session>,
}

impl Participant {
    pub fn new(me: TerminalId, cfg: ParticipantConfig) -> Participant {
        Participant {
            me,
            cfg,
            sessions: BTreeMap::new(),
        }
    }

    pub fn id(&self) -> &TerminalId {
        &self.me
    }

    pub fn sessions(&self) -> &BTreeMap<MeetingId, Session> {
        &self.sessions
    }

    pub fn session(&self, id: &MeetingId) -> Option<&Session> {
        self.sessions.get(id)
    }

    /// When a [`Input::Tick`] next has something to do (a join to repeat, a status due, a
    /// reconnect's grace over); `None` while nothing is waiting for time.
    pub fn next_due_ms(&self) -> Option<u64> {
        self.sessions
            .values()
            .flat_map(|s| {
                let next = match s.phase {
                    Phase::Joining => Some(s.next_join_ms),
                    Phase::Joined => {
                        Some(s.last_status_ms + u64::from(s.state.spec.heartbeat_ms).max(500))
                    }
                    _ => None,
                };
                next.into_iter().chain(s.confirm_by)
            })
            .min()
    }

    /// Handles one input at `now_ms`.
    pub fn handle(&mut self, input: Input, now_ms: u64) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::State(state) => self.on_state(*state, now_ms, &mut out),
            Input::Cleared(id) => self.end(&id, &mut out),
            Input::Downlink(d) => self.on_downlink(d, now_ms, &mut out),
            Input::Tick => self.on_tick(now_ms, &mut out),
            Input::Reconnected => {
                let deadline = now_ms + self.cfg.reconnect_grace_ms;
                let ids: Vec<MeetingId> = self.sessions.keys().copied().collect();
                for id in ids {
                    if let Some(s) = self.sessions.get_mut(&id)
                        && s.phase != Phase::Ended
                    {
                        s.confirm_by = Some(deadline);
                    }
                    self.announce(&id, now_ms, &mut out);
                }
            }
            Input::Accept(id) => {
                if let Some(s) = self.sessions.get_mut(&id)
                    && matches!(s.phase, Phase::Invited | Phase::Declined | Phase::Left)
                    && s.state.status != Status::Ended
                {
                    s.start_joining();
                    self.announce(&id, now_ms, &mut out);
                }
            }
            Input::Decline(id, reason) => {
                if let Some(s) = self.sessions.get_mut(&id)
                    && matches!(s.phase, Phase::Invited | Phase::Joining)
                {
                    s.phase = Phase::Declined;
                    out.push(Output::Send(Uplink::Decline {
                        meeting: id,
                        reason,
                    }));
                    if s.applied.take().is_some() {
                        out.push(Output::Media(MediaCommand::Stop { meeting: id }));
                    }
                }
            }
            Input::RaiseHand(id) | Input::LowerHand(id) => {
                let raised = matches!(input, Input::RaiseHand(_));
                if let Some(s) = self.sessions.get_mut(&id)
                    && s.phase == Phase::Joined
                {
                    // Numbers only grow, across restarts too (the seconds since the epoch
                    // are a floor), so the host never takes a raise for an old one.
                    let floor = u32::try_from(now_ms / 1000).unwrap_or(u32::MAX);
                    s.hand = Hand {
                        number: s.hand.number.saturating_add(1).max(floor),
                        raised,
                    };
                    self.send_status(&id, now_ms, &mut out);
                }
            }
            Input::Leave(id) => {
                if let Some(s) = self.sessions.get_mut(&id)
                    && matches!(s.phase, Phase::Joined | Phase::Joining)
                {
                    s.phase = Phase::Left;
                    out.push(Output::Send(Uplink::Leave { meeting: id }));
                    if s.applied.take().is_some() {
                        out.push(Output::Media(MediaCommand::Stop { meeting: id }));
                    }
                }
            }
            Input::Call(meeting, to) => out.push(Output::Send(Uplink::Call { meeting, to })),
            Input::Chair(meeting, op) => {
                if self.sessions.contains_key(&meeting) {
                    out.push(Output::Send(Uplink::Chair { meeting, op }));
                }
            }
            Input::ShareContent(meeting, share) => {
                if self
                    .sessions
                    .get(&meeting)
                    .is_some_and(|s| s.phase == Phase::Joined)
                {
                    out.push(Output::Send(Uplink::Content { meeting, share }));
                }
            }
            Input::SetTier(tier) => {
                if tier != self.cfg.tier {
                    self.cfg.tier = tier;
                    let joined: Vec<MeetingId> = self
                        .sessions
                        .iter()
                        .filter(|(_, s)| s.phase == Phase::Joined)
                        .map(|(id, _)| *id)
                        .collect();
                    for id in joined {
                        if let Some(s) = self.sessions.get_mut(&id) {
                            s.start_joining();
                        }
                        self.announce(&id, now_ms, &mut out);
                    }
                }
            }
        }
        out
    }

    fn on_state(&mut self, state: MeetingState, now_ms: u64, out: &mut Vec<Output>) {
        if !state.spec.invites(&self.me) {
            return;
        }
        let id = state.spec.id;
        match self.sessions.get_mut(&id) {
            Some(s) => {
                s.confirm_by = None;
                if state.version <= s.state.version || s.phase == Phase::Ended {
                    return;
                }
                s.state = state;
                if s.phase == Phase::Joining && s.joins_sent > 0 {
                    s.schedule_next_join(self.cfg.join_retry, &self.me, &id);
                }
            }
            None => {
                if state.status == Status::Ended {
                    return;
                }
                self.prune_ended();
                self.sessions.insert(
                    id,
                    Session {
                        state,
                        phase: Phase::Invited,
                        plan: None,
                        applied: None,
                        answer: None,
                        hand: Hand::default(),
                        chair_answer: None,
                        joins_sent: 0,
                        last_join_ms: 0,
                        next_join_ms: 0,
                        joining: 0,
                        last_status_ms: 0,
                        reported: 0,
                        confirm_by: None,
                    },
                );
            }
        }
        let (accept, me) = (self.cfg.accept, self.me);
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        if s.state.status == Status::Ended {
            self.end(&id, out);
            return;
        }
        if s.phase == Phase::Invited && auto_accepts(accept, &me, &s.state) {
            s.start_joining();
            self.announce(&id, now_ms, out);
        }
        self.converge(&id, now_ms, out);
    }

    fn on_downlink(&mut self, d: Downlink, now_ms: u64, out: &mut Vec<Output>) {
        match d {
            Downlink::Admitted { meeting, plan } => {
                let Some(s) = self.sessions.get_mut(&meeting) else {
                    return;
                };
                if !matches!(s.phase, Phase::Joining | Phase::Joined) {
                    return;
                }
                if s.plan.as_ref() != Some(&plan) && s.applied.take().is_some() {
                    // A new plan (another tier): restart the media with it.
                    out.push(Output::Media(MediaCommand::Stop { meeting }));
                }
                s.phase = Phase::Joined;
                s.plan = Some(plan);
                self.converge(&meeting, now_ms, out);
            }
            // An older host's table names no sources: forwarding by it would pass forgeries.
            Downlink::Relay { .. } => {}
            Downlink::Forward { meeting, plan } => {
                if self.sessions.contains_key(&meeting) {
                    out.push(Output::Media(MediaCommand::Relay { meeting, plan }));
                }
            }
            Downlink::Rejoin { meeting } => {
                if let Some(s) = self.sessions.get_mut(&meeting)
                    && s.phase == Phase::Joined
                {
                    s.start_joining();
                    self.announce(&meeting, now_ms, out);
                }
            }
            Downlink::Answer { meeting, op, error } => {
                if let Some(s) = self.sessions.get_mut(&meeting) {
                    s.chair_answer = Some((op, error));
                }
            }
            Downlink::Dial { meeting, uri } => {
                if self
                    .sessions
                    .get(&meeting)
                    .is_some_and(|s| s.state.status != Status::Ended)
                {
                    out.push(Output::Dial { meeting, uri });
                }
            }
            Downlink::Refused { meeting, .. } => {
                if let Some(s) = self.sessions.get_mut(&meeting)
                    && matches!(s.phase, Phase::Joining | Phase::Joined)
                {
                    s.phase = Phase::Declined;
                    if s.applied.take().is_some() {
                        out.push(Output::Media(MediaCommand::Stop { meeting }));
                    }
                }
            }
        }
    }

    fn on_tick(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        let ids: Vec<MeetingId> = self.sessions.keys().copied().collect();
        for id in ids {
            let Some(s) = self.sessions.get(&id) else {
                continue;
            };
            if s.confirm_by.is_some_and(|t| now_ms >= t) {
                // The retained state did not come back after the reconnect: most likely it
                // was cleared while this site was away. Forget the session without a
                // tombstone, so that if it was only late (a broker restart lost the retained
                // copies until central publishes them again) it comes back as new.
                self.end(&id, out);
                self.sessions.remove(&id);
                continue;
            }
            match s.phase {
                Phase::Joining if now_ms >= s.next_join_ms => {
                    self.announce(&id, now_ms, out);
                }
                Phase::Joined
                    if now_ms
                        >= s.last_status_ms + u64::from(s.state.spec.heartbeat_ms).max(500) =>
                {
                    self.send_status(&id, now_ms, out);
                }
                _ => {}
            }
        }
    }

    /// Brings the media engine and the host up to date with the session's state.
    fn converge(&mut self, id: &MeetingId, now_ms: u64, out: &mut Vec<Output>) {
        let me = self.me;
        let Some(s) = self.sessions.get_mut(id) else {
            return;
        };
        if !matches!(s.phase, Phase::Joined | Phase::Joining) {
            return;
        }
        let mut changed = false;
        if let Some(rc) = s.state.roll_call
            && s.answer.is_none_or(|a| a.number != rc.number)
        {
            // Answered when this site saw the roll call: for a site that was away, that
            // is when it came back, and that is what the host records.
            s.answer = Some(Answer {
                number: rc.number,
                answered_ms: now_ms,
            });
            changed = true;
        }
        if s.phase == Phase::Joining {
            // Its join sent, its plan still on the way (a province's plans wait seconds behind
            // each other in the brokers): the site is here, and answers a roll call at once.
            if changed {
                self.send_status(id, now_ms, out);
            }
            return;
        }
        if s.media_on() {
            let desired = s.state.desired_for(&me);
            if s.applied.is_none()
                && let Some(plan) = s.plan.clone()
            {
                out.push(Output::Media(MediaCommand::Start {
                    meeting: *id,
                    plan,
                    profile: s.state.spec.profile.clone(),
                }));
            }
            if s.applied != Some(desired) {
                out.push(Output::Media(MediaCommand::Apply {
                    meeting: *id,
                    applied: desired,
                }));
                s.applied = Some(desired);
                changed = true;
            }
        } else if s.applied.take().is_some() {
            out.push(Output::Media(MediaCommand::Stop { meeting: *id }));
            changed = true;
        }
        if changed || s.last_status_ms == 0 || s.state.version != s.reported {
            self.send_status(id, now_ms, out);
        }
    }

    /// Says the site is here: its join while joining, its status once joined.
    fn announce(&mut self, id: &MeetingId, now_ms: u64, out: &mut Vec<Output>) {
        let me = self.me;
        let Some(s) = self.sessions.get_mut(id) else {
            return;
        };
        match s.phase {
            Phase::Joining => {
                if s.joins_sent == 0 {
                    s.joining = spread(&(self.cfg.boot, me, id, now_ms)).max(1);
                }
                s.joins_sent = s.joins_sent.saturating_add(1);
                s.last_join_ms = now_ms;
                s.schedule_next_join(self.cfg.join_retry, &me, id);
                out.push(Output::Send(Uplink::Join {
                    meeting: *id,
                    tier: self.cfg.tier,
                    rtp_port: self.cfg.rtp_port,
                    media_host: self.cfg.media_host.clone(),
                    relay: self.cfg.relay.clone(),
                    joining: s.joining,
                }));
            }
            Phase::Joined => self.send_status(id, now_ms, out),
            _ => {}
        }
    }

    fn send_status(&mut self, id: &MeetingId, now_ms: u64, out: &mut Vec<Output>) {
        let me = self.me;
        let Some(s) = self.sessions.get_mut(id) else {
            return;
        };
        // A joining site (its plan on the way) has applied nothing: it says so with `seen` 0,
        // and its heartbeat starts once it has joined.
        let seen = if s.phase == Phase::Joined {
            s.last_status_ms = now_ms.max(1);
            s.reported = s.state.version;
            s.state.version
        } else {
            0
        };
        // What the media engine was told, while media runs; the chair's intent otherwise.
        let muted = s.applied.map_or(s.state.is_muted(&me), |a| a.muted);
        out.push(Output::Send(Uplink::Status {
            meeting: *id,
            seen,
            muted,
            hand: s.hand,
            answer: s.answer,
        }));
    }

    fn end(&mut self, id: &MeetingId, out: &mut Vec<Output>) {
        if let Some(s) = self.sessions.get_mut(id) {
            if s.phase == Phase::Ended {
                return;
            }
            // Media runs exactly while something is applied.
            if s.applied.take().is_some() {
                out.push(Output::Media(MediaCommand::Stop { meeting: *id }));
            }
            s.phase = Phase::Ended;
            s.plan = None;
            s.confirm_by = None;
        }
    }

    fn prune_ended(&mut self) {
        let ended: Vec<MeetingId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.phase == Phase::Ended)
            .map(|(id, _)| *id)
            .collect();
        if ended.len() >= ENDED_KEPT {
            for id in &ended[..ended.len() + 1 - ENDED_KEPT] {
                self.sessions.remove(id);
            }
        }
    }
}
