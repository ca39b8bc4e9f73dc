//! Outbox figures: append throughput (per-record fsync and batched fsync) against a plain
//! `write`-only baseline in the same run, and the replay after an outage of 10,000 records.
//!
//! ```sh
//! cargo run --release -p cuntong-benches --bin outbox
//! cargo run --release -p cuntong-benches --bin outbox -- --replay-rate 0
//! ```

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use cuntong::central::{self, CentralOptions, CentralStats};
use cuntong::store::SqliteStore;
use cuntong_benches::typical_batch;
use cuntong_core::envelope::{Stream, encode};
use cuntong_firmware_sim::fleet::{Fleet, SimOptions};
use cuntong_terminal::outbox::{Outbox, OutboxConfig, SyncPolicy};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Args {
    /// Records appended in the batched-sync and baseline runs.
    #[arg(long, default_value_t = 100_000)]
    records: usize,
    /// Records appended with an fsync each (slow on purpose).
    #[arg(long, default_value_t = 2_000)]
    synced_records: usize,
    /// Backlog replayed after the outage.
    #[arg(long, default_value_t = 10_000)]
    backlog: u64,
    /// Replay pacing, records per second (0: unlimited).
    #[arg(long, default_value_t = 1000)]
    replay_rate: u32,
}

fn payloads(n: usize) -> anyhow::Result<Vec<Vec<u8>>> {
    (0..n)
        .map(|i| {
            Ok(encode(&typical_batch(
                i as u64 + 1,
                1_763_798_400_000 + i as u64 * 60_000,
            ))?)
        })
        .collect()
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn append(dir: &std::path::Path, sync: SyncPolicy, data: &[Vec<u8>]) -> anyhow::Result<f64> {
    let cfg = OutboxConfig {
        budget_bytes: 1 << 30,
        sync,
        ..OutboxConfig::default()
    };
    let (mut ob, _) = Outbox::open(dir, cfg)?;
    let start = Instant::now();
    for p in data {
        ob.append(Stream::Telemetry, 0, p)?;
    }
    ob.flush()?;
    Ok(rate(data.len(), start.elapsed()))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let data = payloads(args.records)?;
    let bytes: usize = data.iter().map(Vec::len).sum::<usize>() / data.len();

    // Baseline: the same bytes, one write each, to a plain file, no fsync.
    let path = dir.path().join("plain");
    let mut f = std::fs::File::create(&path)?;
    let start = Instant::now();
    for p in &data {
        f.write_all(p)?;
    }
    let plain = rate(data.len(), start.elapsed());

    let batched = append(
        &dir.path().join("batched"),
        SyncPolicy::Interval(Duration::from_secs(1)),
        &data,
    )?;
    let synced = append(
        &dir.path().join("synced"),
        SyncPolicy::EveryRecord,
        &data[..args.synced_records.min(data.len())],
    )?;
    println!("outbox append, {bytes}-byte telemetry records");
    println!("  plain write (baseline)   {plain:>12.0} records/s");
    println!(
        "  outbox, fsync every 1 s  {batched:>12.0} records/s   ratio {:.2}",
        batched / plain
    );
    println!(
        "  outbox, fsync per record {synced:>12.0} records/s   ratio {:.4}",
        synced / plain
    );

    replay(&args)
}

/// Fills a terminal's outbox as an outage would, then starts the terminal against a broker and
/// central, and times the replay until central has stored everything.
fn replay(args: &Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let addr = cuntong::broker::serve("127.0.0.1:0".parse()?, None).await?;
        let url: cuntong_terminal::broker_url::BrokerUrl = format!("mqtt://{addr}").parse()?;
        let db = dir.path().join("central.db");
        let stats = Arc::new(CentralStats::default());
        let stop = CancellationToken::new();
        let central = tokio::spawn(central::run(
            CentralOptions::new(
                url.clone(),
                cuntong::store::Database::Sqlite(db.clone()),
                "bench-central",
            ),
            stats.clone(),
            stop.clone(),
        ));

        let id: cuntong_core::terminal_id::TerminalId = "130102001001-main".parse()?;
        let mut opts = SimOptions::new(url, dir.path().join("t"), Duration::from_secs(3600));
        opts.delivery.rate_per_s = args.replay_rate;
        opts.delivery.burst = args.replay_rate.max(1);
        // The outage: records the terminal wrote while the link was down.
        {
            let (mut ob, _) = Outbox::open(
                &opts.data_root.join(id.to_string()).join("outbox"),
                OutboxConfig::default(),
            )?;
            for seq in 1..=args.backlog {
                let env = typical_batch(seq, 1_763_798_400_000 + seq * 60_000);
                ob.append(Stream::Telemetry, env.time_ms, &encode(&env)?)?;
            }
            ob.flush()?;
        }
        let start = Instant::now();
        let fleet = Fleet::start(vec![id], &opts);
        let store = SqliteStore::open(&db)?;
        let deadline = start + Duration::from_secs(600);
        while store.count(&id.to_string(), Stream::Telemetry)? < args.backlog {
            if Instant::now() > deadline {
                bail!("replay did not finish in 10 minutes");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let stored = start.elapsed();
        println!(
            "replay of {} records after an outage (pacing {} records/s{})",
            args.backlog,
            args.replay_rate,
            if args.replay_rate == 0 {
                ", i.e. unlimited"
            } else {
                ""
            }
        );
        println!(
            "  all stored by central after {:>8.2} s   {:>8.0} records/s",
            stored.as_secs_f64(),
            args.backlog as f64 / stored.as_secs_f64()
        );
        fleet.stop().await;
        stop.cancel();
        let _ = central.await;
        Ok(())
    })
}
