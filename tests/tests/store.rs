//! The history store's behaviour, each case run on both backends: the embedded SQLite store
//! and the PostgreSQL store on a throwaway cluster ([`Postgres::shared`], a fresh database per
//! case). Both must give the same results for the same records: stored and duplicate counts,
//! watermarks, the fleet view, history and events. Then what only PostgreSQL has: several
//! connections storing at once, day partitions and retention, migrations.
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

// ---------------------------------------------------------------------------------------------
// The same behaviour on both backends.

#[test]
fn a_replacement_box_numbering_from_its_start_is_stored_and_confirmed_without_a_loss() {
    on_both(|db| {
        let mut store = db.open();
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
        let b = T0 + DAY;
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
        assert_eq!(db.count(A, Stream::Telemetry), 5, "nothing lost");
        let seqs: Vec<u64> = history(&*store, A, None, None)
            .iter()
            .map(|s| s.0)
            .collect();
        assert_eq!(seqs, [1, 2, 3, b, b + 1]);
        // The seqs below the start are no reported loss.
        assert_eq!(db.scalar("SELECT count(*) FROM dropped"), 0);
        // And a second replacement later passes the first one's numbers too.
        let c = b + DAY;
        let from = |stream| Event::NumberingFrom { stream, first: c };
        let applied = store
            .apply(&[
                event_of(A, c, c, from(Stream::Events)),
                event_of(A, c + 1, c, from(Stream::Telemetry)),
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
    });
}

#[test]
fn a_new_numbering_is_told_of_a_predecessors_seqs_beyond_it_and_never_of_its_own_announcements() {
    on_both(|db| {
        let mut store = db.open();
        // A box's two announcements of a numbering from `first`: the events' at `first`, then
        // the telemetry's (the only records of a held numbering).
        let announce = |terminal, first| {
            let from = |stream| Event::NumberingFrom { stream, first };
            [
                event_of(terminal, first, T0 + first, from(Stream::Events)),
                event_of(terminal, first + 1, T0 + first, from(Stream::Telemetry)),
            ]
        };
        let clashes = |a: Applied| a.numbering_clashes;
        let predecessor = |store: &mut Box<dyn Store>, terminal, telemetry, events| {
            let records: Vec<Record> = (1..=telemetry)
                .map(|q| temp(terminal, q, T0 + q, "1.00"))
                .chain((1..=events).map(|q| event(terminal, q, T0 + q)))
                .collect();
            store.apply(&records).unwrap();
        };

        // A box numbering from its clock above everything held: its announcements, and every
        // copy of them that comes again (resent while central was busy), clash with nothing.
        predecessor(&mut store, A, 3, 2);
        for _ in 0..3 {
            assert_eq!(clashes(store.apply(&announce(A, 1_000)).unwrap()), []);
        }

        // A box whose clock is behind: central holds a predecessor's seqs beyond the
        // numbering, and says so each time the announcements come (the box may have missed
        // the first answer).
        const B: &str = "130102001002-main";
        predecessor(&mut store, B, 10, 5);
        let held = vec![(
            id(B),
            Watermarks {
                telemetry: 10,
                events: 5,
            },
        )];
        for _ in 0..2 {
            assert_eq!(clashes(store.apply(&announce(B, 3)).unwrap()), held);
        }

        // Seqs a predecessor used under the announcements themselves, and none beyond them,
        // are no clash: the box's watermark reaches its hold and nothing it sends later is
        // taken for a duplicate.
        const C: &str = "130102001003-main";
        predecessor(&mut store, C, 2, 4);
        let applied = store.apply(&announce(C, 3)).unwrap();
        assert_eq!(applied.numbering_clashes, []);
        assert_eq!(
            marks(&applied, C),
            Some(Watermarks {
                telemetry: 2,
                events: 4,
            })
        );
    });
}

#[test]
fn a_reported_drop_is_passed_by_the_watermark_and_a_late_copy_of_a_dropped_seq_is_still_stored() {
    on_both(|db| {
        let mut store = db.open();
        let applied = store
            .apply(&[temp(A, 1, T0, "1.00"), temp(A, 2, T0 + 1, "2.00")])
            .unwrap();
        assert_eq!(marks(&applied, A).unwrap().telemetry, 2);
        // 6 arrives; 3..=5 are missing: the watermark waits.
        let applied = store.apply(&[temp(A, 6, T0 + 6, "6.00")]).unwrap();
        assert_eq!(marks(&applied, A).unwrap().telemetry, 2);
        // The box reports it dropped 3..=4 (its outbox overflowed): passed, waiting for 5.
        let drop = |first, last| Event::Dropped {
            stream: Stream::Telemetry,
            first,
            last,
        };
        let applied = store.apply(&[event_of(A, 1, T0, drop(3, 4))]).unwrap();
        assert_eq!(
            marks(&applied, A),
            Some(Watermarks {
                telemetry: 4,
                events: 1
            })
        );
        // A wider report of the same start widens it and passes 5 and 6.
        let applied = store.apply(&[event_of(A, 2, T0, drop(3, 5))]).unwrap();
        assert_eq!(
            marks(&applied, A),
            Some(Watermarks {
                telemetry: 6,
                events: 2
            })
        );
        // A late copy of a dropped seq is kept (it is data), the watermark stays.
        let applied = store.apply(&[temp(A, 4, T0 + 4, "4.00")]).unwrap();
        assert_eq!(counts(&applied), (1, 0, 1));
        assert_eq!(marks(&applied, A).unwrap().telemetry, 6);
        // A backwards report (first > last) is ignored.
        let applied = store.apply(&[event_of(A, 3, T0, drop(9, 7))]).unwrap();
        assert_eq!(counts(&applied), (1, 0, 0));
        assert_eq!(marks(&applied, A).unwrap().telemetry, 6);
        assert_eq!(db.scalar("SELECT count(*) FROM dropped"), 1);
        assert_eq!(db.scalar("SELECT max(last) FROM dropped"), 5);
        assert_eq!(db.count(A, Stream::Telemetry), 4);
    });
}

#[test]
fn the_watermark_passes_long_runs_and_waits_at_the_first_gap_however_the_seqs_arrive() {
    on_both(|db| {
        let mut store = db.open();
        let run = |seqs: std::ops::RangeInclusive<u64>| -> Vec<Record> {
            seqs.map(|q| temp(A, q, T0 + q, "1.00")).collect()
        };
        // 2..=300 first: nothing to confirm without 1.
        let a = store.apply(&run(2..=300)).unwrap();
        assert_eq!(marks(&a, A).unwrap().telemetry, 0);
        // 1 alone passes the whole run at once.
        let a = store.apply(&run(1..=1)).unwrap();
        assert_eq!(marks(&a, A).unwrap().telemetry, 300);
        // A run of 5,000 in one group, newest first, with 4,000 missing: stops before it.
        let mut group = run(301..=5_300);
        group.retain(|r| !matches!(r, Record::Telemetry { envelope, .. } if envelope.seq == 4_000));
        group.reverse();
        let a = store.apply(&group).unwrap();
        assert_eq!(marks(&a, A).unwrap().telemetry, 3_999);
        let a = store.apply(&run(4_000..=4_000)).unwrap();
        assert_eq!(marks(&a, A).unwrap().telemetry, 5_300);
        // Short runs group after group.
        for g in 0..5 {
            let first = 5_301 + g * 3;
            let a = store.apply(&run(first..=first + 2)).unwrap();
            assert_eq!(marks(&a, A).unwrap().telemetry, first + 2);
        }
    });
}

#[test]
fn a_run_right_after_the_watermark_joins_seqs_stored_before_and_meets_drops_and_numbering_starts_alike_on_both_backends()
 {
    let got = on_both(|db| {
        let mut store = db.open();
        let mut telemetry = |records: &[Record]| {
            let a = store.apply(records).unwrap();
            marks(&a, A).unwrap().telemetry
        };
        let drop = |first, last| Event::Dropped {
            stream: Stream::Telemetry,
            first,
            last,
        };
        let from = |first| Event::NumberingFrom {
            stream: Stream::Telemetry,
            first,
        };
        let mut seen = vec![telemetry(&[temp(A, 1, T0 + 1, "1.00")])];
        // 3 and 4 wait for 2; 2 alone passes them.
        seen.push(telemetry(&[
            temp(A, 3, T0 + 3, "1.00"),
            temp(A, 4, T0 + 4, "1.00"),
        ]));
        seen.push(telemetry(&[temp(A, 2, T0 + 2, "1.00")]));
        // 6 and 8 wait; a group of 5 and 7 fills both gaps.
        seen.push(telemetry(&[
            temp(A, 8, T0 + 8, "1.00"),
            temp(A, 6, T0 + 6, "1.00"),
        ]));
        seen.push(telemetry(&[
            temp(A, 7, T0 + 7, "1.00"),
            temp(A, 5, T0 + 5, "1.00"),
        ]));
        // A drop of 10..=11 and 12 wait for 9; 9 passes the drop and 12.
        seen.push(telemetry(&[event_of(A, 1, T0, drop(10, 11))]));
        seen.push(telemetry(&[temp(A, 12, T0 + 12, "1.00")]));
        seen.push(telemetry(&[temp(A, 9, T0 + 9, "1.00")]));
        // The next seq with a drop ahead of it in the same group, then with a numbering start.
        seen.push(telemetry(&[
            temp(A, 13, T0 + 13, "1.00"),
            event_of(A, 2, T0, drop(14, 20)),
        ]));
        seen.push(telemetry(&[
            temp(A, 21, T0 + 21, "1.00"),
            event_of(A, 3, T0, from(50)),
        ]));
        // And plain runs after all that, one alone and one of three.
        seen.push(telemetry(&[temp(A, 50, T0 + 50, "1.00")]));
        seen.push(telemetry(&[
            temp(A, 53, T0 + 53, "1.00"),
            temp(A, 51, T0 + 51, "1.00"),
            temp(A, 52, T0 + 52, "1.00"),
        ]));
        // A redelivery moves nothing.
        seen.push(telemetry(&[temp(A, 52, T0 + 52, "1.00")]));
        seen
    });
    assert_eq!(got[0], [1, 1, 4, 4, 8, 8, 8, 12, 20, 49, 50, 53, 53]);
    assert_eq!(got[0], got[1], "SQLite and PostgreSQL");
}

/// What PostgreSQL keeps as runs of seqs, SQLite as one row a message: duplicates inside a
/// stored run and at either end of it, new seqs right before, right after, between and joining
/// two runs, copies of one seq in one group, counted and confirmed alike.
#[test]
fn a_copy_inside_or_at_the_ends_of_a_stored_run_is_a_duplicate_and_new_seqs_join_runs_alike_on_both_backends()
 {
    let got = on_both(|db| {
        let mut store = db.open();
        let mut apply = |seqs: &[u64]| {
            let group: Vec<Record> = seqs.iter().map(|q| temp(A, *q, T0 + q, "1.00")).collect();
            let a = store.apply(&group).unwrap();
            (a.stored, a.duplicates, marks(&a, A).unwrap().telemetry)
        };
        let got = vec![
            // Runs 1..=5, 10..=12 and 20.
            apply(&[1, 2, 3, 4, 5, 10, 11, 12, 20]),
            // Both ends and the inside of each run, twice in one group.
            apply(&[1, 5, 3, 10, 12, 11, 20, 20, 1]),
            // Right after the first run, right before the second, alone between, and a copy.
            apply(&[6, 9, 15, 15]),
            // 7 and 8 join the first two runs; 13, 14 and 16..=19 join the rest, in reverse.
            apply(&[8, 7]),
            apply(&[19, 18, 17, 16, 14, 13]),
            // Everything again: all duplicates.
            apply(&(1..=20).collect::<Vec<_>>()),
            apply(&[21, 20, 22]),
        ];
        assert_eq!(db.count(A, Stream::Telemetry), 22, "{}", db.name);
        got
    });
    assert_eq!(
        got[0],
        [
            (9, 0, 5),
            (0, 9, 5),
            (3, 1, 6),
            (2, 0, 12),
            (6, 0, 20),
            (0, 20, 20),
            (2, 1, 22),
        ]
    );
    assert_eq!(got[0], got[1], "SQLite and PostgreSQL");
}

#[test]
fn the_same_message_twice_in_one_group_is_stored_once() {
    on_both(|db| {
        let mut store = db.open();
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
        assert_eq!(db.count(A, Stream::Telemetry), 2);
        let seqs: Vec<u64> = history(&*store, A, None, None)
            .iter()
            .map(|s| s.0)
            .collect();
        assert_eq!(seqs, [1, 1, 2]);
        // The first copy in a group is the one stored.
        let a = temp(A, 3, T0 + 120_000, "30.00");
        let b = temp(A, 3, T0 + 120_000, "99.99");
        assert_eq!(counts(&store.apply(&[a, b]).unwrap()), (1, 1, 1));
        let last = history(&*store, A, None, Some(T0 + 120_000));
        assert_eq!(last, [(3, T0 + 120_000, "env.temp".into(), "30.00".into())]);
    });
}

#[test]
fn the_same_message_in_two_groups_is_stored_once_and_counted_as_a_duplicate() {
    on_both(|db| {
        let mut store = db.open();
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
        assert_eq!(db.count(A, Stream::Telemetry), 1);
        assert_eq!(history(&*store, A, None, None).len(), 2);

        let ev = event(A, 1, T0);
        assert_eq!(store.apply(std::slice::from_ref(&ev)).unwrap().stored, 1);
        assert_eq!(counts(&store.apply(&[ev]).unwrap()), (0, 1, 0));
        assert_eq!(db.count(A, Stream::Events), 1);
    });
}

#[test]
fn redelivered_overlapping_groups_count_stored_and_duplicates_exactly_and_alike_on_both_backends() {
    // Groups of a few terminals' seqs, each resent in part with the next: the same sequence
    // of groups on both backends gives the same results, group by group.
    let terminals = ["130102001001-main", "130102001002-main", "130201001001-aux"];
    let mut groups: Vec<Vec<Record>> = Vec::new();
    let mut x: u64 = 7;
    for g in 0..40u64 {
        let mut group = Vec::new();
        for _ in 0..25 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let t = terminals[(x >> 33) as usize % terminals.len()];
            let seq = 1 + (x >> 40) % (g * 5 + 10);
            let at = T0 + seq * 60_000;
            if (x >> 20).is_multiple_of(5) {
                group.push(event(t, seq, at));
            } else {
                group.push(temp(t, seq, at, &format!("{}.{:02}", seq % 40, x % 100)));
            }
        }
        groups.push(group);
    }
    let results = on_both(|db| {
        let mut store = db.open();
        let applied: Vec<Applied> = groups
            .iter()
            .map(|g| sorted(store.apply(g).unwrap()))
            .collect();
        let stored: u64 = applied.iter().map(|a| a.stored).sum();
        let duplicates: u64 = applied.iter().map(|a| a.duplicates).sum();
        let mut unique = std::collections::BTreeSet::new();
        for r in groups.iter().flatten() {
            let (t, s, q) = match r {
                Record::Telemetry {
                    terminal, envelope, ..
                } => (terminal.to_string(), 0, envelope.seq),
                Record::Event {
                    terminal, envelope, ..
                } => (terminal.to_string(), 1, envelope.seq),
                _ => unreachable!(),
            };
            unique.insert((t, s, q));
        }
        assert_eq!(stored, unique.len() as u64);
        assert_eq!(stored + duplicates, 40 * 25);
        let in_store: u64 = terminals
            .iter()
            .map(|t| db.count(t, Stream::Telemetry) + db.count(t, Stream::Events))
            .sum();
        assert_eq!(in_store, stored);
        applied
    });
    assert_eq!(results[0], results[1], "SQLite and PostgreSQL differ");
}

#[test]
fn telemetry_and_events_with_the_same_seq_are_different_streams() {
    on_both(|db| {
        let mut store = db.open();
        let records = [temp(A, 1, T0, "23.45"), event(A, 1, T0)];
        assert_eq!(counts(&store.apply(&records).unwrap()), (2, 0, 1));
        assert_eq!(db.count(A, Stream::Telemetry), 1);
        assert_eq!(db.count(A, Stream::Events), 1);
        // Each is still de-duplicated within its own stream.
        assert_eq!(counts(&store.apply(&records).unwrap()), (0, 2, 0));
        // And the same seq on another terminal is another message.
        let other = "130102001002-main";
        assert_eq!(
            store.apply(&[temp(other, 1, T0, "20.00")]).unwrap().stored,
            1
        );
        assert_eq!(db.count(other, Stream::Telemetry), 1);
        assert_eq!(db.count(A, Stream::Telemetry), 1);
    });
}

#[test]
fn latest_keeps_the_newest_value_when_an_older_batch_arrives_after_a_newer_one() {
    on_both(|db| {
        let mut store = db.open();
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
    });
}

#[test]
fn latest_keeps_the_newest_value_when_both_batches_arrive_in_one_group_newest_first() {
    on_both(|db| {
        let mut store = db.open();
        store
            .apply(&[temp(A, 2, T0 + 60_000, "25.00"), temp(A, 1, T0, "20.00")])
            .unwrap();
        let rows = store.sites(None).unwrap();
        assert_eq!(metric(site(&rows, A), "env.temp"), Some(25.0));
    });
}

#[test]
fn presence_sets_online_and_an_offline_will_does_not_move_last_seen() {
    on_both(|db| {
        let mut store = db.open();
        let row = |store: &dyn Store| site(&store.sites(None).unwrap(), A).clone();

        store.apply(&[presence(A, true, T0 + 1_000)]).unwrap();
        let r = row(&*store);
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
        assert_eq!(row(&*store).last_seen_ms, Some(T0 + 5_000));

        // The broker publishes the last will later; it says nothing about when we last heard.
        store.apply(&[presence(A, false, T0 + 9_000)]).unwrap();
        let r = row(&*store);
        assert!(!r.online);
        assert_eq!(r.last_seen_ms, Some(T0 + 5_000));
        // Telemetry does not change what presence said, nor its version.
        store.apply(&[temp(A, 2, T0, "1.00")]).unwrap();
        let r = row(&*store);
        assert!(!r.online);
        assert_eq!(r.version.as_deref(), Some("0.1.0"));

        store.apply(&[presence(A, true, T0 + 10_000)]).unwrap();
        let r = row(&*store);
        assert!(r.online);
        assert_eq!(r.last_seen_ms, Some(T0 + 10_000));
        // Within one group the last presence wins.
        store
            .apply(&[
                presence(A, false, T0 + 11_000),
                presence(A, true, T0 + 12_000),
            ])
            .unwrap();
        assert!(row(&*store).online);
        store
            .apply(&[
                presence(A, true, T0 + 13_000),
                presence(A, false, T0 + 14_000),
            ])
            .unwrap();
        let r = row(&*store);
        assert!(!r.online);
        assert_eq!(r.last_seen_ms, Some(T0 + 13_000));
    });
}

#[test]
fn a_terminal_heard_from_after_its_will_is_online_though_its_online_presence_was_lost() {
    on_both(|db| {
        let mut store = db.open();
        let online = |store: &dyn Store| site(&store.sites(None).unwrap(), A).online;
        store.apply(&[presence(A, true, T0)]).unwrap();
        store.apply(&[presence(A, false, T0 + 5_000)]).unwrap();
        assert!(!online(&*store));
        // Data it sent before the will, stored after it: still offline.
        let before = |seq| {
            telemetry(
                A,
                seq,
                T0,
                T0 + 4_000,
                vec![sample(0, Metric::AirTemp, "1")],
            )
        };
        store.apply(&[before(1)]).unwrap();
        assert!(!online(&*store));
        // It reconnected; the broker dropped its online presence; its data arrives.
        let after = |seq, at| telemetry(A, seq, T0, at, vec![sample(0, Metric::AirTemp, "2")]);
        store.apply(&[after(2, T0 + 8_000)]).unwrap();
        assert!(online(&*store));
        // Within one group: a will, then data received after it (online), or before (not).
        store
            .apply(&[presence(A, false, T0 + 9_000), after(3, T0 + 9_500)])
            .unwrap();
        assert!(online(&*store));
        store
            .apply(&[after(4, T0 + 9_800), presence(A, false, T0 + 10_000)])
            .unwrap();
        assert!(!online(&*store));
        // A resent copy (a duplicate) received after the will counts: the box sent it again.
        store.apply(&[after(4, T0 + 12_000)]).unwrap();
        assert!(online(&*store));
    });
}

#[test]
fn a_terminal_first_heard_of_through_its_will_is_offline_and_never_seen() {
    on_both(|db| {
        let mut store = db.open();
        store.apply(&[presence(A, false, T0)]).unwrap();
        let rows = store.sites(None).unwrap();
        let r = site(&rows, A);
        assert!(!r.online);
        assert_eq!(r.last_seen_ms, None);
        // One first heard of through its data is online (its presence was lost), with no
        // version yet.
        store
            .apply(&[temp("130102001002-main", 1, T0, "1.00")])
            .unwrap();
        let rows = store.sites(None).unwrap();
        let r = site(&rows, "130102001002-main");
        assert!(r.online);
        assert_eq!(r.version, None);
        assert_eq!(r.last_seen_ms, Some(T0));
    });
}

#[test]
fn last_seen_is_the_latest_received_time_whatever_the_arrival_order() {
    on_both(|db| {
        let mut store = db.open();
        let at = |seq: u64, received: u64| {
            telemetry(
                A,
                seq,
                T0,
                received,
                vec![sample(0, Metric::AirTemp, "23.45")],
            )
        };
        let seen = |store: &dyn Store| site(&store.sites(None).unwrap(), A).last_seen_ms;
        // Within one group.
        store
            .apply(&[
                at(1, T0 + 7_000),
                at(2, T0 + 6_000),
                event(A, 1, T0 + 2_000),
            ])
            .unwrap();
        assert_eq!(seen(&*store), Some(T0 + 7_000));
        // Across groups: an earlier reception applied later does not go back in time.
        store.apply(&[at(3, T0 + 3_000)]).unwrap();
        assert_eq!(seen(&*store), Some(T0 + 7_000));
        // A redelivery is still news that the terminal is there.
        store.apply(&[at(1, T0 + 8_000)]).unwrap();
        assert_eq!(seen(&*store), Some(T0 + 8_000));
    });
}

#[test]
fn sites_filters_by_region_prefix_and_orders_by_terminal() {
    on_both(|db| {
        let mut store = db.open();
        let terminals = [
            "140105001001-main",
            "130201001001-main",
            "130103002001-main",
            "130102001002-main",
            "130102001001-main",
            "130102001001-aux",
            "130199001001-main",
            "139901001001-main",
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
                "130199001001-main",
                "130201001001-main",
                "139901001001-main",
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
                "130199001001-main",
                "130201001001-main",
                "139901001001-main",
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
                "130199001001-main",
            ]
        );
        assert_eq!(
            select(Some("130102")),
            ["130102001001-aux", "130102001001-main", "130102001002-main",]
        );
        assert_eq!(select(Some("130103")), ["130103002001-main"]);
        assert_eq!(select(Some("130199")), ["130199001001-main"]);
        assert_eq!(select(Some("1399")), ["139901001001-main"]);
        assert_eq!(
            select(Some("130102001001")),
            ["130102001001-aux", "130102001001-main"]
        );
        assert_eq!(select(Some("130102001002")), ["130102001002-main"]);
        assert!(select(Some("15")).is_empty());
        assert!(select(Some("130104")).is_empty());
    });
}

#[test]
fn sites_gives_each_terminal_its_newest_values_in_metric_order_and_none_to_a_silent_one() {
    let views = on_both(|db| {
        let mut store = db.open();
        let b = "130102001002-main";
        store
            .apply(&[
                presence("130102001003-main", true, T0),
                telemetry(
                    A,
                    1,
                    T0,
                    T0,
                    vec![
                        sample(0, Metric::Humidity, "55.00"),
                        sample(0, Metric::AirTemp, "20.50"),
                        sample(0, Metric::CpuLoad, "0.42"),
                    ],
                ),
                temp(b, 1, T0, "18.25"),
                presence(b, true, T0 + 1),
            ])
            .unwrap();
        let rows = store.sites(None).unwrap();
        assert_eq!(
            site(&rows, A).metrics,
            [
                ("cpu.load".to_owned(), 0.42),
                ("env.humidity".to_owned(), 55.0),
                ("env.temp".to_owned(), 20.5),
            ]
        );
        assert_eq!(site(&rows, b).metrics, [("env.temp".to_owned(), 18.25)]);
        assert!(site(&rows, "130102001003-main").metrics.is_empty());
        let region: Region = "130102".parse().unwrap();
        assert_eq!(store.sites(Some(&region)).unwrap(), rows);
        rows
    });
    assert_eq!(views[0], views[1], "SQLite and PostgreSQL differ");
}

#[test]
fn telemetry_returns_samples_oldest_first_with_their_own_timestamps_and_exact_text() {
    on_both(|db| {
        let mut store = db.open();
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
            history(&*store, A, None, None),
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
            history(&*store, A, Some(&Metric::AirTemp), None),
            [
                row(1, T0, "env.temp", "23.45"),
                row(1, T0 + 30_000, "env.temp", "23.40"),
                row(2, T0 + 60_000, "env.temp", "24.10"),
            ]
        );
        // `since` is inclusive and applies to each sample's own time, not its batch's.
        assert_eq!(
            history(&*store, A, None, Some(T0 + 30_000)),
            [
                row(1, T0 + 30_000, "env.temp", "23.40"),
                row(2, T0 + 60_000, "env.temp", "24.10"),
                row(2, T0 + 60_500, "env.humidity", "60.5"),
            ]
        );
        assert_eq!(
            history(&*store, A, Some(&Metric::Humidity), Some(T0 + 101)),
            [row(2, T0 + 60_500, "env.humidity", "60.5")]
        );
        assert!(history(&*store, A, None, Some(T0 + 60_501)).is_empty());
        assert!(history(&*store, A, Some(&Metric::Pm25), None).is_empty());
        assert!(history(&*store, "130102001003-main", None, None).is_empty());
    });
}

#[test]
fn events_of_a_region_since_a_time_are_the_same_on_both_backends() {
    let all = on_both(|db| {
        let mut store = db.open();
        store
            .apply(&[
                event("130102001001-main", 2, T0 + 2_000),
                event("130102001001-main", 1, T0 + 1_000),
                event("130102001002-main", 1, T0 + 1_000),
                event("130201001001-main", 1, T0 + 500),
                event("140105001001-main", 1, T0 + 3_000),
                temp("130102001001-main", 1, T0, "1.00"),
            ])
            .unwrap();
        let of = |region: Option<&str>, since: Option<u64>| -> Vec<(String, u64, u64)> {
            let region: Option<Region> = region.map(|r| r.parse().unwrap());
            store
                .events(region.as_ref(), since)
                .unwrap()
                .into_iter()
                .map(|e| (e.terminal, e.seq, e.time_ms))
                .collect()
        };
        let e = |t: &str, seq, at| (t.to_owned(), seq, at);
        assert_eq!(
            of(None, None),
            [
                e("130201001001-main", 1, T0 + 500),
                e("130102001001-main", 1, T0 + 1_000),
                e("130102001002-main", 1, T0 + 1_000),
                e("130102001001-main", 2, T0 + 2_000),
                e("140105001001-main", 1, T0 + 3_000),
            ]
        );
        assert_eq!(
            of(Some("1301"), Some(T0 + 1_000)),
            [
                e("130102001001-main", 1, T0 + 1_000),
                e("130102001002-main", 1, T0 + 1_000),
                e("130102001001-main", 2, T0 + 2_000),
            ]
        );
        assert_eq!(
            of(Some("130102001001"), None),
            [
                e("130102001001-main", 1, T0 + 1_000),
                e("130102001001-main", 2, T0 + 2_000),
            ]
        );
        assert!(of(Some("15"), None).is_empty());
        let events = store.events(None, None).unwrap();
        assert!(matches!(events[0].event, Event::Started { .. }));
        events
    });
    assert_eq!(all[0], all[1], "SQLite and PostgreSQL differ");
}

#[test]
fn a_rejected_record_is_kept_for_inspection() {
    on_both(|db| {
        let mut store = db.open();
        let applied = store.apply(&[rejected(T0 + 42)]).unwrap();
        assert_eq!(counts(&applied), (0, 0, 0));
        assert_eq!(
            db.rejected_rows(),
            [(
                "ct/v1/t/13/01/02/001/001/main/tm".to_owned(),
                T0 + 42,
                "130102001001-main tm: payload version 9, this build reads version 1".to_owned(),
                vec![9, 0xde, 0xad],
            )]
        );
        // Rejected payloads are not de-duplicated: each arrival is evidence.
        store.apply(&[rejected(T0 + 43)]).unwrap();
        assert_eq!(db.rejected_rows().len(), 2);
        // And they do not make up a terminal.
        assert!(store.sites(None).unwrap().is_empty());
    });
}

#[test]
fn reopening_the_same_store_keeps_everything() {
    on_both(|db| {
        let (sites_before, history_before) = {
            let mut store = db.open();
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

        let mut store = db.open();
        assert_eq!(store.sites(None).unwrap(), sites_before);
        assert_eq!(store.telemetry(&id(A), None, None).unwrap(), history_before);
        assert_eq!(db.count(A, Stream::Telemetry), 2);
        assert_eq!(db.count(A, Stream::Events), 1);
        assert_eq!(db.rejected_rows().len(), 1);
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
        // And the read-only view sees the same.
        let read = db.database.open_read_only().unwrap();
        assert_eq!(read.sites(None).unwrap(), store.sites(None).unwrap());
    });
}

#[test]
fn names_imported_and_given_to_terminals_are_read_back_and_bump_the_version() {
    use cuntong_core::site::SiteCode;
    let code: SiteCode = "130102001001".parse().unwrap();
    let county: SiteCode = "130102000000".parse().unwrap();
    let rows = [
        (code, "旧名".to_owned()),
        (county, "长安区".to_owned()),
        (code, "东村".to_owned()),
    ];
    // SQLite.
    let dir = tempfile::tempdir().unwrap();
    let mut lite = SqliteStore::open(&dir.path().join("central.db")).unwrap();
    // PostgreSQL.
    let mut pg = PgStore::open(&Postgres::shared().fresh_database()).unwrap();
    assert_eq!(lite.names_version().unwrap(), 0);
    assert_eq!(pg.names_version().unwrap(), 0);
    assert_eq!(lite.import_names(&rows).unwrap(), 3);
    assert_eq!(pg.import_names(&rows).unwrap(), 3);
    lite.set_terminal_name(&id(A), "村委会").unwrap();
    pg.set_terminal_name(&id(A), "村委会").unwrap();
    assert_eq!(lite.names_version().unwrap(), 2);
    assert_eq!(pg.names_version().unwrap(), 2);
    for names in [lite.names(None).unwrap(), pg.names(None).unwrap()] {
        assert_eq!(names.lookup(&code), Some("东村"));
        assert_eq!(names.lookup(&county), Some("长安区"));
        assert_eq!(names.terminal(&id(A)), "村委会");
        assert_eq!(names.path(&code), lite.names(None).unwrap().path(&code));
    }
}

#[test]
fn a_regions_reader_gets_the_names_in_it_and_above_it_and_no_others() {
    use cuntong_core::site::{Region, SiteCode};
    let code = |s: &str| s.parse::<SiteCode>().unwrap();
    let (village, town, county) = (
        code("130102001001"),
        code("130102001000"),
        code("130102000000"),
    );
    let (next_town, elsewhere) = (code("130102002001"), code("440106001001"));
    let rows: Vec<(SiteCode, String)> = [
        (village, "东村"),
        (town, "建北街道"),
        (county, "长安区"),
        (next_town, "西村"),
        (elsewhere, "南村"),
    ]
    .into_iter()
    .map(|(c, n)| (c, n.to_owned()))
    .collect();
    let other = "440106001001-main";
    let dir = tempfile::tempdir().unwrap();
    let mut lite = SqliteStore::open(&dir.path().join("central.db")).unwrap();
    let mut pg = PgStore::open(&Postgres::shared().fresh_database()).unwrap();
    for store in [&mut lite as &mut dyn Store, &mut pg] {
        store.import_names(&rows).unwrap();
        store.set_terminal_name(&id(A), "村委会").unwrap();
        store.set_terminal_name(&id(other), "南村委").unwrap();
        let scope = "130102001".parse::<Region>().unwrap();
        let names = store.names(Some(&scope)).unwrap();
        assert_eq!(names.lookup(&village), Some("东村"));
        assert_eq!(names.lookup(&town), Some("建北街道"));
        assert_eq!(
            names.lookup(&county),
            Some("长安区"),
            "an ancestor's imported name"
        );
        assert_eq!(names.lookup(&next_town), None, "a village of another town");
        assert_eq!(names.lookup(&elsewhere), None);
        assert_eq!(names.terminal(&id(A)), "村委会");
        assert_eq!(names.terminal(&id(other)), "(unnamed)");
        // The whole province and the whole country.
        let province = store.names(Some(&"13".parse::<Region>().unwrap())).unwrap();
        assert_eq!(province.lookup(&next_town), Some("西村"));
        assert_eq!(province.lookup(&elsewhere), None);
        let all = store.names(None).unwrap();
        assert_eq!(all.lookup(&elsewhere), Some("南村"));
        assert_eq!(all.terminal(&id(other)), "南村委");
    }
}

#[test]
fn reading_a_store_central_never_set_up_names_where_it_looked_and_creates_nothing() {
    // SQLite: a missing file, or an empty one.
    let db = sqlite();
    let err = db.database.open_read_only().err().unwrap();
    assert!(matches!(err, StoreError::Missing { .. }), "{err:?}");
    assert!(
        err.to_string().contains("no store at") && err.to_string().contains("central.db"),
        "error should say there is no store and name the file: {err}"
    );
    assert!(!db.path().exists());
    // A file central never set up (here: empty) is no store either, and stays untouched.
    std::fs::write(db.path(), b"").unwrap();
    let err = db.database.open_read_only().err().unwrap();
    assert!(matches!(err, StoreError::Missing { .. }), "{err:?}");
    assert_eq!(std::fs::metadata(db.path()).unwrap().len(), 0);
    // A directory is not a store.
    let dir = Database::Sqlite(db.path().parent().unwrap().to_owned());
    let err = dir.open_read_only().err().unwrap();
    assert!(matches!(err, StoreError::Missing { .. }), "{err:?}");
    // PostgreSQL: an empty database stays empty.
    let db = postgres();
    let err = db.database.open_read_only().err().unwrap();
    assert!(matches!(err, StoreError::Missing { .. }), "{err:?}");
    assert!(err.to_string().contains(db.url()), "{err}");
    assert_eq!(
        db.scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"),
        0
    );
    // And a read-only store refuses to write.
    drop(db.open());
    let mut read = db.database.open_read_only().unwrap();
    let err = read.apply(&[presence(A, true, T0)]).unwrap_err();
    assert!(err.to_string().contains("read-only"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// What the backends are chosen by.

#[test]
fn a_postgres_url_is_postgresql_and_anything_else_a_file_and_no_password_is_ever_shown() {
    let db: Database = "postgres://cuntong:s3cret@db.example:5432/central"
        .parse()
        .unwrap();
    assert!(matches!(&db, Database::Postgres(u) if u.contains("s3cret")));
    assert_eq!(
        db.to_string(),
        "postgres://cuntong:***@db.example:5432/central"
    );
    assert!(!format!("{db:?}").contains("s3cret"));
    let db: Database = "postgresql://u@h/d?password=hunter2".parse().unwrap();
    assert!(matches!(db, Database::Postgres(_)));
    assert!(!db.to_string().contains("hunter2"), "{db}");
    let db: Database = "/var/lib/cuntong/central.db".parse().unwrap();
    assert_eq!(db, Database::Sqlite("/var/lib/cuntong/central.db".into()));
    let db: Database = "postgres.db".parse().unwrap();
    assert!(matches!(db, Database::Sqlite(_)));
    // An unreachable server's error names it, without the password.
    let port = cuntong_e2e::free_port();
    let url = format!("postgres://u:s3cret@127.0.0.1:{port}/d");
    let err = url.parse::<Database>().unwrap().open().err().unwrap();
    let text = err.to_string();
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// Several writers at once.

/// Stores each list of seqs of terminal `A` from a connection of its own, all at once, in
/// groups of 50; gives (stored, duplicates, the highest watermark any group confirmed).
fn store_at_once(db: &Db, writers: Vec<Vec<u64>>) -> (u64, u64, u64) {
    let start = std::sync::Arc::new(std::sync::Barrier::new(writers.len()));
    let threads: Vec<_> = writers
        .into_iter()
        .map(|seqs| {
            let mut store = db.open();
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                let (mut stored, mut duplicates, mut best) = (0, 0, 0);
                for chunk in seqs.chunks(50) {
                    let group: Vec<Record> = chunk
                        .iter()
                        .map(|q| temp(A, *q, T0 + q * 1_000, "1.00"))
                        .collect();
                    let a = store.apply(&group).unwrap();
                    stored += a.stored;
                    duplicates += a.duplicates;
                    best = best.max(marks(&a, A).unwrap().telemetry);
                }
                (stored, duplicates, best)
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .fold((0, 0, 0), |acc, r| {
            (acc.0 + r.0, acc.1 + r.1, acc.2.max(r.2))
        })
}

/// The watermark a resend of seq 1 of `A` is answered with: the stored one.
fn stored_watermark(db: &Db) -> u64 {
    let a = db.open().apply(&[temp(A, 1, T0 + 1_000, "1.00")]).unwrap();
    assert_eq!(counts(&a), (0, 1, 0));
    marks(&a, A).unwrap().telemetry
}

/// Two connections (two central instances) store groups of one terminal at the same time:
/// each seq is stored once, duplicates are counted exactly, and the watermark is the
/// contiguous maximum whichever group commits last (a group advances it only after the groups
/// it could not see have committed).
#[test]
fn two_connections_storing_groups_of_one_terminal_at_once_store_every_seq_once_and_confirm_all() {
    const N: u64 = 3_000;
    on_both(|db| {
        drop(db.open());
        // Interleaved: one writer takes the odd seqs, the other the even ones; every group's
        // neighbours are being stored by the other writer at that moment.
        let odd = (1..=N).filter(|q| q % 2 == 1).collect();
        let even = (1..=N).filter(|q| q.is_multiple_of(2)).collect();
        let (stored, duplicates, best) = store_at_once(db, vec![odd, even]);
        assert_eq!((stored, duplicates), (N, 0));
        assert_eq!(best, N, "the last group to commit confirms everything");
        assert_eq!(stored_watermark(db), N);

        // Overlapping, three times: two writers send all of the next N seqs, in opposite
        // orders, and a third every third one.
        for round in 1..=3 {
            let next: Vec<u64> = (round * N + 1..=(round + 1) * N).collect();
            let back = next.iter().rev().copied().collect();
            let thirds: Vec<u64> = next
                .iter()
                .copied()
                .filter(|q| q.is_multiple_of(3))
                .collect();
            let sent = 2 * N + thirds.len() as u64;
            let (stored, duplicates, best) = store_at_once(db, vec![next, back, thirds]);
            assert_eq!(stored, N, "each seq stored once");
            assert_eq!(
                duplicates,
                sent - N,
                "every other copy counted as a duplicate"
            );
            assert_eq!(best, (round + 1) * N);
            assert_eq!(db.count(A, Stream::Telemetry), (round + 1) * N);
            assert_eq!(stored_watermark(db), (round + 1) * N);
        }
    });
}

/// Groups of many terminals from several connections at once, each group's terminals in
/// another order: they take the journal's lock in turn, never deadlock, and every terminal
/// ends confirmed up to its last seq.
#[test]
fn concurrent_groups_of_many_terminals_in_different_orders_all_commit_and_confirm_everything() {
    let db = postgres();
    drop(db.open());
    let terminals: Vec<String> = (1..=40).map(|i| format!("130102001{i:03}-main")).collect();
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let mut store = db.open();
            let terminals = terminals.clone();
            std::thread::spawn(move || {
                let mut confirmed = std::collections::BTreeMap::new();
                for round in 0..30u64 {
                    // Every writer sends every seq of every terminal, in its own order.
                    let mut order = terminals.clone();
                    order.rotate_left(((w * 7 + round) % 40) as usize);
                    if w % 2 == 1 {
                        order.reverse();
                    }
                    let group: Vec<Record> = order
                        .iter()
                        .flat_map(|t| {
                            [
                                temp(t, round + 1, T0 + round * 60_000, "1.00"),
                                presence(t, true, T0 + round),
                            ]
                        })
                        .collect();
                    let a = store.apply(&group).unwrap();
                    for (t, m) in a.watermarks {
                        let e = confirmed.entry(t.to_string()).or_insert(0);
                        *e = m.telemetry.max(*e);
                    }
                }
                confirmed
            })
        })
        .collect();
    let mut best = std::collections::BTreeMap::<String, u64>::new();
    for w in writers {
        for (t, m) in w.join().unwrap() {
            let e = best.entry(t).or_insert(0);
            *e = m.max(*e);
        }
    }
    for t in &terminals {
        assert_eq!(db.count(t, Stream::Telemetry), 30, "{t}");
        assert_eq!(best.get(t), Some(&30), "{t}");
    }
}

/// Another instance in the middle of a group of terminal `A` (holding the ingest journal's
/// lock, its claim that seqs 1..=2 are stored appended, not committed) while this one stores
/// `A`'s seq `seq`: waits until this store's group is blocked on that lock, then kills the
/// other instance's connection (`commit` false) or lets it commit its claim; returns what this
/// store's group gave.
fn against_an_instance_mid_group(db: &Db, seq: u64, commit: bool) -> Applied {
    let mut other = ::postgres::Client::connect(db.url(), ::postgres::NoTls).unwrap();
    other
        .batch_execute("BEGIN; LOCK TABLE ingest_journal IN SHARE ROW EXCLUSIVE MODE")
        .unwrap();
    other
        .execute(
            "INSERT INTO ingest_journal (id, instance, terminals, streams, kinds, firsts, lasts)
             VALUES (nextval('ingest_journal_id'), 42, ARRAY[$1], '{0}', '{0}', '{1}', '{2}')",
            &[&A],
        )
        .unwrap();
    let mut store = db.open();
    let group = std::thread::spawn(move || store.apply(&[temp(A, seq, T0 + seq, "1.00")]).unwrap());
    // Bounded: until this store's group waits for the other's lock.
    let end = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while db.scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE wait_event_type = 'Lock' AND datname = current_database()",
    ) == 0
    {
        assert!(std::time::Instant::now() < end, "the group never waited");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if commit {
        other.batch_execute("COMMIT").unwrap();
    } else {
        // Killed mid-transaction: the server rolls its group back.
        drop(other);
    }
    group.join().unwrap()
}

/// Two instances storing one terminal at once, one of them killed in the middle of its group:
/// nothing of the killed group counts (the other's group, which waited for it, confirms only
/// what is stored); and when it commits instead, the waiting group is rolled back and stored
/// again on top of it, with exact counts either way.
#[test]
fn a_group_waiting_on_an_instance_killed_mid_group_confirms_only_what_is_stored() {
    let db = postgres();
    let mut store = db.open();
    assert_eq!(
        counts(&store.apply(&[temp(A, 1, T0 + 1, "1.00")]).unwrap()),
        (1, 0, 1)
    );

    // Killed: its claim on 2 is gone; 3 is stored, the watermark stays at 1.
    let a = against_an_instance_mid_group(&db, 3, false);
    assert_eq!(counts(&a), (1, 0, 1));
    assert_eq!(marks(&a, A).unwrap().telemetry, 1);
    let a = store.apply(&[temp(A, 2, T0 + 2, "1.00")]).unwrap();
    assert_eq!(counts(&a), (1, 0, 1));
    assert_eq!(marks(&a, A).unwrap().telemetry, 3);
    assert_eq!(db.count(A, Stream::Telemetry), 3);

    // Committed: the waiting group sees the other's runs once it is tried again.
    let db = postgres();
    let mut store = db.open();
    store.apply(&[temp(A, 1, T0 + 1, "1.00")]).unwrap();
    let a = against_an_instance_mid_group(&db, 3, true);
    assert_eq!(counts(&a), (1, 0, 1));
    assert_eq!(marks(&a, A).unwrap().telemetry, 3);
    let a = store.apply(&[temp(A, 2, T0 + 2, "1.00")]).unwrap();
    assert_eq!(counts(&a), (0, 1, 0), "the other instance stored 2");
}

/// Each instance remembers the terminals it stored; what another instance stored since is
/// found out from the journal before a group decides: a resend to the first instance is answered with the
/// watermark as it is now, and a seq the other stored is a duplicate, however the groups go.
#[test]
fn an_instance_that_remembers_a_terminal_answers_with_what_another_instance_stored_since() {
    let db = postgres();
    let (mut x, mut y) = (db.open(), db.open());
    let group = |seqs: std::ops::RangeInclusive<u64>| -> Vec<Record> {
        seqs.map(|q| temp(A, q, T0 + q, "1.00")).collect()
    };
    let a = x.apply(&group(1..=3)).unwrap();
    assert_eq!(marks(&a, A).unwrap().telemetry, 3);
    let a = y.apply(&group(4..=6)).unwrap();
    assert_eq!(
        (counts(&a), marks(&a, A).unwrap().telemetry),
        ((3, 0, 3), 6)
    );
    // A resend only: the watermark as it is now, not as `x` last saw it.
    let a = x.apply(&group(2..=2)).unwrap();
    assert_eq!(
        (counts(&a), marks(&a, A).unwrap().telemetry),
        ((0, 1, 0), 6)
    );
    // `y` stores on; `x` gets a group of old and new seqs.
    y.apply(&group(7..=8)).unwrap();
    let a = x.apply(&group(5..=10)).unwrap();
    assert_eq!(
        (counts(&a), marks(&a, A).unwrap().telemetry),
        ((2, 4, 2), 10)
    );
    let a = y.apply(&group(10..=11)).unwrap();
    assert_eq!(
        (counts(&a), marks(&a, A).unwrap().telemetry),
        ((1, 1, 1), 11)
    );
    assert_eq!(db.count(A, Stream::Telemetry), 11);
}

/// Two instances fold the same terminal's row in turn: the one whose remembered row another
/// wrote since reads it again, so the newest values, presence and watermark merge from both
/// (a value newer by its time wins, whoever stored it), and nothing is left in the journal.
#[test]
fn instances_folding_one_terminal_in_turn_merge_its_newest_values_and_presence() {
    let db = postgres();
    let (mut x, mut y) = (db.open(), db.open());
    x.apply(&[temp(A, 1, T0 + 1_000, "1.00"), presence(A, true, T0)])
        .unwrap();
    x.settle().unwrap();
    y.apply(&[telemetry(
        A,
        2,
        T0 + 3_000,
        T0 + 3_000,
        vec![
            sample(0, Metric::AirTemp, "2.00"),
            sample(0, Metric::Humidity, "50.00"),
        ],
    )])
    .unwrap();
    y.settle().unwrap();
    // `x` remembers the row as it wrote it; `y` wrote it since. An older temperature and a
    // newer humidity.
    x.apply(&[telemetry(
        A,
        3,
        T0 + 2_000,
        T0 + 4_000,
        vec![
            sample(0, Metric::AirTemp, "3.00"),
            sample(2_000, Metric::Humidity, "60.00"),
        ],
    )])
    .unwrap();
    x.settle().unwrap();
    let rows = db.open().sites(None).unwrap();
    let a = site(&rows, A);
    assert_eq!(metric(a, "env.temp"), Some(2.0));
    assert_eq!(metric(a, "env.humidity"), Some(60.0));
    assert!(a.online);
    assert_eq!(a.last_seen_ms, Some(T0 + 4_000));
    assert_eq!(
        db.scalar(&format!(
            "SELECT telemetry_wm FROM terminals WHERE terminal = '{A}'"
        )),
        3
    );
    assert_eq!(db.scalar("SELECT count(*) FROM ingest_journal"), 0);
}

/// While groups keep coming (the writer never idle), what they bring reaches the fleet view
/// others read within about a second, presence alone too: a group a second past the last fold
/// folds.
#[test]
fn groups_that_keep_coming_fold_at_least_every_second_presence_alone_too() {
    let db = postgres();
    let mut writer = db.open();
    writer.apply(&[presence(A, true, T0)]).unwrap();
    writer.settle().unwrap();
    let online = || site(&db.open().sites(None).unwrap(), A).online;
    assert!(online());
    writer.apply(&[presence(A, false, T0 + 1_000)]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    writer.apply(&[presence(A, false, T0 + 2_000)]).unwrap();
    assert!(!online(), "a group a second after the last fold folds");
}

/// Journal rows an instance left unfolded long ago (it stopped mid-way) count for
/// de-duplication as they are, and the next fold of another instance folds them into the rows
/// of their terminals.
#[test]
fn journal_rows_an_instance_left_behind_count_at_once_and_are_folded_by_another() {
    const B: &str = "130102001002-main";
    let db = postgres();
    drop(db.open());
    let mut c = ::postgres::Client::connect(db.url(), ::postgres::NoTls).unwrap();
    c.execute(
        "INSERT INTO ingest_journal
            (id, instance, terminals, streams, kinds, firsts, lasts, written_ms)
         VALUES (nextval('ingest_journal_id'), 42, ARRAY[$1], '{0}', '{0}', '{1}', '{3}', 0)",
        &[&B],
    )
    .unwrap();
    let mut x = db.open();
    // What the journal says is stored is a duplicate, and the watermark passes it.
    let a = x
        .apply(&[
            temp(B, 2, T0 + 2_000, "1.00"),
            temp(B, 4, T0 + 4_000, "1.00"),
        ])
        .unwrap();
    assert_eq!(counts(&a), (1, 1, 1));
    assert_eq!(marks(&a, B).unwrap().telemetry, 4);
    x.settle().unwrap();
    assert_eq!(db.scalar("SELECT count(*) FROM ingest_journal"), 0);
    assert_eq!(
        db.scalar(&format!(
            "SELECT telemetry_wm FROM terminals WHERE terminal = '{B}'"
        )),
        4
    );
    // Read afresh by a new instance: still a duplicate.
    let a = db.open().apply(&[temp(B, 1, T0 + 1_000, "1.00")]).unwrap();
    assert_eq!(
        (counts(&a), marks(&a, B).unwrap().telemetry),
        ((0, 1, 0), 4)
    );
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL: partitions, retention, migrations.

#[test]
fn each_day_is_a_partition_of_its_own_and_retention_drops_only_whole_days_before_the_cut() {
    let db = postgres();
    let mut pg = PgStore::open(db.url()).unwrap();
    // 2025-11-22, -23, -24, and a clock off by a millennium that no day partition takes.
    let day0 = T0 - T0 % DAY;
    pg.apply(&[
        temp(A, 1, day0 + 1_000, "1.00"),
        temp(A, 2, day0 + DAY + 1_000, "2.00"),
        temp(A, 3, day0 + 2 * DAY + 1_000, "3.00"),
        event(A, 1, day0 + DAY - 1),
    ])
    .unwrap();
    pg.apply(&[temp(A, 4, 400_000_000_000_000, "4.00")])
        .unwrap();
    assert_eq!(
        pg.partitions().unwrap(),
        [
            "messages_p20251122",
            "messages_p20251123",
            "messages_p20251124"
        ]
    );
    assert_eq!(db.scalar("SELECT count(*) FROM messages_default"), 1);
    assert_eq!(
        db.scalar("SELECT count(*) FROM messages_p20251123"),
        1,
        "a message is in the partition of its own time"
    );

    // The cut in the middle of the 23rd: only the 22nd goes, the 23rd is kept whole.
    assert_eq!(pg.drop_before(day0 + DAY + DAY / 2).unwrap(), 1);
    assert_eq!(
        pg.partitions().unwrap(),
        ["messages_p20251123", "messages_p20251124"]
    );
    let seqs: Vec<u64> = history(&pg, A, None, None).iter().map(|s| s.0).collect();
    assert_eq!(seqs, [2, 3, 4]);
    assert_eq!(pg.count(A, Stream::Telemetry).unwrap(), 3);
    assert_eq!(pg.count(A, Stream::Events).unwrap(), 0);
    // The runs of seqs stored stay: the kept days still de-duplicate.
    assert_eq!(
        counts(&pg.apply(&[temp(A, 2, day0 + DAY + 1_000, "2.00")]).unwrap()),
        (0, 1, 0)
    );
    // The watermark a terminal was given does not go back.
    let a = pg
        .apply(&[temp(A, 3, day0 + 2 * DAY + 1_000, "3.00")])
        .unwrap();
    assert_eq!(marks(&a, A).unwrap().telemetry, 4);
    // Nothing before the cut any more: dropping again drops nothing.
    assert_eq!(pg.drop_before(day0 + DAY + DAY / 2).unwrap(), 0);
    assert_eq!(pg.drop_before(day0 + 3 * DAY).unwrap(), 2);
    assert!(pg.partitions().unwrap().is_empty());
    assert_eq!(db.scalar("SELECT count(*) FROM messages_default"), 1);
    // A late copy of a dropped day is known as seen: not stored again.
    assert_eq!(
        counts(&pg.apply(&[temp(A, 1, day0 + 1_000, "1.00")]).unwrap()),
        (0, 1, 0)
    );
    assert_eq!(db.scalar("SELECT count(*) FROM messages"), 1);
}

/// Ranges of pages of `messages` without a BRIN summary are read by every query: the store
/// summarises the new ones when it settles (at each fold), so none is left then.
#[test]
fn the_store_summarises_the_new_ranges_of_the_index_of_messages_when_it_settles() {
    let db = postgres();
    let mut store = db.open();
    let unsummarised = || {
        db.scalar(
            "SELECT sum(brin_summarize_new_values(x.indexrelid::regclass))::bigint
             FROM pg_index x WHERE x.indrelid = 'messages_p20251122'::regclass",
        )
    };
    let mut groups = 0..;
    let mut store_groups = |n: usize, store: &mut Box<dyn Store>| {
        for g in groups.by_ref().take(n) {
            let group: Vec<Record> = (1..=40)
                .flat_map(|t| {
                    let terminal = format!("130102001{t:03}-main");
                    (0..20).map(move |k| {
                        let seq = g * 20 + k + 1;
                        temp(&terminal, seq, T0 + seq * 1_000, "21.50")
                    })
                })
                .collect();
            assert_eq!(store.apply(&group).unwrap().stored, 800);
        }
    };
    store_groups(1, &mut store);
    store.settle().unwrap();
    // Rows written around the store leave ranges without a summary, which the check sees (and
    // summarises: the next check counts afresh).
    let write_around = || {
        let mut c = ::postgres::Client::connect(db.url(), ::postgres::NoTls).unwrap();
        c.execute(
            "INSERT INTO messages (terminal, stream, seq, time_ms, received_ms, payload)
             SELECT '130102001999-main', 0, g, $1::bigint + g, $1::bigint + g, '\\x00'::bytea
             FROM generate_series(1, 5000) g",
            &[&(T0 as i64)],
        )
        .unwrap();
    };
    write_around();
    assert!(unsummarised() > 0);
    write_around();
    store_groups(15, &mut store);
    store.settle().unwrap();
    assert_eq!(unsummarised(), 0);
}

#[test]
fn migrations_are_applied_once_and_a_newer_schema_is_refused() {
    let db = postgres();
    drop(db.open());
    drop(db.open());
    let steps = PgStore::SCHEMA_VERSION;
    assert_eq!(db.scalar("SELECT count(*) FROM schema_migrations"), steps);
    assert_eq!(
        db.scalar("SELECT max(version)::bigint FROM schema_migrations"),
        steps
    );
    // Two instances starting at once on an empty database.
    let fresh = postgres();
    let openers: Vec<_> = (0..3)
        .map(|_| {
            let url = fresh.url().to_owned();
            std::thread::spawn(move || PgStore::open(&url).map(drop))
        })
        .collect();
    for o in openers {
        o.join().unwrap().unwrap();
    }
    assert_eq!(
        fresh.scalar("SELECT count(*) FROM schema_migrations"),
        steps
    );
    // A store a newer cuntong migrated is not written by this one.
    let mut c = ::postgres::Client::connect(db.url(), ::postgres::NoTls).unwrap();
    c.batch_execute("INSERT INTO schema_migrations (version) VALUES (99)")
        .unwrap();
    let err = PgStore::open(db.url()).unwrap_err();
    assert!(
        matches!(err, StoreError::NewerSchema { found: 99, .. }),
        "{err}"
    );
    let err = PgStore::open_read_only(db.url()).unwrap_err();
    assert!(
        matches!(err, StoreError::NewerSchema { found: 99, .. }),
        "{err}"
    );
}

/// A store written by the schema before runs (a key a message in `message_keys`, the
/// watermarks in `watermarks`, the newest values in `latest`) keeps everything through the
/// migration: the keys become runs (gaps kept, seqs beyond i64 too), resends of what was
/// stored stay duplicates, and a seq filling a gap moves the watermark over the runs after it.
#[test]
fn a_store_of_message_keys_is_migrated_to_runs_and_keeps_de_duplicating_and_confirming() {
    let db = postgres();
    let mut c = ::postgres::Client::connect(db.url(), ::postgres::NoTls).unwrap();
    c.batch_execute(
        "CREATE TABLE schema_migrations (
            version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .unwrap();
    for (i, step) in PgStore::MIGRATIONS[..3].iter().enumerate() {
        c.batch_execute(step).unwrap();
        c.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&(i as i32 + 1)],
        )
        .unwrap();
    }
    // A: telemetry 1..=3 and 5..=6, confirmed up to 3; events 1; a seq beyond i64 (stored as
    // a negative number). B: events 2 only.
    let day0 = (T0 - T0 % DAY) as i64;
    c.batch_execute(&format!(
        "CREATE TABLE messages_p20251122 PARTITION OF messages
            FOR VALUES FROM ({day0}) TO ({});
         INSERT INTO message_keys (terminal, stream, seq, time_ms) VALUES
            ('{A}', 0, 1, {day0}), ('{A}', 0, 2, {day0}), ('{A}', 0, 3, {day0}),
            ('{A}', 0, 5, {day0}), ('{A}', 0, 6, {day0}), ('{A}', 1, 1, {day0}),
            ('{A}', 0, -9223372036854775808, {day0}), ('130102001002-main', 1, 2, {day0});
         INSERT INTO watermarks VALUES ('{A}', 0, 3), ('{A}', 1, 1);
         INSERT INTO latest VALUES ('{A}', '{{env.temp}}', '{{{day0}}}', '{{21.5}}');
         INSERT INTO terminals (terminal, site, level) VALUES
            ('{A}', '130102001001', 'village'), ('130102001002-main', '130102001002', 'village');",
        day0 + DAY as i64
    ))
    .unwrap();
    drop(c);

    let mut pg = PgStore::open(db.url()).unwrap();
    assert_eq!(
        db.scalar("SELECT count(*) FROM schema_migrations"),
        PgStore::SCHEMA_VERSION
    );
    assert_eq!(
        db.scalar(&format!(
            "SELECT count(*) FROM terminals WHERE terminal = '{A}'
             AND telemetry_runs = '{{-9223372036854775808,-9223372036854775808,1,3,5,6}}'
             AND telemetry_wm = 3 AND events_runs = '{{1,1}}' AND events_wm = 1"
        )),
        1
    );
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM terminals WHERE terminal = '130102001002-main'
             AND events_runs = '{2,2}' AND events_wm = 0 AND telemetry_runs = '{}'"
        ),
        1
    );
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM pg_class
             WHERE relname IN ('message_keys', 'watermarks', 'latest')"
        ),
        0
    );
    let sites = pg.sites(None).unwrap();
    assert_eq!(metric(site(&sites, A), "env.temp"), Some(21.5));
    // Resends of what was stored are duplicates, the one beyond i64 too.
    let resend: Vec<Record> = [1, 3, 5, 6, 1 << 63]
        .iter()
        .map(|q| temp(A, *q, T0 + 1, "1.00"))
        .collect();
    let a = pg.apply(&resend).unwrap();
    assert_eq!(counts(&a), (0, 5, 0));
    assert_eq!(marks(&a, A).unwrap().telemetry, 3);
    // 4 fills the gap: on to 6.
    let a = pg.apply(&[temp(A, 4, T0 + 1, "1.00")]).unwrap();
    assert_eq!(counts(&a), (1, 0, 1));
    assert_eq!(marks(&a, A).unwrap().telemetry, 6);
    assert_eq!(marks(&a, A).unwrap().events, 1);
}

#[test]
fn retention_forgets_whole_days_before_the_cut_and_keeps_what_was_confirmed_on_both_backends() {
    on_both(|db| {
        let mut store = db.open();
        let a = store
            .apply(&[
                temp(A, 1, T0 + 1_000, "1.00"),
                temp(A, 2, T0 + DAY + 1_000, "2.00"),
                temp(A, 3, T0 + 2 * DAY + 1_000, "3.00"),
            ])
            .unwrap();
        assert_eq!(marks(&a, A).unwrap().telemetry, 3);
        // The cut falls inside the second day: only the first goes.
        assert!(
            store.drop_before(T0 + DAY + DAY / 2).unwrap() >= 1,
            "{}",
            db.name
        );
        let seqs: Vec<u64> = history(store.as_ref(), A, None, None)
            .iter()
            .map(|s| s.0)
            .collect();
        assert_eq!(seqs, [2, 3], "{}", db.name);
        // What was confirmed stays confirmed.
        let a = store
            .apply(&[temp(A, 4, T0 + 2 * DAY + 2_000, "4.00")])
            .unwrap();
        assert_eq!(marks(&a, A).unwrap().telemetry, 4, "{}", db.name);
    });
}

/// Takes the host lease for `holder` as soon as the current one (of no time) has expired on the
/// store's clock: asked again until granted, for a second at most.
fn take_once_expired(store: &mut dyn Store, holder: &str) -> u64 {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        if let Some(epoch) = store.take_lease("host", holder, 60_000).unwrap() {
            return epoch;
        }
        assert!(std::time::Instant::now() < end, "the lease never expired");
    }
}

#[test]
fn a_lease_is_held_by_one_holder_renewed_under_its_epoch_and_taken_over_with_a_new_one_once_it_expires()
 {
    // Several instances share a PostgreSQL store.
    let db = postgres();
    let mut a = db.open();
    let mut b = db.open();
    let first = a.take_lease("host", "a", 60_000).unwrap();
    assert!(first.is_some());
    assert_eq!(b.take_lease("host", "b", 60_000).unwrap(), None);
    assert_eq!(a.take_lease("host", "a", 60_000).unwrap(), first, "renewed");
    // A lease of no time expires as soon as the store's clock moves: another takes it, epoch up.
    assert_eq!(a.take_lease("host", "a", 0).unwrap(), first);
    let taken = take_once_expired(b.as_mut(), "b");
    assert_eq!(Some(taken), first.map(|e| e + 1));
    assert_eq!(a.take_lease("host", "a", 60_000).unwrap(), None);
    // Instances, with the roles whose lease they hold now.
    a.instance_seen("a", T0).unwrap();
    b.instance_seen("b", T0).unwrap();
    let (rows, _now) = a.instances().unwrap();
    let roles: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r.instance.as_str(), r.roles.as_str()))
        .collect();
    assert_eq!(roles, [("a", ""), ("b", "host")]);
}

#[test]
fn a_renewal_does_not_wait_for_the_holders_fenced_writes_and_a_takeover_does() {
    use std::sync::mpsc;
    use std::time::Duration;
    let db = postgres();
    let mut a = db.open();
    let first = a.take_lease("host", "a", 60_000).unwrap().unwrap();
    // A fenced write in progress (a long one: a province's meeting saved while the store
    // flushes a group) holds the lease row as the fence reads it.
    let mut writer = ::postgres::Client::connect(db.url(), ::postgres::NoTls).unwrap();
    let mut tx = writer.transaction().unwrap();
    tx.query(
        "SELECT epoch FROM leases WHERE role = 'host' FOR KEY SHARE",
        &[],
    )
    .unwrap();
    // The holder renews meanwhile, at once.
    let (done, renewed) = mpsc::channel();
    let holder = std::thread::spawn(move || {
        let answer = a.take_lease("host", "a", 0).unwrap();
        done.send(answer).unwrap();
    });
    assert_eq!(
        renewed.recv_timeout(Duration::from_secs(5)).unwrap(),
        Some(first),
        "a renewal waited for the fenced write"
    );
    holder.join().unwrap();
    // The lease (of no time now) has expired, but another instance takes it over only once
    // the write under the old epoch is committed.
    let url = db.url().to_owned();
    let (done, taken) = mpsc::channel();
    let other = std::thread::spawn(move || {
        let mut b = Database::Postgres(url).open().unwrap();
        done.send(take_once_expired(b.as_mut(), "b")).unwrap();
    });
    assert!(
        taken.recv_timeout(Duration::from_millis(500)).is_err(),
        "taken over under a write of the old epoch"
    );
    tx.commit().unwrap();
    assert_eq!(
        taken.recv_timeout(Duration::from_secs(5)).unwrap(),
        first + 1
    );
    other.join().unwrap();
}

#[test]
fn the_one_central_of_an_sqlite_store_takes_the_lease_at_once_from_a_predecessor_that_died() {
    let db = sqlite();
    let mut before = db.open();
    let first = before
        .take_lease("host", "crashed/1", 60_000)
        .unwrap()
        .unwrap();
    drop(before);
    // Restarted: the file lock already says it is the only central.
    let mut now = db.open();
    assert_eq!(
        now.take_lease("host", "restarted/2", 60_000).unwrap(),
        Some(first + 1)
    );
}

#[test]
fn a_write_made_under_a_former_epoch_is_refused_and_the_new_holders_state_stays() {
    use cuntong::store::{Fence, MeetingRow};
    on_both(|db| {
        let mut store = db.open();
        let old = store.take_lease("host", "a", 0).unwrap().unwrap();
        let new = take_once_expired(store.as_mut(), "b");
        assert_eq!(new, old + 1, "{}", db.name);
        let fence = |epoch| Fence {
            role: "host",
            epoch,
        };
        let row = MeetingRow {
            id: "m1".parse().unwrap(),
            status: "live",
            created_ms: T0,
            record: vec![1, 2, 3],
        };
        store
            .save_meetings(std::slice::from_ref(&row), Some(&fence(new)))
            .unwrap();
        let stale = MeetingRow {
            status: "ended",
            record: vec![9],
            ..row
        };
        let e = store
            .save_meetings(&[stale], Some(&fence(old)))
            .unwrap_err();
        assert!(
            matches!(e, StoreError::Fenced { epoch, current: Some(c), .. } if epoch == old && c == new),
            "{}: {e}",
            db.name
        );
        assert_eq!(
            store.meeting("m1").unwrap(),
            Some(vec![1, 2, 3]),
            "{}",
            db.name
        );
        assert!(matches!(
            store.save_alarms(&[], Some(&fence(old))),
            Err(StoreError::Fenced { .. })
        ));
        store.save_alarms(&[], Some(&fence(new))).unwrap();
    });
}

#[test]
fn rollouts_their_boxes_and_the_count_at_each_stage_read_back_alike_on_both_backends() {
    use cuntong::store::RolloutRow;
    use cuntong_core::rollout::{Plan, Site, State};
    use cuntong_core::update::Stage;
    let row = |id: u64| RolloutRow {
        plan: Plan {
            id,
            version: format!("0.{id}.0"),
            region: "130102".parse().unwrap(),
            rate_per_min: 50,
            abort_failed_percent: 10,
            min_executed: 20,
            window: None,
            timeout_ms: 7_200_000,
            expires_ms: T0 + DAY,
            created_ms: T0,
        },
        state: State::Running,
        reason: String::new(),
        command: vec![id as u8; 3],
        updated_ms: T0,
    };
    let site = |stage: Stage| Site {
        stage,
        bytes: 7,
        reason: String::new(),
        notified_ms: None,
        updated_ms: T0,
    };
    let boxes = |n: u32| id(&format!("130102001{n:03}-main"));
    let results = on_both(|db| {
        let mut store = db.open();
        let sites = vec![
            (1, boxes(1), site(Stage::Queued)),
            (1, boxes(2), site(Stage::Queued)),
            (1, boxes(3), site(Stage::Committed)),
            (2, boxes(1), site(Stage::Failed)),
        ];
        store
            .save_rollouts(&[row(1), row(2)], &sites, None)
            .unwrap();
        // A box moves on: its row is replaced, not added.
        store
            .save_rollouts(&[], &[(1, boxes(2), site(Stage::Downloading))], None)
            .unwrap();
        let mut counts = store.rollout_counts().unwrap();
        counts.sort_by_key(|(r, s, _)| (*r, s.as_str()));
        let ids: Vec<u64> = store
            .rollouts()
            .unwrap()
            .iter()
            .map(|r| r.plan.id)
            .collect();
        let one = store.rollout_sites(1).unwrap();
        assert_eq!(one.len(), 3, "{}", db.name);
        assert_eq!(one[&boxes(2)].stage, Stage::Downloading, "{}", db.name);
        (ids, counts)
    });
    assert_eq!(results[0].0, vec![1, 2]);
    assert_eq!(
        results[0].1,
        vec![
            (1, Stage::Committed, 1),
            (1, Stage::Downloading, 1),
            (1, Stage::Queued, 1),
            (2, Stage::Failed, 1),
        ]
    );
    assert_eq!(results[0], results[1], "SQLite and PostgreSQL differ");
}
