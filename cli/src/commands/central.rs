//! `cuntong central`: its flags, turned into [`CentralOptions`], and the service run until
//! Ctrl-C with a periodic log of its counters. The service itself is [`crate::central`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use cuntong_terminal::println;

use crate::view::rfc3339_ms;
use cuntong_terminal::daemon::shutdown_signal;
use tokio_util::sync::CancellationToken;

use super::common::{BrokerArgs, Failure, Usage, database, duration, fail, parse};
use crate::central::{self, CentralOptions, CentralStats};
use crate::store::Database;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct CentralArgs {
    #[command(subcommand)]
    action: Option<CentralAction>,
    #[command(flatten)]
    broker: BrokerArgs,
    #[arg(long, env = "CUNTONG_DB")]
    db: Option<Database>,
    /// Central's provisioning bundle (ca.pem, cert.pem, key.pem, and its links' identities in
    /// meeting/ and control/), for an mqtts:// broker.
    #[arg(long, env = "CUNTONG_TLS")]
    tls: Option<PathBuf>,
    /// How often the sites of a meeting repeat their status (three missed: unreachable).
    #[arg(long, default_value = "10s", env = "CUNTONG_MEETING_HEARTBEAT")]
    meeting_heartbeat: String,
    /// The address relays reach central's recorders at (`cuntong meeting record`).
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1",
        env = "CUNTONG_MEDIA_HOST"
    )]
    media_host: std::net::IpAddr,
    /// Alarm rules and notification hooks (TOML; see docs/operations.md). Without it:
    /// offline after 2 minutes, with root-cause suppression, and dropped data.
    #[arg(long, env = "CUNTONG_ALARMS")]
    alarms: Option<PathBuf>,
    /// Serve the web dashboard on this address (`127.0.0.1:8080`; read-only).
    #[arg(long, value_name = "ADDR", env = "CUNTONG_HTTP")]
    http: Option<String>,
    /// Staff sign in to the dashboard: names and password hashes (`cuntong staff add`), a file
    /// readable by its owner only. Without it the dashboard is open to whoever reaches it.
    #[arg(
        long,
        value_name = "FILE",
        env = "CUNTONG_HTTP_USERS",
        requires = "http"
    )]
    http_users: Option<PathBuf>,
    /// Serve the dashboard over TLS: DIR holds `server.pem` and `server-key.pem` (`cuntong ca
    /// issue-server`), the fleet CA's `ca.pem` and, after a revocation, its `crl.pem`. Staff
    /// then sign in with their certificates (`cuntong provision staff NAME`), or with a
    /// password if --http-users is given too.
    #[arg(long, value_name = "DIR", env = "CUNTONG_HTTP_TLS", requires = "http")]
    http_tls: Option<PathBuf>,
    /// Keep the history this long (e.g. `400d`, at least a day); older days are dropped, once
    /// an hour, by the instance holding the host role. Without it: kept forever.
    #[arg(long, value_name = "DURATION", env = "CUNTONG_RETAIN")]
    retain: Option<String>,
    /// Share ingest with the other instances of this group (`central`): telemetry and events
    /// are MQTT shared subscriptions, each message to one instance (a broker with `$share`:
    /// Mosquitto 2, EMQX; not NATS 2.9).
    #[arg(long, value_name = "GROUP", env = "CUNTONG_SHARE_INGEST")]
    share_ingest: Option<String>,
    /// Where release artifacts are cached to be served to the boxes (`GET
    /// /releases/SHA256` on the `--http` listener). Default: `releases/` beside an SQLite
    /// store, else the user's cache directory.
    #[arg(long, value_name = "DIR", env = "CUNTONG_RELEASE_CACHE")]
    release_cache: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum CentralAction {
    /// The central instances at work on the store, and which holds the host role (meeting
    /// host, alarm engine).
    Status {
        #[arg(long, env = "CUNTONG_DB")]
        db: Option<Database>,
        #[arg(long)]
        json: bool,
    },
}

/// `cuntong central status --json`: one object per instance.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceJson {
    pub instance: String,
    /// `host` while it holds the meeting host and alarm engine; empty for a standby.
    pub roles: Vec<String>,
    /// RFC 3339 with milliseconds, UTC.
    pub started_at: String,
    pub last_seen: String,
}

/// An instance not seen for this long is shown as gone.
const GONE_AFTER_MS: u64 = 10_000;

fn status(db: Option<Database>, json: bool) -> Result<(), Failure> {
    let (rows, now) = database(db)
        .open_read_only()
        .and_then(|s| s.instances())
        .map_err(fail)?;
    if json {
        let out: Vec<InstanceJson> = rows
            .iter()
            .map(|r| InstanceJson {
                instance: r.instance.clone(),
                roles: r
                    .roles
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
                started_at: rfc3339_ms(r.started_ms),
                last_seen: rfc3339_ms(r.last_seen_ms),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out).map_err(fail)?);
        return Ok(());
    }
    println!(
        "{:<32} {:<8} {:<24} LAST SEEN",
        "INSTANCE", "ROLES", "STARTED"
    );
    for r in &rows {
        let ago = now.saturating_sub(r.last_seen_ms);
        let seen = if ago > GONE_AFTER_MS {
            format!("{}s ago (gone)", ago / 1000)
        } else {
            format!("{}s ago", ago / 1000)
        };
        let roles = if r.roles.is_empty() {
            "standby"
        } else {
            &r.roles
        };
        println!(
            "{:<32} {:<8} {:<24} {seen}",
            r.instance,
            roles,
            rfc3339_ms(r.started_ms)
        );
    }
    Ok(())
}

impl CentralArgs {
    /// The service's options, every flag checked.
    pub fn options(self) -> Result<CentralOptions, Usage> {
        let CentralArgs {
            action: _,
            broker,
            db,
            tls,
            meeting_heartbeat,
            media_host,
            alarms,
            http,
            http_users,
            http_tls,
            retain,
            share_ingest,
            release_cache,
        } = self;
        let mut opts = CentralOptions::new(
            broker.with_tls(tls.is_some())?,
            database(db),
            format!("central-{}", std::process::id()),
        );
        opts.subscribe_qos = broker.subscribe_qos()?;
        opts.meeting_heartbeat = duration("--meeting-heartbeat", &meeting_heartbeat)?;
        if opts.meeting_heartbeat > Duration::from_secs(3600) {
            return Err(Usage(format!(
                "--meeting-heartbeat {meeting_heartbeat:?}: at most 1h"
            )));
        }
        if let Some(path) = alarms {
            opts.alarms =
                crate::alarms::AlarmConfig::load(&path).map_err(|e| Usage(e.to_string()))?;
        }
        if opts.meeting_heartbeat < Duration::from_millis(500) {
            return Err(Usage("--meeting-heartbeat: at least 500ms".into()));
        }
        if let Some(dir) = &tls {
            crate::ca::check_central_bundle(dir).map_err(|e| Usage(format!("--tls: {e}")))?;
        }
        opts.tls = tls;
        opts.media_host = media_host;
        opts.release_cache = release_cache;
        opts.http = http.map(|a| parse("--http", &a)).transpose()?;
        if let Some(path) = http_users {
            let users = crate::staff::Users::load(&path)
                .map_err(|e| Usage(format!("--http-users: {e}")))?;
            opts.http_access.users = Some(std::sync::Arc::new(users));
        }
        if let Some(dir) = http_tls {
            let tls = crate::dashboard::DashboardTls::load(&dir)
                .map_err(|e| Usage(format!("--http-tls {}: {e}", dir.display())))?;
            opts.http_access.tls = Some(tls);
        }
        if let Some(r) = retain {
            let keep = duration("--retain", &r)?;
            if keep < Duration::from_secs(24 * 3600) {
                return Err(Usage(format!("--retain {r:?}: at least 1d")));
            }
            opts.retain = Some(keep);
        }
        if let Some(g) = share_ingest {
            if g.is_empty() || g.contains(['/', '+', '#']) {
                return Err(Usage(format!(
                    "--share-ingest {g:?}: a group name (no '/', '+' or '#')"
                )));
            }
            opts.share_ingest = Some(g);
        }
        Ok(opts)
    }
}

pub async fn run(mut args: CentralArgs) -> Result<(), Failure> {
    if let Some(CentralAction::Status { db, json }) = args.action.take() {
        return super::common::off_runtime(|| status(db, json));
    }
    let opts = args.options()?;
    eprintln!("central: {} -> {}", opts.broker, opts.db);
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

/// Logs the service's counters every ten seconds.
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
                shed = stats.get(|s| &s.shed),
                meeting_dropped = stats.get(|s| &s.meeting_dropped),
                meeting_waiting = stats.get(|s| &s.meeting_waiting),
                "central"
            ),
        }
    }
}
