//! The alarm engine: what central learned in, the alarms to store and notify out.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use crate::site::Region;
use crate::telemetry::Metric;
use crate::terminal_id::TerminalId;

use super::*;

mod threshold;
mod tick;

use threshold::rule_signature;

/// What central learned.
#[derive(Clone, Debug, PartialEq)]
pub enum Observation {
    /// A terminal exists (central knows it from its store), online or not.
    Known {
        terminal: TerminalId,
        online: bool,
        since_ms: u64,
    },
    Presence {
        terminal: TerminalId,
        online: bool,
    },
    Sample {
        terminal: TerminalId,
        metric: Metric,
        value: f64,
        at_ms: u64,
    },
    /// The terminal's outbox dropped `count` records.
    Dropped {
        terminal: TerminalId,
        count: u64,
    },
    /// Central declared `first..=last` of the terminal's `stream` lost: they never arrived
    /// though the terminal sent what follows them again and again.
    Lost {
        terminal: TerminalId,
        stream: crate::envelope::Stream,
        first: u64,
        last: u64,
    },
    /// A duty report from the site.
    DutyReport {
        terminal: TerminalId,
        report: u64,
        kind: String,
        text: String,
    },
}

impl Observation {
    /// The terminal this came from, if it was a message of the terminal's own (a sample, a
    /// report) rather than what central or the broker says of it.
    pub fn heard_from(&self) -> Option<TerminalId> {
        match self {
            Observation::Sample { terminal, .. }
            | Observation::DutyReport { terminal, .. }
            | Observation::Dropped { terminal, .. } => Some(*terminal),
            Observation::Known { .. } | Observation::Presence { .. } | Observation::Lost { .. } => {
                None
            }
        }
    }
}

/// What changed, to store and to notify.
#[derive(Clone, Debug, PartialEq)]
pub enum AlarmChange {
    Raised(Alarm),
    /// Acknowledged, or its suppressed list changed.
    Updated(Alarm),
    Cleared(Alarm),
}

impl AlarmChange {
    pub fn alarm(&self) -> &Alarm {
        match self {
            AlarmChange::Raised(a) | AlarmChange::Updated(a) | AlarmChange::Cleared(a) => a,
        }
    }
}

/// Why an acknowledgement failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AckError {
    NoSuchAlarm(u64),
    AlreadyCleared(u64),
}

impl fmt::Display for AckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AckError::NoSuchAlarm(id) => write!(f, "no alarm {id}"),
            AckError::AlreadyCleared(id) => write!(f, "alarm {id} is already cleared"),
        }
    }
}

#[derive(Clone, Debug, Default)]
struct TerminalState {
    online: bool,
    /// Since when it is offline.
    offline_since: Option<u64>,
    /// When each metric was last seen.
    seen: BTreeMap<Metric, u64>,
    /// Per threshold rule: since when the value is beyond `raise`.
    breaching: BTreeMap<usize, u64>,
    /// In a meeting, as its last `meeting.joined` said.
    in_meeting: bool,
}

/// How long after a terminal's offline record what it sent before may still arrive (and is
/// not taken for the terminal being back).
pub const LATE_AFTER_GOODBYE_MS: u64 = 5_000;

/// The key of an alarm that a condition owns (at most one active alarm per key).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Offline(Subject),
    Stale(TerminalId, Metric),
    Threshold(TerminalId, usize),
}

/// Evaluates the rules over what central learns.
#[derive(Clone, Debug)]
pub struct AlarmEngine {
    rules: AlarmRules,
    terminals: BTreeMap<TerminalId, TerminalState>,
    alarms: BTreeMap<u64, Alarm>,
    /// Active condition alarms by what raised them.
    open: BTreeMap<Key, u64>,
    next_id: u64,
    /// Duty reports already raised (a terminal resends until central confirms it stored them).
    seen_reports: BTreeSet<(TerminalId, u64)>,
}

/// Duty reports remembered for de-duplication, at most.
const SEEN_REPORTS: usize = 10_000;
impl AlarmEngine {
    /// An engine with `rules`, continuing from the alarms the store holds (ids go on from
    /// the highest).
    ///
    /// `last_id` is the highest id ever given (cleared alarms included), so ids are never
    /// reused. A stored condition alarm whose rule is no longer in `rules` is cleared by
    /// [`AlarmEngine::retire_orphans`].
    pub fn new(rules: AlarmRules, stored: Vec<Alarm>, last_id: u64) -> AlarmEngine {
        let mut e = AlarmEngine {
            rules,
            terminals: BTreeMap::new(),
            alarms: BTreeMap::new(),
            open: BTreeMap::new(),
            next_id: last_id + 1,
            seen_reports: BTreeSet::new(),
        };
        for a in stored {
            e.next_id = e.next_id.max(a.id + 1);
            if a.state != AlarmState::Cleared {
                if let Some(k) = key_of(&e.rules, &a) {
                    e.open.insert(k, a.id);
                }
                if let (AlarmKind::DutyReport, Subject::Terminal(t), Some(r)) =
                    (a.kind, a.subject, a.report)
                {
                    e.seen_reports.insert((t, r));
                }
            }
            e.alarms.insert(a.id, a);
        }
        e
    }

    /// Clears the restored condition alarms that nothing can clear any more (their rule was
    /// removed from the rules file).
    pub fn retire_orphans(&mut self, now_ms: u64) -> Vec<AlarmChange> {
        let owned: BTreeSet<u64> = self.open.values().copied().collect();
        let orphans: Vec<u64> = self
            .alarms
            .values()
            .filter(|a| !a.kind.is_event() && !owned.contains(&a.id))
            .map(|a| a.id)
            .collect();
        let mut out = Vec::new();
        for id in orphans {
            self.clear(id, now_ms, &mut out);
        }
        out
    }

    /// Alarms not cleared, oldest first.
    pub fn active(&self) -> impl Iterator<Item = &Alarm> {
        self.alarms
            .values()
            .filter(|a| a.state != AlarmState::Cleared)
    }

    pub fn get(&self, id: u64) -> Option<&Alarm> {
        self.alarms.get(&id)
    }

    /// The highest id given so far (0 if none): an id at or below it that is not
    /// [`active`](Self::active) names a cleared alarm.
    pub fn last_id(&self) -> u64 {
        self.next_id - 1
    }

    /// Takes in one observation.
    pub fn observe(&mut self, obs: Observation, now_ms: u64) -> Vec<AlarmChange> {
        let mut out = Vec::new();
        if let Some(terminal) = obs.heard_from() {
            // A terminal heard from is connected, whatever presence said last: its online
            // presence is published once a connect, and a broker may drop it on its way
            // (to a subscriber it finds slow), while what a terminal sends again arrives. But
            // not what arrives just after it said goodbye: a broker delivers different topics
            // in no set order, so the last records a stopping terminal sent can come after its
            // offline record, and must not bring it back to life.
            let t = self.terminals.entry(terminal).or_default();
            let just_left = t
                .offline_since
                .is_some_and(|since| now_ms < since.saturating_add(LATE_AFTER_GOODBYE_MS));
            if !just_left {
                t.online = true;
                t.offline_since = None;
            }
        }
        match obs {
            Observation::Known {
                terminal,
                online,
                since_ms,
            } => {
                let t = self.terminals.entry(terminal).or_default();
                t.online = online;
                t.offline_since = (!online).then_some(since_ms);
            }
            Observation::Presence { terminal, online } => {
                if online {
                    let t = self.terminals.entry(terminal).or_default();
                    t.online = true;
                    t.offline_since = None;
                } else if let Some(t) = self.terminals.get_mut(&terminal) {
                    // Only a terminal known to central goes offline (a stray retained offline
                    // record of a decommissioned id is not an alarm).
                    if t.online {
                        t.online = false;
                        t.offline_since = Some(now_ms);
                    }
                    // Gone from the meeting with its link: its offline alarm tells the rest.
                    self.meeting_over(terminal, now_ms, &mut out);
                }
                // Offline alarms are evaluated (with the grace period and suppression) on tick.
            }
            Observation::Sample {
                terminal,
                metric,
                value,
                at_ms,
            } => {
                let watched = self.rules.stale.iter().any(|r| r.metric == metric);
                let t = self.terminals.entry(terminal).or_default();
                if watched {
                    // Central's clock: a terminal's clock may be off, its data backfilled.
                    t.seen.insert(metric.clone(), now_ms);
                    if let Some(id) = self.open.remove(&Key::Stale(terminal, metric.clone())) {
                        self.clear(id, now_ms, &mut out);
                    }
                }
                if metric == Metric::MeetingsJoined {
                    let in_meeting = value >= 1.0;
                    let was = self.terminals.get(&terminal).is_some_and(|t| t.in_meeting);
                    if was && !in_meeting {
                        self.meeting_over(terminal, now_ms, &mut out);
                    }
                    if let Some(t) = self.terminals.get_mut(&terminal) {
                        t.in_meeting = in_meeting;
                    }
                }
                self.threshold(terminal, &metric, value, at_ms, now_ms, &mut out);
            }
            Observation::DutyReport {
                terminal,
                report,
                kind,
                text,
            } => {
                if !self.seen_reports.insert((terminal, report)) {
                    return out; // a resent copy
                }
                if self.seen_reports.len() > SEEN_REPORTS {
                    // Report numbers are the terminal's clock: forget the oldest.
                    if let Some(oldest) = self.seen_reports.iter().min_by_key(|(_, r)| *r).copied()
                    {
                        self.seen_reports.remove(&oldest);
                    }
                }
                let office = terminal
                    .site()
                    .at_level(crate::site::Level::County)
                    .map_or_else(
                        || terminal.site().to_string(),
                        |c| Region::of(c).to_string(),
                    );
                let mut alarm = self.new_alarm(
                    AlarmKind::DutyReport,
                    Subject::Terminal(terminal),
                    Severity::Critical,
                    now_ms,
                    format!("{kind}: {text} (for the duty office of {office})"),
                    None,
                );
                alarm.report = Some(report);
                self.alarms.insert(alarm.id, alarm.clone());
                out.push(AlarmChange::Raised(alarm));
            }
            Observation::Lost {
                terminal,
                stream,
                first,
                last,
            } => {
                let count = last.saturating_sub(first).saturating_add(1);
                let what = format!(
                    "{} seq {first}..={last} never arrived though the terminal sent what follows again and again: declared lost",
                    stream.as_str()
                );
                let detail = |total| format!("{total} records lost in all; last: {what}");
                let raised = (Severity::Major, what.clone());
                out.extend(self.count_up(AlarmKind::Lost, terminal, count, detail, raised, now_ms));
            }
            Observation::Dropped { terminal, count } => {
                let detail = |total| format!("outbox full: {total} records dropped unsent");
                let raised = (Severity::Warning, detail(count));
                if self.rules.dropping && count > 0
                    || self.open_alarm(AlarmKind::Dropping, terminal).is_some()
                {
                    out.extend(self.count_up(
                        AlarmKind::Dropping,
                        terminal,
                        count,
                        detail,
                        raised,
                        now_ms,
                    ));
                }
            }
        }
        out
    }

    /// The id of `terminal`'s open alarm of `kind`, if it has one.
    fn open_alarm(&self, kind: AlarmKind, terminal: TerminalId) -> Option<u64> {
        self.alarms
            .values()
            .find(|a| {
                a.kind == kind
                    && a.subject == Subject::Terminal(terminal)
                    && a.state != AlarmState::Cleared
            })
            .map(|a| a.id)
    }

    /// One open alarm of `kind` per terminal, counting records up (`detail` of the total),
    /// rather than one per report; `raised` is the severity and detail of a new one.
    fn count_up(
        &mut self,
        kind: AlarmKind,
        terminal: TerminalId,
        count: u64,
        detail: impl Fn(u64) -> String,
        raised: (Severity, String),
        now_ms: u64,
    ) -> Option<AlarmChange> {
        let open = self.open_alarm(kind, terminal);
        if let Some(a) = open.and_then(|id| self.alarms.get_mut(&id)) {
            a.dropped = a.dropped.saturating_add(count);
            a.detail = detail(a.dropped);
            return Some(AlarmChange::Updated(a.clone()));
        }
        let mut alarm = self.new_alarm(
            kind,
            Subject::Terminal(terminal),
            raised.0,
            now_ms,
            raised.1,
            None,
        );
        alarm.dropped = count;
        self.alarms.insert(alarm.id, alarm.clone());
        Some(AlarmChange::Raised(alarm))
    }
    /// Someone at the duty office acknowledged an alarm. Event alarms (data dropped) are
    /// cleared by it; condition alarms stay until their condition ends.
    pub fn acknowledge(
        &mut self,
        id: u64,
        by: &str,
        now_ms: u64,
    ) -> Result<Vec<AlarmChange>, AckError> {
        let a = self.alarms.get_mut(&id).ok_or(AckError::NoSuchAlarm(id))?;
        if a.state == AlarmState::Cleared {
            return Err(AckError::AlreadyCleared(id));
        }
        a.state = AlarmState::Acknowledged;
        a.acknowledged = Some((by.to_string(), now_ms));
        let mut out = alloc::vec![AlarmChange::Updated(a.clone())];
        if a.kind.is_event() {
            self.clear(id, now_ms, &mut out);
        }
        Ok(out)
    }

    fn new_alarm(
        &mut self,
        kind: AlarmKind,
        subject: Subject,
        severity: Severity,
        now_ms: u64,
        detail: String,
        metric: Option<String>,
    ) -> Alarm {
        let alarm = Alarm {
            id: self.next_id,
            kind,
            subject,
            severity,
            state: AlarmState::Active,
            raised_ms: now_ms,
            detail,
            metric,
            acknowledged: None,
            cleared_ms: None,
            suppressed: Vec::new(),
            report: None,
            rule: None,
            dropped: 0,
        };
        self.next_id += 1;
        self.alarms.insert(alarm.id, alarm.clone());
        alarm
    }

    fn clear(&mut self, id: u64, now_ms: u64, out: &mut Vec<AlarmChange>) {
        if let Some(a) = self.alarms.get_mut(&id)
            && a.state != AlarmState::Cleared
        {
            a.state = AlarmState::Cleared;
            a.cleared_ms = Some(now_ms);
            out.push(AlarmChange::Cleared(a.clone()));
        }
        // Cleared alarms live on in the store; memory keeps the open ones.
        self.alarms.remove(&id);
    }
}

/// The condition key of a stored, open alarm (so a restart goes on with it).
fn key_of(rules: &AlarmRules, a: &Alarm) -> Option<Key> {
    match (a.kind, a.subject) {
        (AlarmKind::Offline, s) => Some(Key::Offline(s)),
        (AlarmKind::Stale, Subject::Terminal(t)) => {
            let m = Metric::from_name(a.metric.as_deref()?).ok()?;
            Some(Key::Stale(t, m))
        }
        (AlarmKind::Threshold | AlarmKind::MediaDegraded, Subject::Terminal(t)) => {
            let sig = a.rule.as_deref()?;
            let i = rules
                .thresholds
                .iter()
                .position(|r| rule_signature(r) == sig)?;
            Some(Key::Threshold(t, i))
        }
        _ => None,
    }
}
