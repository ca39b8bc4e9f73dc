//! `cuntong central`: the central-office service. It collects (every site's telemetry, events
//! and presence, checked, de-duplicated and stored) and it hosts the meetings
//! ([`crate::meetings`]).
//!
//! Decoding happens on the async side; a dedicated writer thread applies records to the store
//! in groups (one transaction per group), so the store's latency never stalls the MQTT link.
//! After each group commits, central confirms to each terminal what it has *stored*: the
//! per-stream watermarks, published retained on the terminal's `ack` topic, coalesced to at
//! most one message per terminal per `ack_interval`.
//!
//! What a terminal may leave retained on its uplinks where the protocol retains nothing (a
//! refused message, anything retained but a valid presence) is cleared ([`retained_junk`]),
//! so later subscribers do not receive it: MQTT ACLs cannot deny the retain flag.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cuntong_core::envelope::{decode_event, decode_telemetry};
use cuntong_core::presence::Presence;
use cuntong_core::topic::{Channel, Topic, control_request, control_response, region_filter};
use cuntong_terminal::broker_url::Brokers;
use cuntong_terminal::link::{Incoming, Link, LinkOptions, unix_ms};
use cuntong_terminal::throttle::LogLimiter;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use std::collections::HashMap;

use cuntong_core::delivery::Watermarks;
use cuntong_core::envelope::encode;
use cuntong_core::terminal_id::TerminalId;
use cuntong_terminal::link::Message;

use crate::alarms::{AlarmConfig, AlarmService};
use crate::control::{ControlError, Request, RequestBody, Response, ResponseBody, answer_pages};
use crate::host_lease::{HOST_ROLE, instance_name, lease_loop};
use crate::meetings::MeetingService;
use crate::rollouts::RolloutService;
use crate::store::{Database, Record, StoreError, TrySendError, Writer};
use cuntong_core::lease::{self, Answer, Lease, Tenure};

/// How long an answer to a command waits for what the command changed to be stored.
const ANSWER_WAITS_FOR_STORE: Duration = Duration::from_secs(1);

/// How central connects and where it stores.
#[derive(Clone, Debug)]
pub struct CentralOptions {
    /// The broker, or a cluster's nodes in order of preference.
    pub broker: Brokers,
    pub db: Database,
    pub client_id: String,
    /// The QoS of central's subscriptions (1; 0 on a NATS cluster).
    pub subscribe_qos: rumqttc::QoS,
    /// How often confirmations go out (coalesced per terminal).
    pub ack_interval: Duration,
    /// Mutual TLS (central's bundle), for an `mqtts://` broker.
    pub tls: Option<cuntong_terminal::tls::TlsFiles>,
    /// How often the sites of a new session repeat their status.
    pub meeting_heartbeat: Duration,
    /// Where relays reach central's recorders.
    pub media_host: std::net::IpAddr,
    /// Alarm rules and notification hooks.
    pub alarms: AlarmConfig,
    /// Where the web dashboard listens, if it is served.
    pub http: Option<std::net::SocketAddr>,
    /// The staff who must sign in to the dashboard (`--http-users`); open to its network if
    /// `None`.
    pub http_users: Option<std::sync::Arc<crate::staff::Users>>,
    /// The lease on the host role (several instances on one PostgreSQL store).
    pub lease: Lease,
    /// How long the history is kept (`--retain`); forever if `None`.
    pub retain: Option<Duration>,
    /// The shared-subscription group the instances share ingest in (`--share-ingest`), on a
    /// broker with MQTT shared subscriptions; every instance receives everything if `None`.
    pub share_ingest: Option<String>,
    /// Where release artifacts are cached for serving (`--release-cache`); beside an SQLite
    /// store, or the user's cache directory, if `None`.
    pub release_cache: Option<std::path::PathBuf>,
}

impl CentralOptions {
    pub fn new(
        broker: impl Into<Brokers>,
        db: Database,
        client_id: impl Into<String>,
    ) -> CentralOptions {
        CentralOptions {
            broker: broker.into(),
            db,
            client_id: client_id.into(),
            subscribe_qos: rumqttc::QoS::AtLeastOnce,
            ack_interval: Duration::from_secs(1),
            tls: None,
            meeting_heartbeat: Duration::from_secs(10),
            media_host: std::net::IpAddr::from([127, 0, 0, 1]),
            alarms: AlarmConfig::default(),
            http: None,
            http_users: None,
            lease: Lease::default(),
            retain: None,
            share_ingest: None,
            release_cache: None,
        }
    }
}

/// Why central stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum CentralError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tls(#[from] cuntong_terminal::tls::TlsError),
    #[error("dashboard: cannot listen on {addr}: {source}")]
    Http {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Counters of what central has done, shared with whoever wants to show them.
#[derive(Debug, Default)]
pub struct CentralStats {
    pub received: AtomicU64,
    pub stored: AtomicU64,
    pub duplicates: AtomicU64,
    pub values: AtomicU64,
    pub rejected: AtomicU64,
    /// Confirmations published.
    pub acks: AtomicU64,
    /// Messages the link refused for being larger than the protocol allows.
    pub oversized: AtomicU64,
    /// Records not kept while the store was too far behind (their terminals send them again).
    pub shed: AtomicU64,
    /// Meeting messages dropped from a full outbound queue (the oldest; sites repeat).
    pub meeting_dropped: AtomicU64,
}

impl CentralStats {
    pub fn get(&self, f: impl Fn(&CentralStats) -> &AtomicU64) -> u64 {
        f(self).load(Ordering::Relaxed)
    }
}

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

fn clear_retained_junk(link: &Link, log: &LogLimiter, topic: &str, retained: bool, refused: bool) {
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

/// Received records waiting for room in the store thread's queue: while the store is behind
/// (a province replaying its outboxes, a slow disk), the loop reads on, so commands and meeting
/// uplinks never wait behind records. Beyond this many, what a terminal sends again until it
/// is confirmed (telemetry and events, from its outbox) is not kept but shed and counted: no
/// confirmation comes for it, so the terminal sends it again later (the delivery protocol's
/// back-pressure), and the link to the broker is never stalled. Presence, which is not sent
/// again, is kept up to [`LOOKAHEAD_PRESENCE`].
const LOOKAHEAD: usize = 50_000;
const LOOKAHEAD_PRESENCE: usize = 2 * LOOKAHEAD;

/// How often the host forgets history older than `--retain`.
const RETENTION_EVERY_MS: u64 = 3_600_000;

/// The roles only one central instance plays at a time, played by the one that holds the
/// lease on them: the meeting host (with its scheduled sessions), the alarm engine (with its
/// hooks) and the rollouts.
struct Roles {
    meetings: MeetingService,
    alarms: AlarmService,
    rollouts: RolloutService,
}

impl Roles {
    /// Hands what the alarms and rollouts have for the boxes to the meeting host's queue,
    /// which publishes it.
    fn gather_outbound(&mut self) {
        for m in self
            .alarms
            .take_outbound()
            .into_iter()
            .chain(self.rollouts.take_outbound())
        {
            self.meetings.push(m);
        }
    }
}

impl Roles {
    /// Loads the roles' state from the store (blocking: the meetings and alarms as stored).
    /// Everything they write is fenced by `epoch`.
    fn load(
        store: &dyn crate::store::Store,
        opts: &CentralOptions,
        writer: &Writer,
        epoch: u64,
    ) -> Result<Roles, StoreError> {
        let state = writer.state.fenced(HOST_ROLE, epoch);
        Ok(Roles {
            meetings: MeetingService::open(
                store,
                opts.meeting_heartbeat,
                state.clone(),
                writer.names.clone(),
            )?
            .recording_at(opts.media_host),
            alarms: AlarmService::open(
                store,
                opts.alarms.clone(),
                state.clone(),
                writer.names.clone(),
                unix_ms(),
            )?,
            rollouts: RolloutService::open(store, state, unix_ms())?,
        })
    }
}

/// Runs central until `stop` fires.
pub async fn run(
    opts: CentralOptions,
    stats: Arc<CentralStats>,
    stop: CancellationToken,
) -> Result<(), CentralError> {
    let stored_marks = Arc::new(StoredMarks::default());
    let marks_in = stored_marks.clone();
    let instance = instance_name();
    let started_ms = unix_ms();
    // An SQLite store has one central (its file lock): the role is its own, busy store or not.
    let lease = match opts.db {
        Database::Sqlite(_) => Lease::sole(),
        Database::Postgres(_) => opts.lease,
    };
    let mut tenure = Tenure::new(lease);
    // The store is opened off the runtime (the PostgreSQL client must not run on it); the host
    // lease is asked for once, and the roles' state read if it is granted, before the link
    // starts; from then on the roles only hand the store thread what to write.
    let writer_stats = stats.clone();
    let (setup_opts, writer_stop, setup_instance) = (opts.clone(), stop.clone(), instance.clone());
    let runtime = tokio::runtime::Handle::current();
    let (writer, first, asked) = tokio::task::spawn_blocking(move || {
        let opts = setup_opts;
        let store = opts.db.open_for_central()?;
        let mut reader = opts.db.open()?;
        let writer = Writer::start(
            store,
            move |a| {
                marks_in.put(a.watermarks, a.numbering_clashes);
                writer_stats.stored.fetch_add(a.stored, Ordering::Relaxed);
                writer_stats
                    .duplicates
                    .fetch_add(a.duplicates, Ordering::Relaxed);
                writer_stats.values.fetch_add(a.values, Ordering::Relaxed);
            },
            writer_stop,
        )?;
        let asked = unix_ms();
        let held = reader.take_lease(HOST_ROLE, &setup_instance, lease.ttl_ms)?;
        let first = match held {
            Some(epoch) => {
                let _in_runtime = runtime.enter();
                Some((epoch, Roles::load(reader.as_ref(), &opts, &writer, epoch)?))
            }
            None => None,
        };
        Ok::<_, StoreError>((writer, first, asked))
    })
    .await
    .map_err(|_| StoreError::Crashed)??;
    let mut roles = None;
    match first {
        Some((epoch, loaded)) => {
            if let Some(lease::Change::Start { .. }) =
                tenure.answered(Answer::Held { epoch }, asked, unix_ms())
            {
                tracing::info!(%instance, epoch, "holding the host role");
                roles = Some(loaded);
            }
        }
        None => tracing::info!(%instance, "another instance holds the host role: standing by"),
    }
    let (lease_tx, mut lease_rx) = mpsc::channel(crate::host_lease::LEASE_ANSWERS);
    {
        let (db, instance, stop) = (opts.db.clone(), instance.clone(), stop.clone());
        std::thread::Builder::new()
            .name("central-lease".to_owned())
            .spawn(move || lease_loop(db, instance, started_ms, lease, lease_tx, stop))
            .map_err(StoreError::Thread)?;
    }
    // Roles loaded after a takeover arrive here, with the epoch they were loaded for.
    // (One at a time: a takeover's loading waits until the loop took the one before.)
    let (loaded_tx, mut loaded_rx) = mpsc::channel::<(u64, Roles)>(1);
    let records_tx = writer.records.clone();
    let writer_state = writer.state.clone();
    let writer = Arc::new(writer);
    let log = LogLimiter::default();
    if let Some(addr) = opts.http {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| CentralError::Http { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| CentralError::Http { addr, source })?;
        // One plain line for operators and scripts (port 0 in `--http` picks a free port).
        eprintln!("dashboard: http://{bound}/");
        let (db, stop, users) = (opts.db.clone(), stop.clone(), opts.http_users.clone());
        let artifacts = opts
            .release_cache
            .clone()
            .unwrap_or_else(|| crate::artifacts::default_cache(&db));
        tokio::spawn(async move {
            if let Err(e) = crate::dashboard::serve_on(listener, db, artifacts, users, stop).await {
                tracing::error!(error = %e, "the dashboard stopped");
            }
        });
    }
    let mut link_opts = LinkOptions::new(opts.client_id.clone(), opts.broker.clone());
    link_opts.subscriptions = ingest_subscriptions(opts.share_ingest.as_deref())
        .into_iter()
        .chain(MeetingService::subscriptions())
        .chain([control_request("+")])
        .collect();
    link_opts.subscribe_qos = opts.subscribe_qos;
    link_opts.incoming_capacity = 1024;
    // A join storm or a replaying fleet may outrun the loop for a while: the link keeps
    // reading (and answering the broker) into a buffer of its own meanwhile.
    link_opts.incoming_buffer = 64 << 20;
    // The chair's and the staff's requests go ahead of that buffer.
    link_opts.urgent_topics = vec![control_request("")];
    link_opts.queue_capacity = 8192;
    // A ping's answer waits behind what the broker sent before it: a province's join storm
    // must not cost central its connection (and the chair its answers).
    link_opts.keep_alive = Duration::from_secs(30);
    link_opts.tls = opts
        .tls
        .as_ref()
        .map(cuntong_terminal::tls::client_config)
        .transpose()?;
    let (link, mut incoming) = Link::start(link_opts);

    let mut to_confirm = Confirmations::default();
    let mut gaps = crate::gaps::GapWatch::default();
    let mut ack_tick = tokio::time::interval(opts.ack_interval);
    ack_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut meeting_tick = tokio::time::interval(Duration::from_millis(200));
    meeting_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_meeting_tick = 0;
    let mut last_retention: u64 = 0;
    let mut ahead: std::collections::VecDeque<Record> = std::collections::VecDeque::new();
    let mut link_up = link.watch_connected();
    // What the tenure says to do, applied in one place.
    let change_roles = |change: lease::Change, roles: &mut Option<Roles>| match change {
        lease::Change::Start { epoch } => {
            tracing::warn!(%instance, epoch, "taking over the host role: loading meetings and alarms");
            let (opts, writer, loaded_tx) = (opts.clone(), writer.clone(), loaded_tx.clone());
            let runtime = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || {
                let _in_runtime = runtime.enter();
                match opts
                    .db
                    .open()
                    .and_then(|s| Roles::load(s.as_ref(), &opts, &writer, epoch))
                {
                    Ok(r) => {
                        let _ = loaded_tx.blocking_send((epoch, r));
                    }
                    Err(e) => tracing::error!(error = %e, "cannot load the host role's state"),
                }
            });
        }
        lease::Change::Stop { epoch } => {
            if roles.take().is_some() {
                tracing::warn!(%instance, epoch, "the host role is no longer ours: standing by");
            }
        }
    };
    // Under systemd: ready now (the store is open, the link started), then a ping from this
    // loop, so that a loop that hangs is restarted.
    let mut service = cuntong_terminal::service::Service::from_env();
    service.ready(&format!("central {instance}"));
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => {
                service.stopping();
                break;
            }
            () = service.watchdog() => continue,
            changed = link_up.changed() => {
                if changed.is_err() {
                    break;
                }
                if *link_up.borrow_and_update() && let Some(r) = roles.as_mut() {
                    r.meetings.republish();
                    r.meetings.drain(&link);
                }
                continue;
            }
            Some((epoch, mut loaded)) = loaded_rx.recv() => {
                // Only if the role is still ours, under the epoch it was loaded for.
                if tenure.epoch() == Some(epoch) {
                    tracing::warn!(%instance, epoch, "holding the host role");
                    loaded.meetings.republish();
                    loaded.meetings.drain(&link);
                    roles = Some(loaded);
                }
                continue;
            }
            _ = meeting_tick.tick() => {
                // Publish what waits often; run the hosts' clocks once a second.
                let now = unix_ms();
                // The lease's answers, all that arrived, before the lease is judged: a loop
                // busy for a while has not lost the lease if its renewals came meanwhile.
                while let Ok((answer, asked)) = lease_rx.try_recv() {
                    if let Some(change) = tenure.answered(answer, asked, now) {
                        change_roles(change, &mut roles);
                    }
                }
                if let Some(change) = tenure.tick(now) {
                    change_roles(change, &mut roles);
                }
                if let Some(r) = roles.as_mut() {
                    if now >= last_meeting_tick + 1000 {
                        last_meeting_tick = now;
                        r.meetings.tick(now);
                        r.alarms.tick(now, link.is_connected());
                    }
                    r.rollouts.tick(now, false);
                    r.gather_outbound();
                    // Retention is the host's too: once an hour, and after taking over.
                    if let Some(keep) = opts.retain
                        && now >= last_retention.saturating_add(RETENTION_EVERY_MS)
                    {
                        last_retention = now;
                        let cut = now.saturating_sub(keep.as_millis() as u64);
                        if writer_state.drop_before(cut).is_err() {
                            break;
                        }
                    }
                    r.meetings.lay_out(now);
                    r.meetings.drain(&link);
                    stats
                        .meeting_dropped
                        .store(r.meetings.dropped(), Ordering::Relaxed);
                }
                stats.oversized.store(link.status().refused_oversized, Ordering::Relaxed);
                continue;
            }
            () = stored_marks.ready.notified() => {
                let stored = stored_marks.take();
                for (terminal, marks) in &stored.marks {
                    gaps.stored(*terminal, *marks);
                }
                to_confirm.extend(stored);
                continue;
            }
            _ = ack_tick.tick() => {
                confirm(&link, &mut to_confirm, &stats);
                continue;
            }
            room = records_tx.room(), if !ahead.is_empty() => {
                match room {
                    Ok(room) => {
                        if let Some(r) = ahead.pop_front() {
                            room.send(r);
                        }
                    }
                    Err(_) => break,
                }
                continue;
            }
            m = incoming.recv() => match m { Some(m) => m, None => break },
        };
        stats.received.fetch_add(1, Ordering::Relaxed);
        if let Some(client) = msg.topic.strip_prefix(&control_request("")) {
            // The instance holding the host role answers; the others stand by.
            if let Some(r) = roles.as_mut() {
                answer_command(r, &link, &writer_state, &log, client, &msg.payload);
            }
            continue;
        }
        // What a terminal may have left retained on its uplink (cleared below if junk).
        let left = (!msg.payload.is_empty()).then(|| (msg.topic.clone(), msg.retain));
        if MeetingService::is_meeting_uplink(&msg) {
            // Joins are answered by a layout of their session, on the meeting tick (every
            // 200 ms): a layout costs the whole session, so one for each join would make a
            // province's join storm quadratic.
            if let Some(r) = roles.as_mut()
                && r.meetings.on_message(&msg, unix_ms())
            {
                r.meetings.drain(&link);
            }
            if let Some((topic, retained)) = left {
                clear_retained_junk(&link, &log, &topic, retained, false);
            }
            continue;
        }
        let Some(record) = to_record(msg, unix_ms()) else {
            continue;
        };
        // A gap the terminal keeps sending past is declared lost, ahead of what arrived.
        if let Some((terminal, stream, seq)) = record.numbered()
            && let Some((first, last)) = gaps.received(terminal, stream, seq)
        {
            tracing::warn!(
                %terminal,
                stream = stream.as_str(),
                first,
                last,
                "records never arrived though the terminal sent what follows {} more times: declared lost",
                crate::gaps::GIVE_UP_ROUNDS
            );
            let lost = Record::Lost {
                terminal,
                stream,
                first,
                last,
            };
            if let Some(r) = roles.as_mut() {
                r.alarms.record(&lost, unix_ms());
                r.gather_outbound();
            }
            ahead.push_back(lost);
        }
        if let Some((topic, retained)) = left {
            let refused = matches!(record, Record::Rejected { .. });
            clear_retained_junk(&link, &log, &topic, retained, refused);
        }
        if let Record::Rejected { reason, .. } = &record {
            // A flood of bad messages costs a line a minute (the counter has them all).
            if let Some(more) = log.allow("rejected") {
                tracing::warn!("rejected: {reason}{more}");
            }
            stats.rejected.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(r) = roles.as_mut() {
            let now = unix_ms();
            r.alarms.record(&record, now);
            r.meetings.record(&record);
            r.rollouts.record(&record, now);
            r.gather_outbound();
        }
        // Records wait in `ahead` while the store thread is behind, so the loop keeps reading:
        // commands and meeting uplinks behind them are answered at once.
        if shed(&record, ahead.len()) {
            let n = stats.shed.fetch_add(1, Ordering::Relaxed) + 1;
            if let Some(more) = log.allow("shed") {
                tracing::warn!(
                    shed = n,
                    "the store is {} records behind: shedding what terminals send again{more}",
                    ahead.len()
                );
            }
            continue;
        }
        if ahead.is_empty() {
            match records_tx.try_send(record) {
                Ok(()) => {}
                Err(TrySendError::Full(r)) => ahead.push_back(*r),
                Err(TrySendError::Gone) => break,
            }
        } else {
            ahead.push_back(record);
        }
    }
    if let Some(r) = roles.as_mut()
        && let Err(e) = r.meetings.save_all()
    {
        tracing::error!(error = %e, "cannot save meetings at shutdown");
    }
    link.shutdown();
    // What waited is handed over; the store thread writes everything, then stops.
    for r in ahead {
        if records_tx.send(r).await.is_err() {
            break;
        }
    }
    drop((records_tx, writer_state, roles, change_roles, loaded_rx));
    let writer = Arc::try_unwrap(writer).map_err(|_| StoreError::Crashed)?;
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .map_err(|_| StoreError::Crashed)??;
    Ok(())
}

/// Whether a record is shed rather than kept, with `waiting` records ahead of it.
fn shed(record: &Record, waiting: usize) -> bool {
    match record {
        Record::Presence { .. } => waiting >= LOOKAHEAD_PRESENCE,
        Record::Telemetry { .. } | Record::Event { .. } | Record::Rejected { .. } => {
            waiting >= LOOKAHEAD
        }
        // Central's own declaration: made once, never sent again.
        Record::Lost { .. } => false,
    }
}

/// Answers a command's request (`meeting …`, `alarms ack`) as the holder of the host role.
/// What the request changed is handed to the store thread now, and the answer goes out once it
/// is written: an operation a chair was told is done survives a crash of central (and is there
/// for the instance that takes over). A store that is slow or away holds the answer up for a
/// second at most (the operation has taken effect for the sites anyway, and is written when the
/// store is back); a request that changed nothing is answered at once.
fn answer_command(
    roles: &mut Roles,
    link: &Link,
    state: &crate::store::StateWriter,
    log: &LogLimiter,
    client: &str,
    payload: &[u8],
) {
    let before = (roles.alarms.handed_over(), roles.rollouts.handed_over());
    let now_ms = unix_ms();
    let answers = control(roles, log, client, payload, now_ms);
    roles.gather_outbound();
    roles.meetings.lay_out(now_ms);
    roles.meetings.drain(link);
    let handed = (roles.alarms.handed_over(), roles.rollouts.handed_over());
    let changed = match roles.meetings.save() {
        Ok(saved) => saved || handed != before,
        Err(e) => {
            tracing::error!(error = %e, "cannot save meetings");
            false
        }
    };
    if !answers.is_empty() {
        let link = link.clone();
        let written = changed.then(|| state.written());
        tokio::spawn(async move {
            if let Some(written) = written {
                let _ = tokio::time::timeout(ANSWER_WAITS_FOR_STORE, written).await;
            }
            for answer in answers {
                if link.publish(answer).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// The answers to a request of a `cuntong` command (`meeting …`, `alarms ack`, `rollout …`),
/// for its response topic: one, or one a page for a request of every page; none for a request
/// that cannot be read.
fn control(
    roles: &mut Roles,
    log: &LogLimiter,
    client: &str,
    payload: &[u8],
    now_ms: u64,
) -> Vec<Message> {
    let req: Request = match serde_json::from_slice(payload) {
        Ok(r) => r,
        Err(e) => {
            if let Some(more) = log.allow("malformed request") {
                tracing::warn!(%client, error = %e, "ignoring a malformed request{more}");
            }
            return Vec::new();
        }
    };
    let mut answers = Vec::new();
    for result in answer_pages(req.body, |body| answer_one(roles, body, now_ms)) {
        let (error, body) = match result {
            Ok(body) => (None, body),
            Err(e) => (Some(e), ResponseBody::None),
        };
        let resp = Response {
            id: req.id,
            error,
            body,
        };
        match serde_json::to_vec(&resp) {
            Ok(bytes) => answers.push(Message::new(control_response(client), bytes).urgent()),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a response");
                break;
            }
        }
    }
    answers
}

/// The answer to one request (one page of a paged one).
fn answer_one(
    roles: &mut Roles,
    body: RequestBody,
    now_ms: u64,
) -> Result<ResponseBody, ControlError> {
    match body {
        RequestBody::AckAlarm { id, by } => roles
            .alarms
            .acknowledge(id, &by, now_ms)
            .map(|()| ResponseBody::None)
            .map_err(ControlError::Alarm),
        RequestBody::RolloutStart {
            id,
            version,
            region,
            rate_per_min,
            abort_failed_percent,
            min_executed,
            window,
            timeout_ms,
            command,
        } => roles
            .rollouts
            .start(
                cuntong_core::rollout::Plan {
                    id,
                    version,
                    region,
                    rate_per_min,
                    abort_failed_percent,
                    min_executed,
                    window,
                    timeout_ms,
                    // From the signed command.
                    expires_ms: 0,
                    created_ms: now_ms,
                },
                command.0,
                now_ms,
            )
            .map(|()| ResponseBody::None)
            .map_err(ControlError::Refused),
        RequestBody::Rollout { id, op } => roles
            .rollouts
            .apply(id, op, now_ms)
            .map(|()| ResponseBody::None)
            .map_err(ControlError::Refused),
        other => roles.meetings.answer(other, now_ms),
    }
}

/// What central confirms to terminals, the newest a terminal: their watermarks (the retained
/// `ack`), and, to a terminal whose announced numbering clashes with seqs held under its id,
/// the highest held (a notice).
#[derive(Debug, Default)]
struct Confirmations {
    marks: HashMap<TerminalId, Watermarks>,
    held: HashMap<TerminalId, Watermarks>,
}

impl Confirmations {
    fn extend(&mut self, more: Confirmations) {
        self.marks.extend(more.marks);
        self.held.extend(more.held);
    }
}

/// Confirmations of what the store thread wrote that the loop has not taken yet: at most one
/// entry a terminal however far the loop falls behind the writer.
#[derive(Debug, Default)]
struct StoredMarks {
    pending: std::sync::Mutex<Confirmations>,
    ready: tokio::sync::Notify,
}

impl StoredMarks {
    /// What a group advanced (after what earlier groups did), and the clashes it found.
    fn put(&self, advanced: Vec<(TerminalId, Watermarks)>, held: Vec<(TerminalId, Watermarks)>) {
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

    fn take(&self) -> Confirmations {
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
/// wait for the next tick.
fn confirm(link: &Link, pending: &mut Confirmations, stats: &CentralStats) {
    let held: Vec<(TerminalId, Watermarks)> = pending.held.iter().map(|(t, h)| (*t, *h)).collect();
    for (id, highest) in held {
        let notice = cuntong_core::alarm::TerminalNotice::Held { highest };
        let Ok(payload) = encode(&notice) else {
            continue;
        };
        let topic = Topic::terminal(&id, Channel::Notice).to_string();
        if link.try_publish(Message::new(topic, payload)).is_err() {
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
            .try_publish(Message::new(topic, payload).retained())
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
    use bytes::Bytes;

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
