//! The watermarks a group's terminals are given, and writing terminals' rows in `terminals`
//! (a fold): watermarks advanced, newest values merged, presence and last reception, each row
//! under the revision read, by one update and one insert of all the rows.

use ::postgres::Client;
use ::postgres::types::ToSql;
use cuntong_core::delivery::Watermarks;
use cuntong_core::envelope::Stream;

use super::runs::advance;
use super::{Prepared, Rows, Terminal};
use crate::store::{Applied, stream_id};

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
    sites: Vec<String>,
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
        self.sites.push(t.site());
        self.levels.push(t.id.site().level().as_str());
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

/// Advances the watermarks of the streams that may move, and gives the terminals that sent
/// messages their watermarks.
pub(super) fn advance_watermarks(rows: &mut Rows, applied: &mut Applied) {
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
    }
}

/// Writes the row of every terminal of `rows` (watermarks advanced): presence and last
/// reception merged with what is stored; the runs, watermarks and newest values (a metric's
/// newer value replaces the older, the later one's on a tie) of the terminals they changed
/// for, under the revision read. An existing row is updated, a new one inserted. False if
/// something else wrote or created one of the rows since it was read.
pub(super) fn write_terminals(
    tx: &mut Client,
    prepared: &mut Prepared,
    rows: &mut Rows,
) -> Result<bool, ::postgres::Error> {
    for (_, t) in &mut rows.terminals {
        for (metric, at, value) in &t.latest {
            match t.stored.get_mut(metric.name()) {
                Some(e) if *at >= e.0 => *e = (*at, *value),
                Some(_) => {}
                None => {
                    t.stored.insert(metric.name().to_owned(), (*at, *value));
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
