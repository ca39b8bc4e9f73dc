//! What central confirms to terminals once their records are stored: each terminal's
//! watermarks (its retained `ack`), and a notice to a terminal whose numbering clashes with
//! what is held under its id.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use cuntong_core::delivery::Watermarks;
use cuntong_core::envelope::encode;
use cuntong_core::terminal_id::TerminalId;
use cuntong_core::topic::{Channel, Topic};
use cuntong_terminal::link::{Link, Message};

use super::CentralStats;

/// What central confirms to terminals, the newest a terminal: their watermarks (the retained
/// `ack`), and, to a terminal whose announced numbering clashes with seqs held under its id,
/// the highest held (a notice).
#[derive(Debug, Default)]
pub(super) struct Confirmations {
    pub(super) marks: HashMap<TerminalId, Watermarks>,
    held: HashMap<TerminalId, Watermarks>,
}

impl Confirmations {
    pub(super) fn extend(&mut self, more: Confirmations) {
        self.marks.extend(more.marks);
        self.held.extend(more.held);
    }
}

/// Confirmations of what the store thread wrote that the loop has not taken yet: at most one
/// entry a terminal however far the loop falls behind the writer.
#[derive(Debug, Default)]
pub(super) struct StoredMarks {
    pending: std::sync::Mutex<Confirmations>,
    pub(super) ready: tokio::sync::Notify,
}

impl StoredMarks {
    /// What a group advanced (after what earlier groups did), and the clashes it found.
    pub(super) fn put(
        &self,
        advanced: Vec<(TerminalId, Watermarks)>,
        held: Vec<(TerminalId, Watermarks)>,
    ) {
        if advanced.is_empty() && held.is_empty() {
            return;
        }
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        pending.marks.extend(advanced);
        pending.held.extend(held);
        drop(pending);
        self.ready.notify_one();
    }

    pub(super) fn take(&self) -> Confirmations {
        std::mem::take(
            &mut *self
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

/// Publishes the pending confirmations, a terminal's notice of what is held before its
/// watermark (which may release what the notice must stop); those the link cannot take now
/// wait for the next tick. Both at QoS 0: each is whole and replaced by the next (a terminal
/// that misses one sends again and is confirmed again), and a province's tens of thousands a
/// second do not wait for the broker's acknowledgement of each.
pub(super) fn confirm(link: &Link, pending: &mut Confirmations, stats: &CentralStats) {
    let held: Vec<(TerminalId, Watermarks)> = pending.held.iter().map(|(t, h)| (*t, *h)).collect();
    for (id, highest) in held {
        let notice = cuntong_core::alarm::TerminalNotice::Held { highest };
        let Ok(payload) = encode(&notice) else {
            continue;
        };
        let topic = Topic::terminal(&id, Channel::Notice).to_string();
        if link
            .try_publish(Message::new(topic, payload).at_most_once())
            .is_err()
        {
            return;
        }
        pending.held.remove(&id);
    }
    let mut sent = Vec::new();
    for (id, marks) in pending.marks.iter() {
        if pending.held.contains_key(id) {
            continue;
        }
        let Ok(payload) = encode(marks) else { continue };
        let topic = Topic::terminal(id, Channel::Ack).to_string();
        if link
            .try_publish(Message::new(topic, payload).retained().at_most_once())
            .is_err()
        {
            break;
        }
        sent.push(*id);
        stats.acks.fetch_add(1, Ordering::Relaxed);
    }
    for id in sent {
        pending.marks.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_watermarks_wait_as_one_entry_a_terminal_however_many_groups_pass() {
        let marks = StoredMarks::default();
        let ids: Vec<TerminalId> = (1..=3)
            .map(|v| format!("130102001{v:03}-main").parse().unwrap())
            .collect();
        // A thousand groups while the loop is busy: each advances every terminal.
        for seq in 1..=1_000u64 {
            let group = ids
                .iter()
                .map(|id| {
                    let w = Watermarks {
                        telemetry: seq,
                        events: seq / 2,
                    };
                    (*id, w)
                })
                .collect();
            marks.put(group, Vec::new());
        }
        marks.put(Vec::new(), Vec::new());
        let taken = marks.take().marks;
        assert_eq!(taken.len(), 3);
        for id in &ids {
            assert_eq!(
                taken[id],
                Watermarks {
                    telemetry: 1_000,
                    events: 500
                }
            );
        }
        assert!(marks.take().marks.is_empty());
    }
}
