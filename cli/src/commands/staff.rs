//! `cuntong staff add NAME --users FILE`: a member of central's staff who may sign in to the
//! dashboard (`cuntong central --http-users FILE`). The password is read from the first line
//! of standard input, so it is in no shell history or process list; the file keeps a salted
//! hash of it (see [`crate::staff`]), readable by its owner only.

use std::io::BufRead;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use cuntong_terminal::println;

use super::common::{Failure, Usage, fail};

#[derive(Debug, Subcommand)]
pub enum StaffAction {
    /// Adds NAME to the users file (or gives NAME a new password), password from stdin.
    Add(AddArgs),
}

#[derive(Debug, Args)]
pub struct AddArgs {
    name: String,
    /// The users file (created if missing, mode 0600).
    #[arg(long)]
    users: PathBuf,
}

pub fn run(action: StaffAction) -> Result<(), Failure> {
    let StaffAction::Add(args) = action;
    let mut password = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut password)
        .map_err(|e| fail(format!("reading the password from stdin: {e}")))?;
    let password = password.trim_end_matches(['\r', '\n']);
    let line = crate::staff::line(&args.name, password).map_err(|e| Usage(e.to_string()))?;
    let old = match std::fs::read_to_string(&args.users) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(fail(format!("{}: {e}", args.users.display()))),
    };
    let prefix = format!("{}:", args.name);
    let mut lines: Vec<&str> = old
        .lines()
        .filter(|l| !l.trim_start().starts_with(&prefix))
        .collect();
    let replaced = lines.len() < old.lines().count();
    lines.push(&line);
    let text = lines.join("\n") + "\n";
    cuntong_terminal::atomic::write_secret(&args.users, text.as_bytes())
        .map_err(|e| fail(format!("{}: {e}", args.users.display())))?;
    let did = if replaced {
        "new password for"
    } else {
        "added"
    };
    println!("{}: {did} {}", args.users.display(), args.name);
    Ok(())
}
