//! The MQTT link: one connection to the broker, kept alive, never blocking its own event loop.
//!
//! rumqttc does the protocol; this module does what it leaves to its user:
//! - **reconnect with back-off and jitter** (rumqttc retries at once, forever), and collapse
//!   the back-off as soon as the broker's TCP port answers again;
//! - **resubscribe and re-announce** after every connect, since a clean session forgets both;
//! - **subscribe again when the broker refused**: a SUBACK with a failure code (a cluster node
//!   that cannot set the subscription up yet, e.g. NATS while its JetStream elects leaders after
//!   a node's death) is retried with back-off until the broker takes it, instead of leaving the
//!   link connected and deaf;
//! - **never wedge after a reconnect**: a publish stuck in rumqttc's packet-id collision slot
//!   is dropped when the connection fails (the outbox sends it again);
//! - **never deadlock**: rumqttc's event loop must be polled for its request channel to drain,
//!   so nothing that runs in the poll task ever waits on that channel. Publishes go through a
//!   bounded queue owned by the link and drained by a separate sender task; when the queue is
//!   full, [`Link::try_publish`] says so and the caller keeps the message for later.
//!
//! - **survive whatever the broker delivers**: rumqttc drops the connection over an incoming
//!   packet above its limit, so the limit is set far above what any broker configuration we
//!   generate lets through ([`MAX_BROKER_PACKET`] < [`MAX_RECEIVED_PACKET`]); a message above
//!   what the protocol needs ([`MAX_PAYLOAD`]) is refused here and counted, and the link stays;
//! - **tell a person why it cannot connect**, once and again only when the cause changes
//!   ("cannot reach the broker at mqtt://…: connection refused", TLS failures named as such).
//!
//! Incoming messages are handed to the owner through a bounded channel, behind a buffer of
//! [`LinkOptions::incoming_buffer`] bytes: an owner slow for a while (central under a join
//! storm) does not stop the poll task reading, so the broker's answer to a ping, queued behind
//! a burst, is read in time and the connection lives. Only a full buffer slows the poll task
//! down (back-pressure to the broker). The owner must therefore never *await*
//! [`Link::publish`] while it is the only reader of that channel: use [`Link::try_publish`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::broker_url::{BrokerUrl, Brokers};
pub use cuntong_core::envelope::MAX_PAYLOAD;
/// MQTT QoS, as [`LinkOptions::subscribe_qos`] takes it.
pub use rumqttc::QoS;

/// The largest MQTT packet a broker we configure accepts or delivers (Mosquitto's
/// `max_packet_size`, the embedded broker's limit): the largest payload of the protocol
/// plus room for the topic and the headers.
pub const MAX_BROKER_PACKET: usize = MAX_PAYLOAD + 1024;

/// The largest MQTT packet the link reads without dropping the connection: far above
/// [`MAX_BROKER_PACKET`], so that nothing a broker delivers can cut the link; messages above
/// [`MAX_PAYLOAD`] are then refused and counted. A broker must not deliver more than this.
pub const MAX_RECEIVED_PACKET: usize = 1024 * 1024;

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

pub use cuntong_core::backoff::Backoff;

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
    /// Topic prefixes whose messages go to the owner ahead of the others waiting: a person's
    /// requests are not queued behind a fleet's bulk.
    pub urgent_topics: Vec<String>,
    pub backoff: Backoff,
    /// QoS 1 publishes in flight (sent, not yet acknowledged), at most.
    pub inflight: u16,
    /// Mutual TLS; required when the broker URL is `mqtts://`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
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
            subscribe_qos: QoS::AtLeastOnce,
            queue_capacity: 256,
            incoming_capacity: 64,
            incoming_buffer: 256 * 1024,
            urgent_topics: Vec::new(),
            backoff: Backoff::default(),
            inflight: 32,
            tls: None,
        }
    }
}

/// A snapshot of the link's state (also the `link` part of the terminal's status report).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkStatus {
    pub connected: bool,
    /// Successful connects since start.
    pub connects: u64,
    /// Messages handed to the broker (sent on the socket).
    pub published: u64,
    /// Messages waiting in the queue.
    pub queued: usize,
    /// Unix ms of the last message sent on the socket.
    pub last_publish_ms: Option<u64>,
    /// Round trip of the last keep-alive ping, in ms.
    pub rtt_ms: Option<f64>,
    /// Share of the last pings that got no answer, in percent.
    pub ping_loss_percent: f64,
    pub last_error: Option<String>,
    /// Received messages refused for being larger than the protocol allows.
    #[serde(default)]
    pub refused_oversized: u64,
    /// The broker connected to (or tried next), when the link has several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<String>,
}

#[derive(Debug, Default)]
struct Shared {
    connected: AtomicBool,
    connects: AtomicU64,
    published: AtomicU64,
    last_publish_ms: AtomicU64,
    refused_oversized: AtomicU64,
    /// SUBACKs with a refused subscription since start.
    refused_subscriptions: AtomicU64,
    /// Runs of TLS failures (certificate not trusted, expired, refused) since start; a run
    /// ends when the link connects.
    tls_episodes: AtomicU64,
    detail: Mutex<Detail>,
}

#[derive(Debug, Default)]
struct Detail {
    rtt_ms: Option<f64>,
    /// Outcome of recent pings, newest last: true = answered.
    pings: std::collections::VecDeque<bool>,
    last_error: Option<String>,
    /// The last connection failure as a person reads it ([`describe`]).
    last_cause: Option<String>,
    /// The broker in use or tried next, when there are several.
    broker: Option<String>,
    last_tls_error: String,
}

const PING_WINDOW: usize = 20;

/// Why a publish was not queued.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("link queue is full")]
    Full,
    #[error("link is shut down")]
    Closed,
}

/// A running link. Cheap to clone; the link stops when [`Link::shutdown`] is called.
#[derive(Clone, Debug)]
pub struct Link {
    queue: mpsc::Sender<Message>,
    /// The urgent lane, drained before `queue`.
    urgent: mpsc::Sender<Message>,
    queue_capacity: usize,
    shared: Arc<Shared>,
    connected: watch::Receiver<u64>,
    up: watch::Receiver<bool>,
    stop: CancellationToken,
    brokers: Brokers,
}

/// What every connection of a link is made with, whichever broker it goes to.
#[derive(Clone)]
struct Connect {
    client_id: String,
    keep_alive: Duration,
    inflight: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
    last_will: Option<Message>,
}

impl Connect {
    fn options(&self, broker: &BrokerUrl) -> MqttOptions {
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

impl Link {
    /// Starts the link's tasks on the current tokio runtime. Returns the link and the
    /// receiver of incoming messages.
    pub fn start(opts: LinkOptions) -> (Link, mpsc::Receiver<Incoming>) {
        let connect = Connect {
            client_id: opts.client_id,
            keep_alive: opts.keep_alive,
            inflight: opts.inflight,
            tls: opts.tls,
            last_will: opts.last_will,
        };
        let (client, mut eventloop) = AsyncClient::new(connect.options(opts.brokers.first()), 8);
        eventloop
            .network_options
            .set_connection_timeout(opts.connect_timeout.as_secs().max(1));
        let (queue_tx, queue_rx) = mpsc::channel(opts.queue_capacity.max(1));
        let (urgent_tx, urgent_rx) = mpsc::channel(URGENT_CAPACITY);
        let (incoming_tx, incoming_rx) = mpsc::channel(opts.incoming_capacity.max(1));
        let stop = CancellationToken::new();
        let inbox = Inbox::start(
            incoming_tx,
            (opts.incoming_buffer, opts.urgent_topics.clone()),
            stop.clone(),
        );
        let (gen_tx, gen_rx) = watch::channel(0u64);
        let (up_tx, up_rx) = watch::channel(false);
        let (refused_tx, refused_rx) = watch::channel(0u64);
        let shared = Arc::new(Shared::default());
        tokio::spawn(poll_task(
            eventloop,
            (opts.brokers.clone(), connect),
            opts.backoff,
            inbox,
            Signals {
                generation: gen_tx,
                up: up_tx,
                refused: refused_tx,
                shared: shared.clone(),
                stop: stop.clone(),
            },
        ));
        tokio::spawn(sender_task(
            client,
            (urgent_rx, queue_rx),
            (gen_rx.clone(), refused_rx),
            (opts.subscriptions, opts.subscribe_qos),
            opts.on_connect,
            stop.clone(),
        ));
        let link = Link {
            queue: queue_tx,
            urgent: urgent_tx,
            queue_capacity: opts.queue_capacity.max(1),
            shared,
            connected: gen_rx,
            up: up_rx,
            stop,
            brokers: opts.brokers,
        };
        (link, incoming_rx)
    }

    /// Starts the link and waits up to `timeout` for it to connect once (for commands that
    /// have nothing to do without the broker); the error says why it did not.
    pub async fn connect(
        opts: LinkOptions,
        timeout: Duration,
    ) -> Result<(Link, mpsc::Receiver<Incoming>), String> {
        let (link, incoming) = Link::start(opts);
        if !link.wait_connected(timeout).await {
            let why = link
                .shared
                .detail
                .lock()
                .ok()
                .and_then(|d| d.last_cause.clone())
                .unwrap_or_else(|| "no answer".into());
            link.shutdown();
            return Err(format!(
                "cannot reach the broker at {}: {why}",
                link.brokers
            ));
        }
        Ok((link, incoming))
    }

    /// Queues a message, waiting while the queue is full.
    pub async fn publish(&self, msg: Message) -> Result<(), PublishError> {
        self.lane(&msg)
            .send(msg)
            .await
            .map_err(|_| PublishError::Closed)
    }

    /// Queues a message if there is room.
    pub fn try_publish(&self, msg: Message) -> Result<(), PublishError> {
        self.lane(&msg).try_send(msg).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => PublishError::Full,
            mpsc::error::TrySendError::Closed(_) => PublishError::Closed,
        })
    }

    /// Follows the connection state: `true` while connected.
    fn lane(&self, msg: &Message) -> &mpsc::Sender<Message> {
        if msg.urgent {
            &self.urgent
        } else {
            &self.queue
        }
    }

    pub fn watch_connected(&self) -> watch::Receiver<bool> {
        self.up.clone()
    }

    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Relaxed)
    }

    /// Waits until the link has connected at least once (or `timeout` passes).
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut rx = self.connected.clone();
        tokio::time::timeout(timeout, rx.wait_for(|&g| g > 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The keep-alive round trip and the ping loss (percent), as [`Link::status`] has them,
    /// without the rest.
    pub fn quality(&self) -> (Option<f64>, f64) {
        self.shared.detail.lock().map_or((None, 0.0), |d| {
            let lost = d.pings.iter().filter(|ok| !**ok).count();
            let loss = if d.pings.is_empty() {
                0.0
            } else {
                100.0 * lost as f64 / d.pings.len() as f64
            };
            (d.rtt_ms, loss)
        })
    }

    pub fn status(&self) -> LinkStatus {
        let s = &self.shared;
        let (rtt_ms, ping_loss_percent) = self.quality();
        let (last_error, broker) = s
            .detail
            .lock()
            .map(|d| (d.last_error.clone(), d.broker.clone()))
            .unwrap_or((None, None));
        let last = s.last_publish_ms.load(Ordering::Relaxed);
        LinkStatus {
            connected: s.connected.load(Ordering::Relaxed),
            connects: s.connects.load(Ordering::Relaxed),
            published: s.published.load(Ordering::Relaxed),
            queued: self.queue_capacity - self.queue.capacity(),
            last_publish_ms: (last > 0).then_some(last),
            rtt_ms,
            ping_loss_percent,
            last_error,
            refused_oversized: s.refused_oversized.load(Ordering::Relaxed),
            broker: broker
                .or_else(|| (self.brokers.len() > 1).then(|| self.brokers.first().to_string())),
        }
    }

    /// How many runs of TLS failures the link has had, and the latest failure.
    pub fn tls_failures(&self) -> (u64, String) {
        let detail = self
            .shared
            .detail
            .lock()
            .map(|d| d.last_tls_error.clone())
            .unwrap_or_default();
        (self.shared.tls_episodes.load(Ordering::Relaxed), detail)
    }

    /// Stops the link's tasks; queued messages that were not sent are discarded.
    pub fn shutdown(&self) {
        self.stop.cancel();
    }
}

/// Milliseconds since the Unix epoch, from the system clock.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the poll task tells the rest of the link.
struct Signals {
    /// Bumped on every successful connect (the sender task resubscribes).
    generation: watch::Sender<u64>,
    /// Connected or not, for the owner.
    up: watch::Sender<bool>,
    /// Bumped when the broker refuses a subscription (the sender task subscribes again).
    refused: watch::Sender<u64>,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

/// Received messages on their way from the poll task to the owner: the poll task hands each
/// over at once while the bytes waiting fit the buffer; a task of its own feeds the owner's
/// channel at the owner's pace, messages of the urgent topics first.
struct Inbox {
    queue: mpsc::UnboundedSender<(Incoming, u32)>,
    urgent: mpsc::UnboundedSender<(Incoming, u32)>,
    urgent_topics: Vec<String>,
    /// Room left in the buffer, in KiB.
    room: Arc<tokio::sync::Semaphore>,
    capacity_kib: u32,
}

impl Inbox {
    fn start(
        owner: mpsc::Sender<Incoming>,
        (bytes, urgent_topics): (usize, Vec<String>),
        stop: CancellationToken,
    ) -> Inbox {
        let capacity_kib = u32::try_from(bytes / 1024).unwrap_or(u32::MAX).max(1);
        let room = Arc::new(tokio::sync::Semaphore::new(capacity_kib as usize));
        let (queue, mut waiting) = mpsc::unbounded_channel::<(Incoming, u32)>();
        let (urgent, mut urgent_waiting) = mpsc::unbounded_channel::<(Incoming, u32)>();
        let freed = room.clone();
        tokio::spawn(async move {
            loop {
                let (msg, cost) = tokio::select! {
                    biased;
                    _ = stop.cancelled() => break,
                    Some(m) = urgent_waiting.recv() => m,
                    m = waiting.recv() => match m {
                        Some(m) => m,
                        None => break,
                    },
                };
                tokio::select! {
                    _ = stop.cancelled() => break,
                    r = owner.send(msg) => if r.is_err() { break },
                }
                freed.add_permits(cost as usize);
            }
        });
        Inbox {
            queue,
            urgent,
            urgent_topics,
            room,
            capacity_kib,
        }
    }

    /// Hands `msg` on; waits only while the buffer is full.
    async fn put(&self, msg: Incoming) {
        let bytes = msg.payload.len() + msg.topic.len() + 64;
        let cost = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .min(self.capacity_kib);
        if let Ok(permit) = self.room.acquire_many(cost).await {
            permit.forget();
            let urgent = self.urgent_topics.iter().any(|p| msg.topic.starts_with(p));
            let lane = if urgent { &self.urgent } else { &self.queue };
            if lane.send((msg, cost)).is_err() {
                tracing::debug!("incoming receiver gone");
            }
        }
    }
}

async fn poll_task(
    mut eventloop: EventLoop,
    (brokers, connect): (Brokers, Connect),
    backoff: Backoff,
    incoming: Inbox,
    signals: Signals,
) {
    let Signals {
        generation,
        up,
        refused,
        shared,
        stop,
    } = signals;
    let mut rng = rand::rngs::SmallRng::from_entropy();
    let mut failures: u32 = 0;
    let mut ping_sent: Option<Instant> = None;
    let mut generation_no = 0u64;
    let mut in_tls_episode = false;
    // The broker connected to, or tried next (an index round `brokers`).
    let mut current = 0usize;
    loop {
        let broker = brokers.get(current).clone();
        let event = tokio::select! {
            _ = stop.cancelled() => break,
            e = eventloop.poll() => e,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                let after_failure = shared
                    .detail
                    .lock()
                    .ok()
                    .and_then(|mut d| d.last_cause.take());
                failures = 0;
                in_tls_episode = false;
                ping_sent = None;
                shared.connected.store(true, Ordering::Relaxed);
                shared.connects.fetch_add(1, Ordering::Relaxed);
                generation_no += 1;
                generation.send_replace(generation_no);
                up.send_replace(true);
                if after_failure.is_some() {
                    // Said at the level the failure was.
                    tracing::warn!(
                        connects = generation_no,
                        "connected to the broker at {broker}"
                    );
                } else {
                    tracing::info!(connects = generation_no, "link connected");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack)))
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) =>
            {
                let n = shared.refused_subscriptions.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(
                        refused = n,
                        "the broker at {broker} refused a subscription; subscribing again"
                    );
                }
                refused.send_modify(|r| *r += 1);
            }
            Ok(Event::Incoming(Packet::Publish(p))) if p.payload.len() > MAX_PAYLOAD => {
                // Nothing in the protocol is this big: refuse it, keep the link.
                let n = shared.refused_oversized.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(
                        topic = %p.topic,
                        bytes = p.payload.len(),
                        refused = n,
                        "refused a message larger than the protocol allows ({MAX_PAYLOAD} bytes)"
                    );
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let msg = Incoming {
                    topic: p.topic,
                    payload: p.payload,
                    retain: p.retain,
                };
                tokio::select! {
                    _ = stop.cancelled() => break,
                    () = incoming.put(msg) => {}
                }
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Publish(_))) => {
                shared.published.fetch_add(1, Ordering::Relaxed);
                shared.last_publish_ms.store(unix_ms(), Ordering::Relaxed);
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::PingReq)) => {
                if ping_sent.is_some() {
                    record_ping(&shared, false, None);
                }
                ping_sent = Some(Instant::now());
            }
            Ok(Event::Incoming(Packet::PingResp)) => {
                if let Some(t) = ping_sent.take() {
                    record_ping(&shared, true, Some(t.elapsed().as_secs_f64() * 1000.0));
                }
            }
            Ok(_) => {}
            Err(e) => {
                // rumqttc keeps a publish that collided on its packet id across a reconnect,
                // although the new clean session will never acknowledge it: the event loop
                // then stops taking requests and times out on every connection. Forget it;
                // anything unconfirmed is sent again by the owner (the outbox).
                eventloop.state.collision = None;
                let was_connected = shared.connected.swap(false, Ordering::Relaxed);
                up.send_replace(false);
                if ping_sent.take().is_some() {
                    record_ping(&shared, false, None);
                }
                let tls = tls_failure(&e);
                let cause = describe(&e, tls.as_deref());
                let cause_changed = if let Ok(mut d) = shared.detail.lock() {
                    d.last_error = Some(e.to_string());
                    if let Some(t) = &tls {
                        d.last_tls_error.clone_from(t);
                    }
                    let changed = was_connected || d.last_cause.as_deref() != Some(&cause);
                    d.last_cause = Some(cause.clone());
                    changed
                } else {
                    false
                };
                if tls.is_some() && !in_tls_episode {
                    in_tls_episode = true;
                    shared.tls_episodes.fetch_add(1, Ordering::Relaxed);
                }
                // A whole round of a cluster's failures backs off as one broker's failures do.
                let round = failures / brokers.len().max(1) as u32;
                let wait = backoff.delay(round, rng.r#gen());
                failures = failures.saturating_add(1);
                if brokers.len() > 1 {
                    current = (current + 1) % brokers.len();
                    eventloop.mqtt_options = connect.options(brokers.get(current));
                    if let Ok(mut d) = shared.detail.lock() {
                        d.broker = Some(brokers.get(current).to_string());
                    }
                }
                // A person sees each cause once (and again when it changes), not every retry.
                if was_connected {
                    tracing::warn!("lost the broker at {broker}: {cause}; reconnecting");
                } else if cause_changed {
                    tracing::warn!("cannot reach the broker at {broker}: {cause}; retrying");
                } else {
                    tracing::debug!(error = %e, "connect failed; retrying in {wait:?}");
                }
                // When nothing answered at all (no broker listening, no route), watch for the
                // uplink to answer again and cut the wait short then. A broker that answered and
                // then timed out, dropped us or refused us is there but busy (a province
                // reconnecting at once) or unwilling: retrying the moment its port accepts would
                // keep it so, so those wait out their jittered back-off.
                let unreachable = matches!(
                    &e,
                    rumqttc::ConnectionError::Io(io) if io.kind() != std::io::ErrorKind::TimedOut
                );
                // Within a round of a cluster's nodes, the next is tried at once.
                if brokers.len() > 1 && !failures.is_multiple_of(brokers.len() as u32) {
                    continue;
                }
                let waiting = Instant::now();
                let back = tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(wait) => false,
                    _ = uplink_back(brokers.get(current)), if unreachable => true,
                };
                if back {
                    // A restarted broker's port answers every terminal of a province in the
                    // same second: each waits a random part of what is left of its back-off
                    // (at most HERD_SPREAD), so they come back spread out, not as one storm.
                    let left = wait.saturating_sub(waiting.elapsed()).min(HERD_SPREAD);
                    let spread = rng.gen_range(Duration::ZERO..=left);
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(spread) => {}
                    }
                }
            }
        }
    }
    shared.connected.store(false, Ordering::Relaxed);
    up.send_replace(false);
}

/// The longest a terminal waits, once its broker answers again, before connecting: spreads a
/// fleet's reconnects after a broker restart.
const HERD_SPREAD: Duration = Duration::from_secs(10);

/// Returns once the broker answers like a broker again (checked every second): its TCP port
/// accepts a connection and keeps it open, waiting for a CONNECT. A dead uplink behind a
/// router that accepts and drops connections does not pass. The terminal's own cheap check
/// that the uplink is back.
async fn uplink_back(broker: &BrokerUrl) {
    use tokio::io::AsyncReadExt;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let probe = tokio::net::TcpStream::connect((broker.host.as_str(), broker.port));
        let Ok(Ok(mut stream)) = tokio::time::timeout(Duration::from_secs(2), probe).await else {
            continue;
        };
        let mut byte = [0u8; 1];
        // A broker says nothing before CONNECT: silence means it is there and listening.
        if tokio::time::timeout(Duration::from_millis(300), stream.read(&mut byte))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// The TLS failure behind a connection error, if it is one: rumqttc's own TLS errors, or a
/// rustls error inside an I/O error (how a failed handshake surfaces).
fn tls_failure(e: &rumqttc::ConnectionError) -> Option<String> {
    fn rustls_in(e: &std::io::Error) -> Option<String> {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .map(|r| r.to_string())
    }
    match e {
        // A connection reset during the handshake is the link, not TLS.
        rumqttc::ConnectionError::Tls(rumqttc::TlsError::Io(io))
        | rumqttc::ConnectionError::Io(io) => rustls_in(io),
        rumqttc::ConnectionError::Tls(t) => Some(t.to_string()),
        _ => None,
    }
}

/// A connection failure as a person reads it: "connection refused", "TLS failure: …", "the
/// broker refused the connection (…)".
fn describe(e: &rumqttc::ConnectionError, tls: Option<&str>) -> String {
    use rumqttc::ConnectionError as E;
    use std::io::ErrorKind as K;
    if let Some(t) = tls {
        return format!("TLS failure: {t}");
    }
    let io = |io: &std::io::Error| match io.kind() {
        K::ConnectionRefused => "connection refused".to_owned(),
        K::ConnectionReset => "connection reset by the broker".to_owned(),
        K::ConnectionAborted => "connection aborted".to_owned(),
        K::TimedOut => "timed out".to_owned(),
        K::UnexpectedEof => "the broker closed the connection".to_owned(),
        _ => io.to_string(),
    };
    match e {
        E::Io(e) | E::Tls(rumqttc::TlsError::Io(e)) => io(e),
        E::ConnectionRefused(code) => format!("the broker refused the connection ({code:?})"),
        E::NetworkTimeout => "no answer (timed out)".to_owned(),
        other => other.to_string(),
    }
}

fn record_ping(shared: &Shared, answered: bool, rtt_ms: Option<f64>) {
    if let Ok(mut d) = shared.detail.lock() {
        if d.pings.len() == PING_WINDOW {
            d.pings.pop_front();
        }
        d.pings.push_back(answered);
        if rtt_ms.is_some() {
            d.rtt_ms = rtt_ms;
        }
    }
}

/// The subscription QoS a setting or flag gives: 0 or 1.
pub fn subscribe_qos(n: u8) -> Result<QoS, String> {
    match n {
        0 => Ok(QoS::AtMostOnce),
        1 => Ok(QoS::AtLeastOnce),
        n => Err(format!("{n}: must be 0 or 1")),
    }
}

/// Subscribes to every filter in one SUBSCRIBE (so a SUBACK's codes follow `filters`).
async fn subscribe_all(client: &AsyncClient, (filters, qos): &(Vec<String>, QoS)) -> bool {
    if filters.is_empty() {
        return true;
    }
    let filters = filters
        .iter()
        .map(|t| rumqttc::SubscribeFilter::new(t.clone(), *qos));
    client.subscribe_many(filters).await.is_ok()
}

/// The first wait before subscribing again after a refusal; it doubles up to
/// [`RESUBSCRIBE_MAX`] while the broker keeps refusing, and starts over on a new connection.
const RESUBSCRIBE_MIN: Duration = Duration::from_millis(500);
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(30);

/// Urgent messages waiting, at most: a few people's answers and meetings' states.
const URGENT_CAPACITY: usize = 256;

async fn sender_task(
    client: AsyncClient,
    (mut urgent, mut queue): (mpsc::Receiver<Message>, mpsc::Receiver<Message>),
    (mut generation, mut refused): (watch::Receiver<u64>, watch::Receiver<u64>),
    subscriptions: (Vec<String>, QoS),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_failures_are_described_as_a_person_reads_them() {
        use rumqttc::ConnectionError as E;
        let io = |kind| E::Io(std::io::Error::from(kind));
        assert_eq!(
            describe(&io(std::io::ErrorKind::ConnectionRefused), None),
            "connection refused"
        );
        assert_eq!(
            describe(&io(std::io::ErrorKind::ConnectionReset), None),
            "connection reset by the broker"
        );
        let refused = E::ConnectionRefused(rumqttc::ConnectReturnCode::NotAuthorized);
        assert_eq!(
            describe(&refused, None),
            "the broker refused the connection (NotAuthorized)"
        );
        let tls = rumqttc::TlsError::Io(std::io::Error::other(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        )));
        let tls = E::Tls(tls);
        let failure = tls_failure(&tls);
        assert!(failure.is_some(), "a handshake failure is a TLS failure");
        assert!(
            describe(&tls, failure.as_deref()).starts_with("TLS failure: invalid peer certificate"),
            "{}",
            describe(&tls, failure.as_deref())
        );
    }

    /// A stand-in broker on a loopback port: accepts connections, answers each CONNECT with a
    /// CONNACK and keeps the connection until `drop_all` fires, then closes them and stops
    /// listening (as a killed node does).
    async fn fake_broker(drop_all: CancellationToken) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = tokio::select! {
                    _ = drop_all.cancelled() => return,
                    a = listener.accept() => a.unwrap(),
                };
                let drop_all = drop_all.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 512];
                    if socket.read(&mut buf).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let _ = socket.write_all(&[0x20, 0x02, 0x00, 0x00]).await;
                    tokio::select! {
                        _ = drop_all.cancelled() => {}
                        _ = async { while socket.read(&mut buf).await.unwrap_or(0) > 0 {} } => {}
                    }
                });
            }
        });
        port
    }

    /// A port on which nothing listens: connections to it are refused.
    fn closed_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    fn cluster_link(ports: &[u16]) -> Link {
        let list = ports
            .iter()
            .map(|p| format!("mqtt://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut opts = LinkOptions::new("failover-test", list.parse::<Brokers>().unwrap());
        opts.keep_alive = Duration::from_secs(60);
        // A back-off far above the bounds below: only moving on at once passes.
        opts.backoff = Backoff {
            min: Duration::from_secs(60),
            max: Duration::from_secs(60),
        };
        Link::start(opts).0
    }

    async fn connected_to(link: &Link, port: u16, within: Duration) -> bool {
        let want = format!("mqtt://127.0.0.1:{port}");
        tokio::time::timeout(within, async {
            while !(link.is_connected() && link.status().broker.as_deref() == Some(&want)) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .is_ok()
    }

    #[tokio::test]
    async fn a_broker_that_accepts_and_never_answers_is_retried_after_the_back_off_not_probed() {
        use tokio::io::AsyncReadExt;
        // A busy broker: it accepts connections and answers none of them.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (connects, silent) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (c, q) = (connects.clone(), silent.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (c, q) = (c.clone(), q.clone());
                tokio::spawn(async move {
                    let mut buf = [0u8; 512];
                    let first = tokio::time::timeout(Duration::from_secs(2), socket.read(&mut buf));
                    match first.await {
                        Ok(Ok(n)) if n > 0 => {
                            c.fetch_add(1, Ordering::Relaxed);
                            while socket.read(&mut buf).await.unwrap_or(0) > 0 {}
                        }
                        _ => {
                            q.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        let mut opts = LinkOptions::new(
            "busy-test",
            format!("mqtt://127.0.0.1:{port}")
                .parse::<Brokers>()
                .unwrap(),
        );
        opts.backoff = Backoff {
            min: Duration::from_secs(20),
            max: Duration::from_secs(20),
        };
        opts.connect_timeout = Duration::from_secs(5);
        let link = Link::start(opts).0;
        // The connect times out after 5 s; a probe would find the port open within a second
        // and connect again at once. The back-off waits at least 10 s.
        tokio::time::sleep(Duration::from_secs(12)).await;
        assert_eq!(connects.load(Ordering::Relaxed), 1, "{:?}", link.status());
        assert_eq!(silent.load(Ordering::Relaxed), 0, "probe connections");
        link.shutdown();
    }

    #[tokio::test]
    async fn an_unreachable_first_broker_is_left_for_the_next_without_backing_off() {
        let up = fake_broker(CancellationToken::new()).await;
        let link = cluster_link(&[closed_port(), up]);
        assert!(
            connected_to(&link, up, Duration::from_secs(5)).await,
            "{:?}",
            link.status()
        );
        assert_eq!(link.status().connects, 1);
        link.shutdown();
    }

    #[tokio::test]
    async fn a_lost_broker_is_left_for_the_next_at_once() {
        let kill_a = CancellationToken::new();
        let a = fake_broker(kill_a.clone()).await;
        let b = fake_broker(CancellationToken::new()).await;
        let link = cluster_link(&[a, b]);
        assert!(connected_to(&link, a, Duration::from_secs(5)).await);
        // The node dies: its connections close and its port refuses.
        kill_a.cancel();
        assert!(
            connected_to(&link, b, Duration::from_secs(5)).await,
            "{:?}",
            link.status()
        );
        assert_eq!(link.status().connects, 2);
        link.shutdown();
    }

    /// A stand-in broker that speaks just enough MQTT for a link: CONNACK, PINGRESP, and a
    /// SUBACK refusing every filter of the first `refusals` SUBSCRIBEs, granting the rest.
    /// Counts the SUBSCRIBEs it got.
    async fn refusing_broker(refusals: usize) -> (u16, Arc<AtomicU64>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let subscribes = Arc::new(AtomicU64::new(0));
        let seen = subscribes.clone();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            loop {
                let mut header = [0u8; 1];
                if socket.read_exact(&mut header).await.is_err() {
                    return;
                }
                let (mut len, mut shift) = (0usize, 0);
                loop {
                    let mut b = [0u8; 1];
                    if socket.read_exact(&mut b).await.is_err() {
                        return;
                    }
                    len |= usize::from(b[0] & 0x7f) << shift;
                    shift += 7;
                    if b[0] & 0x80 == 0 {
                        break;
                    }
                }
                let mut body = vec![0u8; len];
                if socket.read_exact(&mut body).await.is_err() {
                    return;
                }
                let reply = match header[0] >> 4 {
                    1 => vec![0x20, 0x02, 0x00, 0x00],
                    12 => vec![0xd0, 0x00],
                    8 => {
                        // Packet id, then (length-prefixed filter, QoS) pairs.
                        let n = seen.fetch_add(1, Ordering::SeqCst) as usize;
                        let (mut i, mut filters) = (2, 0u8);
                        while i + 2 <= body.len() {
                            i += 2 + usize::from(u16::from_be_bytes([body[i], body[i + 1]])) + 1;
                            filters += 1;
                        }
                        let code = if n < refusals { 0x80 } else { 0x01 };
                        let mut r = vec![0x90, 2 + filters, body[0], body[1]];
                        r.extend(std::iter::repeat_n(code, usize::from(filters)));
                        r
                    }
                    _ => Vec::new(),
                };
                if socket.write_all(&reply).await.is_err() {
                    return;
                }
            }
        });
        (port, subscribes)
    }

    #[tokio::test]
    async fn a_subscription_the_broker_refused_is_made_again_on_the_same_connection() {
        let (port, subscribes) = refusing_broker(2).await;
        let mut opts = LinkOptions::new(
            "resubscribe-test",
            format!("mqtt://127.0.0.1:{port}")
                .parse::<BrokerUrl>()
                .unwrap(),
        );
        opts.subscriptions = vec!["ct/v1/a/#".into(), "ct/v1/b".into()];
        let (link, _incoming) = Link::start(opts);
        let granted = tokio::time::timeout(Duration::from_secs(5), async {
            while subscribes.load(Ordering::SeqCst) < 3 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(
            granted.is_ok(),
            "subscribed {} times: {:?}",
            subscribes.load(Ordering::SeqCst),
            link.status()
        );
        let status = link.status();
        assert!(status.connected && status.connects == 1, "{status:?}");
        link.shutdown();
    }
}
