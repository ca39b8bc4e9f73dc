//! The store thread: the one place central writes. Its services never write on the MQTT event
//! loop; they hand the thread what to write and go on. Received records come in a bounded
//! queue (back-pressure on ingest) and are applied in groups, one transaction per group; the
//! services' state (meetings, alarms) comes in its own queue and goes first, so a chair's
//! session or an alarm change never waits behind a province's telemetry. A failed write is kept
//! and tried again, so nothing handed over is lost; every write is applied in the order it was
//! handed over. Between writes the thread looks for new names (imported by `cuntong regions
//! import`, given by `provision --name`) and hands them to the services.
//!
//! The thread blocks on a doorbell, not on an async runtime: the PostgreSQL client runs a
//! runtime of its own, which must not be entered from another.

use std::sync::Arc;
use std::sync::mpsc::{Receiver as Bell, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use cuntong_core::alarm::Alarm;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{
    Applied, Fence, MeetingRow, NamesCache, Record, RolloutRow, RolloutSiteRow, Store, StoreError,
};
use crate::names::Names;

/// Records applied in one transaction, at most.
pub const GROUP: usize = 4096;

/// How long the first record of a group waits for others. A province reporting steadily
/// hands over a record or two at a time: applied at once, each would cost a transaction and a
/// fold of its own (hundreds a second, for 900 records a second). A record's confirmation
/// waits this long at most; a storm fills its groups without waiting.
pub const LINGER: Duration = Duration::from_millis(100);

/// Records waiting for the store thread, at most (then ingest waits: back-pressure).
const RECORDS_QUEUED: usize = GROUP * 2;

/// How often the thread looks for changed names.
const NAMES_EVERY: Duration = Duration::from_secs(1);

/// A change of a service's state.
#[derive(Debug)]
enum StateWrite {
    Meetings(Vec<MeetingRow>, Option<Fence>),
    Alarms(Vec<Alarm>, Option<Fence>),
    Rollouts(Vec<RolloutRow>, Vec<RolloutSiteRow>, Option<Fence>),
    RetireMeeting(String),
    /// Forget the history before this time (retention).
    DropBefore(u64),
    /// Answered once everything handed over before it is written.
    Flush(std::sync::mpsc::Sender<()>),
    /// The same, for an async waiter.
    Written(tokio::sync::oneshot::Sender<()>),
}

/// Wakes the store thread when something is handed over.
#[derive(Clone, Debug)]
struct Ring(SyncSender<()>);

impl Ring {
    fn ring(&self) {
        // Full: it is ringing already.
        let _ = self.0.try_send(());
    }
}

/// Where central's services hand their state to the store thread. Cheap to clone.
#[derive(Clone, Debug)]
pub struct StateWriter {
    tx: mpsc::UnboundedSender<StateWrite>,
    ring: Ring,
    /// The lease the writes are made under, if any.
    fence: Option<Fence>,
}

/// Where central hands the store thread what it received.
#[derive(Clone, Debug)]
pub struct RecordSender {
    tx: mpsc::Sender<Record>,
    ring: Ring,
}

/// The store thread has stopped: nothing more can be written.
#[derive(Debug, thiserror::Error)]
#[error("the store thread has stopped")]
pub struct WriterGone;

impl StateWriter {
    /// The same writer, its meetings and alarms written only while `role` is at `epoch`:
    /// once the role passes on, what this one still hands over is refused by the store.
    pub fn fenced(&self, role: &'static str, epoch: u64) -> StateWriter {
        StateWriter {
            fence: Some(Fence { role, epoch }),
            ..self.clone()
        }
    }

    /// Sessions to write (their newest state).
    pub fn meetings(&self, rows: Vec<MeetingRow>) -> Result<(), WriterGone> {
        self.send(StateWrite::Meetings(rows, self.fence))
    }

    /// Alarm changes to write.
    pub fn alarms(&self, alarms: Vec<Alarm>) -> Result<(), WriterGone> {
        self.send(StateWrite::Alarms(alarms, self.fence))
    }

    /// Rollouts (their state) and boxes' progress to write.
    pub fn rollouts(
        &self,
        rollouts: Vec<RolloutRow>,
        sites: Vec<RolloutSiteRow>,
    ) -> Result<(), WriterGone> {
        self.send(StateWrite::Rollouts(rollouts, sites, self.fence))
    }

    /// A stored session central cannot use, to mark ended.
    pub fn retire_meeting(&self, id: String) -> Result<(), WriterGone> {
        self.send(StateWrite::RetireMeeting(id))
    }

    /// The history before `cut_ms` to forget (retention).
    pub fn drop_before(&self, cut_ms: u64) -> Result<(), WriterGone> {
        self.send(StateWrite::DropBefore(cut_ms))
    }

    /// Waits (blocking the calling thread) until everything handed over so far is written.
    pub fn flush(&self) -> Result<(), WriterGone> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.send(StateWrite::Flush(tx))?;
        rx.recv().map_err(|_| WriterGone)
    }

    /// Resolves once everything handed over so far is written (an error if the thread stops
    /// first).
    pub fn written(&self) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        // A stopped thread drops the sender, which the receiver reports.
        let _ = self.send(StateWrite::Written(tx));
        rx
    }

    fn send(&self, w: StateWrite) -> Result<(), WriterGone> {
        self.tx.send(w).map_err(|_| WriterGone)?;
        self.ring.ring();
        Ok(())
    }
}

impl RecordSender {
    /// Hands over a record, waiting while the queue is full.
    pub async fn send(&self, record: Record) -> Result<(), WriterGone> {
        self.tx.send(record).await.map_err(|_| WriterGone)?;
        self.ring.ring();
        Ok(())
    }

    /// Hands over a record if the queue has room; gives it back if not.
    pub fn try_send(&self, record: Record) -> Result<(), TrySendError> {
        match self.tx.try_send(record) {
            Ok(()) => {
                self.ring.ring();
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(r)) => Err(TrySendError::Full(Box::new(r))),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(TrySendError::Gone),
        }
    }

    /// Waits until the queue has room for one record.
    pub async fn room(&self) -> Result<RecordPermit<'_>, WriterGone> {
        let permit = self.tx.reserve().await.map_err(|_| WriterGone)?;
        Ok(RecordPermit {
            permit,
            ring: &self.ring,
        })
    }
}

/// Why a record was not handed over at once.
#[derive(Debug)]
pub enum TrySendError {
    /// The queue is full; the record, back.
    Full(Box<Record>),
    Gone,
}

/// Room for one record in the store thread's queue.
#[derive(Debug)]
pub struct RecordPermit<'a> {
    permit: mpsc::Permit<'a, Record>,
    ring: &'a Ring,
}

impl RecordPermit<'_> {
    pub fn send(self, record: Record) {
        self.permit.send(record);
        self.ring.ring();
    }
}

/// The running store thread.
#[derive(Debug)]
pub struct Writer {
    pub state: StateWriter,
    pub records: RecordSender,
    /// The store's names, as the thread last read them.
    pub names: watch::Receiver<Arc<Names>>,
    thread: std::thread::JoinHandle<Result<(), StoreError>>,
}

impl Writer {
    /// Starts the thread on `store`. It applies records in groups and tells `applied` what
    /// each group did, and stops once every [`RecordSender`] and [`StateWriter`] is dropped
    /// and what they handed over is written; a write that fails after `stop` fires ends it
    /// with that error.
    pub fn start(
        mut store: Box<dyn Store>,
        mut applied: impl FnMut(Applied) + Send + 'static,
        stop: CancellationToken,
    ) -> Result<Writer, StoreError> {
        let (state_tx, state) = mpsc::unbounded_channel();
        let (records_tx, records) = mpsc::channel(RECORDS_QUEUED);
        let (ring, bell) = std::sync::mpsc::sync_channel(1);
        let ring = Ring(ring);
        let mut cache = NamesCache::default();
        let first = cache.get(store.as_ref())?;
        let (names_tx, names) = watch::channel(first);
        let thread = std::thread::Builder::new()
            .name("central-store".to_owned())
            .spawn(move || {
                let queues = Queues {
                    records,
                    state,
                    bell,
                };
                run(
                    store.as_mut(),
                    queues,
                    &mut applied,
                    (&mut cache, &names_tx),
                    &stop,
                )
            })
            .map_err(StoreError::Thread)?;
        Ok(Writer {
            state: StateWriter {
                tx: state_tx,
                ring: ring.clone(),
                fence: None,
            },
            records: RecordSender {
                tx: records_tx,
                ring,
            },
            names,
            thread,
        })
    }

    /// Waits for the thread to finish (drop every [`StateWriter`] and [`RecordSender`] first).
    pub fn join(self) -> Result<(), StoreError> {
        drop((self.state, self.records));
        self.thread.join().map_err(|_| StoreError::Crashed)?
    }
}

struct Queues {
    records: mpsc::Receiver<Record>,
    state: mpsc::UnboundedReceiver<StateWrite>,
    bell: Bell<()>,
}

fn run(
    store: &mut dyn Store,
    mut q: Queues,
    applied: &mut impl FnMut(Applied),
    (cache, names): (&mut NamesCache, &watch::Sender<Arc<Names>>),
    stop: &CancellationToken,
) -> Result<(), StoreError> {
    let mut group = Vec::with_capacity(GROUP);
    // When the group's first record was taken.
    let mut group_since = Instant::now();
    let mut names_read = Instant::now();
    loop {
        // The services' state first, then one group of records.
        let state_open = write_states(store, &mut q.state, &mut group, applied, stop)?;
        let mut records_open = true;
        while group.len() < GROUP {
            match q.records.try_recv() {
                Ok(r) => {
                    if group.is_empty() {
                        group_since = Instant::now();
                    }
                    group.push(r)
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    records_open = false;
                    break;
                }
            }
        }
        let lingered = group_since.elapsed();
        let worked =
            !group.is_empty() && (group.len() >= GROUP || !records_open || lingered >= LINGER);
        if worked {
            apply_group(store, &mut group, applied, stop)?;
        }
        if names_read.elapsed() >= NAMES_EVERY {
            names_read = Instant::now();
            read_names(store, cache, names);
        }
        if worked {
            continue;
        }
        let wait = if group.is_empty() {
            // Nothing queued: what the store defers is brought up to date.
            settle(store);
            if !state_open && !records_open {
                return Ok(());
            }
            NAMES_EVERY
        } else {
            LINGER.saturating_sub(lingered)
        };
        // Woken by a hand-over, when the group is due, or to look at the names. Once every
        // sender is gone the bell no longer waits, and the queues report closed when empty.
        if let Err(RecvTimeoutError::Disconnected) = q.bell.recv_timeout(wait) {
            continue;
        }
    }
}

/// Writes the services' state handed over so far, a waiting group of records first when a
/// flush asks for everything before it; whether their queue is still open.
fn write_states(
    store: &mut dyn Store,
    state: &mut mpsc::UnboundedReceiver<StateWrite>,
    group: &mut Vec<Record>,
    applied: &mut impl FnMut(Applied),
    stop: &CancellationToken,
) -> Result<bool, StoreError> {
    loop {
        match state.try_recv() {
            Ok(w) => {
                if matches!(w, StateWrite::Flush(_) | StateWrite::Written(_)) && !group.is_empty() {
                    // What was handed over before the flush is written before it.
                    apply_group(store, group, applied, stop)?;
                }
                write_state(store, w, stop)?
            }
            Err(mpsc::error::TryRecvError::Empty) => return Ok(true),
            Err(mpsc::error::TryRecvError::Disconnected) => return Ok(false),
        }
    }
}

/// Hands the services the store's names if they changed since last read.
fn read_names(store: &dyn Store, cache: &mut NamesCache, names: &watch::Sender<Arc<Names>>) {
    match cache.get(store) {
        Ok(current) => {
            names.send_if_modified(|n| {
                let changed = !Arc::ptr_eq(n, &current);
                *n = current;
                changed
            });
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the names; keeping the ones read before")
        }
    }
}

/// Applies `group` in one transaction (retried until it is stored) and empties it.
fn apply_group(
    store: &mut dyn Store,
    group: &mut Vec<Record>,
    applied: &mut impl FnMut(Applied),
    stop: &CancellationToken,
) -> Result<(), StoreError> {
    applied(retrying(stop, "records", group.len(), || {
        store.apply(group)
    })?);
    group.clear();
    Ok(())
}

fn write_state(
    store: &mut dyn Store,
    w: StateWrite,
    stop: &CancellationToken,
) -> Result<(), StoreError> {
    match w {
        StateWrite::Meetings(rows, fence) => fenced(retrying(stop, "meetings", rows.len(), || {
            store.save_meetings(&rows, fence.as_ref())
        })),
        StateWrite::Alarms(alarms, fence) => fenced(retrying(stop, "alarms", alarms.len(), || {
            store.save_alarms(&alarms, fence.as_ref())
        })),
        StateWrite::Rollouts(rows, sites, fence) => {
            fenced(retrying(stop, "rollouts", rows.len() + sites.len(), || {
                store.save_rollouts(&rows, &sites, fence.as_ref())
            }))
        }
        StateWrite::RetireMeeting(id) => {
            retrying(stop, "meetings", 1, || store.retire_meeting(&id))
        }
        StateWrite::DropBefore(cut_ms) => {
            // Once: the next round tries again anyway.
            match store.drop_before(cut_ms) {
                Ok(n) => tracing::info!(dropped = n, cut_ms, "old history dropped (--retain)"),
                Err(e) => tracing::error!(error = %e, "cannot drop old history (--retain)"),
            }
            Ok(())
        }
        StateWrite::Flush(done) => {
            settle(store);
            let _ = done.send(());
            Ok(())
        }
        StateWrite::Written(done) => {
            let _ = done.send(());
            Ok(())
        }
    }
}

/// Brings what the store defers up to date; a failure is warned of (the next time tries again).
fn settle(store: &mut dyn Store) {
    if let Err(e) = store.settle() {
        tracing::warn!(error = %e, "cannot bring the fleet view up to date yet");
    }
}

/// A write refused because its role passed on is dropped (its holder has stopped acting, or
/// soon will): not retried, not an error of the store thread.
fn fenced(result: Result<(), StoreError>) -> Result<(), StoreError> {
    match result {
        Err(e @ StoreError::Fenced { .. }) => {
            tracing::warn!(error = %e, "a write of a former role holder dropped");
            Ok(())
        }
        other => other,
    }
}

/// Runs `write` until it succeeds (or its role has passed on), waiting longer after each failure (up to 10 s); once `stop`
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
            Err(e @ StoreError::Fenced { .. }) => return Err(e),
            Err(e) if !stop.is_cancelled() => {
                tracing::error!(error = %e, what, count, "store write failed; retrying in {delay:?}");
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Err(e),
        }
    }
}
