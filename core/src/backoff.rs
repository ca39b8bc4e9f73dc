//! Waits that double after each failure and spread out, so that many boxes failing together
//! do not retry together: a link's reconnects, a site's joins the host has not answered.

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
