//! The embedded SQLite store: one file in WAL mode, opened for central (locked: one central
//! a file), for other writers (`regions import`, `readiness`) or read-only (the read
//! commands); the history part of [`Store`] and the online backup. The names, meetings,
//! alarms and instances parts are in their own modules beside this one.

use std::collections::HashMap;
use std::path::Path;

use cuntong_core::delivery::Watermarks;
use cuntong_core::envelope::{Event, Stream};
use cuntong_core::site::{Region, SiteCode};
use cuntong_core::telemetry::Metric;
use cuntong_core::terminal_id::TerminalId;
use rusqlite::{Connection, OptionalExtension, params};

use super::*;
use crate::names::Names;

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
pub(crate) fn has_table(conn: &Connection, name: &str) -> Result<bool, StoreError> {
    let n: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
        params![name],
        |r| r.get(0),
    )?;
    Ok(n > 0)
}

/// The embedded SQLite store.
#[derive(Debug)]
pub struct SqliteStore {
    pub(super) conn: Connection,
    /// The file, locked, while this is central's store (SQLite's own locks are on other
    /// descriptors: this lock says only "a central writes here").
    _central: Option<std::fs::File>,
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
        if !path.exists() {
            create(path)?;
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

/// Creates a new store at `path` whole: the schema is written in a file of its own beside it
/// (unique to this call: threads and processes may create one store at once), which is then
/// linked into place. A reader never finds a store file without its tables, and of several
/// creators one store stands (the others' files are dropped).
fn create(path: &Path) -> Result<(), StoreError> {
    let io_err = |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut prefix = path.file_name().unwrap_or_default().to_os_string();
    prefix.push(".new-");
    let staged = tempfile::Builder::new()
        .prefix(&prefix)
        .tempfile_in(dir)
        .map_err(io_err)?
        .into_temp_path();
    let mut conn = Connection::open(&staged).map_err(|source| StoreError::Open {
        path: staged.display().to_string(),
        source,
    })?;
    schema::migrate(&mut conn, &staged.display().to_string())?;
    // The last connection closing folds the write-ahead log into the file.
    conn.close().map_err(|(_, e)| StoreError::Sql(e))?;
    match std::fs::hard_link(&staged, path) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(io_err(e)),
        _ => Ok(()),
    }
}

fn touch(seen: &mut HashMap<String, (TerminalId, u64)>, id: &TerminalId, ms: u64) {
    let e = seen.entry(id.to_string()).or_insert((*id, ms));
    e.1 = e.1.max(ms);
}

/// Records `first..=last` of (terminal, stream) as dropped (reported by the terminal, or
/// declared lost by central); nothing for an empty range.
fn drop_range(
    stmt: &mut rusqlite::CachedStatement<'_>,
    terminal: &TerminalId,
    stream: Stream,
    first: u64,
    last: u64,
) -> Result<(), StoreError> {
    if first > last {
        return Ok(());
    }
    stmt.execute(params![
        terminal.to_string(),
        stream_id(stream),
        first as i64,
        last as i64
    ])?;
    Ok(())
}

/// The highest seq of (terminal, stream) the store holds: stored, reported dropped, or passed
/// by the watermark.
fn highest_held(
    tx: &rusqlite::Transaction<'_>,
    terminal: &str,
    stream: Stream,
) -> Result<u64, StoreError> {
    let highest: Option<i64> = tx
        .prepare_cached(
            "SELECT max(h) FROM (
                SELECT max(seq) AS h FROM messages WHERE terminal = ?1 AND stream = ?2
                UNION ALL SELECT max(last) FROM dropped WHERE terminal = ?1 AND stream = ?2
                UNION ALL SELECT watermark FROM watermarks WHERE terminal = ?1 AND stream = ?2
             )",
        )?
        .query_row(params![terminal, stream_id(stream)], |r| r.get(0))?;
    Ok(highest.map_or(0, |h| h as u64))
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
    fn add_release(&mut self, release: &ReleaseRow, artifact: &[u8]) -> Result<bool, StoreError> {
        SqliteStore::add_release(self, release, artifact)
    }
    fn releases(&self) -> Result<Vec<ReleaseRow>, StoreError> {
        SqliteStore::releases(self)
    }
    fn release_artifact(
        &self,
        sha256: &str,
        out: &mut dyn std::io::Write,
    ) -> Result<bool, StoreError> {
        SqliteStore::release_artifact(self, sha256, out)
    }
    fn save_rollouts(
        &mut self,
        rollouts: &[RolloutRow],
        sites: &[RolloutSiteRow],
        fence: Option<&Fence>,
    ) -> Result<(), StoreError> {
        SqliteStore::save_rollouts(self, rollouts, sites, fence)
    }
    fn rollouts(&self) -> Result<Vec<RolloutRow>, StoreError> {
        SqliteStore::rollouts(self)
    }
    fn rollout_counts(&self) -> Result<Vec<(u64, cuntong_core::update::Stage, usize)>, StoreError> {
        SqliteStore::rollout_counts(self)
    }
    fn rollout_sites(
        &self,
        id: u64,
    ) -> Result<std::collections::BTreeMap<TerminalId, cuntong_core::rollout::Site>, StoreError>
    {
        SqliteStore::rollout_sites(self, id)
    }
    fn drop_before(&mut self, cut_ms: u64) -> Result<u64, StoreError> {
        const DAY_MS: u64 = 86_400_000;
        let day = i64::try_from(cut_ms - cut_ms % DAY_MS).unwrap_or(i64::MAX);
        let n = self
            .conn
            .execute("DELETE FROM messages WHERE time_ms < ?1", [day])?;
        Ok(n as u64)
    }
    fn take_lease(
        &mut self,
        role: &str,
        holder: &str,
        ttl_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        SqliteStore::take_lease(self, role, holder, ttl_ms)
    }
    fn instance_seen(&mut self, instance: &str, started_ms: u64) -> Result<(), StoreError> {
        SqliteStore::instance_seen(self, instance, started_ms)
    }
    fn instances(&self) -> Result<(Vec<InstanceRow>, u64), StoreError> {
        SqliteStore::instances(self)
    }
    fn terminal_ids(&self) -> Result<Vec<TerminalId>, StoreError> {
        SqliteStore::terminal_ids(self)
    }
    fn known_terminals(&self) -> Result<Vec<KnownTerminal>, StoreError> {
        SqliteStore::known_terminals(self)
    }
    fn import_names(&mut self, rows: &[(SiteCode, String)]) -> Result<u64, StoreError> {
        SqliteStore::import_names(self, rows)
    }
    fn set_terminal_name(&mut self, terminal: &TerminalId, name: &str) -> Result<(), StoreError> {
        SqliteStore::set_terminal_name(self, terminal, name)
    }
    fn names_version(&self) -> Result<i64, StoreError> {
        SqliteStore::names_version(self)
    }
    fn names(&self, region: Option<&Region>) -> Result<Names, StoreError> {
        SqliteStore::names(self, region)
    }
    fn unended_meetings(&self) -> Result<Vec<StoredMeeting>, StoreError> {
        SqliteStore::unended_meetings(self)
    }
    fn meeting_ids(&self) -> Result<Vec<String>, StoreError> {
        SqliteStore::meeting_ids(self)
    }
    fn live_meetings(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        SqliteStore::live_meetings(self)
    }
    fn meeting(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        SqliteStore::meeting(self, id)
    }
    fn save_meetings(
        &mut self,
        rows: &[MeetingRow],
        fence: Option<&Fence>,
    ) -> Result<(), StoreError> {
        SqliteStore::save_meetings(self, rows, fence)
    }
    fn retire_meeting(&mut self, id: &str) -> Result<(), StoreError> {
        SqliteStore::retire_meeting(self, id)
    }
    fn save_readiness(
        &mut self,
        rows: &[(String, Option<bool>, String)],
        at_ms: u64,
    ) -> Result<(), StoreError> {
        SqliteStore::save_readiness(self, rows, at_ms)
    }
    fn open_alarms(&self) -> Result<OpenAlarms, StoreError> {
        SqliteStore::open_alarms(self)
    }
    fn save_alarms(&mut self, alarms: &[Alarm], fence: Option<&Fence>) -> Result<(), StoreError> {
        SqliteStore::save_alarms(self, alarms, fence)
    }
    fn alarms(
        &self,
        region: Option<&Region>,
        active: bool,
        limit: usize,
    ) -> Result<Vec<Alarm>, StoreError> {
        SqliteStore::alarms(self, region, active, limit)
    }

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
                "INSERT INTO terminals (terminal, site, level, online, version, started_ms,
                    keep_alive_s, offline_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (terminal) DO UPDATE SET online = excluded.online,
                    version = excluded.version, started_ms = excluded.started_ms,
                    keep_alive_s = excluded.keep_alive_s,
                    offline_ms = coalesce(excluded.offline_ms, offline_ms)",
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
                        // An announcement of a numbering start is applied however often it
                        // comes, also under a seq that a predecessor used.
                        if r.numbering().is_none() {
                            continue;
                        }
                    } else {
                        applied.stored += 1;
                        touch_stream(m.terminal, Some(m.stream));
                    }
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
                    Record::Lost {
                        terminal,
                        stream,
                        first,
                        last,
                    } => {
                        drop_range(&mut dropped_stmt, terminal, *stream, *first, *last)?;
                        touch_stream(terminal, Some(*stream));
                    }
                    Record::Event {
                        terminal, envelope, ..
                    } => match envelope.body {
                        Event::Dropped {
                            stream,
                            first,
                            last,
                        } => {
                            drop_range(&mut dropped_stmt, terminal, stream, first, last)?;
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
                            i64::from(p.keep_alive_s),
                            (!p.online).then_some(*received_ms as i64)
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
            // Heard from after its last offline presence: online, even if the online presence
            // of its new connection was lost (see `Store::apply`).
            let mut seen_stmt = tx.prepare_cached(
                "INSERT INTO terminals (terminal, site, level, online, last_seen_ms)
                 VALUES (?1, ?2, ?3, 1, ?4)
                 ON CONFLICT (terminal) DO UPDATE SET
                    last_seen_ms = max(coalesce(last_seen_ms, 0), excluded.last_seen_ms),
                    online = CASE WHEN excluded.last_seen_ms > coalesce(offline_ms, 0) THEN 1
                        ELSE online END",
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
            applied.numbering_clashes = super::numbering_clashes(records, |t, stream| {
                highest_held(&tx, &t.to_string(), stream)
            })?;
        }
        tx.commit()?;
        Ok(applied)
    }

    fn each_site(
        &self,
        region: Option<&Region>,
        each: &mut dyn FnMut(SiteRow),
    ) -> Result<(), StoreError> {
        let (from, to) = region_range(region);
        // One query: each terminal's row, followed by its metrics (none: one row of NULLs).
        let mut stmt = self.conn.prepare_cached(
            "SELECT t.terminal, t.site, t.level, t.online, t.version, t.last_seen_ms,
                    l.metric, l.value
             FROM terminals t LEFT JOIN latest l ON l.terminal = t.terminal
             WHERE t.site >= ?1 AND t.site < ?2 ORDER BY t.terminal, l.metric",
        )?;
        // The terminal being read, handed on when the next one starts.
        let mut site: Option<SiteRow> = None;
        let mut metric_names = MetricNames::default();
        let mut q = stmt.query(params![from, to])?;
        while let Some(r) = q.next()? {
            let terminal: String = r.get(0)?;
            if site.as_ref().is_none_or(|s| s.terminal != terminal) {
                if let Some(done) = site.take() {
                    each(done);
                }
                site = Some(SiteRow {
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
                site.as_mut(),
            ) {
                site.metrics.push((metric_names.get(&metric), value));
            }
        }
        if let Some(done) = site {
            each(done);
        }
        Ok(())
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
            push_samples(&mut out, &id, seq, &payload, metric, since)?;
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
            out.push(event_row(terminal, seq, &payload)?);
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

    #[test]
    fn a_store_file_appears_only_with_its_tables_and_leaves_nothing_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("central.db");
        let watch = path.clone();
        let reader = std::thread::spawn(move || {
            // Every look at the file while it is being made finds either no file or a store.
            let mut stores = 0;
            while stores < 20 {
                let existed = watch.exists();
                match open_read_only(&watch) {
                    Ok(_) => stores += 1,
                    Err(StoreError::Missing { .. }) if !existed => {}
                    Err(e) => panic!("a half-made store was visible: {e}"),
                }
            }
        });
        let _store = SqliteStore::open(&path).unwrap();
        reader.join().unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains(".new-"))
            .collect();
        assert!(names.is_empty(), "{names:?}");
    }

    #[test]
    fn threads_creating_one_store_at_once_all_open_it() {
        for _ in 0..10 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("central.db");
            let openers: Vec<_> = (0..4)
                .map(|_| {
                    let path = path.clone();
                    std::thread::spawn(move || SqliteStore::open(&path).map(drop))
                })
                .collect();
            for o in openers {
                o.join().unwrap().unwrap();
            }
            let left: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.contains(".new-"))
                .collect();
            assert!(left.is_empty(), "{left:?}");
            assert!(open_read_only(&path).is_ok());
        }
    }
}
