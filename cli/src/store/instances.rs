//! The instances part of the store: leases on the roles only one central instance may play at
//! a time (`leases`: holder, epoch, expiry on the store's clock) and the instances at work
//! (`instances`, for `cuntong central status`). The store's clock decides expiry, so the
//! instances' clocks need not agree.

use rusqlite::{OptionalExtension, params};

use super::{SqliteStore, StoreError};

/// A central instance as it last reported itself.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InstanceRow {
    pub instance: String,
    /// The roles whose lease it holds now (comma-separated; empty: a standby, or gone).
    pub roles: String,
    pub started_ms: u64,
    pub last_seen_ms: u64,
}

/// The lease a state write is made under: the write is refused once the role has passed to
/// another holder (a new epoch), so a holder cut off from the others cannot overwrite what its
/// successor keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fence {
    pub role: &'static str,
    pub epoch: u64,
}

/// Refuses the write of transaction `tx` unless `fence`'s epoch is the role's now.
pub(super) fn check_fence(
    tx: &rusqlite::Transaction<'_>,
    fence: Option<&Fence>,
) -> Result<(), StoreError> {
    let Some(f) = fence else { return Ok(()) };
    let current: Option<i64> = tx
        .query_row("SELECT epoch FROM leases WHERE role = ?1", [f.role], |r| {
            r.get(0)
        })
        .optional()?;
    match current {
        Some(e) if e.max(0) as u64 == f.epoch => Ok(()),
        other => Err(StoreError::Fenced {
            role: f.role,
            epoch: f.epoch,
            current: other.map(|e| e.max(0) as u64),
        }),
    }
}

/// SQLite's clock in Unix ms.
const NOW: &str = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)";

impl SqliteStore {
    /// An SQLite store has one central (the file lock of [`SqliteStore::open_for_central`]),
    /// so the lease always goes to the one asking: a central restarted after a crash takes the
    /// host role at once instead of waiting for its predecessor's lease to run out. The epoch
    /// still grows when the holder changes.
    pub fn take_lease(
        &mut self,
        role: &str,
        holder: &str,
        ttl_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        let ttl = i64::try_from(ttl_ms).unwrap_or(i64::MAX);
        let epoch: Option<i64> = self
            .conn
            .query_row(
                &format!(
                    "INSERT INTO leases (role, holder, epoch, expires_ms) VALUES (?1, ?2, 1, {NOW} + ?3)
                     ON CONFLICT (role) DO UPDATE SET
                        epoch = CASE WHEN leases.holder = excluded.holder
                                THEN leases.epoch ELSE leases.epoch + 1 END,
                        holder = excluded.holder,
                        expires_ms = excluded.expires_ms
                     RETURNING epoch"
                ),
                params![role, holder, ttl],
                |r| r.get(0),
            )
            .optional()?;
        Ok(epoch.map(|e| e.max(0) as u64))
    }

    pub fn instance_seen(&mut self, instance: &str, started_ms: u64) -> Result<(), StoreError> {
        self.conn.execute(
            &format!(
                "INSERT INTO instances (instance, started_ms, last_seen_ms) VALUES (?1, ?2, {NOW})
                 ON CONFLICT (instance) DO UPDATE SET last_seen_ms = excluded.last_seen_ms"
            ),
            params![instance, i64::try_from(started_ms).unwrap_or(i64::MAX)],
        )?;
        Ok(())
    }

    pub fn instances(&self) -> Result<(Vec<InstanceRow>, u64), StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT i.instance, coalesce(group_concat(l.role, ','), ''), i.started_ms,
                    i.last_seen_ms
             FROM instances i LEFT JOIN leases l ON l.holder = i.instance AND l.expires_ms >= {NOW}
             GROUP BY i.instance ORDER BY i.instance"
        ))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(InstanceRow {
                    instance: r.get(0)?,
                    roles: r.get(1)?,
                    started_ms: r.get::<_, i64>(2)?.max(0) as u64,
                    last_seen_ms: r.get::<_, i64>(3)?.max(0) as u64,
                })
            })?
            .collect::<Result<_, _>>()?;
        let now: i64 = self
            .conn
            .query_row(&format!("SELECT {NOW}"), [], |r| r.get(0))?;
        Ok((rows, now.max(0) as u64))
    }
}
