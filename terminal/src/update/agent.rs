//! The daemon's side of updates: takes an offer through download, verification and install,
//! reports every stage as an event, asks for the restart into the trial, and commits the
//! trial once this build has proven itself healthy.
//!
//! The work runs on its own task and talks to the daemon through [`Note`]s, so the daemon's
//! loop never waits on a download. An offer in progress is saved, so a restart resumes it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cuntong_core::backoff::Backoff;
use cuntong_core::envelope::Event;
use cuntong_core::update::{Manifest, Offer, Pace, Stage};
use tokio::sync::{mpsc, watch};

use super::download::{self, Download, Interrupted};
use super::slots::UpdateDir;
use super::{UpdateConfig, UpdateError, release};

/// How often a download reports its progress, at most.
const PROGRESS_EVERY: Duration = Duration::from_secs(60);
/// Retries of a download that lost its link: from 5 s to 5 min.
const RETRY: Backoff = Backoff {
    min: Duration::from_secs(5),
    max: Duration::from_secs(300),
};

/// What the update task tells the daemon.
#[derive(Debug)]
pub enum Note {
    /// Record this event (an [`Event::Update`]).
    Report(Event),
    /// The new build is installed on trial: stop cleanly and start again through the launcher.
    Restart,
}

/// The box's updates, owned by the daemon.
#[derive(Debug)]
pub struct Updates {
    cfg: UpdateConfig,
    key: Vec<u8>,
    dir: UpdateDir,
    ca: Option<PathBuf>,
    pace: watch::Sender<Pace>,
    notes: mpsc::Sender<Note>,
    /// The offer being worked on and the flag that stops its task.
    running: Option<(u64, Arc<AtomicBool>)>,
    /// Set while this build is on trial and has not committed.
    on_trial: bool,
}

impl Updates {
    /// Reads the release key. `ca` is the fleet CA for `https://` sources; `on_trial`: this
    /// build was started on trial.
    pub fn open(
        cfg: UpdateConfig,
        data_dir: &std::path::Path,
        ca: Option<PathBuf>,
        on_trial: bool,
    ) -> Result<(Updates, mpsc::Receiver<Note>), crate::commands::GuardError> {
        let key = crate::commands::read_public_key(&cfg.key)?;
        let (notes, rx) = mpsc::channel(64);
        let (pace, _) = watch::channel(Pace::Free);
        Ok((
            Updates {
                cfg,
                key,
                dir: UpdateDir::new(data_dir),
                ca,
                pace,
                notes,
                running: None,
                on_trial,
            },
            rx,
        ))
    }

    /// At start: the events for how the last trial ended (if not yet reported), and the
    /// offer in progress resumed.
    pub fn on_start(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        if let Ok(mut table) = self.dir.table() {
            if let Some(o) = table.outcome.take() {
                if o.stage == Stage::RolledBack {
                    tracing::warn!(version = %o.version, reason = %o.reason, "the new build was rolled back");
                    events.push(update_event(o.rollout, &o.version, o.stage, 0, o.reason));
                    if self.dir.save_table(&table).is_err() {
                        events.clear();
                    }
                    self.dir.clear_offer();
                } else {
                    table.outcome = Some(o);
                }
            }
            if table.trial.is_some() && !self.on_trial {
                // Started by hand outside the launcher while a trial is pending: leave it.
                tracing::info!("a new build is on trial; it starts through the launcher");
            }
        }
        if !self.on_trial
            && let Some(offer) = self.dir.offer()
            && let Err(e) = self.offer(offer)
        {
            tracing::warn!(error = %e, "the saved update offer cannot resume");
        }
        events
    }

    /// True while this build is on trial: the daemon calls [`healthy`](Self::healthy) once it
    /// has reached the broker and central confirmed what it sent since it started.
    pub fn on_trial(&self) -> bool {
        self.on_trial
    }

    /// This build passed its health check: commit it. Returns the event to report.
    pub fn healthy(&mut self) -> Option<Event> {
        if !self.on_trial {
            return None;
        }
        self.on_trial = false;
        let mut table = match self.dir.table() {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the slot table to commit");
                return None;
            }
        };
        let trial = table.trial.clone()?;
        if !table.commit() {
            return None;
        }
        table.outcome = None;
        if let Err(e) = self.dir.save_table(&table) {
            tracing::error!(error = %e, "cannot commit the new build");
            return None;
        }
        self.dir.clear_offer();
        tracing::info!(version = %trial.installed.version, "new build healthy: committed");
        Some(update_event(
            trial.installed.rollout,
            &trial.installed.version,
            Stage::Committed,
            0,
            String::new(),
        ))
    }

    /// Meetings set the pace of the work in progress.
    pub fn set_pace(&self, pace: Pace) {
        self.pace
            .send_if_modified(|p| std::mem::replace(p, pace) != pace);
    }

    /// Starts on an offer (a signed command's): checks its signature now, then works on it in
    /// the background. The answer is what the command result says.
    pub fn offer(&mut self, offer: Offer) -> Result<String, OfferRefused> {
        let manifest = release::verify(&offer.release, &self.key)?;
        if self.on_trial {
            return Err(OfferRefused::OnTrial);
        }
        if let Some((rollout, stop)) = &self.running {
            if *rollout == offer.rollout && !stop.load(Ordering::Relaxed) {
                return Ok(format!("already working on {}", manifest.version));
            }
            stop.store(true, Ordering::Relaxed);
        }
        if offer.sources.is_empty() {
            return Err(OfferRefused::NoSource);
        }
        self.dir.save_offer(&offer)?;
        let stop = Arc::new(AtomicBool::new(false));
        self.running = Some((offer.rollout, stop.clone()));
        let work = Work {
            offer,
            manifest: manifest.clone(),
            dir: self.dir.clone(),
            ca: self.ca.clone(),
            max_rate: self.cfg.max_rate,
            pace: self.pace.subscribe(),
            notes: self.notes.clone(),
            stop,
        };
        tokio::spawn(work.run());
        Ok(format!(
            "fetching {} ({} bytes)",
            manifest.version, manifest.size
        ))
    }
}

/// Why the box does not take an update offer.
#[derive(Debug, thiserror::Error)]
pub enum OfferRefused {
    /// Its signature or manifest does not hold, or it cannot be saved.
    #[error(transparent)]
    Release(#[from] UpdateError),
    #[error("a new build is on trial; offer again once it is committed")]
    OnTrial,
    #[error("the offer names no source")]
    NoSource,
}

fn update_event(rollout: u64, version: &str, stage: Stage, bytes: u64, reason: String) -> Event {
    Event::Update {
        rollout,
        version: version.to_owned(),
        stage,
        bytes,
        reason,
    }
}

/// One offer's journey, on its own task.
struct Work {
    offer: Offer,
    manifest: Manifest,
    dir: UpdateDir,
    ca: Option<PathBuf>,
    max_rate: u64,
    pace: watch::Receiver<Pace>,
    notes: mpsc::Sender<Note>,
    stop: Arc<AtomicBool>,
}

impl Work {
    async fn report(&self, stage: Stage, bytes: u64, reason: String) {
        let event = update_event(
            self.offer.rollout,
            &self.manifest.version,
            stage,
            bytes,
            reason,
        );
        let _ = self.notes.send(Note::Report(event)).await;
    }

    async fn run(mut self) {
        let part = self.dir.partial(&self.manifest);
        match self.fetch(&part).await {
            Ok(()) => {}
            Err(None) => return,
            Err(Some(e)) => {
                self.dir.clear_offer();
                return self.report(Stage::Failed, 0, e.to_string()).await;
            }
        }
        self.report(Stage::Downloaded, self.manifest.size, String::new())
            .await;
        let (p, m) = (part.clone(), self.manifest.clone());
        let checked = tokio::task::spawn_blocking(move || release::check_artifact(&p, &m)).await;
        match checked {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                // Altered or corrupted: never installed, and fetched afresh if offered again.
                self.dir.clear_offer();
                return self.report(Stage::Failed, 0, e.to_string()).await;
            }
            Err(e) => return self.report(Stage::Failed, 0, e.to_string()).await,
        }
        self.report(Stage::Verified, self.manifest.size, String::new())
            .await;
        // Neither install nor restart during a meeting or in the hour before one.
        while !self.pace.borrow_and_update().may_install() {
            if self.stop.load(Ordering::Relaxed) || self.pace.changed().await.is_err() {
                return;
            }
        }
        if self.stop.load(Ordering::Relaxed) {
            return;
        }
        self.report(Stage::Installing, self.manifest.size, String::new())
            .await;
        let (dir, p, version, rollout) = (
            self.dir.clone(),
            part.clone(),
            self.manifest.version.clone(),
            self.offer.rollout,
        );
        let installed = tokio::task::spawn_blocking(move || -> Result<(), UpdateError> {
            let mut table = dir.table()?;
            dir.install(&p, table.inactive())?;
            table.outcome = None;
            table.begin_trial(version, rollout, crate::link::unix_ms());
            dir.save_table(&table)
        })
        .await;
        match installed {
            Ok(Ok(())) => {
                self.report(Stage::Restarting, self.manifest.size, String::new())
                    .await;
                let _ = self.notes.send(Note::Restart).await;
            }
            Ok(Err(e)) => {
                self.dir.clear_offer();
                self.report(Stage::Failed, 0, e.to_string()).await;
            }
            Err(e) => self.report(Stage::Failed, 0, e.to_string()).await,
        }
    }

    /// Downloads until complete; retries a lost link with back-off. `Err(None)`: stopped.
    async fn fetch(&mut self, part: &std::path::Path) -> Result<(), Option<UpdateError>> {
        let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
        self.report(Stage::Downloading, have, String::new()).await;
        let mut attempt = 0u32;
        let mut last_cause: Option<String> = None;
        loop {
            let (notes, offer, manifest) = (
                self.notes.clone(),
                self.offer.clone(),
                self.manifest.clone(),
            );
            let (part_c, ca, stop, pace, max_rate) = (
                part.to_owned(),
                self.ca.clone(),
                self.stop.clone(),
                self.pace.clone(),
                self.max_rate,
            );
            let result = tokio::task::spawn_blocking(move || {
                let d = Download {
                    sources: &offer.sources,
                    size: manifest.size,
                    part: &part_c,
                    ca: ca.as_deref(),
                };
                let mut last = std::time::Instant::now();
                let mut progress = |have: u64| {
                    if last.elapsed() >= PROGRESS_EVERY {
                        last = std::time::Instant::now();
                        let event = update_event(
                            offer.rollout,
                            &manifest.version,
                            Stage::Downloading,
                            have,
                            String::new(),
                        );
                        let _ = notes.try_send(Note::Report(event));
                    }
                };
                download::fetch(&d, &|| pace.borrow().rate(max_rate), &stop, &mut progress)
            })
            .await;
            match result {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(Interrupted::Stopped)) => return Err(None),
                Ok(Err(Interrupted::Failed(e))) => {
                    let wait = RETRY.delay(attempt, rand::random());
                    attempt = attempt.saturating_add(1);
                    tracing::warn!(error = %e, retry_in = ?wait, "update download interrupted");
                    // Central sees why a download stands still: once a cause, not once a retry.
                    let reason = format!("retrying in {}s: {e}", wait.as_secs());
                    let cause = e.to_string();
                    if last_cause.as_deref() != Some(cause.as_str()) {
                        let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
                        self.report(Stage::Downloading, have, reason).await;
                        last_cause = Some(cause);
                    }
                    tokio::time::sleep(wait).await;
                    if self.stop.load(Ordering::Relaxed) {
                        return Err(None);
                    }
                }
                Err(e) => return Err(Some(UpdateError::Install(e.to_string()))),
            }
        }
    }
}
