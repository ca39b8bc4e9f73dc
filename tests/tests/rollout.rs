//! Staged rollouts, end to end: five real `cuntong-terminal run` boxes under supervisors that
//! restart them like systemd's `Restart=always` (township 130102001) and a simulated fleet
//! (township 130102002), central running the rollouts and serving the artifacts over HTTP
//! range requests, the release recorded with `cuntong release add` and rolled out with
//! `cuntong rollout start`.
//!
//! A good release reaches every box of the county at the given rate, and the rollout carries
//! on across a restart of central; a release that crashes at start and one that starts but
//! never reaches the broker are each rolled back by the real box that tried it, and their
//! rollouts abort at their threshold, leaving the boxes still queued untouched.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use cuntong_e2e::update::{Supervisor, package, rollout_id, rollout_start_args};
use cuntong_e2e::{Broker, BrokerKind, Proc, bin, central_with, ok, run, sites, wait_until};

const BOXES: usize = 5;
const SIMS: usize = 20;

fn id(n: usize) -> String {
    format!("130102001{n:03}-main")
}

fn status(db: &Path, rollout: &str) -> serde_json::Value {
    let out = run(
        &bin("cuntong"),
        &[
            "rollout",
            "status",
            rollout,
            "--json",
            "--db",
            db.to_str().unwrap(),
        ],
    );
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

fn wait_state(db: &Path, rollout: &str, secs: u64, want: &str) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    let reached = wait_until(Duration::from_secs(secs), || {
        last = status(db, rollout);
        last["state"] == want
    });
    assert!(
        reached,
        "rollout {rollout} not {want} within {secs} s: {last:#}"
    );
    last
}

/// Central on `http` (the same address after a restart: the offers name it).
fn start_central(broker: &Broker, db: &Path, dir: &Path, name: &str, http: &str) -> (Proc, String) {
    let log_dir = dir.join(name);
    std::fs::create_dir_all(&log_dir).unwrap();
    let cache = dir.join("release-cache");
    let c = central_with(
        broker,
        db,
        &log_dir,
        &["--http", http, "--release-cache", cache.to_str().unwrap()],
    );
    let http = c.bound("dashboard: ");
    (c, format!("http://{http}"))
}

fn rollout_start(
    db: &Path,
    ca: &Path,
    broker: &Broker,
    release: (&str, &str),
    from: &str,
    extra: &[&str],
) -> String {
    let (db, ca) = (db.to_str().unwrap(), ca.to_str().unwrap());
    let args = rollout_start_args(release, (db, ca, &broker.url), from, extra);
    rollout_id(&ok(run(&bin("cuntong"), &args))).unwrap()
}

#[test]
fn a_good_release_reaches_every_box_and_bad_ones_abort_at_their_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Broker::start(BrokerKind::Mosquitto, d);
    let db = d.join("central.db");
    let http = format!("127.0.0.1:{}", cuntong_e2e::free_port());
    let (central, url) = start_central(&broker, &db, d, "central-1", &http);
    let ca = d.join("ca");
    ok(run(
        &bin("cuntong"),
        &["ca", "init", "--dir", ca.to_str().unwrap()],
    ));
    let mut boxes = Vec::new();
    for n in 1..=BOXES {
        let data = d.join(format!("box-{n}"));
        let config = d.join(format!("terminal-{n}.toml"));
        std::fs::write(
            &config,
            format!(
                "id = \"{}\"\nbroker = \"{}\"\ndata_dir = \"{}\"\nkeep_alive = \"5s\"\n\n[telemetry]\nhealth_interval = \"2s\"\nbatch_age = \"1s\"\n\n[commands]\nkey = \"{}\"\n\n[update]\nkey = \"{}\"\nmax_rate = \"4MiB\"\nhealth_deadline = \"15s\"\nmax_boots = 3\n",
                id(n),
                broker.url,
                data.display(),
                ca.join("command.pub").display(),
                ca.join("release.pub").display(),
            ),
        )
        .unwrap();
        let log = d.join(format!("terminal-{n}.log"));
        boxes.push((data, Supervisor::start(&config, &log)));
    }
    let _sims = cuntong_e2e::sim_fleet_with(
        &broker.url,
        "130102002",
        SIMS,
        d,
        "sims",
        &[
            "--command-key",
            ca.join("command.pub").to_str().unwrap(),
            "--release-key",
            ca.join("release.pub").to_str().unwrap(),
            "--update-rate",
            "4MiB",
        ],
    );
    assert!(
        wait_until(Duration::from_secs(60), || {
            sites(&db, Some("130102"))
                .iter()
                .filter(|s| s.online)
                .count()
                == BOXES + SIMS
        }),
        "the boxes did not all come online"
    );

    // A good release, 1 MiB, to the county: 60 offers a minute, one a second.
    let daemon = bin("cuntong-terminal");
    let good = package(
        d,
        "good",
        "0.2.0",
        &format!("exec {} \"$@\"", daemon.display()),
        1 << 20,
    );
    let add = |deb: &Path, version: &str| {
        ok(run(
            &bin("cuntong"),
            &[
                "release",
                "add",
                deb.to_str().unwrap(),
                "--version",
                version,
                "--ca",
                ca.to_str().unwrap(),
                "--db",
                db.to_str().unwrap(),
            ],
        ))
    };
    assert!(add(&good, "0.2.0").contains("recorded"));
    let good_id = rollout_start(
        &db,
        &ca,
        &broker,
        ("0.2.0", "130102"),
        &url,
        &["--rate", "60/min"],
    );
    // Once the first box committed, central restarts: the rollout carries on from the store.
    let first = wait_until(Duration::from_secs(90), || {
        status(&db, &good_id)["counts"]["committed"].as_u64() >= Some(1)
    });
    assert!(first, "{:#}\n{}", status(&db, &good_id), central.log_text());
    drop(central);
    let (central, _) = start_central(&broker, &db, d, "central-2", &http);
    let done = wait_state(&db, &good_id, 180, "done");
    assert_eq!(done["counts"]["committed"], BOXES + SIMS, "{done:#}");
    // Offers went out at the rate: the last box was offered at least 24 × 1 s after the first.
    let offered: Vec<String> = done["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["notified_at"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(offered.len(), BOXES + SIMS, "{done:#}");
    let span = |v: &[String]| {
        let ms = |t: &str| humantime::parse_rfc3339(t).unwrap();
        let (a, b) = (v.iter().min().unwrap(), v.iter().max().unwrap());
        ms(b).duration_since(ms(a)).unwrap()
    };
    assert!(span(&offered) >= Duration::from_secs(23), "{offered:?}");
    assert!(
        wait_until(Duration::from_secs(30), || sites(&db, Some("130102"))
            .iter()
            .all(|s| s.version.as_deref() == Some("0.2.0"))),
        "{:?}",
        sites(&db, Some("130102"))
    );

    // Two bad releases, each to the real boxes' township, one offer a minute, abort at the
    // first failure: one that exits at start, one that starts but never reaches the broker.
    let bad = [
        (
            "crash",
            "0.3.0",
            "echo crashing >&2; exit 3",
            "stopped 3 times",
        ),
        (
            "mute",
            "0.4.0",
            "exec sleep 3600",
            "health check by its deadline",
        ),
    ];
    for (name, version, script, why) in bad {
        let deb = package(d, name, version, script, 1024);
        add(&deb, version);
        let bad_id = rollout_start(
            &db,
            &ca,
            &broker,
            (version, "130102001"),
            &url,
            &[
                "--rate",
                "1/min",
                "--abort-failed",
                "50%",
                "--min-executed",
                "1",
            ],
        );
        let aborted = wait_state(&db, &bad_id, 120, "aborted");
        let counts = &aborted["counts"];
        let rolled = counts["rolled-back"].as_u64().unwrap();
        assert!(rolled >= 1, "{aborted:#}");
        // Every box that was offered it rolled back; the others were never offered it.
        assert_eq!(
            rolled + counts["queued"].as_u64().unwrap(),
            BOXES as u64,
            "{aborted:#}"
        );
        assert!(counts["queued"].as_u64().unwrap() >= 2, "{aborted:#}");
        for s in aborted["sites"].as_array().unwrap() {
            if s["stage"] == "rolled-back" {
                assert!(s["reason"].as_str().unwrap().contains(why), "{s}");
            }
        }
        // Every box runs 0.2.0 committed.
        assert!(
            wait_until(Duration::from_secs(60), || {
                boxes.iter().all(|(data, _)| {
                    std::fs::read(data.join("update/slots.json"))
                        .ok()
                        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                        .is_some_and(|t| {
                            t["committed"]["version"] == "0.2.0" && t["trial"].is_null()
                        })
                })
            }),
            "a box did not return to 0.2.0 after {version}"
        );
    }
    let listed: serde_json::Value = serde_json::from_slice(
        &run(
            &bin("cuntong"),
            &["rollout", "list", "--json", "--db", db.to_str().unwrap()],
        )
        .stdout,
    )
    .unwrap();
    let states: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["state"].as_str().unwrap())
        .collect();
    assert_eq!(states.len(), 3, "{listed:#}");
    assert!(
        states.iter().filter(|s| **s == "done").count() == 1
            && states.iter().filter(|s| **s == "aborted").count() == 2,
        "{listed:#}"
    );
    // The list counts the boxes at each stage as the status lists them.
    for r in listed.as_array().unwrap() {
        let id = r["id"].to_string();
        assert_eq!(r["counts"], status(&db, &id)["counts"], "{listed:#}");
    }
    drop(boxes);
    drop(central);
}
