//! Storing a group of records on PostgreSQL. The group first takes the row in `terminals` of
//! each terminal it touches (upserted in terminal order: the lock that lets one group at a time
//! past this point for a terminal), then reads what it needs of those terminals — the runs of
//! seqs stored and the watermark of each stream (`streams`), the drops and numbering starts
//! ahead of the watermarks, the newest values — and decides here which of its messages are new:
//! a seq inside a stored run is a duplicate. Only the new messages are binary-COPied into
//! `messages`; the runs, watermarks, drops, numbering starts and newest values are written back,
//! one statement a table, all in the group's one transaction.

use std::collections::{BTreeMap, HashMap};

use ::postgres::Transaction;
use ::postgres::binary_copy::BinaryCopyInWriter;
use ::postgres::error::SqlState;
use ::postgres::types::Type;
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
    /// This group added seqs to the runs.
    grew: bool,
}

/// A terminal the group brings something of.
struct Terminal {
    id: TerminalId,
    site: String,
    level: &'static str,
    /// The last presence in the group: (online, version, started, keep-alive).
    presence: Option<(bool, String, i64, i64)>,
    /// The latest reception in the group.
    last_seen: Option<i64>,
    /// It sent messages (new or not): its watermarks are published again.
    touched: bool,
    /// It sent telemetry: its newest values are read.
    telemetry: bool,
    streams: [Pair; 2],
    /// The newest time and value of each metric in the group's new telemetry.
    latest: BTreeMap<String, (i64, f64)>,
}

impl Terminal {
    fn new(id: TerminalId) -> Terminal {
        Terminal {
            id,
            site: id.site().to_string(),
            level: id.site().level().as_str(),
            presence: None,
            last_seen: None,
            touched: false,
            telemetry: false,
            streams: Default::default(),
            latest: BTreeMap::new(),
        }
    }

    fn seen(&mut self, ms: u64) {
        let ms = ms as i64;
        self.last_seen = Some(self.last_seen.map_or(ms, |v| v.max(ms)));
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
    /// The terminals of `records`, in terminal order.
    fn new(records: &[Record]) -> Rows {
        let mut by_name: BTreeMap<String, Terminal> = BTreeMap::new();
        let mut known: HashMap<TerminalId, String> = HashMap::new();
        for r in records {
            let t = match r {
                Record::Telemetry { terminal, .. }
                | Record::Event { terminal, .. }
                | Record::Presence { terminal, .. } => terminal,
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
}

impl PgStore {
    /// One attempt at storing a group (see [`Store::apply`]).
    pub(super) fn apply_once(&mut self, records: &[Record]) -> Result<Applied, StoreError> {
        let err = self.err("storing a group");
        let client = self.client.get_mut();
        let mut tx = client.transaction().map_err(&err)?;
        let mut applied = Applied::default();
        let mut rows = Rows::new(records);

        // What does not depend on which messages are new: receptions, presence, rejections.
        for r in records {
            if let Some(m) = r.message() {
                if let Some((_, t)) = rows.terminal(m.terminal) {
                    t.seen(m.received_ms);
                    t.touched = true;
                    t.telemetry |= m.stream == Stream::Telemetry;
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
        lock_terminals(&mut tx, &rows).map_err(&err)?;
        let stored_latest = read_state(&mut tx, &mut rows).map_err(&err)?;

        // Which messages are new, in the group's order (the first of several copies is the one
        // stored): a seq in a stored run is a duplicate.
        let mut new = Vec::new();
        for r in records {
            let Some(m) = r.message() else {
                continue;
            };
            let Some(i) = rows.index.get(m.terminal).copied() else {
                continue;
            };
            let sid = stream_id(m.stream) as usize;
            let pair = &mut rows.terminals[i].1.streams[sid];
            if !pair.runs.insert(m.seq as i64) {
                // It resent: it may not have our watermark (its terminal is touched: sent
                // again).
                applied.duplicates += 1;
                continue;
            }
            pair.grew = true;
            pair.advance = true;
            applied.stored += 1;
            new.push((i, m));
            match r {
                Record::Telemetry { envelope, .. } => {
                    let t = &mut rows.terminals[i].1;
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
                    } if first <= last => {
                        let (name, t) = &mut rows.terminals[i];
                        let sid = stream_id(stream) as i16;
                        let pair = &mut t.streams[sid as usize];
                        pair.drops.push((first as i64, last as i64));
                        pair.advance = true;
                        let e = rows
                            .dropped
                            .entry((name.clone(), sid, first as i64))
                            .or_insert(last as i64);
                        *e = (*e).max(last as i64);
                    }
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
        copy_messages(&mut tx, &rows, &new).map_err(&err)?;
        write_rows(&mut tx, &mut rows, stored_latest, &mut applied).map_err(&err)?;
        tx.commit().map_err(&err)?;
        Ok(applied)
    }
}

/// Writes the rejected records, then upserts the row in `terminals` of every terminal of the
/// group, in terminal order: locked from now to the commit, so that other groups of these
/// terminals wait before they read their runs, watermarks and newest values. A row without
/// presence has no start time: it only moves last_seen.
fn lock_terminals(tx: &mut Transaction<'_>, rows: &Rows) -> Result<(), ::postgres::Error> {
    for (topic, received, reason, payload) in &rows.rejected {
        tx.execute(
            "INSERT INTO rejected (topic, received_ms, reason, payload) VALUES ($1, $2, $3, $4)",
            &[topic, received, reason, payload],
        )?;
    }
    if rows.terminals.is_empty() {
        return Ok(());
    }
    let mut cols: (Vec<&str>, Vec<&str>, Vec<&str>) = Default::default();
    let mut online = Vec::new();
    let mut version: Vec<Option<&str>> = Vec::new();
    let mut started: Vec<Option<i64>> = Vec::new();
    let mut keep_alive: Vec<Option<i64>> = Vec::new();
    let mut seen: Vec<Option<i64>> = Vec::new();
    for (name, t) in &rows.terminals {
        cols.0.push(name);
        cols.1.push(&t.site);
        cols.2.push(t.level);
        let p = t.presence.as_ref();
        online.push(p.is_some_and(|p| p.0));
        version.push(p.map(|p| p.1.as_str()));
        started.push(p.map(|p| p.2));
        keep_alive.push(p.map(|p| p.3));
        seen.push(t.last_seen);
    }
    tx.execute(
        "INSERT INTO terminals AS t
            (terminal, site, level, online, version, started_ms, keep_alive_s, last_seen_ms)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::boolean[], $5::text[],
            $6::bigint[], $7::bigint[], $8::bigint[])
         ON CONFLICT (terminal) DO UPDATE SET
            online = CASE WHEN excluded.started_ms IS NULL THEN t.online ELSE excluded.online END,
            version = CASE WHEN excluded.started_ms IS NULL THEN t.version
                ELSE excluded.version END,
            keep_alive_s = CASE WHEN excluded.started_ms IS NULL THEN t.keep_alive_s
                ELSE excluded.keep_alive_s END,
            started_ms = coalesce(excluded.started_ms, t.started_ms),
            last_seen_ms = CASE WHEN excluded.last_seen_ms IS NULL THEN t.last_seen_ms
                ELSE greatest(coalesce(t.last_seen_ms, 0), excluded.last_seen_ms) END",
        &[
            &cols.0,
            &cols.1,
            &cols.2,
            &online,
            &version,
            &started,
            &keep_alive,
            &seen,
        ],
    )?;
    Ok(())
}

/// The stored newest values of a terminal: metric → (time, value).
type Latest = BTreeMap<String, (i64, f64)>;

/// Reads, under the terminals' locks (each statement sees what committed before it), the runs
/// and watermarks of the touched terminals' streams, the drops and numbering starts ahead of
/// those watermarks, and the newest values of the terminals that sent telemetry.
fn read_state(
    tx: &mut Transaction<'_>,
    rows: &mut Rows,
) -> Result<HashMap<usize, Latest>, ::postgres::Error> {
    let touched: Vec<&str> = rows
        .terminals
        .iter()
        .filter(|(_, t)| t.touched)
        .map(|(name, _)| name.as_str())
        .collect();
    if touched.is_empty() {
        return Ok(HashMap::new());
    }
    let streams = tx.query(
        "SELECT terminal, stream, watermark, runs FROM streams WHERE terminal = ANY($1)",
        &[&touched],
    )?;
    let gaps = tx.query(
        "SELECT d.terminal, d.stream, d.first, d.last FROM dropped d
         LEFT JOIN streams w ON w.terminal = d.terminal AND w.stream = d.stream
         WHERE d.terminal = ANY($1) AND d.last > coalesce(w.watermark, 0)
         UNION ALL
         SELECT n.terminal, n.stream, n.first, NULL FROM numbering n
         LEFT JOIN streams w ON w.terminal = n.terminal AND w.stream = n.stream
         WHERE n.terminal = ANY($1) AND n.first - 1 > coalesce(w.watermark, 0)",
        &[&touched],
    )?;
    let telemetry: Vec<&str> = rows
        .terminals
        .iter()
        .filter(|(_, t)| t.telemetry)
        .map(|(name, _)| name.as_str())
        .collect();
    let latest = if telemetry.is_empty() {
        Vec::new()
    } else {
        tx.query(
            "SELECT terminal, metrics, ts_ms, vals FROM latest WHERE terminal = ANY($1)",
            &[&telemetry],
        )?
    };
    let position = |rows: &Rows, name: &str| {
        rows.terminals
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()
    };
    for r in &streams {
        let (Some(i), Ok(sid)) = (
            position(rows, r.get(0)),
            usize::try_from(r.get::<_, i16>(1)),
        ) else {
            continue;
        };
        if let Some(pair) = rows.terminals[i].1.streams.get_mut(sid) {
            pair.watermark = r.get(2);
            pair.runs = Runs::from_flat(&r.get::<_, Vec<i64>>(3));
        }
    }
    for r in &gaps {
        let (Some(i), Ok(sid)) = (
            position(rows, r.get(0)),
            usize::try_from(r.get::<_, i16>(1)),
        ) else {
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
    let mut stored = HashMap::new();
    for r in &latest {
        let Some(i) = position(rows, r.get(0)) else {
            continue;
        };
        let metrics: Vec<String> = r.get(1);
        let ts: Vec<i64> = r.get(2);
        let vals: Vec<f64> = r.get(3);
        stored.insert(
            i,
            metrics.into_iter().zip(ts.into_iter().zip(vals)).collect(),
        );
    }
    Ok(stored)
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

/// Writes what the group changes besides its messages, table by table in terminal order: the
/// drops and numbering starts, the newest values, then the runs and watermarks of each stream
/// (advanced here over what the runs, drops and numbering starts now cover), and gives the
/// touched terminals their watermarks.
fn write_rows(
    tx: &mut Transaction<'_>,
    rows: &mut Rows,
    stored_latest: HashMap<usize, Latest>,
    applied: &mut Applied,
) -> Result<(), ::postgres::Error> {
    if !rows.dropped.is_empty() {
        let (mut t, mut s, mut f, mut l) = (vec![], vec![], vec![], vec![]);
        for ((terminal, stream, first), last) in &rows.dropped {
            t.push(terminal.as_str());
            s.push(*stream);
            f.push(*first);
            l.push(*last);
        }
        tx.execute(
            "INSERT INTO dropped (terminal, stream, first, last)
             SELECT * FROM unnest($1::text[], $2::smallint[], $3::bigint[], $4::bigint[])
             ON CONFLICT (terminal, stream, first)
             DO UPDATE SET last = greatest(dropped.last, excluded.last)",
            &[&t, &s, &f, &l],
        )?;
    }
    if !rows.numbering.is_empty() {
        let (mut t, mut s, mut f) = (vec![], vec![], vec![]);
        for ((terminal, stream), first) in &rows.numbering {
            t.push(terminal.as_str());
            s.push(*stream);
            f.push(*first);
        }
        tx.execute(
            "INSERT INTO numbering (terminal, stream, first)
             SELECT * FROM unnest($1::text[], $2::smallint[], $3::bigint[])
             ON CONFLICT (terminal, stream)
             DO UPDATE SET first = greatest(numbering.first, excluded.first)",
            &[&t, &s, &f],
        )?;
    }
    write_latest(tx, rows, stored_latest)?;

    // The runs and watermarks: one row a stream that grew or whose watermark moved.
    let (mut t, mut s, mut wm, mut lo, mut hi) = (vec![], vec![], vec![], vec![], vec![]);
    let mut flat: Vec<i64> = Vec::new();
    for (name, terminal) in &mut rows.terminals {
        if !terminal.touched {
            continue;
        }
        let mut marks = Watermarks::default();
        for stream in Stream::ALL {
            let sid = stream_id(stream) as usize;
            let pair = &mut terminal.streams[sid];
            let moved = if pair.advance {
                let to = advance(pair.watermark, &pair.runs, &pair.drops, pair.numbering);
                let moved = to != pair.watermark;
                pair.watermark = to;
                moved
            } else {
                false
            };
            marks.set(stream, pair.watermark.max(0) as u64);
            if !(moved || pair.grew) {
                continue;
            }
            t.push(name.as_str());
            s.push(sid as i16);
            wm.push(pair.watermark);
            lo.push(flat.len() as i32 + 1);
            flat.extend(pair.runs.flat());
            hi.push(flat.len() as i32);
        }
        applied.watermarks.push((terminal.id, marks));
    }
    if !t.is_empty() {
        tx.execute(
            "INSERT INTO streams AS w (terminal, stream, watermark, runs)
             SELECT u.t, u.s, u.w, ($4::bigint[])[u.lo:u.hi]
             FROM unnest($1::text[], $2::smallint[], $3::bigint[], $5::int[], $6::int[])
                AS u(t, s, w, lo, hi)
             ON CONFLICT (terminal, stream)
             DO UPDATE SET watermark = excluded.watermark, runs = excluded.runs",
            &[&t, &s, &wm, &flat, &lo, &hi],
        )?;
    }
    Ok(())
}

/// Merges the group's newest values into the stored ones (read under the terminals' locks), a
/// metric's newer value replacing the older (the group's on a tie), and writes back one row
/// per terminal with new values.
fn write_latest(
    tx: &mut Transaction<'_>,
    rows: &Rows,
    mut stored: HashMap<usize, Latest>,
) -> Result<(), ::postgres::Error> {
    let mut merged: Vec<(&str, Latest)> = Vec::new();
    for (i, (name, t)) in rows.terminals.iter().enumerate() {
        if t.latest.is_empty() {
            continue;
        }
        let Some(mut m) = stored.remove(&i).filter(|m| !m.is_empty()) else {
            merged.push((name, t.latest.clone()));
            continue;
        };
        for (metric, &(at, value)) in &t.latest {
            match m.get_mut(metric) {
                Some(e) if at >= e.0 => *e = (at, value),
                Some(_) => {}
                None => {
                    m.insert(metric.clone(), (at, value));
                }
            }
        }
        merged.push((name, m));
    }
    if merged.is_empty() {
        return Ok(());
    }
    // One row per terminal, upserted in terminal order from arrays: the numbers sliced out of
    // one flat array each, the metric names as one array literal a terminal (a text array
    // cannot be sliced without walking it).
    let (mut terminals, mut names, mut lo, mut hi) = (vec![], vec![], vec![], vec![]);
    let (mut ts, mut vals): (Vec<i64>, Vec<f64>) = (vec![], vec![]);
    for (terminal, metrics) in &merged {
        terminals.push(*terminal);
        names.push(array_literal(metrics.keys()));
        lo.push(ts.len() as i32 + 1);
        ts.extend(metrics.values().map(|e| e.0));
        vals.extend(metrics.values().map(|e| e.1));
        hi.push(ts.len() as i32);
    }
    tx.execute(
        r#"INSERT INTO latest (terminal, metrics, ts_ms, vals)
         SELECT u.t, u.m::text[], ($3::bigint[])[u.lo:u.hi], ($4::float8[])[u.lo:u.hi]
         FROM unnest($1::text[], $2::text[], $5::int[], $6::int[]) AS u(t, m, lo, hi)
         ON CONFLICT (terminal) DO UPDATE SET metrics = excluded.metrics,
            ts_ms = excluded.ts_ms, vals = excluded.vals"#,
        &[&terminals, &names, &ts, &vals, &lo, &hi],
    )?;
    Ok(())
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
        let names = ["air.temp", "a,b", "{x}", "say \"hi\"", "back\\slash", "NULL", ""]
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
