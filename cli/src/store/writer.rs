//! The store thread: the one place central writes. Its services never write on the MQTT event
//! loop; they hand the thread what to write and go on. Received records come in a bounded
//! queue (back-pressure on ingest) and are applied in groups, one transaction per group; the
//! services' state (meetings, alarms) comes in its own queue and goes first, so a chair's
//! session or an alarm change never waits behind a province's telemetry. A failed write is kept
//! and tried again, so nothing handed over is lost; every write is applied in the order it was
//! handed over. Between writes the thread looks for new names (imported by `cuntong regions
//! import`, given by `provision --name`) and hands them to the services.

use std::sync::Arc;
use std::time::Duration;

use cuntong_core::alarm::Alarm;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{Applied, MeetingRow, NamesCache, Record, SqliteStore, Store, StoreError};
use crate::names::Names;

/// Records applied in one transaction, at most.
pub const GROUP: usize = 4096;

/// How often the thread looks for changed names.
const NAMES_EVERY: Duration = Duration::from_secs(1);

/// A change of a service's state.
#[derive(Debug)]
enum StateWrite {
    Meetings(Vec<MeetingRow>),
    Alarms(Vec<Alarm>),
    RetireMeeting(String),
    /// Answered once everything handed over before it is written.
    Flush(std::sync::mpsc::Sender<()>),
}

/// Where central's services hand their state to the store thread. Cheap to clone.
#[derive(Clone, Debug)]
pub struct StateWriter {
    tx: mpsc::UnboundedSender<StateWrite>,
}

/// The store thread has stopped: nothing more can be written.
#[derive(Debug, thiserror::Error)]
#[error("the store thread has stopped")]
pub struct WriterGone;

impl StateWriter {
    /// Sessions to write (their newest state).
    pub fn meetings(&self, rows: Vec<MeetingRow>) -> Result<(), WriterGone> {
        self.send(StateWrite::Meetings(rows))
    }

    /// Alarm changes to write.
    pub fn alarms(&self, alarms: Vec<Alarm>) -> Result<(), WriterGone> {
        self.send(StateWrite::Alarms(alarms))
    }

    /// A stored session central cannot use, to mark ended.
    pub fn retire_meeting(&self, id: String) -> Result<(), WriterGone> {
        self.send(StateWrite::RetireMeeting(id))
    }

    /// Waits (blocking the calling thread) until everything handed over so far is written.
    pub fn flush(&self) -> Result<(), WriterGone> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.send(StateWrite::Flush(tx))?;
        rx.recv().map_err(|_| WriterGone)
    }

    fn send(&self, w: StateWrite) -> Result<(), WriterGone> {
        self.tx.send(w).map_err(|_| WriterGone)
    }
}

/// The running store thread.
#[derive(Debug)]
pub struct Writer {
    pub state: StateWriter,
    /// The store's names, as the thread last read them.
    pub names: watch::Receiver<Arc<Names>>,
    thread: std::thread::JoinHandle<Result<(), StoreError>>,
}

impl Writer {
    /// Starts the thread on `store`. It applies `records` in groups, tells `applied` what each
    /// group did, and stops once `records` is closed and every [`StateWriter`] is dropped;
    /// a write that fails after `stop` fires ends it with that error.
    pub fn start(
        mut store: SqliteStore,
        records: mpsc::Receiver<Record>,
        mut applied: impl FnMut(Applied) + Send + 'static,
        stop: CancellationToken,
    ) -> std::io::Result<Writer> {
        let (tx, state) = mpsc::unbounded_channel();
        let mut cache = NamesCache::default();
        let first = cache.get(&store).unwrap_or_default();
        let (names_tx, names) = watch::channel(first);
        let thread = std::thread::Builder::new()
            .name("central-store".to_owned())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .map_err(StoreError::Thread)?;
                rt.block_on(run(
                    &mut store,
                    records,
                    state,
                    &mut applied,
                    (&mut cache, &names_tx),
                    &stop,
                ))
            })?;
        Ok(Writer {
            state: StateWriter { tx },
            names,
            thread,
        })
    }

    /// Waits for the thread to finish (drop every [`StateWriter`] and the records' sender
    /// first).
    pub fn join(self) -> Result<(), StoreError> {
        drop(self.state);
        self.thread.join().map_err(|_| StoreError::Crashed)?
    }
}

async fn run(
    store: &mut SqliteStore,
    mut records: mpsc::Receiver<Record>,
    mut state: mpsc::UnboundedReceiver<StateWrite>,
    applied: &mut impl FnMut(Applied),
    (cache, names): (&mut NamesCache, &watch::Sender<Arc<Names>>),
    stop: &CancellationToken,
) -> Result<(), StoreError> {
    let mut group = Vec::with_capacity(GROUP);
    let (mut records_open, mut state_open) = (true, true);
    let mut names_tick = tokio::time::interval(NAMES_EVERY);
    names_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while records_open || state_open {
        tokio::select! {
            biased;
            w = state.recv(), if state_open => match w {
                Some(w) => write_state(store, w, stop)?,
                None => state_open = false,
            },
            r = records.recv(), if records_open => match r {
                Some(first) => {
                    group.push(first);
                    while group.len() < GROUP {
                        match records.try_recv() {
                            Ok(r) => group.push(r),
                            Err(_) => break,
                        }
                    }
                    applied(retrying(stop, "records", group.len(), || store.apply(&group))?);
                    group.clear();
                }
                None => records_open = false,
            },
            _ = names_tick.tick() => match cache.get(store) {
                Ok(current) => {
                    names.send_if_modified(|n| {
                        let changed = !Arc::ptr_eq(n, &current);
                        *n = current;
                        changed
                    });
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the names; keeping the ones read before"),
            },
        }
    }
    Ok(())
}

fn write_state(
    store: &mut SqliteStore,
    w: StateWrite,
    stop: &CancellationToken,
) -> Result<(), StoreError> {
    match w {
        StateWrite::Meetings(rows) => {
            retrying(stop, "meetings", rows.len(), || store.save_meetings(&rows))
        }
        StateWrite::Alarms(alarms) => {
            retrying(stop, "alarms", alarms.len(), || store.save_alarms(&alarms))
        }
        StateWrite::RetireMeeting(id) => {
            retrying(stop, "meetings", 1, || store.retire_meeting(&id))
        }
        StateWrite::Flush(done) => {
            let _ = done.send(());
            Ok(())
        }
    }
}

/// Runs `write` until it succeeds, waiting longer after each failure (up to 10 s); once `stop`
/// has fired, a failure is the end.
fn retrying<T>(
    stop: &CancellationToken,
    what: &str,
    count: usize,
    mut write: impl FnMut() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let mut delay = Duration::from_millis(100);
    loop {
        match write() {
            Ok(t) => return Ok(t),
            Err(e) if !stop.is_cancelled() => {
                tracing::error!(error = %e, what, count, "store write failed; retrying in {delay:?}");
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Err(e),
        }
    }
}
