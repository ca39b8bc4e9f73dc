//! Fuzzes the text decoders: site codes, regions, terminal ids, topics, decimals, metric names.
#![no_main]

use cuntong_core::decimal::Decimal;
use cuntong_core::site::{Region, SiteCode};
use cuntong_core::telemetry::Metric;
use cuntong_core::terminal_id::TerminalId;
use cuntong_core::topic::Topic;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(c) = s.parse::<SiteCode>() {
        assert_eq!(c.to_string(), s);
    }
    let _ = s.parse::<Region>();
    if let Ok(id) = s.parse::<TerminalId>() {
        assert_eq!(id.to_string(), s);
    }
    if let Ok(t) = Topic::parse(s) {
        assert_eq!(t.to_string(), s);
    }
    if let Ok(d) = s.parse::<Decimal>() {
        assert_eq!(d.to_string().parse::<Decimal>(), Ok(d));
    }
    let _ = Metric::from_name(s);
});
