//! The PostgreSQL backend of the history store: [`PgStore`], with the same results as
//! [`SqliteStore`](super::SqliteStore) for the same records, for a province's fleet and for
//! several central instances writing at once.
//!
//! - Schema: [`MIGRATIONS`], the one ordered list of steps; `schema_migrations` records the
//!   versions applied, each step in its own transaction, so a later version only appends.
//! - `messages` is partitioned by day on `time_ms` (a partition created on demand before a group
//!   is stored, and a DEFAULT partition for times no day partition takes, so nothing is
//!   refused); [`PgStore::drop_before`] drops whole days. The partitioned primary key must
//!   include `time_ms`, so the de-duplication by (terminal, stream, seq) is the separate
//!   `message_keys` table: a group is binary-COPied into a temporary staging table, its keys
//!   inserted with `ON CONFLICT DO NOTHING RETURNING`, and only the returned ones copied into
//!   `messages`, all in one transaction: stored and duplicate counts are exact, also with
//!   several connections storing one terminal's records at once.
//! - Every row lock a group takes is taken in one order (keys, drops, numbering starts,
//!   terminals, latest values, watermarks; each sorted), so concurrent groups wait for each
//!   other but never deadlock. Every group upserts the row in `terminals` of each terminal it
//!   touches before it reads or writes that terminal's newest values and watermarks: that row
//!   lock lets one group at a time past that point for a terminal, so a watermark, advanced
//!   after the group's own inserts, only passes records committed by then or in this
//!   transaction, and the newest values are merged without a lost update.
//! - Per group, one statement a table: a watermark the group's own run of seqs moves (the
//!   common case) is set in one statement for all terminals, the general `advance_watermarks`
//!   only runs for the pairs with a gap, a drop or a numbering start ahead; the newest values
//!   go as one row a terminal (binary COPY of arrays into a staging table, then one upsert).
//!   The bounds of this ingest against a bare COPY are in docs/benchmarks.md.
//! - Text keys use the "C" collation: byte order like SQLite's, and region filters are index
//!   ranges on the site code.
//!
//! The client is the synchronous `postgres` crate: call it from a thread of its own or
//! `spawn_blocking`, never on a tokio worker (it runs its own runtime and would panic).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;

use ::postgres::binary_copy::BinaryCopyInWriter;
use ::postgres::error::SqlState;
use ::postgres::types::{ToSql, Type};
use ::postgres::{Client, NoTls, Transaction};
use cuntong_core::delivery::Watermarks;
use cuntong_core::envelope::{Event, Stream};
use cuntong_core::site::{Region, SiteCode};
use cuntong_core::telemetry::Metric;
use cuntong_core::terminal_id::TerminalId;

use super::{
    Applied, EventRow, Fence, InstanceRow, KnownTerminal, MeetingRow, OpenAlarms, Record,
    SampleRow, SiteRow, Store, StoreError, StoredMeeting, decode_alarm, encode_alarm, event_row,
    push_samples, region_range, stream_id,
};
use crate::names::Names;
use cuntong_core::alarm::Alarm;

/// The schema, one version per step, in order: append, never edit a released step.
pub const MIGRATIONS: &[&str] = &[
    // 1: the tables of the SQLite store, messages partitioned by day. The tables every group
    // updates (terminals, latest, watermarks) leave room in their pages (fillfactor), so that
    // an update stays in its page and leaves the indexes alone.
    r#"
CREATE TABLE terminals (
    terminal     text COLLATE "C" PRIMARY KEY,
    site         text COLLATE "C" NOT NULL,
    level        text NOT NULL,
    online       boolean NOT NULL DEFAULT false,
    version      text,
    started_ms   bigint,
    keep_alive_s bigint,
    last_seen_ms bigint
) WITH (fillfactor = 50);
CREATE INDEX terminals_by_site ON terminals (site);
CREATE TABLE message_keys (
    terminal text COLLATE "C" NOT NULL,
    stream   smallint NOT NULL,
    seq      bigint NOT NULL,
    time_ms  bigint NOT NULL,
    PRIMARY KEY (terminal, stream, seq)
);
CREATE INDEX message_keys_by_time ON message_keys USING brin (time_ms);
CREATE TABLE messages (
    terminal    text COLLATE "C" NOT NULL,
    stream      smallint NOT NULL,
    seq         bigint NOT NULL,
    time_ms     bigint NOT NULL,
    received_ms bigint NOT NULL,
    payload     bytea NOT NULL,
    PRIMARY KEY (terminal, stream, time_ms, seq)
) PARTITION BY RANGE (time_ms);
CREATE TABLE messages_default PARTITION OF messages DEFAULT;
-- The newest value of each metric of a terminal, in one row per terminal (a province's fleet
-- view reads one row a terminal): the metrics in name order, each value's time and value.
CREATE TABLE latest (
    terminal text COLLATE "C" PRIMARY KEY,
    metrics  text[] COLLATE "C" NOT NULL,
    ts_ms    bigint[] NOT NULL,
    vals     double precision[] NOT NULL
) WITH (fillfactor = 50);
CREATE TABLE watermarks (
    terminal  text COLLATE "C" NOT NULL,
    stream    smallint NOT NULL,
    watermark bigint NOT NULL,
    PRIMARY KEY (terminal, stream)
) WITH (fillfactor = 50);
CREATE TABLE dropped (
    terminal text COLLATE "C" NOT NULL,
    stream   smallint NOT NULL,
    first    bigint NOT NULL,
    last     bigint NOT NULL,
    PRIMARY KEY (terminal, stream, first)
);
CREATE TABLE numbering (
    terminal text COLLATE "C" NOT NULL,
    stream   smallint NOT NULL,
    first    bigint NOT NULL,
    PRIMARY KEY (terminal, stream)
);
CREATE TABLE division_names (
    code bigint PRIMARY KEY,
    name text NOT NULL
);
CREATE TABLE terminal_names (
    terminal text COLLATE "C" PRIMARY KEY,
    name     text NOT NULL
);
CREATE TABLE counters (
    name  text PRIMARY KEY,
    value bigint NOT NULL
);
CREATE TABLE rejected (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic       text NOT NULL,
    received_ms bigint NOT NULL,
    reason      text NOT NULL,
    payload     bytea NOT NULL
);
-- The watermarks of a group's (terminal, stream) pairs, given sorted: each advanced (if asked)
-- over stored seqs, reported drops and the seqs below where the terminal's numbering starts,
-- exactly as the SQLite store does it. The caller holds the terminals' rows in `terminals`
-- locked: no other group of these terminals is between its inserts and its commit, and what
-- committed before is what these statements read. Most pairs only move over a short run
-- of new seqs: that is one statement for all of them; the others (a run longer than 64, drops
-- or a numbering start ahead) take the general loop.
CREATE FUNCTION advance_watermarks(p_terminals text[], p_streams smallint[], p_advance boolean[])
RETURNS TABLE (o_terminal text, o_stream smallint, o_watermark bigint)
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    wm bigint;
    before bigint;
    covered bigint;
    next_seq bigint;
BEGIN
    INSERT INTO watermarks (terminal, stream, watermark)
        SELECT u.t, u.s, 0 FROM unnest(p_terminals, p_streams, p_advance) AS u(t, s, a)
        WHERE u.a ORDER BY u.t COLLATE "C", u.s
        ON CONFLICT DO NOTHING;
    FOR r IN
        WITH cur AS (
            SELECT u.t, u.s, u.a, coalesce(w.watermark, 0) AS wm
            FROM unnest(p_terminals, p_streams, p_advance) AS u(t, s, a)
            LEFT JOIN watermarks w ON w.terminal = u.t AND w.stream = u.s
        ), fast AS (
            SELECT c.t, c.s, c.a, c.wm, coalesce(run.last, c.wm) AS new_wm,
                c.a AND (coalesce(run.last - c.wm = 64, false)
                    OR EXISTS (SELECT 1 FROM dropped d
                        WHERE d.terminal = c.t AND d.stream = c.s AND d.last > c.wm)
                    OR EXISTS (SELECT 1 FROM numbering n
                        WHERE n.terminal = c.t AND n.stream = c.s AND n.first - 1 > c.wm)
                ) AS slow
            FROM cur c CROSS JOIN LATERAL (
                SELECT max(x.seq) FILTER (WHERE x.seq - x.rn = c.wm) AS last FROM (
                    SELECT k.seq, row_number() OVER (ORDER BY k.seq) AS rn FROM (
                        SELECT k.seq FROM message_keys k
                        WHERE c.a AND k.terminal = c.t AND k.stream = c.s AND k.seq > c.wm
                        ORDER BY k.seq LIMIT 64
                    ) k
                ) x
            ) run
        ), moved AS (
            UPDATE watermarks w SET watermark = f.new_wm FROM fast f
            WHERE f.a AND NOT f.slow AND f.new_wm <> f.wm AND w.terminal = f.t AND w.stream = f.s
        )
        SELECT * FROM fast
    LOOP
        wm := r.new_wm;
        IF r.slow THEN
            wm := r.wm;
            LOOP
                before := wm;
                EXIT WHEN wm = 9223372036854775807;
                SELECT max(x.last) INTO covered FROM (
                    SELECT d.last FROM dropped d WHERE d.terminal = r.t AND d.stream = r.s
                        AND d.first <= wm + 1 AND d.last >= wm + 1
                    UNION ALL
                    SELECT n.first - 1 FROM numbering n WHERE n.terminal = r.t AND n.stream = r.s
                        AND n.first - 1 >= wm + 1
                ) x;
                IF covered IS NOT NULL THEN
                    wm := greatest(wm, covered);
                END IF;
                FOR next_seq IN SELECT k.seq FROM message_keys k
                    WHERE k.terminal = r.t AND k.stream = r.s AND k.seq > wm ORDER BY k.seq LIMIT 1024
                LOOP
                    EXIT WHEN next_seq <> wm + 1;
                    wm := next_seq;
                END LOOP;
                EXIT WHEN wm = before;
            END LOOP;
            IF wm <> r.wm THEN
                UPDATE watermarks w SET watermark = wm WHERE w.terminal = r.t AND w.stream = r.s;
            END IF;
        END IF;
        o_terminal := r.t;
        o_stream := r.s;
        o_watermark := wm;
        RETURN NEXT;
    END LOOP;
END
$$;
"#,
    // 2: the meeting host's sessions, the alarms and the readiness answers.
    r#"
CREATE TABLE meetings (
    id         text COLLATE "C" PRIMARY KEY,
    status     text NOT NULL,
    created_ms bigint NOT NULL,
    host       bytea NOT NULL
);
CREATE INDEX meetings_by_status ON meetings (status);
CREATE TABLE alarms (
    id        bigint PRIMARY KEY,
    subject   text COLLATE "C" NOT NULL,
    kind      text NOT NULL,
    state     text NOT NULL,
    raised_ms bigint NOT NULL,
    alarm     text NOT NULL
);
CREATE INDEX alarms_by_state ON alarms (state, raised_ms);
CREATE INDEX alarms_by_subject ON alarms (subject, id);
CREATE TABLE readiness (
    terminal text COLLATE "C" NOT NULL,
    at_ms    bigint NOT NULL,
    ready    boolean,
    result   text NOT NULL,
    PRIMARY KEY (terminal, at_ms)
);
"#,
    // 3: singleton roles held through leases (on the database's clock), and the central
    // instances at work.
    r#"
CREATE TABLE leases (
    role       text PRIMARY KEY,
    holder     text NOT NULL,
    epoch      bigint NOT NULL,
    expires_ms bigint NOT NULL
);
CREATE TABLE instances (
    instance     text COLLATE "C" PRIMARY KEY,
    started_ms   bigint NOT NULL,
    last_seen_ms bigint NOT NULL
);
"#,
];

/// The key of the advisory lock that serialises schema changes (migrations, partitions
/// created or dropped) between instances; it guards DDL only, never data.
const DDL_LOCK: i64 = 0x6375_6e74_6f6e_6701;

const DAY_MS: i64 = 86_400_000;
/// Days with a partition of their own: 1970-01-01 up to 9999-12-31; any other time (a clock
/// off by centuries, a wrapped value) goes to the DEFAULT partition.
const LAST_DAY: i64 = 2_932_896;

/// The PostgreSQL store.
pub struct PgStore {
    client: RefCell<Client>,
    /// The URL without its password, for errors.
    at: String,
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

/// The name and time range of the day partition holding `time_ms`, if a day partition does.
fn day_partition(time_ms: i64) -> Option<(String, i64, i64)> {
    let day = time_ms.div_euclid(DAY_MS);
    if !(0..=LAST_DAY).contains(&day) {
        return None;
    }
    let (y, m, d) = civil_from_days(day);
    Some((
        format!("messages_p{y:04}{m:02}{d:02}"),
        day * DAY_MS,
        (day + 1) * DAY_MS,
    ))
}

/// The day range of a partition named by [`day_partition`].
fn partition_range(name: &str) -> Option<(i64, i64)> {
    let digits = name.strip_prefix("messages_p")?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let y: i64 = digits[..4].parse().ok()?;
    let m: u32 = digits[4..6].parse().ok()?;
    let d: u32 = digits[6..].parse().ok()?;
    let day = days_from_civil(y, m, d);
    Some((day * DAY_MS, (day + 1) * DAY_MS))
}

/// (year, month, day) of a day counted from 1970-01-01 (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The inverse of [`civil_from_days`].
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = y - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The exclusive upper bound of the strings starting with `prefix` (in byte order): the
/// prefix with its last character incremented. Region prefixes are digits.
fn prefix_end(prefix: &str) -> String {
    let mut chars: Vec<char> = prefix.chars().collect();
    if let Some(last) = chars.pop() {
        chars.push(char::from_u32(u32::from(last) + 1).unwrap_or(char::MAX));
    }
    chars.into_iter().collect()
}

/// What a group writes besides its messages, gathered so that each table is written by one
/// statement with its keys in order.
#[derive(Default)]
struct Rows {
    dropped: BTreeMap<(String, i16, i64), i64>,
    numbering: BTreeMap<(String, i16), i64>,
    /// Per terminal: (site, level), the last presence in the group, the latest reception.
    terminals: BTreeMap<String, TerminalRow>,
    /// Per terminal: the newest time and value of each metric in the group.
    latest: BTreeMap<String, BTreeMap<String, (i64, f64)>>,
    /// Per terminal: its id and which streams may advance.
    touched: BTreeMap<String, (TerminalId, [bool; 2])>,
    /// Per terminal: the seqs this group stored, per stream.
    stored: BTreeMap<String, [Vec<i64>; 2]>,
    rejected: Vec<(String, i64, String, Vec<u8>)>,
}

struct TerminalRow {
    site: String,
    level: &'static str,
    presence: Option<(bool, String, i64, i64)>,
    last_seen: Option<i64>,
}

impl Rows {
    fn terminal(&mut self, t: &TerminalId) -> &mut TerminalRow {
        self.terminals
            .entry(t.to_string())
            .or_insert_with(|| TerminalRow {
                site: t.site().to_string(),
                level: t.site().level().as_str(),
                presence: None,
                last_seen: None,
            })
    }

    /// `id` is `t` as text (made once a record: the maps are looked up without allocating).
    fn seen(&mut self, id: &str, t: &TerminalId, ms: u64) {
        let ms = ms as i64;
        if let Some(row) = self.terminals.get_mut(id) {
            row.last_seen = Some(row.last_seen.map_or(ms, |v| v.max(ms)));
            return;
        }
        self.terminal(t).last_seen = Some(ms);
    }

    fn touch(&mut self, id: &str, t: &TerminalId, stream: Option<Stream>) {
        if !self.touched.contains_key(id) {
            self.touched.insert(id.to_owned(), (*t, [false; 2]));
        }
        if let (Some(s), Some(e)) = (stream, self.touched.get_mut(id)) {
            e.1[stream_id(s) as usize] = true;
        }
    }

    fn stored(&mut self, id: &str, stream: Stream, seq: u64) {
        if !self.stored.contains_key(id) {
            self.stored.insert(id.to_owned(), Default::default());
        }
        if let Some(seqs) = self.stored.get_mut(id) {
            seqs[stream_id(stream) as usize].push(seq as i64);
        }
    }

    /// Keeps the newer of a metric's values (the later one of the group on a tie).
    fn latest(&mut self, id: &str, metric: &str, ts: i64, v: f64) {
        if !self.latest.contains_key(id) {
            self.latest.insert(id.to_owned(), BTreeMap::new());
        }
        let Some(metrics) = self.latest.get_mut(id) else {
            return;
        };
        match metrics.get_mut(metric) {
            Some(e) if ts as u64 >= e.0 as u64 => *e = (ts, v),
            Some(_) => {}
            None => {
                metrics.insert(metric.to_owned(), (ts, v));
            }
        }
    }
}

impl PgStore {
    /// The schema version this build writes.
    pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

    /// Connects to the database at `url`, applying the migrations it lacks.
    pub fn open(url: &str) -> Result<PgStore, StoreError> {
        let mut store = PgStore::connect(url)?;
        store.migrate()?;
        Ok(store)
    }

    /// Connects for reading only (every transaction read-only): never changes the schema, and
    /// a database central never set up is [`StoreError::Missing`].
    pub fn open_read_only(url: &str) -> Result<PgStore, StoreError> {
        let store = PgStore::connect(url)?;
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
        };
        // The driver logs the server's notices ("relation staging already exists, skipping"
        // every group); warnings and errors are enough.
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
        for (i, step) in MIGRATIONS.iter().enumerate() {
            let version = i as i32 + 1;
            let err = self.err(&format!("applying schema version {version}"));
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
                    at: self.at.clone(),
                    found: newest.into(),
                    known: MIGRATIONS.len() as i64,
                });
            }
            if newest >= version {
                continue;
            }
            tx.batch_execute(step).map_err(&err)?;
            tx.execute(
                "INSERT INTO schema_migrations (version) VALUES ($1)",
                &[&version],
            )
            .map_err(&err)?;
            tx.commit().map_err(&err)?;
        }
        Ok(())
    }

    /// Creates the day partitions of `time_ms` values that have none yet.
    fn ensure_partitions(&mut self, times: impl Iterator<Item = i64>) -> Result<(), StoreError> {
        let mut wanted: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for t in times {
            if let Some((name, lo, hi)) = day_partition(t) {
                wanted.entry(name).or_insert((lo, hi));
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let err = self.err("creating day partitions of messages");
        let client = self.client.get_mut();
        let names: Vec<&str> = wanted.keys().map(String::as_str).collect();
        let missing: Vec<String> = client
            .query(
                "SELECT n FROM unnest($1::text[]) n WHERE to_regclass(n) IS NULL",
                &[&names],
            )
            .map_err(&err)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let mut tx = client.transaction().map_err(&err)?;
        tx.query("SELECT pg_advisory_xact_lock($1)", &[&DDL_LOCK])
            .map_err(&err)?;
        for name in &missing {
            let (lo, hi) = wanted[name];
            let create = format!(
                "CREATE TABLE IF NOT EXISTS {name} PARTITION OF messages FOR VALUES FROM ({lo}) TO ({hi})"
            );
            let mut sp = tx.transaction().map_err(&err)?;
            match sp.batch_execute(&create) {
                Ok(()) => sp.commit().map_err(&err)?,
                // Rows of that day already in the DEFAULT partition (the day was dropped by
                // retention while a late record arrived): they and the day stay there.
                Err(e) if e.code() == Some(&SqlState::CHECK_VIOLATION) => {
                    sp.rollback().map_err(&err)?
                }
                Err(e) => return Err(err(e)),
            }
        }
        tx.commit().map_err(&err)
    }

    /// Drops the day partitions of `messages` entirely before `cut_ms` (and their keys);
    /// returns how many. A day reaching past the cut is kept whole.
    pub fn drop_before(&mut self, cut_ms: u64) -> Result<u64, StoreError> {
        let cut = i64::try_from(cut_ms).unwrap_or(i64::MAX);
        let err = self.err("dropping old partitions of messages");
        let client = self.client.get_mut();
        let mut tx = client.transaction().map_err(&err)?;
        tx.query("SELECT pg_advisory_xact_lock($1)", &[&DDL_LOCK])
            .map_err(&err)?;
        let parts: Vec<String> = tx
            .query(
                "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                 WHERE i.inhparent = 'messages'::regclass ORDER BY 1",
                &[],
            )
            .map_err(&err)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut dropped = 0;
        for name in parts {
            let Some((lo, hi)) = partition_range(&name) else {
                continue;
            };
            if hi > cut {
                continue;
            }
            tx.batch_execute(&format!("DROP TABLE {name}"))
                .map_err(&err)?;
            tx.execute(
                "DELETE FROM message_keys WHERE time_ms >= $1 AND time_ms < $2",
                &[&lo, &hi],
            )
            .map_err(&err)?;
            dropped += 1;
        }
        tx.commit().map_err(&err)?;
        Ok(dropped)
    }

    /// The day partitions of `messages`, oldest first (for tests and operators).
    pub fn partitions(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .client
            .borrow_mut()
            .query(
                "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                 WHERE i.inhparent = 'messages'::regclass AND c.relname <> 'messages_default'
                 ORDER BY 1",
                &[],
            )
            .map_err(self.err("listing partitions of messages"))?
            .iter()
            .map(|r| r.get(0))
            .collect())
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

    /// One attempt at storing a group (see [`Store::apply`]).
    fn apply_once(&mut self, records: &[Record]) -> Result<Applied, StoreError> {
        let err = self.err("storing a group");
        let client = self.client.get_mut();
        let mut tx = client.transaction().map_err(&err)?;
        let stored = copy_messages(&mut tx, records).map_err(&err)?;

        let mut applied = Applied::default();
        let mut rows = Rows::default();
        let mut ord = 0usize;
        for r in records {
            // A sequence-numbered message is stored once; a redelivery only counts.
            if let Some(m) = r.message() {
                let new = stored.get(ord).copied().unwrap_or(false);
                ord += 1;
                let id = m.terminal.to_string();
                rows.seen(&id, m.terminal, m.received_ms);
                if !new {
                    applied.duplicates += 1;
                    // It resent: it may not have our watermark. Send it again.
                    rows.touch(&id, m.terminal, None);
                    continue;
                }
                applied.stored += 1;
                rows.touch(&id, m.terminal, Some(m.stream));
                rows.stored(&id, m.stream, m.seq);
                if let Record::Telemetry { envelope, .. } = r {
                    for s in &envelope.body.samples {
                        applied.values += 1;
                        let ts = (envelope.time_ms + u64::from(s.offset_ms)) as i64;
                        rows.latest(&id, s.metric.name(), ts, s.value.to_f64());
                    }
                }
            }
            match r {
                Record::Telemetry { .. } => {}
                Record::Event {
                    terminal, envelope, ..
                } => match envelope.body {
                    Event::Dropped {
                        stream,
                        first,
                        last,
                    } if first <= last => {
                        let key = (terminal.to_string(), stream_id(stream) as i16, first as i64);
                        let e = rows.dropped.entry(key).or_insert(last as i64);
                        *e = (*e).max(last as i64);
                        rows.touch(&terminal.to_string(), terminal, Some(stream));
                    }
                    // Applied before the watermarks below advance, so the events stream
                    // passes the gap the announcement itself follows.
                    Event::NumberingFrom { stream, first } => {
                        if let Ok(first) = i64::try_from(first) {
                            let key = (terminal.to_string(), stream_id(stream) as i16);
                            let e = rows.numbering.entry(key).or_insert(first);
                            *e = (*e).max(first);
                            rows.touch(&terminal.to_string(), terminal, Some(stream));
                        }
                    }
                    _ => {}
                },
                Record::Presence {
                    terminal,
                    received_ms,
                    presence: p,
                } => {
                    rows.terminal(terminal).presence = Some((
                        p.online,
                        p.version.clone(),
                        p.started_ms as i64,
                        i64::from(p.keep_alive_s),
                    ));
                    if p.online {
                        rows.seen(&terminal.to_string(), terminal, *received_ms);
                    }
                }
                Record::Rejected {
                    topic,
                    received_ms,
                    reason,
                    payload,
                } => rows.rejected.push((
                    topic.clone(),
                    *received_ms as i64,
                    reason.clone(),
                    payload.to_vec(),
                )),
            }
        }
        write_rows(&mut tx, &rows, &mut applied).map_err(&err)?;
        tx.commit().map_err(&err)?;
        Ok(applied)
    }
}

/// COPYs the group's messages into the staging table and stores those not stored before;
/// returns, for each message of the group in order, whether this group stored it (the first
/// of several copies in one group is the one stored).
fn copy_messages(
    tx: &mut Transaction<'_>,
    records: &[Record],
) -> Result<Vec<bool>, ::postgres::Error> {
    let messages: Vec<_> = records.iter().filter_map(Record::message).collect();
    if messages.is_empty() {
        return Ok(Vec::new());
    }
    tx.batch_execute(
        r#"CREATE TEMP TABLE IF NOT EXISTS staging (
            ord         integer NOT NULL,
            terminal    text COLLATE "C" NOT NULL,
            stream      smallint NOT NULL,
            seq         bigint NOT NULL,
            time_ms     bigint NOT NULL,
            received_ms bigint NOT NULL,
            payload     bytea NOT NULL
        ) ON COMMIT DELETE ROWS"#,
    )?;
    {
        let sink = tx.copy_in(
            "COPY staging (ord, terminal, stream, seq, time_ms, received_ms, payload) FROM STDIN BINARY",
        )?;
        let mut w = BinaryCopyInWriter::new(
            sink,
            &[
                Type::INT4,
                Type::TEXT,
                Type::INT2,
                Type::INT8,
                Type::INT8,
                Type::INT8,
                Type::BYTEA,
            ],
        );
        for (i, m) in messages.iter().enumerate() {
            let terminal = m.terminal.to_string();
            w.write(&[
                &(i as i32),
                &terminal,
                &(stream_id(m.stream) as i16),
                &(m.seq as i64),
                &(m.time_ms as i64),
                &(m.received_ms as i64),
                &m.raw,
            ])?;
        }
        w.finish()?;
    }
    // Keys in order, so that groups storing the same terminal at once wait for each other
    // instead of deadlocking.
    let rows = tx.query(
        "WITH new AS (
            INSERT INTO message_keys (terminal, stream, seq, time_ms)
            SELECT DISTINCT ON (terminal, stream, seq) terminal, stream, seq, time_ms
            FROM staging ORDER BY terminal, stream, seq, ord
            ON CONFLICT DO NOTHING
            RETURNING terminal, stream, seq
         ), firsts AS (
            SELECT DISTINCT ON (s.terminal, s.stream, s.seq) s.*
            FROM staging s JOIN new USING (terminal, stream, seq)
            ORDER BY s.terminal, s.stream, s.seq, s.ord
         ), stored AS (
            INSERT INTO messages (terminal, stream, seq, time_ms, received_ms, payload)
            SELECT terminal, stream, seq, time_ms, received_ms, payload FROM firsts
         )
         SELECT ord FROM firsts",
        &[],
    )?;
    let mut stored = vec![false; messages.len()];
    for r in rows {
        let ord: i32 = r.get(0);
        if let Some(s) = stored.get_mut(ord as usize) {
            *s = true;
        }
    }
    Ok(stored)
}

/// Writes what a group changes besides its messages, table by table in the lock order, and
/// sets the watermarks of the terminals it touched.
fn write_rows(
    tx: &mut Transaction<'_>,
    rows: &Rows,
    applied: &mut Applied,
) -> Result<(), ::postgres::Error> {
    for (topic, received, reason, payload) in &rows.rejected {
        tx.execute(
            "INSERT INTO rejected (topic, received_ms, reason, payload) VALUES ($1, $2, $3, $4)",
            &[topic, received, reason, payload],
        )?;
    }
    if !rows.dropped.is_empty() {
        let (mut t, mut s, mut f, mut l) = (vec![], vec![], vec![], vec![]);
        for ((terminal, stream, first), last) in &rows.dropped {
            t.push(terminal.as_str());
            s.push(*stream);
            f.push(*first);
            l.push(*last);
        }
        tx.execute(
            "INSERT INTO dropped (terminal, stream, first, last)
             SELECT * FROM unnest($1::text[], $2::smallint[], $3::bigint[], $4::bigint[])
             ON CONFLICT (terminal, stream, first)
             DO UPDATE SET last = greatest(dropped.last, excluded.last)",
            &[&t, &s, &f, &l],
        )?;
    }
    if !rows.numbering.is_empty() {
        let (mut t, mut s, mut f) = (vec![], vec![], vec![]);
        for ((terminal, stream), first) in &rows.numbering {
            t.push(terminal.as_str());
            s.push(*stream);
            f.push(*first);
        }
        tx.execute(
            "INSERT INTO numbering (terminal, stream, first)
             SELECT * FROM unnest($1::text[], $2::smallint[], $3::bigint[])
             ON CONFLICT (terminal, stream)
             DO UPDATE SET first = greatest(numbering.first, excluded.first)",
            &[&t, &s, &f],
        )?;
    }
    if !rows.terminals.is_empty() {
        let mut cols: (Vec<&str>, Vec<&str>, Vec<&str>) = Default::default();
        let mut online = Vec::new();
        let mut version: Vec<Option<&str>> = Vec::new();
        let mut started: Vec<Option<i64>> = Vec::new();
        let mut keep_alive: Vec<Option<i64>> = Vec::new();
        let mut seen: Vec<Option<i64>> = Vec::new();
        for (terminal, row) in &rows.terminals {
            cols.0.push(terminal);
            cols.1.push(&row.site);
            cols.2.push(row.level);
            let p = row.presence.as_ref();
            online.push(p.is_some_and(|p| p.0));
            version.push(p.map(|p| p.1.as_str()));
            started.push(p.map(|p| p.2));
            keep_alive.push(p.map(|p| p.3));
            seen.push(row.last_seen);
        }
        // Every terminal the group touches has its row here, locked from now to the commit:
        // other groups of these terminals wait before their newest values and watermarks.
        // A row without presence has no start time: it only moves last_seen.
        tx.execute(
            "INSERT INTO terminals AS t
                (terminal, site, level, online, version, started_ms, keep_alive_s, last_seen_ms)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::boolean[], $5::text[],
                $6::bigint[], $7::bigint[], $8::bigint[])
             ON CONFLICT (terminal) DO UPDATE SET
                online = CASE WHEN excluded.started_ms IS NULL THEN t.online ELSE excluded.online END,
                version = CASE WHEN excluded.started_ms IS NULL THEN t.version
                    ELSE excluded.version END,
                keep_alive_s = CASE WHEN excluded.started_ms IS NULL THEN t.keep_alive_s
                    ELSE excluded.keep_alive_s END,
                started_ms = coalesce(excluded.started_ms, t.started_ms),
                last_seen_ms = CASE WHEN excluded.last_seen_ms IS NULL THEN t.last_seen_ms
                    ELSE greatest(coalesce(t.last_seen_ms, 0), excluded.last_seen_ms) END",
            &[
                &cols.0,
                &cols.1,
                &cols.2,
                &online,
                &version,
                &started,
                &keep_alive,
                &seen,
            ],
        )?;
    }
    if !rows.latest.is_empty() {
        write_latest(tx, &rows.latest)?;
    }
    if !rows.touched.is_empty() {
        // The pairs whose watermark this group's own run of seqs moves (nearly all of them,
        // one statement), then the others through the general function, then the rest read.
        let mut marks = advance_runs(tx, &rows.stored)?;
        let (mut t, mut s, mut adv) = (vec![], vec![], vec![]);
        let (mut rt, mut rs) = (vec![], vec![]);
        for (id, (_, streams)) in &rows.touched {
            for stream in Stream::ALL {
                let sid = stream_id(stream) as i16;
                if marks.contains_key(&(id.clone(), sid)) {
                    continue;
                }
                if streams[stream_id(stream) as usize] {
                    t.push(id.as_str());
                    s.push(sid);
                    adv.push(true);
                } else {
                    rt.push(id.as_str());
                    rs.push(sid);
                }
            }
        }
        let mut rest = Vec::new();
        if !t.is_empty() {
            rest.extend(tx.query(
                "SELECT o_terminal, o_stream, o_watermark FROM advance_watermarks($1, $2, $3)",
                &[&t, &s, &adv],
            )?);
        }
        if !rt.is_empty() {
            rest.extend(tx.query(
                "SELECT w.terminal, w.stream, w.watermark
                 FROM unnest($1::text[], $2::smallint[]) AS u(t, s)
                 JOIN watermarks w ON w.terminal = u.t AND w.stream = u.s",
                &[&rt, &rs],
            )?);
        }
        marks.extend(rest.iter().map(|r| ((r.get(0), r.get(1)), r.get(2))));
        let mut by_terminal: BTreeMap<&str, Watermarks> = BTreeMap::new();
        for ((terminal, stream), wm) in &marks {
            let stream = if *stream == 0 {
                Stream::Telemetry
            } else {
                Stream::Events
            };
            by_terminal
                .entry(terminal.as_str())
                .or_default()
                .set(stream, *wm as u64);
        }
        for (id, (terminal, _)) in &rows.touched {
            let marks = by_terminal.get(id.as_str()).copied().unwrap_or_default();
            applied.watermarks.push((*terminal, marks));
        }
    }
    Ok(())
}

/// Moves, in one statement, the watermark of each (terminal, stream) pair whose seqs stored by
/// this group start right after it: to the end of the group's run from there, when nothing
/// stored before continues that run and no drop or numbering start lies ahead of the watermark
/// (exactly what the general `advance_watermarks` would find then). Returns the pairs moved;
/// the others are left to `advance_watermarks`. The caller holds the terminals' rows locked.
fn advance_runs(
    tx: &mut Transaction<'_>,
    stored: &BTreeMap<String, [Vec<i64>; 2]>,
) -> Result<BTreeMap<(String, i16), i64>, ::postgres::Error> {
    let (mut t, mut s, mut lo, mut hi) = (vec![], vec![], vec![], vec![]);
    for (terminal, streams) in stored {
        for (stream, seqs) in streams.iter().enumerate() {
            let Some((first, last)) = first_run(seqs) else {
                continue;
            };
            // Seqs beyond i64 (stored as negative numbers) and the ends of the range never
            // join a run here: the general function takes them.
            if first < 1 || last == i64::MAX {
                continue;
            }
            t.push(terminal.as_str());
            s.push(stream as i16);
            lo.push(first);
            hi.push(last);
        }
    }
    if t.is_empty() {
        return Ok(BTreeMap::new());
    }
    let rows = tx.query(
        "WITH g AS (
            SELECT * FROM unnest($1::text[], $2::smallint[], $3::bigint[], $4::bigint[])
                AS g(t, s, lo, hi)
         ), fast AS (
            SELECT g.t, g.s, g.hi FROM g
            JOIN watermarks w ON w.terminal = g.t AND w.stream = g.s
            WHERE w.watermark = g.lo - 1
              AND NOT EXISTS (SELECT 1 FROM message_keys k
                  WHERE k.terminal = g.t AND k.stream = g.s AND k.seq = g.hi + 1)
              AND NOT EXISTS (SELECT 1 FROM dropped d
                  WHERE d.terminal = g.t AND d.stream = g.s AND d.last > w.watermark)
              AND NOT EXISTS (SELECT 1 FROM numbering n
                  WHERE n.terminal = g.t AND n.stream = g.s AND n.first - 1 > w.watermark)
         )
         UPDATE watermarks w SET watermark = f.hi FROM fast f
         WHERE w.terminal = f.t AND w.stream = f.s
         RETURNING w.terminal, w.stream, w.watermark",
        &[&t, &s, &lo, &hi],
    )?;
    Ok(rows
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect())
}

/// The lowest of `seqs` and the end of the run of consecutive seqs from it.
fn first_run(seqs: &[i64]) -> Option<(i64, i64)> {
    let mut sorted = seqs.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let first = *sorted.first()?;
    let mut last = first;
    for &seq in &sorted[1..] {
        if seq != last + 1 {
            break;
        }
        last = seq;
    }
    Some((first, last))
}

/// Merges a group's newest values into the stored ones, a metric's newer value replacing the
/// older (the group's on a tie), one row per terminal. Read, merged here and written back: the
/// terminals' rows, locked by this transaction already, keep other groups of the same
/// terminals waiting meanwhile.
fn write_latest(
    tx: &mut Transaction<'_>,
    group: &BTreeMap<String, BTreeMap<String, (i64, f64)>>,
) -> Result<(), ::postgres::Error> {
    let mut merged: BTreeMap<&str, BTreeMap<String, (i64, f64)>> = group
        .keys()
        .map(|terminal| (terminal.as_str(), BTreeMap::new()))
        .collect();
    let terminals: Vec<&str> = merged.keys().copied().collect();
    for row in tx.query(
        "SELECT terminal, metrics, ts_ms, vals FROM latest WHERE terminal = ANY($1)",
        &[&terminals],
    )? {
        let terminal: &str = row.get(0);
        let metrics: Vec<String> = row.get(1);
        let ts: Vec<i64> = row.get(2);
        let vals: Vec<f64> = row.get(3);
        if let Some(m) = merged.get_mut(terminal) {
            m.extend(metrics.into_iter().zip(ts.into_iter().zip(vals)));
        }
    }
    for (terminal, metrics) in group {
        let Some(m) = merged.get_mut(terminal.as_str()) else {
            continue;
        };
        if m.is_empty() {
            m.clone_from(metrics);
            continue;
        }
        for (metric, &(at, value)) in metrics {
            match m.get_mut(metric) {
                Some(e) if at >= e.0 => *e = (at, value),
                Some(_) => {}
                None => {
                    m.insert(metric.clone(), (at, value));
                }
            }
        }
    }
    // One row per terminal, binary-COPied as arrays (no per-value rows to aggregate on the
    // server), then upserted in terminal order.
    tx.batch_execute(
        r#"CREATE TEMP TABLE IF NOT EXISTS latest_in (
            terminal text COLLATE "C" NOT NULL,
            metrics  text[] COLLATE "C" NOT NULL,
            ts_ms    bigint[] NOT NULL,
            vals     double precision[] NOT NULL
        ) ON COMMIT DELETE ROWS"#,
    )?;
    {
        let sink =
            tx.copy_in("COPY latest_in (terminal, metrics, ts_ms, vals) FROM STDIN BINARY")?;
        let mut w = BinaryCopyInWriter::new(
            sink,
            &[
                Type::TEXT,
                Type::TEXT_ARRAY,
                Type::INT8_ARRAY,
                Type::FLOAT8_ARRAY,
            ],
        );
        for (terminal, metrics) in &merged {
            let names: Vec<&str> = metrics.keys().map(String::as_str).collect();
            let ts: Vec<i64> = metrics.values().map(|e| e.0).collect();
            let vals: Vec<f64> = metrics.values().map(|e| e.1).collect();
            w.write(&[terminal, &names, &ts, &vals])?;
        }
        w.finish()?;
    }
    tx.execute(
        r#"INSERT INTO latest (terminal, metrics, ts_ms, vals)
         SELECT terminal, metrics, ts_ms, vals FROM latest_in ORDER BY terminal
         ON CONFLICT (terminal) DO UPDATE SET metrics = excluded.metrics,
            ts_ms = excluded.ts_ms, vals = excluded.vals"#,
        &[],
    )?;
    Ok(())
}

/// Whether a failed group is worth trying again as a whole (it was rolled back).
fn transient(e: &StoreError) -> bool {
    matches!(e, StoreError::Postgres { source, .. } if matches!(
        source.code(),
        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    ))
}

/// Why a fenced write was refused: the role passed on, or the check itself failed.
enum FenceError {
    Fenced(StoreError),
    Db(::postgres::Error),
}

impl FenceError {
    fn or_else(self, err: impl Fn(::postgres::Error) -> StoreError) -> StoreError {
        match self {
            FenceError::Fenced(e) => e,
            FenceError::Db(e) => err(e),
        }
    }
}

/// Refuses the write of `tx` unless `fence`'s epoch is the role's now (the lease row is read
/// under a share lock: it cannot pass on before `tx` commits).
fn check_fence(tx: &mut Transaction<'_>, fence: Option<&Fence>) -> Result<(), FenceError> {
    let Some(f) = fence else { return Ok(()) };
    let current: Option<i64> = tx
        .query_opt(
            "SELECT epoch FROM leases WHERE role = $1 FOR SHARE",
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

impl Store for PgStore {
    fn drop_before(&mut self, cut_ms: u64) -> Result<u64, StoreError> {
        PgStore::drop_before(self, cut_ms)
    }

    fn take_lease(
        &mut self,
        role: &str,
        holder: &str,
        ttl_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        let ttl = i64::try_from(ttl_ms).unwrap_or(i64::MAX);
        let row = self
            .client
            .get_mut()
            .query_opt(
                &format!(
                    "INSERT INTO leases (role, holder, epoch, expires_ms) VALUES ($1, $2, 1, {NOW} + $3)
                     ON CONFLICT (role) DO UPDATE SET
                        epoch = CASE WHEN leases.holder = excluded.holder
                                THEN leases.epoch ELSE leases.epoch + 1 END,
                        holder = excluded.holder,
                        expires_ms = excluded.expires_ms
                     WHERE leases.holder = excluded.holder OR leases.expires_ms < {NOW}
                     RETURNING epoch"
                ),
                &[&role, &holder, &ttl],
            )
            .map_err(self.err("taking a lease"))?;
        Ok(row.map(|r| r.get::<_, i64>(0).max(0) as u64))
    }

    fn instance_seen(&mut self, instance: &str, started_ms: u64) -> Result<(), StoreError> {
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

    fn instances(&self) -> Result<(Vec<InstanceRow>, u64), StoreError> {
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

    fn terminal_ids(&self) -> Result<Vec<TerminalId>, StoreError> {
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

    fn known_terminals(&self) -> Result<Vec<KnownTerminal>, StoreError> {
        let rows = self
            .client
            .borrow_mut()
            .query(
                "SELECT terminal, online, last_seen_ms FROM terminals
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
                })
            })
            .collect())
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

    fn names(&self) -> Result<Names, StoreError> {
        PgStore::names(self)
    }

    fn unended_meetings(&self) -> Result<Vec<StoredMeeting>, StoreError> {
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
                id: Ok(r.get(0)),
                record: Ok(r.get(1)),
                created_ms: Ok(r.get(2)),
            })
            .collect())
    }

    fn meeting_ids(&self) -> Result<Vec<String>, StoreError> {
        let rows = self
            .client
            .borrow_mut()
            .query("SELECT id FROM meetings", &[])
            .map_err(self.err("reading the meetings"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn live_meetings(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let rows = self
            .client
            .borrow_mut()
            .query("SELECT host FROM meetings WHERE status = 'live'", &[])
            .map_err(self.err("reading the meetings"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn meeting(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .client
            .borrow_mut()
            .query_opt("SELECT host FROM meetings WHERE id = $1", &[&id])
            .map_err(self.err("reading a meeting"))?
            .map(|r| r.get(0)))
    }

    fn save_meetings(
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

    fn retire_meeting(&mut self, id: &str) -> Result<(), StoreError> {
        self.client
            .get_mut()
            .execute("UPDATE meetings SET status = 'ended' WHERE id = $1", &[&id])
            .map_err(self.err("retiring a meeting"))?;
        Ok(())
    }

    fn save_readiness(
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

    fn open_alarms(&self) -> Result<OpenAlarms, StoreError> {
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

    fn save_alarms(&mut self, alarms: &[Alarm], fence: Option<&Fence>) -> Result<(), StoreError> {
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

    fn alarms(
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

    fn apply(&mut self, records: &[Record]) -> Result<Applied, StoreError> {
        self.ensure_partitions(
            records
                .iter()
                .filter_map(Record::message)
                .map(|m| m.time_ms as i64),
        )?;
        let mut attempt = 0;
        loop {
            match self.apply_once(records) {
                Err(e) if transient(&e) && attempt < 3 => attempt += 1,
                other => return other,
            }
        }
    }

    fn sites(&self, region: Option<&Region>) -> Result<Vec<SiteRow>, StoreError> {
        let prefix = region.map_or(String::new(), |r| r.prefix());
        let end = prefix_end(&prefix);
        let (filter, params): (&str, Vec<&(dyn ToSql + Sync)>) = if prefix.is_empty() {
            ("", vec![])
        } else {
            ("WHERE t.site >= $1 AND t.site < $2", vec![&prefix, &end])
        };
        // One query: each terminal with its newest values (in metric order).
        let sql = format!(
            "SELECT t.terminal, t.site, t.level, t.online, t.version, t.last_seen_ms,
                coalesce(l.metrics, '{{}}'), coalesce(l.vals, '{{}}')
             FROM terminals t LEFT JOIN latest l ON l.terminal = t.terminal
             {filter}
             ORDER BY t.terminal"
        );
        let rows = self
            .client
            .borrow_mut()
            .query(&sql, &params)
            .map_err(self.err("reading the fleet view"))?;
        Ok(rows
            .iter()
            .map(|r| {
                let names: Vec<String> = r.get(6);
                let values: Vec<f64> = r.get(7);
                SiteRow {
                    terminal: r.get(0),
                    site: r.get(1),
                    level: r.get(2),
                    online: r.get(3),
                    version: r.get(4),
                    last_seen_ms: r.get::<_, Option<i64>>(5).map(|v| v as u64),
                    metrics: names.into_iter().zip(values).collect(),
                }
            })
            .collect())
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
        let prefix = region.map_or(String::new(), |r| r.prefix());
        let end = prefix_end(&prefix);
        let stream = stream_id(Stream::Events) as i16;
        let since = since_ms.unwrap_or(0) as i64;
        let (filter, params): (&str, Vec<&(dyn ToSql + Sync)>) = if prefix.is_empty() {
            ("", vec![&stream, &since])
        } else {
            (
                "AND terminal >= $3 AND terminal < $4",
                vec![&stream, &since, &prefix, &end],
            )
        };
        let sql = format!(
            "SELECT terminal, seq, payload FROM messages WHERE stream = $1 AND time_ms >= $2
             {filter} ORDER BY time_ms, terminal, seq"
        );
        let rows = self
            .client
            .borrow_mut()
            .query(&sql, &params)
            .map_err(self.err("reading events"))?;
        rows.iter()
            .map(|r| event_row(r.get(0), r.get(1), r.get(2)))
            .collect()
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

    /// The imported division names and the terminals' own names.
    pub fn names(&self) -> Result<Names, StoreError> {
        let err = self.err("reading names");
        let mut client = self.client.borrow_mut();
        let imported = client
            .query("SELECT code, name FROM division_names", &[])
            .map_err(&err)?
            .iter()
            .map(|r| (r.get::<_, i64>(0) as u64, r.get(1)))
            .collect();
        let labels = client
            .query("SELECT terminal, name FROM terminal_names", &[])
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_partitions_are_named_by_their_utc_date_and_cover_exactly_that_day() {
        // 2025-11-22T08:00:00Z.
        let (name, lo, hi) = day_partition(1_763_798_400_000).unwrap();
        assert_eq!(name, "messages_p20251122");
        assert_eq!((lo, hi), (1_763_769_600_000, 1_763_856_000_000));
        assert_eq!(partition_range(&name), Some((lo, hi)));
        assert_eq!(day_partition(0).unwrap().0, "messages_p19700101");
        assert_eq!(day_partition(lo).unwrap().0, name);
        assert_eq!(day_partition(lo - 1).unwrap().0, "messages_p20251121");
        let (last, _, _) = day_partition(LAST_DAY * DAY_MS).unwrap();
        assert_eq!(last, "messages_p99991231");
        assert!(day_partition((LAST_DAY + 1) * DAY_MS).is_none());
        assert!(day_partition(-1).is_none());
        for day in [0, 59, 60, 365, 10_956, 11_016, 20_414, LAST_DAY] {
            let (name, lo, _) = day_partition(day * DAY_MS).unwrap();
            assert_eq!(partition_range(&name).map(|r| r.0), Some(lo), "{name}");
        }
        assert_eq!(partition_range("messages_default"), None);
    }

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

    #[test]
    fn a_region_prefix_ends_where_its_last_digit_is_incremented() {
        assert_eq!(prefix_end("13"), "14");
        assert_eq!(prefix_end("1309"), "130:");
        assert_eq!(prefix_end(""), "");
    }
}
