//! `cuntong`: the central CLI.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use cuntong::central::{self, CentralOptions, CentralStats};
use cuntong::store::{SqliteStore, Store};
use cuntong::{broker, view};
use cuntong_core::site::Region;
use cuntong_core::telemetry::Metric;
use cuntong_core::terminal_id::TerminalId;
use cuntong_firmware_sim::fleet::{Fleet, SimOptions, fleet_ids};
use cuntong_terminal::broker_url::BrokerUrl;
use cuntong_terminal::daemon::shutdown_signal;
use cuntong_terminal::link::unix_ms;
use tokio_util::sync::CancellationToken;

const DEFAULT_BROKER: &str = "mqtt://127.0.0.1:1883";

#[derive(Parser)]
#[command(
    version,
    about = "cuntong: provincial video-conference and telemetry network, central tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the embedded MQTT broker.
    Broker {
        #[arg(long, default_value = "127.0.0.1:1883")]
        listen: String,
    },
    /// Run the central-office service: collect every site's telemetry into the store.
    Central {
        #[arg(long, env = "CUNTONG_BROKER", default_value = DEFAULT_BROKER)]
        broker: String,
        #[arg(long, env = "CUNTONG_DB")]
        db: Option<PathBuf>,
        /// Central's provisioning bundle (ca.pem, cert.pem, key.pem), for an mqtts:// broker.
        #[arg(long)]
        tls: Option<PathBuf>,
    },
    /// The fleet CA: `ca init`, `ca issue-server`.
    Ca {
        #[command(subcommand)]
        action: CaAction,
    },
    /// Issue a terminal's (or `central`'s) key, certificate and config as one bundle.
    Provision {
        /// Terminal id, or `central` (or use --batch).
        #[arg(required_unless_present = "batch")]
        id: Option<String>,
        /// A CSV of `id,name` rows: one bundle per terminal in `--out/<id>`.
        #[arg(long, conflicts_with = "id")]
        batch: Option<PathBuf>,
        #[arg(long)]
        ca: PathBuf,
        /// The broker the terminal will use (mqtts://host:port).
        #[arg(long)]
        broker: String,
        #[arg(long)]
        out: PathBuf,
        /// A human label written into the config (site name).
        #[arg(long)]
        name: Option<String>,
        /// Issue again an id that was already provisioned.
        #[arg(long)]
        force: bool,
    },
    /// Send a signed command (ping, reboot, diag, logs, config-set KEY=VALUE) to a terminal or
    /// to every terminal of a region, and print the answers.
    Cmd {
        /// `TERMINAL_ID COMMAND…`, or just `COMMAND…` with --region; COMMAND is ping, reboot,
        /// diag, logs or config-set KEY=VALUE.
        #[arg(required = true, num_args = 1..=3)]
        words: Vec<String>,
        /// Every terminal the store knows in this region.
        #[arg(long)]
        region: Option<String>,
        /// The CA directory with the command key.
        #[arg(long)]
        ca: PathBuf,
        #[arg(long, env = "CUNTONG_BROKER", default_value = DEFAULT_BROKER)]
        broker: String,
        /// Central's bundle, for an mqtts:// broker.
        #[arg(long)]
        tls: Option<PathBuf>,
        #[arg(long, env = "CUNTONG_DB")]
        db: Option<PathBuf>,
        /// The command is void after this long (an offline terminal runs it on reconnect
        /// until then).
        #[arg(long, default_value = "1h")]
        expires: String,
        /// How long to wait for answers.
        #[arg(long, default_value = "10s")]
        wait: String,
        #[arg(long)]
        json: bool,
    },
    /// Write the broker's ACL and configuration from the CA's inventory.
    Acl {
        #[arg(long)]
        ca: PathBuf,
        /// Only `mosquitto` for now.
        #[arg(long, default_value = "mosquitto")]
        format: String,
        /// The TLS port the broker listens on.
        #[arg(long, default_value_t = 8883)]
        listen: u16,
        /// The directory `ca issue-server` wrote.
        #[arg(long)]
        server: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// One row per terminal: level, online, last seen, latest metrics.
    Sites {
        #[arg(long, env = "CUNTONG_DB")]
        db: Option<PathBuf>,
        /// Region code prefix: 13, 1301, 130102, 130102001 or a full site code.
        #[arg(long)]
        region: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The stored history of one terminal.
    Telemetry {
        #[arg(long)]
        terminal: String,
        #[arg(long)]
        metric: Option<String>,
        /// Only samples newer than this (e.g. 1h, 30m).
        #[arg(long)]
        since: Option<String>,
        #[arg(long, env = "CUNTONG_DB")]
        db: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Stored events of the fleet: starts, sensor faults, drops, commands and security events
    /// (refused commands, TLS failures, changed files, unclean restarts).
    Events {
        #[arg(long)]
        region: Option<String>,
        /// Only events newer than this (e.g. 1h, 30m).
        #[arg(long)]
        since: Option<String>,
        /// Only security events.
        #[arg(long)]
        security: bool,
        #[arg(long, env = "CUNTONG_DB")]
        db: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// HJ 212 frames: decode what a data logger sends, or build frames to send to one.
    Hj212 {
        #[command(subcommand)]
        action: Hj212Action,
    },
    /// Broker, central service and a simulated county, in one process, with a live fleet table.
    Demo {
        #[arg(long, default_value = "127.0.0.1:1883")]
        listen: String,
        /// Number of simulated terminals.
        #[arg(long, default_value_t = 12)]
        sites: usize,
        /// The simulated region.
        #[arg(long, default_value = "130102")]
        region: String,
        /// How often each terminal samples and reports.
        #[arg(long, default_value = "5s")]
        interval: String,
        /// Stop after this long (default: until Ctrl-C).
        #[arg(long)]
        duration: Option<String>,
        /// The store (default: a new database in a temporary directory).
        #[arg(long)]
        db: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum CaAction {
    /// Create a fleet CA (key, self-signed certificate, inventory) in DIR.
    Init {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue the broker's server certificate for a host name or IP address.
    IssueServer {
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum Hj212Action {
    /// Decode frames, one per line, from FILE or standard input (`-`); exit 1 if any is bad.
    Decode {
        #[arg(default_value = "-")]
        file: String,
        /// One JSON object per frame.
        #[arg(long)]
        json: bool,
    },
    /// Encode frames from a JSON file (an object or an array of objects, as `decode --json`
    /// prints them), computing the length and CRC.
    Encode {
        #[arg(long)]
        json: PathBuf,
    },
}

/// Bad usage or input: one line naming the value, exit code 2.
struct Usage(String);

enum Failure {
    Usage(Usage),
    Runtime(String),
}

impl From<Usage> for Failure {
    fn from(u: Usage) -> Failure {
        Failure::Usage(u)
    }
}

fn fail(e: impl std::fmt::Display) -> Failure {
    Failure::Runtime(e.to_string())
}

fn parse<T>(flag: &str, value: &str) -> Result<T, Usage>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    value
        .parse()
        .map_err(|e| Usage(format!("{flag} {value:?}: {e}")))
}

fn duration(flag: &str, value: &str) -> Result<Duration, Usage> {
    cuntong_terminal::config::parse_duration(value).map_err(|e| Usage(format!("{flag}: {e}")))
}

fn default_db() -> PathBuf {
    dirs::data_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("cuntong")
        .join("central.db")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match cuntong_terminal::daemon::process_runtime(
        "info,rumqttd=off,cuntong_terminal=warn",
        None,
    ) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(Usage(msg))) => {
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cmd: Command) -> Result<(), Failure> {
    match cmd {
        Command::Broker { listen } => {
            let addr: SocketAddr = parse("--listen", &listen)?;
            broker::start(addr).map_err(fail)?;
            if !broker::wait_ready(addr, Duration::from_secs(10)).await {
                return Err(fail(format!(
                    "the broker did not start listening on {addr}"
                )));
            }
            eprintln!("broker listening on mqtt://{addr}");
            shutdown_signal().await;
            Ok(())
        }
        Command::Central { broker, db, tls } => {
            let mut opts = CentralOptions::new(
                parse("--broker", &broker)?,
                db.unwrap_or_else(default_db),
                format!("central-{}", std::process::id()),
            );
            opts.tls = tls.map(|d| cuntong_terminal::tls::TlsFiles::in_dir(&d));
            if opts.broker.tls != opts.tls.is_some() {
                return Err(Usage(format!(
                    "--broker {broker:?} and --tls go together (mqtts:// needs --tls DIR)"
                ))
                .into());
            }
            eprintln!("central: {} -> {}", opts.broker, opts.db.display());
            let stats = Arc::new(CentralStats::default());
            let stop = CancellationToken::new();
            let on_signal = stop.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                on_signal.cancel();
            });
            let report = tokio::spawn(report_stats(stats.clone(), stop.clone()));
            let r = central::run(opts, stats, stop).await;
            report.abort();
            r.map_err(fail)
        }
        Command::Sites { db, region, json } => {
            let region: Option<Region> = region.map(|r| parse("--region", &r)).transpose()?;
            let store = SqliteStore::open_existing(&db.unwrap_or_else(default_db)).map_err(fail)?;
            let rows = store.sites(region.as_ref()).map_err(fail)?;
            if json {
                let out: Vec<view::SiteJson> = rows.iter().map(view::site_json).collect();
                println!("{}", serde_json::to_string_pretty(&out).map_err(fail)?);
            } else {
                print!("{}", view::sites_table(&rows, unix_ms()));
            }
            Ok(())
        }
        Command::Events {
            region,
            since,
            security,
            db,
            json,
        } => {
            let region: Option<Region> = region.map(|r| parse("--region", &r)).transpose()?;
            let since_ms = since
                .map(|s| duration("--since", &s))
                .transpose()?
                .map(|d| unix_ms().saturating_sub(d.as_millis() as u64));
            let store = SqliteStore::open_existing(&db.unwrap_or_else(default_db)).map_err(fail)?;
            let mut rows = store.events(region.as_ref(), since_ms).map_err(fail)?;
            if security {
                rows.retain(|r| r.event.is_security());
            }
            if json {
                let out: Vec<view::EventJson> = rows.iter().map(view::event_json).collect();
                println!("{}", serde_json::to_string_pretty(&out).map_err(fail)?);
            } else {
                print!("{}", view::events_table(&rows));
            }
            Ok(())
        }
        Command::Telemetry {
            terminal,
            metric,
            since,
            db,
            json,
        } => {
            let id: TerminalId = parse("--terminal", &terminal)?;
            let metric = metric
                .map(|m| Metric::from_name(&m).map_err(|e| Usage(format!("--metric {m:?}: {e}"))))
                .transpose()?;
            let since_ms = since
                .map(|s| duration("--since", &s))
                .transpose()?
                .map(|d| unix_ms().saturating_sub(d.as_millis() as u64));
            let store = SqliteStore::open_existing(&db.unwrap_or_else(default_db)).map_err(fail)?;
            let rows = store
                .telemetry(&id, metric.as_ref(), since_ms)
                .map_err(fail)?;
            if json {
                let out: Vec<view::SampleJson> = rows.iter().map(view::sample_json).collect();
                println!("{}", serde_json::to_string_pretty(&out).map_err(fail)?);
            } else {
                print!("{}", view::telemetry_table(&rows));
            }
            Ok(())
        }
        Command::Hj212 { action } => hj212_tool(action),
        Command::Cmd {
            words,
            region,
            ca,
            broker,
            tls,
            db,
            expires,
            wait,
            json,
        } => {
            let (terminal, command) = match (&region, words.split_first()) {
                (None, Some((t, rest))) => (Some(t.clone()), rest.to_vec()),
                _ => (None, words.clone()),
            };
            let action = cuntong::cmd::parse_action(&command).map_err(Usage)?;
            let broker: BrokerUrl = parse("--broker", &broker)?;
            let expires = duration("--expires", &expires)?;
            let wait = duration("--wait", &wait)?;
            let targets: Vec<TerminalId> = match (terminal, region) {
                (Some(t), None) => vec![parse("terminal", &t)?],
                (None, Some(r)) => {
                    let region: Region = parse("--region", &r)?;
                    let store =
                        SqliteStore::open_existing(&db.unwrap_or_else(default_db)).map_err(fail)?;
                    store
                        .sites(Some(&region))
                        .map_err(fail)?
                        .iter()
                        .filter_map(|s| s.terminal.parse().ok())
                        .collect()
                }
                _ => return Err(Usage("give a terminal id or --region, not both".into()).into()),
            };
            if targets.is_empty() {
                return Err(fail("no terminal in that region"));
            }
            let tls = match tls {
                Some(dir) => Some(
                    cuntong_terminal::tls::client_config(&cuntong_terminal::tls::TlsFiles::in_dir(
                        &dir,
                    ))
                    .map_err(fail)?,
                ),
                None => None,
            };
            let key = cuntong::cmd::signing_key(&ca).map_err(fail)?;
            let answers = cuntong::cmd::send(broker, tls, &key, &targets, &action, expires, wait)
                .await
                .map_err(fail)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&answers).map_err(fail)?);
            } else {
                for a in &answers {
                    let state = match a.ok {
                        Some(true) => "ok",
                        Some(false) => "FAIL",
                        None => "no answer (queued until it expires)",
                    };
                    println!(
                        "{:<22} {state}  {}",
                        a.terminal,
                        a.output.as_deref().unwrap_or("")
                    );
                }
            }
            if answers.iter().all(|a| a.ok == Some(true)) {
                Ok(())
            } else {
                Err(Failure::Runtime(format!(
                    "{} of {} terminals did not run the command",
                    answers.iter().filter(|a| a.ok != Some(true)).count(),
                    answers.len()
                )))
            }
        }
        Command::Ca { action } => match action {
            CaAction::Init { dir } => {
                cuntong::ca::init(&dir).map_err(fail)?;
                println!("fleet CA created in {}", dir.display());
                Ok(())
            }
            CaAction::IssueServer { ca, name, out } => {
                cuntong::ca::issue_server(&ca, &name, &out).map_err(fail)?;
                println!("server certificate for {name} in {}", out.display());
                Ok(())
            }
        },
        Command::Provision {
            id,
            batch,
            ca,
            broker,
            out,
            name,
            force,
        } => {
            let url: BrokerUrl = parse("--broker", &broker)?;
            if !url.tls {
                return Err(Usage(format!(
                    "--broker {broker:?}: provisioned terminals use mqtts://"
                ))
                .into());
            }
            if let Some(file) = batch {
                let text = std::fs::read_to_string(&file)
                    .map_err(|e| Usage(format!("--batch {}: {e}", file.display())))?;
                let rows = cuntong::ca::batch_rows(&text)
                    .map_err(|e| Usage(format!("--batch {}: {e}", file.display())))?;
                let bar = indicatif::ProgressBar::new(rows.len() as u64);
                let mut failed = 0;
                for (id, label) in &rows {
                    let r = cuntong::ca::provision(
                        &ca,
                        id,
                        &url.to_string(),
                        &out.join(id),
                        label.as_deref(),
                        force,
                    );
                    if let Err(e) = r {
                        bar.suspend(|| eprintln!("error: {id}: {e}"));
                        failed += 1;
                    }
                    bar.inc(1);
                }
                bar.finish();
                println!(
                    "{} bundles in {}, {failed} failed",
                    rows.len() - failed,
                    out.display()
                );
                return if failed == 0 {
                    Ok(())
                } else {
                    Err(Failure::Runtime(format!(
                        "{failed} terminals not provisioned"
                    )))
                };
            }
            let Some(id) = id else {
                return Err(Usage("give a terminal id or --batch FILE".into()).into());
            };
            if id != cuntong::ca::CENTRAL {
                let _: TerminalId = parse("id", &id)?;
            }
            cuntong::ca::provision(&ca, &id, &url.to_string(), &out, name.as_deref(), force)
                .map_err(fail)?;
            println!("bundle for {id} in {}", out.display());
            Ok(())
        }
        Command::Acl {
            ca,
            format,
            listen,
            server,
            out,
        } => {
            if format != "mosquitto" {
                return Err(
                    Usage(format!("--format {format:?}: only mosquitto is supported")).into(),
                );
            }
            cuntong::ca::write_mosquitto(&ca, listen, &server, &out).map_err(fail)?;
            println!(
                "{}/acl and {}/mosquitto.conf written",
                out.display(),
                out.display()
            );
            Ok(())
        }
        Command::Demo {
            listen,
            sites,
            region,
            interval,
            duration: run_for,
            db,
        } => {
            let addr: SocketAddr = parse("--listen", &listen)?;
            let region: Region = parse("--region", &region)?;
            let interval = duration("--interval", &interval)?;
            if interval.is_zero() {
                return Err(Usage("--interval must be more than zero".into()).into());
            }
            let run_for = run_for.map(|d| duration("--duration", &d)).transpose()?;
            if sites == 0 {
                return Err(Usage("--sites must be at least 1".into()).into());
            }
            demo(addr, region, sites, interval, run_for, db).await
        }
    }
}

fn hj212_tool(action: Hj212Action) -> Result<(), Failure> {
    use cuntong::hj212::{FrameJson, decode_line, describe};
    match action {
        Hj212Action::Decode { file, json } => {
            let text = if file == "-" {
                std::io::read_to_string(std::io::stdin()).map_err(fail)?
            } else {
                std::fs::read_to_string(&file).map_err(|e| fail(format!("{file}: {e}")))?
            };
            let mut bad = 0;
            for (i, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                match decode_line(line) {
                    Ok(p) if json => {
                        println!(
                            "{}",
                            serde_json::to_string(&FrameJson::from(&p)).map_err(fail)?
                        )
                    }
                    Ok(p) => println!("frame {}:\n{}", i + 1, describe(&p)),
                    Err(e) => {
                        bad += 1;
                        eprintln!("error: line {}: {e}", i + 1);
                    }
                }
            }
            if bad > 0 {
                return Err(Failure::Runtime(format!("{bad} bad frame(s)")));
            }
            Ok(())
        }
        Hj212Action::Encode { json } => {
            let text = std::fs::read_to_string(&json)
                .map_err(|e| Usage(format!("--json {}: {e}", json.display())))?;
            let value: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Usage(format!("--json {}: {e}", json.display())))?;
            let items = match value {
                serde_json::Value::Array(a) => a,
                one => vec![one],
            };
            for (i, item) in items.into_iter().enumerate() {
                let frame: FrameJson = serde_json::from_value(item).map_err(|e| {
                    Usage(format!("--json {} frame {}: {e}", json.display(), i + 1))
                })?;
                let packet = frame.to_packet().map_err(|e| {
                    Usage(format!("--json {} frame {}: {e}", json.display(), i + 1))
                })?;
                print!(
                    "{}",
                    String::from_utf8_lossy(&cuntong_core::hj212::encode(&packet))
                );
            }
            Ok(())
        }
    }
}

async fn demo(
    addr: SocketAddr,
    region: Region,
    sites: usize,
    interval: Duration,
    run_for: Option<Duration>,
    db: Option<PathBuf>,
) -> Result<(), Failure> {
    let workdir = tempfile::Builder::new()
        .prefix("cuntong-demo-")
        .tempdir()
        .map_err(fail)?;
    let db = db.unwrap_or_else(|| workdir.path().join("central.db"));
    broker::start(addr).map_err(fail)?;
    if !broker::wait_ready(addr, Duration::from_secs(10)).await {
        return Err(fail(format!(
            "the broker did not start listening on {addr}"
        )));
    }
    let broker_url: BrokerUrl = parse("--listen", &format!("mqtt://{addr}"))?;
    eprintln!("broker   mqtt://{addr} (embedded)");
    eprintln!("store    {}", db.display());

    let stop = CancellationToken::new();
    let stats = Arc::new(CentralStats::default());
    let central = tokio::spawn(central::run(
        CentralOptions::new(broker_url.clone(), db.clone(), "central-demo"),
        stats.clone(),
        stop.clone(),
    ));
    let fleet = Fleet::start(
        fleet_ids(&region, sites),
        &SimOptions {
            keep_alive: Duration::from_secs(10),
            ..SimOptions::new(broker_url, workdir.path().join("terminals"), interval)
        },
    );
    eprintln!(
        "fleet    {sites} simulated terminals in region {region}, reporting every {interval:?}"
    );

    let deadline = run_for.map(|d| tokio::time::Instant::now() + d);
    let live = std::io::stdout().is_terminal();
    let signal = shutdown_signal();
    tokio::pin!(signal);
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let reader = SqliteStore::open(&db).map_err(fail)?;
    loop {
        let done = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut signal => break,
            _ = done => break,
            _ = tick.tick() => {
                if live {
                    let rows = reader.sites(None).map_err(fail)?;
                    print!("\x1b[2J\x1b[H{}", view::sites_table(&rows, unix_ms()));
                    println!(
                        "stored {} messages ({} values), {} duplicates, {} rejected; Ctrl-C to stop",
                        stats.get(|s| &s.stored), stats.get(|s| &s.values),
                        stats.get(|s| &s.duplicates), stats.get(|s| &s.rejected)
                    );
                }
            }
        }
    }
    // The fleet as it was running, then an orderly stop: terminals say goodbye, and central
    // stores that before it stops (bounded, so a stuck broker cannot hang the demo).
    let rows = reader.sites(None).map_err(fail)?;
    let failed = fleet.stop().await;
    let all_offline = async {
        while reader.sites(None).is_ok_and(|r| r.iter().any(|s| s.online)) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), all_offline).await;
    stop.cancel();
    let central_result = central.await;
    print!("{}", view::sites_table(&rows, unix_ms()));
    println!(
        "stored {} messages ({} values), {} duplicates, {} rejected",
        stats.get(|s| &s.stored),
        stats.get(|s| &s.values),
        stats.get(|s| &s.duplicates),
        stats.get(|s| &s.rejected)
    );
    if let Some((id, e)) = failed.first() {
        return Err(fail(format!("terminal {id}: {e}")));
    }
    match central_result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(fail(e)),
        Err(e) => Err(fail(e)),
    }
}

async fn report_stats(stats: Arc<CentralStats>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => tracing::info!(
                received = stats.get(|s| &s.received),
                stored = stats.get(|s| &s.stored),
                duplicates = stats.get(|s| &s.duplicates),
                rejected = stats.get(|s| &s.rejected),
                "central"
            ),
        }
    }
}
