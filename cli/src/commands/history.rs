//! The read commands over the store: `cuntong sites` (one row per terminal), `telemetry` (a
//! terminal's history) and `events` (the fleet's events). Their tables and `--json` forms are
//! [`crate::view`].

use clap::Args;
use cuntong_core::telemetry::Metric;
use cuntong_core::terminal_id::TerminalId;
use cuntong_terminal::link::unix_ms;
use cuntong_terminal::print;

use super::common::{Failure, Usage, database, fail, parse, positive, region};
use crate::store::Database;
use crate::view;

#[derive(Debug, Args)]
pub struct SitesArgs {
    #[arg(long, env = "CUNTONG_DB")]
    db: Option<Database>,
    /// Region code prefix: 13, 1301, 130102, 130102001 or a full site code.
    #[arg(long)]
    region: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct TelemetryArgs {
    #[arg(long)]
    terminal: String,
    #[arg(long)]
    metric: Option<String>,
    /// Only samples newer than this (e.g. 1h, 30m).
    #[arg(long)]
    since: Option<String>,
    #[arg(long, env = "CUNTONG_DB")]
    db: Option<Database>,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    #[arg(long)]
    region: Option<String>,
    /// Only events newer than this (e.g. 1h, 30m).
    #[arg(long)]
    since: Option<String>,
    /// Only security events.
    #[arg(long)]
    security: bool,
    #[arg(long, env = "CUNTONG_DB")]
    db: Option<Database>,
    #[arg(long)]
    json: bool,
}

/// `--since`: the Unix ms that far back from now.
fn since_ms(since: Option<String>) -> Result<Option<u64>, Usage> {
    Ok(since
        .map(|s| positive("--since", &s))
        .transpose()?
        .map(|d| unix_ms().saturating_sub(d.as_millis() as u64)))
}

fn print_json<T: serde::Serialize>(rows: impl IntoIterator<Item = T>) -> Result<(), Failure> {
    cuntong_terminal::stdout::json_array(rows);
    Ok(())
}

pub fn run_sites(args: SitesArgs) -> Result<(), Failure> {
    let region = region(args.region)?;
    let store = database(args.db).open_read_only().map_err(fail)?;
    let names = store.names(region.as_ref()).map_err(fail)?;
    if args.json {
        // Written as read: a province's view is never all held.
        let mut out = cuntong_terminal::stdout::JsonArray::start();
        store
            .each_site(region.as_ref(), &mut |r| {
                out.push(&view::site_json(&r, &names));
            })
            .map_err(fail)?;
        out.end();
    } else {
        let rows = store.sites(region.as_ref()).map_err(fail)?;
        print!("{}", view::sites_table(&rows, unix_ms(), &names));
    }
    Ok(())
}

pub fn run_telemetry(args: TelemetryArgs) -> Result<(), Failure> {
    let id: TerminalId = parse("--terminal", &args.terminal)?;
    let metric = args
        .metric
        .map(|m| Metric::from_name(&m).map_err(|e| Usage(format!("--metric {m:?}: {e}"))))
        .transpose()?;
    let since_ms = since_ms(args.since)?;
    let store = database(args.db).open_read_only().map_err(fail)?;
    let rows = store
        .telemetry(&id, metric.as_ref(), since_ms)
        .map_err(fail)?;
    if args.json {
        print_json(rows.iter().map(view::sample_json))
    } else {
        print!("{}", view::telemetry_table(&rows));
        Ok(())
    }
}

pub fn run_events(args: EventsArgs) -> Result<(), Failure> {
    let region = region(args.region)?;
    let since_ms = since_ms(args.since)?;
    let store = database(args.db).open_read_only().map_err(fail)?;
    let mut rows = store.events(region.as_ref(), since_ms).map_err(fail)?;
    if args.security {
        rows.retain(|r| r.event.is_security());
    }
    let names = store.names(region.as_ref()).map_err(fail)?;
    if args.json {
        print_json(rows.iter().map(|r| view::event_json(r, &names)))
    } else {
        print!("{}", view::events_table(&rows, &names));
        Ok(())
    }
}
