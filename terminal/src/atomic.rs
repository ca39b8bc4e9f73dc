//! Replacing a small state file so that a power cut leaves either the whole old content or the
//! whole new content, and so that once the write returns the new content survives a power cut.
//!
//! The steps: write the content to `<file>.tmp` in the same directory, fsync it, rename it over
//! the file, fsync the directory. Without the first fsync a cut after the rename can leave an
//! empty file; without the second the rename itself can be undone, bringing an old version back
//! (an old command nonce window would let a replayed command run twice). Every small state file
//! of the terminal (the nonce window, the file fingerprints, the outbox state, remotely changed
//! configuration) and of the fleet CA (inventory, CRL, keys) is written through here.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Who may read the new file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The permissions of the file it replaces; a new file gets the usual ones (umask).
    Keep,
    /// Owner only (0600), whatever the file had: for private keys.
    Secret,
}

/// Replaces `path` with `bytes` atomically and durably, keeping its permissions.
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace(&mut Disk::default(), path, bytes, Mode::Keep)
}

/// Replaces `path` with `bytes` atomically and durably, readable by its owner only.
pub fn write_secret(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace(&mut Disk::default(), path, bytes, Mode::Secret)
}

/// The temporary file beside `path`: `<path>.tmp`.
fn temp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// The four steps of a replacement, separate so that tests can cut power between any two.
pub(crate) trait Steps {
    /// Creates (or truncates) `tmp` and writes `bytes` to it.
    fn write_temp(&mut self, tmp: &Path, bytes: &[u8], mode: Mode, like: &Path) -> io::Result<()>;
    /// Forces the temporary file's content to disk.
    fn sync_temp(&mut self) -> io::Result<()>;
    /// Renames `tmp` over `path`.
    fn rename(&mut self, tmp: &Path, path: &Path) -> io::Result<()>;
    /// Forces the directory (the rename) to disk.
    fn sync_dir(&mut self, dir: &Path) -> io::Result<()>;
}

pub(crate) fn replace(
    steps: &mut impl Steps,
    path: &Path,
    bytes: &[u8],
    mode: Mode,
) -> io::Result<()> {
    let tmp = temp_path(path);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    steps.write_temp(&tmp, bytes, mode, path)?;
    steps.sync_temp()?;
    steps.rename(&tmp, path)?;
    steps.sync_dir(dir)
}

/// The real filesystem.
#[derive(Default)]
struct Disk {
    file: Option<std::fs::File>,
}

impl Steps for Disk {
    fn write_temp(&mut self, tmp: &Path, bytes: &[u8], mode: Mode, like: &Path) -> io::Result<()> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        // A temporary file left by a crash may carry other permissions; start afresh.
        match std::fs::remove_file(tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if mode == Mode::Secret { 0o600 } else { 0o666 })
            .open(tmp)?;
        if mode == Mode::Keep
            && let Ok(meta) = std::fs::metadata(like)
        {
            f.set_permissions(std::fs::Permissions::from_mode(
                meta.permissions().mode() & 0o7777,
            ))?;
        }
        f.write_all(bytes)?;
        self.file = Some(f);
        Ok(())
    }

    fn sync_temp(&mut self) -> io::Result<()> {
        match self.file.take() {
            Some(f) => f.sync_all(),
            None => Ok(()),
        }
    }

    fn rename(&mut self, tmp: &Path, path: &Path) -> io::Result<()> {
        std::fs::rename(tmp, path)
    }

    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }
}

/// A directory as a power cut sees it, for tests: what reached the disk and what is only in the
/// cache. Power can be cut after any number of steps; [`Sim::after_cut`] then lists every state
/// the disk may come back in.
#[cfg(test)]
pub(crate) mod sim {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Clone)]
    struct Inode {
        durable: Vec<u8>,
        cached: Vec<u8>,
    }

    pub(crate) struct Sim {
        inodes: Vec<Inode>,
        durable: BTreeMap<PathBuf, usize>,
        cached: BTreeMap<PathBuf, usize>,
        open: Option<usize>,
        /// Steps left before the power goes.
        power: usize,
    }

    impl Sim {
        /// A directory holding `path` with `content` (durably), or nothing; power is cut
        /// after `steps` steps.
        pub(crate) fn new(path: &Path, content: Option<&[u8]>, steps: usize) -> Sim {
            let mut sim = Sim {
                inodes: Vec::new(),
                durable: BTreeMap::new(),
                cached: BTreeMap::new(),
                open: None,
                power: steps,
            };
            if let Some(c) = content {
                sim.inodes.push(Inode {
                    durable: c.to_vec(),
                    cached: c.to_vec(),
                });
                sim.durable.insert(path.to_owned(), 0);
                sim.cached.insert(path.to_owned(), 0);
            }
            sim
        }

        fn step(&mut self) -> io::Result<()> {
            if self.power == 0 {
                return Err(io::Error::other("power cut"));
            }
            self.power -= 1;
            Ok(())
        }

        /// Every content `path` may have after the power comes back: the directory as synced
        /// or as cached, each file as synced or, if it was not, as cached or torn half-way.
        pub(crate) fn after_cut(&self, path: &Path) -> Vec<Option<Vec<u8>>> {
            let mut out = Vec::new();
            for dir in [&self.durable, &self.cached] {
                let Some(&ino) = dir.get(path) else {
                    out.push(None);
                    continue;
                };
                let i = &self.inodes[ino];
                out.push(Some(i.durable.clone()));
                if i.cached != i.durable {
                    out.push(Some(i.cached.clone()));
                    out.push(Some(i.cached[..i.cached.len() / 2].to_vec()));
                }
            }
            out
        }
    }

    impl Steps for Sim {
        fn write_temp(&mut self, tmp: &Path, bytes: &[u8], _: Mode, _: &Path) -> io::Result<()> {
            self.step()?;
            self.inodes.push(Inode {
                durable: Vec::new(),
                cached: bytes.to_vec(),
            });
            self.open = Some(self.inodes.len() - 1);
            self.cached.insert(tmp.to_owned(), self.inodes.len() - 1);
            Ok(())
        }

        fn sync_temp(&mut self) -> io::Result<()> {
            self.step()?;
            if let Some(i) = self.open.take() {
                self.inodes[i].durable = self.inodes[i].cached.clone();
            }
            Ok(())
        }

        fn rename(&mut self, tmp: &Path, path: &Path) -> io::Result<()> {
            self.step()?;
            let ino = self
                .cached
                .remove(tmp)
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
            self.cached.insert(path.to_owned(), ino);
            Ok(())
        }

        fn sync_dir(&mut self, _: &Path) -> io::Result<()> {
            self.step()?;
            self.durable = self.cached.clone();
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sim::Sim;
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const STEPS: usize = 4;

    #[test]
    fn a_power_cut_at_any_step_leaves_the_whole_old_or_new_file_and_a_finished_write_the_new() {
        let path = Path::new("/data/commands.state");
        let new = b"1 100\n2 200\n3 300\n".as_slice();
        for old in [Some(b"1 100\n2 200\n".as_slice()), None] {
            for cut in 0..=STEPS {
                let mut sim = Sim::new(path, old, cut);
                let done = replace(&mut sim, path, new, Mode::Keep);
                assert_eq!(done.is_ok(), cut == STEPS, "cut after {cut} steps");
                for found in sim.after_cut(path) {
                    let found = found.as_deref();
                    if done.is_ok() {
                        assert_eq!(found, Some(new), "a finished write is durable");
                    } else {
                        assert!(
                            found == old || found == Some(new),
                            "cut after {cut} steps left {found:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_replaced_file_keeps_its_permissions_and_a_secret_is_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("terminal.toml");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        // A temporary file a crash left behind, readable by all, is not reused as it is.
        std::fs::write(temp_path(&path), "stale").unwrap();
        std::fs::set_permissions(temp_path(&path), std::fs::Permissions::from_mode(0o644)).unwrap();
        write(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o640);
        assert!(!temp_path(&path).exists());
        write_secret(&path, b"key").unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(std::fs::read(&path).unwrap(), b"key");
    }

    #[test]
    fn a_write_that_cannot_create_its_temporary_file_fails_and_leaves_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("files.sha256");
        std::fs::write(&path, "old").unwrap();
        std::fs::create_dir(temp_path(&path)).unwrap();
        assert!(write(&path, b"new").is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
    }
}
