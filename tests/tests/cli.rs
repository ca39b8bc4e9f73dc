//! The binaries' contracts with people and scripts: bad input gets one line naming the value
//! and exit code 2; the technician's `check` and `status` tell the truth.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cuntong_e2e::{Broker, BrokerKind, Proc, bin, run, wait_until};

fn assert_usage_error(program: &str, args: &[&str], names: &str) {
    let out = run(&bin(program), args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{program} {args:?}: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line expected: {stderr}"
    );
    assert!(stderr.contains(names), "{stderr:?} should name {names:?}");
}

#[test]
fn bad_arguments_get_one_line_naming_the_value_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("x.db");
    let db = db.to_str().unwrap();
    assert_usage_error("cuntong", &["sites", "--db", db, "--region", "13x"], "13x");
    assert_usage_error(
        "cuntong",
        &["sites", "--db", db, "--region", "13010"],
        "13010",
    );
    assert_usage_error(
        "cuntong",
        &["telemetry", "--db", db, "--terminal", "130102-main"],
        "130102-main",
    );
    assert_usage_error(
        "cuntong",
        &[
            "telemetry",
            "--db",
            db,
            "--terminal",
            "130102001001-main",
            "--since",
            "soon",
        ],
        "soon",
    );
    assert_usage_error(
        "cuntong",
        &["central", "--broker", "http://x", "--db", db],
        "http://x",
    );
    assert_usage_error("cuntong", &["demo", "--duration", "forever"], "forever");
    assert_usage_error(
        "cuntong-sim",
        &["fleet", "--region", "1", "--count", "2"],
        "\"1\"",
    );
    assert_usage_error(
        "cuntong-sim",
        &["terminal", "--id", "130102001001-Main", "--data-dir", db],
        "130102001001-Main",
    );
}

#[test]
fn a_bad_terminal_config_names_the_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("terminal.toml");
    std::fs::write(
        &cfg,
        "id = \"130102001001-main\"\nbroker = \"mqtt://127.0.0.1:1\"\ndata_dir = \"/tmp\"\nkeep_alive = \"often\"\n",
    )
    .unwrap();
    let out = run(
        &bin("cuntong-terminal"),
        &["--config", cfg.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("keep_alive"), "{stderr}");
    assert!(stderr.contains("often"), "{stderr}");
}

fn write_config(dir: &std::path::Path, broker: &str, sensor: bool) -> std::path::PathBuf {
    let cfg = dir.join("terminal.toml");
    let mut text = format!(
        "id = \"130102001001-main\"\nbroker = \"{broker}\"\ndata_dir = \"{}\"\nkeep_alive = \"5s\"\n\n[telemetry]\nhealth_interval = \"1s\"\nbatch_age = \"1s\"\n",
        dir.join("data").display()
    );
    if sensor {
        text.push_str(
            "\n[[sensor]]\nkind = \"sht3x\"\nbus = \"/dev/i2c-no-such-bus\"\ninterval = \"1s\"\n",
        );
    }
    std::fs::write(&cfg, text).unwrap();
    cfg
}

#[test]
fn check_passes_with_a_broker_and_fails_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(BrokerKind::Embedded, dir.path());
    let cfg = write_config(dir.path(), &broker.url, false);
    let out = run(
        &bin("cuntong-terminal"),
        &["check", "--config", cfg.to_str().unwrap()],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.lines().all(|l| l.starts_with("PASS")), "{stdout}");
    assert!(stdout.lines().any(|l| l.contains("broker")), "{stdout}");

    let dead = format!("mqtt://127.0.0.1:{}", cuntong_e2e::free_port());
    let cfg = write_config(dir.path(), &dead, true);
    let out = run(
        &bin("cuntong-terminal"),
        &[
            "check",
            "--config",
            cfg.to_str().unwrap(),
            "--timeout",
            "2s",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let fail: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert_eq!(fail.len(), 2, "{stdout}");
    assert!(fail.iter().any(|l| l.contains("sensor sht3x@0x44")));
    assert!(
        fail.iter()
            .any(|l| l.contains("broker") && l.contains(&dead))
    );
}

#[test]
fn status_reports_the_running_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(BrokerKind::Embedded, dir.path());
    let cfg = write_config(dir.path(), &broker.url, true);
    let cfg = cfg.to_str().unwrap();
    let mut daemon = Proc::spawn(
        &bin("cuntong-terminal"),
        &["--config", cfg],
        dir.path().join("t.log"),
    );
    let mut report = serde_json::Value::Null;
    let published = wait_until(Duration::from_secs(20), || {
        let out = run(
            &bin("cuntong-terminal"),
            &["status", "--config", cfg, "--json"],
        );
        if !out.status.success() {
            return false;
        }
        report = serde_json::from_slice(&out.stdout).unwrap();
        report["link"]["connected"] == true
            && report["link"]["published"].as_u64() >= Some(2)
            && report["latest"]["uptime"].as_f64().is_some()
    });
    assert!(published, "{report:#}\n{}", daemon.log_text());
    assert_eq!(report["terminal"], "130102001001-main");
    assert!(report["latest"]["uptime"].as_f64().is_some(), "{report:#}");
    let sensor = &report["sensors"][0];
    assert_eq!(sensor["name"], "sht3x@0x44");
    assert_eq!(sensor["ok"], false);
    assert!(
        sensor["last_error"]
            .as_str()
            .unwrap()
            .contains("/dev/i2c-no-such-bus")
    );

    let human = run(&bin("cuntong-terminal"), &["status", "--config", cfg]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("connected"), "{text}");
    assert!(text.contains("FAIL"), "{text}");

    let status = daemon.terminate(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "daemon did not stop cleanly"
    );
}
