//! The outbox's small state file (`outbox.state`): where numbering started, what central
//! confirmed, what was dropped, the highest seq numbered, a held numbering and its
//! renumberings, one `key value` a line.

use std::path::Path;

use cuntong_core::delivery::held_upto;
use cuntong_core::envelope::Stream;

use super::OutboxError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct State {
    /// The first seq this outbox numbered, per stream: 1, or the clock when it was created.
    pub(super) first: [u64; 2],
    pub(super) confirmed: [u64; 2],
    /// Highest seq ever assigned, per stream: no watermark may pass it.
    pub(super) assigned: [u64; 2],
    /// False for a state file written by a version that did not record `assigned`.
    pub(super) assigned_known: bool,
    /// Highest seq dropped unsent, per stream.
    pub(super) dropped_upto: [u64; 2],
    pub(super) dropped_total: u64,
    /// A new numbering waits for central's agreement: the events up to this (its
    /// announcements) may go, nothing else (see [`Outbox::holding`]).
    pub(super) holding: Option<u64>,
    /// Renumberings: (stream, last segment written before, offset). A record of the stream in
    /// a segment up to that one is at its written seq plus the offset (plus those of later
    /// renumberings).
    pub(super) moved: Vec<(usize, u64, u64)>,
}

impl Default for State {
    fn default() -> State {
        State {
            first: [1; 2],
            confirmed: [0; 2],
            assigned: [0; 2],
            assigned_known: false,
            dropped_upto: [0; 2],
            dropped_total: 0,
            holding: None,
            moved: Vec::new(),
        }
    }
}

impl State {
    /// The state of a new outbox: each stream numbers from `first`, and nothing below it is
    /// this box's to send.
    pub(super) fn numbering_from(first: u64) -> State {
        let first = first.max(1);
        State {
            first: [first; 2],
            confirmed: [first - 1; 2],
            assigned: [first - 1; 2],
            assigned_known: true,
            // Its first two events are the announcements, of each stream's start.
            holding: Some(held_upto(Stream::Events, first)),
            ..State::default()
        }
    }

    /// Where a record of stream `s` written as `seq` in `segment` is now.
    pub(super) fn moved(&self, s: usize, segment: u64, seq: u64) -> u64 {
        self.moved
            .iter()
            .filter(|&&(m, upto, _)| m == s && segment <= upto)
            .fold(seq, |q, &(_, _, by)| q.saturating_add(by))
    }
    /// The state file's text: `assigned` is the highest seq numbered per stream; a
    /// renumbering is kept while a segment it moves is (`oldest` segment on disk).
    pub(super) fn text(&self, assigned: [u64; 2], oldest: Option<u64>) -> String {
        let mut text = format!(
            "first-telemetry {}\nfirst-events {}\nconfirmed-telemetry {}\nconfirmed-events {}\ndropped-upto-telemetry {}\ndropped-upto-events {}\ndropped-total {}\nassigned-telemetry {}\nassigned-events {}\n",
            self.first[0],
            self.first[1],
            self.confirmed[0],
            self.confirmed[1],
            self.dropped_upto[0],
            self.dropped_upto[1],
            self.dropped_total,
            assigned[0],
            assigned[1],
        );
        if let Some(upto) = self.holding {
            text.push_str(&format!("holding-events-upto {upto}\n"));
        }
        for &(s, upto, by) in &self.moved {
            if oldest.is_some_and(|o| o <= upto) {
                let name = ["telemetry", "events"][s];
                text.push_str(&format!("moved-{name} {upto} {by}\n"));
            }
        }
        text
    }
}

/// The state file, or `None` if there is none.
pub(super) fn read_state(path: &Path) -> Result<Option<State>, OutboxError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(OutboxError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    let mut st = State::default();
    for (i, line) in text.lines().enumerate() {
        let bad = |problem: String| OutboxError::State {
            path: path.to_owned(),
            line: i + 1,
            problem,
        };
        let (key, value) = line
            .split_once(' ')
            .ok_or_else(|| bad(format!("expected \"<key> <number>\", found {line:?}")))?;
        let number = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| bad(format!("{v:?} is not a number")))
        };
        if let Some(name) = key.strip_prefix("moved-") {
            let s = match name {
                "telemetry" => 0,
                "events" => 1,
                other => return Err(bad(format!("unknown stream {other:?}"))),
            };
            let (upto, by) = value
                .split_once(' ')
                .ok_or_else(|| bad(format!("expected \"{key} <segment> <offset>\"")))?;
            st.moved.push((s, number(upto)?, number(by)?));
            continue;
        }
        let n = number(value)?;
        match key {
            "first-telemetry" => st.first[0] = n.max(1),
            "first-events" => st.first[1] = n.max(1),
            "confirmed-telemetry" => st.confirmed[0] = n,
            "confirmed-events" => st.confirmed[1] = n,
            "dropped-upto-telemetry" => st.dropped_upto[0] = n,
            "dropped-upto-events" => st.dropped_upto[1] = n,
            "dropped-total" => st.dropped_total = n,
            "assigned-telemetry" => (st.assigned[0], st.assigned_known) = (n, true),
            "assigned-events" => (st.assigned[1], st.assigned_known) = (n, true),
            "holding-events-upto" => st.holding = Some(n),
            other => return Err(bad(format!("unknown key {other:?}"))),
        }
    }
    Ok(Some(st))
}
