//! The durable outbox: every telemetry batch and event is appended here, with its sequence
//! number, before it is sent, and stays until central confirms it stored it.
//!
//! On disk: segment files `seg-<n>.log` in `<data_dir>/outbox/`, each a run of records
//!
//! ```text
//! len u32 LE · crc32 u32 LE · stream u8 · seq u64 LE · time_ms u64 LE · payload (len − 17 bytes)
//! ```
//!
//! where the CRC covers everything after it. A torn or corrupted tail is found by its CRC on
//! open: every intact record is kept, the damage is reported and cut off, and the terminal goes
//! on. A small state file (`outbox.state`, written atomically) keeps central's confirmed
//! watermarks, the drop counters, where numbering started and the highest seq numbered, so
//! sequence numbers stay contiguous across restarts even when the log is empty. A watermark is
//! never recorded beyond the highest seq numbered (central cannot have stored more); one found
//! there on open (an older version accepted a forged acknowledgement) is set back and reported.
//!
//! A new outbox (a new or replaced box, or a wiped data directory) numbers each stream from
//! the Unix time in milliseconds at its creation, not from 1: an earlier box under the same id
//! numbered below that (it would have to number more than one record a millisecond to reach
//! it), so central never takes the new box's records for ones it stored already. The caller
//! announces the start ([`OpenReport::numbering_from`]) so central's watermark can pass the
//! seqs below it, and holds the new numbering ([`Outbox::holding`]) until central agrees to it.
//! A clock that was behind makes it clash with what central holds under the id: the stream is
//! then renumbered above that ([`Outbox::renumber`]). Its records stay where they are on disk;
//! the state file says by how much the records of the segments written before are moved, so
//! the renumbering is one atomic write, and the records written after it go to new segments.
//!
//! Each record is written with one `write` as soon as it is appended, so a killed process loses
//! nothing the outbox accepted; `fsync` follows every record or at most every interval
//! ([`SyncPolicy`]), which bounds what a power cut can take. The fsyncs, the state file's
//! replacements and the deletion of spent segments are done in order by a thread of the
//! outbox's own, so a slow SD card never stalls the caller; with [`SyncPolicy::EveryRecord`]
//! an append waits for its fsync.
//!
//! The outbox is bounded by a byte budget. When an append exceeds it, the oldest segments are
//! dropped: their telemetry is lost and the dropped ranges are returned so the caller can
//! report them (counted, persisted, never silent); their events are carried over, because an
//! event is what reports a loss.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cuntong_core::delivery::held_upto;
use cuntong_core::envelope::Stream;

mod disk;
mod open;
mod segments;
mod state;

use state::{State, read_state};

const HEADER: usize = 8;
const BODY_FIXED: usize = 1 + 8 + 8;
/// A record larger than this is corruption, not data.
const MAX_RECORD: usize = 1 << 20;
/// More records than any terminal numbers (one a millisecond for 8,900 years): a watermark
/// beyond it in an old state file was forged.
const MAX_PLAUSIBLE_SEQ: u64 = 1 << 48;

/// When appended records are forced to stable storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPolicy {
    /// `fsync` after every record: nothing accepted is lost even on power loss.
    EveryRecord,
    /// `fsync` at most this often (and on [`Outbox::flush`]): a power cut loses at most this
    /// much; a killed process loses nothing.
    Interval(Duration),
}

/// How big the outbox may grow and how it syncs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutboxConfig {
    pub budget_bytes: u64,
    pub segment_bytes: u64,
    pub sync: SyncPolicy,
}

impl Default for OutboxConfig {
    fn default() -> OutboxConfig {
        OutboxConfig {
            budget_bytes: 16 * 1024 * 1024,
            segment_bytes: 1024 * 1024,
            sync: SyncPolicy::Interval(Duration::from_secs(1)),
        }
    }
}

/// Why the outbox failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("outbox state {path}: line {line}: {problem}")]
    State {
        path: PathBuf,
        line: usize,
        problem: String,
    },
    #[error("record of {len} bytes is larger than half the outbox budget of {budget} bytes")]
    TooLarge { len: usize, budget: u64 },
}

/// Records discarded unsent because the outbox was full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DroppedRange {
    pub stream: Stream,
    pub first: u64,
    pub last: u64,
    pub count: u64,
}

/// What opening found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Unconfirmed records recovered.
    pub records: usize,
    /// Damaged tails cut off: (segment file, byte offset where the damage starts, bytes cut).
    pub damaged: Vec<(PathBuf, u64, u64)>,
    /// Sequence numbers skipped because a damaged tail may have held them (and they may have
    /// been sent before the damage): they are never reused, and the caller reports them.
    pub skipped: Vec<DroppedRange>,
    /// Watermarks found persisted beyond what this outbox ever numbered (accepted by an older
    /// version from a forged acknowledgement): set back, so the records are sent again.
    pub repaired: Vec<RepairedWatermark>,
    /// Where each stream's numbering starts, when central has not been told yet (the outbox
    /// is new, or nothing was numbered since it was created): the caller announces these as
    /// the first events, so central's watermark passes the seqs below them.
    pub numbering_from: Vec<(Stream, u64)>,
}

/// Where each stream's numbering starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Numbering {
    pub telemetry: u64,
    pub events: u64,
}

/// A persisted watermark that claimed more than was ever numbered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RepairedWatermark {
    pub stream: Stream,
    pub watermark: u64,
    /// The highest seq this outbox had numbered.
    pub assigned: u64,
}

/// A record waiting for confirmation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub time_ms: u64,
    pub payload: Vec<u8>,
    segment: u64,
}

#[derive(Debug)]
struct Segment {
    id: u64,
    path: PathBuf,
    bytes: u64,
    /// Records in it not yet confirmed or dropped.
    live: usize,
}

/// The Unix time in milliseconds (at least 1): where a new outbox starts numbering.
fn clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .max(1)
}

fn idx(s: Stream) -> usize {
    match s {
        Stream::Telemetry => 0,
        Stream::Events => 1,
    }
}

/// The durable outbox of one terminal.
#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
    cfg: OutboxConfig,
    segments: VecDeque<Segment>,
    active: Option<File>,
    records: [BTreeMap<u64, Record>; 2],
    next: [u64; 2],
    state: State,
    bytes: u64,
    /// Telemetry seqs handed to the link and not yet confirmed.
    sent: std::collections::BTreeSet<u64>,
    unsynced: bool,
    last_sync: Instant,
    /// The fsyncs, state writes and deletions, off the caller's thread.
    disk: disk::Disk,
}

impl Outbox {
    fn segment_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("seg-{id:020}.log"))
    }

    fn io(&self, path: &Path) -> impl Fn(std::io::Error) -> OutboxError + use<> {
        let path = path.to_owned();
        move |source| OutboxError::Io {
            path: path.clone(),
            source,
        }
    }

    /// The first sequence number this outbox gave (or gives) `stream`: 1, or the clock when it
    /// was created.
    pub fn first_seq(&self, stream: Stream) -> u64 {
        self.state.first[idx(stream)]
    }

    /// The sequence number the next record of `stream` gets.
    pub fn next_seq(&self, stream: Stream) -> u64 {
        self.next[idx(stream)]
    }

    /// Central's confirmed watermark of `stream`, as last recorded.
    pub fn confirmed(&self, stream: Stream) -> u64 {
        self.state.confirmed[idx(stream)]
    }

    /// Records discarded unsent since the outbox was created.
    pub fn dropped_total(&self) -> u64 {
        self.state.dropped_total
    }

    /// Notes that a telemetry record was handed to the link. If the budget later forces it out
    /// before central confirms it, it is reported in the dropped range (so central's watermark
    /// passes it) but not counted as lost, since it probably arrived.
    pub fn mark_sent(&mut self, stream: Stream, seq: u64) {
        if stream == Stream::Telemetry && self.records[0].contains_key(&seq) {
            self.sent.insert(seq);
        }
    }

    /// Records waiting for confirmation.
    pub fn len(&self) -> usize {
        self.records.iter().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The waiting records of a stream, in seq order.
    pub fn pending(&self, stream: Stream) -> impl Iterator<Item = (u64, &Record)> {
        self.records[idx(stream)].iter().map(|(s, r)| (*s, r))
    }

    pub fn get(&self, stream: Stream, seq: u64) -> Option<&Record> {
        self.records[idx(stream)].get(&seq)
    }

    /// Appends a record, giving it the stream's next sequence number. If the budget is
    /// exceeded, the oldest records are dropped and reported.
    pub fn append(
        &mut self,
        stream: Stream,
        time_ms: u64,
        payload: &[u8],
    ) -> Result<(u64, Vec<DroppedRange>), OutboxError> {
        let len = HEADER + BODY_FIXED + payload.len();
        if len as u64 > self.cfg.budget_bytes / 2 || len > MAX_RECORD {
            return Err(OutboxError::TooLarge {
                len,
                budget: self.cfg.budget_bytes,
            });
        }
        let segment_limit = self.cfg.segment_bytes.min(self.cfg.budget_bytes / 4).max(1);
        let needs_new = match self.segments.back() {
            Some(seg) => self.active.is_none() || seg.bytes + len as u64 > segment_limit,
            None => true,
        };
        if needs_new {
            self.roll()?;
        }
        let s = idx(stream);
        let seq = self.next[s];
        self.write_record(stream, seq, time_ms, payload)?;
        self.next[s] = seq + 1;
        match self.cfg.sync {
            SyncPolicy::EveryRecord => {
                self.flush()?;
                self.disk.settle()?;
            }
            SyncPolicy::Interval(d) if self.last_sync.elapsed() >= d => self.flush()?,
            SyncPolicy::Interval(_) => {}
        }
        let dropped = self.enforce_budget()?;
        Ok((seq, dropped))
    }

    /// Writes one record to the active segment and indexes it.
    fn write_record(
        &mut self,
        stream: Stream,
        seq: u64,
        time_ms: u64,
        payload: &[u8],
    ) -> Result<(), OutboxError> {
        let s = idx(stream);
        let len = HEADER + BODY_FIXED + payload.len();
        let mut buf = Vec::with_capacity(len);
        buf.extend_from_slice(&((BODY_FIXED + payload.len()) as u32).to_le_bytes());
        buf.extend_from_slice(&[0; 4]);
        buf.push(s as u8);
        buf.extend_from_slice(&seq.to_le_bytes());
        buf.extend_from_slice(&time_ms.to_le_bytes());
        buf.extend_from_slice(payload);
        let crc = crc32fast::hash(&buf[HEADER..]);
        buf[4..8].copy_from_slice(&crc.to_le_bytes());
        let Some(seg) = self.segments.back_mut() else {
            unreachable_segment()?
        };
        let path = seg.path.clone();
        let file = self.active.as_mut().ok_or_else(|| OutboxError::Io {
            path: path.clone(),
            source: std::io::Error::other("no active segment"),
        })?;
        file.write_all(&buf).map_err(|source| OutboxError::Io {
            path: path.clone(),
            source,
        })?;
        seg.bytes += len as u64;
        seg.live += 1;
        let id = seg.id;
        self.bytes += len as u64;
        self.records[s].insert(
            seq,
            Record {
                time_ms,
                payload: payload.to_vec(),
                segment: id,
            },
        );
        self.unsynced = true;
        Ok(())
    }

    /// Forces appended records to stable storage.
    /// Whether records were written since the last sync (a flush has something to do).
    pub fn unsynced(&self) -> bool {
        self.unsynced
    }

    /// Hands the forcing of what was appended to the disk thread (see [`Outbox::settle`]).
    pub fn flush(&mut self) -> Result<(), OutboxError> {
        if self.unsynced {
            if let (Some(f), Some(seg)) = (self.active.as_ref(), self.segments.back()) {
                self.disk.sync(f, &seg.path)?;
            }
            self.unsynced = false;
        }
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Waits until everything handed to the disk thread is on disk (an orderly stop).
    pub fn settle(&mut self) -> Result<(), OutboxError> {
        self.flush()?;
        self.disk.settle()
    }

    /// While the numbering of this (new) outbox waits for central's agreement: the last
    /// event that may go (its announcements); no telemetry may (see
    /// [`cuntong_core::delivery`]). `None` once central agreed.
    pub fn holding(&self) -> Option<u64> {
        self.state.holding
    }

    /// Central agreed to the numbering.
    pub fn release(&mut self) -> Result<(), OutboxError> {
        if self.state.holding.take().is_some() {
            self.write_state()?;
        }
        Ok(())
    }

    /// Renumbers the held numbering (above seqs central holds under this id that this box
    /// never sent): telemetry from `first.telemetry`, events from `first.events`, where the
    /// two `announcements` of where each starts are written (events' then telemetry's; the
    /// numbering is held until central has them). Every waiting record of a stream moves up by
    /// the same offset, after the announcements on the events stream, and what is appended
    /// after numbers on from there. Records confirmed under the old numbering (announcements
    /// only: nothing else goes while it is held) are not counted again.
    ///
    /// The records stay where they are on disk (their payloads still carry the old seq: the
    /// sender rewrites it, see [`cuntong_core::envelope::with_seq`]); the announcements are
    /// written to a new segment, then the state file says what moved, in one atomic write.
    /// Only a held numbering moves, only up, and events only past every seq they were given;
    /// otherwise nothing changes and `false` is returned.
    pub fn renumber(
        &mut self,
        first: Numbering,
        announcements: [&[u8]; 2],
    ) -> Result<bool, OutboxError> {
        let (tm, ev) = (idx(Stream::Telemetry), idx(Stream::Events));
        let plausible = first.telemetry.max(first.events) <= MAX_PLAUSIBLE_SEQ;
        if self.state.holding.is_none()
            || !plausible
            || first.telemetry < self.state.first[tm]
            || first.events < self.next[ev]
        {
            return Ok(false);
        }
        let before = self.segments.back().map(|g| g.id);
        // What is written from here on goes to a segment the renumbering does not move.
        self.roll()?;
        for (s, to) in [(tm, first.telemetry), (ev, first.events + 2)] {
            let from = self.records[s]
                .keys()
                .next()
                .copied()
                .unwrap_or(self.next[s]);
            let by = to - from;
            let st = &mut self.state;
            if let Some(upto) = before.filter(|_| by > 0 && !self.records[s].is_empty()) {
                st.moved.push((s, upto, by));
            }
            st.first[s] = if s == ev { first.events } else { to };
            st.confirmed[s] = st.first[s] - 1;
            if st.dropped_upto[s] >= from {
                st.dropped_upto[s] += by;
            }
            self.next[s] += by;
            st.assigned[s] = self.next[s] - 1;
            let records = std::mem::take(&mut self.records[s]);
            self.records[s] = records.into_iter().map(|(q, r)| (q + by, r)).collect();
            if s == tm {
                self.sent = std::mem::take(&mut self.sent)
                    .into_iter()
                    .map(|q| q + by)
                    .collect();
            }
        }
        let now = clock_ms();
        for (seq, payload) in (first.events..).zip(announcements) {
            self.write_record(Stream::Events, seq, now, payload)?;
        }
        self.unsynced = true;
        self.flush()?;
        self.state.holding = Some(held_upto(Stream::Events, first.events));
        self.write_state()?;
        Ok(true)
    }

    /// Central confirmed `stream` up to `watermark`: those records leave, and segments with
    /// nothing left in them are deleted. Returns how many records left. A watermark beyond the
    /// last seq this outbox numbered changes nothing (it cannot be true; the caller reports it).
    pub fn confirm(&mut self, stream: Stream, watermark: u64) -> Result<usize, OutboxError> {
        let s = idx(stream);
        if watermark <= self.state.confirmed[s] || watermark >= self.next[s] {
            return Ok(0);
        }
        self.state.confirmed[s] = watermark;
        if stream == Stream::Telemetry {
            self.sent = self.sent.split_off(&(watermark + 1));
        }
        let keep = self.records[s].split_off(&(watermark + 1));
        let gone = std::mem::replace(&mut self.records[s], keep);
        for r in gone.values() {
            if let Some(seg) = self.segments.iter_mut().find(|g| g.id == r.segment) {
                seg.live = seg.live.saturating_sub(1);
            }
        }
        // The state must be durable before the segments that held the records go.
        self.write_state()?;
        self.release_empty_segments()?;
        Ok(gone.len())
    }

    fn write_state(&self) -> Result<(), OutboxError> {
        let path = self.dir.join("outbox.state");
        let assigned = [self.next[0] - 1, self.next[1] - 1];
        let text = self
            .state
            .text(assigned, self.segments.front().map(|g| g.id));
        self.disk.state(path, text.into_bytes())
    }
}

fn unreachable_segment<T>() -> Result<T, OutboxError> {
    Err(OutboxError::Io {
        path: PathBuf::new(),
        source: std::io::Error::other("outbox has no segment after rolling"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(budget: u64) -> OutboxConfig {
        OutboxConfig {
            budget_bytes: budget,
            segment_bytes: 1024 * 1024,
            sync: SyncPolicy::EveryRecord,
        }
    }

    /// A 3-record outbox has exactly one segment file.
    fn only_segment(dir: &Path) -> PathBuf {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "log"))
            .unwrap()
    }

    fn seqs(ob: &Outbox, s: Stream) -> Vec<u64> {
        ob.pending(s).map(|(q, _)| q).collect()
    }

    /// `n` seqs from `first`.
    fn run(first: u64, n: u64) -> Vec<u64> {
        (first..first + n).collect()
    }

    #[test]
    fn a_created_outbox_numbers_each_stream_from_the_clock_and_announces_it() {
        let dir = tempfile::tempdir().unwrap();
        let before = clock_ms();
        let (mut ob, report) = Outbox::open(dir.path(), cfg(1 << 20)).unwrap();
        let after = clock_ms();
        let base = ob.next_seq(Stream::Events);
        assert!(
            (before..=after).contains(&base),
            "{before} <= {base} <= {after}"
        );
        assert_eq!(ob.next_seq(Stream::Telemetry), base);
        assert_eq!(ob.first_seq(Stream::Telemetry), base);
        assert_eq!(
            report.numbering_from,
            [(Stream::Events, base), (Stream::Telemetry, base)]
        );
        // Nothing below the start is this box's: it is neither waiting nor claimable.
        assert_eq!(ob.confirmed(Stream::Telemetry), base - 1);
        assert_eq!(ob.confirm(Stream::Telemetry, 500).unwrap(), 0);
        assert_eq!(ob.confirmed(Stream::Telemetry), base - 1);
        assert_eq!(ob.append(Stream::Telemetry, 0, b"x").unwrap().0, base);
        // Not announced yet (no event numbered): a restart still says so.
        drop(ob);
        let (mut ob, report) = Outbox::open(dir.path(), cfg(1 << 20)).unwrap();
        assert_eq!(report.numbering_from.len(), 2);
        assert_eq!(ob.append(Stream::Events, 0, b"from").unwrap().0, base);
        drop(ob);
        let (_, report) = Outbox::open(dir.path(), cfg(1 << 20)).unwrap();
        assert!(report.numbering_from.is_empty(), "announced once");
    }

    #[test]
    fn a_reopened_outbox_continues_its_numbering_even_when_empty() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ob, _) = Outbox::open(dir.path(), cfg(1 << 20)).unwrap();
        let base = ob.next_seq(Stream::Telemetry);
        ob.append(Stream::Events, 0, b"from").unwrap();
        for _ in 0..3 {
            ob.append(Stream::Telemetry, 0, b"x").unwrap();
        }
        assert_eq!(ob.confirm(Stream::Telemetry, base + 2).unwrap(), 3);
        assert_eq!(ob.confirm(Stream::Events, base).unwrap(), 1);
        assert!(ob.is_empty());
        drop(ob);
        // Later, when the clock is far ahead: the numbering goes on where it was.
        let (mut ob, report) = Outbox::open(dir.path(), cfg(1 << 20)).unwrap();
        assert!(report.numbering_from.is_empty());
        assert_eq!(ob.first_seq(Stream::Telemetry), base);
        assert_eq!(ob.append(Stream::Telemetry, 0, b"y").unwrap().0, base + 3);
        assert_eq!(ob.append(Stream::Events, 0, b"e").unwrap().0, base + 1);
    }

    #[test]
    fn a_held_numbering_moves_above_a_clash_in_one_write_and_stays_moved_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ob, report) = Outbox::open(dir.path(), cfg(1 << 20)).unwrap();
        let base = ob.next_seq(Stream::Events);
        assert_eq!(report.numbering_from.len(), 2);
        assert_eq!(ob.holding(), Some(base + 1), "its two announcements may go");
        for what in [b"from-ev", b"from-tm"] {
            ob.append(Stream::Events, 0, what).unwrap();
        }
        for _ in 0..3 {
            ob.append(Stream::Telemetry, 0, b"x").unwrap();
        }
        ob.append(Stream::Events, 0, b"started").unwrap();
        // Central had the first announcement (under a seq a predecessor used, as it turns out).
        assert_eq!(ob.confirm(Stream::Events, base).unwrap(), 1);
        // It holds a predecessor's telemetry up to base + 1_000: telemetry moves above that,
        // events past every seq they were given, behind the two new announcements.
        let to = Numbering {
            telemetry: base + 1_001,
            events: base + 3,
        };
        let low = Numbering {
            telemetry: base + 1_001,
            events: base + 2,
        };
        assert!(!ob.renumber(low, [b"a", b"b"]).unwrap(), "events given out");
        assert!(ob.renumber(to, [b"ev-at", b"tm-at"]).unwrap());
        assert_eq!(ob.holding(), Some(base + 4), "the new announcements");
        assert_eq!(seqs(&ob, Stream::Telemetry), run(base + 1_001, 3));
        assert_eq!(seqs(&ob, Stream::Events), run(base + 3, 4));
        assert_eq!(ob.get(Stream::Events, base + 3).unwrap().payload, b"ev-at");
        assert_eq!(ob.get(Stream::Events, base + 4).unwrap().payload, b"tm-at");
        assert_eq!(
            ob.get(Stream::Events, base + 5).unwrap().payload,
            b"from-tm"
        );
        assert_eq!(ob.first_seq(Stream::Telemetry), base + 1_001);
        assert_eq!(ob.confirmed(Stream::Events), base + 2);
        // What comes after numbers on, into segments the renumbering does not move.
        assert_eq!(
            ob.append(Stream::Telemetry, 0, b"y").unwrap().0,
            base + 1_004
        );
        assert_eq!(ob.append(Stream::Events, 0, b"again").unwrap().0, base + 7);
        drop(ob);
        let (mut ob, report) = Outbox::open(dir.path(), cfg(1 << 20)).unwrap();
        assert!(report.numbering_from.is_empty());
        assert_eq!(seqs(&ob, Stream::Telemetry), run(base + 1_001, 4));
        assert_eq!(seqs(&ob, Stream::Events), run(base + 3, 5));
        assert_eq!(
            ob.get(Stream::Events, base + 6).unwrap().payload,
            b"started"
        );
        assert_eq!(ob.holding(), Some(base + 4));
        // Central agrees: nothing moves any more; confirmed records leave as ever.
        ob.release().unwrap();
        let later = Numbering {
            telemetry: base + 5_000,
            events: base + 5_000,
        };
        assert!(!ob.renumber(later, [b"a", b"b"]).unwrap());
        assert_eq!(ob.confirm(Stream::Telemetry, base + 1_002).unwrap(), 2);
        drop(ob);
        let (ob, _) = Outbox::open(dir.path(), cfg(1 << 20)).unwrap();
        assert_eq!(ob.holding(), None);
        assert_eq!(seqs(&ob, Stream::Telemetry), run(base + 1_003, 2));
        assert_eq!(ob.next_seq(Stream::Events), base + 8);
    }

    /// A simulator runs thousands of outboxes in one process: their disk work shares a few
    /// threads (a thread each ran out of threads at a province's 54,145 boxes), and each
    /// outbox's work is still done, in order, by the time it settles.
    #[cfg(target_os = "linux")]
    #[test]
    fn many_outboxes_share_a_few_disk_threads_and_each_settles_its_own_work() {
        let dirs: Vec<_> = (0..300).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut outboxes: Vec<Outbox> = dirs
            .iter()
            .map(|d| Outbox::open(d.path(), cfg(1 << 20)).unwrap().0)
            .collect();
        for ob in &mut outboxes {
            for _ in 0..3 {
                ob.append(Stream::Telemetry, 0, b"a record").unwrap();
            }
            ob.flush().unwrap();
        }
        let disk_threads = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|name| name.trim() == "outbox-disk")
            .count();
        assert!(
            (1..=disk::WORKERS).contains(&disk_threads),
            "{disk_threads} disk threads for 300 outboxes"
        );
        for ob in &mut outboxes {
            ob.settle().unwrap();
        }
        drop(outboxes);
        for d in &dirs {
            let (ob, report) = Outbox::open(d.path(), cfg(1 << 20)).unwrap();
            assert_eq!(report.records, 3);
            drop(ob);
        }
    }

    #[test]
    fn a_disk_that_hangs_never_holds_up_appends_flushes_or_confirmations() {
        let dir = tempfile::tempdir().unwrap();
        let every_second = OutboxConfig {
            segment_bytes: 256,
            sync: SyncPolicy::Interval(Duration::from_secs(1)),
            ..cfg(1 << 20)
        };
        let (mut ob, _) = Outbox::open(dir.path(), every_second).unwrap();
        let first = ob.next_seq(Stream::Telemetry);
        // A slow SD card: nothing handed to the disk finishes until it is let go.
        let resume = ob.disk.stall();
        let (done, finished) = std::sync::mpsc::channel();
        let caller = std::thread::spawn(move || {
            for _ in 0..100 {
                ob.append(Stream::Telemetry, 0, b"a record of telemetry")
                    .unwrap();
            }
            ob.flush().unwrap();
            assert_eq!(ob.confirm(Stream::Telemetry, first + 49).unwrap(), 50);
            done.send(()).unwrap();
            ob
        });
        let waited = finished.recv_timeout(Duration::from_secs(20));
        drop(resume);
        assert!(waited.is_ok(), "the caller waited for the disk");
        let mut ob = caller.join().unwrap();
        ob.settle().unwrap();
        drop(ob);
        let (ob, report) = Outbox::open(dir.path(), every_second).unwrap();
        assert_eq!(report.records, 50);
        assert_eq!(seqs(&ob, Stream::Telemetry), run(first + 50, 50));
        assert_eq!(ob.confirmed(Stream::Telemetry), first + 49);
    }

    #[test]
    fn an_outbox_an_older_version_numbered_from_1_keeps_its_numbering() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("outbox.state"),
            "confirmed-telemetry 40\nconfirmed-events 3\ndropped-upto-telemetry 0\ndropped-upto-events 0\ndropped-total 0\nassigned-telemetry 41\nassigned-events 3\n",
        )
        .unwrap();
        let (mut ob, report) = Outbox::open(dir.path(), cfg(1 << 20)).unwrap();
        assert!(report.numbering_from.is_empty());
        assert_eq!(ob.first_seq(Stream::Telemetry), 1);
        assert_eq!(ob.append(Stream::Telemetry, 0, b"y").unwrap().0, 42);
        assert_eq!(ob.append(Stream::Events, 0, b"e").unwrap().0, 4);
    }

    #[test]
    fn records_survive_a_restart_in_order_with_their_payloads() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ob, report) = Outbox::open(dir.path(), cfg(1 << 20)).unwrap();
        assert_eq!((report.records, report.damaged.len()), (0, 0));
        let b = ob.next_seq(Stream::Telemetry);
        for i in 0..5u8 {
            let (seq, dropped) = ob
                .append(Stream::Telemetry, 1000 + u64::from(i), &[i; 10])
                .unwrap();
            assert_eq!(seq, b + u64::from(i));
            assert!(dropped.is_empty());
        }
        let e = ob.append(Stream::Events, 7, b"ev").unwrap().0;
        drop(ob);
        let (ob, report) = Outbox::open(dir.path(), cfg(1 << 20)).unwrap();
        assert_eq!(report.records, 6);
        assert_eq!(seqs(&ob, Stream::Telemetry), run(b, 5));
        assert_eq!(ob.get(Stream::Telemetry, b + 2).unwrap().payload, [2u8; 10]);
        assert_eq!(ob.get(Stream::Telemetry, b + 2).unwrap().time_ms, 1002);
        assert_eq!(ob.next_seq(Stream::Telemetry), b + 5);
        assert_eq!(ob.next_seq(Stream::Events), e + 1);
    }

    #[test]
    fn confirmed_records_leave_and_numbering_continues_after_them() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ob, _) = Outbox::open(dir.path(), cfg(1 << 20)).unwrap();
        let b = ob.next_seq(Stream::Telemetry);
        for _ in 0..4 {
            ob.append(Stream::Telemetry, 0, b"x").unwrap();
        }
        assert_eq!(ob.confirm(Stream::Telemetry, b + 2).unwrap(), 3);
        assert_eq!(seqs(&ob, Stream::Telemetry), [b + 3]);
        assert_eq!(ob.confirm(Stream::Telemetry, b + 3).unwrap(), 1);
        assert!(ob.is_empty());
        drop(ob);
        let (mut ob, report) = Outbox::open(dir.path(), cfg(1 << 20)).unwrap();
        assert_eq!(report.records, 0);
        assert_eq!(ob.append(Stream::Telemetry, 0, b"y").unwrap().0, b + 4);
    }

    #[test]
    fn a_full_outbox_drops_the_oldest_records_and_says_which() {
        let dir = tempfile::tempdir().unwrap();
        // 4 KiB budget, 1 KiB segments, records of 100 + 25 bytes: 8 per segment.
        let (mut ob, _) = Outbox::open(dir.path(), cfg(4096)).unwrap();
        let b = ob.next_seq(Stream::Telemetry);
        let mut dropped = Vec::new();
        for _ in 0..100 {
            let (_, d) = ob.append(Stream::Telemetry, 0, &[0u8; 100]).unwrap();
            dropped.extend(d);
        }
        assert!(ob.bytes() <= 4096);
        let total: u64 = dropped.iter().map(|d| d.count).sum();
        assert_eq!(total, ob.dropped_total());
        let kept = seqs(&ob, Stream::Telemetry);
        assert_eq!(kept.last(), Some(&(b + 99)));
        assert_eq!(
            kept.len() as u64 + total,
            100,
            "every record is kept or counted"
        );
        assert_eq!(dropped[0].first, b);
        assert_eq!(dropped.last().unwrap().last + 1, kept[0]);
        drop(ob);
        let (ob, _) = Outbox::open(dir.path(), cfg(4096)).unwrap();
        assert_eq!(ob.dropped_total(), total);
        assert_eq!(seqs(&ob, Stream::Telemetry), kept);
    }

    #[test]
    fn events_are_carried_over_when_old_segments_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ob, _) = Outbox::open(dir.path(), cfg(4096)).unwrap();
        let e = ob.append(Stream::Events, 0, b"started").unwrap().0;
        let mut dropped = 0;
        for _ in 0..200 {
            dropped += ob
                .append(Stream::Telemetry, 0, &[0u8; 100])
                .unwrap()
                .1
                .len();
        }
        assert!(dropped > 0);
        assert_eq!(
            seqs(&ob, Stream::Events),
            [e],
            "the event outlived every drop"
        );
        assert_eq!(ob.get(Stream::Events, e).unwrap().payload, b"started");
        drop(ob);
        let (ob, _) = Outbox::open(dir.path(), cfg(4096)).unwrap();
        assert_eq!(seqs(&ob, Stream::Events), [e], "and it is on disk");
    }

    #[test]
    fn a_torn_write_is_cut_off_and_intact_records_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ob, _) = Outbox::open(dir.path(), cfg(1 << 20)).unwrap();
        let b = ob.next_seq(Stream::Telemetry);
        for _ in 0..3 {
            ob.append(Stream::Telemetry, 0, b"payload").unwrap();
        }
        drop(ob);
        let seg = only_segment(dir.path());
        let full = std::fs::metadata(&seg).unwrap().len();
        // Half of the third record reached the disk.
        let record = full / 3;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(full - record / 2)
            .unwrap();
        let (mut ob, report) = Outbox::open(dir.path(), cfg(1 << 20)).unwrap();
        assert_eq!(seqs(&ob, Stream::Telemetry), run(b, 2));
        assert_eq!(report.damaged.len(), 1);
        assert_eq!(report.damaged[0].1, 2 * record);
        // The damaged record's number may have reached central: it is never reused.
        let skipped = &report.skipped[0];
        assert_eq!((skipped.stream, skipped.first), (Stream::Telemetry, b + 2));
        assert!(skipped.last >= b + 2);
        assert_eq!(
            ob.append(Stream::Telemetry, 0, b"next").unwrap().0,
            skipped.last + 1
        );
    }

    #[test]
    fn a_watermark_beyond_the_last_seq_is_never_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ob, _) = Outbox::open(dir.path(), cfg(1 << 20)).unwrap();
        let b = ob.next_seq(Stream::Telemetry);
        for _ in 0..3 {
            ob.append(Stream::Telemetry, 0, b"x").unwrap();
        }
        for forged in [b + 3, 1 << 50, u64::MAX] {
            assert_eq!(ob.confirm(Stream::Telemetry, forged).unwrap(), 0);
            assert_eq!(ob.confirm(Stream::Events, forged).unwrap(), 0);
        }
        assert_eq!(ob.confirmed(Stream::Telemetry), b - 1);
        assert_eq!(seqs(&ob, Stream::Telemetry), run(b, 3));
        assert_eq!(ob.confirm(Stream::Telemetry, b + 1).unwrap(), 2);
        drop(ob);
        let (mut ob, report) = Outbox::open(dir.path(), cfg(1 << 20)).unwrap();
        assert!(report.repaired.is_empty());
        assert_eq!(seqs(&ob, Stream::Telemetry), [b + 2]);
        assert_eq!(ob.append(Stream::Telemetry, 0, b"y").unwrap().0, b + 3);
    }

    #[test]
    fn a_forged_watermark_persisted_by_an_older_version_is_repaired_on_open() {
        let dir = tempfile::tempdir().unwrap();
        // An outbox an older version created: numbered from 1.
        std::fs::write(dir.path().join("outbox.state"), "").unwrap();
        let (mut ob, _) = Outbox::open(dir.path(), cfg(1 << 20)).unwrap();
        for _ in 0..3 {
            ob.append(Stream::Telemetry, 0, b"x").unwrap();
        }
        drop(ob);
        // What an older version wrote after accepting `ack` u64::MAX (no `assigned` lines).
        std::fs::write(
            dir.path().join("outbox.state"),
            format!(
                "confirmed-telemetry {}\nconfirmed-events 0\ndropped-upto-telemetry 0\ndropped-upto-events 0\ndropped-total 0\n",
                u64::MAX
            ),
        )
        .unwrap();
        let (mut ob, report) = Outbox::open(dir.path(), cfg(1 << 20)).unwrap();
        assert_eq!(
            report.repaired,
            [RepairedWatermark {
                stream: Stream::Telemetry,
                watermark: u64::MAX,
                assigned: 3
            }]
        );
        assert_eq!(ob.confirmed(Stream::Telemetry), 0);
        assert_eq!(seqs(&ob, Stream::Telemetry), [1, 2, 3], "sent again");
        assert_eq!(ob.append(Stream::Telemetry, 0, b"y").unwrap().0, 4);
        drop(ob);
        let (_, report) = Outbox::open(dir.path(), cfg(1 << 20)).unwrap();
        assert!(report.repaired.is_empty(), "repaired once, for good");
    }

    #[test]
    fn an_older_state_file_with_a_true_watermark_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        // Everything up to 500 confirmed and its segments gone, as an older version left it.
        std::fs::write(
            dir.path().join("outbox.state"),
            "confirmed-telemetry 500\nconfirmed-events 7\ndropped-upto-telemetry 0\ndropped-upto-events 0\ndropped-total 0\n",
        )
        .unwrap();
        let (mut ob, report) = Outbox::open(dir.path(), cfg(1 << 20)).unwrap();
        assert!(report.repaired.is_empty());
        assert_eq!(ob.confirmed(Stream::Telemetry), 500);
        assert_eq!(ob.append(Stream::Telemetry, 0, b"y").unwrap().0, 501);
        assert_eq!(ob.append(Stream::Events, 0, b"e").unwrap().0, 8);
    }

    #[test]
    fn a_flipped_bit_fails_the_crc() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ob, _) = Outbox::open(dir.path(), cfg(1 << 20)).unwrap();
        let b = ob.next_seq(Stream::Telemetry);
        for _ in 0..3 {
            ob.append(Stream::Telemetry, 0, b"payload").unwrap();
        }
        drop(ob);
        let seg = only_segment(dir.path());
        let mut data = std::fs::read(&seg).unwrap();
        let record = data.len() / 3;
        data[record + 20] ^= 0x04;
        std::fs::write(&seg, &data).unwrap();
        let (ob, report) = Outbox::open(dir.path(), cfg(1 << 20)).unwrap();
        assert_eq!(seqs(&ob, Stream::Telemetry), [b]);
        assert_eq!(report.damaged[0].2, 2 * record as u64);
    }
}
