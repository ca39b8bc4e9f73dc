//! Central's watch for permanent gaps, without IO.
//!
//! A record of a terminal that never arrives while the terminal sends what follows it again
//! and again (one its broker refuses, say, or one a full queue on the way drops every time)
//! holds the terminal's watermark, and so every later record in its outbox, for ever. A
//! terminal sends the records it has not had confirmed again, oldest first, every
//! `resend_after`; so when the lowest record received above the gap arrives again
//! [`GIVE_UP_ROUNDS`] times and nothing of the gap has arrived meanwhile, the gap is declared
//! lost: central hands the store a [`crate::store::Record::Lost`] (a dropped range, so the
//! watermark moves on and the terminal's outbox drains) and the alarm engine raises a `lost`
//! alarm. A record of the gap arriving starts the count again; a terminal still delivering a
//! backlog (newest first or oldest first) keeps filling its gap and is never declared.

use std::collections::HashMap;

use cuntong_core::delivery::Watermarks;
use cuntong_core::envelope::Stream;
use cuntong_core::terminal_id::TerminalId;

/// How many times the record above a gap arrives again, with nothing of the gap arriving,
/// before the gap is declared lost (with the terminal's default 30 s resend interval, about
/// two and a half minutes of a terminal sending what follows).
pub const GIVE_UP_ROUNDS: u32 = 5;

#[derive(Clone, Copy, Debug, Default)]
struct Watch {
    /// The store's watermark, as last reported.
    watermark: u64,
    /// The lowest seq received above `watermark + 1`: the gap is below it.
    above: Option<u64>,
    /// How many times `above` arrived again since the gap last changed.
    rounds: u32,
    /// The highest seq declared lost (not declared twice while the store catches up).
    declared: u64,
}

/// The watch over every terminal's streams.
#[derive(Debug, Default)]
pub struct GapWatch {
    streams: HashMap<(TerminalId, Stream), Watch>,
}

impl GapWatch {
    /// The store's watermarks of `terminal` after a group it wrote.
    pub fn stored(&mut self, terminal: TerminalId, marks: Watermarks) {
        for stream in Stream::ALL {
            let w = self.streams.entry((terminal, stream)).or_default();
            let mark = marks.get(stream);
            if mark > w.watermark {
                w.watermark = mark;
                if w.above.is_some_and(|a| a <= mark.saturating_add(1)) {
                    (w.above, w.rounds) = (None, 0);
                }
            }
        }
    }

    /// A record of `terminal`'s `stream` numbered `seq` arrived. Returns the range to declare
    /// lost, `(first, last)`, when this arrival completes the rounds.
    pub fn received(
        &mut self,
        terminal: TerminalId,
        stream: Stream,
        seq: u64,
    ) -> Option<(u64, u64)> {
        // Only a terminal whose watermark the store reported: nothing is known of the others.
        let w = self.streams.get_mut(&(terminal, stream))?;
        let next = w
            .watermark
            .saturating_add(1)
            .max(w.declared.saturating_add(1));
        if seq <= next {
            // The gap's first record, or one stored already: the gap is filling (or none).
            if seq == next {
                (w.above, w.rounds) = (None, 0);
            }
            return None;
        }
        match w.above {
            Some(a) if seq == a => {
                w.rounds += 1;
                if w.rounds >= GIVE_UP_ROUNDS {
                    (w.above, w.rounds, w.declared) = (None, 0, a - 1);
                    return Some((next, a - 1));
                }
            }
            // Something of the gap arrived: it is being filled; count again from here.
            Some(a) if seq < a => (w.above, w.rounds) = (Some(seq), 0),
            Some(_) => {}
            None => (w.above, w.rounds) = (Some(seq), 0),
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> TerminalId {
        "130102001001-main"
            .parse()
            .unwrap_or_else(|_| unreachable!())
    }

    fn marks(telemetry: u64) -> Watermarks {
        Watermarks {
            telemetry,
            events: 0,
        }
    }

    /// One resend round of `seqs`; the declaration it made, if any.
    fn round(g: &mut GapWatch, seqs: impl IntoIterator<Item = u64>) -> Option<(u64, u64)> {
        seqs.into_iter()
            .filter_map(|q| g.received(id(), Stream::Telemetry, q))
            .last()
    }

    #[test]
    fn a_gap_the_terminal_sends_past_again_and_again_is_declared_lost_once() {
        let mut g = GapWatch::default();
        g.stored(id(), marks(10));
        // 11 and 12 never arrive; 13..=15 do, and come again each round.
        assert_eq!(round(&mut g, 13..=15), None, "the first sending");
        for _ in 1..GIVE_UP_ROUNDS {
            assert_eq!(round(&mut g, 13..=15), None);
        }
        assert_eq!(round(&mut g, 13..=15), Some((11, 12)));
        // Not again while the store catches up; then the watch goes on from its watermark.
        for _ in 0..GIVE_UP_ROUNDS * 2 {
            assert_eq!(round(&mut g, 13..=15), None);
        }
        g.stored(id(), marks(15));
        assert_eq!(round(&mut g, [16, 17]), None);
    }

    #[test]
    fn a_gap_that_is_filling_or_a_terminal_the_store_never_reported_is_never_declared() {
        let mut g = GapWatch::default();
        // Nothing known of the terminal: nothing declared however often it sends.
        for _ in 0..GIVE_UP_ROUNDS * 2 {
            assert_eq!(round(&mut g, [100, 101]), None);
        }
        g.stored(id(), marks(10));
        // A backlog sent newest first: each round brings older records, down to the gap's end.
        let mut low = 60;
        for _ in 0..GIVE_UP_ROUNDS * 3 {
            assert_eq!(round(&mut g, (low..=100).rev()), None);
            low -= 3;
        }
        // Oldest first with the store behind: the first of the gap keeps coming.
        for _ in 0..GIVE_UP_ROUNDS * 2 {
            assert_eq!(round(&mut g, 11..=14), None);
        }
        // The other stream has a watch of its own.
        for _ in 0..GIVE_UP_ROUNDS {
            assert_eq!(g.received(id(), Stream::Events, 5), None);
        }
    }
}
