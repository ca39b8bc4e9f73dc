//! Rate limits for repeated log lines, without IO.
//!
//! A loop that logs per event (a refused connection, a bad frame, a forged message) must not
//! turn a flood into a flood of log lines. A [`Throttle`] lets the first occurrence through,
//! then at most one per period, and says how many were suppressed in between, so the line that
//! does get logged can carry the count: "… (37 more since the last report)". [`Throttles`]
//! keeps one per kind of line, for a bounded number of kinds.
//!
//! The caller passes the time (monotonic milliseconds); a clock that goes back counts as a new
//! period rather than silencing the line.

use alloc::collections::BTreeMap;

/// One kind of log line: the first occurrence, then at most one per period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Throttle {
    period_ms: u64,
    last_ms: Option<u64>,
    suppressed: u64,
}

impl Throttle {
    pub const fn new(period_ms: u64) -> Throttle {
        Throttle {
            period_ms,
            last_ms: None,
            suppressed: 0,
        }
    }

    /// An occurrence at `now_ms`: `Some(n)` if it is to be logged, `n` being how many
    /// occurrences were suppressed since the last one logged; `None` if it is only counted.
    pub fn hit(&mut self, now_ms: u64) -> Option<u64> {
        let due = match self.last_ms {
            None => true,
            Some(last) => now_ms < last || now_ms - last >= self.period_ms,
        };
        if due {
            self.last_ms = Some(now_ms);
            Some(core::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }

    /// Occurrences suppressed since the last one logged.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

/// A [`Throttle`] per kind of line, for at most `max_kinds` kinds; further kinds share one
/// (so a stream of ever-new kinds cannot grow memory or the log).
#[derive(Clone, Debug)]
pub struct Throttles<K: Ord> {
    period_ms: u64,
    max_kinds: usize,
    kinds: BTreeMap<K, Throttle>,
    others: Throttle,
}

impl<K: Ord> Throttles<K> {
    pub fn new(period_ms: u64, max_kinds: usize) -> Throttles<K> {
        Throttles {
            period_ms,
            max_kinds,
            kinds: BTreeMap::new(),
            others: Throttle::new(period_ms),
        }
    }

    /// An occurrence of `kind` at `now_ms`; see [`Throttle::hit`].
    pub fn hit(&mut self, kind: K, now_ms: u64) -> Option<u64> {
        if let Some(t) = self.kinds.get_mut(&kind) {
            return t.hit(now_ms);
        }
        if self.kinds.len() >= self.max_kinds {
            return self.others.hit(now_ms);
        }
        let mut t = Throttle::new(self.period_ms);
        let r = t.hit(now_ms);
        self.kinds.insert(kind, t);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn the_first_line_is_logged_then_one_per_period_with_the_count_suppressed() {
        let mut t = Throttle::new(1_000);
        let logged: Vec<(u64, u64)> = (0..3_000u64)
            .step_by(10)
            .filter_map(|now| t.hit(now).map(|n| (now, n)))
            .collect();
        assert_eq!(logged, [(0, 0), (1_000, 99), (2_000, 99)]);
        assert_eq!(t.suppressed(), 99);
    }

    #[test]
    fn a_clock_that_goes_back_does_not_silence_the_line() {
        let mut t = Throttle::new(1_000);
        assert_eq!(t.hit(5_000), Some(0));
        assert_eq!(t.hit(5_001), None);
        assert_eq!(t.hit(10), Some(1));
    }

    #[test]
    fn kinds_are_throttled_apart_and_bounded_in_number() {
        let mut t = Throttles::new(1_000, 2);
        assert_eq!(t.hit("a", 0), Some(0));
        assert_eq!(t.hit("b", 0), Some(0));
        assert_eq!(t.hit("a", 1), None);
        // Kinds beyond the bound share one throttle.
        assert_eq!(t.hit("c", 2), Some(0));
        assert_eq!(t.hit("d", 3), None);
        assert_eq!(t.hit("a", 1_000), Some(1));
    }

    proptest::proptest! {
        /// Model: over any run of occurrences, every one is either logged or counted in the
        /// next logged line, and logged lines are at least a period apart.
        #[test]
        fn every_occurrence_is_logged_or_counted(
            gaps in proptest::collection::vec(0u64..500, 1..300)
        ) {
            let mut t = Throttle::new(1_000);
            let (mut now, mut accounted, mut last) = (0u64, 0u64, None::<u64>);
            for g in &gaps {
                now += g;
                if let Some(n) = t.hit(now) {
                    accounted += n + 1;
                    if let Some(l) = last {
                        proptest::prop_assert!(now - l >= 1_000);
                    }
                    last = Some(now);
                }
            }
            proptest::prop_assert_eq!(accounted + t.suppressed(), gaps.len() as u64);
        }
    }
}
