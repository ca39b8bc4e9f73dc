//! Alarms end to end against Mosquitto: a township's uplink fails → exactly one root-cause
//! alarm, no per-village storm, neither while it is down nor while it comes back; the duty
//! office acknowledges it and it clears when the township is back; a value hovering at its
//! threshold raises one alarm and does not flap.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use cuntong::alarms::AlarmJson;
use cuntong_core::envelope::{Envelope, encode};
use cuntong_core::telemetry::{Metric, Sample, TelemetryBatch};
use cuntong_e2e::{
    Broker, BrokerKind, LinkProxy, Proc, WebhookReceiver, bin, central_with, ok, run, sim_fleet,
    sim_fleet_with, sites, wait_until,
};

fn alarms(db: &Path, active: bool) -> Vec<AlarmJson> {
    let mut args = vec!["alarms", "--json", "--db", db.to_str().unwrap()];
    if active {
        args.push("--active");
    }
    let out = run(&bin("cuntong"), &args);
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

fn central(broker: &Broker, db: &Path, rules: &Path, d: &Path) -> Proc {
    central_with(broker, db, d, &["--alarms", rules.to_str().unwrap()])
}

#[test]
fn a_township_uplink_failure_is_one_alarm_acknowledged_and_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Broker::start(BrokerKind::Mosquitto, d);
    let rules = d.join("rules.toml");
    // The hook records every change, as the duty office's SMS gateway would receive it.
    let hooked = d.join("hooked.jsonl");
    // And the county's chat system takes them as a web hook (refusing the first try).
    let webhook = WebhookReceiver::start("/hooks/duty-T0K3N", 1);
    std::fs::write(
        &rules,
        format!(
            "[offline]\ngrace = \"2s\"\n\n[[hook]]\ncommand = [\"sh\", \"-c\", \"cat >> {} && echo >> {}\"]\n\n[[hook]]\nurl = \"{}\"\n",
            hooked.display(),
            hooked.display(),
            webhook.url
        ),
    )
    .unwrap();
    let db = d.join("central.db");
    let central = central(&broker, &db, &rules, d);
    let link = LinkProxy::start(d, broker.port);
    let _near = sim_fleet(&broker.url, "130102", 6, d, "near");
    let _township = sim_fleet(&link.url(), "130102009", 4, d, "township");
    assert!(
        wait_until(Duration::from_secs(30), || sites(&db, None)
            .iter()
            .filter(|s| s.online)
            .count()
            == 10),
        "{}",
        central.log_text()
    );
    let villages: Vec<String> = sites(&db, Some("130102009"))
        .into_iter()
        .map(|s| s.terminal)
        .collect();
    assert_eq!(villages.len(), 4);

    link.set("cut");
    assert!(
        wait_until(Duration::from_secs(30), || alarms(&db, true)
            .iter()
            .any(|a| a.kind == "offline" && a.subject == "130102009")),
        "no root-cause alarm: {:?}\n{}",
        alarms(&db, false),
        central.log_text()
    );
    let active = alarms(&db, true);
    assert_eq!(active.len(), 1, "one alarm, not a storm: {active:?}");
    let root = &active[0];
    assert_eq!(root.severity, "critical");
    let mut suppressed = root.suppressed.clone();
    suppressed.sort();
    assert_eq!(suppressed, villages);

    // The duty office acknowledges it.
    let by = "值班员 Li";
    ok(run(
        &bin("cuntong"),
        &[
            "alarms",
            "ack",
            &root.id.to_string(),
            "--by",
            by,
            "--broker",
            &broker.url,
        ],
    ));
    assert!(wait_until(Duration::from_secs(10), || alarms(&db, true)
        .iter()
        .any(|a| a.id == root.id
            && a.state == "acknowledged"
            && a.acknowledged_by.as_deref() == Some(by))));
    let unknown = run(
        &bin("cuntong"),
        &[
            "alarms",
            "ack",
            "99999",
            "--by",
            by,
            "--broker",
            &broker.url,
        ],
    );
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no alarm 99999"));

    // The township comes back: the alarm clears, and no village ever had an alarm of its own.
    link.set("restore");
    assert!(
        wait_until(Duration::from_secs(30), || alarms(&db, false)
            .iter()
            .any(|a| a.id == root.id && a.state == "cleared")),
        "{:?}",
        alarms(&db, false)
    );
    let all = alarms(&db, false);
    assert!(
        all.iter().all(|a| !villages.contains(&a.subject)),
        "a per-village alarm: {all:?}"
    );
    assert_eq!(all.len(), 1, "{all:?}");
    // The hooks saw it raised, acknowledged and cleared; the web hook after one retry.
    assert!(wait_until(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&hooked).unwrap_or_default();
        ["\"active\"", "\"acknowledged\"", "\"cleared\""]
            .iter()
            .all(|s| text.contains(s))
    }));
    assert!(
        wait_until(Duration::from_secs(15), || webhook.received().len() >= 3),
        "{:?}",
        webhook.received()
    );
    // In order (an acknowledged alarm changes again as its villages come back one by one).
    let mut states: Vec<String> = webhook
        .received()
        .iter()
        .map(|b| serde_json::from_str::<AlarmJson>(b).unwrap())
        .inspect(|a| assert_eq!(a.id, root.id))
        .map(|a| a.state)
        .collect();
    states.dedup();
    assert_eq!(states, ["active", "acknowledged", "cleared"]);
    assert_eq!(webhook.refused.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Its secret path is not in central's log.
    assert!(!central.log_text().contains("T0K3N"));
}

/// A telemetry envelope for one `env.temp` reading, as a terminal would send it.
fn reading(seq: u64, value: &str) -> Vec<u8> {
    batch(seq, &[(Metric::AirTemp, value)])
}

/// A telemetry envelope of one moment's values, its clock 10 s on per `seq`.
fn batch(seq: u64, values: &[(Metric, &str)]) -> Vec<u8> {
    encode(&Envelope {
        seq,
        time_ms: 1_763_798_400_000 + seq * 10_000,
        body: TelemetryBatch {
            samples: values
                .iter()
                .map(|(metric, value)| Sample {
                    offset_ms: 0,
                    metric: metric.clone(),
                    value: value.parse().unwrap(),
                    quality: None,
                })
                .collect(),
        },
    })
    .unwrap()
}

#[test]
fn a_value_hovering_at_its_threshold_raises_one_alarm_and_does_not_flap() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Broker::start(BrokerKind::Mosquitto, d);
    let rules = d.join("rules.toml");
    std::fs::write(
        &rules,
        "[[threshold]]\nmetric = \"env.temp\"\nabove = 30.0\nclear = 28.0\nfor = \"20s\"\nseverity = \"major\"\n",
    )
    .unwrap();
    let db = d.join("central.db");
    let central = central(&broker, &db, &rules, d);
    assert!(wait_until(Duration::from_secs(10), || db.exists()));
    let publish_to = |topic: &str, seq: u64, payload: Vec<u8>| {
        let file = d.join(format!("tm-{seq}.bin"));
        std::fs::write(&file, payload).unwrap();
        assert!(broker.publish_file(topic, &file, false));
    };
    let publish = |seq: u64, value: &str| {
        publish_to("ct/v1/t/13/01/02/001/001/test/tm", seq, reading(seq, value))
    };
    let stored = |n: usize| {
        wait_until(Duration::from_secs(10), || {
            cuntong_e2e::telemetry(&db, "130102001001-test", None).len() >= n
        })
    };
    // Readings every 10 s (by their own clock): hovering 29.9 / 30.1 never holds 20 s beyond.
    let hover = [
        "30.1", "29.9", "30.2", "29.8", "30.1", "29.9", "30.3", "29.7",
    ];
    // Central is listening once a first reading gets stored (published until it is).
    assert!(
        wait_until(Duration::from_secs(20), || {
            publish(1, "20.0");
            cuntong_e2e::telemetry(&db, "130102001001-test", None).len() == 1
        }),
        "{}",
        central.log_text()
    );
    for (i, v) in hover.iter().enumerate() {
        publish(i as u64 + 2, v);
    }
    assert!(stored(hover.len() + 1), "{}", central.log_text());
    assert!(alarms(&db, false).is_empty(), "{:?}", alarms(&db, false));
    // Beyond 30 for 20 s: raised once; hovering between 28 and 31 then keeps it, no flapping.
    let then = [
        "31.0", "31.2", "31.1", "29.0", "30.5", "28.5", "30.9", "29.1",
    ];
    for (i, v) in then.iter().enumerate() {
        publish(100 + i as u64, v);
    }
    assert!(stored(hover.len() + then.len() + 1));
    let a = alarms(&db, false);
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(a[0].kind, "threshold");
    assert_eq!(a[0].subject, "130102001001-test");
    assert_eq!(a[0].state, "active");
    assert_eq!(a[0].metric.as_deref(), Some("env.temp"));
    // Back to 28: cleared.
    publish(200, "27.5");
    assert!(wait_until(Duration::from_secs(10), || alarms(&db, false)
        .first()
        .is_some_and(|a| a.state == "cleared")));
    assert_eq!(alarms(&db, false).len(), 1);

    // Another site in a meeting receives lossy media (12 %) for 10 s: media degraded (the
    // built-in rule, untouched by this rules file); the meeting over, it clears.
    let site = "ct/v1/t/13/01/02/001/002/test/tm";
    let joined = |seq, loss| {
        batch(
            seq,
            &[(Metric::MeetingsJoined, "1"), (Metric::MediaLoss, loss)],
        )
    };
    publish_to(site, 300, joined(300, "12"));
    publish_to(site, 301, joined(301, "12.5"));
    let media = || {
        alarms(&db, false)
            .into_iter()
            .find(|a| a.kind == "media-degraded")
    };
    assert!(
        wait_until(Duration::from_secs(10), || media().is_some()),
        "{:?}",
        alarms(&db, false)
    );
    let m = media().unwrap();
    assert_eq!(
        (m.subject.as_str(), m.state.as_str(), m.metric.as_deref()),
        ("130102001002-test", "active", Some("media.loss"))
    );
    publish_to(site, 302, batch(302, &[(Metric::MeetingsJoined, "0")]));
    assert!(wait_until(Duration::from_secs(10), || media()
        .is_some_and(|a| a.state == "cleared")));
}

#[test]
fn a_duty_report_from_a_village_reaches_the_county_duty_office_and_its_ack_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Broker::start(BrokerKind::Mosquitto, d);
    let rules = d.join("rules.toml");
    std::fs::write(&rules, "").unwrap();
    let db = d.join("central.db");
    let central = central(&broker, &db, &rules, d);
    let id = "130102001001-main";
    let _box = Proc::spawn(
        &bin("cuntong-sim"),
        &[
            "terminal",
            "--id",
            id,
            "--broker",
            &broker.url,
            "--data-dir",
            d.join("box").to_str().unwrap(),
            "--interval",
            "2s",
            "--duty-button",
        ],
        d.join("box.log"),
    );
    let socket = d.join("box").join(id).join("status.sock");
    assert!(wait_until(Duration::from_secs(20), || sites(&db, None)
        .iter()
        .any(|s| s.online)));
    let operator = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--socket", socket.to_str().unwrap()]);
        run(&bin("cuntong-terminal"), &all)
    };
    let bad = operator(&["report", "--kind", "Flood!", "--text", "x"]);
    assert_eq!(bad.status.code(), Some(2), "bad input");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("report kind \"Flood!\""));
    ok(operator(&[
        "report",
        "--kind",
        "flood",
        "--text",
        "河堤渗水，需要支援",
    ]));
    let county = || {
        let out = run(
            &bin("cuntong"),
            &[
                "alarms",
                "--json",
                "--region",
                "130102",
                "--db",
                db.to_str().unwrap(),
            ],
        );
        serde_json::from_slice::<Vec<AlarmJson>>(&out.stdout).unwrap_or_default()
    };
    assert!(
        wait_until(Duration::from_secs(15), || county()
            .iter()
            .any(|a| a.kind == "duty-report")),
        "{}",
        central.log_text()
    );
    let report = county()
        .into_iter()
        .find(|a| a.kind == "duty-report")
        .unwrap();
    assert_eq!(report.severity, "critical");
    assert_eq!(report.subject, id);
    assert!(report.detail.contains("河堤渗水"), "{report:?}");
    assert!(
        report.detail.contains("duty office of 130102"),
        "{report:?}"
    );
    ok(run(
        &bin("cuntong"),
        &[
            "alarms",
            "ack",
            &report.id.to_string(),
            "--by",
            "县值班室",
            "--broker",
            &broker.url,
        ],
    ));
    let acked = || {
        let out = operator(&["status", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["duty_reports"][0]["acknowledged_by"] == "县值班室"
    };
    assert!(
        wait_until(Duration::from_secs(15), acked),
        "the box does not show the acknowledgement"
    );
    assert!(
        county()
            .iter()
            .any(|a| a.id == report.id && a.state == "cleared"),
        "acknowledged reports are done"
    );

    // Nobody at a keyboard: the box's duty button (active low) is pressed and held.
    let line = d.join("box").join(id).join("duty-button");
    std::fs::write(&line, "0").unwrap();
    assert!(
        wait_until(Duration::from_secs(15), || county()
            .iter()
            .any(|a| a.kind == "duty-report" && a.state == "active")),
        "the duty button raised no report: {}",
        central.log_text()
    );
    std::fs::write(&line, "1").unwrap();
    let pressed: Vec<AlarmJson> = county()
        .into_iter()
        .filter(|a| a.kind == "duty-report" && a.state == "active")
        .collect();
    assert_eq!(pressed.len(), 1, "one press, one report: {pressed:?}");
    assert_eq!(pressed[0].subject, id);
    assert_eq!(pressed[0].severity, "critical");
    assert!(pressed[0].detail.contains("duty button"), "{pressed:?}");
    let out = operator(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["duty_reports"][1]["kind"], "emergency", "{v}");
}

#[test]
fn before_a_meeting_every_invited_terminal_checks_itself_and_the_results_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Broker::start(BrokerKind::Mosquitto, d);
    let ca = d.join("ca");
    ok(run(
        &bin("cuntong"),
        &["ca", "init", "--dir", ca.to_str().unwrap()],
    ));
    let rules = d.join("rules.toml");
    std::fs::write(&rules, "").unwrap();
    let db = d.join("central.db");
    let _central = central(&broker, &db, &rules, d);
    let key = ca.join("command.pub");
    let _fleet = sim_fleet_with(
        &broker.url,
        "130102",
        3,
        d,
        "fleet",
        &["--command-key", key.to_str().unwrap()],
    );
    assert!(wait_until(Duration::from_secs(20), || sites(&db, None)
        .iter()
        .filter(|s| s.online)
        .count()
        == 3));
    let created = ok(run(
        &bin("cuntong"),
        &[
            "meeting",
            "create",
            "--title",
            "会前检查",
            "--invite",
            "130102",
            "--json",
            "--broker",
            &broker.url,
        ],
    ));
    let id = serde_json::from_str::<serde_json::Value>(&created).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = ok(run(
        &bin("cuntong"),
        &[
            "readiness",
            "--meeting",
            &id,
            "--ca",
            ca.to_str().unwrap(),
            "--broker",
            &broker.url,
            "--db",
            db.to_str().unwrap(),
            "--json",
        ],
    ));
    let rows: Vec<cuntong::readiness::ReadinessJson> = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.len(), 3, "{rows:?}");
    for r in &rows {
        assert_eq!(r.ready, Some(true), "{r:?}");
        let names: Vec<&str> = r.checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["camera", "microphone", "link", "clock", "disk"]);
    }
    let kept: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT count(*) FROM readiness WHERE ready = 1", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(kept, 3, "the results are kept in the store");
}
