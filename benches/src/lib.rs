//! Shared pieces of cuntong's benchmarks and load harnesses.
//!
//! - `wire-size`: bytes of a telemetry message, postcard envelope vs the common JSON shape.
//! - `ingest`: central's storing rate as a ratio to a bare subscriber's receive rate.
//! - `pg-ingest`: the store on PostgreSQL against a bare binary COPY, SQLite beside it.
//! - `fleet-load`: a simulated fleet's connect time and memory per terminal.
//! - `rollcall`: a province meeting's roll call and invite fan-out, beside a bare MQTT round.
//! - `benches/codec.rs` (criterion): encode/decode speed of the envelope.
//!
//! `docs/benchmarks.md` records the figures and the commands that reproduce them.

pub mod harness;

use cuntong_core::decimal::Decimal;
use cuntong_core::envelope::Envelope;
use cuntong_core::telemetry::{Metric, Sample, TelemetryBatch};

/// A typical minute of a village terminal: eight metrics, as the sampler rounds them.
pub fn typical_batch(seq: u64, time_ms: u64) -> Envelope<TelemetryBatch> {
    let readings: [(Metric, f64); 8] = [
        (Metric::Uptime, 1_234_567.0),
        (Metric::CpuLoad, 0.42),
        (Metric::CpuTemp, 51.3),
        (Metric::MemUsed, 37.8),
        (Metric::DiskUsed, 22.4),
        (Metric::LinkRtt, 86.5),
        (Metric::AirTemp, 18.27),
        (Metric::Humidity, 55.61),
    ];
    let samples = readings
        .iter()
        .map(|(m, v)| Sample {
            offset_ms: 0,
            metric: m.clone(),
            value: Decimal::from_f64(*v, m.default_scale()).unwrap_or(Decimal::ZERO),
            quality: None,
        })
        .collect();
    Envelope {
        seq,
        time_ms,
        body: TelemetryBatch { samples },
    }
}

/// The same data in the JSON shape common to IoT platforms: `{"ts":…,"values":{…}}`.
pub fn as_platform_json(env: &Envelope<TelemetryBatch>) -> String {
    let values: serde_json::Map<String, serde_json::Value> = env
        .body
        .samples
        .iter()
        .map(|s| {
            (
                s.metric.name().to_owned(),
                serde_json::json!(s.value.to_f64()),
            )
        })
        .collect();
    serde_json::json!({ "ts": env.time_ms, "values": values }).to_string()
}
