//! Storing a group of records on PostgreSQL. The group takes the rows in `terminals` of its
//! terminals — the runs of seqs stored and the watermark of each stream, the newest values and
//! the revision — as the connection remembers them or read (with the drops and numbering starts
//! ahead of the watermarks), and decides here which of its messages are new: a seq inside a
//! stored run is a duplicate. Only the new messages are binary-COPied into `messages`; the
//! drops and numbering starts are upserted, and each terminal's row is written back once, under
//! the revision taken ([`Take`]), all in the group's one transaction.

use std::collections::{BTreeMap, HashMap};

use ::postgres::error::SqlState;
use ::postgres::{Statement, Transaction};
use cuntong_core::envelope::{Event, Stream};
use cuntong_core::terminal_id::TerminalId;

use super::PgStore;
use crate::store::{Applied, Record, StoreError, stream_id};

mod read;
mod runs;
mod terminals;
mod writes;

use read::read_state;
use runs::Runs;
use terminals::write_terminals;
use writes::{copy_messages, write_gaps};

/// A (terminal, stream) as the group finds it and leaves it.
#[derive(Default)]
struct Pair {
    /// The watermark stored (0: none yet).
    watermark: i64,
    runs: Runs,
    /// The drops reported that reach past the stored watermark, and where the numbering starts
    /// if that is past it (stored and this group's).
    drops: Vec<(i64, i64)>,
    numbering: Option<i64>,
    /// This group stored a seq, or brought a drop or a numbering start: the watermark may move.
    advance: bool,
}

/// The newest values of a terminal: metric → (time, value).
type Latest = BTreeMap<String, (i64, f64)>;

/// What a connection knows of a terminal's row as of the revision it last read or wrote: its
/// streams (watermark, runs, the drops and numbering start ahead) and newest values. A group
/// takes it instead of reading the row; its write, under that revision, finds out whether it
/// was still the row's (if not, the group is tried again reading the row).
pub(super) struct Known {
    revision: i64,
    streams: [Pair; 2],
    stored: Latest,
}

/// The rows a connection knows, by terminal.
pub(super) type KnownRows = HashMap<String, Known>;

/// A terminal the group brings something of.
struct Terminal {
    id: TerminalId,
    site: String,
    level: &'static str,
    /// The last presence in the group: (online, version, started, keep-alive).
    presence: Option<(bool, String, i64, i64)>,
    /// The latest reception in the group (a message, an online presence).
    last_seen: Option<i64>,
    /// The latest reception of an offline presence in the group.
    offline: Option<i64>,
    /// It sent messages (new or not): its watermarks are published again.
    touched: bool,
    /// Its row was found (read, or known to the connection), and its revision then.
    exists: bool,
    /// Its row was known to the connection, not read.
    known: bool,
    revision: i64,
    streams: [Pair; 2],
    /// Its newest values as read.
    stored: Latest,
    /// The newest time and value of each metric in the group's new telemetry.
    latest: Latest,
    /// This group changes its runs, watermarks or newest values: its row is written under the
    /// revision read.
    changed: bool,
}

impl Terminal {
    fn new(id: TerminalId) -> Terminal {
        Terminal {
            id,
            site: id.site().to_string(),
            level: id.site().level().as_str(),
            presence: None,
            last_seen: None,
            offline: None,
            touched: false,
            exists: false,
            known: false,
            revision: 0,
            streams: Default::default(),
            stored: Latest::new(),
            latest: Latest::new(),
            changed: false,
        }
    }

    fn seen(&mut self, ms: u64) {
        let ms = ms as i64;
        self.last_seen = Some(self.last_seen.map_or(ms, |v| v.max(ms)));
    }

    /// Online after the group, from what the group holds (see `Store::apply`): its last
    /// presence, unless it was heard from after an offline one; without a presence, heard
    /// from at all. (A row's stored state joins in the statement.)
    fn online(&self) -> bool {
        let heard_after = self
            .last_seen
            .is_some_and(|s| s > self.offline.unwrap_or(0));
        match &self.presence {
            Some(p) => p.0 || heard_after,
            None => heard_after,
        }
    }

    /// Keeps the newer of a metric's values (the later one of the group on a tie).
    fn latest(&mut self, metric: &str, ts: i64, v: f64) {
        match self.latest.get_mut(metric) {
            Some(e) if ts as u64 >= e.0 as u64 => *e = (ts, v),
            Some(_) => {}
            None => {
                self.latest.insert(metric.to_owned(), (ts, v));
            }
        }
    }
}

/// What a group writes, gathered so that each table is written by one statement with its keys
/// in order.
#[derive(Default)]
struct Rows {
    /// The terminals in terminal order (the lock order), and where each is.
    terminals: Vec<(String, Terminal)>,
    index: HashMap<TerminalId, usize>,
    dropped: BTreeMap<(String, i16, i64), i64>,
    numbering: BTreeMap<(String, i16), i64>,
    rejected: Vec<(String, i64, String, Vec<u8>)>,
}

impl Rows {
    /// `first..=last` of the `i`th terminal's `stream` were dropped (reported by the terminal,
    /// or declared lost by central): recorded, and the watermark may pass them.
    fn drop_range(&mut self, i: usize, stream: Stream, first: u64, last: u64) {
        if first > last {
            return;
        }
        let (name, t) = &mut self.terminals[i];
        let sid = stream_id(stream) as i16;
        let pair = &mut t.streams[sid as usize];
        pair.drops.push((first as i64, last as i64));
        pair.advance = true;
        let e = self
            .dropped
            .entry((name.clone(), sid, first as i64))
            .or_insert(last as i64);
        *e = (*e).max(last as i64);
    }

    /// The terminals of `records`, in terminal order.
    fn new(records: &[Record]) -> Rows {
        let mut by_name: BTreeMap<String, Terminal> = BTreeMap::new();
        let mut known: HashMap<TerminalId, String> = HashMap::new();
        for r in records {
            let t = match r {
                Record::Telemetry { terminal, .. }
                | Record::Event { terminal, .. }
                | Record::Presence { terminal, .. }
                | Record::Lost { terminal, .. } => terminal,
                Record::Rejected { .. } => continue,
            };
            if !known.contains_key(t) {
                let name = t.to_string();
                by_name.insert(name.clone(), Terminal::new(*t));
                known.insert(*t, name);
            }
        }
        let terminals: Vec<(String, Terminal)> = by_name.into_iter().collect();
        let index = terminals
            .iter()
            .enumerate()
            .map(|(i, (_, t))| (t.id, i))
            .collect();
        Rows {
            terminals,
            index,
            ..Rows::default()
        }
    }

    fn terminal(&mut self, id: &TerminalId) -> Option<&mut (String, Terminal)> {
        let i = *self.index.get(id)?;
        self.terminals.get_mut(i)
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.terminals
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()
    }
}

/// The statements a connection has prepared, by their text: each of a group's statements is
/// parsed once a connection, not once a group.
#[derive(Default)]
pub(super) struct Prepared(HashMap<String, Statement>);

impl Prepared {
    fn get(&mut self, tx: &mut Transaction<'_>, sql: &str) -> Result<Statement, ::postgres::Error> {
        if let Some(statement) = self.0.get(sql) {
            return Ok(statement.clone());
        }
        let statement = tx.prepare(sql)?;
        self.0.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

/// How a group takes its terminals' rows.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Take {
    /// Read without locks, written only if no other group wrote them meanwhile (each row's
    /// revision is still the one read); otherwise the group is rolled back and tried again.
    Optimistic,
    /// Read and locked (`FOR UPDATE`, in terminal order) until the commit: the retry after a
    /// group lost a race, which cannot lose it again.
    Locked,
}

impl PgStore {
    /// One attempt at storing a group (see [`Store::apply`]); `None` if another group wrote
    /// one of its terminals between its read and its write (nothing was stored: try again).
    pub(super) fn apply_once(
        &mut self,
        records: &[Record],
        take: Take,
    ) -> Result<Option<Applied>, StoreError> {
        let err = self.err("storing a group");
        let client = self.client.get_mut();
        let prepared = &mut self.prepared;
        let known = &mut self.known;
        let mut tx = client.transaction().map_err(&err)?;
        let mut applied = Applied::default();
        let mut rows = Rows::new(records);

        // What does not depend on which messages are new: receptions, presence, rejections.
        for r in records {
            if let Some(m) = r.message() {
                if let Some((_, t)) = rows.terminal(m.terminal) {
                    t.seen(m.received_ms);
                    t.touched = true;
                }
                continue;
            }
            match r {
                Record::Presence {
                    terminal,
                    received_ms,
                    presence: p,
                } => {
                    if let Some((_, t)) = rows.terminal(terminal) {
                        t.presence = Some((
                            p.online,
                            p.version.clone(),
                            p.started_ms as i64,
                            i64::from(p.keep_alive_s),
                        ));
                        if p.online {
                            t.seen(*received_ms);
                        } else {
                            let at = *received_ms as i64;
                            t.offline = Some(t.offline.map_or(at, |v| v.max(at)));
                        }
                    }
                }
                Record::Rejected {
                    topic,
                    received_ms,
                    reason,
                    payload,
                } => rows.rejected.push((
                    topic.clone(),
                    *received_ms as i64,
                    reason.clone(),
                    payload.to_vec(),
                )),
                _ => {}
            }
        }
        // The rows this connection knows (taken out: put back only once committed), unless
        // the group is tried again after a race, which reads them all.
        for (name, t) in &mut rows.terminals {
            let Some(k) = known.remove(name) else {
                continue;
            };
            if take == Take::Optimistic {
                t.exists = true;
                t.known = true;
                t.revision = k.revision;
                t.streams = k.streams;
                t.stored = k.stored;
            }
        }
        read_state(&mut tx, prepared, &mut rows, take).map_err(&err)?;

        // Which messages are new, in the group's order (the first of several copies is the one
        // stored): a seq in a stored run is a duplicate. Runs only grow, so a seq found in one
        // read before another group's commit is a duplicate still.
        let mut new = Vec::new();
        for r in records {
            if let Record::Lost {
                terminal,
                stream,
                first,
                last,
            } = r
            {
                if let Some(&i) = rows.index.get(terminal) {
                    rows.drop_range(i, *stream, *first, *last);
                }
                continue;
            }
            let Some(m) = r.message() else {
                continue;
            };
            let Some(i) = rows.index.get(m.terminal).copied() else {
                continue;
            };
            let sid = stream_id(m.stream) as usize;
            let t = &mut rows.terminals[i].1;
            if t.streams[sid].runs.insert(m.seq as i64) {
                t.streams[sid].advance = true;
                t.changed = true;
                applied.stored += 1;
                new.push((i, m));
            } else {
                // It resent: it may not have our watermark (its terminal is touched: sent
                // again). An announcement of a numbering start is applied however often it
                // comes, also under a seq that a predecessor used.
                applied.duplicates += 1;
                if r.numbering().is_none() {
                    continue;
                }
            }
            match r {
                Record::Telemetry { envelope, .. } => {
                    for s in &envelope.body.samples {
                        applied.values += 1;
                        let ts = (envelope.time_ms + u64::from(s.offset_ms)) as i64;
                        t.latest(s.metric.name(), ts, s.value.to_f64());
                    }
                }
                Record::Event { envelope, .. } => match envelope.body {
                    Event::Dropped {
                        stream,
                        first,
                        last,
                    } => rows.drop_range(i, stream, first, last),
                    // Applied before the watermarks below advance, so the events stream
                    // passes the gap the announcement itself follows.
                    Event::NumberingFrom { stream, first } => {
                        if let Ok(first) = i64::try_from(first) {
                            let (name, t) = &mut rows.terminals[i];
                            let sid = stream_id(stream) as i16;
                            let pair = &mut t.streams[sid as usize];
                            pair.numbering = Some(pair.numbering.map_or(first, |n| n.max(first)));
                            pair.advance = true;
                            let e = rows.numbering.entry((name.clone(), sid)).or_insert(first);
                            *e = (*e).max(first);
                        }
                    }
                    _ => {}
                },
                _ => {}
            }
        }
        write_gaps(&mut tx, prepared, &rows).map_err(&err)?;
        // In terminal order (each terminal's in the group's): the BRIN index of a day finds a
        // terminal's rows in the few pages of each group that hold them.
        new.sort_by_key(|(i, _)| *i);
        copy_messages(&mut tx, &rows, &new).map_err(&err)?;
        if !write_terminals(&mut tx, prepared, &mut rows, &mut applied).map_err(&err)? {
            tx.rollback().map_err(&err)?;
            return Ok(None);
        }
        applied.numbering_clashes = crate::store::numbering_clashes(records, |t, stream| {
            let held = rows.index.get(t).map(|&i| {
                let pair = &rows.terminals[i].1.streams[stream_id(stream) as usize];
                let drops = pair.drops.iter().map(|d| d.1);
                let runs = pair.runs.0.last().map(|r| r.1);
                drops.chain(runs).fold(pair.watermark, i64::max)
            });
            Ok::<u64, std::convert::Infallible>(held.map_or(0, |h| h.max(0) as u64))
        })
        .unwrap_or_else(|never| match never {});
        tx.commit().map_err(&err)?;
        for (name, t) in rows.terminals {
            let revision = if t.changed || t.touched {
                t.revision + 1
            } else {
                t.revision
            };
            let mut streams = t.streams;
            for pair in &mut streams {
                pair.advance = false;
                let wm = pair.watermark;
                pair.drops.retain(|d| d.1 > wm);
                pair.numbering = pair.numbering.filter(|n| n - 1 > wm);
            }
            known.insert(
                name,
                Known {
                    revision,
                    streams,
                    stored: t.stored,
                },
            );
        }
        Ok(Some(applied))
    }
}

/// Whether a failed group is worth trying again as a whole (it was rolled back).
pub(super) fn transient(e: &StoreError) -> bool {
    matches!(e, StoreError::Postgres { source, .. } if matches!(
        source.code(),
        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    ))
}
