//! Two `cuntong central` instances on one PostgreSQL store: both store what the county sends,
//! one holds the host role (meetings, alarms); `kill -9` of that one and the other takes the
//! role over from the store and carries on: chair operations answer again, nothing sent is
//! lost, and alarms are raised once, not once per instance.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::Output;
use std::time::{Duration, Instant};

use cuntong::commands::central::InstanceJson;
use cuntong::control::RollCallJson;
use cuntong_e2e::postgres::Postgres;
use cuntong_e2e::{
    Broker, BrokerKind, Proc, Sample, Site, bin, ingest_counters, ok, run, sim_fleet, wait_until,
};

const COUNTY: &str = "130102";
const SITES: usize = 30;

fn json<T: serde::de::DeserializeOwned>(out: Output) -> Option<T> {
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

#[test]
fn a_standby_takes_the_host_role_over_from_a_killed_central_and_nothing_is_lost_or_raised_twice() {
    let pg = Postgres::shared();
    let db = pg.fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Broker::start(BrokerKind::Embedded, d);
    let url = broker.url.clone();
    let rules = d.join("rules.toml");
    std::fs::write(&rules, "[offline]\ngrace = \"2s\"\n").unwrap();
    let cuntong = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--broker", &url]);
        run(&bin("cuntong"), &all)
    };
    let read = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--db", &db]);
        run(&bin("cuntong"), &all)
    };
    let start = |name: &str| {
        Proc::spawn(
            &bin("cuntong"),
            &[
                "central",
                "--broker",
                &url,
                "--db",
                &db,
                "--alarms",
                rules.to_str().unwrap(),
            ],
            d.join(format!("{name}.log")),
        )
    };
    let instances = || -> Vec<InstanceJson> {
        json(read(&["central", "status", "--json"])).unwrap_or_default()
    };
    let mut centrals = vec![start("a")];
    // The first holds the role before the second starts.
    assert!(wait_until(Duration::from_secs(20), || instances()
        .iter()
        .any(|i| i.roles == ["host"])));
    centrals.push(start("b"));
    assert!(
        wait_until(Duration::from_secs(20), || instances().len() == 2),
        "{:?}",
        instances()
    );
    let mut fleet = sim_fleet(&url, COUNTY, SITES, d, "fleet");
    let sites = || -> Vec<Site> { json(read(&["sites", "--json"])).unwrap_or_default() };
    assert!(
        wait_until(Duration::from_secs(60), || sites()
            .iter()
            .filter(|s| s.online)
            .count()
            == SITES),
        "{}",
        centrals[0].log_text()
    );

    // A county meeting, every site in the roll call.
    let mut id = String::new();
    assert!(wait_until(Duration::from_secs(30), || {
        let out = cuntong(&["meeting", "create", "--title", "例会", "--invite", COUNTY]);
        id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        out.status.success()
    }));
    ok(cuntong(&["meeting", "start", &id]));
    let roll_call = || -> usize {
        let out = cuntong(&["meeting", "rollcall", &id, "--timeout", "10s", "--json"]);
        json::<Vec<RollCallJson>>(out)
            .unwrap_or_default()
            .iter()
            .filter(|r| r.present)
            .count()
    };
    assert!(wait_until(Duration::from_secs(60), || roll_call() == SITES));

    // kill -9 of the instance holding the host role, in the middle of ingest.
    let holder = instances()
        .into_iter()
        .find(|i| i.roles == ["host"])
        .expect("an instance holds the host role");
    let pid: u32 = holder.instance.rsplit('/').next().unwrap().parse().unwrap();
    let (mut dead, survivor): (Vec<Proc>, Vec<Proc>) =
        centrals.into_iter().partition(|c| c.child.id() == pid);
    assert_eq!(dead.len(), 1, "the holder is one of ours: {holder:?}");
    dead[0].kill();
    let killed = Instant::now();

    // The chair's operations answer again through the other instance.
    assert!(
        wait_until(Duration::from_secs(15), || cuntong(&[
            "meeting", "mute", &id, "--all"
        ])
        .status
        .success()),
        "no answer 15 s after the kill\n{}",
        survivor[0].log_text()
    );
    let takeover = killed.elapsed();
    eprintln!("chair operations answered again {takeover:?} after the kill");
    assert!(wait_until(Duration::from_secs(30), || roll_call() == SITES));
    let now_holding: Vec<InstanceJson> = instances()
        .into_iter()
        .filter(|i| i.roles == ["host"])
        .collect();
    assert_eq!(
        now_holding.len(),
        1,
        "{now_holding:?}\n{}\n{}",
        dead[0].log_text(),
        survivor[0].log_text()
    );
    assert_ne!(now_holding[0].instance, holder.instance);

    // Nothing sent is lost: the fleet stops, and every terminal's telemetry is stored without
    // a gap from its first message to its last.
    let before_stop = sites();
    fleet.terminate(Duration::from_secs(20));
    let seqs = |terminal: &str| -> Vec<u64> {
        json::<Vec<Sample>>(read(&["telemetry", "--terminal", terminal, "--json"]))
            .unwrap_or_default()
            .iter()
            .map(|s| s.seq)
            .collect()
    };
    let mut gaps = BTreeMap::new();
    for s in &before_stop {
        let mut got = seqs(&s.terminal);
        got.sort_unstable();
        got.dedup();
        let (Some(first), Some(last)) = (got.first(), got.last()) else {
            gaps.insert(s.terminal.clone(), "nothing stored".to_owned());
            continue;
        };
        let missing = (last - first + 1) as usize - got.len();
        if missing > 0 {
            gaps.insert(
                s.terminal.clone(),
                format!("{missing} missing in {first}..={last}"),
            );
        }
    }
    assert!(gaps.is_empty(), "{gaps:?}");

    // The fleet has gone dark: each terminal is in the alarms once.
    let alarms = || -> Vec<cuntong::alarms::AlarmJson> {
        json(read(&["alarms", "--active", "--json"])).unwrap_or_default()
    };
    let covered = || -> usize {
        alarms()
            .iter()
            .filter(|a| a.kind == "offline")
            .map(|a| a.suppressed.len().max(1))
            .sum()
    };
    assert!(
        wait_until(Duration::from_secs(40), || covered() >= SITES),
        "{:?}",
        alarms()
    );
    // A second alarm engine would raise its own at the same time: none comes.
    assert!(
        !wait_until(Duration::from_secs(3), || covered() > SITES),
        "{:?}",
        alarms()
    );
}

#[test]
fn instances_sharing_ingest_on_mosquitto_store_each_message_once_between_them() {
    let pg = Postgres::shared();
    let db = pg.fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Broker::start(BrokerKind::Mosquitto, d);
    let start = |name: &str| {
        Proc::spawn(
            &bin("cuntong"),
            &[
                "central",
                "--broker",
                &broker.url,
                "--db",
                &db,
                "--share-ingest",
                "central",
            ],
            d.join(format!("{name}.log")),
        )
    };
    let a = start("a");
    let b = start("b");
    let _fleet = sim_fleet(&broker.url, COUNTY, 10, d, "fleet");
    // Both store a part; neither stores what the other did (a duplicate would be a message
    // given to both).
    assert!(
        wait_until(Duration::from_secs(40), || {
            match (
                ingest_counters(&a.log_text()),
                ingest_counters(&b.log_text()),
            ) {
                (Some((sa, _)), Some((sb, _))) => sa > 0 && sb > 0,
                _ => false,
            }
        }),
        "{}\n{}",
        a.log_text(),
        b.log_text()
    );
    // Without sharing every message reaches both, and one of each pair counts as a duplicate
    // (as many duplicates as stored). What is left are the terminals' own resends: two
    // instances confirming one terminal may confirm out of order, and a confirmation behind
    // the box's own has it resend what is in flight.
    let (sa, da) = ingest_counters(&a.log_text()).unwrap_or_default();
    let (sb, db_) = ingest_counters(&b.log_text()).unwrap_or_default();
    assert!(
        (da + db_) * 2 < sa + sb,
        "stored {sa} + {sb}, duplicates {da} + {db_}"
    );
    let sites: Vec<Site> =
        json(run(&bin("cuntong"), &["sites", "--json", "--db", &db])).unwrap_or_default();
    assert_eq!(sites.len(), 10);
}
