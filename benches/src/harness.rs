//! What the load harnesses share: the release binaries next to the harness, child processes
//! that are killed when dropped, free ports, bounded waits, memory readings.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A child process, killed when dropped.
#[derive(Debug)]
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A workspace binary next to the harness (`cargo build --release --workspace --bins`).
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().context("harness path")?.join(name);
    if !path.exists() {
        bail!(
            "{} missing: cargo build --release --workspace --bins",
            path.display()
        );
    }
    Ok(path)
}

/// Starts `program`, its output into `log`.
pub fn spawn(program: &Path, args: &[&str], log: &Path) -> anyhow::Result<Proc> {
    let out = std::fs::File::create(log)?;
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    Ok(Proc(child))
}

/// Resident set size of a process, in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Polls `cond` every 100 ms; how long it took to hold, or `None` after `timeout`.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// A broker on `port`: `mosquitto` (with the queue limits `cuntong acl` writes: central takes
/// every site's answer at once) or `embedded` (`cuntong broker`), listening when it returns.
pub fn broker(kind: &str, port: u16, dir: &Path) -> anyhow::Result<Proc> {
    let proc = match kind {
        "mosquitto" => {
            let conf = dir.join("mosquitto.conf");
            std::fs::write(
                &conf,
                format!(
                    "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                     max_queued_messages 100000\nmax_inflight_messages 1000\n"
                ),
            )?;
            let exe = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
                .into_iter()
                .find(|p| Path::new(p).exists())
                .context("mosquitto is not installed (apt-get install mosquitto)")?;
            spawn(
                Path::new(exe),
                &["-c", conf.to_str().context("path")?],
                &dir.join("broker.log"),
            )?
        }
        "embedded" => spawn(
            &bin("cuntong")?,
            &["broker", "--listen", &format!("127.0.0.1:{port}")],
            &dir.join("broker.log"),
        )?,
        other => bail!("--broker {other:?}: mosquitto or embedded"),
    };
    if wait_for(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .is_none()
    {
        bail!("the broker did not start");
    }
    Ok(proc)
}

/// `cuntong central` on `url` storing into `db` (with `extra` arguments), once its store exists.
pub fn central(url: &str, db: &Path, extra: &[&str], dir: &Path) -> anyhow::Result<Proc> {
    let mut args = vec![
        "central",
        "--broker",
        url,
        "--db",
        db.to_str().context("path")?,
    ];
    args.extend_from_slice(extra);
    let proc = spawn(&bin("cuntong")?, &args, &dir.join("central.log"))?;
    wait_for(Duration::from_secs(10), || db.exists());
    Ok(proc)
}

/// `cuntong-sim fleet` of `count` terminals in `region`, sampling every `interval`.
pub fn sim_fleet(
    url: &str,
    region: &str,
    count: usize,
    interval: &str,
    dir: &Path,
) -> anyhow::Result<Proc> {
    let data = dir.join(format!("fleet-{region}-{count}"));
    spawn(
        &bin("cuntong-sim")?,
        &[
            "fleet",
            "--broker",
            url,
            "--region",
            region,
            "--count",
            &count.to_string(),
            "--interval",
            interval,
            "--data-dir",
            data.to_str().context("path")?,
        ],
        &dir.join(format!("fleet-{region}-{count}.log")),
    )
}

/// Waits until central's store shows at least `n` terminals online; how long it took.
pub fn wait_online(db: &Path, n: usize, timeout: Duration) -> anyhow::Result<Duration> {
    use cuntong::store::{SqliteStore, Store};
    let store = SqliteStore::open(db)?;
    let online = || {
        store
            .sites(None)
            .map(|s| s.iter().filter(|r| r.online).count())
            .unwrap_or(0)
    };
    wait_for(timeout, || online() >= n)
        .with_context(|| format!("only {} of {n} terminals online", online()))
}
