//! The outbox's slow disk work, off the caller's thread: forcing segments to stable storage,
//! replacing the state file, creating and deleting segments' directory entries. On a slow SD
//! card each of these can take a second; done by the caller they would stall the daemon's
//! event loop (the link's keep-alive, meeting control). Each outbox has a lane of its own whose
//! work is done in the order it was handed over, which keeps the outbox's crash consistency: a
//! segment's records are forced before the state that counts on them is written, and a segment
//! is deleted only after the state that no longer needs it. The lanes of every outbox in the
//! process share a few threads ([`WORKERS`]): a box has one outbox, a simulator thousands, and
//! a thread each would run out of threads. The first failure is kept and returned by the
//! outbox's next call.

use std::collections::VecDeque;
use std::fs::File;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};

use super::OutboxError;

/// Threads doing the disk work of every outbox in the process.
pub(super) const WORKERS: usize = 2;
/// Jobs a lane has done before a thread turns to the other lanes waiting.
const TURN: usize = 64;

enum Job {
    /// Force a segment's data to stable storage (a handle of its own to the open file).
    Sync(File, PathBuf),
    /// Force a directory (a created segment's entry) to stable storage.
    SyncDir(PathBuf),
    /// Replace the state file atomically and durably.
    State(PathBuf, Vec<u8>),
    /// Delete a segment no record needs any more.
    Remove(PathBuf),
    /// Answer once everything before it is done.
    Done(mpsc::Sender<()>),
    /// Stand still until told (a disk that hangs, for tests).
    #[cfg(test)]
    Stall(mpsc::Receiver<()>),
}

impl Job {
    fn run(self) -> Result<(), OutboxError> {
        match self {
            Job::Sync(file, path) => file.sync_data().map_err(io(path)),
            Job::SyncDir(dir) => File::open(&dir).and_then(|d| d.sync_all()).map_err(io(dir)),
            Job::State(path, bytes) => crate::atomic::write(&path, &bytes).map_err(io(path)),
            Job::Remove(path) => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(path)(e)),
                _ => Ok(()),
            },
            Job::Done(answer) => {
                let _ = answer.send(());
                Ok(())
            }
            #[cfg(test)]
            Job::Stall(until) => {
                let _ = until.recv();
                Ok(())
            }
        }
    }
}

/// One outbox's work: its jobs in order, whether a thread has the lane (running it or due to),
/// and the first failure.
#[derive(Default)]
struct Lane {
    queue: Mutex<Queue>,
    failed: Mutex<Option<OutboxError>>,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    scheduled: bool,
}

impl Lane {
    /// Does up to [`TURN`] jobs; true if more are left (the lane stays scheduled).
    fn work(&self) -> bool {
        for _ in 0..TURN {
            let job = {
                let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
                match q.jobs.pop_front() {
                    Some(job) => job,
                    None => {
                        q.scheduled = false;
                        return false;
                    }
                }
            };
            if let Err(e) = job.run() {
                let mut failed = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
                failed.get_or_insert(e);
            }
        }
        true
    }
}

/// The threads, and the lanes waiting for one.
struct Pool {
    ready: Mutex<VecDeque<Arc<Lane>>>,
    wake: Condvar,
    /// Threads started (none: the system refused them all).
    workers: usize,
}

impl Pool {
    /// The process's pool, its threads started on first use.
    fn get() -> Result<&'static Pool, OutboxError> {
        static POOL: OnceLock<Pool> = OnceLock::new();
        let pool = POOL.get_or_init(|| {
            let mut pool = Pool {
                ready: Mutex::new(VecDeque::new()),
                wake: Condvar::new(),
                workers: 0,
            };
            // The threads wait for the pool to be in place.
            pool.workers = (0..WORKERS)
                .filter(|_| {
                    std::thread::Builder::new()
                        .name("outbox-disk".into())
                        .spawn(|| POOL.wait().serve())
                        .is_ok()
                })
                .count();
            pool
        });
        if pool.workers == 0 {
            return Err(OutboxError::Io {
                path: PathBuf::from("outbox-disk threads"),
                source: std::io::Error::other("the system refused every thread"),
            });
        }
        Ok(pool)
    }

    fn serve(&self) {
        loop {
            let lane = {
                let mut ready = self.ready.lock().unwrap_or_else(PoisonError::into_inner);
                loop {
                    match ready.pop_front() {
                        Some(lane) => break lane,
                        None => {
                            ready = self
                                .wake
                                .wait(ready)
                                .unwrap_or_else(PoisonError::into_inner)
                        }
                    }
                }
            };
            if lane.work() {
                self.schedule(lane);
            }
        }
    }

    fn schedule(&self, lane: Arc<Lane>) {
        self.ready
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(lane);
        self.wake.notify_one();
    }
}

/// An outbox's lane in the process's pool.
pub(super) struct Disk {
    lane: Arc<Lane>,
    pool: &'static Pool,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk").finish_non_exhaustive()
    }
}

fn io(path: PathBuf) -> impl FnOnce(std::io::Error) -> OutboxError {
    move |source| OutboxError::Io { path, source }
}

impl Disk {
    pub(super) fn start() -> Result<Disk, OutboxError> {
        Ok(Disk {
            lane: Arc::new(Lane::default()),
            pool: Pool::get()?,
        })
    }

    /// The first failure of the work handed over so far, if any (returned once).
    pub(super) fn check(&self) -> Result<(), OutboxError> {
        match self
            .lane
            .failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn hand(&self, job: Job) -> Result<(), OutboxError> {
        self.check()?;
        self.push(job);
        Ok(())
    }

    /// Queues `job` on the lane, and the lane for a thread if none has it.
    fn push(&self, job: Job) {
        let idle = {
            let mut q = self
                .lane
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            q.jobs.push_back(job);
            !std::mem::replace(&mut q.scheduled, true)
        };
        if idle {
            self.pool.schedule(self.lane.clone());
        }
    }

    /// Forces `file` (the segment at `path`) to stable storage.
    pub(super) fn sync(&self, file: &File, path: &std::path::Path) -> Result<(), OutboxError> {
        let handle = file.try_clone().map_err(io(path.to_owned()))?;
        self.hand(Job::Sync(handle, path.to_owned()))
    }

    pub(super) fn sync_dir(&self, dir: &std::path::Path) -> Result<(), OutboxError> {
        self.hand(Job::SyncDir(dir.to_owned()))
    }

    pub(super) fn state(&self, path: PathBuf, bytes: Vec<u8>) -> Result<(), OutboxError> {
        self.hand(Job::State(path, bytes))
    }

    pub(super) fn remove(&self, path: PathBuf) -> Result<(), OutboxError> {
        self.hand(Job::Remove(path))
    }

    /// Waits until everything handed over so far is done, and returns its first failure.
    pub(super) fn settle(&self) -> Result<(), OutboxError> {
        let (answer, done) = mpsc::channel();
        self.hand(Job::Done(answer))?;
        let _ = done.recv();
        self.check()
    }
}

#[cfg(test)]
impl Disk {
    /// Makes the disk hang until the returned sender is dropped.
    pub(super) fn stall(&self) -> mpsc::Sender<()> {
        let (resume, until) = mpsc::channel();
        let _ = self.hand(Job::Stall(until));
        resume
    }
}

impl Drop for Disk {
    /// What was handed over is done before the outbox is gone (a reopen finds it on disk).
    fn drop(&mut self) {
        let (answer, done) = mpsc::channel();
        self.push(Job::Done(answer));
        let _ = done.recv();
    }
}
