//! `cuntong monitor`: the live view of the fleet in a terminal. The view is
//! [`crate::monitor`].

use std::io::IsTerminal;

use clap::Args;

use super::common::{Failure, Usage, database, fail, off_runtime, region};
use crate::store::Database;

#[derive(Debug, Args)]
pub struct MonitorArgs {
    #[arg(long)]
    region: Option<String>,
    #[arg(long, env = "CUNTONG_DB")]
    db: Option<Database>,
}

pub fn run(args: MonitorArgs) -> Result<(), Failure> {
    let region = region(args.region)?;
    let db = database(args.db);
    off_runtime(|| db.open_read_only().map(drop)).map_err(fail)?;
    if !std::io::stdout().is_terminal() {
        return Err(Usage(
            "monitor needs a terminal (use `sites` or `alarms --json` in scripts)".into(),
        )
        .into());
    }
    off_runtime(|| crate::monitor::run(&db, region)).map_err(fail)
}
