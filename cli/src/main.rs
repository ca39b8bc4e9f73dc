//! `cuntong`: the central CLI.

use std::io::IsTerminal;

use cuntong_terminal::{print, println};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use cuntong::central::{self, CentralOptions, CentralStats};
use cuntong::control::{RequestBody, ResponseBody};
use cuntong::meeting_cli::{self, CentralClient};
use cuntong::store::{SqliteStore, Store};
use cuntong::{broker, view};
use cuntong_core::meeting::{Invitee, MediaProfile, MeetingId};
use cuntong_core::site::Region;
use cuntong_core::telemetry::Metric;
use cuntong_core::terminal_id::TerminalId;
use cuntong_firmware_sim::fleet::{Fleet, MAX_FLEET, SimOptions, fleet_ids};
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
    /// Run the embedded MQTT broker (open to every client unless --auth is given).
    Broker {
        #[arg(long, default_value = "127.0.0.1:1883")]
        listen: String,
        /// Only the users in FILE may connect: `username:password` a line, `#` comments; plain
        /// passwords, so the file must be mode 0600. Clients give them in the broker URL,
        /// `mqtt://user:password@host:port`.
        #[arg(long, value_name = "FILE")]
        auth: Option<PathBuf>,
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
        /// How often the sites of a meeting repeat their status (three missed: unreachable).
        #[arg(long, default_value = "10s")]
        meeting_heartbeat: String,
        /// Alarm rules and notification hooks (TOML; see docs/operations.md). Without it:
        /// offline after 2 minutes, with root-cause suppression, and dropped data.
        #[arg(long)]
        alarms: Option<PathBuf>,
        /// Serve the web dashboard on this address (`127.0.0.1:8080`; read-only).
        #[arg(long, value_name = "ADDR")]
        http: Option<String>,
    },
    /// Before a meeting: every terminal of the meeting (or region) checks its camera,
    /// microphone, link, clock and disk; a ready / not-ready table, kept in the store.
    Readiness {
        #[arg(long, conflicts_with = "region", required_unless_present = "region")]
        meeting: Option<String>,
        #[arg(long)]
        region: Option<String>,
        #[command(flatten)]
        signing: Signing,
        /// How long to wait for answers.
        #[arg(long, default_value = "15s")]
        wait: String,
        #[arg(long)]
        json: bool,
    },
    /// Live view of the fleet: the region tree with counts, a terminal's recent values, the
    /// active alarms and the meetings in progress (reads the store; q quits).
    Monitor {
        #[arg(long)]
        region: Option<String>,
        #[arg(long, env = "CUNTONG_DB")]
        db: Option<PathBuf>,
    },
    /// Alarms: `cuntong alarms [--region CODE] [--active] [--json]`, `cuntong alarms ack ID`.
    Alarms {
        #[command(subcommand)]
        action: Option<AlarmAction>,
        #[arg(long)]
        region: Option<String>,
        /// Only alarms not cleared.
        #[arg(long)]
        active: bool,
        /// The newest this many.
        #[arg(long, default_value_t = 500)]
        limit: usize,
        #[arg(long)]
        json: bool,
        #[arg(long, env = "CUNTONG_DB")]
        db: Option<PathBuf>,
    },
    /// The fleet CA: `ca init`, `ca issue-server`, `ca revoke`.
    Ca {
        #[command(subcommand)]
        action: CaAction,
    },
    /// Issue a terminal's (or `central`'s) key, certificate and config as one bundle.
    Provision {
        /// Terminal id, `central`, or `central-NAME` for each further process of the central
        /// office that connects (a second instance, the operator's commands); or use --batch.
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
        /// The terminal's name, shown instead of its site's official name wherever central
        /// shows it (kept in the store at --db) and written into the config.
        #[arg(long)]
        name: Option<String>,
        /// Issue again an id that was already provisioned.
        #[arg(long)]
        force: bool,
        /// The store that keeps the terminals' names.
        #[arg(long, env = "CUNTONG_DB")]
        db: Option<PathBuf>,
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
        #[command(flatten)]
        signing: Signing,
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
    /// Official names of division codes: `regions show 130102`, `regions search 长安`,
    /// `regions import villages.csv`.
    Regions {
        #[command(subcommand)]
        action: cuntong::regions::RegionsAction,
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
    /// Meetings, training broadcasts: create, control and watch them (the host runs inside
    /// `cuntong central`).
    Meeting {
        #[command(subcommand)]
        action: MeetingAction,
        #[command(flatten)]
        conn: Conn,
    },
    /// Start a two-party video call (可视电话) to a terminal.
    Call {
        terminal: String,
        /// The calling terminal (e.g. the county office's room box); without it the call is
        /// between the central office and the terminal.
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
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
        /// Where the web dashboard listens.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
        http: String,
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
    /// Revoke a terminal's (or a central identity's) certificates: they go on the CA's CRL
    /// and the identity leaves the ACL. Then run `cuntong acl` and reload the broker.
    Revoke {
        /// Terminal id, `central` or `central-NAME`.
        id: String,
        #[arg(long)]
        ca: PathBuf,
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

/// How a signed command reaches terminals: signed with the fleet CA's command key, carried by
/// the broker, its targets found in the store for a region.
#[derive(Args)]
struct Signing {
    /// The CA directory with the command key.
    #[arg(long)]
    ca: PathBuf,
    #[arg(long, env = "CUNTONG_BROKER", default_value = DEFAULT_BROKER)]
    broker: String,
    /// A central identity's bundle for an mqtts:// broker: one of its own (`central-ops`), not
    /// the running service's, since the broker keeps one session per identity.
    #[arg(long)]
    tls: Option<PathBuf>,
    #[arg(long, env = "CUNTONG_DB")]
    db: Option<PathBuf>,
}

impl Signing {
    /// Refuses a bad `--broker` (or one without its `--tls`) before anything is looked up.
    fn check(&self) -> Result<(), Usage> {
        let url = parse::<BrokerUrl>("--broker", &self.broker)?;
        tls_goes_with(&self.broker, &url, self.tls.is_some())
    }

    fn db(&self) -> PathBuf {
        self.db.clone().unwrap_or_else(default_db)
    }

    /// Every terminal the store knows in `region`.
    fn terminals_in(&self, region: &Region) -> Result<Vec<TerminalId>, Failure> {
        Ok(SqliteStore::open_read_only(&self.db())
            .map_err(fail)?
            .sites(Some(region))
            .map_err(fail)?
            .iter()
            .filter_map(|s| s.terminal.parse().ok())
            .collect())
    }

    /// Signs `action` for `targets`, sends it and collects the answers.
    async fn send(
        &self,
        targets: &[TerminalId],
        action: &cuntong_core::command::Action,
        expires: Duration,
        wait: Duration,
    ) -> Result<Vec<cuntong::cmd::Answer>, Failure> {
        self.check()?;
        let broker: BrokerUrl = parse("--broker", &self.broker)?;
        let tls = tls_bundle(self.tls.as_deref())?;
        let key = cuntong::cmd::signing_key(&self.ca).map_err(fail)?;
        cuntong::cmd::send(broker, tls, &key, targets, action, expires, wait)
            .await
            .map_err(fail)
    }
}

/// How a meeting command reaches the meeting host.
#[derive(Args)]
struct Conn {
    #[arg(long, env = "CUNTONG_BROKER", default_value = DEFAULT_BROKER, global = true)]
    broker: String,
    /// A central identity's bundle for an mqtts:// broker: one of its own (`central-ops`), not
    /// the running service's, since the broker keeps one session per identity.
    #[arg(long, global = true)]
    tls: Option<PathBuf>,
}

#[derive(Subcommand)]
enum AlarmAction {
    /// Acknowledge an alarm (through `cuntong central`, which owns the alarms).
    Ack {
        id: u64,
        /// Who acknowledges (recorded with the alarm).
        #[arg(long, env = "USER")]
        by: String,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
enum MeetingAction {
    /// Create a meeting (or, with --kind training, a training broadcast); prints its id.
    Create {
        #[arg(long)]
        title: String,
        /// Region codes and terminal ids, comma separated: 130102,130103001001-main.
        #[arg(long, value_delimiter = ',', required = true)]
        invite: Vec<String>,
        /// Scheduled start: RFC 3339 (2026-12-01T09:00:00+08:00) or +DURATION from now.
        /// Terminals join scheduled sessions on their own when they start.
        #[arg(long)]
        at: Option<String>,
        /// Media profile: hd, sd, low or audio.
        #[arg(long, default_value = "sd")]
        profile: String,
        /// meeting or training.
        #[arg(long, default_value = "meeting")]
        kind: String,
        /// The chair's (the lecturer's) terminal.
        #[arg(long)]
        chair: Option<String>,
        /// Granting the floor does not mute the other sites.
        #[arg(long)]
        keep_audio_on_grant: bool,
        #[arg(long)]
        json: bool,
    },
    Start {
        id: String,
    },
    /// End the session: every site leaves, the retained state is cleared.
    End {
        id: String,
    },
    /// Per invited terminal: state, role, muted, last roll-call answer.
    Status {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Call the roll (点名) and wait for the answers.
    Rollcall {
        id: String,
        #[arg(long, default_value = "10s")]
        timeout: String,
        #[arg(long)]
        json: bool,
    },
    /// Have the meeting's relays also send a terminal's stream, as plain RTP, to a player
    /// (an operations console, a recorder, a room system) at HOST:PORT (audio at PORT+2);
    /// prints its SDP for ffmpeg or VLC.
    View {
        id: String,
        terminal: String,
        #[arg(long, value_name = "HOST:PORT")]
        to: String,
        /// Stop the view.
        #[arg(long)]
        stop: bool,
    },
    /// Grant the floor to a terminal, or revoke it.
    Floor {
        id: String,
        /// grant or revoke.
        action: String,
        terminal: Option<String>,
    },
    Mute {
        id: String,
        terminal: Option<String>,
        #[arg(long)]
        all: bool,
    },
    Unmute {
        id: String,
        terminal: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// Show one terminal to every site (--off: back to the chair or the speaker).
    Broadcast {
        id: String,
        terminal: Option<String>,
        #[arg(long)]
        off: bool,
    },
    /// Lower a terminal's raised hand.
    Lower {
        id: String,
        terminal: String,
    },
    /// Make a site's box a delegated chair for a region (a county office in a province
    /// meeting): from the box it mutes, unmutes, grants the floor and lowers hands there only.
    Delegate {
        id: String,
        terminal: String,
        /// The region it controls (default: the county of its site).
        #[arg(long, conflicts_with = "revoke")]
        region: Option<String>,
        /// Take the delegation back.
        #[arg(long)]
        revoke: bool,
    },
    List {
        #[arg(long)]
        json: bool,
    },
    /// Live view of joins, hands and roll-call answers, until the session ends.
    Watch {
        id: String,
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
    // A broker URL's password never reaches the terminal.
    let shown = cuntong_terminal::broker_url::redact(value);
    value
        .parse()
        .map_err(|e| Usage(format!("{flag} {shown:?}: {e}")))
}

/// A duration flag (at most 100 years: see `parse_duration`).
fn duration(flag: &str, value: &str) -> Result<Duration, Usage> {
    cuntong_terminal::config::parse_duration(value).map_err(|e| Usage(format!("{flag}: {e}")))
}

/// A duration flag for which zero means nothing (a wait, an interval, a window).
fn positive(flag: &str, value: &str) -> Result<Duration, Usage> {
    match duration(flag, value)? {
        d if d.is_zero() => Err(Usage(format!("{flag}: {value:?} must be more than zero"))),
        d => Ok(d),
    }
}

/// A text flag that must say something (a title, a name).
fn not_empty<'a>(flag: &str, value: &'a str) -> Result<&'a str, Usage> {
    if value.trim().is_empty() {
        Err(Usage(format!("{flag} {value:?}: must not be empty")))
    } else {
        Ok(value)
    }
}

/// Keeps the names terminals were provisioned with in the store, for every view of central;
/// a store that cannot be written is reported, not fatal (the bundles are made).
fn remember_names(db: &std::path::Path, rows: &[(String, Option<String>)]) {
    let named: Vec<(TerminalId, &str)> = rows
        .iter()
        .filter_map(|(id, name)| Some((id.parse().ok()?, name.as_deref()?)))
        .collect();
    if named.is_empty() {
        return;
    }
    let saved = SqliteStore::open(db).and_then(|mut store| {
        named
            .iter()
            .try_for_each(|(id, name)| store.set_terminal_name(id, name))
    });
    if let Err(e) = saved {
        eprintln!("warning: the names were not kept in the store: {e}");
    }
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
        Command::Broker { listen, auth } => {
            let addr: SocketAddr = parse("--listen", &listen)?;
            let users = auth
                .map(|file| broker::load_users(&file).map_err(|e| Usage(format!("--auth: {e}"))))
                .transpose()?;
            let users_note = match &users {
                Some(u) => format!(" ({} users may log in)", u.len()),
                None => " (open: no authentication)".to_owned(),
            };
            let addr = broker::start(addr, users).map_err(fail)?;
            if !broker::wait_ready(addr, Duration::from_secs(10)).await {
                return Err(fail(format!(
                    "the broker did not start listening on {addr}"
                )));
            }
            eprintln!("broker listening on mqtt://{addr}{users_note}");
            shutdown_signal().await;
            Ok(())
        }
        Command::Central {
            broker,
            db,
            tls,
            meeting_heartbeat,
            alarms,
            http,
        } => {
            let mut opts = CentralOptions::new(
                parse("--broker", &broker)?,
                db.unwrap_or_else(default_db),
                format!("central-{}", std::process::id()),
            );
            opts.meeting_heartbeat = duration("--meeting-heartbeat", &meeting_heartbeat)?;
            if opts.meeting_heartbeat > Duration::from_secs(3600) {
                return Err(Usage(format!(
                    "--meeting-heartbeat {meeting_heartbeat:?}: at most 1h"
                ))
                .into());
            }
            if let Some(path) = alarms {
                opts.alarms = cuntong::alarms::AlarmConfig::load(&path).map_err(Usage)?;
            }
            if opts.meeting_heartbeat < Duration::from_millis(500) {
                return Err(Usage("--meeting-heartbeat: at least 500ms".into()).into());
            }
            tls_goes_with(&broker, &opts.broker, tls.is_some())?;
            opts.tls = tls.map(|d| cuntong_terminal::tls::TlsFiles::in_dir(&d));
            opts.http = http.map(|a| parse("--http", &a)).transpose()?;
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
        Command::Regions { action } => {
            cuntong::regions::run(action, &default_db()).map_err(|e| match e {
                cuntong::regions::RegionsError::Usage(m) => Failure::Usage(Usage(m)),
                cuntong::regions::RegionsError::Failed(m) => Failure::Runtime(m),
            })
        }
        Command::Sites { db, region, json } => {
            let region: Option<Region> = region.map(|r| parse("--region", &r)).transpose()?;
            let store =
                SqliteStore::open_read_only(&db.unwrap_or_else(default_db)).map_err(fail)?;
            let rows = store.sites(region.as_ref()).map_err(fail)?;
            let names = store.names().map_err(fail)?;
            if json {
                let out: Vec<view::SiteJson> =
                    rows.iter().map(|r| view::site_json(r, &names)).collect();
                println!("{}", serde_json::to_string_pretty(&out).map_err(fail)?);
            } else {
                print!("{}", view::sites_table(&rows, unix_ms(), &names));
            }
            Ok(())
        }
        Command::Meeting { action, conn } => meeting(action, conn).await,
        Command::Readiness {
            meeting,
            region,
            signing,
            wait,
            json,
        } => {
            signing.check()?;
            let wait = positive("--wait", &wait)?;
            let region: Option<Region> = region.map(|r| parse("--region", &r)).transpose()?;
            if let Some(m) = &meeting {
                parse::<MeetingId>("--meeting", m)?;
            }
            let db = signing.db();
            let targets: Vec<TerminalId> = match (&meeting, &region) {
                (Some(m), _) => cuntong::readiness::meeting_terminals(&db, m).map_err(fail)?,
                (None, Some(r)) => signing.terminals_in(r)?,
                (None, None) => {
                    return Err(Usage("give --meeting ID or --region CODE".into()).into());
                }
            };
            if targets.is_empty() {
                return Err(fail("no terminal to ask"));
            }
            let answers = signing
                .send(
                    &targets,
                    &cuntong_core::command::Action::Readiness,
                    Duration::from_secs(120),
                    wait,
                )
                .await?;
            let rows = cuntong::readiness::rows(&answers);
            cuntong::readiness::save(&db, &rows, unix_ms()).map_err(fail)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows).map_err(fail)?);
            } else {
                print!("{}", cuntong::readiness::table(&rows));
            }
            if rows.iter().any(|r| r.ready.is_none()) {
                return Err(fail("some terminals did not answer"));
            }
            Ok(())
        }
        Command::Monitor { region, db } => {
            let region: Option<Region> = region.map(|r| parse("--region", &r)).transpose()?;
            let db = db.unwrap_or_else(default_db);
            cuntong::store::open_read_only(&db).map_err(fail)?;
            if !std::io::stdout().is_terminal() {
                return Err(Usage(
                    "monitor needs a terminal (use `sites` or `alarms --json` in scripts)".into(),
                )
                .into());
            }
            tokio::task::block_in_place(|| cuntong::monitor::run(&db, region)).map_err(fail)
        }
        Command::Alarms {
            action: Some(AlarmAction::Ack { id, by, conn }),
            ..
        } => {
            not_empty("--by", &by)?;
            let mut client = meeting_client(&conn).await?;
            let answer = client
                .ask(RequestBody::AckAlarm { id, by }, meeting_cli::ANSWER)
                .await;
            client.close();
            answer.map_err(fail)?;
            println!("alarm {id} acknowledged");
            Ok(())
        }
        Command::Alarms {
            action: None,
            region,
            active,
            limit,
            json,
            db,
        } => {
            let region: Option<Region> = region.map(|r| parse("--region", &r)).transpose()?;
            if limit == 0 {
                return Err(Usage("--limit 0: at least 1".into()).into());
            }
            let db = db.unwrap_or_else(default_db);
            let rows = SqliteStore::open_read_only(&db)
                .and_then(|s| s.alarms(region.as_ref(), active, limit))
                .map_err(fail)?;
            let names = SqliteStore::open_read_only(&db)
                .and_then(|s| s.names())
                .map_err(fail)?;
            if json {
                let out: Vec<cuntong::alarms::AlarmJson> = rows
                    .iter()
                    .map(|a| cuntong::alarms::AlarmJson::of(a, &names))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&out).map_err(fail)?);
            } else {
                print!("{}", cuntong::alarms::table(&rows, &names));
            }
            Ok(())
        }
        Command::Call {
            terminal,
            from,
            json,
            conn,
        } => {
            let to: TerminalId = parse("terminal", &terminal)?;
            let from: Option<TerminalId> = from.map(|f| parse("--from", &f)).transpose()?;
            let mut client = meeting_client(&conn).await?;
            let body = RequestBody::Create {
                title: match &from {
                    Some(f) => format!("call {f} → {to}"),
                    None => format!("call central → {to}"),
                },
                kind: "call".into(),
                invite: vec![to.to_string()],
                at_ms: None,
                profile: "sd".into(),
                chair: from.map(|f| f.to_string()),
                floor_mutes_others: false,
            };
            let answer = client.ask(body, meeting_cli::ANSWER).await;
            client.close();
            match answer.map_err(fail)? {
                ResponseBody::Created { id } if json => {
                    println!("{}", serde_json::json!({ "id": id }));
                }
                ResponseBody::Created { id } => println!("{id}"),
                other => return Err(fail(format!("unexpected answer {other:?}"))),
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
                .map(|s| positive("--since", &s))
                .transpose()?
                .map(|d| unix_ms().saturating_sub(d.as_millis() as u64));
            let store =
                SqliteStore::open_read_only(&db.unwrap_or_else(default_db)).map_err(fail)?;
            let mut rows = store.events(region.as_ref(), since_ms).map_err(fail)?;
            if security {
                rows.retain(|r| r.event.is_security());
            }
            let names = store.names().map_err(fail)?;
            if json {
                let out: Vec<view::EventJson> =
                    rows.iter().map(|r| view::event_json(r, &names)).collect();
                println!("{}", serde_json::to_string_pretty(&out).map_err(fail)?);
            } else {
                print!("{}", view::events_table(&rows, &names));
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
                .map(|s| positive("--since", &s))
                .transpose()?
                .map(|d| unix_ms().saturating_sub(d.as_millis() as u64));
            let store =
                SqliteStore::open_read_only(&db.unwrap_or_else(default_db)).map_err(fail)?;
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
            signing,
            expires,
            wait,
            json,
        } => {
            let (terminal, command) = match (&region, words.split_first()) {
                (None, Some((t, rest))) => (Some(t.clone()), rest.to_vec()),
                _ => (None, words.clone()),
            };
            let action = cuntong::cmd::parse_action(&command).map_err(Usage)?;
            signing.check()?;
            let expires = lifetime(&expires)?;
            let wait = positive("--wait", &wait)?;
            let targets: Vec<TerminalId> = match (terminal, region) {
                (Some(t), None) => vec![parse("terminal", &t)?],
                (None, Some(r)) => {
                    let region: Region = parse("--region", &r)?;
                    signing.terminals_in(&region)?
                }
                _ => return Err(Usage("give a terminal id or --region, not both".into()).into()),
            };
            if targets.is_empty() {
                return Err(fail("no terminal in that region"));
            }
            let answers = signing.send(&targets, &action, expires, wait).await?;
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
                not_empty("--name", &name)?;
                cuntong::ca::issue_server(&ca, &name, &out).map_err(fail)?;
                println!("server certificate for {name} in {}", out.display());
                Ok(())
            }
            CaAction::Revoke { id, ca } => {
                if !cuntong::ca::is_central(&id) {
                    let _: TerminalId = parse("id", &id)?;
                }
                cuntong::ca::revoke(&ca, &id).map_err(fail)?;
                println!(
                    "{id} revoked: {} updated; run `cuntong acl` and reload the broker (SIGHUP)",
                    ca.join(cuntong::ca::CRL).display()
                );
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
            db,
        } => {
            let db = db.unwrap_or_else(default_db);
            let url: BrokerUrl = parse("--broker", &broker)?;
            if let Some(n) = &name {
                not_empty("--name", n)?;
            }
            if !url.tls {
                return Err(Usage(format!(
                    "--broker {url}: provisioned terminals use mqtts://"
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
                remember_names(&db, &rows);
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
            if !cuntong::ca::is_central(&id) {
                let _: TerminalId = parse("id", &id)?;
            }
            cuntong::ca::provision(&ca, &id, &url.to_string(), &out, name.as_deref(), force)
                .map_err(fail)?;
            remember_names(&db, &[(id.clone(), name)]);
            println!("bundle for {id} in {}", out.display());
            if force {
                println!(
                    "any earlier certificate of {id} is on {}: run `cuntong acl` and reload the broker (SIGHUP)",
                    ca.join(cuntong::ca::CRL).display()
                );
            }
            Ok(())
        }
        Command::Acl {
            ca,
            format,
            listen,
            server,
            out,
        } => {
            if listen == 0 {
                return Err(
                    Usage("--listen 0: the broker needs a port (1 to 65535)".into()).into(),
                );
            }
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
            http,
        } => {
            let addr: SocketAddr = parse("--listen", &listen)?;
            let http: SocketAddr = parse("--http", &http)?;
            let region: Region = parse("--region", &region)?;
            let interval = positive("--interval", &interval)?;
            let run_for = run_for.map(|d| positive("--duration", &d)).transpose()?;
            if !(1..=MAX_FLEET).contains(&sites) {
                return Err(Usage(format!("--sites {sites}: 1 to {MAX_FLEET}")).into());
            }
            demo(addr, http, region, sites, interval, run_for, db).await
        }
    }
}

async fn meeting_client(conn: &Conn) -> Result<CentralClient, Failure> {
    let broker: BrokerUrl = parse("--broker", &conn.broker)?;
    tls_goes_with(&conn.broker, &broker, conn.tls.is_some())?;
    let tls = tls_bundle(conn.tls.as_deref())?;
    CentralClient::connect(broker, tls).await.map_err(fail)
}

/// An `mqtts://` broker needs a `--tls` bundle, and a bundle needs `mqtts://`: nothing falls
/// back to plain text, and nothing tries TLS on a plain port.
fn tls_goes_with(text: &str, broker: &BrokerUrl, tls: bool) -> Result<(), Usage> {
    if broker.tls == tls {
        return Ok(());
    }
    let text = cuntong_terminal::broker_url::redact(text);
    Err(Usage(format!(
        "--broker {text:?} and --tls go together (mqtts:// needs --tls DIR)"
    )))
}

/// The client TLS configuration of a bundle directory (`--tls DIR`), if one is given.
fn tls_bundle(dir: Option<&std::path::Path>) -> Result<Option<Arc<rustls::ClientConfig>>, Failure> {
    dir.map(|d| {
        cuntong_terminal::tls::client_config(&cuntong_terminal::tls::TlsFiles::in_dir(d))
            .map_err(fail)
    })
    .transpose()
}

async fn meeting(action: MeetingAction, conn: Conn) -> Result<(), Failure> {
    use MeetingAction as A;
    let terminal = |t: Option<String>, what: &str| -> Result<String, Failure> {
        let t = t.ok_or_else(|| Usage(format!("{what} needs a terminal id")))?;
        let id: TerminalId = parse("terminal", &t)?;
        Ok(id.to_string())
    };
    // Validate everything before connecting.
    match &action {
        A::Create { .. } | A::List { .. } => {}
        A::Start { id }
        | A::End { id }
        | A::Status { id, .. }
        | A::Rollcall { id, .. }
        | A::View { id, .. }
        | A::Floor { id, .. }
        | A::Mute { id, .. }
        | A::Unmute { id, .. }
        | A::Broadcast { id, .. }
        | A::Lower { id, .. }
        | A::Delegate { id, .. }
        | A::Watch { id } => {
            parse::<MeetingId>("meeting id", id)?;
        }
    }
    let (op, target): (Option<&str>, Option<String>) = match &action {
        A::Start { .. } => (Some("start"), None),
        A::End { .. } => (Some("end"), None),
        A::Floor {
            action,
            terminal: t,
            ..
        } => match action.as_str() {
            "grant" => (Some("grant"), Some(terminal(t.clone(), "floor grant")?)),
            "revoke" => (Some("revoke"), None),
            other => return Err(Usage(format!("floor {other:?}: use grant or revoke")).into()),
        },
        A::Mute { all: true, .. } => (Some("mute-all"), None),
        A::Mute { terminal: t, .. } => (Some("mute"), Some(terminal(t.clone(), "mute")?)),
        A::Unmute { all: true, .. } => (Some("unmute-all"), None),
        A::Unmute { terminal: t, .. } => (Some("unmute"), Some(terminal(t.clone(), "unmute")?)),
        A::Broadcast { off: true, .. } => (Some("broadcast"), None),
        A::Broadcast { terminal: t, .. } => {
            (Some("broadcast"), Some(terminal(t.clone(), "broadcast")?))
        }
        A::Lower { terminal: t, .. } => (
            Some("lower-hand"),
            Some(terminal(Some(t.clone()), "lower")?),
        ),
        A::Delegate { terminal: t, .. } => (
            Some("delegate"),
            Some(terminal(Some(t.clone()), "delegate")?),
        ),
        _ => (None, None),
    };
    let create = match &action {
        A::Create {
            title,
            invite,
            at,
            profile,
            kind,
            chair,
            keep_audio_on_grant,
            ..
        } => {
            cuntong::meetings::check_title(title).map_err(|e| Usage(format!("--title: {e}")))?;
            for i in invite {
                parse::<Invitee>("--invite", i)?;
            }
            if !matches!(kind.as_str(), "meeting" | "training") {
                return Err(Usage(format!("--kind {kind:?}: use meeting or training")).into());
            }
            if MediaProfile::named(profile).is_none() {
                return Err(Usage(format!(
                    "--profile {profile:?}: use one of {}",
                    MediaProfile::NAMES.join(", ")
                ))
                .into());
            }
            if let Some(c) = chair {
                parse::<TerminalId>("--chair", c)?;
            }
            let at_ms = at
                .as_deref()
                .map(|at| start_time(at, unix_ms()))
                .transpose()?;
            Some(RequestBody::Create {
                title: title.clone(),
                kind: kind.clone(),
                invite: invite.clone(),
                at_ms,
                profile: profile.clone(),
                chair: chair.clone(),
                floor_mutes_others: !keep_audio_on_grant,
            })
        }
        _ => None,
    };
    let region = match &action {
        A::Delegate { revoke: true, .. } => None,
        A::Delegate {
            region: Some(r), ..
        } => Some(parse::<Region>("--region", r)?.to_string()),
        A::Delegate { terminal: t, .. } => {
            // The county of the box's site (or the site's own region above county level).
            let id: TerminalId = parse("terminal", t)?;
            let county = id
                .site()
                .at_level(cuntong_core::site::Level::County)
                .unwrap_or(*id.site());
            Some(Region::of(county).to_string())
        }
        _ => None,
    };
    if let A::View { to, .. } = &action {
        let _: SocketAddr = parse("--to", to)?;
    }
    let timeout = match &action {
        A::Rollcall { timeout, .. } => Some(positive("--timeout", timeout)?),
        _ => None,
    };
    let mut client = meeting_client(&conn).await?;
    let result = async {
        match action {
            A::Create { json, .. } => {
                let body = create.ok_or_else(|| fail("internal: no create request"))?;
                match client.ask(body, meeting_cli::ANSWER).await.map_err(fail)? {
                    ResponseBody::Created { id } if json => {
                        println!("{}", serde_json::json!({ "id": id }));
                    }
                    ResponseBody::Created { id } => println!("{id}"),
                    other => return Err(fail(format!("unexpected answer {other:?}"))),
                }
            }
            A::Status { id, json } => {
                let s = client.status(&id).await.map_err(fail)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&s.sites).map_err(fail)?);
                } else {
                    print!("{}", meeting_cli::status_table(&s));
                }
            }
            A::Rollcall { id, json, .. } => {
                let rows = client
                    .roll_call(&id, timeout.unwrap_or(Duration::from_secs(10)))
                    .await
                    .map_err(fail)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&rows).map_err(fail)?);
                } else {
                    print!("{}", meeting_cli::roll_call_table(&rows));
                }
            }
            A::View {
                id,
                terminal,
                to,
                stop,
            } => {
                let body = RequestBody::View {
                    meeting: id,
                    terminal,
                    to,
                    stop,
                };
                match client.ask(body, meeting_cli::ANSWER).await.map_err(fail)? {
                    ResponseBody::Sdp(sdp) if !stop => print!("{sdp}"),
                    ResponseBody::Sdp(_) => {}
                    other => return Err(fail(format!("unexpected answer {other:?}"))),
                }
            }
            A::List { json } => {
                let rows = client.list().await.map_err(fail)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&rows).map_err(fail)?);
                } else {
                    print!("{}", meeting_cli::list_table(&rows));
                }
            }
            A::Watch { id } => {
                let mut last: Option<cuntong::control::MeetingStatus> = None;
                loop {
                    let s = client.status(&id).await.map_err(fail)?;
                    for line in meeting_cli::changes(last.as_ref(), &s) {
                        println!("{} {line}", view::rfc3339_ms(unix_ms()));
                    }
                    if s.meeting.status == "ended" {
                        break;
                    }
                    last = Some(s);
                    tokio::select! {
                        _ = shutdown_signal() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
            A::Start { id }
            | A::End { id }
            | A::Floor { id, .. }
            | A::Mute { id, .. }
            | A::Unmute { id, .. }
            | A::Broadcast { id, .. }
            | A::Lower { id, .. }
            | A::Delegate { id, .. } => {
                let op = op.ok_or_else(|| fail("internal: no operation"))?;
                let version = client.op_in(&id, op, target, region).await.map_err(fail)?;
                println!("{id}: {op} done (state v{version})");
            }
        }
        Ok(())
    }
    .await;
    client.close();
    result
}

/// `--at`: RFC 3339, or `+DURATION` from now; no further ahead than central schedules.
fn start_time(s: &str, now_ms: u64) -> Result<u64, Usage> {
    let bad = |why: String| Usage(format!("--at {s:?}: {why}"));
    let at_ms = if let Some(rel) = s.strip_prefix('+') {
        let ahead = cuntong_terminal::config::parse_duration(rel).map_err(bad)?;
        if ahead.is_zero() {
            return Err(bad(
                "must be later than now (to start now, `meeting start ID`)".into(),
            ));
        }
        now_ms.saturating_add(u64::try_from(ahead.as_millis()).unwrap_or(u64::MAX))
    } else {
        humantime::parse_rfc3339_weak(s)
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| u64::try_from(d.as_millis()).ok())
            .ok_or_else(|| {
                Usage(format!(
                    "--at {s:?}: use RFC 3339 (2026-12-01T09:00:00Z) or +DURATION (+10m)"
                ))
            })?
    };
    cuntong::meetings::check_start(at_ms, now_ms).map_err(bad)?;
    Ok(at_ms)
}

/// `cmd --expires`: within what terminals accept.
fn lifetime(value: &str) -> Result<Duration, Usage> {
    use cuntong_core::command::{MAX_LIFETIME_MS, MIN_LIFETIME_MS};
    let d = duration("--expires", value)?;
    let range = Duration::from_millis(MIN_LIFETIME_MS)..=Duration::from_millis(MAX_LIFETIME_MS);
    if !range.contains(&d) {
        return Err(Usage(format!(
            "--expires {value:?}: from 1m to 30d (terminals refuse longer-lived commands)"
        )));
    }
    Ok(d)
}

fn hj212_tool(action: Hj212Action) -> Result<(), Failure> {
    use cuntong::hj212::{FrameJson, decode_line, describe, encode_checked};
    match action {
        Hj212Action::Decode { file, json } => {
            let bytes = if file == "-" {
                let mut b = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut b).map_err(fail)?;
                b
            } else {
                std::fs::read(&file).map_err(|e| Usage(format!("{file}: {e}")))?
            };
            let mut bad = 0;
            // Line by line, as bytes: one bad line (not UTF-8, say) is reported by its number
            // and the others still decode.
            for (i, line) in bytes
                .split(|&b| b == b'\n')
                .enumerate()
                .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
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
            // Every frame checked before any is written.
            let mut out = String::new();
            for (i, item) in items.into_iter().enumerate() {
                let frame: FrameJson = serde_json::from_value(item).map_err(|e| {
                    Usage(format!("--json {} frame {}: {e}", json.display(), i + 1))
                })?;
                let packet = frame.to_packet().map_err(|e| {
                    Usage(format!("--json {} frame {}: {e}", json.display(), i + 1))
                })?;
                let frame = encode_checked(&packet).map_err(|e| {
                    Usage(format!("--json {} frame {}: {e}", json.display(), i + 1))
                })?;
                out.push_str(&String::from_utf8_lossy(&frame));
            }
            print!("{out}");
            Ok(())
        }
    }
}

async fn demo(
    addr: SocketAddr,
    http: SocketAddr,
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
    let addr = broker::start(addr, None).map_err(fail)?;
    if !broker::wait_ready(addr, Duration::from_secs(10)).await {
        return Err(fail(format!(
            "the broker did not start listening on {addr}"
        )));
    }
    let broker_url: BrokerUrl = parse("--listen", &format!("mqtt://{addr}"))?;
    eprintln!("broker listening on mqtt://{addr} (embedded, open: no authentication)");
    eprintln!("store    {}", db.display());

    let stop = CancellationToken::new();
    let stats = Arc::new(CentralStats::default());
    let mut central = tokio::spawn(central::run(
        CentralOptions {
            http: Some(http),
            ..CentralOptions::new(broker_url.clone(), db.clone(), "central-demo")
        },
        stats.clone(),
        stop.clone(),
    ));
    let fleet = Fleet::start(
        fleet_ids(&region, sites),
        &SimOptions {
            keep_alive: Duration::from_secs(10),
            ..SimOptions::new(
                broker_url.clone(),
                workdir.path().join("terminals"),
                interval,
            )
        },
    );
    eprintln!(
        "fleet    {sites} simulated terminals in region {region}, reporting every {interval:?}"
    );
    // A meeting of the region once the fleet is online: every site joins and answers a roll call.
    let meeting_line = Arc::new(std::sync::Mutex::new(String::from(
        "meeting  (waiting for the fleet)",
    )));
    let meeting = {
        let (line, db, url) = (meeting_line.clone(), db.clone(), broker_url.clone());
        tokio::spawn(async move {
            let result = demo_meeting(url, &db, region, sites, &line).await;
            if let Err(e) = &result {
                if let Ok(mut l) = line.lock() {
                    *l = format!("meeting  failed: {e}");
                }
            }
            result.ok()
        })
    };

    let deadline = run_for.map(|d| tokio::time::Instant::now() + d);
    let live = std::io::stdout().is_terminal();
    let signal = shutdown_signal();
    tokio::pin!(signal);
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let reader = SqliteStore::open(&db).map_err(fail)?;
    let names = reader.names().map_err(fail)?;
    // Central ending on its own (it could not listen, say) ends the demo.
    let mut central_ended = None;
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
            r = &mut central => {
                central_ended = Some(r);
                break;
            }
            _ = tick.tick() => {
                if live {
                    let rows = reader.sites(None).map_err(fail)?;
                    print!("\x1b[2J\x1b[H{}", view::sites_table(&rows, unix_ms(), &names));
                    println!(
                        "stored {} messages ({} values), {} duplicates, {} rejected; Ctrl-C to stop",
                        stats.get(|s| &s.stored), stats.get(|s| &s.values),
                        stats.get(|s| &s.duplicates), stats.get(|s| &s.rejected)
                    );
                    if let Ok(l) = meeting_line.lock() {
                        println!("{l}");
                    }
                }
            }
        }
    }
    // The fleet as it was running, then an orderly stop: terminals say goodbye, and central
    // stores that before it stops (bounded, so a stuck broker cannot hang the demo).
    let rows = reader.sites(None).map_err(fail)?;
    // End the meeting (if it got that far) before the sites go.
    if let Ok(Ok(Some((mut client, id)))) =
        tokio::time::timeout(Duration::from_secs(1), meeting).await
    {
        let _ = client.op(&id, "end", None).await;
        client.close();
    }
    let failed = fleet.stop().await;
    let all_offline = async {
        while reader.sites(None).is_ok_and(|r| r.iter().any(|s| s.online)) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), all_offline).await;
    stop.cancel();
    let central_result = match central_ended {
        Some(r) => r,
        None => central.await,
    };
    print!("{}", view::sites_table(&rows, unix_ms(), &names));
    println!(
        "stored {} messages ({} values), {} duplicates, {} rejected",
        stats.get(|s| &s.stored),
        stats.get(|s| &s.values),
        stats.get(|s| &s.duplicates),
        stats.get(|s| &s.rejected)
    );
    if let Ok(l) = meeting_line.lock() {
        println!("{l}");
    }
    if let Some((id, e)) = failed.first() {
        return Err(fail(format!("terminal {id}: {e}")));
    }
    match central_result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(fail(e)),
        Err(e) => Err(fail(e)),
    }
}

/// The demo's meeting: once central knows the fleet, a meeting of the region; every site joins
/// and answers a roll call. Keeps `line` up to date; returns the client and the meeting id.
async fn demo_meeting(
    broker: BrokerUrl,
    db: &std::path::Path,
    region: Region,
    sites: usize,
    line: &std::sync::Mutex<String>,
) -> Result<(CentralClient, String), String> {
    let set = |text: String| {
        if let Ok(mut l) = line.lock() {
            *l = text;
        }
    };
    let known = || {
        SqliteStore::open_read_only(db)
            .and_then(|s| s.sites(Some(&region)))
            .map_or(0, |r| r.iter().filter(|s| s.online).count())
    };
    let started = tokio::time::Instant::now();
    while known() < sites && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut client = CentralClient::connect(broker, None).await?;
    let created = client
        .ask(
            RequestBody::Create {
                title: format!("{region} 演示会议 (demo meeting)"),
                kind: "meeting".into(),
                invite: vec![region.to_string()],
                at_ms: None,
                profile: "sd".into(),
                chair: None,
                floor_mutes_others: true,
            },
            meeting_cli::ANSWER,
        )
        .await?;
    let ResponseBody::Created { id } = created else {
        return Err(format!("unexpected answer {created:?}"));
    };
    client.op(&id, "start", None).await?;
    let began = tokio::time::Instant::now();
    let joined = loop {
        let s = client.status(&id).await?;
        let j = s.sites.iter().filter(|x| x.state == "joined").count();
        set(format!("meeting  {id}: {j} of {sites} joined"));
        if j >= sites || began.elapsed() > Duration::from_secs(30) {
            break j;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let rows = client.roll_call(&id, Duration::from_secs(10)).await?;
    let mut lat: Vec<u64> = rows.iter().filter_map(|r| r.latency_ms).collect();
    lat.sort_unstable();
    let ms = |p| meeting_cli::quantile(&lat, p).map_or("-".to_owned(), |v| format!("{v} ms"));
    set(format!(
        "meeting  {id}: {joined} of {sites} joined; roll call {} of {} present, answer p50 {} p99 {} (cuntong meeting status {id})",
        lat.len(),
        rows.len(),
        ms(0.5),
        ms(0.99)
    ));
    Ok((client, id))
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
                oversized = stats.get(|s| &s.oversized),
                "central"
            ),
        }
    }
}
