//! What the update and rollout tests share: terminal packages built for a test, and a
//! supervisor that restarts `cuntong-terminal run` like systemd's `Restart=always`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::bin;

/// A terminal package whose daemon is `script` (plus `padding` bytes of payload).
pub fn package(dir: &Path, name: &str, version: &str, script: &str, padding: usize) -> PathBuf {
    let root = dir.join(format!("pkg-{name}"));
    std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    std::fs::create_dir_all(root.join("usr/share/cuntong")).unwrap();
    std::fs::write(
        root.join("DEBIAN/control"),
        format!(
            "Package: cuntong-terminal\nVersion: {version}\nArchitecture: all\nMaintainer: cuntong <ops@example.invalid>\nDescription: test build\n"
        ),
    )
    .unwrap();
    let daemon = root.join("usr/bin/cuntong-terminal");
    std::fs::write(&daemon, format!("#!/bin/sh\n{script}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&daemon, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Incompressible, so the artifact is as large as asked.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let payload: Vec<u8> = (0..padding)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(root.join("usr/share/cuntong/payload"), payload).unwrap();
    let deb = dir.join(format!("{name}.deb"));
    let out = Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Znone", "--build"])
        .arg(&root)
        .arg(&deb)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    deb
}

/// Restarts `cuntong-terminal run` whenever it exits, like `Restart=always`.
#[derive(Debug)]
pub struct Supervisor {
    stop: Arc<AtomicBool>,
    /// How many times it started the daemon.
    pub starts: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Supervisor {
    pub fn start(config: &Path, log: &Path) -> Supervisor {
        let stop = Arc::new(AtomicBool::new(false));
        let starts = Arc::new(AtomicU64::new(0));
        let (config, log) = (config.to_owned(), log.to_owned());
        let (s, n) = (stop.clone(), starts.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                n.fetch_add(1, Ordering::Relaxed);
                let out = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap();
                let mut child = Command::new(bin("cuntong-terminal"))
                    .args(["run", "--config", config.to_str().unwrap()])
                    .env("CUNTONG_LOG", "info")
                    .stdin(Stdio::null())
                    .stdout(out.try_clone().unwrap())
                    .stderr(out)
                    .spawn()
                    .unwrap();
                loop {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    if s.load(Ordering::Relaxed) {
                        let _ = Command::new("kill")
                            .args(["-TERM", &child.id().to_string()])
                            .status();
                        for _ in 0..200 {
                            if let Ok(Some(_)) = child.try_wait() {
                                return;
                            }
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        let _ = child.kill();
                        let _ = child.wait();
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        Supervisor {
            stop,
            starts,
            thread: Some(thread),
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The arguments of `cuntong rollout start`: release `version` to `region`, downloaded from
/// `from`, the command signed with the key in `ca`, through `broker`, the release looked up in
/// `db`; `extra` flags after them (`--rate 60/min`).
pub fn rollout_start_args<'a>(
    (version, region): (&'a str, &'a str),
    (db, ca, broker): (&'a str, &'a str, &'a str),
    from: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "rollout", "start", version, "--region", region, "--from", from, "--ca", ca, "--db", db,
        "--broker", broker,
    ];
    args.extend_from_slice(extra);
    args
}

/// The rollout id in what `cuntong rollout start` printed ("rollout ID of V to R started").
pub fn rollout_id(said: &str) -> Option<String> {
    said.split_whitespace().nth(1).map(str::to_owned)
}
