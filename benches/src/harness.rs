//! What the load harnesses share: the release binaries next to the harness, child processes
//! that are killed when dropped, free ports, bounded waits, memory readings.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A child process, killed when dropped.
#[derive(Debug)]
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A workspace binary next to the harness (`cargo build --release --workspace --bins`).
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().context("harness path")?.join(name);
    if !path.exists() {
        bail!(
            "{} missing: cargo build --release --workspace --bins",
            path.display()
        );
    }
    Ok(path)
}

/// Starts `program`, its output into `log`.
pub fn spawn(program: &Path, args: &[&str], log: &Path) -> anyhow::Result<Proc> {
    let out = std::fs::File::create(log)?;
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    Ok(Proc(child))
}

/// Resident set size of a process, in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

/// CPU time (user and system, seconds) used so far by the running processes of each
/// command name in `names` (as `/proc/PID/comm` gives it, e.g. `postgres`, `mosquitto`).
pub fn cpu_seconds(names: &[&str]) -> Vec<f64> {
    // Clock ticks per second: 100 on every Linux this runs on (`getconf CLK_TCK`).
    const TICKS: f64 = 100.0;
    let mut out = vec![0.0; names.len()];
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`: comm may hold spaces, so split at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let Some(k) = names.iter().position(|n| *n == comm) else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // utime and stime: fields 14 and 15 of the line, 12 and 13 after the comm.
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        out[k] += (ticks(11) + ticks(12)) / TICKS;
    }
    out
}

/// A port free for TCP and UDP on loopback, for what must know its port before it starts (see
/// [`cuntong_firmware_sim::ports`]).
pub fn free_port() -> anyhow::Result<u16> {
    cuntong_firmware_sim::ports::free_ports(1, 1)
        .ok_or_else(|| anyhow::anyhow!("no free port below the ephemeral range"))
}

/// Polls `cond` every 100 ms; how long it took to hold, or `None` after `timeout`.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// A broker on `port`: `mosquitto` (with the queue limits `cuntong acl` writes: central takes
/// every site's answer at once) or `embedded` (`cuntong broker`), listening when it returns.
pub fn broker(kind: &str, port: u16, dir: &Path) -> anyhow::Result<Proc> {
    let proc = match kind {
        "mosquitto" => return mosquitto("broker", port, "", dir),
        "embedded" => spawn(
            &bin("cuntong")?,
            &["broker", "--listen", &format!("127.0.0.1:{port}")],
            &dir.join("broker.log"),
        )?,
        other => bail!("--broker {other:?}: mosquitto or embedded"),
    };
    listening(port, proc)
}

/// A Mosquitto named `name` on `port` with the queue limits `cuntong acl` writes and `extra`
/// configuration (a bridge), listening when it returns; configuration and log in `dir`.
pub fn mosquitto(name: &str, port: u16, extra: &str, dir: &Path) -> anyhow::Result<Proc> {
    let conf = dir.join(format!("{name}.conf"));
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             max_queued_messages 100000\nmax_inflight_messages 1000\n{extra}"
        ),
    )?;
    let exe = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("mosquitto is not installed (apt-get install mosquitto)")?;
    let proc = spawn(
        Path::new(exe),
        &["-c", conf.to_str().context("path")?],
        &dir.join(format!("{name}.log")),
    )?;
    listening(port, proc)
}

fn listening(port: u16, proc: Proc) -> anyhow::Result<Proc> {
    if wait_for(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .is_none()
    {
        bail!("the broker on port {port} did not start");
    }
    Ok(proc)
}

/// `cuntong central` on `url` storing into `db` (an SQLite file or a `postgres://` URL, with
/// `extra` arguments), once its store exists.
pub fn central(url: &str, db: &str, extra: &[&str], dir: &Path) -> anyhow::Result<Proc> {
    let mut args = vec!["central", "--broker", url, "--db", db];
    args.extend_from_slice(extra);
    let proc = spawn(&bin("cuntong")?, &args, &dir.join("central.log"))?;
    let store: cuntong::store::Database = db.parse()?;
    wait_for(Duration::from_secs(10), || store.open_read_only().is_ok());
    Ok(proc)
}

/// `cuntong-sim fleet` of `count` terminals in `region`, sampling every `interval`.
pub fn sim_fleet(
    url: &str,
    region: &str,
    count: usize,
    interval: &str,
    dir: &Path,
) -> anyhow::Result<Proc> {
    let data = dir.join(format!("fleet-{region}-{count}"));
    spawn(
        &bin("cuntong-sim")?,
        &[
            "fleet",
            "--broker",
            url,
            "--region",
            region,
            "--count",
            &count.to_string(),
            "--interval",
            interval,
            "--data-dir",
            data.to_str().context("path")?,
        ],
        &dir.join(format!("fleet-{region}-{count}.log")),
    )
}

/// Waits until central's store (a file or a `postgres://` URL) shows at least `n` terminals
/// online; how long it took.
pub fn wait_online(db: &str, n: usize, timeout: Duration) -> anyhow::Result<Duration> {
    // A count where the store is PostgreSQL, not the province's site list: the poll must not
    // load the store it measures.
    let mut pg = if db.starts_with("postgres://") {
        Some(postgres::Client::connect(db, postgres::NoTls)?)
    } else {
        None
    };
    let store = db.parse::<cuntong::store::Database>()?.open_read_only()?;
    let mut online = || match &mut pg {
        Some(c) => c
            .query_one("SELECT count(*) FROM terminals WHERE online", &[])
            .map_or(0, |r| r.get::<_, i64>(0) as usize),
        None => store
            .sites(None)
            .map(|s| s.iter().filter(|r| r.online).count())
            .unwrap_or(0),
    };
    // Once a second: a province's terminals are not counted ten times a second while they
    // connect.
    let start = Instant::now();
    while start.elapsed() < timeout {
        if online() >= n {
            return Ok(start.elapsed());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    bail!("only {} of {n} terminals online", online())
}

/// A plain MQTT client's options for the broker at `url`.
pub fn mqtt_options(id: String, url: &str) -> anyhow::Result<rumqttc::MqttOptions> {
    let url: cuntong_terminal::broker_url::BrokerUrl = url.parse()?;
    let mut opts = rumqttc::MqttOptions::new(id, &url.host, url.port);
    opts.set_keep_alive(Duration::from_secs(30));
    Ok(opts)
}

/// What a meeting inviting a whole region measured.
#[derive(Debug)]
pub struct MeetingRun {
    /// Sites joined, and how long from the start until all had.
    pub joined: usize,
    pub join_time: Duration,
    /// State publishes on the meeting tree for the start.
    pub start_states: u64,
    /// The sites' meeting channels from the start until all had joined (not watched after:
    /// the roll calls are measured without the watcher's share of the brokers' work).
    pub storm: MeetingTraffic,
    /// The roll call opened as soon as every site had joined (the join storm's traffic still
    /// on its way), and one opened in the settled session, [`SETTLE`] later.
    pub roll_call: RollCallRun,
    pub settled: RollCallRun,
}

/// What crossed the sites' meeting channels (their uplinks and downlinks), by kind: where a
/// join storm's messages come from.
#[derive(Clone, Debug, Default)]
pub struct MeetingTraffic {
    /// Media plans: a site's first, the same plan again (a repeated join answered), and a
    /// plan other than the site's last (a new joining, a changed plan).
    pub plans_first: u64,
    pub plans_again: u64,
    pub plans_changed: u64,
    /// Every other downlink (relay tables, answers, rejoins, refusals).
    pub other_downlinks: u64,
    /// Joins: a joining's first, its repeats.
    pub joins: u64,
    pub joins_repeated: u64,
    /// Joins (first or repeated) asking for less than the full tier: a link judged weak.
    pub joins_below_full: u64,
    pub statuses: u64,
    pub other_uplinks: u64,
    /// The heartbeat of the last meeting state seen (ms).
    pub heartbeat_ms: u32,
    /// How long after its first join each repeated joining was first repeated (ms).
    pub first_repeats_ms: Vec<u64>,
    /// The last plan's SSRC, and the last joining with when it was first seen, by site.
    ssrcs: std::collections::HashMap<String, u32>,
    joinings: std::collections::HashMap<String, (u64, Instant, bool)>,
}

impl MeetingTraffic {
    /// Counts one message the watcher saw on `topic`.
    fn count(&mut self, topic: &str, payload: &[u8]) {
        use cuntong_core::meeting::{Downlink, Uplink};
        use cuntong_core::topic::Channel;
        let site = topic.rsplit_once('/').map_or(topic, |(site, _)| site);
        if topic.ends_with(Channel::MeetingDown.as_str()) {
            match Downlink::decode(payload) {
                Ok(Downlink::Admitted { plan, .. }) => {
                    match self.ssrcs.insert(site.to_owned(), plan.ssrc) {
                        None => self.plans_first += 1,
                        Some(s) if s == plan.ssrc => self.plans_again += 1,
                        Some(_) => self.plans_changed += 1,
                    }
                }
                _ => self.other_downlinks += 1,
            }
        } else {
            match Uplink::decode(payload) {
                Ok(Uplink::Join { joining, tier, .. }) => {
                    if tier != cuntong_core::meeting::Tier::Full {
                        self.joins_below_full += 1;
                    }
                    match self.joinings.get_mut(site) {
                        Some((j, first, repeated)) if *j == joining => {
                            self.joins_repeated += 1;
                            if !*repeated {
                                *repeated = true;
                                self.first_repeats_ms
                                    .push(first.elapsed().as_millis() as u64);
                            }
                        }
                        _ => {
                            self.joins += 1;
                            self.joinings
                                .insert(site.to_owned(), (joining, Instant::now(), false));
                        }
                    }
                }
                Ok(Uplink::Status { .. }) => self.statuses += 1,
                _ => self.other_uplinks += 1,
            }
        }
    }

    /// Takes the heartbeat of a meeting state the watcher saw.
    fn state(&mut self, payload: &[u8]) {
        if let Ok(s) = cuntong_core::meeting::MeetingState::decode(payload) {
            self.heartbeat_ms = s.spec.heartbeat_ms;
        }
    }

    /// Plans of every kind.
    pub fn plans(&self) -> u64 {
        self.plans_first + self.plans_again + self.plans_changed
    }

    /// The traffic in one line.
    pub fn line(&self) -> String {
        let mut gaps = self.first_repeats_ms.clone();
        gaps.sort_unstable();
        let q = |p: f64| {
            cuntong::commands::meeting::quantile(&gaps, p)
                .map_or("-".to_owned(), |ms| format!("{:.1}", ms as f64 / 1000.0))
        };
        format!(
            "media plans {} ({} first, {} again, {} changed), other downlinks {}; joins {} and {} repeated ({} below the full tier; first repeats after p10 {} s, p50 {} s, p90 {} s; heartbeat {} ms), statuses {}, other uplinks {}",
            self.plans(),
            self.plans_first,
            self.plans_again,
            self.plans_changed,
            self.other_downlinks,
            self.joins,
            self.joins_repeated,
            self.joins_below_full,
            q(0.1),
            q(0.5),
            q(0.9),
            self.heartbeat_ms,
            self.statuses,
            self.other_uplinks
        )
    }
}

/// The processes whose CPU time is reported for each phase.
pub const PROCESSES: [&str; 5] = [
    "cuntong-sim",
    "mosquitto",
    "cuntong",
    "postgres",
    "province",
];

/// The CPU seconds each of [`PROCESSES`] used since `before`, as one line.
pub fn cpu_since(before: &[f64], wall: Duration) -> String {
    let now = cpu_seconds(&PROCESSES);
    let used: Vec<f64> = now.iter().zip(before).map(|(a, b)| a - b).collect();
    let total: f64 = used.iter().sum();
    let parts: Vec<String> = PROCESSES
        .iter()
        .zip(&used)
        .map(|(name, s)| format!("{name} {s:.0} s"))
        .collect();
    format!(
        "CPU {total:.0} s in {:.0} s of wall time ({:.2} cores): {}",
        wall.as_secs_f64(),
        total / wall.as_secs_f64().max(0.001),
        parts.join(", ")
    )
}

/// How long the session runs between its two roll calls.
pub const SETTLE: Duration = Duration::from_secs(20);

/// What one roll call measured: sites present of those asked; the host's answer latencies
/// (all, p50, p99, ms), from the opening until each site saw it; when the chair, asking central
/// for the counts every 100 ms, saw every site present.
#[derive(Debug)]
pub struct RollCallRun {
    pub present: usize,
    pub asked: usize,
    pub all_ms: u64,
    pub p50_ms: u64,
    pub p99_ms: u64,
    pub command: Duration,
    /// The CPU time each of [`PROCESSES`] used while the command waited.
    pub cpu: String,
    /// Each site's row.
    pub rows: Vec<cuntong::control::RollCallJson>,
}

impl RollCallRun {
    /// The roll call in one line, and the CPU it took in a second.
    pub fn line(&self) -> String {
        format!(
            "all {:>5} ms   p50 {:>5} ms   p99 {:>5} ms   ({} of {} present; the chair saw all present after {} ms)\n      {}",
            self.all_ms,
            self.p50_ms,
            self.p99_ms,
            self.present,
            self.asked,
            self.command.as_millis(),
            self.cpu
        )
    }
}

impl MeetingRun {
    /// The roll calls, a line each.
    pub fn roll_call(&self) -> String {
        format!(
            "roll call at once       {}\n  roll call {:>2} s later   {}",
            self.roll_call.line(),
            SETTLE.as_secs(),
            self.settled.line()
        )
    }

    /// Writes every site's answer to both roll calls to `path` as CSV: roll call (1, 2),
    /// site, ms from the opening until it answered (empty: absent), as central recorded them.
    pub fn write_answers(&self, path: &Path) -> std::io::Result<()> {
        let mut csv = String::from("roll_call,site,latency_ms\n");
        for (number, run) in [(1, &self.roll_call), (2, &self.settled)] {
            for r in &run.rows {
                let latency = r.latency_ms.map_or(String::new(), |ms| ms.to_string());
                csv.push_str(&format!("{number},{},{latency}\n", r.terminal));
            }
        }
        std::fs::write(path, csv)
    }
}

/// Opens a roll call through `client` and waits (at most 60 s) until every site answered.
async fn roll_call(
    client: &mut cuntong::commands::meeting::CentralClient,
    id: cuntong_core::meeting::MeetingId,
) -> anyhow::Result<RollCallRun> {
    use cuntong::commands::meeting::quantile;
    use cuntong_core::meeting::host::ChairOp;
    let (cpu, asked, asked_ms) = (
        cpu_seconds(&PROCESSES),
        Instant::now(),
        cuntong_terminal::link::unix_ms(),
    );
    println!("    roll call asked at {asked_ms} ms (Unix time)");
    client.op(id, ChairOp::RollCall).await?;
    client.await_answers(id, Duration::from_secs(60)).await?;
    let command = asked.elapsed();
    let cpu = cpu_since(&cpu, command);
    let rows = client.roll_call_rows(id).await?;
    let mut lat: Vec<u64> = rows.iter().filter_map(|r| r.latency_ms).collect();
    lat.sort_unstable();
    Ok(RollCallRun {
        present: rows.iter().filter(|r| r.present).count(),
        asked: rows.len(),
        all_ms: lat.last().copied().unwrap_or(0),
        p50_ms: quantile(&lat, 0.5).unwrap_or(0),
        p99_ms: quantile(&lat, 0.99).unwrap_or(0),
        command,
        cpu,
        rows,
    })
}

/// Creates a meeting (standard definition, no chair terminal) titled `title` inviting
/// `region` through `client`; its id.
pub async fn create_meeting(
    client: &mut cuntong::commands::meeting::CentralClient,
    title: &str,
    region: &str,
) -> anyhow::Result<cuntong_core::meeting::MeetingId> {
    use cuntong::control::{RequestBody, ResponseBody};
    use cuntong_core::meeting::{Kind, MediaProfile};
    let created = client
        .ask(
            RequestBody::Create {
                title: title.into(),
                kind: Kind::Meeting,
                invite: vec![region.parse().map_err(anyhow::Error::msg)?],
                at_ms: None,
                profile: MediaProfile::named("sd").context("no sd profile")?,
                chair: None,
                floor_mutes_others: true,
            },
            Duration::from_secs(30),
        )
        .await?;
    match created {
        ResponseBody::Created { id } => Ok(id),
        other => bail!("unexpected answer {other:?}"),
    }
}

/// Creates and starts a meeting inviting `region` through central on `url`, waits (at most
/// 120 s) until `n` sites have joined, runs a roll call, and ends the meeting.
pub async fn region_meeting(url: &str, region: &str, n: usize) -> anyhow::Result<MeetingRun> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use cuntong::commands::meeting::CentralClient;
    use cuntong_core::meeting::host::ChairOp;
    use cuntong_core::topic::Channel;
    use rumqttc::{AsyncClient, Event, Packet, QoS};

    // Counts what central publishes on the meeting tree, and the sites' meeting channels.
    let states = Arc::new(AtomicU64::new(0));
    let traffic = Arc::new(Mutex::new(MeetingTraffic::default()));
    let (watcher, mut wl) = AsyncClient::new(mqtt_options("bench-watcher".into(), url)?, 64);
    watcher.subscribe("ct/v1/m/#", QoS::AtMostOnce).await?;
    let site_channels = [Channel::MeetingDown, Channel::MeetingUp]
        .map(|channel| format!("ct/v1/t/+/+/+/+/+/+/{}", channel.as_str()));
    for filter in &site_channels {
        watcher.subscribe(filter, QoS::AtMostOnce).await?;
    }
    let (s2, t2) = (states.clone(), traffic.clone());
    let watching = tokio::spawn(async move {
        while let Ok(ev) = wl.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = ev {
                if p.topic.starts_with("ct/v1/m/") {
                    s2.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut t) = t2.lock() {
                        t.state(&p.payload);
                    }
                } else if let Ok(mut t) = t2.lock() {
                    t.count(&p.topic, &p.payload);
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;

    let brokers: cuntong_terminal::broker_url::Brokers = url.parse()?;
    let mut client = CentralClient::connect(brokers, None, QoS::AtLeastOnce)
        .await
        .map_err(anyhow::Error::msg)?;
    let id = create_meeting(&mut client, "全省视频会议", region).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = states.load(Ordering::Relaxed);
    let started = Instant::now();
    client.op(id, ChairOp::Start).await?;
    println!(
        "  meeting started         {:>6} ms after the chair asked",
        started.elapsed().as_millis()
    );
    let mut shown = Instant::now();
    let joined = loop {
        // The session's summary (one answer), not its 54,000 sites page by page.
        let list = client.list().await?;
        let j = list
            .iter()
            .find(|m| m.id == id.to_string())
            .map_or(0, |m| m.joined);
        if j >= n || started.elapsed() > Duration::from_secs(120) {
            break j;
        }
        if shown.elapsed() >= Duration::from_secs(10) {
            shown = Instant::now();
            println!(
                "    {j} of {n} joined after {:.0} s",
                started.elapsed().as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let join_time = started.elapsed();
    let start_states = states.load(Ordering::Relaxed) - before;
    let storm = traffic.lock().map(|t| t.clone()).unwrap_or_default();
    for filter in &site_channels {
        watcher.unsubscribe(filter).await?;
    }

    let first = roll_call(&mut client, id).await?;
    client.op(id, ChairOp::CloseRollCall).await?;
    tokio::time::sleep(SETTLE).await;
    let settled = roll_call(&mut client, id).await?;
    client.op(id, ChairOp::End).await?;
    client.close();
    watching.abort();
    Ok(MeetingRun {
        joined,
        join_time,
        start_states,
        storm,
        roll_call: first,
        settled,
    })
}
