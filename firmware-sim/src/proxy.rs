//! A proxy that stands for a site's rural link, so tests can cut it, restore it and slow it
//! down on command: over TCP between terminals and the broker (here), over UDP between sites
//! and their relay for media ([`udp`]).
//!
//! While cut, established connections are closed and new ones are accepted and closed at once
//! (as a dead uplink behind a working local router looks to the terminal). While stalled,
//! connections stay open but nothing gets through in either direction (a power cut at the far
//! end, a dead radio link: no FIN, no RST; only keep-alives notice). A delay adds
//! latency to every chunk forwarded in either direction, and jitter a random part of up to as
//! much again either way. Loss, as a lossy radio link shows itself to TCP, resets a connection
//! with the given probability per forwarded chunk; over UDP it drops that share of datagrams.

pub mod udp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

/// Control of a running proxy. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ProxyControl {
    cut: Arc<AtomicBool>,
    stalled: Arc<AtomicBool>,
    delay_ms: Arc<AtomicU64>,
    jitter_ms: Arc<AtomicU64>,
    /// Per-chunk probability of a reset (per datagram: of a drop), in percent.
    loss_pct: Arc<AtomicU64>,
    pub stats: Arc<LinkStats>,
    /// Bumped on every cut, so live connections notice and close.
    epoch: watch::Sender<u64>,
    pub addr: SocketAddr,
}

/// What went through a link, and what it lost.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Chunks (datagrams) passed on.
    pub passed: AtomicU64,
    /// Lost to the link's loss rate.
    pub lost: AtomicU64,
    /// Swallowed while the link was cut or stalled.
    pub cut: AtomicU64,
    /// Dropped because the link's queue was full (a link buffers boundedly, as routers do).
    pub overflowed: AtomicU64,
    /// The most held back for delay at once.
    pub queued_peak: AtomicU64,
}

impl LinkStats {
    /// One line: `passed N lost N cut N overflowed N queued_peak N`.
    pub fn line(&self) -> String {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "passed {} lost {} cut {} overflowed {} queued_peak {}",
            n(&self.passed),
            n(&self.lost),
            n(&self.cut),
            n(&self.overflowed),
            n(&self.queued_peak)
        )
    }
}

impl ProxyControl {
    fn new(addr: SocketAddr) -> ProxyControl {
        let (epoch, _) = watch::channel(0u64);
        ProxyControl {
            cut: Arc::new(AtomicBool::new(false)),
            stalled: Arc::new(AtomicBool::new(false)),
            delay_ms: Arc::new(AtomicU64::new(0)),
            jitter_ms: Arc::new(AtomicU64::new(0)),
            loss_pct: Arc::new(AtomicU64::new(0)),
            stats: Arc::new(LinkStats::default()),
            epoch,
            addr,
        }
    }

    /// Whether the link passes the next chunk: not cut or stalled, and not lost; counted.
    fn passes(&self) -> bool {
        if self.is_cut() || self.stalled.load(Ordering::Relaxed) {
            self.stats.cut.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let loss = self.loss_pct.load(Ordering::Relaxed);
        if loss > 0 && rand::random::<u64>() % 100 < loss {
            self.stats.lost.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.stats.passed.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// How long the next chunk takes: the delay, plus or minus up to the jitter (uniformly).
    fn latency(&self) -> Duration {
        let delay = self.delay_ms.load(Ordering::Relaxed) as i64 * 1000;
        let jitter = self.jitter_ms.load(Ordering::Relaxed) as i64 * 1000;
        let offset = if jitter > 0 {
            rand::Rng::gen_range(&mut rand::thread_rng(), -jitter..=jitter)
        } else {
            0
        };
        Duration::from_micros((delay + offset).max(0) as u64)
    }

    /// Cuts the link: live connections close, new ones are refused.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.epoch.send_modify(|e| *e += 1);
    }

    /// Stalls the link: connections stay open, nothing passes, until `restore`.
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
        self.stalled.store(false, Ordering::SeqCst);
    }

    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }

    /// Resets connections with this probability (percent) per forwarded chunk.
    pub fn set_loss(&self, percent: u64) {
        self.loss_pct.store(percent.min(100), Ordering::SeqCst);
    }

    /// Adds this much latency to every forwarded chunk.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Varies each chunk's latency by up to this much either way (datagrams then overtake
    /// one another, as on a real link that spreads them over paths and queues).
    pub fn set_jitter(&self, jitter: Duration) {
        self.jitter_ms
            .store(jitter.as_millis() as u64, Ordering::SeqCst);
    }
}

/// Starts a proxy on `listen` forwarding to `upstream`, on the current runtime.
pub async fn start(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<ProxyControl> {
    let listener = TcpListener::bind(listen).await?;
    let control = ProxyControl::new(listener.local_addr()?);
    let c = control.clone();
    tokio::spawn(async move {
        let mut errors = 0u32;
        loop {
            let down = match listener.accept().await {
                Ok((down, _)) => {
                    errors = 0;
                    down
                }
                // Out of descriptors, say: wait rather than spin.
                Err(_) => {
                    errors = errors.saturating_add(1);
                    tokio::time::sleep(cuntong_terminal::listen::backoff(errors)).await;
                    continue;
                }
            };
            if c.is_cut() {
                drop(down);
                continue;
            }
            let c = c.clone();
            tokio::spawn(async move {
                let Ok(up) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = down.set_nodelay(true);
                let _ = up.set_nodelay(true);
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                let mut cut = c.epoch.subscribe();
                tokio::select! {
                    _ = pipe(dr, uw, c.clone()) => {}
                    _ = pipe(ur, dw, c.clone()) => {}
                    _ = cut.changed() => {}
                }
            });
        }
    });
    Ok(control)
}

/// One direction of a connection: chunks read are held back for the link's latency, in
/// order (a stream is not reordered: a chunk is never due before the one ahead of it), then
/// written. At most [`IN_FLIGHT`] chunks are on the way; beyond, reading waits (TCP's own flow
/// control then slows the sender, as on a real line).
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    control: ProxyControl,
) {
    let (line, mut arriving) = tokio::sync::mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT);
    let read = async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut last_due = Instant::now();
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if control.stalled.load(Ordering::Relaxed) {
                control.stats.cut.fetch_add(1, Ordering::Relaxed);
                continue; // swallowed by the dead link
            }
            if !control.passes() {
                return; // lost: the connection resets
            }
            last_due = last_due.max(Instant::now() + control.latency());
            if line.send((last_due, buf[..n].to_vec())).await.is_err() {
                return;
            }
        }
    };
    let write = async move {
        while let Some((due, chunk)) = arriving.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
    };
    tokio::join!(read, write);
}

/// Chunks on their way through one direction of a connection, at most.
const IN_FLIGHT: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn forwards_until_cut_and_again_after_restore() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = echo.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut b = [0u8; 64];
                    while let Ok(n) = s.read(&mut b).await {
                        if n == 0 || s.write_all(&b[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let p = start("127.0.0.1:0".parse().unwrap(), echo_addr)
            .await
            .unwrap();
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        s.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"ping");

        p.cut();
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
            .await
            .unwrap();
        assert!(matches!(n, Ok(0) | Err(_)), "a cut closes live connections");
        let mut fresh = TcpStream::connect(p.addr).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), fresh.read(&mut b))
            .await
            .unwrap();
        assert!(
            matches!(n, Ok(0) | Err(_)),
            "a cut link refuses new connections"
        );

        p.restore();
        let mut again = TcpStream::connect(p.addr).await.unwrap();
        again.write_all(b"pong").await.unwrap();
        again.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"pong");

        // Stalled: the connection stays open and silent; restored, it carries again.
        p.stall();
        again.write_all(b"lost").await.unwrap();
        let silent = tokio::time::timeout(Duration::from_millis(300), again.read(&mut b)).await;
        assert!(silent.is_err(), "nothing comes back, and nothing closes");
        p.restore();
        again.write_all(b"back").await.unwrap();
        again.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"back");
    }
}
