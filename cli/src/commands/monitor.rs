//! `cuntong monitor`: the live view of the fleet in a terminal. The view is
//! [`crate::monitor`].

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Args;

use super::common::{Failure, Usage, default_db, fail, region};

#[derive(Debug, Args)]
pub struct MonitorArgs {
    #[arg(long)]
    region: Option<String>,
    #[arg(long, env = "CUNTONG_DB")]
    db: Option<PathBuf>,
}

pub fn run(args: MonitorArgs) -> Result<(), Failure> {
    let region = region(args.region)?;
    let db = args.db.unwrap_or_else(default_db);
    crate::store::open_read_only(&db).map_err(fail)?;
    if !std::io::stdout().is_terminal() {
        return Err(Usage(
            "monitor needs a terminal (use `sites` or `alarms --json` in scripts)".into(),
        )
        .into());
    }
    tokio::task::block_in_place(|| crate::monitor::run(&db, region)).map_err(fail)
}
