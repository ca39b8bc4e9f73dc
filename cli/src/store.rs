//! The central history store.
//!
//! [`Store`] is the seam (PostgreSQL can follow); [`SqliteStore`] is the embedded default.
//! Each message is stored once per (terminal, stream, seq): the primary key is the
//! de-duplication, so a broker's redelivery is harmless. Telemetry is kept as the terminal
//! sent it (the postcard envelope, exact decimals and original timestamps), one row per
//! message, and the newest value of each metric per terminal is kept in `latest` for the fleet
//! view. Writes are applied in groups, one transaction per group.

use std::collections::HashMap;
use std::path::Path;

use bytes::Bytes;
use cuntong_core::envelope::{Envelope, Event, Stream, decode_telemetry};
use cuntong_core::presence::Presence;
use cuntong_core::site::Region;
use cuntong_core::telemetry::{Metric, TelemetryBatch};
use cuntong_core::terminal_id::TerminalId;
use rusqlite::{Connection, OptionalExtension, params};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("stored message of {terminal} seq {seq} no longer decodes: {detail}")]
    Corrupt {
        terminal: String,
        seq: u64,
        detail: String,
    },
}

/// One thing to store, already decoded and checked by the collector.
#[derive(Clone, Debug)]
pub enum Record {
    Telemetry {
        terminal: TerminalId,
        received_ms: u64,
        envelope: Envelope<TelemetryBatch>,
        /// The payload as received, stored as is.
        raw: Bytes,
    },
    Event {
        terminal: TerminalId,
        received_ms: u64,
        envelope: Envelope<Event>,
        raw: Bytes,
    },
    Presence {
        terminal: TerminalId,
        received_ms: u64,
        presence: Presence,
    },
    /// A payload that did not decode: kept for inspection, never silently discarded.
    Rejected {
        topic: String,
        received_ms: u64,
        reason: String,
        payload: Bytes,
    },
}

/// What one group of writes did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Messages stored for the first time.
    pub stored: u64,
    /// Messages already stored (redeliveries).
    pub duplicates: u64,
    /// Metric values in the newly stored telemetry.
    pub values: u64,
}

/// One terminal in the fleet view.
#[derive(Clone, Debug, PartialEq)]
pub struct SiteRow {
    pub terminal: String,
    pub site: String,
    pub level: String,
    pub online: bool,
    pub version: Option<String>,
    pub last_seen_ms: Option<u64>,
    /// Newest value of each metric, by name.
    pub metrics: Vec<(String, f64)>,
}

/// One stored sample.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleRow {
    pub seq: u64,
    pub ts_ms: u64,
    pub metric: String,
    pub value: f64,
    /// The value exactly as measured (decimal text).
    pub exact: String,
}

/// A history store.
pub trait Store: Send {
    /// Applies a group of records atomically.
    fn apply(&mut self, records: &[Record]) -> Result<Applied, StoreError>;
    /// The fleet view, optionally limited to a region, ordered by terminal id.
    fn sites(&self, region: Option<&Region>) -> Result<Vec<SiteRow>, StoreError>;
    /// Stored samples of a terminal, oldest first.
    fn telemetry(
        &self,
        terminal: &TerminalId,
        metric: Option<&Metric>,
        since_ms: Option<u64>,
    ) -> Result<Vec<SampleRow>, StoreError>;
}

/// The embedded SQLite store.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
}

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS terminals (
    terminal     TEXT PRIMARY KEY,
    site         TEXT NOT NULL,
    level        TEXT NOT NULL,
    online       INTEGER NOT NULL DEFAULT 0,
    version      TEXT,
    started_ms   INTEGER,
    keep_alive_s INTEGER,
    last_seen_ms INTEGER
);
CREATE TABLE IF NOT EXISTS messages (
    terminal    TEXT NOT NULL,
    stream      INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    time_ms     INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    payload     BLOB NOT NULL,
    PRIMARY KEY (terminal, stream, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS messages_by_time ON messages (terminal, stream, time_ms);
CREATE TABLE IF NOT EXISTS latest (
    terminal TEXT NOT NULL,
    metric   TEXT NOT NULL,
    ts_ms    INTEGER NOT NULL,
    value    REAL NOT NULL,
    PRIMARY KEY (terminal, metric)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rejected (
    topic       TEXT NOT NULL,
    received_ms INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    payload     BLOB NOT NULL
);
";

fn stream_id(s: Stream) -> i64 {
    match s {
        Stream::Telemetry => 0,
        Stream::Events => 1,
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // A missing directory shows up as the open error below.
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        Ok(SqliteStore { conn })
    }

    /// Opens the database read-only use (queries from the CLI while central writes).
    pub fn open_existing(path: &Path) -> Result<SqliteStore, StoreError> {
        if !path.exists() {
            return Err(StoreError::Open {
                path: path.display().to_string(),
                source: rusqlite::Error::InvalidPath(path.to_owned()),
            });
        }
        SqliteStore::open(path)
    }
}

fn touch(seen: &mut HashMap<String, (TerminalId, u64)>, id: &TerminalId, ms: u64) {
    let e = seen.entry(id.to_string()).or_insert((*id, ms));
    e.1 = e.1.max(ms);
}

impl Store for SqliteStore {
    fn apply(&mut self, records: &[Record]) -> Result<Applied, StoreError> {
        let tx = self.conn.transaction()?;
        let mut applied = Applied::default();
        let mut seen: HashMap<String, (TerminalId, u64)> = HashMap::new();
        let mut latest: HashMap<(String, String), (u64, f64)> = HashMap::new();
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO messages (terminal, stream, seq, time_ms, received_ms, payload)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            let mut presence = tx.prepare_cached(
                "INSERT INTO terminals (terminal, site, level, online, version, started_ms, keep_alive_s)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (terminal) DO UPDATE SET online = excluded.online,
                    version = excluded.version, started_ms = excluded.started_ms,
                    keep_alive_s = excluded.keep_alive_s",
            )?;
            let mut rejected = tx.prepare_cached(
                "INSERT INTO rejected (topic, received_ms, reason, payload) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for r in records {
                match r {
                    Record::Telemetry {
                        terminal,
                        received_ms,
                        envelope,
                        raw,
                    } => {
                        let id = terminal.to_string();
                        let n = insert.execute(params![
                            id,
                            stream_id(Stream::Telemetry),
                            envelope.seq as i64,
                            envelope.time_ms as i64,
                            *received_ms as i64,
                            raw.as_ref()
                        ])?;
                        touch(&mut seen, terminal, *received_ms);
                        if n == 0 {
                            applied.duplicates += 1;
                            continue;
                        }
                        applied.stored += 1;
                        for s in &envelope.body.samples {
                            applied.values += 1;
                            let ts = envelope.time_ms + u64::from(s.offset_ms);
                            let key = (id.clone(), s.metric.name().to_owned());
                            let v = s.value.to_f64();
                            latest
                                .entry(key)
                                .and_modify(|e| {
                                    if ts >= e.0 {
                                        *e = (ts, v)
                                    }
                                })
                                .or_insert((ts, v));
                        }
                    }
                    Record::Event {
                        terminal,
                        received_ms,
                        envelope,
                        raw,
                    } => {
                        let n = insert.execute(params![
                            terminal.to_string(),
                            stream_id(Stream::Events),
                            envelope.seq as i64,
                            envelope.time_ms as i64,
                            *received_ms as i64,
                            raw.as_ref()
                        ])?;
                        touch(&mut seen, terminal, *received_ms);
                        if n == 0 {
                            applied.duplicates += 1;
                        } else {
                            applied.stored += 1;
                        }
                    }
                    Record::Presence {
                        terminal,
                        received_ms,
                        presence: p,
                    } => {
                        presence.execute(params![
                            terminal.to_string(),
                            terminal.site().to_string(),
                            terminal.site().level().as_str(),
                            p.online,
                            p.version,
                            p.started_ms as i64,
                            i64::from(p.keep_alive_s)
                        ])?;
                        if p.online {
                            touch(&mut seen, terminal, *received_ms);
                        }
                    }
                    Record::Rejected {
                        topic,
                        received_ms,
                        reason,
                        payload,
                    } => {
                        rejected.execute(params![
                            topic,
                            *received_ms as i64,
                            reason,
                            payload.as_ref()
                        ])?;
                    }
                }
            }
            let mut seen_stmt = tx.prepare_cached(
                "INSERT INTO terminals (terminal, site, level, last_seen_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (terminal) DO UPDATE SET
                    last_seen_ms = max(coalesce(last_seen_ms, 0), excluded.last_seen_ms)",
            )?;
            for (id, (t, ms)) in &seen {
                seen_stmt.execute(params![
                    id,
                    t.site().to_string(),
                    t.site().level().as_str(),
                    *ms as i64
                ])?;
            }
            let mut latest_stmt = tx.prepare_cached(
                "INSERT INTO latest (terminal, metric, ts_ms, value) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (terminal, metric) DO UPDATE SET ts_ms = excluded.ts_ms,
                    value = excluded.value WHERE excluded.ts_ms >= latest.ts_ms",
            )?;
            for ((t, m), (ts, v)) in &latest {
                latest_stmt.execute(params![t, m, *ts as i64, v])?;
            }
        }
        tx.commit()?;
        Ok(applied)
    }

    fn sites(&self, region: Option<&Region>) -> Result<Vec<SiteRow>, StoreError> {
        let prefix = region.map_or(String::new(), |r| r.prefix());
        let mut stmt = self.conn.prepare_cached(
            "SELECT terminal, site, level, online, version, last_seen_ms FROM terminals
             WHERE substr(site, 1, length(?1)) = ?1 ORDER BY terminal",
        )?;
        let mut rows: Vec<SiteRow> = stmt
            .query_map(params![prefix], |r| {
                Ok(SiteRow {
                    terminal: r.get(0)?,
                    site: r.get(1)?,
                    level: r.get(2)?,
                    online: r.get(3)?,
                    version: r.get(4)?,
                    last_seen_ms: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
                    metrics: Vec::new(),
                })
            })?
            .collect::<Result<_, _>>()?;
        let mut latest = self.conn.prepare_cached(
            "SELECT metric, value FROM latest WHERE terminal = ?1 ORDER BY metric",
        )?;
        for row in &mut rows {
            row.metrics = latest
                .query_map(params![row.terminal], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
        }
        Ok(rows)
    }

    fn telemetry(
        &self,
        terminal: &TerminalId,
        metric: Option<&Metric>,
        since_ms: Option<u64>,
    ) -> Result<Vec<SampleRow>, StoreError> {
        let since = since_ms.unwrap_or(0) as i64;
        // A batch's samples are at or after its time, within the batch's span; look back a day
        // so batches that started before `since` but hold later samples are included.
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, payload FROM messages WHERE terminal = ?1 AND stream = ?2
             AND time_ms >= ?3 - 86400000 ORDER BY time_ms, seq",
        )?;
        let id = terminal.to_string();
        let rows = stmt.query_map(params![id, stream_id(Stream::Telemetry), since], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, payload) = row?;
            let env = decode_telemetry(&payload).map_err(|e| StoreError::Corrupt {
                terminal: id.clone(),
                seq: seq as u64,
                detail: e.to_string(),
            })?;
            for s in env.body.samples {
                let ts = env.time_ms + u64::from(s.offset_ms);
                if (ts as i64) < since || metric.is_some_and(|m| *m != s.metric) {
                    continue;
                }
                out.push(SampleRow {
                    seq: env.seq,
                    ts_ms: ts,
                    metric: s.metric.name().to_owned(),
                    value: s.value.to_f64(),
                    exact: s.value.to_string(),
                });
            }
        }
        out.sort_by_key(|r| (r.ts_ms, r.seq));
        Ok(out)
    }
}

impl SqliteStore {
    /// Number of messages stored for a terminal and stream (used by tests and benches).
    pub fn count(&self, terminal: &str, stream: Stream) -> Result<u64, StoreError> {
        let n: Option<i64> = self
            .conn
            .query_row(
                "SELECT count(*) FROM messages WHERE terminal = ?1 AND stream = ?2",
                params![terminal, stream_id(stream)],
                |r| r.get(0),
            )
            .optional()?;
        Ok(n.unwrap_or(0) as u64)
    }
}
