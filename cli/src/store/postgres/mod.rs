//! The PostgreSQL backend of the history store: [`PgStore`], with the same results as
//! [`SqliteStore`](super::SqliteStore) for the same records, for a province's fleet and for
//! several central instances writing at once.
//!
//! - Schema: [`MIGRATIONS`], the one ordered list of steps; `schema_migrations` records the
//!   versions applied, each step in its own transaction, so a later version only appends.
//! - `messages` is partitioned by day on `time_ms` (a partition created on demand before a group
//!   is stored, and a DEFAULT partition for times no day partition takes, so nothing is
//!   refused); [`PgStore::drop_before`] drops whole days. It has no per-message key: a group's
//!   rows are binary-COPied in terminal order and found through a BRIN index of (terminal,
//!   time) over ranges of 4 pages, the new ranges summarised at each fold (on a second
//!   connection, while the first folds).
//! - De-duplication is by runs of seqs: each terminal's row in `terminals` holds, per stream,
//!   the runs of seqs stored and the watermark, and its newest values; what groups stored
//!   since the rows were last written is in the ingest journal. A group takes the journal's
//!   lock (the groups of every instance go one at a time), brings the terminals its
//!   connection remembers up to date with what other instances appended since, reads the
//!   others (row and journal), decides which of its messages are new (a seq in a stored run
//!   is a duplicate), COPies only those and appends its runs to the journal, all in one
//!   transaction: stored and duplicate counts are exact, and a watermark never passes a record
//!   that is not committed, also with several instances storing one terminal's records at
//!   once. The rows are written by folding the journal into them (see `ingest`): at least
//!   every second while groups come, when the writer has nothing to do, and before a read of
//!   the fleet view through the same store. Runs outlive retention: a late copy of a dropped
//!   day is still a duplicate. The bounds of this ingest against a bare COPY are in
//!   docs/benchmarks.md.
//! - Text keys use the "C" collation: byte order like SQLite's, and region filters are index
//!   ranges on the site code.
//!
//! The client is the synchronous `postgres` crate: call it from a thread of its own or
//! `spawn_blocking`, never on a tokio worker (it runs its own runtime and would panic).

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;

use ::postgres::fallible_iterator::FallibleIterator;
use ::postgres::types::ToSql;
use ::postgres::{Client, NoTls};
use cuntong_core::envelope::Stream;
use cuntong_core::site::{Region, SiteCode};
use cuntong_core::telemetry::Metric;
use cuntong_core::terminal_id::TerminalId;

use super::{
    Applied, EventRow, Fence, InstanceRow, KnownTerminal, MeetingRow, MetricNames, OpenAlarms,
    Record, ReleaseRow, RolloutRow, RolloutSiteRow, SampleRow, SiteRow, Store, StoreError,
    StoredMeeting, event_row, push_samples, region_range, stream_id,
};
use crate::names::Names;
use cuntong_core::alarm::Alarm;

mod ingest;
mod partitions;
mod rollouts;
mod schema;
mod state;

pub use ingest::MessageCopy;
use ingest::{Ingest, transient};
pub use schema::MIGRATIONS;

/// The key of the advisory lock that serialises schema changes (migrations, partitions
/// created or dropped) between instances; it guards DDL only, never data.
pub(super) const DDL_LOCK: i64 = 0x6375_6e74_6f6e_6701;

/// The PostgreSQL store.
pub struct PgStore {
    client: RefCell<Client>,
    /// The URL without its password, for errors.
    at: String,
    /// The day partitions this connection found or created (not asked about again; a day
    /// another instance drops meanwhile is behind the retention cut, and what still comes for
    /// it goes to the DEFAULT partition).
    days: HashSet<String>,
    /// The state of ingest: statements prepared, terminals known, what is left to fold.
    ingest: RefCell<Ingest>,
    /// Opened for reading only: records are refused.
    read_only: bool,
    /// The day partitions written since the new ranges of the BRIN index of `messages` were
    /// last summarised (at a fold).
    written: HashSet<String>,
    /// The connection that summarises those ranges while this one folds (opened when first
    /// needed, again after it failed), and where it connects.
    summariser: Option<Client>,
    url: String,
}

impl Drop for PgStore {
    /// What is left to fold is folded: a store closed leaves its rows of `terminals` whole.
    fn drop(&mut self) {
        self.fold_quietly();
    }
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore").field("at", &self.at).finish()
    }
}

/// `url` without its password (in the user info or a `password=` parameter).
pub(super) fn redact(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let rest = scheme_end + 3;
        let authority_end = out[rest..].find(['/', '?']).map_or(out.len(), |i| rest + i);
        if let Some(at) = out[rest..authority_end].rfind('@') {
            let userinfo = &out[rest..rest + at];
            if let Some(colon) = userinfo.find(':') {
                out.replace_range(rest + colon + 1..rest + at, "***");
            }
        }
    }
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let query: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_owned(),
            })
            .collect();
        out = format!("{head}{}", query.join("&"));
    }
    out
}

/// A PostgreSQL error with the server's message (the driver's own Display says only "db
/// error"), or the chain of causes of a connection error.
pub(super) fn describe(e: &::postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return db.to_string();
    }
    let mut s = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// Rows of the fleet view fetched from its cursor at a time.
const SITES_BATCH: usize = 2_000;

impl PgStore {
    /// The schema version this build writes.
    pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;
    /// The schema's steps, in order (a test migrates a store of an older version).
    pub const MIGRATIONS: &'static [&'static str] = MIGRATIONS;

    /// Connects to the database at `url`, applying the migrations it lacks.
    pub fn open(url: &str) -> Result<PgStore, StoreError> {
        let mut store = PgStore::connect(url)?;
        store.migrate()?;
        Ok(store)
    }

    /// Connects for reading only (every transaction read-only): never changes the schema, and
    /// a database central never set up is [`StoreError::Missing`].
    pub fn open_read_only(url: &str) -> Result<PgStore, StoreError> {
        let mut store = PgStore::connect(url)?;
        store.read_only = true;
        let version = store.schema_version()?;
        if version == 0 {
            return Err(StoreError::Missing {
                path: store.at.clone(),
            });
        }
        store.check_known(version)?;
        store
            .client
            .borrow_mut()
            .batch_execute("SET default_transaction_read_only = on")
            .map_err(store.err("setting the session read-only"))?;
        Ok(store)
    }

    fn connect(url: &str) -> Result<PgStore, StoreError> {
        let at = redact(url);
        let client = Client::connect(url, NoTls).map_err(|source| StoreError::Postgres {
            at: format!("{at}, connecting"),
            source,
        })?;
        let store = PgStore {
            client: RefCell::new(client),
            at,
            days: HashSet::new(),
            ingest: RefCell::new(Ingest::new()),
            read_only: false,
            written: HashSet::new(),
            summariser: None,
            url: url.to_owned(),
        };
        // The driver logs the server's notices; warnings and errors are enough.
        store
            .client
            .borrow_mut()
            .batch_execute("SET client_min_messages = warning")
            .map_err(store.err("configuring the session"))?;
        Ok(store)
    }

    /// Maps a driver error to one naming the database and what was being done.
    fn err(&self, what: &str) -> impl Fn(::postgres::Error) -> StoreError + use<> {
        let at = format!("{}, {what}", self.at);
        move |source| StoreError::Postgres {
            at: at.clone(),
            source,
        }
    }

    /// The same for an error of the connection's I/O outside the driver's statements (a COPY's
    /// rows).
    fn io_err(&self, what: &str) -> impl Fn(std::io::Error) -> StoreError + use<> {
        let at = format!("{}, {what}", self.at);
        move |source| StoreError::Io {
            path: at.clone(),
            source,
        }
    }

    /// The newest schema version applied (0: none).
    fn schema_version(&self) -> Result<i64, StoreError> {
        let err = self.err("reading the schema version");
        let mut client = self.client.borrow_mut();
        let exists: bool = client
            .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
            .map_err(&err)?
            .get(0);
        if !exists {
            return Ok(0);
        }
        let v: i32 = client
            .query_one(
                "SELECT coalesce(max(version), 0) FROM schema_migrations",
                &[],
            )
            .map_err(&err)?
            .get(0);
        Ok(v.into())
    }

    fn check_known(&self, version: i64) -> Result<(), StoreError> {
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::NewerSchema {
                at: self.at.clone(),
                found: version,
                known,
            });
        }
        Ok(())
    }

    /// Applies the steps of [`MIGRATIONS`] not applied yet, each in its own transaction,
    /// one instance at a time.
    fn migrate(&mut self) -> Result<(), StoreError> {
        // Every missing step in one transaction: a reader sees the schema before or after,
        // never between steps.
        let err = self.err("applying the schema");
        let at = self.at.clone();
        let client = self.client.get_mut();
        let mut tx = client.transaction().map_err(&err)?;
        tx.query("SELECT pg_advisory_xact_lock($1)", &[&DDL_LOCK])
            .map_err(&err)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version    integer PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .map_err(&err)?;
        let newest: i32 = tx
            .query_one(
                "SELECT coalesce(max(version), 0) FROM schema_migrations",
                &[],
            )
            .map_err(&err)?
            .get(0);
        if newest > MIGRATIONS.len() as i32 {
            return Err(StoreError::NewerSchema {
                at,
                found: newest.into(),
                known: MIGRATIONS.len() as i64,
            });
        }
        for (i, step) in MIGRATIONS.iter().enumerate().skip(newest.max(0) as usize) {
            let version = i as i32 + 1;
            let err = |source| StoreError::Postgres {
                at: format!("{at}, applying schema version {version}"),
                source,
            };
            tx.batch_execute(step).map_err(err)?;
            tx.execute(
                "INSERT INTO schema_migrations (version) VALUES ($1)",
                &[&version],
            )
            .map_err(err)?;
        }
        tx.commit().map_err(&err)?;
        Ok(())
    }

    /// Number of messages stored for a terminal and stream (used by tests and benches).
    pub fn count(&self, terminal: &str, stream: Stream) -> Result<u64, StoreError> {
        let n: i64 = self
            .client
            .borrow_mut()
            .query_one(
                "SELECT count(*) FROM messages WHERE terminal = $1 AND stream = $2",
                &[&terminal, &(stream_id(stream) as i16)],
            )
            .map_err(self.err("counting messages"))?
            .get(0);
        Ok(n as u64)
    }
}

impl Store for PgStore {
    fn add_release(&mut self, release: &ReleaseRow, artifact: &[u8]) -> Result<bool, StoreError> {
        PgStore::add_release(self, release, artifact)
    }
    fn releases(&self) -> Result<Vec<ReleaseRow>, StoreError> {
        PgStore::releases(self)
    }
    fn release_artifact(
        &self,
        sha256: &str,
        out: &mut dyn std::io::Write,
    ) -> Result<bool, StoreError> {
        PgStore::release_artifact(self, sha256, out)
    }
    fn save_rollouts(
        &mut self,
        rollouts: &[RolloutRow],
        sites: &[RolloutSiteRow],
        fence: Option<&Fence>,
    ) -> Result<(), StoreError> {
        PgStore::save_rollouts(self, rollouts, sites, fence)
    }
    fn rollouts(&self) -> Result<Vec<RolloutRow>, StoreError> {
        PgStore::rollouts(self)
    }
    fn rollout_counts(&self) -> Result<Vec<(u64, cuntong_core::update::Stage, usize)>, StoreError> {
        PgStore::rollout_counts(self)
    }
    fn rollout_sites(
        &self,
        id: u64,
    ) -> Result<std::collections::BTreeMap<TerminalId, cuntong_core::rollout::Site>, StoreError>
    {
        PgStore::rollout_sites(self, id)
    }
    fn drop_before(&mut self, cut_ms: u64) -> Result<u64, StoreError> {
        PgStore::drop_before(self, cut_ms)
    }

    fn take_lease(
        &mut self,
        role: &str,
        holder: &str,
        ttl_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        PgStore::take_lease(self, role, holder, ttl_ms)
    }
    fn instance_seen(&mut self, instance: &str, started_ms: u64) -> Result<(), StoreError> {
        PgStore::instance_seen(self, instance, started_ms)
    }
    fn instances(&self) -> Result<(Vec<InstanceRow>, u64), StoreError> {
        PgStore::instances(self)
    }
    fn terminal_ids(&self) -> Result<Vec<TerminalId>, StoreError> {
        PgStore::terminal_ids(self)
    }
    fn known_terminals(&self) -> Result<Vec<KnownTerminal>, StoreError> {
        self.fold_quietly();
        PgStore::known_terminals(self)
    }
    fn import_names(&mut self, rows: &[(SiteCode, String)]) -> Result<u64, StoreError> {
        PgStore::import_names(self, rows)
    }
    fn set_terminal_name(&mut self, terminal: &TerminalId, name: &str) -> Result<(), StoreError> {
        PgStore::set_terminal_name(self, terminal, name)
    }
    fn names_version(&self) -> Result<i64, StoreError> {
        PgStore::names_version(self)
    }
    fn names(&self, region: Option<&Region>) -> Result<Names, StoreError> {
        PgStore::names(self, region)
    }
    fn unended_meetings(&self) -> Result<Vec<StoredMeeting>, StoreError> {
        PgStore::unended_meetings(self)
    }
    fn meeting_ids(&self) -> Result<Vec<String>, StoreError> {
        PgStore::meeting_ids(self)
    }
    fn live_meetings(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        PgStore::live_meetings(self)
    }
    fn meeting(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        PgStore::meeting(self, id)
    }
    fn save_meetings(
        &mut self,
        rows: &[MeetingRow],
        fence: Option<&Fence>,
    ) -> Result<(), StoreError> {
        PgStore::save_meetings(self, rows, fence)
    }
    fn retire_meeting(&mut self, id: &str) -> Result<(), StoreError> {
        PgStore::retire_meeting(self, id)
    }
    fn save_readiness(
        &mut self,
        rows: &[(String, Option<bool>, String)],
        at_ms: u64,
    ) -> Result<(), StoreError> {
        PgStore::save_readiness(self, rows, at_ms)
    }
    fn open_alarms(&self) -> Result<OpenAlarms, StoreError> {
        PgStore::open_alarms(self)
    }
    fn save_alarms(&mut self, alarms: &[Alarm], fence: Option<&Fence>) -> Result<(), StoreError> {
        PgStore::save_alarms(self, alarms, fence)
    }
    fn alarms(
        &self,
        region: Option<&Region>,
        active: bool,
        limit: usize,
    ) -> Result<Vec<Alarm>, StoreError> {
        PgStore::alarms(self, region, active, limit)
    }

    fn apply(&mut self, records: &[Record]) -> Result<Applied, StoreError> {
        if self.read_only {
            return Err(StoreError::ReadOnly {
                at: self.at.clone(),
            });
        }
        self.ensure_partitions(
            records
                .iter()
                .filter_map(Record::message)
                .map(|m| m.time_ms as i64),
        )?;
        let mut attempt = 0;
        let applied = loop {
            match self.apply_once(records) {
                Ok(applied) => break applied,
                Err(e) if transient(&e) && attempt < 8 => attempt += 1,
                Err(e) => return Err(e),
            }
        };
        if self.ingest.get_mut().fold_due()
            && let Err(e) = self.fold_and_summarise(true)
        {
            tracing::warn!(error = %e, "cannot fold the ingest journal yet; trying again later");
        }
        Ok(applied)
    }

    fn settle(&mut self) -> Result<(), StoreError> {
        let fold = self.ingest.get_mut().unfolded();
        self.fold_and_summarise(fold)
    }

    fn each_site(
        &self,
        region: Option<&Region>,
        each: &mut dyn FnMut(SiteRow),
    ) -> Result<(), StoreError> {
        // What this connection stored is in the view it reads.
        self.fold_quietly();
        let err = || self.err("reading the fleet view");
        // A terminal id starts with its site code, so a region is a range of ids. Through a
        // cursor, the server plans for the first rows and reads them in the order of the ids'
        // index, so neither side sorts a province (the server's sort spilled to disk), and each
        // batch is handed on as it comes.
        let (from, to) = region_range(region);
        let mut client = self.client.borrow_mut();
        let mut tx = client.transaction().map_err(err())?;
        tx.execute(
            "DECLARE fleet_view NO SCROLL CURSOR FOR
             SELECT terminal, site, level, online, version, last_seen_ms,
                coalesce(metrics, '{}'), coalesce(vals, '{}')
             FROM terminals WHERE terminal >= $1 AND terminal < $2 ORDER BY terminal",
            &[&from, &to],
        )
        .map_err(err())?;
        let fetch = format!("FETCH {SITES_BATCH} FROM fleet_view");
        let mut metric_names = MetricNames::default();
        loop {
            let mut rows = tx
                .query_raw(&fetch, std::iter::empty::<i32>())
                .map_err(err())?;
            let mut fetched = 0usize;
            while let Some(r) = rows.next().map_err(err())? {
                fetched += 1;
                let names: Vec<&str> = r.try_get(6).map_err(err())?;
                let values: Vec<f64> = r.try_get(7).map_err(err())?;
                each(SiteRow {
                    terminal: r.try_get(0).map_err(err())?,
                    site: r.try_get(1).map_err(err())?,
                    level: r.try_get(2).map_err(err())?,
                    online: r.try_get(3).map_err(err())?,
                    version: r.try_get(4).map_err(err())?,
                    last_seen_ms: r
                        .try_get::<_, Option<i64>>(5)
                        .map_err(err())?
                        .map(|v| v as u64),
                    metrics: names
                        .into_iter()
                        .map(|n| metric_names.get(n))
                        .zip(values)
                        .collect(),
                });
            }
            if fetched < SITES_BATCH {
                break;
            }
        }
        tx.commit().map_err(err())
    }

    fn telemetry(
        &self,
        terminal: &TerminalId,
        metric: Option<&Metric>,
        since_ms: Option<u64>,
    ) -> Result<Vec<SampleRow>, StoreError> {
        let since = since_ms.unwrap_or(0) as i64;
        let id = terminal.to_string();
        // As in SQLite: look back a day for batches that started before `since`.
        let rows = self
            .client
            .borrow_mut()
            .query(
                "SELECT seq, payload FROM messages WHERE terminal = $1 AND stream = $2
                 AND time_ms >= $3::bigint - 86400000 ORDER BY time_ms, seq",
                &[&id, &(stream_id(Stream::Telemetry) as i16), &since],
            )
            .map_err(self.err("reading telemetry"))?;
        let mut out = Vec::new();
        for r in &rows {
            push_samples(&mut out, &id, r.get(0), r.get(1), metric, since)?;
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
        let stream = stream_id(Stream::Events) as i16;
        let since = since_ms.unwrap_or(0) as i64;
        let params: [&(dyn ToSql + Sync); 4] = [&stream, &since, &from, &to];
        let sql = "SELECT terminal, seq, payload FROM messages WHERE stream = $1 AND time_ms >= $2
             AND terminal >= $3 AND terminal < $4 ORDER BY time_ms, terminal, seq";
        let rows = self
            .client
            .borrow_mut()
            .query(sql, &params)
            .map_err(self.err("reading events"))?;
        rows.iter()
            .map(|r| event_row(r.get(0), r.get(1), r.get(2)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_shows_no_password() {
        assert_eq!(
            redact("postgres://cuntong:s3cret@db:5432/central"),
            "postgres://cuntong:***@db:5432/central"
        );
        assert_eq!(
            redact("postgresql://u@h/db?sslmode=disable&password=x"),
            "postgresql://u@h/db?sslmode=disable&password=***"
        );
        assert_eq!(
            redact("postgres://u@127.0.0.1:5/db"),
            "postgres://u@127.0.0.1:5/db"
        );
        assert_eq!(redact("postgres://u:p:q@h@x/db"), "postgres://u:***@x/db");
    }
}
