//! `cuntong`: the central CLI. The commands are [`cuntong::commands`]; this parses the command
//! line, runs the command and turns its outcome into the exit code (0 done, 1 failed, 2 bad
//! usage or input).

use std::process::ExitCode;

use clap::Parser;
use cuntong::commands::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match cuntong_terminal::daemon::process_runtime(
        "info,rumqttd=off,cuntong_terminal=warn",
        None,
    ) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {failure}");
            failure.exit_code()
        }
    }
}
