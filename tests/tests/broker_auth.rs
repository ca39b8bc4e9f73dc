//! The embedded broker with `--auth FILE`: central and simulated terminals that log in with
//! a user name and password from the file report and store telemetry; a client with a wrong
//! password or none is refused; a bad or group-readable users file is refused naming it; and
//! no password appears in any log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use cuntong_e2e::{Proc, bin, free_port, run, sites, wait_until};

const CENTRAL_PASSWORD: &str = "c3ntral-Pa55:word";
const SIM_PASSWORD: &str = "s1m-Pa55word";

fn users_file(dir: &Path, text: &str, mode: u32) -> String {
    let path = dir.join("users");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path.to_str().unwrap().to_owned()
}

fn broker_with_auth(dir: &Path, users: &str) -> (Proc, u16) {
    let port = free_port();
    let broker = Proc::spawn(
        &bin("cuntong"),
        &[
            "broker",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--auth",
            users,
        ],
        dir.join("broker.log"),
    );
    let ready = wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(ready, "the broker did not listen: {}", broker.log_text());
    (broker, port)
}

fn publish(port: u16, login: &[&str]) -> bool {
    let port = port.to_string();
    let mut args = vec!["-h", "127.0.0.1", "-p", &port, "-t", "x/y", "-m", "hi"];
    args.extend_from_slice(login);
    run(Path::new("mosquitto_pub"), &args).status.success()
}

#[test]
fn only_clients_with_a_listed_password_use_the_broker_and_no_log_shows_a_password() {
    let dir = tempfile::tempdir().unwrap();
    let users = users_file(
        dir.path(),
        &format!("# who may connect\ncentral:{CENTRAL_PASSWORD}\nsim:{SIM_PASSWORD}\n"),
        0o600,
    );
    let (broker, port) = broker_with_auth(dir.path(), &users);

    // Central and a simulated terminal log in (a ':' in a password is percent-encoded).
    let db = dir.path().join("central.db");
    let central = Proc::spawn(
        &bin("cuntong"),
        &[
            "central",
            "--broker",
            &format!("mqtt://central:c3ntral-Pa55%3Aword@127.0.0.1:{port}"),
            "--db",
            db.to_str().unwrap(),
        ],
        dir.path().join("central.log"),
    );
    let sim = cuntong_e2e::sim_fleet(
        &format!("mqtt://sim:{SIM_PASSWORD}@127.0.0.1:{port}"),
        "130102",
        1,
        dir.path(),
        "sim",
    );
    let stored = wait_until(Duration::from_secs(30), || {
        db.exists() && !sites(&db, None).is_empty()
    });
    assert!(
        stored,
        "central stored nothing\ncentral: {}\nsim: {}\nbroker: {}",
        central.log_text(),
        sim.log_text(),
        broker.log_text()
    );

    // Wrong password, unknown user, no login at all: refused.
    assert!(publish(port, &["-u", "sim", "-P", SIM_PASSWORD]));
    assert!(!publish(port, &["-u", "sim", "-P", "wrong"]));
    assert!(!publish(port, &["-u", "nobody", "-P", SIM_PASSWORD]));
    assert!(!publish(port, &[]));

    // A terminal with a wrong password reports nothing and says why without the password.
    let bad_sim = Proc::spawn(
        &bin("cuntong-sim"),
        &[
            "fleet",
            "--broker",
            &format!("mqtt://sim:Wr0ngPa55@127.0.0.1:{port}"),
            "--region",
            "130103",
            "--count",
            "1",
            "--interval",
            "2s",
            "--data-dir",
            dir.path().join("bad-sim").to_str().unwrap(),
        ],
        dir.path().join("bad-sim.log"),
    );
    let refused = wait_until(Duration::from_secs(20), || {
        bad_sim.log_text().contains("cannot reach the broker")
    });
    assert!(refused, "{}", bad_sim.log_text());
    assert!(
        sites(&db, None)
            .iter()
            .all(|s| !s.terminal.starts_with("130103")),
        "a terminal with a wrong password was stored"
    );

    for (name, log) in [
        ("broker", broker.log_text()),
        ("central", central.log_text()),
        ("sim", sim.log_text()),
        ("bad sim", bad_sim.log_text()),
    ] {
        for secret in [
            CENTRAL_PASSWORD,
            "c3ntral-Pa55%3Aword",
            SIM_PASSWORD,
            "Wr0ngPa55",
        ] {
            assert!(
                !log.contains(secret),
                "the {name} log shows a password:\n{log}"
            );
        }
    }
}

#[test]
fn a_bad_or_readable_users_file_is_refused_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let port = format!("127.0.0.1:{}", free_port());
    let refuse = |users: &str| {
        let out = run(
            &bin("cuntong"),
            &["broker", "--listen", &port, "--auth", users],
        );
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!err.contains("hunter2"), "{err}");
        err
    };
    let users = users_file(dir.path(), "central:ok\n\nsim hunter2\n", 0o600);
    let err = refuse(&users);
    assert!(err.contains(&format!("{users}:3:")), "{err}");

    let users = users_file(dir.path(), "central:hunter2\n", 0o644);
    assert!(refuse(&users).contains("chmod 600"));

    let missing = dir.path().join("absent");
    assert!(refuse(missing.to_str().unwrap()).contains("absent"));
}

#[test]
fn a_refused_broker_url_is_quoted_without_its_password() {
    for (program, args) in [
        (
            "cuntong",
            vec!["central", "--broker", "mqtt://u:hunter2@h:0"],
        ),
        (
            "cuntong",
            vec!["central", "--broker", "mqtts://u:hunter2@h"],
        ),
        (
            "cuntong",
            vec!["central", "--broker", "mqtt://u:hun/ter2@h/x"],
        ),
        (
            "cuntong-sim",
            vec![
                "fleet",
                "--region",
                "130102",
                "--broker",
                "mqtt://u:hunter2@h:0",
            ],
        ),
    ] {
        let out = run(&bin(program), &args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("u:***@h"), "{args:?}: {err}");
        assert!(!err.contains("ter2"), "{args:?}: {err}");
    }
}
