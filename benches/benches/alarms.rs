//! Alarm evaluation cost with a fleet of 2,000 terminals: one incoming sample through the
//! engine (10 threshold rules, 2 stale rules), beside keeping the latest value of that sample in
//! a map (the least central does with a sample) in the same run; and one whole-fleet tick
//! (offline with suppression, stale data), which central runs once a second; and the tick of a
//! province (54,145 terminals, central's default rules) in steady reporting, against one with a
//! terminal in fifty offline (the whole evaluation) in the same run.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use cuntong_core::alarm::{
    AlarmEngine, AlarmRules, Observation, Severity, StaleRule, ThresholdRule,
};
use cuntong_core::site::Region;
use cuntong_core::telemetry::Metric;
use cuntong_core::terminal_id::TerminalId;
use cuntong_firmware_sim::fleet::fleet_ids;

fn rules() -> AlarmRules {
    let metrics = [
        Metric::AirTemp,
        Metric::Humidity,
        Metric::CpuTemp,
        Metric::CpuLoad,
        Metric::MemUsed,
        Metric::DiskUsed,
        Metric::LinkRtt,
        Metric::LinkLoss,
        Metric::Pm25,
        Metric::W01018,
    ];
    AlarmRules {
        thresholds: metrics
            .iter()
            .map(|m| ThresholdRule {
                metric: m.clone(),
                region: None,
                above: true,
                raise: 80.0,
                clear: 70.0,
                min_duration_ms: 300_000,
                severity: Severity::Major,
                during_meeting: false,
            })
            .collect(),
        stale: vec![
            StaleRule {
                metric: Metric::AirTemp,
                region: None,
                after_ms: 900_000,
                severity: Severity::Warning,
            },
            StaleRule {
                metric: Metric::W01018,
                region: None,
                after_ms: 900_000,
                severity: Severity::Warning,
            },
        ],
        ..AlarmRules::default()
    }
}

fn fleet() -> (AlarmEngine, Vec<TerminalId>) {
    let region: Region = "13".parse().unwrap();
    let ids = fleet_ids(&region, 2000);
    let mut e = AlarmEngine::new(rules(), Vec::new(), 0);
    for (i, id) in ids.iter().enumerate() {
        e.observe(
            Observation::Known {
                terminal: *id,
                online: i % 50 != 0,
                since_ms: 0,
            },
            0,
        );
        e.observe(
            Observation::Sample {
                terminal: *id,
                metric: Metric::AirTemp,
                value: 21.0,
                at_ms: 0,
            },
            0,
        );
    }
    (e, ids)
}

fn alarms(c: &mut Criterion) {
    let (mut engine, ids) = fleet();
    let mut g = c.benchmark_group("alarms-2000-terminals");
    let mut i = 0usize;
    let mut now = 1_000u64;
    g.bench_function("sample through the engine", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            now += 1;
            black_box(engine.observe(
                Observation::Sample {
                    terminal: ids[i],
                    metric: Metric::AirTemp,
                    value: 21.5,
                    at_ms: now,
                },
                now,
            ))
        })
    });
    let mut latest: BTreeMap<(TerminalId, Metric), f64> = BTreeMap::new();
    g.bench_function("latest-value map insert (baseline)", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            black_box(latest.insert((ids[i], Metric::AirTemp), 21.5))
        })
    });
    let (mut engine, _) = fleet();
    let mut t = 200_000u64;
    g.bench_function("tick of the whole fleet", |b| {
        b.iter(|| {
            t += 1000;
            black_box(engine.tick(t))
        })
    });
    g.finish();
}

/// An engine with central's default rules knowing `n` terminals of Hebei, every
/// `down_every`-th offline since the start (none if 0).
fn province_engine(n: usize, down_every: usize) -> AlarmEngine {
    let mut e = AlarmEngine::new(AlarmRules::default(), Vec::new(), 0);
    for (i, id) in fleet_ids(&"13".parse().unwrap(), n).iter().enumerate() {
        e.observe(
            Observation::Known {
                terminal: *id,
                online: down_every == 0 || i % down_every != 0,
                since_ms: 0,
            },
            0,
        );
    }
    e
}

fn province(c: &mut Criterion) {
    let mut g = c.benchmark_group("alarms-province-54145-terminals");
    g.sample_size(20);
    for (name, down_every) in [("tick, one in fifty offline", 50), ("tick, all online", 0)] {
        let mut engine = province_engine(54_145, down_every);
        // Past the grace period: the first tick raises what is down.
        let mut t = 1_000_000u64;
        engine.tick(t);
        g.bench_function(name, |b| {
            b.iter(|| {
                t += 1000;
                black_box(engine.tick(t))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, alarms, province);
criterion_main!(benches);
