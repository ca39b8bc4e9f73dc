//! Consent to receive media, in the spirit of ICE consent freshness (RFC 7675): a relay sends
//! a stream to an address only while that address answers its STUN probes. An address named
//! in a plan (a site's declared receive address, a child relay, the relay above) is probed at
//! once; it is consented once a Binding Success Response with one of the probes' random
//! transaction ids arrives from that very address, and stays consented while it keeps
//! answering: probes go every [`REFRESH_MS`], and consent lapses [`EXPIRE_MS`] after the last
//! answer. An address that never answers gets a probe now and then (backing off from
//! [`FIRST_RETRY_MS`] to one every [`REFRESH_MS`]) and never any media: a relay cannot be
//! turned into a reflector by a terminal naming someone else's address.
//!
//! Sans-IO: the caller passes the time in, sends the probes it is handed, and reports answers.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::net::SocketAddr;

use super::stun::{TransactionId, binding_request};

/// A consented address is probed again this often.
pub const REFRESH_MS: u64 = 5_000;
/// Consent lapses this long after the last answer.
pub const EXPIRE_MS: u64 = 30_000;
/// An unanswered first probe is repeated after this, then after twice as long each time, up
/// to [`REFRESH_MS`].
pub const FIRST_RETRY_MS: u64 = 500;
/// Transaction ids of an address's recent probes that an answer may still carry (an answer on
/// a slow link may arrive after the next probe went out).
const RECENT: usize = 4;

/// What is known of one address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Peer {
    /// The ids of the latest probes, newest last.
    recent: Vec<TransactionId>,
    last_probe_ms: Option<u64>,
    /// Probes since the last answer.
    unanswered: u32,
    /// When it last answered.
    answered_ms: Option<u64>,
}

impl Peer {
    fn granted(&self, now_ms: u64) -> bool {
        self.answered_ms
            .is_some_and(|t| now_ms.saturating_sub(t) < EXPIRE_MS)
    }

    fn next_probe_ms(&self) -> u64 {
        let Some(last) = self.last_probe_ms else {
            return 0;
        };
        let wait = if self.unanswered == 0 {
            REFRESH_MS
        } else {
            let doublings = self.unanswered.saturating_sub(1).min(16);
            (FIRST_RETRY_MS << doublings).min(REFRESH_MS)
        };
        last.saturating_add(wait)
    }
}

/// The consent of every address a relay sends to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Consent {
    peers: BTreeMap<SocketAddr, Peer>,
}

impl Consent {
    pub fn new() -> Consent {
        Consent::default()
    }

    /// From now on, exactly `addrs` are probed: new ones at the next [`Consent::probes`],
    /// those no longer named are forgotten (a later plan naming them again starts afresh).
    pub fn watch(&mut self, addrs: impl IntoIterator<Item = SocketAddr>) {
        let mut kept = BTreeMap::new();
        for a in addrs {
            let p = self.peers.remove(&a).unwrap_or_default();
            kept.insert(a, p);
        }
        self.peers = kept;
    }

    /// Whether media may go to `addr` at `now_ms`.
    pub fn granted(&self, addr: &SocketAddr, now_ms: u64) -> bool {
        self.peers.get(addr).is_some_and(|p| p.granted(now_ms))
    }

    /// The probes due at `now_ms` (to send as they are), each with a fresh id from `new_id`
    /// (96 random bits: an answer must not be guessable by anyone who did not see the probe).
    pub fn probes(
        &mut self,
        now_ms: u64,
        mut new_id: impl FnMut() -> TransactionId,
    ) -> Vec<(SocketAddr, [u8; 20])> {
        let mut out = Vec::new();
        for (addr, p) in &mut self.peers {
            if now_ms < p.next_probe_ms() {
                continue;
            }
            let id = new_id();
            if p.recent.len() == RECENT {
                p.recent.remove(0);
            }
            p.recent.push(id);
            p.last_probe_ms = Some(now_ms);
            p.unanswered = p.unanswered.saturating_add(1);
            out.push((*addr, binding_request(&id)));
        }
        out
    }

    /// A Binding Success Response with `id` arrived from `from`: true if it answers one of the
    /// probes sent there (consent given or renewed), false otherwise (another address's id, an
    /// old or guessed one: ignored).
    pub fn answered(&mut self, from: SocketAddr, id: &TransactionId, now_ms: u64) -> bool {
        let Some(p) = self.peers.get_mut(&from) else {
            return false;
        };
        let Some(i) = p.recent.iter().position(|r| r == id) else {
            return false;
        };
        // Each id counts once.
        p.recent.remove(i);
        p.unanswered = 0;
        p.answered_ms = Some(now_ms.max(p.answered_ms.unwrap_or(0)));
        true
    }

    /// The watched addresses consented at `now_ms`.
    pub fn consented(&self, now_ms: u64) -> impl Iterator<Item = SocketAddr> + '_ {
        self.peers
            .iter()
            .filter(move |(_, p)| p.granted(now_ms))
            .map(|(a, _)| *a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::stun::{Message, decode};

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Ids 1, 2, 3… (the relay uses random ones).
    fn counter() -> impl FnMut() -> TransactionId {
        let mut n = 0u8;
        move || {
            n += 1;
            [n; 12]
        }
    }

    fn id_of(probe: &[u8; 20]) -> TransactionId {
        match decode(probe) {
            Ok(Message::BindingRequest { id }) => id,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_address_that_never_answers_gets_only_a_few_probes_and_never_consent() {
        let mut c = Consent::new();
        let mut ids = counter();
        c.watch([addr(9999)]);
        let mut sent = 0;
        for now in (0..60_000).step_by(100) {
            sent += c.probes(now, &mut ids).len();
            assert!(!c.granted(&addr(9999), now));
        }
        // 0, 0.5, 1.5, 3.5, 7.5 s, then every 5 s: 15 probes of 20 bytes in a minute.
        assert_eq!(sent, 15);
    }

    #[test]
    fn an_address_that_answers_from_itself_is_consented_and_keeps_it_while_it_answers() {
        let mut c = Consent::new();
        let mut ids = counter();
        c.watch([addr(5004), addr(5006)]);
        let probes = c.probes(0, &mut ids);
        assert_eq!(probes.len(), 2);
        let (to, probe) = probes[0];
        let id = id_of(&probe);
        // The answer from another address, or with another id, proves nothing.
        assert!(!c.answered(addr(5006), &id, 10));
        assert!(!c.answered(to, &[0xee; 12], 10));
        assert!(!c.granted(&to, 10));
        assert!(c.answered(to, &id, 10));
        assert!(c.granted(&to, 10));
        // An id counts once.
        assert!(!c.answered(to, &id, 20));
        assert_eq!(c.consented(20).collect::<Vec<_>>(), [to]);
        // Refreshed every 5 s while it answers: consented throughout.
        for now in (100..120_000).step_by(100) {
            for (a, p) in c.probes(now, &mut ids) {
                if a == to {
                    assert!(c.answered(a, &id_of(&p), now + 5));
                }
            }
            assert!(c.granted(&to, now));
        }
    }

    #[test]
    fn consent_expires_thirty_seconds_after_the_last_answer() {
        let mut c = Consent::new();
        let mut ids = counter();
        c.watch([addr(5004)]);
        let (to, p) = c.probes(0, &mut ids)[0];
        assert!(c.answered(to, &id_of(&p), 0));
        let mut probes = 0;
        for now in (0..EXPIRE_MS).step_by(100) {
            probes += c.probes(now, &mut ids).len();
            assert!(c.granted(&to, now), "at {now} ms");
        }
        assert!(!c.granted(&to, EXPIRE_MS));
        assert!(probes >= 5, "it was asked again meanwhile: {probes}");
        // A late answer to a recent probe renews it.
        let (_, p) = c.probes(EXPIRE_MS + 10_000, &mut ids)[0];
        assert!(c.answered(to, &id_of(&p), EXPIRE_MS + 10_050));
        assert!(c.granted(&to, EXPIRE_MS + 10_050));
    }

    #[test]
    fn an_answer_to_an_earlier_probe_still_counts_on_a_slow_link() {
        let mut c = Consent::new();
        let mut ids = counter();
        c.watch([addr(5004)]);
        let (_, first) = c.probes(0, &mut ids)[0];
        assert_eq!(c.probes(FIRST_RETRY_MS, &mut ids).len(), 1);
        assert!(c.answered(addr(5004), &id_of(&first), 700));
    }

    #[test]
    fn an_address_dropped_from_the_plan_loses_consent_and_is_not_probed() {
        let mut c = Consent::new();
        let mut ids = counter();
        c.watch([addr(5004)]);
        let (to, p) = c.probes(0, &mut ids)[0];
        assert!(c.answered(to, &id_of(&p), 0));
        c.watch([addr(6000)]);
        assert!(!c.granted(&to, 1));
        let probes = c.probes(1, &mut ids);
        assert_eq!(
            probes.iter().map(|(a, _)| *a).collect::<Vec<_>>(),
            [addr(6000)]
        );
        assert!(!c.answered(to, &id_of(&p), 2));
    }
}
