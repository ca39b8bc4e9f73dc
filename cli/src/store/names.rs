//! The names part of the store: official names imported for division codes
//! (`division_names`), the names terminals were provisioned with (`terminal_names`), and a
//! version counter that changes with either, so readers load them again only when they change.

use std::collections::HashMap;

use cuntong_core::site::{Region, SiteCode};
use cuntong_core::terminal_id::TerminalId;
use rusqlite::{Connection, OptionalExtension, params};

use super::{NamesScope, SqliteStore, Store, StoreError, has_table};
use crate::names::Names;

impl SqliteStore {
    /// Stores official names of division codes (`cuntong regions import`), replacing earlier
    /// ones of the same codes, in one transaction; returns how many were stored.
    pub fn import_names(&mut self, rows: &[(SiteCode, String)]) -> Result<u64, StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut put = tx.prepare_cached(
                "INSERT INTO division_names (code, name) VALUES (?1, ?2)
                 ON CONFLICT (code) DO UPDATE SET name = excluded.name",
            )?;
            for (code, name) in rows {
                put.execute(params![code.as_u64() as i64, name])?;
            }
        }
        bump_names_version(&tx)?;
        tx.commit()?;
        Ok(rows.len() as u64)
    }

    /// Gives a terminal a name of its own (from provisioning with `--name`).
    pub fn set_terminal_name(
        &mut self,
        terminal: &TerminalId,
        name: &str,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO terminal_names (terminal, name) VALUES (?1, ?2)
             ON CONFLICT (terminal) DO UPDATE SET name = excluded.name",
            params![terminal.to_string(), name],
        )?;
        bump_names_version(&tx)?;
        tx.commit()?;
        Ok(())
    }

    /// Changes whenever names are imported or a terminal is named.
    pub fn names_version(&self) -> Result<i64, StoreError> {
        names_version(&self.conn)
    }

    /// The imported division names and the terminals' own names, those in and above `region`.
    pub fn names(&self, region: Option<&Region>) -> Result<Names, StoreError> {
        load_names(&self.conn, &NamesScope::of(region))
    }
}

fn bump_names_version(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO counters (name, value) VALUES ('names', 1)
         ON CONFLICT (name) DO UPDATE SET value = value + 1",
        [],
    )?;
    Ok(())
}

fn names_version(conn: &Connection) -> Result<i64, StoreError> {
    if !has_table(conn, "counters")? {
        return Ok(0);
    }
    Ok(conn
        .query_row("SELECT value FROM counters WHERE name = 'names'", [], |r| {
            r.get(0)
        })
        .optional()?
        .unwrap_or(0))
}

fn load_names(conn: &Connection, scope: &NamesScope) -> Result<Names, StoreError> {
    if !has_table(conn, "division_names")? || !has_table(conn, "terminal_names")? {
        return Ok(Names::shipped());
    }
    let mut imported = HashMap::new();
    // A site has at most four ancestors (province to township); the rest is no code.
    let mut up = [-1i64; 4];
    for (slot, code) in up.iter_mut().zip(&scope.ancestors) {
        *slot = *code;
    }
    let mut q = conn.prepare_cached(
        "SELECT code, name FROM division_names
         WHERE (code >= ?1 AND code < ?2) OR code IN (?3, ?4, ?5, ?6)",
    )?;
    let rows = q.query_map(
        params![scope.first, scope.end, up[0], up[1], up[2], up[3]],
        |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
    )?;
    for row in rows {
        let (code, name) = row?;
        imported.insert(code as u64, name);
    }
    let mut labels = HashMap::new();
    let mut q = conn.prepare_cached(
        "SELECT terminal, name FROM terminal_names WHERE terminal >= ?1 AND terminal < ?2",
    )?;
    for row in q.query_map([&scope.terminals.0, &scope.terminals.1], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })? {
        let (terminal, name) = row?;
        labels.insert(terminal, name);
    }
    Ok(Names::new(imported, labels))
}

/// The store's names, read again only when they changed (the dashboard and the monitor read
/// the store every second; a province's village names are read once).
#[derive(Debug, Default)]
pub struct NamesCache {
    version: Option<i64>,
    names: std::sync::Arc<Names>,
}

impl NamesCache {
    pub fn get(&mut self, store: &dyn Store) -> Result<std::sync::Arc<Names>, StoreError> {
        let version = store.names_version()?;
        if self.version != Some(version) {
            self.names = std::sync::Arc::new(store.names(None)?);
            self.version = Some(version);
        }
        Ok(self.names.clone())
    }
}
