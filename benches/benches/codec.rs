//! Encode/decode speed of the telemetry envelope, with JSON as the baseline in the same run;
//! and HJ 212 frame decoding, with a plain scan of the same bytes for `&&` as the baseline.
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

/// A typical real-time upload (2011) of a wastewater outlet: eight factors with flags.
fn hj212_frame() -> Vec<u8> {
    use cuntong_core::hj212::{Packet, cn, encode};
    let mut cp = vec![("DataTime".to_owned(), "20261122083000".to_owned())];
    for (code, value) in [
        ("w01018", "42.7"),
        ("w21003", "1.83"),
        ("w01001", "7.21"),
        ("w00000", "12.50"),
        ("w21011", "0.312"),
        ("w21001", "9.84"),
        ("w01009", "6.1"),
        ("w01010", "18.4"),
    ] {
        cp.push((format!("{code}-Rtd"), value.to_owned()));
        cp.push((format!("{code}-Flag"), "N".to_owned()));
    }
    encode(&Packet {
        qn: Some("20261122083000123".to_owned()),
        st: Some("32".to_owned()),
        cn: Some(cn::REALTIME.to_owned()),
        pw: Some("123456".to_owned()),
        mn: Some("010000A8900016F000169DC0".to_owned()),
        flag: Some(5),
        pnum: None,
        pno: None,
        cp,
    })
}

fn hj212(c: &mut Criterion) {
    use criterion::Throughput;
    use cuntong_core::hj212::{decode, next_frame};
    let frame = hj212_frame();
    let mut g = c.benchmark_group("hj212-realtime-frame");
    g.throughput(Throughput::Bytes(frame.len() as u64));
    g.bench_function("scan for && (baseline)", |b| {
        b.iter(|| black_box(&frame).windows(2).filter(|w| w == b"&&").count())
    });
    g.bench_function("frame + decode", |b| {
        b.iter(|| {
            let f = black_box(&frame);
            let _ = next_frame(f);
            decode(f).unwrap()
        })
    });
    g.bench_function("frame + decode + readings", |b| {
        b.iter(|| decode(black_box(&frame)).unwrap().readings().unwrap())
    });
    g.finish();
}

criterion_group!(benches, codec, hj212);
criterion_main!(benches);
