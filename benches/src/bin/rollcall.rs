//! Roll call at province scale: N simulated terminals (5,000 by default) in one province
//! meeting hosted by `cuntong central`, against Mosquitto (or the embedded broker).
//!
//! Measures, in one run:
//! - the **baseline**: a bare MQTT round on the same broker — one QoS 1 publish to N bare
//!   rumqttc subscribers, each answering at once — the floor under any roll call;
//! - the **roll call**: from the chair's request to every site's answer, p50/p99 of the
//!   per-site answer latency (the host's own clock: roll call opened → answer received);
//! - **invite fan-out**: messages central publishes on the meeting tree for the start (one per
//!   invited region), against the sites they reach, and the per-site media plans.
//!
//! ```sh
//! cargo build --release --workspace --bins
//! ./target/release/rollcall --count 5000            # --broker embedded for rumqttd
//! ```

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use cuntong::commands::meeting::quantile;
use cuntong_benches::harness::{
    broker, central, free_port, mqtt_options, region_meeting, sim_fleet, spawn, wait_online,
};
use rumqttc::{AsyncClient, Event, Packet, QoS};

#[derive(Parser)]
struct Args {
    /// Simulated terminals (sites) in the province.
    #[arg(long, default_value_t = 5000)]
    count: usize,
    /// `mosquitto` or `embedded`.
    #[arg(long, default_value = "mosquitto")]
    broker: String,
    /// Internal: run N bare responders in this process (the baseline).
    #[arg(long, hide = true)]
    bare_responders: Option<usize>,
    #[arg(long, hide = true)]
    url: Option<String>,
}

const ROUND: &str = "bench/round";

/// Baseline mode: N clients that answer every round at once.
fn bare_responders(n: usize, url: &str) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        for i in 0..n {
            let (client, mut eventloop) =
                AsyncClient::new(mqtt_options(format!("bare-{i}"), url)?, 16);
            tokio::spawn(async move {
                let answer = format!("bench/answer/{i}");
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            let _ = client.try_subscribe(ROUND, QoS::AtLeastOnce);
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let _ = client.try_publish(&answer, QoS::AtLeastOnce, false, p.payload);
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                    }
                }
            });
        }
        std::future::pending::<()>().await;
        Ok::<(), anyhow::Error>(())
    })
}

/// One bare round: publish, then collect answers to this round; per-answer latencies in ms.
async fn bare_round(url: &str, n: usize, round: u32) -> anyhow::Result<Vec<u64>> {
    let (client, mut eventloop) =
        AsyncClient::new(mqtt_options(format!("bench-asker-{round}"), url)?, 64);
    client.subscribe("bench/answer/+", QoS::AtLeastOnce).await?;
    let mut latencies = Vec::with_capacity(n);
    let mut sent: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while latencies.len() < n && Instant::now() < deadline {
        let ev = tokio::time::timeout(Duration::from_secs(5), eventloop.poll()).await;
        match ev {
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                client
                    .publish(ROUND, QoS::AtLeastOnce, false, round.to_be_bytes().to_vec())
                    .await?;
                sent = Some(Instant::now());
            }
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                let this_round = <[u8; 4]>::try_from(p.payload.as_ref())
                    .is_ok_and(|b| u32::from_be_bytes(b) == round);
                if let (Some(t), true) = (sent, this_round) {
                    latencies.push(t.elapsed().as_millis() as u64);
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("asker: {e}"),
            Err(_) => break,
        }
    }
    Ok(latencies)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(n) = args.bare_responders {
        return bare_responders(n, args.url.as_deref().unwrap_or("mqtt://127.0.0.1:1883"));
    }
    let n = args.count;
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let port = free_port()?;
    let url = format!("mqtt://127.0.0.1:{port}");
    let _broker = broker(&args.broker, port, d)?;
    let rt = tokio::runtime::Runtime::new()?;
    println!(
        "roll call of {n} simulated sites, {} broker, this machine ({} cores)",
        args.broker,
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );

    // Baseline: the bare round, alone on the broker.
    let base = {
        let me = std::env::current_exe()?;
        let _bare = spawn(
            &me,
            &["--bare-responders", &n.to_string(), "--url", &url],
            &d.join("bare.log"),
        )?;
        // Warm-up rounds until every responder is subscribed.
        let mut round = 0;
        loop {
            round += 1;
            let got = rt.block_on(bare_round(&url, n, round))?.len();
            if got >= n || round >= 30 {
                break;
            }
        }
        round += 1;
        let mut lat = rt.block_on(bare_round(&url, n, round))?;
        lat.sort_unstable();
        println!(
            "  baseline bare round     all {:>5} ms   p50 {:>5} ms   p99 {:>5} ms   ({} of {n} answered)",
            lat.last().copied().unwrap_or(0),
            quantile(&lat, 0.5).unwrap_or(0),
            quantile(&lat, 0.99).unwrap_or(0),
            lat.len()
        );
        (
            lat.last().copied().unwrap_or(0),
            quantile(&lat, 0.99).unwrap_or(0),
        )
    };

    // The fleet and central.
    let db = d.join("central.db");
    let db_arg = db.to_str().context("path")?;
    let _central = central(&url, db_arg, &[], d)?;
    let _fleet = sim_fleet(&url, "13", n, "60s", d)?;
    wait_online(db_arg, n, Duration::from_secs(180))?;

    let m = rt.block_on(region_meeting(&url, "13", n))?;
    println!(
        "  start → all joined      {:>5} ms   ({} of {n} joined)",
        m.join_time.as_millis(),
        m.joined
    );
    println!(
        "  invite fan-out          {} state publish(es) for the start, one per invited region (1), reaching {} sites; {} per-site media plans (each its own SSRC and key)",
        m.start_states,
        m.joined,
        m.storm.plans()
    );
    println!("    until then: {}", m.storm.line());
    println!("  {}   (target: all <= 2000, p99 < 1000)", m.roll_call());
    println!(
        "  ratio to the bare round all {:.2}   p99 {:.2}",
        m.roll_call.all_ms as f64 / base.0.max(1) as f64,
        m.roll_call.p99_ms as f64 / base.1.max(1) as f64
    );
    Ok(())
}
