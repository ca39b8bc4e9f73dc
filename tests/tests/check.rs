//! `cuntong-terminal check` against the daemon itself: for each of a set of configurations,
//! `check` reports that the daemon would refuse to start (exit 2, with the reason) exactly
//! when the daemon does refuse to start; configurations it passes, the daemon runs with.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use cuntong_e2e::{Broker, BrokerKind, Proc, bin, run};

/// What the daemon did with a configuration: `Err(stderr)` if it stopped by itself at once,
/// `Ok(())` if it was running (its status socket answered).
fn daemon_starts(cfg: &Path, data: &Path, log: &Path) -> Result<(), String> {
    let mut p = Proc::spawn(
        &bin("cuntong-terminal"),
        &["--config", cfg.to_str().unwrap()],
        log.to_owned(),
    );
    let socket = data.join("status.sock");
    let end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < end {
        if let Ok(Some(status)) = p.child.try_wait() {
            return Err(format!("exit {:?}: {}", status.code(), p.log_text()));
        }
        let asked = run(
            &bin("cuntong-terminal"),
            &["status", "--socket", socket.to_str().unwrap()],
        );
        if asked.status.success() {
            p.terminate(Duration::from_secs(5));
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the daemon neither started nor stopped: {}", p.log_text());
}

#[test]
fn check_says_the_daemon_will_refuse_to_start_exactly_when_it_does() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Broker::start(BrokerKind::Embedded, d);
    let key = d.join("command.pub");
    std::fs::write(&key, format!("{}\n", "ab".repeat(32))).unwrap();
    let garbage_key = d.join("garbage.pub");
    std::fs::write(&garbage_key, "not a key\n").unwrap();
    let a_file = d.join("a-file");
    std::fs::write(&a_file, "").unwrap();
    let damaged = d.join("damaged");
    std::fs::create_dir_all(damaged.join("outbox")).unwrap();
    std::fs::write(
        damaged.join("outbox/outbox.state"),
        "confirmed-telemetry lots\n",
    )
    .unwrap();
    let url = broker.url.as_str();
    // (name, broker, data dir (None: the case's own), extra TOML, the daemon refuses)
    let cases: Vec<(&str, &str, Option<String>, String, bool)> = vec![
        ("good", url, None, String::new(), false),
        (
            "good with commands",
            url,
            None,
            format!("[commands]\nkey = {:?}\n", key.display().to_string()),
            false,
        ),
        (
            "a sensor on a bus that is not there",
            url,
            None,
            "[[sensor]]\nkind = \"sht3x\"\nbus = \"/dev/i2c-no-such-bus\"\n".into(),
            false,
        ),
        (
            "a missing command key file",
            url,
            None,
            format!(
                "[commands]\nkey = {:?}\n",
                d.join("missing.pub").display().to_string()
            ),
            true,
        ),
        (
            "a command key file that is not a key",
            url,
            None,
            format!(
                "[commands]\nkey = {:?}\n",
                garbage_key.display().to_string()
            ),
            true,
        ),
        (
            "a GPIO chip that does not exist",
            url,
            None,
            "[duty_button]\nchip = \"/dev/gpiochip-no-such-chip\"\nline = 3\n".into(),
            true,
        ),
        (
            "an empty data_dir",
            url,
            Some(String::new()),
            String::new(),
            true,
        ),
        (
            "a damaged outbox state",
            url,
            Some(damaged.display().to_string()),
            String::new(),
            true,
        ),
        (
            "a data_dir under a file",
            url,
            Some(a_file.join("data").display().to_string()),
            String::new(),
            true,
        ),
        (
            "missing TLS files",
            "mqtts://127.0.0.1:1",
            None,
            "[tls]\nca = \"no-ca.pem\"\ncert = \"no-cert.pem\"\nkey = \"no-key.pem\"\n".into(),
            true,
        ),
    ];
    for (i, (name, broker, data_dir, extra, refuses)) in cases.into_iter().enumerate() {
        let case = d.join(format!("case-{i}"));
        std::fs::create_dir_all(&case).unwrap();
        let data = case.join("data");
        let data_dir = data_dir.unwrap_or_else(|| data.display().to_string());
        let cfg = case.join("terminal.toml");
        std::fs::write(
            &cfg,
            format!(
                "id = \"130102001001-main\"\nbroker = \"{broker}\"\ndata_dir = {data_dir:?}\nkeep_alive = \"5s\"\n{extra}"
            ),
        )
        .unwrap();
        let check = run(
            &bin("cuntong-terminal"),
            &[
                "check",
                "--config",
                cfg.to_str().unwrap(),
                "--timeout",
                "5s",
            ],
        );
        let report = String::from_utf8_lossy(&check.stdout).into_owned();
        let started = daemon_starts(&cfg, &data, &case.join("daemon.log"));
        assert_eq!(started.is_err(), refuses, "{name}: the daemon: {started:?}");
        assert_eq!(
            check.status.code() == Some(2),
            refuses,
            "{name}: check exited {:?} but the daemon {}: {report}",
            check.status.code(),
            if refuses {
                "refuses to start"
            } else {
                "starts"
            }
        );
        if let Err(stderr) = started {
            // The daemon gives the reason check gave.
            let fail = report
                .lines()
                .find(|l| l.starts_with("FAIL"))
                .unwrap_or_else(|| panic!("{name}: no FAIL line: {report}"));
            // "FAIL  <what, 22 wide> <detail>"
            let detail = fail.get(29..).unwrap_or_default().trim();
            assert!(
                !detail.is_empty() && stderr.contains(detail),
                "{name}: check said {fail:?}, the daemon {stderr:?}"
            );
        }
    }
}
