//! From a terminal going offline to its alarm in central's store, with a fleet of 2,000
//! simulated terminals reporting to the same central, against Mosquitto.
//!
//! Three ways to go offline: an orderly stop (the terminal says goodbye), a crash (`kill -9`:
//! the OS closes the socket, the broker publishes the will at once), and a dead link (the
//! proxy stalls: no FIN, no RST; the broker notices after 1.5 × the keep-alive, 7.5 s here,
//! the floor). The grace period is 0 so the figures are the pipeline's own; add
//! `[offline] grace`. Central evaluates offline alarms once a second, so up to 1 s comes on top.
//!
//! ```sh
//! cargo build --release --workspace --bins
//! ./target/release/alarm-delay --count 2000
//! ```

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use cuntong_benches::harness::{
    Proc, bin, broker, central, free_port, sim_fleet, spawn, wait_for, wait_online,
};

#[derive(Parser)]
struct Args {
    /// Simulated terminals besides the one that goes offline.
    #[arg(long, default_value_t = 2000)]
    count: usize,
}

const VICTIM: &str = "140102001001-main";

fn victim(url: &str, d: &Path) -> anyhow::Result<Proc> {
    spawn(
        &bin("cuntong-sim")?,
        &[
            "terminal",
            "--id",
            VICTIM,
            "--broker",
            url,
            "--data-dir",
            d.join("victim").to_str().context("path")?,
            "--interval",
            "10s",
            "--keep-alive",
            "5s",
        ],
        &d.join("victim.log"),
    )
}

/// Waits for the victim's offline alarm to be active (`true`) or gone (`false`).
fn alarm_is(db: &Path, active: bool, timeout: Duration) -> Option<Duration> {
    wait_for(timeout, || {
        cuntong::store::SqliteStore::open_read_only(db)
            .and_then(|s| s.alarms(None, true, 10_000))
            .map(|v| v.iter().any(|a| a.subject.to_string() == VICTIM) == active)
            .unwrap_or(false)
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let port = free_port()?;
    let url = format!("mqtt://127.0.0.1:{port}");
    let _broker = broker("mosquitto", port, d)?;
    let rules = d.join("rules.toml");
    std::fs::write(&rules, "[offline]\ngrace = \"0s\"\n")?;
    let db = d.join("central.db");
    let db_arg = db.to_str().context("path")?;
    let rules_arg = rules.to_str().context("path")?;
    let _central = central(&url, db_arg, &["--alarms", rules_arg], d)?;
    let _fleet = sim_fleet(&url, "13", args.count, "10s", d)?;
    let mut v = victim(&url, d)?;
    wait_online(db_arg, args.count + 1, Duration::from_secs(180))?;
    println!(
        "offline → alarm with {} simulated terminals reporting, Mosquitto, grace 0",
        args.count
    );

    // Orderly stop: SIGTERM, the terminal publishes its offline presence itself.
    std::process::Command::new("kill")
        .args(["-TERM", &v.0.id().to_string()])
        .status()?;
    let orderly =
        alarm_is(&db, true, Duration::from_secs(30)).context("no alarm after an orderly stop")?;
    println!(
        "  orderly stop  → alarm   {:>6} ms   (floor ~0: the goodbye is immediate)",
        orderly.as_millis()
    );
    drop(v);
    v = victim(&url, d)?;
    alarm_is(&db, false, Duration::from_secs(60)).context("the alarm did not clear")?;

    // Power cut: the broker notices after 1.5 × keep-alive (7.5 s).
    std::thread::sleep(Duration::from_secs(2));
    let _ = v.0.kill();
    let _ = v.0.wait();
    let crash = alarm_is(&db, true, Duration::from_secs(60)).context("no alarm after kill -9")?;
    println!(
        "  kill -9       → alarm   {:>6} ms   (floor ~0: the OS closes the socket, the will goes at once)",
        crash.as_millis()
    );
    drop(v);

    // A dead link: the victim behind a proxy that stalls.
    let proxy_port = free_port()?;
    let control = d.join("link.sock");
    let _proxy = spawn(
        &bin("cuntong-sim")?,
        &[
            "proxy",
            "--listen",
            &format!("127.0.0.1:{proxy_port}"),
            "--upstream",
            &format!("127.0.0.1:{port}"),
            "--control",
            control.to_str().context("path")?,
        ],
        &d.join("proxy.log"),
    )?;
    wait_for(Duration::from_secs(10), || control.exists()).context("proxy")?;
    let _v = victim(&format!("mqtt://127.0.0.1:{proxy_port}"), d)?;
    alarm_is(&db, false, Duration::from_secs(60)).context("the alarm did not clear")?;
    std::thread::sleep(Duration::from_secs(2));
    let stall = std::process::Command::new(bin("cuntong-sim")?)
        .args([
            "link",
            "--control",
            control.to_str().context("path")?,
            "stall",
        ])
        .status()?;
    if !stall.success() {
        bail!("cannot stall the link");
    }
    let dead =
        alarm_is(&db, true, Duration::from_secs(60)).context("no alarm after the link died")?;
    let floor = Duration::from_millis(7_500);
    println!(
        "  dead link     → alarm   {:>6} ms   floor {} ms (1.5 × keep-alive)   ratio {:.2}",
        dead.as_millis(),
        floor.as_millis(),
        dead.as_secs_f64() / floor.as_secs_f64()
    );
    Ok(())
}
