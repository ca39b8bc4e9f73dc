//! Meetings, training broadcasts and video calls: the model, the messages on the wire, and the
//! two sans-IO state machines that run them, [`host::Host`] (inside central) and
//! [`participant::Participant`] (on every terminal).
//!
//! The chair's intent is **desired state with a version** ([`MeetingState`]), published
//! retained once per invited region, never a stream of one-off commands: a site that was away
//! when the chair muted it converges as soon as it reads the retained state again. Sites report
//! their facts ([`Uplink::Status`]: the version they applied, mute, hand, roll-call answer) in
//! idempotent messages that they repeat on every heartbeat, so lost, duplicated and reordered
//! messages are harmless in both directions. Secrets (the SRTP key of the media plan) travel
//! only on the per-terminal downlink ([`Downlink`]).

pub mod host;
pub mod participant;
pub mod relays;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::envelope::{DecodeError, decode};
pub use crate::media::AudioCodec;
use crate::media::layout::Layout;
pub use crate::meeting_id::{Invitee, MeetingId, MeetingIdError};
use crate::terminal_id::TerminalId;

/// The three kinds of session that share the machinery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// 会议: many sites under chair control.
    Meeting,
    /// 远程培训: one lecturer (the chair's terminal); every other site receives only, and
    /// asks questions through the floor queue.
    Training,
    /// 可视电话: two parties; either may hang up, which ends the call.
    Call,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Meeting => "meeting",
            Kind::Training => "training",
            Kind::Call => "call",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = String;

    /// `meeting`, `training` or `call`.
    fn from_str(s: &str) -> Result<Kind, String> {
        [Kind::Meeting, Kind::Training, Kind::Call]
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| alloc::format!("kind {s:?}: use meeting, training or call"))
    }
}

/// What a site does in a session, derived from the desired state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// The chair's own terminal: always heard, seen by everybody unless a site is broadcast.
    Chair,
    /// Holds the floor (允许发言).
    Speaker,
    Participant,
    /// Receives only (training audiences, and sites on thin links).
    Listener,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Chair => "chair",
            Role::Speaker => "speaker",
            Role::Participant => "participant",
            Role::Listener => "listener",
        }
    }
}

/// How much of a meeting a site's link carries, from its link telemetry and configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Tier {
    Full,
    /// Audio both ways, no video.
    AudioOnly,
    /// Receives audio (and video if it can), sends nothing.
    ReceiveOnly,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Full => "full",
            Tier::AudioOnly => "audio-only",
            Tier::ReceiveOnly => "receive-only",
        }
    }
}

/// When a site's link is too weak for full media, judged from its link telemetry (keep-alive
/// round trip and loss).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TierThresholds {
    pub audio_only_rtt_ms: f64,
    pub audio_only_loss_percent: f64,
    pub receive_only_rtt_ms: f64,
    pub receive_only_loss_percent: f64,
}

impl Default for TierThresholds {
    fn default() -> TierThresholds {
        TierThresholds {
            audio_only_rtt_ms: 400.0,
            // Two keep-alives lost of the last twenty ([`crate::keepalive::LOSS_WINDOW`]): one
            // is an outage (a reconnect, a broker restarted), not a loss rate.
            audio_only_loss_percent: 10.0,
            receive_only_rtt_ms: 1_000.0,
            receive_only_loss_percent: 20.0,
        }
    }
}

impl TierThresholds {
    /// The tier a link with this round trip (if measured) and loss carries.
    pub fn tier(&self, rtt_ms: Option<f64>, loss_percent: f64) -> Tier {
        let rtt = rtt_ms.unwrap_or(0.0);
        if rtt >= self.receive_only_rtt_ms || loss_percent >= self.receive_only_loss_percent {
            Tier::ReceiveOnly
        } else if rtt >= self.audio_only_rtt_ms || loss_percent >= self.audio_only_loss_percent {
            Tier::AudioOnly
        } else {
            Tier::Full
        }
    }
}

/// Follows the measured tier with hysteresis, so a link hovering near a threshold does not
/// restart the media at every reading: a worse tier is taken once it held for `degrade_ms`, a
/// better one once it held for `recover_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TierTracker {
    current: Tier,
    candidate: Option<(Tier, u64)>,
    pub degrade_ms: u64,
    pub recover_ms: u64,
}

impl TierTracker {
    pub fn new(initial: Tier) -> TierTracker {
        TierTracker {
            current: initial,
            candidate: None,
            degrade_ms: 3_000,
            recover_ms: 30_000,
        }
    }

    pub fn current(&self) -> Tier {
        self.current
    }

    /// A new measurement at `now_ms`; returns the tier to use.
    pub fn observe(&mut self, measured: Tier, now_ms: u64) -> Tier {
        if measured == self.current {
            self.candidate = None;
            return self.current;
        }
        let since = match self.candidate {
            Some((t, since)) if t == measured => since,
            _ => {
                self.candidate = Some((measured, now_ms));
                now_ms
            }
        };
        if now_ms.saturating_sub(since) >= self.hold(measured) {
            self.current = measured;
            self.candidate = None;
        }
        self.current
    }

    /// When the tier measured last takes over if nothing changes (unix ms): the moment
    /// [`TierTracker::observe`] is next needed although no measurement changed. `None` while
    /// the measurements agree with the current tier.
    pub fn next_change_ms(&self) -> Option<u64> {
        self.candidate
            .map(|(tier, since)| since.saturating_add(self.hold(tier)))
    }

    /// How long a measured tier must last to take over: worse ones soon, better ones slowly.
    fn hold(&self, measured: Tier) -> u64 {
        if measured > self.current {
            self.degrade_ms
        } else {
            self.recover_ms
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VideoCodec {
    /// H.264 constrained baseline, 4:2:0 8-bit: every hardware decoder plays it.
    H264,
}

/// The video part of a media profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VideoProfile {
    pub codec: VideoCodec,
    pub width: u16,
    pub height: u16,
    pub fps: u8,
    pub kbps: u32,
}

/// What a session's media looks like.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaProfile {
    pub name: String,
    pub video: Option<VideoProfile>,
    pub audio: AudioCodec,
    pub audio_kbps: u32,
}

impl MediaProfile {
    /// The named profiles: `hd` (720p25, 1.5 Mbit/s), `sd` (360p25, 600 kbit/s), `low`
    /// (180p15, 250 kbit/s), `audio` (Opus only).
    pub const NAMES: [&'static str; 4] = ["hd", "sd", "low", "audio"];

    pub fn named(name: &str) -> Option<MediaProfile> {
        let video = |width, height, fps, kbps| {
            Some(VideoProfile {
                codec: VideoCodec::H264,
                width,
                height,
                fps,
                kbps,
            })
        };
        let video = match name {
            "hd" => video(1280, 720, 25, 1500),
            "sd" => video(640, 360, 25, 600),
            "low" => video(320, 180, 15, 250),
            "audio" => None,
            _ => return None,
        };
        Some(MediaProfile {
            name: name.into(),
            video,
            audio: AudioCodec::Opus,
            audio_kbps: 32,
        })
    }
}

/// What a session is, as the host created it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeetingSpec {
    pub id: MeetingId,
    pub kind: Kind,
    pub title: String,
    /// The chair's terminal (the lecturer of a training, the caller of a call), if it has one:
    /// its stream is what every site sees unless another site is broadcast.
    pub chair: Option<TerminalId>,
    pub invitees: Vec<Invitee>,
    /// Scheduled start (Unix ms); terminals accept scheduled sessions on their own, per their
    /// configuration. `None`: ad hoc.
    pub starts_ms: Option<u64>,
    pub profile: MediaProfile,
    /// Granting the floor mutes every other site (the chair excepted).
    pub floor_mutes_others: bool,
    /// How often joined sites repeat their status; a site silent for three heartbeats is
    /// unreachable. The host sets it, so every site of a session keeps the same pace.
    pub heartbeat_ms: u32,
}

impl MeetingSpec {
    pub fn invites(&self, t: &TerminalId) -> bool {
        self.chair.as_ref() == Some(t) || self.invitees.iter().any(|i| i.includes(t))
    }
}

/// Where a session is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Status {
    /// Created; invitations are out, media has not started.
    Scheduled,
    Live,
    Ended,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Scheduled => "scheduled",
            Status::Live => "live",
            Status::Ended => "ended",
        }
    }
}

/// An open roll call (点名).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollCall {
    /// Increases with every roll call of the session.
    pub number: u32,
    pub opened_ms: u64,
}

/// The chair's desired state of a session: versioned, published retained, applied by every
/// site. Each published version is complete, so applying the newest one is all a site does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeetingState {
    /// Increases with every change; a site ignores versions at or below what it applied.
    pub version: u64,
    pub spec: MeetingSpec,
    pub status: Status,
    /// The site that holds the floor.
    pub floor: Option<TerminalId>,
    /// The site shown to every site instead of the chair (广播).
    pub broadcast: Option<TerminalId>,
    pub mute_all: bool,
    /// Sorted. With `mute_all`: the sites still heard; without: the sites muted.
    pub exceptions: Vec<TerminalId>,
    pub roll_call: Option<RollCall>,
    /// Raised hands (举手), oldest first.
    pub hands: Vec<TerminalId>,
}

impl MeetingState {
    pub fn decode(bytes: &[u8]) -> Result<MeetingState, DecodeError> {
        decode(bytes)
    }

    /// A site's role now.
    pub fn role_of(&self, t: &TerminalId) -> Role {
        if self.spec.chair.as_ref() == Some(t) {
            Role::Chair
        } else if self.floor.as_ref() == Some(t) {
            Role::Speaker
        } else if self.spec.kind == Kind::Training {
            Role::Listener
        } else {
            Role::Participant
        }
    }

    /// Whether a site's microphone must be off now.
    pub fn is_muted(&self, t: &TerminalId) -> bool {
        match self.role_of(t) {
            Role::Chair | Role::Speaker => false,
            Role::Listener => true,
            Role::Participant => self.mute_all != self.exceptions.binary_search(t).is_ok(),
        }
    }

    /// The site every site shows: the broadcast site, else the speaker, else the chair.
    pub fn shown(&self) -> Option<TerminalId> {
        self.broadcast.or(self.floor).or(self.spec.chair)
    }

    /// What a site applies from this state.
    pub fn desired_for(&self, t: &TerminalId) -> Applied {
        Applied {
            version: self.version,
            muted: self.is_muted(t),
            role: self.role_of(t),
            shown: self.shown(),
            hand: self.hands.contains(t),
        }
    }
}

/// What every site's room shows (多画面): the chair's layout and the sites in its tiles, the
/// main one first, each with the video SSRC its stream arrives under and its name for the
/// caption. Published retained beside the state, on one topic per invitee
/// ([`crate::topic::Topic::Screen`]), so that a terminal which does not know of it still
/// reads the state unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Screen {
    pub meeting: MeetingId,
    /// Increases with every change; a box ignores versions at or below what it has.
    pub version: u64,
    /// The chair's layout; `None`: each box shows its own (`[media] layout`).
    pub layout: Option<Layout>,
    /// At most [`Screen::most_tiles`] of `layout`: one more than it shows, so that a site in
    /// the tiles, which does not see itself, still fills them with the others.
    pub tiles: Vec<OnScreen>,
    /// The content shared (双流), under its own video SSRC: every room shows it large, the
    /// main source beside it. The site sharing it sends it.
    pub content: Option<OnScreen>,
}

/// What [`Screen::decode`] appends to a screen encoded without content (as [`Screen::encode`]
/// writes one that has none, for boxes that know no content).
const SCREEN_WITHOUT_CONTENT: [u8; 1] = [0];

/// One site on the screen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnScreen {
    pub site: TerminalId,
    /// The video SSRC of its stream (its audio is the next one).
    pub ssrc: u32,
    /// Its name, as a caption shows it (the official name of its division, or the name it
    /// was provisioned with); empty if it has none.
    pub name: String,
}

impl OnScreen {
    /// What its tile's caption says: its name, else its site code.
    pub fn caption(&self) -> String {
        if self.name.is_empty() {
            alloc::format!("{}", self.site.site())
        } else {
            self.name.clone()
        }
    }
}

impl Screen {
    /// A screen without content in the shape boxes that know no content read; with content,
    /// whole (those boxes ignore it, and keep the screen they had).
    pub fn encode(&self) -> Result<Vec<u8>, crate::envelope::EncodeError> {
        let mut bytes = crate::envelope::encode(self)?;
        if self.content.is_none() {
            // postcard writes `None` as a single 0 byte, last.
            bytes.truncate(bytes.len() - SCREEN_WITHOUT_CONTENT.len());
        }
        Ok(bytes)
    }

    /// Reads a screen, with or without content.
    pub fn decode(bytes: &[u8]) -> Result<Screen, DecodeError> {
        decode(bytes).or_else(|e| {
            let mut whole = bytes.to_vec();
            whole.extend_from_slice(&SCREEN_WITHOUT_CONTENT);
            decode(&whole).map_err(|_| e)
        })
    }

    /// How many sites a screen of `layout` lists: one more than it shows (without a layout,
    /// the sources every site receives anyway: the chair, the broadcast site, the speaker).
    pub fn most_tiles(layout: Option<Layout>) -> usize {
        layout.map_or(3, |l| l.tiles() + 1)
    }

    /// The content's tile in the room of `me` (of a recorder: `None`), as its video SSRC and
    /// caption (`NAME · 共享内容`); none in the room of the site that shares it.
    pub fn content_tile(&self, me: Option<&TerminalId>) -> Option<(u32, String)> {
        self.content
            .as_ref()
            .filter(|c| Some(&c.site) != me)
            .map(|c| (c.ssrc, alloc::format!("{} · 共享内容", c.caption())))
    }

    /// The tiles a site shows: every one but its own, as many as the layout has.
    pub fn tiles_for(&self, me: &TerminalId) -> impl Iterator<Item = &OnScreen> {
        let shown = self.layout.map_or(usize::MAX, Layout::tiles);
        self.tiles.iter().filter(move |t| t.site != *me).take(shown)
    }
}

/// What a participant has applied of a [`MeetingState`]; equal to
/// [`MeetingState::desired_for`] once it converged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    pub version: u64,
    pub muted: bool,
    pub role: Role,
    pub shown: Option<TerminalId>,
    /// The site's hand is in the chair's queue.
    pub hand: bool,
}

/// A site's hand (举手): every raise or lower by the site takes a new number, so the host applies
/// each change once and a repeated or late copy changes nothing (after the chair lowered a
/// hand, the site's repeated status does not raise it again).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hand {
    pub number: u32,
    pub raised: bool,
}

/// A roll-call answer: the number of the roll call and when the site answered it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub number: u32,
    pub answered_ms: u64,
}

/// A terminal's meeting messages, on its `mt` uplink.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Uplink {
    /// An older terminal's join (wire variant 0): [`Uplink::Join`] without its `joining`.
    /// [`Uplink::decode`] reads it as a `Join` whose `joining` is 0, which the host takes as
    /// a new joining every time.
    JoinUntagged {
        meeting: MeetingId,
        tier: Tier,
        rtp_port: u16,
        media_host: Option<String>,
        relay: Option<String>,
    },
    /// The site's facts, sent on every change and repeated on every heartbeat.
    Status {
        meeting: MeetingId,
        /// The state version the site applied.
        seen: u64,
        muted: bool,
        hand: Hand,
        /// The site's answer to the latest roll call it saw.
        answer: Option<Answer>,
    },
    Decline {
        meeting: MeetingId,
        reason: String,
    },
    /// Leaves (hangs up a call, which ends it).
    Leave {
        meeting: MeetingId,
    },
    /// Starts a video call (可视电话) from this box to another terminal, under an id the
    /// caller chose.
    Call {
        meeting: MeetingId,
        to: TerminalId,
    },
    /// A chair operation from a delegated chair's own box (a county office in a province
    /// meeting); the host answers with [`Downlink::Answer`].
    Chair {
        meeting: MeetingId,
        op: host::ChairOp,
    },
    /// Joining, with what the site can do. Repeated until the host admits the site; every
    /// repeat names the same `joining`, so the host answers it with the plan it already laid
    /// out (same SSRC) instead of a new one.
    Join {
        meeting: MeetingId,
        tier: Tier,
        /// Where the site receives media (UDP port), 0 if it receives none yet.
        rtp_port: u16,
        /// The address its relay reaches it at (the port is `rtp_port`).
        media_host: Option<String>,
        /// If the site is a relay: where it receives the streams it forwards (`host:port`).
        relay: Option<String>,
        /// Which joining of the site this is: drawn anew each time it starts joining (and
        /// never 0), different across restarts of the box.
        joining: u64,
    },
    /// The site asks to share content (双流), or (`share` false) stops sharing it; the host
    /// answers with [`Downlink::Answer`] (`op` "content"), refusing while another site shares.
    Content {
        meeting: MeetingId,
        share: bool,
    },
}

impl Uplink {
    /// Decodes an uplink; an older terminal's join comes out as a [`Uplink::Join`].
    pub fn decode(bytes: &[u8]) -> Result<Uplink, DecodeError> {
        decode(bytes).map(Uplink::tagged)
    }

    /// The message with an older terminal's join as a [`Uplink::Join`] whose `joining` is 0.
    pub fn tagged(self) -> Uplink {
        match self {
            Uplink::JoinUntagged {
                meeting,
                tier,
                rtp_port,
                media_host,
                relay,
            } => Uplink::Join {
                meeting,
                tier,
                rtp_port,
                media_host,
                relay,
                joining: 0,
            },
            up => up,
        }
    }

    pub fn meeting(&self) -> MeetingId {
        match self {
            Uplink::Join { meeting, .. }
            | Uplink::JoinUntagged { meeting, .. }
            | Uplink::Status { meeting, .. }
            | Uplink::Decline { meeting, .. }
            | Uplink::Leave { meeting }
            | Uplink::Call { meeting, .. }
            | Uplink::Chair { meeting, .. }
            | Uplink::Content { meeting, .. } => *meeting,
        }
    }
}

/// Where and how a site sends and receives media. Holds the SRTP key: it travels only on the
/// site's own downlink, and its `Debug` form hides the key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaPlan {
    /// The site's RTP synchronisation source for video (even); its audio is the next one
    /// ([`crate::media::audio_ssrc`]).
    pub ssrc: u32,
    /// Where the site sends its media (a relay or the host's media point), if it sends.
    pub send_to: Option<String>,
    /// SRTP master key and salt (AES-128-CM: 16 + 14 bytes).
    pub srtp_key: Vec<u8>,
    pub tier: Tier,
    /// Somebody views this site (`cuntong meeting view`): send even when not a source.
    pub viewed: bool,
}

impl fmt::Debug for MediaPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MediaPlan")
            .field("ssrc", &self.ssrc)
            .field("send_to", &self.send_to)
            .field("srtp_key", &"(hidden)")
            .field("tier", &self.tier)
            .field("viewed", &self.viewed)
            .finish()
    }
}

/// The host's messages to one terminal, on its `md` downlink.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Downlink {
    /// Joined: here is the media plan.
    Admitted { meeting: MeetingId, plan: MediaPlan },
    /// Not admitted (not invited, the session ended).
    Refused { meeting: MeetingId, reason: String },
    /// The answer to a delegated chair's operation: `error` is why it was refused.
    Answer {
        meeting: MeetingId,
        op: String,
        error: Option<String>,
    },
    /// The host does not hold this site as joined (it missed the join, or a late status
    /// crossed a leave): join again if you mean to be in.
    Rejoin { meeting: MeetingId },
    /// An older host's table for a relay, without sources. Never sent any more; a relay
    /// ignores it (it cannot tell the streams from forgeries without their sources).
    Relay {
        meeting: MeetingId,
        plan: relays::UnsourcedRelayPlan,
    },
    /// To a relay: what to forward from where to where (sent again whenever it changes).
    Forward {
        meeting: MeetingId,
        plan: relays::RelayPlan,
    },
    /// To a SIP gateway: the chair has it call the room system at `uri` into the session.
    Dial { meeting: MeetingId, uri: String },
}

impl Downlink {
    pub fn decode(bytes: &[u8]) -> Result<Downlink, DecodeError> {
        decode(bytes)
    }
}

#[cfg(test)]
mod tests;
