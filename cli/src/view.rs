//! What `cuntong sites` and `cuntong telemetry` print, for people and as JSON.
//!
//! The JSON shapes are a contract: [`SiteJson`] and [`SampleJson`] are what scripts parse.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::names::Names;
use crate::store::{EventRow, SampleRow, SiteRow};

/// One terminal in `cuntong sites --json`, written from its stored row as it is (a
/// province's 54,145 rows are not copied on their way out).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SiteJson<'a> {
    pub terminal: &'a str,
    pub site: &'a str,
    pub level: &'a str,
    /// The terminal's name: given at provisioning, else its site's official name, else
    /// `(unnamed)`.
    pub name: &'a str,
    /// The official names from the province down to the site, space-separated.
    pub region_path: String,
    pub online: bool,
    pub version: Option<&'a str>,
    /// RFC 3339, UTC.
    pub last_seen: Option<String>,
    /// Records the terminal holds that central has not confirmed (as last reported).
    pub outbox_depth: Option<u64>,
    /// Records the terminal dropped unsent because its outbox was full (as last reported).
    pub dropped: Option<u64>,
    /// The newest value of each metric: an object by metric name.
    #[serde(serialize_with = "metrics_object")]
    pub metrics: &'a [(Arc<str>, f64)],
}

/// Metrics (sorted by name, as the store gives them) as a JSON object.
fn metrics_object<S: serde::Serializer>(
    metrics: &&[(Arc<str>, f64)],
    out: S,
) -> Result<S::Ok, S::Error> {
    out.collect_map(metrics.iter().map(|(name, value)| (&**name, value)))
}

/// One sample in `cuntong telemetry --json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleJson {
    pub seq: u64,
    /// RFC 3339 with milliseconds, UTC.
    pub ts: String,
    pub metric: String,
    pub value: f64,
    /// The value exactly as measured.
    pub exact: String,
    /// The source's data flag (HJ 212 N, F, M, S, D, C, T, B…); null when none was given.
    pub flag: Option<String>,
}

/// The last millisecond RFC 3339 can write (9999-12-31T23:59:59.999Z).
pub const LAST_MS: u64 = 253_402_300_799_999;

/// RFC 3339 (UTC) of a Unix millisecond time. Never fails: a time past [`LAST_MS`] (a
/// corrupt or hostile stored or received value) is written as such, not as a date. Every
/// timestamp central prints or answers goes through here.
pub fn rfc3339_ms(ms: u64) -> String {
    rfc3339(ms, |t| humantime::format_rfc3339_millis(t).to_string())
}

fn rfc3339_s(ms: u64) -> String {
    rfc3339(ms, |t| humantime::format_rfc3339_seconds(t).to_string())
}

fn rfc3339(ms: u64, format: impl Fn(SystemTime) -> String) -> String {
    match UNIX_EPOCH.checked_add(Duration::from_millis(ms)) {
        Some(t) if ms <= LAST_MS => format(t),
        _ => format!("(out of range: {ms} ms after 1970)"),
    }
}

/// `text` padded with spaces to `width` terminal columns (CJK characters take two).
pub fn pad(text: &str, width: usize) -> String {
    let w = unicode_width::UnicodeWidthStr::width(text);
    format!("{text}{}", " ".repeat(width.saturating_sub(w)))
}

fn metric(r: &SiteRow, name: &str) -> Option<f64> {
    r.metrics
        .iter()
        .find(|(k, _)| &**k == name)
        .map(|(_, v)| *v)
}

/// A terminal's row as `sites --json` shows it.
pub fn site_json<'a>(r: &'a SiteRow, names: &'a Names) -> SiteJson<'a> {
    SiteJson {
        terminal: &r.terminal,
        site: &r.site,
        level: &r.level,
        name: names.terminal_str(&r.terminal),
        region_path: names.path_str(&r.site),
        online: r.online,
        version: r.version.as_deref(),
        last_seen: r.last_seen_ms.map(rfc3339_s),
        outbox_depth: metric(r, "outbox.depth").map(|v| v as u64),
        dropped: metric(r, "outbox.dropped").map(|v| v as u64),
        metrics: &r.metrics,
    }
}

pub fn sample_json(r: &SampleRow) -> SampleJson {
    SampleJson {
        seq: r.seq,
        ts: rfc3339_ms(r.ts_ms),
        metric: r.metric.clone(),
        value: r.value,
        exact: r.exact.clone(),
        flag: r.flag.map(String::from),
    }
}

/// Metric columns of the fleet table; `--json` has them all.
const COLUMNS: [(&str, &str); 6] = [
    ("env.temp", "TEMP°C"),
    ("env.humidity", "RH%"),
    ("cpu.load", "LOAD"),
    ("mem.used", "MEM%"),
    ("link.rtt", "RTT ms"),
    ("outbox.depth", "OUTBOX"),
];

fn ago(now_ms: u64, ms: Option<u64>) -> String {
    match ms {
        None => "never".to_owned(),
        Some(ms) => {
            let s = now_ms.saturating_sub(ms) / 1000;
            match s {
                0..60 => format!("{s}s ago"),
                60..3600 => format!("{}m ago", s / 60),
                3600..86400 => format!("{}h ago", s / 3600),
                _ => format!("{}d ago", s / 86400),
            }
        }
    }
}

/// The fleet table.
pub fn sites_table(rows: &[SiteRow], now_ms: u64, names: &Names) -> String {
    let mut out = format!(
        "{:<22} {:<10} {:<7} {:>9}",
        "TERMINAL", "LEVEL", "STATE", "SEEN"
    );
    for (_, h) in COLUMNS {
        out.push_str(&format!(" {h:>7}"));
    }
    out.push_str(" NAME\n");
    for r in rows {
        let state = if r.online { "online" } else { "OFFLINE" };
        out.push_str(&format!(
            "{:<22} {:<10} {:<7} {:>9}",
            r.terminal,
            r.level,
            state,
            ago(now_ms, r.last_seen_ms)
        ));
        for (m, _) in COLUMNS {
            out.push_str(&match metric(r, m) {
                Some(v) => format!(" {v:>7.1}"),
                None => format!(" {:>7}", "-"),
            });
        }
        out.push(' ');
        out.push_str(names.terminal_str(&r.terminal));
        out.push('\n');
    }
    let online = rows.iter().filter(|r| r.online).count();
    out.push_str(&format!("{} terminals, {online} online\n", rows.len()));
    out
}

/// The history table.
pub fn telemetry_table(rows: &[SampleRow]) -> String {
    let mut out = format!(
        "{:<26} {:>8} {:<14} {:<4} {}\n",
        "TIME", "SEQ", "METRIC", "FLAG", "VALUE"
    );
    for r in rows {
        let unit = cuntong_core::telemetry::Metric::from_name(&r.metric)
            .map(|m| m.unit().symbol())
            .unwrap_or("");
        out.push_str(&format!(
            "{:<26} {:>8} {:<14} {:<4} {} {unit}\n",
            rfc3339_ms(r.ts_ms),
            r.seq,
            r.metric,
            r.flag.map_or(String::from("-"), String::from),
            r.exact
        ));
    }
    out
}

/// `cuntong events --json`: one object per event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventJson {
    pub terminal: String,
    /// The terminal's name (as in `sites --json`).
    pub name: String,
    pub seq: u64,
    /// RFC 3339 with milliseconds, UTC: when the terminal recorded it.
    pub ts: String,
    /// `started`, `sensor-fault`, `command-refused`, `tls-failure`, … (docs/operations.md).
    pub kind: String,
    /// True for security events (refused commands, TLS failures, changed files, unclean
    /// restarts).
    pub security: bool,
    pub detail: String,
}

pub fn event_json(r: &EventRow, names: &Names) -> EventJson {
    EventJson {
        terminal: r.terminal.clone(),
        name: names.terminal_str(&r.terminal).to_owned(),
        seq: r.seq,
        ts: rfc3339_ms(r.time_ms),
        kind: r.event.kind().to_owned(),
        security: r.event.is_security(),
        detail: r.event.to_string(),
    }
}

pub fn events_table(rows: &[EventRow], names: &Names) -> String {
    let mut out = format!(
        "{:<26} {:<20} {:>6} {:<18} {:<16} {}\n",
        "TIME", "TERMINAL", "SEQ", "KIND", "NAME", "DETAIL"
    );
    for r in rows {
        let mark = if r.event.is_security() { "!" } else { " " };
        out.push_str(&format!(
            "{:<26} {:<20} {:>6} {mark}{:<17} {} {}\n",
            rfc3339_ms(r.time_ms),
            r.terminal,
            r.seq,
            r.event.kind(),
            pad(names.terminal_str(&r.terminal), 16),
            r.event
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339_ms(1_763_798_400_123), "2025-11-22T08:00:00.123Z");
        assert_eq!(rfc3339_s(1_763_798_400_123), "2025-11-22T08:00:00Z");
    }

    #[test]
    fn times_past_year_9999_are_written_as_out_of_range_not_a_panic() {
        assert_eq!(rfc3339_ms(LAST_MS), "9999-12-31T23:59:59.999Z");
        for ms in [LAST_MS + 1, 360_000_000_000_000_000, u64::MAX] {
            assert!(rfc3339_ms(ms).contains("out of range"), "{ms}");
            assert!(rfc3339_s(ms).contains("out of range"), "{ms}");
        }
    }

    #[test]
    fn the_table_shows_state_and_metrics() {
        let row = SiteRow {
            terminal: "130102001001-main".into(),
            site: "130102001001".into(),
            level: "village".into(),
            online: false,
            version: None,
            last_seen_ms: Some(1_000),
            metrics: vec![("env.temp".into(), 21.25)],
        };
        let t = sites_table(&[row], 121_000, &Names::shipped());
        assert!(t.contains("130102001001-main"));
        assert!(t.contains("OFFLINE"));
        assert!(t.contains("2m ago"));
        assert!(t.contains("21.2") || t.contains("21.3"));
        assert!(t.ends_with("1 terminals, 0 online\n"));
    }
}
