//! The outbox's slow disk work, on a thread of its own: forcing segments to stable storage,
//! replacing the state file, creating and deleting segments' directory entries. On a slow SD
//! card each of these can take a second; done by the caller they would stall the daemon's
//! event loop (the link's keep-alive, meeting control). The work is done in the order it was
//! handed over, which keeps the outbox's crash consistency: a segment's records are forced
//! before the state that counts on them is written, and a segment is deleted only after the
//! state that no longer needs it. The first failure is kept and returned by the outbox's next
//! call.

use std::fs::File;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};

use super::OutboxError;

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

/// The thread and its queue.
#[derive(Debug)]
pub(super) struct Disk {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    failed: Arc<Mutex<Option<OutboxError>>>,
}

fn io(path: PathBuf) -> impl FnOnce(std::io::Error) -> OutboxError {
    move |source| OutboxError::Io { path, source }
}

impl Disk {
    pub(super) fn start() -> Result<Disk, OutboxError> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let failed = Arc::new(Mutex::new(None));
        let failing = failed.clone();
        let thread = std::thread::Builder::new()
            .name("outbox-disk".into())
            .spawn(move || {
                for job in queue {
                    let done = match job {
                        Job::Sync(file, path) => file.sync_data().map_err(io(path)),
                        Job::SyncDir(dir) => {
                            File::open(&dir).and_then(|d| d.sync_all()).map_err(io(dir))
                        }
                        Job::State(path, bytes) => {
                            crate::atomic::write(&path, &bytes).map_err(io(path))
                        }
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
                    };
                    if let Err(e) = done {
                        let mut failed = failing.lock().unwrap_or_else(PoisonError::into_inner);
                        failed.get_or_insert(e);
                    }
                }
            })
            .map_err(io(PathBuf::from("outbox-disk thread")))?;
        Ok(Disk {
            jobs: Some(jobs),
            thread: Some(thread),
            failed,
        })
    }

    /// The first failure of the work handed over so far, if any (returned once).
    pub(super) fn check(&self) -> Result<(), OutboxError> {
        match self
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
        let gone = || OutboxError::Io {
            path: PathBuf::from("outbox-disk thread"),
            source: std::io::Error::other("the thread has stopped"),
        };
        self.jobs
            .as_ref()
            .ok_or_else(gone)?
            .send(job)
            .map_err(|_| gone())
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
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
