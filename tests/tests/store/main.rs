//! The history store's behaviour, each case run on both backends: the embedded SQLite store
//! and the PostgreSQL store on a throwaway cluster ([`Postgres::shared`], a fresh database per
//! case). Both must give the same results for the same records: stored and duplicate counts,
//! watermarks, the fleet view, history and events. Then what only PostgreSQL has: several
//! connections storing at once, day partitions and retention, migrations. One module a
//! subject; the backends and the records the cases are made of are here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use bytes::Bytes;
use cuntong::store::{Applied, Database, PgStore, Record, SiteRow, SqliteStore, Store, StoreError};
use cuntong_core::delivery::Watermarks;
use cuntong_core::envelope::{Envelope, Event, Stream, encode};
use cuntong_core::presence::Presence;
use cuntong_core::site::Region;
use cuntong_core::telemetry::{Metric, Sample, TelemetryBatch};
use cuntong_core::terminal_id::TerminalId;
use cuntong_e2e::postgres::Postgres;
use cuntong_e2e::sample;

mod backends;
mod delivery;
mod leases;
mod names;
mod partitions;
mod rollouts;
mod views;
mod writers;

/// 2025-11-22T08:00:00Z.
const T0: u64 = 1_763_798_400_000;
const DAY: u64 = 86_400_000;
const A: &str = "130102001001-main";

// ---------------------------------------------------------------------------------------------
// The backends.

/// One backend's store for one case.
struct Db {
    name: &'static str,
    database: Database,
    _dir: Option<tempfile::TempDir>,
}

fn sqlite() -> Db {
    let dir = tempfile::tempdir().unwrap();
    Db {
        name: "SQLite",
        database: Database::Sqlite(dir.path().join("central.db")),
        _dir: Some(dir),
    }
}

fn postgres() -> Db {
    Db {
        name: "PostgreSQL",
        database: Database::Postgres(Postgres::shared().fresh_database()),
        _dir: None,
    }
}

/// Runs `case` on a new store of each backend; what it gave on each, SQLite's first.
fn on_both<T>(mut case: impl FnMut(&Db) -> T) -> Vec<T> {
    [sqlite(), postgres()]
        .iter()
        .map(|db| {
            eprintln!("-- on {}", db.name);
            case(db)
        })
        .collect()
}

impl Db {
    fn open(&self) -> Box<dyn Store> {
        self.database.open().unwrap()
    }

    fn path(&self) -> PathBuf {
        match &self.database {
            Database::Sqlite(p) => p.clone(),
            Database::Postgres(_) => unreachable!(),
        }
    }

    fn url(&self) -> &str {
        match &self.database {
            Database::Postgres(u) => u,
            Database::Sqlite(_) => unreachable!(),
        }
    }

    /// Messages stored for `terminal` on `stream`.
    fn count(&self, terminal: &str, stream: Stream) -> u64 {
        match &self.database {
            Database::Sqlite(p) => SqliteStore::open_read_only(p)
                .unwrap()
                .count(terminal, stream),
            Database::Postgres(u) => PgStore::open_read_only(u).unwrap().count(terminal, stream),
        }
        .unwrap()
    }

    /// An integer the database computes (both dialects read these the same).
    fn scalar(&self, sql: &str) -> i64 {
        match &self.database {
            Database::Sqlite(p) => rusqlite::Connection::open(p)
                .unwrap()
                .query_row(sql, [], |r| r.get(0))
                .unwrap(),
            Database::Postgres(u) => ::postgres::Client::connect(u, ::postgres::NoTls)
                .unwrap()
                .query_one(sql, &[])
                .unwrap()
                .get(0),
        }
    }

    /// Every rejected record, oldest first.
    fn rejected_rows(&self) -> Vec<(String, u64, String, Vec<u8>)> {
        match &self.database {
            Database::Sqlite(p) => {
                let conn = rusqlite::Connection::open(p).unwrap();
                let mut stmt = conn
                    .prepare(
                        "SELECT topic, received_ms, reason, payload FROM rejected ORDER BY rowid",
                    )
                    .unwrap();
                stmt.query_map([], |r| {
                    Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?, r.get(3)?))
                })
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
            }
            Database::Postgres(u) => ::postgres::Client::connect(u, ::postgres::NoTls)
                .unwrap()
                .query(
                    "SELECT topic, received_ms, reason, payload FROM rejected ORDER BY id",
                    &[],
                )
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get::<_, i64>(1) as u64, r.get(2), r.get(3)))
                .collect(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Records.

fn id(s: &str) -> TerminalId {
    s.parse().unwrap()
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

fn site<'a>(rows: &'a [SiteRow], terminal: &str) -> &'a SiteRow {
    rows.iter()
        .find(|r| r.terminal == terminal)
        .unwrap_or_else(|| panic!("{terminal} not in {rows:#?}"))
}

fn metric(row: &SiteRow, name: &str) -> Option<f64> {
    row.metrics
        .iter()
        .find(|(m, _)| &**m == name)
        .map(|(_, v)| *v)
}

/// (seq, ts_ms, metric, exact) of each stored sample.
fn history(
    store: &dyn Store,
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

/// A group's result with its watermarks in terminal order (backends may list them in any).
fn sorted(mut a: Applied) -> Applied {
    a.watermarks.sort_by_key(|(t, _)| t.to_string());
    a
}
