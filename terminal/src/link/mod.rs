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
use std::time::Duration;

use rumqttc::AsyncClient;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::broker_url::Brokers;
pub use cuntong_core::envelope::MAX_PAYLOAD;
/// MQTT QoS, as [`LinkOptions::subscribe_qos`] takes it.
pub use rumqttc::QoS;

mod failure;
mod inbox;
mod message;
mod options;
mod poll;
mod sender;

pub use message::{Incoming, Message};
pub use options::{LinkOptions, subscribe_qos};

use inbox::Inbox;
use options::Connect;
use poll::{Signals, poll_task};
use sender::{Subscriptions, URGENT_CAPACITY, sender_task};

/// The largest MQTT packet a broker we configure accepts or delivers (Mosquitto's
/// `max_packet_size`, the embedded broker's limit): the largest payload of the protocol
/// plus room for the topic and the headers.
pub const MAX_BROKER_PACKET: usize = MAX_PAYLOAD + 1024;

/// The largest MQTT packet the link reads without dropping the connection: far above
/// [`MAX_BROKER_PACKET`], so that nothing a broker delivers can cut the link; messages above
/// [`MAX_PAYLOAD`] are then refused and counted. A broker must not deliver more than this.
pub const MAX_RECEIVED_PACKET: usize = 1024 * 1024;

pub use cuntong_core::backoff::Backoff;

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
    /// The keep-alive round trip, in ms: the fastest of the last answers
    /// ([`cuntong_core::keepalive`]).
    pub rtt_ms: Option<f64>,
    /// Share of the last keep-alive pings that got no answer, in percent.
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
    /// What the keep-alive pings said of the link.
    keepalives: cuntong_core::keepalive::KeepAlives,
    last_error: Option<String>,
    /// The last connection failure as a person reads it ([`describe`](failure::describe)).
    last_cause: Option<String>,
    /// The broker in use or tried next, when there are several.
    broker: Option<String>,
    last_tls_error: String,
}

/// Why a publish was not queued.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("link queue is full")]
    Full,
    #[error("link is shut down")]
    Closed,
}

/// Why a link could not be set up.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The link did not connect within the time it was given.
    #[error("cannot reach the broker at {brokers}: {why}")]
    Unreachable { brokers: String, why: String },
    /// A subscription QoS other than 0 or 1.
    #[error("{0}: must be 0 or 1")]
    SubscribeQos(u8),
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
    keepalives: watch::Receiver<u64>,
    stop: CancellationToken,
    brokers: Brokers,
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
        let inbox = Inbox::start(incoming_tx, opts.incoming_buffer, stop.clone());
        let (gen_tx, gen_rx) = watch::channel(0u64);
        let (up_tx, up_rx) = watch::channel(false);
        let (refused_tx, refused_rx) = watch::channel(0u64);
        let (keepalives_tx, keepalives_rx) = watch::channel(0u64);
        let shared = Arc::new(Shared::default());
        tokio::spawn(poll_task(
            eventloop,
            (opts.brokers.clone(), connect),
            (opts.backoff, opts.quiet_failures),
            inbox,
            Signals {
                generation: gen_tx,
                up: up_tx,
                refused: refused_tx,
                keepalives: keepalives_tx,
                shared: shared.clone(),
                stop: stop.clone(),
            },
        ));
        tokio::spawn(sender_task(
            client,
            (urgent_rx, queue_rx),
            (gen_rx.clone(), refused_rx),
            Subscriptions {
                filters: opts.subscriptions,
                live: opts.live_subscriptions,
                qos: opts.subscribe_qos,
            },
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
            keepalives: keepalives_rx,
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
    ) -> Result<(Link, mpsc::Receiver<Incoming>), LinkError> {
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
            return Err(LinkError::Unreachable {
                brokers: link.brokers.to_string(),
                why,
            });
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

    fn lane(&self, msg: &Message) -> &mpsc::Sender<Message> {
        if msg.urgent {
            &self.urgent
        } else {
            &self.queue
        }
    }

    /// Follows the connection state: `true` while connected.
    pub fn watch_connected(&self) -> watch::Receiver<bool> {
        self.up.clone()
    }

    /// Changes with every keep-alive's outcome, answered or lost: when [`Link::quality`] may
    /// have changed.
    pub fn watch_keepalives(&self) -> watch::Receiver<u64> {
        self.keepalives.clone()
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
            (d.keepalives.round_trip_ms(), d.keepalives.loss_percent())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker_url::BrokerUrl;

    /// A stand-in broker on a loopback port: accepts connections, answers each CONNECT with a
    /// CONNACK and keeps the connection until `drop_all` fires, then closes them and stops
    /// listening (as a killed node does).
    async fn fake_broker(drop_all: CancellationToken) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (listener, port) = loopback_listener().await;
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
        let (listener, port) = loopback_listener().await;
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
    async fn a_broker_slower_than_the_connect_timeout_is_given_longer_and_answers_once() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // A busy broker: each CONNECT is answered, 1.2 s after it came.
        let (listener, port) = loopback_listener().await;
        let connects = Arc::new(AtomicU64::new(0));
        let c = connects.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let c = c.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 512];
                    if socket.read(&mut buf).await.unwrap_or(0) == 0 {
                        return;
                    }
                    c.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(1200)).await;
                    // CONNACK, no session, accepted; then keep the connection open.
                    if socket.write_all(&[0x20, 0x02, 0x00, 0x00]).await.is_ok() {
                        while socket.read(&mut buf).await.unwrap_or(0) > 0 {}
                    }
                });
            }
        });
        let mut opts = LinkOptions::new(
            "slow-test",
            format!("mqtt://127.0.0.1:{port}")
                .parse::<Brokers>()
                .unwrap(),
        );
        opts.backoff = Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_millis(100),
        };
        opts.connect_timeout = Duration::from_secs(1);
        let link = Link::start(opts).0;
        // At the same 1 s each time it would never connect. The second attempt waits 2 s (a
        // busy machine may need the third, 4 s).
        assert!(
            link.wait_connected(Duration::from_secs(10)).await,
            "{:?}",
            link.status()
        );
        let asked = connects.load(Ordering::Relaxed);
        assert!((2..=3).contains(&asked), "{asked} connects");
        link.shutdown();
    }

    #[test]
    fn patience_with_a_busy_broker_doubles_up_to_a_bound() {
        use super::poll::patience_after_timeout;
        let mut t = 15;
        let mut seen = vec![];
        for _ in 0..5 {
            t = patience_after_timeout(t, 15);
            seen.push(t);
        }
        assert_eq!(seen, [30, 60, 120, 120, 120]);
        assert_eq!(patience_after_timeout(0, 1), 1);
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

    #[test]
    fn live_filters_are_subscribed_at_qos_0_and_the_others_at_the_links_qos() {
        let s = Subscriptions {
            filters: vec!["ct/v1/cmd".into()],
            live: vec!["ct/v1/ack".into(), "ct/v1/m/13/+".into()],
            qos: QoS::AtLeastOnce,
        };
        let got: Vec<(String, rumqttc::QoS)> =
            s.all().into_iter().map(|f| (f.path, f.qos)).collect();
        assert_eq!(
            got,
            [
                ("ct/v1/cmd".to_owned(), QoS::AtLeastOnce),
                ("ct/v1/ack".to_owned(), QoS::AtMostOnce),
                ("ct/v1/m/13/+".to_owned(), QoS::AtMostOnce),
            ]
        );
    }

    /// One MQTT packet from `socket`: its type and body; `None` once the client is gone.
    async fn read_packet(
        socket: &mut (impl tokio::io::AsyncRead + Unpin),
    ) -> Option<(u8, Vec<u8>)> {
        use tokio::io::AsyncReadExt;
        let mut header = [0u8; 1];
        socket.read_exact(&mut header).await.ok()?;
        let (mut len, mut shift) = (0usize, 0);
        loop {
            let mut b = [0u8; 1];
            socket.read_exact(&mut b).await.ok()?;
            len |= usize::from(b[0] & 0x7f) << shift;
            shift += 7;
            if b[0] & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0u8; len];
        socket.read_exact(&mut body).await.ok()?;
        Some((header[0] >> 4, body))
    }

    /// A listener on a free loopback port, and the port.
    async fn loopback_listener() -> (tokio::net::TcpListener, u16) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        (listener, port)
    }

    const CONNACK: [u8; 4] = [0x20, 0x02, 0x00, 0x00];
    const PINGRESP: [u8; 2] = [0xd0, 0x00];

    /// A SUBACK for `subscribe` (its body), every filter answered with `code`.
    fn suback(subscribe: &[u8], code: u8) -> Vec<u8> {
        // Packet id, then (length-prefixed filter, QoS) pairs.
        let (mut i, mut filters) = (2, 0u8);
        while i + 2 <= subscribe.len() {
            i += 2 + usize::from(u16::from_be_bytes([subscribe[i], subscribe[i + 1]])) + 1;
            filters += 1;
        }
        let mut r = vec![0x90, 2 + filters, subscribe[0], subscribe[1]];
        r.extend(std::iter::repeat_n(code, usize::from(filters)));
        r
    }

    /// A stand-in broker that speaks just enough MQTT for a link: CONNACK, PINGRESP, and a
    /// SUBACK refusing every filter of the first `refusals` SUBSCRIBEs, granting the rest.
    /// Counts the SUBSCRIBEs it got.
    async fn refusing_broker(refusals: usize) -> (u16, Arc<AtomicU64>) {
        use tokio::io::AsyncWriteExt;
        let (listener, port) = loopback_listener().await;
        let subscribes = Arc::new(AtomicU64::new(0));
        let seen = subscribes.clone();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            while let Some((kind, body)) = read_packet(&mut socket).await {
                let reply = match kind {
                    1 => CONNACK.to_vec(),
                    12 => PINGRESP.to_vec(),
                    8 => {
                        let n = seen.fetch_add(1, Ordering::SeqCst) as usize;
                        suback(&body, if n < refusals { 0x80 } else { 0x01 })
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

    /// A stand-in broker that answers a connection's first PINGREQ only after `burst`
    /// messages on `ct/v1/a/x` (100 bytes each, QoS 0), and every later one at once. Counts
    /// the connections it took and the pings it got.
    async fn bursting_broker(burst: usize) -> (u16, Arc<AtomicU64>, Arc<AtomicU64>) {
        use tokio::io::AsyncWriteExt;
        let (listener, port) = loopback_listener().await;
        let (connections, pings) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (counted, pinged_n) = (connections.clone(), pings.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let pinged_n = pinged_n.clone();
                tokio::spawn(async move {
                    let mut pinged = false;
                    while let Some((kind, body)) = read_packet(&mut socket).await {
                        if kind == 12 {
                            pinged_n.fetch_add(1, Ordering::SeqCst);
                        }
                        let reply = match kind {
                            1 => CONNACK.to_vec(),
                            8 => suback(&body, 0x00),
                            12 if !pinged => {
                                pinged = true;
                                let topic = b"ct/v1/a/x";
                                let mut publish = vec![0x30, (2 + topic.len() + 100) as u8, 0];
                                publish.push(topic.len() as u8);
                                publish.extend_from_slice(topic);
                                publish.extend_from_slice(&[7u8; 100]);
                                let mut r = publish.repeat(burst);
                                r.extend_from_slice(&PINGRESP);
                                r
                            }
                            12 => PINGRESP.to_vec(),
                            _ => Vec::new(),
                        };
                        if socket.write_all(&reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (port, connections, pings)
    }

    /// The broker answers a ping behind a burst the link's owner takes seconds to read, the
    /// link meanwhile reading nothing: the connection is kept, and the burst delivered.
    #[tokio::test]
    async fn a_ping_answered_while_the_owner_held_the_link_back_does_not_cost_the_connection() {
        let burst = 400;
        let (port, connections, pings) = bursting_broker(burst).await;
        let mut opts = LinkOptions::new(
            "held-back-test",
            format!("mqtt://127.0.0.1:{port}")
                .parse::<BrokerUrl>()
                .unwrap(),
        );
        opts.subscriptions = vec!["ct/v1/a/#".into()];
        opts.keep_alive = Duration::from_secs(1);
        // Room for a few of the burst: the link stops reading almost at once.
        opts.incoming_capacity = 1;
        opts.incoming_buffer = 1024;
        let (link, mut incoming) = Link::start(opts);
        // The first ping goes after a second; the owner reads nothing until the link's next
        // ping was due, a second after that.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            pings.load(Ordering::SeqCst) >= 1,
            "the link pinged, and got its burst, while its owner held it back"
        );
        let read = tokio::time::timeout(Duration::from_secs(5), async {
            for _ in 0..burst {
                incoming.recv().await.expect("the link is running");
            }
        })
        .await;
        assert!(read.is_ok(), "the burst read: {:?}", link.status());
        // Two more keep-alives, answered at once.
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        on_its_first_connection(&link, &connections);
        link.shutdown();
    }

    /// The link's status, checked to be on its first connection, the broker's only one.
    fn on_its_first_connection(link: &Link, connections: &AtomicU64) -> LinkStatus {
        let status = link.status();
        let taken = connections.load(Ordering::SeqCst);
        assert!(
            status.connected && status.connects == 1 && taken == 1,
            "{status:?}, {taken} connections"
        );
        status
    }

    /// A stand-in broker that, once a connection subscribes, sends it three messages on
    /// `ct/v1/a/x`, then one every `every` (none with `None`), and answers each PINGREQ
    /// `lag` late (never with `None`), in order. Counts the connections it took.
    async fn lagging_broker(
        every: Option<Duration>,
        lag: Option<Duration>,
    ) -> (u16, Arc<AtomicU64>) {
        use tokio::io::AsyncWriteExt;
        let (listener, port) = loopback_listener().await;
        let connections = Arc::new(AtomicU64::new(0));
        let counted = connections.clone();
        let publish = {
            let topic = b"ct/v1/a/x";
            let mut p = vec![0x30, (2 + topic.len() + 10) as u8, 0, topic.len() as u8];
            p.extend_from_slice(topic);
            p.extend_from_slice(&[7u8; 10]);
            p
        };
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let (mut from, to) = socket.into_split();
                let to = Arc::new(tokio::sync::Mutex::new(to));
                let publish = publish.clone();
                tokio::spawn(async move {
                    while let Some((kind, body)) = read_packet(&mut from).await {
                        let reply = match kind {
                            1 => CONNACK.to_vec(),
                            8 => {
                                let (to, publish) = (to.clone(), publish.clone());
                                tokio::spawn(async move {
                                    for n in 0.. {
                                        if n >= 3 {
                                            let Some(every) = every else { return };
                                            tokio::time::sleep(every).await;
                                        }
                                        if to.lock().await.write_all(&publish).await.is_err() {
                                            return;
                                        }
                                    }
                                });
                                suback(&body, 0x00)
                            }
                            12 => {
                                if let Some(lag) = lag {
                                    let to = to.clone();
                                    tokio::spawn(async move {
                                        tokio::time::sleep(lag).await;
                                        let _ = to.lock().await.write_all(&PINGRESP).await;
                                    });
                                }
                                Vec::new()
                            }
                            _ => Vec::new(),
                        };
                        if to.lock().await.write_all(&reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (port, connections)
    }

    fn lagging_link(name: &str, port: u16) -> (Link, mpsc::Receiver<Incoming>) {
        let mut opts = LinkOptions::new(
            name,
            format!("mqtt://127.0.0.1:{port}")
                .parse::<BrokerUrl>()
                .unwrap(),
        );
        opts.subscriptions = vec!["ct/v1/a/#".into()];
        opts.keep_alive = Duration::from_secs(1);
        Link::start(opts)
    }

    /// A busy broker answers each ping 2.5 keep-alives late while it keeps sending: the
    /// connection lives (no answer was lost, each is timed from its own ping).
    #[tokio::test]
    async fn pings_answered_late_by_a_broker_that_keeps_sending_do_not_cost_the_connection() {
        let lag = Duration::from_millis(2_500);
        let (port, connections) = lagging_broker(Some(Duration::from_millis(100)), Some(lag)).await;
        let (link, mut incoming) = lagging_link("late-pings-test", port);
        let read = tokio::spawn(async move {
            let mut n = 0u64;
            while incoming.recv().await.is_some() {
                n += 1;
            }
            n
        });
        tokio::time::sleep(Duration::from_secs(7)).await;
        let status = on_its_first_connection(&link, &connections);
        let rtt = status.rtt_ms.expect("answers came");
        assert!(
            rtt >= lag.as_millis() as f64 && rtt < 2.0 * lag.as_millis() as f64,
            "each answer timed from its own ping: {status:?}"
        );
        assert_eq!(status.ping_loss_percent, 0.0, "{status:?}");
        link.shutdown();
        assert!(read.await.unwrap() >= 30, "the messages kept coming");
    }

    /// A broker that answers no ping costs the connection at the keep-alive after one only
    /// if nothing else was heard from it since: one that went silent after a burst is left,
    /// one that keeps sending is kept.
    #[tokio::test]
    async fn an_unanswered_ping_costs_the_connection_only_when_the_broker_fell_silent() {
        for (name, every) in [
            ("silent-after-a-burst-test", None),
            (
                "sending-but-no-pings-test",
                Some(Duration::from_millis(100)),
            ),
        ] {
            let (port, connections) = lagging_broker(every, None).await;
            let (link, _incoming) = lagging_link(name, port);
            if every.is_some() {
                // Four keep-alives, none answered.
                tokio::time::sleep(Duration::from_millis(4_500)).await;
                on_its_first_connection(&link, &connections);
            } else {
                // Given up at the second keep-alive (2 s), connected again after the back-off.
                let again = tokio::time::timeout(Duration::from_secs(10), async {
                    while connections.load(Ordering::SeqCst) < 2 || link.status().connects < 2 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                })
                .await;
                assert!(again.is_ok(), "{name}: {:?}", link.status());
            }
            link.shutdown();
        }
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
