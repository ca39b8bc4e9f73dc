//! Storing a group of records on PostgreSQL. Under the journal's lock (the groups of every
//! instance go one at a time), the group takes its terminals' streams — the runs of seqs stored,
//! the watermark, the drops and numbering starts ahead of it — as the connection remembers them
//! (brought up to date with what other instances appended to the journal since) or reads them
//! (a terminal's row in `terminals` and its entries in the journal), and decides here which of
//! its messages are new: a seq inside a stored run is a duplicate. Only the new messages are
//! binary-COPied into `messages`; the drops and numbering starts are upserted, and what the
//! group stored is appended to the journal as one row, all in the group's one transaction.
//!
//! The rows of `terminals` (runs, watermarks, presence, last reception, newest values) are
//! written by folding: now and then, when the writer has nothing else to do, before a read of
//! the fleet view through the same store, and when the store is closed ([`fold`]), an
//! instance folds the whole journal and what its groups brought since into those rows. A
//! group's cost is then a COPY of its messages and one row, not a rewrite of a row a terminal.

use std::collections::{BTreeMap, HashMap};

use ::postgres::error::SqlState;
use ::postgres::{Client, Statement};
use cuntong_core::envelope::{Event, Stream};
use cuntong_core::telemetry::Metric;
use cuntong_core::terminal_id::TerminalId;

use super::PgStore;
use crate::store::{Applied, Record, StoreError, stream_id};

mod fold;
mod journal;
mod read;
mod runs;
mod terminals;
mod writes;

use journal::{Entries, Position};
use read::read_state;
use runs::Runs;
use terminals::{advance_watermarks, write_terminals};
pub use writes::MessageCopy;
use writes::write_gaps;

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

/// The newest values of a terminal as stored: metric name → (time, value).
type Latest = BTreeMap<String, (i64, f64)>;

/// The newest value of each metric that groups brought: (metric, time, value), a few a
/// terminal (scanned, not looked up).
type Newest = Vec<(Metric, i64, f64)>;

/// Keeps the newer of a metric's values in `newest` (the later one on a tie). `hint`: where
/// it is likely to be (batches of a terminal list their metrics in the same order).
fn keep_newer(newest: &mut Newest, hint: usize, metric: &Metric, at: i64, value: f64) {
    let found = match newest.get(hint) {
        Some(e) if e.0 == *metric => Some(hint),
        _ => newest.iter().position(|e| e.0 == *metric),
    };
    match found.and_then(|i| newest.get_mut(i)) {
        Some(e) if at as u64 >= e.1 as u64 => (e.1, e.2) = (at, value),
        Some(_) => {}
        None => newest.push((metric.clone(), at, value)),
    }
}

/// What a connection knows of a terminal: its streams (watermark, runs, the drops and numbering
/// start ahead), exact as of its last group (a group takes them instead of reading the row),
/// and its row as this connection last read or wrote it (whether it exists, its revision and
/// newest values): a fold writes it from there, under that revision.
pub(super) struct Known {
    streams: [Pair; 2],
    exists: bool,
    revision: i64,
    stored: Latest,
}

/// A map by terminal, with a fast hash (the ids are central's own, checked on the way in).
pub(super) type ById<V> = HashMap<TerminalId, V, foldhash::fast::RandomState>;

/// A terminal's name as stored (its id's text), made once and shared.
pub(super) type Name = std::sync::Arc<str>;

/// The terminals a connection knows.
pub(super) type KnownRows = ById<Known>;

/// What this connection's groups brought of a terminal since it last folded: the row takes it
/// at the next fold.
#[derive(Default)]
struct Pending {
    presence: Option<(bool, String, i64, i64)>,
    last_seen: Option<i64>,
    offline: Option<i64>,
    latest: Newest,
}

impl Pending {
    /// What a group brought of a terminal (taken from it).
    fn take(t: &mut Terminal) -> Pending {
        Pending {
            presence: t.presence.take(),
            last_seen: t.last_seen,
            offline: t.offline,
            latest: std::mem::take(&mut t.latest),
        }
    }

    /// Adds what a later group brought.
    fn add(&mut self, later: Pending) {
        if later.presence.is_some() {
            self.presence = later.presence;
        }
        self.last_seen = self.last_seen.max(later.last_seen);
        self.offline = self.offline.max(later.offline);
        if self.latest.is_empty() {
            self.latest = later.latest;
            return;
        }
        for (i, (metric, at, value)) in later.latest.iter().enumerate() {
            keep_newer(&mut self.latest, i, metric, *at, *value);
        }
    }
}

/// What a committed group brought of each of its terminals, not yet added to the pending.
type Brought = Vec<(TerminalId, Pending)>;

/// Adds what the last group brought to what is pending.
fn add_brought(pending: &mut ById<Pending>, brought: &mut Brought) {
    for (id, p) in brought.drain(..) {
        pending.entry(id).or_default().add(p);
    }
}

/// A connection's state of ingest: its prepared statements, the terminals it knows, what its
/// groups brought since it last folded, and where it stands in the journal.
pub(super) struct Ingest {
    prepared: Prepared,
    known: KnownRows,
    pending: ById<Pending>,
    /// What the last group brought, added to `pending` while the server stores the next
    /// group's messages (or before a fold).
    brought: Brought,
    position: Position,
    /// The terminals' names, written once.
    names: ById<Name>,
}

impl Ingest {
    pub(super) fn new() -> Ingest {
        Ingest {
            prepared: Prepared::default(),
            known: KnownRows::default(),
            pending: ById::default(),
            brought: Brought::new(),
            position: Position::new(),
            names: ById::default(),
        }
    }

    /// Whether a fold is due while groups keep coming: that many rows appended, or anything
    /// to fold (presence alone too) and a second since the last.
    pub(super) fn fold_due(&self) -> bool {
        self.position.appended >= FOLD_ROWS
            || (self.unfolded() && self.position.folded.elapsed() >= FOLD_EVERY)
    }

    /// Whether anything is left to fold.
    pub(super) fn unfolded(&self) -> bool {
        self.position.appended > 0 || !self.pending.is_empty() || !self.brought.is_empty()
    }
}

/// Rows a connection appends to the journal between two of its folds, at most.
const FOLD_ROWS: u32 = 64;
/// How long a fold waits at most while groups keep coming.
const FOLD_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// A terminal the group brings something of.
struct Terminal {
    id: TerminalId,
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
    /// The newest time and value of each metric in the group's new telemetry (or since the
    /// last fold).
    latest: Newest,
    /// This group changes its runs, watermarks or newest values: its row is written under the
    /// revision read.
    changed: bool,
}

impl Terminal {
    fn new(id: TerminalId) -> Terminal {
        Terminal {
            id,
            presence: None,
            last_seen: None,
            offline: None,
            touched: false,
            exists: false,
            known: false,
            revision: 0,
            streams: Default::default(),
            stored: Latest::new(),
            latest: Newest::new(),
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

    /// Takes what the connection knows of it instead of reading its row.
    fn take(&mut self, k: Known) {
        self.known = true;
        self.streams = k.streams;
        self.exists = k.exists;
        self.revision = k.revision;
        self.stored = k.stored;
    }

    /// Its site code, as stored.
    fn site(&self) -> String {
        self.id.site().to_string()
    }
}

/// What a group writes, gathered so that each table is written by one statement with its keys
/// in order.
#[derive(Default)]
struct Rows {
    /// The terminals in terminal order (the lock order).
    terminals: Vec<(Name, Terminal)>,
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
            .entry((name.to_string(), sid, first as i64))
            .or_insert(last as i64);
        *e = (*e).max(last as i64);
    }

    /// The terminals of `records`, in terminal order (`names` holds, or is given, their
    /// names), and the place of each record's terminal among them.
    fn new(records: &[Record], names: &mut ById<Name>) -> (Rows, Vec<Option<usize>>) {
        // The records by terminal (sorted by a key that orders ids as their text does), the
        // places counted off.
        let mut by_terminal: Vec<((u64, u128), u32)> = records
            .iter()
            .zip(0u32..)
            .filter_map(|(r, k)| Some((r.terminal()?.text_order(), k)))
            .collect();
        by_terminal.sort_unstable();
        let mut places = vec![None; records.len()];
        let count = by_terminal.chunk_by(|a, b| a.0 == b.0).count();
        let mut terminals: Vec<(Name, Terminal)> = Vec::with_capacity(count);
        let mut last = None;
        for (key, k) in by_terminal {
            let Some(id) = records[k as usize].terminal() else {
                continue;
            };
            if last != Some(key) {
                last = Some(key);
                let name = names.entry(id).or_insert_with(|| id.to_string().into());
                terminals.push((name.clone(), Terminal::new(id)));
            }
            places[k as usize] = Some(terminals.len() - 1);
        }
        (
            Rows {
                terminals,
                ..Rows::default()
            },
            places,
        )
    }

    /// The terminals given with their names, in terminal order.
    fn of(terminals: impl Iterator<Item = (Name, TerminalId)>) -> Rows {
        // Sorted (by the ids: their text orders as they do) before each gets its large state.
        let mut named: Vec<(Name, TerminalId)> = terminals.collect();
        named.sort_unstable_by_key(|(_, id)| id.text_order());
        named.dedup_by_key(|(_, id)| *id);
        Rows {
            terminals: named
                .into_iter()
                .map(|(name, id)| (name, Terminal::new(id)))
                .collect(),
            ..Rows::default()
        }
    }

    /// The highest seq of `id`'s `stream` the store holds or has passed (0: none, or not in
    /// the group).
    fn held(&self, id: &TerminalId, stream: Stream) -> u64 {
        let held = self.place(id).map(|i| {
            let pair = &self.terminals[i].1.streams[stream_id(stream) as usize];
            let drops = pair.drops.iter().map(|d| d.1);
            let runs = pair.runs.0.last().map(|r| r.1);
            drops.chain(runs).fold(pair.watermark, i64::max)
        });
        held.map_or(0, |h| h.max(0) as u64)
    }

    /// Takes what the connection knows of these terminals out of `known` (those it does not
    /// know are read).
    fn take_known(&mut self, known: &mut KnownRows) {
        for (_, t) in &mut self.terminals {
            if let Some(k) = known.remove(&t.id) {
                t.take(k);
            }
        }
    }

    /// Puts the group's terminals back among those the connection knows (before the group
    /// commits: the caller forgets them if it fails) and takes what they brought.
    fn remember(&mut self, known: &mut KnownRows) -> Brought {
        let mut brought = Brought::with_capacity(self.terminals.len());
        for (_, t) in &mut self.terminals {
            known.insert(t.id, remembered(t, false));
            brought.push((t.id, Pending::take(t)));
        }
        brought
    }

    /// Where terminal `id` is.
    fn place(&self, id: &TerminalId) -> Option<usize> {
        let key = id.text_order();
        self.terminals
            .binary_search_by_key(&key, |(_, t)| t.id.text_order())
            .ok()
    }

    /// Joins runs stored (from the journal) to the streams of the terminals they are of.
    fn add_runs(&mut self, runs: Vec<journal::Run>) {
        for (name, stream, first, last) in runs {
            let Some(i) = self.position(&name) else {
                continue;
            };
            if let Some(pair) = usize::try_from(stream)
                .ok()
                .and_then(|s| self.terminals[i].1.streams.get_mut(s))
            {
                journal::apply(pair, 0, first, last);
            }
        }
    }

    /// What the group appends to the journal: the runs of its `new` messages (in terminal
    /// order), its drops and numbering starts.
    fn entries<'a>(&'a self, new: &[(usize, crate::store::Message<'_>)]) -> Entries<'a> {
        let mut entries = Entries::default();
        let mut seqs: [Vec<i64>; 2] = Default::default();
        let mut at = 0;
        while at < new.len() {
            let i = new[at].0;
            let end = at + new[at..].iter().take_while(|(j, _)| *j == i).count();
            for s in &mut seqs {
                s.clear();
            }
            for (_, m) in &new[at..end] {
                seqs[stream_id(m.stream) as usize].push(m.seq as i64);
            }
            let name = &*self.terminals[i].0;
            for (sid, s) in seqs.iter_mut().enumerate() {
                s.sort_unstable();
                entries.stored(name, sid as i16, s);
            }
            at = end;
        }
        for ((name, stream, first), last) in &self.dropped {
            entries.dropped(name, *stream, *first, *last);
        }
        for ((name, stream), first) in &self.numbering {
            entries.numbering(name, *stream, *first);
        }
        entries
    }

    /// Notes what does not depend on which messages are new: receptions, presence, rejections
    /// (`places`: where each record's terminal is).
    fn receive(&mut self, records: &[Record], places: &[Option<usize>]) {
        for (r, place) in records.iter().zip(places) {
            if let Some(m) = r.message() {
                if let Some((_, t)) = place.and_then(|i| self.terminals.get_mut(i)) {
                    t.seen(m.received_ms);
                    t.touched = true;
                }
                continue;
            }
            match r {
                Record::Presence {
                    received_ms,
                    presence: p,
                    ..
                } => {
                    if let Some((_, t)) = place.and_then(|i| self.terminals.get_mut(i)) {
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
                } => self.rejected.push((
                    topic.clone(),
                    *received_ms as i64,
                    reason.clone(),
                    payload.to_vec(),
                )),
                _ => {}
            }
        }
    }

    /// Decides which messages of the group are new and copies each as it is found (`places`:
    /// where each record's terminal is); the new ones, in terminal order. A seq in a stored run
    /// is a duplicate; runs only grow, so a seq found in one read before another group's
    /// commit is a duplicate still. The group is taken a terminal at a time (each terminal's
    /// records in the group's order: the first of several copies is the one stored), so the
    /// server stores one message while this decides on the next, and the BRIN index of a day
    /// finds a terminal's rows in the few pages of each group that hold them.
    fn classify<'r>(
        &mut self,
        records: &'r [Record],
        places: &[Option<usize>],
        copy: &mut MessageCopy<'_>,
        applied: &mut Applied,
    ) -> std::io::Result<Vec<(usize, crate::store::Message<'r>)>> {
        let mut order: Vec<(usize, &Record)> = places
            .iter()
            .zip(records)
            .filter(|(_, r)| matches!(r, Record::Lost { .. }) || r.message().is_some())
            .filter_map(|(i, r)| Some(((*i)?, r)))
            .collect();
        order.sort_by_key(|(i, _)| *i);
        let mut new = Vec::new();
        for (i, r) in order {
            if let Record::Lost {
                stream,
                first,
                last,
                ..
            } = r
            {
                self.drop_range(i, *stream, *first, *last);
                continue;
            }
            let Some(m) = r.message() else {
                continue;
            };
            let sid = stream_id(m.stream) as usize;
            let (name, t) = &mut self.terminals[i];
            if t.streams[sid].runs.insert(m.seq as i64) {
                t.streams[sid].advance = true;
                t.changed = true;
                applied.stored += 1;
                copy.write(
                    name,
                    stream_id(m.stream) as i16,
                    m.seq as i64,
                    m.time_ms as i64,
                    m.received_ms as i64,
                    m.raw,
                )?;
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
                    if t.latest.is_empty() {
                        t.latest.reserve(envelope.body.samples.len());
                    }
                    for (k, s) in envelope.body.samples.iter().enumerate() {
                        applied.values += 1;
                        let ts = (envelope.time_ms + u64::from(s.offset_ms)) as i64;
                        keep_newer(&mut t.latest, k, &s.metric, ts, s.value.to_f64());
                    }
                }
                Record::Event { envelope, .. } => match envelope.body {
                    Event::Dropped {
                        stream,
                        first,
                        last,
                    } => self.drop_range(i, stream, first, last),
                    // Applied before the watermarks below advance, so the events stream
                    // passes the gap the announcement itself follows.
                    Event::NumberingFrom { stream, first } => {
                        if let Ok(first) = i64::try_from(first) {
                            let (name, t) = &mut self.terminals[i];
                            let sid = stream_id(stream) as i16;
                            let pair = &mut t.streams[sid as usize];
                            pair.numbering = Some(pair.numbering.map_or(first, |n| n.max(first)));
                            pair.advance = true;
                            let e = self
                                .numbering
                                .entry((name.to_string(), sid))
                                .or_insert(first);
                            *e = (*e).max(first);
                        }
                    }
                    _ => {}
                },
                _ => {}
            }
        }
        Ok(new)
    }

    /// The names of the terminals this connection did not know (their rows are read).
    fn unknown(&self) -> Vec<&str> {
        self.terminals
            .iter()
            .filter(|(_, t)| !t.known)
            .map(|(name, _)| &**name)
            .collect()
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.terminals
            .binary_search_by(|(n, _)| (**n).cmp(name))
            .ok()
    }
}

/// The statements a connection has prepared, by their text: each of a group's statements is
/// parsed once a connection, not once a group.
#[derive(Default)]
pub(super) struct Prepared(HashMap<String, Statement>);

impl Prepared {
    fn get(&mut self, tx: &mut Client, sql: &str) -> Result<Statement, ::postgres::Error> {
        if let Some(statement) = self.0.get(sql) {
            return Ok(statement.clone());
        }
        let statement = tx.prepare(sql)?;
        self.0.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

/// How terminals' rows are read.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Take {
    /// As they are (a group: only folds write them, and they take the journal's lock too).
    Read,
    /// Created where missing and locked (`FOR UPDATE`, in terminal order) until the commit:
    /// a fold, which writes them.
    Locked,
}

impl PgStore {
    /// One attempt at storing a group (see [`Store::apply`](crate::store::Store::apply)); on
    /// an error nothing of it was stored.
    pub(super) fn apply_once(&mut self, records: &[Record]) -> Result<Applied, StoreError> {
        let err = self.err("storing a group");
        let copy_err = self.io_err("storing a group");
        let client = self.client.get_mut();
        let Ingest {
            prepared,
            known,
            pending,
            brought,
            position,
            names,
        } = self.ingest.get_mut();
        let mut tx = journal::lock(client).map_err(&err)?;
        journal::catch_up(&mut tx, prepared, position, known).map_err(&err)?;
        let (mut rows, places) = Rows::new(records, names);
        let mut applied = Applied::default();

        rows.receive(records, &places);
        // The terminals this connection knows (taken out: put back as the group ends, and
        // forgotten if it fails); the others are read, with their runs in the journal.
        rows.take_known(known);
        read_state(&mut tx, prepared, &mut rows, Take::Read).map_err(&err)?;
        let unknown = rows.unknown();
        if !unknown.is_empty() {
            let runs = journal::runs_of(&mut tx, prepared, &unknown).map_err(&err)?;
            rows.add_runs(runs);
        }

        // Which messages are new, each copied as it is found.
        let messages = records.iter().any(|r| r.message().is_some());
        let mut copy = writes::copy_messages(&mut tx, prepared, messages).map_err(&err)?;
        let new = rows
            .classify(records, &places, &mut copy, &mut applied)
            .map_err(&copy_err)?;
        // What the group decides once its messages are known, while the server stores the
        // last of them: the watermarks; what the connection remembers of its terminals (taken
        // back if the group fails) and what they brought (pending once committed); the
        // journal's row.
        advance_watermarks(&mut rows, &mut applied);
        applied.numbering_clashes = crate::store::numbering_clashes(records, |t, stream| {
            Ok::<u64, std::convert::Infallible>(rows.held(t, stream))
        })
        .unwrap_or_else(|never| match never {});
        add_brought(pending, brought);
        let group_brought = rows.remember(known);
        let entries = rows.entries(&new);
        let committed = copy.finish().map_err(&copy_err).and_then(|_| {
            write_gaps(&mut tx, prepared, &rows).map_err(&err)?;
            let appended = journal::append(&mut tx, prepared, position, &entries).map_err(&err)?;
            tx.commit().map_err(&err)?;
            Ok(appended)
        });
        match committed {
            Ok(appended) => {
                if let Some(id) = appended {
                    position.last = position.last.max(id);
                    position.appended += 1;
                }
                *brought = group_brought;
                Ok(applied)
            }
            Err(e) => {
                // Nothing of the group is stored: its terminals are read afresh when next met.
                for (_, t) in &rows.terminals {
                    known.remove(&t.id);
                }
                Err(e)
            }
        }
    }
}

/// What a connection keeps of a terminal once its group or fold (`written`: its row was
/// written, under the next revision) committed: its streams, the drops and numbering starts the
/// watermark passed forgotten, and its row.
fn remembered(t: &mut Terminal, written: bool) -> Known {
    let mut streams = std::mem::take(&mut t.streams);
    for pair in &mut streams {
        pair.advance = false;
        let wm = pair.watermark;
        pair.drops.retain(|d| d.1 > wm);
        pair.numbering = pair.numbering.filter(|n| n - 1 > wm);
    }
    Known {
        streams,
        exists: t.exists || written,
        revision: t.revision + i64::from(written),
        stored: std::mem::take(&mut t.stored),
    }
}

/// Whether a failed group is worth trying again as a whole (it was rolled back).
pub(super) fn transient(e: &StoreError) -> bool {
    matches!(e, StoreError::Postgres { source, .. } if matches!(
        source.code(),
        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    ))
}
