//! The `cuntong` commands: one module per command family, each with its arguments and its
//! `run`. What they share (failures and exit codes, flag parsing, the connection to the
//! meeting host, signed commands) is in [`common`]. The services they start or talk to
//! (`central` with its meeting host, alarm service, dashboard and store; the broker) are the
//! crate's other modules.
//!
//! - [`broker`]: `broker`, the embedded MQTT broker.
//! - [`central`]: `central`, the central-office service.
//! - [`ca`]: `ca`, `provision`, `acl`.
//! - [`cmd`]: `cmd`, signed commands to terminals.
//! - [`readiness`]: `readiness`, the pre-meeting self-check.
//! - [`history`]: `sites`, `telemetry`, `events`, read from the store.
//! - [`alarms`]: `alarms`, `alarms ack`.
//! - [`monitor`]: `monitor`, the live view.
//! - [`meeting`]: `meeting …`, `call`.
//! - [`regions`]: `regions`, names of division codes.
//! - [`release`]: `release sign`, signed terminal packages for over-the-air updates.
//! - [`hj212`]: `hj212`, frame tools.
//! - [`backup`]: `backup`, a copy of the SQLite store while central runs.
//! - [`staff`]: `staff add`, who signs in to the dashboard.
//! - [`demo`]: `demo`, everything in one process.

pub mod alarms;
pub mod backup;
pub mod broker;
pub mod ca;
pub mod central;
pub mod cmd;
pub mod common;
pub mod demo;
pub mod history;
pub mod hj212;
pub mod meeting;
pub mod monitor;
pub mod readiness;
pub mod regions;
pub mod release;
pub mod rollout;
pub mod staff;

use clap::{Parser, Subcommand};

pub use common::{Failure, Usage};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "cuntong: provincial video-conference and telemetry network, central tools"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the embedded MQTT broker (open to every client unless --auth is given).
    Broker(broker::BrokerArgs),
    /// Run the central-office service: collect every site's telemetry into the store.
    Central(central::CentralArgs),
    /// Before a meeting: every terminal of the meeting (or region) checks its camera,
    /// microphone, link, clock and disk; a ready / not-ready table, kept in the store.
    Readiness(readiness::ReadinessArgs),
    /// Live view of the fleet: the region tree with counts, a terminal's recent values, the
    /// active alarms and the meetings in progress (reads the store; q quits).
    Monitor(monitor::MonitorArgs),
    /// Alarms: `cuntong alarms [--region CODE] [--active] [--json]`, `cuntong alarms ack ID`.
    Alarms(alarms::AlarmsArgs),
    /// The fleet CA: `ca init`, `ca issue-server`, `ca revoke`.
    Ca {
        #[command(subcommand)]
        action: ca::CaAction,
    },
    /// Issue a terminal's (or `central`'s) key, certificate and config as one bundle.
    Provision(ca::ProvisionArgs),
    /// Send a signed command (ping, reboot, diag, logs, readiness, config-set KEY=VALUE,
    /// update FILE.release URL…) to a terminal or to every terminal of a region, and print
    /// the answers.
    Cmd(cmd::CmdArgs),
    /// Write the broker's ACL and configuration from the CA's inventory.
    Acl(ca::AclArgs),
    /// Official names of division codes: `regions show 130102`, `regions search 长安`,
    /// `regions import villages.csv`.
    Regions {
        #[command(subcommand)]
        action: regions::RegionsAction,
    },
    /// One row per terminal: level, online, last seen, latest metrics.
    Sites(history::SitesArgs),
    /// The stored history of one terminal.
    Telemetry(history::TelemetryArgs),
    /// Stored events of the fleet: starts, sensor faults, drops, commands and security events
    /// (refused commands, TLS failures, changed files, unclean restarts).
    Events(history::EventsArgs),
    /// Meetings, training broadcasts: create, control and watch them (the host runs inside
    /// `cuntong central`).
    Meeting(meeting::MeetingArgs),
    /// Start a two-party video call (可视电话) to a terminal.
    Call(meeting::CallArgs),
    /// HJ 212 frames: decode what a data logger sends, or build frames to send to one.
    Hj212 {
        #[command(subcommand)]
        action: hj212::Hj212Action,
    },
    /// Over-the-air updates: `release add FILE --version V` signs a terminal package with
    /// the fleet's release key (boxes install nothing else) and records it for rollouts;
    /// `release sign`, `release list`.
    Release {
        #[command(subcommand)]
        action: release::ReleaseAction,
    },
    /// Staged rollouts of a recorded release: `rollout start V --region CODE --from URL`,
    /// `rollout status ID`, `rollout pause|resume|cancel ID`, `rollout list`.
    Rollout {
        #[command(subcommand)]
        action: rollout::RolloutAction,
    },
    /// A consistent copy of the SQLite store, taken while central runs.
    Backup(backup::BackupArgs),
    /// Staff who sign in to the dashboard: `staff add NAME --users FILE` (password on stdin).
    Staff {
        #[command(subcommand)]
        action: staff::StaffAction,
    },
    /// Broker, central service and a simulated county, in one process, with a live fleet table.
    Demo(demo::DemoArgs),
}

/// Runs a command.
pub async fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Broker(a) => broker::run(a).await,
        Command::Central(a) => central::run(a).await,
        Command::Readiness(a) => readiness::run(a).await,
        Command::Monitor(a) => monitor::run(a),
        Command::Alarms(a) => alarms::run(a).await,
        Command::Ca { action } => ca::run_ca(action),
        Command::Provision(a) => common::off_runtime(|| ca::run_provision(a)),
        Command::Cmd(a) => cmd::run(a).await,
        Command::Acl(a) => ca::run_acl(a),
        Command::Regions { action } => common::off_runtime(|| regions::run(action)),
        Command::Sites(a) => common::off_runtime(|| history::run_sites(a)),
        Command::Telemetry(a) => common::off_runtime(|| history::run_telemetry(a)),
        Command::Events(a) => common::off_runtime(|| history::run_events(a)),
        Command::Meeting(a) => meeting::run(a).await,
        Command::Call(a) => meeting::run_call(a).await,
        Command::Hj212 { action } => hj212::run(action),
        Command::Release { action } => common::off_runtime(|| release::run(action)),
        Command::Rollout { action } => rollout::run(action).await,
        Command::Backup(a) => common::off_runtime(|| backup::run(a)),
        Command::Staff { action } => common::off_runtime(|| staff::run(action)),
        Command::Demo(a) => demo::run(a).await,
    }
}
