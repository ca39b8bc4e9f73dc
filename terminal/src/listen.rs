//! Accept loops that a flood of connections cannot turn against the box.
//!
//! The daemon's listeners (the HJ 212 bridge, the status socket) share one process and one
//! open-files limit with the broker link, the outbox and the media. So that a flood on one of
//! them (a thousand held TCP connections) cannot take the descriptors the link needs:
//!
//! - each listener serves at most its own number of connections at once ([`Gate`]), and all of
//!   them together at most what the open-files limit leaves after a reserve for everything else
//!   ([`Descriptors`], from `RLIMIT_NOFILE` at start); a connection beyond either is accepted
//!   and closed at once, so the backlog keeps draining and a real client gets in as soon as a
//!   slot is free;
//! - an accept error (`EMFILE`, `ENFILE`, `ENOBUFS`, …) backs off, 50 ms doubling to 2 s, instead
//!   of spinning on a connection that stays in the backlog;
//! - every line these loops log per event goes through a [`LogLimiter`].
//!
//! Closing idle connections is the handler's part (it knows what idle means for its protocol).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::throttle::LogLimiter;

/// Descriptors kept for the link, the outbox, media, sensors, the status socket's clients and
/// the runtime itself, beyond those open at start.
pub const RESERVE: u64 = 128;

/// The descriptors all listeners together may hold for their connections.
#[derive(Clone, Debug)]
pub struct Descriptors {
    permits: Arc<Semaphore>,
    total: usize,
}

impl Descriptors {
    /// The budget of this process, shared by every daemon it runs: from its open-files limit,
    /// the soft limit less what was open when first asked, less the [`RESERVE`] (at least one).
    /// Counted once per process: a simulator running thousands of terminals in one process
    /// neither lists its thousands of descriptors at every terminal's start nor hands each
    /// terminal a budget of its own out of the one limit they share.
    pub fn process() -> Descriptors {
        static PROCESS: std::sync::OnceLock<Descriptors> = std::sync::OnceLock::new();
        PROCESS
            .get_or_init(|| {
                let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
                    .current
                    .unwrap_or(u64::MAX);
                let open = std::fs::read_dir("/proc/self/fd").map_or(32, |d| d.count() as u64);
                let total = Descriptors::budget(limit, open);
                tracing::debug!(
                    limit,
                    open,
                    reserve = RESERVE,
                    for_connections = total,
                    "descriptor budget"
                );
                Descriptors::new(total)
            })
            .clone()
    }

    /// What `limit` leaves for connections with `open` descriptors open.
    pub fn budget(limit: u64, open: u64) -> usize {
        let free = limit.saturating_sub(open).saturating_sub(RESERVE).max(1);
        usize::try_from(free)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS)
    }

    pub fn new(total: usize) -> Descriptors {
        let total = total.clamp(1, Semaphore::MAX_PERMITS);
        Descriptors {
            permits: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// Descriptors for connections in all.
    pub fn total(&self) -> usize {
        self.total
    }
}

/// One listener's admission: at most `max` connections of its own, within the shared budget.
#[derive(Clone, Debug)]
pub struct Gate {
    what: &'static str,
    max: usize,
    own: Arc<Semaphore>,
    shared: Descriptors,
    refused: Arc<AtomicU64>,
}

/// Holds a connection's place until it is dropped.
#[derive(Debug)]
pub struct Admitted {
    _own: OwnedSemaphorePermit,
    _shared: OwnedSemaphorePermit,
}

impl Gate {
    /// `what` names the listener in log lines ("HJ 212", "status socket").
    pub fn new(what: &'static str, max: usize, shared: &Descriptors) -> Gate {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Gate {
            what,
            max,
            own: Arc::new(Semaphore::new(max)),
            shared: shared.clone(),
            refused: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A place for one more connection, if there is one.
    pub fn admit(&self) -> Option<Admitted> {
        let own = self.own.clone().try_acquire_owned().ok()?;
        let shared = self.shared.permits.clone().try_acquire_owned().ok()?;
        Some(Admitted {
            _own: own,
            _shared: shared,
        })
    }

    /// Connections closed at once because there was no place.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Connections being served now.
    pub fn in_use(&self) -> usize {
        self.max - self.own.available_permits()
    }
}

/// A listener the loop can accept from: TCP or Unix.
pub trait Accept {
    type Stream: Send + 'static;
    /// The next connection and a name for its peer.
    fn accept_one(&self) -> impl Future<Output = std::io::Result<(Self::Stream, String)>> + Send;
}

impl Accept for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept_one(&self) -> std::io::Result<(Self::Stream, String)> {
        let (s, peer) = self.accept().await?;
        Ok((s, peer.to_string()))
    }
}

impl Accept for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept_one(&self) -> std::io::Result<(Self::Stream, String)> {
        let (s, _) = self.accept().await?;
        Ok((s, "local client".to_owned()))
    }
}

/// How long to wait after the `n`-th accept error in a row (from 1): 50 ms doubling to 2 s.
pub fn backoff(n: u32) -> Duration {
    Duration::from_millis(50u64.saturating_mul(1 << n.saturating_sub(1).min(6)))
        .min(Duration::from_secs(2))
}

/// Accepts connections until `stop` fires, handing each admitted one to `handle` on its own
/// task (holding its place until the task ends) and closing the others at once.
pub async fn serve<L, F, Fut>(listener: L, gate: Gate, stop: CancellationToken, mut handle: F)
where
    L: Accept,
    F: FnMut(L::Stream, String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let log = LogLimiter::default();
    let mut errors = 0u32;
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept_one() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                errors = 0;
                a
            }
            Err(e) => {
                errors = errors.saturating_add(1);
                let wait = backoff(errors);
                if let Some(more) = log.allow("accept") {
                    tracing::warn!(
                        "{}: cannot accept a connection: {e}; waiting {wait:?} before the next{more}",
                        gate.what
                    );
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => continue,
                }
            }
        };
        let Some(place) = gate.admit() else {
            drop(stream);
            gate.refused.fetch_add(1, Ordering::Relaxed);
            if let Some(more) = log.allow("refused") {
                tracing::warn!(
                    "{}: connection from {peer} closed: {} connections in use, the most allowed{more}",
                    gate.what,
                    gate.in_use()
                );
            }
            continue;
        };
        let work = handle(stream, peer);
        tokio::spawn(async move {
            work.await;
            drop(place);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_keeps_a_reserve_below_the_open_files_limit() {
        assert_eq!(Descriptors::budget(1024, 20), 1024 - 20 - RESERVE as usize);
        assert_eq!(Descriptors::budget(100, 20), 1, "never nothing at all");
        assert!(Descriptors::budget(u64::MAX, 20) > 1_000_000);
    }

    #[test]
    fn accept_errors_back_off_up_to_two_seconds() {
        let waits: Vec<u64> = (1..=9).map(|n| backoff(n).as_millis() as u64).collect();
        assert_eq!(waits, [50, 100, 200, 400, 800, 1600, 2000, 2000, 2000]);
    }

    #[test]
    fn a_gate_admits_its_own_maximum_within_the_shared_budget() {
        let shared = Descriptors::new(3);
        let (a, b) = (Gate::new("a", 2, &shared), Gate::new("b", 5, &shared));
        let a1 = a.admit().unwrap();
        let _a2 = a.admit().unwrap();
        assert!(a.admit().is_none(), "a's own maximum");
        let _b1 = b.admit().unwrap();
        assert!(b.admit().is_none(), "the shared budget");
        drop(a1);
        assert!(b.admit().is_some(), "a place freed is a place again");
    }

    #[tokio::test]
    async fn connections_beyond_the_maximum_are_closed_at_once_and_served_when_a_place_frees() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let gate = Gate::new("test", 2, &Descriptors::new(100));
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            gate.clone(),
            stop.clone(),
            |mut s: tokio::net::TcpStream, _| async move {
                // Echo one byte, then hold the connection until the client closes it.
                let mut b = [0u8; 1];
                while s.read(&mut b).await.unwrap_or(0) == 1 {
                    let _ = s.write_all(&b).await;
                }
            },
        ));
        let test = async {
            let mut held = Vec::new();
            for _ in 0..2 {
                let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
                c.write_all(b"x").await.unwrap();
                let mut b = [0u8; 1];
                c.read_exact(&mut b).await.unwrap();
                held.push(c);
            }
            let mut extra = Vec::new();
            for _ in 0..20 {
                let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
                let mut b = [0u8; 1];
                // Closed without an answer.
                assert_eq!(c.read(&mut b).await.unwrap_or(0), 0);
                extra.push(c);
            }
            assert_eq!(gate.refused(), 20);
            drop(held);
            // Once a place is free, a client is served again.
            loop {
                let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
                c.write_all(b"y").await.unwrap();
                let mut b = [0u8; 1];
                if c.read(&mut b).await.unwrap_or(0) == 1 {
                    assert_eq!(&b, b"y");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), test)
            .await
            .unwrap();
        stop.cancel();
        server.await.unwrap();
    }
}
