//! `cuntong backup --to FILE`: a consistent copy of the SQLite store while central runs (SQLite's
//! online backup), checked before it is given its name. A PostgreSQL store is backed up with
//! PostgreSQL's own tools (docs/operations.md).

use std::path::PathBuf;

use clap::Args;
use cuntong_terminal::println;

use super::common::{Failure, Usage, database, fail};
use crate::store::{Database, SqliteStore};

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Where the copy goes; an existing file is never overwritten.
    #[arg(long)]
    to: PathBuf,
    #[arg(long, env = "CUNTONG_DB")]
    db: Option<Database>,
}

pub fn run(args: BackupArgs) -> Result<(), Failure> {
    if args.to.exists() {
        return Err(Usage(format!(
            "--to {}: the file exists; a backup never overwrites one",
            args.to.display()
        ))
        .into());
    }
    let path = match database(args.db) {
        Database::Sqlite(path) => path,
        Database::Postgres(_) => {
            return Err(Usage(
                "--db postgres://…: a PostgreSQL store is backed up with PostgreSQL's own tools \
                 (pg_basebackup, pg_dump; docs/operations.md)"
                    .into(),
            )
            .into());
        }
    };
    let store = SqliteStore::open_read_only(&path).map_err(fail)?;
    let copied = store.backup_to(&args.to).map_err(fail)?;
    println!(
        "{}: {} messages of {} terminals, store version {}",
        args.to.display(),
        copied.messages,
        copied.terminals,
        copied.version
    );
    Ok(())
}
