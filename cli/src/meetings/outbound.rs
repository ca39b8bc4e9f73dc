//! What the meeting service has to publish, waiting for room in the links' queues: urgent
//! messages (states, answers) on a link of their own, never behind the bulk (media plans,
//! relay tables), the bulk keeping only the latest message per topic.

use std::collections::{HashMap, VecDeque};

use cuntong_terminal::link::{Link, Message};

/// Messages waiting for room in the link's queue, at most, in each lane.
const OUTBOUND_MAX: usize = 200_000;

/// What the meeting service has to publish, in two lanes: the urgent (states, answers) go on
/// a link of their own, the bulk (media plans, relay tables) on another, so a chair's
/// operation reaches the sites at once even while thousands of plans wait, in central and in
/// the broker that reads them one after another from the bulk link's connection.
#[derive(Default)]
pub(super) struct Outbound {
    urgent: VecDeque<Message>,
    bulk: Bulk,
    /// Says when a lane overflows, once a minute rather than once a message.
    log: cuntong_terminal::throttle::LogLimiter,
    /// Messages dropped (the oldest of a full lane) since the start.
    dropped: u64,
}

/// The bulk lane, in order. A message pushed with a key (a site's plan or relay table for a
/// meeting) carries the whole of what it says: the next one with the same key replaces it in
/// its place while it waits. A province's sites re-join while their plans wait behind each
/// other, and each re-join lays out a new plan; without this the waiting plans multiply
/// until the lane overflows. Messages without a key each count and are never replaced.
#[derive(Default)]
struct Bulk {
    order: VecDeque<Entry>,
    keyed: HashMap<String, Message>,
}

enum Entry {
    Plain(Message),
    Keyed(String),
}

impl Bulk {
    fn len(&self) -> usize {
        self.order.len()
    }

    /// Queues `m`, or replaces what waits under `key`; false if the lane was full (its oldest
    /// message dropped).
    fn push(&mut self, key: Option<String>, m: Message) -> bool {
        let entry = match key {
            Some(key) => {
                if let Some(waiting) = self.keyed.get_mut(&key) {
                    *waiting = m;
                    return true;
                }
                self.keyed.insert(key.clone(), m);
                Entry::Keyed(key)
            }
            None => Entry::Plain(m),
        };
        let full = self.order.len() >= OUTBOUND_MAX;
        // The oldest entry goes, plain or keyed.
        if full && let Some(Entry::Keyed(oldest)) = self.order.pop_front() {
            self.keyed.remove(&oldest);
        }
        self.order.push_back(entry);
        !full
    }

    fn pop_front(&mut self) -> Option<(Option<String>, Message)> {
        while let Some(entry) = self.order.pop_front() {
            match entry {
                Entry::Plain(m) => return Some((None, m)),
                Entry::Keyed(key) => {
                    if let Some(m) = self.keyed.remove(&key) {
                        return Some((Some(key), m));
                    }
                }
            }
        }
        None
    }

    fn push_front(&mut self, key: Option<String>, m: Message) {
        self.order.push_front(match key {
            Some(key) => {
                self.keyed.insert(key.clone(), m);
                Entry::Keyed(key)
            }
            None => Entry::Plain(m),
        });
    }
}

impl Outbound {
    pub(super) fn len(&self) -> usize {
        self.urgent.len() + self.bulk.len()
    }

    /// Queues `m` in its lane (urgent or bulk); each message counts.
    pub(super) fn push(&mut self, m: Message) {
        self.queue(None, m);
    }

    /// Queues `m` on the bulk lane in place of what still waits under `key`: for messages
    /// that carry the whole of something (a site's plan for a meeting, a relay's table).
    pub(super) fn push_replacing(&mut self, key: String, m: Message) {
        self.queue(Some(key), m);
    }

    fn queue(&mut self, key: Option<String>, m: Message) {
        // Sites repeat what they need (joins, statuses); states are republished on the next
        // change or reconnect: the oldest waiting message is the one to drop.
        let kept = if m.urgent {
            let full = self.urgent.len() >= OUTBOUND_MAX;
            if full {
                self.urgent.pop_front();
            }
            self.urgent.push_back(m);
            !full
        } else {
            self.bulk.push(key, m)
        };
        if !kept {
            self.dropped += 1;
            if let Some(more) = self.log.allow("outbound full") {
                tracing::warn!("meeting outbound queue full: dropping the oldest message{more}");
            }
        }
    }

    /// Messages dropped since the start: the oldest of a lane that was full.
    pub(super) fn dropped(&self) -> u64 {
        self.dropped
    }

    #[cfg(test)]
    pub(super) fn pop_front(&mut self) -> Option<Message> {
        self.urgent
            .pop_front()
            .or_else(|| self.bulk.pop_front().map(|(_, m)| m))
    }

    /// Hands each lane's link (`urgent`, `bulk`) as much as it takes now, in order; the rest
    /// waits.
    pub(super) fn drain(&mut self, urgent: &Link, bulk: &Link) {
        use cuntong_terminal::link::PublishError;
        while let Some(m) = self.urgent.pop_front() {
            if let Err(e) = urgent.try_publish(m.clone()) {
                if e == PublishError::Full {
                    self.urgent.push_front(m);
                }
                return;
            }
        }
        while let Some((key, m)) = self.bulk.pop_front() {
            if let Err(e) = bulk.try_publish(m.clone()) {
                if e == PublishError::Full {
                    self.bulk.push_front(key, m);
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_lane_drops_its_oldest_message_and_counts_it() {
        let mut out = Outbound::default();
        for k in 0..OUTBOUND_MAX + 3 {
            out.push(Message::new(format!("plan/{k}"), Vec::new()));
        }
        out.push(Message::new("state/1", Vec::new()).retained().urgent());
        assert_eq!(out.dropped(), 3);
        assert_eq!(out.len(), OUTBOUND_MAX + 1);
        // The state first, then the bulk from the oldest kept.
        assert_eq!(out.pop_front().map(|m| m.topic), Some("state/1".to_owned()));
        assert_eq!(out.pop_front().map(|m| m.topic), Some("plan/3".to_owned()));
    }

    #[test]
    fn states_and_answers_go_out_ahead_of_waiting_plans_each_lane_in_order() {
        let mut out = Outbound::default();
        for k in 0..3 {
            out.push(Message::new(format!("plan/{k}"), Vec::new()));
        }
        out.push(Message::new("state/1", Vec::new()).retained().urgent());
        out.push(Message::new("plan/3", Vec::new()));
        out.push(Message::new("state/2", Vec::new()).retained().urgent());
        assert_eq!(out.len(), 6);
        let order: Vec<String> = std::iter::from_fn(|| out.pop_front())
            .map(|m| m.topic)
            .collect();
        assert_eq!(
            order,
            ["state/1", "state/2", "plan/0", "plan/1", "plan/2", "plan/3"]
        );
    }

    #[test]
    fn a_waiting_plan_is_replaced_by_the_next_for_the_same_site_in_its_place() {
        let mut out = Outbound::default();
        for round in 0..5u8 {
            for k in 0..3 {
                let m = Message::new(format!("md/{k}"), vec![round]);
                out.push_replacing(format!("md/{k} plan"), m);
            }
        }
        out.push(Message::new("answer/1", vec![1]).urgent());
        out.push(Message::new("answer/1", vec![2]).urgent());
        assert_eq!(out.len(), 5, "three plans, and both answers");
        assert_eq!(
            drained(&mut out),
            [
                ("answer/1".to_owned(), vec![1]),
                ("answer/1".to_owned(), vec![2]),
                ("md/0".to_owned(), vec![4]),
                ("md/1".to_owned(), vec![4]),
                ("md/2".to_owned(), vec![4]),
            ]
        );
    }

    #[test]
    fn only_a_message_of_the_same_key_replaces_one_others_on_its_topic_all_go_out() {
        let mut out = Outbound::default();
        // A relay's plan and its relay table share its downlink topic; so do two notices.
        out.push_replacing("md/r m1 plan".into(), Message::new("md/r", vec![1]));
        out.push_replacing("md/r m1 relay".into(), Message::new("md/r", vec![2]));
        out.push_replacing("md/r m2 plan".into(), Message::new("md/r", vec![3]));
        out.push(Message::new("nt/r", vec![4]));
        out.push(Message::new("nt/r", vec![5]));
        out.push_replacing("md/r m1 relay".into(), Message::new("md/r", vec![6]));
        assert_eq!(
            drained(&mut out),
            [
                ("md/r".to_owned(), vec![1]),
                ("md/r".to_owned(), vec![6]),
                ("md/r".to_owned(), vec![3]),
                ("nt/r".to_owned(), vec![4]),
                ("nt/r".to_owned(), vec![5]),
            ]
        );
    }

    fn drained(out: &mut Outbound) -> Vec<(String, Vec<u8>)> {
        std::iter::from_fn(|| out.pop_front())
            .map(|m| (m.topic, m.payload.to_vec()))
            .collect()
    }
}
