//! Provisioning and the broker's protection, against a real Mosquitto started with the
//! TLS and ACL configuration `cuntong acl` generates: a provisioned terminal reports over
//! mutual TLS; clients without a certificate or with another CA's are refused; a terminal's
//! credentials can neither write another terminal's topics nor read its commands, nor take
//! over another client's session; revoked certificates are refused after a reload; a waiting
//! command survives a broker restart; no message a box sends cuts anyone else's link or stays
//! retained as junk.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use cuntong_e2e::{
    Broker, BrokerKind, Proc, bin, free_port, ingest_counters, run, sites, wait_until,
};

mod fleet;

use fleet::*;

#[test]
fn a_provisioned_terminal_reports_over_mutual_tls() {
    let f = Fleet::provision();
    let db = f.path("central.db");
    let _central = f.central(&db);
    // The field procedure: the bundle's own terminal.toml, with this test's data directory.
    let cfg = f.terminal_config("a");
    let terminal = Proc::spawn(
        &bin("cuntong-sim"),
        &["terminal", "--config", cfg.to_str().unwrap()],
        f.path("a.log"),
    );
    assert!(
        wait_until(Duration::from_secs(30), || sites(&db, None).iter().any(
            |s| s.terminal == A && s.online && s.metrics.contains_key("uptime")
        )),
        "{}",
        terminal.log_text()
    );
    // The technician's check passes against the TLS broker with the bundle alone.
    let check = run(
        &bin("cuntong-terminal"),
        &["check", "--config", cfg.to_str().unwrap()],
    );
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{text}");
    assert!(text.contains("PASS  certificates"), "{text}");
}

#[test]
fn clients_without_a_fleet_certificate_are_refused() {
    let f = Fleet::provision();
    let pub_ = |bundle: Option<&Path>| {
        client(
            "mosquitto_pub",
            f.port,
            &f.ca(),
            bundle,
            &["-t", "ct/v1/x", "-m", "x", "-q", "1"],
        )
    };
    assert!(
        pub_(Some(&f.path("a"))).status.success(),
        "the fleet's own certificate works"
    );
    assert!(!pub_(None).status.success(), "no certificate: refused");
    // A certificate from another CA, for the same terminal id.
    let d = |p: &str| f.path(p).to_str().unwrap().to_owned();
    cuntong(&["ca", "init", "--dir", &d("rogue-ca")]);
    cuntong(&[
        "provision",
        A,
        "--ca",
        &d("rogue-ca"),
        "--broker",
        "mqtts://127.0.0.1:1",
        "--out",
        &d("rogue"),
    ]);
    assert!(
        !pub_(Some(&f.path("rogue"))).status.success(),
        "another CA: refused"
    );
}

#[test]
fn a_terminal_cannot_write_or_read_another_terminals_topics() {
    let f = Fleet::provision();
    let publish = |bundle: &str, topic: &str, msg: &str| {
        assert!(
            f.publish(bundle, &["-t", topic, "-m", msg, "-q", "1"]),
            "{bundle} could not publish on {topic}"
        );
    };

    // Central listens on B's telemetry. A's forgery is published (and acknowledged: MQTT 3.1.1
    // has no refusal), then B publishes: B's message arrives, A's never does.
    // (Each client with an identity of its own: the broker keeps one session per identity.)
    let central = Listener::start(&f, "central", &[B_TM], "central-sub");
    central.sync(&f, "b", B_TM, "ready-1");
    publish("a", B_TM, "forged by A");
    central.sync(&f, "b", B_TM, "ready-2");
    assert!(
        !central.text().contains("forged"),
        "A wrote into B's topic: {}",
        central.text()
    );

    // A command for B: B receives it; A, subscribed to B's command topic (and to its own, to
    // know its subscription is in place), does not.
    let owner = Listener::start(&f, "b", &[B_CMD], "b-sub");
    // Nor through a shared subscription of the same topic.
    let shared_spy = format!("$share/spy/{B_CMD}");
    let spy = Listener::start(&f, "a", &[B_CMD, &shared_spy, A_CMD], "a-sub");
    owner.sync(&f, OPS, B_CMD, "ping-b1");
    spy.sync(&f, OPS, A_CMD, "ping-a1");
    publish(OPS, B_CMD, "reboot");
    owner.sync(&f, OPS, B_CMD, "ping-b2");
    spy.sync(&f, OPS, A_CMD, "ping-a2");
    assert!(owner.text().contains("reboot"));
    assert!(
        !spy.text().contains("reboot"),
        "A read B's commands: {}",
        spy.text()
    );
    assert!(
        !spy.text().contains("ping-b"),
        "A read B's commands: {}",
        spy.text()
    );
}

#[test]
fn two_central_instances_with_their_own_identities_share_ingest_under_tls_and_the_acl() {
    let f = Fleet::provision();
    // A second central instance gets an identity of its own; the ACL generated after it
    // lets both subscribe their shared group.
    f.provision_as("central-b", "central-b", &[]);
    f.regenerate();
    f.reload_broker();
    let pg = cuntong_e2e::postgres::Postgres::shared();
    let db = pg.fresh_database();
    let start = |identity: &str| {
        Proc::spawn(
            &bin("cuntong"),
            &[
                "central",
                "--broker",
                &f.url(),
                "--tls",
                &f.d(identity),
                "--db",
                &db,
                "--share-ingest",
                "central",
            ],
            f.path(&format!("{identity}.log")),
        )
    };
    let a = start("central");
    let b = start("central-b");
    let _ta = f.terminal("a", "a.log");
    let _tb = f.terminal("b", "b.log");
    // Each instance stores a part of what the two boxes send.
    assert!(
        wait_until(Duration::from_secs(40), || {
            matches!(
                (ingest_counters(&a.log_text()), ingest_counters(&b.log_text())),
                (Some((sa, _)), Some((sb, _))) if sa > 0 && sb > 0
            )
        }),
        "{}\n{}",
        a.log_text(),
        b.log_text()
    );
    for p in [&a, &b] {
        let log = p.log_text();
        assert!(!log.contains("refused a subscription"), "{log}");
    }
    // Shared, not copied: a message given to both would count as a duplicate at one of them.
    let (sa, da) = ingest_counters(&a.log_text()).unwrap_or_default();
    let (sb, db_) = ingest_counters(&b.log_text()).unwrap_or_default();
    assert!(
        (da + db_) * 2 < sa + sb,
        "stored {sa} + {sb}, duplicates {da} + {db_}"
    );
    // Both boxes are online with their data, whichever instance stored it.
    let rows = run(&bin("cuntong"), &["sites", "--json", "--db", &db]);
    let sites: Vec<cuntong_e2e::Site> = serde_json::from_slice(&rows.stdout).unwrap();
    for id in [A, B] {
        assert!(
            sites
                .iter()
                .any(|s| s.terminal == id && s.online && s.metrics.contains_key("uptime")),
            "{id}: {sites:?}"
        );
    }
}

/// `cuntong events --json` rows, strictly.
fn events(db: &Path, security_only: bool) -> Vec<cuntong::view::EventJson> {
    let mut args = vec!["events", "--json", "--db", db.to_str().unwrap()];
    if security_only {
        args.push("--security");
    }
    let out = run(&bin("cuntong"), &args);
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

#[test]
fn tls_failures_remote_configuration_and_reboots_reach_central_staff() {
    let f = Fleet::provision();
    let db = f.path("central.db");
    let _central = f.central(&db);
    let cfg = f.terminal_config("a");

    // The box trusts the wrong CA (a bad bundle): every handshake with the broker fails.
    let d = |p: &str| f.path(p).to_str().unwrap().to_owned();
    cuntong(&["ca", "init", "--dir", &d("rogue-ca")]);
    let genuine = std::fs::read(f.path("a/ca.pem")).unwrap();
    std::fs::copy(f.path("rogue-ca/ca.pem"), f.path("a/ca.pem")).unwrap();
    let socket = f.path("a-data/status.sock");
    let status = || {
        let out = run(
            &bin("cuntong-terminal"),
            &["status", "--json", "--socket", socket.to_str().unwrap()],
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    let mut terminal = Proc::spawn(
        &bin("cuntong-sim"),
        &["terminal", "--config", cfg.to_str().unwrap()],
        f.path("a-1.log"),
    );
    assert!(
        wait_until(Duration::from_secs(20), || status()["recent_errors"]
            .to_string()
            .contains("TLS failure")),
        "{}",
        terminal.log_text()
    );
    // The log names it too, once.
    let said = format!("cannot reach the broker at {}: TLS failure: ", f.url());
    assert_eq!(
        terminal.log_text().matches(&said).count(),
        1,
        "{}",
        terminal.log_text()
    );
    assert!(terminal.terminate(Duration::from_secs(10)).is_some());

    // The technician puts the right CA back: the terminal connects and reports what happened.
    std::fs::write(f.path("a/ca.pem"), genuine).unwrap();
    let terminal = Proc::spawn(
        &bin("cuntong-sim"),
        &["terminal", "--config", cfg.to_str().unwrap()],
        f.path("a-2.log"),
    );
    assert!(
        wait_until(Duration::from_secs(30), || {
            let kinds: Vec<String> = events(&db, true).into_iter().map(|e| e.kind).collect();
            kinds.contains(&"tls-failure".to_owned()) && kinds.contains(&"files-changed".to_owned())
        }),
        "{:?}\n{}",
        events(&db, false),
        terminal.log_text()
    );
    let security = events(&db, true);
    let tls = security.iter().find(|e| e.kind == "tls-failure").unwrap();
    assert_eq!(tls.terminal, A);
    assert!(tls.detail.contains("certificate"), "{tls:?}");
    assert_eq!(
        security.iter().filter(|e| e.kind == "tls-failure").count(),
        1,
        "one event per episode, not one per retry: {security:?}"
    );
    assert!(
        security
            .iter()
            .any(|e| e.kind == "files-changed" && e.detail.contains("ca.pem"))
    );

    let cmd = |words: &[&str]| f.cmd(A, words, "10s");

    // Remote configuration: saved in place, validated, applied; identity is not settable.
    let (ok, output) = cmd(&["config-set", "telemetry.health_interval=2s"]);
    assert!(ok, "{output}");
    assert!(output.contains("applied now"), "{output}");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("health_interval = \"2s\""), "{text}");
    let (ok, output) = cmd(&["config-set", "telemetry.health_interval=soon"]);
    assert!(
        !ok && output.contains("telemetry.health_interval"),
        "{output}"
    );
    let (ok, output) = cmd(&["config-set", "id=130102009009-main"]);
    assert!(!ok && output.contains("provisioning"), "{output}");

    // Reboot: answered, then the box goes down in order and comes back.
    let started = |events: &[cuntong::view::EventJson]| {
        events
            .iter()
            .filter(|e| e.terminal == A && e.kind == "started")
            .count()
    };
    let before = started(&events(&db, false));
    let (ok, output) = cmd(&["reboot"]);
    assert!(ok && output.contains("reboot"), "{output}");
    assert!(
        wait_until(Duration::from_secs(30), || started(&events(&db, false))
            > before),
        "{}",
        terminal.log_text()
    );
    // A sanctioned change and an orderly reboot are not security events.
    let after = events(&db, true);
    assert_eq!(
        after
            .iter()
            .filter(|e| e.kind == "files-changed" || e.kind == "unexpected-restart")
            .count(),
        1,
        "only the CA swap: {after:?}"
    );
}

#[test]
fn a_box_using_another_clients_id_does_not_take_over_its_session() {
    let f = Fleet::provision();
    let db = f.path("central.db");
    let central = f.central(&db);
    let b = f.terminal("b", "b.log");
    let connected_once =
        |v: &serde_json::Value| v["link"]["connected"] == true && v["link"]["connects"] == 1;
    assert!(
        wait_until(Duration::from_secs(30), || connected_once(&f.status("b"))
            && sites(&db, None).iter().any(|s| s.terminal == B && s.online)),
        "{}",
        b.log_text()
    );
    // Box A connects, again and again, claiming B's client id, central's and the operator's.
    for _ in 0..3 {
        for id in [B, "central", OPS, "central-1"] {
            assert!(f.publish("a", &["-i", id, "-t", A_PRESENCE, "-m", "", "-q", "1"]));
        }
    }
    // A round trip through B and the operator's identity: B answers on its first connection,
    // and central never lost the broker.
    let (ok, output) = f.cmd(B, &["ping"], "10s");
    assert!(ok && output == "pong", "{output}");
    let status = f.status("b");
    assert!(
        connected_once(&status),
        "B was kicked off: {}",
        status["link"]
    );
    let log = central.log_text();
    assert!(
        !log.contains("lost the broker"),
        "central was kicked off:\n{log}"
    );
}

#[test]
fn a_revoked_certificate_is_refused_after_a_reload_and_its_replacement_is_accepted() {
    let f = Fleet::provision();
    let a_alive = || f.publish("a", &["-t", A_PRESENCE, "-m", "", "-q", "1"]);
    assert!(a_alive(), "the first certificate works");
    // A is replaced (a new box, the old one stolen); B is taken out of service.
    f.provision_as(A, "a-new", &["--force"]);
    let out = run(&bin("cuntong"), &["ca", "revoke", B, "--ca", &f.d("ca")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    f.regenerate();
    f.reload_broker();
    let b_alive = || f.publish("b", &["-t", B_TM, "-m", "", "-q", "1"]);
    assert!(
        !a_alive() && !b_alive(),
        "old certificates still accepted after the reload"
    );
    assert!(f.publish("a-new", &["-t", A_PRESENCE, "-m", "", "-q", "1"]));
    // Revoking an id that was never issued, or a bad id, says so.
    let out = run(
        &bin("cuntong"),
        &["ca", "revoke", "130102009009-main", "--ca", &f.d("ca")],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("never provisioned"));
    let out = run(
        &bin("cuntong"),
        &["ca", "revoke", "nobody", "--ca", &f.d("ca")],
    );
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn central_says_when_a_links_identity_is_refused_while_its_ingest_link_works() {
    let f = Fleet::provision();
    // Central's bundle carries the control link's identity of a central revoked since.
    f.provision_as("central-old", "central-old", &[]);
    let out = run(
        &bin("cuntong"),
        &["ca", "revoke", "central-old", "--ca", &f.d("ca")],
    );
    assert!(out.status.success(), "{out:?}");
    f.regenerate();
    f.reload_broker();
    assert!(
        !f.publish(
            "central-old/control",
            &["-t", "ct/v1/x", "-m", "", "-q", "1"]
        ),
        "the revoked identity is still accepted"
    );
    for file in ["cert.pem", "key.pem"] {
        std::fs::copy(
            f.path(&format!("central-old/control/{file}")),
            f.path(&format!("central/control/{file}")),
        )
        .unwrap();
    }
    let db = f.path("central.db");
    let central = f.central(&db);
    let _a = f.terminal("a", "a.log");
    // The fleet's records are stored all the same (the ingest link is central's own identity),
    // and central says, once, that the control link is refused.
    let said = "the control link cannot reach the broker at mqtts://";
    assert!(
        wait_until(Duration::from_secs(40), || {
            let log = central.log_text();
            log.contains(said) && ingest_counters(&log).is_some_and(|(stored, _)| stored > 0)
        }),
        "{}",
        central.log_text()
    );
    // Said by central, not again by the link.
    let log = central.log_text();
    assert_eq!(log.matches(said).count(), 1, "{log}");
    assert_eq!(log.matches("cannot reach the broker").count(), 1, "{log}");
}

#[test]
fn a_command_waiting_for_an_offline_box_survives_a_broker_restart() {
    let mut f = Fleet::provision();
    // A is offline: the command waits, retained, at the broker.
    let (ok, _) = f.cmd(A, &["ping"], "1s");
    assert!(!ok, "nobody answered");
    f.restart_broker();
    let answers = Listener::start(&f, "central", &[A_RES], "a-res");
    answers.sync(&f, OPS, A_RES, "listening");
    let a = f.terminal("a", "a.log");
    assert!(
        wait_until(Duration::from_secs(30), || answers.text().contains("pong")),
        "the command did not survive the restart: {:?}\n{}",
        answers.text(),
        a.log_text()
    );
}

#[test]
fn oversized_or_junk_messages_from_a_box_cut_no_link_and_stay_retained_nowhere() {
    let f = Fleet::provision();
    let db = f.path("central.db");
    let central = f.central(&db);
    let b = f.terminal("b", "b.log");
    let b_seen = || {
        sites(&db, None)
            .into_iter()
            .find(|s| s.terminal == B)
            .and_then(|s| s.last_seen)
    };
    let confirmed = || f.status("b")["outbox"]["confirmed"]["telemetry"].as_u64();
    // B's data is being confirmed (its start of numbering has reached central) before A acts.
    let first = || f.status("b")["outbox"]["first_seq"]["telemetry"].as_u64();
    assert!(
        wait_until(Duration::from_secs(30), || b_seen().is_some()
            && first().is_some_and(|s| confirmed() >= Some(s))),
        "{}",
        b.log_text()
    );
    // Box A leaves more than the protocol allows, retained, on its presence, a meeting and a
    // command topic, and a small retained junk on its presence.
    // Far over (the broker disconnects the sender), and just over the payload limit (the
    // broker drops the message).
    let (big, just_over) = (f.path("big"), f.path("just-over"));
    std::fs::write(&big, vec![b'x'; 200 * 1024]).unwrap();
    std::fs::write(&just_over, vec![b'z'; 64 * 1024 + 100]).unwrap();
    for topic in [A_PRESENCE, A_EVENTS, COUNTY_MEETING, A_CMD] {
        for file in [&big, &just_over] {
            let _ = f.publish(
                "a",
                &["-t", topic, "-f", file.to_str().unwrap(), "-r", "-q", "1"],
            );
        }
    }
    assert!(f.publish("a", &["-t", A_PRESENCE, "-m", "junk", "-r", "-q", "1"]));
    // Central keeps storing and confirming B's data, B stays on its first connection.
    let (before, confirmed_before) = (b_seen(), confirmed());
    assert!(
        wait_until(Duration::from_secs(20), || b_seen() > before
            && confirmed() > confirmed_before),
        "central stopped storing or confirming: {}",
        central.log_text()
    );
    let status = f.status("b");
    assert_eq!(status["link"]["connects"], 1, "{}", status["link"]);
    // Nothing of it is retained for a later subscriber (central clears the junk).
    let retained = || {
        let out = client(
            "mosquitto_sub",
            f.port,
            &f.ca(),
            Some(&f.path(OPS)),
            &[
                "-t",
                A_PRESENCE,
                "-t",
                A_EVENTS,
                "-t",
                COUNTY_MEETING,
                "-t",
                A_CMD,
                "--retained-only",
                "-W",
                "2",
                "-v",
            ],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        wait_until(Duration::from_secs(15), || {
            let r = retained();
            !r.contains("junk") && !r.contains("xxxx") && !r.contains("zzzz")
        }),
        "retained: {:?}",
        retained()
            .lines()
            .map(|l| l.chars().take(80).collect::<String>())
            .collect::<Vec<_>>()
    );
    let log = central.log_text();
    assert!(!log.contains("lost the broker"), "{log}");
}

#[test]
fn a_message_larger_than_the_protocol_allows_is_refused_without_cutting_the_link() {
    // A broker that limits nothing (not one we configure): links must still hold.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Broker::start(BrokerKind::Mosquitto, d);
    let db = d.join("central.db");
    let central = cuntong_e2e::central(&broker, &db, d);
    let data = d.join("t");
    let terminal = Proc::spawn(
        &bin("cuntong-sim"),
        &[
            "terminal",
            "--id",
            A,
            "--broker",
            &broker.url,
            "--data-dir",
            data.to_str().unwrap(),
            "--interval",
            "1s",
        ],
        d.join("terminal.log"),
    );
    let socket = data.join(A).join("status.sock");
    let status = || {
        let out = run(
            &bin("cuntong-terminal"),
            &["status", "--json", "--socket", socket.to_str().unwrap()],
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    let last_seen = || sites(&db, None).into_iter().find_map(|s| s.last_seen);
    assert!(
        wait_until(Duration::from_secs(30), || status()["link"]["connected"]
            == true
            && last_seen().is_some()),
        "{}\n{}",
        terminal.log_text(),
        central.log_text()
    );
    let big = d.join("big");
    std::fs::write(&big, vec![b'x'; 200 * 1024]).unwrap();
    let port = broker.port.to_string();
    for topic in [A_PRESENCE, A_CMD, COUNTY_MEETING] {
        let out = run(
            Path::new("mosquitto_pub"),
            &[
                "-p",
                &port,
                "-t",
                topic,
                "-f",
                big.to_str().unwrap(),
                "-r",
                "-q",
                "1",
            ],
        );
        assert!(out.status.success());
    }
    // The terminal refuses both of its own, central the presence: counted, and logged.
    assert!(
        wait_until(
            Duration::from_secs(10),
            || status()["link"]["refused_oversized"] == 2
                && central.log_text().contains("refused a message larger")
        ),
        "{}\n{}",
        status(),
        central.log_text()
    );
    // Both on their first connection; central still stores what the terminal sends.
    let before = last_seen();
    assert!(wait_until(Duration::from_secs(20), || last_seen() > before));
    assert_eq!(status()["link"]["connects"], 1, "{}", status());
    let log = central.log_text();
    assert!(!log.contains("lost the broker"), "{log}");
}

/// Runs `program args` with `CUNTONG_LOG` set to `log` (or unset: the default level) until
/// `done` holds for its output (at most 20 s); returns the output.
fn output_until(
    program: &Path,
    args: &[&str],
    log: Option<&str>,
    done: impl Fn(&str) -> bool,
) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.log");
    let file = std::fs::File::create(&path).unwrap();
    let mut command = std::process::Command::new(program);
    command
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    match log {
        Some(l) => command.env("CUNTONG_LOG", l),
        None => command.env_remove("CUNTONG_LOG"),
    };
    let mut child = command.spawn().unwrap();
    let text = || std::fs::read_to_string(&path).unwrap_or_default();
    wait_until(Duration::from_secs(20), || done(&text()));
    let _ = child.kill();
    let _ = child.wait();
    text()
}

#[test]
fn central_and_terminals_say_once_why_they_cannot_reach_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("mqtt://127.0.0.1:{}", free_port()); // nothing listens there
    let db = dir.path().join("central.db");
    let cfg = dir.path().join("terminal.toml");
    std::fs::write(
        &cfg,
        format!(
            "id = \"{A}\"\nbroker = \"{url}\"\ndata_dir = {:?}\n",
            dir.path().join("data")
        ),
    )
    .unwrap();
    let line = format!("cannot reach the broker at {url}: connection refused");
    let central = ["central", "--broker", &url, "--db", db.to_str().unwrap()];
    let terminal = ["--config", cfg.to_str().unwrap()];
    for (program, args) in [
        (bin("cuntong"), &central[..]),
        (bin("cuntong-terminal"), &terminal[..]),
    ] {
        // At the default level, a person is told.
        let text = output_until(&program, args, None, |t| t.contains(&line));
        assert!(text.contains(&line), "{program:?}: {text}");
        // And once: after several retries (seen at debug level), still one line.
        let debug = "info,cuntong_terminal::link=debug";
        let text = output_until(&program, args, Some(debug), |t| {
            t.matches("connect failed; retrying").count() >= 3
        });
        assert!(
            text.matches("connect failed; retrying").count() >= 3,
            "{text}"
        );
        assert_eq!(text.matches("cannot reach the broker").count(), 1, "{text}");
    }
}

#[test]
fn commands_to_a_tls_broker_without_a_bundle_say_so_before_connecting() {
    for args in [
        vec!["cmd", A, "ping", "--ca", "/nonexistent"],
        vec!["alarms", "ack", "1", "--by", "someone"],
    ] {
        let mut all = args.clone();
        all.extend(["--broker", "mqtts://127.0.0.1:1"]);
        let out = run(&bin("cuntong"), &all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{all:?}: {err}");
        assert!(
            err.contains("--broker \"mqtts://127.0.0.1:1\" and --tls go together"),
            "{all:?}: {err}"
        );
    }
}
