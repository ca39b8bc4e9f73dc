//! The cuntong central CLI, as a library: the embedded broker, the central service, the history
//! store and the fleet views, and the commands over them. The `cuntong` binary is a thin layer
//! over [`commands`].
//!
//! What the service and the commands are made of:
//! - [`alarms`]: the alarm service inside `central`, its rules file, `cuntong alarms`.
//! - [`broker`]: the embedded MQTT broker.
//! - [`ca`]: the fleet CA, provisioning bundles and broker ACLs.
//! - [`central`]: the collector service.
//! - [`cmd`]: signed remote commands.
//! - [`dashboard`]: the web dashboard (`cuntong central --http`).
//! - [`hj212`]: HJ 212 frame tools for technicians.
//! - [`meetings`]: the meeting host inside `central`.
//! - [`monitor`]: the live terminal view (`cuntong monitor`).
//! - [`readiness`]: the pre-meeting self-check of terminals (`cuntong readiness`).
//! - [`release`]: signed releases of the terminal package (over-the-air updates).
//! - [`control`]: what `cuntong` commands and `central` say to each other.
//! - [`store`]: the history store (SQLite, or PostgreSQL).
//! - [`view`]: fleet tables and their `--json` form.
//!
//! The client side: [`commands`], one module per command family (`meeting …` and `call`, the
//! read commands, `ca`, `cmd`, …) with its arguments and its `run`.

pub mod alarms;
pub mod artifacts;
pub mod broker;
pub mod ca;
pub mod central;
pub mod cmd;
pub mod commands;
pub mod control;
pub mod dashboard;
pub mod gaps;
pub mod hj212;
pub mod host_lease;
pub mod meetings;
pub mod monitor;
pub mod names;
pub mod readiness;
pub mod release;
pub mod rollouts;
pub mod staff;
pub mod store;
pub mod view;
