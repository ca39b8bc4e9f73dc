//! Central ingest: how fast `cuntong central` stores telemetry, as a ratio to how fast a bare
//! subscriber (a rumqttc client that only counts) receives the same flood from the same broker
//! in the same run.
//!
//! ```sh
//! cargo run --release -p cuntong-benches --bin ingest -- --broker mosquitto
//! cargo run --release -p cuntong-benches --bin ingest -- --broker embedded
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use cuntong::central::{self, CentralOptions, CentralStats};
use cuntong_benches::typical_batch;
use cuntong_core::envelope::encode;
use cuntong_core::terminal_id::TerminalId;
use cuntong_core::topic::{Channel, Topic, region_filter};
use cuntong_terminal::broker_url::BrokerUrl;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Args {
    /// `embedded` (rumqttd in this process), `mosquitto` (started here), or a broker URL.
    #[arg(long, default_value = "mosquitto")]
    broker: String,
    /// Messages per phase.
    #[arg(long, default_value_t = 200_000)]
    messages: usize,
    /// Distinct terminals the messages come from.
    #[arg(long, default_value_t = 200)]
    terminals: usize,
    /// Publishing connections.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
}

struct Killer(Child);

impl Drop for Killer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// The flood: `per` messages from each of `terminals` terminals, seqs starting at `first_seq`.
fn flood(terminals: usize, per: usize, first_seq: u64) -> anyhow::Result<Vec<(String, Bytes)>> {
    let ids: Vec<TerminalId> = cuntong_firmware_sim::fleet::fleet_ids(&"13".parse()?, terminals);
    let mut out = Vec::with_capacity(terminals * per);
    for i in 0..per {
        for id in &ids {
            let seq = first_seq + i as u64;
            let env = typical_batch(seq, 1_763_798_400_000 + seq * 60_000);
            out.push((
                Topic::terminal(id, Channel::Telemetry).to_string(),
                Bytes::from(encode(&env)?),
            ));
        }
    }
    Ok(out)
}

async fn publish_all(broker: &BrokerUrl, msgs: Arc<Vec<(String, Bytes)>>, publishers: usize) {
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let msgs = msgs.clone();
        let mut opts = MqttOptions::new(
            format!("bench-pub-{p}-{}", std::process::id()),
            &broker.host,
            broker.port,
        );
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_inflight(200);
        let (client, mut eventloop) = AsyncClient::new(opts, 1000);
        // This publisher sends messages p, p + publishers, p + 2·publishers, …
        let mine = msgs.len().saturating_sub(p).div_ceil(publishers);
        let poll = tokio::spawn(async move {
            let mut acked = 0usize;
            while acked < mine {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        let send = tokio::spawn(async move {
            for (topic, payload) in msgs.iter().skip(p).step_by(publishers) {
                if client
                    .publish(topic.clone(), QoS::AtLeastOnce, false, payload.clone())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        tasks.push((send, poll));
    }
    for (s, p) in tasks {
        let _ = s.await;
        let _ = tokio::time::timeout(Duration::from_secs(120), p).await;
    }
}

/// A bare subscriber: counts telemetry messages until `n` arrived; returns messages per second
/// from the first to the last.
async fn plain_subscriber(
    broker: &BrokerUrl,
    msgs: Arc<Vec<(String, Bytes)>>,
    publishers: usize,
) -> anyhow::Result<f64> {
    let mut opts = MqttOptions::new(
        format!("bench-sub-{}", std::process::id()),
        &broker.host,
        broker.port,
    );
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(1 << 16, 1 << 16);
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    client
        .subscribe(
            region_filter(None, Some(Channel::Telemetry)),
            QoS::AtLeastOnce,
        )
        .await?;
    // Wait for the subscription to be acknowledged.
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = eventloop.poll().await? {
            break;
        }
    }
    let n = msgs.len();
    let broker2 = broker.clone();
    let publisher = tokio::spawn(async move { publish_all(&broker2, msgs, publishers).await });
    let mut count = 0usize;
    let mut first: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    while count < n {
        if Instant::now() > deadline {
            bail!("plain subscriber received only {count} of {n}");
        }
        if let Event::Incoming(Packet::Publish(_)) = eventloop.poll().await? {
            first.get_or_insert_with(Instant::now);
            count += 1;
        }
    }
    let elapsed = first.map_or(Duration::ZERO, |f| f.elapsed());
    let _ = publisher.await;
    let _ = client.disconnect().await;
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// `cuntong central` storing the flood; returns (messages/s, values/s) from the first stored
/// message to the last.
async fn central_ingest(
    broker: &BrokerUrl,
    msgs: Arc<Vec<(String, Bytes)>>,
    publishers: usize,
    db: PathBuf,
) -> anyhow::Result<(f64, f64)> {
    let stats = Arc::new(CentralStats::default());
    let stop = CancellationToken::new();
    let task = tokio::spawn(central::run(
        CentralOptions::new(
            broker.clone(),
            cuntong::store::Database::Sqlite(db),
            "bench-central",
        ),
        stats.clone(),
        stop.clone(),
    ));
    // Wait until central is subscribed: a probe message must be stored.
    let probe = flood(1, 1, 1_000_000)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while stats.get(|s| &s.stored) == 0 {
        if Instant::now() > deadline {
            bail!("central did not store the probe");
        }
        publish_all(broker, Arc::new(probe.clone()), 1).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let n = msgs.len() as u64;
    let base = stats.get(|s| &s.stored);
    let base_values = stats.get(|s| &s.values);
    let broker2 = broker.clone();
    let publisher = tokio::spawn(async move { publish_all(&broker2, msgs, publishers).await });
    let mut first: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let stored = stats.get(|s| &s.stored) - base;
        if stored > 0 {
            first.get_or_insert_with(Instant::now);
        }
        if stored >= n {
            break;
        }
        if Instant::now() > deadline {
            bail!("central stored only {stored} of {n}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = first.map_or(Duration::ZERO, |f| f.elapsed()).as_secs_f64();
    let values = stats.get(|s| &s.values) - base_values;
    let _ = publisher.await;
    stop.cancel();
    task.await?.context("central")?;
    Ok((n as f64 / elapsed, values as f64 / elapsed))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let mut _broker_proc = None;
    let url: BrokerUrl = match args.broker.as_str() {
        "embedded" => {
            let addr = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(cuntong::broker::serve(free_addr()?, None))?;
            format!("mqtt://{addr}").parse()?
        }
        "mosquitto" => {
            let addr = free_addr()?;
            let conf = dir.path().join("mosquitto.conf");
            std::fs::write(
                &conf,
                format!(
                    "listener {} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\nmax_inflight_messages 0\n",
                    addr.port()
                ),
            )?;
            let child = Command::new("mosquitto")
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting mosquitto (apt-get install mosquitto)")?;
            _broker_proc = Some(Killer(child));
            format!("mqtt://{addr}").parse()?
        }
        url => url.parse()?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let addr: SocketAddr = format!("{}:{}", url.host, url.port).parse()?;
        if !cuntong::broker::wait_ready(addr, Duration::from_secs(10)).await {
            bail!("broker at {url} is not listening");
        }
        let per = args.messages.div_ceil(args.terminals);
        let plain_msgs = Arc::new(flood(args.terminals, per, 1)?);
        let n = plain_msgs.len();
        let values_per_msg = 8;
        println!(
            "broker {}: {n} QoS 1 messages of 8 metrics from {} terminals, {} publishers",
            args.broker, args.terminals, args.publishers
        );
        let plain = plain_subscriber(&url, plain_msgs.clone(), args.publishers).await?;
        println!(
            "  plain subscriber   {plain:>10.0} msg/s   {:>10.0} values/s  (baseline)",
            plain * values_per_msg as f64
        );
        // Central gets fresh sequence numbers so nothing is a duplicate of the baseline's.
        let central_msgs = Arc::new(flood(args.terminals, per, 1)?);
        let (msgs, values) = central_ingest(
            &url,
            central_msgs,
            args.publishers,
            dir.path().join("central.db"),
        )
        .await?;
        println!("  cuntong central    {msgs:>10.0} msg/s   {values:>10.0} values/s  stored");
        println!("  ratio              {:>10.2}", msgs / plain);
        Ok(())
    })
}
