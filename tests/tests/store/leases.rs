//! The host lease: one holder, renewals under its epoch, takeovers, and writes fenced by it.

use super::*;

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
