//! The HJ 212 bridge end to end: a simulated data logger → the terminal's listener → broker →
//! `cuntong central` → `cuntong telemetry`, with DataTime and flags intact, corrupted frames
//! counted, and no good frame lost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cuntong_e2e::{Broker, BrokerKind, Proc, bin, central, run, sites, telemetry, wait_until};

#[test]
fn logger_values_reach_the_store_with_their_time_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db = d.join("central.db");
    let broker = Broker::start(BrokerKind::Mosquitto, d);
    let _central = central(&broker, &db, d);
    let id = "130102001001-main";
    let terminal = Proc::spawn(
        &bin("cuntong-sim"),
        &[
            "terminal",
            "--id",
            id,
            "--broker",
            &broker.url,
            "--data-dir",
            d.join("t").to_str().unwrap(),
            "--interval",
            "200ms",
            "--hj212-listen",
            "127.0.0.1:0",
        ],
        d.join("terminal.log"),
    );
    let hj = terminal.bound("hj212 listening on ").to_string();
    // 12 uploads, every 3rd split into two packets, every 4th frame corrupted.
    let out = run(
        &bin("cuntong-sim"),
        &[
            "datalogger",
            "--connect",
            &hj,
            "--interval",
            "100ms",
            "--uploads",
            "12",
            "--split-every",
            "3",
            "--corrupt-every",
            "4",
        ],
    );
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "<uploads> uploads, <corrupted> corrupted frames, <acks> acknowledgements"
    let numbers: Vec<u64> = report
        .split_whitespace()
        .filter_map(|w| w.trim_end_matches(',').parse().ok())
        .collect();
    let (intact, corrupted) = (numbers[0], numbers[1]);
    assert_eq!(intact, 12);
    assert!(corrupted >= 3, "{report}");

    // Every intact upload's COD value is stored, with its flag and its DataTime (whole seconds).
    let cod = |db: &std::path::Path| telemetry(db, id, Some("w01018"));
    assert!(
        wait_until(Duration::from_secs(30), || cod(&db).len() as u64 == intact),
        "stored {} of {intact} COD values: {}",
        cod(&db).len(),
        terminal.log_text()
    );
    let samples = cod(&db);
    assert!(
        samples.iter().all(|s| s.ts.ends_with(".000Z")),
        "DataTime has whole seconds"
    );
    assert!(
        samples
            .iter()
            .all(|s| matches!(s.flag.as_deref(), Some("N" | "T")))
    );
    assert!(samples.iter().all(|s| (36.0..=48.0).contains(&s.value)));
    for other in ["w21003", "w01001", "w00000"] {
        assert_eq!(
            telemetry(&db, id, Some(other)).len() as u64,
            intact,
            "{other}"
        );
    }
    // Corrupted frames are counted and reported as a metric.
    assert!(wait_until(Duration::from_secs(20), || {
        sites(&db, None).iter().any(|s| {
            s.terminal == id
                && s.metrics
                    .get("hj212.bad")
                    .is_some_and(|&b| b >= corrupted as f64)
        })
    }));
}

#[test]
fn the_decode_tool_prints_fields_or_a_precise_error() {
    let dir = tempfile::tempdir().unwrap();
    let frames = dir.path().join("capture.txt");
    let good = "##0101QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;Flag=5;CP=&&RtdInterval=30&&1C80";
    std::fs::write(&frames, format!("{good}\r\n")).unwrap();
    let out = run(
        &bin("cuntong"),
        &["hj212", "decode", "--json", frames.to_str().unwrap()],
    );
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["qn"], "20160801085857223");
    assert_eq!(v["mn"], "010000A8900016F000169DC0");
    assert_eq!(v["flag"], "5");
    assert_eq!(v["pnum"], serde_json::Value::Null);
    assert_eq!(v["cp"]["RtdInterval"], "30");

    // encode reproduces the frame byte for byte from the JSON.
    let json = dir.path().join("frame.json");
    std::fs::write(&json, &out.stdout).unwrap();
    let enc = run(
        &bin("cuntong"),
        &["hj212", "encode", "--json", json.to_str().unwrap()],
    );
    assert_eq!(String::from_utf8_lossy(&enc.stdout), format!("{good}\r\n"));

    std::fs::write(&frames, good.replace("ST=32", "ST=33")).unwrap();
    let bad = run(
        &bin("cuntong"),
        &["hj212", "decode", frames.to_str().unwrap()],
    );
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr).to_lowercase();
    assert!(err.contains("line 1") && err.contains("crc"), "{err}");
}
