//! One user's day on each store: central on SQLite and on PostgreSQL (a throwaway cluster) keeps
//! the same history, names, meetings and alarms, and every read command gives the same `--json`
//! contract. The scenario is written once and run on both.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use cuntong::control::{MeetingJson, RollCallJson};
use cuntong::view::{EventJson, SampleJson};
use cuntong_e2e::postgres::Postgres;
use cuntong_e2e::{Broker, BrokerKind, Proc, Site, bin, ok, run, sim_fleet, wait_until};

const COUNTY: &str = "130102";

/// `cuntong ARGS --db DB`.
fn read(db: &str, args: &[&str]) -> Output {
    let mut all = args.to_vec();
    all.extend(["--db", db]);
    run(&bin("cuntong"), &all)
}

fn json<T: serde::de::DeserializeOwned>(out: Output) -> Option<T> {
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

fn sites(db: &str) -> Vec<Site> {
    json(read(db, &["sites", "--json"])).unwrap_or_default()
}

fn the_day(db: &str, d: &Path) {
    let broker = Broker::start(BrokerKind::Embedded, d);
    let url = broker.url.clone();
    let rules = d.join("rules.toml");
    std::fs::write(&rules, "[offline]\ngrace = \"2s\"\n").unwrap();
    let start_central = |n: usize| {
        Proc::spawn(
            &bin("cuntong"),
            &[
                "central",
                "--broker",
                &url,
                "--db",
                db,
                "--alarms",
                rules.to_str().unwrap(),
            ],
            d.join(format!("central-{n}.log")),
        )
    };
    let mut central = start_central(1);
    let mut fleet = sim_fleet(&url, COUNTY, 4, d, "fleet");

    // The fleet, its history and its events.
    assert!(
        wait_until(Duration::from_secs(40), || {
            let s = sites(db);
            s.len() == 4 && s.iter().all(|s| s.online && !s.metrics.is_empty())
        }),
        "{:?}\n{}",
        sites(db),
        central.log_text()
    );
    let fleet_now = sites(db);
    assert!(fleet_now.iter().all(|s| s.level == "village"));
    assert!(fleet_now.iter().all(|s| !s.region_path.is_empty()));
    let first = fleet_now[0].terminal.clone();
    let samples: Vec<SampleJson> =
        json(read(db, &["telemetry", "--terminal", &first, "--json"])).unwrap();
    assert!(!samples.is_empty());
    assert!(
        samples.windows(2).all(|w| w[0].ts <= w[1].ts),
        "oldest first"
    );
    let in_region: Vec<Site> =
        json(read(db, &["sites", "--region", "130102001", "--json"])).unwrap();
    assert!(
        in_region
            .iter()
            .all(|s| s.terminal.starts_with("130102001")),
        "{in_region:?}"
    );
    assert!(
        wait_until(Duration::from_secs(20), || json::<Vec<EventJson>>(read(
            db,
            &["events", "--region", COUNTY, "--json"]
        ))
        .is_some_and(|e| !e.is_empty())),
        "no events stored"
    );

    // A meeting: created, started, every site answers the roll call.
    let mut id = String::new();
    assert!(wait_until(Duration::from_secs(20), || {
        let out = run(
            &bin("cuntong"),
            &[
                "meeting", "create", "--title", "例会", "--invite", COUNTY, "--broker", &url,
            ],
        );
        id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        out.status.success()
    }));
    ok(run(
        &bin("cuntong"),
        &["meeting", "start", &id, "--broker", &url],
    ));
    let mut present = 0;
    assert!(
        wait_until(Duration::from_secs(40), || {
            let out = run(
                &bin("cuntong"),
                &[
                    "meeting",
                    "rollcall",
                    &id,
                    "--timeout",
                    "10s",
                    "--json",
                    "--broker",
                    &url,
                ],
            );
            let rows: Vec<RollCallJson> = json(out).unwrap_or_default();
            present = rows.iter().filter(|r| r.present).count();
            present == 4
        }),
        "{present} of 4 answered\n{}",
        central.log_text()
    );

    // Central dies; the next one carries on with the meeting from the store.
    central.kill();
    let mut central = start_central(2);
    let list = || -> Vec<MeetingJson> {
        json(run(
            &bin("cuntong"),
            &["meeting", "list", "--json", "--broker", &url],
        ))
        .unwrap_or_default()
    };
    assert!(
        wait_until(Duration::from_secs(30), || list()
            .iter()
            .any(|m| m.id == id && m.status == "live")),
        "{:?}\n{}",
        list(),
        central.log_text()
    );

    // The fleet goes dark: one alarm for the county, its terminals folded in.
    fleet.kill();
    let alarms = || -> Vec<cuntong::alarms::AlarmJson> {
        json(read(db, &["alarms", "--active", "--json"])).unwrap_or_default()
    };
    assert!(
        wait_until(Duration::from_secs(40), || alarms()
            .iter()
            .any(|a| a.kind == "offline")),
        "{:?}\n{}",
        alarms(),
        central.log_text()
    );
    let raised = alarms();
    let folded: usize = raised.iter().map(|a| a.suppressed.len().max(1)).sum();
    assert_eq!(folded, 4, "each terminal once: {raised:?}");
    central.kill();
}

#[test]
fn a_day_on_the_embedded_sqlite_store() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("central.db");
    the_day(db.to_str().unwrap(), dir.path());
}

#[test]
fn the_same_day_on_postgresql() {
    let pg = Postgres::shared();
    let dir = tempfile::tempdir().unwrap();
    the_day(&pg.fresh_database(), dir.path());
}

#[test]
fn a_postgresql_store_is_not_backed_up_as_a_file() {
    let pg = Postgres::shared();
    let url = pg.fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("copy.db");
    let out = read(&url, &["backup", "--to", to.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("pg_basebackup"));
    assert!(!to.exists());
}
