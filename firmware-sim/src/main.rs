//! `cuntong-sim`: simulated terminals, one or a fleet, running the real terminal code; and the
//! link proxy that tests cut and slow down.

use cuntong_terminal::println;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use cuntong_core::terminal_id::TerminalId;
use cuntong_firmware_sim::fleet::{Fleet, SimOptions};
use cuntong_firmware_sim::{datalogger, proxy};
use cuntong_terminal::daemon::shutdown_signal;
use tokio_util::sync::CancellationToken;

mod args;
mod control;

use args::{duration, logger_options, socket_addr, terminals};
use control::{run_proxy, tell};
use cuntong_firmware_sim::divisions::Part;

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
    /// The terminals power on over this long, each at its own moment in it (as a county's
    /// boxes do when its power comes back); 0s starts them all at the same instant.
    #[arg(long, default_value = "0s")]
    power_on: String,
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
        /// Where the terminal keeps its state (in DATA_DIR/ID).
        #[arg(long, required_unless_present = "config")]
        data_dir: Option<PathBuf>,
        /// Accept HJ 212 data loggers on this address (host:port).
        #[arg(long)]
        hj212_listen: Option<String>,
        /// A duty button: the file DATA_DIR/ID/duty-button stands for its line (write 0
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
                run_fleet_of(Fleet::start_configs(
                    vec![cfg],
                    interval,
                    Vec::new(),
                    Duration::ZERO,
                ))
                .await
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
