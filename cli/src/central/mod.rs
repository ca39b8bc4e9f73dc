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
use std::sync::atomic::Ordering;
use std::time::Duration;

use cuntong_core::topic::control_request;
use cuntong_terminal::link::{Link, LinkOptions, unix_ms};
use cuntong_terminal::throttle::LogLimiter;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::host_lease::{HOST_ROLE, instance_name, lease_loop};
use crate::meetings::MeetingService;
use crate::store::{Database, Record, StoreError, TrySendError, Writer};
use cuntong_core::lease::{self, Answer, Lease, Tenure};

mod confirm;
mod options;
mod records;
mod requests;
mod roles;

pub use options::{CentralError, CentralOptions, CentralStats};
pub use records::{ingest_subscriptions, retained_junk, to_record};

use confirm::{Confirmations, StoredMarks, confirm};
use records::clear_retained_junk;
use requests::answer_command;
use roles::Roles;

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
        start_dashboard(addr, &opts, &stop).await?;
    }
    let (link, mut incoming) = Link::start(link_options(&opts)?);

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

/// Serves the dashboard on `addr` (its own task), once bound; the address it bound is said on
/// stderr in one plain line for operators and scripts (port 0 picks a free port).
async fn start_dashboard(
    addr: std::net::SocketAddr,
    opts: &CentralOptions,
    stop: &CancellationToken,
) -> Result<(), CentralError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| CentralError::Http { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| CentralError::Http { addr, source })?;
    let scheme = if opts.http_access.tls.is_some() {
        "https"
    } else {
        "http"
    };
    eprintln!("dashboard: {scheme}://{bound}/");
    let (db, stop, access) = (opts.db.clone(), stop.clone(), opts.http_access.clone());
    let artifacts = opts
        .release_cache
        .clone()
        .unwrap_or_else(|| crate::artifacts::default_cache(&db));
    tokio::spawn(async move {
        if let Err(e) = crate::dashboard::serve_on(listener, db, artifacts, access, stop).await {
            tracing::error!(error = %e, "the dashboard stopped");
        }
    });
    Ok(())
}

/// The link central's loop reads the fleet through.
fn link_options(opts: &CentralOptions) -> Result<LinkOptions, CentralError> {
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
    // What central sends at QoS 1 (a province's media plans, meeting states, commands) does
    // not wait for the broker's acknowledgement of every 32nd.
    link_opts.inflight = 1_000;
    // A ping's answer waits behind what the broker sent before it: a province's join storm
    // must not cost central its connection (and the chair its answers).
    link_opts.keep_alive = Duration::from_secs(30);
    link_opts.tls = opts
        .tls
        .as_ref()
        .map(cuntong_terminal::tls::client_config)
        .transpose()?;
    Ok(link_opts)
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
