//! The PostgreSQL store's service state: names, meetings, readiness answers, alarms, the
//! leases on singleton roles with the fence their writes carry, and the instances at work.

use std::collections::BTreeMap;

use ::postgres::Transaction;
use cuntong_core::alarm::Alarm;
use cuntong_core::site::{Region, SiteCode};
use cuntong_core::terminal_id::TerminalId;

use super::PgStore;
use crate::names::Names;
use crate::store::{
    Column, Fence, InstanceRow, KnownTerminal, MeetingRow, NamesScope, OpenAlarms, StoreError,
    StoredMeeting, decode_alarm, encode_alarm, region_range,
};

/// Why a fenced write was refused: the role passed on, or the check itself failed.
pub(super) enum FenceError {
    Fenced(StoreError),
    Db(::postgres::Error),
}

impl FenceError {
    pub(super) fn or_else(self, err: impl Fn(::postgres::Error) -> StoreError) -> StoreError {
        match self {
            FenceError::Fenced(e) => e,
            FenceError::Db(e) => err(e),
        }
    }
}

/// Refuses the write of `tx` unless `fence`'s epoch is the role's now. The lease row is read
/// FOR KEY SHARE: a takeover (which locks it FOR UPDATE) cannot pass the role on before `tx`
/// commits, while the holder's renewals (which change only the expiry) do not wait for it.
pub(super) fn check_fence(
    tx: &mut Transaction<'_>,
    fence: Option<&Fence>,
) -> Result<(), FenceError> {
    let Some(f) = fence else { return Ok(()) };
    let current: Option<i64> = tx
        .query_opt(
            "SELECT epoch FROM leases WHERE role = $1 FOR KEY SHARE",
            &[&f.role],
        )
        .map_err(FenceError::Db)?
        .map(|r| r.get(0));
    match current {
        Some(e) if e.max(0) as u64 == f.epoch => Ok(()),
        other => Err(FenceError::Fenced(StoreError::Fenced {
            role: f.role,
            epoch: f.epoch,
            current: other.map(|e| e.max(0) as u64),
        })),
    }
}

/// PostgreSQL's clock in Unix ms.
const NOW: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

impl PgStore {
    pub fn take_lease(
        &mut self,
        role: &str,
        holder: &str,
        ttl_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        let ttl = i64::try_from(ttl_ms).unwrap_or(i64::MAX);
        let err = self.err("taking a lease");
        let mut tx = self.client.get_mut().transaction().map_err(&err)?;
        // A renewal changes only the expiry. Its row lock (FOR NO KEY UPDATE) does not wait
        // for the holder's own fenced writes, which hold the row FOR KEY SHARE for as long as
        // they take (a province's meeting saved while the store flushes a group): a renewal
        // blocked behind them cost the holder its role. It also does not wait for the WAL to
        // reach the disk: losing a renewal in a crash of the server only ends the tenure
        // sooner, as the server sees it, and the epoch fences what the holder still writes.
        let renewed = tx
            .query_opt(
                &format!(
                    "UPDATE leases SET expires_ms = {NOW} + $3
                     WHERE role = $1 AND holder = $2 RETURNING epoch"
                ),
                &[&role, &holder, &ttl],
            )
            .map_err(&err)?;
        if let Some(r) = renewed {
            tx.batch_execute("SET LOCAL synchronous_commit TO off")
                .map_err(&err)?;
            tx.commit().map_err(&err)?;
            return Ok(Some(r.get::<_, i64>(0).max(0) as u64));
        }
        // Taking it over: FOR UPDATE waits for the fenced writes of the holder before it,
        // and the new epoch is committed durably (two holders must never share one).
        let current = tx
            .query_opt(
                &format!("SELECT expires_ms < {NOW} FROM leases WHERE role = $1 FOR UPDATE"),
                &[&role],
            )
            .map_err(&err)?;
        let taken = match current.map(|r| r.get::<_, bool>(0)) {
            Some(false) => None,
            Some(true) => tx
                .query_opt(
                    &format!(
                        "UPDATE leases SET holder = $2, epoch = epoch + 1, expires_ms = {NOW} + $3
                         WHERE role = $1 RETURNING epoch"
                    ),
                    &[&role, &holder, &ttl],
                )
                .map_err(&err)?,
            None => tx
                .query_opt(
                    &format!(
                        "INSERT INTO leases (role, holder, epoch, expires_ms)
                         VALUES ($1, $2, 1, {NOW} + $3)
                         ON CONFLICT (role) DO NOTHING RETURNING epoch"
                    ),
                    &[&role, &holder, &ttl],
                )
                .map_err(&err)?,
        };
        tx.commit().map_err(&err)?;
        Ok(taken.map(|r| r.get::<_, i64>(0).max(0) as u64))
    }

    pub fn instance_seen(&mut self, instance: &str, started_ms: u64) -> Result<(), StoreError> {
        self.client
            .get_mut()
            .execute(
                &format!(
                    "INSERT INTO instances (instance, started_ms, last_seen_ms) VALUES ($1, $2, {NOW})
                     ON CONFLICT (instance) DO UPDATE SET last_seen_ms = excluded.last_seen_ms"
                ),
                &[&instance, &i64::try_from(started_ms).unwrap_or(i64::MAX)],
            )
            .map_err(self.err("recording an instance"))?;
        Ok(())
    }

    pub fn instances(&self) -> Result<(Vec<InstanceRow>, u64), StoreError> {
        let err = self.err("reading the instances");
        let mut client = self.client.borrow_mut();
        let rows = client
            .query(
                &format!(
                    "SELECT i.instance, coalesce(string_agg(l.role, ',' ORDER BY l.role), ''),
                        i.started_ms, i.last_seen_ms
                     FROM instances i
                     LEFT JOIN leases l ON l.holder = i.instance AND l.expires_ms >= {NOW}
                     GROUP BY i.instance ORDER BY i.instance"
                ),
                &[],
            )
            .map_err(&err)?
            .iter()
            .map(|r| InstanceRow {
                instance: r.get(0),
                roles: r.get(1),
                started_ms: r.get::<_, i64>(2).max(0) as u64,
                last_seen_ms: r.get::<_, i64>(3).max(0) as u64,
            })
            .collect();
        let now: i64 = client
            .query_one(&format!("SELECT {NOW}"), &[])
            .map_err(&err)?
            .get(0);
        Ok((rows, now.max(0) as u64))
    }

    pub fn terminal_ids(&self) -> Result<Vec<TerminalId>, StoreError> {
        let rows = self
            .client
            .borrow_mut()
            .query("SELECT terminal FROM terminals", &[])
            .map_err(self.err("reading the terminals"))?;
        Ok(rows
            .iter()
            .filter_map(|r| r.get::<_, &str>(0).parse().ok())
            .collect())
    }

    pub fn known_terminals(&self) -> Result<Vec<KnownTerminal>, StoreError> {
        let rows = self
            .client
            .borrow_mut()
            .query(
                "SELECT terminal, online, last_seen_ms, version FROM terminals
                 WHERE last_seen_ms IS NOT NULL",
                &[],
            )
            .map_err(self.err("reading the terminals"))?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some(KnownTerminal {
                    terminal: r.get::<_, &str>(0).parse().ok()?,
                    online: r.get(1),
                    last_seen_ms: r.get::<_, i64>(2).max(0) as u64,
                    version: r.get(3),
                })
            })
            .collect())
    }

    pub fn unended_meetings(&self) -> Result<Vec<StoredMeeting>, StoreError> {
        let rows = self
            .client
            .borrow_mut()
            .query(
                "SELECT id, host, created_ms FROM meetings WHERE status <> 'ended'",
                &[],
            )
            .map_err(self.err("reading the meetings"))?;
        Ok(rows
            .iter()
            .map(|r| StoredMeeting {
                id: Column::Value(r.get(0)),
                record: Column::Value(r.get(1)),
                created_ms: Column::Value(r.get(2)),
            })
            .collect())
    }

    pub fn meeting_ids(&self) -> Result<Vec<String>, StoreError> {
        let rows = self
            .client
            .borrow_mut()
            .query("SELECT id FROM meetings", &[])
            .map_err(self.err("reading the meetings"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    pub fn live_meetings(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let rows = self
            .client
            .borrow_mut()
            .query("SELECT host FROM meetings WHERE status = 'live'", &[])
            .map_err(self.err("reading the meetings"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    pub fn meeting(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .client
            .borrow_mut()
            .query_opt("SELECT host FROM meetings WHERE id = $1", &[&id])
            .map_err(self.err("reading a meeting"))?
            .map(|r| r.get(0)))
    }

    pub fn save_meetings(
        &mut self,
        rows: &[MeetingRow],
        fence: Option<&Fence>,
    ) -> Result<(), StoreError> {
        let err = self.err("storing meetings");
        let mut tx = self.client.get_mut().transaction().map_err(&err)?;
        check_fence(&mut tx, fence).map_err(|e| e.or_else(&err))?;
        for m in rows {
            tx.execute(
                "INSERT INTO meetings (id, status, created_ms, host) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (id) DO UPDATE SET status = excluded.status, host = excluded.host",
                &[
                    &m.id.as_str(),
                    &m.status,
                    &i64::try_from(m.created_ms).unwrap_or(i64::MAX),
                    &m.record,
                ],
            )
            .map_err(&err)?;
        }
        tx.commit().map_err(&err)
    }

    pub fn retire_meeting(&mut self, id: &str) -> Result<(), StoreError> {
        self.client
            .get_mut()
            .execute("UPDATE meetings SET status = 'ended' WHERE id = $1", &[&id])
            .map_err(self.err("retiring a meeting"))?;
        Ok(())
    }

    pub fn save_readiness(
        &mut self,
        rows: &[(String, Option<bool>, String)],
        at_ms: u64,
    ) -> Result<(), StoreError> {
        let err = self.err("storing readiness answers");
        let at = i64::try_from(at_ms).unwrap_or(i64::MAX);
        let mut tx = self.client.get_mut().transaction().map_err(&err)?;
        for (terminal, ready, json) in rows {
            tx.execute(
                "INSERT INTO readiness (terminal, at_ms, ready, result) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (terminal, at_ms) DO UPDATE SET ready = excluded.ready,
                    result = excluded.result",
                &[terminal, &at, ready, json],
            )
            .map_err(&err)?;
        }
        tx.commit().map_err(&err)
    }

    pub fn open_alarms(&self) -> Result<OpenAlarms, StoreError> {
        let err = self.err("reading the alarms");
        let mut client = self.client.borrow_mut();
        let mut alarms = Vec::new();
        for r in client
            .query(
                "SELECT alarm FROM alarms WHERE state <> 'cleared' ORDER BY id",
                &[],
            )
            .map_err(&err)?
        {
            match decode_alarm(r.get(0)) {
                Ok(a) => alarms.push(a),
                Err(e) => {
                    tracing::error!(error = %e, "a stored alarm no longer decodes; left in the store")
                }
            }
        }
        let last_id: i64 = client
            .query_one("SELECT coalesce(max(id), 0) FROM alarms", &[])
            .map_err(&err)?
            .get(0);
        Ok(OpenAlarms {
            alarms,
            last_id: last_id.max(0) as u64,
        })
    }

    pub fn save_alarms(
        &mut self,
        alarms: &[Alarm],
        fence: Option<&Fence>,
    ) -> Result<(), StoreError> {
        let err = self.err("storing alarms");
        let mut tx = self.client.get_mut().transaction().map_err(&err)?;
        check_fence(&mut tx, fence).map_err(|e| e.or_else(&err))?;
        for a in alarms {
            let json = encode_alarm(a)?;
            tx.execute(
                "INSERT INTO alarms (id, subject, kind, state, raised_ms, alarm)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (id) DO UPDATE SET state = excluded.state, alarm = excluded.alarm",
                &[
                    &i64::try_from(a.id).unwrap_or(i64::MAX),
                    &a.subject.to_string(),
                    &a.kind.as_str(),
                    &a.state.as_str(),
                    &i64::try_from(a.raised_ms).unwrap_or(i64::MAX),
                    &json,
                ],
            )
            .map_err(&err)?;
        }
        tx.commit().map_err(&err)
    }

    pub fn alarms(
        &self,
        region: Option<&Region>,
        active: bool,
        limit: usize,
    ) -> Result<Vec<Alarm>, StoreError> {
        let (from, to) = region_range(region);
        let rows = self
            .client
            .borrow_mut()
            .query(
                "SELECT alarm FROM alarms WHERE subject >= $1 AND subject < $2
                 AND (NOT $3 OR state <> 'cleared') ORDER BY id DESC LIMIT $4",
                &[
                    &from,
                    &to,
                    &active,
                    &i64::try_from(limit).unwrap_or(i64::MAX),
                ],
            )
            .map_err(self.err("reading the alarms"))?;
        rows.iter().map(|r| decode_alarm(r.get(0))).collect()
    }
}

/// The names part (see `names.rs` for the SQLite side).
impl PgStore {
    /// Stores official names of division codes, replacing earlier ones of the same codes (the
    /// last of one code in `rows` wins), in one transaction; returns how many were given.
    pub fn import_names(&mut self, rows: &[(SiteCode, String)]) -> Result<u64, StoreError> {
        let err = self.err("importing names");
        let last: BTreeMap<i64, &str> = rows
            .iter()
            .map(|(code, name)| (code.as_u64() as i64, name.as_str()))
            .collect();
        let codes: Vec<i64> = last.keys().copied().collect();
        let names: Vec<&str> = last.values().copied().collect();
        let mut tx = self.client.get_mut().transaction().map_err(&err)?;
        tx.execute(
            "INSERT INTO division_names (code, name)
             SELECT * FROM unnest($1::bigint[], $2::text[])
             ON CONFLICT (code) DO UPDATE SET name = excluded.name",
            &[&codes, &names],
        )
        .map_err(&err)?;
        bump_names_version(&mut tx).map_err(&err)?;
        tx.commit().map_err(&err)?;
        Ok(rows.len() as u64)
    }

    /// Gives a terminal a name of its own (from provisioning with `--name`).
    pub fn set_terminal_name(
        &mut self,
        terminal: &TerminalId,
        name: &str,
    ) -> Result<(), StoreError> {
        let err = self.err("naming a terminal");
        let mut tx = self.client.get_mut().transaction().map_err(&err)?;
        tx.execute(
            "INSERT INTO terminal_names (terminal, name) VALUES ($1, $2)
             ON CONFLICT (terminal) DO UPDATE SET name = excluded.name",
            &[&terminal.to_string(), &name],
        )
        .map_err(&err)?;
        bump_names_version(&mut tx).map_err(&err)?;
        tx.commit().map_err(&err)
    }

    /// Changes whenever names are imported or a terminal is named.
    pub fn names_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .client
            .borrow_mut()
            .query_opt("SELECT value FROM counters WHERE name = 'names'", &[])
            .map_err(self.err("reading the names version"))?
            .map_or(0, |r| r.get(0)))
    }

    /// The imported division names and the terminals' own names, those in and above `region`.
    pub fn names(&self, region: Option<&Region>) -> Result<Names, StoreError> {
        let err = self.err("reading names");
        let scope = NamesScope::of(region);
        let mut client = self.client.borrow_mut();
        let imported = client
            .query(
                "SELECT code, name FROM division_names
                 WHERE (code >= $1 AND code < $2) OR code = ANY($3)",
                &[&scope.first, &scope.end, &scope.ancestors],
            )
            .map_err(&err)?
            .iter()
            .map(|r| (r.get::<_, i64>(0) as u64, r.get(1)))
            .collect();
        let labels = client
            .query(
                "SELECT terminal, name FROM terminal_names WHERE terminal >= $1 AND terminal < $2",
                &[&scope.terminals.0, &scope.terminals.1],
            )
            .map_err(&err)?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        Ok(Names::new(imported, labels))
    }
}

fn bump_names_version(tx: &mut Transaction<'_>) -> Result<(), ::postgres::Error> {
    tx.execute(
        "INSERT INTO counters (name, value) VALUES ('names', 1)
         ON CONFLICT (name) DO UPDATE SET value = counters.value + 1",
        &[],
    )?;
    Ok(())
}
