//! The meetings part of the store: each session as its host is (`meetings`: the host's own
//! record, its status and when it was created), written by the meeting host and read back when
//! central starts, and by `readiness` and the monitor; and the readiness answers of the
//! terminals asked before a meeting (`readiness`).

use cuntong_core::meeting::MeetingId;
use rusqlite::params;
use rusqlite::types::Value;

use super::{Fence, SqliteStore, StoreError, instances::check_fence};

/// A session to write: the host's record as [`Host::to_store`] gives it.
///
/// [`Host::to_store`]: cuntong_core::meeting::host::Host::to_store
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeetingRow {
    pub id: MeetingId,
    pub status: &'static str,
    pub created_ms: u64,
    pub record: Vec<u8>,
}

/// A stored session as the row has it: anything may be in any column of a row another program
/// wrote, and one bad row must not keep central from starting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMeeting {
    pub id: Column<String>,
    pub record: Column<Vec<u8>>,
    pub created_ms: Column<i64>,
}

/// A column of a stored row: a value of its type, or something else, as text for the message
/// that names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Column<T> {
    Value(T),
    Odd(String),
}

/// A stored value as text, for messages.
fn text_of(v: &Value) -> String {
    match v {
        Value::Null => "(null)".into(),
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => f.to_string(),
        Value::Text(t) => t.clone(),
        Value::Blob(b) => format!("({} bytes)", b.len()),
    }
}

impl StoredMeeting {
    fn of(id: Value, record: Value, created: Value) -> StoredMeeting {
        StoredMeeting {
            id: match id {
                Value::Text(t) => Column::Value(t),
                other => Column::Odd(text_of(&other)),
            },
            record: match record {
                Value::Blob(b) => Column::Value(b),
                other => Column::Odd(text_of(&other)),
            },
            created_ms: match created {
                Value::Integer(ms) => Column::Value(ms),
                other => Column::Odd(text_of(&other)),
            },
        }
    }
}

impl SqliteStore {
    /// The sessions not ended, for the meeting host to carry on with.
    pub fn unended_meetings(&self) -> Result<Vec<StoredMeeting>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, host, created_ms FROM meetings WHERE status != 'ended'")?;
        let rows = stmt.query_map([], |r| {
            Ok(StoredMeeting::of(r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every session id stored, ended ones too (as text: a row another program wrote may hold
    /// anything).
    pub fn meeting_ids(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT id FROM meetings")?;
        let rows = stmt.query_map([], |r| r.get::<_, Value>(0))?;
        let mut out = Vec::new();
        for v in rows {
            if let Value::Text(t) = v? {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// Marks a stored session ended (one central cannot use), so it is not loaded again.
    pub fn retire_meeting(&mut self, id: &str) -> Result<(), StoreError> {
        self.conn
            .execute("UPDATE meetings SET status = 'ended' WHERE id = ?1", [id])?;
        Ok(())
    }

    /// The records of the sessions stored as live.
    pub fn live_meetings(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT host FROM meetings WHERE status = 'live'")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The record of session `id`, if it is stored.
    pub fn meeting(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        use rusqlite::OptionalExtension;
        Ok(self
            .conn
            .query_row("SELECT host FROM meetings WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Writes sessions, in one transaction.
    pub fn save_meetings(
        &mut self,
        rows: &[MeetingRow],
        fence: Option<&Fence>,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        check_fence(&tx, fence)?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO meetings (id, status, created_ms, host) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (id) DO UPDATE SET status = excluded.status, host = excluded.host",
            )?;
            for m in rows {
                stmt.execute(params![
                    m.id.as_str(),
                    m.status,
                    i64::try_from(m.created_ms).unwrap_or(i64::MAX),
                    m.record
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Keeps readiness answers (`cuntong readiness`): per terminal, whether it was ready
    /// (`None`: no answer) and the answer as JSON, at `at_ms`.
    pub fn save_readiness(
        &mut self,
        rows: &[(String, Option<bool>, String)],
        at_ms: u64,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR REPLACE INTO readiness (terminal, at_ms, ready, result)
                 VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (terminal, ready, json) in rows {
                stmt.execute(params![
                    terminal,
                    i64::try_from(at_ms).unwrap_or(i64::MAX),
                    ready.map(i64::from),
                    json
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}
