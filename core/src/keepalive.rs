//! What a link's keep-alive pings say about it: the round trip and the share of pings lost,
//! judged so that one odd ping moves neither. A box's media tier follows these figures, and a
//! tier change restarts its media and joins its meetings anew: a broker busy for a minute (a
//! province joining at once) or one reconnect must not make a fleet change tier together.

use alloc::collections::VecDeque;

/// The pings a link's loss is judged over.
pub const LOSS_WINDOW: usize = 20;

/// The answered pings a link's round trip is judged over.
pub const RTT_WINDOW: usize = 5;

/// The outcomes of a link's recent keep-alive pings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeepAlives {
    /// Newest last: answered or not.
    outcomes: VecDeque<bool>,
    /// Round trips of the newest answered pings, in ms, newest last.
    round_trips: VecDeque<f64>,
}

impl KeepAlives {
    /// A ping answered after `rtt_ms`.
    pub fn answered(&mut self, rtt_ms: f64) {
        push(&mut self.outcomes, true, LOSS_WINDOW);
        push(&mut self.round_trips, rtt_ms, RTT_WINDOW);
    }

    /// A ping that got no answer (the link went down or timed out waiting).
    pub fn lost(&mut self) {
        push(&mut self.outcomes, false, LOSS_WINDOW);
    }

    /// The link's round trip: the fastest of the last [`RTT_WINDOW`] answers; `None` (not
    /// known) until a majority of the window has answered. Waiting only ever adds to a ping's
    /// time (a broker busy with a province's join storm, a box's CPU busy, a queue on the
    /// way), while the path's own delay is under every answer: a link is judged slow only when
    /// none of its last answers was fast. A link congested from one moment to the next loses
    /// packets, which the media's receivers report and its bitrate follows. A box's first
    /// answers come while its broker takes the connects of every box that came up with it (a
    /// county's power restored, a broker restarted).
    pub fn round_trip_ms(&self) -> Option<f64> {
        if self.round_trips.len() < RTT_WINDOW / 2 + 1 {
            return None;
        }
        self.round_trips.iter().copied().min_by(f64::total_cmp)
    }

    /// The share of pings lost, in percent of the whole window even while fewer pings have
    /// been sent: a link's first lost ping is one in [`LOSS_WINDOW`], not one in two.
    pub fn loss_percent(&self) -> f64 {
        let lost = self.outcomes.iter().filter(|ok| !**ok).count();
        100.0 * lost as f64 / self.outcomes.len().max(LOSS_WINDOW) as f64
    }
}

fn push<T>(window: &mut VecDeque<T>, value: T, size: usize) {
    if window.len() == size {
        window.pop_front();
    }
    window.push_back(value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meeting::{Tier, TierThresholds};

    fn tier(k: &KeepAlives) -> Tier {
        TierThresholds::default().tier(k.round_trip_ms(), k.loss_percent())
    }

    #[test]
    fn slow_answers_are_not_the_links_round_trip_while_a_fast_one_is_in_the_window() {
        let mut k = KeepAlives::default();
        k.answered(40.0);
        k.answered(35.0);
        k.answered(30.0);
        assert_eq!(k.round_trip_ms(), Some(30.0));
        // A broker busy with a storm answers late, ping after ping: the link is still fast.
        for rtt in [1_500.0, 2_000.0, 1_800.0, 2_500.0] {
            k.answered(rtt);
            assert_eq!(
                tier(&k),
                Tier::Full,
                "{rtt} ms with a fast answer in the window"
            );
        }
        k.answered(1_600.0);
        assert_eq!(
            k.round_trip_ms(),
            Some(1_500.0),
            "the fast answers have left it"
        );
        assert_eq!(tier(&k), Tier::ReceiveOnly);
    }

    #[test]
    fn a_new_links_first_answers_are_not_its_round_trip() {
        let mut k = KeepAlives::default();
        assert_eq!(k.round_trip_ms(), None);
        // Its broker is taking a county's connects at once.
        k.answered(1_800.0);
        k.answered(900.0);
        assert_eq!(k.round_trip_ms(), None, "not known from two answers");
        assert_eq!(tier(&k), Tier::Full);
        k.answered(1_200.0);
        assert_eq!(k.round_trip_ms(), Some(900.0), "three answers, all slow");
        assert_eq!(tier(&k), Tier::AudioOnly);
        k.answered(60.0);
        assert_eq!(tier(&k), Tier::Full, "the broker has caught up");
    }

    #[test]
    fn a_link_that_stays_slow_is_judged_slow() {
        let mut k = KeepAlives::default();
        for _ in 0..RTT_WINDOW {
            k.answered(30.0);
        }
        for rtt in [600.0, 650.0, 700.0, 620.0] {
            k.answered(rtt);
            assert_eq!(tier(&k), Tier::Full, "a fast answer is still in the window");
        }
        k.answered(640.0);
        assert_eq!(k.round_trip_ms(), Some(600.0), "five slow answers in a row");
        assert_eq!(tier(&k), Tier::AudioOnly);
        for _ in 0..RTT_WINDOW {
            k.answered(1_200.0);
        }
        assert_eq!(tier(&k), Tier::ReceiveOnly);
    }

    #[test]
    fn a_new_links_first_lost_ping_is_one_of_the_window() {
        let mut k = KeepAlives::default();
        k.answered(30.0);
        k.lost();
        assert_eq!(k.loss_percent(), 100.0 / LOSS_WINDOW as f64);
        assert_eq!(tier(&k), Tier::Full, "one outage is not a loss rate");
        k.lost();
        assert_eq!(tier(&k), Tier::AudioOnly, "two of the last twenty");
    }

    #[test]
    fn loss_is_judged_over_the_last_pings_only() {
        let mut k = KeepAlives::default();
        for _ in 0..4 {
            k.lost();
        }
        assert_eq!(k.loss_percent(), 20.0);
        assert_eq!(tier(&k), Tier::ReceiveOnly);
        for _ in 0..LOSS_WINDOW {
            k.answered(30.0);
        }
        assert_eq!(k.loss_percent(), 0.0);
        assert_eq!(tier(&k), Tier::Full);
    }
}
