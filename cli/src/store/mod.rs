//! Central's store: the one owner of everything central keeps (history, names, meetings,
//! alarms, readiness answers, leases and instances).
//!
//! [`Store`] is the seam; [`SqliteStore`] (`sqlite.rs`, with its schema in `schema.rs` and its
//! names, meetings, alarms and instances parts beside it) is the embedded default and
//! [`PgStore`] (`postgres/`) the PostgreSQL backend, both with the same results. [`Database`]
//! says which one (`--db PATH` or `--db postgres://…`) and opens it; [`Writer`] is the store
//! thread central writes through.
//! Each message is stored once per (terminal, stream, seq): the primary key is the
//! de-duplication, so a broker's redelivery is harmless. Telemetry is kept as the terminal
//! sent it (the postcard envelope, exact decimals and original timestamps), one row per
//! message, and the newest value of each metric per terminal is kept in `latest` for the fleet
//! view. Writes are applied in groups, one transaction per group.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use bytes::Bytes;
use cuntong_core::alarm::Alarm;
use cuntong_core::delivery::{Watermarks, held_upto};
use cuntong_core::envelope::{Envelope, Event, Stream, decode_event, decode_telemetry};
use cuntong_core::presence::Presence;
use cuntong_core::site::{Region, SiteCode};
use cuntong_core::telemetry::{Metric, TelemetryBatch};
use cuntong_core::terminal_id::TerminalId;

use crate::names::Names;

mod alarms;
mod instances;
mod meetings;
mod names;
mod postgres;
pub(crate) mod rollouts;
mod schema;
mod sqlite;
mod writer;
pub use alarms::{KnownTerminal, OpenAlarms};
use alarms::{decode_alarm, encode_alarm};
pub use instances::{Fence, InstanceRow};
pub use meetings::{Column, MeetingRow, StoredMeeting};
pub use names::NamesCache;
pub use postgres::{MessageCopy, PgStore};
pub use rollouts::{ReleaseRow, RolloutRow, RolloutSiteRow};
use sqlite::has_table;
pub use sqlite::{BackupSummary, SqliteStore, open_read_only};
pub use writer::{
    GROUP, LINGER, RecordPermit, RecordSender, StateWriter, TrySendError, Writer, WriterGone,
};

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
    /// A group of records that kept losing races to other writers of its terminals (each try
    /// rolled back whole).
    #[error("database {at}: a group of records kept meeting other writers of its terminals")]
    Contended { at: String },
    #[error(
        "the {role} role has passed on (this write was made under epoch {epoch}, the role is at {current:?} now): refused"
    )]
    Fenced {
        role: &'static str,
        epoch: u64,
        current: Option<u64>,
    },
    #[error("cannot start the store thread: {0}")]
    Thread(std::io::Error),
    #[error("the store thread crashed")]
    Crashed,
    #[error(
        "release {version} is recorded already with other contents (SHA-256 {sha256}): give the new build a new version"
    )]
    ReleaseExists { version: String, sha256: String },
    /// A write through a store opened for reading only.
    #[error("database {at} is open read-only: nothing is written through it")]
    ReadOnly { at: String },
    #[error(
        "no store at {path} yet (`cuntong central` creates it there; --db PATH or CUNTONG_DB for another)"
    )]
    Missing { path: String },
    /// A PostgreSQL error; `at` is the database (its URL without the password) and what was
    /// being done.
    #[error("PostgreSQL {at}: {}", postgres::describe(source))]
    Postgres {
        at: String,
        source: ::postgres::Error,
    },
    #[error(
        "the store at {at} has schema version {found}, newer than this build's {known}: upgrade cuntong"
    )]
    NewerSchema { at: String, found: i64, known: i64 },
}

/// Where central's store is: a SQLite file (the embedded default) or a PostgreSQL database.
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    Sqlite(PathBuf),
    /// A `postgres://` or `postgresql://` URL.
    Postgres(String),
}

impl FromStr for Database {
    type Err = std::convert::Infallible;

    /// A `postgres://` or `postgresql://` URL is PostgreSQL; anything else a file path.
    fn from_str(s: &str) -> Result<Database, Self::Err> {
        let lower = s.get(..13).unwrap_or(s).to_ascii_lowercase();
        Ok(
            if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
                Database::Postgres(s.to_owned())
            } else {
                Database::Sqlite(PathBuf::from(s))
            },
        )
    }
}

/// A path as is; a URL without its password (logs and errors carry no secrets).
impl fmt::Display for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Database::Sqlite(path) => write!(f, "{}", path.display()),
            Database::Postgres(url) => f.write_str(&postgres::redact(url)),
        }
    }
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Database::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            Database::Postgres(_) => f.debug_tuple("Postgres").field(&self.to_string()).finish(),
        }
    }
}

impl Database {
    /// Opens the store for the `cuntong central` writing it: an SQLite file takes one (see
    /// [`SqliteStore::open_for_central`]); a PostgreSQL database is shared by several.
    pub fn open_for_central(&self) -> Result<Box<dyn Store>, StoreError> {
        Ok(match self {
            Database::Sqlite(path) => Box::new(SqliteStore::open_for_central(path)?),
            Database::Postgres(url) => Box::new(PgStore::open(url)?),
        })
    }

    /// Opens (creating or migrating if needed) the store for central to write.
    pub fn open(&self) -> Result<Box<dyn Store>, StoreError> {
        Ok(match self {
            Database::Sqlite(path) => Box::new(SqliteStore::open(path)?),
            Database::Postgres(url) => Box::new(PgStore::open(url)?),
        })
    }

    /// Opens the store for reading only (the read commands); never creates anything, and a
    /// store central never set up is [`StoreError::Missing`].
    pub fn open_read_only(&self) -> Result<Box<dyn Store>, StoreError> {
        Ok(match self {
            Database::Sqlite(path) => Box::new(SqliteStore::open_read_only(path)?),
            Database::Postgres(url) => Box::new(PgStore::open_read_only(url)?),
        })
    }
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

/// Which of the store's names a reader of a region needs: the imported names of the codes in
/// `[first, end)` (the region and all below it) and of its `ancestors`, and the names of the
/// terminals in the text range `terminals` ([`region_range`]). A province's fleet view does not
/// read the country's 620,000 village names.
#[derive(Clone, Debug, PartialEq, Eq)]
struct NamesScope {
    first: i64,
    end: i64,
    ancestors: Vec<i64>,
    terminals: (String, String),
}

impl NamesScope {
    /// The names under `region`; every name without one.
    fn of(region: Option<&Region>) -> NamesScope {
        let terminals = region_range(region);
        let Some(region) = region else {
            return NamesScope {
                first: 0,
                end: i64::MAX,
                ancestors: Vec::new(),
                terminals,
            };
        };
        let root = region.root();
        // A 12-digit code: the region is every code that starts with its prefix.
        let span = 10i64.pow(12u32.saturating_sub(region.prefix().len() as u32));
        let first = root.as_u64() as i64;
        NamesScope {
            first,
            end: first.saturating_add(span),
            ancestors: root.ancestors().map(|c| c.as_u64() as i64).collect(),
            terminals,
        }
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
    /// Central declared `first..=last` of the terminal's `stream` lost: they never arrived
    /// though the terminal sent what follows them again and again (see [`crate::gaps`]).
    /// Stored as a dropped range, so the watermark moves on.
    Lost {
        terminal: TerminalId,
        stream: Stream,
        first: u64,
        last: u64,
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
    /// The terminal it is of (a rejected message is of none known).
    fn terminal(&self) -> Option<TerminalId> {
        match self {
            Record::Telemetry { terminal, .. }
            | Record::Event { terminal, .. }
            | Record::Presence { terminal, .. }
            | Record::Lost { terminal, .. } => Some(*terminal),
            Record::Rejected { .. } => None,
        }
    }

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

    /// The terminal, stream and seq of a sequence-numbered message.
    pub(crate) fn numbered(&self) -> Option<(TerminalId, Stream, u64)> {
        self.message().map(|m| (*m.terminal, m.stream, m.seq))
    }

    /// A numbering start a terminal announced: (terminal, stream, first).
    fn numbering(&self) -> Option<(TerminalId, Stream, u64)> {
        match self {
            Record::Event {
                terminal,
                envelope:
                    Envelope {
                        body: Event::NumberingFrom { stream, first },
                        ..
                    },
                ..
            } => Some((*terminal, *stream, *first)),
            _ => None,
        }
    }
}

/// The terminals of a group that announced a numbering start below the highest seq the store
/// holds of that stream under their id, beyond what the held numbering itself sends (its
/// announcements, [`held_upto`]), with those highest seqs: what central tells them (a box
/// whose clock was behind renumbers above them). A box's own announcements, however often
/// they come, are no clash. `highest` gives the highest seq held of (terminal, stream).
fn numbering_clashes<E>(
    records: &[Record],
    mut highest: impl FnMut(&TerminalId, Stream) -> Result<u64, E>,
) -> Result<Vec<(TerminalId, Watermarks)>, E> {
    let mut clashes: Vec<(TerminalId, Watermarks)> = Vec::new();
    for (terminal, stream, first) in records.iter().filter_map(Record::numbering) {
        if clashes.iter().any(|(t, _)| *t == terminal)
            || highest(&terminal, stream)? <= held_upto(stream, first)
        {
            continue;
        }
        let mut held = Watermarks::default();
        for s in Stream::ALL {
            held.set(s, highest(&terminal, s)?);
        }
        clashes.push((terminal, held));
    }
    Ok(clashes)
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
    /// Terminals whose announced numbering start clashes with seqs held under their id, with
    /// the highest held of each stream: what central tells them (see
    /// [`cuntong_core::alarm::TerminalNotice::Held`]).
    pub numbering_clashes: Vec<(TerminalId, Watermarks)>,
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
    /// Newest value of each metric, sorted by name (the names shared by the rows of one
    /// read, see [`MetricNames`]).
    pub metrics: Vec<(Arc<str>, f64)>,
}

/// The metric names of one read of the fleet view, each held once: a province's 54,145 rows
/// name the same dozen metrics.
#[derive(Debug, Default)]
pub struct MetricNames(HashSet<Arc<str>>);

impl MetricNames {
    /// `name`, shared.
    pub fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(shared) = self.0.get(name) {
            return shared.clone();
        }
        let shared: Arc<str> = name.into();
        self.0.insert(shared.clone());
        shared
    }
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

/// Central's store: everything central keeps, whichever database keeps it. Both backends give
/// the same results for the same calls.
pub trait Store: Send {
    // The history.

    /// Applies a group of records atomically.
    ///
    /// A terminal is online from its online presence, and offline from its offline presence
    /// (its will), unless central received a message of it after that: the online presence is
    /// published once a connect and a broker may drop it (to a subscriber it finds slow),
    /// while telemetry and events are sent again until stored. A broker queues a client's
    /// messages in order, so a message received after the will was sent on a later connection.
    fn apply(&mut self, records: &[Record]) -> Result<Applied, StoreError>;
    /// Brings what a backend derives from the records applied later up to date (the
    /// PostgreSQL store's rows of `terminals`: fleet view, presence, newest values). The writer
    /// calls it whenever its queue runs empty and before it answers a flush.
    fn settle(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    /// The fleet view, optionally limited to a region, in terminal id order: each terminal's
    /// row handed to `each` as it is read (a province's rows are never all held at once).
    fn each_site(
        &self,
        region: Option<&Region>,
        each: &mut dyn FnMut(SiteRow),
    ) -> Result<(), StoreError>;
    /// The fleet view, optionally limited to a region, ordered by terminal id.
    fn sites(&self, region: Option<&Region>) -> Result<Vec<SiteRow>, StoreError> {
        let mut rows = Vec::new();
        self.each_site(region, &mut |r| rows.push(r))?;
        Ok(rows)
    }
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
    /// Every terminal the store knows.
    fn terminal_ids(&self) -> Result<Vec<TerminalId>, StoreError>;
    /// Every terminal heard from, with whether it was online and when it was last seen.
    fn known_terminals(&self) -> Result<Vec<KnownTerminal>, StoreError>;

    // Names.

    /// Stores official names of division codes, replacing earlier ones of the same codes, in
    /// one transaction; returns how many were stored.
    fn import_names(&mut self, rows: &[(SiteCode, String)]) -> Result<u64, StoreError>;
    /// Gives a terminal a name of its own (from provisioning with `--name`).
    fn set_terminal_name(&mut self, terminal: &TerminalId, name: &str) -> Result<(), StoreError>;
    /// Changes whenever names are imported or a terminal is named.
    fn names_version(&self) -> Result<i64, StoreError>;
    /// The imported division names and the terminals' own names, those in and above `region`
    /// (all of them without one).
    fn names(&self, region: Option<&Region>) -> Result<Names, StoreError>;

    // Meetings.

    /// The sessions not ended, for the meeting host to carry on with.
    fn unended_meetings(&self) -> Result<Vec<StoredMeeting>, StoreError>;
    /// Every session id stored, ended ones too.
    fn meeting_ids(&self) -> Result<Vec<String>, StoreError>;
    /// The records of the sessions stored as live.
    fn live_meetings(&self) -> Result<Vec<Vec<u8>>, StoreError>;
    /// The record of session `id`, if it is stored.
    fn meeting(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Writes sessions, in one transaction; under `fence`, only while its epoch is the role's
    /// ([`StoreError::Fenced`] otherwise).
    fn save_meetings(
        &mut self,
        rows: &[MeetingRow],
        fence: Option<&Fence>,
    ) -> Result<(), StoreError>;
    /// Marks a stored session ended (one central cannot use), so it is not loaded again.
    fn retire_meeting(&mut self, id: &str) -> Result<(), StoreError>;
    /// Keeps readiness answers: per terminal, whether it was ready (`None`: no answer) and the
    /// answer as JSON, at `at_ms`.
    fn save_readiness(
        &mut self,
        rows: &[(String, Option<bool>, String)],
        at_ms: u64,
    ) -> Result<(), StoreError>;

    // Alarms.

    /// The alarms not cleared and the last id given.
    fn open_alarms(&self) -> Result<OpenAlarms, StoreError>;
    /// Writes alarm changes (the newest state of each), in one transaction; under `fence`, only
    /// while its epoch is the role's.
    fn save_alarms(&mut self, alarms: &[Alarm], fence: Option<&Fence>) -> Result<(), StoreError>;
    /// The stored alarms whose subject is in `region` (all if `None`), active ones only if
    /// asked, newest first, at most `limit`.
    fn alarms(
        &self,
        region: Option<&Region>,
        active: bool,
        limit: usize,
    ) -> Result<Vec<Alarm>, StoreError>;

    /// Forgets the history before `cut_ms` (`cuntong central --retain`), in whole UTC days (a
    /// day reaching past the cut is kept whole): PostgreSQL drops the days' partitions,
    /// SQLite deletes their rows. Returns how many it dropped: days (PostgreSQL), messages
    /// (SQLite). Watermarks stay: what was confirmed stays confirmed.
    fn drop_before(&mut self, cut_ms: u64) -> Result<u64, StoreError>;

    // Releases and rollouts.

    /// Records a release and its artifact; false if this version is recorded already with the
    /// same contents, [`StoreError::ReleaseExists`] if with others.
    fn add_release(&mut self, release: &ReleaseRow, artifact: &[u8]) -> Result<bool, StoreError>;
    /// The releases recorded, oldest first (without their artifacts).
    fn releases(&self) -> Result<Vec<ReleaseRow>, StoreError>;
    /// Writes the artifact whose SHA-256 is `sha256` (hex) to `out`, in pieces; false if no
    /// release has it.
    fn release_artifact(
        &self,
        sha256: &str,
        out: &mut dyn std::io::Write,
    ) -> Result<bool, StoreError>;
    /// Writes rollouts (their state) and boxes' progress, in one transaction; under `fence`,
    /// only while its epoch is the role's.
    fn save_rollouts(
        &mut self,
        rollouts: &[RolloutRow],
        sites: &[RolloutSiteRow],
        fence: Option<&Fence>,
    ) -> Result<(), StoreError>;
    /// Every rollout stored, oldest first.
    fn rollouts(&self) -> Result<Vec<RolloutRow>, StoreError>;
    /// How many boxes each rollout has at each stage (one query, not the boxes' rows).
    fn rollout_counts(&self) -> Result<Vec<(u64, cuntong_core::update::Stage, usize)>, StoreError>;
    /// The boxes of rollout `id` and their progress.
    fn rollout_sites(
        &self,
        id: u64,
    ) -> Result<std::collections::BTreeMap<TerminalId, cuntong_core::rollout::Site>, StoreError>;

    // Several central instances.

    /// Takes or renews the lease on `role` for `holder`, for `ttl_ms` on the store's clock:
    /// the epoch (it grows each time the role changes hands) if `holder` holds it now, `None`
    /// if another instance does.
    fn take_lease(
        &mut self,
        role: &str,
        holder: &str,
        ttl_ms: u64,
    ) -> Result<Option<u64>, StoreError>;
    /// Records that `instance` is at work (now, on the store's clock).
    fn instance_seen(&mut self, instance: &str, started_ms: u64) -> Result<(), StoreError>;
    /// The instances as last seen, with the roles whose lease each holds now, and the store's
    /// clock now.
    fn instances(&self) -> Result<(Vec<InstanceRow>, u64), StoreError>;
}

fn stream_id(s: Stream) -> i64 {
    match s {
        Stream::Telemetry => 0,
        Stream::Events => 1,
    }
}

/// Appends the samples of a stored telemetry message (`seq` as stored) at or after `since`
/// (of `metric` if given) to `out`: both backends read history this way.
fn push_samples(
    out: &mut Vec<SampleRow>,
    terminal: &str,
    seq: i64,
    payload: &[u8],
    metric: Option<&Metric>,
    since: i64,
) -> Result<(), StoreError> {
    let env = decode_telemetry(payload).map_err(|e| StoreError::Corrupt {
        terminal: terminal.to_owned(),
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
    Ok(())
}

/// A stored event message as a row.
fn event_row(terminal: String, seq: i64, payload: &[u8]) -> Result<EventRow, StoreError> {
    let env = decode_event(payload).map_err(|e| StoreError::Corrupt {
        terminal: terminal.clone(),
        seq: seq as u64,
        detail: e.to_string(),
    })?;
    Ok(EventRow {
        terminal,
        seq: env.seq,
        time_ms: env.time_ms,
        event: env.body,
    })
}

// The store's behaviour is tested on both backends in tests/tests/store.rs.
