//! A relay's forwarding table: where each stream (by SSRC) goes, where it may come from, and
//! which destinations have consented to receive it.
//!
//! A county relay receives the chair's stream from upstream and sends it to each site under it
//! that watches; it receives its sites' streams and sends up only those that have an upstream
//! slot (the current speaker); RTCP of a routed stream (sender reports) follows the stream, and
//! RTCP of anyone else the table knows (receiver reports of the sites) goes upstream, toward the
//! senders. Streams with no route are dropped: a receive-only village has no upstream slot.
//!
//! Two rules keep a relay from being abused:
//! - a stream is forwarded only when it arrives from the address it is planned to come from
//!   ([`Routes::expect`]): packets of a routed SSRC from anywhere else are [`Verdict::Forged`]
//!   and dropped before the fan-out multiplies them (the receivers' SRTP would refuse them, but
//!   only after every copy was sent);
//! - a copy goes only to an address that has proved it wants media by answering the relay's
//!   STUN probes ([`super::consent`]), or that the box itself vouches for
//!   ([`Routes::vouch`]: its own view pipelines). A site naming somebody else's address as its
//!   receive address gets that address a few small probes, never media.
//!
//! Sans-IO: the relay passes the time in ([`Routes::poll`]), sends the probes it is handed and
//! reports the answers ([`Routes::answered`]).

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use core::net::SocketAddr;

use super::consent::Consent;
use super::rtp::Packet;
use super::stun::TransactionId;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Stream {
    /// The address it is planned to come from; none: nowhere (every packet is forged).
    from: Option<SocketAddr>,
    /// Where it is planned to go.
    to: Vec<SocketAddr>,
    /// `to` less the addresses without consent: where copies go now.
    live: Vec<SocketAddr>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Routes {
    streams: BTreeMap<u32, Stream>,
    upstream: Option<SocketAddr>,
    /// The upstream while it consents.
    upstream_live: Option<SocketAddr>,
    /// Sent to without consent: the box's own pipelines (views), set up by the box itself.
    vouched: BTreeSet<SocketAddr>,
    consent: Consent,
    /// How many times the table names each address (sources, destinations, upstream): who
    /// may send reports up.
    peers: BTreeMap<SocketAddr, usize>,
    /// The time of the latest [`Routes::poll`] or answer.
    now_ms: u64,
    /// Per stream: when feedback last went to its source (a report, a keyframe request).
    fed_back: BTreeMap<u32, (Option<u64>, Option<u64>)>,
    /// The set of addresses to watch changed since the last poll.
    rewatch: bool,
}

/// What becomes of one packet.
#[derive(Clone, Copy, Debug)]
pub enum Verdict<'a> {
    /// Copies go to `to` (possibly none); `withheld` destinations of the stream have not
    /// consented and get nothing.
    Forward {
        to: Destinations<'a>,
        withheld: usize,
    },
    /// A stream with no route (a site without an upstream slot), or a report with nowhere to go.
    Unrouted,
    /// A routed SSRC from an address other than its planned source, or a report from an
    /// address the table does not know.
    Forged,
    /// Feedback about a stream soon after the last that went its way (see [`Routes::feedback`]).
    Held,
}

/// A stream's source gets at most one keyframe request through this relay per this long: one
/// keyframe serves every site that asked.
pub const KEYFRAME_REQUESTS_EVERY_MS: u64 = 200;
/// And at most one receiver report per this long (any one stands for the others).
pub const REPORTS_EVERY_MS: u64 = 1_000;

fn count(peers: &mut BTreeMap<SocketAddr, usize>, a: SocketAddr, up: bool) {
    if up {
        *peers.entry(a).or_default() += 1;
    } else if let Some(n) = peers.get_mut(&a) {
        *n -= 1;
        if *n == 0 {
            peers.remove(&a);
        }
    }
}

impl Routes {
    pub fn new(upstream: Option<SocketAddr>) -> Routes {
        let mut r = Routes::default();
        r.set_upstream(upstream);
        r
    }

    /// Where reports go (the relay above, or the meeting's media point).
    pub fn upstream(&self) -> Option<SocketAddr> {
        self.upstream
    }

    pub fn set_upstream(&mut self, upstream: Option<SocketAddr>) {
        if let Some(u) = self.upstream {
            count(&mut self.peers, u, false);
        }
        if let Some(u) = upstream {
            count(&mut self.peers, u, true);
        }
        self.upstream = upstream;
        self.upstream_live = upstream.filter(|u| self.allowed(u));
        self.rewatch = true;
    }

    /// Stream `ssrc` is accepted from `from` only, from now on.
    pub fn expect(&mut self, ssrc: u32, from: SocketAddr) {
        let s = self.streams.entry(ssrc).or_default();
        if let Some(old) = s.from.replace(from) {
            count(&mut self.peers, old, false);
        }
        count(&mut self.peers, from, true);
    }

    /// Sends stream `ssrc` to exactly `to` from now on (duplicates removed, order kept).
    pub fn forward(&mut self, ssrc: u32, to: Vec<SocketAddr>) {
        let s = self.streams.entry(ssrc).or_default();
        for a in s.to.drain(..) {
            count(&mut self.peers, a, false);
        }
        for a in to {
            if !s.to.contains(&a) {
                s.to.push(a);
                count(&mut self.peers, a, true);
            }
        }
        self.settle(ssrc);
    }

    /// Adds one destination to stream `ssrc`.
    pub fn add(&mut self, ssrc: u32, to: SocketAddr) {
        let s = self.streams.entry(ssrc).or_default();
        if !s.to.contains(&to) {
            s.to.push(to);
            count(&mut self.peers, to, true);
        }
        self.settle(ssrc);
    }

    /// Removes one destination from stream `ssrc`.
    pub fn remove(&mut self, ssrc: u32, to: SocketAddr) {
        if let Some(s) = self.streams.get_mut(&ssrc)
            && let Some(i) = s.to.iter().position(|a| *a == to)
        {
            s.to.remove(i);
            count(&mut self.peers, to, false);
        }
        self.settle(ssrc);
    }

    /// Stops forwarding stream `ssrc` (and forgets its source).
    pub fn stop(&mut self, ssrc: u32) {
        if let Some(s) = self.streams.remove(&ssrc) {
            for a in s.to.into_iter().chain(s.from) {
                count(&mut self.peers, a, false);
            }
        }
        self.rewatch = true;
    }

    /// Sends to `addr` without asking for its consent: an address the box itself set up (its
    /// own view pipelines), never one a plan names.
    pub fn vouch(&mut self, addr: SocketAddr) {
        self.vouched.insert(addr);
        self.refresh();
    }

    /// The streams routed, with their planned destinations (consented or not).
    pub fn streams(&self) -> impl Iterator<Item = (u32, &[SocketAddr])> {
        self.streams
            .iter()
            .filter(|(_, s)| !s.to.is_empty())
            .map(|(ssrc, s)| (*ssrc, s.to.as_slice()))
    }

    /// The source stream `ssrc` is accepted from.
    pub fn source(&self, ssrc: u32) -> Option<SocketAddr> {
        self.streams.get(&ssrc).and_then(|s| s.from)
    }

    /// Takes `table`'s streams, sources, upstream and vouched addresses, keeping what is known
    /// of every address's consent (a new plan does not make consented sites wait again).
    pub fn set_table(&mut self, table: Routes) {
        let consent = core::mem::take(&mut self.consent);
        let now_ms = self.now_ms;
        *self = Routes {
            consent,
            now_ms,
            rewatch: true,
            ..table
        };
        self.refresh();
    }

    /// Whether copies may go to `addr` now.
    fn allowed(&self, addr: &SocketAddr) -> bool {
        self.vouched.contains(addr) || self.consent.granted(addr, self.now_ms)
    }

    /// Recomputes where stream `ssrc` goes now; drops it once it has neither route nor source.
    fn settle(&mut self, ssrc: u32) {
        self.rewatch = true;
        let Some(s) = self.streams.get(&ssrc) else {
            return;
        };
        if s.to.is_empty() && s.from.is_none() {
            self.streams.remove(&ssrc);
            return;
        }
        let live: Vec<SocketAddr> = s.to.iter().copied().filter(|a| self.allowed(a)).collect();
        if let Some(s) = self.streams.get_mut(&ssrc) {
            s.live = live;
        }
    }

    /// Recomputes where every stream goes now (after consent changed).
    fn refresh(&mut self) {
        let ssrcs: Vec<u32> = self.streams.keys().copied().collect();
        for ssrc in ssrcs {
            self.settle(ssrc);
        }
        self.upstream_live = self.upstream.filter(|u| self.allowed(u));
    }

    /// At `now_ms`: lets lapsed consent go, and returns the STUN probes due (destination,
    /// datagram), each with a fresh random id from `new_id`.
    pub fn poll(
        &mut self,
        now_ms: u64,
        new_id: impl FnMut() -> TransactionId,
    ) -> Vec<(SocketAddr, [u8; 20])> {
        self.now_ms = now_ms;
        if self.rewatch {
            self.rewatch = false;
            let wanted: BTreeSet<SocketAddr> = self
                .streams
                .values()
                .flat_map(|s| s.to.iter().copied())
                .chain(self.upstream)
                .filter(|a| !self.vouched.contains(a))
                .collect();
            self.consent.watch(wanted);
        }
        let probes = self.consent.probes(now_ms, new_id);
        self.refresh();
        probes
    }

    /// A Binding Success Response with `id` came from `from`: true if it answered one of our
    /// probes (the address is consented from now on).
    pub fn answered(&mut self, from: SocketAddr, id: &TransactionId, now_ms: u64) -> bool {
        self.now_ms = self.now_ms.max(now_ms);
        if !self.consent.answered(from, id, now_ms) {
            return false;
        }
        self.refresh();
        true
    }

    /// What becomes of feedback about stream `about` (a receiver report, a keyframe request if
    /// `keyframe`) that came from `from` at `now_ms`: it goes back the way the stream came, to
    /// where the stream reaches this relay from, if it came from one of the stream's
    /// destinations; at most one report per [`REPORTS_EVERY_MS`] and one keyframe request per
    /// [`KEYFRAME_REQUESTS_EVERY_MS`] per stream (the rest are [`Verdict::Held`]), so a
    /// thousand sites joining at once cost the sender a few keyframes, not a thousand.
    pub fn feedback(
        &mut self,
        about: u32,
        keyframe: bool,
        from: SocketAddr,
        now_ms: u64,
    ) -> Verdict<'_> {
        let Some(s) = self.streams.get(&about) else {
            return Verdict::Unrouted;
        };
        if !s.to.contains(&from) {
            return Verdict::Forged;
        }
        let last = self.fed_back.entry(about).or_default();
        let (when, every) = if keyframe {
            (&mut last.1, KEYFRAME_REQUESTS_EVERY_MS)
        } else {
            (&mut last.0, REPORTS_EVERY_MS)
        };
        if when.is_some_and(|t| now_ms < t + every) {
            return Verdict::Held;
        }
        *when = Some(now_ms);
        Verdict::Forward {
            to: Destinations {
                list: s.from.as_slice(),
                from,
            },
            withheld: 0,
        }
    }

    /// What becomes of a packet that came from `from`. A packet is never sent back to where
    /// it came from.
    pub fn destinations(&self, packet: &Packet, from: SocketAddr) -> Verdict<'_> {
        match (packet, self.streams.get(&packet.ssrc())) {
            (_, Some(s)) if !s.to.is_empty() => {
                if s.from != Some(from) {
                    return Verdict::Forged;
                }
                Verdict::Forward {
                    to: Destinations {
                        list: &s.live,
                        from,
                    },
                    withheld: s.to.len() - s.live.len(),
                }
            }
            (Packet::Rtcp { .. }, _) => {
                if !self.peers.contains_key(&from) {
                    return Verdict::Forged;
                }
                let to = Destinations {
                    list: self.upstream_live.as_slice(),
                    from,
                };
                if self.upstream.is_none() || self.upstream == Some(from) {
                    return Verdict::Unrouted;
                }
                Verdict::Forward {
                    to,
                    withheld: usize::from(self.upstream_live.is_none()),
                }
            }
            (Packet::Rtp { .. }, _) => Verdict::Unrouted,
        }
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
    use crate::media::stun::{Message, decode};
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
            about: None,
            keyframe: false,
        }
    }

    /// Ports a packet goes to; `None` if forged.
    fn to(r: &Routes, p: Packet, from: u16) -> Option<Vec<u16>> {
        match r.destinations(&p, addr(from)) {
            Verdict::Forward { to, .. } => Some(to.iter().map(|a| a.port()).collect()),
            Verdict::Unrouted | Verdict::Held => Some(Vec::new()),
            Verdict::Forged => None,
        }
    }

    #[test]
    fn feedback_goes_back_the_way_its_stream_came_from_its_destinations_only_and_seldom() {
        // The chair's stream 10 comes from upstream (9000) and goes to three sites.
        let mut r = Routes::new(Some(addr(9000)));
        r.expect(10, addr(9000));
        r.forward(10, vec![addr(5000), addr(5002), addr(5004)]);
        let back = |r: &mut Routes, keyframe, from: u16, now| match r.feedback(
            10,
            keyframe,
            addr(from),
            now,
        ) {
            Verdict::Forward { to, .. } => Some(to.iter().map(|a| a.port()).collect::<Vec<_>>()),
            Verdict::Held => Some(Vec::new()),
            _ => None,
        };
        // A site's keyframe request goes up to where the stream comes from.
        assert_eq!(back(&mut r, true, 5000, 1_000), Some(vec![9000]));
        // Another's soon after is held: the keyframe on its way serves both.
        assert_eq!(back(&mut r, true, 5002, 1_100), Some(vec![]));
        assert_eq!(back(&mut r, true, 5002, 1_200), Some(vec![9000]));
        // Reports are paced apart from keyframe requests.
        assert_eq!(back(&mut r, false, 5004, 1_200), Some(vec![9000]));
        assert_eq!(back(&mut r, false, 5000, 1_900), Some(vec![]));
        assert_eq!(back(&mut r, false, 5000, 2_200), Some(vec![9000]));
        // From an address the stream does not go to (its source, a stranger): forged.
        assert_eq!(back(&mut r, true, 9000, 5_000), None);
        assert_eq!(back(&mut r, true, 7777, 5_000), None);
        // About a stream not routed here: nowhere to go.
        assert!(matches!(
            r.feedback(12, true, addr(5000), 5_000),
            Verdict::Unrouted
        ));
    }

    /// Every probe due at `now` answered by its destination if `answers` says so.
    fn answer_probes(r: &mut Routes, now: u64, answers: impl Fn(SocketAddr) -> bool) -> usize {
        let mut n = 0u8;
        let probes = r.poll(now, || {
            n += 1;
            [n; 12]
        });
        for (a, p) in &probes {
            let Ok(Message::BindingRequest { id }) = decode(p) else {
                panic!("not a probe")
            };
            if answers(*a) {
                assert!(r.answered(*a, &id, now));
            }
        }
        probes.len()
    }

    /// A table whose every destination has consented.
    fn consented(mut r: Routes) -> Routes {
        answer_probes(&mut r, 0, |_| true);
        r
    }

    #[test]
    fn the_chairs_stream_reaches_every_watching_site_and_its_reports_follow_it() {
        let mut r = Routes::new(Some(addr(9000)));
        r.expect(1, addr(9000));
        r.forward(1, vec![addr(5001), addr(5002), addr(5003), addr(5002)]);
        let r = consented(r);
        assert_eq!(to(&r, rtp(1), 9000), Some(vec![5001, 5002, 5003]));
        assert_eq!(to(&r, rtcp(1), 9000), Some(vec![5001, 5002, 5003]));
        // A site's receiver report goes up, toward the sender.
        assert_eq!(to(&r, rtcp(77), 5001), Some(vec![9000]));
    }

    #[test]
    fn a_site_without_an_upstream_slot_is_not_forwarded_until_it_has_the_floor() {
        let mut r = Routes::new(Some(addr(9000)));
        r.expect(1, addr(9000));
        r.forward(1, vec![addr(5001), addr(5002)]);
        let mut r = consented(r);
        assert!(matches!(
            r.destinations(&rtp(2), addr(5002)),
            Verdict::Unrouted
        ));
        // The floor goes to site 2: its stream goes up and to the other sites, not back to it.
        r.expect(2, addr(5002));
        r.forward(2, vec![addr(9000), addr(5001), addr(5002)]);
        assert_eq!(to(&r, rtp(2), 5002), Some(vec![9000, 5001]));
        r.stop(2);
        assert_eq!(to(&r, rtp(2), 5002), Some(vec![]));
    }

    #[test]
    fn a_planned_ssrc_from_any_other_address_is_forged_and_goes_nowhere() {
        let mut r = Routes::new(Some(addr(9000)));
        r.expect(1, addr(9000));
        r.forward(1, vec![addr(5001), addr(5002)]);
        let r = consented(r);
        // The genuine source's packets go; the same SSRC from a site, a stranger, another port
        // of the source, or with no source planned at all, does not.
        assert_eq!(to(&r, rtp(1), 9000), Some(vec![5001, 5002]));
        for from in [5001, 4444, 9001] {
            assert_eq!(to(&r, rtp(1), from), None, "from {from}");
            assert_eq!(to(&r, rtcp(1), from), None, "from {from}");
        }
        let mut unplanned = Routes::new(None);
        unplanned.forward(3, vec![addr(5001)]);
        let unplanned = consented(unplanned);
        assert_eq!(to(&unplanned, rtp(3), 9000), None);
        // A report from an address the table does not know goes nowhere either.
        assert_eq!(to(&r, rtcp(77), 4444), None);
    }

    #[test]
    fn a_destination_gets_copies_only_once_it_answers_a_probe_and_until_consent_lapses() {
        let mut r = Routes::new(Some(addr(9000)));
        r.expect(1, addr(9000));
        r.forward(1, vec![addr(5001), addr(9999)]);
        // Nobody has answered yet: nothing goes, two copies withheld.
        assert!(matches!(
            r.destinations(&rtp(1), addr(9000)),
            Verdict::Forward { to, withheld: 2 } if to.is_empty()
        ));
        // 5001 answers, 9999 (someone else's address a site named) never does.
        assert_eq!(answer_probes(&mut r, 0, |a| a == addr(5001)), 3);
        assert!(matches!(
            r.destinations(&rtp(1), addr(9000)),
            Verdict::Forward { withheld: 1, .. }
        ));
        assert_eq!(to(&r, rtp(1), 9000), Some(vec![5001]));
        // 9999 gets a probe now and then; 5001 keeps answering and keeps its copies.
        let mut probes_to_9999 = 0;
        for now in (100..60_000).step_by(100) {
            let mut n = 0u8;
            for (a, p) in r.poll(now, || {
                n = n.wrapping_add(1);
                [n; 12]
            }) {
                if a == addr(9999) {
                    probes_to_9999 += 1;
                } else if a == addr(5001) {
                    let Ok(Message::BindingRequest { id }) = decode(&p) else {
                        panic!()
                    };
                    assert!(r.answered(a, &id, now));
                }
            }
            assert_eq!(to(&r, rtp(1), 9000), Some(vec![5001]), "at {now} ms");
        }
        assert!(probes_to_9999 < 20, "{probes_to_9999} probes");
        // 5001 stops answering: 30 s after its last answer it gets nothing more.
        let mut lapsed = None;
        for now in (60_000..100_000).step_by(100) {
            r.poll(now, || [7; 12]);
            if to(&r, rtp(1), 9000) == Some(vec![]) {
                lapsed = Some(now);
                break;
            }
        }
        let lapsed = lapsed.expect("consent lapses");
        assert!((85_000..=90_100).contains(&lapsed), "lapsed at {lapsed}");
    }

    #[test]
    fn a_new_table_keeps_consent_and_the_upstream_must_consent_too() {
        let mut r = Routes::new(Some(addr(9000)));
        r.expect(1, addr(9000));
        r.forward(1, vec![addr(5001)]);
        // Reports go up only once upstream answers.
        assert_eq!(to(&r, rtcp(77), 5001), Some(vec![]));
        let mut r = consented(r);
        assert_eq!(to(&r, rtcp(77), 5001), Some(vec![9000]));
        let mut next = Routes::new(Some(addr(9000)));
        next.expect(1, addr(9000));
        next.forward(1, vec![addr(5001), addr(5002)]);
        r.set_table(next);
        assert_eq!(to(&r, rtp(1), 9000), Some(vec![5001]));
        assert_eq!(r.source(1), Some(addr(9000)));
    }

    #[test]
    fn a_vouched_viewer_is_added_and_removed_on_its_own() {
        let mut r = Routes::new(None);
        r.expect(3, addr(5004));
        r.vouch(addr(6000));
        r.add(3, addr(6000));
        r.add(3, addr(6000));
        assert_eq!(to(&r, rtp(3), 5004), Some(vec![6000]));
        r.remove(3, addr(6000));
        assert_eq!(r.streams().count(), 0);
        // No upstream: reports of unknown streams are dropped.
        assert_eq!(to(&r, rtcp(9), 5004), Some(vec![]));
        assert_eq!(answer_probes(&mut r, 0, |_| true), 0, "nothing to probe");
    }
}
