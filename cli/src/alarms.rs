//! The alarm service inside `cuntong central`: the core's [`AlarmEngine`] fed with what central
//! receives (presence, samples, dropped-data events), its changes kept in the store (`alarms`
//! table, read by `cuntong alarms`) and handed to the notification hooks; and the rules file.
//!
//! Rules (`cuntong central --alarms rules.toml`):
//!
//! ```toml
//! dropping = true             # an alarm when a terminal's outbox drops data
//!
//! [offline]
//! grace = "2m"                # offline this long before it is an alarm
//! severity = "major"
//! root_cause_min = 2          # a region with this many terminals, all offline: one alarm
//!
//! [[uplink]]                  # the sites of 130102 reach the network through this box:
//! terminal = "130102000000-relay"
//! serves = "130102"           # while it is offline, theirs are listed under its alarm
//!
//! [[threshold]]
//! metric = "env.temp"
//! above = 35.0                # or below = 5.0
//! clear = 32.0                # back under this clears it (hysteresis)
//! for = "5m"                  # beyond the limit this long before it is raised
//! severity = "major"
//! region = "130102"           # only there (default: everywhere)
//!
//! [[media]]                 # during meetings (replaces the built-in media.loss ≥ 5 % and
//! metric = "media.loss"       # media.jitter ≥ 80 ms, each for 10 s): media-degraded
//! above = 8.0
//! clear = 3.0
//! for = "15s"
//!
//! [[stale]]
//! metric = "env.temp"
//! after = "15m"
//! severity = "warning"
//!
//! [[hook]]                    # run on every change, the alarm as JSON on stdin
//! command = ["/usr/local/bin/duty-sms", "--office", "130102"]
//!
//! [[hook]]                    # or POSTed (application/json) to a web hook
//! url = "https://chat.example.gov.cn/hooks/duty"
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cuntong_core::alarm::{
    Alarm, AlarmChange, AlarmEngine, AlarmKind, AlarmRules, Observation, Severity, StaleRule,
    Subject, TerminalNotice, ThresholdRule, Uplink,
};
use cuntong_core::envelope::Event;
use cuntong_core::site::{Region, SiteCodeError};
use cuntong_core::telemetry::{Metric, MetricError};
use cuntong_core::terminal_id::{TerminalId, TerminalIdError};
use cuntong_core::topic::{Channel, Topic};
use cuntong_terminal::link::Message;

use crate::control::ControlError;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::names::Names;
use crate::store::{Record, StateWriter, Store, StoreError};
use crate::view::{pad, rfc3339_ms};

/// A rules file and its hooks.
#[derive(Clone, Debug, Default)]
pub struct AlarmConfig {
    pub rules: AlarmRules,
    /// Told of every alarm change.
    pub hooks: Vec<Hook>,
}

/// Where an alarm change is told: the alarm as [`AlarmJson`], each change in order, up to three
/// tries, 30 s each.
#[derive(Clone, PartialEq, Eq)]
pub enum Hook {
    /// A program and its arguments, the JSON on stdin; success is exit status 0.
    Command(Vec<String>),
    /// An HTTP(S) POST of the JSON; success is a 2xx answer.
    Webhook(String),
}

impl Hook {
    /// How logs name the hook: the program, or the web hook's scheme and host only (a web
    /// hook's path and query often carry its secret token).
    pub fn name(&self) -> String {
        match self {
            Hook::Command(c) => c.first().cloned().unwrap_or_default(),
            Hook::Webhook(url) => {
                let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
                let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
                let host = host.rsplit('@').next().unwrap_or_default();
                format!("{scheme}://{host}")
            }
        }
    }
}

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hook({})", self.name())
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRules {
    dropping: Option<bool>,
    #[serde(default)]
    offline: RawOffline,
    #[serde(default)]
    threshold: Vec<RawThreshold>,
    #[serde(default)]
    media: Vec<RawThreshold>,
    #[serde(default)]
    stale: Vec<RawStale>,
    #[serde(default)]
    hook: Vec<RawHook>,
    #[serde(default)]
    uplink: Vec<RawUplink>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUplink {
    terminal: String,
    serves: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawOffline {
    grace: Option<String>,
    severity: Option<String>,
    root_cause_min: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawThreshold {
    metric: String,
    above: Option<f64>,
    below: Option<f64>,
    clear: f64,
    #[serde(rename = "for")]
    for_: Option<String>,
    severity: Option<String>,
    region: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStale {
    metric: String,
    after: String,
    severity: Option<String>,
    region: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHook {
    command: Option<Vec<String>>,
    url: Option<String>,
}

/// Why a rules file was refused: each names the key (`threshold[0].clear: …`) and the value.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// The file cannot be read.
    #[error("{0}")]
    Read(#[source] std::io::Error),
    /// Not TOML, or keys the rules do not have (the parser's words on one line).
    #[error("{}", source.to_string().replace('\n', " "))]
    Toml {
        #[from]
        source: toml::de::Error,
    },
    /// Not a duration (the parser's words).
    #[error("{key}: {problem}")]
    Duration {
        key: String,
        problem: cuntong_terminal::config::BadValue,
    },
    /// Not a severity.
    #[error("{key}: {value:?} is not one of info, warning, major, critical")]
    Severity { key: String, value: String },
    /// Not a metric name.
    #[error("{key}: {value:?}: {source}")]
    Metric {
        key: String,
        value: String,
        source: MetricError,
    },
    /// A rule's `region` is not a region code.
    #[error("{key}: {value:?}: {source}")]
    Region {
        key: String,
        value: String,
        source: SiteCodeError,
    },
    /// An uplink's `terminal` is not a terminal id.
    #[error("{key} {value:?}: {source}")]
    UplinkTerminal {
        key: String,
        value: String,
        source: TerminalIdError,
    },
    /// An uplink's `serves` is not a region code.
    #[error("{key} {value:?}: {source}")]
    UplinkServes {
        key: String,
        value: String,
        source: SiteCodeError,
    },
    /// `offline.root_cause_min` below 2.
    #[error("offline.root_cause_min: at least 2")]
    RootCauseMin,
    /// A threshold with both or neither of `above` and `below`.
    #[error("{key}: give either above or below")]
    AboveOrBelow { key: String },
    /// A threshold's `clear` beyond the limit that raises it.
    #[error("{key}: {clear} must be on the normal side of {raise}")]
    ClearSide { key: String, clear: f64, raise: f64 },
    /// A hook command without a program.
    #[error("hook[{index}].command: empty")]
    EmptyCommand { index: usize },
    /// A web hook whose URL is not http(s).
    #[error("hook[{index}].url: {url:?} is not an http(s) URL")]
    NotHttpUrl { index: usize, url: String },
    /// A hook with both or neither of `command` and `url`.
    #[error("hook[{index}]: one of command or url")]
    CommandOrUrl { index: usize },
}

/// Why one try of an alarm hook failed. Never quotes a web hook's URL (it may hold a token).
#[derive(Debug, thiserror::Error)]
enum HookError {
    /// A hook command without a program.
    #[error("empty hook")]
    Empty,
    /// The program could not be started, fed or waited for.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// No end (or answer) within [`HOOK_TIMEOUT`].
    #[error("timed out after 30 s")]
    TimedOut,
    /// The program failed.
    #[error("exited with {0}")]
    Exited(std::process::ExitStatus),
    /// The web hook's server cannot be reached (only the kind of failure is said).
    #[error("cannot reach it: {0}")]
    Unreachable(std::io::ErrorKind),
    /// TLS with the web hook's server failed.
    #[error("TLS: {0}")]
    Tls(&'static str),
    /// TLS with the web hook's server failed, as rustls says.
    #[error("TLS: {0}")]
    Rustls(#[source] rustls::Error),
    /// The web hook's host name is not known.
    #[error("host not found")]
    HostNotFound,
    /// No connection to the web hook's server.
    #[error("connection failed")]
    ConnectionFailed,
    /// Any other failure of the request.
    #[error("request failed")]
    RequestFailed,
    /// The web hook answered, not with success.
    #[error("answered {0}")]
    Answered(ureq::http::StatusCode),
    /// The request's thread was lost.
    #[error("{0}")]
    Joined(#[from] tokio::task::JoinError),
}

/// A rules file that cannot be used: the file, and what is wrong in it.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct RulesFileError {
    pub path: std::path::PathBuf,
    #[source]
    pub problem: Box<RulesError>,
}

impl AlarmConfig {
    /// Reads a rules file; every problem names the file and the key
    /// (`alarms.toml: threshold[0].clear: …`).
    pub fn load(path: &Path) -> Result<AlarmConfig, RulesFileError> {
        let in_file = |problem| RulesFileError {
            path: path.to_owned(),
            problem: Box::new(problem),
        };
        let text = std::fs::read_to_string(path).map_err(|e| in_file(RulesError::Read(e)))?;
        AlarmConfig::parse(&text).map_err(in_file)
    }

    pub fn parse(text: &str) -> Result<AlarmConfig, RulesError> {
        let raw: RawRules = toml::from_str(text)?;
        let duration = |key: &str, v: &str| {
            cuntong_terminal::config::parse_duration(v)
                .map(|d| d.as_millis() as u64)
                .map_err(|problem| RulesError::Duration {
                    key: key.to_owned(),
                    problem,
                })
        };
        let severity = |key: &str, v: Option<String>, default: Severity| match v {
            None => Ok(default),
            Some(s) => Severity::parse(&s).ok_or_else(|| RulesError::Severity {
                key: key.to_owned(),
                value: s.clone(),
            }),
        };
        let metric = |key: &str, v: &str| {
            Metric::from_name(v).map_err(|source| RulesError::Metric {
                key: key.to_owned(),
                value: v.to_owned(),
                source,
            })
        };
        let region = |key: &str, v: Option<String>| {
            v.map(|r| {
                r.parse::<Region>().map_err(|source| RulesError::Region {
                    key: key.to_owned(),
                    value: r.clone(),
                    source,
                })
            })
            .transpose()
        };
        let mut rules = AlarmRules::default();
        if let Some(d) = raw.dropping {
            rules.dropping = d;
        }
        if let Some(g) = raw.offline.grace {
            rules.offline_grace_ms = duration("offline.grace", &g)?;
        }
        rules.offline_severity =
            severity("offline.severity", raw.offline.severity, Severity::Major)?;
        if let Some(n) = raw.offline.root_cause_min {
            if n < 2 {
                return Err(RulesError::RootCauseMin);
            }
            rules.root_cause_min = n;
        }
        // Rules given for media during meetings replace the built-in ones.
        if !raw.media.is_empty() {
            rules.thresholds.retain(|r| !r.during_meeting);
        }
        let sections = [
            ("threshold", false, raw.threshold),
            ("media", true, raw.media),
        ];
        for (section, during_meeting, list) in sections {
            for (i, t) in list.into_iter().enumerate() {
                let key = |f: &str| format!("{section}[{i}].{f}");
                let (above, raise) = match (t.above, t.below) {
                    (Some(a), None) => (true, a),
                    (None, Some(b)) => (false, b),
                    _ => return Err(RulesError::AboveOrBelow { key: key("above") }),
                };
                if (above && t.clear > raise) || (!above && t.clear < raise) {
                    return Err(RulesError::ClearSide {
                        key: key("clear"),
                        clear: t.clear,
                        raise,
                    });
                }
                rules.thresholds.push(ThresholdRule {
                    metric: metric(&key("metric"), &t.metric)?,
                    region: region(&key("region"), t.region)?,
                    above,
                    raise,
                    clear: t.clear,
                    min_duration_ms: match t.for_ {
                        Some(d) => duration(&key("for"), &d)?,
                        None => 0,
                    },
                    severity: severity(&key("severity"), t.severity, Severity::Major)?,
                    during_meeting,
                });
            }
        }
        for (i, u) in raw.uplink.into_iter().enumerate() {
            let key = |f: &str| format!("uplink[{i}].{f}");
            let terminal: TerminalId =
                u.terminal
                    .parse()
                    .map_err(|source| RulesError::UplinkTerminal {
                        key: key("terminal"),
                        value: u.terminal.clone(),
                        source,
                    })?;
            let serves: Region = u
                .serves
                .parse()
                .map_err(|source| RulesError::UplinkServes {
                    key: key("serves"),
                    value: u.serves.clone(),
                    source,
                })?;
            rules.uplinks.push(Uplink { terminal, serves });
        }
        for (i, s) in raw.stale.into_iter().enumerate() {
            let key = |f: &str| format!("stale[{i}].{f}");
            rules.stale.push(StaleRule {
                metric: metric(&key("metric"), &s.metric)?,
                region: region(&key("region"), s.region)?,
                after_ms: duration(&key("after"), &s.after)?,
                severity: severity(&key("severity"), s.severity, Severity::Warning)?,
            });
        }
        let mut hooks = Vec::new();
        for (index, h) in raw.hook.into_iter().enumerate() {
            hooks.push(match (h.command, h.url) {
                (Some(c), None) if c.is_empty() => {
                    return Err(RulesError::EmptyCommand { index });
                }
                (Some(c), None) => Hook::Command(c),
                (None, Some(url)) => {
                    let lower = url.to_ascii_lowercase();
                    if !(lower.starts_with("http://") || lower.starts_with("https://"))
                        || url.contains(char::is_whitespace)
                    {
                        return Err(RulesError::NotHttpUrl { index, url });
                    }
                    Hook::Webhook(url)
                }
                _ => return Err(RulesError::CommandOrUrl { index }),
            });
        }
        Ok(AlarmConfig { rules, hooks })
    }
}

/// `cuntong alarms --json`: one object per alarm.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlarmJson {
    pub id: u64,
    /// `offline`, `stale`, `threshold`, `dropping`, `duty-report`, `media-degraded` or `lost`.
    pub kind: String,
    /// A terminal id, or a region code for a root-cause alarm.
    pub subject: String,
    /// The subject's name (a terminal's, or the region's official name; `(unnamed)`).
    pub name: String,
    /// The official names from the province down to the subject's site, space-separated.
    pub region_path: String,
    /// `info`, `warning`, `major` or `critical`.
    pub severity: String,
    /// `active`, `acknowledged` or `cleared`.
    pub state: String,
    /// RFC 3339.
    pub raised_at: String,
    /// The terminals a root-cause alarm stands for.
    pub suppressed: Vec<String>,
    pub detail: String,
    pub metric: Option<String>,
    pub acknowledged_by: Option<String>,
    pub acknowledged_at: Option<String>,
    pub cleared_at: Option<String>,
}

impl AlarmJson {
    pub fn of(a: &Alarm, names: &Names) -> AlarmJson {
        AlarmJson {
            id: a.id,
            kind: a.kind.as_str().to_owned(),
            subject: a.subject.to_string(),
            name: names.subject(&a.subject).to_owned(),
            region_path: names.subject_path(&a.subject),
            severity: a.severity.as_str().to_owned(),
            state: a.state.as_str().to_owned(),
            raised_at: rfc3339_ms(a.raised_ms),
            suppressed: a.suppressed.iter().map(|t| t.to_string()).collect(),
            detail: a.detail.clone(),
            metric: a.metric.clone(),
            acknowledged_by: a.acknowledged.as_ref().map(|(by, _)| by.clone()),
            acknowledged_at: a.acknowledged.as_ref().map(|(_, at)| rfc3339_ms(*at)),
            cleared_at: a.cleared_ms.map(rfc3339_ms),
        }
    }
}

/// Hook runs waiting, at most; beyond it changes are logged but not handed to the hooks.
const HOOK_QUEUE: usize = 1024;

/// The alarms of central.
pub struct AlarmService {
    engine: AlarmEngine,
    /// Where the changes are written (the store thread).
    writer: StateWriter,
    hooks: Option<mpsc::Sender<Alarm>>,
    /// Notices for terminals (duty reports acknowledged), for central to publish.
    outbound: Vec<Message>,
    /// Central's link was down since the last tick.
    deaf: bool,
    /// Alarm changes handed to the store thread so far.
    handed: u64,
}

impl std::fmt::Debug for AlarmService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlarmService")
            .field("active", &self.engine.active().count())
            .finish()
    }
}

impl AlarmService {
    /// Carries on with the alarms kept in `store` and the terminals it knows (read once,
    /// before central's loop starts); writes through `writer`; starts the hook runner on the
    /// current runtime if there are hooks, naming sites as `names` has them.
    pub fn open(
        store: &dyn Store,
        config: AlarmConfig,
        writer: StateWriter,
        names: watch::Receiver<Arc<Names>>,
        now_ms: u64,
    ) -> Result<AlarmService, StoreError> {
        let stored = store.open_alarms()?;
        let mut engine = AlarmEngine::new(config.rules, stored.alarms, stored.last_id);
        // A terminal never heard from is not known to be anything yet.
        for k in store.known_terminals()? {
            engine.observe(
                Observation::Known {
                    terminal: k.terminal,
                    online: k.online,
                    since_ms: k.last_seen_ms,
                },
                now_ms,
            );
        }
        let retired = engine.retire_orphans(now_ms);
        let hooks = (!config.hooks.is_empty()).then(|| {
            let (tx, rx) = mpsc::channel(HOOK_QUEUE);
            tokio::spawn(run_hooks(config.hooks, rx, names));
            tx
        });
        let mut service = AlarmService {
            engine,
            writer,
            hooks,
            outbound: Vec::new(),
            deaf: false,
            handed: 0,
        };
        service.changed(retired);
        Ok(service)
    }

    /// Feeds what a received record says.
    pub fn record(&mut self, record: &Record, now_ms: u64) {
        for obs in observations(record) {
            let changes = self.engine.observe(obs, now_ms);
            self.changed(changes);
        }
    }

    /// Once a second: offline terminals (after the grace, with suppression), stale data.
    /// Nothing is judged while central's own link is down (it hears nobody then); when it is
    /// back, stale-data clocks start over.
    pub fn tick(&mut self, now_ms: u64, link_up: bool) {
        if !link_up {
            self.deaf = true;
            return;
        }
        if std::mem::take(&mut self.deaf) {
            self.engine.resume(now_ms);
        }
        let changes = self.engine.tick(now_ms);
        self.changed(changes);
    }

    /// The duty office acknowledges alarm `id`; why not ([`ControlError::Alarm`]).
    pub fn acknowledge(&mut self, id: u64, by: &str, now_ms: u64) -> Result<(), ControlError> {
        if by.trim().is_empty() {
            return Err(ControlError::Alarm(
                "say who acknowledges (--by NAME)".into(),
            ));
        }
        let changes = match self.engine.acknowledge(id, by, now_ms) {
            Ok(c) => c,
            // The engine holds every alarm not cleared; ids are given in order.
            Err(cuntong_core::alarm::AckError::NoSuchAlarm(_)) => {
                return Err(ControlError::Alarm(
                    if id >= 1 && id <= self.engine.last_id() {
                        format!("alarm {id} is already cleared")
                    } else {
                        format!("no alarm {id}")
                    },
                ));
            }
            Err(e) => return Err(ControlError::Alarm(e.to_string())),
        };
        // A duty report's site sees who acknowledged it.
        if let Some(AlarmChange::Updated(a)) = changes.first()
            && let (AlarmKind::DutyReport, Subject::Terminal(t), Some(report)) =
                (a.kind, a.subject, a.report)
        {
            let notice = TerminalNotice::DutyReportAcknowledged {
                report,
                by: by.to_owned(),
                at_ms: now_ms,
            };
            if let Ok(bytes) = cuntong_core::envelope::encode(&notice) {
                let topic = Topic::terminal(&t, Channel::Notice).to_string();
                self.outbound.push(Message::new(topic, bytes));
            }
        }
        self.changed(changes);
        Ok(())
    }

    /// How many alarm changes were handed to the store thread so far.
    pub fn handed_over(&self) -> u64 {
        self.handed
    }

    /// Messages for terminals waiting to be published.
    pub fn take_outbound(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.outbound)
    }

    fn changed(&mut self, changes: Vec<AlarmChange>) {
        if changes.is_empty() {
            return;
        }
        let alarms: Vec<Alarm> = changes.iter().map(|c| c.alarm().clone()).collect();
        self.handed += alarms.len() as u64;
        if let Err(e) = self.writer.alarms(alarms) {
            tracing::error!(error = %e, "cannot store alarm changes");
        }
        for c in changes {
            let a = c.alarm();
            match &c {
                AlarmChange::Raised(_) => tracing::warn!(
                    id = a.id, kind = a.kind.as_str(), subject = %a.subject,
                    severity = a.severity.as_str(), suppressed = a.suppressed.len(),
                    "alarm: {}", a.detail
                ),
                AlarmChange::Updated(_) => {
                    tracing::info!(id = a.id, state = a.state.as_str(), "alarm updated")
                }
                AlarmChange::Cleared(_) => {
                    tracing::info!(id = a.id, subject = %a.subject, "alarm cleared")
                }
            }
            if let Some(tx) = &self.hooks
                && tx.try_send(a.clone()).is_err()
            {
                tracing::warn!(
                    id = a.id,
                    "alarm hooks are behind: this change is not notified"
                );
            }
        }
    }
}

/// What the alarm engine learns from a received record.
pub fn observations(record: &Record) -> Vec<Observation> {
    match record {
        Record::Telemetry {
            terminal, envelope, ..
        } => envelope
            .body
            .samples
            .iter()
            .map(|s| Observation::Sample {
                terminal: *terminal,
                metric: s.metric.clone(),
                value: s.value.to_f64(),
                at_ms: envelope.time_ms.saturating_add(u64::from(s.offset_ms)),
            })
            .collect(),
        Record::Lost {
            terminal,
            stream,
            first,
            last,
        } => vec![Observation::Lost {
            terminal: *terminal,
            stream: *stream,
            first: *first,
            last: *last,
        }],
        Record::Presence {
            terminal, presence, ..
        } => vec![Observation::Presence {
            terminal: *terminal,
            online: presence.online,
        }],
        Record::Event {
            terminal, envelope, ..
        } => match envelope.body {
            Event::Dropped { first, last, .. } if last >= first => vec![Observation::Dropped {
                terminal: *terminal,
                count: last - first + 1,
            }],
            Event::DutyReport {
                report,
                ref kind,
                ref text,
            } => vec![Observation::DutyReport {
                terminal: *terminal,
                report,
                kind: kind.clone(),
                text: text.clone(),
            }],
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// `cuntong alarms` for people.
pub fn table(alarms: &[Alarm], names: &Names) -> String {
    let mut out = format!(
        "{:>5}  {:<9} {:<20} {} {:<9} {:<13} {:<24} {}\n",
        "ID",
        "KIND",
        "SUBJECT",
        pad("NAME", 16),
        "SEVERITY",
        "STATE",
        "RAISED",
        "DETAIL"
    );
    for a in alarms {
        let mut detail = a.detail.clone();
        if !a.suppressed.is_empty() {
            detail.push_str(&format!(" [{} suppressed]", a.suppressed.len()));
        }
        if let Some((by, _)) = &a.acknowledged {
            detail.push_str(&format!(" (ack: {by})"));
        }
        out.push_str(&format!(
            "{:>5}  {:<9} {:<20} {} {:<9} {:<13} {:<24} {}\n",
            a.id,
            a.kind.as_str(),
            a.subject.to_string(),
            pad(names.subject(&a.subject), 16),
            a.severity.as_str(),
            a.state.as_str(),
            rfc3339_ms(a.raised_ms),
            detail
        ));
    }
    out
}

/// Runs every hook for every change, in order, each up to three times (1 s, 2 s apart).
async fn run_hooks(
    hooks: Vec<Hook>,
    mut rx: mpsc::Receiver<Alarm>,
    names: watch::Receiver<Arc<Names>>,
) {
    while let Some(alarm) = rx.recv().await {
        // Names as the store has them now.
        let current = names.borrow().clone();
        let Ok(json) = serde_json::to_vec(&AlarmJson::of(&alarm, &current)) else {
            continue;
        };
        for hook in &hooks {
            let mut delay = Duration::from_secs(1);
            for attempt in 1..=3 {
                let result = match hook {
                    Hook::Command(c) => run_command(c, &json).await,
                    Hook::Webhook(url) => post(url, &json).await,
                };
                match result {
                    Ok(()) => break,
                    Err(e) if attempt < 3 => {
                        tracing::warn!(hook = %hook.name(), attempt, error = %e, "alarm hook failed; retrying");
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                    }
                    Err(e) => {
                        tracing::error!(hook = %hook.name(), id = alarm.id, error = %e, "alarm hook failed; giving up")
                    }
                }
            }
        }
    }
}

/// How long one try of a hook may take.
const HOOK_TIMEOUT: Duration = Duration::from_secs(30);

async fn run_command(hook: &[String], json: &[u8]) -> Result<(), HookError> {
    use tokio::io::AsyncWriteExt;
    let (program, args) = hook.split_first().ok_or(HookError::Empty)?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let stdin = child.stdin.take();
    let run = async {
        if let Some(mut stdin) = stdin {
            // A hook that does not read its input is fine: only its exit status counts.
            match stdin.write_all(json).await {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e),
                _ => {}
            }
        }
        child.wait().await
    };
    let status = tokio::time::timeout(HOOK_TIMEOUT, run)
        .await
        .map_err(|_| HookError::TimedOut)??;
    if status.success() {
        Ok(())
    } else {
        Err(HookError::Exited(status))
    }
}

/// POSTs the alarm to a web hook (on a blocking thread: the HTTP client is synchronous).
async fn post(url: &str, json: &[u8]) -> Result<(), HookError> {
    let (url, body) = (url.to_owned(), json.to_vec());
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(HOOK_TIMEOUT))
            .http_status_as_error(false)
            .user_agent(concat!("cuntong/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let resp = agent
            .post(&url)
            .content_type("application/json")
            .send(&body[..])
            // ureq's errors can quote the URL; say only what kind of failure it was.
            .map_err(|e| match e {
                ureq::Error::Io(e) => HookError::Unreachable(e.kind()),
                ureq::Error::Timeout(_) => HookError::TimedOut,
                ureq::Error::Tls(e) => HookError::Tls(e),
                ureq::Error::Rustls(e) => HookError::Rustls(e),
                ureq::Error::HostNotFound => HookError::HostNotFound,
                ureq::Error::ConnectionFailed => HookError::ConnectionFailed,
                _ => HookError::RequestFailed,
            })?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(HookError::Answered(resp.status()))
        }
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;
    use cuntong_core::alarm::AlarmState;

    #[test]
    fn the_documented_rules_parse() {
        let text = cuntong_terminal::config::documented_example(include_str!("alarms.rs")).unwrap();
        let cfg = AlarmConfig::parse(&text).unwrap();
        assert_eq!(cfg.rules.offline_grace_ms, 120_000);
        let [temp, media] = &cfg.rules.thresholds[..] else {
            panic!("{:?}", cfg.rules.thresholds);
        };
        assert_eq!((temp.raise, temp.min_duration_ms), (35.0, 300_000));
        assert!(!temp.during_meeting);
        assert_eq!((media.metric.name(), media.raise), ("media.loss", 8.0));
        assert!(media.during_meeting);
        assert_eq!(
            AlarmConfig::parse("").unwrap().rules.thresholds,
            ThresholdRule::media_defaults()
        );
        assert_eq!(cfg.rules.stale[0].after_ms, 900_000);
        assert_eq!(
            cfg.hooks[0],
            Hook::Command(vec![
                "/usr/local/bin/duty-sms".into(),
                "--office".into(),
                "130102".into()
            ])
        );
        assert_eq!(cfg.hooks[1].name(), "https://chat.example.gov.cn");
        assert_eq!(
            cfg.rules.uplinks[0].terminal.to_string(),
            "130102000000-relay"
        );
        assert_eq!(cfg.rules.uplinks[0].serves.prefix(), "130102");
    }

    #[test]
    fn bad_rules_name_the_key() {
        let err = |t: &str| AlarmConfig::parse(t).unwrap_err().to_string();
        assert!(err("[offline]\ngrace = \"soon\"\n").contains("offline.grace"));
        assert!(
            err("[[threshold]]\nmetric = \"env.temp\"\nabove = 30.0\nclear = 31.0\n")
                .contains("threshold[0].clear")
        );
        assert!(
            err("[[threshold]]\nmetric = \"env.temp\"\nclear = 31.0\n").contains("above or below")
        );
        assert!(
            err("[[stale]]\nmetric = \"no such\"\nafter = \"1m\"\n").contains("stale[0].metric")
        );
        assert!(
            err("[[threshold]]\nmetric = \"env.temp\"\nabove = 3.0\nclear = 1.0\nseverity = \"dire\"\n")
                .contains("threshold[0].severity")
        );
        assert!(err("colour = 1\n").contains("unknown field"));
        assert!(err("[[hook]]\nurl = \"ftp://x\"\n").contains("hook[0].url"));
        assert!(err("[[hook]]\n").contains("hook[0]: one of command or url"));
        assert!(
            err("[[uplink]]\nterminal = \"x\"\nserves = \"13\"\n").contains("uplink[0].terminal")
        );
    }

    #[test]
    fn a_numbering_start_is_not_dropped_data() {
        let event = |body| {
            let envelope = cuntong_core::envelope::Envelope {
                seq: 1_763_798_400_000,
                time_ms: 1_763_798_400_000,
                body,
            };
            let raw = bytes::Bytes::from(cuntong_core::envelope::encode(&envelope).unwrap());
            Record::Event {
                terminal: "130102001001-main".parse().unwrap(),
                received_ms: 1_763_798_400_000,
                envelope,
                raw,
            }
        };
        let stream = cuntong_core::envelope::Stream::Telemetry;
        let from = event(Event::NumberingFrom {
            stream,
            first: 1_763_798_400_000,
        });
        assert!(observations(&from).is_empty());
        let dropped = event(Event::Dropped {
            stream,
            first: 5,
            last: 6,
        });
        assert!(matches!(
            observations(&dropped)[..],
            [Observation::Dropped { count: 2, .. }]
        ));
    }

    #[test]
    fn a_web_hook_is_logged_without_its_token() {
        let hook = Hook::Webhook("https://user:secret@chat.example/hooks/T0K3N?key=abc".into());
        assert_eq!(hook.name(), "https://chat.example");
        assert!(!format!("{hook:?}").contains("T0K3N"));
    }

    #[test]
    fn json_names_the_subject_and_what_is_suppressed() {
        let a = Alarm {
            id: 7,
            kind: AlarmKind::Offline,
            subject: Subject::Region("130102009000".parse().unwrap()),
            severity: Severity::Critical,
            state: AlarmState::Acknowledged,
            raised_ms: 1_763_798_400_000,
            detail: "all 3 terminals offline".into(),
            metric: None,
            acknowledged: Some(("Li".into(), 1_763_798_460_000)),
            cleared_ms: None,
            suppressed: vec!["130102009001-main".parse().unwrap()],
            report: None,
            rule: None,
            dropped: 0,
        };
        let j = AlarmJson::of(&a, &Names::shipped());
        assert_eq!(j.subject, "130102009");
        assert_eq!(j.state, "acknowledged");
        assert_eq!(j.raised_at, "2025-11-22T08:00:00.000Z");
        assert_eq!(j.suppressed, ["130102009001-main"]);
        assert_eq!(j.acknowledged_by.as_deref(), Some("Li"));
    }
}
