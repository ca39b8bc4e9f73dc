//! Helpers for the end-to-end tests: the real binaries, real brokers, bounded waits.
//!
//! The binaries are the workspace's own build (`cargo build --workspace --bins` first; the
//! test command does that). Every child process is killed when its handle drops, every wait
//! polls a condition with a deadline, and ports are picked by the OS where the program can be
//! told port 0: a binary started on port 0 reports the port it bound on stderr, read back with
//! [`Proc::bound`]. What must know its port first gets one from [`free_ports`].
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

pub mod browser;
pub mod nats;
pub mod postgres;
pub mod update;

/// A sample of `metric` at `offset_ms` into its batch, its value as written (`"20.50"`).
pub fn sample(
    offset_ms: u32,
    metric: cuntong_core::telemetry::Metric,
    value: &str,
) -> cuntong_core::telemetry::Sample {
    cuntong_core::telemetry::Sample {
        offset_ms,
        metric,
        value: value.parse().unwrap(),
        quality: None,
    }
}

/// Path of a workspace binary next to the test executable's `deps` directory.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// The stdout of a command that must have succeeded (its stderr in the failure message).
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A port free for TCP and UDP on loopback, for what must know its port before it starts
/// (Mosquitto's configuration file, a broker restarted where its clients expect it, an
/// address that must refuse). Start our own binaries on port 0 and read the port back with
/// [`Proc::bound`].
pub fn free_port() -> u16 {
    free_ports(1)
}

/// The first of `n` consecutive ports free for TCP and UDP on loopback (baresip, for one,
/// listens on its port and takes the next for TLS), from below the kernel's ephemeral range
/// (see [`cuntong_firmware_sim::ports`]).
pub fn free_ports(n: u16) -> u16 {
    cuntong_firmware_sim::ports::free_ports(n, 1).expect("free ports below the ephemeral range")
}

/// Polls `cond` every 100 ms until it holds or `timeout` passes; true if it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A child process that is killed (SIGKILL) when dropped. Its output goes to a log file.
#[derive(Debug)]
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(program: &Path, args: &[&str], log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(program)
            .args(args)
            .env("CUNTONG_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        Proc { child, log }
    }

    /// Kills the process at once (no goodbye), as a power cut would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.exited_within(timeout)
    }

    /// The exit status, if the process ends by itself within `timeout`.
    pub fn exited_within(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The address the process reports it bound, from the first log line starting with
    /// `prefix` (`"broker listening on "`, `"dashboard: "`): the next word, without a
    /// `scheme://` or a trailing `/`. Waits up to 10 s for the line.
    pub fn bound(&self, prefix: &str) -> SocketAddr {
        let mut found = None;
        let reported = wait_until(Duration::from_secs(10), || {
            found = self.log_text().lines().find_map(|l| {
                let word = l.strip_prefix(prefix)?.split_whitespace().next()?;
                let addr = word.split_once("://").map_or(word, |(_, a)| a);
                addr.trim_end_matches('/').parse().ok()
            });
            found.is_some()
        });
        assert!(
            reported,
            "{} did not report {prefix:?} and an address: {}",
            self.log.display(),
            self.log_text()
        );
        found.unwrap()
    }
}

/// A number unique in this test process, for log and socket names.
fn unique() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Which broker a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrokerKind {
    Embedded,
    Mosquitto,
}

/// A running broker on a port the OS picked.
#[derive(Debug)]
pub struct Broker {
    pub url: String,
    pub port: u16,
    proc: Proc,
}

impl Broker {
    /// Publishes the contents of `file` on `topic` at QoS 1 (retained if asked) with
    /// Mosquitto's command-line client, as any client of this (plain, loopback) broker can;
    /// true once the broker acknowledged it.
    pub fn publish_file(&self, topic: &str, file: &Path, retained: bool) -> bool {
        let port = self.port.to_string();
        let mut args = vec!["-h", "127.0.0.1", "-p", &port, "-q", "1", "-t", topic];
        args.extend(["-f", file.to_str().unwrap_or_default()]);
        if retained {
            args.push("-r");
        }
        let out = run(Path::new("mosquitto_pub"), &args);
        if !out.status.success() {
            eprintln!(
                "mosquitto_pub on {topic}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out.status.success()
    }

    /// The embedded broker on port 0 (it reports the port it bound); Mosquitto on a free port,
    /// since its configuration file names the port.
    pub fn start(kind: BrokerKind, dir: &Path) -> Broker {
        match kind {
            BrokerKind::Embedded => Broker::start_on(kind, dir, 0),
            BrokerKind::Mosquitto => Broker::start_on(kind, dir, free_port()),
        }
    }

    /// Starts a broker on a given port (to restart one where its clients expect it); port 0
    /// for the embedded broker picks one.
    pub fn start_on(kind: BrokerKind, dir: &Path, port: u16) -> Broker {
        let proc = match kind {
            BrokerKind::Embedded => Proc::spawn(
                &bin("cuntong"),
                &["broker", "--listen", &format!("127.0.0.1:{port}")],
                dir.join(format!("broker-{}-{}.log", std::process::id(), unique())),
            ),
            // The queues `cuntong acl` configures for Mosquitto (docs/operations.md): its
            // defaults (1,000 queued per client) drop the overflow of a reader that falls
            // behind, which the product's brokers never do.
            BrokerKind::Mosquitto => spawn_mosquitto(dir, port, (1000, 100_000)),
        };
        Broker::ready(kind, proc, port)
    }

    /// A Mosquitto that keeps at most `inflight` messages unacknowledged and `queued` more
    /// waiting for each client, and drops the rest (saying so in its log).
    pub fn mosquitto_queuing(dir: &Path, (inflight, queued): (u32, u32)) -> Broker {
        let port = free_port();
        let proc = spawn_mosquitto(dir, port, (inflight, queued));
        Broker::ready(BrokerKind::Mosquitto, proc, port)
    }

    /// The broker's log so far.
    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }

    /// The broker `proc` once it accepts connections.
    fn ready(kind: BrokerKind, proc: Proc, port: u16) -> Broker {
        // The embedded broker reports its address once it accepts connections.
        let port = match kind {
            BrokerKind::Embedded => proc.bound("broker listening on ").port(),
            BrokerKind::Mosquitto => port,
        };
        let ready = wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(ready, "{kind:?} broker did not listen: {}", proc.log_text());
        Broker {
            url: format!("mqtt://127.0.0.1:{port}"),
            port,
            proc,
        }
    }
}

/// Mosquitto on loopback port `port`, anonymous, keeping `inflight` unacknowledged and `queued`
/// more messages for each client; its log in `dir/mosquitto.log`.
fn spawn_mosquitto(dir: &Path, port: u16, (inflight, queued): (u32, u32)) -> Proc {
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             max_queued_messages {queued}\nmax_inflight_messages {inflight}\n"
        ),
    )
    .unwrap();
    Proc::spawn(
        &mosquitto(),
        &["-c", conf.to_str().unwrap()],
        dir.join("mosquitto.log"),
    )
}

/// The Mosquitto binary (the test command installs it).
pub fn mosquitto() -> PathBuf {
    for p in [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("mosquitto is not installed (the test command installs it: apt-get install mosquitto)");
}

/// Runs a binary to completion.
pub fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `cuntong sites --json`, parsed strictly.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    pub terminal: String,
    pub site: String,
    pub level: String,
    pub name: String,
    pub region_path: String,
    pub online: bool,
    pub version: Option<String>,
    pub last_seen: Option<String>,
    pub outbox_depth: Option<u64>,
    pub dropped: Option<u64>,
    pub metrics: BTreeMap<String, f64>,
}

/// `cuntong telemetry --json`, parsed strictly.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sample {
    pub seq: u64,
    pub ts: String,
    pub metric: String,
    pub value: f64,
    pub exact: String,
    pub flag: Option<String>,
}

/// The fleet as the store sees it (empty if the store does not exist yet).
pub fn sites(db: &Path, region: Option<&str>) -> Vec<Site> {
    let mut args = vec!["sites", "--json", "--db", db.to_str().unwrap()];
    if let Some(r) = region {
        args.extend(["--region", r]);
    }
    let out = run(&bin("cuntong"), &args);
    if !out.status.success() {
        return Vec::new();
    }
    serde_json::from_slice(&out.stdout).expect("sites --json is an array of site objects")
}

/// A terminal's stored samples.
pub fn telemetry(db: &Path, terminal: &str, metric: Option<&str>) -> Vec<Sample> {
    let mut args = vec![
        "telemetry",
        "--json",
        "--terminal",
        terminal,
        "--db",
        db.to_str().unwrap(),
    ];
    if let Some(m) = metric {
        args.extend(["--metric", m]);
    }
    let out = run(&bin("cuntong"), &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("telemetry --json is an array of samples")
}

/// A site's link, as a `cuntong-sim proxy` the test controls: between terminals and the broker
/// (TCP), or between sites and their relay ([`LinkProxy::udp`]).
#[derive(Debug)]
pub struct LinkProxy {
    control: PathBuf,
    /// Where the proxy listens.
    pub addr: SocketAddr,
    pub port: u16,
    proc: Proc,
}

impl LinkProxy {
    /// A link to the broker on loopback port `broker_port`, listening on loopback.
    pub fn start(dir: &Path, broker_port: u16) -> LinkProxy {
        LinkProxy::spawn(
            dir,
            &["--listen", "127.0.0.1:0"],
            &format!("127.0.0.1:{broker_port}"),
        )
    }

    /// A link to the broker on loopback port `broker_port`, listening on `ip` (an address of
    /// the sites' side).
    pub fn start_on(dir: &Path, ip: &str, broker_port: u16) -> LinkProxy {
        let listen = format!("{ip}:0");
        LinkProxy::spawn(
            dir,
            &["--listen", &listen],
            &format!("127.0.0.1:{broker_port}"),
        )
    }

    /// A media link: sites send to `listen` as to the relay at `relay`; the relay reaches the
    /// sites' sockets `forward` before they send.
    pub fn udp(dir: &Path, listen: &str, relay: &str, forward: &[String]) -> LinkProxy {
        let mut args = vec!["--udp", "--listen", listen];
        for f in forward {
            args.extend(["--forward", f]);
        }
        LinkProxy::spawn(dir, &args, relay)
    }

    fn spawn(dir: &Path, args: &[&str], upstream: &str) -> LinkProxy {
        let n = unique();
        let control = dir.join(format!("link-{n}.sock"));
        let mut all = vec!["proxy", "--upstream", upstream, "--control"];
        all.push(control.to_str().unwrap());
        all.extend_from_slice(args);
        let proc = Proc::spawn(
            &bin("cuntong-sim"),
            &all,
            dir.join(format!("proxy-{n}.log")),
        );
        // The proxy reports its address once its control socket is up.
        let addr = proc.bound("proxy listening on ");
        LinkProxy {
            control,
            addr,
            port: addr.port(),
            proc,
        }
    }

    /// `cut`, `stall`, `restore`, `delay MS`, `jitter MS` or `loss PERCENT`; the answer.
    pub fn set(&self, action: &str) -> String {
        let mut args = vec!["link", "--control", self.control.to_str().unwrap()];
        args.extend(action.split_whitespace());
        ok(run(&bin("cuntong-sim"), &args))
    }

    /// What went through: `passed N lost N cut N overflowed N queued_peak N`, as numbers.
    pub fn stats(&self) -> std::collections::BTreeMap<String, u64> {
        let line = self.set("stats");
        let words: Vec<&str> = line.split_whitespace().collect();
        words
            .chunks(2)
            .filter_map(|w| Some((w.first()?.to_string(), w.get(1)?.parse().ok()?)))
            .collect()
    }

    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }

    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }
}

/// Runs `cuntong ARGS --broker BROKER`.
pub fn cuntong_on(broker: &str, args: &[&str]) -> Output {
    let mut all = args.to_vec();
    all.extend(["--broker", broker]);
    run(&bin("cuntong"), &all)
}

/// The status report of terminal `id` whose state is under `data` (its daemon's answer on
/// `data/ID/status.sock`), if it answers.
pub fn terminal_status(data: &Path, id: &str) -> Option<serde_json::Value> {
    let socket = data.join(id).join("status.sock");
    let out = run(
        &bin("cuntong-terminal"),
        &["status", "--json", "--socket", socket.to_str()?],
    );
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

/// Where central stores for a test in `dir`: a fresh PostgreSQL database (its URL) if
/// `postgres`, else an SQLite file.
pub fn store_db(dir: &Path, postgres: bool) -> PathBuf {
    if postgres {
        PathBuf::from(postgres::Postgres::shared().fresh_database())
    } else {
        dir.join("central.db")
    }
}

/// Starts `cuntong central` against `broker`, storing into `db`.
pub fn central(broker: &Broker, db: &Path, dir: &Path) -> Proc {
    central_with(broker, db, dir, &[])
}

/// `cuntong central` with `extra` arguments (`--alarms FILE`, `--meeting-heartbeat 2s`).
pub fn central_with(broker: &Broker, db: &Path, dir: &Path, extra: &[&str]) -> Proc {
    let mut args = vec![
        "central",
        "--broker",
        &broker.url,
        "--db",
        db.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Proc::spawn(&bin("cuntong"), &args, dir.join("central.log"))
}

/// `cuntong-sim fleet` of `count` terminals in `region` on `broker` (a URL: the broker's or a
/// link proxy's), sampling every 2 s with a 2 s keep-alive; state in `dir/name`.
pub fn sim_fleet(broker: &str, region: &str, count: usize, dir: &Path, name: &str) -> Proc {
    sim_fleet_with(broker, region, count, dir, name, &[])
}

/// [`sim_fleet`] with `extra` arguments (`--media`, `--command-key FILE`).
pub fn sim_fleet_with(
    broker: &str,
    region: &str,
    count: usize,
    dir: &Path,
    name: &str,
    extra: &[&str],
) -> Proc {
    let count = count.to_string();
    let data = dir.join(name);
    let mut args = vec![
        "fleet",
        "--broker",
        broker,
        "--region",
        region,
        "--count",
        &count,
        "--interval",
        "2s",
        "--keep-alive",
        "2s",
        "--data-dir",
        data.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Proc::spawn(&bin("cuntong-sim"), &args, dir.join(format!("{name}.log")))
}

/// A web hook endpoint on a free port: it records the body of every POST it answers with
/// 2xx; the first `fail_first` requests get a 500 (so retries are exercised).
#[derive(Debug)]
pub struct WebhookReceiver {
    pub url: String,
    pub bodies: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    pub refused: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl WebhookReceiver {
    pub fn start(path: &str, fail_first: usize) -> WebhookReceiver {
        use std::io::{BufRead, BufReader, Read, Write};
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}{path}", listener.local_addr().unwrap());
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (b, r, want) = (bodies.clone(), refused.clone(), path.to_owned());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                let _ = reader.read_line(&mut request_line);
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':')
                        && k.eq_ignore_ascii_case("content-length")
                    {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                let right = request_line.starts_with(&format!("POST {want} "));
                let status = if !right || r.load(Ordering::SeqCst) < fail_first {
                    r.fetch_add(1, Ordering::SeqCst);
                    "500 Internal Server Error"
                } else {
                    b.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&body).into_owned());
                    "200 OK"
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
            }
        });
        WebhookReceiver {
            url,
            bodies,
            refused,
        }
    }

    pub fn received(&self) -> Vec<String> {
        self.bodies.lock().unwrap().clone()
    }
}

/// The `stored=` and `duplicates=` of central's last counters line.
pub fn ingest_counters(log: &str) -> Option<(u64, u64)> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains(" stored=") && l.contains("duplicates="))?;
    let field = |name: &str| -> Option<u64> {
        let at = line.find(&format!(" {name}="))? + name.len() + 2;
        line[at..].split_whitespace().next()?.parse().ok()
    };
    Some((field("stored")?, field("duplicates")?))
}

/// What ffprobe says of `entries` (`stream=…`, `format=…` or `packet=…`) of the media file at
/// `file`, one line each, after its `options` (e.g. which streams); `None` if it cannot read
/// the file (yet).
fn ffprobe(file: &Path, options: &[&str], entries: &str) -> Option<String> {
    let out = Command::new("ffprobe")
        .args(["-v", "error"])
        .args(options)
        .args(["-show_entries", entries, "-of", "csv=p=0"])
        .arg(file)
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The streams of the media file at `file` as ffprobe reads them, one
/// `codec_name,codec_type[,width,height]` each, sorted; `None` if ffprobe cannot read it (yet).
pub fn media_streams(file: &Path) -> Option<Vec<String>> {
    let text = ffprobe(file, &[], "stream=codec_type,codec_name,width,height")?;
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines.sort_unstable();
    Some(lines)
}

/// The length of the media file at `file` in seconds, as its container states it; `None` while
/// it does not (a Matroska file states it once its writer finished it).
pub fn media_duration(file: &Path) -> Option<f64> {
    ffprobe(file, &[], "format=duration")?.trim().parse().ok()
}

/// When the last picture of the media file at `file` is shown, in seconds from its start. A
/// room's sound may run on a little past it: its end cuts the pictures still on their way through
/// the decoders and the compositor, which take longer than the sound.
pub fn last_picture_at(file: &Path) -> Option<f64> {
    ffprobe(file, &["-select_streams", "v:0"], "packet=pts_time")?
        .lines()
        .filter_map(|l| l.trim().parse::<f64>().ok())
        .reduce(f64::max)
}

/// The county relay of a simulated media fleet of county 130102, which chairs its meetings.
pub const COUNTY_RELAY: &str = "130102000000-relay";

/// A county meeting with real media: Mosquitto, central (a 2 s meeting heartbeat), a simulated
/// fleet of county 130102 with `villages` villages and the county relay (`--media` and
/// `fleet_args`), all online; then a meeting of the county (`low` profile, chaired by the
/// relay's box, or by `chair` with [`MediaCounty::chaired_by`]) created and started.
#[derive(Debug)]
pub struct MediaCounty {
    pub broker: Broker,
    pub central: Proc,
    pub fleet: Proc,
    /// Central's store.
    pub db: PathBuf,
    /// The meeting's id.
    pub id: String,
}

impl MediaCounty {
    pub fn start(dir: &Path, villages: usize, fleet_args: &[&str]) -> MediaCounty {
        MediaCounty::chaired_by(dir, villages, fleet_args, COUNTY_RELAY)
    }

    pub fn chaired_by(
        dir: &Path,
        villages: usize,
        fleet_args: &[&str],
        chair: &str,
    ) -> MediaCounty {
        let broker = Broker::start(BrokerKind::Mosquitto, dir);
        let db = dir.join("central.db");
        let central = central_with(&broker, &db, dir, &["--meeting-heartbeat", "2s"]);
        let mut args = vec!["--media"];
        args.extend_from_slice(fleet_args);
        let fleet = sim_fleet_with(&broker.url, "130102", villages, dir, "fleet", &args);
        assert!(
            wait_until(Duration::from_secs(30), || sites(&db, None)
                .iter()
                .filter(|s| s.online)
                .count()
                == villages + 1),
            "the county relay and {villages} villages: {:?}\n{}",
            sites(&db, None),
            fleet.log_text()
        );
        let mut county = MediaCounty {
            broker,
            central,
            fleet,
            db,
            id: String::new(),
        };
        county.id = ok(county.cuntong(&[
            "meeting",
            "create",
            "--title",
            "县务会",
            "--invite",
            "130102",
            "--profile",
            "low",
            "--chair",
            chair,
        ]))
        .trim()
        .to_owned();
        ok(county.cuntong(&["meeting", "start", &county.id]));
        county
    }

    /// Runs `cuntong ARGS --broker …` against this county's broker.
    pub fn cuntong(&self, args: &[&str]) -> Output {
        cuntong_on(&self.broker.url, args)
    }

    /// The villages (every terminal but the relay).
    pub fn villages(&self) -> Vec<String> {
        sites(&self.db, None)
            .into_iter()
            .map(|s| s.terminal)
            .filter(|t| t != COUNTY_RELAY)
            .collect()
    }
}

/// A site's first join of `meeting` (full tier, no relay), as its box sends it.
pub fn join(meeting: cuntong_core::meeting::MeetingId) -> Vec<u8> {
    cuntong_core::envelope::encode(&cuntong_core::meeting::Uplink::Join {
        meeting,
        tier: cuntong_core::meeting::Tier::Full,
        rtp_port: 5004,
        media_host: None,
        relay: None,
        joining: 1,
    })
    .expect("a join encodes")
}
