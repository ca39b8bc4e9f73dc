//! End-to-end delivery of a terminal's streams, without IO.
//!
//! Every record sits in the terminal's durable outbox until central says it has *stored* it:
//! central publishes, per stream, a watermark below which everything is stored (or was reported
//! dropped). [`Delivery`] decides what to send next:
//!
//! - a record is sent when the link is up, in the configured order, paced by a token bucket so
//!   a county's hundred terminals coming back after an outage do not flood the broker;
//! - a record sent but not confirmed in time, or sent before a reconnect, is sent again
//!   (central stores each (terminal, stream, seq) once, so this is harmless). In time means
//!   within `resend_after_ms`, or longer where central has been taking longer to confirm
//!   (its measured delay, as TCP measures a round trip), and twice as long after each time
//!   the wait ran out without an answer: in a province's power-on, confirmations take longer
//!   than usual, and every copy sent meanwhile is more load on the brokers and central that
//!   are slow already;
//! - a record leaves when the watermark passes it.
//!
//! A new box numbers from the clock (see [`crate::envelope::Event::NumberingFrom`]): its
//! delivery starts with everything below that assigned and confirmed, so the retained
//! watermark of a box it replaced is stale, not forged.
//!
//! A clock can be behind (a box without a battery-backed clock starts in the past), and then
//! the new numbering runs into seqs central holds under the same id: records sent under them
//! would be taken for ones stored already and lost. So a new box's numbering is *held*
//! ([`Delivery::hold`]): only its announcements go out (events up to the hold; telemetry none)
//! until central's watermark has passed them, which is central agreeing to the numbering. A
//! watermark beyond the hold ([`Confirmation::Clash`]), or central saying it holds seqs beyond
//! it ([`Delivery::clashes`]), is a predecessor's: the caller renumbers the stream above it and
//! announces again, and nothing it holds was sent under a clashing seq.
//!
//! A watermark is believed only up to the highest seq this terminal has assigned: central
//! cannot have stored a record that was never numbered, so a watermark beyond it is forged (or
//! meant for another box) and is refused ([`Confirmation::Beyond`]) instead of silencing the
//! terminal. The caller reports it as a security event.
//!
//! The caller feeds events in ([`Delivery::queued`], [`Delivery::confirmed`],
//! [`Delivery::link_up`], …) with the current time, asks [`Delivery::next_send`] what to send,
//! and sleeps until [`Delivery::next_wakeup`].

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::envelope::{DecodeError, Stream, decode};

/// Central's confirmation: per stream, every seq up to and including this one is stored or was
/// reported dropped. Published retained on the terminal's `ack` topic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermarks {
    pub telemetry: u64,
    pub events: u64,
}

impl Watermarks {
    pub fn get(&self, stream: Stream) -> u64 {
        match stream {
            Stream::Telemetry => self.telemetry,
            Stream::Events => self.events,
        }
    }

    pub fn set(&mut self, stream: Stream, value: u64) {
        match stream {
            Stream::Telemetry => self.telemetry = value,
            Stream::Events => self.events = value,
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Watermarks, DecodeError> {
        decode(bytes)
    }
}

/// Which end of a backlog goes first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReplayOrder {
    /// History in the order it was measured (the default).
    #[default]
    OldestFirst,
    /// The current state first, history after.
    NewestFirst,
}

/// How long held announcements wait for central's agreement before they first go again. Not
/// less: in a province's power-on central agrees to 54,000 new numberings at once and takes
/// seconds to, and every copy sent meanwhile is one more for every broker on the way and for
/// central to store and throw away (a second after the first copy, then 2 s, 4 s and 8 s later,
/// a province once sent central two and a half duplicates for every record it stored).
pub const HELD_FIRST_RESEND_MS: u64 = 5_000;

/// The last seq of `stream` a numbering announced from `first` sends while it is held
/// ([`Delivery::hold`]): of events, its two announcements (the events' own at `first`, then the
/// telemetry's); of telemetry, nothing. Central holding a seq of the stream beyond it under the
/// box's id holds a predecessor's: the numbering clashes (the box's own announcements do not).
pub fn held_upto(stream: Stream, first: u64) -> u64 {
    match stream {
        Stream::Events => first.saturating_add(1),
        Stream::Telemetry => first.saturating_sub(1),
    }
}

/// The longest a sent record waits for its confirmation before it goes again, however often
/// the wait ran out (unless central has been taking longer still to confirm): once central is
/// back from an outage, what it missed comes within this long.
pub const MAX_RESEND_MS: u64 = 120_000;

/// How long central takes to confirm what this terminal sends: a smoothed delay and its
/// variation, as TCP keeps for its round trip (RFC 6298), from records confirmed after their
/// only sending (a record sent twice says nothing of which copy was answered).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct ConfirmDelay {
    /// Smoothed, in ms; `None` before the first measurement.
    smoothed: Option<u64>,
    /// Its mean deviation, in ms.
    variation: u64,
}

impl ConfirmDelay {
    fn measured(&mut self, ms: u64) {
        match self.smoothed {
            None => {
                self.smoothed = Some(ms);
                self.variation = ms / 2;
            }
            Some(s) => {
                self.variation = (3 * self.variation + s.abs_diff(ms)) / 4;
                self.smoothed = Some((7 * s + ms) / 8);
            }
        }
    }

    /// How long to wait for a confirmation, from what was measured; `None` before anything was.
    fn wait(&self) -> Option<u64> {
        self.smoothed
            .map(|s| s.saturating_add(self.variation.saturating_mul(4)))
    }
}

/// How delivery paces and retries.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DeliveryConfig {
    /// A sent record not confirmed within this long is sent again (longer where central has
    /// been taking longer, and after waits that ran out; see the module's documentation).
    pub resend_after_ms: u64,
    /// Records per second at most (0: unlimited).
    pub rate_per_s: u32,
    /// Records that may go at once after an idle period.
    pub burst: u32,
    pub order: ReplayOrder,
}

impl Default for DeliveryConfig {
    fn default() -> DeliveryConfig {
        DeliveryConfig {
            resend_after_ms: 30_000,
            rate_per_s: 50,
            burst: 50,
            order: ReplayOrder::OldestFirst,
        }
    }
}

/// What a watermark from central did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confirmation {
    /// It moved forward: records up to it leave.
    Advanced,
    /// It is not beyond the current watermark: nothing changes.
    Stale,
    /// It is beyond the highest seq this terminal ever assigned (`assigned`): refused, nothing
    /// changes. Central cannot have stored what was never numbered, so it is forged.
    Beyond { assigned: u64 },
    /// The stream's numbering is held and this is beyond the hold: central holds seqs under
    /// this id this box never sent (a predecessor's). Nothing changes; the caller renumbers
    /// the stream above `watermark`.
    Clash { watermark: u64 },
}

#[derive(Clone, Debug, Default)]
struct StreamState {
    /// Everything at or below is confirmed.
    watermark: u64,
    /// The highest seq ever assigned (queued, or known from the outbox): the most a true
    /// watermark can be.
    assigned: u64,
    /// In the outbox, not sent (or to be sent again).
    unsent: BTreeSet<u64>,
    /// Sent, not confirmed: seq → when.
    in_flight: BTreeMap<u64, u64>,
    /// Sent before and to be sent again, or sent again: their confirmation measures nothing.
    sent_again: BTreeSet<u64>,
    /// (sent at, seq) in send order, for resend deadlines; stale entries are skipped.
    sent_order: VecDeque<(u64, u64)>,
    /// While a new numbering waits for central's agreement: nothing above this is sent.
    hold: Option<u64>,
    /// How often in a row the wait for a confirmation ran out: each time, the next wait is
    /// twice as long. Held announcements go again sooner ([`HELD_FIRST_RESEND_MS`], then twice
    /// as long each time, never later than records do at first), since everything waits for
    /// them and the first may have gone before central was listening; once central answered
    /// ([`Delivery::central_answered`]), it was, and they wait as records do.
    backoff: u32,
}

impl StreamState {
    /// The first record that may go now, in `order`.
    fn sendable(&self, order: ReplayOrder) -> Option<u64> {
        let limit = self.hold.unwrap_or(u64::MAX);
        let mut may = self.unsent.range(..=limit);
        match order {
            ReplayOrder::OldestFirst => may.next(),
            ReplayOrder::NewestFirst => may.next_back(),
        }
        .copied()
    }

    /// Everything sent and not confirmed goes back to be sent again.
    fn requeue_in_flight(&mut self) {
        let flying: alloc::vec::Vec<u64> = self.in_flight.keys().copied().collect();
        self.sent_again.extend(flying.iter().copied());
        self.unsent.extend(flying);
        self.in_flight.clear();
        self.sent_order.clear();
    }

    /// Everything up to `seq` is confirmed (or dropped); `now_ms` given, how long the newest of
    /// them sent only once took to be confirmed.
    fn forget_upto(&mut self, seq: u64, now_ms: Option<u64>) -> Option<u64> {
        let after = seq.saturating_add(1);
        let took = now_ms.and_then(|now| {
            let (sent, at) = self.in_flight.range(..after).next_back()?;
            (!self.sent_again.contains(sent)).then(|| now.saturating_sub(*at))
        });
        self.unsent = self.unsent.split_off(&after);
        self.in_flight = self.in_flight.split_off(&after);
        self.sent_again = self.sent_again.split_off(&after);
        while self.sent_order.front().is_some_and(|&(_, s)| s <= seq) {
            self.sent_order.pop_front();
        }
        took
    }

    /// How long a sent record waits for confirmation before it goes again, the wait for
    /// records being `wait` (configured, or longer as measured); held announcements go again
    /// sooner unless central is known to be `listening`.
    fn resend_after(&self, wait: u64, listening: bool) -> u64 {
        let twice = |ms: u64| ms.saturating_mul(1 << self.backoff.min(16));
        match self.hold {
            Some(_) if !listening => wait.min(twice(HELD_FIRST_RESEND_MS)),
            _ => twice(wait).min(MAX_RESEND_MS.max(wait)),
        }
    }

    /// Moves records whose resend deadline passed back to unsent.
    fn expire(&mut self, now_ms: u64, wait: u64, listening: bool) {
        let resend_after_ms = self.resend_after(wait, listening);
        let mut expired = false;
        while let Some(&(at, seq)) = self.sent_order.front() {
            if at.saturating_add(resend_after_ms) > now_ms {
                break;
            }
            self.sent_order.pop_front();
            if self.in_flight.get(&seq) == Some(&at) {
                self.in_flight.remove(&seq);
                self.unsent.insert(seq);
                self.sent_again.insert(seq);
                expired = true;
            }
        }
        if expired {
            self.backoff = self.backoff.saturating_add(1);
        }
    }

    fn next_deadline(&self, wait: u64, listening: bool) -> Option<u64> {
        let resend_after_ms = self.resend_after(wait, listening);
        self.sent_order
            .iter()
            .find(|(at, seq)| self.in_flight.get(seq) == Some(at))
            .map(|(at, _)| at.saturating_add(resend_after_ms))
    }
}

/// The delivery state of one terminal.
#[derive(Clone, Debug)]
pub struct Delivery {
    cfg: DeliveryConfig,
    telemetry: StreamState,
    events: StreamState,
    link_up: bool,
    tokens: f64,
    refilled_ms: u64,
    delay: ConfirmDelay,
    /// Central answered since the link came up: it is listening.
    answered: bool,
}

impl Delivery {
    pub fn new(cfg: DeliveryConfig, now_ms: u64) -> Delivery {
        Delivery {
            cfg,
            telemetry: StreamState::default(),
            events: StreamState::default(),
            link_up: false,
            tokens: f64::from(cfg.burst.max(1)),
            refilled_ms: now_ms,
            delay: ConfirmDelay::default(),
            answered: false,
        }
    }

    /// Central itself answered (a watermark it published just now, not the copy a broker
    /// kept): it is listening, and what this box sent since the link came up reached it or
    /// is on its way. Held announcements stop going again sooner than records do.
    pub fn central_answered(&mut self) {
        self.answered = true;
    }

    /// How long a record waits for its confirmation before it goes again (before waits that
    /// ran out): the configured time, or longer where central has been taking longer.
    fn wait(&self) -> u64 {
        self.cfg.resend_after_ms.max(self.delay.wait().unwrap_or(0))
    }

    fn stream(&mut self, s: Stream) -> &mut StreamState {
        match s {
            Stream::Telemetry => &mut self.telemetry,
            Stream::Events => &mut self.events,
        }
    }

    fn stream_ref(&self, s: Stream) -> &StreamState {
        match s {
            Stream::Telemetry => &self.telemetry,
            Stream::Events => &self.events,
        }
    }

    /// A record is in the outbox and waits to be sent.
    pub fn queued(&mut self, stream: Stream, seq: u64) {
        let st = self.stream(stream);
        st.assigned = st.assigned.max(seq);
        if seq > st.watermark && !st.in_flight.contains_key(&seq) {
            st.unsent.insert(seq);
        }
    }

    /// Every seq up to `seq` has been assigned (what the outbox remembers at start, including
    /// records already confirmed or dropped).
    pub fn assigned_upto(&mut self, stream: Stream, seq: u64) {
        let st = self.stream(stream);
        st.assigned = st.assigned.max(seq);
    }

    /// The highest seq assigned so far: the most a watermark may be.
    pub fn assigned(&self, stream: Stream) -> u64 {
        self.stream_ref(stream).assigned
    }

    /// Holds `stream`'s numbering: nothing above `upto` is sent (`None`: release it).
    pub fn hold(&mut self, stream: Stream, upto: Option<u64>) {
        self.stream(stream).hold = upto;
    }

    /// Whether `stream`'s numbering is held.
    pub fn held(&self, stream: Stream) -> bool {
        self.stream_ref(stream).hold.is_some()
    }

    /// Whether central holding seqs of `stream` up to `highest` under this id clashes with the
    /// held numbering: it holds one this box never sent.
    pub fn clashes(&self, stream: Stream, highest: u64) -> bool {
        self.stream_ref(stream)
            .hold
            .is_some_and(|upto| highest > upto)
    }

    /// Central says, at `now_ms`, everything up to `watermark` is stored. Believed only up to
    /// the highest seq assigned; see [`Confirmation`].
    pub fn confirmed(&mut self, stream: Stream, watermark: u64, now_ms: u64) -> Confirmation {
        let st = self.stream(stream);
        if st.hold.is_some_and(|upto| watermark > upto) {
            return Confirmation::Clash { watermark };
        }
        if watermark > st.assigned {
            return Confirmation::Beyond {
                assigned: st.assigned,
            };
        }
        if watermark < st.watermark {
            // Central is behind what it confirmed before, or below where this box's numbering
            // starts: it has not got the event that covers the range (the start of numbering
            // of a new box, sent before central subscribed, say). The events in flight go
            // again now rather than after `resend_after`; while the numbering is held, its
            // announcements go again on their own (sooner) schedule instead: central answers
            // anything of a new box (its presence) before the announcements that follow it
            // reach it, and each such answer would send them again.
            if self.events.hold.is_none() {
                self.events.requeue_in_flight();
            }
            return Confirmation::Stale;
        }
        if watermark == st.watermark {
            return Confirmation::Stale;
        }
        st.watermark = watermark;
        st.backoff = 0;
        if let Some(took) = st.forget_upto(watermark, Some(now_ms)) {
            self.delay.measured(took);
        }
        Confirmation::Advanced
    }

    /// Records up to `seq` left the outbox without confirmation (dropped when it was full).
    pub fn dropped_upto(&mut self, stream: Stream, seq: u64) {
        let st = self.stream(stream);
        st.assigned = st.assigned.max(seq);
        st.forget_upto(seq, None);
    }

    /// The link came up: everything not confirmed is sent again.
    pub fn link_up(&mut self, _now_ms: u64) {
        self.link_up = true;
        self.answered = false;
        for s in Stream::ALL {
            self.stream(s).requeue_in_flight();
        }
    }

    pub fn link_down(&mut self) {
        self.link_up = false;
    }

    /// The link refused a record (its queue was full): try it again later.
    pub fn not_sent(&mut self, stream: Stream, seq: u64) {
        let st = self.stream(stream);
        if st.in_flight.remove(&seq).is_some() {
            st.unsent.insert(seq);
        }
    }

    /// The watermark of a stream.
    pub fn watermark(&self, stream: Stream) -> u64 {
        self.stream_ref(stream).watermark
    }

    /// Records not yet confirmed (sent or not).
    pub fn unconfirmed(&self) -> usize {
        Stream::ALL
            .iter()
            .map(|s| {
                let st = self.stream_ref(*s);
                st.unsent.len() + st.in_flight.len()
            })
            .sum()
    }

    fn refill(&mut self, now_ms: u64) {
        if self.cfg.rate_per_s == 0 {
            return;
        }
        let elapsed = now_ms.saturating_sub(self.refilled_ms);
        self.refilled_ms = self.refilled_ms.max(now_ms);
        self.tokens = (self.tokens + elapsed as f64 * f64::from(self.cfg.rate_per_s) / 1000.0)
            .min(f64::from(self.cfg.burst.max(1)));
    }

    /// The next record to send now, if any; it counts as sent at `now_ms`.
    pub fn next_send(&mut self, now_ms: u64) -> Option<(Stream, u64)> {
        let (wait, listening) = (self.wait(), self.answered);
        self.telemetry.expire(now_ms, wait, listening);
        self.events.expire(now_ms, wait, listening);
        if !self.link_up {
            return None;
        }
        self.refill(now_ms);
        if self.cfg.rate_per_s > 0 && self.tokens < 1.0 {
            return None;
        }
        // Events are rare and explain the telemetry (drops, faults): they go first.
        let order = self.cfg.order;
        let (stream, seq) = [Stream::Events, Stream::Telemetry]
            .into_iter()
            .find_map(|s| self.stream_ref(s).sendable(order).map(|q| (s, q)))?;
        let st = self.stream(stream);
        st.unsent.remove(&seq);
        st.in_flight.insert(seq, now_ms);
        st.sent_order.push_back((now_ms, seq));
        if self.cfg.rate_per_s > 0 {
            self.tokens -= 1.0;
        }
        Some((stream, seq))
    }

    /// When [`Delivery::next_send`] may have something new to say (a resend deadline, or a
    /// token for a waiting record); `None` if only a new event can change anything.
    pub fn next_wakeup(&self, now_ms: u64) -> Option<u64> {
        let (wait, listening) = (self.wait(), self.answered);
        let deadline = [&self.telemetry, &self.events]
            .iter()
            .filter_map(|s| s.next_deadline(wait, listening))
            .min();
        let order = self.cfg.order;
        let waiting = self.link_up
            && (self.telemetry.sendable(order).is_some() || self.events.sendable(order).is_some());
        let token = if waiting && self.cfg.rate_per_s > 0 && self.tokens < 1.0 {
            let missing = 1.0 - self.tokens;
            let wait = missing * 1000.0 / f64::from(self.cfg.rate_per_s);
            // Rounded up (core has no `ceil`), so the token is there when the caller wakes.
            let whole = wait as u64;
            Some(now_ms + whole + u64::from((whole as f64) < wait))
        } else if waiting {
            Some(now_ms)
        } else {
            None
        };
        match (deadline, token) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn watermarks_have_pinned_bytes() {
        crate::envelope::golden::assert_pinned(&[
            (Watermarks::default(), "010000"),
            (
                Watermarks {
                    telemetry: 300,
                    events: 1_763_798_400_000,
                },
                "01ac0280f8ced4aa33",
            ),
        ]);
    }

    fn unpaced() -> DeliveryConfig {
        DeliveryConfig {
            rate_per_s: 0,
            ..DeliveryConfig::default()
        }
    }

    fn drain(d: &mut Delivery, now: u64) -> Vec<(Stream, u64)> {
        core::iter::from_fn(|| d.next_send(now)).collect()
    }

    /// The unpaced delivery of a new box numbering from `start`: everything below it counts as
    /// assigned and confirmed.
    fn numbered_from(start: u64) -> Delivery {
        let mut d = Delivery::new(unpaced(), 0);
        for s in Stream::ALL {
            d.assigned_upto(s, start - 1);
            assert_eq!(d.confirmed(s, start - 1, 0), Confirmation::Advanced);
        }
        d
    }

    /// An unpaced delivery whose telemetry 1 to `last` was all sent at 0.
    fn telemetry_sent(last: u64) -> Delivery {
        let mut d = Delivery::new(unpaced(), 0);
        for seq in 1..=last {
            d.queued(Stream::Telemetry, seq);
        }
        d.link_up(0);
        assert_eq!(drain(&mut d, 0).len() as u64, last);
        d
    }

    #[test]
    fn nothing_is_sent_while_the_link_is_down() {
        let mut d = Delivery::new(unpaced(), 0);
        d.queued(Stream::Telemetry, 1);
        assert_eq!(d.next_send(0), None);
        d.link_up(1);
        assert_eq!(drain(&mut d, 1), [(Stream::Telemetry, 1)]);
    }

    #[test]
    fn events_go_before_telemetry_and_backlogs_go_oldest_first() {
        let mut d = Delivery::new(unpaced(), 0);
        for s in [3, 1, 2] {
            d.queued(Stream::Telemetry, s);
        }
        d.queued(Stream::Events, 9);
        d.link_up(0);
        assert_eq!(
            drain(&mut d, 0),
            [
                (Stream::Events, 9),
                (Stream::Telemetry, 1),
                (Stream::Telemetry, 2),
                (Stream::Telemetry, 3)
            ]
        );
    }

    #[test]
    fn newest_first_sends_the_current_state_before_history() {
        let cfg = DeliveryConfig {
            order: ReplayOrder::NewestFirst,
            ..unpaced()
        };
        let mut d = Delivery::new(cfg, 0);
        for s in 1..=3 {
            d.queued(Stream::Telemetry, s);
        }
        d.link_up(0);
        let seqs: Vec<u64> = drain(&mut d, 0).iter().map(|x| x.1).collect();
        assert_eq!(seqs, [3, 2, 1]);
    }

    #[test]
    fn unconfirmed_records_are_sent_again_after_the_timeout() {
        let mut d = telemetry_sent(2);
        assert_eq!(d.confirmed(Stream::Telemetry, 1, 0), Confirmation::Advanced);
        assert_eq!(d.next_wakeup(0), Some(30_000));
        assert_eq!(d.next_send(29_999), None);
        assert_eq!(d.next_send(30_000), Some((Stream::Telemetry, 2)));
        assert_eq!(d.unconfirmed(), 1);
    }

    #[test]
    fn each_wait_that_runs_out_doubles_the_next_until_central_answers() {
        let mut d = telemetry_sent(2);
        // Sent at 0, 30 s, 90 s, 210 s, then every 120 s at most.
        let mut at = 0;
        for wait in [30_000, 60_000, 120_000, 120_000, 120_000] {
            assert_eq!(d.next_wakeup(at), Some(at + wait), "after {at} ms");
            assert_eq!(d.next_send(at + wait - 1), None);
            at += wait;
            assert_eq!(drain(&mut d, at).len(), 2, "at {at} ms");
        }
        // Central answers one: the next wait is the first again. The answer was to a record
        // sent five times, so it measured nothing of how long central takes.
        assert_eq!(
            d.confirmed(Stream::Telemetry, 1, at + 100),
            Confirmation::Advanced
        );
        d.queued(Stream::Telemetry, 3);
        assert_eq!(drain(&mut d, at + 100), [(Stream::Telemetry, 3)]);
        assert_eq!(
            d.next_wakeup(at + 100),
            Some(at + 30_000),
            "seq 2, sent at {at}"
        );
        assert_eq!(drain(&mut d, at + 30_000), [(Stream::Telemetry, 2)]);
        // That wait ran out too: seq 3 waits twice as long.
        assert_eq!(d.next_wakeup(at + 30_000), Some(at + 100 + 60_000));
    }

    #[test]
    fn a_central_slow_to_confirm_is_waited_for_longer_before_records_go_again() {
        let mut d = Delivery::new(unpaced(), 0);
        d.link_up(0);
        // Central confirms each record 40 s after its only sending.
        for seq in 1..=3 {
            let sent = seq * 100_000;
            d.queued(Stream::Telemetry, seq);
            assert_eq!(drain(&mut d, sent), [(Stream::Telemetry, seq)]);
            assert_eq!(
                d.confirmed(Stream::Telemetry, seq, sent + 40_000),
                Confirmation::Advanced
            );
        }
        // The wait follows: 40 s and four times its variation (20 s, 15 s, 11.25 s) rather
        // than 30 s.
        d.queued(Stream::Telemetry, 4);
        assert_eq!(drain(&mut d, 400_000), [(Stream::Telemetry, 4)]);
        assert_eq!(d.next_wakeup(400_000), Some(400_000 + 40_000 + 4 * 11_250));
        assert_eq!(d.next_send(484_999), None);
        assert_eq!(d.next_send(485_000), Some((Stream::Telemetry, 4)));
        // Central speeds up again: the wait comes down, never below the configured 30 s.
        let mut now = 485_000;
        for seq in 4..=40 {
            if seq > 4 {
                d.queued(Stream::Telemetry, seq);
                assert_eq!(drain(&mut d, now), [(Stream::Telemetry, seq)]);
            }
            now += 100;
            d.confirmed(Stream::Telemetry, seq, now);
        }
        d.queued(Stream::Telemetry, 41);
        assert_eq!(drain(&mut d, now), [(Stream::Telemetry, 41)]);
        assert_eq!(d.next_wakeup(now), Some(now + 30_000));
    }

    #[test]
    fn a_reconnect_resends_everything_unconfirmed() {
        let mut d = telemetry_sent(3);
        d.confirmed(Stream::Telemetry, 1, 0);
        d.link_down();
        d.link_up(10);
        let seqs: Vec<u64> = drain(&mut d, 10).iter().map(|x| x.1).collect();
        assert_eq!(seqs, [2, 3]);
    }

    #[test]
    fn confirmation_removes_records_and_never_moves_back() {
        let mut d = Delivery::new(unpaced(), 0);
        for s in 1..=5 {
            d.queued(Stream::Telemetry, s);
        }
        assert_eq!(d.confirmed(Stream::Telemetry, 3, 0), Confirmation::Advanced);
        assert_eq!(d.confirmed(Stream::Telemetry, 2, 0), Confirmation::Stale);
        assert_eq!(d.watermark(Stream::Telemetry), 3);
        d.queued(Stream::Telemetry, 2); // a stale duplicate is ignored
        d.link_up(0);
        let seqs: Vec<u64> = drain(&mut d, 0).iter().map(|x| x.1).collect();
        assert_eq!(seqs, [4, 5]);
    }

    #[test]
    fn replay_is_paced_by_the_token_bucket() {
        let cfg = DeliveryConfig {
            rate_per_s: 10,
            burst: 5,
            ..DeliveryConfig::default()
        };
        let mut d = Delivery::new(cfg, 0);
        for s in 1..=100 {
            d.queued(Stream::Telemetry, s);
        }
        d.link_up(0);
        assert_eq!(drain(&mut d, 0).len(), 5, "the burst");
        assert_eq!(d.next_wakeup(0), Some(100));
        assert_eq!(drain(&mut d, 100).len(), 1);
        assert_eq!(drain(&mut d, 1_100).len(), 5, "10/s, capped at the burst");
    }

    #[test]
    fn a_refused_record_is_retried() {
        let mut d = Delivery::new(unpaced(), 0);
        d.queued(Stream::Telemetry, 1);
        d.link_up(0);
        assert_eq!(d.next_send(0), Some((Stream::Telemetry, 1)));
        d.not_sent(Stream::Telemetry, 1);
        assert_eq!(d.next_send(0), Some((Stream::Telemetry, 1)));
    }

    #[test]
    fn a_watermark_behind_the_boxs_own_sends_the_events_in_flight_again_at_once() {
        // A new box numbers from 1_000; central, which missed its start-of-numbering event,
        // acknowledges what it had (0).
        let mut d = Delivery::new(DeliveryConfig::default(), 0);
        for s in Stream::ALL {
            d.assigned_upto(s, 999);
            assert_eq!(d.confirmed(s, 999, 0), Confirmation::Advanced);
        }
        d.link_up(0);
        d.queued(Stream::Events, 1_000);
        d.queued(Stream::Telemetry, 1_000);
        assert_eq!(d.next_send(10), Some((Stream::Events, 1_000)));
        assert_eq!(d.next_send(10), Some((Stream::Telemetry, 1_000)));
        assert_eq!(d.next_send(20), None, "nothing is due before resend_after");
        assert_eq!(d.confirmed(Stream::Telemetry, 0, 0), Confirmation::Stale);
        assert_eq!(
            d.next_send(30),
            Some((Stream::Events, 1_000)),
            "the event goes again now"
        );
        assert_eq!(
            d.next_send(30),
            None,
            "telemetry central already has is not resent"
        );
        // Central caught up: nothing more.
        assert_eq!(
            d.confirmed(Stream::Events, 1_000, 0),
            Confirmation::Advanced
        );
        assert_eq!(
            d.confirmed(Stream::Telemetry, 1_000, 0),
            Confirmation::Advanced
        );
        assert_eq!(d.unconfirmed(), 0);
    }

    #[test]
    fn a_watermark_beyond_what_was_assigned_is_refused_and_changes_nothing() {
        let mut d = Delivery::new(unpaced(), 0);
        d.assigned_upto(Stream::Telemetry, 10);
        for s in 11..=12 {
            d.queued(Stream::Telemetry, s);
        }
        d.queued(Stream::Events, 1);
        for forged in [13, 1_000_000, u64::MAX] {
            assert_eq!(
                d.confirmed(Stream::Telemetry, forged, 0),
                Confirmation::Beyond { assigned: 12 }
            );
        }
        assert_eq!(
            d.confirmed(Stream::Events, u64::MAX, 0),
            Confirmation::Beyond { assigned: 1 }
        );
        assert_eq!(d.watermark(Stream::Telemetry), 0);
        d.link_up(0);
        assert_eq!(drain(&mut d, 0).len(), 3, "everything is still sent");
        // Records numbered after the refusal are sent and confirmed as usual.
        d.queued(Stream::Telemetry, 13);
        assert_eq!(drain(&mut d, 0), [(Stream::Telemetry, 13)]);
        assert_eq!(
            d.confirmed(Stream::Telemetry, 13, 0),
            Confirmation::Advanced
        );
        assert_eq!(d.unconfirmed(), 1, "the event is left");
    }

    #[test]
    fn a_box_numbering_from_its_start_takes_an_older_box_watermark_as_stale() {
        // A replacement box's outbox starts at its clock: everything below is not its own.
        let start = 1_763_798_400_000;
        let mut d = Delivery::new(unpaced(), 0);
        d.assigned_upto(Stream::Telemetry, start - 1);
        assert_eq!(
            d.confirmed(Stream::Telemetry, start - 1, 0),
            Confirmation::Advanced
        );
        d.queued(Stream::Telemetry, start);
        // The retained watermark of the box it replaced: true, old, and no forgery.
        assert_eq!(
            d.confirmed(Stream::Telemetry, 5_000, 0),
            Confirmation::Stale
        );
        assert_eq!(
            d.confirmed(Stream::Telemetry, start + 1, 0),
            Confirmation::Beyond { assigned: start }
        );
        d.link_up(0);
        assert_eq!(drain(&mut d, 0), [(Stream::Telemetry, start)]);
        assert_eq!(
            d.confirmed(Stream::Telemetry, start, 0),
            Confirmation::Advanced
        );
        assert_eq!(d.unconfirmed(), 0);
    }

    #[test]
    fn a_held_numbering_sends_only_its_announcements_and_takes_a_predecessors_marks_as_clashes() {
        // A new box whose clock is behind: it numbers from 5_000, its two announcements are
        // events 5_000 and 5_001, and it has telemetry and more events waiting.
        let start = 5_000;
        let mut d = numbered_from(start);
        for seq in start..start + 4 {
            d.queued(Stream::Events, seq);
            d.queued(Stream::Telemetry, seq);
        }
        d.hold(Stream::Events, Some(held_upto(Stream::Events, start)));
        d.hold(Stream::Telemetry, Some(held_upto(Stream::Telemetry, start)));
        d.link_up(0);
        assert_eq!(
            drain(&mut d, 0),
            [(Stream::Events, start), (Stream::Events, start + 1)]
        );
        // They go again after 5 s, 10 s, 20 s… while central does not answer (it may not have
        // been listening), never later than records do.
        assert_eq!(d.next_wakeup(0), Some(5_000), "only the resend deadline");
        assert_eq!(drain(&mut d, 4_999).len(), 0);
        assert_eq!(drain(&mut d, 5_000).len(), 2);
        assert_eq!(d.next_wakeup(5_000), Some(15_000));
        // A stale watermark (the copy a broker kept of an earlier one): nothing goes again
        // before its time.
        assert_eq!(d.confirmed(Stream::Events, 0, 0), Confirmation::Stale);
        assert_eq!(drain(&mut d, 6_000).len(), 0);
        assert_eq!(drain(&mut d, 15_000).len(), 2);
        assert_eq!(d.next_wakeup(15_000), Some(35_000));
        assert_eq!(drain(&mut d, 35_000).len(), 2);
        assert_eq!(d.next_wakeup(35_000), Some(65_000), "resend_after at most");
        // Central holds a predecessor's records up to 9_000: its watermark, and what it says
        // it holds, clash; a watermark within the announcements does not.
        assert_eq!(
            d.confirmed(Stream::Telemetry, 9_000, 0),
            Confirmation::Clash { watermark: 9_000 }
        );
        assert_eq!(
            d.confirmed(Stream::Events, start + 2, 0),
            Confirmation::Clash {
                watermark: start + 2
            }
        );
        assert!(d.clashes(Stream::Telemetry, start));
        assert!(!d.clashes(Stream::Events, start + 1));
        assert!(d.clashes(Stream::Events, start + 2));
        assert_eq!(d.watermark(Stream::Events), start - 1, "nothing changed");
        // Central agrees: the announcements are confirmed, the hold is released, the rest goes.
        assert_eq!(
            d.confirmed(Stream::Events, start + 1, 0),
            Confirmation::Advanced
        );
        d.hold(Stream::Events, None);
        d.hold(Stream::Telemetry, None);
        assert!(!d.clashes(Stream::Telemetry, 9_000));
        let rest = drain(&mut d, 0);
        assert_eq!(rest.len(), 6, "{rest:?}");
    }

    #[test]
    fn once_central_answers_the_held_announcements_wait_as_records_do() {
        let start = 5_000;
        let mut d = numbered_from(start);
        d.queued(Stream::Events, start);
        d.queued(Stream::Events, start + 1);
        d.hold(Stream::Events, Some(held_upto(Stream::Events, start)));
        d.link_up(0);
        assert_eq!(drain(&mut d, 0).len(), 2);
        assert_eq!(d.next_wakeup(0), Some(5_000));
        // Central answers the box's presence (a province's power-on: it is slow to store the
        // announcements, but listening): they go again after 30 s, not 5.
        d.central_answered();
        assert_eq!(d.next_wakeup(100), Some(30_000));
        assert_eq!(drain(&mut d, 29_999).len(), 0);
        assert_eq!(drain(&mut d, 30_000).len(), 2);
        assert_eq!(d.next_wakeup(30_000), Some(90_000));
        // A new connection: central may not be listening there (yet). The sooner schedule
        // again, where it was (5 s, twice).
        d.link_down();
        d.link_up(40_000);
        assert_eq!(drain(&mut d, 40_000).len(), 2);
        assert_eq!(d.next_wakeup(40_000), Some(40_000 + 10_000));
    }

    #[test]
    fn dropped_ranges_count_as_assigned() {
        let mut d = Delivery::new(unpaced(), 0);
        d.dropped_upto(Stream::Telemetry, 7);
        assert_eq!(d.assigned(Stream::Telemetry), 7);
        assert_eq!(d.confirmed(Stream::Telemetry, 7, 0), Confirmation::Advanced);
    }

    proptest::proptest! {
        /// Model: forged watermarks (anything beyond the last seq assigned) mixed into any
        /// history are refused, never move the watermark, and never stop a record from being
        /// sent; true ones still confirm.
        #[test]
        fn forged_watermarks_never_silence_the_terminal(
            ops in proptest::collection::vec((0u8..5, proptest::num::u64::ANY), 1..200)
        ) {
            let mut d = Delivery::new(unpaced(), 0);
            let mut next = 1u64;
            let mut confirmed = 0u64;
            for (op, value) in ops {
                match op {
                    0 | 1 => { d.queued(Stream::Telemetry, next); next += 1; }
                    2 => {
                        let forged = (next - 1).saturating_add(1 + value % 1_000).max(value);
                        let r = d.confirmed(Stream::Telemetry, forged, 0);
                        proptest::prop_assert_eq!(r, Confirmation::Beyond { assigned: next - 1 });
                    }
                    3 if next > 1 => {
                        let wm = value % next;
                        let r = d.confirmed(Stream::Telemetry, wm, 0);
                        proptest::prop_assert_eq!(r == Confirmation::Advanced, wm > confirmed);
                        confirmed = confirmed.max(wm);
                    }
                    _ => d.link_up(0),
                }
                proptest::prop_assert_eq!(d.watermark(Stream::Telemetry), confirmed);
                proptest::prop_assert!(d.watermark(Stream::Telemetry) < next);
            }
            d.link_up(0);
            let sent: Vec<u64> = drain(&mut d, 0).into_iter().map(|x| x.1).collect();
            let expected: Vec<u64> = (confirmed + 1..next).collect();
            proptest::prop_assert_eq!(sent, expected);
        }

        /// Model: whatever happens, once the link stays up every queued record that central has
        /// not confirmed is sent, nothing at or below the watermark is ever sent, and after a
        /// final confirmation nothing is left.
        #[test]
        fn every_record_is_delivered(ops in proptest::collection::vec(0u8..6, 1..200)) {
            let mut d = Delivery::new(unpaced(), 0);
            let mut next = 1u64;
            let mut now = 0u64;
            let mut confirmed = 0u64;
            let mut sent_ever = BTreeSet::new();
            for op in ops {
                now += 100;
                match op {
                    0 | 1 => { d.queued(Stream::Telemetry, next); next += 1; }
                    2 => d.link_up(now),
                    3 => d.link_down(),
                    4 => {
                        // Central confirms a prefix of what was sent.
                        if let Some(&max) = sent_ever.iter().next_back() {
                            let wm: u64 = (confirmed + 1..=max).take_while(|s| sent_ever.contains(s)).last().unwrap_or(confirmed);
                            if wm > confirmed { d.confirmed(Stream::Telemetry, wm, 0); confirmed = wm; }
                        }
                    }
                    _ => {
                        while let Some((_, s)) = d.next_send(now) {
                            proptest::prop_assert!(s > confirmed, "sent confirmed seq {}", s);
                            sent_ever.insert(s);
                        }
                    }
                }
            }
            d.link_up(now);
            while let Some((_, s)) = d.next_send(now) {
                proptest::prop_assert!(s > confirmed);
                sent_ever.insert(s);
            }
            for s in confirmed + 1..next {
                proptest::prop_assert!(sent_ever.contains(&s), "seq {} never sent", s);
            }
            d.confirmed(Stream::Telemetry, next - 1, 0);
            proptest::prop_assert_eq!(d.unconfirmed(), 0);
        }
    }
}
