//! How central is set up (its broker, store, TLS, dashboard, lease and the rest), why it stops
//! with an error, and the counters of what it has done.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cuntong_core::lease::Lease;
use cuntong_terminal::broker_url::Brokers;

use crate::alarms::AlarmConfig;
use crate::store::{Database, StoreError};

/// How central connects and where it stores.
#[derive(Clone, Debug)]
pub struct CentralOptions {
    /// The broker, or a cluster's nodes in order of preference.
    pub broker: Brokers,
    pub db: Database,
    pub client_id: String,
    /// The QoS of central's subscriptions (1; 0 on a NATS cluster).
    pub subscribe_qos: rumqttc::QoS,
    /// How often confirmations go out (coalesced per terminal).
    pub ack_interval: Duration,
    /// Mutual TLS, for an `mqtts://` broker: central's bundle directory (`cert.pem` and
    /// `key.pem` for the ingest link, the other links' identities in `meeting/` and `control/`).
    pub tls: Option<std::path::PathBuf>,
    /// How often the sites of a new session repeat their status.
    pub meeting_heartbeat: Duration,
    /// Where relays reach central's recorders.
    pub media_host: std::net::IpAddr,
    /// Alarm rules and notification hooks.
    pub alarms: AlarmConfig,
    /// Where the web dashboard listens, if it is served.
    pub http: Option<std::net::SocketAddr>,
    /// Who may see the dashboard (`--http-users`, `--http-tls`); open to its network if
    /// neither.
    pub http_access: crate::dashboard::Access,
    /// The lease on the host role (several instances on one PostgreSQL store).
    pub lease: Lease,
    /// How long the history is kept (`--retain`); forever if `None`.
    pub retain: Option<Duration>,
    /// The shared-subscription group the instances share ingest in (`--share-ingest`), on a
    /// broker with MQTT shared subscriptions; every instance receives everything if `None`.
    pub share_ingest: Option<String>,
    /// Where release artifacts are cached for serving (`--release-cache`); beside an SQLite
    /// store, or the user's cache directory, if `None`.
    pub release_cache: Option<std::path::PathBuf>,
}

impl CentralOptions {
    pub fn new(
        broker: impl Into<Brokers>,
        db: Database,
        client_id: impl Into<String>,
    ) -> CentralOptions {
        CentralOptions {
            broker: broker.into(),
            db,
            client_id: client_id.into(),
            subscribe_qos: rumqttc::QoS::AtLeastOnce,
            ack_interval: Duration::from_secs(1),
            tls: None,
            meeting_heartbeat: Duration::from_secs(10),
            media_host: std::net::IpAddr::from([127, 0, 0, 1]),
            alarms: AlarmConfig::default(),
            http: None,
            http_access: crate::dashboard::Access::default(),
            lease: Lease::default(),
            retain: None,
            share_ingest: None,
            release_cache: None,
        }
    }
}

/// Why central stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum CentralError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tls(#[from] cuntong_terminal::tls::TlsError),
    #[error("dashboard: cannot listen on {addr}: {source}")]
    Http {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Counters of what central has done, shared with whoever wants to show them.
#[derive(Debug, Default)]
pub struct CentralStats {
    pub received: AtomicU64,
    pub stored: AtomicU64,
    pub duplicates: AtomicU64,
    pub values: AtomicU64,
    pub rejected: AtomicU64,
    /// Confirmations published.
    pub acks: AtomicU64,
    /// Messages the link refused for being larger than the protocol allows.
    pub oversized: AtomicU64,
    /// Records not kept while the store was too far behind (their terminals send them again).
    pub shed: AtomicU64,
    /// Meeting messages dropped from a full outbound queue (the oldest; sites repeat).
    pub meeting_dropped: AtomicU64,
    /// Meeting messages waiting for room in the meeting link (as of the last meeting tick):
    /// what a join storm's plans queue in central rather than in the brokers.
    pub meeting_waiting: AtomicU64,
}

impl CentralStats {
    pub fn get(&self, f: impl Fn(&CentralStats) -> &AtomicU64) -> u64 {
        f(self).load(Ordering::Relaxed)
    }
}
