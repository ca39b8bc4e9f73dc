//! How a link connects: the owner's options (brokers, subscriptions, queues, TLS) and the MQTT
//! options every connection to one of the brokers is made with.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{LastWill, MqttOptions};

use super::{Backoff, LinkError, MAX_BROKER_PACKET, MAX_RECEIVED_PACKET, Message, QoS};
use crate::broker_url::{BrokerUrl, Brokers};

/// How to connect.
#[derive(Clone, Debug)]
pub struct LinkOptions {
    pub client_id: String,
    /// The broker, or a cluster's nodes in order of preference: a lost or unreachable one is
    /// left for the next at once; only a whole round of failures backs off.
    pub brokers: Brokers,
    pub keep_alive: Duration,
    /// How long a connect may take, from the TCP handshake to the broker's CONNACK (and a
    /// write to a connected broker). Long enough for a TLS handshake over a slow rural link and
    /// for a broker taking a province's reconnects: a terminal that gives up on a broker still
    /// working on its connect leaves that work wasted and asks for it again.
    pub connect_timeout: Duration,
    /// Published by the broker if this client vanishes.
    pub last_will: Option<Message>,
    /// Published after every successful connect (e.g. retained presence).
    pub on_connect: Vec<Message>,
    /// Subscribed after every successful connect.
    pub subscriptions: Vec<String>,
    /// Subscribed after every successful connect at QoS 0: what is retained and whole in every
    /// copy (a meeting's state, central's watermarks), where a copy missed is replaced by the
    /// next, or answered again when asked again (a media plan, for a join repeated until it
    /// comes); a clean session offers no more at QoS 1. A province's roll call and its media
    /// plans then cost no acknowledgement from each of its 54,000 sites.
    pub live_subscriptions: Vec<String>,
    /// The QoS the subscriptions ask for: 1, or 0 for a broker where a QoS 1 subscription is
    /// costly to set up (NATS: a JetStream consumer each). Nothing depends on QoS 1 delivery
    /// from the broker: what must arrive is confirmed end to end (outbox and watermarks,
    /// retained and repeated meeting state).
    pub subscribe_qos: QoS,
    /// Publishes waiting for the broker, at most.
    pub queue_capacity: usize,
    /// Received messages waiting for the owner, at most.
    pub incoming_capacity: usize,
    /// Bytes of received messages the link holds beyond that while the owner is busy, read
    /// from the broker all the same (each message counted with its topic and an overhead).
    pub incoming_buffer: usize,
    pub backoff: Backoff,
    /// QoS 1 publishes in flight (sent, not yet acknowledged), at most.
    pub inflight: u16,
    /// Mutual TLS; required when the broker URL is `mqtts://`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Whether losing or not reaching the broker goes unsaid but for the retries at debug
    /// level: for a second link of one owner to the same brokers, whose first link says it, so
    /// that a person is told once. The owner watches it ([`super::Link::status`]).
    pub quiet_failures: bool,
}

impl LinkOptions {
    pub fn new(client_id: impl Into<String>, brokers: impl Into<Brokers>) -> LinkOptions {
        LinkOptions {
            client_id: client_id.into(),
            brokers: brokers.into(),
            keep_alive: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(15),
            last_will: None,
            on_connect: Vec::new(),
            subscriptions: Vec::new(),
            live_subscriptions: Vec::new(),
            subscribe_qos: QoS::AtLeastOnce,
            queue_capacity: 256,
            incoming_capacity: 64,
            incoming_buffer: 256 * 1024,
            backoff: Backoff::default(),
            inflight: 32,
            tls: None,
            quiet_failures: false,
        }
    }
}

/// What every connection of a link is made with, whichever broker it goes to.
#[derive(Clone)]
pub(super) struct Connect {
    pub(super) client_id: String,
    pub(super) keep_alive: Duration,
    pub(super) inflight: u16,
    pub(super) tls: Option<Arc<rustls::ClientConfig>>,
    pub(super) last_will: Option<Message>,
}

impl Connect {
    pub(super) fn options(&self, broker: &BrokerUrl) -> MqttOptions {
        let mut mqtt = MqttOptions::new(&self.client_id, &broker.host, broker.port);
        mqtt.set_keep_alive(self.keep_alive);
        mqtt.set_clean_session(true);
        mqtt.set_inflight(self.inflight.max(1));
        mqtt.set_max_packet_size(MAX_RECEIVED_PACKET, MAX_BROKER_PACKET);
        if let Some(c) = &broker.credentials {
            mqtt.set_credentials(&c.username, &c.password);
        }
        if let Some(tls) = &self.tls {
            mqtt.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls.clone()),
            ));
        }
        if let Some(w) = &self.last_will {
            mqtt.set_last_will(LastWill::new(&w.topic, w.payload.to_vec(), w.qos, w.retain));
        }
        mqtt
    }
}

/// The subscription QoS a setting or flag gives: 0 or 1.
pub fn subscribe_qos(n: u8) -> Result<QoS, LinkError> {
    match n {
        0 => Ok(QoS::AtMostOnce),
        1 => Ok(QoS::AtLeastOnce),
        n => Err(LinkError::SubscribeQos(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscription_qos_other_than_0_or_1_is_refused_in_words() {
        assert_eq!(subscribe_qos(0), Ok(QoS::AtMostOnce));
        assert_eq!(subscribe_qos(1), Ok(QoS::AtLeastOnce));
        assert_eq!(
            subscribe_qos(2).unwrap_err().to_string(),
            "2: must be 0 or 1"
        );
    }
}
