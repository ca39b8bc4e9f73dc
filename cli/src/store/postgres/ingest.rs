//! Storing a group of records on PostgreSQL. The group takes the rows in `terminals` of its
//! terminals — the runs of seqs stored and the watermark of each stream, the newest values and
//! the revision — as the connection remembers them or read (with the drops and numbering starts
//! ahead of the watermarks), and decides here which of its messages are new: a seq inside a
//! stored run is a duplicate. Only the new messages are binary-COPied into `messages`; the
//! drops and numbering starts are upserted, and each terminal's row is written back once, under
//! the revision taken ([`Take`]), all in the group's one transaction.

use std::collections::{BTreeMap, HashMap};

use ::postgres::binary_copy::BinaryCopyInWriter;
use ::postgres::error::SqlState;
use ::postgres::types::{ToSql, Type};
use ::postgres::{Statement, Transaction};
use cuntong_core::delivery::Watermarks;
use cuntong_core::envelope::{Event, Stream};
use cuntong_core::terminal_id::TerminalId;

use super::PgStore;
use crate::store::{Applied, Record, StoreError, stream_id};

/// The seqs of one (terminal, stream) stored so far, as runs `first..=last` in order and
/// apart (two runs never touch). Seqs are as stored: one beyond `i64` is a negative number.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Runs(Vec<(i64, i64)>);

impl Runs {
    /// The runs of a stored array (first and last of each run), put in order and merged
    /// whatever it holds.
    pub(super) fn from_flat(flat: &[i64]) -> Runs {
        let mut pairs: Vec<(i64, i64)> = flat
            .chunks_exact(2)
            .filter(|c| c[0] <= c[1])
            .map(|c| (c[0], c[1]))
            .collect();
        pairs.sort_unstable();
        let mut runs: Vec<(i64, i64)> = Vec::with_capacity(pairs.len());
        for (first, last) in pairs {
            match runs.last_mut() {
                Some(run) if first <= run.1.saturating_add(1) => run.1 = run.1.max(last),
                _ => runs.push((first, last)),
            }
        }
        Runs(runs)
    }

    /// The array stored: first and last of each run.
    pub(super) fn flat(&self) -> impl Iterator<Item = i64> + '_ {
        self.0.iter().flat_map(|&(first, last)| [first, last])
    }

    /// Adds `seq`: false if it was stored already.
    pub(super) fn insert(&mut self, seq: i64) -> bool {
        let runs = &mut self.0;
        // Nearly always: the seq after the last run, or later.
        match runs.last_mut() {
            None => {
                runs.push((seq, seq));
                return true;
            }
            Some(last) if seq > last.1 => {
                if seq == last.1 + 1 {
                    last.1 = seq;
                } else {
                    runs.push((seq, seq));
                }
                return true;
            }
            Some(_) => {}
        }
        // The first run ending at or after `seq` (there is one: the last).
        let i = runs.partition_point(|r| r.1 < seq);
        if runs[i].0 <= seq {
            return false;
        }
        let joins_next = seq + 1 == runs[i].0;
        let joins_previous = i > 0 && runs[i - 1].1 + 1 == seq;
        match (joins_previous, joins_next) {
            (true, true) => {
                runs[i - 1].1 = runs[i].1;
                runs.remove(i);
            }
            (true, false) => runs[i - 1].1 = seq,
            (false, true) => runs[i].0 = seq,
            (false, false) => runs.insert(i, (seq, seq)),
        }
        true
    }

    /// The last seq of the run holding `seq`, if one does.
    pub(super) fn end_of(&self, seq: i64) -> Option<i64> {
        let i = self.0.partition_point(|r| r.1 < seq);
        self.0.get(i).filter(|r| r.0 <= seq).map(|r| r.1)
    }
}

/// `watermark` advanced over the stored seqs, the reported drops and the seqs below where the
/// numbering starts (an earlier box's, or never used; not lost), exactly as the SQLite store
/// advances it: repeatedly past a drop or numbering start covering the next seq, then to the end
/// of the run holding it.
pub(super) fn advance(
    mut watermark: i64,
    runs: &Runs,
    drops: &[(i64, i64)],
    numbering: Option<i64>,
) -> i64 {
    loop {
        let before = watermark;
        let Some(next) = watermark.checked_add(1) else {
            break;
        };
        let covered = drops
            .iter()
            .filter(|d| d.0 <= next && d.1 >= next)
            .map(|d| d.1)
            .chain(numbering.map(|n| n - 1).filter(|&n| n >= next))
            .max();
        if let Some(covered) = covered {
            watermark = watermark.max(covered);
        }
        if let Some(end) = watermark.checked_add(1).and_then(|n| runs.end_of(n)) {
            watermark = end;
        }
        if watermark == before {
            return watermark;
        }
    }
    watermark
}

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

/// Reads the rows in `terminals` of the group's terminals (the runs and watermarks of their
/// streams, their newest values, the revision), and the drops and numbering starts ahead of
/// those watermarks. [`Take::Locked`] first creates the rows missing and locks them all in
/// terminal order, so that no other group writes them before this one commits.
fn read_state(
    tx: &mut Transaction<'_>,
    prepared: &mut Prepared,
    rows: &mut Rows,
    take: Take,
) -> Result<(), ::postgres::Error> {
    for (topic, received, reason, payload) in &rows.rejected {
        let statement = prepared.get(
            tx,
            "INSERT INTO rejected (topic, received_ms, reason, payload) VALUES ($1, $2, $3, $4)",
        )?;
        tx.execute(&statement, &[topic, received, reason, payload])?;
    }
    if rows.terminals.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = rows
        .terminals
        .iter()
        .filter(|(_, t)| !t.known)
        .map(|(n, _)| n.as_str())
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    if take == Take::Locked {
        let unknown = rows.terminals.iter().filter(|(_, t)| !t.known);
        let sites: Vec<&str> = unknown.clone().map(|(_, t)| t.site.as_str()).collect();
        let levels: Vec<&str> = unknown.map(|(_, t)| t.level).collect();
        let statement = prepared.get(
            tx,
            "INSERT INTO terminals (terminal, site, level)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
             ON CONFLICT (terminal) DO NOTHING",
        )?;
        tx.execute(&statement, &[&names, &sites, &levels])?;
    }
    let lock = match take {
        Take::Optimistic => "",
        Take::Locked => "ORDER BY terminal FOR UPDATE",
    };
    let statement = prepared.get(
        tx,
        &format!(
            "SELECT terminal, revision, telemetry_wm, telemetry_runs, events_wm, events_runs,
                metrics, ts_ms, vals
             FROM terminals WHERE terminal = ANY($1) {lock}"
        ),
    )?;
    let state = tx.query(&statement, &[&names])?;
    let touched: Vec<&str> = rows
        .terminals
        .iter()
        .filter(|(_, t)| t.touched && !t.known)
        .map(|(name, _)| name.as_str())
        .collect();
    let gaps = if touched.is_empty() {
        Vec::new()
    } else {
        let statement = prepared.get(
            tx,
            "SELECT d.terminal, d.stream, d.first, d.last FROM dropped d
         LEFT JOIN terminals t ON t.terminal = d.terminal
         WHERE d.terminal = ANY($1) AND d.last > CASE d.stream
            WHEN 0 THEN coalesce(t.telemetry_wm, 0) ELSE coalesce(t.events_wm, 0) END
         UNION ALL
         SELECT n.terminal, n.stream, n.first, NULL FROM numbering n
         LEFT JOIN terminals t ON t.terminal = n.terminal
         WHERE n.terminal = ANY($1) AND n.first - 1 > CASE n.stream
            WHEN 0 THEN coalesce(t.telemetry_wm, 0) ELSE coalesce(t.events_wm, 0) END",
        )?;
        tx.query(&statement, &[&touched])?
    };
    for r in &state {
        let Some(i) = rows.position(r.get(0)) else {
            continue;
        };
        let t = &mut rows.terminals[i].1;
        t.exists = true;
        t.revision = r.get(1);
        for (sid, col) in [(0, 2), (1, 4)] {
            t.streams[sid].watermark = r.get(col);
            t.streams[sid].runs = Runs::from_flat(&r.get::<_, Vec<i64>>(col + 1));
        }
        let metrics: Option<Vec<String>> = r.get(6);
        let ts: Option<Vec<i64>> = r.get(7);
        let vals: Option<Vec<f64>> = r.get(8);
        if let (Some(metrics), Some(ts), Some(vals)) = (metrics, ts, vals) {
            t.stored = metrics.into_iter().zip(ts.into_iter().zip(vals)).collect();
        }
    }
    for r in &gaps {
        let (Some(i), Ok(sid)) = (rows.position(r.get(0)), usize::try_from(r.get::<_, i16>(1)))
        else {
            continue;
        };
        if let Some(pair) = rows.terminals[i].1.streams.get_mut(sid) {
            let first: i64 = r.get(2);
            match r.get::<_, Option<i64>>(3) {
                Some(last) => pair.drops.push((first, last)),
                None => pair.numbering = Some(pair.numbering.map_or(first, |n| n.max(first))),
            }
        }
    }
    Ok(())
}

/// Writes the drops and numbering starts the group brought, each table by one statement in
/// key order.
fn write_gaps(
    tx: &mut Transaction<'_>,
    prepared: &mut Prepared,
    rows: &Rows,
) -> Result<(), ::postgres::Error> {
    if !rows.dropped.is_empty() {
        let (mut t, mut s, mut f, mut l) = (vec![], vec![], vec![], vec![]);
        for ((terminal, stream, first), last) in &rows.dropped {
            t.push(terminal.as_str());
            s.push(*stream);
            f.push(*first);
            l.push(*last);
        }
        let statement = prepared.get(
            tx,
            "INSERT INTO dropped (terminal, stream, first, last)
             SELECT * FROM unnest($1::text[], $2::smallint[], $3::bigint[], $4::bigint[])
             ON CONFLICT (terminal, stream, first)
             DO UPDATE SET last = greatest(dropped.last, excluded.last)",
        )?;
        tx.execute(&statement, &[&t, &s, &f, &l])?;
    }
    if !rows.numbering.is_empty() {
        let (mut t, mut s, mut f) = (vec![], vec![], vec![]);
        for ((terminal, stream), first) in &rows.numbering {
            t.push(terminal.as_str());
            s.push(*stream);
            f.push(*first);
        }
        let statement = prepared.get(
            tx,
            "INSERT INTO numbering (terminal, stream, first)
             SELECT * FROM unnest($1::text[], $2::smallint[], $3::bigint[])
             ON CONFLICT (terminal, stream)
             DO UPDATE SET first = greatest(numbering.first, excluded.first)",
        )?;
        tx.execute(&statement, &[&t, &s, &f])?;
    }
    Ok(())
}

/// Binary-COPies the group's new messages into `messages` (each lands in its day's partition).
fn copy_messages(
    tx: &mut Transaction<'_>,
    rows: &Rows,
    new: &[(usize, crate::store::Message<'_>)],
) -> Result<(), ::postgres::Error> {
    if new.is_empty() {
        return Ok(());
    }
    let sink = tx.copy_in(
        "COPY messages (terminal, stream, seq, time_ms, received_ms, payload) FROM STDIN BINARY",
    )?;
    let mut w = BinaryCopyInWriter::new(
        sink,
        &[
            Type::TEXT,
            Type::INT2,
            Type::INT8,
            Type::INT8,
            Type::INT8,
            Type::BYTEA,
        ],
    );
    for (i, m) in new {
        w.write(&[
            &rows.terminals[*i].0,
            &(stream_id(m.stream) as i16),
            &(m.seq as i64),
            &(m.time_ms as i64),
            &(m.received_ms as i64),
            &m.raw,
        ])?;
    }
    w.finish()?;
    Ok(())
}

/// Appends `items` to `flat`; the 1-based bounds of the slice they take there.
fn push_slice<T>(flat: &mut Vec<T>, items: impl IntoIterator<Item = T>) -> (i32, i32) {
    let lo = flat.len() as i32 + 1;
    flat.extend(items);
    (lo, flat.len() as i32)
}

/// The columns of some terminals' rows, as arrays a statement unnests (one element a row); the
/// runs of both streams and the newest values as slices of one flat array each.
#[derive(Default)]
struct Columns<'a> {
    names: Vec<&'a str>,
    sites: Vec<&'a str>,
    levels: Vec<&'a str>,
    online: Vec<bool>,
    offline: Vec<Option<i64>>,
    version: Vec<Option<&'a str>>,
    started: Vec<Option<i64>>,
    keep_alive: Vec<Option<i64>>,
    seen: Vec<Option<i64>>,
    /// 0: the row's state is not written (only presence and last reception are).
    revision: Vec<i64>,
    marks: [Vec<i64>; 2],
    runs: Vec<i64>,
    run_bounds: [(Vec<i32>, Vec<i32>); 2],
    /// The metric names as an array literal; `None`: the newest values are not written.
    metrics: Vec<Option<String>>,
    ts: Vec<i64>,
    vals: Vec<f64>,
    value_bounds: (Vec<i32>, Vec<i32>),
}

impl<'a> Columns<'a> {
    fn push(&mut self, name: &'a str, t: &'a Terminal) {
        self.names.push(name);
        self.sites.push(&t.site);
        self.levels.push(t.level);
        let p = t.presence.as_ref();
        self.online.push(t.online());
        self.offline.push(t.offline);
        self.version.push(p.map(|p| p.1.as_str()));
        self.started.push(p.map(|p| p.2));
        self.keep_alive.push(p.map(|p| p.3));
        self.seen.push(t.last_seen);
        // A terminal the group brought messages of is written under the revision read even if
        // nothing of its state changed: the watermark it is given is then the row's.
        self.revision.push(if t.changed || t.touched {
            t.revision + 1
        } else {
            0
        });
        for (sid, pair) in t.streams.iter().enumerate() {
            self.marks[sid].push(pair.watermark);
            let (lo, hi) = push_slice(&mut self.runs, pair.runs.flat());
            self.run_bounds[sid].0.push(lo);
            self.run_bounds[sid].1.push(hi);
        }
        if t.latest.is_empty() {
            self.metrics.push(None);
            self.value_bounds.0.push(1);
            self.value_bounds.1.push(0);
            return;
        }
        self.metrics.push(Some(array_literal(t.stored.keys())));
        let (lo, hi) = push_slice(&mut self.ts, t.stored.values().map(|e| e.0));
        self.vals.extend(t.stored.values().map(|e| e.1));
        self.value_bounds.0.push(lo);
        self.value_bounds.1.push(hi);
    }

    /// The statement's parameters, in the order of [`Columns::ROWS`].
    fn params(&self) -> [&(dyn ToSql + Sync); 22] {
        [
            &self.names,
            &self.sites,
            &self.levels,
            &self.online,
            &self.version,
            &self.started,
            &self.keep_alive,
            &self.seen,
            &self.revision,
            &self.marks[0],
            &self.marks[1],
            &self.runs,
            &self.run_bounds[0].0,
            &self.run_bounds[0].1,
            &self.run_bounds[1].0,
            &self.run_bounds[1].1,
            &self.metrics,
            &self.ts,
            &self.vals,
            &self.value_bounds.0,
            &self.value_bounds.1,
            &self.offline,
        ]
    }

    /// The rows of [`Columns::params`], as a query to select from.
    const ROWS: &'static str = r#"
        SELECT u.terminal, u.site, u.level, u.online, u.version, u.started, u.keep_alive,
            u.seen, u.revision, u.twm, u.ewm, ($12::bigint[])[u.tlo:u.thi] AS truns,
            ($12::bigint[])[u.elo:u.ehi] AS eruns, u.metrics::text[] AS metrics,
            ($18::bigint[])[u.vlo:u.vhi] AS ts, ($19::float8[])[u.vlo:u.vhi] AS vals, u.offline
        FROM unnest($1::text[], $2::text[], $3::text[], $4::boolean[], $5::text[],
            $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[],
            $11::bigint[], $13::int[], $14::int[], $15::int[], $16::int[], $17::text[],
            $20::int[], $21::int[], $22::bigint[])
            AS u(terminal, site, level, online, version, started, keep_alive, seen, revision,
                twm, ewm, tlo, thi, elo, ehi, metrics, vlo, vhi, offline)"#;
}

/// Advances the watermarks of the touched terminals' streams, gives those terminals their
/// watermarks, merges the newest values (a metric's newer value replaces the older, the
/// group's on a tie), and writes the row of every terminal of the group: presence and last
/// reception merged with what is stored; the runs, watermarks and newest values of the
/// terminals they changed for, under the revision read. An existing row is updated, a new one
/// inserted. False if another group wrote or created one of the rows since it was read.
fn write_terminals(
    tx: &mut Transaction<'_>,
    prepared: &mut Prepared,
    rows: &mut Rows,
    applied: &mut Applied,
) -> Result<bool, ::postgres::Error> {
    for (_, t) in &mut rows.terminals {
        let mut wm = Watermarks::default();
        for stream in Stream::ALL {
            let pair = &mut t.streams[stream_id(stream) as usize];
            if pair.advance {
                let to = advance(pair.watermark, &pair.runs, &pair.drops, pair.numbering);
                t.changed |= to != pair.watermark;
                pair.watermark = to;
            }
            wm.set(stream, pair.watermark.max(0) as u64);
        }
        if t.touched {
            applied.watermarks.push((t.id, wm));
        }
        for (metric, &(at, value)) in &t.latest {
            match t.stored.get_mut(metric) {
                Some(e) if at >= e.0 => *e = (at, value),
                Some(_) => {}
                None => {
                    t.stored.insert(metric.clone(), (at, value));
                }
            }
        }
    }
    let (mut update, mut insert) = (Columns::default(), Columns::default());
    for (name, t) in &rows.terminals {
        if t.exists {
            update.push(name, t);
        } else {
            insert.push(name, t);
        }
    }
    if !update.names.is_empty() {
        let statement = prepared.get(
            tx,
            &format!(
                "UPDATE terminals AS t SET
                    online = CASE WHEN u.started IS NOT NULL THEN u.online
                        ELSE t.online OR coalesce(u.seen, 0) > coalesce(t.offline_ms, 0) END,
                    offline_ms = greatest(t.offline_ms, u.offline),
                    version = CASE WHEN u.started IS NULL THEN t.version ELSE u.version END,
                    keep_alive_s = CASE WHEN u.started IS NULL THEN t.keep_alive_s
                        ELSE u.keep_alive END,
                    started_ms = coalesce(u.started, t.started_ms),
                    last_seen_ms = CASE WHEN u.seen IS NULL THEN t.last_seen_ms
                        ELSE greatest(coalesce(t.last_seen_ms, 0), u.seen) END,
                    revision = CASE WHEN u.revision = 0 THEN t.revision ELSE u.revision END,
                    telemetry_wm = CASE WHEN u.revision = 0 THEN t.telemetry_wm ELSE u.twm END,
                    events_wm = CASE WHEN u.revision = 0 THEN t.events_wm ELSE u.ewm END,
                    telemetry_runs = CASE WHEN u.revision = 0 THEN t.telemetry_runs
                        ELSE u.truns END,
                    events_runs = CASE WHEN u.revision = 0 THEN t.events_runs ELSE u.eruns END,
                    metrics = CASE WHEN u.metrics IS NULL THEN t.metrics ELSE u.metrics END,
                    ts_ms = CASE WHEN u.metrics IS NULL THEN t.ts_ms ELSE u.ts END,
                    vals = CASE WHEN u.metrics IS NULL THEN t.vals ELSE u.vals END
                 FROM ({}) AS u
                 WHERE t.terminal = u.terminal
                   AND (u.revision = 0 OR t.revision = u.revision - 1)",
                Columns::ROWS
            ),
        )?;
        let updated = tx.execute(&statement, &update.params())?;
        if updated != update.names.len() as u64 {
            return Ok(false);
        }
    }
    if !insert.names.is_empty() {
        let statement = prepared.get(
            tx,
            &format!(
                "INSERT INTO terminals (terminal, site, level, online, version, started_ms,
                    keep_alive_s, last_seen_ms, revision, telemetry_wm, events_wm,
                    telemetry_runs, events_runs, metrics, ts_ms, vals, offline_ms)
                 {}
                 ON CONFLICT (terminal) DO NOTHING",
                Columns::ROWS
            ),
        )?;
        let inserted = tx.execute(&statement, &insert.params())?;
        if inserted != insert.names.len() as u64 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A PostgreSQL array literal of `items`, each quoted.
fn array_literal<'a>(items: impl Iterator<Item = &'a String>) -> String {
    let mut out = String::from("{");
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        for c in item.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
    out.push('}');
    out
}

/// Whether a failed group is worth trying again as a whole (it was rolled back).
pub(super) fn transient(e: &StoreError) -> bool {
    matches!(e, StoreError::Postgres { source, .. } if matches!(
        source.code(),
        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(seqs: &[i64]) -> Runs {
        let mut r = Runs::default();
        for &s in seqs {
            r.insert(s);
        }
        r
    }

    #[test]
    fn a_seq_inside_or_at_either_end_of_a_run_is_already_stored_and_one_between_runs_is_new() {
        let mut r = runs(&[1, 2, 3, 4, 5, 10, 11, 12]);
        assert_eq!(r.0, [(1, 5), (10, 12)]);
        for seq in [1, 3, 5, 10, 11, 12] {
            assert!(!r.insert(seq), "{seq} is stored");
        }
        assert_eq!(r.0, [(1, 5), (10, 12)]);
        // Next to the end of a run, next to the start of one, alone, and joining two.
        assert!(r.insert(6));
        assert!(r.insert(9));
        assert!(r.insert(20));
        assert_eq!(r.0, [(1, 6), (9, 12), (20, 20)]);
        assert!(r.insert(7));
        assert!(r.insert(8));
        assert_eq!(r.0, [(1, 12), (20, 20)]);
        assert!(r.insert(0) && r.insert(-5) && r.insert(19));
        assert_eq!(r.0, [(-5, -5), (0, 12), (19, 20)]);
    }

    #[test]
    fn seqs_in_any_order_make_the_same_runs_as_in_order() {
        let want = runs(&(1..=200).filter(|s| s % 17 != 0).collect::<Vec<_>>());
        let mut shuffled: Vec<i64> = (1..=200).filter(|s| s % 17 != 0).collect();
        // A fixed permutation: reversed halves interleaved.
        shuffled.reverse();
        let (a, b) = shuffled.split_at(shuffled.len() / 2);
        let mixed: Vec<i64> = b.iter().zip(a).flat_map(|(x, y)| [*x, *y]).collect();
        let mut r = runs(&mixed);
        for s in &b[a.len()..] {
            r.insert(*s);
        }
        assert_eq!(r, want);
        assert_eq!(r.0.len(), 12);
    }

    #[test]
    fn metric_names_are_quoted_in_an_array_literal_whatever_they_hold() {
        let names = [
            "air.temp",
            "a,b",
            "{x}",
            "say \"hi\"",
            "back\\slash",
            "NULL",
            "",
        ]
        .map(String::from);
        assert_eq!(
            array_literal(names.iter()),
            r#"{"air.temp","a,b","{x}","say \"hi\"","back\\slash","NULL",""}"#
        );
        assert_eq!(array_literal([].iter()), "{}");
    }

    #[test]
    fn stored_runs_are_read_in_order_merged_and_without_reversed_pairs() {
        let r = Runs::from_flat(&[10, 12, 1, 5, 6, 7, 4, 4, 20, 19, 30]);
        assert_eq!(r.0, [(1, 7), (10, 12)]);
        assert_eq!(r.flat().collect::<Vec<_>>(), [1, 7, 10, 12]);
        assert_eq!(Runs::from_flat(&[i64::MAX - 1, i64::MAX, 5, 6]).0.len(), 2);
        assert_eq!(r.end_of(1), Some(7));
        assert_eq!(r.end_of(7), Some(7));
        assert_eq!(r.end_of(8), None);
        assert_eq!(r.end_of(11), Some(12));
        assert_eq!(r.end_of(13), None);
    }

    #[test]
    fn the_watermark_goes_to_the_end_of_the_run_after_it_and_through_drops_and_numbering_starts() {
        let r = runs(&[1, 2, 3, 7, 8, 20]);
        assert_eq!(advance(0, &r, &[], None), 3);
        assert_eq!(advance(3, &r, &[], None), 3, "4 is missing");
        // 4..=6 reported lost: on to the end of the next run.
        assert_eq!(advance(0, &r, &[(4, 6)], None), 8);
        // A drop overlapping what is stored, and another one further on.
        assert_eq!(advance(0, &r, &[(2, 5), (6, 6), (9, 19)], None), 20);
        // The numbering starts at 10: 9 and below are passed.
        assert_eq!(advance(0, &r, &[], Some(10)), 9);
        assert_eq!(advance(0, &r, &[], Some(20)), 20);
        // Not below the stored watermark, and never past the last seq there is.
        assert_eq!(advance(50, &r, &[(1, 40)], None), 50);
        let top = runs(&[i64::MAX - 1, i64::MAX]);
        assert_eq!(advance(i64::MAX - 2, &top, &[], None), i64::MAX);
        assert_eq!(advance(i64::MAX, &top, &[], None), i64::MAX);
        // Seqs beyond i64 (stored negative) are never reached.
        assert_eq!(advance(0, &runs(&[-3, -2, 1]), &[], None), 1);
    }
}
