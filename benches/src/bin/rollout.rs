//! A staged rollout to a simulated fleet: how long until every box committed against the
//! rate's floor (the last offer cannot go out before (N − 1) / rate), and the bytes on the
//! link per update against the artifact's size (a counting proxy sits between the boxes and
//! central's artifact server, headers included). Then one real `cuntong-terminal` box under a
//! restarting loop is offered a release that exits at start: the time from its offer to its
//! `rolled-back` report.
//!
//! ```sh
//! cargo build --release --workspace --bins --benches
//! ./target/release/rollout --count 2000 --rate 200      # about 11 minutes
//! ```

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use cuntong_benches::harness::{
    Proc, bin, broker, central, free_port, spawn, wait_for, wait_online,
};

#[derive(Parser)]
struct Args {
    /// Simulated boxes in the rollout.
    #[arg(long, default_value_t = 2000)]
    count: usize,
    /// Offers a minute.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// The artifact's size, KiB.
    #[arg(long, default_value_t = 256)]
    artifact_kib: usize,
}

/// Forwards connections to `to`, counting the bytes that come back.
fn counting_proxy(to: std::net::SocketAddr) -> anyhow::Result<(String, Arc<AtomicU64>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", listener.local_addr()?);
    let back = Arc::new(AtomicU64::new(0));
    let counted = back.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let counted = counted.clone();
            std::thread::spawn(move || {
                let Ok(server) = TcpStream::connect(to) else {
                    return;
                };
                let (Ok(mut c2), Ok(mut s2)) = (client.try_clone(), server.try_clone()) else {
                    return;
                };
                let up = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c2, &mut s2);
                    let _ = s2.shutdown(std::net::Shutdown::Write);
                });
                let (mut from, mut into) = (server, client);
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match from.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            counted.fetch_add(n as u64, Ordering::Relaxed);
                            if into.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = into.shutdown(std::net::Shutdown::Write);
                let _ = up.join();
            });
        }
    });
    Ok((url, back))
}

fn cuntong(args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(bin("cuntong")?)
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!(
            "cuntong {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn status(db: &str, id: &str) -> serde_json::Value {
    cuntong(&["rollout", "status", id, "--json", "--db", db])
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default()
}

/// Starts a rollout at `rate` a minute, aborting at the first failure; its id.
fn start(
    db: &str,
    ca: &Path,
    url: &str,
    release: (&str, &str),
    from: &str,
    rate: u32,
) -> anyhow::Result<String> {
    let rate = format!("{rate}/min");
    let extra = [
        "--rate",
        &rate,
        "--abort-failed",
        "50%",
        "--min-executed",
        "1",
    ];
    let ca = ca.to_str().context("path")?;
    let args = cuntong_e2e::update::rollout_start_args(release, (db, ca, url), from, &extra);
    let said = cuntong(&args)?;
    cuntong_e2e::update::rollout_id(&said).context("rollout start said no id")
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let port = free_port()?;
    let _broker = broker("mosquitto", port, d)?;
    let url = format!("mqtt://127.0.0.1:{port}");
    let ca = d.join("ca");
    cuntong(&["ca", "init", "--dir", ca.to_str().context("path")?])?;
    let db_path = d.join("central.db");
    let db = db_path.to_str().context("path")?;
    let http = format!("127.0.0.1:{}", free_port()?);
    let cache = d.join("cache");
    let _central = central(
        &url,
        db,
        &[
            "--http",
            &http,
            "--release-cache",
            cache.to_str().context("path")?,
        ],
        d,
    )?;
    let (from, served) = counting_proxy(http.parse()?)?;
    let key = |name: &str| ca.join(name).to_str().map(str::to_owned).context("path");
    let _fleet = spawn(
        &bin("cuntong-sim")?,
        &[
            "fleet",
            "--broker",
            &url,
            "--region",
            "1301",
            "--count",
            &args.count.to_string(),
            "--interval",
            "60s",
            "--data-dir",
            d.join("fleet").to_str().context("path")?,
            "--command-key",
            &key("command.pub")?,
            "--release-key",
            &key("release.pub")?,
            "--update-rate",
            "4MiB",
        ],
        &d.join("fleet.log"),
    )?;
    let online = wait_online(db, args.count, Duration::from_secs(600))?;
    eprintln!("{} boxes online after {online:.1?}", args.count);

    let daemon = bin("cuntong-terminal")?;
    let good = cuntong_e2e::update::package(
        d,
        "good",
        "9.0.0",
        &format!("exec {} \"$@\"", daemon.display()),
        args.artifact_kib << 10,
    );
    let add = |deb: &Path, version: &str| {
        cuntong(&[
            "release",
            "add",
            deb.to_str().context("path")?,
            "--version",
            version,
            "--ca",
            ca.to_str().context("path")?,
            "--db",
            db,
        ])
    };
    add(&good, "9.0.0")?;
    let artifact = std::fs::metadata(&good)?.len();
    let id = start(db, &ca, &url, ("9.0.0", "1301"), &from, args.rate)?;
    let floor = Duration::from_secs_f64((args.count as f64 - 1.0) * 60.0 / f64::from(args.rate));
    let done = wait_for(floor * 3 + Duration::from_secs(300), || {
        status(db, &id)["state"] == "done"
    });
    let last = status(db, &id);
    let Some(took) = done else {
        bail!("the rollout did not finish: {last:#}");
    };
    let committed = last["counts"]["committed"].as_u64().unwrap_or(0);
    let bytes = served.load(Ordering::Relaxed);
    println!(
        "rollout of a {artifact}-byte release to {} simulated boxes at {}/min: all {committed} committed after {:.1} s; the rate's floor {:.1} s; ratio {:.3}",
        args.count,
        args.rate,
        took.as_secs_f64(),
        floor.as_secs_f64(),
        took.as_secs_f64() / floor.as_secs_f64()
    );
    println!(
        "bytes on the link per update (headers included): {:.0}, the artifact {artifact}: ratio {:.4}",
        bytes as f64 / committed.max(1) as f64,
        bytes as f64 / (committed.max(1) * artifact) as f64
    );

    // One real box, restarted like `Restart=always`, offered a build that exits at start.
    let data = d.join("real");
    let config = d.join("real.toml");
    std::fs::write(
        &config,
        format!(
            "id = \"130201001001-main\"\nbroker = \"{url}\"\ndata_dir = \"{}\"\nkeep_alive = \"5s\"\n\n[telemetry]\nhealth_interval = \"5s\"\nbatch_age = \"1s\"\n\n[commands]\nkey = \"{}\"\n\n[update]\nkey = \"{}\"\nmax_rate = \"4MiB\"\nmax_boots = 3\n",
            data.display(),
            key("command.pub")?,
            key("release.pub")?,
        ),
    )?;
    let _real = Proc(
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while true; do {} run --config {}; sleep 0.3; done",
                daemon.display(),
                config.display()
            ))
            .stdout(std::fs::File::create(d.join("real.log"))?)
            .stderr(std::fs::File::create(d.join("real.err"))?)
            .spawn()?,
    );
    wait_online(db, args.count + 1, Duration::from_secs(60))?;
    let crash = cuntong_e2e::update::package(d, "crash", "9.1.0", "exit 3", 1024);
    add(&crash, "9.1.0")?;
    let id = start(db, &ca, &url, ("9.1.0", "130201"), &from, 60)?;
    let rolled = wait_for(Duration::from_secs(300), || {
        status(db, &id)["counts"]["rolled-back"] == 1
    });
    let s = status(db, &id);
    if rolled.is_none() {
        bail!("the real box did not roll back: {s:#}");
    }
    let site = &s["sites"][0];
    let at = |k: &str| {
        site[k]
            .as_str()
            .and_then(humantime_ms)
            .context("a time in rollout status")
    };
    let rollback = at("updated_at")? - at("notified_at")?;
    println!(
        "a build that exits at start: rolled back {:.1} s after its offer (download, install, 3 starts, report)",
        rollback as f64 / 1000.0
    );
    Ok(())
}

/// Unix ms of an RFC 3339 time as the CLI prints it.
fn humantime_ms(t: &str) -> Option<i64> {
    let st = humantime::parse_rfc3339(t).ok()?;
    Some(st.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as i64)
}
