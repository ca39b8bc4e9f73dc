//! Acknowledgements end to end: a forged `ack` (any client can publish one on a broker without
//! authentication, such as the embedded one) claiming central stored everything up to 2^64−1
//! is refused by the terminal and reported to central as a security event; telemetry keeps
//! being delivered and confirmed, also after the terminal restarts. And the true watermark of
//! a box that was replaced (same id, new data directory) is no forgery to its replacement,
//! whose records central stores and confirms.
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

/// The terminal's outbox report (`first_seq`, `next_seq`, `confirmed`) from its status socket.
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

/// `outbox.<what>.telemetry` of the status report.
fn telemetry_seq(data: &Path, what: &str) -> Option<u64> {
    outbox(data).and_then(|o| o[what]["telemetry"].as_u64())
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

fn events(db: &Path, only_security: bool) -> Vec<cuntong::view::EventJson> {
    let db = db.to_str().unwrap();
    let mut args = vec!["events", "--json", "--db", db];
    if only_security {
        args.push("--security");
    }
    let out = run(&bin("cuntong"), &args);
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

fn security_events(db: &Path) -> Vec<cuntong::view::EventJson> {
    events(db, true)
}

#[test]
fn a_forged_acknowledgement_is_refused_reported_and_never_silences_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (db, data) = (d.join("central.db"), d.join("terminals"));
    let broker = Broker::start(BrokerKind::Embedded, d);
    let _central = central(&broker, &db, d);
    let mut t = terminal(&broker, &data, "terminal-1.log");
    assert!(wait_until(Duration::from_secs(20), || outbox(&data).is_some()));
    let first = telemetry_seq(&data, "first_seq").unwrap();
    confirmed_beyond(&data, &db, first, &t);

    // The forgery, retained: it comes back at every reconnect until something replaces it.
    let forged = d.join("forged-ack");
    let marks = Watermarks {
        telemetry: u64::MAX,
        events: u64::MAX,
    };
    std::fs::write(&forged, encode(&marks).unwrap()).unwrap();
    assert!(broker.publish_file(ACK, &forged, true));

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
    let before_stop = telemetry_seq(&data, "next_seq").unwrap();
    assert!(t.terminate(Duration::from_secs(10)).is_some());
    // The forgery again, waiting for the terminal when it comes back.
    assert!(broker.publish_file(ACK, &forged, true));
    let t = terminal(&broker, &data, "terminal-2.log");
    let before = wait_until(Duration::from_secs(20), || outbox(&data).is_some());
    assert!(before, "{}", t.log_text());
    let next = telemetry_seq(&data, "next_seq").unwrap();
    assert!(
        (before_stop..before_stop + 1_000).contains(&next),
        "numbering went on from where it was ({before_stop}): {next}"
    );
    assert_eq!(telemetry_seq(&data, "first_seq"), Some(first));
    confirmed_beyond(&data, &db, next, &t);
}

#[test]
fn a_replacement_box_with_the_same_id_is_stored_and_confirmed_and_refuses_no_true_ack() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (db, data) = (d.join("central.db"), d.join("terminals"));
    let broker = Broker::start(BrokerKind::Embedded, d);
    let _central = central(&broker, &db, d);
    let mut old = terminal(&broker, &data, "old-box.log");
    assert!(wait_until(Duration::from_secs(20), || outbox(&data).is_some()));
    let old_first = telemetry_seq(&data, "first_seq").unwrap();
    confirmed_beyond(&data, &db, old_first, &old);
    let old_next = telemetry_seq(&data, "next_seq").unwrap();

    // The box is replaced: same id, nothing of the old one's data directory. Central's
    // retained watermark still says what it stored of the old box.
    assert!(old.terminate(Duration::from_secs(10)).is_some());
    std::fs::remove_dir_all(&data).unwrap();
    let new = terminal(&broker, &data, "new-box.log");
    assert!(wait_until(Duration::from_secs(20), || outbox(&data).is_some()));
    let first = telemetry_seq(&data, "first_seq").unwrap();
    assert!(
        first > old_next,
        "the new box numbers from {first}, the old one reached {old_next}"
    );

    // Everything the new box had produced by now, on both streams (its first events say where
    // its numbering starts), is stored and confirmed.
    let o = outbox(&data).unwrap();
    let produced = |s: &str| o["next_seq"][s].as_u64().unwrap() - 1;
    let (telemetry_upto, events_upto) = (produced("telemetry").max(first + 5), produced("events"));
    let caught_up = wait_until(Duration::from_secs(30), || {
        outbox(&data).is_some_and(|o| {
            o["confirmed"]["telemetry"].as_u64() >= Some(telemetry_upto)
                && o["confirmed"]["events"].as_u64() >= Some(events_upto)
        })
    });
    assert!(
        caught_up,
        "{:#} {}",
        outbox(&data).unwrap_or_default(),
        new.log_text()
    );
    let stored: std::collections::BTreeSet<u64> = telemetry(&db, ID, None)
        .iter()
        .map(|s| s.seq)
        .filter(|&q| q >= first)
        .collect();
    let missing: Vec<u64> = (first..=telemetry_upto)
        .filter(|q| !stored.contains(q))
        .collect();
    assert!(missing.is_empty(), "new box's seqs not stored: {missing:?}");
    assert!(
        events(&db, false)
            .iter()
            .any(|e| e.kind == "numbering-from" && e.terminal == ID),
        "{:?}",
        events(&db, false)
    );
    let refused: Vec<_> = security_events(&db)
        .into_iter()
        .filter(|e| e.kind == "ack-refused")
        .collect();
    assert!(
        refused.is_empty(),
        "a true watermark was refused: {refused:?}"
    );
}
