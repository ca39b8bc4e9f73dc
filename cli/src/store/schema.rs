//! The SQLite store's schema and its versioned migrations: every table central keeps (history,
//! names, meetings, alarms, readiness) is created here and nowhere else. The store's version is
//! SQLite's `user_version`; opening for writing applies the migrations it lacks, each in one
//! transaction, in order. A migration is only ever appended: a released one never changes.
//!
//! Version 1 is the schema as it was before versions were counted (every statement is
//! `IF NOT EXISTS`), so a store written then is adopted as it is.

use rusqlite::Connection;

use super::StoreError;

/// The migrations, in order: index `i` takes the store from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: history, names, meetings, alarms, readiness.
    "
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
CREATE TABLE IF NOT EXISTS watermarks (
    terminal  TEXT NOT NULL,
    stream    INTEGER NOT NULL,
    watermark INTEGER NOT NULL,
    PRIMARY KEY (terminal, stream)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dropped (
    terminal TEXT NOT NULL,
    stream   INTEGER NOT NULL,
    first    INTEGER NOT NULL,
    last     INTEGER NOT NULL,
    PRIMARY KEY (terminal, stream, first)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS numbering (
    terminal TEXT NOT NULL,
    stream   INTEGER NOT NULL,
    first    INTEGER NOT NULL,
    PRIMARY KEY (terminal, stream)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS division_names (
    code INTEGER PRIMARY KEY,
    name TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS terminal_names (
    terminal TEXT PRIMARY KEY,
    name     TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rejected (
    topic       TEXT NOT NULL,
    received_ms INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    payload     BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meetings (
    id         TEXT PRIMARY KEY,
    status     TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    host       BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS alarms (
    id         INTEGER PRIMARY KEY,
    subject    TEXT NOT NULL,
    kind       TEXT NOT NULL,
    state      TEXT NOT NULL,
    raised_ms  INTEGER NOT NULL,
    alarm      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alarms_by_state ON alarms (state, raised_ms);
CREATE TABLE IF NOT EXISTS readiness (
    terminal TEXT NOT NULL,
    at_ms    INTEGER NOT NULL,
    ready    INTEGER,
    result   TEXT NOT NULL,
    PRIMARY KEY (terminal, at_ms)
) WITHOUT ROWID;
",
    // 2: region filters (a site code range) and alarm lists by subject use an index.
    "
CREATE INDEX terminals_by_site ON terminals (site);
CREATE INDEX alarms_by_subject ON alarms (subject, id);
",
    // 3: singleton roles held through leases, and the central instances at work.
    "
CREATE TABLE leases (
    role       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    epoch      INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE instances (
    instance     TEXT PRIMARY KEY,
    started_ms   INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL
) WITHOUT ROWID;
",
    // 4: when central received a terminal's last offline presence: a message received after it
    // says the terminal is online again, even if its online presence was lost on the way.
    "
ALTER TABLE terminals ADD COLUMN offline_ms INTEGER;
",
    // 5: releases (the signed manifest and the artifact) and staged rollouts with each box's
    // progress.
    "
CREATE TABLE releases (
    version  TEXT PRIMARY KEY,
    sha256   TEXT NOT NULL,
    size     INTEGER NOT NULL,
    signed   BLOB NOT NULL,
    artifact BLOB NOT NULL,
    added_ms INTEGER NOT NULL
);
CREATE INDEX releases_by_sha256 ON releases (sha256);
CREATE TABLE rollouts (
    id         INTEGER PRIMARY KEY,
    version    TEXT NOT NULL,
    state      TEXT NOT NULL,
    plan       TEXT NOT NULL,
    reason     TEXT NOT NULL,
    command    BLOB NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE rollout_sites (
    rollout     INTEGER NOT NULL,
    terminal    TEXT NOT NULL,
    stage       TEXT NOT NULL,
    bytes       INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    notified_ms INTEGER,
    updated_ms  INTEGER NOT NULL,
    PRIMARY KEY (rollout, terminal)
) WITHOUT ROWID;
",
];

/// The version this build writes.
pub const VERSION: u32 = MIGRATIONS.len() as u32;

/// The store's version (0: a new file, or one from before versions were counted).
pub fn version(conn: &Connection) -> Result<u32, StoreError> {
    let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    Ok(u32::try_from(v).unwrap_or(u32::MAX))
}

/// How long opening waits for other processes opening or migrating the same store.
const MIGRATE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Brings the store at `path` (open on `conn`) to [`VERSION`]; refuses a store a newer
/// cuntong wrote, which this one could damage.
///
/// Several processes may open a new store at once (central and a read command, two
/// instances). SQLite answers some of those races "busy" at once rather than through the
/// connection's busy handler (switching a new file to WAL, a write lock wanted over a stale
/// snapshot), so a busy step is tried again, for up to [`MIGRATE_WAIT`].
pub fn migrate(conn: &mut Connection, path: &str) -> Result<(), StoreError> {
    let deadline = std::time::Instant::now() + MIGRATE_WAIT;
    let mut pause = std::time::Duration::from_millis(5);
    loop {
        match migrate_once(conn, path) {
            Err(StoreError::Sql(rusqlite::Error::SqliteFailure(e, _)))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(200));
            }
            done => return done,
        }
    }
}

fn migrate_once(conn: &mut Connection, path: &str) -> Result<(), StoreError> {
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")?;
    // The version is read under the write lock, so two processes opening one store at once
    // apply each step once; every missing step is one transaction, so a reader sees the
    // schema before or after, never between steps.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let at = version(&tx)?;
    if at > VERSION {
        return Err(StoreError::NewerSchema {
            at: path.to_owned(),
            found: at.into(),
            known: VERSION.into(),
        });
    }
    if at == VERSION {
        return Ok(());
    }
    for step in &MIGRATIONS[at as usize..] {
        tx.execute_batch(step)?;
    }
    // `user_version` takes no bound parameter; `VERSION` is a number of ours.
    tx.execute_batch(&format!("PRAGMA user_version = {VERSION}"))?;
    tx.commit()?;
    tracing::debug!(from = at, to = VERSION, "store migrated");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_store_gets_every_migration_and_a_second_open_changes_nothing() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, ":memory:").unwrap();
        assert_eq!(version(&conn).unwrap(), VERSION);
        migrate(&mut conn, ":memory:").unwrap();
        assert_eq!(version(&conn).unwrap(), VERSION);
        let indexes: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = 'terminals_by_site'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(indexes, 1);
    }

    #[test]
    fn two_processes_opening_a_new_store_at_once_apply_each_step_once() {
        // Many rounds: the races SQLite answers "busy" at once are rare in any one.
        for _ in 0..20 {
            opening_a_new_store_at_once(8);
        }
    }

    fn opening_a_new_store_at_once(processes: usize) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let opens: Vec<_> = (0..processes)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let mut conn = Connection::open(&path).unwrap();
                    conn.busy_timeout(std::time::Duration::from_secs(10))
                        .unwrap();
                    migrate(&mut conn, "c.db")
                })
            })
            .collect();
        for o in opens {
            o.join().unwrap().unwrap();
        }
        let conn = Connection::open(&path).unwrap();
        assert_eq!(version(&conn).unwrap(), VERSION);
    }

    #[test]
    fn a_store_from_before_versions_were_counted_is_adopted_with_its_rows() {
        let mut conn = Connection::open_in_memory().unwrap();
        // Version 1's tables as an unversioned store had them, with a row.
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.execute(
            "INSERT INTO meetings (id, status, created_ms, host) VALUES ('m', 'live', 1, x'00')",
            [],
        )
        .unwrap();
        assert_eq!(version(&conn).unwrap(), 0);
        migrate(&mut conn, ":memory:").unwrap();
        assert_eq!(version(&conn).unwrap(), VERSION);
        let n: i64 = conn
            .query_row("SELECT count(*) FROM meetings", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn a_store_written_by_a_newer_cuntong_is_refused_naming_both_versions() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(&format!("PRAGMA user_version = {}", VERSION + 3))
            .unwrap();
        let e = migrate(&mut conn, "/srv/central.db")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/srv/central.db"), "{e}");
        assert!(e.contains(&(VERSION + 3).to_string()), "{e}");
        assert!(e.contains(&VERSION.to_string()), "{e}");
    }
}
