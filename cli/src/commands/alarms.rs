//! `cuntong alarms`: the stored alarms, and `alarms ack ID` through the alarm service inside
//! `cuntong central`, which owns them ([`crate::alarms`]).

use clap::{Args, Subcommand};
use cuntong_terminal::{print, println};

use super::common::{Conn, Failure, Usage, database, fail, not_empty, off_runtime, region};
use super::meeting::ANSWER;
use crate::alarms::{self, AlarmJson};
use crate::control::RequestBody;
use crate::store::Database;

#[derive(Debug, Args)]
pub struct AlarmsArgs {
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
    db: Option<Database>,
}

#[derive(Debug, Subcommand)]
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

pub async fn run(args: AlarmsArgs) -> Result<(), Failure> {
    match args.action {
        Some(AlarmAction::Ack { id, by, conn }) => ack(id, by, &conn).await,
        None => off_runtime(|| list(args)),
    }
}

async fn ack(id: u64, by: String, conn: &Conn) -> Result<(), Failure> {
    not_empty("--by", &by)?;
    let mut client = conn.connect().await?;
    let answer = client.ask(RequestBody::AckAlarm { id, by }, ANSWER).await;
    client.close();
    answer?;
    println!("alarm {id} acknowledged");
    Ok(())
}

fn list(args: AlarmsArgs) -> Result<(), Failure> {
    let region = region(args.region)?;
    if args.limit == 0 {
        return Err(Usage("--limit 0: at least 1".into()).into());
    }
    let store = database(args.db).open_read_only().map_err(fail)?;
    let rows = store
        .alarms(region.as_ref(), args.active, args.limit)
        .map_err(fail)?;
    let names = store.names(region.as_ref()).map_err(fail)?;
    if args.json {
        let out: Vec<AlarmJson> = rows.iter().map(|a| AlarmJson::of(a, &names)).collect();
        println!("{}", serde_json::to_string_pretty(&out).map_err(fail)?);
    } else {
        print!("{}", alarms::table(&rows, &names));
    }
    Ok(())
}
