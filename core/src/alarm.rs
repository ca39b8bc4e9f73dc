//! Alarms central staff can trust: a terminal offline after a grace period, stale data,
//! thresholds with separate raise and clear levels and a minimum duration (hysteresis, so a
//! value hovering at its limit does not flap), an outbox dropping data — and parent-aware
//! suppression: when every terminal of a township (or a county…) is offline, that is one
//! root-cause alarm for the region with the terminals listed under it, not an alarm storm; and
//! when an uplink terminal (a county box the villages reach the network through, a relay) is
//! offline, the terminals behind it that are offline are listed under its alarm.
//!
//! [`AlarmEngine`] is sans-IO: it is told what central learns ([`Observation`]) and the time,
//! and answers with the [`AlarmChange`]s to store and notify. Condition alarms (offline, stale,
//! threshold) clear when their condition ends; event alarms (data dropped) clear when someone
//! acknowledges them.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use serde::{Deserialize, Serialize};

use crate::site::{Region, SiteCode};
use crate::telemetry::Metric;
use crate::terminal_id::TerminalId;

/// What an alarm is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AlarmKind {
    Offline,
    Stale,
    Threshold,
    Dropping,
    /// A site's operator raised a duty report.
    DutyReport,
    /// A site's media is degraded while it is in a meeting.
    MediaDegraded,
    /// Records of a terminal never reached central though it sent what follows them again and
    /// again: declared lost, so its watermark moves on.
    Lost,
}

impl AlarmKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmKind::Offline => "offline",
            AlarmKind::Stale => "stale",
            AlarmKind::Threshold => "threshold",
            AlarmKind::Dropping => "dropping",
            AlarmKind::DutyReport => "duty-report",
            AlarmKind::MediaDegraded => "media-degraded",
            AlarmKind::Lost => "lost",
        }
    }

    /// Event alarms clear when acknowledged; condition alarms when their condition ends.
    pub fn is_event(self) -> bool {
        matches!(
            self,
            AlarmKind::Dropping | AlarmKind::DutyReport | AlarmKind::Lost
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Severity {
    Info,
    Warning,
    Major,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Major => "major",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<Severity> {
        [
            Severity::Info,
            Severity::Warning,
            Severity::Major,
            Severity::Critical,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

/// active → acknowledged → cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AlarmState {
    Active,
    Acknowledged,
    Cleared,
}

impl AlarmState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmState::Active => "active",
            AlarmState::Acknowledged => "acknowledged",
            AlarmState::Cleared => "cleared",
        }
    }
}

/// What an alarm names: a terminal, or a region for a root-cause alarm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Subject {
    Terminal(TerminalId),
    Region(SiteCode),
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Terminal(t) => t.fmt(f),
            Subject::Region(s) => Region::of(*s).fmt(f),
        }
    }
}

/// One alarm and its life.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alarm {
    pub id: u64,
    pub kind: AlarmKind,
    pub subject: Subject,
    pub severity: Severity,
    pub state: AlarmState,
    pub raised_ms: u64,
    /// In words: `offline since …`, `env.temp 36.2 ≥ 35 for 5 min`.
    pub detail: String,
    /// The metric, for stale and threshold alarms.
    pub metric: Option<String>,
    /// Who acknowledged it, and when.
    pub acknowledged: Option<(String, u64)>,
    pub cleared_ms: Option<u64>,
    /// For a root-cause alarm: the terminals whose own alarms it stands for.
    pub suppressed: Vec<TerminalId>,
    /// For a duty report: the terminal's number for it.
    #[serde(default)]
    pub report: Option<u64>,
    /// For a threshold alarm: its rule (metric, direction, level, region).
    #[serde(default)]
    pub rule: Option<String>,
    /// For a dropping or lost alarm: records dropped (or declared lost) so far.
    #[serde(default)]
    pub dropped: u64,
}

/// What central tells a terminal on its `nt` topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum TerminalNotice {
    /// The duty office acknowledged the terminal's duty report `report`.
    DutyReportAcknowledged { report: u64, by: String, at_ms: u64 },
    /// The highest seq of each stream central holds under the terminal's id (stored, or
    /// reported dropped), sent when the terminal announced a numbering start at or below it:
    /// a box whose numbering central has not agreed to yet renumbers above it (see
    /// [`crate::delivery`]).
    Held {
        highest: crate::delivery::Watermarks,
    },
}

impl TerminalNotice {
    pub fn decode(bytes: &[u8]) -> Result<TerminalNotice, crate::envelope::DecodeError> {
        crate::envelope::decode(bytes)
    }
}

/// A threshold on a metric, with hysteresis.
#[derive(Clone, Debug, PartialEq)]
pub struct ThresholdRule {
    pub metric: Metric,
    /// Only terminals in this region (all if `None`).
    pub region: Option<Region>,
    /// Raise when the value is at or beyond `raise` (above it if `above`, else below it)…
    pub above: bool,
    pub raise: f64,
    /// …and clear only when it is back at or behind `clear`.
    pub clear: f64,
    /// The value must stay beyond `raise` this long before the alarm is raised.
    pub min_duration_ms: u64,
    pub severity: Severity,
    /// Judged only while the terminal is in a meeting (`meeting.joined` ≥ 1): a
    /// `media-degraded` alarm, cleared when the value is back or the meeting is over.
    pub during_meeting: bool,
}

impl ThresholdRule {
    /// The built-in media rules: receive loss ≥ 5 % (clear under 2 %) and jitter ≥ 80 ms (clear
    /// under 40 ms), each for 10 s, while in a meeting.
    pub fn media_defaults() -> Vec<ThresholdRule> {
        let rule = |metric, raise, clear, severity| ThresholdRule {
            metric,
            region: None,
            above: true,
            raise,
            clear,
            min_duration_ms: 10_000,
            severity,
            during_meeting: true,
        };
        alloc::vec![
            rule(Metric::MediaLoss, 5.0, 2.0, Severity::Major),
            rule(Metric::MediaJitter, 80.0, 40.0, Severity::Warning),
        ]
    }
}

/// A metric that must keep coming.
#[derive(Clone, Debug, PartialEq)]
pub struct StaleRule {
    pub metric: Metric,
    pub region: Option<Region>,
    /// An online terminal that reported the metric before but not for this long is stale.
    pub after_ms: u64,
    pub severity: Severity,
}

/// What raises alarms.
#[derive(Clone, Debug, PartialEq)]
pub struct AlarmRules {
    /// A terminal is offline this long before it is an alarm (links blink).
    pub offline_grace_ms: u64,
    pub offline_severity: Severity,
    /// A region whose terminals (at least this many) are all offline is one root-cause alarm.
    pub root_cause_min: usize,
    pub thresholds: Vec<ThresholdRule>,
    pub stale: Vec<StaleRule>,
    /// Raise an alarm when a terminal reports data dropped from its full outbox.
    pub dropping: bool,
    /// Terminals through which a region reaches the network.
    pub uplinks: Vec<Uplink>,
}

/// A terminal through which the terminals of `serves` reach the network (or their media):
/// while it is offline, those that are offline are its alarm's, not their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Uplink {
    pub terminal: TerminalId,
    pub serves: Region,
}

impl Default for AlarmRules {
    fn default() -> AlarmRules {
        AlarmRules {
            offline_grace_ms: 120_000,
            offline_severity: Severity::Major,
            root_cause_min: 2,
            thresholds: ThresholdRule::media_defaults(),
            stale: Vec::new(),
            dropping: true,
            uplinks: Vec::new(),
        }
    }
}

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

/// How a threshold rule is recognised in a stored alarm, across restarts and rule edits.
fn rule_signature(r: &ThresholdRule) -> String {
    format!(
        "{}{}{}{}@{}",
        if r.during_meeting { "meeting:" } else { "" },
        r.metric.name(),
        if r.above { '>' } else { '<' },
        r.raise,
        r.region.map_or(String::new(), |g| g.to_string())
    )
}

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
            // (to a subscriber it finds slow), while what a terminal sends again arrives.
            let t = self.terminals.entry(terminal).or_default();
            t.online = true;
            t.offline_since = None;
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

    fn threshold(
        &mut self,
        terminal: TerminalId,
        metric: &Metric,
        value: f64,
        at_ms: u64,
        now_ms: u64,
        out: &mut Vec<AlarmChange>,
    ) {
        let rules: Vec<(usize, ThresholdRule)> = self
            .rules
            .thresholds
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                r.metric == *metric && r.region.is_none_or(|g| g.contains(terminal.site()))
            })
            .map(|(i, r)| (i, r.clone()))
            .collect();
        for (i, rule) in rules {
            let judged =
                !rule.during_meeting || self.terminals.get(&terminal).is_some_and(|t| t.in_meeting);
            let beyond_raise = judged
                && if rule.above {
                    value >= rule.raise
                } else {
                    value <= rule.raise
                };
            let back_to_clear = !judged
                || if rule.above {
                    value <= rule.clear
                } else {
                    value >= rule.clear
                };
            let key = Key::Threshold(terminal, i);
            if let Some(&id) = self.open.get(&key) {
                if back_to_clear {
                    self.open.remove(&key);
                    self.clear(id, now_ms, out);
                }
                continue;
            }
            let Some(t) = self.terminals.get_mut(&terminal) else {
                continue;
            };
            if !beyond_raise {
                t.breaching.remove(&i);
                continue;
            }
            let since = *t.breaching.entry(i).or_insert(at_ms);
            if at_ms.saturating_sub(since) >= rule.min_duration_ms {
                t.breaching.remove(&i);
                let cmp = if rule.above { "≥" } else { "≤" };
                let kind = if rule.during_meeting {
                    AlarmKind::MediaDegraded
                } else {
                    AlarmKind::Threshold
                };
                let alarm = self.new_alarm(
                    kind,
                    Subject::Terminal(terminal),
                    rule.severity,
                    now_ms,
                    format!(
                        "{} {value} {cmp} {} for {} s",
                        metric.name(),
                        rule.raise,
                        at_ms.saturating_sub(since) / 1000
                    ),
                    Some(metric.name().to_string()),
                );
                let mut alarm = alarm;
                alarm.rule = Some(rule_signature(&rule));
                self.alarms.insert(alarm.id, alarm.clone());
                self.open.insert(key, alarm.id);
                out.push(AlarmChange::Raised(alarm));
            }
        }
    }

    /// The terminal left its last meeting (or went offline): its media alarms are over.
    fn meeting_over(&mut self, terminal: TerminalId, now_ms: u64, out: &mut Vec<AlarmChange>) {
        let media: Vec<(Key, u64)> = self
            .open
            .iter()
            .filter(|(k, _)| {
                matches!(k, Key::Threshold(t, i) if *t == terminal
                    && self.rules.thresholds.get(*i).is_some_and(|r| r.during_meeting))
            })
            .map(|(k, id)| (k.clone(), *id))
            .collect();
        for (k, id) in media {
            self.open.remove(&k);
            self.clear(id, now_ms, out);
        }
        if let Some(t) = self.terminals.get_mut(&terminal) {
            t.in_meeting = false;
            let rules = &self.rules.thresholds;
            t.breaching
                .retain(|i, _| rules.get(*i).is_some_and(|r| !r.during_meeting));
        }
    }

    /// Central could not hear anything for a while (its own link was down) and hears again:
    /// data that did not come meanwhile is not the terminals' fault, so stale-data clocks start
    /// over from now.
    pub fn resume(&mut self, now_ms: u64) {
        for t in self.terminals.values_mut() {
            for seen in t.seen.values_mut() {
                *seen = now_ms;
            }
        }
    }

    /// Evaluates what depends on time: offline terminals (with suppression) and stale data.
    pub fn tick(&mut self, now_ms: u64) -> Vec<AlarmChange> {
        let mut out = Vec::new();
        self.offline(now_ms, &mut out);
        self.stale(now_ms, &mut out);
        out
    }

    fn offline(&mut self, now_ms: u64, out: &mut Vec<AlarmChange>) {
        let grace = self.rules.offline_grace_ms;
        let down: BTreeSet<TerminalId> = self
            .terminals
            .iter()
            .filter(|(_, t)| {
                !t.online
                    && t.offline_since
                        .is_some_and(|s| now_ms.saturating_sub(s) >= grace)
            })
            .map(|(id, _)| *id)
            .collect();
        // Per region (a terminal's site and every site above it): terminals known and down.
        let mut counts: BTreeMap<SiteCode, (usize, usize)> = BTreeMap::new();
        for id in self.terminals.keys() {
            for a in core::iter::once(*id.site()).chain(id.site().ancestors()) {
                let c = counts.entry(a).or_default();
                c.0 += 1;
                if down.contains(id) {
                    c.1 += 1;
                }
            }
        }
        // The highest region each down terminal is in that is down as a whole, if any.
        let min = self.rules.root_cause_min.max(2);
        let region_root: BTreeMap<TerminalId, SiteCode> = down
            .iter()
            .filter_map(|id| {
                core::iter::once(*id.site())
                    .chain(id.site().ancestors())
                    .filter(|a| counts.get(a).is_some_and(|&(k, d)| k == d && k >= min))
                    .last()
                    .map(|r| (*id, r))
            })
            .collect();
        // How far out an explanation reaches: a region's level, or what an uplink serves.
        let uplink_depth = |u: &Uplink| u.serves.root().level().depth();
        let down_uplinks: Vec<&Uplink> = self
            .rules
            .uplinks
            .iter()
            .filter(|u| down.contains(&u.terminal))
            .collect();
        // A region (or the sites behind an uplink) coming back terminal by terminal stays one
        // alarm: an open root-cause alarm keeps those of its terminals still down (no storm on
        // recovery either), unless something further out explains them now.
        let mut open_root: BTreeMap<TerminalId, (usize, Subject)> = BTreeMap::new();
        for (k, alarm_id) in &self.open {
            let (Key::Offline(subject), Some(a)) = (k, self.alarms.get(alarm_id)) else {
                continue;
            };
            let depth = match subject {
                Subject::Region(r) => r.level().depth(),
                Subject::Terminal(t) => {
                    match self.rules.uplinks.iter().find(|u| u.terminal == *t) {
                        Some(u) => uplink_depth(u),
                        None => continue,
                    }
                }
            };
            for t in a.suppressed.iter().filter(|t| down.contains(t)) {
                let e = open_root.entry(*t).or_insert((depth, *subject));
                if depth < e.0 {
                    *e = (depth, *subject);
                }
            }
        }
        // Each down terminal goes under the outermost explanation: at the same reach an open
        // alarm first, then an uplink, then a region; with none, it is its own alarm.
        let mut wanted: BTreeMap<Subject, Vec<TerminalId>> = BTreeMap::new();
        for id in &down {
            let mut candidates: Vec<(usize, u8, Subject)> = Vec::new();
            if let Some((d, subject)) = open_root.get(id) {
                candidates.push((*d, 0, *subject));
            }
            for u in down_uplinks.iter().filter(|u| u.serves.contains(id.site())) {
                candidates.push((uplink_depth(u), 1, Subject::Terminal(u.terminal)));
            }
            if let Some(r) = region_root.get(id) {
                candidates.push((r.level().depth(), 2, Subject::Region(*r)));
            }
            let subject = candidates
                .into_iter()
                .min_by_key(|(d, rank, _)| (*d, *rank))
                .map_or(Subject::Terminal(*id), |(_, _, s)| s);
            wanted.entry(subject).or_default().push(*id);
        }
        // Clear what is no longer wanted.
        let stale_keys: Vec<(Key, u64)> = self
            .open
            .iter()
            .filter(|(k, _)| matches!(k, Key::Offline(s) if !wanted.contains_key(s)))
            .map(|(k, id)| (k.clone(), *id))
            .collect();
        for (k, id) in stale_keys {
            self.open.remove(&k);
            self.clear(id, now_ms, out);
        }
        // Raise what is new, update what changed.
        for (subject, terminals) in wanted {
            let key = Key::Offline(subject);
            let suppressed: Vec<TerminalId> = terminals
                .iter()
                .filter(|t| subject != Subject::Terminal(**t))
                .copied()
                .collect();
            let itself_down = matches!(subject, Subject::Terminal(t) if down.contains(&t));
            // A root cause (a region, an uplink with sites behind it) is critical.
            let severity = if suppressed.is_empty() {
                self.rules.offline_severity
            } else {
                Severity::Critical
            };
            let detail = offline_detail(&subject, itself_down, suppressed.len());
            match self.open.get(&key).copied() {
                Some(id) => {
                    if let Some(a) = self.alarms.get_mut(&id)
                        && (a.suppressed != suppressed || a.detail != detail)
                    {
                        a.suppressed = suppressed;
                        a.detail = detail;
                        // Escalates when sites fall behind it; never lowered while open.
                        if severity > a.severity {
                            a.severity = severity;
                        }
                        out.push(AlarmChange::Updated(a.clone()));
                    }
                }
                None => {
                    let mut alarm =
                        self.new_alarm(AlarmKind::Offline, subject, severity, now_ms, detail, None);
                    alarm.suppressed = suppressed;
                    self.alarms.insert(alarm.id, alarm.clone());
                    self.open.insert(key, alarm.id);
                    out.push(AlarmChange::Raised(alarm));
                }
            }
        }
    }

    fn stale(&mut self, now_ms: u64, out: &mut Vec<AlarmChange>) {
        // An offline terminal's data is not stale, it is the offline alarm's (or its region's).
        let offline_stale: Vec<(Key, u64)> = self
            .open
            .iter()
            .filter(|(k, _)| {
                matches!(k, Key::Stale(t, _) if self.terminals.get(t).is_some_and(|s| !s.online))
            })
            .map(|(k, id)| (k.clone(), *id))
            .collect();
        for (k, id) in offline_stale {
            self.open.remove(&k);
            self.clear(id, now_ms, out);
        }
        let rules = self.rules.stale.clone();
        let mut raise = Vec::new();
        for (id, t) in &self.terminals {
            if !t.online {
                continue; // offline covers it
            }
            for rule in &rules {
                if rule.region.is_some_and(|g| !g.contains(id.site())) {
                    continue;
                }
                let key = Key::Stale(*id, rule.metric.clone());
                if self.open.contains_key(&key) {
                    continue;
                }
                if let Some(&last) = t.seen.get(&rule.metric)
                    && now_ms.saturating_sub(last) > rule.after_ms
                {
                    raise.push((key, *id, rule.clone(), last));
                }
            }
        }
        for (key, id, rule, last) in raise {
            let alarm = self.new_alarm(
                AlarmKind::Stale,
                Subject::Terminal(id),
                rule.severity,
                now_ms,
                format!(
                    "{} not reported for {} s",
                    rule.metric.name(),
                    now_ms.saturating_sub(last) / 1000
                ),
                Some(rule.metric.name().to_string()),
            );
            self.open.insert(key, alarm.id);
            out.push(AlarmChange::Raised(alarm));
        }
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

/// `itself_down`: the subject terminal is offline; `behind`: the terminals listed under it.
fn offline_detail(subject: &Subject, itself_down: bool, behind: usize) -> String {
    match subject {
        Subject::Region(r) => format!(
            "all {behind} terminals of {} ({}) offline: likely its uplink",
            Region::of(*r),
            r.level()
        ),
        Subject::Terminal(_) if behind == 0 => "offline".to_string(),
        Subject::Terminal(_) if itself_down => {
            format!("uplink offline, with {behind} terminals behind it")
        }
        Subject::Terminal(_) => {
            format!("uplink back; {behind} terminals behind it still offline")
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn every_terminal_notice_has_pinned_bytes() {
        crate::envelope::golden::assert_pinned(&[
            (
                TerminalNotice::DutyReportAcknowledged {
                    report: 2,
                    by: "duty".into(),
                    at_ms: 1_763_798_400_000,
                },
                "010002046475747980f8ced4aa33",
            ),
            (
                TerminalNotice::Held {
                    highest: crate::delivery::Watermarks {
                        telemetry: 300,
                        events: 1_763_798_400_000,
                    },
                },
                "0101ac0280f8ced4aa33",
            ),
        ]);
    }

    fn t(s: &str) -> TerminalId {
        s.parse().unwrap()
    }

    fn engine(rules: AlarmRules, ids: &[&str]) -> AlarmEngine {
        let mut e = AlarmEngine::new(rules, Vec::new(), 0);
        for id in ids {
            e.observe(
                Observation::Known {
                    terminal: t(id),
                    online: true,
                    since_ms: 0,
                },
                0,
            );
        }
        e
    }

    const TOWNSHIP: [&str; 3] = [
        "130102009001-main",
        "130102009002-main",
        "130102009003-main",
    ];

    #[test]
    fn a_township_uplink_failure_is_one_root_cause_alarm_not_a_storm() {
        let mut ids = TOWNSHIP.to_vec();
        ids.push("130102001001-main");
        let mut e = engine(AlarmRules::default(), &ids);
        for id in TOWNSHIP {
            e.observe(
                Observation::Presence {
                    terminal: t(id),
                    online: false,
                },
                1_000,
            );
        }
        assert!(e.tick(60_000).is_empty(), "within the grace period");
        let out = e.tick(121_000);
        assert_eq!(out.len(), 1, "{out:?}");
        let a = out[0].alarm();
        assert_eq!(a.kind, AlarmKind::Offline);
        assert_eq!(a.subject, Subject::Region("130102009000".parse().unwrap()));
        assert_eq!(a.subject.to_string(), "130102009");
        assert_eq!(a.severity, Severity::Critical);
        assert_eq!(a.suppressed.len(), 3);
        assert!(e.tick(125_000).is_empty(), "raised once");
        // The villages come back one by one: still one alarm, listing those still down.
        let back = |e: &mut AlarmEngine, i: usize, at| {
            e.observe(
                Observation::Presence {
                    terminal: t(TOWNSHIP[i]),
                    online: true,
                },
                at,
            );
            e.tick(at + 1)
        };
        let out = back(&mut e, 0, 130_000);
        assert!(
            matches!(&out[..], [AlarmChange::Updated(a)] if a.suppressed.len() == 2),
            "{out:?}"
        );
        assert!(matches!(
            &back(&mut e, 1, 131_000)[..],
            [AlarmChange::Updated(_)]
        ));
        assert!(matches!(
            &back(&mut e, 2, 132_000)[..],
            [AlarmChange::Cleared(_)]
        ));
        assert_eq!(e.active().count(), 0);
    }

    #[test]
    fn an_uplink_terminal_offline_stands_for_the_sites_behind_it() {
        let relay = "130102000000-relay";
        let mut ids = TOWNSHIP.to_vec();
        // One site elsewhere in the city stays online (else the city is the root cause).
        ids.extend([
            relay,
            "130102001001-main",
            "130103001001-main",
            "130104001001-main",
        ]);
        let rules = AlarmRules {
            uplinks: vec![Uplink {
                terminal: t(relay),
                serves: "130102".parse().unwrap(),
            }],
            ..AlarmRules::default()
        };
        let mut e = engine(rules, &ids);
        let presence = |e: &mut AlarmEngine, id: &str, online: bool, at: u64| {
            e.observe(
                Observation::Presence {
                    terminal: t(id),
                    online,
                },
                at,
            );
        };
        // The relay alone: its own alarm, no root cause.
        presence(&mut e, relay, false, 1_000);
        let out = e.tick(121_000);
        assert!(
            matches!(&out[..], [AlarmChange::Raised(a)] if a.suppressed.is_empty() && a.severity == Severity::Major),
            "{out:?}"
        );
        // The county's sites behind it drop too (the township as a whole among them): one
        // alarm, the relay's, escalated, listing them; the other county's site is not in it.
        for id in TOWNSHIP
            .iter()
            .chain(&["130102001001-main", "130103001001-main"])
        {
            presence(&mut e, id, false, 122_000);
        }
        let out = e.tick(243_000);
        let relay_alarm = out
            .iter()
            .map(AlarmChange::alarm)
            .find(|a| a.subject == Subject::Terminal(t(relay)))
            .unwrap();
        assert_eq!(relay_alarm.severity, Severity::Critical);
        assert_eq!(relay_alarm.suppressed.len(), 4);
        assert!(relay_alarm.detail.contains("4 terminals behind it"));
        let subjects: Vec<String> = e.active().map(|a| a.subject.to_string()).collect();
        assert_eq!(subjects.len(), 2, "{subjects:?}");
        assert!(subjects.contains(&"130103001001-main".to_owned()));
        // The relay comes back before its sites: still one alarm until they are back.
        presence(&mut e, relay, true, 250_000);
        let out = e.tick(250_001);
        assert!(
            matches!(&out[..], [AlarmChange::Updated(a)] if a.suppressed.len() == 4 && a.detail.contains("uplink back")),
            "{out:?}"
        );
        for id in TOWNSHIP.iter().chain(&["130102001001-main"]) {
            presence(&mut e, id, true, 251_000);
        }
        let out = e.tick(251_001);
        assert!(
            matches!(&out[..], [AlarmChange::Cleared(a)] if a.subject == Subject::Terminal(t(relay))),
            "{out:?}"
        );
        assert_eq!(
            e.active().count(),
            1,
            "the other county's site is still its own"
        );
    }

    #[test]
    fn media_degraded_is_judged_only_during_a_meeting_and_ends_with_it() {
        let id = t("130102001001-main");
        let mut e = engine(AlarmRules::default(), &["130102001001-main"]);
        let sample = |e: &mut AlarmEngine, metric: Metric, value: f64, at: u64| {
            e.observe(
                Observation::Sample {
                    terminal: id,
                    metric,
                    value,
                    at_ms: at,
                },
                at,
            )
        };
        // Lossy, but in no meeting: nothing (the loss of an idle box is nobody's problem).
        for at in (0..30_000).step_by(5_000) {
            assert!(sample(&mut e, Metric::MediaLoss, 12.0, at).is_empty());
        }
        // In a meeting: 12 % for 10 s is media degraded, raised once.
        assert!(sample(&mut e, Metric::MeetingsJoined, 1.0, 30_000).is_empty());
        let mut raised = Vec::new();
        for at in (30_000..50_000).step_by(5_000) {
            raised.extend(sample(&mut e, Metric::MediaLoss, 12.0, at));
        }
        assert!(
            matches!(&raised[..], [AlarmChange::Raised(a)] if a.kind == AlarmKind::MediaDegraded
                && a.severity == Severity::Major && a.metric.as_deref() == Some("media.loss")),
            "{raised:?}"
        );
        // 3 % is between the levels: it stays; the meeting ending clears it.
        assert!(sample(&mut e, Metric::MediaLoss, 3.0, 50_000).is_empty());
        let out = sample(&mut e, Metric::MeetingsJoined, 0.0, 55_000);
        assert!(
            matches!(&out[..], [AlarmChange::Cleared(a)] if a.kind == AlarmKind::MediaDegraded),
            "{out:?}"
        );
        assert_eq!(e.active().count(), 0);
    }

    #[test]
    fn a_county_going_down_after_its_township_is_one_county_alarm() {
        let mut ids = TOWNSHIP.to_vec();
        ids.extend(["130102001001-main", "130103001001-main"]);
        let mut e = engine(AlarmRules::default(), &ids);
        let down = |e: &mut AlarmEngine, id: &str, at| {
            e.observe(
                Observation::Presence {
                    terminal: t(id),
                    online: false,
                },
                at,
            )
        };
        for id in TOWNSHIP {
            down(&mut e, id, 0);
        }
        let first = e.tick(121_000);
        assert_eq!(first[0].alarm().subject.to_string(), "130102009");
        down(&mut e, "130102001001-main", 130_000);
        let out = e.tick(251_000);
        let raised: Vec<String> = out
            .iter()
            .filter(|c| matches!(c, AlarmChange::Raised(_)))
            .map(|c| c.alarm().subject.to_string())
            .collect();
        assert_eq!(raised, ["130102"], "{out:?}");
        assert!(
            out.iter()
                .any(|c| matches!(c, AlarmChange::Cleared(a) if a.id == first[0].alarm().id))
        );
        assert_eq!(e.active().count(), 1);
    }

    #[test]
    fn a_single_terminal_offline_is_its_own_alarm_and_clears_when_back() {
        let mut e = engine(AlarmRules::default(), &TOWNSHIP);
        let off = |e: &mut AlarmEngine, online, at| {
            e.observe(
                Observation::Presence {
                    terminal: t(TOWNSHIP[1]),
                    online,
                },
                at,
            )
        };
        off(&mut e, false, 0);
        off(&mut e, true, 30_000);
        assert!(
            e.tick(200_000).is_empty(),
            "a blink within the grace is nothing"
        );
        off(&mut e, false, 200_000);
        let out = e.tick(330_000);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].alarm().subject, Subject::Terminal(t(TOWNSHIP[1])));
        assert!(out[0].alarm().suppressed.is_empty());
        off(&mut e, true, 340_000);
        let out = e.tick(341_000);
        assert!(matches!(&out[..], [AlarmChange::Cleared(a)] if a.cleared_ms == Some(341_000)));
        assert_eq!(e.active().count(), 0);
    }

    #[test]
    fn a_terminal_heard_from_after_its_online_presence_was_lost_is_online_again() {
        let mut e = engine(AlarmRules::default(), &TOWNSHIP);
        let me = t(TOWNSHIP[1]);
        e.observe(
            Observation::Presence {
                terminal: me,
                online: false,
            },
            0,
        );
        // It reconnected; its online presence never arrived, but its data does.
        e.observe(
            Observation::Sample {
                terminal: me,
                metric: Metric::CpuTemp,
                value: 40.0,
                at_ms: 1_000,
            },
            1_000,
        );
        assert!(
            e.tick(600_000).is_empty(),
            "no offline alarm for a terminal sending data"
        );
        // Gone again for good: the alarm comes after the grace.
        e.observe(
            Observation::Presence {
                terminal: me,
                online: false,
            },
            600_000,
        );
        let out = e.tick(900_000);
        assert!(matches!(&out[..], [AlarmChange::Raised(a)] if a.subject == Subject::Terminal(me)));
        // A dropped-records report says it is back, and the alarm clears.
        e.observe(
            Observation::Dropped {
                terminal: me,
                count: 1,
            },
            900_500,
        );
        let out = e.tick(901_000);
        assert!(
            out.iter()
                .any(|c| matches!(c, AlarmChange::Cleared(a) if a.kind == AlarmKind::Offline)),
            "{out:?}"
        );
    }

    fn temp_rule() -> ThresholdRule {
        ThresholdRule {
            metric: Metric::AirTemp,
            region: None,
            above: true,
            raise: 30.0,
            clear: 28.0,
            min_duration_ms: 60_000,
            severity: Severity::Major,
            during_meeting: false,
        }
    }

    #[test]
    fn a_value_hovering_at_its_threshold_does_not_flap() {
        let rules = AlarmRules {
            thresholds: vec![temp_rule()],
            ..AlarmRules::default()
        };
        let mut e = engine(rules, &TOWNSHIP);
        let id = t(TOWNSHIP[0]);
        let mut changes = Vec::new();
        // Hovering 29.9 / 30.1 every 10 s: never 60 s beyond 30, so never raised.
        for i in 0..60u64 {
            let value = if i % 2 == 0 { 30.1 } else { 29.9 };
            changes.extend(e.observe(
                Observation::Sample {
                    terminal: id,
                    metric: Metric::AirTemp,
                    value,
                    at_ms: i * 10_000,
                },
                i * 10_000,
            ));
        }
        assert!(changes.is_empty(), "{changes:?}");
        // Beyond 30 for a minute: raised once; hovering 29–31 afterwards keeps it, no flapping.
        for i in 0..=6u64 {
            changes.extend(e.observe(
                Observation::Sample {
                    terminal: id,
                    metric: Metric::AirTemp,
                    value: 31.0,
                    at_ms: 600_000 + i * 10_000,
                },
                600_000 + i * 10_000,
            ));
        }
        for i in 0..30u64 {
            let value = if i % 2 == 0 { 29.0 } else { 30.5 };
            changes.extend(e.observe(
                Observation::Sample {
                    terminal: id,
                    metric: Metric::AirTemp,
                    value,
                    at_ms: 700_000 + i * 10_000,
                },
                700_000 + i * 10_000,
            ));
        }
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert!(matches!(changes[0], AlarmChange::Raised(_)));
        // Back to 28: cleared.
        let out = e.observe(
            Observation::Sample {
                terminal: id,
                metric: Metric::AirTemp,
                value: 27.5,
                at_ms: 1_100_000,
            },
            1_100_000,
        );
        assert!(matches!(&out[..], [AlarmChange::Cleared(_)]));
    }

    #[test]
    fn data_missed_while_central_was_deaf_is_not_stale() {
        let rules = AlarmRules {
            stale: vec![StaleRule {
                metric: Metric::AirTemp,
                region: None,
                after_ms: 300_000,
                severity: Severity::Warning,
            }],
            ..AlarmRules::default()
        };
        let mut e = engine(rules, &TOWNSHIP);
        e.observe(
            Observation::Sample {
                terminal: t(TOWNSHIP[0]),
                metric: Metric::AirTemp,
                value: 20.0,
                at_ms: 0,
            },
            0,
        );
        // Central's link was down from 100 s to 500 s; it resumes.
        e.resume(500_000);
        assert!(e.tick(600_000).is_empty());
        assert_eq!(
            e.tick(801_000).len(),
            1,
            "stale again only 300 s after resuming"
        );
    }

    #[test]
    fn stale_data_raises_and_a_new_sample_clears_it() {
        let rules = AlarmRules {
            stale: vec![StaleRule {
                metric: Metric::AirTemp,
                region: None,
                after_ms: 300_000,
                severity: Severity::Warning,
            }],
            ..AlarmRules::default()
        };
        let mut e = engine(rules, &TOWNSHIP);
        let sample = |e: &mut AlarmEngine, at| {
            e.observe(
                Observation::Sample {
                    terminal: t(TOWNSHIP[0]),
                    metric: Metric::AirTemp,
                    value: 20.0,
                    at_ms: at,
                },
                at,
            )
        };
        sample(&mut e, 0);
        assert!(e.tick(200_000).is_empty());
        let out = e.tick(301_000);
        assert_eq!(out.len(), 1, "only the terminal that reported it: {out:?}");
        assert_eq!(out[0].alarm().kind, AlarmKind::Stale);
        assert!(e.tick(400_000).is_empty());
        assert!(matches!(
            &sample(&mut e, 410_000)[..],
            [AlarmChange::Cleared(_)]
        ));
    }

    #[test]
    fn acknowledging_is_recorded_and_clears_event_alarms_only() {
        let mut e = engine(AlarmRules::default(), &TOWNSHIP);
        let out = e.observe(
            Observation::Dropped {
                terminal: t(TOWNSHIP[0]),
                count: 40,
            },
            5,
        );
        let id = out[0].alarm().id;
        let out = e.acknowledge(id, "duty officer Li", 9).unwrap();
        assert!(
            matches!(&out[..], [AlarmChange::Updated(a), AlarmChange::Cleared(_)]
            if a.acknowledged == Some(("duty officer Li".into(), 9)))
        );
        assert_eq!(e.acknowledge(id, "x", 10), Err(AckError::NoSuchAlarm(id)));
        e.observe(
            Observation::Presence {
                terminal: t(TOWNSHIP[0]),
                online: false,
            },
            0,
        );
        let raised = e.tick(200_000);
        let off = raised[0].alarm().id;
        let out = e.acknowledge(off, "Li", 200_001).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(e.get(off).unwrap().state, AlarmState::Acknowledged);
        assert_eq!(e.acknowledge(999, "x", 1), Err(AckError::NoSuchAlarm(999)));
    }

    #[test]
    fn resent_reports_raise_nothing_new_and_drops_add_up_in_one_alarm() {
        let mut e = engine(AlarmRules::default(), &TOWNSHIP);
        let report = |e: &mut AlarmEngine| {
            e.observe(
                Observation::DutyReport {
                    terminal: t(TOWNSHIP[0]),
                    report: 77,
                    kind: "flood".into(),
                    text: "x".into(),
                },
                1,
            )
        };
        assert_eq!(report(&mut e).len(), 1);
        assert!(report(&mut e).is_empty(), "a resent copy");
        let drop = |e: &mut AlarmEngine, n| {
            e.observe(
                Observation::Dropped {
                    terminal: t(TOWNSHIP[1]),
                    count: n,
                },
                2,
            )
        };
        assert!(matches!(&drop(&mut e, 10)[..], [AlarmChange::Raised(_)]));
        let out = drop(&mut e, 5);
        assert!(
            matches!(&out[..], [AlarmChange::Updated(a)] if a.dropped == 15),
            "{out:?}"
        );
        assert_eq!(e.active().count(), 2);
    }

    #[test]
    fn a_stray_offline_record_of_an_unknown_terminal_is_no_alarm() {
        let mut e = engine(AlarmRules::default(), &TOWNSHIP);
        e.observe(
            Observation::Presence {
                terminal: t("130199001001-old"),
                online: false,
            },
            0,
        );
        assert!(e.tick(500_000).is_empty());
    }

    #[test]
    fn a_restored_threshold_alarm_keeps_its_own_rule_and_one_whose_rule_is_gone_clears() {
        let low = ThresholdRule {
            above: false,
            raise: 5.0,
            clear: 8.0,
            min_duration_ms: 0,
            ..temp_rule()
        };
        let rules = AlarmRules {
            thresholds: vec![temp_rule(), low.clone()],
            ..AlarmRules::default()
        };
        let mut e = engine(rules.clone(), &TOWNSHIP);
        let sample = |e: &mut AlarmEngine, v, at| {
            e.observe(
                Observation::Sample {
                    terminal: t(TOWNSHIP[0]),
                    metric: Metric::AirTemp,
                    value: v,
                    at_ms: at,
                },
                at,
            )
        };
        let raised = sample(&mut e, 3.0, 0);
        assert_eq!(raised.len(), 1);
        let stored = vec![raised[0].alarm().clone()];
        let mut again = AlarmEngine::new(rules, stored.clone(), 10);
        assert!(
            sample(&mut again, 3.0, 1_000).is_empty(),
            "still the low alarm, not cleared by the high rule"
        );
        assert!(matches!(
            &sample(&mut again, 9.0, 2_000)[..],
            [AlarmChange::Cleared(_)]
        ));
        let mut edited = AlarmEngine::new(
            AlarmRules {
                thresholds: vec![temp_rule()],
                ..AlarmRules::default()
            },
            stored,
            10,
        );
        assert!(matches!(
            &edited.retire_orphans(3_000)[..],
            [AlarmChange::Cleared(_)]
        ));
        let next = edited.observe(
            Observation::Dropped {
                terminal: t(TOWNSHIP[0]),
                count: 1,
            },
            4_000,
        );
        assert_eq!(
            next[0].alarm().id,
            11,
            "ids go on after the highest ever given"
        );
    }

    #[test]
    fn a_restarted_engine_goes_on_with_the_stored_alarms() {
        let mut e = engine(AlarmRules::default(), &TOWNSHIP);
        e.observe(
            Observation::Presence {
                terminal: t(TOWNSHIP[0]),
                online: false,
            },
            0,
        );
        let raised = e.tick(200_000);
        let stored: Vec<Alarm> = raised.iter().map(|c| c.alarm().clone()).collect();
        let mut again = AlarmEngine::new(AlarmRules::default(), stored, 0);
        for id in TOWNSHIP {
            again.observe(
                Observation::Known {
                    terminal: t(id),
                    online: id != TOWNSHIP[0],
                    since_ms: 0,
                },
                200_500,
            );
        }
        assert!(again.tick(201_000).is_empty(), "not raised twice");
        again.observe(
            Observation::Presence {
                terminal: t(TOWNSHIP[0]),
                online: true,
            },
            202_000,
        );
        assert!(matches!(
            &again.tick(202_500)[..],
            [AlarmChange::Cleared(_)]
        ));
        let next = again.observe(
            Observation::Dropped {
                terminal: t(TOWNSHIP[1]),
                count: 1,
            },
            203_000,
        );
        assert!(next[0].alarm().id > raised[0].alarm().id, "ids go on");
    }
}
