//! The relay role of a county (or city) point: forwards RTP and RTCP between upstream and the
//! sites under it without decoding (SRTP stays encrypted end to end: the relay has no keys).
//!
//! One socket, one dedicated thread: each datagram is classified
//! ([`cuntong_core::media::rtp::classify`]), looked up in the forwarding table
//! ([`Routes`]) and sent to all its destinations with one `sendmmsg(2)` call per batch of up to
//! [`BATCH`] copies, so fanning one stream out to a thousand sites costs a handful of system
//! calls per packet rather than a thousand (elsewhere than Linux: one `send_to` each).

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use cuntong_core::media::routes::Routes;
use cuntong_core::media::rtp::classify;

/// Copies of a packet handed to the kernel in one call, at most.
pub const BATCH: usize = 256;
/// Largest datagram forwarded (RTP over a 1,500-byte MTU, with room for tunnels' overhead).
const MAX_DATAGRAM: usize = 2048;

/// What the relay has done.
#[derive(Debug, Default)]
pub struct RelayStats {
    pub received: AtomicU64,
    /// Copies sent (one per destination).
    pub forwarded: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Packets of streams with no route (a site without an upstream slot).
    pub unrouted: AtomicU64,
    /// Datagrams that are not RTP or RTCP.
    pub malformed: AtomicU64,
    /// Copies the kernel refused.
    pub send_errors: AtomicU64,
}

impl RelayStats {
    pub fn get(&self, f: impl Fn(&RelayStats) -> &AtomicU64) -> u64 {
        f(self).load(Ordering::Relaxed)
    }
}

/// A running relay; it stops when dropped.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    routes: Arc<Mutex<Routes>>,
    stats: Arc<RelayStats>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    /// Binds `bind` and starts forwarding by `routes`.
    pub fn start(bind: SocketAddr, routes: Routes) -> std::io::Result<Relay> {
        let socket = UdpSocket::bind(bind)?;
        // Wakes up now and then to see whether it is to stop.
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let addr = socket.local_addr()?;
        let routes = Arc::new(Mutex::new(routes));
        let stats = Arc::new(RelayStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (routes, stats, stop) = (routes.clone(), stats.clone(), stop.clone());
            std::thread::Builder::new()
                .name("relay".into())
                .spawn(move || forward_loop(&socket, &routes, &stats, &stop))?
        };
        Ok(Relay {
            addr,
            routes,
            stats,
            stop,
            thread: Some(thread),
        })
    }

    /// Where sites and upstream send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes the forwarding table (takes effect from the next packet).
    pub fn update<R>(&self, f: impl FnOnce(&mut Routes) -> R) -> R {
        f(&mut self.routes.lock().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn stats(&self) -> &RelayStats {
        &self.stats
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn forward_loop(socket: &UdpSocket, routes: &Mutex<Routes>, stats: &RelayStats, stop: &AtomicBool) {
    let mut buf = [0u8; MAX_DATAGRAM];
    let mut sender = Sender::new();
    let mut dests: Vec<SocketAddr> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "relay receive failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        stats.received.fetch_add(1, Ordering::Relaxed);
        let Ok(packet) = classify(&buf[..n]) else {
            stats.malformed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        dests.clear();
        {
            let routes = routes.lock().unwrap_or_else(PoisonError::into_inner);
            dests.extend(routes.destinations(&packet, from).iter());
        }
        if dests.is_empty() {
            stats.unrouted.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let (sent, failed) = sender.send(socket, &buf[..n], &dests);
        stats.forwarded.fetch_add(sent as u64, Ordering::Relaxed);
        stats
            .bytes_out
            .fetch_add((sent * n) as u64, Ordering::Relaxed);
        if failed > 0 {
            stats
                .send_errors
                .fetch_add(failed as u64, Ordering::Relaxed);
        }
    }
}

/// Sends one datagram to many destinations: `sendmmsg(2)` in batches on Linux.
pub struct Sender {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    headers: nix::sys::socket::MultiHeaders<nix::sys::socket::SockaddrStorage>,
    #[cfg(any(target_os = "linux", target_os = "android"))]
    addrs: Vec<Option<nix::sys::socket::SockaddrStorage>>,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sender")
    }
}

impl Default for Sender {
    fn default() -> Sender {
        Sender::new()
    }
}

impl Sender {
    pub fn new() -> Sender {
        Sender {
            #[cfg(any(target_os = "linux", target_os = "android"))]
            headers: nix::sys::socket::MultiHeaders::preallocate(BATCH, None),
            #[cfg(any(target_os = "linux", target_os = "android"))]
            addrs: Vec::with_capacity(BATCH),
        }
    }

    /// Sends `datagram` to each of `to`; (copies sent, copies refused).
    #[cfg(any(target_os = "linux", target_os = "android"))]
    pub fn send(
        &mut self,
        socket: &UdpSocket,
        datagram: &[u8],
        to: &[SocketAddr],
    ) -> (usize, usize) {
        use nix::sys::socket::{MsgFlags, SockaddrStorage, sendmmsg};
        use std::io::IoSlice;
        use std::os::fd::AsRawFd;
        let iov = [IoSlice::new(datagram)];
        let (mut sent, mut failed) = (0, 0);
        let mut rest = to;
        while !rest.is_empty() {
            let k = rest.len().min(BATCH);
            self.addrs.clear();
            self.addrs
                .extend(rest[..k].iter().map(|a| Some(SockaddrStorage::from(*a))));
            let slices = std::iter::repeat_n(&iov, k);
            match sendmmsg(
                socket.as_raw_fd(),
                &mut self.headers,
                slices,
                &self.addrs,
                [],
                MsgFlags::empty(),
            ) {
                // The kernel may take fewer than offered; the rest go in the next call.
                Ok(results) => match results.count().min(k) {
                    0 => {
                        failed += 1;
                        rest = &rest[1..];
                    }
                    n => {
                        sent += n;
                        rest = &rest[n..];
                    }
                },
                // The first copy of the batch was refused: count it and go on past it.
                Err(_) => {
                    failed += 1;
                    rest = &rest[1..];
                }
            }
        }
        (sent, failed)
    }

    /// Sends `datagram` to each of `to`; (copies sent, copies refused).
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    pub fn send(
        &mut self,
        socket: &UdpSocket,
        datagram: &[u8],
        to: &[SocketAddr],
    ) -> (usize, usize) {
        let mut sent = 0;
        for a in to {
            if socket.send_to(datagram, a).is_ok() {
                sent += 1;
            }
        }
        (sent, to.len() - sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn local() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    fn socket() -> UdpSocket {
        let s = UdpSocket::bind(local()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }

    fn rtp(ssrc: u32, seq: u16) -> Vec<u8> {
        let mut p = vec![0x80, 96];
        p.extend(seq.to_be_bytes());
        p.extend(90_000u32.to_be_bytes());
        p.extend(ssrc.to_be_bytes());
        p.extend([0xab; 1188]);
        p
    }

    fn wait(cond: impl Fn() -> bool) -> bool {
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn the_chairs_stream_reaches_every_site_and_the_floor_switches_the_upstream_slot() {
        let upstream = socket();
        let sites: Vec<UdpSocket> = (0..3).map(|_| socket()).collect();
        let site_addrs: Vec<SocketAddr> = sites.iter().map(|s| s.local_addr().unwrap()).collect();
        let mut routes = Routes::new(Some(upstream.local_addr().unwrap()));
        routes.forward(1, site_addrs.clone());
        let relay = Relay::start(local(), routes).unwrap();
        let to_relay = relay.local_addr();

        // The chair's stream (SSRC 1) comes from upstream: every site receives every packet,
        // byte for byte.
        for seq in 0..50 {
            upstream.send_to(&rtp(1, seq), to_relay).unwrap();
        }
        let mut buf = [0u8; 2048];
        for s in &sites {
            for seq in 0..50 {
                let (n, from) = s.recv_from(&mut buf).unwrap();
                assert_eq!(from, to_relay);
                assert_eq!(&buf[..n], &rtp(1, seq)[..]);
            }
        }
        // Site 0 (SSRC 2) has no upstream slot: its stream goes nowhere.
        sites[0].send_to(&rtp(2, 0), to_relay).unwrap();
        assert!(wait(|| relay.stats().get(|s| &s.unrouted) == 1));
        // The floor is granted to site 0: up and to the other sites, not back to itself.
        relay.update(|r| {
            r.forward(
                2,
                vec![upstream.local_addr().unwrap(), site_addrs[1], site_addrs[2]],
            )
        });
        sites[0].send_to(&rtp(2, 1), to_relay).unwrap();
        for s in [&upstream, &sites[1], &sites[2]] {
            let (n, _) = s.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], &rtp(2, 1)[..]);
        }
        // A receiver report of site 1 goes upstream; garbage is counted and dropped.
        sites[1]
            .send_to(&[0x80, 201, 0, 1, 0, 0, 0, 9], to_relay)
            .unwrap();
        let (n, _) = upstream.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], &[0x80, 201, 0, 1, 0, 0, 0, 9]);
        sites[1].send_to(b"hello", to_relay).unwrap();
        assert!(wait(|| relay.stats().get(|s| &s.malformed) == 1));
        assert_eq!(relay.stats().get(|s| &s.forwarded), 150 + 3 + 1);
        sites[0]
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        assert!(
            sites[0].recv_from(&mut buf).is_err(),
            "the speaker does not hear itself"
        );
    }

    #[test]
    fn a_fan_out_wider_than_one_batch_reaches_everyone() {
        let sites: Vec<UdpSocket> = (0..BATCH + 44).map(|_| socket()).collect();
        let addrs: Vec<SocketAddr> = sites.iter().map(|s| s.local_addr().unwrap()).collect();
        let sender = socket();
        let (sent, failed) = Sender::new().send(&sender, &rtp(5, 7), &addrs);
        assert_eq!((sent, failed), (BATCH + 44, 0));
        let mut buf = [0u8; 2048];
        for s in &sites {
            let (n, _) = s.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], &rtp(5, 7)[..]);
        }
    }
}
