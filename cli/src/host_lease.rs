//! Central's hold on the host role: a thread of its own that takes or renews the lease in
//! the store every renewal period, on a connection of its own, and records this instance as at
//! work. What the answers mean (when to act, when to stand by) is [`cuntong_core::lease`]'s.

use std::time::Duration;

use cuntong_core::lease::{Answer, Lease};
use cuntong_terminal::link::unix_ms;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::store::Database;
use cuntong_terminal::throttle::LogLimiter;

/// The lease on the roles only one instance plays at a time.
pub const HOST_ROLE: &str = "host";

/// How often an instance records that it is at work (`central status` shows it).
const INSTANCE_SEEN_EVERY: Duration = Duration::from_secs(5);

/// This instance's name in the store's lease and instance tables: host and process.
pub fn instance_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "central".to_owned());
    format!("{host}/{}", std::process::id())
}

/// Lease answers waiting for central's loop, at most.
pub const LEASE_ANSWERS: usize = 64;

/// Asks the store for the host lease every renewal period, on a connection of its own (so a
/// renewal never waits behind ingest), and records this instance as at work; sends each answer
/// with the time it was asked.
pub fn lease_loop(
    db: Database,
    instance: String,
    started_ms: u64,
    lease: Lease,
    answers: mpsc::Sender<(Answer, u64)>,
    stop: CancellationToken,
) {
    let mut store: Option<Box<dyn crate::store::Store>> = None;
    let log = LogLimiter::default();
    let mut last_seen = None::<std::time::Instant>;
    while !stop.is_cancelled() {
        let asked = unix_ms();
        if store.is_none() {
            store = db.open().ok();
        }
        let answer = match store
            .as_mut()
            .map(|s| s.take_lease(HOST_ROLE, &instance, lease.ttl_ms))
        {
            Some(Ok(Some(epoch))) => Answer::Held { epoch },
            Some(Ok(None)) => Answer::Taken,
            Some(Err(e)) => {
                if let Some(more) = log.allow("lease") {
                    tracing::warn!(error = %e, "cannot renew the host lease{more}");
                }
                store = None;
                Answer::Failed
            }
            None => Answer::Failed,
        };
        // The answer first: recording the instance is another commit, and the lease's
        // margin must not wait for it. A loop that has not taken the answers of the last
        // [`LEASE_ANSWERS`] renewals is stuck; this one is then dropped (the newest matter).
        match answers.try_send((answer, asked)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                if let Some(more) = log.allow("answers") {
                    tracing::warn!("central's loop takes no lease answers: one dropped{more}");
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
        if let Some(s) = store.as_mut()
            && last_seen.is_none_or(|t| t.elapsed() >= INSTANCE_SEEN_EVERY)
        {
            last_seen = Some(std::time::Instant::now());
            if let Err(e) = s.instance_seen(&instance, started_ms)
                && let Some(more) = log.allow("instance")
            {
                tracing::warn!(error = %e, "cannot record this instance{more}");
            }
        }
        let next = std::time::Instant::now() + Duration::from_millis(lease.renew_every_ms);
        while std::time::Instant::now() < next && !stop.is_cancelled() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
