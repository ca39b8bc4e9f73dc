//! The daemons' side of systemd's service protocol (`Type=notify`): ready once they can do
//! their work, a watchdog ping from their main loop so that a loop that hangs is restarted,
//! and stopping at shutdown. Outside systemd (no `NOTIFY_SOCKET`) each call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;

/// This process as a systemd service.
#[derive(Debug)]
pub struct Service {
    /// How often the main loop pings: half the watchdog's timeout, if systemd set one.
    ping_every: Option<Duration>,
    /// The pings' clock, made on the first [`Service::watchdog`].
    tick: Option<tokio::time::Interval>,
}

impl Service {
    /// What systemd asked of this process (`WATCHDOG_USEC`, for this pid if `WATCHDOG_PID`
    /// says so). The environment is only read (changing it races with other threads); a
    /// process this one starts sees a `WATCHDOG_PID` that is not its own.
    pub fn from_env() -> Service {
        let mut usec = 0;
        let ping_every = sd_notify::watchdog_enabled(false, &mut usec)
            .then(|| Duration::from_micros(usec) / 2)
            .filter(|d| !d.is_zero());
        Service {
            ping_every,
            tick: None,
        }
    }

    /// The daemon can do its work: its configuration is valid and its state open.
    pub fn ready(&self, status: &str) {
        send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// Pings the watchdog whenever a ping is due; never resolves if systemd does not watch.
    /// A branch of the main loop's `select!`: a loop that hangs stops pinging.
    pub async fn watchdog(&mut self) {
        let Some(every) = self.ping_every else {
            return std::future::pending().await;
        };
        let tick = self.tick.get_or_insert_with(|| {
            let mut t = tokio::time::interval(every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        tick.tick().await;
        send(&[NotifyState::Watchdog]);
    }

    /// The daemon is shutting down on request.
    pub fn stopping(&self) {
        send(&[NotifyState::Stopping]);
    }
}

fn send(states: &[NotifyState]) {
    // Not under systemd, or it went away: nothing to tell, nothing to fail over.
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!(error = %e, "cannot notify the service manager");
    }
}
