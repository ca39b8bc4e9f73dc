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

    /// Every request variant, byte for byte: the central service and the commands of another
    /// release must keep understanding each other.
    #[test]
    fn every_request_has_pinned_json() {
        let req = |body| Request { id: 7, body };
        assert_pinned(&[
            (
                req(RequestBody::Create {
                    title: "flood".into(),
                    kind: "meeting".into(),
                    invite: vec!["130102".into(), "130102001001-main".into()],
                    at_ms: Some(1_763_798_400_000),
                    profile: "sd".into(),
                    chair: Some("130102000000-hall".into()),
                    floor_mutes_others: true,
                }),
                r#"{"id":7,"body":{"create":{"title":"flood","kind":"meeting","invite":["130102","130102001001-main"],"at_ms":1763798400000,"profile":"sd","chair":"130102000000-hall","floor_mutes_others":true}}}"#,
            ),
            (
                req(RequestBody::Op {
                    meeting: "m1".into(),
                    op: "delegate".into(),
                    terminal: Some("130102001001-main".into()),
                    region: Some("130102".into()),
                }),
                r#"{"id":7,"body":{"op":{"meeting":"m1","op":"delegate","terminal":"130102001001-main","region":"130102"}}}"#,
            ),
            (
                req(RequestBody::Op {
                    meeting: "m1".into(),
                    op: "start".into(),
                    terminal: None,
                    region: None,
                }),
                r#"{"id":7,"body":{"op":{"meeting":"m1","op":"start","terminal":null,"region":null}}}"#,
            ),
            (
                req(RequestBody::Status {
                    meeting: "m1".into(),
                    after: Some("130102001001-main".into()),
                }),
                r#"{"id":7,"body":{"status":{"meeting":"m1","after":"130102001001-main"}}}"#,
            ),
            (
                req(RequestBody::RollCall {
                    meeting: "m1".into(),
                    after: None,
                }),
                r#"{"id":7,"body":{"roll_call":{"meeting":"m1","after":null}}}"#,
            ),
            (req(RequestBody::List), r#"{"id":7,"body":"list"}"#),
            (
                req(RequestBody::View {
                    meeting: "m1".into(),
                    terminal: "130102001001-main".into(),
                    to: "127.0.0.1:5000".into(),
                    stop: false,
                }),
                r#"{"id":7,"body":{"view":{"meeting":"m1","terminal":"130102001001-main","to":"127.0.0.1:5000","stop":false}}}"#,
            ),
            (
                req(RequestBody::AckAlarm {
                    id: 12,
                    by: "duty".into(),
                }),
                r#"{"id":7,"body":{"ack_alarm":{"id":12,"by":"duty"}}}"#,
            ),
        ]);
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
                Response {
                    id: 7,
                    error: Some("no meeting m9".into()),
                    body: ResponseBody::None,
                },
                r#"{"id":7,"error":"no meeting m9","body":"none"}"#,
            ),
            (
                res(ResponseBody::Created { id: "m1".into() }),
                r#"{"id":7,"error":null,"body":{"created":{"id":"m1"}}}"#,
            ),
            (
                res(ResponseBody::Done { version: 4 }),
                r#"{"id":7,"error":null,"body":{"done":{"version":4}}}"#,
            ),
            (
                res(ResponseBody::Status(Box::new(status))),
                r#"{"id":7,"error":null,"body":{"status":{"meeting":{"id":"m1","title":"flood","kind":"meeting","status":"live","version":3,"invited":["130102"],"chair":"130102000000-hall","joined":1,"created":"2025-11-22T08:00:00Z","starts":null},"floor":"130102001001-main","broadcast":null,"mute_all":false,"hands":["130102001001-main"],"roll_call":1,"sites":[{"terminal":"130102001001-main","name":"Main St","state":"joined","role":"speaker","muted":false,"last_answer":"2025-11-22T08:00:01Z","converged":true,"media":{"sending":true,"receiving":true,"rx_kbps":600.0,"tx_kbps":632.5,"loss_percent":0.5,"jitter_ms":12.0,"frames":250.0,"streams":1.0}}],"next":null}}}"#,
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
                    next: Some("130102001002-main".into()),
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
}
