//! `cuntong-sim`: simulated terminals, one or a fleet, running the real terminal code; and the
//! link proxy that tests cut and slow down.

use std::net::SocketAddr;

use cuntong_terminal::println;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use cuntong_core::meeting::participant::AcceptPolicy;
use cuntong_core::site::{Level, Region, SiteCode, SiteCodeError};
use cuntong_core::terminal_id::{Slug, SlugError, TerminalId, TerminalIdError};
use cuntong_firmware_sim::divisions::ImportError;
use cuntong_firmware_sim::fleet::{
    Fleet, MAX_FLEET, SimOptions, default_data_root, fleet_ids, relay_ids,
};
use cuntong_firmware_sim::{datalogger, proxy};
use cuntong_terminal::broker_url::{Brokers, BrokersError, redact};
use cuntong_terminal::config::{parse_duration, parse_size};
use cuntong_terminal::daemon::shutdown_signal;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    version,
    about = "cuntong simulator: terminals with simulated hardware, and a link to break"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options every simulated terminal takes.
#[derive(Args)]
struct Common {
    /// The broker URL; a cluster's nodes: repeat the flag or separate URLs by commas, in order
    /// of preference.
    #[arg(
        long,
        env = "CUNTONG_BROKER",
        default_value = "mqtt://127.0.0.1:1883",
        value_name = "URL"
    )]
    broker: Vec<String>,
    /// Sampling and batch interval.
    #[arg(long, default_value = "10s")]
    interval: String,
    /// MQTT keep-alive.
    #[arg(long, default_value = "30s")]
    keep_alive: String,
    /// QoS of the terminals' subscriptions: 1, or 0 on a NATS cluster (docs/operations.md).
    #[arg(long, default_value_t = 1)]
    subscribe_qos: u8,
    /// Unconfirmed records are sent again after this long.
    #[arg(long, default_value = "30s")]
    resend_after: String,
    /// Records per second at most when catching up (0: unlimited).
    #[arg(long, default_value_t = 50)]
    rate: u32,
    /// Outbox byte budget (e.g. 16MiB); the oldest records are dropped beyond it.
    #[arg(long, default_value = "16MiB")]
    outbox_budget: String,
    /// The fleet's public command key (`command.pub`); without it commands are refused.
    #[arg(long)]
    command_key: Option<PathBuf>,
    /// The fleet's public release key (`release.pub`); with it the terminals take update
    /// offers (each unpacks the release into its own slots and restarts into it).
    #[arg(long)]
    release_key: Option<PathBuf>,
    /// Each terminal's download rate cap for updates (e.g. 64KiB, per second).
    #[arg(long, default_value = "64KiB")]
    update_rate: String,
    /// Which meeting invitations the terminals accept on their own: all, scheduled, manual.
    #[arg(long, default_value = "all")]
    accept: String,
    /// Share of the terminals (percent) that decline every invitation.
    #[arg(long, default_value_t = 0)]
    decline_percent: u8,
    /// Share of the terminals (percent) that raise their hand once joined.
    #[arg(long, default_value_t = 0)]
    hands_percent: u8,
    /// Real meeting media (GStreamer with test sources) on loopback; a fleet of a county or
    /// more includes a relay at each county (and at the region's level).
    #[arg(long)]
    media: bool,
    /// With --media: each box composes its meeting room (every picture in the tiles of its
    /// layout, every sound mixed) into DIR/TERMINAL.mkv. (Each simulated camera shows a colour
    /// of its own.)
    #[arg(long, value_name = "DIR", requires = "media")]
    rooms: Option<PathBuf>,
    /// With --rooms: only this box composes its room (repeat for more); a room costs a core
    /// or so, more than a small machine has for every box of a fleet.
    #[arg(long = "room", value_name = "TERMINAL", requires = "rooms")]
    rooms_of: Vec<String>,
    /// Serve each terminal's status socket (DATA-DIR/TERMINAL/status.sock), as a lone
    /// terminal does: operators' requests (`cuntong-terminal meeting … --socket`) reach it.
    #[arg(long)]
    status_sockets: bool,
}

#[derive(Subcommand)]
enum Command {
    /// One terminal (the real terminal code) with simulated hardware.
    Terminal {
        /// Terminal id, e.g. 130102001001-main.
        #[arg(long, required_unless_present = "config")]
        id: Option<String>,
        /// Run a provisioned terminal.toml instead (its id, broker, TLS and data dir).
        #[arg(long, conflicts_with_all = ["id", "data_dir"])]
        config: Option<PathBuf>,
        /// Where the terminal keeps its state (in <data-dir>/<id>).
        #[arg(long, required_unless_present = "config")]
        data_dir: Option<PathBuf>,
        /// Accept HJ 212 data loggers on this address (host:port).
        #[arg(long)]
        hj212_listen: Option<String>,
        /// A duty button: the file <data-dir>/<id>/duty-button stands for its line (write 0
        /// to press it, 1 to release it).
        #[arg(long)]
        duty_button: bool,
        #[command(flatten)]
        common: Common,
    },
    /// A simulated HJ 212 data logger uploading real-time water data to a terminal.
    Datalogger {
        /// The terminal's HJ 212 listener, host:port.
        #[arg(long)]
        connect: String,
        /// Device code (MN).
        #[arg(long, default_value = "010000A8900016F000169DC0")]
        mn: String,
        #[arg(long, default_value = "123456")]
        password: String,
        #[arg(long, default_value = "30s")]
        interval: String,
        /// Edition of the standard: 2017 or 2005.
        #[arg(long, default_value = "2017")]
        version: String,
        /// Split every Nth upload into two packets (0: never).
        #[arg(long, default_value_t = 5)]
        split_every: u32,
        /// Corrupt every Nth frame (0: never).
        #[arg(long, default_value_t = 0)]
        corrupt_every: u32,
        /// Stop after this many uploads.
        #[arg(long)]
        uploads: Option<u64>,
    },
    /// N terminals in one process, spread over the townships and villages of a region.
    Fleet {
        /// Region code prefix: 13, 1301, 130102, 130102001 or 130102001001.
        #[arg(long)]
        region: String,
        /// How many terminals (default 10); with --codes, at most this many of the list's.
        #[arg(long)]
        count: Option<usize>,
        /// A division list in CSV (the national list's villages.csv): one terminal (`-main`)
        /// per village code of the list inside --region, with its real code.
        #[arg(long, value_name = "CSV")]
        codes: Option<PathBuf>,
        /// With --codes, only the K-th of N equal parts of the region's villages (`2/4`): a
        /// province's fleet as several processes, each under the open-files limit.
        #[arg(long, value_name = "K/N", requires = "codes")]
        part: Option<Part>,
        /// Where the terminals keep their state (one directory each).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        common: Common,
    },
    /// A proxy standing for a site's link, controlled over a Unix socket (see `link`): TCP
    /// between terminals and the broker, or with --udp between sites and their relay (media).
    Proxy {
        #[arg(long)]
        listen: String,
        /// The broker's address (with --udp: the relay's), host:port.
        #[arg(long)]
        upstream: String,
        /// Carry UDP: sites send to --listen as to their relay, and reach the relay from an
        /// address of their own on the proxy.
        #[arg(long)]
        udp: bool,
        /// With --udp: a site's socket (ip:port) the relay reaches before it sends anything,
        /// at the proxy's address facing it and the same port; repeat for each.
        #[arg(long, value_name = "ADDR", requires = "udp")]
        forward: Vec<String>,
        /// Control socket path.
        #[arg(long)]
        control: PathBuf,
    },
    /// Tell a running proxy to `cut`, `stall`, `restore`, `delay MS`, `jitter MS` or
    /// `loss PERCENT` the link, or print its `stats`.
    Link {
        #[arg(long)]
        control: PathBuf,
        /// cut | stall | restore | delay | jitter | loss | stats
        action: String,
        /// Milliseconds for `delay` and `jitter`, percent for `loss`.
        value: Option<u64>,
    },
}

/// The longest delay `link delay MS` adds (a minute: longer is a cut).
const MAX_DELAY_MS: u64 = 60_000;

/// A bad argument: one line naming the value, exit code 2.
fn usage(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(2)
}

/// A command-line value refused: each names its flag, the value and what is wrong with it.
#[derive(Debug, thiserror::Error)]
enum ArgError {
    /// A value the flag's parser refused (a duration or a size), with its words.
    #[error("{flag}: {problem}")]
    Value {
        flag: &'static str,
        problem: cuntong_terminal::config::BadValue,
    },
    /// A duration of zero where time must pass.
    #[error("{flag}: {value:?} must be more than zero")]
    ZeroDuration { flag: &'static str, value: String },
    /// Not an address (`host:port` as an IP address and a port).
    #[error("{flag} {value:?}: {source}")]
    Addr {
        flag: &'static str,
        value: String,
        source: std::net::AddrParseError,
    },
    /// Not a terminal id.
    #[error("{flag} {value:?}: {source}")]
    TerminalId {
        flag: &'static str,
        value: String,
        source: TerminalIdError,
    },
    /// `--region` is not a region code.
    #[error("--region {value:?}: {source}")]
    Region {
        value: String,
        source: SiteCodeError,
    },
    /// `--broker` is not a list of broker URLs (shown without passwords).
    #[error("--broker {shown:?}: {source}")]
    Broker { shown: String, source: BrokersError },
    /// `--subscribe-qos` is not a QoS the terminals subscribe with.
    #[error("--subscribe-qos {0}")]
    SubscribeQos(cuntong_terminal::link::LinkError),
    /// `--keep-alive` is beyond what MQTT can say.
    #[error("--keep-alive {0:?}: from 1s to 65535s")]
    KeepAlive(String),
    /// `--update-rate 0`.
    #[error("--update-rate: more than 0")]
    ZeroUpdateRate,
    /// `--outbox-budget` below the smallest budget.
    #[error("--outbox-budget {0:?}: at least 4KiB")]
    SmallOutbox(String),
    /// `--accept` is not a policy.
    #[error("--accept {0:?}: use all, scheduled or manual")]
    Accept(String),
    /// A share of the fleet above 100 percent.
    #[error("{flag} {percent}: at most 100")]
    Percent { flag: &'static str, percent: u8 },
    /// `--version` is not an edition of HJ 212.
    #[error("--version {0:?}: use 2017 or 2005")]
    Edition(String),
    /// `--mn` or `--password` holds more than letters and digits.
    #[error("{flag} {value:?}: letters and digits only")]
    NotAlphanumeric { flag: &'static str, value: String },
    /// `--count` outside the fleet sizes.
    #[error("--count {0}: 1 to {max}", max = MAX_FLEET)]
    Count(usize),
    /// The `--codes` list could not be read.
    #[error("--codes {0}")]
    Codes(#[source] ImportError),
    /// The `--codes` list (or the part of it) has no village in the region.
    #[error(
        "--codes {}: no village of region {region} in the list{}",
        file.display(),
        part.map(|p| format!(" (part {}/{})", p.k, p.n)).unwrap_or_default()
    )]
    NoVillages {
        file: PathBuf,
        region: Region,
        part: Option<Part>,
    },
    /// `terminal` without `--config` needs both.
    #[error("--id and --data-dir are needed without --config")]
    NeedIdAndDataDir,
    /// The slug every fleet terminal has was refused (a bug).
    #[error("internal: slug main: {0}")]
    MainSlug(#[source] SlugError),
    /// A command that runs no terminals was taken for one (a bug).
    #[error("internal: not a terminal command")]
    NotTerminalCommand,
}

fn duration(flag: &'static str, s: &str) -> Result<Duration, ArgError> {
    let d = parse_duration(s).map_err(|problem| ArgError::Value { flag, problem })?;
    if d.is_zero() {
        return Err(ArgError::ZeroDuration {
            flag,
            value: s.to_owned(),
        });
    }
    Ok(d)
}

/// `flag`'s value as a socket address.
fn socket_addr(flag: &'static str, value: &str) -> Result<SocketAddr, ArgError> {
    value.parse().map_err(|source| ArgError::Addr {
        flag,
        value: value.to_owned(),
        source,
    })
}

/// Why `link` got no answer from the proxy, or an answer that is an error.
#[derive(Debug, thiserror::Error)]
enum TellError {
    /// The control socket cannot be connected to.
    #[error("cannot reach the proxy at {}: {source}", path.display())]
    Reach {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Sending the line or reading the answer failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The proxy answered with an error line (shown as it is).
    #[error("{0}")]
    Refused(String),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match cuntong_terminal::daemon::process_runtime("warn,cuntong_sim=info", None) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Proxy {
            listen,
            upstream,
            udp,
            forward,
            control,
        } => {
            let (listen, upstream) = match (
                socket_addr("--listen", &listen),
                socket_addr("--upstream", &upstream),
            ) {
                (Ok(l), Ok(u)) => (l, u),
                (Err(e), _) | (_, Err(e)) => return usage(e),
            };
            let forward = match forward
                .iter()
                .map(|f| socket_addr("--forward", f))
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(f) => f,
                Err(e) => return usage(e),
            };
            runtime.block_on(async {
                let started = if udp {
                    proxy::udp::start(listen, upstream, &forward)
                        .await
                        .map(|(p, public)| {
                            for (site, at) in forward.iter().zip(public) {
                                eprintln!("site {site} reaches {upstream} as {at}");
                            }
                            p
                        })
                } else {
                    proxy::start(listen, upstream).await
                };
                match started {
                    Ok(p) => run_proxy(p, upstream, &control).await,
                    Err(e) => {
                        eprintln!("error: cannot listen on {listen}: {e}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
        Command::Link {
            control,
            action,
            value,
        } => {
            let line = match (action.as_str(), value) {
                ("cut" | "stall" | "restore" | "stats", None) => action.clone(),
                ("delay" | "jitter", Some(ms)) if ms <= MAX_DELAY_MS => format!("{action} {ms}"),
                ("delay" | "jitter", Some(ms)) => {
                    return usage(format!("link {action} {ms}: at most {MAX_DELAY_MS} ms"));
                }
                ("loss", Some(pct)) if pct <= 100 => format!("loss {pct}"),
                ("loss", Some(pct)) => {
                    return usage(format!("link loss {pct}: a percentage, 0 to 100"));
                }
                _ => {
                    return usage(format!(
                        "link action {action:?}: use cut, stall, restore, delay MS, jitter MS, loss PERCENT or stats"
                    ));
                }
            };
            runtime.block_on(async {
                match tell(&control, &line).await {
                    Ok(answer) => {
                        println!("{answer}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
        Command::Datalogger {
            connect,
            mn,
            password,
            interval,
            version,
            split_every,
            corrupt_every,
            uploads,
        } => {
            if uploads == Some(0) {
                return usage("--uploads 0: at least 1 (leave it out to run until stopped)");
            }
            let opts = match logger_options(connect, mn, password, &interval, &version) {
                Ok(o) => datalogger::LoggerOptions {
                    split_every,
                    corrupt_every,
                    uploads,
                    ..o
                },
                Err(e) => return usage(e),
            };
            runtime.block_on(async {
                let stop = CancellationToken::new();
                let on_signal = stop.clone();
                tokio::spawn(async move {
                    shutdown_signal().await;
                    on_signal.cancel();
                });
                match datalogger::run(opts, stop).await {
                    Ok(r) => {
                        println!(
                            "{} uploads, {} corrupted frames, {} acknowledgements",
                            r.uploads, r.corrupted, r.acks
                        );
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("error: data logger: {e}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
        Command::Terminal {
            config: Some(path),
            common,
            ..
        } => {
            let cfg = match cuntong_terminal::config::TerminalConfig::load(&path) {
                Ok(c) => c,
                Err(e) => return usage(e.to_string()),
            };
            let interval = match duration("--interval", &common.interval) {
                Ok(d) => d,
                Err(e) => return usage(e),
            };
            runtime.block_on(async move {
                run_fleet_of(Fleet::start_configs(vec![cfg], interval, Vec::new())).await
            })
        }
        Command::Terminal { .. } | Command::Fleet { .. } => {
            let (ids, opts) = match terminals(cli.command) {
                Ok(v) => v,
                Err(msg) => return usage(msg),
            };
            runtime.block_on(run_fleet(ids, opts))
        }
    }
}

async fn run_fleet(ids: Vec<TerminalId>, opts: SimOptions) -> ExitCode {
    let n = ids.len();
    let fleet = Fleet::start(ids, &opts);
    tracing::info!(terminals = n, broker = %opts.broker, "simulator running");
    run_fleet_of(fleet).await
}

async fn run_fleet_of(mut fleet: Fleet) -> ExitCode {
    let failure = async {
        loop {
            if let Some(f) = fleet.try_failure() {
                return f;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let failed = tokio::select! {
        _ = shutdown_signal() => None,
        f = failure => Some(f),
    };
    let mut code = ExitCode::SUCCESS;
    if let Some((id, e)) = failed {
        eprintln!("error: terminal {id}: {e}");
        code = ExitCode::FAILURE;
    }
    for (id, e) in fleet.stop().await {
        eprintln!("error: terminal {id}: {e}");
        code = ExitCode::FAILURE;
    }
    code
}

/// Serves the control socket of the started proxy `p` until a signal.
async fn run_proxy(p: proxy::ProxyControl, upstream: SocketAddr, control: &Path) -> ExitCode {
    let _ = std::fs::remove_file(control);
    let listener = match UnixListener::bind(control) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: control socket {}: {e}", control.display());
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "proxy listening on {} -> {upstream}, control {}",
        p.addr,
        control.display()
    );
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        on_signal.cancel();
    });
    let mut errors = 0u32;
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => match a {
                Ok((s, _)) => {
                    errors = 0;
                    s
                }
                Err(_) => {
                    // Out of descriptors, say: wait rather than spin.
                    errors = errors.saturating_add(1);
                    tokio::time::sleep(cuntong_terminal::listen::backoff(errors)).await;
                    continue;
                }
            },
        };
        let (r, mut w) = stream.into_split();
        let mut line = String::new();
        if BufReader::new(r).read_line(&mut line).await.is_err() {
            continue;
        }
        let mut words = line.split_whitespace();
        let answer = match (words.next(), words.next().map(str::parse::<u64>)) {
            (Some("cut"), None) => {
                p.cut();
                "cut".to_owned()
            }
            (Some("stall"), None) => {
                p.stall();
                "stalled".to_owned()
            }
            (Some("restore"), None) => {
                p.restore();
                "restored".to_owned()
            }
            (Some("delay"), Some(Ok(ms))) => {
                p.set_delay(Duration::from_millis(ms));
                format!("delay {ms} ms")
            }
            (Some("jitter"), Some(Ok(ms))) => {
                p.set_jitter(Duration::from_millis(ms));
                format!("jitter {ms} ms")
            }
            (Some("stats"), None) => p.stats.line(),
            (Some("loss"), Some(Ok(pct))) => {
                p.set_loss(pct);
                format!("loss {}%", pct.min(100))
            }
            _ => format!("error: unknown command {:?}", line.trim()),
        };
        let _ = w.write_all(format!("{answer}\n").as_bytes()).await;
    }
    let _ = std::fs::remove_file(control);
    ExitCode::SUCCESS
}

async fn tell(control: &Path, line: &str) -> Result<String, TellError> {
    let mut s = UnixStream::connect(control)
        .await
        .map_err(|source| TellError::Reach {
            path: control.to_owned(),
            source,
        })?;
    s.write_all(format!("{line}\n").as_bytes()).await?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).await?;
    let answer = answer.trim().to_owned();
    if answer.starts_with("error") {
        return Err(TellError::Refused(answer));
    }
    Ok(answer)
}

fn logger_options(
    connect: String,
    mn: String,
    password: String,
    interval: &str,
    version: &str,
) -> Result<datalogger::LoggerOptions, ArgError> {
    let connect = socket_addr("--connect", &connect)?;
    let edition = match version {
        "2017" => datalogger::Edition::V2017,
        "2005" => datalogger::Edition::V2005,
        other => return Err(ArgError::Edition(other.to_owned())),
    };
    for (flag, value) in [("--mn", &mn), ("--password", &password)] {
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ArgError::NotAlphanumeric {
                flag,
                value: value.clone(),
            });
        }
    }
    Ok(datalogger::LoggerOptions {
        connect,
        mn,
        password,
        interval: duration("--interval", interval)?,
        edition,
        split_every: 0,
        corrupt_every: 0,
        uploads: None,
        seed: 1,
    })
}

fn options(common: &Common, data_root: PathBuf) -> Result<SimOptions, ArgError> {
    let text = common.broker.join(",");
    let broker: Brokers = text.parse().map_err(|source| ArgError::Broker {
        shown: redact(&text),
        source,
    })?;
    let mut opts = SimOptions::new(broker, data_root, duration("--interval", &common.interval)?);
    opts.keep_alive = duration("--keep-alive", &common.keep_alive)?;
    opts.subscribe_qos = cuntong_terminal::link::subscribe_qos(common.subscribe_qos)
        .map_err(ArgError::SubscribeQos)?;
    // What MQTT can say (whole seconds, 16 bits), as a terminal's config allows.
    if !(Duration::from_secs(1)..=Duration::from_secs(65_535)).contains(&opts.keep_alive) {
        return Err(ArgError::KeepAlive(common.keep_alive.clone()));
    }
    opts.delivery.resend_after_ms =
        duration("--resend-after", &common.resend_after)?.as_millis() as u64;
    opts.delivery.rate_per_s = common.rate;
    let size = |flag: &'static str, value: &str| {
        parse_size(value).map_err(|problem| ArgError::Value { flag, problem })
    };
    opts.outbox_budget = size("--outbox-budget", &common.outbox_budget)?;
    opts.command_key = common.command_key.clone();
    opts.release_key = common.release_key.clone();
    opts.update_rate = size("--update-rate", &common.update_rate)?;
    if opts.update_rate == 0 {
        return Err(ArgError::ZeroUpdateRate);
    }
    opts.meeting_accept = match common.accept.as_str() {
        "all" => AcceptPolicy::All,
        "scheduled" => AcceptPolicy::Scheduled,
        "manual" => AcceptPolicy::Manual,
        other => return Err(ArgError::Accept(other.to_owned())),
    };
    for (flag, percent) in [
        ("--decline-percent", common.decline_percent),
        ("--hands-percent", common.hands_percent),
    ] {
        if percent > 100 {
            return Err(ArgError::Percent { flag, percent });
        }
    }
    opts.decline_percent = common.decline_percent;
    opts.hands_percent = common.hands_percent;
    opts.media = common.media;
    opts.rooms = common.rooms.clone();
    opts.rooms_of = common
        .rooms_of
        .iter()
        .map(|t| {
            t.parse().map_err(|source| ArgError::TerminalId {
                flag: "--room",
                value: t.clone(),
                source,
            })
        })
        .collect::<Result<_, ArgError>>()?;
    opts.status_socket = common.status_sockets;
    if opts.outbox_budget < 4096 {
        return Err(ArgError::SmallOutbox(common.outbox_budget.clone()));
    }
    Ok(opts)
}

/// The K-th of N equal parts of a list (`--part K/N`, 1 ≤ K ≤ N).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Part {
    k: usize,
    n: usize,
}

/// A `--part` that is not K/N with 1 ≤ K ≤ N (the value as given).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not K/N with 1 <= K <= N")]
struct PartError(String);

impl std::str::FromStr for Part {
    type Err = PartError;

    fn from_str(s: &str) -> Result<Part, PartError> {
        let parsed = s
            .split_once('/')
            .and_then(|(k, n)| Some((k.parse().ok()?, n.parse().ok()?)));
        match parsed {
            Some((k, n)) if (1..=n).contains(&k) => Ok(Part { k, n }),
            _ => Err(PartError(s.to_owned())),
        }
    }
}

impl Part {
    /// This part of `items`: the parts of a list cover it once, in order, sizes within one.
    fn of<T>(self, mut items: Vec<T>) -> Vec<T> {
        let len = items.len();
        let (start, end) = (len * (self.k - 1) / self.n, len * self.k / self.n);
        items.truncate(end);
        items.drain(..start);
        items
    }
}

/// One terminal for each village code of `file` inside `region` (in code order), only those of
/// `part` if given, at most `count`.
fn listed_villages(
    file: &Path,
    region: &Region,
    part: Option<Part>,
    count: Option<usize>,
) -> Result<Vec<TerminalId>, ArgError> {
    let rows = cuntong_firmware_sim::divisions::read(file).map_err(ArgError::Codes)?;
    let main: Slug = "main".parse().map_err(ArgError::MainSlug)?;
    let mut sites: Vec<SiteCode> = rows
        .rows
        .into_iter()
        .map(|(code, _)| code)
        .filter(|c| c.level() == Level::Village && region.contains(c))
        .collect();
    sites.sort();
    sites.dedup();
    if let Some(p) = part {
        sites = p.of(sites);
    }
    if sites.is_empty() {
        return Err(ArgError::NoVillages {
            file: file.to_owned(),
            region: *region,
            part,
        });
    }
    sites.truncate(count.unwrap_or(usize::MAX));
    Ok(sites
        .into_iter()
        .map(|site| TerminalId::new(site, main))
        .collect())
}

fn terminals(cmd: Command) -> Result<(Vec<TerminalId>, SimOptions), ArgError> {
    match cmd {
        Command::Terminal {
            id,
            data_dir,
            hj212_listen,
            duty_button,
            common,
            ..
        } => {
            let (Some(id), Some(data_dir)) = (id, data_dir) else {
                return Err(ArgError::NeedIdAndDataDir);
            };
            let id: TerminalId = id.parse().map_err(|source| ArgError::TerminalId {
                flag: "--id",
                value: id.clone(),
                source,
            })?;
            // The terminal keeps its state in <data-dir>/<id>, the same layout as a fleet's.
            let mut opts = options(&common, data_dir)?;
            opts.status_socket = true;
            opts.duty_button = duty_button;
            opts.hj212_listen = hj212_listen
                .map(|a| socket_addr("--hj212-listen", &a))
                .transpose()?;
            Ok((vec![id], opts))
        }
        Command::Fleet {
            region,
            count,
            codes,
            part,
            data_dir,
            common,
        } => {
            let r: Region = region.parse().map_err(|source| ArgError::Region {
                value: region.clone(),
                source,
            })?;
            if let Some(c) = count.filter(|c| !(1..=MAX_FLEET).contains(c)) {
                return Err(ArgError::Count(c));
            }
            let opts = options(&common, data_dir.unwrap_or_else(default_data_root))?;
            let ids = match codes {
                Some(file) => listed_villages(&file, &r, part, count)?,
                None => fleet_ids(&r, count.unwrap_or(10)),
            };
            if opts.media {
                return Ok((relay_ids(&r, &ids).into_iter().chain(ids).collect(), opts));
            }
            Ok((ids, opts))
        }
        Command::Proxy { .. } | Command::Link { .. } | Command::Datalogger { .. } => {
            Err(ArgError::NotTerminalCommand)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Part;

    #[test]
    fn the_parts_of_a_list_cover_it_once_in_order_and_bad_parts_are_refused() {
        for (len, n) in [(54_145, 11), (10, 3), (2, 5), (0, 2), (7, 1)] {
            let items: Vec<usize> = (0..len).collect();
            let parts: Vec<Vec<usize>> = (1..=n).map(|k| Part { k, n }.of(items.clone())).collect();
            assert_eq!(parts.concat(), items, "{len} in {n}");
            let sizes: Vec<usize> = parts.iter().map(Vec::len).collect();
            let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(hi - lo <= 1, "{sizes:?}");
        }
        assert_eq!("2/4".parse(), Ok(Part { k: 2, n: 4 }));
        for bad in ["0/4", "5/4", "1/0", "1", "a/b", "1/2/3", ""] {
            assert!(bad.parse::<Part>().is_err(), "{bad:?}");
        }
    }
}
