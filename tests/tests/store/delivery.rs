//! What is stored once and what is confirmed: watermarks over runs of seqs, drops and
//! numbering starts, duplicates within and across groups.

use super::*;

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
