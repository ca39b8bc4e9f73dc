//! The poll task: drives the MQTT connection, hands received messages on, keeps the link's
//! state, and reconnects with back-off, moving on through a cluster's brokers.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rumqttc::{Event, EventLoop, Packet};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::failure::{describe, tls_failure};
use super::{Backoff, Connect, Inbox, Incoming, MAX_PAYLOAD, Shared, unix_ms};
use crate::broker_url::{BrokerUrl, Brokers};

/// What the poll task tells the rest of the link.
pub(super) struct Signals {
    /// Bumped on every successful connect (the sender task resubscribes).
    pub(super) generation: watch::Sender<u64>,
    /// Connected or not, for the owner.
    pub(super) up: watch::Sender<bool>,
    /// Bumped when the broker refuses a subscription (the sender task subscribes again).
    pub(super) refused: watch::Sender<u64>,
    /// Bumped on every keep-alive's outcome, answered or lost (the link's quality changed).
    pub(super) keepalives: watch::Sender<u64>,
    pub(super) shared: Arc<Shared>,
    pub(super) stop: CancellationToken,
}

/// How many pings may wait for their answers on a connection the broker is heard from.
const MAX_PINGS_UNANSWERED: usize = 8;

pub(super) async fn poll_task(
    mut eventloop: EventLoop,
    (brokers, connect): (Brokers, Connect),
    (backoff, quiet): (Backoff, bool),
    incoming: Inbox,
    signals: Signals,
) {
    let Signals {
        generation,
        up,
        refused,
        keepalives,
        shared,
        stop,
    } = signals;
    let record_ping = |rtt_ms: Option<f64>| {
        if let Ok(mut d) = shared.detail.lock() {
            match rtt_ms {
                Some(ms) => d.keepalives.answered(ms),
                None => d.keepalives.lost(),
            }
        }
        keepalives.send_modify(|n| *n += 1);
    };
    let mut rng = rand::rngs::SmallRng::from_entropy();
    let mut failures: u32 = 0;
    // When each ping not yet answered was sent, oldest first: a broker answers them in order.
    let mut pings: VecDeque<Instant> = VecDeque::new();
    let mut generation_no = 0u64;
    let mut in_tls_episode = false;
    // The broker connected to, or tried next (an index round `brokers`).
    let mut current = 0usize;
    // How long a connect may take: the configured time, longer after timeouts (see
    // [`patience_after_timeout`]).
    let base_timeout = eventloop.network_options.connection_timeout();
    // Connects in a row that timed out: a cluster is given longer only once every node of a
    // round timed out (one unreachable node is left for the next at the same timeout).
    let mut timeouts: usize = 0;
    loop {
        let broker = brokers.get(current).clone();
        let event = tokio::select! {
            _ = stop.cancelled() => break,
            e = eventloop.poll() => e,
        };
        if let Ok(Event::Incoming(packet)) = &event
            && !pings.is_empty()
            && !matches!(packet, Packet::PingResp | Packet::ConnAck(_))
        {
            // The broker is heard from, so the connection lives: its answer to the ping waits
            // behind what it sends (a busy broker's queue towards us, or what we had not read
            // while our owner caught up). The ping is late, not lost; the next keep-alive pings
            // again, and only one that finds nothing heard since the ping ends the connection.
            eventloop.state.await_pingresp = false;
        }
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                let after_failure = shared
                    .detail
                    .lock()
                    .ok()
                    .and_then(|mut d| d.last_cause.take());
                failures = 0;
                in_tls_episode = false;
                eventloop
                    .network_options
                    .set_connection_timeout(base_timeout);
                timeouts = 0;
                pings.clear();
                shared.connected.store(true, Ordering::Relaxed);
                shared.connects.fetch_add(1, Ordering::Relaxed);
                generation_no += 1;
                generation.send_replace(generation_no);
                up.send_replace(true);
                if after_failure.is_some() && !quiet {
                    // Said at the level the failure was.
                    tracing::warn!(
                        client = %eventloop.mqtt_options.client_id(),
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
                };
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Publish(_))) => {
                shared.published.fetch_add(1, Ordering::Relaxed);
                shared.last_publish_ms.store(unix_ms(), Ordering::Relaxed);
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::PingReq)) => {
                // Pings go on while the broker is heard from (see above), however late its
                // answers: the oldest of too many is given up.
                if pings.len() == MAX_PINGS_UNANSWERED && pings.pop_front().is_some() {
                    record_ping(None);
                }
                pings.push_back(Instant::now());
            }
            Ok(Event::Incoming(Packet::PingResp)) => {
                if let Some(t) = pings.pop_front() {
                    record_ping(Some(t.elapsed().as_secs_f64() * 1000.0));
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
                for _ in pings.drain(..) {
                    record_ping(None);
                }
                if !was_connected && matches!(e, rumqttc::ConnectionError::NetworkTimeout) {
                    timeouts += 1;
                    if timeouts.is_multiple_of(brokers.len().max(1)) {
                        let now = eventloop.network_options.connection_timeout();
                        eventloop
                            .network_options
                            .set_connection_timeout(patience_after_timeout(now, base_timeout));
                    }
                } else {
                    timeouts = 0;
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
                // A person sees each cause once (and again when it changes), not every retry;
                // on a quiet link, only the retries are logged (at debug level), and the owner
                // watches the link ([`super::LinkOptions::quiet_failures`]).
                if was_connected && !quiet {
                    // A process with several links (central) says which.
                    tracing::warn!(
                        client = %eventloop.mqtt_options.client_id(),
                        "lost the broker at {broker}: {cause}; reconnecting"
                    );
                } else if cause_changed && !quiet {
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

/// The connect timeout (seconds) after a connect timed out with `now`: twice as long, up to
/// [`PATIENCE`] times the configured `base`. A broker that does not answer in time is most
/// often busy, not gone: a county's boxes all powering up at once queue on its listening
/// socket and its loop. Giving up at the same timeout again would throw away the answer it
/// is preparing, make it do each connect twice, and keep the herd late; the boxes' TCP and the
/// broker's backlog wait longer each time instead. Back to `base` once connected.
pub(super) fn patience_after_timeout(now: u64, base: u64) -> u64 {
    now.saturating_mul(2)
        .min(base.saturating_mul(PATIENCE))
        .max(base)
}

/// How many times the configured connect timeout a link waits at most for a busy broker.
const PATIENCE: u64 = 8;

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
