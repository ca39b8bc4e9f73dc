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

use std::sync::Arc;

use cuntong_core::alarm::{
    Alarm, AlarmChange, AlarmEngine, AlarmKind, Observation, Subject, TerminalNotice,
};
use cuntong_core::envelope::Event;
use cuntong_core::topic::{Channel, Topic};
use cuntong_terminal::link::Message;

use crate::control::ControlError;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::names::Names;
use crate::store::{Record, StateWriter, Store, StoreError};
use crate::view::{pad, rfc3339_ms};

mod hooks;
mod rules;

pub use hooks::Hook;
use hooks::run_hooks;
pub use rules::{AlarmConfig, RulesError, RulesFileError};

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

#[cfg(test)]
mod tests {
    use super::*;
    use cuntong_core::alarm::{AlarmState, Severity};

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
