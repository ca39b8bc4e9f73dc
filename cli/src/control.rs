//! What `cuntong` commands (`meeting …`, `alarms ack`) and the `cuntong central` service say
//! to each other, through the broker: a [`Request`] on `ct/v1/c/req/CLIENT`, a [`Response`] on
//! `ct/v1/c/res/CLIENT`. JSON: this is control traffic between central tools, not the metered
//! hot path, and readable on the wire is worth more here than a few bytes.
//!
//! The `--json` outputs of the commands ([`SiteJson`], [`RollCallJson`], [`MeetingJson`]) are
//! a documented contract (`docs/operations.md`). Site lists come in pages of [`PAGE`] sites
//! (the client asks for the next page after the last terminal it has), so no message grows
//! with the size of the meeting.

/// Sites per page of a status or roll-call answer.
pub const PAGE: usize = 200;

use serde::{Deserialize, Serialize};

/// A command's request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Chosen by the client; the response carries it back.
    pub id: u64,
    pub body: RequestBody,
}

/// What a command asks the meeting host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RequestBody {
    Create {
        title: String,
        /// `meeting`, `training` or `call`.
        kind: String,
        /// Region codes and terminal ids.
        invite: Vec<String>,
        /// Scheduled start, Unix ms; the host starts it then on its own.
        at_ms: Option<u64>,
        profile: String,
        /// The chair's (lecturer's, caller's) terminal.
        chair: Option<String>,
        /// Granting the floor mutes the other sites.
        floor_mutes_others: bool,
    },
    /// A chair operation: `start`, `end`, `rollcall`, `grant`, `revoke`, `mute`, `unmute`,
    /// `mute-all`, `unmute-all`, `broadcast`, `lower-hand`, `delegate` (with `region`, or
    /// without it to take the delegation back); `terminal` where it needs one.
    Op {
        meeting: String,
        op: String,
        terminal: Option<String>,
        #[serde(default)]
        region: Option<String>,
    },
    /// The session and a page of its sites: those after terminal `after`.
    Status {
        meeting: String,
        after: Option<String>,
    },
    /// The latest roll call: counts and a page of sites after terminal `after`.
    RollCall {
        meeting: String,
        after: Option<String>,
    },
    List,
    /// A viewer of a site's stream at `to` (`host:port`; audio two ports up), or, with
    /// `stop`, no longer.
    View {
        meeting: String,
        terminal: String,
        to: String,
        stop: bool,
    },
    /// The duty office acknowledges an alarm.
    AckAlarm {
        id: u64,
        by: String,
    },
}

/// The host's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    pub id: u64,
    /// Why the request failed; `None` on success.
    pub error: Option<String>,
    pub body: ResponseBody,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ResponseBody {
    None,
    Created {
        id: String,
    },
    /// The session's state version after an operation.
    Done {
        version: u64,
    },
    Status(Box<MeetingStatus>),
    RollCall {
        present: usize,
        total: usize,
        rows: Vec<RollCallJson>,
        /// Ask again with `after` = this for the next page.
        next: Option<String>,
    },
    List(Vec<MeetingJson>),
    /// The stream's description for a player (SDP).
    Sdp(String),
}

/// A session with its sites, as the host knows them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeetingStatus {
    pub meeting: MeetingJson,
    pub floor: Option<String>,
    pub broadcast: Option<String>,
    pub mute_all: bool,
    pub hands: Vec<String>,
    /// The open roll call's number, if one is open.
    pub roll_call: Option<u32>,
    /// A page of the sites, by terminal id.
    pub sites: Vec<SiteJson>,
    /// Ask again with `after` = this for the next page.
    pub next: Option<String>,
}

/// `cuntong meeting status ID --json`: one object per invited terminal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteJson {
    pub terminal: String,
    /// The terminal's name (as in `cuntong sites --json`).
    #[serde(default)]
    pub name: String,
    /// `invited`, `joined`, `left`, `declined` or `unreachable`.
    pub state: String,
    /// `chair`, `speaker`, `participant` or `listener`.
    pub role: String,
    pub muted: bool,
    /// When the site last answered a roll call (RFC 3339), or null.
    pub last_answer: Option<String>,
    /// The site reported applying the chair's current state (version and mute).
    pub converged: bool,
    /// Its media, from its latest telemetry (null before it reported any).
    #[serde(default)]
    pub media: Option<MediaJson>,
}

/// A site's media as its telemetry last said.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaJson {
    pub sending: bool,
    pub receiving: bool,
    pub rx_kbps: f64,
    pub tx_kbps: f64,
    pub loss_percent: f64,
    pub jitter_ms: f64,
    /// Video frames decoded in its last interval.
    pub frames: f64,
    /// Video streams it decodes (the chair's, the speaker's).
    pub streams: f64,
}

/// `cuntong meeting rollcall ID --json`: one object per invited terminal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollCallJson {
    pub terminal: String,
    /// The terminal's name (as in `cuntong sites --json`).
    #[serde(default)]
    pub name: String,
    pub present: bool,
    /// From the roll call's opening to the site's answer; null if it did not answer.
    pub latency_ms: Option<u64>,
}

/// `cuntong meeting list --json`: one object per session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeetingJson {
    pub id: String,
    pub title: String,
    /// `meeting`, `training` or `call`.
    pub kind: String,
    /// `scheduled`, `live`, `ended`, or `unusable` (a stored session central skipped).
    pub status: String,
    pub version: u64,
    pub invited: Vec<String>,
    pub chair: Option<String>,
    /// Sites that joined (and have not left).
    pub joined: usize,
    /// RFC 3339.
    pub created: String,
    /// Scheduled start, RFC 3339.
    pub starts: Option<String>,
    /// Why central cannot host this stored session (status `unusable`; `meeting end` retires
    /// it); absent for every other session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}
