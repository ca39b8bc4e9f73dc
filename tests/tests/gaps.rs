//! A permanent gap end to end: a terminal's record that never reaches central while the
//! terminal sends what follows it again and again is declared lost after
//! `cuntong::gaps::GIVE_UP_ROUNDS` more rounds: a `lost` alarm names the range, the stored
//! watermark moves past it (so the terminal's outbox drains) and what follows is stored.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use cuntong::alarms::AlarmJson;
use cuntong::gaps::GIVE_UP_ROUNDS;
use cuntong_core::delivery::Watermarks;
use cuntong_core::envelope::{Envelope, encode};
use cuntong_core::telemetry::{Metric, Sample, TelemetryBatch};
use cuntong_e2e::{Broker, BrokerKind, bin, central, run, telemetry, wait_until};

const ID: &str = "130102001001-main";
const TM: &str = "ct/v1/t/13/01/02/001/001/main/tm";
const ACK: &str = "ct/v1/t/13/01/02/001/001/main/ack";

/// Telemetry `seq` of the terminal, as its wire payload in a file.
fn batch(dir: &Path, seq: u64) -> PathBuf {
    let env = Envelope {
        seq,
        time_ms: 1_763_798_400_000 + seq * 1_000,
        body: TelemetryBatch {
            samples: vec![Sample {
                offset_ms: 0,
                metric: Metric::AirTemp,
                value: format!("{seq}.00").parse().unwrap(),
                quality: None,
            }],
        },
    };
    let path = dir.join(format!("tm-{seq}"));
    std::fs::write(&path, encode(&env).unwrap()).unwrap();
    path
}

/// Central's retained watermarks of the terminal, if it published any.
fn acked(broker: &Broker) -> Option<Watermarks> {
    let port = broker.port.to_string();
    let args = [
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-t",
        ACK,
        "-C",
        "1",
        "-W",
        "2",
        "-F",
        "%x",
    ];
    let out = run(Path::new("mosquitto_sub"), &args);
    let hex = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16))
        .collect::<Result<_, _>>()
        .ok()?;
    Watermarks::decode(&bytes).ok()
}

fn alarms(db: &Path) -> Vec<AlarmJson> {
    let out = run(
        &bin("cuntong"),
        &["alarms", "--json", "--db", db.to_str().unwrap()],
    );
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

#[test]
fn a_record_that_never_arrives_while_what_follows_is_sent_again_is_declared_lost_and_passed() {
    declared_lost_and_passed(false);
}

#[test]
fn a_permanent_gap_is_declared_lost_and_passed_on_postgresql() {
    declared_lost_and_passed(true);
}

/// Central stores in SQLite, or in PostgreSQL if `postgres`.
fn declared_lost_and_passed(postgres: bool) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db = cuntong_e2e::store_db(d, postgres);
    let broker = Broker::start(BrokerKind::Mosquitto, d);
    let central = central(&broker, &db, d);
    // The first record, until central (subscribing as it starts) has it; then two more.
    let listening = wait_until(Duration::from_secs(20), || {
        broker.publish_file(TM, &batch(d, 1), false) && acked(&broker).is_some()
    });
    assert!(listening, "{}", central.log_text());
    for seq in 2..=3 {
        assert!(broker.publish_file(TM, &batch(d, seq), false));
    }
    let stored = wait_until(Duration::from_secs(20), || {
        acked(&broker).is_some_and(|w| w.telemetry == 3)
    });
    assert!(stored, "{:?} {}", acked(&broker), central.log_text());

    // Seq 4 never gets through; the terminal sends 5..=8, and again each resend round.
    for _ in 0..=GIVE_UP_ROUNDS {
        for seq in 5..=8 {
            assert!(broker.publish_file(TM, &batch(d, seq), false));
        }
    }
    let passed = wait_until(Duration::from_secs(20), || {
        acked(&broker).is_some_and(|w| w.telemetry == 8)
    });
    assert!(passed, "{:?} {}", acked(&broker), central.log_text());
    let lost = || -> Vec<AlarmJson> {
        alarms(&db)
            .into_iter()
            .filter(|a| a.kind == "lost" && a.subject == ID)
            .collect()
    };
    assert!(wait_until(Duration::from_secs(10), || !lost().is_empty()));
    let lost = lost();
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert!(lost[0].detail.contains("telemetry seq 4..=4"), "{lost:?}");
    let seqs: Vec<u64> = telemetry(&db, ID, None).iter().map(|s| s.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 5, 6, 7, 8]);
}
