//! The terminal daemon: samples health and sensors, batches samples, writes every batch and
//! event to the durable outbox, and delivers the outbox over the link until central confirms
//! it stored each record, while answering local status requests.
//!
//! [`run`] is the whole terminal; the binary and the simulator both call it, the simulator with
//! simulated [`Hardware`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cuntong_core::delivery::{Confirmation, Delivery, Watermarks};
use cuntong_core::envelope::{Envelope, Event, Stream, encode};
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
use crate::outbox::{DroppedRange, Numbering, Outbox, OutboxError};
use crate::sensors::{Sensor, SensorError};
use crate::status::{self, OutboxReport, RECENT_ERRORS, SensorReport, SharedStatus, StatusReport};
use crate::throttle::LogLimiter;

/// What every cuntong binary does first: logs to stderr (filtered by `CUNTONG_LOG`, else
/// `default_log`; coloured only when stderr is a terminal, so files, pipes and journald get
/// plain text) and a tokio runtime (`workers` threads, or one per core).
pub fn process_runtime(
    default_log: &str,
    workers: Option<usize>,
) -> Result<tokio::runtime::Runtime, String> {
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
        .map_err(|e| format!("cannot start the runtime: {e}"))
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

/// How often the meeting clock runs at the least (the link's tier is followed); more often
/// while the signalling has something due (status heartbeats, join retries) and while a media
/// engine adapts to the link ([`crate::conference::Conference::next_tick`]).
const MEETING_IDLE_TICK: Duration = Duration::from_secs(5);

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
    opts.subscriptions = [
        Channel::Command,
        Channel::Ack,
        Channel::MeetingDown,
        Channel::Notice,
    ]
    .into_iter()
    .map(|c| Topic::terminal(&cfg.id, c))
    .chain(Topic::broadcasts_for(cfg.id.site()))
    .map(|t| t.to_string())
    .chain(Conference::subscriptions(&cfg.id))
    .collect();
    Ok(opts)
}

struct SensorResult {
    index: usize,
    sensor: Box<dyn Sensor>,
    result: Result<Vec<(Metric, f64)>, SensorError>,
}

/// The delivery state of what `outbox` holds (at start, and after a renumbering): its
/// numbering, confirmations, waiting records and hold.
fn delivery_of(
    outbox: &Outbox,
    cfg: cuntong_core::delivery::DeliveryConfig,
    now_ms: u64,
) -> Delivery {
    let mut delivery = Delivery::new(cfg, now_ms);
    for stream in Stream::ALL {
        delivery.assigned_upto(stream, outbox.next_seq(stream).saturating_sub(1));
        delivery.confirmed(stream, outbox.confirmed(stream));
        for (seq, _) in outbox.pending(stream) {
            delivery.queued(stream, seq);
        }
    }
    if let Some(events) = outbox.holding() {
        delivery.hold(Stream::Events, Some(events));
        let telemetry = outbox.first_seq(Stream::Telemetry).saturating_sub(1);
        delivery.hold(Stream::Telemetry, Some(telemetry));
    }
    delivery
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
        cfg,
    };
    daemon.apply_sampling();
    // Connections to the HJ 212 listener take what the process's open-files limit leaves
    // after a reserve for the link, the outbox, media and the status socket.
    let descriptors = Descriptors::process();

    let (requests_tx, mut requests) = mpsc::channel::<status::OperatorCall>(8);
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
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        intervals.push(tick);
        idle.push(Some(sensor));
    }
    let mut health = hardware.health;
    let mut health_tick = tokio::time::interval(daemon.cfg.health_interval);
    health_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
        let meeting_at = daemon
            .conference
            .next_tick(last_meeting_tick, MEETING_IDLE_TICK, now);
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
            _ = tokio::time::sleep_until(meeting_at) => {
                last_meeting_tick = tokio::time::Instant::now();
                daemon.on_meeting_tick();
            }
            Some((req, answer)) = requests.recv() => {
                let _ = answer.send(daemon.on_request(req));
            }
            _ = health_tick.tick() => daemon.on_health(health.read(), &hj_stats),
            i = next_tick(&mut intervals, &ready) => {
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
            health_tick = tokio::time::interval(daemon.cfg.health_interval);
            health_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
}

/// The terminal's own downlink topics (meeting topics are the conference's).
struct Downlinks {
    ack: String,
    command: String,
    notice: String,
}

impl Downlinks {
    fn of(id: &cuntong_core::terminal_id::TerminalId) -> Downlinks {
        let topic = |c| Topic::terminal(id, c).to_string();
        Downlinks {
            ack: topic(Channel::Ack),
            command: topic(Channel::Command),
            notice: topic(Channel::Notice),
        }
    }
}

/// What the event loop does with each thing that happens: one handler each, and after every
/// one [`Daemon::send_due`].
impl Daemon {
    /// The link came up (everything unconfirmed goes again, the meeting catches up) or went.
    fn on_link(&mut self, up: bool) {
        if up {
            self.delivery.link_up(unix_ms());
            let msgs = self.conference.reconnected(unix_ms());
            self.meeting_out(msgs);
        } else {
            self.delivery.link_down();
        }
    }

    /// The duty button was held: the duty report it stands for.
    fn on_duty_button(&mut self, kind: String, text: String) {
        match self.duty_report(kind, text) {
            Ok(line) => tracing::info!("duty button: {line}"),
            Err(e) => tracing::error!("duty button: {e}"),
        }
    }

    /// The meetings' heartbeat, with the link's quality.
    fn on_meeting_tick(&mut self) {
        let (rtt_ms, loss_percent) = self.link.quality();
        let msgs = self.conference.tick(unix_ms(), rtt_ms, loss_percent);
        self.meeting_out(msgs);
    }

    /// A request on the status socket: its answer.
    fn on_request(&mut self, req: status::LocalRequest) -> Result<String, String> {
        match req {
            status::LocalRequest::Conference(r) => {
                self.conference.operator(r, unix_ms()).map(|(line, msgs)| {
                    self.meeting_out(msgs);
                    line
                })
            }
            status::LocalRequest::DutyReport { kind, text } => self.duty_report(kind, text),
        }
    }

    /// The health round: the box's `readings` with the link's, the outbox's, the meetings' and
    /// the HJ 212 listener's figures.
    fn on_health(&mut self, mut readings: Vec<(Metric, f64)>, hj: &Hj212Stats) {
        let now = unix_ms();
        let l = self.link.status();
        if let Some(rtt) = l.rtt_ms {
            readings.push((Metric::LinkRtt, rtt));
        }
        readings.push((Metric::LinkLoss, l.ping_loss_percent));
        readings.push((Metric::OutboxDepth, self.outbox.len() as f64));
        readings.push((Metric::Dropped, self.outbox.dropped_total() as f64));
        readings.extend(self.conference.media_sample());
        readings.push((Metric::MeetingsJoined, self.conference.joined() as f64));
        if self.cfg.hj212.is_some() {
            let frames = hj.frames.load(std::sync::atomic::Ordering::Relaxed);
            let bad = hj.bad_frames.load(std::sync::atomic::Ordering::Relaxed);
            readings.push((Metric::Hj212Frames, frames as f64));
            readings.push((Metric::Hj212Bad, bad as f64));
        }
        self.offer(&readings, now);
    }

    /// Sensor `index` (`name`) was read: its readings, or the first fault of a run of them and
    /// the recovery after it as events.
    fn on_sensor(
        &mut self,
        index: usize,
        name: String,
        result: Result<Vec<(Metric, f64)>, SensorError>,
    ) -> Result<(), RunError> {
        let now = unix_ms();
        match result {
            Ok(readings) => {
                let recovered = self.sensor_ok(index, &readings, now);
                self.offer(&readings, now);
                if recovered {
                    self.event(Event::SensorRecovered { sensor: name })?;
                }
            }
            Err(e) => {
                let detail = e.to_string();
                if self.sensor_failed(index, &detail, now) {
                    tracing::warn!(sensor = %name, error = %detail, "sensor fault");
                    self.event(Event::SensorFault {
                        sensor: name,
                        detail,
                    })?;
                }
            }
        }
        Ok(())
    }

    /// A message from the broker: central's watermarks, a command, a notice, or the meetings'.
    fn on_message(
        &mut self,
        m: &crate::link::Incoming,
        topics: &Downlinks,
    ) -> Result<(), RunError> {
        if m.topic == topics.ack {
            self.confirmed(&m.payload)?;
        } else if m.topic == topics.command && !m.payload.is_empty() {
            self.command(&m.payload, m.retain)?;
        } else if m.topic == topics.notice {
            self.notice(&m.payload);
        } else if !self.conference_message(m) {
            tracing::debug!(topic = %m.topic, bytes = m.payload.len(), "received");
        }
        Ok(())
    }

    /// After everything that happened: certificate and update checks, then what is due is
    /// recorded in the outbox and handed to the link.
    fn send_due(&mut self) -> Result<(), RunError> {
        self.check_tls()?;
        self.update_tick()?;
        self.flush(false)?;
        self.pump();
        Ok(())
    }
}

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
                    reason: reason.clone(),
                })?;
                Ok((false, reason))
            }
        }
    }

    /// The operator raised a duty report: an event, ahead of all telemetry in the outbox.
    fn duty_report(&mut self, kind: String, text: String) -> Result<String, String> {
        let report = unix_ms();
        self.event(Event::DutyReport {
            report,
            kind: kind.clone(),
            text: text.clone(),
        })
        .map_err(|e| format!("cannot record the report: {e}"))?;
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

    /// Records every batch that is due (all pending ones if `all`) in the outbox.
    fn flush(&mut self, all: bool) -> Result<(), RunError> {
        while (all && !self.batcher.is_empty()) || self.batcher.is_due(unix_ms()) {
            let Some((time_ms, body)) = self.batcher.take() else {
                break;
            };
            let payload = |seq| {
                encode(&Envelope {
                    seq,
                    time_ms,
                    body: &body,
                })
            };
            self.record(Stream::Telemetry, time_ms, payload)?;
        }
        self.refresh_outbox_status();
        Ok(())
    }

    fn event(&mut self, event: Event) -> Result<(), RunError> {
        let time_ms = unix_ms();
        let payload = |seq| {
            encode(&Envelope {
                seq,
                time_ms,
                body: &event,
            })
        };
        self.record(Stream::Events, time_ms, payload)
    }

    /// Appends a record (its payload built for the seq the outbox assigns) and queues it for
    /// delivery. Anything the append pushed out of a full outbox is reported as an event.
    fn record(
        &mut self,
        stream: Stream,
        time_ms: u64,
        payload: impl Fn(u64) -> Result<Vec<u8>, cuntong_core::envelope::EncodeError>,
    ) -> Result<(), RunError> {
        let bytes = payload(self.outbox.next_seq(stream))?;
        let (seq, dropped) = self.outbox.append(stream, time_ms, &bytes)?;
        self.delivery.queued(stream, seq);
        self.report_dropped(&dropped, "outbox full: dropped unsent")
    }

    /// Tells delivery, the log, the status and central about records that left unsent.
    fn report_dropped(&mut self, ranges: &[DroppedRange], why: &str) -> Result<(), RunError> {
        for d in ranges {
            self.delivery.dropped_upto(d.stream, d.last);
            let msg = format!(
                "{why} {} records of {} (seq {}..={}), reported as dropped",
                d.count,
                d.stream.as_str(),
                d.first,
                d.last
            );
            tracing::warn!("{msg}");
            self.with_status(|s| push_error(s, unix_ms(), msg));
            self.event(Event::Dropped {
                stream: d.stream,
                first: d.first,
                last: d.last,
            })?;
        }
        Ok(())
    }

    /// Central's watermarks arrived: confirmed records leave the outbox. A watermark beyond
    /// the last seq ever numbered is refused and reported; one beyond a held numbering is a
    /// predecessor's, and the numbering moves above it; one that reaches the held numbering's
    /// announcements releases it.
    fn confirmed(&mut self, payload: &[u8]) -> Result<(), RunError> {
        let marks = match Watermarks::decode(payload) {
            Ok(m) => m,
            Err(e) => {
                if let Some(more) = self.log.allow("malformed acknowledgement") {
                    tracing::warn!(error = %e, "ignoring a malformed acknowledgement{more}");
                }
                return Ok(());
            }
        };
        for stream in Stream::ALL {
            let watermark = marks.get(stream);
            match self.delivery.confirmed(stream, watermark) {
                Confirmation::Advanced => {
                    self.outbox.confirm(stream, watermark)?;
                }
                Confirmation::Stale => {}
                Confirmation::Clash { watermark } => {
                    // Beyond any numbering there can be: forged, not a predecessor's.
                    if !self.renumber(stream, watermark, "its watermark")? {
                        let assigned = self.delivery.assigned(stream);
                        self.ack_refused(stream, watermark, assigned)?;
                    }
                }
                Confirmation::Beyond { assigned } => {
                    self.ack_refused(stream, watermark, assigned)?
                }
            }
        }
        // Central has the announcements (after any renumbering they follow): it agreed.
        if let Some(upto) = self.outbox.holding()
            && self.delivery.watermark(Stream::Events) >= upto
        {
            self.outbox.release()?;
            self.delivery.hold(Stream::Events, None);
            self.delivery.hold(Stream::Telemetry, None);
            tracing::info!("central agreed to the numbering: everything waiting goes");
        }
        self.refresh_outbox_status();
        Ok(())
    }

    /// A watermark beyond the last seq ever numbered: refused, and reported as a security
    /// event (one a minute per stream at most: a retained forgery comes back at every
    /// reconnect).
    fn ack_refused(
        &mut self,
        stream: Stream,
        watermark: u64,
        assigned: u64,
    ) -> Result<(), RunError> {
        let Some(more) = self.log.allow(&format!("ack refused {}", stream.as_str())) else {
            return Ok(());
        };
        let event = Event::AckRefused {
            stream,
            watermark,
            assigned,
        };
        let msg = format!("acknowledgement refused: {event}");
        tracing::warn!("{msg}{more}");
        self.with_status(|s| push_error(s, unix_ms(), msg));
        self.event(event)
    }

    /// Central holds seqs of `stream` up to `highest` under this id that this box never sent
    /// (a predecessor's, when this box's clock was behind): the held numbering moves above
    /// them (and the events' past every seq given), announced again at the front of the
    /// events. False if it cannot move (not held, or beyond any numbering there can be).
    fn renumber(&mut self, stream: Stream, highest: u64, why: &str) -> Result<bool, RunError> {
        let above = highest.saturating_add(1);
        let before = Numbering {
            telemetry: self.outbox.first_seq(Stream::Telemetry),
            events: self.outbox.first_seq(Stream::Events),
        };
        let mut first = Numbering {
            telemetry: before.telemetry,
            events: self.outbox.next_seq(Stream::Events),
        };
        match stream {
            Stream::Telemetry => first.telemetry = first.telemetry.max(above),
            _ => first.events = first.events.max(above),
        }
        let time_ms = unix_ms();
        let announce = |seq, stream, first| {
            encode(&Envelope {
                seq,
                time_ms,
                body: Event::NumberingFrom { stream, first },
            })
        };
        let announcements = [
            announce(first.events, Stream::Events, first.events)?,
            announce(first.events + 1, Stream::Telemetry, first.telemetry)?,
        ];
        let [events, telemetry] = &announcements;
        if !self.outbox.renumber(first, [events, telemetry])? {
            return Ok(false);
        }
        tracing::warn!(
            stream = stream.as_str(),
            ?before,
            ?first,
            "central holds seqs at or above this box's numbering under its id ({why} says {highest}): renumbered above them"
        );
        self.delivery = delivery_of(&self.outbox, self.cfg.delivery, time_ms);
        if self.link.is_connected() {
            self.delivery.link_up(time_ms);
        }
        self.refresh_outbox_status();
        Ok(true)
    }

    /// A command arrived: check it, run it if it passes, answer on `res`, and report it.
    fn command(&mut self, payload: &[u8], retained: bool) -> Result<(), RunError> {
        use cuntong_core::command::{Action, CommandResult, SignedCommand};
        let now = unix_ms();
        let decoded = SignedCommand::decode(payload)
            .ok()
            .and_then(|s| s.body().ok());
        let (nonce, action) = decoded
            .as_ref()
            .map_or((0, "?"), |b| (b.nonce, b.action.name()));
        let checked = match self.guard.as_mut() {
            None => Err("this terminal has no command key configured".to_owned()),
            // A retained command that already ran comes back after every reconnect.
            Some(g) if retained && decoded.as_ref().is_some_and(|b| g.already_ran(b.nonce)) => {
                return Ok(());
            }
            Some(g) => g.check(payload, now).map_err(|r| r.to_string()),
        };
        let (ok, output) = match checked {
            Err(reason) => {
                let msg = format!("command {action} refused: {reason}");
                if let Some(more) = self.log.allow("command refused") {
                    tracing::warn!("{msg}{more}");
                }
                self.with_status(|s| push_error(s, now, msg));
                self.event(Event::CommandRefused {
                    action: action.to_owned(),
                    reason: reason.clone(),
                })?;
                (false, format!("refused: {reason}"))
            }
            Ok(body) => {
                let (ok, output) = match &body.action {
                    Action::Ping => (true, "pong".to_owned()),
                    Action::Diag => {
                        let report = self.status.lock().map(|s| s.clone()).unwrap_or_default();
                        let report = StatusReport {
                            link: self.link.status(),
                            ..report
                        };
                        (true, serde_json::to_string(&report).unwrap_or_default())
                    }
                    Action::Logs => {
                        let lines = self
                            .status
                            .lock()
                            .map(|s| {
                                s.recent_errors
                                    .iter()
                                    .map(|(t, e)| format!("{t} {e}"))
                                    .collect::<Vec<_>>()
                                    .join("\n")
                            })
                            .unwrap_or_default();
                        (true, lines)
                    }
                    Action::Readiness => {
                        let checks = crate::readiness::checks(
                            &self.conference.capture_devices(),
                            &self.link.status(),
                            self.conference.thresholds(),
                            &self.cfg.data_dir,
                            self.cfg.outbox.budget_bytes,
                            body.issued_ms,
                            now,
                        );
                        let r = cuntong_core::command::Readiness::of(checks);
                        (true, serde_json::to_string(&r).unwrap_or_default())
                    }
                    Action::Reboot => match self.power.reboot() {
                        Ok(done) => (true, done),
                        Err(e) => (false, e),
                    },
                    Action::ConfigSet { key, value } => match self.config_set(key, value) {
                        Ok(summary) => (true, summary),
                        Err(e) => (false, format!("config-set {key}: {e}")),
                    },
                    Action::Update(offer) => self.update_offer(offer)?,
                    _ => (false, "unknown action".to_owned()),
                };
                self.event(Event::CommandRun {
                    action: body.action.name().to_owned(),
                    ok,
                })?;
                (ok, output)
            }
        };
        let result = CommandResult { nonce, ok, output };
        let topic = Topic::terminal(&self.cfg.id, Channel::Result).to_string();
        if let Ok(bytes) = encode(&result) {
            let _ = self.link.try_publish(Message::new(topic, bytes).urgent());
        }
        Ok(())
    }

    /// Changes one key of the configuration file; applies it now where the daemon can.
    fn config_set(&mut self, key: &str, value: &str) -> Result<String, String> {
        let Some(path) = self.cfg.source.clone() else {
            return Err("this terminal runs without a configuration file".to_owned());
        };
        let change = crate::remote_config::set(&path, key, value)?;
        tracing::info!("{}", change.summary);
        if change.applies == crate::remote_config::Applies::Now {
            self.cfg.health_interval = change.config.health_interval;
            self.cfg.metrics = change.config.metrics;
            self.apply_sampling();
        }
        Ok(change.summary)
    }

    /// Hands the link whatever delivery says is due now.
    fn pump(&mut self) {
        let now = unix_ms();
        while let Some((stream, seq)) = self.delivery.next_send(now) {
            let Some(record) = self.outbox.get(stream, seq) else {
                continue;
            };
            // A renumbered record still carries the seq it was written with.
            let payload = match cuntong_core::envelope::with_seq(&record.payload, seq) {
                Ok(p) => p.into_owned(),
                Err(e) => {
                    tracing::warn!(stream = stream.as_str(), seq, error = %e, "an outbox record is no envelope: sent as it is");
                    record.payload.clone()
                }
            };
            let topic = Topic::terminal(&self.cfg.id, stream.channel()).to_string();
            let msg = Message::new(topic, payload);
            if self.link.try_publish(msg).is_err() {
                // The link's queue is full: the record stays in the outbox for later.
                self.delivery.not_sent(stream, seq);
                break;
            }
            self.outbox.mark_sent(stream, seq);
        }
    }

    fn refresh_outbox_status(&self) {
        let report = OutboxReport {
            depth: self.outbox.len(),
            bytes: self.outbox.bytes(),
            dropped: self.outbox.dropped_total(),
            first_seq: Stream::ALL
                .iter()
                .map(|s| (s.as_str().to_owned(), self.outbox.first_seq(*s)))
                .collect(),
            next_seq: Stream::ALL
                .iter()
                .map(|s| (s.as_str().to_owned(), self.outbox.next_seq(*s)))
                .collect(),
            confirmed: Stream::ALL
                .iter()
                .map(|s| (s.as_str().to_owned(), self.outbox.confirmed(*s)))
                .collect(),
        };
        self.with_status(|s| s.outbox = report);
    }
}

fn push_error(s: &mut StatusReport, now: u64, msg: String) {
    if s.recent_errors.len() == RECENT_ERRORS {
        s.recent_errors.remove(0);
    }
    s.recent_errors.push((now, msg));
}
