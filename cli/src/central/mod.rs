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
//! Central keeps three connections to the broker, since a broker keeps one queue for each: the
//! *ingest link* takes the fleet's records and sends the confirmations; the *meeting link* takes
//! the sites' meeting uplinks and sends the meetings' states, plans and the roles' commands to
//! the boxes; the *control link* takes the staff's requests and sends the answers. A province
//! replaying its outboxes fills the ingest link's queue, a province joining a meeting the
//! meeting link's, and a chair's request waits behind neither.
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
use cuntong_terminal::tls::TlsFiles;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::host_lease::{HOST_ROLE, instance_name, lease_loop};
use crate::meetings::MeetingService;
use crate::store::{Database, Record, StoreError, Writer};
use cuntong_core::lease::{self, Answer, Lease, Tenure};

mod confirm;
mod event_loop;
mod options;
mod records;
mod requests;
mod roles;

pub use options::{CentralError, CentralOptions, CentralStats};
pub use records::{ingest_subscriptions, retained_junk, to_record};

use confirm::StoredMarks;
use event_loop::{Central, Events};
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
    let instance = instance_name();
    let started_ms = unix_ms();
    // An SQLite store has one central (its file lock): the role is its own, busy store or not.
    let lease = match opts.db {
        Database::Sqlite(_) => Lease::sole(),
        Database::Postgres(_) => opts.lease,
    };
    let (writer, first, asked) = open_store(
        &opts,
        &instance,
        lease,
        stored_marks.clone(),
        stats.clone(),
        stop.clone(),
    )
    .await?;
    let (tenure, roles) = first_tenure(lease, first, asked, &instance);
    let lease_rx = start_lease_thread(&opts, &instance, started_ms, lease, &stop)?;
    // Roles loaded after a takeover arrive here, with the epoch they were loaded for.
    // (One at a time: a takeover's loading waits until the loop took the one before.)
    let (loaded_tx, loaded_rx) = mpsc::channel::<(u64, Roles)>(1);
    if let Some(addr) = opts.http {
        start_dashboard(addr, &opts, &stop).await?;
    }
    let (ingest_link, incoming) = Link::start(ingest_link_options(&opts)?);
    let (meeting_link, meeting_uplinks) = Link::start(meeting_link_options(&opts)?);
    let (control_link, requests) = Link::start(control_link_options(&opts)?);
    let events = Events {
        stop,
        meeting_up: meeting_link.watch_connected(),
        loaded: loaded_rx,
        lease_answers: lease_rx,
        stored_marks,
        records: writer.records.clone(),
        requests,
        meeting_uplinks,
        incoming,
    };
    let central = Central {
        writer_state: writer.state.clone(),
        records: writer.records.clone(),
        writer: Arc::new(writer),
        opts,
        stats,
        instance,
        tenure,
        roles,
        ingest_link,
        meeting_link,
        control_link,
        loaded: loaded_tx,
        to_confirm: Default::default(),
        gaps: Default::default(),
        last_meeting_tick: 0,
        last_retention: 0,
        quiet_link_down_since: Default::default(),
        ahead: Default::default(),
        log: LogLimiter::default(),
    };
    central.serve(events).await?;
    Ok(())
}

/// The tenure after the first ask for the host lease (answered `first` when asked at `asked`),
/// and the roles if it holds them.
fn first_tenure(
    lease: Lease,
    first: Option<(u64, Roles)>,
    asked: u64,
    instance: &str,
) -> (Tenure, Option<Roles>) {
    let mut tenure = Tenure::new(lease);
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
    (tenure, roles)
}

/// Starts the thread that renews (or asks for) the host lease on the store; its answers, with
/// when each was asked, come out of the receiver.
fn start_lease_thread(
    opts: &CentralOptions,
    instance: &str,
    started_ms: u64,
    lease: Lease,
    stop: &CancellationToken,
) -> Result<mpsc::Receiver<(Answer, u64)>, StoreError> {
    let (lease_tx, lease_rx) = mpsc::channel(crate::host_lease::LEASE_ANSWERS);
    let (db, instance, stop) = (opts.db.clone(), instance.to_owned(), stop.clone());
    std::thread::Builder::new()
        .name("central-lease".to_owned())
        .spawn(move || lease_loop(db, instance, started_ms, lease, lease_tx, stop))
        .map_err(StoreError::Thread)?;
    Ok(lease_rx)
}

/// Opens the store and starts its writer thread, which hands each group's watermarks to
/// `stored` and counts it in `stats`; then asks for the host lease once, and reads the roles'
/// state if it is granted, before the link starts (from then on the roles only hand the
/// writer what to write). All of it off the runtime: the PostgreSQL client must not run on
/// it. Gives the writer, the epoch and roles if the lease was granted, and when it was asked.
async fn open_store(
    opts: &CentralOptions,
    instance: &str,
    lease: Lease,
    stored: Arc<StoredMarks>,
    stats: Arc<CentralStats>,
    stop: CancellationToken,
) -> Result<(Writer, Option<(u64, Roles)>, u64), StoreError> {
    let (opts, instance) = (opts.clone(), instance.to_owned());
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let store = opts.db.open_for_central()?;
        let mut reader = opts.db.open()?;
        let writer = Writer::start(
            store,
            move |a| {
                stored.put(a.watermarks, a.numbering_clashes);
                stats.stored.fetch_add(a.stored, Ordering::Relaxed);
                stats.duplicates.fetch_add(a.duplicates, Ordering::Relaxed);
                stats.values.fetch_add(a.values, Ordering::Relaxed);
            },
            stop,
        )?;
        let asked = unix_ms();
        let first = match reader.take_lease(HOST_ROLE, &instance, lease.ttl_ms)? {
            Some(epoch) => {
                let _in_runtime = runtime.enter();
                Some((epoch, Roles::load(reader.as_ref(), &opts, &writer, epoch)?))
            }
            None => None,
        };
        Ok((writer, first, asked))
    })
    .await
    .map_err(|_| StoreError::Crashed)?
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

/// The link central takes the fleet's records through and confirms them on.
fn ingest_link_options(opts: &CentralOptions) -> Result<LinkOptions, CentralError> {
    let mut link_opts = common_link_options(opts, None)?;
    link_opts.subscriptions = ingest_subscriptions(opts.share_ingest.as_deref());
    // A fleet replaying its outboxes may outrun the loop for a while: the link keeps reading
    // (and answering the broker) into a buffer of its own meanwhile.
    link_opts.incoming_buffer = 64 << 20;
    Ok(link_opts)
}

/// The link the sites' meeting uplinks come in on, and the roles' bulk goes out on (media
/// plans and relay tables, commands to the boxes); what the sites must hear at once (meeting
/// states, answers) goes on the control link.
fn meeting_link_options(opts: &CentralOptions) -> Result<LinkOptions, CentralError> {
    let mut link_opts = common_link_options(opts, Some("meeting"))?;
    link_opts.subscriptions = MeetingService::subscriptions();
    // A province's join storm: 54,000 joins, a few MiB.
    link_opts.incoming_buffer = 16 << 20;
    // ... and 54,000 plans out. A province broker busy with the storm acknowledged a thousand
    // in flight in about half a second: 18,000 to 41,000 plans waited in central, going out at
    // 1,400 to 2,000 a second, while the sites repeated their joins.
    link_opts.inflight = 10_000;
    Ok(link_opts)
}

/// The link the staff's requests come in on and their answers go out on, with what a
/// meeting's sites must hear at once (states, the roll call, answers): a broker reads a
/// connection's messages in order, and on the meeting link these would wait behind the
/// thousands of plans central has in flight there in a province's join storm.
fn control_link_options(opts: &CentralOptions) -> Result<LinkOptions, CentralError> {
    let mut link_opts = common_link_options(opts, Some("control"))?;
    link_opts.subscriptions = vec![control_request("+")];
    Ok(link_opts)
}

/// What central's links have in common; `link` names one of the links beyond the ingest link
/// ([`crate::ca::LINKS`]), which connect with identities of their own and say nothing of a
/// broker the ingest link says it of.
fn common_link_options(
    opts: &CentralOptions,
    link: Option<&str>,
) -> Result<LinkOptions, CentralError> {
    let client_id = match link {
        Some(l) => crate::ca::link_identity(&opts.client_id, l),
        None => opts.client_id.clone(),
    };
    let mut link_opts = LinkOptions::new(client_id, opts.broker.clone());
    link_opts.quiet_failures = link.is_some();
    link_opts.subscribe_qos = opts.subscribe_qos;
    link_opts.incoming_capacity = 1024;
    link_opts.queue_capacity = 8192;
    // What central sends at QoS 1 (a province's media plans and confirmations) does not wait
    // for the broker's acknowledgement of every 32nd.
    link_opts.inflight = 1_000;
    // A ping's answer waits behind what the broker sent before it: a province's storm must
    // not cost central its connections.
    link_opts.keep_alive = Duration::from_secs(30);
    link_opts.tls = opts
        .tls
        .as_deref()
        .map(|dir| {
            let dir = link.map_or(dir.to_path_buf(), |l| dir.join(l));
            cuntong_terminal::tls::client_config(&TlsFiles::in_dir(&dir))
        })
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
