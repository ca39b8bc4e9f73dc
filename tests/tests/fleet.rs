//! Telemetry end to end: simulated terminals → real broker → `cuntong central` → store → CLI.
//! Every scenario runs against the embedded broker and against Mosquitto.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cuntong_e2e::{
    Broker, BrokerKind, Proc, bin, central, sim_fleet_with, sites, telemetry, wait_until,
};

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn fleet_reports_into_the_store(kind: BrokerKind) {
    let started = unix_ms();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("central.db");
    let broker = Broker::start(kind, dir.path());
    let _central = central(&broker, &db, dir.path());
    let data = dir.path().join("sim");
    let _fleet = Proc::spawn(
        &bin("cuntong-sim"),
        &[
            "fleet",
            "--broker",
            &broker.url,
            "--region",
            "130102",
            "--count",
            "6",
            "--interval",
            "1s",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        dir.path().join("fleet.log"),
    );
    let all_reporting = wait_until(Duration::from_secs(30), || {
        let s = sites(&db, None);
        s.len() == 6
            && s.iter().all(|t| {
                t.online
                    && t.last_seen.is_some()
                    && t.metrics.contains_key("env.temp")
                    && t.metrics.contains_key("cpu.load")
            })
    });
    assert!(
        all_reporting,
        "fleet did not report: {:#?}",
        sites(&db, None)
    );

    let s = sites(&db, None);
    let first = &s[0];
    assert_eq!(first.site.len(), 12);
    assert_eq!(first.level, "village");
    assert!(first.terminal.starts_with(&first.site));
    let temp = first.metrics["env.temp"];
    assert!(
        (-10.0..50.0).contains(&temp),
        "implausible temperature {temp}"
    );

    // History: sequence numbers are contiguous from where the new box's numbering started
    // (its clock when its outbox was created), samples carry their own time.
    let wait_three = wait_until(Duration::from_secs(20), || {
        telemetry(&db, &first.terminal, Some("env.temp")).len() >= 3
    });
    assert!(wait_three);
    let samples = telemetry(&db, &first.terminal, None);
    let mut seqs: Vec<u64> = samples.iter().map(|s| s.seq).collect();
    seqs.dedup();
    seqs.sort();
    assert!((started..=unix_ms()).contains(&seqs[0]), "{seqs:?}");
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "gap in {seqs:?}");
    assert!(samples.iter().all(|s| s.ts.ends_with('Z')));
    assert!(
        samples
            .iter()
            .filter(|s| s.metric == "env.temp")
            .all(|s| s.exact.parse::<f64>().unwrap() == s.value)
    );
}

#[test]
fn fleet_reports_into_the_store_via_the_embedded_broker() {
    fleet_reports_into_the_store(BrokerKind::Embedded);
}

#[test]
fn fleet_reports_into_the_store_via_mosquitto() {
    fleet_reports_into_the_store(BrokerKind::Mosquitto);
}

fn killed_terminal_goes_offline_within_its_keep_alive(kind: BrokerKind) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("central.db");
    let broker = Broker::start(kind, dir.path());
    let _central = central(&broker, &db, dir.path());
    let id = "130102003004-main";
    let mut terminal = Proc::spawn(
        &bin("cuntong-sim"),
        &[
            "terminal",
            "--id",
            id,
            "--broker",
            &broker.url,
            "--interval",
            "1s",
            "--keep-alive",
            "2s",
            "--data-dir",
            dir.path().join("t").to_str().unwrap(),
        ],
        dir.path().join("terminal.log"),
    );
    let db = db.as_path();
    let online = |want: bool| {
        move || {
            sites(db, None)
                .iter()
                .any(|s| s.terminal == id && s.online == want)
        }
    };
    assert!(
        wait_until(Duration::from_secs(20), online(true)),
        "{}",
        terminal.log_text()
    );
    terminal.kill();
    // The broker declares it gone after 1.5 × keep-alive (3 s); allow for its timer granularity.
    assert!(
        wait_until(Duration::from_secs(8), online(false)),
        "terminal still online after kill -9"
    );
}

#[test]
fn killed_terminal_goes_offline_via_the_embedded_broker() {
    killed_terminal_goes_offline_within_its_keep_alive(BrokerKind::Embedded);
}

#[test]
fn killed_terminal_goes_offline_via_mosquitto() {
    killed_terminal_goes_offline_within_its_keep_alive(BrokerKind::Mosquitto);
}

fn region_filter_selects_by_prefix(kind: BrokerKind) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("central.db");
    let broker = Broker::start(kind, dir.path());
    let _central = central(&broker, &db, dir.path());
    // A province-wide fleet spreads over prefectures 01..04 first.
    let _fleet = Proc::spawn(
        &bin("cuntong-sim"),
        &[
            "fleet",
            "--broker",
            &broker.url,
            "--region",
            "13",
            "--count",
            "8",
            "--interval",
            "1s",
            "--data-dir",
            dir.path().join("sim").to_str().unwrap(),
        ],
        dir.path().join("fleet.log"),
    );
    assert!(wait_until(Duration::from_secs(30), || sites(&db, None)
        .len()
        == 8));
    let in_1301 = sites(&db, Some("1301"));
    assert_eq!(in_1301.len(), 2, "{in_1301:#?}");
    assert!(in_1301.iter().all(|s| s.site.starts_with("1301")));
    let all = sites(&db, Some("13"));
    assert_eq!(all.len(), 8);
    let one = &all[3].site;
    let exact = sites(&db, Some(one));
    assert_eq!(exact.len(), 1);
    assert!(sites(&db, Some("14")).is_empty());
}

#[test]
fn region_filter_selects_by_prefix_via_the_embedded_broker() {
    region_filter_selects_by_prefix(BrokerKind::Embedded);
}

#[test]
fn region_filter_selects_by_prefix_via_mosquitto() {
    region_filter_selects_by_prefix(BrokerKind::Mosquitto);
}

/// Boxes started together read their health at once, then each at its own moment of the
/// interval (from its id, on the wall clock), not in step with each other.
#[test]
fn each_box_reads_at_its_own_moment_of_the_interval() {
    const EVERY_MS: u64 = 2_000;
    // A late timer under load is allowed this much; by chance a reading lands in its box's
    // window one time in five, so twelve or more readings all in it are no accident.
    const LATE_MS: u64 = 400;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("central.db");
    let broker = Broker::start(BrokerKind::Embedded, dir.path());
    let _central = central(&broker, &db, dir.path());
    // Sampling every 2 s, every box powered on in the same instant.
    let _fleet = sim_fleet_with(
        &broker.url,
        "130102",
        4,
        dir.path(),
        "sim",
        &["--power-on", "0s"],
    );
    // Each box's readings after its first (the one it takes as it starts), in Unix ms.
    let later_readings = |terminal: &str| -> Vec<u64> {
        let mut at: Vec<u64> = telemetry(&db, terminal, Some("cpu.load"))
            .iter()
            .filter_map(|s| humantime::parse_rfc3339(&s.ts).ok())
            .filter_map(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64)
            .collect();
        at.sort_unstable();
        at.into_iter().skip(1).collect()
    };
    let enough = wait_until(Duration::from_secs(40), || {
        let s = sites(&db, None);
        s.len() == 4 && s.iter().all(|t| later_readings(&t.terminal).len() >= 3)
    });
    assert!(enough, "not enough readings: {:#?}", sites(&db, None));
    let mut moments = Vec::new();
    for site in sites(&db, None) {
        let id: cuntong_core::terminal_id::TerminalId = site.terminal.parse().unwrap();
        let moment = cuntong_core::backoff::spread(&id) % EVERY_MS;
        moments.push(moment);
        for at in later_readings(&site.terminal) {
            let late = (at % EVERY_MS + EVERY_MS - moment) % EVERY_MS;
            assert!(
                late < LATE_MS,
                "{} read at {at}, {late} ms after its moment {moment} of the interval",
                site.terminal
            );
        }
    }
    moments.sort_unstable();
    moments.dedup();
    assert!(moments.len() > 1, "the boxes share one moment: {moments:?}");
}
