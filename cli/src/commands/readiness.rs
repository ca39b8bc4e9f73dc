//! `cuntong readiness`: before a meeting, every terminal of the meeting (or region) checks
//! itself; a ready / not-ready table, kept in the store. The checks and the table are
//! [`crate::readiness`].

use std::time::Duration;

use clap::Args;
use cuntong_core::meeting::MeetingId;
use cuntong_core::terminal_id::TerminalId;
use cuntong_terminal::link::unix_ms;
use cuntong_terminal::{print, println};

use super::common::{Failure, Signing, Usage, fail, off_runtime, parse, positive, region};

#[derive(Debug, Args)]
pub struct ReadinessArgs {
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
}

pub async fn run(args: ReadinessArgs) -> Result<(), Failure> {
    let ReadinessArgs {
        meeting,
        region: region_code,
        signing,
        wait,
        json,
    } = args;
    signing.check()?;
    let wait = positive("--wait", &wait)?;
    let region = region(region_code)?;
    if let Some(m) = &meeting {
        parse::<MeetingId>("--meeting", m)?;
    }
    let db = signing.db();
    let targets: Vec<TerminalId> = match (&meeting, &region) {
        (Some(m), _) => {
            off_runtime(|| crate::readiness::meeting_terminals(&db, m)).map_err(fail)?
        }
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
    let rows = crate::readiness::rows(&answers);
    off_runtime(|| crate::readiness::save(&db, &rows, unix_ms())).map_err(fail)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows).map_err(fail)?);
    } else {
        print!("{}", crate::readiness::table(&rows));
    }
    if rows.iter().any(|r| r.ready.is_none()) {
        return Err(fail("some terminals did not answer"));
    }
    Ok(())
}
