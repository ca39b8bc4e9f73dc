//! The store on PostgreSQL: how fast `PgStore` stores groups of telemetry, as a ratio to a bare
//! binary COPY of the same rows into a plain table (no key, no index) in the same run on the
//! same server (the two take turns, `--rounds` of them on fresh tables, and the round of the
//! median ratio is reported), and the embedded SQLite store beside it with the same groups. Then the fleet
//! view of the whole region (`sites --region 13`) and one terminal's history (all of it, and
//! its last hour) on both.
//!
//! ```sh
//! cargo run --release -p cuntong-benches --bin pg-ingest
//! cargo run --release -p cuntong-benches --bin pg-ingest -- --terminals 5000 --minutes 60
//! ```
//!
//! It starts a throwaway cluster (Debian's PostgreSQL, as the `postgres` user when root) with
//! PostgreSQL's durable defaults (`--fast`: no fsync), or uses `--db postgres://…`.

use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use cuntong::store::{MessageCopy, PgStore, Record, SqliteStore, Store};
use cuntong_benches::typical_batch;
use cuntong_core::envelope::encode;
use cuntong_core::site::Region;
use cuntong_e2e::postgres::Postgres;
use postgres::{Client, NoTls};

#[derive(Parser)]
struct Args {
    /// Terminals, each sending one message a minute.
    #[arg(long, default_value_t = 2_000)]
    terminals: usize,
    /// Minutes of the fleet's telemetry to store.
    #[arg(long, default_value_t = 100)]
    minutes: u64,
    /// Records per group (one transaction each), as central's writer groups them.
    #[arg(long, default_value_t = 4_096)]
    group: usize,
    /// A throwaway cluster without fsync (tests' settings) instead of the durable defaults.
    #[arg(long)]
    fast: bool,
    /// An existing (empty) PostgreSQL database instead of a throwaway cluster (one round).
    #[arg(long)]
    db: Option<String>,
    /// Rounds of the bare COPY and the store in turn, each on fresh tables.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

/// 2025-11-22T08:00:00Z.
const T0: u64 = 1_763_798_400_000;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let region: Region = "13".parse()?;
    let ids = cuntong_firmware_sim::fleet::fleet_ids(&region, args.terminals);
    let records = fleet_records(&ids, args.minutes)?;
    let groups: Vec<&[Record]> = records.chunks(args.group).collect();

    let (_cluster, bare_url, store_urls) = databases(&args)?;
    println!(
        "{} messages of 8 metrics from {} terminals in groups of {} ({} PostgreSQL server), {} rounds",
        records.len(),
        ids.len(),
        args.group,
        if args.fast { "fsync off" } else { "durable" },
        store_urls.len()
    );

    // Baseline: the same rows, binary COPY into a plain table, one transaction per group. And,
    // to see what a key a message costs, into a table keyed by (terminal, stream, seq) (what
    // de-duplication by a key a message needs), and into one with that key and an index by
    // (terminal, stream, time, seq) (the two keys of the store before runs of seqs): the floors
    // under any store with a per-message B-tree.
    let mut bare = Client::connect(&bare_url, NoTls).context("connecting")?;
    bare.batch_execute(
        "CREATE TABLE keyed (terminal text COLLATE \"C\", stream smallint, seq bigint,
            time_ms bigint, received_ms bigint, payload bytea,
            PRIMARY KEY (terminal, stream, seq));
         CREATE TABLE two_keys (terminal text COLLATE \"C\", stream smallint, seq bigint,
            time_ms bigint, received_ms bigint, payload bytea,
            PRIMARY KEY (terminal, stream, seq));
         CREATE UNIQUE INDEX two_keys_by_time ON two_keys (terminal, stream, time_ms, seq)",
    )?;
    let (mut rounds, pg) = take_turns(&mut bare, &store_urls, &groups)?;
    let keyed_rate = copy_rate(&mut bare, "keyed", &groups)?;
    let two_keys_rate = copy_rate(&mut bare, "two_keys", &groups)?;
    let (bare_rate, pg_rate) = median_round(&mut rounds);
    // Sanity: everything stored once.
    let stored = pg.count(
        &ids[0].to_string(),
        cuntong_core::envelope::Stream::Telemetry,
    )?;
    anyhow::ensure!(
        stored == args.minutes,
        "PgStore stored {stored} of one terminal"
    );

    let dir = tempfile::tempdir()?;
    let mut lite = SqliteStore::open(&dir.path().join("central.db"))?;
    let lite_rate = ingest(&mut lite, &groups)?;

    // The statistics autovacuum gathers on a table this size within a minute: without them
    // the planner reads a partition whole instead of through its BRIN index.
    let last_url = store_urls.last().context("no round")?;
    Client::connect(last_url, NoTls)?.batch_execute("ANALYZE messages")?;
    let pg_sites = time_sites(&pg, &region)?;
    let lite_sites = time_sites(&lite, &region)?;
    // One terminal's history: all of it, and its last hour.
    let last_hour = T0 + args.minutes.saturating_sub(60) * 60_000;
    let pg_history = time_history(&pg, &ids[ids.len() / 2], None)?;
    let lite_history = time_history(&lite, &ids[ids.len() / 2], None)?;
    let pg_hour = time_history(&pg, &ids[ids.len() / 2], Some(last_hour))?;
    let lite_hour = time_history(&lite, &ids[ids.len() / 2], Some(last_hour))?;

    println!(
        "  bare binary COPY    {bare_rate:>10.0} msg/s  (baseline; the round of the median ratio)"
    );
    println!(
        "  COPY, keyed table   {keyed_rate:>10.0} msg/s  ratio {:.2}",
        keyed_rate / bare_rate
    );
    println!(
        "  COPY, both keys     {two_keys_rate:>10.0} msg/s  ratio {:.2}",
        two_keys_rate / bare_rate
    );
    println!(
        "  PgStore             {pg_rate:>10.0} msg/s  {:>10.0} values/s  ratio {:.2}",
        pg_rate * 8.0,
        pg_rate / bare_rate
    );
    println!(
        "  SqliteStore         {lite_rate:>10.0} msg/s  {:>10.0} values/s  PostgreSQL/SQLite {:.2}",
        lite_rate * 8.0,
        pg_rate / lite_rate
    );
    println!(
        "  sites --region 13   PostgreSQL {:>8.1} ms   SQLite {:>8.1} ms   ({} terminals)",
        ms(pg_sites),
        ms(lite_sites),
        ids.len()
    );
    println!(
        "  telemetry, one terminal, all {} min   PostgreSQL {:>8.1} ms   SQLite {:>8.1} ms",
        args.minutes,
        ms(pg_history),
        ms(lite_history)
    );
    println!(
        "  telemetry, one terminal, last hour   PostgreSQL {:>8.1} ms   SQLite {:>8.1} ms",
        ms(pg_hour),
        ms(lite_hour)
    );
    Ok(())
}

/// The best of three reads of one terminal's telemetry since `since_ms`.
fn time_history(
    store: &dyn Store,
    terminal: &cuntong_core::terminal_id::TerminalId,
    since_ms: Option<u64>,
) -> anyhow::Result<Duration> {
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        let rows = store.telemetry(terminal, None, since_ms)?;
        best = best.min(start.elapsed());
        anyhow::ensure!(!rows.is_empty(), "no telemetry");
    }
    Ok(best)
}

/// Binary COPY of every group into `table`, one transaction each; rows per second.
fn copy_rate(client: &mut Client, table: &str, groups: &[&[Record]]) -> anyhow::Result<f64> {
    let statement = client.prepare(&MessageCopy::statement(table))?;
    let start = Instant::now();
    let mut rows = 0;
    for group in groups {
        let mut tx = client.transaction()?;
        let mut w = MessageCopy::open(&mut tx, &statement)?;
        for r in group.iter() {
            if let Record::Telemetry {
                terminal,
                received_ms,
                envelope,
                raw,
            } = r
            {
                w.write(
                    &terminal.to_string(),
                    0,
                    envelope.seq as i64,
                    envelope.time_ms as i64,
                    *received_ms as i64,
                    raw,
                )?;
                rows += 1;
            }
        }
        w.finish()?;
        tx.commit()?;
    }
    Ok(rows as f64 / start.elapsed().as_secs_f64())
}

/// The fleet's minutes in arrival order: every terminal's message of a minute, then the next.
fn fleet_records(
    ids: &[cuntong_core::terminal_id::TerminalId],
    minutes: u64,
) -> anyhow::Result<Vec<Record>> {
    let mut records = Vec::with_capacity(ids.len() * minutes as usize);
    for minute in 0..minutes {
        for id in ids {
            let time_ms = T0 + minute * 60_000;
            let envelope = typical_batch(minute + 1, time_ms);
            let raw = Bytes::from(encode(&envelope)?);
            records.push(Record::Telemetry {
                terminal: *id,
                received_ms: time_ms + 150,
                envelope,
                raw,
            });
        }
    }
    Ok(records)
}

/// Where the run writes: `--db` (the bare tables and one round's store in it), or a throwaway
/// cluster (kept running while the first value lives) with a database for the bare tables and
/// one for each round's store.
fn databases(args: &Args) -> anyhow::Result<(Option<Postgres>, String, Vec<String>)> {
    if let Some(url) = &args.db {
        return Ok((None, url.clone(), vec![url.clone()]));
    }
    let settings: &[(&str, &str)] = if args.fast {
        &[("fsync", "off"), ("synchronous_commit", "off")]
    } else {
        &[]
    };
    let cluster = Postgres::start_with(settings).map_err(anyhow::Error::msg)?;
    let stores = (0..args.rounds.max(1))
        .map(|_| cluster.fresh_database())
        .collect();
    let bare = cluster.fresh_database();
    Ok((Some(cluster), bare, stores))
}

/// The bare COPY (on `bare`) and the store (on each database of `store_urls` in turn) take
/// turns, each round into tables of its own: the server's pace drifts by several percent from
/// one moment to the next, and the median of the rounds' ratios is what a run says. The
/// rounds, and the last round's store.
fn take_turns(
    bare: &mut Client,
    store_urls: &[String],
    groups: &[&[Record]],
) -> anyhow::Result<(Vec<Round>, PgStore)> {
    let mut rounds = Vec::new();
    let mut pg = None;
    for (i, store_url) in store_urls.iter().enumerate() {
        // What a round left behind is dropped before the next, so that no autovacuum of it
        // runs during another's timing.
        if let Some(done) = pg.take() {
            drop::<PgStore>(done);
            let before = &store_urls[i - 1];
            let name = before.rsplit('/').next().context("database name")?;
            // Two statements: DROP DATABASE runs outside any transaction.
            bare.batch_execute(&format!("DROP TABLE bare_{}", i - 1))?;
            bare.batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))?;
        }
        let (round, store) = race(bare, store_url, &format!("bare_{i}"), groups)?;
        println!("  round {}             {round}", i + 1);
        rounds.push(round);
        pg = Some(store);
    }
    Ok((rounds, pg.context("no round")?))
}

/// One round: the bare COPY into a new table `table` on `bare`, then `PgStore` on the empty
/// database at `store_url`, with the CPU each used where the server runs on this machine.
fn race(
    bare: &mut Client,
    store_url: &str,
    table: &str,
    groups: &[&[Record]],
) -> anyhow::Result<(Round, PgStore)> {
    bare.batch_execute(&format!(
        "CREATE TABLE {table} (terminal text, stream smallint, seq bigint, time_ms bigint,
            received_ms bigint, payload bytea)"
    ))?;
    checkpoint(bare);
    let bare_server = Backend::of(bare)?;
    let bare_rate = copy_rate(bare, table, groups)?;
    let bare_cpu = bare_server.cpu_ms();

    let mut pg = PgStore::open(store_url)?;
    checkpoint(bare);
    // The store's backends: the other sessions on its database (its connection, and the one
    // that summarises the index while it folds).
    let mut probe = Client::connect(store_url, NoTls)?;
    let store_server = Backends::others(&mut probe)?;
    let client = Backend(
        Some(std::process::id() as i32),
        cpu_ticks(std::process::id() as i32),
    );
    let pg_rate = ingest(&mut pg, groups)?;
    let cpu = match (bare_cpu, store_server.cpu_ms(&mut probe)?, client.cpu_ms()) {
        (Some(bare), Some(store), Some(client)) => Some([bare, store, client]),
        _ => None,
    };
    Ok((
        Round {
            bare_rate,
            pg_rate,
            cpu,
        },
        pg,
    ))
}

/// Writes out what the server holds dirty, so that neither side of a round pays for the
/// other's writes; where the bench may not (`--db` as a user without the right), the rounds
/// run without.
fn checkpoint(client: &mut Client) {
    if let Err(e) = client.batch_execute("CHECKPOINT") {
        eprintln!("  (no CHECKPOINT between the timings: {e})");
    }
}

/// What one round measured: messages a second of the bare COPY and of `PgStore`, and the CPU
/// (ms) of the server for the bare COPY, of the server for `PgStore` (all its backends), and of
/// `PgStore`'s client.
struct Round {
    bare_rate: f64,
    pg_rate: f64,
    cpu: Option<[u64; 3]>,
}

impl Round {
    fn ratio(&self) -> f64 {
        self.pg_rate / self.bare_rate
    }
}

impl std::fmt::Display for Round {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "bare COPY {:>8.0} msg/s, PgStore {:>8.0} msg/s, ratio {:.2}",
            self.bare_rate,
            self.pg_rate,
            self.ratio()
        )?;
        if let Some([bare, store, client]) = self.cpu {
            write!(
                f,
                " (CPU ms: server {bare} for the bare COPY, {store} for PgStore; PgStore's client {client})"
            )?;
        }
        Ok(())
    }
}

/// The rates of the round whose ratio is the median (the lower middle of an even count).
fn median_round(rounds: &mut [Round]) -> (f64, f64) {
    rounds.sort_by(|a, b| a.ratio().total_cmp(&b.ratio()));
    let mid = &rounds[(rounds.len() - 1) / 2];
    (mid.bare_rate, mid.pg_rate)
}

/// Stores every group and settles what the store defers; messages per second.
fn ingest(store: &mut dyn Store, groups: &[&[Record]]) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut stored = 0;
    for group in groups {
        stored += store.apply(group)?.stored;
    }
    // As central's writer does once its queue runs empty.
    store.settle()?;
    let total: usize = groups.iter().map(|g| g.len()).sum();
    anyhow::ensure!(stored == total as u64, "stored {stored} of {total}");
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// The best of three reads of the region's fleet view.
fn time_sites(store: &dyn Store, region: &Region) -> anyhow::Result<Duration> {
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        let rows = store.sites(Some(region))?;
        best = best.min(start.elapsed());
        anyhow::ensure!(!rows.is_empty(), "no sites");
    }
    Ok(best)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

/// A process (a server's backend, or this one) and its CPU time when first seen: where the
/// time goes, when the server runs on this machine.
struct Backend(Option<i32>, Option<u64>);

impl Backend {
    /// The backend serving `client`.
    fn of(client: &mut Client) -> anyhow::Result<Backend> {
        let pid: i32 = client.query_one("SELECT pg_backend_pid()", &[])?.get(0);
        Ok(Backend(Some(pid), cpu_ticks(pid)))
    }

    /// Milliseconds of CPU since it was first seen.
    fn cpu_ms(&self) -> Option<u64> {
        let ticks = cpu_ticks(self.0?)?.checked_sub(self.1?)?;
        Some(ticks * 1_000 / CLOCK_TICKS)
    }
}

/// The backends on a database other than the one asking, and their CPU time when first seen.
struct Backends(Vec<(i32, u64)>);

impl Backends {
    fn others(client: &mut Client) -> anyhow::Result<Backends> {
        Ok(Backends(
            other_backends(client)?
                .into_iter()
                .filter_map(|pid| Some((pid, cpu_ticks(pid)?)))
                .collect(),
        ))
    }

    /// Milliseconds of CPU of the backends on the database since they were first seen (all of
    /// it for those that started since).
    fn cpu_ms(&self, client: &mut Client) -> anyhow::Result<Option<u64>> {
        let mut ticks = 0;
        for pid in other_backends(client)? {
            let Some(now) = cpu_ticks(pid) else {
                return Ok(None);
            };
            let then = self.0.iter().find(|(p, _)| *p == pid).map_or(0, |b| b.1);
            ticks += now.saturating_sub(then);
        }
        Ok(Some(ticks * 1_000 / CLOCK_TICKS))
    }
}

/// The backends on `client`'s database other than its own.
fn other_backends(client: &mut Client) -> anyhow::Result<Vec<i32>> {
    Ok(client
        .query(
            "SELECT pid FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// User and system CPU of process `pid` in clock ticks, from `/proc` (none elsewhere).
fn cpu_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// The clock ticks of `/proc/PID/stat` a second (Linux's `USER_HZ`).
const CLOCK_TICKS: u64 = 100;
