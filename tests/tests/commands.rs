//! Signed remote commands end to end: a valid command runs once and answers; a bad signature,
//! an expired command and a replayed one are refused, answered as refused and reported.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use cuntong_core::command::{Action, CommandResult};
use cuntong_e2e::{Broker, BrokerKind, Proc, bin, run, wait_until};

const ID: &str = "130102001001-main";
const CMD: &str = "ct/v1/t/13/01/02/001/001/main/cmd";
const RES: &str = "ct/v1/t/13/01/02/001/001/main/res";

fn status_errors(socket: &Path) -> String {
    let out = run(
        &bin("cuntong-terminal"),
        &["status", "--json", "--socket", socket.to_str().unwrap()],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["recent_errors"].to_string()
}

#[test]
fn commands_are_verified_before_they_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Broker::start(BrokerKind::Mosquitto, d);
    let ca = d.join("ca");
    let out = run(
        &bin("cuntong"),
        &["ca", "init", "--dir", ca.to_str().unwrap()],
    );
    assert!(out.status.success());
    let _terminal = Proc::spawn(
        &bin("cuntong-sim"),
        &[
            "terminal",
            "--id",
            ID,
            "--broker",
            &broker.url,
            "--data-dir",
            d.join("t").to_str().unwrap(),
            "--interval",
            "1s",
            "--command-key",
            ca.join("command.pub").to_str().unwrap(),
        ],
        d.join("terminal.log"),
    );
    let socket = d.join("t").join(ID).join("status.sock");
    let cmd = |ca: &Path, extra: &[&str]| {
        let mut args = vec![
            "cmd",
            ID,
            "ping",
            "--ca",
            ca.to_str().unwrap(),
            "--broker",
            &broker.url,
            "--json",
        ];
        args.extend_from_slice(extra);
        run(&bin("cuntong"), &args)
    };
    // Valid: runs and answers (retry until the terminal is up and subscribed).
    let mut answer = serde_json::Value::Null;
    assert!(wait_until(Duration::from_secs(20), || {
        let out = cmd(&ca, &["--wait", "2s"]);
        answer = serde_json::from_slice(&out.stdout).unwrap_or_default();
        out.status.success()
    }));
    assert_eq!(answer[0]["ok"], true);
    assert_eq!(answer[0]["output"], "pong");

    // Signed with another fleet's key: refused, answered as refused, reported.
    let rogue = d.join("rogue");
    assert!(
        run(
            &bin("cuntong"),
            &["ca", "init", "--dir", rogue.to_str().unwrap()]
        )
        .status
        .success()
    );
    let out = cmd(&rogue, &["--wait", "5s"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["ok"], false);
    assert_eq!(v[0]["output"], "refused: bad signature");

    // `cuntong cmd` gives no command a lifetime terminals refuse (exit 2, nothing sent).
    let out = cmd(&ca, &["--wait", "5s", "--expires", "0s"]);
    assert_eq!(out.status.code(), Some(2));

    // Signed by the fleet's key but sent around `cuntong cmd`: the same bytes twice (not
    // retained): the first runs, the second is a replay; one expired on arrival; one valid
    // for longer than 30 days.
    let key = cuntong::cmd::signing_key(&ca).unwrap();
    let signed = |name: &str, lifetime: Duration| {
        let (_, bytes) = cuntong::cmd::sign(&key, ID, Action::Ping, lifetime).unwrap();
        let path = d.join(name);
        std::fs::write(&path, &bytes).unwrap();
        path
    };
    let payload = signed("signed.bin", Duration::from_secs(60));
    let expired = signed("expired.bin", Duration::ZERO);
    let too_long = signed("too-long.bin", Duration::from_secs(31 * 24 * 3600));
    let port = broker.port.to_string();
    let seen = d.join("results.hex");
    let _sub = Proc::spawn(
        Path::new("mosquitto_sub"),
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            RES,
            "-q",
            "1",
            "-F",
            "%x",
        ],
        seen.clone(),
    );
    let lines = || std::fs::read_to_string(&seen).unwrap_or_default();
    // The listener is in place once a marker published on the result topic comes through.
    let marker = "6d61726b6572"; // "marker"
    assert!(wait_until(Duration::from_secs(10), || {
        run(
            Path::new("mosquitto_pub"),
            &["-h", "127.0.0.1", "-p", &port, "-t", RES, "-m", "marker"],
        );
        lines().contains(marker)
    }));
    for file in [&payload, &payload, &expired, &too_long] {
        assert!(broker.publish_file(CMD, file, false));
    }
    let answers = || -> Vec<String> {
        lines()
            .lines()
            .filter(|l| !l.is_empty() && *l != marker)
            .map(str::to_owned)
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(15), || answers().len() >= 4),
        "{}",
        lines()
    );
    let results: Vec<CommandResult> = answers()
        .iter()
        .map(|hex| {
            let bytes: Vec<u8> = (0..hex.len() / 2)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
                .collect();
            CommandResult::decode(&bytes).unwrap()
        })
        .collect();
    assert_eq!(results.len(), 4, "{results:?}");
    assert!(results[0].ok && results[0].output == "pong");
    assert!(!results[1].ok && results[1].output == "refused: replayed (nonce already used)");
    assert!(!results[2].ok && results[2].output == "refused: expired");
    assert!(
        !results[3].ok && results[3].output.contains("longer than the 30 days"),
        "{results:?}"
    );

    // Every refusal is reported (status here; the outbox carries them to central as events).
    let errors = status_errors(&socket);
    for reason in ["bad signature", "expired", "replayed", "30 days"] {
        assert!(errors.contains(reason), "{reason} not reported: {errors}");
    }
}
