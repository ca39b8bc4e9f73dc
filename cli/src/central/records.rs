//! What central makes of a received message: the record to store (or the reason it is
//! refused), the junk a terminal may have left retained on its uplink, and the subscriptions
//! it ingests from.

use cuntong_core::envelope::{decode_event, decode_telemetry};
use cuntong_core::presence::Presence;
use cuntong_core::topic::{Channel, Topic, region_filter};
use cuntong_terminal::link::{Incoming, Link, Message};
use cuntong_terminal::throttle::LogLimiter;

use crate::store::Record;

/// Turns a received message into a record to store; `None` for messages that carry nothing
/// (a cleared retained presence).
pub fn to_record(msg: Incoming, received_ms: u64) -> Option<Record> {
    let rejected = |reason: String, msg: Incoming| Record::Rejected {
        topic: msg.topic,
        received_ms,
        reason,
        payload: msg.payload,
    };
    let (terminal, channel) = match Topic::parse(&msg.topic) {
        Ok(Topic::Terminal { id, channel }) => (id, channel),
        Ok(other) => return Some(rejected(format!("unexpected topic {other}"), msg)),
        Err(e) => return Some(rejected(format!("topic {}", e), msg)),
    };
    let context = |e: &dyn std::fmt::Display| format!("{terminal} {}: {e}", channel.as_str());
    match channel {
        Channel::Telemetry => match decode_telemetry(&msg.payload) {
            Ok(envelope) => Some(Record::Telemetry {
                terminal,
                received_ms,
                envelope,
                raw: msg.payload,
            }),
            Err(e) => Some(rejected(context(&e), msg)),
        },
        Channel::Events => match decode_event(&msg.payload) {
            Ok(envelope) => Some(Record::Event {
                terminal,
                received_ms,
                envelope,
                raw: msg.payload,
            }),
            Err(e) => Some(rejected(context(&e), msg)),
        },
        Channel::Presence if msg.payload.is_empty() => None,
        Channel::Presence => match Presence::decode(&msg.payload) {
            Ok(presence) => Some(Record::Presence {
                terminal,
                received_ms,
                presence,
            }),
            Err(e) => Some(rejected(context(&e), msg)),
        },
        other => Some(rejected(
            format!("central does not read {}", other.as_str()),
            msg,
        )),
    }
}

/// The topic to clear, if a message on it may leave junk retained that every later
/// subscriber would receive. On a terminal's uplink the protocol retains nothing but a valid
/// presence, so central clears (publishes an empty retained message on; the generated ACL
/// lets it) the uplink of every message it refuses, retained or not (a live message does not
/// say whether it was retained), and of every retained message on an uplink but presence.
/// `retained`: the message came from the broker's store. Empty messages are never junk.
pub fn retained_junk(topic: &str, retained: bool, refused: bool) -> Option<String> {
    let Ok(Topic::Terminal { channel, .. }) = Topic::parse(topic) else {
        return None;
    };
    let junk = channel.is_uplink() && (refused || (retained && channel != Channel::Presence));
    junk.then(|| topic.to_owned())
}

pub(super) fn clear_retained_junk(
    link: &Link,
    log: &LogLimiter,
    topic: &str,
    retained: bool,
    refused: bool,
) {
    if let Some(junk) = retained_junk(topic, retained, refused) {
        if let Some(more) = log.allow("clearing junk") {
            tracing::warn!(topic = %junk, "clearing what a terminal may have left retained on its uplink{more}");
        }
        if link
            .try_publish(Message::new(junk, Vec::new()).retained())
            .is_err()
            && let Some(more) = log.allow("link full")
        {
            tracing::warn!(%topic, "the link is full: a retained message may stay until the next connect{more}");
        }
    }
}

/// What central subscribes to for ingest: every terminal's presence, telemetry and events. In a
/// shared-ingest `group` the telemetry and events are shared subscriptions (`$share/GROUP/…`):
/// the broker gives each message to one instance of the group. Presence stays whole, for
/// every instance: it is retained (a shared subscription gets no retained messages) and each
/// instance's view of who is online comes from it.
pub fn ingest_subscriptions(group: Option<&str>) -> Vec<String> {
    [Channel::Presence, Channel::Telemetry, Channel::Events]
        .into_iter()
        .map(|c| {
            let filter = region_filter(None, Some(c));
            match group {
                Some(g) if c != Channel::Presence => format!("$share/{g}/{filter}"),
                _ => filter,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use cuntong_core::envelope::encode;

    use cuntong_core::envelope::{Envelope, Event};
    use cuntong_core::telemetry::{Metric, Sample, TelemetryBatch};

    const TERMINAL: &str = "130102001001-main";
    const TM: &str = "ct/v1/t/13/01/02/001/001/main/tm";
    const EV: &str = "ct/v1/t/13/01/02/001/001/main/ev";
    const PRESENCE: &str = "ct/v1/t/13/01/02/001/001/main/presence";

    fn incoming(topic: &str, payload: Vec<u8>) -> Incoming {
        Incoming {
            topic: topic.to_owned(),
            payload: Bytes::from(payload),
            retain: false,
        }
    }

    fn batch() -> Envelope<TelemetryBatch> {
        Envelope {
            seq: 7,
            time_ms: 1_763_798_400_000,
            body: TelemetryBatch {
                samples: vec![Sample {
                    offset_ms: 0,
                    metric: Metric::AirTemp,
                    value: "23.45".parse().unwrap(),
                    quality: None,
                }],
            },
        }
    }

    /// The reason, topic and payload of a rejected record; panics on anything else.
    fn rejection(record: Option<Record>) -> (String, String, Bytes) {
        match record {
            Some(Record::Rejected {
                topic,
                received_ms,
                reason,
                payload,
            }) => {
                assert_eq!(received_ms, 99);
                (reason, topic, payload)
            }
            other => panic!("expected a rejected record, got {other:?}"),
        }
    }

    #[test]
    fn a_telemetry_payload_on_a_terminal_topic_becomes_a_telemetry_record() {
        let payload = encode(&batch()).unwrap();
        let record = to_record(incoming(TM, payload.clone()), 42);
        let Some(Record::Telemetry {
            terminal,
            received_ms,
            envelope,
            raw,
        }) = record
        else {
            panic!("expected a telemetry record, got {record:?}");
        };
        assert_eq!(terminal.to_string(), TERMINAL);
        assert_eq!(received_ms, 42);
        assert_eq!(envelope, batch());
        assert_eq!(raw.as_ref(), payload.as_slice());
    }

    #[test]
    fn an_event_payload_on_an_events_topic_becomes_an_event_record() {
        let env = Envelope {
            seq: 1,
            time_ms: 5,
            body: Event::Started {
                version: "0.1.0".into(),
            },
        };
        let record = to_record(incoming(EV, encode(&env).unwrap()), 42);
        let Some(Record::Event {
            terminal, envelope, ..
        }) = record
        else {
            panic!("expected an event record, got {record:?}");
        };
        assert_eq!(terminal.to_string(), TERMINAL);
        assert_eq!(envelope, env);
    }

    #[test]
    fn garbage_on_a_telemetry_topic_is_rejected_naming_the_terminal_and_the_channel() {
        let garbage = b"\x01not a telemetry envelope".to_vec();
        let error = decode_telemetry(&garbage).unwrap_err();
        let (reason, topic, payload) = rejection(to_record(incoming(TM, garbage.clone()), 99));
        assert_eq!(reason, format!("{TERMINAL} tm: {error}"));
        assert_eq!(topic, TM);
        assert_eq!(payload.as_ref(), garbage.as_slice());

        let (reason, _, _) = rejection(to_record(incoming(TM, Vec::new()), 99));
        assert_eq!(reason, format!("{TERMINAL} tm: empty payload"));
    }

    #[test]
    fn garbage_on_a_presence_topic_is_rejected_naming_the_channel() {
        let (reason, topic, _) = rejection(to_record(incoming(PRESENCE, vec![9, 9, 9]), 99));
        assert!(
            reason.starts_with(&format!("{TERMINAL} presence: ")),
            "{reason}"
        );
        assert_eq!(topic, PRESENCE);
    }

    #[test]
    fn a_presence_payload_becomes_a_presence_record() {
        let p = Presence {
            online: true,
            version: "0.1.0".into(),
            started_ms: 1,
            keep_alive_s: 30,
        };
        let record = to_record(incoming(PRESENCE, encode(&p).unwrap()), 42);
        let Some(Record::Presence {
            terminal, presence, ..
        }) = record
        else {
            panic!("expected a presence record, got {record:?}");
        };
        assert_eq!(terminal.to_string(), TERMINAL);
        assert_eq!(presence, p);
    }

    #[test]
    fn an_empty_retained_presence_gives_nothing() {
        let mut msg = incoming(PRESENCE, Vec::new());
        msg.retain = true;
        assert!(to_record(msg, 42).is_none());
    }

    #[test]
    fn a_broadcast_topic_is_rejected_with_a_reason() {
        let (reason, topic, _) = rejection(to_record(incoming("ct/v1/b/13/01/02", vec![1]), 99));
        assert_eq!(reason, "unexpected topic ct/v1/b/13/01/02");
        assert_eq!(topic, "ct/v1/b/13/01/02");
    }

    #[test]
    fn an_unparsable_topic_is_rejected_with_a_reason() {
        let (reason, topic, payload) =
            rejection(to_record(incoming("ct/v2/t/whatever", vec![1, 2]), 99));
        assert_eq!(reason, "topic does not start with ct/v1/");
        assert_eq!(topic, "ct/v2/t/whatever");
        assert_eq!(payload.as_ref(), [1, 2]);

        let (reason, _, _) = rejection(to_record(
            incoming("ct/v1/t/13/01/02/001/001/main/zz", vec![1]),
            99,
        ));
        assert_eq!(reason, "topic unknown channel");
    }

    #[test]
    fn retained_junk_on_a_terminals_uplink_is_cleared_and_nothing_else() {
        // A refused presence, retained or live, and anything retained on the other uplinks.
        assert_eq!(
            retained_junk(PRESENCE, true, true).as_deref(),
            Some(PRESENCE)
        );
        assert_eq!(
            retained_junk(PRESENCE, false, true).as_deref(),
            Some(PRESENCE)
        );
        assert_eq!(retained_junk(TM, true, false).as_deref(), Some(TM));
        assert_eq!(retained_junk(EV, false, true).as_deref(), Some(EV));
        // A valid presence is the protocol; valid live messages leave nothing.
        assert_eq!(retained_junk(PRESENCE, true, false), None);
        assert_eq!(retained_junk(TM, false, false), None);
        // Downlinks and other trees are central's own.
        assert_eq!(
            retained_junk("ct/v1/t/13/01/02/001/001/main/ack", true, true),
            None
        );
        assert_eq!(retained_junk("ct/v1/b/13/01/02", true, true), None);
        assert_eq!(retained_junk("elsewhere", true, true), None);
    }

    #[test]
    fn a_channel_central_does_not_read_is_rejected() {
        let (reason, _, _) = rejection(to_record(
            incoming("ct/v1/t/13/01/02/001/001/main/ack", vec![1]),
            99,
        ));
        assert_eq!(reason, "central does not read ack");
    }
}
