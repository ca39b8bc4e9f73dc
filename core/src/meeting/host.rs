//! The meeting host (inside `cuntong central`): owns a session's desired state, applies the
//! chair's operations to it, and keeps each site's record from what the site reports.
//!
//! `op`, `uplink` and `tick` take the time and return what to do ([`HostOutput`]): publish
//! the new state (retained, once per invited region), send a site its media plan, clear the
//! retained copies at the end, and notices for whoever watches. The host is serialisable, so
//! central stores it after every change and a restart loses nothing.

use super::relays::{self, RelayPlan, SiteMedia, Topology};
use alloc::collections::BTreeMap;
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

/// How long a call rings before it ends unanswered.
pub const CALL_RING_MS: u64 = 60_000;
/// How long a call goes on without its calling box in it (one that never joins, or fell
/// silent) before it ends: the caller's box joins its call at once, and nobody may ring a
/// box from a call they are not on.
pub const CALLER_ABSENT_MS: u64 = 15_000;

/// The statuses a second a whole session may ask of its sites. A session with more joined
/// sites than this many heartbeats' worth slows its heartbeat (see [`Host::media_updates`]),
/// so that a province of 54,000 villages does not send central 5,400 statuses a second.
pub const STATUS_BUDGET_PER_S: u64 = 1_000;
/// The slowest heartbeat pacing sets.
pub const MAX_HEARTBEAT_MS: u32 = 300_000;

/// The heartbeat a session of `joined` sites keeps, starting from `heartbeat_ms`: doubled until
/// the sites' statuses stay within [`STATUS_BUDGET_PER_S`] (at most [`MAX_HEARTBEAT_MS`]). It
/// grows in steps so that a join storm changes the state a few times, not at every join.
pub fn paced_heartbeat_ms(heartbeat_ms: u32, joined: usize) -> u32 {
    let needed = (joined as u64).saturating_mul(1_000) / STATUS_BUDGET_PER_S;
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

/// How long a plan sent to a joining site is taken to be on its way: a repeat of the same
/// joining within that time is not answered again. A province's join storm keeps plans
/// queued for seconds on the way (brokers, the boxes' own backlog), and answering every repeat
/// multiplied them; a plan really lost (rare: plans travel at QoS 1) costs a site one more
/// wait between its joins.
pub const PLAN_IN_FLIGHT_MS: u64 = 5_000;

/// A joined site's joining: its number, and when its plan last went out.
#[derive(Clone, Copy, Debug, Default)]
struct Joining {
    number: u64,
    plan_sent_ms: Option<u64>,
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

    /// Where admitted sites send media (a relay or media point), from the media plan.
    /// The media flow now: each joined site's relay, each relay's forwarding.
    fn topology(&self) -> Topology {
        let sites: Vec<SiteMedia> = self
            .sites
            .iter()
            .filter(|(_, r)| r.phase == SitePhase::Joined && r.ssrc != 0)
            .map(|(id, r)| SiteMedia {
                id: *id,
                ssrc: r.ssrc,
                receives_at: r
                    .media_host
                    .clone()
                    .filter(|_| r.rtp_port != 0)
                    .map(|h| (h, r.rtp_port)),
                relay: r.relay.clone(),
                thin: r.tier.is_some_and(|t| t != Tier::Full),
            })
            .collect();
        let mut sites = sites;
        if let (Some((host, port)), Some(id)) = (&self.recorder, self.recorder_id()) {
            // The recorder takes every picture on the screen from the relay of its region.
            sites.push(SiteMedia {
                id,
                ssrc: 0,
                receives_at: Some((host.clone(), *port)),
                relay: None,
                thin: false,
            });
        }
        let sources = self.main_sources();
        let extra: Vec<TerminalId> = self.screen_tiles().into_iter().map(|t| t.site).collect();
        let views: Vec<(TerminalId, String)> = self
            .views
            .iter()
            .flat_map(|(t, to)| to.iter().map(|v| (*t, v.clone())))
            .collect();
        relays::topology(&sites, &sources, &extra, self.content, &views)
    }

    /// The sources every site receives: the chair, the broadcast site, the speaker.
    fn main_sources(&self) -> Vec<TerminalId> {
        [
            self.state.spec.chair,
            self.state.broadcast,
            self.state.floor,
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// The sites on the screen now: the one shown to all first, the other main sources, then
    /// (with the chair's layout) joined sites that send pictures, in the order they joined
    /// (their SSRCs increase with each first join); as many as the screen lists.
    fn screen_tiles(&self) -> Vec<OnScreen> {
        let joined = |t: &TerminalId| {
            self.sites
                .get(t)
                .filter(|r| r.phase == SitePhase::Joined && r.ssrc != 0)
                .map(|r| r.ssrc)
        };
        let mut order: Vec<TerminalId> = self.state.shown().into_iter().collect();
        order.extend(self.main_sources());
        if self.layout.is_some() {
            let mut others: Vec<(u32, TerminalId)> = self
                .sites
                .iter()
                .filter(|(_, r)| r.tier == Some(Tier::Full))
                .filter_map(|(t, _)| joined(t).map(|ssrc| (ssrc, *t)))
                .collect();
            others.sort_unstable();
            order.extend(others.into_iter().map(|(_, t)| t));
        }
        let mut tiles: Vec<OnScreen> = Vec::new();
        for site in order {
            if tiles.len() == Screen::most_tiles(self.layout) {
                break;
            }
            if let Some(ssrc) = joined(&site)
                && !tiles.iter().any(|t| t.site == site)
            {
                tiles.push(OnScreen {
                    site,
                    ssrc,
                    name: String::new(),
                });
            }
        }
        tiles
    }

    /// Who the session's recorder is in the media flow: `recorder` at the site of the first
    /// invitee (a region's own site, or an invited terminal's), so that the relay of that
    /// region serves it.
    pub fn recorder_id(&self) -> Option<TerminalId> {
        let site = match self.state.spec.invitees.first()? {
            Invitee::Region(r) => r.root(),
            Invitee::Terminal(t) => *t.site(),
        };
        Some(TerminalId::new(site, "recorder".parse().ok()?))
    }

    /// A recorder receives the session at `at` (host, port) from now on, or (`None`) no more.
    pub fn set_recorder(&mut self, at: Option<(String, u16)>) {
        if self.recorder != at {
            self.recorder = at;
            self.media_dirty = true;
        }
    }

    /// The session's SRTP master key and salt: for a recorder that decrypts as a participant.
    pub fn media_key(&self) -> &[u8] {
        &self.srtp_key
    }

    /// Where the session's recorder receives, while one records.
    pub fn recorder(&self) -> Option<&(String, u16)> {
        self.recorder.as_ref()
    }

    /// The screen as last published, if it was.
    pub fn screen(&self) -> Option<&Screen> {
        self.screen.as_ref()
    }

    /// The chair's layout, if it set one.
    pub fn layout(&self) -> Option<Layout> {
        self.layout
    }

    /// The site sharing content, and the video SSRC of its content.
    pub fn content(&self) -> Option<(TerminalId, u32)> {
        self.content
    }

    /// Gives `site` the content under a fresh SSRC, or takes it back (`None`).
    fn set_content(&mut self, site: Option<TerminalId>) {
        if site == self.content.map(|(t, _)| t) {
            return;
        }
        self.content = site.map(|t| {
            let ssrc = self.next_ssrc & !1;
            self.next_ssrc = self.next_ssrc.wrapping_add(2).max(2);
            (t, ssrc)
        });
        self.media_dirty = true;
    }

    /// A site's own box asks to share content (`on`), or stops sharing it: granted while no
    /// other site shares, refused while one does (the chair may take it from one and give it
    /// to another, [`ChairOp::Content`]).
    pub fn share_content(&mut self, from: TerminalId, on: bool) -> Result<(), OpError> {
        if self.state.status == Status::Ended {
            return Err(OpError::Ended);
        }
        let holder = self.content.map(|(t, _)| t);
        if !on {
            if holder == Some(from) {
                self.set_content(None);
            }
            return Ok(());
        }
        if self.state.status != Status::Live {
            return Err(OpError::NotLive { op: "content" });
        }
        match holder {
            Some(h) if h != from => return Err(OpError::ContentHeld(h)),
            Some(_) => return Ok(()),
            None => {}
        }
        if !self.can_share(&from) {
            return Err(OpError::CannotShare(from));
        }
        self.set_content(Some(from));
        Ok(())
    }

    /// Whether a site can share content now: joined, and sending video at its tier.
    fn can_share(&self, site: &TerminalId) -> bool {
        self.sites
            .get(site)
            .is_some_and(|r| r.phase == SitePhase::Joined && r.tier == Some(Tier::Full))
    }

    /// A joined site's media plan: its SSRC, the session key, and where it sends (its relay,
    /// else the session's media point; nowhere at the receive-only tier).
    fn plan_for(&self, site: &TerminalId, topology: &Topology) -> Option<MediaPlan> {
        let rec = self.sites.get(site)?;
        let tier = rec.tier?;
        Some(MediaPlan {
            ssrc: rec.ssrc,
            send_to: if tier == Tier::ReceiveOnly {
                None
            } else {
                topology
                    .send_to
                    .get(site)
                    .cloned()
                    .or_else(|| self.media_point.clone())
            },
            srtp_key: self.srtp_key.clone(),
            tier,
            viewed: self.views.contains_key(site),
        })
    }

    /// Adds (or, with `on` false, removes) a viewer of `site` at `to` (`host:port`): the relay
    /// its stream reaches first strips SRTP and sends it there as plain RTP. The site must be
    /// in the session and behind a relay.
    pub fn set_view(&mut self, site: TerminalId, to: String, on: bool) -> Result<(), String> {
        if !on {
            self.media_dirty = true;
            if let Some(v) = self.views.get_mut(&site) {
                v.retain(|x| *x != to);
                if v.is_empty() {
                    self.views.remove(&site);
                }
            }
            return Ok(());
        }
        if !self
            .sites
            .get(&site)
            .is_some_and(|r| r.phase == SitePhase::Joined)
        {
            return Err(format!("{site} has not joined {}", self.state.spec.id));
        }
        let topology = self.topology();
        if !topology.send_to.contains_key(&site) {
            return Err(format!("{site} has no relay to view it through"));
        }
        self.media_dirty = true;
        let v = self.views.entry(site).or_default();
        if !v.contains(&to) {
            v.push(to);
        }
        Ok(())
    }

    /// What the media flow's changes ask for: a new plan to each joined site whose relay
    /// changed or who joined since, the forwarding table to each relay whose table changed,
    /// and a new state when the session outgrew its heartbeat ([`paced_heartbeat_ms`]: the
    /// heartbeat only grows during a session, so no site is ever judged by a faster pace than
    /// the one it was given).
    /// Call after a batch of changes: a join is answered here, so call it soon after (the
    /// central service does whenever its incoming queue runs empty, and at least every 200 ms
    /// while it does not). Its cost grows with the session, not with the changes since.
    pub fn media_updates(&mut self, now_ms: u64) -> Vec<HostOutput> {
        let mut out = Vec::new();
        if self.state.status == Status::Ended {
            self.admitted.clear();
            self.relay_plans.clear();
            return out;
        }
        if !self.media_dirty {
            return out;
        }
        self.media_dirty = false;
        let meeting = self.state.spec.id;
        let topology = self.topology();
        let joined: Vec<TerminalId> = self
            .sites
            .iter()
            .filter(|(_, r)| r.phase == SitePhase::Joined)
            .map(|(id, _)| *id)
            .collect();
        let paced = paced_heartbeat_ms(self.state.spec.heartbeat_ms, joined.len());
        if paced != self.state.spec.heartbeat_ms {
            self.state.spec.heartbeat_ms = paced;
            self.state.version += 1;
            out.push(HostOutput::Publish(self.state.clone().into()));
        }
        let tiles = self.screen_tiles();
        let content = self.content.map(|(site, ssrc)| OnScreen {
            site,
            ssrc,
            name: String::new(),
        });
        if self
            .screen
            .as_ref()
            .is_none_or(|s| s.layout != self.layout || s.tiles != tiles || s.content != content)
        {
            let screen = Screen {
                meeting,
                version: self.screen.as_ref().map_or(1, |s| s.version + 1),
                layout: self.layout,
                tiles,
                content,
            };
            out.push(HostOutput::Screen(screen.clone().into()));
            self.screen = Some(screen);
        }
        let sites = &self.sites;
        self.admitted
            .retain(|id, _| sites.get(id).is_some_and(|r| r.phase == SitePhase::Joined));
        for id in &joined {
            let Some(plan) = self.plan_for(id, &topology) else {
                continue;
            };
            // Changed, or never given (a site back from unreachable missed the changes).
            if self.admitted.get(id) != Some(&plan) {
                self.admitted.insert(*id, plan.clone());
                if let Some(j) = self.joinings.get_mut(id) {
                    j.plan_sent_ms = Some(now_ms);
                }
                out.push(HostOutput::Send(*id, Downlink::Admitted { meeting, plan }));
            }
        }
        self.relay_plans
            .retain(|id, _| topology.relays.contains_key(id));
        for (id, plan) in topology.relays {
            if self.relay_plans.get(&id) != Some(&plan) {
                self.relay_plans.insert(id, plan.clone());
                out.push(HostOutput::Send(id, Downlink::Forward { meeting, plan }));
            }
        }
        out
    }

    pub fn set_media_point(&mut self, addr: Option<String>) {
        self.media_point = addr;
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

    /// Applies a chair operation.
    pub fn op(
        &mut self,
        by: &Operator,
        op: ChairOp,
        now_ms: u64,
    ) -> Result<Vec<HostOutput>, OpError> {
        if self.state.status == Status::Ended {
            return Err(OpError::Ended);
        }
        let chair_only = || match by {
            Operator::Chair => Ok(()),
            Operator::Delegate(_) => Err(OpError::ChairOnly { op: op.name() }),
        };
        let live = |s: &MeetingState| {
            if s.status == Status::Live {
                Ok(())
            } else {
                Err(OpError::NotLive { op: op.name() })
            }
        };
        let before = self.state.clone();
        let mut out = Vec::new();
        if let ChairOp::End = op {
            chair_only()?;
            self.end(now_ms, &mut out);
            return Ok(out);
        }
        // An operation applies whole or not at all: a refusal part-way leaves no change.
        if let Err(e) = self.apply_op(by, op, now_ms, chair_only, live) {
            self.state = before;
            return Err(e);
        }
        if self.state != before {
            self.state.version = before.version + 1;
            out.push(HostOutput::Publish(self.state.clone().into()));
            self.media_dirty = true;
        }
        Ok(out)
    }

    fn apply_op(
        &mut self,
        by: &Operator,
        op: ChairOp,
        now_ms: u64,
        chair_only: impl Fn() -> Result<(), OpError>,
        live: impl Fn(&MeetingState) -> Result<(), OpError>,
    ) -> Result<(), OpError> {
        match op {
            ChairOp::Start => {
                chair_only()?;
                if self.state.status != Status::Live {
                    self.live_since_ms = Some(now_ms);
                }
                self.state.status = Status::Live;
            }
            ChairOp::End => chair_only()?,
            ChairOp::RollCall => {
                chair_only()?;
                live(&self.state)?;
                // Never reused, even after a close: old answers must not count again.
                self.roll_calls += 1;
                self.state.roll_call = Some(RollCall {
                    number: self.roll_calls,
                    opened_ms: now_ms,
                });
            }
            ChairOp::CloseRollCall => {
                chair_only()?;
                self.state.roll_call = None;
            }
            ChairOp::Grant(t) => {
                self.check_target(by, &t)?;
                live(&self.state)?;
                match by {
                    Operator::Chair => {
                        if self.state.spec.floor_mutes_others {
                            self.state.mute_all = true;
                            self.state.exceptions.clear();
                        }
                    }
                    Operator::Delegate(region) => {
                        // A delegate never takes the floor from another region's speaker,
                        // and mutes only its own region.
                        if let Some(f) = self.state.floor {
                            self.check_target(by, &f)?;
                        }
                        if self.state.spec.floor_mutes_others {
                            let inside: Vec<TerminalId> = self
                                .sites
                                .keys()
                                .filter(|x| region.contains(x.site()) && **x != t)
                                .copied()
                                .collect();
                            for x in inside {
                                self.set_muted(&x, true)?;
                            }
                        }
                    }
                }
                self.state.floor = Some(t);
                self.state.hands.retain(|h| *h != t);
            }
            ChairOp::Revoke => {
                if let (Operator::Delegate(_), Some(f)) = (by, self.state.floor) {
                    self.check_target(by, &f)?;
                }
                self.state.floor = None;
            }
            ChairOp::Mute(t) => {
                self.check_target(by, &t)?;
                self.set_muted(&t, true)?;
            }
            ChairOp::Unmute(t) => {
                self.check_target(by, &t)?;
                self.set_muted(&t, false)?;
            }
            ChairOp::MuteAll | ChairOp::UnmuteAll => {
                let muted = op == ChairOp::MuteAll;
                match by {
                    Operator::Chair => {
                        // The chair and the speaker stay heard.
                        self.state.mute_all = muted;
                        self.state.exceptions.clear();
                    }
                    Operator::Delegate(region) => {
                        let inside: Vec<TerminalId> = self
                            .sites
                            .keys()
                            .filter(|t| region.contains(t.site()))
                            .copied()
                            .collect();
                        for t in inside {
                            self.set_muted(&t, muted)?;
                        }
                    }
                }
            }
            ChairOp::Broadcast(t) => {
                chair_only()?;
                if let Some(t) = &t {
                    self.check_target(by, t)?;
                }
                self.state.broadcast = t;
            }
            ChairOp::LowerHand(t) => {
                self.check_target(by, &t)?;
                self.state.hands.retain(|h| *h != t);
            }
            ChairOp::Delegate(t, region) => {
                chair_only()?;
                match region {
                    Some(r) => self.delegates.insert(t, r),
                    None => self.delegates.remove(&t),
                };
            }
            ChairOp::Layout(layout) => {
                chair_only()?;
                if self.layout != layout {
                    self.layout = layout;
                    self.media_dirty = true;
                }
            }
            ChairOp::Content(site) => {
                if let Some(t) = &site {
                    self.check_target(by, t)?;
                    live(&self.state)?;
                    if !self.can_share(t) {
                        return Err(OpError::CannotShare(*t));
                    }
                }
                // A delegate never takes the content from another region's site.
                if let (Operator::Delegate(_), Some((h, _))) = (by, self.content) {
                    self.check_target(by, &h)?;
                }
                self.set_content(site);
            }
        }
        Ok(())
    }

    /// A chair operation asked for by a site's own terminal: allowed only to a delegated
    /// chair, within its region.
    pub fn op_by_site(
        &mut self,
        from: TerminalId,
        op: ChairOp,
        now_ms: u64,
    ) -> Result<Vec<HostOutput>, OpError> {
        let region = *self
            .delegates
            .get(&from)
            .ok_or(OpError::NotDelegate(from))?;
        self.op(&Operator::Delegate(region), op, now_ms)
    }

    /// The delegated chairs and their regions.
    pub fn delegates(&self) -> &BTreeMap<TerminalId, Region> {
        &self.delegates
    }

    fn check_target(&self, by: &Operator, t: &TerminalId) -> Result<(), OpError> {
        if !self.state.spec.invites(t) {
            return Err(OpError::NotInvited(*t));
        }
        match by {
            Operator::Delegate(scope) if !scope.contains(t.site()) => Err(OpError::OutsideScope {
                target: *t,
                scope: *scope,
            }),
            _ => Ok(()),
        }
    }

    fn set_muted(&mut self, t: &TerminalId, muted: bool) -> Result<(), OpError> {
        if muted && self.state.floor.as_ref() == Some(t) {
            self.state.floor = None;
        }
        // Under mute-all the exceptions are the sites heard; otherwise the sites muted.
        let listed = muted != self.state.mute_all;
        let ex = &mut self.state.exceptions;
        match (ex.binary_search(t), listed) {
            (Err(at), true) => {
                if ex.len() >= self.cfg.max_exceptions {
                    return Err(OpError::TooMany {
                        what: "individually muted or unmuted sites",
                        max: self.cfg.max_exceptions,
                    });
                }
                ex.insert(at, *t);
            }
            (Ok(at), false) => {
                ex.remove(at);
            }
            _ => {}
        }
        Ok(())
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

    /// Handles a site's message.
    pub fn uplink(&mut self, from: TerminalId, msg: Uplink, now_ms: u64) -> Vec<HostOutput> {
        let mut out = Vec::new();
        let msg = msg.tagged();
        let meeting = self.state.spec.id;
        if msg.meeting() != meeting {
            return out;
        }
        if !self.state.spec.invites(&from) {
            if matches!(msg, Uplink::Join { .. }) {
                out.push(HostOutput::Send(
                    from,
                    Downlink::Refused {
                        meeting,
                        reason: "not invited".into(),
                    },
                ));
            }
            return out;
        }
        if self.state.status == Status::Ended {
            if matches!(msg, Uplink::Join { .. }) {
                out.push(HostOutput::Send(
                    from,
                    Downlink::Refused {
                        meeting,
                        reason: "the session has ended".into(),
                    },
                ));
            }
            return out;
        }
        let before = self.state.clone();
        let phase_before = self.sites.get(&from).map(|r| r.phase);
        if matches!(
            msg,
            Uplink::Join { .. } | Uplink::Leave { .. } | Uplink::Decline { .. }
        ) {
            self.media_dirty = true;
        }
        let rec = self.sites.entry(from).or_insert_with(SiteRecord::new);
        match msg {
            Uplink::Join {
                tier,
                rtp_port,
                media_host,
                relay,
                joining,
                ..
            } => {
                rec.last_heard_ms = Some(now_ms);
                let repeat = joining != 0
                    && rec.phase == SitePhase::Joined
                    && (rec.tier, rec.rtp_port) == (Some(tier), rtp_port)
                    && (&rec.media_host, &rec.relay) == (&media_host, &relay)
                    && self.joinings.get(&from).map(|j| j.number) == Some(joining);
                if repeat {
                    // The same joining asking again: its plan is on its way or was lost. It
                    // keeps its SSRC (its media has not started) and gets the same plan
                    // again, once the last one has had time to arrive.
                    let sent = self.joinings.get(&from).and_then(|j| j.plan_sent_ms);
                    if sent.is_none_or(|t| now_ms.saturating_sub(t) >= PLAN_IN_FLIGHT_MS) {
                        self.admitted.remove(&from);
                    }
                    return out;
                }
                self.joinings.insert(
                    from,
                    Joining {
                        number: joining,
                        plan_sent_ms: None,
                    },
                );
                if rec.phase != SitePhase::Joined {
                    if rec.phase != SitePhase::Unreachable {
                        out.push(HostOutput::Notice(Notice::Joined(from)));
                    } else {
                        out.push(HostOutput::Notice(Notice::Back(from)));
                    }
                    rec.phase = SitePhase::Joined;
                }
                rec.tier = Some(tier);
                rec.rtp_port = rtp_port;
                rec.media_host = media_host;
                rec.relay = relay;
                rec.note = None;
                // A fresh SSRC pair for every join (video even, audio the next: media::
                // audio_ssrc): a site that joins again has restarted its media, and its new
                // packets must never reuse an SRTP index under the session key.
                rec.ssrc = self.next_ssrc & !1;
                self.next_ssrc = self.next_ssrc.wrapping_add(2).max(2);
                // Its content sender starts again too: under a fresh SSRC as well.
                if let Some((_, ssrc)) = self.content.as_mut().filter(|(t, _)| *t == from) {
                    *ssrc = self.next_ssrc & !1;
                    self.next_ssrc = self.next_ssrc.wrapping_add(2).max(2);
                }
                // A relay that joins again has lost its table: it gets it again.
                self.relay_plans.remove(&from);
                // Every join is answered with the plan, by the next `media_updates`: the site
                // repeats its join until it has one, so the answer must be idempotent. Laying
                // the session out once for many joins keeps a join storm of a province linear.
                self.admitted.remove(&from);
            }
            Uplink::Status {
                seen,
                muted,
                hand,
                answer,
                ..
            } => {
                if !matches!(rec.phase, SitePhase::Joined | SitePhase::Unreachable) {
                    // The site thinks it is in, the host does not (a late copy of a status
                    // from before it left, a join the host never saw): ask it to join again.
                    // A site that really left ignores this.
                    out.push(HostOutput::Send(from, Downlink::Rejoin { meeting }));
                    return out;
                }
                rec.last_heard_ms = Some(now_ms);
                if rec.phase == SitePhase::Unreachable {
                    rec.phase = SitePhase::Joined;
                    out.push(HostOutput::Notice(Notice::Back(from)));
                }
                // A site can only have applied a version the host published: a larger `seen`
                // is refused (it would pass for every later version), as is an older status
                // arriving late.
                let published = self.state.version;
                if seen <= published && (seen >= rec.seen || rec.seen > published) {
                    rec.seen = seen;
                    rec.muted = Some(muted);
                }
                let hand_change = self.apply_hand(from, hand);
                out.extend(hand_change);
                self.apply_answer(from, answer, now_ms, &mut out);
            }
            Uplink::Decline { reason, .. } => {
                if rec.phase != SitePhase::Declined {
                    rec.phase = SitePhase::Declined;
                    rec.note = Some(reason.clone());
                    out.push(HostOutput::Notice(Notice::Declined(from, reason)));
                }
                self.forget_site_in_state(&from);
                if self.state.spec.kind == Kind::Call {
                    // The callee declined: the call is over.
                    self.end(now_ms, &mut out);
                    return out;
                }
            }
            // Calls are created by central's meeting service, not by a running session, a
            // delegate's operations go through `op_by_site`, which answers them, and a request
            // to share content through `share_content`.
            // (`tagged` made an older terminal's join a `Join`.)
            Uplink::Call { .. }
            | Uplink::Chair { .. }
            | Uplink::Content { .. }
            | Uplink::JoinUntagged { .. } => {}
            Uplink::Leave { .. } => {
                if rec.phase != SitePhase::Left {
                    rec.phase = SitePhase::Left;
                    out.push(HostOutput::Notice(Notice::Left(from)));
                }
                self.forget_site_in_state(&from);
                if self.state.spec.kind == Kind::Call {
                    // Either party hanging up ends a call.
                    self.end(now_ms, &mut out);
                    return out;
                }
            }
        }
        if self.state != before {
            self.state.version = before.version + 1;
            out.push(HostOutput::Publish(self.state.clone().into()));
        }
        if self.state != before || self.sites.get(&from).map(|r| r.phase) != phase_before {
            self.media_dirty = true;
        }
        out
    }

    /// A site that left or declined no longer holds the floor, a raised hand or the content.
    fn forget_site_in_state(&mut self, t: &TerminalId) {
        if self.state.floor.as_ref() == Some(t) {
            self.state.floor = None;
        }
        if self.content.is_some_and(|(h, _)| h == *t) {
            self.set_content(None);
        }
        self.state.hands.retain(|h| h != t);
    }

    fn apply_hand(&mut self, from: TerminalId, hand: Hand) -> Option<HostOutput> {
        let rec = self.sites.get_mut(&from)?;
        if hand.number <= rec.hand_number {
            return None;
        }
        rec.hand_number = hand.number;
        let queued = self.state.hands.contains(&from);
        if hand.raised
            && !queued
            && self.state.floor != Some(from)
            && self.state.hands.len() < self.cfg.max_hands
        {
            self.state.hands.push(from);
            Some(HostOutput::Notice(Notice::HandRaised(from)))
        } else if !hand.raised && queued {
            self.state.hands.retain(|h| *h != from);
            Some(HostOutput::Notice(Notice::HandLowered(from)))
        } else {
            None
        }
    }

    fn apply_answer(
        &mut self,
        from: TerminalId,
        answer: Option<Answer>,
        now_ms: u64,
        out: &mut Vec<HostOutput>,
    ) {
        let (Some(rc), Some(a), Some(rec)) =
            (self.state.roll_call, answer, self.sites.get_mut(&from))
        else {
            return;
        };
        if a.number != rc.number || rec.answer.is_some_and(|x| x.number == rc.number) {
            return;
        }
        let answered_ms = a.answered_ms.clamp(rc.opened_ms, now_ms.max(rc.opened_ms));
        rec.answer = Some(Answer {
            number: rc.number,
            answered_ms,
        });
        out.push(HostOutput::Notice(Notice::Answered {
            site: from,
            number: rc.number,
            latency_ms: answered_ms.saturating_sub(rc.opened_ms),
        }));
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
