//! Holding a singleton role through a lease, as one central instance sees it (sans-IO).
//!
//! Several central instances share one store; the roles only one may play at a time (the meeting
//! host, the alarm engine with its hooks, scheduled sessions, retention) are held through a lease
//! row in the store: a holder, an expiry on the store's clock, and an epoch that grows each time
//! the role changes hands. An instance asks the store to take or renew the lease every
//! [`Lease::renew_every_ms`]; [`Tenure`] turns the answers (and their absence) into when to start
//! acting and when to stop. The rule that keeps two holders from acting at once: an instance
//! stops acting once it has not renewed for the lease's time to live less a margin, which is
//! before any other instance can take the role over (the store's clock expires it only after the
//! full time to live).

/// A lease's timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// How long a renewal holds the role, on the store's clock.
    pub ttl_ms: u64,
    /// How often the holder renews (and a standby tries to take it).
    pub renew_every_ms: u64,
    /// How long before the expiry a holder that could not renew stops acting: room for the
    /// clocks of the instance and the store to run at slightly different rates, and for the
    /// time a renewal takes.
    pub margin_ms: u64,
}

impl Default for Lease {
    /// Taken over within 7 s of the holder's death: 6 s to expire, tried every second. A
    /// holder keeps the role through a renewal that takes up to 3.5 s (a store flushing under
    /// a province's ingest).
    fn default() -> Lease {
        Lease {
            ttl_ms: 6_000,
            renew_every_ms: 1_000,
            margin_ms: 1_500,
        }
    }
}

impl Lease {
    /// The lease of an instance no other can contend with (the one central of an SQLite
    /// store, which its file lock guarantees): it does not run out while the store is busy.
    pub fn sole() -> Lease {
        Lease {
            ttl_ms: 100 * 365 * 24 * 3_600_000,
            ..Lease::default()
        }
    }
}

/// What the store said to a request to take or renew the lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// This instance holds the role, under this epoch.
    Held { epoch: u64 },
    /// Another instance holds it.
    Taken,
    /// The store did not answer (unreachable, an error).
    Failed,
}

/// What the instance should do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Start acting in the role: load its state from the store, then serve.
    Start { epoch: u64 },
    /// Stop acting at once: another instance may have the role soon.
    Stop { epoch: u64 },
}

/// One instance's tenure of one role.
#[derive(Clone, Debug)]
pub struct Tenure {
    lease: Lease,
    /// The epoch acted under, and when (instance clock) the request that renewed it was sent.
    acting: Option<(u64, u64)>,
}

impl Tenure {
    pub fn new(lease: Lease) -> Tenure {
        Tenure {
            lease,
            acting: None,
        }
    }

    pub fn lease(&self) -> Lease {
        self.lease
    }

    /// The epoch this instance acts under, if it does.
    pub fn epoch(&self) -> Option<u64> {
        self.acting.map(|(e, _)| e)
    }

    /// Takes in the store's answer to a request sent at `asked_ms` (the instance's clock): the
    /// lease runs from when it was asked, never from when the answer came.
    pub fn answered(&mut self, answer: Answer, asked_ms: u64, now_ms: u64) -> Option<Change> {
        match (answer, self.acting) {
            (Answer::Held { epoch }, Some((e, _))) if e == epoch => {
                self.acting = Some((epoch, asked_ms));
                self.overdue(now_ms)
            }
            (Answer::Held { epoch }, previous) => match previous {
                // Held under a new epoch: whatever was done under the old one is over. Stop;
                // the next grant starts again, state reloaded under the new epoch.
                Some((old, _)) => {
                    self.acting = None;
                    Some(Change::Stop { epoch: old })
                }
                // A grant that is already too old to act on starts nothing.
                None if self.deadline(asked_ms) > now_ms => {
                    self.acting = Some((epoch, asked_ms));
                    Some(Change::Start { epoch })
                }
                None => None,
            },
            (Answer::Taken, Some((epoch, _))) => {
                self.acting = None;
                Some(Change::Stop { epoch })
            }
            (Answer::Taken, None) => None,
            (Answer::Failed, _) => self.overdue(now_ms),
        }
    }

    /// Checks the clock between answers (call at least every renewal period).
    pub fn tick(&mut self, now_ms: u64) -> Option<Change> {
        self.overdue(now_ms)
    }

    /// When a renewal asked for at `asked_ms` stops being enough to act on.
    fn deadline(&self, asked_ms: u64) -> u64 {
        asked_ms
            .saturating_add(self.lease.ttl_ms)
            .saturating_sub(self.lease.margin_ms)
    }

    /// Stops acting if the last renewal is too old to be sure nobody else holds the role.
    fn overdue(&mut self, now_ms: u64) -> Option<Change> {
        let (epoch, renewed) = self.acting?;
        if now_ms >= self.deadline(renewed) {
            self.acting = None;
            return Some(Change::Stop { epoch });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenure() -> Tenure {
        Tenure::new(Lease::default())
    }

    #[test]
    fn the_first_grant_starts_and_renewals_under_the_same_epoch_change_nothing() {
        let mut t = tenure();
        assert_eq!(
            t.answered(Answer::Held { epoch: 3 }, 0, 10),
            Some(Change::Start { epoch: 3 })
        );
        for at in (2_000..60_000).step_by(2_000) {
            assert_eq!(t.answered(Answer::Held { epoch: 3 }, at, at + 10), None);
        }
        assert_eq!(t.epoch(), Some(3));
    }

    #[test]
    fn a_holder_that_cannot_renew_stops_before_the_lease_can_expire_for_anyone_else() {
        let mut t = tenure();
        t.answered(Answer::Held { epoch: 1 }, 1_000, 1_010);
        assert_eq!(t.answered(Answer::Failed, 3_000, 3_500), None);
        assert_eq!(t.tick(5_000), None);
        // The store expires it at 1_000 + 6_000; this instance stops 1.5 s before.
        assert_eq!(t.tick(5_500), Some(Change::Stop { epoch: 1 }));
        assert_eq!(t.epoch(), None);
        assert_eq!(t.tick(9_000), None, "stopped once");
    }

    #[test]
    fn a_late_answer_counts_from_when_it_was_asked() {
        let mut t = tenure();
        // Asked at 0, answered 4 s later (a slow store): only 0.5 s of the lease is left.
        assert_eq!(
            t.answered(Answer::Held { epoch: 2 }, 0, 4_000),
            Some(Change::Start { epoch: 2 })
        );
        assert_eq!(t.tick(4_499), None);
        assert_eq!(t.tick(4_500), Some(Change::Stop { epoch: 2 }));
        // Asked at 0 and answered past the margin: it never starts.
        let mut t = tenure();
        assert_eq!(t.answered(Answer::Held { epoch: 2 }, 0, 4_600), None);
        assert_eq!(t.epoch(), None);
    }

    #[test]
    fn a_sole_holder_keeps_acting_through_a_long_store_outage() {
        let mut t = Tenure::new(Lease::sole());
        assert_eq!(
            t.answered(Answer::Held { epoch: 1 }, 0, 5),
            Some(Change::Start { epoch: 1 })
        );
        let day = 24 * 3_600_000;
        assert_eq!(t.answered(Answer::Failed, day, day + 5), None);
        assert_eq!(t.tick(30 * day), None);
        assert_eq!(t.epoch(), Some(1));
    }

    #[test]
    fn losing_the_role_to_another_instance_stops_and_a_standby_waits() {
        let mut t = tenure();
        assert_eq!(t.answered(Answer::Taken, 0, 5), None);
        t.answered(Answer::Held { epoch: 4 }, 100, 105);
        assert_eq!(
            t.answered(Answer::Taken, 2_100, 2_105),
            Some(Change::Stop { epoch: 4 })
        );
    }

    #[test]
    fn a_new_epoch_while_acting_stops_the_old_tenure_first() {
        // The store gave the role to someone else and back in between: state acted on under
        // epoch 4 may be stale; stop, and start under 6 at the next grant.
        let mut t = tenure();
        t.answered(Answer::Held { epoch: 4 }, 0, 5);
        assert_eq!(
            t.answered(Answer::Held { epoch: 6 }, 2_000, 2_005),
            Some(Change::Stop { epoch: 4 })
        );
        assert_eq!(
            t.answered(Answer::Held { epoch: 6 }, 4_000, 4_005),
            Some(Change::Start { epoch: 6 })
        );
    }
}
