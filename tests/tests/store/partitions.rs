//! Day partitions and retention (whole days dropped, confirmations kept), the index's
//! summaries, and migrations of the schema.

use super::*;

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

/// Ranges of pages of the day's partition of `messages` that have no BRIN summary yet (the
/// check summarises them: the next check counts afresh).
fn unsummarised(db: &Db) -> i64 {
    db.scalar(
        "SELECT sum(brin_summarize_new_values(x.indexrelid::regclass))::bigint
         FROM pg_index x WHERE x.indrelid = 'messages_p20251122'::regclass",
    )
}

/// Stores groups `groups` (800 records of 40 terminals each, the seqs following on from one
/// group to the next).
fn store_groups(store: &mut dyn Store, groups: std::ops::Range<u64>) {
    for g in groups {
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
}

/// Ranges of pages of `messages` without a BRIN summary are read by every query: the store
/// summarises the new ones when it settles (at each fold), so none is left then.
#[test]
fn the_store_summarises_the_new_ranges_of_the_index_of_messages_when_it_settles() {
    let db = postgres();
    let mut store = db.open();
    store_groups(store.as_mut(), 0..1);
    store.settle().unwrap();
    // Rows written around the store leave ranges without a summary, which the check sees.
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
    assert!(unsummarised(&db) > 0);
    write_around();
    store_groups(store.as_mut(), 1..16);
    store.settle().unwrap();
    assert_eq!(unsummarised(&db), 0);
}

/// The store summarises on a second connection while it folds; where it may hold only one
/// (a role limited to one connection), it summarises on its own after the fold.
#[test]
fn a_store_that_cannot_open_a_second_connection_summarises_on_its_own() {
    let db = postgres();
    let url = db.url().to_owned();
    let (server, name) = url.rsplit_once('/').unwrap();
    let role = format!("lone_{name}");
    let mut admin = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN CONNECTION LIMIT 1; ALTER DATABASE {name} OWNER TO {role}"
        ))
        .unwrap();
    drop(admin);
    let lone = server.replacen("postgres@", &format!("{role}@"), 1) + "/" + name;
    let mut store = PgStore::open(&lone).unwrap();
    // Its one connection is all it may have.
    assert!(::postgres::Client::connect(&lone, ::postgres::NoTls).is_err());
    store_groups(&mut store, 0..16);
    store.settle().unwrap();
    assert_eq!(unsummarised(&db), 0);
    assert_eq!(
        store.count("130102001007-main", Stream::Telemetry).unwrap(),
        320
    );
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
