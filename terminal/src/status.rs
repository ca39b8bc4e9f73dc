//! The local status interface: a Unix socket on which the running daemon answers
//! `cuntong-terminal status`.
//!
//! Protocol: the client sends one line naming the request (`status`), the daemon answers with
//! one line of JSON and closes. The JSON is a [`StatusReport`]; its shape is a contract
//! (`--json` prints it unchanged).
//!
//! At most [`MAX_CLIENTS`] clients are served at once, each for at most 15 s, so a stuck or
//! flooding client cannot take the descriptors the broker link needs (see [`crate::listen`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::link::LinkStatus;
use crate::listen::{Descriptors, Gate};

/// How many recent errors the daemon remembers.
pub const RECENT_ERRORS: usize = 10;

/// What the daemon reports about itself.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusReport {
    pub terminal: String,
    pub version: String,
    /// Unix ms when the daemon started.
    pub started_ms: u64,
    pub broker: String,
    pub link: LinkStatus,
    pub outbox: OutboxReport,
    pub sensors: Vec<SensorReport>,
    /// Latest sampled value of each metric.
    pub latest: BTreeMap<String, f64>,
    /// Newest last: (Unix ms, message).
    pub recent_errors: Vec<(u64, String)>,
    /// The sessions this terminal is invited to or takes part in.
    #[serde(default)]
    pub meetings: Vec<crate::conference::MeetingReport>,
    /// Duty reports raised here, newest last, with their acknowledgement by the duty office.
    #[serde(default)]
    pub duty_reports: Vec<DutyReportStatus>,
    /// Where this daemon listens, once bound: `hj212` (data loggers) and `relay` (media),
    /// as ip:port (the port actually bound when the configuration says port 0).
    #[serde(default)]
    pub listening: BTreeMap<String, String>,
}

/// A duty report and whether the duty office acknowledged it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DutyReportStatus {
    pub report: u64,
    pub kind: String,
    pub text: String,
    /// Unix ms.
    pub raised_ms: u64,
    pub acknowledged_by: Option<String>,
    pub acknowledged_ms: Option<u64>,
}

/// Duty reports the status keeps, at most.
pub const DUTY_REPORTS_KEPT: usize = 20;

/// What the box's operator asks the daemon over the socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalRequest {
    Conference(crate::conference::OperatorRequest),
    /// `report KIND TEXT…`: a duty report for the duty office above the site.
    DutyReport {
        kind: String,
        text: String,
    },
}

/// Why an operator's line is not a request the daemon takes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    #[error("meeting id {given:?}: {problem}")]
    MeetingId {
        given: String,
        problem: cuntong_core::meeting_id::MeetingIdError,
    },
    #[error("terminal {given:?}: {problem}")]
    Terminal {
        given: String,
        problem: cuntong_core::terminal_id::TerminalIdError,
    },
    #[error("{0}")]
    Layout(cuntong_core::media::layout::BadLayout),
    #[error("{0} needs a terminal id")]
    NeedsTerminal(String),
    #[error(
        "chair operation {0:?}: mute|unmute|grant|lower TERMINAL, revoke, mute-all, unmute-all"
    )]
    ChairOp(String),
    #[error(
        "unknown request {0:?} (meeting accept|decline|hand|lower|leave ID, meeting layout ID LAYOUT, meeting content ID on|off, meeting chair ID OP [TERMINAL], call TERMINAL)"
    )]
    Unknown(String),
    #[error("report kind {0:?}: 1 to 32 of a-z, 0-9 and - (e.g. flood, fire, power)")]
    ReportKind(String),
    #[error("report text: 1 to 500 characters")]
    ReportText,
}

/// Why the daemon refused an operator's request.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Malformed(#[from] BadRequest),
    #[error("no session {0} on this terminal")]
    NoSession(cuntong_core::meeting::MeetingId),
    #[error("{0}: not joined")]
    NotJoined(cuntong_core::meeting::MeetingId),
    #[error("this box has no content source ([media] content)")]
    NoContentSource,
    #[error("no picture of {0} on this box (no media, or not joined)")]
    NoPicture(cuntong_core::meeting::MeetingId),
    #[error("a terminal cannot call itself")]
    CallSelf,
    #[error("call id: {0}")]
    CallId(cuntong_core::meeting_id::MeetingIdError),
    #[error("cannot record the report: {0}")]
    Report(#[source] crate::daemon::RunError),
    #[error("the daemon is stopping")]
    Stopping,
}

/// A duty report's kind (`flood`, `fire`, `power`: 1 to 32 of a-z, 0-9 and -), as the
/// operator's command and the duty button's configuration give it.
pub fn check_report_kind(kind: &str) -> Result<(), BadRequest> {
    if kind.is_empty()
        || kind.len() > 32
        || !kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(BadRequest::ReportKind(kind.to_owned()));
    }
    Ok(())
}

/// A duty report's text: 1 to 500 characters.
pub fn check_report_text(text: &str) -> Result<(), BadRequest> {
    if text.is_empty() || text.chars().count() > 500 {
        return Err(BadRequest::ReportText);
    }
    Ok(())
}

impl LocalRequest {
    pub fn parse(line: &str) -> Result<LocalRequest, BadRequest> {
        if let Some(rest) = line.strip_prefix("report ") {
            let (kind, text) = rest.trim().split_once(' ').unwrap_or((rest.trim(), ""));
            let text = text.trim();
            check_report_kind(kind)?;
            check_report_text(text)?;
            return Ok(LocalRequest::DutyReport {
                kind: kind.to_owned(),
                text: text.to_owned(),
            });
        }
        crate::conference::OperatorRequest::parse(line).map(LocalRequest::Conference)
    }

    pub fn to_line(&self) -> String {
        match self {
            LocalRequest::Conference(r) => r.to_line(),
            LocalRequest::DutyReport { kind, text } => format!("report {kind} {text}"),
        }
    }
}

/// An operator's request from the socket, and where the daemon answers it.
pub type OperatorCall = (
    LocalRequest,
    tokio::sync::oneshot::Sender<Result<String, Refusal>>,
);

/// The outbox part of a status report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxReport {
    /// Records central has not confirmed yet.
    pub depth: usize,
    pub bytes: u64,
    /// Records discarded unsent because the outbox was full, since it was created.
    pub dropped: u64,
    /// Per stream: where this outbox's numbering started (1, or the clock when it was
    /// created), the next sequence number, and central's confirmed watermark.
    #[serde(default)]
    pub first_seq: BTreeMap<String, u64>,
    pub next_seq: BTreeMap<String, u64>,
    pub confirmed: BTreeMap<String, u64>,
}

/// One sensor in a status report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensorReport {
    pub name: String,
    pub ok: bool,
    /// Unix ms of the last good read.
    pub last_read_ms: Option<u64>,
    pub readings: BTreeMap<String, f64>,
    pub last_error: Option<String>,
}

/// Where the daemon keeps its report; the server renders it on request.
pub type SharedStatus = Arc<Mutex<StatusReport>>;

/// Status clients served at once; more are closed at once (a person asks now and then).
pub const MAX_CLIENTS: usize = 16;

/// Longest time one client may take, request and answer (an operator's request waits for the
/// daemon's answer).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);

/// Serves status requests on `path` until `stop` fires; clients take their descriptors from
/// `descriptors`. A stale socket file is replaced.
pub async fn serve(
    path: &Path,
    status: SharedStatus,
    link: crate::link::Link,
    requests: tokio::sync::mpsc::Sender<OperatorCall>,
    descriptors: &Descriptors,
    stop: CancellationToken,
) -> std::io::Result<()> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let listener = UnixListener::bind(path)?;
    let gate = Gate::new("status socket", MAX_CLIENTS, descriptors);
    crate::listen::serve(listener, gate, stop, |stream, _| {
        let report = status.lock().map(|s| s.clone()).unwrap_or_default();
        let report = StatusReport {
            link: link.status(),
            ..report
        };
        let requests = requests.clone();
        async move {
            match tokio::time::timeout(CLIENT_TIMEOUT, answer(stream, &report, &requests)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "status client went away"),
                Err(_) => tracing::debug!("status client too slow: closed"),
            }
        }
    })
    .await;
    let _ = std::fs::remove_file(path);
    Ok(())
}

async fn answer(
    stream: UnixStream,
    report: &StatusReport,
    requests: &tokio::sync::mpsc::Sender<OperatorCall>,
) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(5),
        BufReader::new(r).take(256).read_line(&mut line),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request"))??;
    let body = match line.trim() {
        "status" => serde_json::to_string(report).map_err(std::io::Error::other)?,
        other => {
            let result = match LocalRequest::parse(other) {
                Ok(req) => {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    match requests.send((req, tx)).await {
                        Ok(()) => rx.await.unwrap_or(Err(Refusal::Stopping)),
                        Err(_) => Err(Refusal::Stopping),
                    }
                }
                Err(e) => Err(Refusal::Malformed(e)),
            };
            match result {
                Ok(answer) => serde_json::json!({ "ok": answer }).to_string(),
                Err(e) => serde_json::json!({ "error": e.to_string() }).to_string(),
            }
        }
    };
    w.write_all(body.as_bytes()).await?;
    w.write_all(b"\n").await?;
    w.shutdown().await
}

/// Why an operator's tool got no answer it could use from the daemon's socket.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot reach the terminal daemon at {}: {source}", path.display())]
    Unreachable {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("the terminal daemon at {} went away: {source}", path.display())]
    Broken {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("the terminal daemon at {} did not answer", path.display())]
    Silent { path: std::path::PathBuf },
    #[error("bad answer from the daemon: {0}")]
    BadAnswer(String),
    /// The daemon refused the request, saying why.
    #[error("{0}")]
    Refused(String),
}

/// Asks the daemon listening on `path` for its status.
pub async fn request(path: &Path) -> Result<StatusReport, StatusError> {
    let answer = exchange(path, "status", Duration::from_secs(5)).await?;
    serde_json::from_str(&answer).map_err(|e| StatusError::BadAnswer(e.to_string()))
}

/// Sends an operator's request (`meeting hand m1`, `call 130102000000-hall`) to the daemon
/// listening on `path`; returns its answer.
pub async fn operator_request(path: &Path, req: &LocalRequest) -> Result<String, StatusError> {
    let answer = exchange(path, &req.to_line(), Duration::from_secs(10)).await?;
    let v: serde_json::Value =
        serde_json::from_str(&answer).map_err(|e| StatusError::BadAnswer(e.to_string()))?;
    match (v["ok"].as_str(), v["error"].as_str()) {
        (Some(ok), _) => Ok(ok.to_owned()),
        (_, Some(e)) => Err(StatusError::Refused(e.to_owned())),
        _ => Err(StatusError::BadAnswer(answer)),
    }
}

/// One request line to the daemon's socket and its one answer line, within `timeout`.
async fn exchange(path: &Path, line: &str, timeout: Duration) -> Result<String, StatusError> {
    let broken = |source| StatusError::Broken {
        path: path.to_owned(),
        source,
    };
    let run = async {
        let mut stream =
            UnixStream::connect(path)
                .await
                .map_err(|source| StatusError::Unreachable {
                    path: path.to_owned(),
                    source,
                })?;
        stream
            .write_all(format!("{line}\n").as_bytes())
            .await
            .map_err(broken)?;
        let mut answer = String::new();
        BufReader::new(stream)
            .read_line(&mut answer)
            .await
            .map_err(broken)?;
        Ok(answer)
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| StatusError::Silent {
            path: path.to_owned(),
        })?
}

/// Renders a report for people: one aligned line per topic.
pub fn render(r: &StatusReport, now_ms: u64) -> String {
    let ago = |ms: u64| {
        let secs = now_ms.saturating_sub(ms) / 1000;
        format!(
            "{} ago",
            humantime::format_duration(Duration::from_secs(secs))
        )
    };
    let mut out = String::new();
    let mut row = |k: &str, v: String| out.push_str(&format!("{k:<9} {v}\n"));
    row(
        "terminal",
        format!(
            "{} (v{}, started {})",
            r.terminal,
            r.version,
            ago(r.started_ms)
        ),
    );
    let l = &r.link;
    let state = if l.connected {
        "connected"
    } else {
        "DISCONNECTED"
    };
    let rtt = l.rtt_ms.map_or("-".to_owned(), |v| format!("{v:.1} ms"));
    // Of a cluster's nodes, the one in use (or tried next); then the list.
    row(
        "broker",
        format!(
            "{} {state} ({} connects), rtt {rtt}, ping loss {:.0}%",
            l.broker.as_deref().unwrap_or(&r.broker),
            l.connects,
            l.ping_loss_percent
        ),
    );
    if l.broker.is_some() {
        row("", format!("nodes: {}", r.broker));
    }
    if let Some(e) = &l.last_error {
        row("", format!("last link error: {e}"));
    }
    let last = l.last_publish_ms.map_or("never".to_owned(), ago);
    row(
        "publish",
        format!(
            "last {last}, {} sent, {} waiting for the socket",
            l.published, l.queued
        ),
    );
    let o = &r.outbox;
    row(
        "outbox",
        format!(
            "{} unconfirmed ({} bytes), {} dropped",
            o.depth, o.bytes, o.dropped
        ),
    );
    let seqs: Vec<String> = o
        .next_seq
        .iter()
        .map(|(k, v)| {
            let confirmed = o.confirmed.get(k).copied().unwrap_or(0);
            format!("{k} next {v} confirmed {confirmed}")
        })
        .collect();
    row("streams", seqs.join(", "));
    if r.sensors.is_empty() {
        row("sensors", "(none configured)".to_owned());
    }
    for s in &r.sensors {
        let values: Vec<String> = s.readings.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let state = match (&s.last_error, s.ok) {
            (Some(e), _) => format!("FAIL {e}"),
            (None, true) => format!("ok   {}", values.join(" ")),
            (None, false) => "not read yet".to_owned(),
        };
        row("sensor", format!("{:<12} {state}", s.name));
    }
    for d in &r.duty_reports {
        let state = match (&d.acknowledged_by, d.acknowledged_ms) {
            (Some(by), Some(at)) => format!("acknowledged by {by} {}", ago(at)),
            _ => "waiting for the duty office".to_owned(),
        };
        row(
            "duty",
            format!(
                "#{} {}: {} ({}) — {state}",
                d.report,
                d.kind,
                d.text,
                ago(d.raised_ms)
            ),
        );
    }
    for m in &r.meetings {
        let mut flags = Vec::new();
        if m.muted {
            flags.push("muted".to_owned());
        }
        if m.hand_raised {
            flags.push("hand raised".to_owned());
        }
        if let Some(t) = &m.tier {
            flags.push(t.clone());
        }
        row(
            "meeting",
            format!(
                "{} {} \"{}\" {} / {} as {} {}",
                m.id,
                m.kind,
                m.title,
                m.status,
                m.phase,
                m.role,
                flags.join(", ")
            )
            .trim_end()
            .to_owned(),
        );
    }
    let latest: Vec<String> = r.latest.iter().map(|(k, v)| format!("{k}={v}")).collect();
    row("latest", latest.join(" "));
    if r.recent_errors.is_empty() {
        row("errors", "(none)".to_owned());
    }
    for (t, e) in &r.recent_errors {
        row("error", format!("{} {e}", ago(*t)));
    }
    out
}

#[cfg(test)]
mod render_tests {
    use super::*;

    #[test]
    fn status_shows_the_cluster_node_in_use_and_the_list_of_nodes() {
        let mut r = StatusReport {
            broker: "mqtt://a:1883,mqtt://b:1883".into(),
            ..StatusReport::default()
        };
        r.link.connected = true;
        r.link.broker = Some("mqtt://b:1883".into());
        let text = render(&r, 0);
        assert!(text.contains("broker    mqtt://b:1883 connected"), "{text}");
        assert!(
            text.contains("nodes: mqtt://a:1883,mqtt://b:1883"),
            "{text}"
        );
        // One broker: shown as before, no list.
        let one = StatusReport {
            broker: "mqtt://a:1883".into(),
            ..StatusReport::default()
        };
        let text = render(&one, 0);
        assert!(
            text.contains("broker    mqtt://a:1883 DISCONNECTED"),
            "{text}"
        );
        assert!(!text.contains("nodes:"), "{text}");
    }
}
