//! Encode/decode speed of the telemetry envelope, with JSON as the baseline in the same run.
#![allow(clippy::unwrap_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use cuntong_benches::{as_platform_json, typical_batch};
use cuntong_core::envelope::{decode_telemetry, encode};
use std::hint::black_box;

fn codec(c: &mut Criterion) {
    let env = typical_batch(1440, 1_763_798_400_000);
    let bytes = encode(&env).unwrap();
    let json = as_platform_json(&env);
    let mut g = c.benchmark_group("telemetry-8-metrics");
    g.bench_function("postcard-encode", |b| {
        b.iter(|| encode(black_box(&env)).unwrap())
    });
    g.bench_function("postcard-decode", |b| {
        b.iter(|| decode_telemetry(black_box(&bytes)).unwrap())
    });
    g.bench_function("json-encode (baseline)", |b| {
        b.iter(|| as_platform_json(black_box(&env)))
    });
    g.bench_function("json-decode (baseline)", |b| {
        b.iter(|| serde_json::from_str::<serde_json::Value>(black_box(&json)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
