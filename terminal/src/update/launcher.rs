//! The first thing `cuntong-terminal run` does: pick the build this start runs from the slot
//! table, before the daemon (or any thread) starts.
//!
//! - No release committed and none on trial: the packaged build runs, in this process.
//! - A committed release: this process becomes it (`exec`), keeping its pid for systemd.
//! - A release on trial: its start is counted and saved first, then it runs as a child of this
//!   (trusted) build, which waits for the trial to commit itself. If the deadline passes
//!   first, the child is stopped and the box goes back to the committed build by itself; if
//!   the child exits first, this process exits with it and the service manager's restart
//!   counts the next start. Either way a build that never proves itself cannot keep the box.
//!
//! The child is told what it is through the environment: [`SLOT_ENV`], [`RELEASE_ENV`] and,
//! for a trial, [`TRIAL_ENV`]; [`LAUNCHER_ENV`] names this program, to restart through.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use cuntong_core::update::{Boot, Slot, SlotTable, TrialRules};

use super::slots::UpdateDir;

/// Set for a build started from a slot: `a` or `b`. Such a build never launches another.
pub const SLOT_ENV: &str = "CUNTONG_SLOT";
/// The release version of a slot's build.
pub const RELEASE_ENV: &str = "CUNTONG_RELEASE";
/// Set (to the deadline, Unix ms) for a build on trial.
pub const TRIAL_ENV: &str = "CUNTONG_TRIAL";
/// The launcher's own path: a build restarts by running it again.
pub const LAUNCHER_ENV: &str = "CUNTONG_LAUNCHER";

/// Which build this daemon is, as the launcher started it: the daemon reports its version
/// from it and, on trial, commits itself once healthy. A daemon in a process of its own reads
/// it from the environment ([`Launched::from_env`]); simulated boxes sharing a process are
/// each given theirs ([`Launched::in_process`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Launched {
    /// The release a slot's build runs; `None` for the packaged build.
    pub release: Option<String>,
    /// The build is on trial.
    pub trial: bool,
}

impl Launched {
    /// As the launcher told this process.
    pub fn from_env() -> Launched {
        Launched {
            release: std::env::var(RELEASE_ENV).ok().filter(|v| !v.is_empty()),
            trial: std::env::var_os(TRIAL_ENV).is_some(),
        }
    }

    /// The launcher's decision for a box whose builds all run in this process (a simulated
    /// box): the start is counted in the slot table as for a real one, and nothing is run.
    pub fn in_process(data_dir: &Path, rules: TrialRules) -> Launched {
        let dir = UpdateDir::new(data_dir);
        let Ok(mut table) = dir.table() else {
            return Launched::default();
        };
        let boot = table.boot(rules, crate::link::unix_ms());
        if dir.save_table(&table).is_err() {
            return Launched::default();
        }
        match boot {
            Boot::Base => Launched::default(),
            Boot::Committed(_) => Launched {
                release: table.committed.map(|c| c.version),
                trial: false,
            },
            Boot::Trial { .. } => Launched {
                release: table.trial.map(|t| t.installed.version),
                trial: true,
            },
        }
    }

    /// The version the box reports: the release, or this build's own.
    pub fn version(&self) -> String {
        self.release
            .clone()
            .unwrap_or_else(|| crate::daemon::VERSION.to_owned())
    }
}

/// What the launcher decided for this process.
#[derive(Debug)]
pub enum Launch {
    /// Run the daemon here.
    Here,
    /// A trial ran as a child and ended; exit with this.
    Exit(ExitCode),
}

/// Picks and starts this start's build; another build gets this process's arguments.
pub fn launch(data_dir: &Path, rules: TrialRules) -> Launch {
    if std::env::var_os(SLOT_ENV).is_some() {
        return Launch::Here;
    }
    let dir = UpdateDir::new(data_dir);
    loop {
        let mut table = match dir.table() {
            Ok(t) => t,
            Err(e) => {
                // Never let a damaged table keep the box down: the packaged build runs.
                tracing::error!(error = %e, "update slot table unreadable; running the packaged build");
                return Launch::Here;
            }
        };
        let boot = table.boot(rules, crate::link::unix_ms());
        if let Err(e) = dir.save_table(&table) {
            // A start that cannot be counted must not run a trial: it could loop for ever.
            tracing::error!(error = %e, "cannot save the slot table; not starting the trial");
            if matches!(boot, Boot::Trial { .. }) {
                table.roll_back(format!("the slot table cannot be saved: {e}"));
                let _ = dir.save_table(&table);
                return run_committed(&dir, &table);
            }
        }
        match boot {
            Boot::Base => return Launch::Here,
            Boot::Committed(_) => return run_committed(&dir, &table),
            Boot::Trial {
                slot,
                boot,
                deadline_ms,
            } => {
                let version = table
                    .trial
                    .as_ref()
                    .map(|t| t.installed.version.clone())
                    .unwrap_or_default();
                tracing::info!(%version, slot = slot.as_str(), boot, "starting the new build on trial");
                match supervise_trial(&dir, slot, &version, deadline_ms) {
                    Trial::Exited(code) => return Launch::Exit(code),
                    // Rolled back: the loop starts the committed build.
                    Trial::TimedOut => continue,
                }
            }
        }
    }
}

/// Becomes the committed build (returns only if it cannot be started).
fn run_committed(dir: &UpdateDir, table: &SlotTable) -> Launch {
    let Some(c) = &table.committed else {
        return Launch::Here;
    };
    let binary = dir.binary(c.slot);
    let err = slot_command(&binary, c.slot, &c.version).exec();
    tracing::error!(error = %err, binary = %binary.display(), "cannot run the committed build; running the packaged one");
    Launch::Here
}

fn slot_command(binary: &Path, slot: Slot, version: &str) -> Command {
    let mut cmd = Command::new(binary);
    cmd.args(std::env::args_os().skip(1))
        .env(SLOT_ENV, slot.as_str())
        .env(RELEASE_ENV, version)
        .env_remove(TRIAL_ENV);
    if let Ok(me) = std::env::current_exe() {
        cmd.env(LAUNCHER_ENV, me);
    }
    cmd
}

enum Trial {
    Exited(ExitCode),
    TimedOut,
}

/// Runs the trial build as a child until it exits, or until its deadline if it has not
/// committed itself by then (it is then stopped and rolled back).
fn supervise_trial(dir: &UpdateDir, slot: Slot, version: &str, deadline_ms: u64) -> Trial {
    let mut cmd = slot_command(&dir.binary(slot), slot, version);
    cmd.env(TRIAL_ENV, deadline_ms.to_string());
    // The trial pings systemd's watchdog in this process's place (the unit has
    // `NotifyAccess=all`): the watchdog is meant for whichever pid runs the daemon.
    if std::env::var("WATCHDOG_PID").is_ok_and(|p| p == std::process::id().to_string()) {
        cmd.env_remove("WATCHDOG_PID");
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let mut table = dir.table().unwrap_or_default();
            table.roll_back(format!("cannot start: {e}"));
            let _ = dir.save_table(&table);
            return Trial::TimedOut;
        }
    };
    let forward = forward_signals(child.id());
    let mut committed = false;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                drop(forward);
                let code = status.code().unwrap_or(1);
                return Trial::Exited(ExitCode::from(u8::try_from(code).unwrap_or(1)));
            }
            Ok(None) => {}
            Err(_) => return Trial::Exited(ExitCode::FAILURE),
        }
        if !committed {
            committed = dir.table().is_ok_and(|t| t.trial.is_none());
            if !committed && crate::link::unix_ms() >= deadline_ms {
                stop(&mut child);
                let mut table = dir.table().unwrap_or_default();
                if table.trial.is_some() {
                    table.roll_back(format!(
                        "{version} did not pass its health check by its deadline"
                    ));
                    let _ = dir.save_table(&table);
                    tracing::warn!(%version, "new build not healthy in time: rolled back");
                }
                return Trial::TimedOut;
            }
        }
        std::thread::sleep(Duration::from_millis(if committed { 1000 } else { 200 }));
    }
}

/// SIGTERM, then SIGKILL after 10 s.
fn stop(child: &mut std::process::Child) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32);
    if let Some(pid) = pid {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Passes SIGTERM and SIGINT on to the trial child while the guard lives, so that stopping
/// the service stops the build it runs.
fn forward_signals(child: u32) -> Option<std::thread::JoinHandle<()>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .ok()?;
    Some(std::thread::spawn(move || {
        rt.block_on(async move {
            crate::daemon::shutdown_signal().await;
            if let Some(pid) = rustix::process::Pid::from_raw(child as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        });
    }))
}

/// The program to run to restart the box's daemon through its launcher.
pub fn restart_program() -> Option<PathBuf> {
    std::env::var_os(LAUNCHER_ENV)
        .map(PathBuf::from)
        .or_else(|| std::env::current_exe().ok())
}

/// Replaces this process with a fresh start through the launcher, with the same arguments.
/// Returns only if that cannot be done.
pub fn restart(args: &[OsString]) -> std::io::Error {
    let Some(program) = restart_program() else {
        return std::io::Error::other("cannot find the program to restart");
    };
    Command::new(program)
        .args(args)
        .env_remove(SLOT_ENV)
        .env_remove(RELEASE_ENV)
        .env_remove(TRIAL_ENV)
        .env_remove(LAUNCHER_ENV)
        .exec()
}
