//! Sans-IO core of cuntong.
//!
//! Everything here is pure: no sockets, no files, no clocks. Time is passed in as milliseconds
//! since the Unix epoch. The crate builds without `std` (with `alloc`), so the same code runs on
//! the terminal, in the central service and in the simulator.
//!
//! - [`site`]: 12-digit administrative division codes, their levels and regions.
//! - [`terminal_id`]: terminal identities (`<site>-<slug>`).
//! - [`topic`]: the MQTT topic tree that mirrors the administrative hierarchy.
//! - [`decimal`]: exact decimal values, as sensors and HJ 212 loggers report them.
//! - [`telemetry`]: metrics, units, samples and batches.
//! - [`envelope`]: the versioned, sequence-numbered wire envelope (postcard).
//! - [`presence`]: the retained online/offline record of a terminal.
//! - [`sampler`]: per-metric interval and deadband, and batching of samples.
//! - [`delivery`]: what to send when, until central confirms it stored it.
//! - [`command`]: signed remote commands and their results.
//! - [`alarm`]: alarm rules, parent-aware suppression and the alarm lifecycle.
//! - [`hj212`]: the HJ 212 frame codec (framing, CRC, fields, readings) for data loggers.
//! - [`meeting`]: meetings, training broadcasts and calls: host and participant state machines.
//! - [`media`]: RTP/RTCP headers for forwarding, and a relay's forwarding table.
//! - [`update`]: signed releases, A/B slots with trial boots, and the pace updates keep.
//!
//! ```
//! use cuntong_core::{site::{Level, SiteCode}, terminal_id::TerminalId, topic::{Channel, Topic}};
//!
//! let id: TerminalId = "130102001001-main".parse()?;
//! assert_eq!(id.site().level(), Level::Village);
//! let county: SiteCode = "130102000000".parse()?;
//! assert!(county.contains(id.site()));
//! assert_eq!(Topic::terminal(&id, Channel::Telemetry).to_string(), "ct/v1/t/13/01/02/001/001/main/tm");
//! # Ok::<(), Box<dyn core::error::Error>>(())
//! ```
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

pub mod alarm;
pub mod backoff;
pub mod command;
pub mod decimal;
pub mod delivery;
pub mod envelope;
pub mod hj212;
pub mod keepalive;
pub mod lease;
pub mod media;
pub mod meeting;
pub mod meeting_id;
pub mod presence;
pub mod rollout;
pub mod sampler;
pub mod sip;
pub mod site;
pub mod telemetry;
pub mod terminal_id;
pub mod throttle;
pub mod topic;
pub mod update;
