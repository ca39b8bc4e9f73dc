//! `cuntong-sim`: simulated terminals, one or a fleet, running the real terminal code.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use cuntong_core::site::Region;
use cuntong_core::terminal_id::TerminalId;
use cuntong_firmware_sim::fleet::{Fleet, SimOptions, default_data_root, fleet_ids};
use cuntong_terminal::broker_url::BrokerUrl;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    version,
    about = "cuntong simulator: terminals with simulated hardware"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One terminal (the real terminal code) with simulated hardware.
    Terminal {
        /// Terminal id, e.g. 130102001001-main.
        #[arg(long)]
        id: String,
        #[arg(long, env = "CUNTONG_BROKER", default_value = "mqtt://127.0.0.1:1883")]
        broker: String,
        /// Where the terminal keeps its state.
        #[arg(long)]
        data_dir: PathBuf,
        /// Sampling and batch interval.
        #[arg(long, default_value = "10s")]
        interval: String,
        /// MQTT keep-alive.
        #[arg(long, default_value = "30s")]
        keep_alive: String,
    },
    /// N terminals in one process, spread over the townships and villages of a region.
    Fleet {
        #[arg(long, env = "CUNTONG_BROKER", default_value = "mqtt://127.0.0.1:1883")]
        broker: String,
        /// Region code prefix: 13, 1301, 130102, 130102001 or 130102001001.
        #[arg(long)]
        region: String,
        #[arg(long, default_value_t = 10)]
        count: usize,
        #[arg(long, default_value = "10s")]
        interval: String,
        #[arg(long, default_value = "30s")]
        keep_alive: String,
        /// Where the terminals keep their state (one directory each).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

/// A bad argument: one line naming the value, exit code 2.
fn usage(msg: String) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(2)
}

fn duration(flag: &str, s: &str) -> Result<Duration, String> {
    cuntong_terminal::config::parse_duration(s)
        .and_then(|d| {
            if d.is_zero() {
                Err(format!("{s:?} must be more than zero"))
            } else {
                Ok(d)
            }
        })
        .map_err(|e| format!("{flag}: {e}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CUNTONG_LOG")
                .unwrap_or_else(|_| "warn,cuntong_sim=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();

    let (ids, opts) = match parse(cli.command) {
        Ok(v) => v,
        Err(msg) => return usage(msg),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let n = ids.len();
        let mut fleet = Fleet::start(ids, &opts);
        tracing::info!(terminals = n, broker = %opts.broker, "simulator running");
        let stop = CancellationToken::new();
        let signal = stop.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            signal.cancel();
        });
        let term = async {
            if let Ok(mut s) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            {
                s.recv().await;
            }
        };
        let failure = async {
            loop {
                if let Some(f) = fleet.try_failure() {
                    return f;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        };
        let failed = tokio::select! {
            _ = stop.cancelled() => None,
            _ = term => None,
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
    })
}

fn parse(cmd: Command) -> Result<(Vec<TerminalId>, SimOptions), String> {
    let broker_of = |s: &str| s.parse::<BrokerUrl>().map_err(|e| format!("--broker: {e}"));
    match cmd {
        Command::Terminal {
            id,
            broker,
            data_dir,
            interval,
            keep_alive,
        } => {
            let id: TerminalId = id.parse().map_err(|e| format!("--id {id:?}: {e}"))?;
            // The terminal keeps its state in <data-dir>/<id>, the same layout as a fleet's.
            let opts = SimOptions {
                broker: broker_of(&broker)?,
                data_root: data_dir,
                interval: duration("--interval", &interval)?,
                keep_alive: duration("--keep-alive", &keep_alive)?,
                status_socket: true,
            };
            Ok((vec![id], opts))
        }
        Command::Fleet {
            broker,
            region,
            count,
            interval,
            keep_alive,
            data_dir,
        } => {
            let r: Region = region
                .parse()
                .map_err(|e| format!("--region {region:?}: {e}"))?;
            if count == 0 {
                return Err("--count must be at least 1".to_owned());
            }
            let opts = SimOptions {
                broker: broker_of(&broker)?,
                data_root: data_dir.unwrap_or_else(default_data_root),
                interval: duration("--interval", &interval)?,
                keep_alive: duration("--keep-alive", &keep_alive)?,
                status_socket: false,
            };
            Ok((fleet_ids(&r, count), opts))
        }
    }
}
