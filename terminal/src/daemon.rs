//! The terminal daemon: samples health and sensors, batches samples, writes every batch and
//! event to the durable outbox, and delivers the outbox over the link until central confirms
//! it stored each record, while answering local status requests.
//!
//! [`run`] is the whole terminal; the binary and the simulator both call it, the simulator with
//! simulated [`Hardware`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod commands;
mod handlers;
mod records;

use handlers::Downlinks;
use records::delivery_of;

use cuntong_core::delivery::Delivery;
use cuntong_core::envelope::{Event, Stream, encode};
use cuntong_core::presence::Presence;
use cuntong_core::sampler::{Batcher, Sampler};
use cuntong_core::telemetry::Metric;
use cuntong_core::topic::{Channel, Topic};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::conference::{Conference, Console, MediaEngine};
use crate::config::TerminalConfig;
use crate::hardware::Power;
use crate::health::HealthSource;
use crate::hj212::{self, Hj212Stats, HjSample};
use crate::link::{Link, LinkOptions, Message, unix_ms};
use crate::listen::Descriptors;
use crate::outbox::{Outbox, OutboxError};
use crate::sensors::{Sensor, SensorError};
use crate::status::{self, RECENT_ERRORS, SensorReport, SharedStatus, StatusReport};
use crate::throttle::LogLimiter;

/// What every cuntong binary does first: logs to stderr (filtered by `CUNTONG_LOG`, else
/// `default_log`; coloured only when stderr is a terminal, so files, pipes and journald get
/// plain text) and a tokio runtime (`workers` threads, or one per core).
pub fn process_runtime(
    default_log: &str,
    workers: Option<usize>,
) -> std::io::Result<tokio::runtime::Runtime> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CUNTONG_LOG")
                .unwrap_or_else(|_| default_log.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(n);
    }
    builder
        .enable_all()
        .build()
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot start the runtime: {e}")))
}

/// Resolves on Ctrl-C or SIGTERM: how every cuntong binary is asked to stop.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// The software version of this build.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why [`run`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// `stop` fired (or the link's task ended).
    Asked,
    /// A new build is installed on trial: start again through the launcher.
    ForUpdate,
}

/// What the terminal measures with.
pub struct Hardware {
    pub sensors: Vec<(Box<dyn Sensor>, Duration)>,
    pub health: Box<dyn HealthSource>,
    /// What `reboot` does.
    pub power: Box<dyn Power>,
    /// Sends and receives meeting media.
    pub media: Box<dyn MediaEngine>,
    /// The people at the box (buttons; the simulator's behaviour).
    pub console: Box<dyn Console>,
    /// The duty button, if the box has one.
    pub duty_button: Option<crate::duty_button::DutyButton>,
}

impl std::fmt::Debug for Hardware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.sensors.iter().map(|(s, _)| s.name()).collect();
        f.debug_struct("Hardware").field("sensors", &names).finish()
    }
}

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("cannot encode a message: {0}")]
    Encode(#[from] cuntong_core::envelope::EncodeError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("command key: {0}")]
    CommandKey(#[from] crate::commands::GuardError),
    #[error("release key: {0}")]
    ReleaseKey(crate::commands::GuardError),
}

/// The presence record of this run; `online: false` is the last will.
fn presence(cfg: &TerminalConfig, started_ms: u64, online: bool) -> Result<Vec<u8>, RunError> {
    Ok(encode(&Presence {
        online,
        version: cfg.launched.version(),
        started_ms,
        keep_alive_s: cfg.keep_alive.as_secs().min(u64::from(u16::MAX)) as u16,
    })?)
}

/// The link options of a terminal: identity, will, presence, subscriptions.
pub fn link_options(cfg: &TerminalConfig, started_ms: u64) -> Result<LinkOptions, RunError> {
    let presence_topic = Topic::terminal(&cfg.id, Channel::Presence).to_string();
    let mut opts = LinkOptions::new(cfg.id.to_string(), cfg.broker.clone());
    opts.keep_alive = cfg.keep_alive;
    opts.subscribe_qos = cfg.subscribe_qos;
    opts.queue_capacity = cfg.queue_capacity;
    opts.tls = cfg
        .tls
        .as_ref()
        .map(crate::tls::client_config)
        .transpose()?;
    opts.last_will =
        Some(Message::new(presence_topic.clone(), presence(cfg, started_ms, false)?).retained());
    opts.on_connect =
        vec![Message::new(presence_topic, presence(cfg, started_ms, true)?).retained()];
    opts.subscriptions = [Channel::Command, Channel::Notice]
        .into_iter()
        .map(|c| Topic::terminal(&cfg.id, c))
        .chain(Topic::broadcasts_for(cfg.id.site()))
        .map(|t| t.to_string())
        .collect();
    // Retained and whole in every copy (the watermarks, the meetings' states and screens), or
    // answered again when asked again (the meeting downlink: a site repeats its join until its
    // plan comes).
    opts.live_subscriptions = [Channel::Ack, Channel::MeetingDown]
        .into_iter()
        .map(|c| Topic::terminal(&cfg.id, c).to_string())
        .chain(Conference::subscriptions(&cfg.id))
        .collect();
    Ok(opts)
}

struct SensorResult {
    index: usize,
    sensor: Box<dyn Sensor>,
    result: Result<Vec<(Metric, f64)>, SensorError>,
}

/// Runs the terminal until `stop` fires, or until a new build wants the box.
pub async fn run(
    cfg: TerminalConfig,
    hardware: Hardware,
    stop: CancellationToken,
) -> Result<Stopped, RunError> {
    let started_ms = unix_ms();
    let (outbox, opened) = Outbox::open(&cfg.data_dir.join("outbox"), cfg.outbox)?;
    let delivery = delivery_of(&outbox, cfg.delivery, started_ms);
    let (link, mut incoming) = Link::start(link_options(&cfg, started_ms)?);
    let mut link_up = link.watch_connected();
    let mut keepalives = link.watch_keepalives();
    let topics = Downlinks::of(&cfg.id);
    let guard = match &cfg.commands {
        Some(c) => Some(
            crate::commands::read_public_key(&c.key)
                .and_then(|key| crate::commands::CommandGuard::open(cfg.id, key, &cfg.data_dir))?,
        ),
        None => None,
    };
    let (updates, mut update_notes) = match &cfg.update {
        Some(u) => {
            let ca = cfg.tls.as_ref().map(|t| t.ca.clone());
            let (updates, notes) = crate::update::agent::Updates::open(
                u.clone(),
                &cfg.data_dir,
                ca,
                cfg.launched.trial,
            )
            .map_err(RunError::ReleaseKey)?;
            (Some(updates), Some(notes))
        }
        None => (None, None),
    };
    let conference = Conference::new(
        cfg.id,
        cfg.meeting.clone(),
        hardware.media,
        hardware.console,
    );
    let listening = conference
        .relay_addr()
        .map(|a| ("relay".to_owned(), a.to_string()))
        .into_iter()
        .collect();
    let mut daemon = Daemon {
        conference,
        guard,
        updates,
        trial_started_seq: None,
        power: hardware.power,
        tls_episodes_seen: 0,
        outbox,
        delivery,
        sampler: Sampler::new(cfg.health_interval.as_millis() as u64),
        batcher: Batcher::new(cfg.batch_max, cfg.batch_age.as_millis() as u64),
        status: Arc::new(Mutex::new(StatusReport {
            terminal: cfg.id.to_string(),
            version: cfg.launched.version(),
            started_ms,
            broker: cfg.broker.to_string(),
            listening,
            ..StatusReport::default()
        })),
        link: link.clone(),
        log: LogLimiter::default(),
        outbox_reported: None,
        cfg,
    };
    daemon.apply_sampling();
    // Connections to the HJ 212 listener take what the process's open-files limit leaves
    // after a reserve for the link, the outbox, media and the status socket.
    let descriptors = Descriptors::process();

    let (requests_tx, mut requests) = mpsc::channel::<status::OperatorCall>(8);
    // A SIP gateway joins and leaves meetings for its room system as an operator would.
    let sip_task = daemon.cfg.sip.clone().map(|sip| {
        let (requests, stop) = (requests_tx.clone(), stop.clone());
        let tag = format!("{:08x}", rand::random::<u32>());
        let (dials, to_dial) = mpsc::channel(4);
        daemon.conference.set_gateway(dials);
        tokio::spawn(async move {
            if let Err(e) = crate::sip::serve(sip, tag, requests, to_dial, stop).await {
                tracing::error!(error = %e, "the SIP gateway cannot start");
            }
        })
    });
    let status_task = daemon.cfg.status_socket.clone().map(|path| {
        let (status, link, stop) = (daemon.status.clone(), link.clone(), stop.clone());
        // Its clients come out of the reserve, so no other listener can starve it.
        let descriptors = Descriptors::new(status::MAX_CLIENTS);
        tokio::spawn(async move {
            if let Err(e) =
                status::serve(&path, status, link, requests_tx, &descriptors, stop).await
            {
                tracing::warn!(path = %path.display(), error = %e, "status socket unavailable");
            }
        })
    });

    if opened.records > 0 {
        tracing::info!(
            records = opened.records,
            "outbox recovered unconfirmed records"
        );
    }
    for (path, at, cut) in &opened.damaged {
        let msg = format!(
            "outbox segment {} damaged at byte {at}: {cut} bytes discarded",
            path.display()
        );
        tracing::warn!("{msg}");
        daemon.with_status(|s| push_error(s, started_ms, msg));
    }
    // A new outbox numbers from the clock: central learns where, before anything else.
    for &(stream, first) in &opened.numbering_from {
        tracing::info!(
            stream = stream.as_str(),
            first,
            "new outbox: numbering starts at the clock"
        );
        daemon.event(Event::NumberingFrom { stream, first })?;
    }
    daemon.report_dropped(&opened.skipped, "damaged outbox tail: may have held")?;
    for r in &opened.repaired {
        tracing::warn!(
            stream = r.stream.as_str(),
            watermark = r.watermark,
            assigned = r.assigned,
            "the outbox held a watermark beyond the last seq ever sent (a forged acknowledgement): set back, its records are sent again"
        );
        daemon.event(Event::AckRefused {
            stream: r.stream,
            watermark: r.watermark,
            assigned: r.assigned,
        })?;
    }
    let started_seq = daemon.outbox.next_seq(Stream::Events);
    daemon.event(Event::Started {
        version: daemon.cfg.launched.version(),
    })?;
    if let Some(u) = daemon.updates.as_mut() {
        if u.on_trial() {
            // Healthy means: reached the broker and central stored what this build sent.
            daemon.trial_started_seq = Some(started_seq);
        }
        for e in u.on_start() {
            daemon.event(e)?;
        }
    }
    match crate::integrity::on_start(&daemon.cfg) {
        Ok(events) => {
            for e in events {
                tracing::warn!(event = ?e, "reported to central");
                daemon.event(e)?;
            }
        }
        Err(e) => tracing::warn!(error = %e, "start-up integrity check failed"),
    }

    // Data loggers, if this terminal bridges HJ 212.
    let hj_stats = Arc::new(Hj212Stats::default());
    let (hj_tx, mut hj_rx) = mpsc::channel::<Vec<HjSample>>(64);
    if let Some(hj) = daemon.cfg.hj212.clone() {
        let (stats, stop) = (hj_stats.clone(), stop.clone());
        let descriptors = descriptors.clone();
        let status = daemon.status.clone();
        let on_listening = move |addr: std::net::SocketAddr| {
            if let Ok(mut s) = status.lock() {
                s.listening.insert("hj212".to_owned(), addr.to_string());
            }
        };
        tokio::spawn(async move {
            let listen = hj.listen;
            if let Err(e) = hj212::serve(hj, hj_tx, stats, &descriptors, stop, on_listening).await {
                tracing::error!(?listen, error = %e, "HJ 212 listener failed");
            }
        });
    } else {
        drop(hj_tx);
    }

    // Sensors are read on the blocking pool, one read at a time each, and come back here.
    let (results_tx, mut results) = mpsc::channel::<SensorResult>(8);
    let mut intervals = Vec::new();
    let mut idle: Vec<Option<Box<dyn Sensor>>> = Vec::new();
    for (sensor, every) in hardware.sensors {
        daemon.with_status(|s| {
            s.sensors.push(SensorReport {
                name: sensor.name().to_owned(),
                ..SensorReport::default()
            })
        });
        intervals.push(sampling_tick(every));
        idle.push(Some(sensor));
    }
    let mut health = hardware.health;
    let mut health_tick = sampling_tick(daemon.cfg.health_interval);
    // This box's moment in each sampling period (see `to_slot`).
    let slot = cuntong_core::backoff::spread(&daemon.cfg.id);
    let sync_every = match daemon.cfg.outbox.sync {
        crate::outbox::SyncPolicy::Interval(d) => d.max(Duration::from_millis(10)),
        crate::outbox::SyncPolicy::EveryRecord => Duration::from_secs(3600),
    };
    let mut sync_tick = tokio::time::interval(sync_every);
    sync_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_meeting_tick = tokio::time::Instant::now();
    let mut button = hardware.duty_button;
    // The button's timing is monotonic: a clock step must not swallow a call for help.
    let button_clock = std::time::Instant::now();
    let mut button_tick = tokio::time::interval(crate::duty_button::POLL);
    button_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // Under systemd: ready now (the config was valid, the outbox is open), then a ping from
    // this loop, so that a loop that hangs is restarted.
    let mut service = crate::service::Service::from_env();
    service.ready(&format!("terminal {}", daemon.cfg.id));

    let mut stopped = Stopped::Asked;
    loop {
        // A terminal wakes only when it has something to do: a province's fleet of simulated
        // terminals on one box, and a real box's power budget, both notice.
        let now = unix_ms();
        let meeting_at = daemon.conference.next_tick(last_meeting_tick, now);
        let ready: Vec<bool> = idle.iter().map(Option::is_some).collect();
        let deadline = [daemon.batcher.deadline(), daemon.delivery.next_wakeup(now)]
            .into_iter()
            .flatten()
            .min()
            // No deadline rather than a panic for one past what an Instant holds.
            .and_then(|d| {
                tokio::time::Instant::now()
                    .checked_add(Duration::from_millis(d.saturating_sub(now)))
            });
        tokio::select! {
            _ = stop.cancelled() => {
                service.stopping();
                break;
            }
            () = service.watchdog() => {}
            changed = link_up.changed() => {
                if changed.is_err() {
                    break;
                }
                daemon.on_link(*link_up.borrow_and_update());
            }
            _ = sync_tick.tick(), if daemon.outbox.unsynced() => daemon.outbox.flush()?,
            _ = button_tick.tick(), if button.is_some() => {
                if let Some(b) = button.as_mut()
                    && b.poll(button_clock.elapsed().as_millis() as u64)
                {
                    daemon.on_duty_button(b.kind.clone(), b.text.clone());
                }
            }
            // The meetings' clock: what is due, and the link's tier after every keep-alive.
            _ = sleep_until(meeting_at) => {
                last_meeting_tick = tokio::time::Instant::now();
                daemon.on_meeting_tick();
            }
            Ok(()) = keepalives.changed() => {
                last_meeting_tick = tokio::time::Instant::now();
                daemon.on_meeting_tick();
            }
            Some((req, answer)) = requests.recv() => {
                let _ = answer.send(daemon.on_request(req));
            }
            _ = health_tick.tick() => {
                to_slot(&mut health_tick, slot);
                daemon.on_health(health.read(), &hj_stats);
            }
            i = next_tick(&mut intervals, &ready) => {
                to_slot(&mut intervals[i], slot);
                if let Some(mut sensor) = idle[i].take() {
                    let tx = results_tx.clone();
                    tokio::task::spawn_blocking(move || {
                        let result = sensor.read();
                        let _ = tx.blocking_send(SensorResult { index: i, sensor, result });
                    });
                }
            }
            Some(r) = results.recv() => {
                let name = r.sensor.name().to_owned();
                idle[r.index] = Some(r.sensor);
                daemon.on_sensor(r.index, name, r.result)?;
            }
            Some(batch) = hj_rx.recv() => daemon.logged(batch),
            _ = sleep_until(deadline) => {}
            Some(note) = next_note(&mut update_notes) => match note {
                crate::update::agent::Note::Report(e) => daemon.event(e)?,
                crate::update::agent::Note::Restart => {
                    tracing::info!("restarting into the new build");
                    stopped = Stopped::ForUpdate;
                    service.stopping();
                    // Everything this run started (status socket, HJ 212 listener) stops too.
                    stop.cancel();
                    break;
                }
            },
            msg = incoming.recv() => match msg {
                Some(m) => daemon.on_message(&m, &topics)?,
                None => break,
            },
        }
        if health_tick.period() != daemon.cfg.health_interval {
            health_tick = sampling_tick(daemon.cfg.health_interval);
        }
        daemon.send_due()?;
    }

    // Orderly stop: record what is batched (it is sent after the restart if not now), make
    // the outbox durable, say goodbye (a clean disconnect sends no will).
    daemon.flush(true)?;
    daemon.pump();
    daemon.outbox.settle()?;
    let offline = Message::new(
        Topic::terminal(&daemon.cfg.id, Channel::Presence).to_string(),
        presence(&daemon.cfg, started_ms, false)?,
    )
    .retained();
    if link.try_publish(offline).is_ok() {
        let sent = link.status().published;
        let drained = async {
            while link.is_connected() && link.status().published <= sent {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), drained).await;
    }
    link.shutdown();
    crate::integrity::on_clean_stop(&daemon.cfg);
    if let Some(t) = status_task {
        let _ = t.await;
    }
    if let Some(t) = sip_task {
        t.abort();
    }
    Ok(stopped)
}

async fn next_note(
    notes: &mut Option<mpsc::Receiver<crate::update::agent::Note>>,
) -> Option<crate::update::agent::Note> {
    match notes {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// A sampling tick of period `every`: its first tick at once (a box reads its sensors as it
/// starts), the next ones at the box's slot (see [`to_slot`]).
fn sampling_tick(every: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tick
}

/// Moves `tick`'s next tick to this box's moment of its period on the wall clock
/// ([`cuntong_core::backoff::slot_delay_ms`] of `slot`): a county's boxes powered on together
/// report spread over the period, not all at once for as long as they run.
fn to_slot(tick: &mut tokio::time::Interval, slot: u64) {
    let every = u64::try_from(tick.period().as_millis()).unwrap_or(u64::MAX);
    let delay = cuntong_core::backoff::slot_delay_ms(slot, every, unix_ms());
    tick.reset_after(Duration::from_millis(delay));
}

/// Waits for the first sensor whose interval ticks and which is not being read.
async fn next_tick(intervals: &mut [tokio::time::Interval], ready: &[bool]) -> usize {
    if intervals.is_empty() {
        return std::future::pending().await;
    }
    std::future::poll_fn(|cx| {
        for (i, t) in intervals.iter_mut().enumerate() {
            if ready[i] && t.poll_tick(cx).is_ready() {
                return std::task::Poll::Ready(i);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

struct Daemon {
    cfg: TerminalConfig,
    conference: Conference,
    guard: Option<crate::commands::CommandGuard>,
    updates: Option<crate::update::agent::Updates>,
    /// On trial: the seq of this run's first event; central storing it proves the build.
    trial_started_seq: Option<u64>,
    power: Box<dyn Power>,
    /// TLS failure episodes of the link already reported.
    tls_episodes_seen: u64,
    outbox: Outbox,
    delivery: Delivery,
    sampler: Sampler,
    batcher: Batcher,
    status: SharedStatus,
    link: Link,
    /// Lines logged per incoming message (a flood of them costs a line a minute).
    log: LogLimiter,
    /// The outbox's figures as the status report last had them.
    outbox_reported: Option<[u64; OUTBOX_FIGURES]>,
}

/// The outbox's figures in the status report: depth, bytes and dropped, and for each stream
/// its first, next and confirmed seq.
const OUTBOX_FIGURES: usize = 3 + 3 * Stream::ALL.len();

impl Daemon {
    /// Updates follow the meetings, and a build on trial commits once it is healthy: the
    /// broker reached and central has stored this run's first event.
    fn update_tick(&mut self) -> Result<(), RunError> {
        let Some(u) = self.updates.as_mut() else {
            return Ok(());
        };
        u.set_pace(self.conference.update_pace(unix_ms()));
        if let Some(seq) = self.trial_started_seq
            && self.link.is_connected()
            && self.outbox.confirmed(Stream::Events) >= seq
        {
            self.trial_started_seq = None;
            if let Some(e) = u.healthy() {
                self.event(e)?;
            }
        }
        Ok(())
    }

    /// A release offered by central (through a signed command).
    fn update_offer(
        &mut self,
        offer: &cuntong_core::update::Offer,
    ) -> Result<(bool, String), RunError> {
        let Some(u) = self.updates.as_mut() else {
            return Ok((
                false,
                "this terminal has no [update] release key".to_owned(),
            ));
        };
        match u.offer(offer.clone()) {
            Ok(answer) => Ok((true, answer)),
            Err(reason) => {
                // The version as the offer names it (not trusted, only to name the report).
                let version = offer
                    .release
                    .manifest()
                    .map(|m| m.version)
                    .unwrap_or_default();
                self.event(Event::Update {
                    rollout: offer.rollout,
                    version,
                    stage: cuntong_core::update::Stage::Failed,
                    bytes: 0,
                    reason: reason.to_string(),
                })?;
                Ok((false, reason.to_string()))
            }
        }
    }

    /// The operator raised a duty report: an event, ahead of all telemetry in the outbox.
    fn duty_report(&mut self, kind: String, text: String) -> Result<String, status::Refusal> {
        let report = unix_ms();
        self.event(Event::DutyReport {
            report,
            kind: kind.clone(),
            text: text.clone(),
        })
        .map_err(status::Refusal::Report)?;
        self.with_status(|s| {
            if s.duty_reports.len() == status::DUTY_REPORTS_KEPT {
                s.duty_reports.remove(0);
            }
            s.duty_reports.push(status::DutyReportStatus {
                report,
                kind,
                text,
                raised_ms: report,
                acknowledged_by: None,
                acknowledged_ms: None,
            });
        });
        self.pump();
        Ok(format!(
            "duty report #{report} recorded; it goes to the duty office first (see status)"
        ))
    }

    /// A notice from central (a duty report acknowledged).
    fn notice(&mut self, payload: &[u8]) {
        use cuntong_core::alarm::TerminalNotice;
        match TerminalNotice::decode(payload) {
            Ok(TerminalNotice::Held { highest }) => {
                for stream in Stream::ALL {
                    let h = highest.get(stream);
                    if self.delivery.clashes(stream, h)
                        && let Err(e) = self.renumber(stream, h, "central")
                    {
                        tracing::warn!(error = %e, "renumbering failed");
                    }
                }
            }
            Ok(TerminalNotice::DutyReportAcknowledged { report, by, at_ms }) => {
                tracing::info!(report, %by, "duty report acknowledged");
                self.with_status(|s| {
                    if let Some(d) = s.duty_reports.iter_mut().find(|d| d.report == report) {
                        d.acknowledged_by = Some(by);
                        d.acknowledged_ms = Some(at_ms);
                    }
                });
            }
            Ok(_) => {}
            Err(e) => {
                if let Some(more) = self.log.allow("malformed notice") {
                    tracing::warn!(error = %e, "ignoring a malformed notice{more}");
                }
            }
        }
    }

    /// A meeting message (state, downlink): handled here; false if it is not one.
    fn conference_message(&mut self, m: &crate::link::Incoming) -> bool {
        match self.conference.on_message(&m.topic, &m.payload, unix_ms()) {
            Some(msgs) => {
                self.meeting_out(msgs);
                true
            }
            None => false,
        }
    }

    /// Publishes what the participant says and refreshes the meetings in the status report.
    /// Meeting messages are live: a lost one is repeated by the next heartbeat, so they go
    /// straight to the link, not through the outbox.
    fn meeting_out(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            if self.link.try_publish(m).is_err() {
                tracing::debug!("link queue full: meeting message left to the next heartbeat");
            }
        }
        let report = self.conference.report();
        self.with_status(|s| s.meetings = report);
    }

    /// (Re)builds the sampler from the configured interval and per-metric policies.
    fn apply_sampling(&mut self) {
        self.sampler = Sampler::new(self.cfg.health_interval.as_millis() as u64);
        for (metric, policy) in &self.cfg.metrics {
            self.sampler.set_policy(metric.clone(), policy.clone());
        }
    }

    /// Reports TLS failures of the link as a security event, once per episode (a link that
    /// keeps failing the same way is not a new event at each retry).
    fn check_tls(&mut self) -> Result<(), RunError> {
        let (episodes, detail) = self.link.tls_failures();
        if episodes <= self.tls_episodes_seen {
            return Ok(());
        }
        self.tls_episodes_seen = episodes;
        tracing::warn!(error = %detail, "TLS failure on the link");
        self.with_status(|s| push_error(s, unix_ms(), format!("TLS failure: {detail}")));
        self.event(Event::TlsFailure { detail })
    }

    fn with_status(&self, f: impl FnOnce(&mut StatusReport)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }

    fn offer(&mut self, readings: &[(Metric, f64)], now: u64) {
        let mut kept = Vec::new();
        for (metric, value) in readings {
            if let Some(v) = self.sampler.offer(metric, *value, now) {
                kept.push((metric.name().to_owned(), v.to_f64()));
                self.batcher.push(now, metric.clone(), v, None);
            }
        }
        self.with_status(|s| s.latest.extend(kept));
    }

    /// Values from a data logger: exact, with the logger's time and flags; no sampling policy
    /// applies (the logger already decided what to report).
    fn logged(&mut self, samples: Vec<HjSample>) {
        let mut latest = Vec::with_capacity(samples.len());
        for s in samples {
            latest.push((s.metric.name().to_owned(), s.value.to_f64()));
            self.batcher.push(s.time_ms, s.metric, s.value, s.quality);
        }
        self.with_status(|st| st.latest.extend(latest));
    }

    /// Records a good read; true if the sensor had been failing.
    fn sensor_ok(&self, index: usize, readings: &[(Metric, f64)], now: u64) -> bool {
        let mut recovered = false;
        self.with_status(|s| {
            if let Some(r) = s.sensors.get_mut(index) {
                recovered = !r.ok && r.last_error.is_some();
                r.ok = true;
                r.last_read_ms = Some(now);
                r.last_error = None;
                r.readings = readings
                    .iter()
                    .map(|(m, v)| (m.name().to_owned(), *v))
                    .collect::<BTreeMap<_, _>>();
            }
        });
        recovered
    }

    /// Records a failed read; true if the sensor had been fine (or never read).
    fn sensor_failed(&self, index: usize, detail: &str, now: u64) -> bool {
        let mut first = false;
        self.with_status(|s| {
            if let Some(r) = s.sensors.get_mut(index) {
                first = r.last_error.is_none();
                r.ok = false;
                r.last_error = Some(detail.to_owned());
            }
            push_error(s, now, detail.to_owned());
        });
        first
    }
}

fn push_error(s: &mut StatusReport, now: u64, msg: String) {
    if s.recent_errors.len() == RECENT_ERRORS {
        s.recent_errors.remove(0);
    }
    s.recent_errors.push((now, msg));
}
