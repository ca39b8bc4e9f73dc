//! The media side of a site's link: a UDP proxy between the sites behind it and their relay,
//! as the site's router and rural line would stand.
//!
//! Sites send to the proxy's listening address as if it were the relay; the proxy passes each
//! datagram on to the relay from a socket of that site's own (its address as the relay sees
//! it: the proxy's address facing the site, with the site's port, as a port-preserving NAT
//! gives it), and what arrives there goes back to the site from the listening address. So the
//! relay reaches a site at one address in both directions, as it must (it sends a stream only
//! to where the site answers, and takes a site's stream only from there). The sockets of
//! sites that only listen are opened at start (`forward`): the relay probes them before they
//! send anything, as a router forwards a box's media ports.
//!
//! Every datagram, either way, passes the link ([`ProxyControl`]): cut, stalled, lost at its
//! rate, and held back for the delay and its jitter in one queue ordered by when each is due,
//! so datagrams overtake each other as jitter has them do. The queue is bounded: what does not
//! fit is dropped and counted, as a router's buffer drops.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::ProxyControl;

/// Datagrams held back for delay at once, at most (3,000 full ones are 4.5 MB: seconds of a
/// rural link's traffic).
pub const MAX_QUEUED: usize = 3_000;
/// Sites one proxy carries at most; datagrams of further sources are dropped.
pub const MAX_SITES: usize = 1_024;
/// Largest datagram carried.
const MAX_DATAGRAM: usize = 2_048;

/// A datagram on its way: when it is due, in what order it came, and where it goes.
struct Due {
    at: Instant,
    order: u64,
    from: Arc<UdpSocket>,
    to: SocketAddr,
    data: Vec<u8>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Due) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Due) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Due) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(other.at, other.order))
    }
}

/// Where datagrams enter the link.
#[derive(Clone)]
struct Line {
    control: ProxyControl,
    queue: mpsc::Sender<Due>,
}

impl Line {
    /// Takes a datagram onto the link, from `from` to `to`, if the link passes it.
    fn carry(&self, from: &Arc<UdpSocket>, to: SocketAddr, data: &[u8]) {
        if !self.control.passes() {
            return;
        }
        let due = Due {
            at: Instant::now() + self.control.latency(),
            order: 0,
            from: from.clone(),
            to,
            data: data.to_vec(),
        };
        if self.queue.try_send(due).is_err() {
            self.control
                .stats
                .overflowed
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Starts a UDP proxy on `listen` for sites whose relay is at `upstream`, with the sockets of
/// the sites at `forward` open from the start; their addresses as the relay sees them, in the
/// same order.
pub async fn start(
    listen: SocketAddr,
    upstream: SocketAddr,
    forward: &[SocketAddr],
) -> std::io::Result<(ProxyControl, Vec<SocketAddr>)> {
    let inner = Arc::new(UdpSocket::bind(listen).await?);
    let control = ProxyControl::new(inner.local_addr()?);
    let (queue, due) = mpsc::channel(MAX_QUEUED);
    let line = Line {
        control: control.clone(),
        queue,
    };
    tokio::spawn(deliver(due, control.clone()));
    let mut sites = HashMap::new();
    let mut public = Vec::new();
    for site in forward {
        let outer = open_site(*site, upstream, &inner, &line).await?;
        public.push(outer.local_addr()?);
        sites.insert(*site, outer);
    }
    tokio::spawn(from_sites(inner, upstream, sites, line));
    Ok((control, public))
}

/// Datagrams from the sites, on to the relay from each site's own socket.
async fn from_sites(
    inner: Arc<UdpSocket>,
    upstream: SocketAddr,
    mut sites: HashMap<SocketAddr, Arc<UdpSocket>>,
    line: Line,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let Ok((n, site)) = inner.recv_from(&mut buf).await else {
            continue; // an ICMP error of an earlier send: nothing to do here
        };
        let outer = match sites.get(&site) {
            Some(o) => o.clone(),
            None if sites.len() < MAX_SITES => match open_site(site, upstream, &inner, &line).await
            {
                Ok(o) => sites.entry(site).or_insert(o).clone(),
                Err(e) => {
                    tracing::warn!(%site, error = %e, "cannot open a socket for this site");
                    continue;
                }
            },
            None => {
                line.control
                    .stats
                    .overflowed
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        line.carry(&outer, upstream, &buf[..n]);
    }
}

/// Opens `site`'s socket: the proxy's address facing the site, with the site's port (another
/// port if that one is taken); what arrives there goes back to the site.
async fn open_site(
    site: SocketAddr,
    upstream: SocketAddr,
    inner: &Arc<UdpSocket>,
    line: &Line,
) -> std::io::Result<Arc<UdpSocket>> {
    let facing = facing(site)?;
    let outer = match UdpSocket::bind((facing, site.port())).await {
        Ok(s) => s,
        Err(_) => UdpSocket::bind((facing, 0)).await?,
    };
    let outer = Arc::new(outer);
    tracing::info!(%site, %upstream, public = %outer.local_addr()?, "site on the link");
    let (socket, inner, line) = (outer.clone(), inner.clone(), line.clone());
    tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            if let Ok((n, _)) = socket.recv_from(&mut buf).await {
                line.carry(&inner, site, &buf[..n]);
            }
        }
    });
    Ok(outer)
}

/// The local address the kernel would send to `site` from.
fn facing(site: SocketAddr) -> std::io::Result<IpAddr> {
    let any: SocketAddr = match site {
        SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let probe = std::net::UdpSocket::bind(any)?;
    probe.connect(site)?;
    Ok(probe.local_addr()?.ip())
}

/// Sends each datagram when it is due, in the order they fall due.
async fn deliver(mut incoming: mpsc::Receiver<Due>, control: ProxyControl) {
    let mut held: BinaryHeap<Reverse<Due>> = BinaryHeap::new();
    let mut order = 0u64;
    loop {
        let next = held.peek().map(|Reverse(d)| d.at);
        tokio::select! {
            d = incoming.recv() => {
                let Some(mut d) = d else { return };
                if held.len() >= MAX_QUEUED {
                    control.stats.overflowed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                order += 1;
                d.order = order;
                held.push(Reverse(d));
                control
                    .stats
                    .queued_peak
                    .fetch_max(held.len() as u64, Ordering::Relaxed);
            }
            _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                let now = Instant::now();
                while held.peek().is_some_and(|Reverse(d)| d.at <= now) {
                    if let Some(Reverse(d)) = held.pop() {
                        // A refused send is a datagram the network lost.
                        let _ = d.from.send_to(&d.data, d.to).await;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A relay stand-in: echoes every datagram to where it came from, and says where that was.
    async fn echo() -> (SocketAddr, mpsc::UnboundedReceiver<SocketAddr>) {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = s.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut b = [0u8; 2048];
            loop {
                let (n, from) = s.recv_from(&mut b).await.unwrap();
                let _ = tx.send(from);
                s.send_to(&b[..n], from).await.unwrap();
            }
        });
        (addr, rx)
    }

    async fn recv(s: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
        let mut b = [0u8; 2048];
        let (n, from) = tokio::time::timeout(Duration::from_secs(3), s.recv_from(&mut b))
            .await
            .ok()?
            .ok()?;
        Some((b[..n].to_vec(), from))
    }

    async fn proxy(
        upstream: SocketAddr,
        forward: &[SocketAddr],
    ) -> (ProxyControl, Vec<SocketAddr>) {
        start("127.0.0.1:0".parse().unwrap(), upstream, forward)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_site_reaches_the_relay_from_one_address_of_its_own_and_hears_back_from_the_proxy() {
        let (relay, mut seen) = echo().await;
        let (p, _) = proxy(relay, &[]).await;
        let site = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for i in 0..3u8 {
            site.send_to(&[i], p.addr).await.unwrap();
            let (data, from) = recv(&site).await.expect("the echo comes back");
            assert_eq!((data, from), (vec![i], p.addr));
        }
        let first = seen.recv().await.unwrap();
        assert_ne!(
            first,
            site.local_addr().unwrap(),
            "the relay sees the proxy's socket"
        );
        for _ in 0..2 {
            assert_eq!(seen.recv().await.unwrap(), first, "one address per site");
        }
        // Another site gets another address.
        let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        other.send_to(b"x", p.addr).await.unwrap();
        recv(&other).await.unwrap();
        assert_ne!(seen.recv().await.unwrap(), first);
    }

    #[tokio::test]
    async fn the_relay_reaches_a_forwarded_site_before_it_sends_anything_and_hears_its_answer() {
        let site = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let relay = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (p, public) = proxy(relay.local_addr().unwrap(), &[site.local_addr().unwrap()]).await;
        relay.send_to(b"probe", public[0]).await.unwrap();
        assert_eq!(recv(&site).await, Some((b"probe".to_vec(), p.addr)));
        site.send_to(b"answer", p.addr).await.unwrap();
        assert_eq!(recv(&relay).await, Some((b"answer".to_vec(), public[0])));
    }

    #[tokio::test]
    async fn delay_jitter_and_loss_are_what_the_link_is_set_to_and_the_queue_stays_bounded() {
        let (relay, _seen) = echo().await;
        let (p, _) = proxy(relay, &[]).await;
        p.set_delay(Duration::from_millis(50));
        p.set_jitter(Duration::from_millis(20));
        let site = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // Both ways take 30 to 70 ms each.
        let sent_at = std::time::Instant::now();
        site.send_to(b"ping", p.addr).await.unwrap();
        recv(&site).await.expect("the echo comes back");
        let rtt = sent_at.elapsed();
        assert!(rtt >= Duration::from_millis(60), "{rtt:?}");

        p.set_loss(10);
        let sent = 400u32;
        for i in 0..sent {
            site.send_to(&i.to_be_bytes(), p.addr).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut back = Vec::new();
        while let Some((data, _)) = recv(&site).await {
            back.push(u32::from_be_bytes(data[..4].try_into().unwrap()));
            if back.len() as u32 == sent {
                break;
            }
        }
        // Each way loses 10 %: about 81 % come back (binomial, 400 tries: 0.70 to 0.92 is
        // beyond five standard deviations).
        let share = back.len() as f64 / f64::from(sent);
        assert!((0.70..=0.92).contains(&share), "{share}");
        // Jitter of ±20 ms on datagrams 1 ms apart: some overtake others.
        let overtaken = back.windows(2).filter(|w| w[1] < w[0]).count();
        assert!(overtaken > 0, "{back:?}");
        let line = p.stats.line();
        assert!(line.contains("overflowed 0"), "{line}");
    }

    #[tokio::test]
    async fn a_flood_beyond_the_queue_is_dropped_and_counted() {
        let (relay, _seen) = echo().await;
        let (p, _) = proxy(relay, &[]).await;
        p.set_delay(Duration::from_secs(5));
        let site = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for i in 0..(2 * MAX_QUEUED as u32) {
            site.send_to(&i.to_be_bytes(), p.addr).await.unwrap();
            if i % 16 == 0 {
                tokio::task::yield_now().await;
            }
        }
        let overflowed = || p.stats.overflowed.load(Ordering::Relaxed);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while overflowed() == 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(overflowed() > 0, "{}", p.stats.line());
        assert_eq!(
            p.stats.queued_peak.load(Ordering::Relaxed),
            MAX_QUEUED as u64,
            "{}",
            p.stats.line()
        );
    }
}
