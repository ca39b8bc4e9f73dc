//! Storing a group of records on PostgreSQL: the messages binary-COPied through a staging
//! table and de-duplicated by their keys, then the drops, numbering starts, terminals, newest
//! values and watermarks, each table by one statement with its keys in order.

use std::collections::BTreeMap;

use ::postgres::Transaction;
use ::postgres::binary_copy::BinaryCopyInWriter;
use ::postgres::error::SqlState;
use ::postgres::types::Type;
use cuntong_core::delivery::Watermarks;
use cuntong_core::envelope::{Event, Stream};
use cuntong_core::terminal_id::TerminalId;

use super::PgStore;
use crate::store::{Applied, Record, StoreError, stream_id};

/// What a group writes besides its messages, gathered so that each table is written by one
/// statement with its keys in order.
#[derive(Default)]
struct Rows {
    dropped: BTreeMap<(String, i16, i64), i64>,
    numbering: BTreeMap<(String, i16), i64>,
    /// Per terminal: (site, level), the last presence in the group, the latest reception.
    terminals: BTreeMap<String, TerminalRow>,
    /// Per terminal: the newest time and value of each metric in the group.
    latest: BTreeMap<String, BTreeMap<String, (i64, f64)>>,
    /// Per terminal: its id and which streams may advance.
    touched: BTreeMap<String, (TerminalId, [bool; 2])>,
    /// Per terminal: the seqs this group stored, per stream.
    stored: BTreeMap<String, [Vec<i64>; 2]>,
    rejected: Vec<(String, i64, String, Vec<u8>)>,
}

struct TerminalRow {
    site: String,
    level: &'static str,
    presence: Option<(bool, String, i64, i64)>,
    last_seen: Option<i64>,
}

impl Rows {
    fn terminal(&mut self, t: &TerminalId) -> &mut TerminalRow {
        self.terminals
            .entry(t.to_string())
            .or_insert_with(|| TerminalRow {
                site: t.site().to_string(),
                level: t.site().level().as_str(),
                presence: None,
                last_seen: None,
            })
    }

    /// `id` is `t` as text (made once a record: the maps are looked up without allocating).
    fn seen(&mut self, id: &str, t: &TerminalId, ms: u64) {
        let ms = ms as i64;
        if let Some(row) = self.terminals.get_mut(id) {
            row.last_seen = Some(row.last_seen.map_or(ms, |v| v.max(ms)));
            return;
        }
        self.terminal(t).last_seen = Some(ms);
    }

    fn touch(&mut self, id: &str, t: &TerminalId, stream: Option<Stream>) {
        if !self.touched.contains_key(id) {
            self.touched.insert(id.to_owned(), (*t, [false; 2]));
        }
        if let (Some(s), Some(e)) = (stream, self.touched.get_mut(id)) {
            e.1[stream_id(s) as usize] = true;
        }
    }

    fn stored(&mut self, id: &str, stream: Stream, seq: u64) {
        if !self.stored.contains_key(id) {
            self.stored.insert(id.to_owned(), Default::default());
        }
        if let Some(seqs) = self.stored.get_mut(id) {
            seqs[stream_id(stream) as usize].push(seq as i64);
        }
    }

    /// Keeps the newer of a metric's values (the later one of the group on a tie).
    fn latest(&mut self, id: &str, metric: &str, ts: i64, v: f64) {
        if !self.latest.contains_key(id) {
            self.latest.insert(id.to_owned(), BTreeMap::new());
        }
        let Some(metrics) = self.latest.get_mut(id) else {
            return;
        };
        match metrics.get_mut(metric) {
            Some(e) if ts as u64 >= e.0 as u64 => *e = (ts, v),
            Some(_) => {}
            None => {
                metrics.insert(metric.to_owned(), (ts, v));
            }
        }
    }
}

impl PgStore {
    /// One attempt at storing a group (see [`Store::apply`]).
    pub(super) fn apply_once(&mut self, records: &[Record]) -> Result<Applied, StoreError> {
        let err = self.err("storing a group");
        let client = self.client.get_mut();
        let mut tx = client.transaction().map_err(&err)?;
        let stored = copy_messages(&mut tx, records).map_err(&err)?;

        let mut applied = Applied::default();
        let mut rows = Rows::default();
        let mut ord = 0usize;
        for r in records {
            // A sequence-numbered message is stored once; a redelivery only counts.
            if let Some(m) = r.message() {
                let new = stored.get(ord).copied().unwrap_or(false);
                ord += 1;
                let id = m.terminal.to_string();
                rows.seen(&id, m.terminal, m.received_ms);
                if !new {
                    applied.duplicates += 1;
                    // It resent: it may not have our watermark. Send it again.
                    rows.touch(&id, m.terminal, None);
                    continue;
                }
                applied.stored += 1;
                rows.touch(&id, m.terminal, Some(m.stream));
                rows.stored(&id, m.stream, m.seq);
                if let Record::Telemetry { envelope, .. } = r {
                    for s in &envelope.body.samples {
                        applied.values += 1;
                        let ts = (envelope.time_ms + u64::from(s.offset_ms)) as i64;
                        rows.latest(&id, s.metric.name(), ts, s.value.to_f64());
                    }
                }
            }
            match r {
                Record::Telemetry { .. } => {}
                Record::Event {
                    terminal, envelope, ..
                } => match envelope.body {
                    Event::Dropped {
                        stream,
                        first,
                        last,
                    } if first <= last => {
                        let key = (terminal.to_string(), stream_id(stream) as i16, first as i64);
                        let e = rows.dropped.entry(key).or_insert(last as i64);
                        *e = (*e).max(last as i64);
                        rows.touch(&terminal.to_string(), terminal, Some(stream));
                    }
                    // Applied before the watermarks below advance, so the events stream
                    // passes the gap the announcement itself follows.
                    Event::NumberingFrom { stream, first } => {
                        if let Ok(first) = i64::try_from(first) {
                            let key = (terminal.to_string(), stream_id(stream) as i16);
                            let e = rows.numbering.entry(key).or_insert(first);
                            *e = (*e).max(first);
                            rows.touch(&terminal.to_string(), terminal, Some(stream));
                        }
                    }
                    _ => {}
                },
                Record::Presence {
                    terminal,
                    received_ms,
                    presence: p,
                } => {
                    rows.terminal(terminal).presence = Some((
                        p.online,
                        p.version.clone(),
                        p.started_ms as i64,
                        i64::from(p.keep_alive_s),
                    ));
                    if p.online {
                        rows.seen(&terminal.to_string(), terminal, *received_ms);
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
            }
        }
        write_rows(&mut tx, &rows, &mut applied).map_err(&err)?;
        tx.commit().map_err(&err)?;
        Ok(applied)
    }
}

/// COPYs the group's messages into the staging table and stores those not stored before;
/// returns, for each message of the group in order, whether this group stored it (the first
/// of several copies in one group is the one stored).
fn copy_messages(
    tx: &mut Transaction<'_>,
    records: &[Record],
) -> Result<Vec<bool>, ::postgres::Error> {
    let messages: Vec<_> = records.iter().filter_map(Record::message).collect();
    if messages.is_empty() {
        return Ok(Vec::new());
    }
    tx.batch_execute(
        r#"CREATE TEMP TABLE IF NOT EXISTS staging (
            ord         integer NOT NULL,
            terminal    text COLLATE "C" NOT NULL,
            stream      smallint NOT NULL,
            seq         bigint NOT NULL,
            time_ms     bigint NOT NULL,
            received_ms bigint NOT NULL,
            payload     bytea NOT NULL
        ) ON COMMIT DELETE ROWS"#,
    )?;
    {
        let sink = tx.copy_in(
            "COPY staging (ord, terminal, stream, seq, time_ms, received_ms, payload) FROM STDIN BINARY",
        )?;
        let mut w = BinaryCopyInWriter::new(
            sink,
            &[
                Type::INT4,
                Type::TEXT,
                Type::INT2,
                Type::INT8,
                Type::INT8,
                Type::INT8,
                Type::BYTEA,
            ],
        );
        for (i, m) in messages.iter().enumerate() {
            let terminal = m.terminal.to_string();
            w.write(&[
                &(i as i32),
                &terminal,
                &(stream_id(m.stream) as i16),
                &(m.seq as i64),
                &(m.time_ms as i64),
                &(m.received_ms as i64),
                &m.raw,
            ])?;
        }
        w.finish()?;
    }
    // Keys in order, so that groups storing the same terminal at once wait for each other
    // instead of deadlocking.
    let rows = tx.query(
        "WITH new AS (
            INSERT INTO message_keys (terminal, stream, seq, time_ms)
            SELECT DISTINCT ON (terminal, stream, seq) terminal, stream, seq, time_ms
            FROM staging ORDER BY terminal, stream, seq, ord
            ON CONFLICT DO NOTHING
            RETURNING terminal, stream, seq
         ), firsts AS (
            SELECT DISTINCT ON (s.terminal, s.stream, s.seq) s.*
            FROM staging s JOIN new USING (terminal, stream, seq)
            ORDER BY s.terminal, s.stream, s.seq, s.ord
         ), stored AS (
            INSERT INTO messages (terminal, stream, seq, time_ms, received_ms, payload)
            SELECT terminal, stream, seq, time_ms, received_ms, payload FROM firsts
         )
         SELECT ord FROM firsts",
        &[],
    )?;
    let mut stored = vec![false; messages.len()];
    for r in rows {
        let ord: i32 = r.get(0);
        if let Some(s) = stored.get_mut(ord as usize) {
            *s = true;
        }
    }
    Ok(stored)
}

/// Writes what a group changes besides its messages, table by table in the lock order, and
/// sets the watermarks of the terminals it touched.
fn write_rows(
    tx: &mut Transaction<'_>,
    rows: &Rows,
    applied: &mut Applied,
) -> Result<(), ::postgres::Error> {
    for (topic, received, reason, payload) in &rows.rejected {
        tx.execute(
            "INSERT INTO rejected (topic, received_ms, reason, payload) VALUES ($1, $2, $3, $4)",
            &[topic, received, reason, payload],
        )?;
    }
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
    if !rows.terminals.is_empty() {
        let mut cols: (Vec<&str>, Vec<&str>, Vec<&str>) = Default::default();
        let mut online = Vec::new();
        let mut version: Vec<Option<&str>> = Vec::new();
        let mut started: Vec<Option<i64>> = Vec::new();
        let mut keep_alive: Vec<Option<i64>> = Vec::new();
        let mut seen: Vec<Option<i64>> = Vec::new();
        for (terminal, row) in &rows.terminals {
            cols.0.push(terminal);
            cols.1.push(&row.site);
            cols.2.push(row.level);
            let p = row.presence.as_ref();
            online.push(p.is_some_and(|p| p.0));
            version.push(p.map(|p| p.1.as_str()));
            started.push(p.map(|p| p.2));
            keep_alive.push(p.map(|p| p.3));
            seen.push(row.last_seen);
        }
        // Every terminal the group touches has its row here, locked from now to the commit:
        // other groups of these terminals wait before their newest values and watermarks.
        // A row without presence has no start time: it only moves last_seen.
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
    }
    if !rows.latest.is_empty() {
        write_latest(tx, &rows.latest)?;
    }
    if !rows.touched.is_empty() {
        // The pairs whose watermark this group's own run of seqs moves (nearly all of them,
        // one statement), then the others through the general function, then the rest read.
        let mut marks = advance_runs(tx, &rows.stored)?;
        let (mut t, mut s, mut adv) = (vec![], vec![], vec![]);
        let (mut rt, mut rs) = (vec![], vec![]);
        for (id, (_, streams)) in &rows.touched {
            for stream in Stream::ALL {
                let sid = stream_id(stream) as i16;
                if marks.contains_key(&(id.clone(), sid)) {
                    continue;
                }
                if streams[stream_id(stream) as usize] {
                    t.push(id.as_str());
                    s.push(sid);
                    adv.push(true);
                } else {
                    rt.push(id.as_str());
                    rs.push(sid);
                }
            }
        }
        let mut rest = Vec::new();
        if !t.is_empty() {
            rest.extend(tx.query(
                "SELECT o_terminal, o_stream, o_watermark FROM advance_watermarks($1, $2, $3)",
                &[&t, &s, &adv],
            )?);
        }
        if !rt.is_empty() {
            rest.extend(tx.query(
                "SELECT w.terminal, w.stream, w.watermark
                 FROM unnest($1::text[], $2::smallint[]) AS u(t, s)
                 JOIN watermarks w ON w.terminal = u.t AND w.stream = u.s",
                &[&rt, &rs],
            )?);
        }
        marks.extend(rest.iter().map(|r| ((r.get(0), r.get(1)), r.get(2))));
        let mut by_terminal: BTreeMap<&str, Watermarks> = BTreeMap::new();
        for ((terminal, stream), wm) in &marks {
            let stream = if *stream == 0 {
                Stream::Telemetry
            } else {
                Stream::Events
            };
            by_terminal
                .entry(terminal.as_str())
                .or_default()
                .set(stream, *wm as u64);
        }
        for (id, (terminal, _)) in &rows.touched {
            let marks = by_terminal.get(id.as_str()).copied().unwrap_or_default();
            applied.watermarks.push((*terminal, marks));
        }
    }
    Ok(())
}

/// Moves, in one statement, the watermark of each (terminal, stream) pair whose seqs stored by
/// this group start right after it: to the end of the group's run from there, when nothing
/// stored before continues that run and no drop or numbering start lies ahead of the watermark
/// (exactly what the general `advance_watermarks` would find then). Returns the pairs moved;
/// the others are left to `advance_watermarks`. The caller holds the terminals' rows locked.
fn advance_runs(
    tx: &mut Transaction<'_>,
    stored: &BTreeMap<String, [Vec<i64>; 2]>,
) -> Result<BTreeMap<(String, i16), i64>, ::postgres::Error> {
    let (mut t, mut s, mut lo, mut hi) = (vec![], vec![], vec![], vec![]);
    for (terminal, streams) in stored {
        for (stream, seqs) in streams.iter().enumerate() {
            let Some((first, last)) = first_run(seqs) else {
                continue;
            };
            // Seqs beyond i64 (stored as negative numbers) and the ends of the range never
            // join a run here: the general function takes them.
            if first < 1 || last == i64::MAX {
                continue;
            }
            t.push(terminal.as_str());
            s.push(stream as i16);
            lo.push(first);
            hi.push(last);
        }
    }
    if t.is_empty() {
        return Ok(BTreeMap::new());
    }
    let rows = tx.query(
        "WITH g AS (
            SELECT * FROM unnest($1::text[], $2::smallint[], $3::bigint[], $4::bigint[])
                AS g(t, s, lo, hi)
         ), fast AS (
            SELECT g.t, g.s, g.hi FROM g
            JOIN watermarks w ON w.terminal = g.t AND w.stream = g.s
            WHERE w.watermark = g.lo - 1
              AND NOT EXISTS (SELECT 1 FROM message_keys k
                  WHERE k.terminal = g.t AND k.stream = g.s AND k.seq = g.hi + 1)
              AND NOT EXISTS (SELECT 1 FROM dropped d
                  WHERE d.terminal = g.t AND d.stream = g.s AND d.last > w.watermark)
              AND NOT EXISTS (SELECT 1 FROM numbering n
                  WHERE n.terminal = g.t AND n.stream = g.s AND n.first - 1 > w.watermark)
         )
         UPDATE watermarks w SET watermark = f.hi FROM fast f
         WHERE w.terminal = f.t AND w.stream = f.s
         RETURNING w.terminal, w.stream, w.watermark",
        &[&t, &s, &lo, &hi],
    )?;
    Ok(rows
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect())
}

/// The lowest of `seqs` and the end of the run of consecutive seqs from it.
fn first_run(seqs: &[i64]) -> Option<(i64, i64)> {
    let mut sorted = seqs.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let first = *sorted.first()?;
    let mut last = first;
    for &seq in &sorted[1..] {
        if seq != last + 1 {
            break;
        }
        last = seq;
    }
    Some((first, last))
}

/// Merges a group's newest values into the stored ones, a metric's newer value replacing the
/// older (the group's on a tie), one row per terminal. Read, merged here and written back: the
/// terminals' rows, locked by this transaction already, keep other groups of the same
/// terminals waiting meanwhile.
fn write_latest(
    tx: &mut Transaction<'_>,
    group: &BTreeMap<String, BTreeMap<String, (i64, f64)>>,
) -> Result<(), ::postgres::Error> {
    let mut merged: BTreeMap<&str, BTreeMap<String, (i64, f64)>> = group
        .keys()
        .map(|terminal| (terminal.as_str(), BTreeMap::new()))
        .collect();
    let terminals: Vec<&str> = merged.keys().copied().collect();
    for row in tx.query(
        "SELECT terminal, metrics, ts_ms, vals FROM latest WHERE terminal = ANY($1)",
        &[&terminals],
    )? {
        let terminal: &str = row.get(0);
        let metrics: Vec<String> = row.get(1);
        let ts: Vec<i64> = row.get(2);
        let vals: Vec<f64> = row.get(3);
        if let Some(m) = merged.get_mut(terminal) {
            m.extend(metrics.into_iter().zip(ts.into_iter().zip(vals)));
        }
    }
    for (terminal, metrics) in group {
        let Some(m) = merged.get_mut(terminal.as_str()) else {
            continue;
        };
        if m.is_empty() {
            m.clone_from(metrics);
            continue;
        }
        for (metric, &(at, value)) in metrics {
            match m.get_mut(metric) {
                Some(e) if at >= e.0 => *e = (at, value),
                Some(_) => {}
                None => {
                    m.insert(metric.clone(), (at, value));
                }
            }
        }
    }
    // One row per terminal, binary-COPied as arrays (no per-value rows to aggregate on the
    // server), then upserted in terminal order.
    tx.batch_execute(
        r#"CREATE TEMP TABLE IF NOT EXISTS latest_in (
            terminal text COLLATE "C" NOT NULL,
            metrics  text[] COLLATE "C" NOT NULL,
            ts_ms    bigint[] NOT NULL,
            vals     double precision[] NOT NULL
        ) ON COMMIT DELETE ROWS"#,
    )?;
    {
        let sink =
            tx.copy_in("COPY latest_in (terminal, metrics, ts_ms, vals) FROM STDIN BINARY")?;
        let mut w = BinaryCopyInWriter::new(
            sink,
            &[
                Type::TEXT,
                Type::TEXT_ARRAY,
                Type::INT8_ARRAY,
                Type::FLOAT8_ARRAY,
            ],
        );
        for (terminal, metrics) in &merged {
            let names: Vec<&str> = metrics.keys().map(String::as_str).collect();
            let ts: Vec<i64> = metrics.values().map(|e| e.0).collect();
            let vals: Vec<f64> = metrics.values().map(|e| e.1).collect();
            w.write(&[terminal, &names, &ts, &vals])?;
        }
        w.finish()?;
    }
    tx.execute(
        r#"INSERT INTO latest (terminal, metrics, ts_ms, vals)
         SELECT terminal, metrics, ts_ms, vals FROM latest_in ORDER BY terminal
         ON CONFLICT (terminal) DO UPDATE SET metrics = excluded.metrics,
            ts_ms = excluded.ts_ms, vals = excluded.vals"#,
        &[],
    )?;
    Ok(())
}

/// Whether a failed group is worth trying again as a whole (it was rolled back).
pub(super) fn transient(e: &StoreError) -> bool {
    matches!(e, StoreError::Postgres { source, .. } if matches!(
        source.code(),
        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    ))
}
