//! `cuntong central`: the central-office service. For now it collects: it subscribes to every
//! site's telemetry, events and presence, checks and de-duplicates what arrives, and stores it.
//!
//! Decoding happens on the async side; a dedicated writer thread applies records to the store
//! in groups (one transaction per group), so the store's latency never stalls the MQTT link.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cuntong_core::envelope::{decode_event, decode_telemetry};
use cuntong_core::presence::Presence;
use cuntong_core::topic::{Channel, Topic, region_filter};
use cuntong_terminal::broker_url::BrokerUrl;
use cuntong_terminal::link::{Incoming, Link, LinkOptions, unix_ms};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::store::{Record, SqliteStore, Store, StoreError};

/// Records applied in one transaction, at most.
const GROUP: usize = 4096;

/// How central connects and where it stores.
#[derive(Clone, Debug)]
pub struct CentralOptions {
    pub broker: BrokerUrl,
    pub db: PathBuf,
    pub client_id: String,
}

/// Why central stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum CentralError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot start the store thread: {0}")]
    Thread(std::io::Error),
    #[error("the store thread crashed")]
    Crashed,
}

/// Counters of what central has done, shared with whoever wants to show them.
#[derive(Debug, Default)]
pub struct CentralStats {
    pub received: AtomicU64,
    pub stored: AtomicU64,
    pub duplicates: AtomicU64,
    pub values: AtomicU64,
    pub rejected: AtomicU64,
}

impl CentralStats {
    pub fn get(&self, f: impl Fn(&CentralStats) -> &AtomicU64) -> u64 {
        f(self).load(Ordering::Relaxed)
    }
}

/// Turns a received message into a record to store; `None` for messages that carry nothing
/// (a cleared retained presence).
pub fn to_record(msg: Incoming, received_ms: u64) -> Option<Record> {
    let rejected = |reason: String, msg: Incoming| Record::Rejected {
        topic: msg.topic,
        received_ms,
        reason,
        payload: msg.payload,
    };
    let (terminal, channel) = match Topic::parse(&msg.topic) {
        Ok(Topic::Terminal { id, channel }) => (id, channel),
        Ok(other) => return Some(rejected(format!("unexpected topic {other}"), msg)),
        Err(e) => return Some(rejected(format!("topic {}", e), msg)),
    };
    let context = |e: &dyn std::fmt::Display| format!("{terminal} {}: {e}", channel.as_str());
    match channel {
        Channel::Telemetry => match decode_telemetry(&msg.payload) {
            Ok(envelope) => Some(Record::Telemetry {
                terminal,
                received_ms,
                envelope,
                raw: msg.payload,
            }),
            Err(e) => Some(rejected(context(&e), msg)),
        },
        Channel::Events => match decode_event(&msg.payload) {
            Ok(envelope) => Some(Record::Event {
                terminal,
                received_ms,
                envelope,
                raw: msg.payload,
            }),
            Err(e) => Some(rejected(context(&e), msg)),
        },
        Channel::Presence if msg.payload.is_empty() => None,
        Channel::Presence => match Presence::decode(&msg.payload) {
            Ok(presence) => Some(Record::Presence {
                terminal,
                received_ms,
                presence,
            }),
            Err(e) => Some(rejected(context(&e), msg)),
        },
        other => Some(rejected(
            format!("central does not read {}", other.as_str()),
            msg,
        )),
    }
}

/// Runs central until `stop` fires.
pub async fn run(
    opts: CentralOptions,
    stats: Arc<CentralStats>,
    stop: CancellationToken,
) -> Result<(), CentralError> {
    let store = SqliteStore::open(&opts.db)?;
    let mut link_opts = LinkOptions::new(opts.client_id.clone(), opts.broker.clone());
    link_opts.subscriptions = [Channel::Presence, Channel::Telemetry, Channel::Events]
        .into_iter()
        .map(|c| region_filter(None, Some(c)))
        .collect();
    link_opts.incoming_capacity = 1024;
    link_opts.keep_alive = Duration::from_secs(15);
    let (link, mut incoming) = Link::start(link_opts);

    let (records_tx, records_rx) = mpsc::channel::<Record>(GROUP * 2);
    let writer_stats = stats.clone();
    let writer_stop = stop.clone();
    let writer = std::thread::Builder::new()
        .name("central-store".to_owned())
        .spawn(move || write_loop(store, records_rx, &writer_stats, &writer_stop))
        .map_err(CentralError::Thread)?;

    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => break,
            m = incoming.recv() => match m { Some(m) => m, None => break },
        };
        stats.received.fetch_add(1, Ordering::Relaxed);
        let Some(record) = to_record(msg, unix_ms()) else {
            continue;
        };
        if let Record::Rejected { reason, .. } = &record {
            tracing::warn!("rejected: {reason}");
            stats.rejected.fetch_add(1, Ordering::Relaxed);
        }
        if records_tx.send(record).await.is_err() {
            break;
        }
    }
    link.shutdown();
    drop(records_tx);
    writer
        .join()
        .map_err(|_| CentralError::Crashed)?
        .map_err(CentralError::Store)
}

fn write_loop(
    mut store: SqliteStore,
    mut rx: mpsc::Receiver<Record>,
    stats: &CentralStats,
    stop: &CancellationToken,
) -> Result<(), StoreError> {
    let mut group = Vec::with_capacity(GROUP);
    while let Some(first) = rx.blocking_recv() {
        group.push(first);
        while group.len() < GROUP {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        // A failed write keeps the group and tries again: nothing received is dropped.
        let mut delay = Duration::from_millis(100);
        loop {
            match store.apply(&group) {
                Ok(a) => {
                    stats.stored.fetch_add(a.stored, Ordering::Relaxed);
                    stats.duplicates.fetch_add(a.duplicates, Ordering::Relaxed);
                    stats.values.fetch_add(a.values, Ordering::Relaxed);
                    break;
                }
                Err(e) if !stop.is_cancelled() => {
                    tracing::error!(error = %e, records = group.len(), "store write failed; retrying in {delay:?}");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
                Err(e) => return Err(e),
            }
        }
        group.clear();
    }
    Ok(())
}
