//! The ingest journal: what each group stored, appended as one row of `ingest_journal` (the
//! runs of seqs it stored, the drops and numbering starts it brought), instead of rewriting its
//! terminals' rows in `terminals`. The groups of every instance take the journal's lock in turn
//! (in the round trip that begins their transaction, [`lock`]); a group first reads what other
//! instances appended since its connection's last group ([`catch_up`]), so the terminals a
//! connection remembers stay exact, and a terminal read afresh is its row plus its entries in
//! the journal ([`runs_of`]). Folding the journal into `terminals` (see `fold`) deletes what it
//! folded and notes how far in `ingest_folds`: a connection that had not read as far forgets
//! what it remembers.

use std::ops::{Deref, DerefMut};
use std::time::Instant;

use ::postgres::Client;
use cuntong_core::terminal_id::TerminalId;

use super::{KnownRows, Pair, Prepared, Runs};

/// What an entry says of a (terminal, stream).
const RUN: i16 = 0;
const DROP: i16 = 1;
const NUMBERING: i16 = 2;

/// A run of seqs stored: (terminal, stream, first, last).
pub(super) type Run = (String, i16, i64, i64);

/// Where a connection stands in the journal.
pub(super) struct Position {
    /// The connection's own mark on its rows (random: rows of an earlier connection, even one
    /// killed mid-way, are never taken for its own).
    pub(super) instance: i64,
    /// The newest row read or appended.
    pub(super) last: i64,
    /// Rows appended since this connection last folded, and when it did.
    pub(super) appended: u32,
    pub(super) folded: Instant,
}

impl Position {
    pub(super) fn new() -> Position {
        let mut bytes = [0u8; 8];
        // A clock-derived mark if the system's random source fails: it only has to differ
        // from the other connections' of the moment.
        let instance =
            match ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes) {
                Ok(()) => i64::from_le_bytes(bytes),
                Err(_) => std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as i64),
            };
        Position {
            instance,
            last: 0,
            appended: 0,
            folded: Instant::now(),
        }
    }
}

/// A group's entries, as the arrays of its row.
#[derive(Default)]
pub(super) struct Entries<'a> {
    terminals: Vec<&'a str>,
    streams: Vec<i16>,
    kinds: Vec<i16>,
    firsts: Vec<i64>,
    lasts: Vec<i64>,
}

impl<'a> Entries<'a> {
    fn push(&mut self, terminal: &'a str, stream: i16, kind: i16, first: i64, last: i64) {
        self.terminals.push(terminal);
        self.streams.push(stream);
        self.kinds.push(kind);
        self.firsts.push(first);
        self.lasts.push(last);
    }

    /// The seqs `seqs` (in order) of `terminal`'s `stream` were stored, as runs.
    pub(super) fn stored(&mut self, terminal: &'a str, stream: i16, seqs: &[i64]) {
        let mut seqs = seqs.iter().copied();
        let Some(mut first) = seqs.next() else {
            return;
        };
        let mut last = first;
        for seq in seqs {
            if seq != last.wrapping_add(1) {
                self.push(terminal, stream, RUN, first, last);
                first = seq;
            }
            last = seq;
        }
        self.push(terminal, stream, RUN, first, last);
    }

    pub(super) fn dropped(&mut self, terminal: &'a str, stream: i16, first: i64, last: i64) {
        self.push(terminal, stream, DROP, first, last);
    }

    pub(super) fn numbering(&mut self, terminal: &'a str, stream: i16, first: i64) {
        self.push(terminal, stream, NUMBERING, first, first);
    }
}

/// Applies an entry to the pair it is of: a run joins the runs stored, a drop or numbering
/// start is noted; the watermark may move.
pub(super) fn apply(pair: &mut Pair, kind: i16, first: i64, last: i64) {
    match kind {
        RUN => pair.runs.add(first, last),
        DROP => pair.drops.push((first, last)),
        NUMBERING => pair.numbering = Some(pair.numbering.map_or(first, |n| n.max(first))),
        _ => return,
    }
    pair.advance = true;
}

/// A transaction under the journal's lock: the groups and folds of every instance go one at
/// a time (plain reads go on). Rolled back when dropped uncommitted.
pub(super) struct Locked<'a> {
    client: &'a mut Client,
    open: bool,
}

impl Locked<'_> {
    pub(super) fn commit(mut self) -> Result<(), ::postgres::Error> {
        self.open = false;
        self.client.batch_execute("COMMIT")
    }
}

impl Deref for Locked<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client
    }
}

impl DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        if self.open {
            // A connection that cannot even roll back is broken: its next statement fails.
            let _ = self.client.batch_execute("ROLLBACK");
        }
    }
}

/// Begins a transaction and takes the journal's lock, in one round trip.
pub(super) fn lock(client: &mut Client) -> Result<Locked<'_>, ::postgres::Error> {
    let locked = Locked { client, open: true };
    locked
        .client
        .batch_execute("BEGIN; LOCK TABLE ingest_journal IN SHARE ROW EXCLUSIVE MODE")?;
    Ok(locked)
}

/// Brings what `known` holds up to date with the rows other connections appended since this
/// one's last group (under the lock). If a fold deleted rows this connection had not read,
/// it forgets every terminal: each is read afresh when next met.
pub(super) fn catch_up(
    tx: &mut Client,
    prepared: &mut Prepared,
    position: &mut Position,
    known: &mut KnownRows,
) -> Result<(), ::postgres::Error> {
    // One statement: how far folds deleted, with each row after this connection's last.
    let statement = prepared.get(
        tx,
        "SELECT f.deleted_through, j.id, j.terminals, j.streams, j.kinds, j.firsts, j.lasts
         FROM ingest_folds f LEFT JOIN ingest_journal j ON j.id > $1 AND j.instance <> $2
         ORDER BY j.id",
    )?;
    let rows = tx.query(&statement, &[&position.last, &position.instance])?;
    if let Some(deleted) = rows.first().map(|r| r.get::<_, i64>(0))
        && deleted > position.last
    {
        known.clear();
        position.last = deleted;
    }
    for row in rows {
        let Some(id) = row.get::<_, Option<i64>>(1) else {
            continue;
        };
        position.last = position.last.max(id);
        if known.is_empty() {
            continue;
        }
        let terminals: Vec<String> = row.get(2);
        let streams: Vec<i16> = row.get(3);
        let kinds: Vec<i16> = row.get(4);
        let firsts: Vec<i64> = row.get(5);
        let lasts: Vec<i64> = row.get(6);
        for (i, terminal) in terminals.iter().enumerate() {
            let Some(k) = terminal
                .parse::<TerminalId>()
                .ok()
                .and_then(|id| known.get_mut(&id))
            else {
                continue;
            };
            let (Some(&stream), Some(&kind), Some(&first), Some(&last)) =
                (streams.get(i), kinds.get(i), firsts.get(i), lasts.get(i))
            else {
                continue;
            };
            if let Some(pair) = usize::try_from(stream)
                .ok()
                .and_then(|s| k.streams.get_mut(s))
            {
                apply(pair, kind, first, last);
            }
        }
    }
    Ok(())
}

/// The runs stored of `terminals` that the journal holds, not yet folded into their rows:
/// (terminal, stream, first, last).
pub(super) fn runs_of(
    tx: &mut Client,
    prepared: &mut Prepared,
    terminals: &[&str],
) -> Result<Vec<Run>, ::postgres::Error> {
    let statement = prepared.get(
        tx,
        "SELECT e.terminal, e.stream, e.first, e.last
         FROM ingest_journal j,
            unnest(j.terminals, j.streams, j.kinds, j.firsts, j.lasts)
                AS e(terminal, stream, kind, first, last)
         WHERE e.kind = 0 AND e.terminal = ANY($1)",
    )?;
    Ok(tx
        .query(&statement, &[&terminals])?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect())
}

/// Appends a group's entries (none: nothing appended); the row's id.
pub(super) fn append(
    tx: &mut Client,
    prepared: &mut Prepared,
    position: &Position,
    entries: &Entries<'_>,
) -> Result<Option<i64>, ::postgres::Error> {
    if entries.terminals.is_empty() {
        return Ok(None);
    }
    let statement = prepared.get(
        tx,
        "INSERT INTO ingest_journal (id, instance, terminals, streams, kinds, firsts, lasts)
         VALUES (nextval('ingest_journal_id'), $1, $2, $3, $4, $5, $6) RETURNING id",
    )?;
    let row = tx.query_one(
        &statement,
        &[
            &position.instance,
            &entries.terminals,
            &entries.streams,
            &entries.kinds,
            &entries.firsts,
            &entries.lasts,
        ],
    )?;
    Ok(Some(row.get(0)))
}

/// Every run in the journal (for a fold, under the lock), merged where they touch:
/// (terminal, stream, first, last), and the newest row's id (0: the journal is empty).
pub(super) fn all_runs(
    tx: &mut Client,
    prepared: &mut Prepared,
) -> Result<(Vec<Run>, i64), ::postgres::Error> {
    let statement = prepared.get(tx, "SELECT coalesce(max(id), 0) FROM ingest_journal")?;
    let through: i64 = tx.query_one(&statement, &[])?.get(0);
    // A row a (terminal, stream), its runs as two arrays.
    let statement = prepared.get(
        tx,
        "SELECT e.terminal, e.stream, array_agg(e.first), array_agg(e.last)
         FROM ingest_journal j,
            unnest(j.terminals, j.streams, j.kinds, j.firsts, j.lasts)
                AS e(terminal, stream, kind, first, last)
         WHERE e.kind = 0
         GROUP BY e.terminal, e.stream",
    )?;
    let mut runs = Vec::new();
    for r in tx.query(&statement, &[])? {
        let (terminal, stream): (String, i16) = (r.get(0), r.get(1));
        let firsts: Vec<i64> = r.get(2);
        let lasts: Vec<i64> = r.get(3);
        let flat: Vec<i64> = firsts
            .iter()
            .zip(&lasts)
            .flat_map(|(f, l)| [*f, *l])
            .collect();
        for (first, last) in Runs::from_flat(&flat).0 {
            runs.push((terminal.clone(), stream, first, last));
        }
    }
    Ok((runs, through))
}

/// How long an instance's journal rows may stay unfolded before another instance folds them:
/// a live instance folds its own within a second or two.
const LEFT_BEHIND_MS: i64 = 30_000;

/// Whether the journal holds rows another connection appended longer ago than
/// [`LEFT_BEHIND_MS`] (an instance that stopped before it folded them).
pub(super) fn left_behind(
    tx: &mut Client,
    prepared: &mut Prepared,
    position: &Position,
) -> Result<bool, ::postgres::Error> {
    let statement = prepared.get(
        tx,
        "SELECT EXISTS (SELECT 1 FROM ingest_journal WHERE instance <> $1
            AND written_ms < (extract(epoch FROM clock_timestamp()) * 1000)::bigint - $2)",
    )?;
    Ok(tx
        .query_one(&statement, &[&position.instance, &LEFT_BEHIND_MS])?
        .get(0))
}

/// Deletes this connection's own journal rows (folded) and notes how far.
pub(super) fn delete_own(
    tx: &mut Client,
    prepared: &mut Prepared,
    position: &Position,
) -> Result<(), ::postgres::Error> {
    let statement = prepared.get(
        tx,
        "WITH d AS (DELETE FROM ingest_journal WHERE instance = $1 RETURNING id)
         UPDATE ingest_folds SET deleted_through = greatest(deleted_through,
            (SELECT coalesce(max(id), 0) FROM d))",
    )?;
    tx.execute(&statement, &[&position.instance])?;
    Ok(())
}

/// Deletes the journal's rows up to `through` (folded) and notes it.
pub(super) fn delete_through(
    tx: &mut Client,
    prepared: &mut Prepared,
    through: i64,
) -> Result<(), ::postgres::Error> {
    if through == 0 {
        return Ok(());
    }
    let statement = prepared.get(tx, "DELETE FROM ingest_journal WHERE id <= $1")?;
    tx.execute(&statement, &[&through])?;
    let statement = prepared.get(
        tx,
        "UPDATE ingest_folds SET deleted_through = greatest(deleted_through, $1)",
    )?;
    tx.execute(&statement, &[&through])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_groups_seqs_are_written_as_runs_and_an_entry_applies_to_its_pair() {
        let mut e = Entries::default();
        e.stored("t", 0, &[1, 2, 3, 5, 7, 8]);
        assert_eq!(e.firsts, [1, 5, 7]);
        assert_eq!(e.lasts, [3, 5, 8]);
        e.stored("t", 1, &[]);
        assert_eq!(e.terminals.len(), 3);

        let mut pair = Pair::default();
        apply(&mut pair, RUN, 4, 6);
        apply(&mut pair, RUN, 1, 3);
        apply(&mut pair, DROP, 8, 9);
        apply(&mut pair, NUMBERING, 20, 20);
        apply(&mut pair, NUMBERING, 12, 12);
        assert_eq!(pair.runs.0, [(1, 6)]);
        assert_eq!(pair.drops, [(8, 9)]);
        assert_eq!(pair.numbering, Some(20));
        assert!(pair.advance);
        // An entry of a kind this build does not know changes nothing.
        let mut pair = Pair::default();
        apply(&mut pair, 9, 1, 1);
        assert!(pair.runs.0.is_empty() && !pair.advance);
    }
}
