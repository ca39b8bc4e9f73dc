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
use cuntong_core::delivery::Watermarks;
use cuntong_core::envelope::{Envelope, Event, Stream, decode_event, decode_telemetry};
use cuntong_core::presence::Presence;
use cuntong_core::site::Region;
use cuntong_core::telemetry::{Metric, TelemetryBatch};
use cuntong_core::terminal_id::TerminalId;
use rusqlite::{Connection, OptionalExtension, params};

mod alarms;
mod meetings;
mod names;
mod schema;
mod writer;
pub use alarms::{KnownTerminal, OpenAlarms};
pub use meetings::{MeetingRow, StoredMeeting};
pub use names::NamesCache;
pub use writer::{GROUP, StateWriter, Writer, WriterGone};

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
    #[error("database {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("stored message of {terminal} seq {seq} no longer decodes: {detail}")]
    Corrupt {
        terminal: String,
        seq: u64,
        detail: String,
    },
    #[error(
        "database {path} is in use by another `cuntong central`: an SQLite store has one; several central instances share a PostgreSQL store (--db postgres://…)"
    )]
    InUse { path: String },
    #[error("cannot start the store thread: {0}")]
    Thread(std::io::Error),
    #[error("the store thread crashed")]
    Crashed,
    #[error(
        "database {path} was written by a newer cuntong (store version {found}; this one knows up to {known}): upgrade cuntong"
    )]
    Newer {
        path: String,
        found: u32,
        known: u32,
    },
    #[error(
        "no store at {path} yet (`cuntong central` creates it there; --db PATH or CUNTONG_DB for another)"
    )]
    Missing { path: String },
}

/// Opens the store at `path` for reading only: the one way every read command (`sites`,
/// `telemetry`, `events`, `alarms`, `monitor`, `readiness`, the dashboard) opens it, while
/// central writes. Never creates anything; a missing file, or one central never set up, is
/// [`StoreError::Missing`] naming where it looked.
pub fn open_read_only(path: &Path) -> Result<Connection, StoreError> {
    let missing = || StoreError::Missing {
        path: path.display().to_string(),
    };
    if !path.is_file() {
        return Err(missing());
    }
    let open_err = |source| StoreError::Open {
        path: path.display().to_string(),
        source,
    };
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(open_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(open_err)?;
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'terminals'",
            [],
            |r| r.get(0),
        )
        .map_err(open_err)?;
    if tables == 0 {
        return Err(missing());
    }
    Ok(conn)
}

/// True if the store has table `name` (a store written by an older central, read-only here,
/// may not have the newer ones yet).
fn has_table(conn: &Connection, name: &str) -> Result<bool, StoreError> {
    let n: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
        params![name],
        |r| r.get(0),
    )?;
    Ok(n > 0)
}

/// The text range `[from, to)` of the ids (terminal ids, site codes, alarm subjects) in
/// `region`, everything if `None`: ids in a region start with its code and go on with a digit
/// or `-`, both below `:`. As a range, the filter uses the index on the column.
fn region_range(region: Option<&Region>) -> (String, String) {
    match region {
        Some(r) => {
            let prefix = r.prefix();
            let to = format!("{prefix}:");
            (prefix, to)
        }
        None => (String::new(), char::MAX.to_string()),
    }
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

/// The identity and payload of a sequence-numbered message.
struct Message<'a> {
    terminal: &'a TerminalId,
    stream: Stream,
    seq: u64,
    time_ms: u64,
    received_ms: u64,
    raw: &'a [u8],
}

impl Record {
    fn message(&self) -> Option<Message<'_>> {
        let (terminal, stream, seq, time_ms, received_ms, raw) = match self {
            Record::Telemetry {
                terminal,
                received_ms,
                envelope,
                raw,
            } => (
                terminal,
                Stream::Telemetry,
                envelope.seq,
                envelope.time_ms,
                received_ms,
                raw,
            ),
            Record::Event {
                terminal,
                received_ms,
                envelope,
                raw,
            } => (
                terminal,
                Stream::Events,
                envelope.seq,
                envelope.time_ms,
                received_ms,
                raw,
            ),
            _ => return None,
        };
        Some(Message {
            terminal,
            stream,
            seq,
            time_ms,
            received_ms: *received_ms,
            raw,
        })
    }
}

/// What one group of writes did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Messages stored for the first time.
    pub stored: u64,
    /// Messages already stored (redeliveries).
    pub duplicates: u64,
    /// Metric values in the newly stored telemetry.
    pub values: u64,
    /// Terminals that sent something new or resent something old, with their watermarks
    /// after the group: what central should confirm to them.
    pub watermarks: Vec<(TerminalId, Watermarks)>,
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
    /// The data flag the source gave (HJ 212: N, F, M, S, D, C, T, B…), if any.
    pub flag: Option<char>,
}

/// One stored event.
#[derive(Clone, Debug, PartialEq)]
pub struct EventRow {
    pub terminal: String,
    pub seq: u64,
    pub time_ms: u64,
    pub event: Event,
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
    /// Stored events of the terminals in `region` (all if `None`), oldest first.
    fn events(
        &self,
        region: Option<&Region>,
        since_ms: Option<u64>,
    ) -> Result<Vec<EventRow>, StoreError>;
}

/// The embedded SQLite store.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
    /// The file, locked, while this is central's store (SQLite's own locks are on other
    /// descriptors: this lock says only "a central writes here").
    _central: Option<std::fs::File>,
}

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
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        schema::migrate(&mut conn, &path.display().to_string())?;
        Ok(SqliteStore {
            conn,
            _central: None,
        })
    }

    /// Opens the store for the one `cuntong central` it may have: holds a lock on the file
    /// for as long as the store lives, and refuses a file another central holds.
    pub fn open_for_central(path: &Path) -> Result<SqliteStore, StoreError> {
        let store = SqliteStore::open(path)?;
        let file = std::fs::File::open(path).map_err(|e| StoreError::Io {
            path: path.display().to_string(),
            source: e,
        })?;
        match file.try_lock() {
            Ok(()) => Ok(SqliteStore {
                _central: Some(file),
                ..store
            }),
            Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::InUse {
                path: path.display().to_string(),
            }),
            Err(std::fs::TryLockError::Error(source)) => Err(StoreError::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Opens the store for reading only (see [`open_read_only`]).
    pub fn open_read_only(path: &Path) -> Result<SqliteStore, StoreError> {
        Ok(SqliteStore {
            conn: open_read_only(path)?,
            _central: None,
        })
    }
}

fn touch(seen: &mut HashMap<String, (TerminalId, u64)>, id: &TerminalId, ms: u64) {
    let e = seen.entry(id.to_string()).or_insert((*id, ms));
    e.1 = e.1.max(ms);
}

/// The stored watermark of (terminal, stream), advanced over stored records, reported drops and
/// the seqs below where the terminal's numbering starts (`numbering`: an earlier box's, or
/// never used; not lost) if `advance`; returns it and whether it moved.
fn advance_watermark(
    tx: &rusqlite::Transaction<'_>,
    terminal: &str,
    stream: Stream,
    advance: bool,
) -> Result<(u64, bool), StoreError> {
    let sid = stream_id(stream);
    let start: u64 = tx
        .prepare_cached("SELECT watermark FROM watermarks WHERE terminal = ?1 AND stream = ?2")?
        .query_row(params![terminal, sid], |r| r.get::<_, i64>(0))
        .optional()?
        .map_or(0, |v| v as u64);
    if !advance {
        return Ok((start, false));
    }
    let mut wm = start;
    let mut gaps = tx.prepare_cached(
        "SELECT max(last) FROM (
            SELECT last FROM dropped WHERE terminal = ?1 AND stream = ?2 AND first <= ?3 AND last >= ?3
            UNION ALL
            SELECT first - 1 FROM numbering WHERE terminal = ?1 AND stream = ?2 AND first - 1 >= ?3
         )",
    )?;
    let mut next = tx.prepare_cached(
        "SELECT seq FROM messages WHERE terminal = ?1 AND stream = ?2 AND seq > ?3 ORDER BY seq LIMIT 1024",
    )?;
    loop {
        let before = wm;
        let covered: Option<i64> =
            gaps.query_row(params![terminal, sid, (wm + 1) as i64], |r| r.get(0))?;
        if let Some(last) = covered {
            wm = wm.max(last as u64);
        }
        let seqs = next.query_map(params![terminal, sid, wm as i64], |r| r.get::<_, i64>(0))?;
        for seq in seqs {
            let seq = seq? as u64;
            if seq != wm + 1 {
                break;
            }
            wm = seq;
        }
        if wm == before {
            break;
        }
    }
    if wm != start {
        tx.prepare_cached(
            "INSERT INTO watermarks (terminal, stream, watermark) VALUES (?1, ?2, ?3)
             ON CONFLICT (terminal, stream) DO UPDATE SET watermark = excluded.watermark",
        )?
        .execute(params![terminal, sid, wm as i64])?;
    }
    Ok((wm, wm != start))
}

impl Store for SqliteStore {
    fn apply(&mut self, records: &[Record]) -> Result<Applied, StoreError> {
        let tx = self.conn.transaction()?;
        let mut applied = Applied::default();
        let mut seen: HashMap<String, (TerminalId, u64)> = HashMap::new();
        let mut latest: HashMap<(String, String), (u64, f64)> = HashMap::new();
        // Terminals whose watermarks must be (re)published, and the streams that may advance.
        let mut touched: HashMap<String, (TerminalId, [bool; 2])> = HashMap::new();
        let mut touch_stream = |t: &TerminalId, s: Option<Stream>| {
            let e = touched.entry(t.to_string()).or_insert((*t, [false; 2]));
            if let Some(s) = s {
                e.1[stream_id(s) as usize] = true;
            }
        };
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
            let mut dropped_stmt = tx.prepare_cached(
                "INSERT INTO dropped (terminal, stream, first, last) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (terminal, stream, first) DO UPDATE SET last = max(last, excluded.last)",
            )?;
            let mut numbering_stmt = tx.prepare_cached(
                "INSERT INTO numbering (terminal, stream, first) VALUES (?1, ?2, ?3)
                 ON CONFLICT (terminal, stream) DO UPDATE SET first = max(first, excluded.first)",
            )?;
            let mut rejected = tx.prepare_cached(
                "INSERT INTO rejected (topic, received_ms, reason, payload) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for r in records {
                // A sequence-numbered message is stored once; a redelivery only counts.
                if let Some(m) = r.message() {
                    let n = insert.execute(params![
                        m.terminal.to_string(),
                        stream_id(m.stream),
                        m.seq as i64,
                        m.time_ms as i64,
                        m.received_ms as i64,
                        m.raw
                    ])?;
                    touch(&mut seen, m.terminal, m.received_ms);
                    if n == 0 {
                        applied.duplicates += 1;
                        // It resent: it may not have our watermark. Send it again.
                        touch_stream(m.terminal, None);
                        continue;
                    }
                    applied.stored += 1;
                    touch_stream(m.terminal, Some(m.stream));
                }
                match r {
                    Record::Telemetry {
                        terminal, envelope, ..
                    } => {
                        let id = terminal.to_string();
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
                        terminal, envelope, ..
                    } => match envelope.body {
                        Event::Dropped {
                            stream,
                            first,
                            last,
                        } if first <= last => {
                            dropped_stmt.execute(params![
                                terminal.to_string(),
                                stream_id(stream),
                                first as i64,
                                last as i64
                            ])?;
                            touch_stream(terminal, Some(stream));
                        }
                        // Applied before the watermarks below advance, so the events stream
                        // passes the gap the announcement itself follows.
                        Event::NumberingFrom { stream, first } => {
                            if let Ok(first) = i64::try_from(first) {
                                numbering_stmt.execute(params![
                                    terminal.to_string(),
                                    stream_id(stream),
                                    first
                                ])?;
                                touch_stream(terminal, Some(stream));
                            }
                        }
                        _ => {}
                    },
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
            for (id, (terminal, streams)) in &touched {
                let mut marks = Watermarks::default();
                for stream in Stream::ALL {
                    let advance = streams[stream_id(stream) as usize];
                    let (wm, _) = advance_watermark(&tx, id, stream, advance)?;
                    marks.set(stream, wm);
                }
                applied.watermarks.push((*terminal, marks));
            }
        }
        tx.commit()?;
        Ok(applied)
    }

    fn sites(&self, region: Option<&Region>) -> Result<Vec<SiteRow>, StoreError> {
        let (from, to) = region_range(region);
        // One query: each terminal's row, followed by its metrics (none: one row of NULLs).
        let mut stmt = self.conn.prepare_cached(
            "SELECT t.terminal, t.site, t.level, t.online, t.version, t.last_seen_ms,
                    l.metric, l.value
             FROM terminals t LEFT JOIN latest l ON l.terminal = t.terminal
             WHERE t.site >= ?1 AND t.site < ?2 ORDER BY t.terminal, l.metric",
        )?;
        let mut rows: Vec<SiteRow> = Vec::new();
        let mut q = stmt.query(params![from, to])?;
        while let Some(r) = q.next()? {
            let terminal: String = r.get(0)?;
            if rows.last().is_none_or(|s| s.terminal != terminal) {
                rows.push(SiteRow {
                    terminal,
                    site: r.get(1)?,
                    level: r.get(2)?,
                    online: r.get(3)?,
                    version: r.get(4)?,
                    last_seen_ms: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
                    metrics: Vec::new(),
                });
            }
            if let (Some(metric), Some(value), Some(site)) = (
                r.get::<_, Option<String>>(6)?,
                r.get::<_, Option<f64>>(7)?,
                rows.last_mut(),
            ) {
                site.metrics.push((metric, value));
            }
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
                    flag: s.quality.map(|q| char::from(q.flag())),
                });
            }
        }
        out.sort_by_key(|r| (r.ts_ms, r.seq));
        Ok(out)
    }

    fn events(
        &self,
        region: Option<&Region>,
        since_ms: Option<u64>,
    ) -> Result<Vec<EventRow>, StoreError> {
        // A terminal id starts with its site code, so a region is a range of ids.
        let (from, to) = region_range(region);
        let mut stmt = self.conn.prepare_cached(
            "SELECT terminal, seq, payload FROM messages WHERE stream = ?1
             AND terminal >= ?2 AND terminal < ?3 AND time_ms >= ?4
             ORDER BY time_ms, terminal, seq",
        )?;
        let rows = stmt.query_map(
            params![
                stream_id(Stream::Events),
                from,
                to,
                since_ms.unwrap_or(0) as i64
            ],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            },
        )?;
        let mut out = Vec::new();
        for row in rows {
            let (terminal, seq, payload) = row?;
            let env = decode_event(&payload).map_err(|e| StoreError::Corrupt {
                terminal: terminal.clone(),
                seq: seq as u64,
                detail: e.to_string(),
            })?;
            out.push(EventRow {
                terminal,
                seq: env.seq,
                time_ms: env.time_ms,
                event: env.body,
            });
        }
        Ok(out)
    }
}

/// What a backup holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupSummary {
    pub messages: u64,
    pub terminals: u64,
    pub version: u32,
}

impl SqliteStore {
    /// Copies the store to `to` while others write to it (SQLite's online backup, a page
    /// step at a time), checks the copy (`PRAGMA integrity_check`) under a temporary name next
    /// to `to`, and only then gives it its name (never one a file has).
    pub fn backup_to(&self, to: &Path) -> Result<BackupSummary, StoreError> {
        let at = |source| StoreError::Open {
            path: to.display().to_string(),
            source,
        };
        let mut part = to.as_os_str().to_owned();
        part.push(".part");
        let part = std::path::PathBuf::from(part);
        let _ = std::fs::remove_file(&part);
        let result = (|| {
            let mut copy = Connection::open(&part).map_err(at)?;
            {
                let backup = rusqlite::backup::Backup::new(&self.conn, &mut copy).map_err(at)?;
                backup
                    .run_to_completion(256, std::time::Duration::from_millis(5), None)
                    .map_err(at)?;
            }
            let check: String = copy
                .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                .map_err(at)?;
            if check != "ok" {
                return Err(StoreError::Corrupt {
                    terminal: to.display().to_string(),
                    seq: 0,
                    detail: format!("the copy fails its integrity check: {check}"),
                });
            }
            let count = |sql: &str| -> Result<u64, StoreError> {
                Ok(copy
                    .query_row(sql, [], |r| r.get::<_, i64>(0))
                    .map_err(at)?
                    .max(0) as u64)
            };
            Ok(BackupSummary {
                messages: count("SELECT count(*) FROM messages")?,
                terminals: count("SELECT count(*) FROM terminals")?,
                version: schema::version(&copy)?,
            })
        })();
        match result {
            Ok(summary) => {
                // A link, not a rename: a file that appeared at `to` meanwhile is kept.
                let linked = std::fs::hard_link(&part, to);
                let _ = std::fs::remove_file(&part);
                linked.map_err(|source| StoreError::Io {
                    path: to.display().to_string(),
                    source,
                })?;
                Ok(summary)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&part);
                Err(e)
            }
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use cuntong_core::envelope::encode;
    use cuntong_core::telemetry::Sample;

    /// 2025-11-22T08:00:00Z.
    const T0: u64 = 1_763_798_400_000;

    fn id(s: &str) -> TerminalId {
        s.parse().unwrap()
    }

    fn sample(offset_ms: u32, metric: Metric, value: &str) -> Sample {
        Sample {
            offset_ms,
            metric,
            value: value.parse().unwrap(),
            quality: None,
        }
    }

    fn telemetry(
        terminal: &str,
        seq: u64,
        time_ms: u64,
        received_ms: u64,
        samples: Vec<Sample>,
    ) -> Record {
        let envelope = Envelope {
            seq,
            time_ms,
            body: TelemetryBatch { samples },
        };
        let raw = Bytes::from(encode(&envelope).unwrap());
        Record::Telemetry {
            terminal: id(terminal),
            received_ms,
            envelope,
            raw,
        }
    }

    /// A batch with one `env.temp` sample at the envelope's time.
    fn temp(terminal: &str, seq: u64, time_ms: u64, value: &str) -> Record {
        telemetry(
            terminal,
            seq,
            time_ms,
            time_ms,
            vec![sample(0, Metric::AirTemp, value)],
        )
    }

    fn event(terminal: &str, seq: u64, time_ms: u64) -> Record {
        let started = Event::Started {
            version: "0.1.0".into(),
        };
        event_of(terminal, seq, time_ms, started)
    }

    fn event_of(terminal: &str, seq: u64, time_ms: u64, body: Event) -> Record {
        let envelope = Envelope { seq, time_ms, body };
        let raw = Bytes::from(encode(&envelope).unwrap());
        Record::Event {
            terminal: id(terminal),
            received_ms: time_ms,
            envelope,
            raw,
        }
    }

    fn presence(terminal: &str, online: bool, received_ms: u64) -> Record {
        Record::Presence {
            terminal: id(terminal),
            received_ms,
            presence: Presence {
                online,
                version: "0.1.0".into(),
                started_ms: T0,
                keep_alive_s: 30,
            },
        }
    }

    fn rejected(received_ms: u64) -> Record {
        Record::Rejected {
            topic: "ct/v1/t/13/01/02/001/001/main/tm".into(),
            received_ms,
            reason: "130102001001-main tm: payload version 9, this build reads version 1".into(),
            payload: Bytes::from_static(&[9, 0xde, 0xad]),
        }
    }

    fn open() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("central.db")).unwrap();
        (dir, store)
    }

    fn site<'a>(rows: &'a [SiteRow], terminal: &str) -> &'a SiteRow {
        rows.iter()
            .find(|r| r.terminal == terminal)
            .unwrap_or_else(|| panic!("{terminal} not in {rows:#?}"))
    }

    fn metric(row: &SiteRow, name: &str) -> Option<f64> {
        row.metrics.iter().find(|(m, _)| m == name).map(|(_, v)| *v)
    }

    /// (seq, ts_ms, metric, exact) of each stored sample.
    fn history(
        store: &SqliteStore,
        terminal: &str,
        metric: Option<&Metric>,
        since_ms: Option<u64>,
    ) -> Vec<(u64, u64, String, String)> {
        store
            .telemetry(&id(terminal), metric, since_ms)
            .unwrap()
            .into_iter()
            .map(|r| (r.seq, r.ts_ms, r.metric, r.exact))
            .collect()
    }

    impl SqliteStore {
        /// Every row of the `rejected` table, in insertion order.
        fn rejected_rows(&self) -> Vec<(String, u64, String, Vec<u8>)> {
            let mut stmt = self
                .conn
                .prepare("SELECT topic, received_ms, reason, payload FROM rejected ORDER BY rowid")
                .unwrap();
            stmt.query_map([], |r| {
                Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?, r.get(3)?))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
        }
    }

    const A: &str = "130102001001-main";

    /// (stored, duplicates, values) of a group.
    fn counts(a: &Applied) -> (u64, u64, u64) {
        (a.stored, a.duplicates, a.values)
    }

    /// The watermarks a group published for `terminal`.
    fn marks(applied: &Applied, terminal: &str) -> Option<Watermarks> {
        applied
            .watermarks
            .iter()
            .find(|(t, _)| t.to_string() == terminal)
            .map(|(_, m)| *m)
    }

    #[test]
    fn a_replacement_box_numbering_from_its_start_is_stored_and_confirmed_without_a_loss() {
        let (_dir, mut store) = open();
        // The old box: telemetry 1..=3 and one event, all confirmed.
        let old: Vec<Record> = (1..=3)
            .map(|q| temp(A, q, T0 + q, "20.00"))
            .chain([event(A, 1, T0)])
            .collect();
        let applied = store.apply(&old).unwrap();
        let confirmed = Watermarks {
            telemetry: 3,
            events: 1,
        };
        assert_eq!(marks(&applied, A), Some(confirmed));
        // The replacement numbers from its clock; its telemetry may come before its
        // announcement: stored, but the watermark waits.
        let b = T0 + 86_400_000;
        let applied = store
            .apply(&[temp(A, b, b, "21.00"), temp(A, b + 1, b + 1, "21.50")])
            .unwrap();
        assert_eq!(counts(&applied), (2, 0, 2));
        assert_eq!(marks(&applied, A), Some(confirmed));
        // Its first events say where each stream starts: the events stream passes the gap
        // the announcement itself follows, in the same group.
        let from = |stream| Event::NumberingFrom { stream, first: b };
        let applied = store
            .apply(&[
                event_of(A, b, b, from(Stream::Events)),
                event_of(A, b + 1, b, from(Stream::Telemetry)),
            ])
            .unwrap();
        assert_eq!(
            marks(&applied, A),
            Some(Watermarks {
                telemetry: b + 1,
                events: b + 1,
            })
        );
        assert_eq!(
            store.count(A, Stream::Telemetry).unwrap(),
            5,
            "nothing lost"
        );
        let seqs: Vec<u64> = history(&store, A, None, None).iter().map(|s| s.0).collect();
        assert_eq!(seqs, [1, 2, 3, b, b + 1]);
        // The seqs below the start are no reported loss.
        let drops: i64 = store
            .conn
            .query_row("SELECT count(*) FROM dropped", [], |r| r.get(0))
            .unwrap();
        assert_eq!(drops, 0);
        // And a second replacement later passes the first one's numbers too.
        let c = b + 86_400_000;
        let applied = store
            .apply(&[
                event_of(
                    A,
                    c,
                    c,
                    Event::NumberingFrom {
                        stream: Stream::Events,
                        first: c,
                    },
                ),
                event_of(
                    A,
                    c + 1,
                    c,
                    Event::NumberingFrom {
                        stream: Stream::Telemetry,
                        first: c,
                    },
                ),
                temp(A, c, c, "22.00"),
            ])
            .unwrap();
        assert_eq!(
            marks(&applied, A),
            Some(Watermarks {
                telemetry: c,
                events: c + 1,
            })
        );
    }

    #[test]
    fn the_same_message_twice_in_one_group_is_stored_once() {
        let (_dir, mut store) = open();
        let first = telemetry(
            A,
            1,
            T0,
            T0,
            vec![
                sample(0, Metric::AirTemp, "23.45"),
                sample(0, Metric::Humidity, "55.00"),
            ],
        );
        let applied = store
            .apply(&[first.clone(), first, temp(A, 2, T0 + 60_000, "23.50")])
            .unwrap();
        assert_eq!(counts(&applied), (2, 1, 3));
        assert_eq!(store.count(A, Stream::Telemetry).unwrap(), 2);
        let seqs: Vec<u64> = history(&store, A, None, None).iter().map(|s| s.0).collect();
        assert_eq!(seqs, [1, 1, 2]);
    }

    #[test]
    fn the_same_message_in_two_groups_is_stored_once_and_counted_as_a_duplicate() {
        let (_dir, mut store) = open();
        let batch = telemetry(
            A,
            1,
            T0,
            T0,
            vec![
                sample(0, Metric::AirTemp, "23.45"),
                sample(500, Metric::Humidity, "55.00"),
            ],
        );
        let first = store.apply(std::slice::from_ref(&batch)).unwrap();
        assert_eq!(counts(&first), (1, 0, 2));
        // The broker redelivers it later.
        let again = store.apply(&[batch]).unwrap();
        assert_eq!(counts(&again), (0, 1, 0));
        assert_eq!(store.count(A, Stream::Telemetry).unwrap(), 1);
        assert_eq!(history(&store, A, None, None).len(), 2);

        let ev = event(A, 1, T0);
        assert_eq!(store.apply(std::slice::from_ref(&ev)).unwrap().stored, 1);
        assert_eq!(counts(&store.apply(&[ev]).unwrap()), (0, 1, 0));
        assert_eq!(store.count(A, Stream::Events).unwrap(), 1);
    }

    #[test]
    fn telemetry_and_events_with_the_same_seq_are_different_streams() {
        let (_dir, mut store) = open();
        let records = [temp(A, 1, T0, "23.45"), event(A, 1, T0)];
        assert_eq!(counts(&store.apply(&records).unwrap()), (2, 0, 1));
        assert_eq!(store.count(A, Stream::Telemetry).unwrap(), 1);
        assert_eq!(store.count(A, Stream::Events).unwrap(), 1);
        // Each is still de-duplicated within its own stream.
        assert_eq!(counts(&store.apply(&records).unwrap()), (0, 2, 0));
        // And the same seq on another terminal is another message.
        let other = "130102001002-main";
        assert_eq!(
            store.apply(&[temp(other, 1, T0, "20.00")]).unwrap().stored,
            1
        );
        assert_eq!(store.count(other, Stream::Telemetry).unwrap(), 1);
        assert_eq!(store.count(A, Stream::Telemetry).unwrap(), 1);
    }

    #[test]
    fn latest_keeps_the_newest_value_when_an_older_batch_arrives_after_a_newer_one() {
        let (_dir, mut store) = open();
        store.apply(&[temp(A, 2, T0 + 60_000, "25.00")]).unwrap();
        // Backfill from the terminal's outbox: older, and it also carries humidity.
        store
            .apply(&[telemetry(
                A,
                1,
                T0,
                T0 + 61_000,
                vec![
                    sample(0, Metric::AirTemp, "20.00"),
                    sample(0, Metric::Humidity, "55.00"),
                ],
            )])
            .unwrap();
        let rows = store.sites(None).unwrap();
        assert_eq!(metric(site(&rows, A), "env.temp"), Some(25.0));
        assert_eq!(metric(site(&rows, A), "env.humidity"), Some(55.0));

        // A sample's own time (envelope time + offset) decides, not the envelope time.
        store
            .apply(&[telemetry(
                A,
                3,
                T0 + 30_000,
                T0 + 62_000,
                vec![sample(40_000, Metric::AirTemp, "26.00")],
            )])
            .unwrap();
        let rows = store.sites(None).unwrap();
        assert_eq!(metric(site(&rows, A), "env.temp"), Some(26.0));
    }

    #[test]
    fn latest_keeps_the_newest_value_when_both_batches_arrive_in_one_group_newest_first() {
        let (_dir, mut store) = open();
        store
            .apply(&[temp(A, 2, T0 + 60_000, "25.00"), temp(A, 1, T0, "20.00")])
            .unwrap();
        let rows = store.sites(None).unwrap();
        assert_eq!(metric(site(&rows, A), "env.temp"), Some(25.0));
    }

    #[test]
    fn presence_sets_online_and_an_offline_will_does_not_move_last_seen() {
        let (_dir, mut store) = open();
        let row = |store: &SqliteStore| site(&store.sites(None).unwrap(), A).clone();

        store.apply(&[presence(A, true, T0 + 1_000)]).unwrap();
        let r = row(&store);
        assert!(r.online);
        assert_eq!(r.version.as_deref(), Some("0.1.0"));
        assert_eq!(r.last_seen_ms, Some(T0 + 1_000));
        assert_eq!(r.level, "village");
        assert_eq!(r.site, "130102001001");

        store
            .apply(&[telemetry(
                A,
                1,
                T0,
                T0 + 5_000,
                vec![sample(0, Metric::AirTemp, "23.45")],
            )])
            .unwrap();
        assert_eq!(row(&store).last_seen_ms, Some(T0 + 5_000));

        // The broker publishes the last will later; it says nothing about when we last heard.
        store.apply(&[presence(A, false, T0 + 9_000)]).unwrap();
        let r = row(&store);
        assert!(!r.online);
        assert_eq!(r.last_seen_ms, Some(T0 + 5_000));

        store.apply(&[presence(A, true, T0 + 10_000)]).unwrap();
        let r = row(&store);
        assert!(r.online);
        assert_eq!(r.last_seen_ms, Some(T0 + 10_000));
    }

    #[test]
    fn a_terminal_first_heard_of_through_its_will_is_offline_and_never_seen() {
        let (_dir, mut store) = open();
        store.apply(&[presence(A, false, T0)]).unwrap();
        let rows = store.sites(None).unwrap();
        let r = site(&rows, A);
        assert!(!r.online);
        assert_eq!(r.last_seen_ms, None);
    }

    #[test]
    fn last_seen_is_the_latest_received_time_whatever_the_arrival_order() {
        let (_dir, mut store) = open();
        let at = |seq: u64, received: u64| {
            telemetry(
                A,
                seq,
                T0,
                received,
                vec![sample(0, Metric::AirTemp, "23.45")],
            )
        };
        // Within one group.
        store
            .apply(&[
                at(1, T0 + 7_000),
                at(2, T0 + 6_000),
                event(A, 1, T0 + 2_000),
            ])
            .unwrap();
        assert_eq!(
            site(&store.sites(None).unwrap(), A).last_seen_ms,
            Some(T0 + 7_000)
        );
        // Across groups: an earlier reception applied later does not go back in time.
        store.apply(&[at(3, T0 + 3_000)]).unwrap();
        assert_eq!(
            site(&store.sites(None).unwrap(), A).last_seen_ms,
            Some(T0 + 7_000)
        );
        // A redelivery is still news that the terminal is there.
        store.apply(&[at(1, T0 + 8_000)]).unwrap();
        assert_eq!(
            site(&store.sites(None).unwrap(), A).last_seen_ms,
            Some(T0 + 8_000)
        );
    }

    #[test]
    fn sites_filters_by_region_prefix_and_orders_by_terminal() {
        let (_dir, mut store) = open();
        let terminals = [
            "140105001001-main",
            "130201001001-main",
            "130103002001-main",
            "130102001002-main",
            "130102001001-main",
            "130102001001-aux",
        ];
        let records: Vec<Record> = terminals.iter().map(|t| presence(t, true, T0)).collect();
        store.apply(&records).unwrap();

        let select = |region: Option<&str>| -> Vec<String> {
            let region: Option<Region> = region.map(|r| r.parse().unwrap());
            store
                .sites(region.as_ref())
                .unwrap()
                .into_iter()
                .map(|r| r.terminal)
                .collect()
        };
        assert_eq!(
            select(None),
            [
                "130102001001-aux",
                "130102001001-main",
                "130102001002-main",
                "130103002001-main",
                "130201001001-main",
                "140105001001-main",
            ]
        );
        assert_eq!(
            select(Some("13")),
            [
                "130102001001-aux",
                "130102001001-main",
                "130102001002-main",
                "130103002001-main",
                "130201001001-main",
            ]
        );
        assert_eq!(select(Some("14")), ["140105001001-main"]);
        assert_eq!(
            select(Some("1301")),
            [
                "130102001001-aux",
                "130102001001-main",
                "130102001002-main",
                "130103002001-main",
            ]
        );
        assert_eq!(
            select(Some("130102")),
            ["130102001001-aux", "130102001001-main", "130102001002-main",]
        );
        assert_eq!(select(Some("130103")), ["130103002001-main"]);
        assert_eq!(
            select(Some("130102001001")),
            ["130102001001-aux", "130102001001-main"]
        );
        assert_eq!(select(Some("130102001002")), ["130102001002-main"]);
        assert!(select(Some("15")).is_empty());
        assert!(select(Some("130104")).is_empty());
    }

    #[test]
    fn telemetry_returns_samples_oldest_first_with_their_own_timestamps_and_exact_text() {
        let (_dir, mut store) = open();
        // The newer batch arrives first.
        store
            .apply(&[
                telemetry(
                    A,
                    2,
                    T0 + 60_000,
                    T0 + 61_000,
                    vec![
                        sample(0, Metric::AirTemp, "24.10"),
                        sample(500, Metric::Humidity, "60.5"),
                    ],
                ),
                event(A, 3, T0 + 1_000),
                temp("130102001002-main", 1, T0 + 10, "99.99"),
            ])
            .unwrap();
        store
            .apply(&[telemetry(
                A,
                1,
                T0,
                T0 + 62_000,
                vec![
                    sample(0, Metric::AirTemp, "23.45"),
                    sample(100, Metric::Humidity, "58.00"),
                    sample(30_000, Metric::AirTemp, "23.40"),
                ],
            )])
            .unwrap();

        let row =
            |seq: u64, ts: u64, m: &str, exact: &str| (seq, ts, m.to_owned(), exact.to_owned());
        assert_eq!(
            history(&store, A, None, None),
            [
                row(1, T0, "env.temp", "23.45"),
                row(1, T0 + 100, "env.humidity", "58.00"),
                row(1, T0 + 30_000, "env.temp", "23.40"),
                row(2, T0 + 60_000, "env.temp", "24.10"),
                row(2, T0 + 60_500, "env.humidity", "60.5"),
            ]
        );
        let all = store.telemetry(&id(A), None, None).unwrap();
        assert_eq!(all[0].value, 23.45);
        assert_eq!(all[2].value, 23.4);

        assert_eq!(
            history(&store, A, Some(&Metric::AirTemp), None),
            [
                row(1, T0, "env.temp", "23.45"),
                row(1, T0 + 30_000, "env.temp", "23.40"),
                row(2, T0 + 60_000, "env.temp", "24.10"),
            ]
        );
        // `since` is inclusive and applies to each sample's own time, not its batch's.
        assert_eq!(
            history(&store, A, None, Some(T0 + 30_000)),
            [
                row(1, T0 + 30_000, "env.temp", "23.40"),
                row(2, T0 + 60_000, "env.temp", "24.10"),
                row(2, T0 + 60_500, "env.humidity", "60.5"),
            ]
        );
        assert_eq!(
            history(&store, A, Some(&Metric::Humidity), Some(T0 + 101)),
            [row(2, T0 + 60_500, "env.humidity", "60.5")]
        );
        assert!(history(&store, A, None, Some(T0 + 60_501)).is_empty());
        assert!(history(&store, A, Some(&Metric::Pm25), None).is_empty());
        assert!(history(&store, "130102001003-main", None, None).is_empty());
    }

    #[test]
    fn a_rejected_record_is_kept_for_inspection() {
        let (_dir, mut store) = open();
        let applied = store.apply(&[rejected(T0 + 42)]).unwrap();
        assert_eq!(counts(&applied), (0, 0, 0));
        assert_eq!(
            store.rejected_rows(),
            [(
                "ct/v1/t/13/01/02/001/001/main/tm".to_owned(),
                T0 + 42,
                "130102001001-main tm: payload version 9, this build reads version 1".to_owned(),
                vec![9, 0xde, 0xad],
            )]
        );
        // Rejected payloads are not de-duplicated: each arrival is evidence.
        store.apply(&[rejected(T0 + 43)]).unwrap();
        assert_eq!(store.rejected_rows().len(), 2);
        // And they do not make up a terminal.
        assert!(store.sites(None).unwrap().is_empty());
    }

    #[test]
    fn reopening_the_same_file_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("central.db");
        let (sites_before, history_before) = {
            let mut store = SqliteStore::open(&path).unwrap();
            store
                .apply(&[
                    presence(A, true, T0),
                    temp(A, 2, T0 + 60_000, "25.00"),
                    telemetry(
                        A,
                        1,
                        T0,
                        T0 + 1_000,
                        vec![
                            sample(0, Metric::AirTemp, "23.45"),
                            sample(100, Metric::Humidity, "58.00"),
                        ],
                    ),
                    event(A, 1, T0),
                    rejected(T0 + 42),
                ])
                .unwrap();
            (
                store.sites(None).unwrap(),
                store.telemetry(&id(A), None, None).unwrap(),
            )
        };
        assert_eq!(history_before.len(), 3);

        let mut store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.sites(None).unwrap(), sites_before);
        assert_eq!(store.telemetry(&id(A), None, None).unwrap(), history_before);
        assert_eq!(store.count(A, Stream::Telemetry).unwrap(), 2);
        assert_eq!(store.count(A, Stream::Events).unwrap(), 1);
        assert_eq!(store.rejected_rows().len(), 1);
        let r = site(&sites_before, A);
        assert!(r.online);
        assert_eq!(metric(r, "env.temp"), Some(25.0));

        // De-duplication and `latest` still hold after the restart.
        assert_eq!(
            counts(
                &store
                    .apply(&[temp(A, 1, T0, "23.45"), event(A, 1, T0)])
                    .unwrap()
            ),
            (0, 2, 0)
        );
        store.apply(&[temp(A, 0, T0 - 60_000, "10.00")]).unwrap();
        assert_eq!(
            metric(site(&store.sites(None).unwrap(), A), "env.temp"),
            Some(25.0)
        );
    }

    #[test]
    fn reading_a_missing_store_names_where_it_looked_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.db");
        let err = SqliteStore::open_read_only(&path).unwrap_err();
        assert!(matches!(err, StoreError::Missing { .. }), "{err:?}");
        assert!(
            err.to_string().contains("no store at") && err.to_string().contains("missing.db"),
            "error should say there is no store and name the file: {err}"
        );
        assert!(!path.exists());
        // A file central never set up (here: empty) is no store either, and stays untouched.
        std::fs::write(&path, b"").unwrap();
        let err = SqliteStore::open_read_only(&path).unwrap_err();
        assert!(matches!(err, StoreError::Missing { .. }), "{err:?}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        // A directory is not a store.
        let err = open_read_only(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Missing { .. }), "{err:?}");
    }
}
