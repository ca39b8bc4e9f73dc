//! Folding: the whole journal and what this connection's groups brought since its last fold
//! (presence, receptions, newest values) written into the rows of `terminals`, in one
//! transaction under the journal's lock; the journal's rows folded are deleted.

use std::collections::BTreeMap;
use std::time::Instant;

use cuntong_core::terminal_id::TerminalId;

use super::{Ingest, Rows, Take, journal, read_state, remembered, write_terminals};
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

    /// Folds the journal and this connection's pending state into `terminals`. On an error
    /// nothing changed (the pending state is kept for the next fold).
    pub(in crate::store::postgres) fn fold(&self) -> Result<(), StoreError> {
        let err = self.err("folding the ingest journal into the terminals' rows");
        let mut client = self.client.borrow_mut();
        let mut ingest = self.ingest.borrow_mut();
        let Ingest {
            prepared,
            known,
            pending,
            position,
            names,
        } = &mut *ingest;
        let mut tx = client.transaction().map_err(&err)?;
        journal::lock(&mut tx).map_err(&err)?;
        let (runs, through) = journal::all_runs(&mut tx, prepared).map_err(&err)?;

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
            names.entry(*id).or_insert_with(|| id.to_string());
        }
        for id in pending.keys() {
            if let Some(name) = names.get(id) {
                by_name.insert(name, *id);
            }
        }
        let mut rows = Rows::of(by_name.into_iter().map(|(n, id)| (n.to_owned(), id)));
        for (_, t) in &mut rows.terminals {
            // Read with the drops and numbering starts ahead, and written under a new revision.
            t.touched = true;
        }
        read_state(&mut tx, prepared, &mut rows, Take::Locked).map_err(&err)?;
        rows.add_runs(runs);
        for (_, t) in &mut rows.terminals {
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
        super::advance_watermarks(&mut rows, &mut Applied::default());
        if !write_terminals(&mut tx, prepared, &mut rows).map_err(&err)? {
            // Created and locked by the read: nothing else writes them meanwhile.
            return Err(StoreError::Contended {
                at: self.at.clone(),
            });
        }
        journal::delete_through(&mut tx, prepared, through).map_err(&err)?;
        tx.commit().map_err(&err)?;
        pending.clear();
        position.last = position.last.max(through);
        position.appended = 0;
        position.folded = Instant::now();
        for (_, mut t) in rows.terminals {
            known.insert(t.id, remembered(&mut t));
        }
        Ok(())
    }
}
