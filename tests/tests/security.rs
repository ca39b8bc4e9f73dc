//! Provisioning and the broker's protection, against a real Mosquitto started with the
//! TLS and ACL configuration `cuntong acl` generates: a provisioned terminal reports over
//! mutual TLS; clients without a certificate or with another CA's are refused; a terminal's
//! credentials can neither write another terminal's topics nor read its commands.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use cuntong_e2e::{Proc, bin, free_port, mosquitto, run, sites, wait_until};

const A: &str = "130102001001-main";
const B: &str = "130102002001-main";
const B_TM: &str = "ct/v1/t/13/01/02/002/001/main/tm";
const B_CMD: &str = "ct/v1/t/13/01/02/002/001/main/cmd";
const A_CMD: &str = "ct/v1/t/13/01/02/001/001/main/cmd";

fn cuntong(args: &[&str]) {
    let out = run(&bin("cuntong"), args);
    assert!(
        out.status.success(),
        "cuntong {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn client(tool: &str, port: u16, ca: &Path, bundle: Option<&Path>, args: &[&str]) -> Output {
    let port = port.to_string();
    let mut all = vec![
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "--cafile",
        ca.to_str().unwrap(),
    ];
    let (cert, key);
    if let Some(b) = bundle {
        cert = b.join("cert.pem");
        key = b.join("key.pem");
        all.extend([
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ]);
    }
    all.extend_from_slice(args);
    run(Path::new(tool), &all)
}

struct Fleet {
    dir: tempfile::TempDir,
    port: u16,
    _broker: Proc,
}

impl Fleet {
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn ca(&self) -> PathBuf {
        self.path("ca/ca.pem")
    }

    /// Terminal A's bundle config, as a technician would use it, with this test's data
    /// directory and a fast sampling pace.
    fn terminal_config(&self) -> PathBuf {
        let cfg = self.path("a/terminal.toml");
        let text = std::fs::read_to_string(&cfg).unwrap().replace(
            "data_dir = \"/var/lib/cuntong\"",
            &format!("data_dir = {:?}", self.path("a-data")),
        );
        std::fs::write(
            &cfg,
            format!("{text}\n[telemetry]\nhealth_interval = \"1s\"\nbatch_age = \"1s\"\n"),
        )
        .unwrap();
        cfg
    }

    /// A CA, the broker's certificate, central and two terminals, the generated Mosquitto
    /// configuration, and Mosquitto running it as generated.
    fn provision() -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        // Mosquitto drops to its own user: it must be able to reach its files.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let d = |p: &str| dir.path().join(p).to_str().unwrap().to_owned();
        let port = free_port();
        let url = format!("mqtts://127.0.0.1:{port}");
        cuntong(&["ca", "init", "--dir", &d("ca")]);
        cuntong(&[
            "ca",
            "issue-server",
            "--ca",
            &d("ca"),
            "--name",
            "127.0.0.1",
            "--out",
            &d("server"),
        ]);
        for (id, out) in [("central", "central"), (A, "a"), (B, "b")] {
            cuntong(&[
                "provision",
                id,
                "--ca",
                &d("ca"),
                "--broker",
                &url,
                "--out",
                &d(out),
            ]);
        }
        cuntong(&[
            "acl",
            "--ca",
            &d("ca"),
            "--format",
            "mosquitto",
            "--listen",
            &port.to_string(),
            "--server",
            &d("server"),
            "--out",
            &d("broker"),
        ]);
        let broker = Proc::spawn(
            &mosquitto(),
            &["-c", &d("broker/mosquitto.conf")],
            dir.path().join("mosquitto.log"),
        );
        assert!(
            wait_until(Duration::from_secs(10), || std::net::TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "{}",
            broker.log_text()
        );
        Fleet {
            dir,
            port,
            _broker: broker,
        }
    }
}

#[test]
fn a_provisioned_terminal_reports_over_mutual_tls() {
    let f = Fleet::provision();
    let db = f.path("central.db");
    let _central = Proc::spawn(
        &bin("cuntong"),
        &[
            "central",
            "--broker",
            &format!("mqtts://127.0.0.1:{}", f.port),
            "--tls",
            f.path("central").to_str().unwrap(),
            "--db",
            db.to_str().unwrap(),
        ],
        f.path("central.log"),
    );
    // The field procedure: the bundle's own terminal.toml, with this test's data directory.
    let cfg = f.terminal_config();
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

/// A `mosquitto_sub` running in the background, its output in a file.
struct Listener {
    out: PathBuf,
    _proc: Proc,
}

impl Listener {
    fn start(f: &Fleet, bundle: &str, topics: &[&str], name: &str) -> Listener {
        let out = f.path(&format!("{name}.out"));
        let (port, ca, bundle) = (f.port.to_string(), f.ca(), f.path(bundle));
        let (cert, key) = (bundle.join("cert.pem"), bundle.join("key.pem"));
        let mut args = vec!["-h", "127.0.0.1", "-p", &port, "-q", "1"];
        args.extend(["--cafile", ca.to_str().unwrap()]);
        args.extend([
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ]);
        for t in topics {
            args.extend(["-t", t]);
        }
        let proc = Proc::spawn(Path::new("mosquitto_sub"), &args, out.clone());
        Listener { out, _proc: proc }
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Publishes `marker` (with a bundle allowed to) until this listener has received it, so
    /// everything published before has been through the broker too.
    fn sync(&self, f: &Fleet, bundle: &str, topic: &str, marker: &str) {
        let got = wait_until(Duration::from_secs(10), || {
            let _ = client(
                "mosquitto_pub",
                f.port,
                &f.ca(),
                Some(&f.path(bundle)),
                &["-t", topic, "-m", marker, "-q", "1"],
            );
            self.text().contains(marker)
        });
        assert!(got, "{marker} never arrived: {}", self.text());
    }
}

#[test]
fn a_terminal_cannot_write_or_read_another_terminals_topics() {
    let f = Fleet::provision();
    let publish = |bundle: &str, topic: &str, msg: &str| {
        let out = client(
            "mosquitto_pub",
            f.port,
            &f.ca(),
            Some(&f.path(bundle)),
            &["-t", topic, "-m", msg, "-q", "1"],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };

    // Central listens on B's telemetry. A's forgery is published (and acknowledged: MQTT 3.1.1
    // has no refusal), then B publishes: B's message arrives, A's never does.
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
    let spy = Listener::start(&f, "a", &[B_CMD, A_CMD], "a-sub");
    owner.sync(&f, "central", B_CMD, "ping-b1");
    spy.sync(&f, "central", A_CMD, "ping-a1");
    publish("central", B_CMD, "reboot");
    owner.sync(&f, "central", B_CMD, "ping-b2");
    spy.sync(&f, "central", A_CMD, "ping-a2");
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
    let url = format!("mqtts://127.0.0.1:{}", f.port);
    let central_bundle = f.path("central");
    let _central = Proc::spawn(
        &bin("cuntong"),
        &[
            "central",
            "--broker",
            &url,
            "--tls",
            central_bundle.to_str().unwrap(),
            "--db",
            db.to_str().unwrap(),
        ],
        f.path("central.log"),
    );
    let cfg = f.terminal_config();

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

    let cmd = |words: &[&str]| {
        let mut args = vec!["cmd", A];
        args.extend_from_slice(words);
        let ca = d("ca");
        args.extend([
            "--ca",
            &ca,
            "--broker",
            &url,
            "--tls",
            central_bundle.to_str().unwrap(),
            "--wait",
            "10s",
            "--json",
        ]);
        let out = run(&bin("cuntong"), &args);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        (
            out.status.success(),
            v[0]["output"].as_str().unwrap_or("").to_owned(),
        )
    };

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
