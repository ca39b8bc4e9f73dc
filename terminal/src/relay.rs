//! The relay role of a county (or city) point: forwards RTP and RTCP between upstream and the
//! sites under it without decoding (SRTP stays encrypted end to end: the relay has no keys),
//! and the sites' feedback about a stream back the way the stream came, a little of it
//! ([`Routes::feedback`]).
//!
//! One socket, one dedicated thread: each datagram is classified
//! ([`cuntong_core::media::rtp::classify`]), looked up in the forwarding table
//! ([`Routes`]) and sent to all its destinations with one `sendmmsg(2)` call per batch of up to
//! [`BATCH`] copies, so fanning one stream out to a thousand sites costs a handful of system
//! calls per packet rather than a thousand (elsewhere than Linux: one `send_to` each).
//!
//! The same socket speaks STUN (told apart by the first byte): it probes every destination of
//! the table and sends media only to those that answered from their own address
//! ([`cuntong_core::media::consent`]), and it answers the probes of the relay above. A stream
//! is forwarded only when it comes from the address the plan names for it; anything else is
//! counted ([`RelayStats`]) and dropped.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cuntong_core::media::routes::{Routes, Verdict};
use cuntong_core::media::rtp::{Packet, classify};
use cuntong_core::media::stun::{self, Message, Responder, TransactionId};

/// Copies of a packet handed to the kernel in one call, at most.
pub const BATCH: usize = 256;
/// Largest datagram forwarded (RTP over a 1,500-byte MTU, with room for tunnels' overhead).
const MAX_DATAGRAM: usize = 2048;
/// How often the relay looks for consent probes due (and how long a receive waits).
const POLL: Duration = Duration::from_millis(50);

/// What the relay has done.
#[derive(Debug, Default)]
pub struct RelayStats {
    pub received: AtomicU64,
    /// Copies sent (one per destination).
    pub forwarded: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Packets of streams with no route (a site without an upstream slot).
    pub unrouted: AtomicU64,
    /// Packets of a routed stream from an address other than its planned source (or reports
    /// from an address the table does not know): dropped.
    pub forged: AtomicU64,
    /// Copies not sent because their destination has not consented (never answered a probe,
    /// or stopped answering).
    pub unconsented: AtomicU64,
    /// Consent probes (STUN Binding Requests) sent.
    pub probes: AtomicU64,
    /// Answers to our probes that gave or renewed consent.
    pub consents: AtomicU64,
    /// Binding Requests answered (the relay above probing this one).
    pub answered: AtomicU64,
    /// Datagrams that are not RTP, RTCP or STUN that consent uses.
    pub malformed: AtomicU64,
    /// Copies the kernel refused.
    pub send_errors: AtomicU64,
    /// Feedback not passed on: another about the same stream went its way just before.
    pub feedback_held: AtomicU64,
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
    /// Milliseconds added to the relay's clock (tests move time on without waiting).
    #[cfg_attr(not(test), allow(dead_code))]
    skew_ms: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    /// Binds `bind` and starts forwarding by `routes` (to each destination once it consents).
    pub fn start(bind: SocketAddr, routes: Routes) -> std::io::Result<Relay> {
        let socket = UdpSocket::bind(bind)?;
        // Wakes up now and then to probe and to see whether it is to stop.
        socket.set_read_timeout(Some(POLL))?;
        let addr = socket.local_addr()?;
        let routes = Arc::new(Mutex::new(routes));
        let stats = Arc::new(RelayStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let skew_ms = Arc::new(AtomicU64::new(0));
        let thread = {
            let state = Loop {
                socket,
                routes: routes.clone(),
                stats: stats.clone(),
                stop: stop.clone(),
                epoch: Instant::now(),
                skew_ms: skew_ms.clone(),
            };
            std::thread::Builder::new()
                .name("relay".into())
                .spawn(move || state.run())?
        };
        Ok(Relay {
            addr,
            routes,
            stats,
            stop,
            skew_ms,
            thread: Some(thread),
        })
    }

    /// Moves the relay's clock on by `by` (consent lapsing, in tests).
    #[cfg(test)]
    fn advance(&self, by: Duration) {
        self.skew_ms
            .fetch_add(by.as_millis() as u64, Ordering::Relaxed);
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

/// The forwarding thread's state.
struct Loop {
    socket: UdpSocket,
    routes: Arc<Mutex<Routes>>,
    stats: Arc<RelayStats>,
    stop: Arc<AtomicBool>,
    epoch: Instant,
    skew_ms: Arc<AtomicU64>,
}

/// 96 random bits for a probe (answers must not be guessable by anyone who did not see it).
fn new_transaction_id() -> TransactionId {
    rand::random()
}

impl Loop {
    fn now_ms(&self) -> u64 {
        (self.epoch.elapsed().as_millis() as u64)
            .saturating_add(self.skew_ms.load(Ordering::Relaxed))
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn count(&self, f: impl Fn(&RelayStats) -> &AtomicU64, n: u64) {
        f(&self.stats).fetch_add(n, Ordering::Relaxed);
    }

    fn run(self) {
        let mut buf = [0u8; MAX_DATAGRAM];
        let mut sender = Sender::new();
        let mut dests: Vec<SocketAddr> = Vec::new();
        let mut responder = Responder::new();
        let mut next_poll = 0;
        while !self.stop.load(Ordering::Relaxed) {
            let now = self.now_ms();
            if now >= next_poll {
                next_poll = now + POLL.as_millis() as u64;
                self.probe(now);
            }
            let (n, from) = match self.socket.recv_from(&mut buf) {
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
            self.count(|s| &s.received, 1);
            let datagram = &buf[..n];
            if stun::is_stun(datagram) {
                self.on_stun(datagram, from, &mut responder);
                continue;
            }
            let Ok(packet) = classify(datagram) else {
                self.count(|s| &s.malformed, 1);
                continue;
            };
            dests.clear();
            {
                let now = self.now_ms();
                let mut routes = self.routes();
                let verdict = match packet {
                    Packet::Rtcp {
                        about: Some(about),
                        keyframe,
                        ..
                    } => routes.feedback(about, keyframe, from, now),
                    _ => routes.destinations(&packet, from),
                };
                match verdict {
                    Verdict::Forward { to, withheld } => {
                        dests.extend(to.iter());
                        self.count(|s| &s.unconsented, withheld as u64);
                        if dests.is_empty() && withheld == 0 {
                            self.count(|s| &s.unrouted, 1);
                        }
                    }
                    Verdict::Unrouted => self.count(|s| &s.unrouted, 1),
                    Verdict::Forged => self.count(|s| &s.forged, 1),
                    Verdict::Held => self.count(|s| &s.feedback_held, 1),
                }
            }
            if dests.is_empty() {
                continue;
            }
            let (sent, failed) = sender.send(&self.socket, datagram, &dests);
            self.count(|s| &s.forwarded, sent as u64);
            self.count(|s| &s.bytes_out, (sent * n) as u64);
            self.count(|s| &s.send_errors, failed as u64);
        }
    }

    /// Sends the consent probes due (and lets lapsed consent go).
    fn probe(&self, now: u64) {
        let probes = self.routes().poll(now, new_transaction_id);
        for (to, probe) in probes {
            match self.socket.send_to(&probe, to) {
                Ok(_) => self.count(|s| &s.probes, 1),
                Err(_) => self.count(|s| &s.send_errors, 1),
            }
        }
    }

    /// A probe to answer, or an answer to one of ours.
    fn on_stun(&self, datagram: &[u8], from: SocketAddr, responder: &mut Responder) {
        let now = self.now_ms();
        match stun::decode(datagram) {
            Ok(Message::BindingRequest { .. }) => {
                if let Some(answer) = responder.answer(datagram, from, now)
                    && self.socket.send_to(answer.as_bytes(), from).is_ok()
                {
                    self.count(|s| &s.answered, 1);
                }
            }
            Ok(Message::BindingSuccess { id }) => {
                if self.routes().answered(from, &id, now) {
                    self.count(|s| &s.consents, 1);
                }
            }
            Err(_) => self.count(|s| &s.malformed, 1),
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
    use cuntong_core::media::stun::{binding_request, binding_success};

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

    /// A small RTP packet: a hundred of them fit a receiving socket's buffer.
    fn short_rtp(ssrc: u32, seq: u16) -> Vec<u8> {
        let mut p = rtp(ssrc, seq);
        p.truncate(40);
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

    /// The next datagram that is not a consent probe (each probe answered if `answer`), or
    /// `None` once `within` passed without one.
    fn media(s: &UdpSocket, buf: &mut [u8], answer: bool, within: Duration) -> Option<usize> {
        let end = Instant::now() + within;
        loop {
            let left = end.checked_duration_since(Instant::now())?;
            s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let (n, from) = s.recv_from(buf).ok()?;
            match stun::decode(&buf[..n]) {
                Ok(Message::BindingRequest { id }) => {
                    if answer {
                        s.send_to(binding_success(&id, from).as_bytes(), from)
                            .unwrap();
                    }
                }
                _ => return Some(n),
            }
        }
    }

    /// Each of `peers` answers its first probe; returns once the relay has the answers.
    fn consent(relay: &Relay, peers: &[&UdpSocket]) {
        let before = relay.stats().get(|s| &s.consents);
        let mut buf = [0u8; 2048];
        for p in peers {
            loop {
                let (n, from) = p.recv_from(&mut buf).unwrap();
                if let Ok(Message::BindingRequest { id }) = stun::decode(&buf[..n]) {
                    p.send_to(binding_success(&id, from).as_bytes(), from)
                        .unwrap();
                    break;
                }
            }
        }
        let want = before + peers.len() as u64;
        assert!(wait(|| relay.stats().get(|s| &s.consents) >= want));
    }

    const SECOND: Duration = Duration::from_secs(1);

    /// Sends `packets` to the relay from `from`, ten at a time, each ten once the relay has
    /// read them (a burst of a hundred 1,200-byte packets overflows a socket's buffer).
    fn send_paced(relay: &Relay, from: &UdpSocket, packets: impl IntoIterator<Item = Vec<u8>>) {
        for (i, p) in packets.into_iter().enumerate() {
            if i % 10 == 0 {
                let want = relay.stats().get(|s| &s.received);
                from.send_to(&p, relay.local_addr()).unwrap();
                assert!(wait(|| relay.stats().get(|s| &s.received) > want));
            } else {
                from.send_to(&p, relay.local_addr()).unwrap();
            }
        }
    }

    #[test]
    fn the_chairs_stream_reaches_every_site_and_the_floor_switches_the_upstream_slot() {
        let upstream = socket();
        let up = upstream.local_addr().unwrap();
        let sites: Vec<UdpSocket> = (0..3).map(|_| socket()).collect();
        let site_addrs: Vec<SocketAddr> = sites.iter().map(|s| s.local_addr().unwrap()).collect();
        let mut routes = Routes::new(Some(up));
        routes.expect(1, up);
        routes.forward(1, site_addrs.clone());
        let relay = Relay::start(local(), routes).unwrap();
        let to_relay = relay.local_addr();
        consent(&relay, &[&upstream, &sites[0], &sites[1], &sites[2]]);

        // The chair's stream (SSRC 1) comes from upstream: every site receives every packet,
        // byte for byte.
        for seq in 0..50 {
            upstream.send_to(&rtp(1, seq), to_relay).unwrap();
        }
        let mut buf = [0u8; 2048];
        for s in &sites {
            for seq in 0..50 {
                let n = media(s, &mut buf, true, 5 * SECOND).unwrap();
                assert_eq!(&buf[..n], &rtp(1, seq)[..]);
            }
        }
        // Site 0 (SSRC 2) has no upstream slot: its stream goes nowhere.
        sites[0].send_to(&rtp(2, 0), to_relay).unwrap();
        assert!(wait(|| relay.stats().get(|s| &s.unrouted) == 1));
        // The floor is granted to site 0: up and to the other sites, not back to itself.
        relay.update(|r| {
            r.expect(2, site_addrs[0]);
            r.forward(2, vec![up, site_addrs[1], site_addrs[2]])
        });
        sites[0].send_to(&rtp(2, 1), to_relay).unwrap();
        for s in [&upstream, &sites[1], &sites[2]] {
            let n = media(s, &mut buf, true, 5 * SECOND).unwrap();
            assert_eq!(&buf[..n], &rtp(2, 1)[..]);
        }
        // A receiver report of site 1 goes upstream; garbage is counted and dropped.
        sites[1]
            .send_to(&[0x80, 201, 0, 1, 0, 0, 0, 9], to_relay)
            .unwrap();
        let n = media(&upstream, &mut buf, true, 5 * SECOND).unwrap();
        assert_eq!(&buf[..n], &[0x80, 201, 0, 1, 0, 0, 0, 9]);
        sites[1].send_to(b"hello", to_relay).unwrap();
        assert!(wait(|| relay.stats().get(|s| &s.malformed) == 1));
        assert_eq!(relay.stats().get(|s| &s.forwarded), 150 + 3 + 1);
        assert!(
            media(&sites[0], &mut buf, true, SECOND / 5).is_none(),
            "the speaker does not hear itself"
        );
    }

    #[test]
    fn a_declared_foreign_address_gets_only_probes_while_one_that_answers_gets_the_stream() {
        let upstream = socket();
        let up = upstream.local_addr().unwrap();
        let site = socket();
        // Someone else's address, named by a site as its own: it never answers.
        let foreign = socket();
        let mut routes = Routes::new(Some(up));
        routes.expect(1, up);
        routes.forward(
            1,
            vec![site.local_addr().unwrap(), foreign.local_addr().unwrap()],
        );
        let relay = Relay::start(local(), routes).unwrap();
        let to_relay = relay.local_addr();
        consent(&relay, &[&upstream, &site]);
        send_paced(&relay, &upstream, (0..100).map(|seq| short_rtp(1, seq)));
        let mut buf = [0u8; 2048];
        for seq in 0..100 {
            let n = media(&site, &mut buf, true, 5 * SECOND).unwrap();
            assert_eq!(&buf[..n], &short_rtp(1, seq)[..]);
        }
        assert!(wait(|| relay.stats().get(|s| &s.unconsented) == 100));
        // What reached the foreign address: a few 20-byte probes, no media.
        let mut probes = 0;
        foreign.set_read_timeout(Some(SECOND / 2)).unwrap();
        while let Ok((n, _)) = foreign.recv_from(&mut buf) {
            assert_eq!(n, 20, "only probes");
            assert!(matches!(
                stun::decode(&buf[..n]),
                Ok(Message::BindingRequest { .. })
            ));
            probes += 1;
        }
        assert!((1..=4).contains(&probes), "{probes} probes");
        // The relay answers a probe of its own (from the relay above) with the probe's id.
        upstream
            .send_to(&binding_request(&[9; 12]), to_relay)
            .unwrap();
        let n = media(&upstream, &mut buf, true, 5 * SECOND).unwrap();
        assert_eq!(
            stun::decode(&buf[..n]),
            Ok(Message::BindingSuccess { id: [9; 12] })
        );
        // An answer from the foreign address to a probe sent elsewhere proves nothing.
        foreign
            .send_to(binding_success(&[1; 12], to_relay).as_bytes(), to_relay)
            .unwrap();
        upstream.send_to(&short_rtp(1, 100), to_relay).unwrap();
        assert!(media(&site, &mut buf, true, 5 * SECOND).is_some());
        assert!(foreign.recv_from(&mut buf).is_err() || buf[0] <= 3);
    }

    #[test]
    fn consent_lapses_when_a_site_stops_answering() {
        let upstream = socket();
        let up = upstream.local_addr().unwrap();
        let site = socket();
        let mut routes = Routes::new(Some(up));
        routes.expect(1, up);
        routes.forward(1, vec![site.local_addr().unwrap()]);
        let relay = Relay::start(local(), routes).unwrap();
        let to_relay = relay.local_addr();
        consent(&relay, &[&site]);
        let mut buf = [0u8; 2048];
        upstream.send_to(&short_rtp(1, 0), to_relay).unwrap();
        assert!(media(&site, &mut buf, false, 5 * SECOND).is_some());
        // Thirty seconds without an answer (the relay's clock moved on): nothing more.
        relay.advance(Duration::from_secs(31));
        let before = relay.stats().get(|s| &s.unconsented);
        assert!(wait(|| {
            upstream.send_to(&short_rtp(1, 1), to_relay).unwrap();
            relay.stats().get(|s| &s.unconsented) > before
        }));
        // What went out before it lapsed; then 50 packets, none of which reaches the site.
        while media(&site, &mut buf, false, SECOND / 5).is_some() {}
        let before = relay.stats().get(|s| &s.unconsented);
        for seq in 2..52 {
            upstream.send_to(&short_rtp(1, seq), to_relay).unwrap();
        }
        assert!(media(&site, &mut buf, false, SECOND / 2).is_none());
        assert!(wait(|| relay.stats().get(|s| &s.unconsented) == before + 50));
    }

    #[test]
    fn forged_rtp_with_a_planned_ssrc_from_another_address_is_not_forwarded() {
        let upstream = socket();
        let up = upstream.local_addr().unwrap();
        let sites: Vec<UdpSocket> = (0..3).map(|_| socket()).collect();
        let forger = socket();
        let mut routes = Routes::new(Some(up));
        routes.expect(1, up);
        routes.forward(1, sites.iter().map(|s| s.local_addr().unwrap()).collect());
        let relay = Relay::start(local(), routes).unwrap();
        consent(&relay, &[&sites[0], &sites[1], &sites[2]]);
        // 100 packets of the chair's SSRC from another address, RTP and RTCP: 0 forwarded.
        let report = vec![0x80, 200, 0, 1, 0, 0, 0, 1];
        send_paced(
            &relay,
            &forger,
            (0..100).map(|seq| short_rtp(1, seq)).chain([report]),
        );
        assert!(wait(|| relay.stats().get(|s| &s.forged) == 101));
        assert_eq!(relay.stats().get(|s| &s.forwarded), 0);
        // The genuine source's packets all go.
        send_paced(
            &relay,
            &upstream,
            (0..100).map(|seq| short_rtp(1, 1000 + seq)),
        );
        let mut buf = [0u8; 2048];
        for s in &sites {
            for seq in 0..100 {
                let n = media(s, &mut buf, true, 5 * SECOND).unwrap();
                assert_eq!(&buf[..n], &short_rtp(1, 1000 + seq)[..]);
            }
            assert!(media(s, &mut buf, true, SECOND / 10).is_none());
        }
        assert_eq!(relay.stats().get(|s| &s.forwarded), 300);
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
