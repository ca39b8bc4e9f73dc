//! The rules alarms are raised by: thresholds with hysteresis, stale data, offline grace, the
//! uplinks sites reach the network through.

use alloc::vec::Vec;

use crate::site::Region;
use crate::telemetry::Metric;
use crate::terminal_id::TerminalId;

use super::*;

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
