//! What is read back: newest values, presence and last reception, the fleet view, history,
//! events and rejected records, and a store reopened.

use super::*;

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

/// More terminals than the PostgreSQL store reads at a time: every one, once, in id order,
/// whether handed on one by one or collected.
#[test]
fn a_fleet_view_larger_than_a_read_comes_whole_and_in_order() {
    on_both(|db| {
        let mut store = db.open();
        let ids = |county: u32| {
            (0..2_345u32)
                .map(move |n| format!("13{county:04}{:03}{:03}-main", n / 100 + 1, n % 100 + 1))
        };
        // Applied out of order, and with a county of another region between.
        let mut records: Vec<Record> = ids(102)
            .chain(ids(101))
            .map(|t| presence(&t, true, T0))
            .collect();
        records.push(presence("140105001001-main", true, T0));
        store.apply(&records).unwrap();
        let region: Region = "13".parse().unwrap();
        let mut handed = Vec::new();
        store
            .each_site(Some(&region), &mut |r| handed.push(r.terminal))
            .unwrap();
        let expected: Vec<String> = ids(101).chain(ids(102)).collect();
        assert_eq!(handed.len(), expected.len());
        assert!(handed == expected, "not every terminal once, in id order");
        let collected: Vec<String> = store
            .sites(Some(&region))
            .unwrap()
            .into_iter()
            .map(|r| r.terminal)
            .collect();
        assert!(collected == expected);
        assert_eq!(store.sites(None).unwrap().len(), expected.len() + 1);
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
                ("cpu.load".into(), 0.42),
                ("env.humidity".into(), 55.0),
                ("env.temp".into(), 20.5),
            ]
        );
        assert_eq!(site(&rows, b).metrics, [("env.temp".into(), 18.25)]);
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
