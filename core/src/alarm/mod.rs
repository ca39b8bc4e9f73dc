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

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use serde::{Deserialize, Serialize};

use crate::site::{Region, SiteCode};
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

mod engine;
mod rules;

pub use engine::{AckError, AlarmChange, AlarmEngine, LATE_AFTER_GOODBYE_MS, Observation};
pub use rules::{AlarmRules, StaleRule, ThresholdRule, Uplink};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Metric;
    use alloc::string::ToString;
    use alloc::vec;
    use alloc::vec::Vec;

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
    fn what_a_terminal_sent_before_its_goodbye_arriving_after_it_does_not_bring_it_back() {
        let id = "130102001001-main";
        let mut e = engine(AlarmRules::default(), &[id]);
        let sample = |at_ms| Observation::Sample {
            terminal: t(id),
            metric: Metric::AirTemp,
            value: 21.0,
            at_ms,
        };
        let offline = Observation::Presence {
            terminal: t(id),
            online: false,
        };
        e.observe(offline, 1_000);
        // Its last batch, on another topic, delivered after the offline record.
        e.observe(sample(990), 1_000 + LATE_AFTER_GOODBYE_MS - 1);
        let out = e.tick(122_000);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].alarm().kind, AlarmKind::Offline);
        // Heard from later (its online record lost on the way): back.
        e.observe(sample(130_000), 130_000);
        let out = e.tick(130_001);
        assert!(
            matches!(out.as_slice(), [AlarmChange::Cleared(_)]),
            "{out:?}"
        );
    }

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
        // It reconnected; its online presence never arrived, but its data does (past the
        // moments in which what it sent before its goodbye may still arrive).
        let back = LATE_AFTER_GOODBYE_MS + 1_000;
        e.observe(
            Observation::Sample {
                terminal: me,
                metric: Metric::CpuTemp,
                value: 40.0,
                at_ms: back,
            },
            back,
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
