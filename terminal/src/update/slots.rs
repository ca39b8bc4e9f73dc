//! The box's update directory (`<data_dir>/update`): the slot table, the two install slots,
//! the offer being worked on and its partial download.
//!
//! ```text
//! update/slots.json        the SlotTable (what is committed, what is on trial)
//! update/slots/a/, b/      an unpacked release each (usr/bin/cuntong-terminal, …)
//! update/offer             the offer in progress (survives restarts)
//! update/download/<sha256>.part
//! ```
//!
//! Every file is replaced atomically, so a power cut leaves the old table or the new one.

use std::path::{Path, PathBuf};
use std::process::Command;

use cuntong_core::update::{Manifest, Offer, Slot, SlotTable};

use super::{UpdateError, hex};

/// Where a slot's build keeps the daemon.
const BINARY: &str = "usr/bin/cuntong-terminal";

/// The update directory of one box.
#[derive(Clone, Debug)]
pub struct UpdateDir {
    dir: PathBuf,
}

impl UpdateDir {
    pub fn new(data_dir: &Path) -> UpdateDir {
        UpdateDir {
            dir: data_dir.join("update"),
        }
    }

    fn table_path(&self) -> PathBuf {
        self.dir.join("slots.json")
    }

    /// The slot table; none yet is an empty one (the packaged build runs).
    pub fn table(&self) -> Result<SlotTable, UpdateError> {
        let path = self.table_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| UpdateError::File {
                path,
                detail: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SlotTable::default()),
            Err(e) => Err(UpdateError::file(&path)(e)),
        }
    }

    pub fn save_table(&self, table: &SlotTable) -> Result<(), UpdateError> {
        let path = self.table_path();
        std::fs::create_dir_all(&self.dir).map_err(UpdateError::file(&self.dir))?;
        let bytes = serde_json::to_vec_pretty(table).map_err(|e| UpdateError::File {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        crate::atomic::write(&path, &bytes).map_err(UpdateError::file(&path))
    }

    /// A slot's unpacked tree.
    pub fn slot_dir(&self, slot: Slot) -> PathBuf {
        self.dir.join("slots").join(slot.as_str())
    }

    /// The daemon of the build in `slot`.
    pub fn binary(&self, slot: Slot) -> PathBuf {
        self.slot_dir(slot).join(BINARY)
    }

    /// The partial (or complete) download of a release's artifact.
    pub fn partial(&self, manifest: &Manifest) -> PathBuf {
        self.dir
            .join("download")
            .join(format!("{}.part", hex(&manifest.sha256)))
    }

    fn offer_path(&self) -> PathBuf {
        self.dir.join("offer")
    }

    /// The offer in progress, if any (an unreadable one is dropped: central offers again).
    pub fn offer(&self) -> Option<Offer> {
        let bytes = std::fs::read(self.offer_path()).ok()?;
        cuntong_core::envelope::decode(&bytes).ok()
    }

    pub fn save_offer(&self, offer: &Offer) -> Result<(), UpdateError> {
        let path = self.offer_path();
        std::fs::create_dir_all(&self.dir).map_err(UpdateError::file(&self.dir))?;
        let bytes = cuntong_core::envelope::encode(offer)
            .map_err(|e| UpdateError::Malformed(e.to_string()))?;
        crate::atomic::write(&path, &bytes).map_err(UpdateError::file(&path))
    }

    /// Forgets the offer in progress and every partial download.
    pub fn clear_offer(&self) {
        let _ = std::fs::remove_file(self.offer_path());
        let _ = std::fs::remove_dir_all(self.dir.join("download"));
    }

    /// Unpacks a verified terminal package into `slot`, replacing what was there. The slot
    /// is complete or absent: the package is unpacked beside it and renamed into place.
    pub fn install(&self, artifact: &Path, slot: Slot) -> Result<(), UpdateError> {
        let target = self.slot_dir(slot);
        let parent = self.dir.join("slots");
        let staging = parent.join(format!("{}.new", slot.as_str()));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(UpdateError::file(&staging))?;
        let out = Command::new("dpkg-deb")
            .arg("--extract")
            .arg(artifact)
            .arg(&staging)
            .output()
            .map_err(|e| UpdateError::Install(format!("dpkg-deb: {e}")))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(UpdateError::Install(format!(
                "dpkg-deb --extract: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let binary = staging.join(BINARY);
        let runnable = std::fs::metadata(&binary).is_ok_and(|m| {
            use std::os::unix::fs::PermissionsExt;
            m.is_file() && m.permissions().mode() & 0o111 != 0
        });
        if !runnable {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(UpdateError::Install(format!(
                "the package has no runnable /{BINARY}"
            )));
        }
        sync_tree(&staging);
        let _ = std::fs::remove_dir_all(&target);
        std::fs::rename(&staging, &target).map_err(UpdateError::file(&target))?;
        std::fs::File::open(&parent)
            .and_then(|d| d.sync_all())
            .map_err(UpdateError::file(&parent))
    }
}

/// Flushes every file and directory under `dir` to disk, so a power cut after the rename
/// cannot leave a slot with empty files in it.
fn sync_tree(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => sync_tree(&path),
            Ok(t) if t.is_file() => {
                let _ = std::fs::File::open(&path).and_then(|f| f.sync_all());
            }
            _ => {}
        }
    }
    let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
}
