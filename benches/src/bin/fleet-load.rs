//! Fleet load: a simulated fleet against the embedded broker. Measures how long until every
//! terminal is online in central's store, the simulator's memory per terminal against bare
//! rumqttc clients (the baseline, measured in the same run), and the memory of one
//! `cuntong-terminal`.
//!
//! ```sh
//! cargo build --release --workspace --bins
//! ./target/release/fleet-load --count 2000
//! ```
//! The harness runs the release binaries next to itself, on ports of its own, and stops them.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use cuntong::store::{SqliteStore, Store};
use cuntong_benches::harness::{Proc, bin, free_port, rss_kib, spawn, wait_for};
use rumqttc::{AsyncClient, MqttOptions};

#[derive(Parser)]
struct Args {
    /// Terminals in the fleet.
    #[arg(long, default_value_t = 2000)]
    count: usize,
    /// Internal: run N bare rumqttc clients in this process (the baseline).
    #[arg(long, hide = true)]
    bare_clients: Option<usize>,
    #[arg(long, hide = true)]
    broker: Option<String>,
}

/// Baseline mode: N bare rumqttc clients, each polled by its own task, doing nothing else.
fn bare_clients(n: usize, broker: &str) -> anyhow::Result<()> {
    let url: cuntong_terminal::broker_url::BrokerUrl = broker.parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        for i in 0..n {
            let mut opts = MqttOptions::new(format!("bare-{i}"), &url.host, url.port);
            opts.set_keep_alive(Duration::from_secs(30));
            let (client, mut eventloop) = AsyncClient::new(opts, 8);
            tokio::spawn(async move {
                let _keep = client;
                loop {
                    if eventloop.poll().await.is_err() {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            });
        }
        std::future::pending::<()>().await;
    });
    Ok(())
}

/// Memory per unit: (RSS with n units − RSS with 1) / (n − 1), after `settle`.
fn per_unit_kib(
    run: impl Fn(usize) -> anyhow::Result<Proc>,
    n: usize,
    settle: Duration,
) -> anyhow::Result<(u64, f64)> {
    let one = run(1)?;
    std::thread::sleep(settle);
    let base = rss_kib(one.0.id())?;
    drop(one);
    let many = run(n)?;
    std::thread::sleep(settle);
    let total = rss_kib(many.0.id())?;
    drop(many);
    Ok((
        total,
        total.saturating_sub(base) as f64 / (n.max(2) - 1) as f64,
    ))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(n) = args.bare_clients {
        return bare_clients(n, args.broker.as_deref().unwrap_or("mqtt://127.0.0.1:1883"));
    }
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let port = free_port()?;
    let url = format!("mqtt://127.0.0.1:{port}");
    let _broker = spawn(
        &bin("cuntong")?,
        &["broker", "--listen", &format!("127.0.0.1:{port}")],
        &d.join("broker.log"),
    )?;
    if wait_for(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .is_none()
    {
        bail!("broker did not start");
    }
    let db = d.join("central.db");
    let _central = spawn(
        &bin("cuntong")?,
        &[
            "central",
            "--broker",
            &url,
            "--db",
            db.to_str().context("path")?,
        ],
        &d.join("central.log"),
    )?;
    wait_for(Duration::from_secs(10), || db.exists());
    let n = args.count;
    println!(
        "fleet of {n} simulated terminals, embedded broker, this machine ({} cores)",
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );

    let sim = bin("cuntong-sim")?;
    let started = Instant::now();
    let fleet = spawn(
        &sim,
        &[
            "fleet",
            "--broker",
            &url,
            "--region",
            "13",
            "--count",
            &n.to_string(),
            "--interval",
            "60s",
            "--data-dir",
            d.join("sim").to_str().context("path")?,
        ],
        &d.join("fleet.log"),
    )?;
    let store = SqliteStore::open(&db)?;
    let online = || {
        store
            .sites(None)
            .map(|s| s.iter().filter(|r| r.online).count())
            .unwrap_or(0)
    };
    let all_online = wait_for(Duration::from_secs(120), || online() >= n);
    match all_online {
        Some(_) => println!(
            "  all online after      {:>8.1} s   (target <= 30 s)",
            started.elapsed().as_secs_f64()
        ),
        None => println!("  only {} of {n} online after 120 s", online()),
    }
    std::thread::sleep(Duration::from_secs(5));
    let fleet_rss = rss_kib(fleet.0.id())?;
    drop(fleet);
    println!(
        "  simulator RSS         {:>8} KiB total, {:>6.1} KiB per terminal (whole process / n)",
        fleet_rss,
        fleet_rss as f64 / n as f64
    );

    // Marginal memory per terminal and per bare client, measured the same way.
    let settle = Duration::from_secs(8);
    let sim_run = |k: usize| {
        spawn(
            &sim,
            &[
                "fleet",
                "--broker",
                &url,
                "--region",
                "14",
                "--count",
                &k.to_string(),
                "--interval",
                "60s",
                "--data-dir",
                d.join(format!("sim{k}")).to_str().unwrap_or("/tmp"),
            ],
            &d.join(format!("sim{k}.log")),
        )
    };
    let (_, sim_per) = per_unit_kib(sim_run, n, settle)?;
    let me = std::env::current_exe()?;
    let bare_run = |k: usize| {
        spawn(
            &me,
            &["--bare-clients", &k.to_string(), "--broker", &url],
            &d.join(format!("bare{k}.log")),
        )
    };
    let (_, bare_per) = per_unit_kib(bare_run, n, settle)?;
    println!(
        "  per terminal (marginal) {sim_per:>6.1} KiB   bare rumqttc client {bare_per:>6.1} KiB   ratio {:.2}   (target <= 100 KiB)",
        sim_per / bare_per
    );

    // One real terminal daemon.
    let cfg = d.join("terminal.toml");
    std::fs::write(
        &cfg,
        format!(
            "id = \"130102001001-main\"\nbroker = \"{url}\"\ndata_dir = \"{}\"\n",
            d.join("t").display()
        ),
    )?;
    let terminal = spawn(
        &bin("cuntong-terminal")?,
        &["--config", cfg.to_str().context("path")?],
        &d.join("terminal.log"),
    )?;
    std::thread::sleep(settle);
    println!(
        "  cuntong-terminal RSS  {:>8} KiB   (target <= 16 MiB)",
        rss_kib(terminal.0.id())?
    );
    Ok(())
}
