//! What the engine evaluates as time passes: terminals offline past their grace period, listed
//! under the region or uplink that explains them, and data that stopped arriving.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::site::{Region, SiteCode};
use crate::terminal_id::TerminalId;

use super::{AlarmChange, AlarmEngine, AlarmKind, Key, Severity, Subject, Uplink};

impl AlarmEngine {
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
        // Nothing down and no offline alarm open: nothing to raise, update or clear (a
        // province in steady reporting costs one pass over its terminals a tick).
        if down.is_empty() && !self.open.keys().any(|k| matches!(k, Key::Offline(_))) {
            return;
        }
        // A terminal's site and every site above it.
        let regions = |id: &TerminalId| core::iter::once(*id.site()).chain(id.site().ancestors());
        // Per region with a terminal down: terminals known and down.
        let mut counts: BTreeMap<SiteCode, (usize, usize)> = BTreeMap::new();
        for id in &down {
            for a in regions(id) {
                counts.entry(a).or_default().1 += 1;
            }
        }
        for id in self.terminals.keys() {
            for a in regions(id) {
                if let Some(c) = counts.get_mut(&a) {
                    c.0 += 1;
                }
            }
        }
        // The highest region each down terminal is in that is down as a whole, if any.
        let min = self.rules.root_cause_min.max(2);
        let region_root: BTreeMap<TerminalId, SiteCode> = down
            .iter()
            .filter_map(|id| {
                regions(id)
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
