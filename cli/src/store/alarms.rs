//! The alarms part of the store: every alarm as the engine last changed it (`alarms`, the
//! alarm as JSON beside the columns lists filter on), written by central's alarm service and
//! read by `cuntong alarms`, the monitor and the dashboard; and the terminals the engine is
//! told of when central starts.

use cuntong_core::alarm::Alarm;
use cuntong_core::site::Region;
use cuntong_core::terminal_id::TerminalId;
use rusqlite::params;

use super::{Fence, SqliteStore, StoreError, has_table, instances::check_fence, region_range};

/// The alarms the engine starts with: those not cleared, and the highest id ever given.
#[derive(Clone, Debug, Default)]
pub struct OpenAlarms {
    pub alarms: Vec<Alarm>,
    pub last_id: u64,
}

/// What the store knows of a terminal when central starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownTerminal {
    pub terminal: TerminalId,
    pub online: bool,
    pub last_seen_ms: u64,
    /// The version its last presence named.
    pub version: Option<String>,
}

/// An alarm as stored (JSON), back; both backends read alarms this way.
pub(super) fn decode_alarm(text: &str) -> Result<Alarm, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        terminal: "alarms".into(),
        seq: 0,
        detail: e.to_string(),
    })
}

/// An alarm as stored: JSON, beside the columns lists filter on.
pub(super) fn encode_alarm(a: &Alarm) -> Result<String, StoreError> {
    serde_json::to_string(a).map_err(|e| StoreError::Corrupt {
        terminal: a.subject.to_string(),
        seq: a.id,
        detail: e.to_string(),
    })
}

impl SqliteStore {
    /// The alarms not cleared and the last id. An alarm that no longer decodes is logged and
    /// left in the store; it does not keep central from starting.
    pub fn open_alarms(&self) -> Result<OpenAlarms, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT alarm FROM alarms WHERE state != 'cleared' ORDER BY id")?;
        let mut alarms = Vec::new();
        for text in stmt.query_map([], |r| r.get::<_, String>(0))? {
            match decode_alarm(&text?) {
                Ok(a) => alarms.push(a),
                Err(e) => {
                    tracing::error!(error = %e, "a stored alarm no longer decodes; left in the store")
                }
            }
        }
        let last_id: i64 =
            self.conn
                .query_row("SELECT coalesce(max(id), 0) FROM alarms", [], |r| r.get(0))?;
        Ok(OpenAlarms {
            alarms,
            last_id: last_id.max(0) as u64,
        })
    }

    /// Writes alarm changes (the newest state of each), in one transaction.
    pub fn save_alarms(
        &mut self,
        alarms: &[Alarm],
        fence: Option<&Fence>,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        check_fence(&tx, fence)?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO alarms (id, subject, kind, state, raised_ms, alarm)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (id) DO UPDATE SET state = excluded.state, alarm = excluded.alarm",
            )?;
            for a in alarms {
                let json = encode_alarm(a)?;
                stmt.execute(params![
                    i64::try_from(a.id).unwrap_or(i64::MAX),
                    a.subject.to_string(),
                    a.kind.as_str(),
                    a.state.as_str(),
                    i64::try_from(a.raised_ms).unwrap_or(i64::MAX),
                    json
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The stored alarms whose subject is in `region` (all if `None`), active ones only if
    /// asked, newest first, at most `limit`.
    pub fn alarms(
        &self,
        region: Option<&Region>,
        active: bool,
        limit: usize,
    ) -> Result<Vec<Alarm>, StoreError> {
        if !has_table(&self.conn, "alarms")? {
            return Ok(Vec::new());
        }
        let (from, to) = region_range(region);
        let mut stmt = self.conn.prepare_cached(
            "SELECT alarm FROM alarms WHERE subject >= ?1 AND subject < ?2
             AND (?3 = 0 OR state != 'cleared') ORDER BY id DESC LIMIT ?4",
        )?;
        let rows = stmt.query_map(
            params![
                from,
                to,
                active as i64,
                i64::try_from(limit).unwrap_or(i64::MAX)
            ],
            |r| r.get::<_, String>(0),
        )?;
        let mut out = Vec::new();
        for text in rows {
            out.push(decode_alarm(&text?)?);
        }
        Ok(out)
    }

    /// Every terminal the store knows.
    pub fn terminal_ids(&self) -> Result<Vec<TerminalId>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT terminal FROM terminals")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for t in rows {
            if let Ok(id) = t?.parse() {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Every terminal heard from, with whether it was online and when it was last seen.
    pub fn known_terminals(&self) -> Result<Vec<KnownTerminal>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT terminal, online, last_seen_ms, version FROM terminals
             WHERE last_seen_ms IS NOT NULL",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, bool>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (t, online, seen, version) = row?;
            if let Ok(terminal) = t.parse() {
                out.push(KnownTerminal {
                    terminal,
                    online,
                    last_seen_ms: seen.max(0) as u64,
                    version,
                });
            }
        }
        Ok(out)
    }
}
