//! What `cuntong` commands (`meeting …`, `call`, `alarms ack`) and the `cuntong central`
//! service say to each other, through the broker: a [`Request`] on `ct/v1/c/req/CLIENT`, a
//! [`Response`] on `ct/v1/c/res/CLIENT`. JSON: this is control traffic between central tools,
//! not the metered hot path, and readable on the wire is worth more here than a few bytes.
//!
//! Requests carry core's typed values: meeting ids, terminal ids, regions and invitees in their
//! text form (`m1`, `130102001001-main`, `130102`), the chair's operation as
//! [`ChairOp`] (`"start"`, `{"grant": "130102001001-main"}`, …), the session's [`Kind`] and
//! [`MediaProfile`] by name; a value that does not parse fails the whole request, as does an
//! unknown field. A refusal is a [`ControlError`]. `docs/protocol.md` describes the form; the
//! `*_pinned_json` tests below hold it.
//!
//! The `--json` outputs of the commands ([`SiteJson`], [`RollCallJson`], [`MeetingJson`]) are
//! a documented contract (`docs/operations.md`). Site lists come in pages of at most [`PAGE`]
//! sites and [`PAGE_BYTES`] of rows (the client asks for the next page after the last
//! terminal it has), so no message grows with the size of the meeting, and none passes the
//! largest message a link takes whatever the sites' names.

use std::net::SocketAddr;
use std::path::PathBuf;

use cuntong_core::media::layout::Layout;
use cuntong_core::meeting::host::ChairOp;
use cuntong_core::meeting::{Invitee, Kind, MediaProfile, MeetingId};
use cuntong_core::terminal_id::TerminalId;
use serde::{Deserialize, Serialize};

/// Sites per page of a status or roll-call answer, at most.
pub const PAGE: usize = 1000;
/// The rows of a page, as JSON, at most (a row alone may pass it): room under the largest
/// message a link takes ([`cuntong_core::envelope::MAX_PAYLOAD`]) for the rest of the answer.
pub const PAGE_BYTES: usize = 48 * 1024;
const _: () = assert!(PAGE_BYTES + 4096 < cuntong_core::envelope::MAX_PAYLOAD);

/// A command's request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Chosen by the client; the response carries it back.
    pub id: u64,
    pub body: RequestBody,
}

/// What a command asks the meeting host (or, `AckAlarm`, the alarm service).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RequestBody {
    Create {
        title: String,
        #[serde(with = "text")]
        kind: Kind,
        /// Region codes and terminal ids.
        #[serde(with = "text::vec")]
        invite: Vec<Invitee>,
        /// Scheduled start, Unix ms; the host starts it then on its own.
        at_ms: Option<u64>,
        /// By name: `hd`, `sd`, `low`, `audio`.
        #[serde(with = "profile")]
        profile: MediaProfile,
        /// The chair's (lecturer's, caller's) terminal.
        #[serde(with = "text::option")]
        chair: Option<TerminalId>,
        /// Granting the floor mutes the other sites.
        floor_mutes_others: bool,
    },
    /// A chair operation.
    Op {
        #[serde(with = "text")]
        meeting: MeetingId,
        #[serde(with = "chair_op")]
        op: ChairOp,
    },
    /// The session and a page of its sites: those after terminal `after`; with `all`, that
    /// page and every one after it, each its own answer to the request.
    Status {
        #[serde(with = "text")]
        meeting: MeetingId,
        #[serde(with = "text::option")]
        after: Option<TerminalId>,
        #[serde(default, skip_serializing_if = "no")]
        all: bool,
    },
    /// The latest roll call: counts and a page of sites after terminal `after` (with `all`,
    /// every page from there, as for `Status`; with `counts`, the counts alone, as a chair
    /// waiting for the answers asks them again and again).
    RollCall {
        #[serde(with = "text")]
        meeting: MeetingId,
        #[serde(with = "text::option")]
        after: Option<TerminalId>,
        #[serde(default, skip_serializing_if = "no")]
        all: bool,
        #[serde(default, skip_serializing_if = "no")]
        counts: bool,
    },
    List,
    /// Central records the session (the composed picture and the mixed sound) to `out` on its
    /// machine, in `layout` (default: the chair's), or, without `out`, stops recording it.
    Record {
        #[serde(with = "text")]
        meeting: MeetingId,
        out: Option<PathBuf>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        layout: Option<Layout>,
    },
    /// A viewer of a site's stream at `to` (`host:port`; audio two ports up), or, with
    /// `stop`, no longer.
    View {
        #[serde(with = "text")]
        meeting: MeetingId,
        #[serde(with = "text")]
        terminal: TerminalId,
        to: SocketAddr,
        stop: bool,
    },
    /// The chair has a SIP gateway invited to the session call the room system at `uri`
    /// into it.
    Dial {
        #[serde(with = "text")]
        meeting: MeetingId,
        #[serde(with = "text")]
        gateway: TerminalId,
        uri: String,
    },
    /// The duty office acknowledges an alarm.
    AckAlarm {
        id: u64,
        by: String,
    },
    /// Start a staged rollout: the plan, and the signed command that offers the release to
    /// the region under this id (made with the fleet's command key by `cuntong rollout
    /// start`), which also says until when the offer holds.
    RolloutStart {
        id: u64,
        version: String,
        #[serde(with = "text")]
        region: cuntong_core::site::Region,
        rate_per_min: u32,
        abort_failed_percent: u8,
        min_executed: u32,
        window: Option<cuntong_core::rollout::Window>,
        timeout_ms: u64,
        command: Hex,
    },
    /// Pause, resume or cancel a rollout.
    Rollout {
        id: u64,
        op: cuntong_core::rollout::Op,
    },
}

/// Bytes as lower-case hex in JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hex(pub Vec<u8>);

impl Serialize for Hex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&cuntong_terminal::hex::encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Hex {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Hex, D::Error> {
        let text = String::deserialize(d)?;
        cuntong_terminal::hex::decode(&text)
            .map(Hex)
            .ok_or_else(|| serde::de::Error::custom("not hex"))
    }
}

/// The host's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    pub id: u64,
    /// Why the request failed; `None` on success.
    pub error: Option<ControlError>,
    pub body: ResponseBody,
}

/// Why central refused a request. The text is what the command prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum ControlError {
    /// No session has this id.
    #[error("no session {0}")]
    NoSuchMeeting(#[serde(with = "text")] MeetingId),
    /// A stored session central cannot host (`meeting list` shows why); `meeting end` retires
    /// it.
    #[error(
        "{meeting}: the stored session cannot be used ({problem}); `meeting end {meeting}` retires it"
    )]
    Unusable {
        #[serde(with = "text")]
        meeting: MeetingId,
        problem: String,
    },
    /// The roll-call results of a session with no roll call.
    #[error("{0}: no roll call is open")]
    NoRollCall(#[serde(with = "text")] MeetingId),
    /// A value central does not take (a title, a start, the invitees), with why.
    #[error("{0}")]
    BadRequest(String),
    /// The session refused the operation as it stands (ended, not started, the site has not
    /// joined, …).
    #[error("{0}")]
    Refused(String),
    /// The alarm service refused the acknowledgement (no such alarm, already cleared, …).
    #[error("{0}")]
    Alarm(String),
    /// Central could not do it (its store, its randomness).
    #[error("{0}")]
    Failed(String),
}

impl ControlError {
    /// The request named something that is not there or is not valid: the asker's mistake,
    /// exit code 2 for a command.
    pub fn is_bad_request(&self) -> bool {
        match self {
            ControlError::NoSuchMeeting(_)
            | ControlError::NoRollCall(_)
            | ControlError::BadRequest(_) => true,
            ControlError::Unusable { .. }
            | ControlError::Refused(_)
            | ControlError::Alarm(_)
            | ControlError::Failed(_) => false,
        }
    }
}

fn no(b: &bool) -> bool {
    !b
}

/// The answers to `body`: one, or one a page for a request of every page, each from
/// `answer` (a refusal ends them).
pub fn answer_pages(
    body: RequestBody,
    mut answer: impl FnMut(RequestBody) -> Result<ResponseBody, ControlError>,
) -> Vec<Result<ResponseBody, ControlError>> {
    let mut answers = Vec::new();
    let mut next = Some(body);
    while let Some(body) = next.take() {
        let result = answer(body.clone());
        if let Ok(page) = &result {
            next = body.next_page(page);
        }
        answers.push(result);
    }
    answers
}

impl RequestBody {
    /// For a request of every page, given the answer of one: the request of the next page,
    /// if there is one.
    pub fn next_page(&self, answer: &ResponseBody) -> Option<RequestBody> {
        let after = answer.next_page().copied();
        match self {
            RequestBody::Status {
                meeting, all: true, ..
            } => after.map(|after| RequestBody::Status {
                meeting: *meeting,
                after: Some(after),
                all: true,
            }),
            RequestBody::RollCall {
                meeting,
                all: true,
                counts,
                ..
            } => after.map(|after| RequestBody::RollCall {
                meeting: *meeting,
                after: Some(after),
                all: true,
                counts: *counts,
            }),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ResponseBody {
    None,
    Created {
        #[serde(with = "text")]
        id: MeetingId,
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
        #[serde(with = "text::option")]
        next: Option<TerminalId>,
    },
    List(Vec<MeetingJson>),
    /// The stream's description for a player (SDP).
    Sdp(String),
}

impl ResponseBody {
    /// Where the next page of a paged answer starts; `None` for the last page (or an answer
    /// that is not paged).
    pub fn next_page(&self) -> Option<&TerminalId> {
        match self {
            ResponseBody::Status(s) => s.next.as_ref(),
            ResponseBody::RollCall { next, .. } => next.as_ref(),
            _ => None,
        }
    }
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
    /// The chair's layout for every site (`2x2`…), if the chair set one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<String>,
    /// The site sharing content (双流), if one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// The file central records the session to, while it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording: Option<String>,
    /// A page of the sites, by terminal id.
    pub sites: Vec<SiteJson>,
    /// Ask again with `after` = this for the next page.
    #[serde(with = "text::option")]
    pub next: Option<TerminalId>,
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

/// Core values on the wire in their text form (`Display`, `FromStr`): core's own serde form is
/// postcard's compact one (a terminal id as a site number and a slug), and this protocol is
/// read by people. A value that does not parse is an error naming it.
mod text {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// A value serialized as its text.
    struct AsText<'a, T>(&'a T);

    impl<T: Display> Serialize for AsText<'_, T> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_str(self.0)
        }
    }

    fn parse<T, E>(s: &str) -> Result<T, E>
    where
        T: FromStr,
        T::Err: Display,
        E: Error,
    {
        s.parse().map_err(|e| E::custom(format!("{s:?}: {e}")))
    }

    pub fn serialize<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        parse(&String::deserialize(d)?)
    }

    pub mod option {
        use super::*;

        pub fn serialize<T: Display, S: Serializer>(
            v: &Option<T>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            v.as_ref().map(AsText).serialize(s)
        }

        pub fn deserialize<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
        where
            T: FromStr,
            T::Err: Display,
            D: Deserializer<'de>,
        {
            Option::<String>::deserialize(d)?
                .map(|s| parse(&s))
                .transpose()
        }
    }

    pub mod vec {
        use super::*;

        pub fn serialize<T: Display, S: Serializer>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(v.iter().map(AsText))
        }

        pub fn deserialize<'de, T, D>(d: D) -> Result<Vec<T>, D::Error>
        where
            T: FromStr,
            T::Err: Display,
            D: Deserializer<'de>,
        {
            Vec::<String>::deserialize(d)?
                .iter()
                .map(|s| parse(s))
                .collect()
        }
    }
}

/// A media profile on the wire: its name.
mod profile {
    use cuntong_core::meeting::MediaProfile;
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(p: &MediaProfile, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&p.name)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<MediaProfile, D::Error> {
        let name = String::deserialize(d)?;
        MediaProfile::named(&name).ok_or_else(|| {
            D::Error::custom(format!(
                "profile {name:?}: use one of {}",
                MediaProfile::NAMES.join(", ")
            ))
        })
    }
}

/// A chair operation on the wire: its name (as [`ChairOp::name`]), with its terminal where it
/// has one: `"start"`, `{"grant": "130102001001-main"}`, `{"broadcast": null}`,
/// `{"delegate": {"terminal": "130102001001-main", "region": "130102"}}`.
mod chair_op {
    use cuntong_core::media::layout::Layout;
    use cuntong_core::meeting::host::ChairOp;
    use cuntong_core::site::Region;
    use cuntong_core::terminal_id::TerminalId;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "kebab-case", deny_unknown_fields)]
    enum Wire {
        Start,
        End,
        Rollcall,
        CloseRollcall,
        Grant(#[serde(with = "super::text")] TerminalId),
        Revoke,
        Mute(#[serde(with = "super::text")] TerminalId),
        Unmute(#[serde(with = "super::text")] TerminalId),
        MuteAll,
        UnmuteAll,
        Broadcast(#[serde(with = "super::text::option")] Option<TerminalId>),
        LowerHand(#[serde(with = "super::text")] TerminalId),
        Delegate {
            #[serde(with = "super::text")]
            terminal: TerminalId,
            #[serde(with = "super::text::option")]
            region: Option<Region>,
        },
        Layout(Option<Layout>),
        Content(#[serde(with = "super::text::option")] Option<TerminalId>),
    }

    pub fn serialize<S: Serializer>(op: &ChairOp, s: S) -> Result<S::Ok, S::Error> {
        match *op {
            ChairOp::Start => Wire::Start,
            ChairOp::End => Wire::End,
            ChairOp::RollCall => Wire::Rollcall,
            ChairOp::CloseRollCall => Wire::CloseRollcall,
            ChairOp::Grant(t) => Wire::Grant(t),
            ChairOp::Revoke => Wire::Revoke,
            ChairOp::Mute(t) => Wire::Mute(t),
            ChairOp::Unmute(t) => Wire::Unmute(t),
            ChairOp::MuteAll => Wire::MuteAll,
            ChairOp::UnmuteAll => Wire::UnmuteAll,
            ChairOp::Broadcast(t) => Wire::Broadcast(t),
            ChairOp::LowerHand(t) => Wire::LowerHand(t),
            ChairOp::Delegate(terminal, region) => Wire::Delegate { terminal, region },
            ChairOp::Layout(l) => Wire::Layout(l),
            ChairOp::Content(t) => Wire::Content(t),
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ChairOp, D::Error> {
        Ok(match Wire::deserialize(d)? {
            Wire::Start => ChairOp::Start,
            Wire::End => ChairOp::End,
            Wire::Rollcall => ChairOp::RollCall,
            Wire::CloseRollcall => ChairOp::CloseRollCall,
            Wire::Grant(t) => ChairOp::Grant(t),
            Wire::Revoke => ChairOp::Revoke,
            Wire::Mute(t) => ChairOp::Mute(t),
            Wire::Unmute(t) => ChairOp::Unmute(t),
            Wire::MuteAll => ChairOp::MuteAll,
            Wire::UnmuteAll => ChairOp::UnmuteAll,
            Wire::Broadcast(t) => ChairOp::Broadcast(t),
            Wire::LowerHand(t) => ChairOp::LowerHand(t),
            Wire::Delegate { terminal, region } => ChairOp::Delegate(terminal, region),
            Wire::Layout(l) => ChairOp::Layout(l),
            Wire::Content(t) => ChairOp::Content(t),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value serialises to exactly its pinned JSON and that JSON parses back to it.
    fn assert_pinned<T>(cases: &[(T, &str)])
    where
        T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let mut changed = String::new();
        for (i, (value, pinned)) in cases.iter().enumerate() {
            let now = serde_json::to_string(value).unwrap();
            if now != *pinned {
                changed += &format!("case {i}: {value:?}\n  pinned {pinned}\n  now    {now}\n");
                continue;
            }
            assert_eq!(
                &serde_json::from_str::<T>(pinned).unwrap(),
                value,
                "case {i}"
            );
        }
        assert!(changed.is_empty(), "control messages changed:\n{changed}");
    }

    fn meeting(problem: Option<&str>) -> MeetingJson {
        MeetingJson {
            id: "m1".into(),
            title: "flood".into(),
            kind: "meeting".into(),
            status: "live".into(),
            version: 3,
            invited: vec!["130102".into()],
            chair: Some("130102000000-hall".into()),
            joined: 1,
            created: "2025-11-22T08:00:00Z".into(),
            starts: None,
            problem: problem.map(Into::into),
        }
    }

    /// Every request variant, every chair operation among them, byte for byte: the central
    /// service and the commands of another release must keep understanding each other.
    #[test]
    fn every_request_has_pinned_json() {
        let req = |body| Request { id: 7, body };
        let m1: MeetingId = "m1".parse().unwrap();
        let site: TerminalId = "130102001001-main".parse().unwrap();
        let op = |op| req(RequestBody::Op { meeting: m1, op });
        let op_json =
            |op: &str| format!(r#"{{"id":7,"body":{{"op":{{"meeting":"m1","op":{op}}}}}}}"#);
        let ops = [
            (ChairOp::Start, r#""start""#),
            (ChairOp::End, r#""end""#),
            (ChairOp::RollCall, r#""rollcall""#),
            (ChairOp::CloseRollCall, r#""close-rollcall""#),
            (ChairOp::Grant(site), r#"{"grant":"130102001001-main"}"#),
            (ChairOp::Revoke, r#""revoke""#),
            (ChairOp::Mute(site), r#"{"mute":"130102001001-main"}"#),
            (ChairOp::Unmute(site), r#"{"unmute":"130102001001-main"}"#),
            (ChairOp::MuteAll, r#""mute-all""#),
            (ChairOp::UnmuteAll, r#""unmute-all""#),
            (
                ChairOp::Broadcast(Some(site)),
                r#"{"broadcast":"130102001001-main"}"#,
            ),
            (ChairOp::Broadcast(None), r#"{"broadcast":null}"#),
            (
                ChairOp::Layout(Some(cuntong_core::media::layout::Layout::Grid(2))),
                r#"{"layout":"2x2"}"#,
            ),
            (ChairOp::Layout(None), r#"{"layout":null}"#),
            (
                ChairOp::Content(Some(site)),
                r#"{"content":"130102001001-main"}"#,
            ),
            (ChairOp::Content(None), r#"{"content":null}"#),
            (
                ChairOp::LowerHand(site),
                r#"{"lower-hand":"130102001001-main"}"#,
            ),
            (
                ChairOp::Delegate(site, Some("130102".parse().unwrap())),
                r#"{"delegate":{"terminal":"130102001001-main","region":"130102"}}"#,
            ),
            (
                ChairOp::Delegate(site, None),
                r#"{"delegate":{"terminal":"130102001001-main","region":null}}"#,
            ),
        ];
        for (o, _) in &ops {
            // The wire name is the operation's own name.
            assert!(
                ops.iter()
                    .any(|(_, json)| json.contains(&format!("\"{}\"", o.name()))),
                "{o:?}"
            );
        }
        let ops: Vec<(Request, String)> = ops
            .into_iter()
            .map(|(o, json)| (op(o), op_json(json)))
            .collect();
        let ops: Vec<(Request, &str)> = ops.iter().map(|(r, j)| (r.clone(), j.as_str())).collect();
        assert_pinned(&ops);
        assert_pinned(&[
            (
                req(RequestBody::Create {
                    title: "flood".into(),
                    kind: Kind::Meeting,
                    invite: vec![
                        "130102".parse().unwrap(),
                        "130102001001-main".parse().unwrap(),
                    ],
                    at_ms: Some(1_763_798_400_000),
                    profile: MediaProfile::named("sd").unwrap(),
                    chair: Some("130102000000-hall".parse().unwrap()),
                    floor_mutes_others: true,
                }),
                r#"{"id":7,"body":{"create":{"title":"flood","kind":"meeting","invite":["130102","130102001001-main"],"at_ms":1763798400000,"profile":"sd","chair":"130102000000-hall","floor_mutes_others":true}}}"#,
            ),
            (
                req(RequestBody::Create {
                    title: "call".into(),
                    kind: Kind::Call,
                    invite: vec!["130102001001-main".parse().unwrap()],
                    at_ms: None,
                    profile: MediaProfile::named("audio").unwrap(),
                    chair: None,
                    floor_mutes_others: false,
                }),
                r#"{"id":7,"body":{"create":{"title":"call","kind":"call","invite":["130102001001-main"],"at_ms":null,"profile":"audio","chair":null,"floor_mutes_others":false}}}"#,
            ),
            (
                req(RequestBody::Status {
                    meeting: m1,
                    after: Some(site),
                    all: false,
                }),
                r#"{"id":7,"body":{"status":{"meeting":"m1","after":"130102001001-main"}}}"#,
            ),
            (
                req(RequestBody::RollCall {
                    meeting: m1,
                    after: None,
                    all: false,
                    counts: false,
                }),
                r#"{"id":7,"body":{"roll_call":{"meeting":"m1","after":null}}}"#,
            ),
            (
                req(RequestBody::RollCall {
                    meeting: m1,
                    after: None,
                    all: true,
                    counts: false,
                }),
                r#"{"id":7,"body":{"roll_call":{"meeting":"m1","after":null,"all":true}}}"#,
            ),
            (
                req(RequestBody::RollCall {
                    meeting: m1,
                    after: None,
                    all: false,
                    counts: true,
                }),
                r#"{"id":7,"body":{"roll_call":{"meeting":"m1","after":null,"counts":true}}}"#,
            ),
            (req(RequestBody::List), r#"{"id":7,"body":"list"}"#),
            (
                req(RequestBody::Record {
                    meeting: m1,
                    out: Some("/srv/rec/m1.mkv".into()),
                    layout: Some(Layout::Grid(3)),
                }),
                r#"{"id":7,"body":{"record":{"meeting":"m1","out":"/srv/rec/m1.mkv","layout":"3x3"}}}"#,
            ),
            (
                req(RequestBody::Record {
                    meeting: m1,
                    out: None,
                    layout: None,
                }),
                r#"{"id":7,"body":{"record":{"meeting":"m1","out":null}}}"#,
            ),
            (
                req(RequestBody::View {
                    meeting: m1,
                    terminal: site,
                    to: "127.0.0.1:5000".parse().unwrap(),
                    stop: false,
                }),
                r#"{"id":7,"body":{"view":{"meeting":"m1","terminal":"130102001001-main","to":"127.0.0.1:5000","stop":false}}}"#,
            ),
            (
                req(RequestBody::Dial {
                    meeting: m1,
                    gateway: site,
                    uri: "sip:hall@10.13.2.40".into(),
                }),
                r#"{"id":7,"body":{"dial":{"meeting":"m1","gateway":"130102001001-main","uri":"sip:hall@10.13.2.40"}}}"#,
            ),
            (
                req(RequestBody::AckAlarm {
                    id: 12,
                    by: "duty".into(),
                }),
                r#"{"id":7,"body":{"ack_alarm":{"id":12,"by":"duty"}}}"#,
            ),
            (
                req(RequestBody::RolloutStart {
                    id: 482913377,
                    version: "0.2.0".into(),
                    region: "1301".parse().unwrap(),
                    rate_per_min: 50,
                    abort_failed_percent: 10,
                    min_executed: 20,
                    window: Some(cuntong_core::rollout::Window {
                        start_min: 1020,
                        end_min: 1260,
                    }),
                    timeout_ms: 7_200_000,
                    command: Hex(vec![0x01, 0xab]),
                }),
                r#"{"id":7,"body":{"rollout_start":{"id":482913377,"version":"0.2.0","region":"1301","rate_per_min":50,"abort_failed_percent":10,"min_executed":20,"window":{"start_min":1020,"end_min":1260},"timeout_ms":7200000,"command":"01ab"}}}"#,
            ),
            (
                req(RequestBody::Rollout {
                    id: 482913377,
                    op: cuntong_core::rollout::Op::Pause,
                }),
                r#"{"id":7,"body":{"rollout":{"id":482913377,"op":"pause"}}}"#,
            ),
        ]);
    }

    /// A request with a field central does not know, or with a value that is not what its
    /// field holds, is refused whole, naming the value; none of them panics.
    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        let refused = [
            // Unknown fields, at every level.
            (r#"{"id":7,"body":"list","extra":1}"#, "extra"),
            (
                r#"{"id":7,"body":{"status":{"meeting":"m1","after":null,"page":2}}}"#,
                "page",
            ),
            (
                r#"{"id":7,"body":{"op":{"meeting":"m1","op":"start","terminal":null}}}"#,
                "terminal",
            ),
            (
                r#"{"id":7,"body":{"op":{"meeting":"m1","op":{"delegate":{"terminal":"130102001001-main","region":null,"x":1}}}}}"#,
                "x",
            ),
            // Values that are not what they say.
            (
                r#"{"id":7,"body":{"status":{"meeting":"NOPE","after":null}}}"#,
                "NOPE",
            ),
            (
                r#"{"id":7,"body":{"status":{"meeting":"1m","after":null}}}"#,
                "1m",
            ),
            (
                r#"{"id":7,"body":{"roll_call":{"meeting":"m1","after":"main"}}}"#,
                "main",
            ),
            (
                r#"{"id":7,"body":{"op":{"meeting":"m1","op":"dance"}}}"#,
                "dance",
            ),
            (
                r#"{"id":7,"body":{"op":{"meeting":"m1","op":{"mute":"x-main"}}}}"#,
                "x-main",
            ),
            // A mute names its terminal.
            (
                r#"{"id":7,"body":{"op":{"meeting":"m1","op":"mute"}}}"#,
                "variant",
            ),
            (
                r#"{"id":7,"body":{"op":{"meeting":"m1","op":{"delegate":{"terminal":"130102001001-main","region":"1"}}}}}"#,
                "\"1\"",
            ),
            (
                r#"{"id":7,"body":{"create":{"title":"t","kind":"party","invite":["13"],"at_ms":null,"profile":"sd","chair":null,"floor_mutes_others":true}}}"#,
                "party",
            ),
            (
                r#"{"id":7,"body":{"create":{"title":"t","kind":"meeting","invite":["13","99x"],"at_ms":null,"profile":"sd","chair":null,"floor_mutes_others":true}}}"#,
                "99x",
            ),
            (
                r#"{"id":7,"body":{"create":{"title":"t","kind":"meeting","invite":["13"],"at_ms":null,"profile":"4k","chair":null,"floor_mutes_others":true}}}"#,
                "4k",
            ),
            (
                r#"{"id":7,"body":{"view":{"meeting":"m1","terminal":"130102001001-main","to":"nowhere","stop":false}}}"#,
                "",
            ),
        ];
        for (json, named) in refused {
            let e = serde_json::from_str::<Request>(json)
                .expect_err(json)
                .to_string();
            assert!(e.contains(named), "{json}: {e}");
        }
        let answer = r#"{"id":7,"error":{"no_such_meeting":"m1","why":"x"},"body":"none"}"#;
        assert!(serde_json::from_str::<Response>(answer).is_err());
    }

    /// Every response variant, byte for byte.
    #[test]
    fn every_response_has_pinned_json() {
        let res = |body| Response {
            id: 7,
            error: None,
            body,
        };
        let status = MeetingStatus {
            meeting: meeting(None),
            floor: Some("130102001001-main".into()),
            broadcast: None,
            mute_all: false,
            hands: vec!["130102001001-main".into()],
            roll_call: Some(1),
            layout: Some("2x2".into()),
            content: None,
            recording: None,
            sites: vec![SiteJson {
                terminal: "130102001001-main".into(),
                name: "Main St".into(),
                state: "joined".into(),
                role: "speaker".into(),
                muted: false,
                last_answer: Some("2025-11-22T08:00:01Z".into()),
                converged: true,
                media: Some(MediaJson {
                    sending: true,
                    receiving: true,
                    rx_kbps: 600.0,
                    tx_kbps: 632.5,
                    loss_percent: 0.5,
                    jitter_ms: 12.0,
                    frames: 250.0,
                    streams: 1.0,
                }),
            }],
            next: None,
        };
        assert_pinned(&[
            (
                res(ResponseBody::None),
                r#"{"id":7,"error":null,"body":"none"}"#,
            ),
            (
                res(ResponseBody::Created {
                    id: "m1".parse().unwrap(),
                }),
                r#"{"id":7,"error":null,"body":{"created":{"id":"m1"}}}"#,
            ),
            (
                res(ResponseBody::Done { version: 4 }),
                r#"{"id":7,"error":null,"body":{"done":{"version":4}}}"#,
            ),
            (
                res(ResponseBody::Status(Box::new(status))),
                r#"{"id":7,"error":null,"body":{"status":{"meeting":{"id":"m1","title":"flood","kind":"meeting","status":"live","version":3,"invited":["130102"],"chair":"130102000000-hall","joined":1,"created":"2025-11-22T08:00:00Z","starts":null},"floor":"130102001001-main","broadcast":null,"mute_all":false,"hands":["130102001001-main"],"roll_call":1,"layout":"2x2","sites":[{"terminal":"130102001001-main","name":"Main St","state":"joined","role":"speaker","muted":false,"last_answer":"2025-11-22T08:00:01Z","converged":true,"media":{"sending":true,"receiving":true,"rx_kbps":600.0,"tx_kbps":632.5,"loss_percent":0.5,"jitter_ms":12.0,"frames":250.0,"streams":1.0}}],"next":null}}}"#,
            ),
            (
                res(ResponseBody::RollCall {
                    present: 1,
                    total: 2,
                    rows: vec![
                        RollCallJson {
                            terminal: "130102001001-main".into(),
                            name: "Main St".into(),
                            present: true,
                            latency_ms: Some(1200),
                        },
                        RollCallJson {
                            terminal: "130102001002-main".into(),
                            name: String::new(),
                            present: false,
                            latency_ms: None,
                        },
                    ],
                    next: Some("130102001002-main".parse().unwrap()),
                }),
                r#"{"id":7,"error":null,"body":{"roll_call":{"present":1,"total":2,"rows":[{"terminal":"130102001001-main","name":"Main St","present":true,"latency_ms":1200},{"terminal":"130102001002-main","name":"","present":false,"latency_ms":null}],"next":"130102001002-main"}}}"#,
            ),
            (
                res(ResponseBody::List(vec![
                    meeting(None),
                    meeting(Some("bad stored record")),
                ])),
                r#"{"id":7,"error":null,"body":{"list":[{"id":"m1","title":"flood","kind":"meeting","status":"live","version":3,"invited":["130102"],"chair":"130102000000-hall","joined":1,"created":"2025-11-22T08:00:00Z","starts":null},{"id":"m1","title":"flood","kind":"meeting","status":"live","version":3,"invited":["130102"],"chair":"130102000000-hall","joined":1,"created":"2025-11-22T08:00:00Z","starts":null,"problem":"bad stored record"}]}}"#,
            ),
            (
                res(ResponseBody::Sdp(
                    "v=0\r\nm=video 5000 RTP/AVP 96\r\n".into(),
                )),
                r#"{"id":7,"error":null,"body":{"sdp":"v=0\r\nm=video 5000 RTP/AVP 96\r\n"}}"#,
            ),
        ]);
    }

    /// Every refusal, byte for byte, with the text the command prints and the exit code it
    /// maps to (2: the request named what is not there, or is not valid).
    #[test]
    fn every_error_has_pinned_json_text_and_exit_class() {
        let m9: MeetingId = "m9".parse().unwrap();
        let cases = [
            (
                ControlError::NoSuchMeeting(m9),
                r#"{"no_such_meeting":"m9"}"#,
                "no session m9",
                true,
            ),
            (
                ControlError::Unusable {
                    meeting: m9,
                    problem: "bad record".into(),
                },
                r#"{"unusable":{"meeting":"m9","problem":"bad record"}}"#,
                "m9: the stored session cannot be used (bad record); `meeting end m9` retires it",
                false,
            ),
            (
                ControlError::NoRollCall(m9),
                r#"{"no_roll_call":"m9"}"#,
                "m9: no roll call is open",
                true,
            ),
            (
                ControlError::BadRequest("a session needs a title".into()),
                r#"{"bad_request":"a session needs a title"}"#,
                "a session needs a title",
                true,
            ),
            (
                ControlError::Refused("the session has ended".into()),
                r#"{"refused":"the session has ended"}"#,
                "the session has ended",
                false,
            ),
            (
                ControlError::Alarm("no alarm 3".into()),
                r#"{"alarm":"no alarm 3"}"#,
                "no alarm 3",
                false,
            ),
            (
                ControlError::Failed("store: disk full".into()),
                r#"{"failed":"store: disk full"}"#,
                "store: disk full",
                false,
            ),
        ];
        let mut pinned = Vec::new();
        for (e, json, text, bad) in &cases {
            assert_eq!(e.to_string(), *text);
            assert_eq!(e.is_bad_request(), *bad, "{e:?}");
            pinned.push((
                Response {
                    id: 7,
                    error: Some(e.clone()),
                    body: ResponseBody::None,
                },
                format!(r#"{{"id":7,"error":{json},"body":"none"}}"#),
            ));
        }
        let pinned: Vec<(Response, &str)> = pinned
            .iter()
            .map(|(r, j)| (r.clone(), j.as_str()))
            .collect();
        assert_pinned(&pinned);
    }
}
