//! Redelivery end to end: the same telemetry envelope published several times through a real
//! Mosquitto broker is stored once by `cuntong central`, and a garbage payload neither stops
//! central nor keeps it from storing what comes after.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use cuntong_core::envelope::{Envelope, encode};
use cuntong_core::telemetry::{Metric, Sample, TelemetryBatch};
use cuntong_e2e::{
    Broker, BrokerKind, bin, central, run, sample, sim_fleet, sites, telemetry, wait_until,
};

const TERMINAL: &str = "130102001001-main";
const TOPIC: &str = "ct/v1/t/13/01/02/001/001/main/tm";
const PROBE: &str = "130102001002-main";
const PROBE_TOPIC: &str = "ct/v1/t/13/01/02/001/002/main/tm";

/// 2025-11-22T08:00:00Z.
const T0: u64 = 1_763_798_400_000;

/// The Mosquitto command-line publisher (Debian package `mosquitto-clients`).
fn mosquitto_pub() -> PathBuf {
    for p in ["/usr/bin/mosquitto_pub", "/usr/local/bin/mosquitto_pub"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("mosquitto_pub is not installed (apt-get install mosquitto-clients)");
}

/// Writes a telemetry envelope as its wire payload to `dir/name`.
fn payload_file(dir: &Path, name: &str, seq: u64, time_ms: u64, samples: Vec<Sample>) -> PathBuf {
    let env = Envelope {
        seq,
        time_ms,
        body: TelemetryBatch { samples },
    };
    let path = dir.join(name);
    std::fs::write(&path, encode(&env).unwrap()).unwrap();
    path
}

/// (seq, ts, metric, exact) of each stored sample of the terminal, oldest first.
fn stored(db: &Path) -> Vec<(u64, String, String, String)> {
    telemetry(db, TERMINAL, None)
        .into_iter()
        .map(|s| (s.seq, s.ts, s.metric, s.exact))
        .collect()
}

fn row(seq: u64, ts: &str, metric: &str, exact: &str) -> (u64, String, String, String) {
    (seq, ts.to_owned(), metric.to_owned(), exact.to_owned())
}

#[test]
fn a_redelivered_message_is_stored_once_and_garbage_does_not_stop_central() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("central.db");
    let broker = Broker::start(BrokerKind::Mosquitto, dir.path());
    let mut central = central(&broker, &db, dir.path());

    // Central subscribes only once it is connected: publish a probe until it is stored.
    let probe = payload_file(
        dir.path(),
        "probe.bin",
        100,
        T0,
        vec![sample(0, Metric::AirTemp, "1.00")],
    );
    let subscribed = wait_until(Duration::from_secs(20), || {
        assert!(broker.publish_file(PROBE_TOPIC, &probe, false));
        sites(&db, None).iter().any(|s| s.terminal == PROBE)
    });
    assert!(
        subscribed,
        "central never stored the probe: {}",
        central.log_text()
    );

    let seq1 = payload_file(
        dir.path(),
        "seq1.bin",
        1,
        T0,
        vec![
            sample(0, Metric::AirTemp, "23.45"),
            sample(250, Metric::Humidity, "55.10"),
        ],
    );
    let seq2 = payload_file(
        dir.path(),
        "seq2.bin",
        2,
        T0 + 60_000,
        vec![sample(0, Metric::AirTemp, "23.50")],
    );
    for _ in 0..3 {
        assert!(broker.publish_file(TOPIC, &seq1, false));
    }
    assert!(broker.publish_file(TOPIC, &seq2, false));

    let expected = [
        row(1, "2025-11-22T08:00:00.000Z", "env.temp", "23.45"),
        row(1, "2025-11-22T08:00:00.250Z", "env.humidity", "55.10"),
        row(2, "2025-11-22T08:01:00.000Z", "env.temp", "23.50"),
    ];
    let stored_once = wait_until(Duration::from_secs(20), || stored(&db) == expected);
    assert!(
        stored_once,
        "expected {expected:#?}, stored {:#?}\n{}",
        stored(&db),
        central.log_text()
    );
    let site = sites(&db, None)
        .into_iter()
        .find(|s| s.terminal == TERMINAL)
        .expect("the terminal is in the fleet view");
    assert_eq!(site.metrics.get("env.temp"), Some(&23.5));
    assert_eq!(site.metrics.get("env.humidity"), Some(&55.1));

    // Garbage on the same topic is rejected; central keeps running and stores what follows.
    let garbage = dir.path().join("garbage.bin");
    std::fs::write(&garbage, b"\x01this is not a telemetry envelope").unwrap();
    assert!(broker.publish_file(TOPIC, &garbage, false));
    let seq3 = payload_file(
        dir.path(),
        "seq3.bin",
        3,
        T0 + 120_000,
        vec![sample(0, Metric::AirTemp, "23.55")],
    );
    assert!(broker.publish_file(TOPIC, &seq3, false));

    let mut expected = expected.to_vec();
    expected.push(row(3, "2025-11-22T08:02:00.000Z", "env.temp", "23.55"));
    let after_garbage = wait_until(Duration::from_secs(20), || stored(&db) == expected);
    assert!(
        after_garbage,
        "expected {expected:#?}, stored {:#?}\n{}",
        stored(&db),
        central.log_text()
    );
    assert!(
        central.child.try_wait().unwrap().is_none(),
        "central exited: {}",
        central.log_text()
    );
    let rejected_logged = wait_until(Duration::from_secs(5), || {
        central
            .log_text()
            .contains(&format!("rejected: {TERMINAL} tm:"))
    });
    assert!(
        rejected_logged,
        "central did not report the garbage: {}",
        central.log_text()
    );

    // A flood of garbage is refused and counted, and costs the log a line, not a line each.
    let mut flood = std::process::Command::new(mosquitto_pub())
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "-q", "1"])
        .args(["-t", TOPIC, "-l"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = flood.stdin.take().unwrap();
        for i in 0..300 {
            writeln!(stdin, "garbage number {i}").unwrap();
        }
    }
    assert!(flood.wait().unwrap().success());
    let seq4 = payload_file(
        dir.path(),
        "seq4.bin",
        4,
        T0 + 180_000,
        vec![sample(0, Metric::AirTemp, "23.60")],
    );
    assert!(broker.publish_file(TOPIC, &seq4, false));
    // One topic, QoS 1: the broker delivers in order, so seq 4 stored means the flood is in.
    expected.push(row(4, "2025-11-22T08:03:00.000Z", "env.temp", "23.60"));
    assert!(
        wait_until(Duration::from_secs(20), || stored(&db) == expected),
        "seq 4 after the flood was not stored: {}",
        central.log_text()
    );
    let lines = central.log_text().matches("rejected: ").count();
    assert!(
        lines <= 2,
        "{lines} log lines for 301 rejected messages: {}",
        central.log_text()
    );
}

#[test]
fn a_backup_taken_while_central_stores_holds_the_fleet_and_never_overwrites_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Broker::start(BrokerKind::Embedded, d);
    let db = d.join("central.db");
    let _central = central(&broker, &db, d);
    let _fleet = sim_fleet(&broker.url, "130102", 5, d, "fleet");
    assert!(wait_until(Duration::from_secs(30), || sites(&db, None)
        .iter()
        .filter(|s| s.online && !s.metrics.is_empty())
        .count()
        == 5));

    // Taken while central writes.
    let copy = d.join("backup.db");
    let out = run(
        &bin("cuntong"),
        &[
            "backup",
            "--to",
            copy.to_str().unwrap(),
            "--db",
            db.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("of 5 terminals"), "{said}");
    let backed: Vec<String> = sites(&copy, None).into_iter().map(|s| s.terminal).collect();
    assert_eq!(backed.len(), 5, "{backed:?}");
    assert_eq!(
        backed,
        sites(&db, None)
            .into_iter()
            .map(|s| s.terminal)
            .collect::<Vec<_>>()
    );
    assert!(!telemetry(&copy, &backed[0], None).is_empty());

    // A second backup to the same file is refused and the first is untouched.
    let before = std::fs::read(&copy).unwrap();
    let again = run(
        &bin("cuntong"),
        &[
            "backup",
            "--to",
            copy.to_str().unwrap(),
            "--db",
            db.to_str().unwrap(),
        ],
    );
    assert_eq!(again.status.code(), Some(2), "{again:?}");
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));
    assert_eq!(std::fs::read(&copy).unwrap(), before);
}
