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
fn a_fleet_larger_than_the_processs_open_files_allow_is_refused_before_it_starts() {
    // Under a limit of 1,000 open files: a simulator holds two a terminal (436 fit beside
    // the reserve), the demo three a site (its broker holds the other end: 290 fit).
    for (program, args, most) in [
        (
            "cuntong-sim",
            "fleet --region 1301 --count 600 --broker mqtt://127.0.0.1:9",
            436,
        ),
        ("cuntong", "demo --sites 400 --listen 127.0.0.1:0", 290),
    ] {
        let script = format!("ulimit -n 1000 && exec {} {args}", bin(program).display());
        let out = run(std::path::Path::new("sh"), &["-c", &script]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{program} {args}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("may hold 1000 (`ulimit -Hn`)")
                && stderr.contains(&format!("at most {most} terminals each")),
            "{stderr}"
        );
    }
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

#[test]
fn a_terminal_config_duration_past_100_years_names_the_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("terminal.toml");
    std::fs::write(
        &cfg,
        "id = \"130102001001-main\"\nbroker = \"mqtt://127.0.0.1:1\"\ndata_dir = \"/tmp\"\n\n[telemetry]\nhealth_interval = \"99999999999h\"\n",
    )
    .unwrap();
    // `check` (bounded: it gives up on the broker after a second) validates as the daemon.
    let out = run(
        &bin("cuntong-terminal"),
        &[
            "--config",
            cfg.to_str().unwrap(),
            "check",
            "--timeout",
            "1s",
        ],
    );
    let text = String::from_utf8_lossy(&out.stderr) + String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("health_interval"), "{text}");
    assert!(text.contains("99999999999h"), "{text}");
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

/// An MQTT 3.1.1 CONNECT's answer from whatever listens at `addr`: the CONNACK's 4 bytes.
fn mqtt_connack(addr: std::net::SocketAddr) -> [u8; 4] {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Fixed header, "MQTT" level 4, clean session, keep-alive 60 s, client id "p".
    s.write_all(&[
        0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 1, b'p',
    ])
    .unwrap();
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).unwrap();
    ack
}

#[test]
fn listeners_on_port_0_report_the_port_they_bound_and_serve_there() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Proc::spawn(
        &bin("cuntong"),
        &["broker", "--listen", "127.0.0.1:0"],
        d.join("broker.log"),
    );
    let mqtt = broker.bound("broker listening on ");
    assert_ne!(mqtt.port(), 0);
    assert_eq!(mqtt_connack(mqtt), [0x20, 2, 0, 0], "{}", broker.log_text());

    let control = d.join("link.sock");
    let proxy = Proc::spawn(
        &bin("cuntong-sim"),
        &[
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &mqtt.to_string(),
            "--control",
            control.to_str().unwrap(),
        ],
        d.join("proxy.log"),
    );
    let through = proxy.bound("proxy listening on ");
    assert_ne!(through.port(), 0);
    assert_eq!(through.ip(), mqtt.ip());
    // The broker answers through the proxy.
    assert_eq!(
        mqtt_connack(through),
        [0x20, 2, 0, 0],
        "{}",
        proxy.log_text()
    );

    let db = d.join("central.db");
    let central = Proc::spawn(
        &bin("cuntong"),
        &[
            "central",
            "--broker",
            &format!("mqtt://{mqtt}"),
            "--db",
            db.to_str().unwrap(),
            "--http",
            "127.0.0.1:0",
        ],
        d.join("central.log"),
    );
    let http = central.bound("dashboard: ");
    assert_ne!(http.port(), 0);
    let mut page = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            page = ureq::get(&format!("http://{http}/"))
                .call()
                .ok()
                .map(|r| r.status().as_u16());
            page.is_some()
        }),
        "the dashboard did not answer at {http}: {}",
        central.log_text()
    );
    assert_eq!(page, Some(200));
}

#[test]
fn the_demo_on_port_0_reports_its_broker_and_dashboard_ports() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let demo = Proc::spawn(
        &bin("cuntong"),
        &[
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--sites",
            "1",
            "--duration",
            "1m",
            "--db",
            d.join("demo.db").to_str().unwrap(),
        ],
        d.join("demo.log"),
    );
    let mqtt = demo.bound("broker listening on ");
    assert_eq!(mqtt_connack(mqtt), [0x20, 2, 0, 0], "{}", demo.log_text());
    let http = demo.bound("dashboard: ");
    assert!(
        wait_until(Duration::from_secs(10), || ureq::get(&format!(
            "http://{http}/"
        ))
        .call()
        .is_ok_and(|r| r.status() == 200)),
        "the dashboard did not answer at {http}: {}",
        demo.log_text()
    );
}

#[test]
fn the_terminal_reports_its_hj212_and_relay_ports_bound_on_port_0_in_its_log_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(BrokerKind::Embedded, dir.path());
    let cfg = write_config(dir.path(), &broker.url, false);
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("\n[hj212]\nlisten = \"127.0.0.1:0\"\n");
    text.push_str("\n[meeting]\nmedia_host = \"127.0.0.1\"\nrelay = \"127.0.0.1:0\"\n");
    std::fs::write(&cfg, text).unwrap();
    let cfg = cfg.to_str().unwrap();
    let daemon = Proc::spawn(
        &bin("cuntong-terminal"),
        &["--config", cfg],
        dir.path().join("t.log"),
    );
    let hj = daemon.bound("hj212 listening on ");
    let relay = daemon.bound("relay listening on ");
    assert_ne!(hj.port(), 0);
    assert_ne!(relay.port(), 0);
    assert!(
        std::net::TcpStream::connect_timeout(&hj, Duration::from_secs(5)).is_ok(),
        "{}",
        daemon.log_text()
    );
    let mut report = serde_json::Value::Null;
    let reported = wait_until(Duration::from_secs(20), || {
        let out = run(
            &bin("cuntong-terminal"),
            &["status", "--config", cfg, "--json"],
        );
        if out.status.success() {
            report = serde_json::from_slice(&out.stdout).unwrap();
        }
        report["listening"]["hj212"] == hj.to_string()
    });
    assert!(reported, "{report:#}\n{}", daemon.log_text());
    assert_eq!(
        report["listening"]["relay"],
        relay.to_string(),
        "{report:#}"
    );
}

/// A broker nobody listens on: a command that validated its arguments only after connecting
/// would fail there (exit 1), not with exit 2.
const NOWHERE: &str = "mqtt://127.0.0.1:1";

#[test]
fn times_durations_and_counts_out_of_range_are_refused_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("x.db");
    let db = db.to_str().unwrap();
    let create = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut a = vec![
            "meeting", "create", "--broker", NOWHERE, "--invite", "130102",
        ];
        a.extend_from_slice(extra);
        a
    };
    // A start that cannot be written as a date, or is absurdly far, or means nothing.
    for at in [
        "+99999999999h",
        "+100000000000000000000h",
        "+400d",
        "+0s",
        "10000-01-01T00:00:00Z",
        "2999-01-01T00:00:00Z",
    ] {
        assert_usage_error("cuntong", &create(&["--title", "x", "--at", at]), at);
    }
    assert_usage_error(
        "cuntong",
        &create(&["--title", "", "--at", "+1h"]),
        "--title",
    );
    assert_usage_error("cuntong", &create(&["--title", "  "]), "--title");
    let long = "会".repeat(201);
    let mut args = create(&["--title"]);
    args.push(&long);
    assert_usage_error("cuntong", &args, "--title");
    assert_usage_error(
        "cuntong",
        &["meeting", "start", "", "--broker", NOWHERE],
        "meeting id",
    );
    assert_usage_error(
        "cuntong",
        &[
            "meeting",
            "rollcall",
            "m1",
            "--timeout",
            "0s",
            "--broker",
            NOWHERE,
        ],
        "--timeout",
    );
    // Signed commands live from a minute to 30 days.
    for expires in ["100000h", "31d", "0s", "30s"] {
        assert_usage_error(
            "cuntong",
            &[
                "cmd",
                "130102001001-main",
                "ping",
                "--ca",
                db,
                "--broker",
                NOWHERE,
                "--expires",
                expires,
            ],
            expires,
        );
    }
    assert_usage_error(
        "cuntong",
        &[
            "cmd",
            "130102001001-main",
            "ping",
            "--ca",
            db,
            "--broker",
            NOWHERE,
            "--wait",
            "0s",
        ],
        "--wait",
    );
    assert_usage_error(
        "cuntong",
        &["ca", "issue-server", "--ca", db, "--name", "", "--out", db],
        "--name",
    );
    for since in ["99999999999h", "0s"] {
        assert_usage_error("cuntong", &["events", "--db", db, "--since", since], since);
    }
    assert_usage_error(
        "cuntong",
        &["alarms", "--db", db, "--limit", "0"],
        "--limit",
    );
    assert_usage_error(
        "cuntong",
        &["demo", "--sites", "99999999999"],
        "99999999999",
    );
    assert_usage_error(
        "cuntong",
        &["central", "--db", db, "--meeting-heartbeat", "99999999999h"],
        "99999999999h",
    );
    assert_usage_error(
        "cuntong-sim",
        &["fleet", "--region", "130102", "--count", "99999999999"],
        "99999999999",
    );
    assert_usage_error(
        "cuntong-sim",
        &["fleet", "--region", "130102", "--interval", "99999999999h"],
        "99999999999h",
    );
    assert_usage_error(
        "cuntong-sim",
        &["fleet", "--region", "130102", "--keep-alive", "100000s"],
        "--keep-alive",
    );
    assert_usage_error(
        "cuntong-sim",
        &["link", "--control", db, "loss", "101"],
        "101",
    );
    assert_usage_error(
        "cuntong-sim",
        &["link", "--control", db, "delay", "99999999999"],
        "99999999999",
    );
    let out = run(
        &bin("cuntong-terminal"),
        &["--config", db, "check", "--timeout", "99999999999h"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("99999999999h"));
    assert!(!std::path::Path::new(db).exists(), "nothing was created");
}

#[test]
fn every_read_command_says_there_is_no_store_yet_and_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere").join("central.db");
    let db = missing.to_str().unwrap();
    let ca = dir.path().to_str().unwrap();
    let commands: [&[&str]; 8] = [
        &["sites", "--db", db],
        &["telemetry", "--db", db, "--terminal", "130102001001-main"],
        &["events", "--db", db],
        &["alarms", "--db", db],
        &["monitor", "--db", db],
        &[
            "readiness",
            "--meeting",
            "m1",
            "--db",
            db,
            "--ca",
            ca,
            "--broker",
            NOWHERE,
        ],
        &[
            "readiness",
            "--region",
            "130102",
            "--db",
            db,
            "--ca",
            ca,
            "--broker",
            NOWHERE,
        ],
        &[
            "cmd", "--region", "130102", "ping", "--db", db, "--ca", ca, "--broker", NOWHERE,
        ],
    ];
    for args in commands {
        let out = run(&bin("cuntong"), args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("no store at") && stderr.contains(db),
            "{args:?}: {stderr}"
        );
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
    }
    // An empty file where the store should be is no store either, and stays as it was.
    std::fs::create_dir_all(missing.parent().unwrap()).unwrap();
    std::fs::write(&missing, b"").unwrap();
    let out = run(&bin("cuntong"), &["sites", "--db", db]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no store at"));
    assert_eq!(std::fs::metadata(&missing).unwrap().len(), 0);
}

#[test]
fn hj212_encode_refuses_what_its_decoder_would_misread_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("frames.json");
    let good = serde_json::json!({"qn": null, "st": "32", "cn": "2011", "pw": "123456",
        "mn": "A1", "flag": "5", "pnum": null, "pno": null, "cp": {"w01018-Rtd": "1.5"}});
    let long = "9".repeat(5000);
    for (field, value) in [
        ("mn", "x;MN=EVIL"),
        ("pw", "a##0101"),
        ("mn", "站点"),
        ("st", "3\r\n2"),
        ("cp", long.as_str()),
        ("cp", "1;MN=EVIL"),
    ] {
        let mut bad = good.clone();
        if field == "cp" {
            bad["cp"]["w01018-Rtd"] = value.into();
        } else {
            bad[field] = value.into();
        }
        std::fs::write(&json, serde_json::to_vec(&[&good, &bad]).unwrap()).unwrap();
        let out = run(
            &bin("cuntong"),
            &["hj212", "encode", "--json", json.to_str().unwrap()],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{field}={value:?}: {stderr}");
        assert!(stderr.contains("frame 2"), "{stderr}");
        assert!(out.stdout.is_empty(), "nothing written, not even frame 1");
    }
}

#[test]
fn hj212_decode_names_each_bad_line_and_decodes_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let good = b"##0101QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;Flag=5;CP=&&RtdInterval=30&&1C80";
    // The same frame with one byte of its data not UTF-8, its CRC right.
    let mut data = good[6..good.len() - 4].to_vec();
    data[24] = 0xff;
    let mut not_utf8 = format!("##{:04}", data.len()).into_bytes();
    not_utf8.extend_from_slice(&data);
    not_utf8.extend_from_slice(format!("{:04X}", cuntong_core::hj212::crc16(&data)).as_bytes());
    let mut text = Vec::new();
    for line in [&good[..], &not_utf8, b"##", &good[..]] {
        text.extend_from_slice(line);
        text.extend_from_slice(b"\r\n");
    }
    let file = dir.path().join("capture.txt");
    std::fs::write(&file, &text).unwrap();
    let out = run(
        &bin("cuntong"),
        &["hj212", "decode", file.to_str().unwrap()],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stdout.contains("frame 1:") && stdout.contains("frame 4:"),
        "{stdout}"
    );
    assert!(stderr.contains("line 2: byte 30"), "{stderr}");
    assert!(stderr.contains("line 3:"), "{stderr}");
    assert!(
        !stderr.contains("\\r") && !stderr.contains("CR LF\""),
        "no mention of bytes that are not there: {stderr}"
    );
}

#[test]
fn empty_or_unusable_arguments_are_refused_naming_the_flag_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("x");
    let db = db.to_str().unwrap();
    assert_usage_error(
        "cuntong",
        &["alarms", "ack", "1", "--by", "", "--broker", NOWHERE],
        "--by",
    );
    assert_usage_error(
        "cuntong",
        &[
            "provision",
            "130102001001-main",
            "--ca",
            db,
            "--broker",
            "mqtts://h:8883",
            "--out",
            db,
            "--name",
            " ",
        ],
        "--name",
    );
    assert_usage_error(
        "cuntong",
        &[
            "acl", "--ca", db, "--server", db, "--out", db, "--listen", "0",
        ],
        "--listen",
    );
    assert_usage_error(
        "cuntong",
        &[
            "cmd",
            "130102001001-main",
            "config-set",
            "=30s",
            "--ca",
            db,
            "--broker",
            NOWHERE,
        ],
        "=30s",
    );
    assert_usage_error(
        "cuntong-sim",
        &[
            "datalogger",
            "--connect",
            "127.0.0.1:1",
            "--password",
            "1;MN=X",
        ],
        "--password",
    );
    assert_usage_error(
        "cuntong-sim",
        &["datalogger", "--connect", "127.0.0.1:1", "--uploads", "0"],
        "--uploads",
    );
    assert!(!std::path::Path::new(db).exists(), "nothing was created");
}

#[test]
fn output_into_a_closed_pipe_ends_the_command_quietly() {
    use std::io::{BufRead, BufReader};
    // `cuntong regions search 街道 | head -1`: far more than a pipe buffer of rows.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("none.db");
    let mut child = std::process::Command::new(bin("cuntong"))
        .args(["regions", "search", "街道", "--limit", "100000", "--db"])
        .arg(&db)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("CODE"), "{first}");
    // The reader is gone (dropped above): the command ends as if by SIGPIPE, with no panic.
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
fn a_second_central_on_one_sqlite_store_refuses_to_start_and_the_store_is_free_once_the_first_stops()
 {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Broker::start(BrokerKind::Embedded, d);
    let db = d.join("central.db");
    let start = |n: usize| {
        Proc::spawn(
            &bin("cuntong"),
            &[
                "central",
                "--broker",
                &broker.url,
                "--db",
                db.to_str().unwrap(),
            ],
            d.join(format!("central-{n}.log")),
        )
    };
    let connected = |p: &Proc| {
        wait_until(Duration::from_secs(20), || {
            p.log_text().contains("link connected")
        })
    };
    let mut first = start(1);
    assert!(connected(&first), "{}", first.log_text());

    let mut second = start(2);
    let status = second.exited_within(Duration::from_secs(15));
    let log = second.log_text();
    assert!(
        status.is_some_and(|s| s.code() == Some(1)),
        "{status:?}\n{log}"
    );
    assert!(log.contains("in use by another `cuntong central`"), "{log}");
    assert!(log.contains(db.to_str().unwrap()), "{log}");
    assert!(
        first.child.try_wait().unwrap().is_none(),
        "the first carries on"
    );

    assert!(first.terminate(Duration::from_secs(10)).is_some());
    let third = start(3);
    assert!(connected(&third), "{}", third.log_text());
}
