//! The cuntong central CLI, as a library: the embedded broker, the central service, the history
//! store and the fleet views. The `cuntong` binary is a thin layer over these.
//!
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
//! - [`control`]: what `cuntong` commands and `central` say to each other.
//! - [`meeting_cli`]: the `cuntong meeting …` and `cuntong call` clients.
//! - [`store`]: the history store (SQLite, or PostgreSQL).
//! - [`view`]: fleet tables and their `--json` form.

pub mod alarms;
pub mod broker;
pub mod ca;
pub mod central;
pub mod cmd;
pub mod control;
pub mod dashboard;
pub mod hj212;
pub mod meeting_cli;
pub mod meetings;
pub mod monitor;
pub mod names;
pub mod readiness;
pub mod regions;
pub mod store;
pub mod view;
