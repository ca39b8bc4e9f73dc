//! Folding: what this connection's groups brought since its last fold (runs and watermarks,
//! presence, receptions, newest values) written into the rows of `terminals`, in one
//! transaction under the journal's lock, and the journal's rows folded deleted. Nearly always
//! from what the connection remembers, its own rows only; the whole journal, reading the rows,
//! when that cannot be.

use std::collections::BTreeMap;
use std::time::Instant;

use cuntong_core::terminal_id::TerminalId;

use super::{Ingest, Pending, Rows, Take, journal, read_state, remembered, write_terminals};
use crate::store::postgres::PgStore;
use crate::store::{Applied, StoreError};

impl PgStore {
    /// Folds if anything is left to; a failure is only warned of (the next fold tries again).
    pub(in crate::store::postgres) fn fold_quietly(&self) {
        if !self.ingest.borrow().unfolded() {
            return;
        }
        if let Err(e) = self.fold() {
            tracing::warn!(error = %e, "cannot fold the ingest journal yet; trying again later");
        }
    }

    /// Folds this connection's groups since its last fold into `terminals`: from what it
    /// remembers where it can, else the whole journal. On an error nothing changed (the pending
    /// state is kept for the next fold).
    pub(in crate::store::postgres) fn fold(&self) -> Result<(), StoreError> {
        if self.fold_remembered()? {
            return Ok(());
        }
        self.fold_whole()
    }

    /// The quick fold: the rows of the terminals this connection's groups brought since its
    /// last fold, written from what it remembers (no row read), under the revisions it
    /// remembers; its own journal rows deleted. False (nothing changed) if it cannot: a
    /// terminal it no longer remembers, a row another instance wrote since, or journal rows
    /// an instance left long ago (those take [`PgStore::fold_whole`]).
    fn fold_remembered(&self) -> Result<bool, StoreError> {
        self.in_fold(|tx, ingest| {
            let Ingest {
                prepared,
                known,
                pending,
                position,
                names,
                ..
            } = ingest;
            journal::catch_up(tx, prepared, position, known)?;
            if journal::left_behind(tx, prepared, position)?
                || pending.keys().any(|id| !known.contains_key(id))
            {
                return Ok(None);
            }
            let mut rows = Rows::of(
                pending
                    .keys()
                    .filter_map(|id| names.get(id).map(|n| (n.clone(), *id))),
            );
            rows.take_known(known);
            // Not written: rolled back, and what it took is forgotten (the whole fold reads
            // those terminals again).
            if !fill_and_write(tx, prepared, &mut rows, pending)? {
                return Ok(None);
            }
            journal::delete_own(tx, prepared, position)?;
            Ok(Some(rows))
        })
    }

    /// The whole fold: every terminal of the journal and those this connection has something
    /// of, their rows read (created where missing) and locked, the whole journal deleted.
    fn fold_whole(&self) -> Result<(), StoreError> {
        let written = self.in_fold(|tx, ingest| {
            let Ingest {
                prepared,
                pending,
                position,
                names,
                ..
            } = ingest;
            let (runs, through) = journal::all_runs(tx, prepared)?;

            // Every terminal of the journal, and those this connection has something of.
            let mut by_name: BTreeMap<&str, TerminalId> = BTreeMap::new();
            for (name, ..) in &runs {
                // Names in the journal are those groups wrote: terminal ids.
                if !by_name.contains_key(name.as_str())
                    && let Ok(id) = name.parse::<TerminalId>()
                {
                    by_name.insert(name, id);
                }
            }
            for id in pending.keys() {
                if let Some(name) = names.get(id) {
                    by_name.insert(name, *id);
                }
            }
            let mut rows = Rows::of(by_name.into_iter().map(|(n, id)| (n.into(), id)));
            for (_, t) in &mut rows.terminals {
                // Read with the drops and numbering starts ahead, and written under a new
                // revision.
                t.touched = true;
            }
            read_state(tx, prepared, &mut rows, Take::Locked)?;
            rows.add_runs(runs);
            // Created and locked by the read: nothing else writes them meanwhile.
            if !fill_and_write(tx, prepared, &mut rows, pending)? {
                return Ok(None);
            }
            journal::delete_through(tx, prepared, through)?;
            position.last = position.last.max(through);
            Ok(Some(rows))
        })?;
        if !written {
            return Err(StoreError::Contended {
                at: self.at.clone(),
            });
        }
        Ok(())
    }

    /// Runs a fold `f` in one transaction under the journal's lock, with the names of the
    /// terminals pending known, and commits it if `f` gives the rows it wrote (else rolls it
    /// back); whether it committed. After a commit nothing is pending and the rows written are
    /// remembered.
    fn in_fold(
        &self,
        f: impl FnOnce(&mut ::postgres::Client, &mut Ingest) -> Result<Option<Rows>, ::postgres::Error>,
    ) -> Result<bool, StoreError> {
        let err = self.err("folding the ingest journal into the terminals' rows");
        let mut client = self.client.borrow_mut();
        let mut ingest = self.ingest.borrow_mut();
        let mut tx = journal::lock(&mut client).map_err(&err)?;
        let Ingest {
            pending,
            brought,
            names,
            ..
        } = &mut *ingest;
        super::add_brought(pending, brought);
        for id in pending.keys() {
            names.entry(*id).or_insert_with(|| id.to_string().into());
        }
        let Some(rows) = f(&mut tx, &mut ingest).map_err(&err)? else {
            return Ok(false);
        };
        tx.commit().map_err(&err)?;
        ingest.pending.clear();
        ingest.position.appended = 0;
        ingest.position.folded = Instant::now();
        for (_, mut t) in rows.terminals {
            ingest.known.insert(t.id, remembered(&mut t, true));
        }
        Ok(true)
    }
}

/// Gives `rows` (their streams and rows taken) what the groups since the last fold brought
/// (`pending`), advances their watermarks and writes them, each under a new revision; false if
/// a row was written by another since its revision was taken.
fn fill_and_write(
    tx: &mut ::postgres::Client,
    prepared: &mut super::Prepared,
    rows: &mut Rows,
    pending: &super::ById<Pending>,
) -> Result<bool, ::postgres::Error> {
    for (_, t) in &mut rows.terminals {
        t.touched = true;
        for pair in &mut t.streams {
            pair.advance = true;
        }
        if let Some(p) = pending.get(&t.id) {
            t.presence.clone_from(&p.presence);
            t.last_seen = p.last_seen;
            t.offline = p.offline;
            t.latest.clone_from(&p.latest);
        }
    }
    super::advance_watermarks(rows, &mut Applied::default());
    write_terminals(tx, prepared, rows)
}
