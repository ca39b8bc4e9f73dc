//! What the meeting service has to publish, waiting for room in the link's queue: urgent
//! messages (states, answers) ahead of the bulk (media plans, relay tables), the bulk keeping
//! only the latest message per topic.

use std::collections::VecDeque;

use cuntong_terminal::link::{Link, Message};

/// Messages waiting for room in the link's queue, at most, in each lane.
const OUTBOUND_MAX: usize = 200_000;

/// What the meeting service has to publish, in two lanes: the urgent (states, answers) go to
/// the link's urgent lane ahead of the bulk (media plans, relay tables), so a chair's
/// operation reaches the sites at once even while thousands of plans wait.
#[derive(Default)]
pub(super) struct Outbound {
    urgent: VecDeque<Message>,
    bulk: Latest,
    /// Says when a lane overflows, once a minute rather than once a message.
    log: cuntong_terminal::throttle::LogLimiter,
}

/// The bulk lane: a plan or relay table supersedes the one still waiting for the same site,
/// in its place. A province's sites re-join while their plans wait behind each other, and
/// each re-join lays out a new plan; without this the waiting plans multiply until the lane
/// overflows.
#[derive(Default)]
struct Latest {
    order: VecDeque<String>,
    waiting: std::collections::HashMap<String, Message>,
}

impl Latest {
    fn len(&self) -> usize {
        self.order.len()
    }

    /// Queues `m`, or replaces what waits for its topic; false if it was full.
    fn push(&mut self, m: Message) -> bool {
        if let Some(w) = self.waiting.get_mut(&m.topic) {
            *w = m;
            return true;
        }
        let full = self.order.len() >= OUTBOUND_MAX;
        if full && let Some(oldest) = self.order.pop_front() {
            self.waiting.remove(&oldest);
        }
        self.order.push_back(m.topic.clone());
        self.waiting.insert(m.topic.clone(), m);
        !full
    }

    fn pop_front(&mut self) -> Option<Message> {
        while let Some(topic) = self.order.pop_front() {
            if let Some(m) = self.waiting.remove(&topic) {
                return Some(m);
            }
        }
        None
    }

    fn push_front(&mut self, m: Message) {
        self.order.push_front(m.topic.clone());
        self.waiting.insert(m.topic.clone(), m);
    }
}

impl Outbound {
    pub(super) fn len(&self) -> usize {
        self.urgent.len() + self.bulk.len()
    }

    pub(super) fn push(&mut self, m: Message) {
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
            self.bulk.push(m)
        };
        if !kept && let Some(more) = self.log.allow("outbound full") {
            tracing::warn!("meeting outbound queue full: dropping the oldest message{more}");
        }
    }

    #[cfg(test)]
    pub(super) fn pop_front(&mut self) -> Option<Message> {
        self.urgent.pop_front().or_else(|| self.bulk.pop_front())
    }

    /// Hands the link as much as it takes now, each lane in order; the rest waits.
    pub(super) fn drain(&mut self, link: &Link) {
        use cuntong_terminal::link::PublishError;
        while let Some(m) = self.urgent.pop_front() {
            if let Err(e) = link.try_publish(m.clone()) {
                if e == PublishError::Full {
                    self.urgent.push_front(m);
                }
                return;
            }
        }
        while let Some(m) = self.bulk.pop_front() {
            if let Err(e) = link.try_publish(m.clone()) {
                if e == PublishError::Full {
                    self.bulk.push_front(m);
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
                out.push(Message::new(format!("plan/{k}"), vec![round]));
            }
        }
        out.push(Message::new("answer/1", vec![1]).urgent());
        out.push(Message::new("answer/1", vec![2]).urgent());
        assert_eq!(out.len(), 5, "three plans, and both answers");
        let order: Vec<(String, Vec<u8>)> = std::iter::from_fn(|| out.pop_front())
            .map(|m| (m.topic, m.payload.to_vec()))
            .collect();
        assert_eq!(
            order,
            [
                ("answer/1".to_owned(), vec![1]),
                ("answer/1".to_owned(), vec![2]),
                ("plan/0".to_owned(), vec![4]),
                ("plan/1".to_owned(), vec![4]),
                ("plan/2".to_owned(), vec![4]),
            ]
        );
    }
}
