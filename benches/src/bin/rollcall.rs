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

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use cuntong::commands::meeting::{CentralClient, quantile};
use cuntong::control::RequestBody;
use cuntong_benches::harness::{broker, central, free_port, sim_fleet, spawn, wait_online};
use cuntong_core::meeting::host::ChairOp;
use cuntong_core::meeting::{Kind, MediaProfile};
use cuntong_terminal::broker_url::Brokers;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

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

fn options(id: String, url: &str) -> anyhow::Result<MqttOptions> {
    let url: cuntong_terminal::broker_url::BrokerUrl = url.parse()?;
    let mut opts = MqttOptions::new(id, &url.host, url.port);
    opts.set_keep_alive(Duration::from_secs(30));
    Ok(opts)
}

/// Baseline mode: N clients that answer every round at once.
fn bare_responders(n: usize, url: &str) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        for i in 0..n {
            let (client, mut eventloop) = AsyncClient::new(options(format!("bare-{i}"), url)?, 16);
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
        AsyncClient::new(options(format!("bench-asker-{round}"), url)?, 64);
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
    let _central = central(&url, &db, &[], d)?;
    let _fleet = sim_fleet(&url, "13", n, "60s", d)?;
    wait_online(&db, n, Duration::from_secs(180))?;

    rt.block_on(async {
        // Counts what central publishes on the meeting tree and the sites' downlinks.
        let states = Arc::new(AtomicU64::new(0));
        let plans = Arc::new(AtomicU64::new(0));
        let (watcher, mut wl) = AsyncClient::new(options("bench-watcher".into(), &url)?, 64);
        watcher.subscribe("ct/v1/m/#", QoS::AtMostOnce).await?;
        watcher
            .subscribe("ct/v1/t/+/+/+/+/+/+/md", QoS::AtMostOnce)
            .await?;
        let (s2, p2) = (states.clone(), plans.clone());
        tokio::spawn(async move {
            while let Ok(ev) = wl.poll().await {
                if let Event::Incoming(Packet::Publish(p)) = ev {
                    if p.topic.starts_with("ct/v1/m/") {
                        s2.fetch_add(1, Ordering::Relaxed);
                    } else {
                        p2.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;

        let mut client = CentralClient::connect(url.parse::<Brokers>()?, None, QoS::AtLeastOnce)
            .await
            .map_err(anyhow::Error::msg)?;
        let created = client
            .ask(
                RequestBody::Create {
                    title: "全省视频会议".into(),
                    kind: Kind::Meeting,
                    invite: vec!["13".parse().map_err(anyhow::Error::msg)?],
                    at_ms: None,
                    profile: MediaProfile::named("sd").context("no sd profile")?,
                    chair: None,
                    floor_mutes_others: true,
                },
                Duration::from_secs(30),
            )
            .await?;
        let id = match created {
            cuntong::control::ResponseBody::Created { id } => id,
            other => bail!("unexpected answer {other:?}"),
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = states.load(Ordering::Relaxed);
        let started = Instant::now();
        client.op(id, ChairOp::Start).await?;
        let joined = loop {
            let s = client.status(id).await?;
            let j = s.sites.iter().filter(|x| x.state == "joined").count();
            if j >= n || started.elapsed() > Duration::from_secs(120) {
                break j;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let join_time = started.elapsed();
        let start_states = states.load(Ordering::Relaxed) - before;
        println!(
            "  start → all joined      {:>5} ms   ({joined} of {n} joined)",
            join_time.as_millis()
        );
        println!(
            "  invite fan-out          {start_states} state publish(es) for the start, one per invited region (1), reaching {joined} sites; {} per-site media plans (each its own SSRC and key)",
            plans.load(Ordering::Relaxed)
        );

        let asked = Instant::now();
        let rows = client.roll_call(id, Duration::from_secs(60)).await?;
        let wall = asked.elapsed();
        let mut lat: Vec<u64> = rows.iter().filter_map(|r| r.latency_ms).collect();
        lat.sort_unstable();
        let present = rows.iter().filter(|r| r.present).count();
        let all = lat.last().copied().unwrap_or(0);
        let p50 = quantile(&lat, 0.5).unwrap_or(0);
        let p99 = quantile(&lat, 0.99).unwrap_or(0);
        println!(
            "  roll call               all {all:>5} ms   p50 {p50:>5} ms   p99 {p99:>5} ms   ({present} of {} present; command saw it after {} ms)   (target: all <= 2000, p99 < 1000)",
            rows.len(),
            wall.as_millis()
        );
        println!(
            "  ratio to the bare round all {:.2}   p99 {:.2}",
            all as f64 / base.0.max(1) as f64,
            p99 as f64 / base.1.max(1) as f64
        );
        client.op(id, ChairOp::End).await?;
        client.close();
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(())
}
