//! The cuntong terminal: the daemon that runs on each site's box.
//!
//! It samples site health and environmental sensors, batches the samples into sequence-numbered
//! envelopes and publishes them to the broker, announces its presence (with a last will), and
//! answers local status requests from the technician's `cuntong-terminal status`.
//!
//! - [`atomic`]: replacing small state files atomically and durably.
//! - [`config`]: the TOML configuration, validated.
//! - [`broker_url`]: `mqtt://host:port` addresses.
//! - [`link`]: the MQTT link (reconnect, resubscribe, bounded queue).
//! - [`daemon`]: the terminal's main loop.
//! - [`conference`]: the meeting participant: invitations, joins, chair state, operator requests.
//! - [`sensors`]: sensor drivers over embedded-hal traits.
//! - [`hardware`]: opening the configured sensors.
//! - [`health`]: site health from `/proc`.
//! - [`hj212`]: the HJ 212 listener for pollution-source data loggers.
//! - [`integrity`]: unclean restarts and changed config or key files.
//! - [`outbox`]: the durable outbox (segment log with a CRC per record).
//! - [`status`]: the local status socket.
//! - [`check`]: the technician's on-site self-test.
//! - [`commands`]: verifying signed remote commands.
//! - [`readiness`]: the pre-meeting self-check.
//! - [`media`]: the GStreamer media engine (feature `media`).
//! - [`relay`]: the relay role: RTP/RTCP forwarding for the sites under a county or city point.
//! - [`duty_button`]: the GPIO duty button.
//! - [`remote_config`]: `config-set` from central, validated and saved in place.
//! - [`tls`]: mutual TLS for the link.
//! - [`update`]: over-the-air updates: signed releases, A/B slots, trial starts and rollback.

pub mod atomic;
pub mod broker_url;
pub mod check;
pub mod commands;
pub mod conference;
pub mod config;
pub mod daemon;
pub mod duty_button;
pub mod hardware;
pub mod health;
pub mod hex;
pub mod hj212;
pub mod integrity;
pub mod link;
pub mod listen;
#[cfg(feature = "media")]
pub mod media;
pub mod outbox;
pub mod readiness;
pub mod relay;
pub mod remote_config;
pub mod sensors;
pub mod service;
pub mod sip;
pub mod status;
pub mod stdout;
pub mod throttle;
pub mod tls;
pub mod update;
