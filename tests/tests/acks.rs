//! Acknowledgements end to end: a forged `ack` (any client can publish one on a broker without
//! authentication, such as the embedded one) claiming central stored everything up to 2^64−1
//! is refused by the terminal and reported to central as a security event; telemetry keeps
//! being delivered and confirmed, also after the terminal restarts. And the true watermark of
//! a box that was replaced (same id, new data directory) is no forgery to its replacement,
//! whose records central stores and confirms, also when the replacement's clock was behind and
//! its numbering ran into what central holds of the box it replaced.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use cuntong_core::delivery::Watermarks;
use cuntong_core::envelope::{Envelope, Event, Stream, encode};
use cuntong_core::telemetry::{Metric, Sample, TelemetryBatch};
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

/// The outbox state a new box writes when its clock reads `clock` (milliseconds since the Unix
/// epoch): each stream numbers from it, and the numbering waits for central's agreement.
fn new_outbox_state(clock: u64) -> String {
    let mut text = String::new();
    for s in ["telemetry", "events"] {
        text += &format!("first-{s} {clock}\nconfirmed-{s} {}\n", clock - 1);
        text += &format!("assigned-{s} {}\ndropped-upto-{s} 0\n", clock - 1);
    }
    text + &format!("dropped-total 0\nholding-events-upto {}\n", clock + 1)
}

/// What the box under `ID` published as `seq` of `stream`, written to a file to publish.
fn record_file(dir: &Path, stream: Stream, seq: u64) -> std::path::PathBuf {
    let time_ms = 1_763_798_400_000;
    let bytes = match stream {
        Stream::Telemetry => encode(&Envelope {
            seq,
            time_ms,
            body: TelemetryBatch {
                samples: vec![Sample {
                    offset_ms: 0,
                    metric: Metric::AirTemp,
                    value: "1.00".parse().unwrap(),
                    quality: None,
                }],
            },
        }),
        _ => encode(&Envelope {
            seq,
            time_ms,
            body: Event::Started {
                version: "the box replaced".into(),
            },
        }),
    };
    let path = dir.join(format!("{}-{seq}", stream.as_str()));
    std::fs::write(&path, bytes.unwrap()).unwrap();
    path
}

#[test]
fn a_replacement_box_whose_clock_is_behind_renumbers_above_what_central_holds_and_loses_nothing() {
    // Its clock read a moment inside the old box's numbering when its outbox was created.
    replaced_by_a_box_whose_clock_reads(|old_first| old_first + 1, false);
}

#[test]
fn a_replacement_box_whose_clock_starts_at_the_epoch_renumbers_and_loses_nothing_on_postgresql() {
    // A box without a battery-backed clock, before it has the time: 5 s after the epoch.
    replaced_by_a_box_whose_clock_reads(|_| 5_000, true);
}

/// The old box reports, its last records reach central beyond a gap, and a box under its id
/// replaces it whose outbox was created when its clock read `clock(old box's first seq)`;
/// central stores in SQLite, or in PostgreSQL if `postgres`.
fn replaced_by_a_box_whose_clock_reads(clock: impl Fn(u64) -> u64, postgres: bool) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db = cuntong_e2e::store_db(d, postgres);
    let data = d.join("terminals");
    let broker = Broker::start(BrokerKind::Embedded, d);
    let _central = central(&broker, &db, d);
    let mut old = terminal(&broker, &data, "old-box.log");
    assert!(wait_until(Duration::from_secs(20), || outbox(&data).is_some()));
    let old_first = telemetry_seq(&data, "first_seq").unwrap();
    confirmed_beyond(&data, &db, old_first + 5, &old);
    let o = outbox(&data).unwrap();
    assert!(old.terminate(Duration::from_secs(10)).is_some());
    // The old box's last records reached central beyond a gap: the ones before them went
    // with the box. Central's watermark stops at the gap; it holds seqs beyond it.
    let beyond = |s: &str| o["next_seq"][s].as_u64().unwrap() + 20;
    let (tm_beyond, ev_beyond) = (beyond("telemetry"), beyond("events"));
    for (stream, seq) in [(Stream::Telemetry, tm_beyond), (Stream::Events, ev_beyond)] {
        let topic = format!(
            "ct/v1/t/13/01/02/001/001/main/{}",
            stream.channel().as_str()
        );
        assert!(broker.publish_file(&topic, &record_file(d, stream, seq), false));
    }
    let held = wait_until(Duration::from_secs(20), || {
        telemetry(&db, ID, None).iter().any(|s| s.seq == tm_beyond)
            && events(&db, false).iter().any(|e| e.seq == ev_beyond)
    });
    assert!(held, "central did not store the old box's last records");

    // The replacement's clock was behind: its seqs run into, or below, ones central holds.
    std::fs::remove_dir_all(&data).unwrap();
    let clock = clock(old_first);
    let state = data.join(ID).join("outbox");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("outbox.state"), new_outbox_state(clock)).unwrap();
    let new = terminal(&broker, &data, "new-box.log");

    // It renumbers both streams above everything central holds, and everything it produced
    // (from before the renumbering too) is stored and confirmed.
    let moved = wait_until(Duration::from_secs(30), || {
        outbox(&data).is_some_and(|o| {
            o["first_seq"]["telemetry"].as_u64() > Some(tm_beyond)
                && o["first_seq"]["events"].as_u64() > Some(ev_beyond)
        })
    });
    assert!(
        moved,
        "{:#} {}",
        outbox(&data).unwrap_or_default(),
        new.log_text()
    );
    let first = telemetry_seq(&data, "first_seq").unwrap();
    let caught_up = wait_until(Duration::from_secs(30), || {
        outbox(&data).is_some_and(|o| {
            let next = |s: &str| o["next_seq"][s].as_u64().unwrap_or(0);
            let confirmed = |s: &str| o["confirmed"][s].as_u64().unwrap_or(0);
            next("telemetry") > first + 5
                && confirmed("telemetry") + 1 >= next("telemetry").saturating_sub(2)
                && confirmed("events") + 1 >= next("events")
        })
    });
    assert!(
        caught_up,
        "{:#} {}",
        outbox(&data).unwrap_or_default(),
        new.log_text()
    );
    let upto = confirmed(&data);
    let stored: std::collections::BTreeSet<u64> = telemetry(&db, ID, None)
        .iter()
        .map(|s| s.seq)
        .filter(|&q| q >= first)
        .collect();
    let missing: Vec<u64> = (first..=upto).filter(|q| !stored.contains(q)).collect();
    assert!(
        missing.is_empty(),
        "the new box's seqs not stored: {missing:?}"
    );
    // Central heard where it starts now, and no watermark was taken for a forgery.
    let numbering: Vec<u64> = events(&db, false)
        .iter()
        .filter(|e| e.kind == "numbering-from" && e.terminal == ID && e.seq > ev_beyond)
        .map(|e| e.seq)
        .collect();
    assert!(numbering.len() >= 2, "{:?}", events(&db, false));
    let refused: Vec<_> = security_events(&db)
        .into_iter()
        .filter(|e| e.kind == "ack-refused")
        .collect();
    assert!(refused.is_empty(), "{refused:?}");
}
