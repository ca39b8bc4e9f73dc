//! The meeting host (inside `cuntong central`): owns a session's desired state, applies the
//! chair's operations to it, and keeps each site's record from what the site reports.
//!
//! `op`, `uplink` and `tick` take the time and return what to do ([`HostOutput`]): publish
//! the new state (retained, once per invited region), send a site its media plan, clear the
//! retained copies at the end, and notices for whoever watches. The host is serialisable, so
//! central stores it after every change and a restart loses nothing.
//!
//! Here the host's state and its clock; the chair's operations in `ops.rs`, the sites' messages
//! in `uplinks.rs`, the media flow (relays, screen, content, recorder, views) in `media.rs`.

use super::relays::{self, RelayPlan, SiteMedia, Topology};
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use serde::{Deserialize, Serialize};

use super::{
    Answer, Downlink, Hand, Invitee, Kind, MediaPlan, MeetingSpec, MeetingState, OnScreen,
    RollCall, Screen, Status, Tier, Uplink,
};
use crate::media::layout::Layout;
use crate::site::Region;
use crate::terminal_id::TerminalId;

mod media;
mod ops;
mod uplinks;

/// How long a call rings before it ends unanswered.
pub const CALL_RING_MS: u64 = 60_000;
/// How long a call goes on without its calling box in it (one that never joins, or fell
/// silent) before it ends: the caller's box joins its call at once, and nobody may ring a
/// box from a call they are not on.
pub const CALLER_ABSENT_MS: u64 = 15_000;

/// The statuses a second a whole session may ask of its sites. A session counting on more
/// sites than this many heartbeats' worth slows its heartbeat (see `Host::counted_sites`),
/// so that a province of 54,000 villages does not send central 5,400 statuses a second.
pub const STATUS_BUDGET_PER_S: u64 = 1_000;
/// The slowest heartbeat pacing sets.
pub const MAX_HEARTBEAT_MS: u32 = 300_000;

/// The heartbeat a session of `sites` keeps, starting from `heartbeat_ms`: doubled until the
/// sites' statuses stay within [`STATUS_BUDGET_PER_S`] (at most [`MAX_HEARTBEAT_MS`]). It grows
/// in steps so that sites joining unannounced change the state a few times, not at every join.
pub fn paced_heartbeat_ms(heartbeat_ms: u32, sites: usize) -> u32 {
    let needed = (sites as u64).saturating_mul(1_000) / STATUS_BUDGET_PER_S;
    let mut hb = heartbeat_ms.max(1);
    while u64::from(hb) < needed && hb < MAX_HEARTBEAT_MS {
        hb = hb.saturating_mul(2).min(MAX_HEARTBEAT_MS);
    }
    hb.max(heartbeat_ms)
}

/// Timing and limits of a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostConfig {
    /// A joined site not heard from for this many of the session's heartbeats is unreachable.
    pub unreachable_after_heartbeats: u32,
    /// Raised hands kept in the queue, at most.
    pub max_hands: usize,
    /// Individually muted (or, under mute-all, unmuted) sites, at most; beyond it the chair
    /// mutes or unmutes everybody.
    pub max_exceptions: usize,
}

impl Default for HostConfig {
    fn default() -> HostConfig {
        HostConfig {
            unreachable_after_heartbeats: 3,
            max_hands: 256,
            max_exceptions: 2_048,
        }
    }
}

/// Where a site is, as the host knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SitePhase {
    /// Invited; has not answered.
    Invited,
    Joined,
    Left,
    Declined,
    /// Joined, but silent for longer than the host allows.
    Unreachable,
}

impl SitePhase {
    pub fn as_str(self) -> &'static str {
        match self {
            SitePhase::Invited => "invited",
            SitePhase::Joined => "joined",
            SitePhase::Left => "left",
            SitePhase::Declined => "declined",
            SitePhase::Unreachable => "unreachable",
        }
    }
}

/// What the host knows of one site.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteRecord {
    pub phase: SitePhase,
    pub tier: Option<Tier>,
    pub rtp_port: u16,
    /// Assigned at the first join, kept for the session.
    pub ssrc: u32,
    pub last_heard_ms: Option<u64>,
    /// The newest state version the site says it applied.
    pub seen: u64,
    /// Whether the site says its microphone is off.
    pub muted: Option<bool>,
    /// The site's answer to a roll call; `answered_ms` is the site's true answer time (never
    /// before the roll call opened, never after it reached the host).
    pub answer: Option<Answer>,
    /// The newest hand change applied.
    hand_number: u32,
    pub note: Option<String>,
    /// Where its relay reaches it, and its own relay address if it is one (from its join).
    #[serde(default)]
    pub media_host: Option<String>,
    #[serde(default)]
    pub relay: Option<String>,
}

impl SiteRecord {
    fn new() -> SiteRecord {
        SiteRecord {
            phase: SitePhase::Invited,
            tier: None,
            rtp_port: 0,
            ssrc: 0,
            last_heard_ms: None,
            seen: 0,
            muted: None,
            answer: None,
            hand_number: 0,
            note: None,
            media_host: None,
            relay: None,
        }
    }
}

fn yes() -> bool {
    true
}

/// The first SSRC of a session: from its (random) key, even, never 0.
fn srtp_start(key: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    for (i, x) in key.iter().take(4).enumerate() {
        b[i] = *x;
    }
    (u32::from_be_bytes(b) & !1).max(2)
}

/// Who asks for an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operator {
    /// The chair: everything.
    Chair,
    /// A delegated chair (a county chair in a province meeting): mute, unmute, floor and hands
    /// of the sites in its region, and only those.
    Delegate(Region),
}

/// What the chair (or a delegate) asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChairOp {
    Start,
    End,
    /// Opens a new roll call (点名); answers to earlier ones no longer count.
    RollCall,
    CloseRollCall,
    /// Gives a site the floor (允许发言) and lowers its hand.
    Grant(TerminalId),
    /// Takes the floor back.
    Revoke,
    Mute(TerminalId),
    Unmute(TerminalId),
    MuteAll,
    UnmuteAll,
    /// Shows one site to every site (广播), or the default again (`None`).
    Broadcast(Option<TerminalId>),
    LowerHand(TerminalId),
    /// Makes a site's terminal a delegated chair for `region` (a county office's box in a
    /// province meeting), or takes that back (`None`).
    Delegate(TerminalId, Option<Region>),
    /// Sets every site's layout (多画面), or leaves it to each box again (`None`). The screen
    /// then lists the main source and as many others, in the order they joined, as it shows.
    Layout(Option<Layout>),
    /// Gives a site the content (双流: its second picture, the presenter's slides), taking it
    /// from whoever shared it, or takes it back (`None`).
    Content(Option<TerminalId>),
}

impl ChairOp {
    pub fn name(&self) -> &'static str {
        match self {
            ChairOp::Start => "start",
            ChairOp::End => "end",
            ChairOp::RollCall => "rollcall",
            ChairOp::CloseRollCall => "close-rollcall",
            ChairOp::Grant(_) => "grant",
            ChairOp::Revoke => "revoke",
            ChairOp::Mute(_) => "mute",
            ChairOp::Unmute(_) => "unmute",
            ChairOp::MuteAll => "mute-all",
            ChairOp::UnmuteAll => "unmute-all",
            ChairOp::Broadcast(_) => "broadcast",
            ChairOp::LowerHand(_) => "lower-hand",
            ChairOp::Delegate(..) => "delegate",
            ChairOp::Layout(_) => "layout",
            ChairOp::Content(_) => "content",
        }
    }
}

/// Why an operation was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum OpError {
    /// Only the chair may do this.
    ChairOnly {
        op: &'static str,
    },
    /// A delegate acted on a site outside its region.
    OutsideScope {
        target: TerminalId,
        scope: Region,
    },
    NotInvited(TerminalId),
    /// A site asked for a chair operation without being a delegated chair of the session.
    NotDelegate(TerminalId),
    Ended,
    /// The session has not started.
    NotLive {
        op: &'static str,
    },
    TooMany {
        what: &'static str,
        max: usize,
    },
    /// Another site shares content: one at a time.
    ContentHeld(TerminalId),
    /// The site cannot share content: it has not joined, or sends no video at its tier.
    CannotShare(TerminalId),
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpError::ChairOnly { op } => write!(f, "{op}: only the chair may do this"),
            OpError::OutsideScope { target, scope } => {
                write!(f, "{target} is outside the delegated region {scope}")
            }
            OpError::NotInvited(t) => write!(f, "{t} is not invited"),
            OpError::Ended => f.write_str("the session has ended"),
            OpError::NotLive { op } => write!(f, "{op}: the session has not started"),
            OpError::TooMany { what, max } => write!(f, "more than {max} {what}"),
            OpError::NotDelegate(t) => write!(f, "{t} is not a delegated chair of this session"),
            OpError::ContentHeld(t) => write!(f, "{t} is sharing content; one site at a time"),
            OpError::CannotShare(t) => {
                write!(
                    f,
                    "{t} cannot share content: not joined, or no video at its tier"
                )
            }
        }
    }
}

impl core::error::Error for OpError {}

/// Something worth telling whoever watches the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    Joined(TerminalId),
    Declined(TerminalId, String),
    Left(TerminalId),
    Unreachable(TerminalId),
    /// An unreachable site was heard again.
    Back(TerminalId),
    Answered {
        site: TerminalId,
        number: u32,
        latency_ms: u64,
    },
    HandRaised(TerminalId),
    HandLowered(TerminalId),
}

/// Who answered a roll call, and how fast.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RollCallResults {
    pub roll_call: RollCall,
    /// Every known site with its latency in ms, `None` if it has not answered.
    pub sites: Vec<(TerminalId, Option<u64>)>,
}

/// How long a plan sent to a joining site is taken to be on its way, at least: a repeat of the
/// same joining within that time is not answered again. A province's join storm keeps plans
/// queued for seconds on the way (brokers, the boxes' own backlog), and answering every repeat
/// multiplied them; a plan really lost (rare: plans travel at QoS 1) costs a site one more
/// wait between its joins.
pub const PLAN_IN_FLIGHT_MS: u64 = 5_000;

/// The plans a second a session's links are taken to carry: a plan may wait behind the plans
/// of all the session's sites, for a province's 54,000 sites about 14 s.
pub const PLANS_PER_S: u64 = 4_000;

/// How long a plan sent to one of a session's `sites` (those given a plan) is taken to be on
/// its way before anything is known of the links: [`PLAN_IN_FLIGHT_MS`], or as long as the
/// links take to carry all their plans at [`PLANS_PER_S`]. Once plans arrive, the host waits
/// as long as they are taking ([`PlanDelay`]) if that is longer.
pub fn plan_in_flight_ms(sites: usize) -> u64 {
    PLAN_IN_FLIGHT_MS.max((sites as u64).saturating_mul(1_000) / PLANS_PER_S)
}

/// A joined site's joining: its number, when its plan last went out, and whether the site
/// has been heard from since (it sends a status as soon as it has its plan).
#[derive(Clone, Copy, Debug, Default)]
struct Joining {
    number: u64,
    plan_sent_ms: Option<u64>,
    plan_arrived: bool,
}

/// How long plans are taking to reach the sites now: the slowest of the recent ones, from a
/// plan's going out to its site's first status after it. Where the links are slower than
/// [`PLANS_PER_S`] (a busy broker tier, a slow machine), a site repeats its join while its plan
/// still waits on the way; answered, every repeat is one more plan on the same links, and the
/// storm feeds itself. The estimate falls at half the clock's pace once plans come faster, so
/// a plan really lost is answered sooner again.
#[derive(Clone, Copy, Debug, Default)]
struct PlanDelay {
    slowest_ms: u64,
    at_ms: u64,
}

impl PlanDelay {
    fn observe(&mut self, delay_ms: u64, now_ms: u64) {
        if delay_ms >= self.now(now_ms) {
            self.slowest_ms = delay_ms;
            self.at_ms = now_ms;
        }
    }

    /// The delay taken for plans now.
    fn now(&self, now_ms: u64) -> u64 {
        self.slowest_ms
            .saturating_sub(now_ms.saturating_sub(self.at_ms) / 2)
    }
}

/// What the host asks its owner to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostOutput {
    /// Publish this state, retained, on the meeting topic of every invitee.
    Publish(alloc::boxed::Box<MeetingState>),
    /// The session ended: clear the retained copies (after publishing the final state).
    Clear,
    /// Publish this screen, retained, on the screen topic of every invitee (its tiles'
    /// names are the owner's to fill in).
    Screen(alloc::boxed::Box<Screen>),
    /// Send a site a message on its own downlink.
    Send(TerminalId, Downlink),
    Notice(Notice),
}

/// The host of one session.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Host {
    cfg: HostConfig,
    state: MeetingState,
    sites: BTreeMap<TerminalId, SiteRecord>,
    /// The session's SRTP master key and salt, handed to each admitted site.
    srtp_key: Vec<u8>,
    next_ssrc: u32,
    /// The plan each joined site was last given, and what each relay was last told.
    #[serde(default)]
    admitted: BTreeMap<TerminalId, MediaPlan>,
    #[serde(default)]
    relay_plans: BTreeMap<TerminalId, RelayPlan>,
    /// Viewers of sites (`cuntong meeting view`): `host:port` each.
    #[serde(default)]
    views: BTreeMap<TerminalId, Vec<String>>,
    /// Something media depends on changed since the last `media_updates` (membership, the
    /// sources, views); a restored host lays everything out again.
    #[serde(skip, default = "yes")]
    media_dirty: bool,
    /// Each joined site's joining, as its join named it, and when its plan last went out.
    /// Not stored: after a restore, the next join of every site starts afresh.
    #[serde(skip)]
    joinings: BTreeMap<TerminalId, Joining>,
    /// How long plans are taking to arrive. Not stored: learnt again after a restore.
    #[serde(skip)]
    plan_delay: PlanDelay,
    created_ms: u64,
    /// Where admitted sites send their media, if the session has a media point.
    media_point: Option<String>,
    /// Delegated chairs: a site's terminal and the region it controls.
    delegates: BTreeMap<TerminalId, Region>,
    /// Roll calls opened so far (the next one's number is one more).
    roll_calls: u32,
    live_since_ms: Option<u64>,
    ended_ms: Option<u64>,
    /// The chair's layout for every site, if the chair set one.
    layout: Option<Layout>,
    /// The screen last published (its tiles without names).
    screen: Option<Screen>,
    /// Where the session's recorder receives (host, port), while one records. Not stored: a
    /// recording ends with the process that wrote it.
    #[serde(skip)]
    recorder: Option<(String, u16)>,
    /// The site sharing content, and the video SSRC of its content (fresh for every grant and
    /// every join of the site: a new sender must never reuse an SRTP index under the key).
    content: Option<(TerminalId, u32)>,
}

/// What [`Host::from_store`] appends to a host stored before the fields after `ended_ms`
/// existed (no layout, no screen, no content), and to one stored before content.
const STORED_BEFORE: [&[u8]; 2] = [&[0], &[0, 0, 0]];

impl Host {
    /// A new session, scheduled: publish its state so the invitations go out. `srtp_key`
    /// comes from the owner's secure random source.
    pub fn new(
        spec: MeetingSpec,
        cfg: HostConfig,
        srtp_key: Vec<u8>,
        now_ms: u64,
    ) -> (Host, Vec<HostOutput>) {
        let state = MeetingState {
            version: 1,
            spec,
            status: Status::Scheduled,
            floor: None,
            broadcast: None,
            mute_all: false,
            exceptions: Vec::new(),
            roll_call: None,
            hands: Vec::new(),
        };
        let next_ssrc = srtp_start(&srtp_key);
        let mut host = Host {
            cfg,
            state,
            sites: BTreeMap::new(),
            srtp_key,
            // Sessions' SSRCs start apart (from the session's random key), so relays serving
            // two sessions at once do not mix their streams.
            next_ssrc,
            admitted: BTreeMap::new(),
            relay_plans: BTreeMap::new(),
            views: BTreeMap::new(),
            media_dirty: true,
            joinings: BTreeMap::new(),
            plan_delay: PlanDelay::default(),
            created_ms: now_ms,
            media_point: None,
            delegates: BTreeMap::new(),
            roll_calls: 0,
            live_since_ms: None,
            ended_ms: None,
            layout: None,
            screen: None,
            recorder: None,
            content: None,
        };
        if let Some(chair) = host.state.spec.chair {
            host.sites.insert(chair, SiteRecord::new());
        }
        let out = alloc::vec![HostOutput::Publish(host.state.clone().into())];
        (host, out)
    }

    pub fn state(&self) -> &MeetingState {
        &self.state
    }

    pub fn config(&self) -> &HostConfig {
        &self.cfg
    }

    pub fn created_ms(&self) -> u64 {
        self.created_ms
    }

    /// When the session ended, if it has.
    pub fn ended_ms(&self) -> Option<u64> {
        self.ended_ms
    }

    /// After the host was restored from the store: its newest published versions may not have
    /// been saved, so jump the version past anything published before (to the current time in
    /// ms, which no counted version reaches), so sites take the restored state as newest.
    pub fn restored(&mut self, now_ms: u64) {
        self.state.version = (self.state.version + 1).max(now_ms);
        if let Some(screen) = &mut self.screen {
            screen.version = (screen.version + 1).max(now_ms);
        }
    }

    /// The session's state as stored (no size limit: a province meeting's site records
    /// exceed a wire message).
    pub fn to_store(&self) -> Result<Vec<u8>, crate::envelope::EncodeError> {
        crate::envelope::encode(self)
    }

    pub fn from_store(bytes: &[u8]) -> Result<Host, crate::envelope::DecodeError> {
        crate::envelope::decode_stored(bytes).or_else(|e| {
            STORED_BEFORE
                .iter()
                .find_map(|missing| {
                    let mut older = bytes.to_vec();
                    older.extend_from_slice(missing);
                    crate::envelope::decode_stored(&older).ok()
                })
                .ok_or(e)
        })
    }

    /// Every site the host knows (expected, joined, declined…), by id.
    pub fn sites(&self) -> &BTreeMap<TerminalId, SiteRecord> {
        &self.sites
    }

    /// The sites the session counts on: those in it (joined, or silent for now) and those
    /// expected that have not answered. Its heartbeat is paced for all of them
    /// ([`paced_heartbeat_ms`]), from its start: every site answers a new state with a status,
    /// so a pace changed as a province's sites join would ask tens of thousands of statuses
    /// in the middle of the join storm.
    fn counted_sites(&self) -> usize {
        self.sites
            .values()
            .filter(|r| {
                matches!(
                    r.phase,
                    SitePhase::Invited | SitePhase::Joined | SitePhase::Unreachable
                )
            })
            .count()
    }

    /// Slows the heartbeat to what [`Host::counted_sites`] asks; whether it changed.
    fn pace_heartbeat(&mut self) -> bool {
        let paced = paced_heartbeat_ms(self.state.spec.heartbeat_ms, self.counted_sites());
        let changed = paced != self.state.spec.heartbeat_ms;
        self.state.spec.heartbeat_ms = paced;
        changed
    }

    /// Terminals known to be in the invited regions: they are listed as invited until they
    /// answer, so a site that never answers shows up.
    pub fn expect(&mut self, terminals: impl IntoIterator<Item = TerminalId>) {
        for t in terminals {
            if self.state.spec.invites(&t) {
                self.sites.entry(t).or_insert_with(SiteRecord::new);
            }
        }
    }

    fn end(&mut self, now_ms: u64, out: &mut Vec<HostOutput>) {
        self.ended_ms = Some(now_ms);
        for rec in self.sites.values_mut() {
            if matches!(rec.phase, SitePhase::Joined | SitePhase::Unreachable) {
                rec.phase = SitePhase::Left;
            }
        }
        self.state.status = Status::Ended;
        self.state.roll_call = None;
        self.state.floor = None;
        self.state.hands.clear();
        self.state.version += 1;
        out.push(HostOutput::Publish(self.state.clone().into()));
        out.push(HostOutput::Clear);
    }

    /// Marks joined sites that fell silent as unreachable; ends a call nobody answered within
    /// [`CALL_RING_MS`], and one whose calling box has not been in it for [`CALLER_ABSENT_MS`].
    pub fn tick(&mut self, now_ms: u64) -> Vec<HostOutput> {
        let mut out = Vec::new();
        if self.state.spec.kind == Kind::Call && self.state.status == Status::Live {
            if let Some(caller) = self.state.spec.chair {
                let rec = self.sites.get(&caller);
                let present = rec.is_some_and(|r| r.phase == SitePhase::Joined);
                let since = rec
                    .and_then(|r| r.last_heard_ms)
                    .into_iter()
                    .chain(self.live_since_ms)
                    .max()
                    .unwrap_or(self.created_ms);
                if !present && now_ms.saturating_sub(since) > CALLER_ABSENT_MS {
                    self.end(now_ms, &mut out);
                    return out;
                }
            }
            let answered = self.sites.iter().any(|(t, r)| {
                self.state.spec.chair.as_ref() != Some(t) && r.phase == SitePhase::Joined
            });
            let ringing_since = self.live_since_ms.unwrap_or(self.created_ms);
            if !answered && now_ms.saturating_sub(ringing_since) > CALL_RING_MS {
                self.end(now_ms, &mut out);
                return out;
            }
        }
        let silence = u64::from(self.state.spec.heartbeat_ms)
            * u64::from(self.cfg.unreachable_after_heartbeats.max(1));
        for (t, rec) in &mut self.sites {
            if rec.phase == SitePhase::Joined
                && rec
                    .last_heard_ms
                    .is_some_and(|h| now_ms.saturating_sub(h) > silence)
            {
                rec.phase = SitePhase::Unreachable;
                out.push(HostOutput::Notice(Notice::Unreachable(*t)));
                self.media_dirty = true;
            }
        }
        out
    }

    /// The latest roll call, per known site: its latency if it answered.
    pub fn roll_call_results(&self) -> Option<RollCallResults> {
        let roll_call = self.state.roll_call?;
        let sites = self
            .sites
            .iter()
            .map(|(t, r)| (*t, self.roll_call_latency(r)))
            .collect();
        Some(RollCallResults { roll_call, sites })
    }

    /// How long after the latest roll call opened `site` answered it; `None` if it has not
    /// (or there is no roll call).
    pub fn roll_call_latency(&self, site: &SiteRecord) -> Option<u64> {
        let rc = self.state.roll_call?;
        site.answer
            .filter(|a| a.number == rc.number)
            .map(|a| a.answered_ms.saturating_sub(rc.opened_ms))
    }

    /// True when `t` applied the current state (it says so in its status).
    pub fn converged(&self, t: &TerminalId) -> bool {
        self.sites.get(t).is_some_and(|r| {
            r.phase == SitePhase::Joined
                && r.seen == self.state.version
                && r.muted == Some(self.state.is_muted(t))
        })
    }
}
