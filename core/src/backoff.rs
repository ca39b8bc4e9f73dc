//! Waits that double after each failure and spread out, so that many boxes failing together
//! do not retry together: a link's reconnects, a site's joins the host has not answered; and
//! the slot in its period where each box does its periodic work, so that many boxes powered
//! on together do not report together.

use core::hash::{Hash, Hasher};
use core::time::Duration;

/// Doubles from `min` to `max`; each wait is drawn in `[d/2, d]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    /// A link's reconnects: from half a second to a minute.
    fn default() -> Backoff {
        Backoff {
            min: Duration::from_millis(500),
            max: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The wait before retry `attempt` (0 = the first retry). `draw` picks the wait within
    /// its range: a random number, or [`spread`] of who waits where nothing random is at hand.
    pub fn delay(&self, attempt: u32, draw: u64) -> Duration {
        let full = self
            .min
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max);
        let half = full / 2;
        let span = u64::try_from((full - half).as_micros()).unwrap_or(u64::MAX);
        half + Duration::from_micros(draw % span.saturating_add(1))
    }
}

/// A number for `key` that is the same each time and far apart for neighbouring keys (FNV-1a
/// with a final mix): what spreads a province's sites over a back-off's range.
pub fn spread(key: &impl Hash) -> u64 {
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    key.hash(&mut h);
    let mut x = h.0;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x
}

/// How long from `now_ms` (Unix ms) until `key`'s next slot in a period of `every_ms`:
/// between 1 and `every_ms` (a full period when `now_ms` is on the slot). Each key's slot sits
/// at its own moment of the period on the wall clock (`key` is a [`spread`] of the box's
/// id), so a county's boxes that report every minute report spread over the minute, also
/// after its power came back at once, and a box keeps its moment across restarts.
pub fn slot_delay_ms(key: u64, every_ms: u64, now_ms: u64) -> u64 {
    let every = every_ms.max(1);
    let since_slot = (now_ms % every + every - key % every) % every;
    every - since_slot
}

struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_waits_for_its_own_moment_of_the_period() {
        let every = 60_000;
        for key in [0, 1, 59_999, 60_000, 123_456_789, u64::MAX] {
            for now in [0, 1, 59_999, 1_796_420_108_123, u64::MAX / 2] {
                let d = slot_delay_ms(key, every, now);
                assert!((1..=every).contains(&d), "key {key} now {now}: {d}");
                // On the slot: the next is a whole period away; the moment is the key's.
                assert_eq!(slot_delay_ms(key, every, now + d), every);
                assert_eq!((now + d) % every, key % every);
            }
        }
        assert_eq!(
            slot_delay_ms(7, 0, 5),
            1,
            "a zero period is one millisecond"
        );
    }

    #[test]
    fn a_county_powered_on_at_once_reports_spread_over_the_minute() {
        // 5,000 villages of a county, every one starting at the same millisecond.
        let now = 1_796_420_108_000;
        let mut per_second = [0u32; 60];
        for village in 1..=5_000u32 {
            let key = spread(&(130_102_000_000u64 + u64::from(village)));
            let at = slot_delay_ms(key, 60_000, now) - 1;
            per_second[(at / 1000) as usize] += 1;
        }
        // About 83 a second; none of the seconds has twice that, none is empty.
        let (least, most) = (per_second.iter().min(), per_second.iter().max());
        assert!(least.is_some_and(|&n| n > 40), "{per_second:?}");
        assert!(most.is_some_and(|&n| n < 2 * 5_000 / 60), "{per_second:?}");
    }

    #[test]
    fn waits_double_up_to_the_cap_each_within_its_upper_half() {
        let b = Backoff {
            min: Duration::from_secs(1),
            max: Duration::from_secs(8),
        };
        for draw in [0, 1, 499_999, 500_000, 777_777_777, u64::MAX] {
            for (attempt, full) in [(0, 1), (1, 2), (2, 4), (3, 8), (4, 8), (30, 8)] {
                let d = b.delay(attempt, draw);
                let full = Duration::from_secs(full);
                assert!(
                    d >= full / 2 && d <= full,
                    "attempt {attempt}, draw {draw}: {d:?}"
                );
            }
        }
        assert_eq!(b.delay(0, 0), Duration::from_millis(500));
        assert_eq!(b.delay(0, 500_000), Duration::from_secs(1));
    }

    #[test]
    fn neighbouring_keys_spread_over_the_whole_range() {
        let b = Backoff {
            min: Duration::from_secs(4),
            max: Duration::from_secs(4),
        };
        // 1,000 sites numbered in a row fall into all eight quarter-second slots of [2 s, 4 s].
        let mut slots = [0u32; 8];
        for site in 0..1_000u32 {
            let d = b.delay(0, spread(&site));
            let slot = ((d - Duration::from_secs(2)).as_millis() / 250).min(7) as usize;
            slots[slot] += 1;
        }
        assert!(slots.iter().all(|n| (80..=170).contains(n)), "{slots:?}");
        assert_eq!(spread(&"130102001001-main"), spread(&"130102001001-main"));
    }
}
