//! Durable sequence counters, one per stream.
//!
//! Sequence numbers are contiguous from 1 per terminal and stream, across restarts, so any gap
//! central sees is a real loss. The next number is written to disk (write, fsync, rename) before
//! the number is used, so a crash can never hand out the same number twice.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use cuntong_core::envelope::Stream;

/// Why the counters could not be read or saved.
#[derive(Debug, thiserror::Error)]
pub enum SeqError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: line {line}: {problem}")]
    Corrupt {
        path: PathBuf,
        line: usize,
        problem: String,
    },
}

/// The next sequence number of each stream, kept in `<dir>/seq`.
#[derive(Debug)]
pub struct SeqStore {
    path: PathBuf,
    next: BTreeMap<Stream, u64>,
}

impl SeqStore {
    /// Opens (or starts) the counters in `dir`, creating the directory if needed.
    pub fn open(dir: &Path) -> Result<SeqStore, SeqError> {
        let io = |source| SeqError::Io {
            path: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let path = dir.join("seq");
        let mut next: BTreeMap<Stream, u64> = Stream::ALL.iter().map(|s| (*s, 1)).collect();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                for (i, line) in text.lines().enumerate() {
                    let corrupt = |problem: String| SeqError::Corrupt {
                        path: path.clone(),
                        line: i + 1,
                        problem,
                    };
                    let Some((name, value)) = line.split_once(' ') else {
                        return Err(corrupt(format!(
                            "expected \"<stream> <next>\", found {line:?}"
                        )));
                    };
                    let stream = Stream::ALL
                        .into_iter()
                        .find(|s| s.as_str() == name)
                        .ok_or_else(|| corrupt(format!("unknown stream {name:?}")))?;
                    let n: u64 =
                        value.parse().ok().filter(|&n| n >= 1).ok_or_else(|| {
                            corrupt(format!("{value:?} is not a sequence number"))
                        })?;
                    next.insert(stream, n);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(SeqError::Io { path, source }),
        }
        Ok(SeqStore { path, next })
    }

    /// The number the next message of `stream` will get.
    pub fn peek(&self, stream: Stream) -> u64 {
        self.next.get(&stream).copied().unwrap_or(1)
    }

    /// Takes the next number of `stream`, saving the counter first.
    pub fn take(&mut self, stream: Stream) -> Result<u64, SeqError> {
        let seq = self.peek(stream);
        self.next.insert(stream, seq + 1);
        if let Err(e) = self.save() {
            self.next.insert(stream, seq);
            return Err(e);
        }
        Ok(seq)
    }

    fn save(&self) -> Result<(), SeqError> {
        let io = |source| SeqError::Io {
            path: self.path.clone(),
            source,
        };
        let tmp = self.path.with_extension("tmp");
        let mut text = String::new();
        for (s, n) in &self.next {
            text.push_str(&format!("{} {n}\n", s.as_str()));
        }
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_contiguous_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SeqStore::open(dir.path()).unwrap();
        assert_eq!(s.take(Stream::Telemetry).unwrap(), 1);
        assert_eq!(s.take(Stream::Telemetry).unwrap(), 2);
        assert_eq!(s.take(Stream::Events).unwrap(), 1);
        drop(s);
        let mut s = SeqStore::open(dir.path()).unwrap();
        assert_eq!(s.take(Stream::Telemetry).unwrap(), 3);
        assert_eq!(s.take(Stream::Events).unwrap(), 2);
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("seq"), "telemetry 5\nevents x\n").unwrap();
        let err = SeqStore::open(dir.path()).unwrap_err().to_string();
        assert!(
            err.ends_with("seq: line 2: \"x\" is not a sequence number"),
            "{err}"
        );
    }
}
