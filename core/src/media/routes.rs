//! A relay's forwarding table: where each stream (by SSRC) goes. A county relay receives the
//! chair's stream from upstream and sends it to each site under it that watches; it receives its
//! sites' streams and sends up only those that have an upstream slot (the current speaker); RTCP
//! of a routed stream (sender reports) follows the stream, and RTCP of anyone else (receiver
//! reports of the sites) goes upstream, toward the senders. Streams with no route are dropped:
//! a receive-only village has no upstream slot.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::net::SocketAddr;

use super::rtp::Packet;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Routes {
    streams: BTreeMap<u32, Vec<SocketAddr>>,
    upstream: Option<SocketAddr>,
}

impl Routes {
    pub fn new(upstream: Option<SocketAddr>) -> Routes {
        Routes {
            streams: BTreeMap::new(),
            upstream,
        }
    }

    /// Where reports go (the relay above, or the meeting's media point).
    pub fn upstream(&self) -> Option<SocketAddr> {
        self.upstream
    }

    pub fn set_upstream(&mut self, upstream: Option<SocketAddr>) {
        self.upstream = upstream;
    }

    /// Sends stream `ssrc` to exactly `to` from now on (duplicates removed, order kept).
    pub fn forward(&mut self, ssrc: u32, to: Vec<SocketAddr>) {
        let mut seen = Vec::with_capacity(to.len());
        for a in to {
            if !seen.contains(&a) {
                seen.push(a);
            }
        }
        if seen.is_empty() {
            self.streams.remove(&ssrc);
        } else {
            self.streams.insert(ssrc, seen);
        }
    }

    /// Adds one destination to stream `ssrc` (an operations console viewing it, say).
    pub fn add(&mut self, ssrc: u32, to: SocketAddr) {
        let d = self.streams.entry(ssrc).or_default();
        if !d.contains(&to) {
            d.push(to);
        }
    }

    /// Removes one destination from stream `ssrc`.
    pub fn remove(&mut self, ssrc: u32, to: SocketAddr) {
        if let Some(d) = self.streams.get_mut(&ssrc) {
            d.retain(|a| *a != to);
            if d.is_empty() {
                self.streams.remove(&ssrc);
            }
        }
    }

    /// Stops forwarding stream `ssrc`.
    pub fn stop(&mut self, ssrc: u32) {
        self.streams.remove(&ssrc);
    }

    /// The streams routed, with their destinations.
    pub fn streams(&self) -> impl Iterator<Item = (u32, &[SocketAddr])> {
        self.streams.iter().map(|(s, d)| (*s, d.as_slice()))
    }

    /// Where a packet goes; empty if it is to be dropped. A packet is never sent back to
    /// where it came from.
    pub fn destinations(&self, packet: &Packet, from: SocketAddr) -> Destinations<'_> {
        let routed = self.streams.get(&packet.ssrc()).map(Vec::as_slice);
        let list = match (packet, routed) {
            (_, Some(list)) => list,
            (Packet::Rtcp { .. }, None) => self.upstream.as_slice(),
            (Packet::Rtp { .. }, None) => &[],
        };
        Destinations { list, from }
    }
}

/// The destinations of one packet, without its source.
#[derive(Clone, Copy, Debug)]
pub struct Destinations<'a> {
    list: &'a [SocketAddr],
    from: SocketAddr,
}

impl<'a> Destinations<'a> {
    pub fn iter(&self) -> impl Iterator<Item = &'a SocketAddr> + 'a {
        let from = self.from;
        self.list.iter().filter(move |a| **a != from)
    }

    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn rtp(ssrc: u32) -> Packet {
        Packet::Rtp {
            ssrc,
            payload_type: 96,
            sequence: 1,
            marker: false,
        }
    }

    fn rtcp(ssrc: u32) -> Packet {
        Packet::Rtcp {
            ssrc,
            packet_type: 200,
        }
    }

    fn to(r: &Routes, p: Packet, from: u16) -> Vec<u16> {
        r.destinations(&p, addr(from))
            .iter()
            .map(|a| a.port())
            .collect()
    }

    #[test]
    fn the_chairs_stream_reaches_every_watching_site_and_its_reports_follow_it() {
        let mut r = Routes::new(Some(addr(9000)));
        r.forward(1, vec![addr(5001), addr(5002), addr(5003), addr(5002)]);
        assert_eq!(to(&r, rtp(1), 9000), [5001, 5002, 5003]);
        assert_eq!(to(&r, rtcp(1), 9000), [5001, 5002, 5003]);
        // A site's receiver report goes up, toward the sender.
        assert_eq!(to(&r, rtcp(77), 5001), [9000]);
    }

    #[test]
    fn a_site_without_an_upstream_slot_is_not_forwarded_until_it_has_the_floor() {
        let mut r = Routes::new(Some(addr(9000)));
        r.forward(1, vec![addr(5001), addr(5002)]);
        assert!(r.destinations(&rtp(2), addr(5002)).is_empty());
        // The floor goes to site 2: its stream goes up and to the other sites, not back to it.
        r.forward(2, vec![addr(9000), addr(5001), addr(5002)]);
        assert_eq!(to(&r, rtp(2), 5002), [9000, 5001]);
        r.stop(2);
        assert!(r.destinations(&rtp(2), addr(5002)).is_empty());
    }

    #[test]
    fn a_viewer_is_added_and_removed_on_its_own() {
        let mut r = Routes::new(None);
        r.add(3, addr(6000));
        r.add(3, addr(6000));
        assert_eq!(to(&r, rtp(3), 1), [6000]);
        r.remove(3, addr(6000));
        assert_eq!(r.streams().count(), 0);
        // No upstream: reports of unknown streams are dropped.
        assert!(r.destinations(&rtcp(9), addr(1)).is_empty());
    }
}
