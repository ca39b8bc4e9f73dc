//! `cuntong-terminal`: the daemon of a site's box, its self-test and its status query.

use std::path::PathBuf;

use cuntong_terminal::{print, println};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use cuntong_terminal::conference::{SignallingOnly, Unattended};
use cuntong_terminal::config::TerminalConfig;
use cuntong_terminal::daemon::shutdown_signal;
use cuntong_terminal::daemon::{self, Hardware};
use cuntong_terminal::health::ProcHealth;
use cuntong_terminal::status::LocalRequest;
use cuntong_terminal::update::launcher::{self, Launch};
use cuntong_terminal::{check, hardware, status};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    version,
    about = "cuntong site terminal: telemetry, presence, commands and meetings"
)]
struct Cli {
    /// The terminal's configuration file.
    #[arg(
        long,
        short,
        global = true,
        default_value = "/etc/cuntong/terminal.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Run,
    /// Validate the config, probe each sensor, connect to the broker; one line per check.
    Check {
        /// How long to wait for the broker.
        #[arg(long, default_value = "10s", value_parser = cuntong_terminal::config::parse_duration)]
        timeout: Duration,
    },
    /// Ask the running daemon for its state over its local socket.
    Status {
        /// The daemon's socket (default: from the config).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Take part in a meeting from the box: accept, decline, raise or lower the hand, leave;
    /// `layout ID LAYOUT` for the room's picture on this box; `content ID on|off` to share
    /// the box's second video source (双流); `chair ID OP [TERMINAL]` for a box the chair made
    /// a delegated chair.
    Meeting {
        /// accept, decline, hand, lower, leave, layout, content or chair.
        action: String,
        /// The meeting id (as `status` shows it).
        id: String,
        /// Why (for decline); the layout (single, 1+N, 2x2, 3x3, 4x4, speaker); on or off (for
        /// content); OP [TERMINAL] for chair (mute, unmute, grant, lower TERMINAL; revoke,
        /// mute-all, unmute-all).
        reason: Vec<String>,
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Raise a duty report (值班报告) for the duty office above this site; it shows as a
    /// critical alarm there, and its acknowledgement in `status`.
    Report {
        /// What it is about: flood, fire, power, … (a-z, 0-9, -).
        #[arg(long)]
        kind: String,
        #[arg(long)]
        text: String,
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Start a video call from this box to another terminal (e.g. the county office).
    Call {
        terminal: String,
        #[arg(long)]
        socket: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match cuntong_terminal::daemon::process_runtime("info", Some(2)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async_main(cli))
}

async fn async_main(cli: Cli) -> ExitCode {
    let load = || TerminalConfig::load(&cli.config);
    let socket_path = |socket: Option<PathBuf>| -> Result<PathBuf, ExitCode> {
        match socket {
            Some(p) => Ok(p),
            None => match load() {
                Ok(cfg) => cfg.status_socket.ok_or_else(|| {
                    eprintln!("error: the config disables the status socket");
                    ExitCode::from(2)
                }),
                Err(e) => {
                    eprintln!("error: {e}");
                    Err(ExitCode::from(2))
                }
            },
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Meeting {
            action,
            id,
            reason,
            socket,
        } => {
            let line = format!("meeting {action} {id} {}", reason.join(" "));
            let req = match LocalRequest::parse(line.trim_end()) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            operator(socket_path(socket), &req).await
        }
        Command::Call { terminal, socket } => {
            let req = match LocalRequest::parse(&format!("call {terminal}")) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            operator(socket_path(socket), &req).await
        }
        Command::Report { kind, text, socket } => {
            if text.contains('\n') {
                eprintln!("error: report text: one line");
                return ExitCode::from(2);
            }
            let req = match LocalRequest::parse(&format!("report {kind} {text}")) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            operator(socket_path(socket), &req).await
        }
        Command::Status { socket, json } => {
            let path = match socket_path(socket) {
                Ok(p) => p,
                Err(code) => return code,
            };
            match status::request(&path).await {
                Ok(report) if json => match serde_json::to_string_pretty(&report) {
                    Ok(s) => {
                        println!("{s}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        ExitCode::FAILURE
                    }
                },
                Ok(report) => {
                    print!(
                        "{}",
                        status::render(&report, cuntong_terminal::link::unix_ms())
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { timeout } => {
            let cfg = match load() {
                Ok(c) => c,
                Err(e) => {
                    println!("FAIL  config                 {e}");
                    return ExitCode::from(2);
                }
            };
            let lines = check::run(&cfg, timeout).await;
            for l in &lines {
                println!("{l}");
            }
            if lines.iter().any(|l| !l.pass && l.needed_to_start) {
                // The daemon would refuse to start with this configuration.
                ExitCode::from(2)
            } else if lines.iter().all(|l| l.pass) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Run => {
            let cfg = match load() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            // The build this start runs: a committed release, one on trial, or this one.
            let rules = cfg.update.as_ref().map(|u| u.trial).unwrap_or_default();
            if let Launch::Exit(code) = launcher::launch(&cfg.data_dir, rules) {
                return code;
            }
            let mut cfg = cfg;
            cfg.launched = launcher::Launched::from_env();
            // The same start-up checks as `check`: refuse now, not halfway through.
            let startup = check::startup(&cfg);
            if let Some(why) = startup.refusal() {
                eprintln!("error: cannot start: {why}");
                return ExitCode::from(2);
            }
            let hardware = Hardware {
                sensors: cfg
                    .sensors
                    .iter()
                    .map(|s| (hardware::open_or_retry(&s.kind), s.interval))
                    .collect(),
                health: Box::new(ProcHealth::new(&cfg.data_dir)),
                power: Box::new(hardware::SystemPower {
                    command: cfg.commands.as_ref().and_then(|c| c.reboot.clone()),
                }),
                media: media_engine(&cfg),
                console: Box::new(Unattended),
                duty_button: startup.duty_button,
            };
            let stop = CancellationToken::new();
            let on_signal = stop.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                on_signal.cancel();
            });
            tracing::info!(terminal = %cfg.id, broker = %cfg.broker, "starting");
            match daemon::run(cfg, hardware, stop).await {
                Ok(daemon::Stopped::Asked) => ExitCode::SUCCESS,
                Ok(daemon::Stopped::ForUpdate) => {
                    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
                    let e = launcher::restart(&args);
                    eprintln!("error: cannot restart into the new build: {e}");
                    // The service manager starts it again; the launcher picks the trial.
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Sends an operator's request to the running daemon and prints its answer.
async fn operator(path: Result<PathBuf, ExitCode>, req: &LocalRequest) -> ExitCode {
    let path = match path {
        Ok(p) => p,
        Err(code) => return code,
    };
    match status::operator_request(&path, req).await {
        Ok(answer) => {
            println!("{answer}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The box's media engine: GStreamer with its camera, microphone, screen and speaker, or
/// signalling only if this build or this box has no media.
fn media_engine(cfg: &TerminalConfig) -> Box<dyn cuntong_terminal::conference::MediaEngine> {
    #[cfg(feature = "media")]
    {
        use cuntong_terminal::config::Display;
        use cuntong_terminal::media::{Capture, GstEngine, Playback};
        // A SIP gateway's camera, microphone, screen and speaker are its room system's.
        let (capture, display) = match &cfg.sip {
            Some(sip) => (
                Capture::Call(sip.call.clone()),
                Display::Call(sip.call.clone()),
            ),
            None => (
                Capture::Devices {
                    camera: None,
                    microphone: None,
                },
                cfg.media.display.clone(),
            ),
        };
        let room = Playback::Room {
            display,
            layout: cfg.media.layout,
        };
        match GstEngine::new(cfg.id, capture, room, cfg.meeting.rtp_port) {
            Ok(e) => {
                return Box::new(match &cfg.media.content {
                    Some(c) => e.with_content(Capture::content(c)),
                    None => e,
                });
            }
            Err(e) => {
                tracing::error!(error = %e, "no media on this box; meetings are signalling only")
            }
        }
    }
    let _ = cfg;
    Box::new(SignallingOnly)
}
