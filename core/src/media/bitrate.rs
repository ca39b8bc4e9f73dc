//! How much of its profile's video bitrate a sending site uses, following its link: down at
//! once when loss or delay grow, up again a step at a time only after the link has stayed good
//! for a while, so that a link on the edge does not make the picture pump. Sans-IO: the media
//! engine feeds it the link's figures with the time and applies the share it answers.

/// How long the link must have been good enough for a higher share before the share rises.
pub const RISE_AFTER_MS: u64 = 10_000;
/// How much the share rises at a time.
pub const RISE_STEP: f64 = 0.25;

/// The share of its profile's video bitrate a site sends on a link with this round trip and
/// loss: all on a clean link, less as loss and delay grow (the tier takes over beyond).
pub fn target_share(rtt_ms: Option<f64>, loss_percent: f64) -> f64 {
    let by_loss = if loss_percent >= 5.0 {
        0.5
    } else if loss_percent >= 2.0 {
        0.75
    } else {
        1.0
    };
    let by_rtt = match rtt_ms {
        Some(r) if r >= 300.0 => 0.5,
        Some(r) if r >= 150.0 => 0.75,
        _ => 1.0,
    };
    f64::min(by_loss, by_rtt)
}

/// The share in use, and since when the link has allowed more.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bitrate {
    share: f64,
    good_since_ms: Option<u64>,
}

impl Default for Bitrate {
    fn default() -> Bitrate {
        Bitrate::new()
    }
}

impl Bitrate {
    /// All of the profile's bitrate, until the link says otherwise.
    pub fn new() -> Bitrate {
        Bitrate {
            share: 1.0,
            good_since_ms: None,
        }
    }

    pub fn share(&self) -> f64 {
        self.share
    }

    /// The link measured `rtt_ms` and `loss_percent` (the worst of its own and what the
    /// site's receivers report) at `now_ms`: the share to send at now.
    pub fn follow(&mut self, rtt_ms: Option<f64>, loss_percent: f64, now_ms: u64) -> f64 {
        let target = target_share(rtt_ms, loss_percent);
        if target < self.share {
            self.share = target;
            self.good_since_ms = None;
        } else if target > self.share {
            let since = *self.good_since_ms.get_or_insert(now_ms);
            if now_ms.saturating_sub(since) >= RISE_AFTER_MS {
                // The next step waits as long again.
                self.good_since_ms = Some(now_ms);
                self.share = f64::min(self.share + RISE_STEP, target);
            }
        } else {
            self.good_since_ms = None;
        }
        self.share
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_follows_loss_and_delay() {
        assert_eq!(target_share(Some(20.0), 0.0), 1.0);
        assert_eq!(target_share(None, 3.0), 0.75);
        assert_eq!(target_share(Some(200.0), 0.5), 0.75);
        assert_eq!(target_share(Some(400.0), 1.0), 0.5);
        assert_eq!(target_share(Some(20.0), 9.0), 0.5);
    }

    #[test]
    fn the_share_drops_at_once_and_rises_a_step_after_ten_good_seconds() {
        let mut b = Bitrate::new();
        assert_eq!(b.follow(Some(20.0), 0.0, 0), 1.0);
        // A lossy second: down to half at once.
        assert_eq!(b.follow(Some(20.0), 6.0, 1_000), 0.5);
        // Clean again: nothing for ten seconds, then a quarter more, then after ten more
        // seconds the rest.
        for t in (2_000..12_000).step_by(1_000) {
            assert_eq!(b.follow(Some(20.0), 0.0, t), 0.5, "at {t} ms");
        }
        assert_eq!(b.follow(Some(20.0), 0.0, 12_000), 0.75);
        assert_eq!(b.follow(Some(20.0), 0.0, 21_000), 0.75);
        assert_eq!(b.follow(Some(20.0), 0.0, 22_000), 1.0);
    }

    #[test]
    fn a_link_on_the_edge_does_not_make_the_share_pump() {
        let mut b = Bitrate::new();
        b.follow(None, 5.0, 0);
        // Loss flickers around 2 %: every bad second starts the wait again, and the share
        // never rises above what the bad seconds allow.
        let mut seen = alloc::vec::Vec::new();
        for s in 1..60u64 {
            let loss = if s % 7 == 0 { 2.5 } else { 0.0 };
            seen.push(b.follow(None, loss, s * 1_000));
        }
        assert!(seen.iter().all(|s| (0.5..=0.75).contains(s)), "{seen:?}");
    }
}
