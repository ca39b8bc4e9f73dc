//! `cuntong central`: its flags, turned into [`CentralOptions`], and the service run until
//! Ctrl-C with a periodic log of its counters. The service itself is [`crate::central`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use cuntong_terminal::daemon::shutdown_signal;
use tokio_util::sync::CancellationToken;

use super::common::{BrokerArgs, Failure, Usage, default_db, duration, fail, parse};
use crate::central::{self, CentralOptions, CentralStats};

#[derive(Debug, Args)]
pub struct CentralArgs {
    #[command(flatten)]
    broker: BrokerArgs,
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
}

impl CentralArgs {
    /// The service's options, every flag checked.
    pub fn options(self) -> Result<CentralOptions, Usage> {
        let CentralArgs {
            broker,
            db,
            tls,
            meeting_heartbeat,
            alarms,
            http,
        } = self;
        let mut opts = CentralOptions::new(
            broker.with_tls(tls.is_some())?,
            db.unwrap_or_else(default_db),
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
            opts.alarms = crate::alarms::AlarmConfig::load(&path).map_err(Usage)?;
        }
        if opts.meeting_heartbeat < Duration::from_millis(500) {
            return Err(Usage("--meeting-heartbeat: at least 500ms".into()));
        }
        opts.tls = tls.map(|d| cuntong_terminal::tls::TlsFiles::in_dir(&d));
        opts.http = http.map(|a| parse("--http", &a)).transpose()?;
        Ok(opts)
    }
}

pub async fn run(args: CentralArgs) -> Result<(), Failure> {
    let opts = args.options()?;
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
                "central"
            ),
        }
    }
}
