//! Throttled log lines for loops that log per event (a refused connection, a bad frame, a
//! forged message): the core's [`Throttles`] behind a lock, on a monotonic clock, so a flood of
//! events costs a log line a minute, with the count of the lines it stands for.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use cuntong_core::throttle::Throttles;

/// How often a repeated line is logged at most, by default.
pub const LOG_EVERY: Duration = Duration::from_secs(60);

/// Kinds of line a limiter tells apart; further kinds share one throttle.
const KINDS: usize = 32;

/// Milliseconds on a monotonic clock (since the first call in this process).
pub fn monotonic_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Decides which repeated log lines are written: the first of each kind, then at most one per
/// period.
#[derive(Debug)]
pub struct LogLimiter(Mutex<Throttles<String>>);

impl Default for LogLimiter {
    fn default() -> LogLimiter {
        LogLimiter::new(LOG_EVERY)
    }
}

impl LogLimiter {
    pub fn new(every: Duration) -> LogLimiter {
        LogLimiter(Mutex::new(Throttles::new(every.as_millis() as u64, KINDS)))
    }

    /// A line of `kind` happened: `Some(suffix)` if it is to be logged now, the suffix saying
    /// how many were suppressed since the last (empty if none); `None` to stay quiet.
    pub fn allow(&self, kind: &str) -> Option<String> {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        t.hit(kind.to_owned(), monotonic_ms()).map(|n| match n {
            0 => String::new(),
            n => format!(" ({n} more like this since the last report)"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_one_kind_logs_once_and_other_kinds_still_log() {
        let l = LogLimiter::default();
        assert_eq!(l.allow("refused").as_deref(), Some(""));
        for _ in 0..1000 {
            assert_eq!(l.allow("refused"), None);
        }
        assert_eq!(l.allow("bad frame").as_deref(), Some(""));
    }

    #[test]
    fn the_next_line_after_the_period_counts_what_was_suppressed() {
        let l = LogLimiter::new(Duration::from_millis(30));
        assert!(l.allow("x").is_some());
        assert!(l.allow("x").is_none());
        assert!(l.allow("x").is_none());
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(
            l.allow("x").as_deref(),
            Some(" (2 more like this since the last report)")
        );
    }
}
