//! Acknowledgements end to end: a forged `ack` (any client can publish one on a broker without
//! authentication, such as the embedded one) claiming central stored everything up to 2^64−1
//! is refused by the terminal and reported to central as a security event; telemetry keeps
//! being delivered and confirmed, also after the terminal restarts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use cuntong_core::delivery::Watermarks;
use cuntong_core::envelope::encode;
use cuntong_e2e::{Broker, BrokerKind, Proc, bin, central, run, telemetry, wait_until};
use serde_json::Value;

const ID: &str = "130102001001-main";
const ACK: &str = "ct/v1/t/13/01/02/001/001/main/ack";

fn terminal(broker: &Broker, data: &Path, log: &str) -> Proc {
    Proc::spawn(
        &bin("cuntong-sim"),
        &[
            "terminal",
            "--id",
            ID,
            "--broker",
            &broker.url,
            "--data-dir",
            data.to_str().unwrap(),
            "--interval",
            "200ms",
            "--keep-alive",
            "2s",
        ],
        data.parent().unwrap().join(log),
    )
}

/// The terminal's outbox report (`next_seq`, `confirmed`) from its status socket.
fn outbox(data: &Path) -> Option<Value> {
    let socket = data.join(ID).join("status.sock");
    let out = run(
        &bin("cuntong-terminal"),
        &["status", "--json", "--socket", socket.to_str().unwrap()],
    );
    out.status
        .success()
        .then(|| serde_json::from_slice::<Value>(&out.stdout).ok())
        .flatten()
        .map(|v| v["outbox"].clone())
}

fn confirmed(data: &Path) -> u64 {
    outbox(data)
        .and_then(|o| o["confirmed"]["telemetry"].as_u64())
        .unwrap_or(0)
}

/// Waits until central confirmed (and stored) telemetry the terminal numbered after `after`.
fn confirmed_beyond(data: &Path, db: &Path, after: u64, t: &Proc) {
    let ok = wait_until(Duration::from_secs(30), || {
        let c = confirmed(data);
        c > after + 3 && telemetry(db, ID, None).iter().any(|s| s.seq > after + 3)
    });
    assert!(
        ok,
        "telemetry after seq {after} was not confirmed (confirmed {}): {}",
        confirmed(data),
        t.log_text()
    );
}

/// Publishes `file` retained on `topic`, as any client of the broker can.
fn publish_retained(broker: &Broker, topic: &str, file: &Path) {
    let port = broker.port.to_string();
    let out = run(
        Path::new("mosquitto_pub"),
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-q",
            "1",
            "-r",
            "-t",
            topic,
            "-f",
            file.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn security_events(db: &Path) -> Vec<cuntong::view::EventJson> {
    let out = run(
        &bin("cuntong"),
        &[
            "events",
            "--json",
            "--security",
            "--db",
            db.to_str().unwrap(),
        ],
    );
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

#[test]
fn a_forged_acknowledgement_is_refused_reported_and_never_silences_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (db, data) = (d.join("central.db"), d.join("terminals"));
    let broker = Broker::start(BrokerKind::Embedded, d);
    let _central = central(&broker, &db, d);
    let mut t = terminal(&broker, &data, "terminal-1.log");
    confirmed_beyond(&data, &db, 0, &t);

    // The forgery, retained: it comes back at every reconnect until something replaces it.
    let forged = d.join("forged-ack");
    let marks = Watermarks {
        telemetry: u64::MAX,
        events: u64::MAX,
    };
    std::fs::write(&forged, encode(&marks).unwrap()).unwrap();
    publish_retained(&broker, ACK, &forged);

    // Central staff see it as a security event.
    let reported = wait_until(Duration::from_secs(30), || {
        security_events(&db).iter().any(|e| {
            e.kind == "ack-refused" && e.terminal == ID && e.detail.contains(&u64::MAX.to_string())
        })
    });
    assert!(reported, "{:?} {}", security_events(&db), t.log_text());

    // Telemetry goes on and is confirmed; the watermark never passed what was sent.
    let at_forgery = outbox(&data).unwrap();
    let next = at_forgery["next_seq"]["telemetry"].as_u64().unwrap();
    assert!(confirmed(&data) < next, "{at_forgery}");
    confirmed_beyond(&data, &db, next, &t);

    // And after a restart (the forged watermark must not have been persisted).
    assert!(t.terminate(Duration::from_secs(10)).is_some());
    // The forgery again, waiting for the terminal when it comes back.
    publish_retained(&broker, ACK, &forged);
    let t = terminal(&broker, &data, "terminal-2.log");
    let before = wait_until(Duration::from_secs(20), || outbox(&data).is_some());
    assert!(before, "{}", t.log_text());
    let next = outbox(&data).unwrap()["next_seq"]["telemetry"]
        .as_u64()
        .unwrap();
    assert!(
        next < 1_000_000,
        "numbering went on from where it was: {next}"
    );
    confirmed_beyond(&data, &db, next, &t);
}
