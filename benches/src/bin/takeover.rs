//! Takeover of the host role: two `cuntong central` instances on one PostgreSQL store and
//! Mosquitto, a county of 30 simulated terminals reporting every second and in a live meeting.
//! Each try `kill -9`s the instance holding the host role and times how long until a chair
//! operation is answered again (through the other, which loads the meetings from the store);
//! then a new instance is started to stand by. Beside it, in the same run, the same operation
//! answered with no takeover.
//!
//! ```sh
//! cargo build --release --workspace --bins
//! ./target/release/takeover --tries 10
//! ```

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use cuntong::commands::central::InstanceJson;
use cuntong::commands::meeting::{CentralClient, quantile};
use cuntong::control::{RequestBody, ResponseBody};
use cuntong_benches::harness::{
    Proc, bin, broker, create_meeting, free_port, sim_fleet, spawn, wait_for,
};
use cuntong_core::meeting::MeetingId;
use cuntong_core::meeting::host::ChairOp;
use cuntong_e2e::postgres::Postgres;

#[derive(Parser)]
struct Args {
    /// Takeovers to time.
    #[arg(long, default_value_t = 10)]
    tries: usize,
}

/// The instances the store lists, with their roles.
fn instances(db: &str) -> Vec<InstanceJson> {
    let out = bin("cuntong").and_then(|b| {
        Ok(std::process::Command::new(b)
            .args(["central", "status", "--json", "--db", db])
            .output()?)
    });
    out.ok()
        .filter(|o| o.status.success())
        .and_then(|o| serde_json::from_slice(&o.stdout).ok())
        .unwrap_or_default()
}

/// A chair operation through whichever instance answers, asked again until one does (each
/// try waits at most 500 ms); how long until one answered.
async fn answered(
    client: &mut CentralClient,
    meeting: MeetingId,
    within: Duration,
) -> Option<Duration> {
    let asked = Instant::now();
    while asked.elapsed() < within {
        let op = RequestBody::Op {
            meeting,
            op: ChairOp::MuteAll,
        };
        if let Ok(ResponseBody::Done { .. }) = client.ask(op, Duration::from_millis(500)).await {
            return Some(asked.elapsed());
        }
    }
    None
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let cluster = Postgres::start_with(&[]).map_err(anyhow::Error::msg)?;
    let db = cluster.fresh_database();
    let port = free_port()?;
    let _broker = broker("mosquitto", port, d)?;
    let url = format!("mqtt://127.0.0.1:{port}");
    let mut started = 0;
    let mut start = || -> anyhow::Result<Proc> {
        started += 1;
        spawn(
            &bin("cuntong")?,
            &["central", "--broker", &url, "--db", &db],
            &d.join(format!("central-{started}.log")),
        )
    };
    let mut centrals = vec![start()?];
    if wait_for(Duration::from_secs(30), || {
        instances(&db).iter().any(|i| i.roles == ["host"])
    })
    .is_none()
    {
        bail!("no instance took the host role");
    }
    centrals.push(start()?);
    let _fleet = sim_fleet(&url, "130102", 30, "1s", d)?;
    cuntong_benches::harness::wait_online(&db, 30, Duration::from_secs(60))?;

    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let mut client = CentralClient::connect(url.parse::<cuntong_terminal::broker_url::Brokers>()?, None, rumqttc::QoS::AtLeastOnce)
            .await
            .map_err(anyhow::Error::msg)?;
        let id = create_meeting(&mut client, "县防汛例会", "130102").await?;
        client.op(id, ChairOp::Start).await?;

        // Baseline: the same operation with the holder alive.
        let mut plain: Vec<u64> = Vec::new();
        for _ in 0..args.tries {
            let t = answered(&mut client, id, Duration::from_secs(10))
                .await
                .context("no answer with both instances up")?;
            plain.push(t.as_millis() as u64);
        }
        let mut takeovers: Vec<u64> = Vec::new();
        for k in 1..=args.tries {
            let holder = wait_for(Duration::from_secs(30), || {
                instances(&db).iter().any(|i| i.roles == ["host"])
            })
            .and_then(|_| instances(&db).into_iter().find(|i| i.roles == ["host"]))
            .context("no holder")?;
            let pid: u32 = holder
                .instance
                .rsplit('/')
                .next()
                .and_then(|p| p.parse().ok())
                .context("instance name")?;
            let Some(at) = centrals.iter().position(|c| c.0.id() == pid) else {
                bail!("the holder {} is not one of ours", holder.instance);
            };
            let mut dead = centrals.remove(at);
            dead.0.kill()?;
            let killed = Instant::now();
            let _ = dead.0.wait();
            answered(&mut client, id, Duration::from_secs(30))
                .await
                .context("no answer 30 s after the kill")?;
            let ms = killed.elapsed().as_millis() as u64;
            println!("  try {k:>2}: chair answered again {ms} ms after kill -9 of {}", holder.instance);
            takeovers.push(ms);
            // A new standby, listed before the next try.
            centrals.push(start()?);
            let new_pid = centrals.last().map(|c| c.0.id()).unwrap_or_default();
            wait_for(Duration::from_secs(30), || {
                instances(&db)
                    .iter()
                    .any(|i| i.instance.ends_with(&format!("/{new_pid}")))
            })
            .context("the new standby is not listed")?;
        }
        plain.sort_unstable();
        takeovers.sort_unstable();
        println!(
            "  no takeover (baseline)  p50 {:>5} ms   max {:>5} ms",
            quantile(&plain, 0.5).unwrap_or(0),
            plain.last().copied().unwrap_or(0)
        );
        println!(
            "  takeover after kill -9  p50 {:>5} ms   max {:>5} ms   over {} tries (target: within 10 s)",
            quantile(&takeovers, 0.5).unwrap_or(0),
            takeovers.last().copied().unwrap_or(0),
            takeovers.len()
        );
        client.close();
        Ok(())
    })
}
