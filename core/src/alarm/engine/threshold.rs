//! Threshold rules: a value beyond its raise level for the rule's minimum duration raises an
//! alarm, and one back at its clear level clears it; media rules count only while the terminal
//! is in a meeting.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::telemetry::Metric;
use crate::terminal_id::TerminalId;

use super::{AlarmChange, AlarmEngine, AlarmKind, Key, Subject, ThresholdRule};

/// How a threshold rule is recognised in a stored alarm, across restarts and rule edits.
pub(super) fn rule_signature(r: &ThresholdRule) -> String {
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
    pub(super) fn threshold(
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
    pub(super) fn meeting_over(
        &mut self,
        terminal: TerminalId,
        now_ms: u64,
        out: &mut Vec<AlarmChange>,
    ) {
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
}
