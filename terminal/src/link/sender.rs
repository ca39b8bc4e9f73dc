//! The sender task: publishes the owner's messages, urgent ones first, and subscribes again
//! after every connect and after the broker refused a subscription.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::AsyncClient;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{Message, QoS};

/// Subscribes to every filter in one SUBSCRIBE (so a SUBACK's codes follow `filters`).
/// What a link subscribes to on every connection: `filters` at `qos`, `live` at QoS 0.
pub(super) struct Subscriptions {
    pub(super) filters: Vec<String>,
    pub(super) live: Vec<String>,
    pub(super) qos: QoS,
}

impl Subscriptions {
    /// Every filter with the QoS it is subscribed at.
    pub(super) fn all(&self) -> Vec<rumqttc::SubscribeFilter> {
        let at = |qos: QoS| move |t: &String| rumqttc::SubscribeFilter::new(t.clone(), qos);
        self.filters
            .iter()
            .map(at(self.qos))
            .chain(self.live.iter().map(at(QoS::AtMostOnce)))
            .collect()
    }
}

async fn subscribe_all(client: &AsyncClient, s: &Subscriptions) -> bool {
    let filters = s.all();
    if filters.is_empty() {
        return true;
    }
    client.subscribe_many(filters).await.is_ok()
}

/// The first wait before subscribing again after a refusal; it doubles up to
/// [`RESUBSCRIBE_MAX`] while the broker keeps refusing, and starts over on a new connection.
const RESUBSCRIBE_MIN: Duration = Duration::from_millis(500);
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(30);

/// Urgent messages waiting, at most: a few people's answers and meetings' states.
pub(super) const URGENT_CAPACITY: usize = 256;

pub(super) async fn sender_task(
    client: AsyncClient,
    (mut urgent, mut queue): (mpsc::Receiver<Message>, mpsc::Receiver<Message>),
    (mut generation, mut refused): (watch::Receiver<u64>, watch::Receiver<u64>),
    subscriptions: Subscriptions,
    on_connect: Vec<Message>,
    stop: CancellationToken,
) {
    let subscriptions = Arc::new(subscriptions);
    let mut retry_wait = RESUBSCRIBE_MIN;
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            changed = generation.changed() => {
                if changed.is_err() {
                    break;
                }
                retry_wait = RESUBSCRIBE_MIN;
                // A new connection: the clean session has forgotten our subscriptions.
                if !subscribe_all(&client, &subscriptions).await {
                    break;
                }
                for m in &on_connect {
                    if client.publish(&m.topic, m.qos, m.retain, m.payload.clone()).await.is_err() {
                        break;
                    }
                }
            }
            changed = refused.changed() => {
                if changed.is_err() {
                    break;
                }
                // Subscribe again after a wait, on this connection only (a new one
                // subscribes anyway); publishing goes on meanwhile.
                let (client, filters, stop) = (client.clone(), subscriptions.clone(), stop.clone());
                let (mut connection, wait) = (generation.clone(), retry_wait);
                let this = *connection.borrow_and_update();
                retry_wait = (retry_wait * 2).min(RESUBSCRIBE_MAX);
                tokio::spawn(async move {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = async {
                            while connection.changed().await.is_ok() {
                                if *connection.borrow() != this {
                                    break;
                                }
                            }
                        } => {}
                        _ = tokio::time::sleep(wait) => {
                            subscribe_all(&client, &filters).await;
                        }
                    }
                });
            }
            // Urgent first: biased, this arm is tried before the bulk queue's.
            msg = urgent.recv() => {
                let Some(m) = msg else { break };
                if client.publish(m.topic, m.qos, m.retain, m.payload).await.is_err() {
                    break;
                }
            }
            msg = queue.recv() => {
                let Some(m) = msg else { break };
                if client.publish(m.topic, m.qos, m.retain, m.payload).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = client.try_disconnect();
}
