//! The messages a link carries: what the owner publishes, and what arrives on its
//! subscriptions.

use bytes::Bytes;

use super::QoS;

/// A message to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// Goes ahead of every message that is not: answers a person waits for, and what a
    /// meeting's sites must hear now, never wait behind bulk work (thousands of media plans,
    /// a fleet's confirmations).
    pub urgent: bool,
}

impl Message {
    /// A QoS 1 message, not retained.
    pub fn new(topic: impl Into<String>, payload: impl Into<Bytes>) -> Message {
        Message {
            topic: topic.into(),
            payload: payload.into(),
            qos: QoS::AtLeastOnce,
            retain: false,
            urgent: false,
        }
    }

    /// The same message, sent ahead of the link's bulk queue.
    pub fn urgent(mut self) -> Message {
        self.urgent = true;
        self
    }

    /// The same message at QoS 0: for what is repeated anyway and whole in each copy (a
    /// clean session loses unacknowledged QoS 1 messages on a reconnect all the same, and TCP
    /// delivers on a live connection), so that no acknowledgement is sent for it at each hop.
    pub fn at_most_once(mut self) -> Message {
        self.qos = QoS::AtMostOnce;
        self
    }

    /// The same message, retained.
    pub fn retained(mut self) -> Message {
        self.retain = true;
        self
    }
}

/// A message received on a subscription.
#[derive(Clone, Debug)]
pub struct Incoming {
    pub topic: String,
    pub payload: Bytes,
    pub retain: bool,
}
