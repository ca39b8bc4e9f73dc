//! `cuntong broker`: the embedded MQTT broker, until Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use cuntong_terminal::daemon::shutdown_signal;

use super::common::{Failure, Usage, fail, parse};
use crate::broker;

#[derive(Debug, Args)]
pub struct BrokerArgs {
    #[arg(long, default_value = "127.0.0.1:1883")]
    listen: String,
    /// Only the users in FILE may connect: `username:password` a line, `#` comments; plain
    /// passwords, so the file must be mode 0600. Clients give them in the broker URL,
    /// `mqtt://user:password@host:port`.
    #[arg(long, value_name = "FILE")]
    auth: Option<PathBuf>,
}

pub async fn run(args: BrokerArgs) -> Result<(), Failure> {
    let addr: SocketAddr = parse("--listen", &args.listen)?;
    let users = args
        .auth
        .map(|file| broker::load_users(&file).map_err(|e| Usage(format!("--auth: {e}"))))
        .transpose()?;
    let users_note = match &users {
        Some(u) => format!(" ({} users may log in)", u.len()),
        None => " (open: no authentication)".to_owned(),
    };
    let addr = broker::serve(addr, users).await.map_err(fail)?;
    eprintln!("broker listening on mqtt://{addr}{users_note}");
    shutdown_signal().await;
    Ok(())
}
