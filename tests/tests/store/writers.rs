//! PostgreSQL: several connections storing at once.

use super::*;

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

/// A group that fails as it commits (here the journal refuses its row) stores nothing, and
/// its connection forgets what it had decided of the group's terminals: the same group sent
/// again is stored whole and confirmed, not taken for duplicates of itself, and what the
/// groups before it brought (presence, newest values) still reaches the fleet view.
#[test]
fn a_group_that_fails_as_it_commits_is_stored_whole_when_sent_again() {
    let db = postgres();
    let mut store = db.open();
    let first = [
        presence(A, true, T0),
        temp(A, 1, T0 + 1_000, "1.00"),
        temp(A, 2, T0 + 2_000, "2.00"),
    ];
    assert_eq!(counts(&store.apply(&first).unwrap()), (2, 0, 2));

    let mut admin = ::postgres::Client::connect(db.url(), ::postgres::NoTls).unwrap();
    admin
        .batch_execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql
                AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$;
             CREATE TRIGGER refuse BEFORE INSERT ON ingest_journal
                FOR EACH ROW EXECUTE FUNCTION refuse()",
        )
        .unwrap();
    let second = [
        temp(A, 3, T0 + 3_000, "3.00"),
        temp(A, 4, T0 + 4_000, "4.00"),
    ];
    let refused = store.apply(&second);
    assert!(
        matches!(&refused, Err(e) if e.to_string().contains("refused")),
        "{refused:?}"
    );
    assert_eq!(db.count(A, Stream::Telemetry), 2, "nothing of it stored");

    admin
        .batch_execute("DROP TRIGGER refuse ON ingest_journal")
        .unwrap();
    let again = store.apply(&second).unwrap();
    assert_eq!(counts(&again), (2, 0, 2), "stored whole, no duplicate");
    assert_eq!(marks(&again, A).unwrap().telemetry, 4);
    assert_eq!(db.count(A, Stream::Telemetry), 4);
    let rows = store.sites(None).unwrap();
    let row = site(&rows, A);
    assert!(row.online, "the first group's presence is kept");
    assert_eq!(metric(row, "env.temp"), Some(4.0));
}

/// A province reporting steadily hands the store thread a record or two at a time: the records
/// that come within [`LINGER`] of a group's first are applied with it, in one transaction, not
/// each in its own; and every record is applied.
#[test]
fn records_handed_over_one_by_one_are_applied_in_groups() {
    use cuntong::store::{LINGER, Writer};
    use std::sync::{Arc, Mutex};
    on_both(|db| {
        let groups = Arc::new(Mutex::new(Vec::new()));
        let seen = groups.clone();
        let writer = Writer::start(
            db.open(),
            move |a: Applied| seen.lock().unwrap().push(a.stored),
            tokio_util::sync::CancellationToken::new(),
        )
        .unwrap();
        // 40 records over about half the linger: applied at once, each would be a group.
        let spacing = LINGER / 80;
        for q in 1..=40 {
            let r = temp(A, q, T0 + q * 1_000, "1.00");
            assert!(writer.records.try_send(r).is_ok(), "queue has room");
            std::thread::sleep(spacing);
        }
        writer.state.flush().unwrap();
        let applied = groups.lock().unwrap().clone();
        assert_eq!(
            applied.iter().sum::<u64>(),
            40,
            "every record stored: {applied:?}"
        );
        assert!(
            applied.len() <= 4,
            "{} groups for 40 records handed over within the linger: {applied:?}",
            applied.len()
        );
        writer.join().unwrap();
    });
}
