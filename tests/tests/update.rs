//! Over-the-air updates of a real box, end to end: a real `cuntong-terminal run` under a
//! supervisor that restarts it like systemd's `Restart=always`, central storing its records,
//! releases signed by `cuntong release sign` and offered by `cuntong cmd … update`, served by
//! an HTTP server that answers range requests (and cuts the first download halfway).
//!
//! A good release is fetched across the cut without fetching much twice, installed into a
//! slot, started on trial and committed once healthy; a release that exits at start and one
//! that never reaches the broker are rolled back by the box itself; an altered artifact and
//! one signed by another key are refused before anything is installed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cuntong_e2e::update::{Supervisor, package};
use cuntong_e2e::{Broker, BrokerKind, bin, central, run, wait_until};

const ID: &str = "130102001001-main";

/// Serves files with range requests; counts the body bytes it sent; cuts the first response
/// for a path registered with a cut after that many bytes.
struct Artifacts {
    url: String,
    files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    cuts: Arc<Mutex<HashMap<String, usize>>>,
    sent: Arc<AtomicU64>,
}

impl Artifacts {
    fn start() -> Artifacts {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let files: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
        let cuts: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let sent = Arc::new(AtomicU64::new(0));
        let (f, c, s) = (files.clone(), cuts.clone(), sent.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (f, c, s) = (f.clone(), c.clone(), s.clone());
                std::thread::spawn(move || serve(stream, &f, &c, &s));
            }
        });
        Artifacts {
            url,
            files,
            cuts,
            sent,
        }
    }

    fn put(&self, name: &str, bytes: Vec<u8>) -> String {
        self.files.lock().unwrap().insert(format!("/{name}"), bytes);
        format!("{}/{name}", self.url)
    }
}

fn serve(
    mut stream: std::net::TcpStream,
    files: &Mutex<HashMap<String, Vec<u8>>>,
    cuts: &Mutex<HashMap<String, usize>>,
    sent: &AtomicU64,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    let path = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let mut from = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
            from = v.trim().trim_end_matches('-').parse().unwrap_or(0);
        }
    }
    let Some(body) = files.lock().unwrap().get(&path).cloned() else {
        let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        return;
    };
    let part = &body[from.min(body.len())..];
    let head = format!(
        "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {from}-{}/{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len().saturating_sub(1),
        body.len(),
        part.len()
    );
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    let cut = cuts.lock().unwrap().remove(&path);
    let part = match cut {
        Some(n) => &part[..n.min(part.len())],
        None => part,
    };
    for piece in part.chunks(8192) {
        if stream.write_all(piece).is_err() {
            return;
        }
        sent.fetch_add(piece.len() as u64, Ordering::Relaxed);
    }
    // A cut: the connection closes with the body short.
    let _ = stream.flush();
}

fn sign(ca: &Path, deb: &Path, version: &str) -> PathBuf {
    let out = run(
        &bin("cuntong"),
        &[
            "release",
            "sign",
            deb.to_str().unwrap(),
            "--version",
            version,
            "--ca",
            ca.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(format!("{}.release", deb.display()))
}

fn update_events(db: &Path) -> Vec<String> {
    let out = run(
        &bin("cuntong"),
        &["events", "--db", db.to_str().unwrap(), "--json"],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["kind"] == "update" || e["kind"] == "started")
                .map(|e| {
                    format!(
                        "{} {}",
                        e["kind"].as_str().unwrap(),
                        e["detail"].as_str().unwrap()
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn wait_event(db: &Path, secs: u64, what: &str, pred: impl Fn(&str) -> bool) -> Vec<String> {
    let mut seen = Vec::new();
    let found = wait_until(Duration::from_secs(secs), || {
        seen = update_events(db);
        seen.iter().any(|e| pred(e))
    });
    assert!(
        found,
        "no event for {what} within {secs} s; events: {seen:#?}"
    );
    seen
}

#[test]
fn a_box_installs_only_signed_releases_commits_a_healthy_one_and_rolls_back_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Broker::start(BrokerKind::Mosquitto, d);
    let db = d.join("central.db");
    let _central = central(&broker, &db, d);
    let ca = d.join("ca");
    assert!(
        run(
            &bin("cuntong"),
            &["ca", "init", "--dir", ca.to_str().unwrap()]
        )
        .status
        .success()
    );
    let data = d.join("box");
    let config = d.join("terminal.toml");
    std::fs::write(
        &config,
        format!(
            "id = \"{ID}\"\nbroker = \"{}\"\ndata_dir = \"{}\"\nkeep_alive = \"5s\"\n\n[telemetry]\nhealth_interval = \"2s\"\nbatch_age = \"1s\"\n\n[commands]\nkey = \"{}\"\n\n[update]\nkey = \"{}\"\nmax_rate = \"1MiB\"\nhealth_deadline = \"12s\"\nmax_boots = 3\n",
            broker.url,
            data.display(),
            ca.join("command.pub").display(),
            ca.join("release.pub").display(),
        ),
    )
    .unwrap();
    let supervisor = Supervisor::start(&config, &d.join("terminal.log"));
    let server = Artifacts::start();
    let offer = |release: &Path, url: &str| {
        let out = run(
            &bin("cuntong"),
            &[
                "cmd",
                ID,
                "update",
                release.to_str().unwrap(),
                url,
                "--ca",
                ca.to_str().unwrap(),
                "--broker",
                &broker.url,
                "--wait",
                "5s",
                "--json",
            ],
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    let daemon = bin("cuntong-terminal");
    let daemon = daemon.to_str().unwrap();
    wait_event(&db, 30, "the box's first start", |e| {
        e.starts_with("started ")
    });

    // A good release, 3 MiB, cut after 1 MiB on its first fetch.
    let good = package(
        d,
        "good",
        "0.2.0",
        &format!("exec {daemon} \"$@\""),
        3 << 20,
    );
    let good_bytes = std::fs::read(&good).unwrap();
    let size = good_bytes.len() as u64;
    let url = server.put("good.deb", good_bytes);
    server
        .cuts
        .lock()
        .unwrap()
        .insert("/good.deb".into(), 1 << 20);
    let answer = offer(&sign(&ca, &good, "0.2.0"), &url);
    assert_eq!(answer[0]["ok"], true, "{answer}");
    let events = wait_event(&db, 90, "0.2.0 committed", |e| {
        e.starts_with("update 0.2.0") && e.ends_with("committed")
    });
    for stage in [
        "downloading",
        "downloaded",
        "verified",
        "installing",
        "restarting",
    ] {
        assert!(
            events
                .iter()
                .any(|e| e.starts_with("update 0.2.0") && e.contains(&format!(": {stage}"))),
            "no {stage}: {events:#?}"
        );
    }
    assert!(
        events.iter().any(|e| e == "started version 0.2.0"),
        "{events:#?}"
    );
    // The cut was reported with its cause while the box waited to resume.
    assert!(
        events.iter().any(|e| e.starts_with("update 0.2.0")
            && e.contains("downloading")
            && e.contains("retrying in")),
        "{events:#?}"
    );
    let fetched = server.sent.load(Ordering::Relaxed);
    assert!(
        fetched >= size && fetched * 10 <= size * 12,
        "fetched {fetched} bytes for a {size}-byte artifact across one cut"
    );
    let table: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("update/slots.json")).unwrap()).unwrap();
    assert_eq!(table["committed"]["version"], "0.2.0");
    assert!(table["trial"].is_null());

    // A release that exits at start: three starts, then the box is back on 0.2.0.
    let crash = package(d, "crash", "0.3.0", "echo crashing >&2; exit 3", 1024);
    let url = server.put("crash.deb", std::fs::read(&crash).unwrap());
    let starts_before = supervisor.starts.load(Ordering::Relaxed);
    assert_eq!(offer(&sign(&ca, &crash, "0.3.0"), &url)[0]["ok"], true);
    let events = wait_event(&db, 90, "0.3.0 rolled back", |e| {
        e.starts_with("update 0.3.0") && e.contains("rolled-back")
    });
    let rolled = events
        .iter()
        .find(|e| e.contains("0.3.0") && e.contains("rolled-back"))
        .unwrap();
    assert!(rolled.contains("stopped 3 times"), "{rolled}");
    // The first start ran in the process that installed it; each of the next two (and the
    // fourth, which rolled back) came from the supervisor after an exit.
    assert!(supervisor.starts.load(Ordering::Relaxed) >= starts_before + 3);
    assert!(!events.iter().any(|e| e == "started version 0.3.0"));

    // A release that starts but never reaches the broker: stopped at its deadline.
    let mute = package(d, "mute", "0.4.0", "exec sleep 3600", 1024);
    let url = server.put("mute.deb", std::fs::read(&mute).unwrap());
    assert_eq!(offer(&sign(&ca, &mute, "0.4.0"), &url)[0]["ok"], true);
    let events = wait_event(&db, 90, "0.4.0 rolled back", |e| {
        e.starts_with("update 0.4.0") && e.contains("rolled-back")
    });
    let rolled = events
        .iter()
        .find(|e| e.contains("0.4.0") && e.contains("rolled-back"))
        .unwrap();
    assert!(rolled.contains("health check by its deadline"), "{rolled}");

    // An altered artifact (same length, one byte changed): refused after download.
    let altered = package(
        d,
        "altered",
        "0.5.0",
        &format!("exec {daemon} \"$@\""),
        4096,
    );
    let release = sign(&ca, &altered, "0.5.0");
    let mut bytes = std::fs::read(&altered).unwrap();
    let last = bytes.len() - 100;
    bytes[last] ^= 0xff;
    let url = server.put("altered.deb", bytes);
    assert_eq!(offer(&release, &url)[0]["ok"], true);
    wait_event(&db, 60, "0.5.0 failed", |e| {
        e.starts_with("update 0.5.0") && e.contains("failed") && e.contains("SHA-256")
    });

    // Signed by another fleet's release key: refused at once, nothing fetched.
    let rogue = d.join("rogue");
    assert!(
        run(
            &bin("cuntong"),
            &["ca", "init", "--dir", rogue.to_str().unwrap()]
        )
        .status
        .success()
    );
    let sent_before = server.sent.load(Ordering::Relaxed);
    let rogue_deb = d.join("rogue.deb");
    std::fs::copy(&good, &rogue_deb).unwrap();
    let url = server.put("rogue.deb", std::fs::read(&rogue_deb).unwrap());
    let answer = offer(&sign(&rogue, &rogue_deb, "0.6.0"), &url);
    assert_eq!(answer[0]["ok"], false, "{answer}");
    assert!(
        answer[0]["output"].as_str().unwrap().contains("signature"),
        "{answer}"
    );
    wait_event(&db, 30, "0.6.0 failed", |e| {
        e.starts_with("update 0.6.0") && e.contains("failed")
    });
    assert_eq!(server.sent.load(Ordering::Relaxed), sent_before);

    // Through all of it the box kept 0.2.0 committed.
    let table: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("update/slots.json")).unwrap()).unwrap();
    assert_eq!(table["committed"]["version"], "0.2.0", "{table}");
    assert!(table["trial"].is_null());
    drop(supervisor);
}
