//! Durable delivery end to end: nothing is lost across broker restarts, link cuts, a terminal
//! killed during an outage and a slow, lossy link; a full outbox drops the oldest records and
//! says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use cuntong_e2e::{
    Broker, BrokerKind, LinkProxy as Link, Proc, bin, central, free_port, telemetry, wait_until,
};
use serde_json::Value;

const IDS: [&str; 3] = [
    "130102001001-main",
    "130102002001-main",
    "130102003001-main",
];

fn terminal(id: &str, link: &Link, data: &Path, extra: &[&str]) -> Proc {
    let url = link.url();
    let mut args = vec![
        "terminal",
        "--id",
        id,
        "--broker",
        &url,
        "--data-dir",
        data.to_str().unwrap(),
        "--interval",
        "100ms",
        "--keep-alive",
        "2s",
        "--resend-after",
        "3s",
        "--rate",
        "200",
    ];
    args.extend_from_slice(extra);
    let log = data.join(format!("{id}.log"));
    std::fs::create_dir_all(data).unwrap();
    Proc::spawn(&bin("cuntong-sim"), &args, log)
}

use cuntong_e2e::terminal_status as status;

fn field(data: &Path, id: &str, f: impl Fn(&Value) -> Option<u64>) -> Option<u64> {
    status(data, id).as_ref().and_then(f)
}

fn next_seq(v: &Value) -> Option<u64> {
    v["outbox"]["next_seq"]["telemetry"].as_u64()
}

/// Where the terminal's numbering started (its clock when its outbox was created).
fn first_seq(v: &Value) -> Option<u64> {
    v["outbox"]["first_seq"]["telemetry"].as_u64()
}

fn confirmed(v: &Value) -> Option<u64> {
    v["outbox"]["confirmed"]["telemetry"].as_u64()
}

fn connected(data: &Path, id: &str) -> bool {
    status(data, id).is_some_and(|v| v["link"]["connected"] == true)
}

/// Waits until every terminal has produced at least `more` further records.
fn let_records_accumulate(data: &Path, more: u64) {
    let start: Vec<u64> = IDS
        .iter()
        .map(|id| field(data, id, next_seq).unwrap_or(0))
        .collect();
    let grew = wait_until(Duration::from_secs(30), || {
        IDS.iter()
            .zip(&start)
            .all(|(id, s)| field(data, id, next_seq).is_some_and(|n| n >= s + more))
    });
    assert!(grew, "terminals stopped producing records");
}

fn stored_seqs(db: &Path, id: &str) -> BTreeSet<u64> {
    telemetry(db, id, None).iter().map(|s| s.seq).collect()
}

fn chaos(kind: BrokerKind) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db = d.join("central.db");
    let data = d.join("terminals");
    let broker_port = free_port();
    let mut broker = Some(Broker::start_on(kind, d, broker_port));
    let _central = central(broker.as_ref().unwrap(), &db, d);
    let link = Link::start(d, broker_port);
    let mut terminals: Vec<Proc> = IDS
        .iter()
        .map(|id| terminal(id, &link, &data, &[]))
        .collect();
    assert!(
        wait_until(Duration::from_secs(30), || IDS
            .iter()
            .all(|id| field(&data, id, confirmed).is_some_and(|c| c >= 10))),
        "terminals did not start delivering"
    );

    // (a) The broker stops and comes back.
    drop(broker.take());
    assert!(wait_until(Duration::from_secs(15), || IDS
        .iter()
        .all(|id| !connected(&data, id))));
    let_records_accumulate(&data, 20);
    broker = Some(Broker::start_on(kind, d, broker_port));
    assert!(wait_until(Duration::from_secs(30), || IDS
        .iter()
        .all(|id| connected(&data, id))));

    // (b) The link is cut for longer than the keep-alive.
    link.set("cut");
    assert!(wait_until(Duration::from_secs(15), || IDS
        .iter()
        .all(|id| !connected(&data, id))));
    let_records_accumulate(&data, 40);
    link.set("restore");
    assert!(wait_until(Duration::from_secs(30), || IDS
        .iter()
        .all(|id| connected(&data, id))));

    // (c) A terminal is killed during an outage and restarted while the link is still down.
    link.set("cut");
    assert!(wait_until(Duration::from_secs(15), || IDS
        .iter()
        .all(|id| !connected(&data, id))));
    let_records_accumulate(&data, 20);
    terminals[0].kill();
    terminals[0] = terminal(IDS[0], &link, &data, &[]);
    let_records_accumulate(&data, 20);
    link.set("restore");

    // (d) A slow, lossy link: connections reset at random, every chunk delayed.
    assert!(wait_until(Duration::from_secs(30), || IDS
        .iter()
        .all(|id| connected(&data, id))));
    link.set("delay 150");
    link.set("loss 5");
    let_records_accumulate(&data, 30);
    link.set("loss 0");
    link.set("delay 0");

    // Every record each terminal produced up to now must reach the store, exactly once.
    let produced: Vec<(u64, u64)> = IDS
        .iter()
        .map(|id| {
            let mut n = None;
            assert!(wait_until(Duration::from_secs(10), || {
                n = status(&data, id).and_then(|v| Some((first_seq(&v)?, next_seq(&v)? - 1)));
                n.is_some()
            }));
            n.unwrap()
        })
        .collect();
    for (id, &(first, last)) in IDS.iter().zip(&produced) {
        let count = last + 1 - first;
        let complete = wait_until(Duration::from_secs(60), || {
            stored_seqs(&db, id).range(first..=last).count() as u64 == count
        });
        let stored = stored_seqs(&db, id);
        let missing: Vec<u64> = (first..=last).filter(|s| !stored.contains(s)).collect();
        let i = IDS.iter().position(|x| x == id).unwrap_or(0);
        assert!(
            complete,
            "{id}: {} of {count} stored, missing {missing:?}\nstatus: {:#}\nlog tail:\n{}",
            count - missing.len() as u64,
            status(&data, id).unwrap_or_default(),
            terminals[i]
                .log_text()
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .join("\n")
        );
        let report = status(&data, id).unwrap();
        assert_eq!(report["outbox"]["dropped"], 0, "{id} dropped records");
        println!(
            "{kind:?} {id}: seq {first}..={last} all stored, 0 gaps, 0 duplicates (store keys are unique), 0 dropped"
        );
    }
    drop(terminals);
    drop(broker);
}

#[test]
fn nothing_is_lost_across_broker_restarts_link_cuts_and_kills_with_mosquitto() {
    chaos(BrokerKind::Mosquitto);
}

#[test]
fn nothing_is_lost_across_broker_restarts_link_cuts_and_kills_with_the_embedded_broker() {
    chaos(BrokerKind::Embedded);
}

#[test]
fn a_full_outbox_drops_the_oldest_records_and_reports_exactly_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db = d.join("central.db");
    let data = d.join("terminals");
    let broker_port = free_port();
    let broker = Broker::start_on(BrokerKind::Mosquitto, d, broker_port);
    let _central = central(&broker, &db, d);
    let link = Link::start(d, broker_port);
    link.set("cut");
    let id = IDS[0];
    let _t = terminal(id, &link, &data, &["--outbox-budget", "4KiB"]);
    // With the broker unreachable, the outbox fills and starts dropping.
    assert!(wait_until(Duration::from_secs(30), || {
        field(&data, id, |v| v["outbox"]["dropped"].as_u64()).is_some_and(|n| n >= 30)
    }));
    link.set("restore");
    // Central's watermark passes the gap once the drop report arrives: the terminal's
    // confirmed watermark catches up with what it produced, and drops stop.
    let mut steady = 0;
    let mut previous = None;
    let caught_up = wait_until(Duration::from_secs(60), || {
        let Some(v) = status(&data, id) else {
            return false;
        };
        let last = next_seq(&v).unwrap_or(1) - 1;
        let dropped = v["outbox"]["dropped"].as_u64();
        let current = confirmed(&v).is_some_and(|c| c + 20 >= last);
        steady = if current && dropped == previous {
            steady + 1
        } else {
            0
        };
        previous = dropped;
        steady >= 10
    });
    assert!(caught_up, "{:#}", status(&data, id).unwrap_or_default());
    let report = status(&data, id).unwrap();
    let dropped = report["outbox"]["dropped"].as_u64().unwrap();
    let watermark = confirmed(&report).unwrap();
    let first = first_seq(&report).unwrap();
    let stored = stored_seqs(&db, id);
    let missing: Vec<u64> = (first..=watermark)
        .filter(|s| !stored.contains(s))
        .collect();
    assert_eq!(
        missing.len() as u64,
        dropped,
        "the gap in the store is exactly the reported drops"
    );
    // The drops are the oldest records: one contiguous run from the first that did not fit.
    assert!(missing.windows(2).all(|w| w[1] == w[0] + 1), "{missing:?}");
    println!(
        "full outbox: {dropped} oldest records dropped ({:?}..={:?}), everything else stored",
        missing.first(),
        missing.last()
    );
}
