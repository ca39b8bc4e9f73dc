//! `cuntong cmd`: a signed command to a terminal or to every terminal of a region, and the
//! answers. Signing and sending are [`crate::cmd`].

use std::time::Duration;

use clap::Args;
use cuntong_core::site::Region;
use cuntong_core::terminal_id::TerminalId;
use cuntong_terminal::println;

use super::common::{Failure, Signing, Usage, duration, fail, parse, positive};

#[derive(Debug, Args)]
pub struct CmdArgs {
    /// `TERMINAL_ID COMMAND…`, or just `COMMAND…` with --region; COMMAND is ping, reboot,
    /// diag, logs, readiness, config-set KEY=VALUE, update FILE.release URL… or (to a SIP
    /// gateway) dial MEETING sip:ROOM@HOST.
    #[arg(required = true, num_args = 1..)]
    words: Vec<String>,
    /// Every terminal the store knows in this region.
    #[arg(long)]
    region: Option<String>,
    #[command(flatten)]
    signing: Signing,
    /// The command is void after this long (an offline terminal runs it on reconnect
    /// until then).
    #[arg(long, default_value = "1h")]
    expires: String,
    /// How long to wait for answers.
    #[arg(long, default_value = "10s")]
    wait: String,
    #[arg(long)]
    json: bool,
}

pub async fn run(args: CmdArgs) -> Result<(), Failure> {
    let CmdArgs {
        words,
        region,
        signing,
        expires,
        wait,
        json,
    } = args;
    let (terminal, command) = match (&region, words.split_first()) {
        (None, Some((t, rest))) => (Some(t.clone()), rest.to_vec()),
        _ => (None, words.clone()),
    };
    let action = crate::cmd::parse_action(&command).map_err(|e| Usage(e.to_string()))?;
    signing.check()?;
    let expires = lifetime(&expires)?;
    let wait = positive("--wait", &wait)?;
    let targets: Vec<TerminalId> = match (terminal, region) {
        (Some(t), None) => vec![parse("terminal", &t)?],
        (None, Some(r)) => {
            let region: Region = parse("--region", &r)?;
            signing.terminals_in(&region)?
        }
        _ => return Err(Usage("give a terminal id or --region, not both".into()).into()),
    };
    if targets.is_empty() {
        return Err(fail("no terminal in that region"));
    }
    let answers = signing.send(&targets, &action, expires, wait).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answers).map_err(fail)?);
    } else {
        for a in &answers {
            let state = match a.ok {
                Some(true) => "ok",
                Some(false) => "FAIL",
                None => "no answer (queued until it expires)",
            };
            println!(
                "{:<22} {state}  {}",
                a.terminal,
                a.output.as_deref().unwrap_or("")
            );
        }
    }
    if answers.iter().all(|a| a.ok == Some(true)) {
        Ok(())
    } else {
        Err(Failure::Runtime(format!(
            "{} of {} terminals did not run the command",
            answers.iter().filter(|a| a.ok != Some(true)).count(),
            answers.len()
        )))
    }
}

/// `--expires`: within what terminals accept.
fn lifetime(value: &str) -> Result<Duration, Usage> {
    use cuntong_core::command::{MAX_LIFETIME_MS, MIN_LIFETIME_MS};
    let d = duration("--expires", value)?;
    let range = Duration::from_millis(MIN_LIFETIME_MS)..=Duration::from_millis(MAX_LIFETIME_MS);
    if !range.contains(&d) {
        return Err(Usage(format!(
            "--expires {value:?}: from 1m to 30d (terminals refuse longer-lived commands)"
        )));
    }
    Ok(d)
}
