//! Over-the-air updates on the box: checking a release ([`release`]), fetching it in resumable,
//! rate-capped pieces ([`download`]), the two install slots and their table ([`slots`]), the
//! start-up step that picks the slot and guards a trial ([`launcher`]), and the task that takes
//! an offer through its stages while the daemon runs ([`agent`]).
//!
//! The rules (what a start runs, when a trial is rolled back, how meetings slow an update) are
//! in [`cuntong_core::update`]; this module does the files, the network and the processes.

pub mod agent;
pub mod download;
pub mod launcher;
pub mod release;
pub mod slots;

use std::path::PathBuf;

use cuntong_core::update::TrialRules;

/// `[update]` in `terminal.toml`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdateConfig {
    /// The fleet's Ed25519 public release key (64 hex digits, `release.pub` in the bundle).
    /// Without it the box installs nothing.
    pub key: PathBuf,
    /// The download rate cap, bytes per second.
    pub max_rate: u64,
    /// How a new build must prove itself.
    pub trial: TrialRules,
}

/// The download cap when the config names none: 64 KiB/s, a fraction of a rural link.
pub const DEFAULT_MAX_RATE: u64 = 64 * 1024;

/// Why an update step failed. The text goes to central in the box's report.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("release: {0}")]
    Malformed(String),
    #[error("release signature does not verify with this box's release key")]
    BadSignature,
    #[error("artifact is {got} bytes, the release says {want}")]
    WrongSize { got: u64, want: u64 },
    #[error("artifact SHA-256 is {got}, the release says {want}")]
    WrongDigest { got: String, want: String },
    #[error("download from {source_url}: {detail}")]
    Link { source_url: String, detail: String },
    #[error("install: {0}")]
    Install(String),
    #[error("{path}: {detail}")]
    File { path: PathBuf, detail: String },
}

impl UpdateError {
    pub(crate) fn file(path: &std::path::Path) -> impl Fn(std::io::Error) -> UpdateError + '_ {
        move |e| UpdateError::File {
            path: path.to_owned(),
            detail: e.to_string(),
        }
    }
}

pub use crate::hex::encode as hex;
