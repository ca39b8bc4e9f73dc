//! `cuntong regions`: the names of division codes for technicians and central staff.
//! `import FILE.csv` loads names (a province's villages, say) into the store; `show CODE` and
//! `search TEXT` print code, level, name and path.

use std::path::PathBuf;

use cuntong_terminal::println;

use clap::Subcommand;
use cuntong_core::site::Region;

use super::common::{Failure, Usage, database, fail};
use crate::names::{Division, Names};
use crate::store::{Database, StoreError};
use crate::view::pad;

#[derive(Debug, Subcommand)]
pub enum RegionsAction {
    /// Load official names from a CSV with a header naming `code` and `name` columns (the
    /// national list's villages.csv, or a province's subset of it) into the store.
    Import {
        file: PathBuf,
        #[arg(long, env = "CUNTONG_DB")]
        db: Option<Database>,
    },
    /// A code's level, name and path.
    Show {
        code: String,
        #[arg(long, env = "CUNTONG_DB")]
        db: Option<Database>,
        #[arg(long)]
        json: bool,
    },
    /// Codes whose name contains TEXT (or whose code starts with it), provinces first.
    Search {
        text: String,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long, env = "CUNTONG_DB")]
        db: Option<Database>,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(action: RegionsAction) -> Result<(), Failure> {
    match action {
        RegionsAction::Import { file, db } => {
            let list =
                cuntong_firmware_sim::divisions::read(&file).map_err(|e| Usage(e.to_string()))?;
            let db = database(db);
            let mut store = db.open().map_err(fail)?;
            let n = store.import_names(&list.rows).map_err(fail)?;
            println!("{n} names imported into {db}");
            if list.unaddressable > 0 {
                println!(
                    "{} rows left out: codes with zero digits above set ones (townships of \
                     prefectures without counties) are not site codes",
                    list.unaddressable
                );
            }
            Ok(())
        }
        RegionsAction::Show { code, db, json } => {
            let region: Region = code
                .parse()
                .map_err(|e| Usage(format!("code {code:?}: {e}")))?;
            let d = names(&database(db))?.division(&region.root());
            print(&[d], json)
        }
        RegionsAction::Search {
            text,
            limit,
            db,
            json,
        } => {
            if text.trim().is_empty() {
                return Err(Usage("search: give part of a name or code".into()).into());
            }
            let found = names(&database(db))?.search(&text, limit);
            if found.is_empty() && !json {
                return Err(fail(format!("no division matches {text:?}")));
            }
            print(&found, json)
        }
    }
}

/// The shipped names, with the store's if there is a store.
fn names(db: &Database) -> Result<Names, Failure> {
    match db.open_read_only().and_then(|s| s.names(None)) {
        Ok(names) => Ok(names),
        Err(StoreError::Missing { .. }) => Ok(Names::shipped()),
        Err(e) => Err(fail(e)),
    }
}

fn print(rows: &[Division], json: bool) -> Result<(), Failure> {
    if json {
        let text = serde_json::to_string_pretty(rows).map_err(fail)?;
        println!("{text}");
        return Ok(());
    }
    println!("{:<13} {:<10} {} PATH", "CODE", "LEVEL", pad("NAME", 20));
    for d in rows {
        println!(
            "{:<13} {:<10} {} {}",
            d.code,
            d.level,
            pad(&d.name, 20),
            d.path
        );
    }
    Ok(())
}
