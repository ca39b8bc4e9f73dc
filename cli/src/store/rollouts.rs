//! Releases and staged rollouts in the store: the rows both backends keep, and the SQLite
//! side. A release is its signed manifest and its artifact (served to the boxes from the
//! store); a rollout is its plan and state (one row) and each box's progress (a row a box).

use std::collections::BTreeMap;

use cuntong_core::rollout::{Plan, Site, State};
use cuntong_core::terminal_id::TerminalId;
use cuntong_core::update::Stage;
use rusqlite::{OptionalExtension, params};

use super::instances::check_fence;
use super::sqlite::{SqliteStore, has_table};
use super::{Fence, StoreError};

/// A release as `cuntong release add` recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseRow {
    pub version: String,
    pub sha256: String,
    pub size: u64,
    /// The encoded [`cuntong_core::update::SignedRelease`].
    pub signed: Vec<u8>,
    pub added_ms: u64,
}

/// A rollout as stored: what it is and where it stands; its boxes are rows of their own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutRow {
    pub plan: Plan,
    pub state: State,
    pub reason: String,
    /// The encoded signed command that offers the release (sent as is to each box).
    pub command: Vec<u8>,
    pub updated_ms: u64,
}

/// A box's progress in rollout `rollout`.
pub type RolloutSiteRow = (u64, TerminalId, Site);

fn corrupt(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        terminal: what.to_owned(),
        seq: 0,
        detail: detail.to_string(),
    }
}

pub(super) fn encode_plan(plan: &Plan) -> Result<String, StoreError> {
    serde_json::to_string(plan).map_err(|e| corrupt("rollouts", e))
}

/// A stored rollout's row, back.
pub(super) fn rollout_row(
    plan: &str,
    state: &str,
    reason: String,
    command: Vec<u8>,
    updated_ms: i64,
) -> Result<RolloutRow, StoreError> {
    let plan: Plan = serde_json::from_str(plan).map_err(|e| corrupt("rollouts", e))?;
    let state = State::ALL
        .into_iter()
        .find(|s| s.as_str() == state)
        .ok_or_else(|| corrupt("rollouts", format!("rollout {}: state {state:?}", plan.id)))?;
    Ok(RolloutRow {
        plan,
        state,
        reason,
        command,
        updated_ms: updated_ms.max(0) as u64,
    })
}

/// A row of the stage counts, back.
pub(super) fn count_row(id: i64, stage: &str, n: i64) -> Result<(u64, Stage, usize), StoreError> {
    let stage = Stage::parse(stage)
        .ok_or_else(|| corrupt("rollout_sites", format!("rollout {id}: stage {stage:?}")))?;
    Ok((id.max(0) as u64, stage, n.max(0) as usize))
}

/// A stored box's row, back; `None` for a terminal id that no longer parses.
pub(super) fn site_row(
    terminal: &str,
    stage: &str,
    bytes: i64,
    reason: String,
    notified_ms: Option<i64>,
    updated_ms: i64,
) -> Result<Option<(TerminalId, Site)>, StoreError> {
    let Ok(id) = terminal.parse() else {
        return Ok(None);
    };
    let stage = Stage::parse(stage)
        .ok_or_else(|| corrupt("rollout_sites", format!("{terminal}: stage {stage:?}")))?;
    Ok(Some((
        id,
        Site {
            stage,
            bytes: bytes.max(0) as u64,
            reason,
            notified_ms: notified_ms.map(|t| t.max(0) as u64),
            updated_ms: updated_ms.max(0) as u64,
        },
    )))
}

pub(super) fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Refuses a second release under a version with other contents.
pub(super) fn check_same(
    version: &str,
    stored: Option<String>,
    sha256: &str,
) -> Result<bool, StoreError> {
    match stored {
        None => Ok(true),
        Some(s) if s == sha256 => Ok(false),
        Some(s) => Err(StoreError::ReleaseExists {
            version: version.to_owned(),
            sha256: s,
        }),
    }
}

impl SqliteStore {
    pub fn add_release(&mut self, r: &ReleaseRow, artifact: &[u8]) -> Result<bool, StoreError> {
        let tx = self.conn.transaction()?;
        let stored = tx
            .query_row(
                "SELECT sha256 FROM releases WHERE version = ?1",
                params![r.version],
                |row| row.get(0),
            )
            .optional()?;
        if !check_same(&r.version, stored, &r.sha256)? {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO releases (version, sha256, size, signed, artifact, added_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                r.version,
                r.sha256,
                ms(r.size),
                r.signed,
                artifact,
                ms(r.added_ms)
            ],
        )?;
        tx.commit()?;
        Ok(true)
    }

    pub fn releases(&self) -> Result<Vec<ReleaseRow>, StoreError> {
        if !has_table(&self.conn, "releases")? {
            return Ok(Vec::new());
        }
        let mut stmt = self.conn.prepare(
            "SELECT version, sha256, size, signed, added_ms FROM releases ORDER BY added_ms",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(ReleaseRow {
                version: r.get(0)?,
                sha256: r.get(1)?,
                size: r.get::<_, i64>(2)?.max(0) as u64,
                signed: r.get(3)?,
                added_ms: r.get::<_, i64>(4)?.max(0) as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn release_artifact(
        &self,
        sha256: &str,
        out: &mut dyn std::io::Write,
    ) -> Result<bool, StoreError> {
        if !has_table(&self.conn, "releases")? {
            return Ok(false);
        }
        let Some(rowid) = self
            .conn
            .query_row(
                "SELECT rowid FROM releases WHERE sha256 = ?1 LIMIT 1",
                params![sha256],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
        else {
            return Ok(false);
        };
        // Read in place, in pieces: an artifact is never whole in memory.
        let mut blob =
            self.conn
                .blob_open(rusqlite::MAIN_DB, "releases", "artifact", rowid, true)?;
        std::io::copy(&mut blob, out).map_err(|source| StoreError::Io {
            path: format!("release {sha256}"),
            source,
        })?;
        Ok(true)
    }

    pub fn save_rollouts(
        &mut self,
        rollouts: &[RolloutRow],
        sites: &[RolloutSiteRow],
        fence: Option<&Fence>,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        check_fence(&tx, fence)?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO rollouts (id, version, state, plan, reason, command, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (id) DO UPDATE SET state = excluded.state,
                     reason = excluded.reason, updated_ms = excluded.updated_ms",
            )?;
            for r in rollouts {
                stmt.execute(params![
                    ms(r.plan.id),
                    r.plan.version,
                    r.state.as_str(),
                    encode_plan(&r.plan)?,
                    r.reason,
                    r.command,
                    ms(r.updated_ms)
                ])?;
            }
            let mut stmt = tx.prepare_cached(
                "INSERT INTO rollout_sites
                     (rollout, terminal, stage, bytes, reason, notified_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (rollout, terminal) DO UPDATE SET stage = excluded.stage,
                     bytes = excluded.bytes, reason = excluded.reason,
                     notified_ms = excluded.notified_ms, updated_ms = excluded.updated_ms",
            )?;
            for (id, terminal, s) in sites {
                stmt.execute(params![
                    ms(*id),
                    terminal.to_string(),
                    s.stage.as_str(),
                    ms(s.bytes),
                    s.reason,
                    s.notified_ms.map(ms),
                    ms(s.updated_ms)
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn rollouts(&self) -> Result<Vec<RolloutRow>, StoreError> {
        if !has_table(&self.conn, "rollouts")? {
            return Ok(Vec::new());
        }
        let mut stmt = self
            .conn
            .prepare("SELECT plan, state, reason, command, updated_ms FROM rollouts ORDER BY id")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (plan, state, reason, command, updated) = row?;
            out.push(rollout_row(&plan, &state, reason, command, updated)?);
        }
        Ok(out)
    }

    pub fn rollout_counts(&self) -> Result<Vec<(u64, Stage, usize)>, StoreError> {
        if !has_table(&self.conn, "rollout_sites")? {
            return Ok(Vec::new());
        }
        let mut stmt = self.conn.prepare(
            "SELECT rollout, stage, count(*) FROM rollout_sites GROUP BY rollout, stage",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, stage, n) = row?;
            out.push(count_row(id, &stage, n)?);
        }
        Ok(out)
    }

    pub fn rollout_sites(&self, id: u64) -> Result<BTreeMap<TerminalId, Site>, StoreError> {
        if !has_table(&self.conn, "rollout_sites")? {
            return Ok(BTreeMap::new());
        }
        let mut stmt = self.conn.prepare(
            "SELECT terminal, stage, bytes, reason, notified_ms, updated_ms
             FROM rollout_sites WHERE rollout = ?1",
        )?;
        let rows = stmt.query_map(params![ms(id)], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<i64>>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (t, stage, bytes, reason, notified, updated) = row?;
            if let Some((id, site)) = site_row(&t, &stage, bytes, reason, notified, updated)? {
                out.insert(id, site);
            }
        }
        Ok(out)
    }
}
