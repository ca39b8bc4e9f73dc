//! Many simulated terminals in one process.
//!
//! Each terminal is the real terminal daemon ([`cuntong_terminal::daemon::run`]) with simulated
//! hardware: an SHT3x on a simulated I2C bus and simulated health. Terminals are spread over
//! the townships and villages (and, for larger regions, the counties and prefectures) of the
//! region, deterministically, so the same command gives the same fleet. `reboot` from central
//! restarts a simulated terminal the way it restarts a box.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cuntong_core::backoff::spread;
use cuntong_core::delivery::DeliveryConfig;
use cuntong_core::meeting::participant::AcceptPolicy;
use cuntong_core::meeting::{Applied, MediaPlan, MediaProfile, MeetingId, MeetingState};
use cuntong_core::site::{Level, Region, SiteCode};
use cuntong_core::terminal_id::TerminalId;
use cuntong_terminal::broker_url::Brokers;
use cuntong_terminal::conference::{Console, Invitation, MediaEngine, SignallingOnly};
use cuntong_terminal::config::{CommandsConfig, TerminalConfig};
use cuntong_terminal::daemon::{self, Hardware, RunError};
use cuntong_terminal::duty_button::{DutyButton, DutyButtonConfig};
use cuntong_terminal::hardware::Power;
use cuntong_terminal::hj212::Hj212Config;
use cuntong_terminal::outbox::OutboxConfig;
use cuntong_terminal::readiness::CaptureDevices;
use cuntong_terminal::sensors::Sensor;
use cuntong_terminal::sensors::sht3x::Sht3x;
use cuntong_terminal::update::launcher::Launched;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::health::SimHealth;
use crate::sht3x::{NoDelay, SimSht3x, SimSht3xControl};

/// How many codes each level below the region root spreads over, from the top.
const SPREAD: [u16; 4] = [4, 5, 8, 999];

/// The most terminals one simulator process runs (`fleet --count`, `cuntong demo --sites`).
pub const MAX_FLEET: usize = 100_000;

/// Open files a simulated terminal holds: its connection and its outbox's open segment
/// (a simulator of 2,576 boxes held 2,579 sockets and 2,576 segments).
pub const FILES_PER_TERMINAL: u64 = 2;

/// A fleet larger than this process's open files allow.
#[derive(Debug, thiserror::Error)]
#[error(
    "{count} terminals need about {needed} open files and this process may hold {limit} \
     (`ulimit -Hn`): run the fleet as several processes of at most {most} terminals each"
)]
pub struct TooManyForOpenFiles {
    pub count: usize,
    pub needed: u64,
    pub limit: u64,
    pub most: u64,
}

/// Makes room for `count` simulated terminals holding `files_each` open files in this process
/// ([`FILES_PER_TERMINAL`], more where the process also serves their connections): raises its
/// open-files limit to the hard limit (as a service's `LimitNOFILE` would), and refuses,
/// before any terminal starts, a fleet that would run out of files (its terminals would fail
/// one by one, late).
pub fn make_room_for(count: usize, files_each: u64) -> Result<(), TooManyForOpenFiles> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let now = getrlimit(Resource::Nofile);
    if now.current != now.maximum {
        let raised = Rlimit {
            current: now.maximum,
            maximum: now.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::debug!(error = %e, "cannot raise the open-files limit");
        }
    }
    let limit = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    let reserve = cuntong_terminal::listen::RESERVE;
    let needed = (count as u64)
        .saturating_mul(files_each)
        .saturating_add(reserve);
    if needed <= limit {
        return Ok(());
    }
    Err(TooManyForOpenFiles {
        count,
        needed,
        limit,
        most: limit.saturating_sub(reserve) / files_each.max(1),
    })
}

/// `count` terminal ids spread over `region`, the same for the same arguments.
///
/// Sites are filled breadth-first: the first terminals land in different prefectures,
/// counties and townships before a township gets a second village. If the region is a single
/// village, its terminals differ by slug (`main`, `t1`, `t2`, …).
pub fn fleet_ids(region: &Region, count: usize) -> Vec<TerminalId> {
    let root = region.root();
    let depth = root.level().depth();
    let mut out = Vec::with_capacity(count);
    for k in 0..count {
        if depth == Level::Village.depth() {
            let slug = if k == 0 {
                "main".to_owned()
            } else {
                format!("t{k}")
            };
            if let Ok(slug) = slug.parse() {
                out.push(TerminalId::new(root, slug));
            }
            continue;
        }
        let mut groups = root.groups();
        let mut rest = k;
        for level in depth + 1..5 {
            let radix = usize::from(SPREAD[level - 1]);
            let digit = if level == 4 { rest } else { rest % radix };
            groups[level] = (digit % usize::from(SPREAD[3]) + 1) as u16;
            if level < 4 {
                rest /= radix;
            }
        }
        let site = SiteCode::from_groups(groups);
        let capacity: usize = SPREAD[depth..].iter().map(|&s| usize::from(s)).product();
        let slug = if k < capacity {
            "main".parse()
        } else {
            format!("t{k}").parse()
        };
        if let (Ok(site), Ok(slug)) = (site, slug) {
            out.push(TerminalId::new(site, slug));
        }
    }
    out
}

/// Options shared by every simulated terminal.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// The broker, or a cluster's nodes in order of preference.
    pub broker: Brokers,
    /// Each terminal keeps its state in `<data_root>/<terminal id>`.
    pub data_root: PathBuf,
    /// How often health and sensors are sampled and a batch is sent.
    pub interval: Duration,
    pub keep_alive: Duration,
    /// The QoS of the terminals' subscriptions (1; 0 on a NATS cluster).
    pub subscribe_qos: cuntong_terminal::link::QoS,
    /// Serve a status socket per terminal (off for fleets).
    pub status_socket: bool,
    /// Pacing and resending of the outbox.
    pub delivery: DeliveryConfig,
    /// Outbox byte budget.
    pub outbox_budget: u64,
    /// Listen for HJ 212 data loggers here (single terminals only).
    pub hj212_listen: Option<std::net::SocketAddr>,
    /// The fleet's public command key; without it, commands are refused.
    pub command_key: Option<PathBuf>,
    /// The fleet's public release key; with it the terminals take update offers (each
    /// downloads and unpacks the release into its own slots, then restarts into it in this
    /// process), at most `update_rate` bytes a second each.
    pub release_key: Option<PathBuf>,
    pub update_rate: u64,
    /// Which invitations the terminals accept on their own (all, by default).
    pub meeting_accept: AcceptPolicy,
    /// Share of the terminals (0 to 100) that decline every invitation.
    pub decline_percent: u8,
    /// Share of the terminals (0 to 100) that raise their hand once joined.
    pub hands_percent: u8,
    /// Give each terminal a duty button (its line: the file `duty-button` in its data dir).
    pub duty_button: bool,
    /// Real media (GStreamer, test sources, nothing shown) on loopback; a fleet of a county or
    /// more gets a relay at each county and at the region's own level.
    pub media: bool,
    /// With media: each box (or each of `rooms_of`, if any are named) composes its meeting
    /// room into `ROOMS/TERMINAL.mkv`.
    pub rooms: Option<PathBuf>,
    pub rooms_of: Vec<TerminalId>,
    /// The terminals power on over this long, each at its own moment in it (as a county's
    /// boxes do when its power comes back); zero starts them all at once.
    pub power_on: Duration,
}

/// The colours (ARGB) of the simulated cameras, by the box's place in the fleet: eight, each far
/// from the others and from black.
pub const PALETTE: [u32; 8] = [
    0xffff_0000,
    0xff00_ff00,
    0xff00_00ff,
    0xffff_ff00,
    0xffff_00ff,
    0xff00_ffff,
    0xffff_8000,
    0xff80_80ff,
];

impl SimOptions {
    pub fn new(broker: impl Into<Brokers>, data_root: PathBuf, interval: Duration) -> SimOptions {
        SimOptions {
            broker: broker.into(),
            data_root,
            interval,
            keep_alive: Duration::from_secs(30),
            subscribe_qos: cuntong_terminal::link::QoS::AtLeastOnce,
            status_socket: false,
            delivery: DeliveryConfig::default(),
            outbox_budget: OutboxConfig::default().budget_bytes,
            hj212_listen: None,
            command_key: None,
            release_key: None,
            update_rate: cuntong_terminal::update::DEFAULT_MAX_RATE,
            meeting_accept: AcceptPolicy::All,
            decline_percent: 0,
            hands_percent: 0,
            duty_button: false,
            media: false,
            rooms: None,
            rooms_of: Vec::new(),
            power_on: Duration::ZERO,
        }
    }
}

/// The configuration of one simulated terminal.
pub fn sim_config(id: TerminalId, opts: &SimOptions) -> TerminalConfig {
    let data_dir = opts.data_root.join(id.to_string());
    let mut cfg = TerminalConfig::new(id, opts.broker.clone(), data_dir);
    cfg.keep_alive = opts.keep_alive;
    cfg.subscribe_qos = opts.subscribe_qos;
    cfg.health_interval = opts.interval;
    cfg.batch_age = opts.interval;
    cfg.batch_max = 64;
    cfg.queue_capacity = 64;
    if !opts.status_socket {
        cfg.status_socket = None;
    }
    cfg.delivery = opts.delivery;
    cfg.outbox.budget_bytes = opts.outbox_budget;
    cfg.commands = opts
        .command_key
        .clone()
        .map(|key| CommandsConfig { key, reboot: None });
    cfg.update = opts
        .release_key
        .clone()
        .map(|key| cuntong_terminal::update::UpdateConfig {
            key,
            max_rate: opts.update_rate,
            trial: Default::default(),
        });
    cfg.meeting.accept = opts.meeting_accept;
    cfg.hj212 = opts
        .hj212_listen
        .map(|listen| Hj212Config::new(Some(listen), None));
    if opts.duty_button {
        cfg.duty_button = Some(DutyButtonConfig::default());
    }
    if opts.media {
        cfg.meeting.media_host = Some("127.0.0.1".into());
        cfg.meeting.rtp_port = free_udp_pair().unwrap_or(0);
        if id.slug().as_str() == RELAY_SLUG {
            // Port 0: the relay picks its port and advertises the one it bound.
            let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
            cfg.meeting.relay = Some((any, any.to_string()));
        }
        if let Some(rooms) = &opts.rooms
            && (opts.rooms_of.is_empty() || opts.rooms_of.contains(&id))
        {
            cfg.media.display =
                cuntong_terminal::config::Display::File(rooms.join(format!("{id}.mkv")));
        }
        // Every simulated box can share content: colour bars.
        cfg.media.content = Some(cuntong_terminal::config::ContentSource::Test);
    }
    cfg
}

/// The slug of a simulated relay terminal (`130102000000-relay`).
pub const RELAY_SLUG: &str = "relay";

/// The relays of a media fleet of `region`: one at each county of `ids`, and one at the
/// region's own level if it is a county or above.
pub fn relay_ids(region: &Region, ids: &[TerminalId]) -> Vec<TerminalId> {
    let Ok(slug) = RELAY_SLUG.parse() else {
        return Vec::new();
    };
    let mut sites: Vec<SiteCode> = ids
        .iter()
        .filter_map(|id| id.site().at_level(Level::County))
        .collect();
    if region.root().level() <= Level::County {
        sites.push(region.root());
    }
    sites.sort();
    sites.dedup();
    sites
        .into_iter()
        .map(|s| TerminalId::new(s, slug))
        .collect()
}

/// An even port for a simulated box's media (video there, audio at the one after next, each
/// with the port after it), the four free (see [`crate::ports`]).
pub fn free_udp_pair() -> Option<u16> {
    crate::ports::free_ports(4, 2)
}

/// The simulated duty button's line: the file `duty-button` in the terminal's data directory,
/// holding `1` (high) or `0` (low), as a Linux GPIO `value` file does. A missing file is high
/// (an active-low button not pressed).
#[derive(Debug)]
pub struct FilePin(pub PathBuf);

/// The line's file could not be read.
#[derive(Debug)]
pub struct FilePinError(pub std::io::Error);

impl embedded_hal::digital::Error for FilePinError {
    fn kind(&self) -> embedded_hal::digital::ErrorKind {
        embedded_hal::digital::ErrorKind::Other
    }
}

impl embedded_hal::digital::ErrorType for FilePin {
    type Error = FilePinError;
}

impl embedded_hal::digital::InputPin for FilePin {
    fn is_high(&mut self) -> Result<bool, FilePinError> {
        match std::fs::read(&self.0) {
            Ok(v) => Ok(v.first() != Some(&b'0')),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(FilePinError(e)),
        }
    }

    fn is_low(&mut self) -> Result<bool, FilePinError> {
        self.is_high().map(|h| !h)
    }
}

/// How long a simulated box takes to come back after `reboot`.
pub const SIM_BOOT_TIME: Duration = Duration::from_millis(500);

/// The simulated box's power: `reboot` stops the running daemon in an orderly way (as
/// `systemctl reboot` would) and [`run_rebooting`] starts it again after [`SIM_BOOT_TIME`].
#[derive(Clone, Debug, Default)]
pub struct SimPower {
    run: CancellationToken,
    requested: Arc<AtomicBool>,
}

impl Power for SimPower {
    fn reboot(&mut self) -> Result<String, cuntong_terminal::hardware::RebootError> {
        self.requested.store(true, Ordering::Relaxed);
        self.run.cancel();
        Ok(format!(
            "simulated reboot: back in {} ms",
            SIM_BOOT_TIME.as_millis()
        ))
    }
}

/// The simulated people at a box: some decline every invitation, some raise their hand
/// once they joined.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimConsole {
    pub declines: bool,
    pub raises_hand: bool,
}

impl SimConsole {
    /// The behaviour of the `index`-th terminal of a fleet: the given shares, spread evenly
    /// and deterministically over the fleet.
    pub fn for_index(index: usize, decline_percent: u8, hands_percent: u8) -> SimConsole {
        let pick = |pct: u8, salt: usize| ((index * 7919 + salt) % 100) < usize::from(pct);
        SimConsole {
            declines: pick(decline_percent, 0),
            raises_hand: pick(hands_percent, 53),
        }
    }
}

impl Console for SimConsole {
    fn invited(&mut self, _state: &MeetingState) -> Option<Invitation> {
        self.declines
            .then(|| Invitation::Decline("simulated: nobody at the site".into()))
    }

    fn joined(&mut self, _state: &MeetingState) -> bool {
        self.raises_hand
    }
}

/// The simulator's media: signalling only, with a simulated camera and microphone (the test
/// sources the media engine will use).
#[derive(Clone, Copy, Debug, Default)]
pub struct SimMedia;

impl MediaEngine for SimMedia {
    fn start(&mut self, meeting: MeetingId, plan: &MediaPlan, profile: &MediaProfile) {
        SignallingOnly.start(meeting, plan, profile);
    }

    fn apply(&mut self, meeting: MeetingId, applied: &Applied) {
        SignallingOnly.apply(meeting, applied);
    }

    fn stop(&mut self, meeting: MeetingId) {
        SignallingOnly.stop(meeting);
    }

    fn link_every(&self) -> Option<std::time::Duration> {
        SignallingOnly.link_every()
    }

    fn capture_devices(&self) -> CaptureDevices {
        CaptureDevices {
            camera: Some("videotestsrc (simulated)".into()),
            microphone: Some("audiotestsrc (simulated)".into()),
        }
    }
}

/// Simulated hardware for a terminal: an SHT3x on a simulated bus (controlled by `control`,
/// which outlives reboots), simulated health, signalling-only media and `console`.
pub fn sim_hardware(
    seed: u64,
    interval: Duration,
    control: &SimSht3xControl,
    power: Box<dyn Power>,
    console: SimConsole,
) -> Hardware {
    let device = SimSht3x::controlled_by(control, 0x44, seed);
    let sensor: Box<dyn Sensor> = Box::new(Sht3x::new(device, NoDelay, 0x44));
    Hardware {
        sensors: vec![(sensor, interval)],
        health: Box::new(SimHealth::new(seed)),
        power,
        media: Box::new(SimMedia),
        console: Box::new(console),
        duty_button: None,
    }
}

/// Runs one simulated terminal until `stop`, rebooting it whenever central asks, and
/// restarting it into a new release it installed (the same code: the release is what it
/// reports).
pub async fn run_rebooting(
    mut cfg: TerminalConfig,
    seed: u64,
    interval: Duration,
    control: SimSht3xControl,
    console: SimConsole,
    stop: CancellationToken,
) -> Result<(), RunError> {
    loop {
        let power = SimPower {
            run: stop.child_token(),
            requested: Arc::default(),
        };
        let mut hardware = sim_hardware(seed, interval, &control, Box::new(power.clone()), console);
        #[cfg(feature = "media")]
        if cfg.meeting.media_host.is_some() {
            use cuntong_terminal::config::Display;
            use cuntong_terminal::media::{Capture, GstEngine, Playback};
            // Each camera shows a colour of its own and hears a tone; a box composes its
            // room only into a file.
            let (capture, display) = match &cfg.sip {
                // A SIP gateway's camera and screen are its room system's.
                Some(sip) => (
                    Capture::Call(sip.call.clone()),
                    Display::Call(sip.call.clone()),
                ),
                None => (
                    Capture::Colour(PALETTE[seed as usize % PALETTE.len()]),
                    cfg.media.display.clone(),
                ),
            };
            let playback = match &display {
                Display::File(_) | Display::Recording { .. } | Display::Call(_) => Playback::Room {
                    display: display.clone(),
                    layout: cfg.media.layout,
                },
                Display::Screen { .. } => Playback::Discard,
            };
            match GstEngine::new(cfg.id, capture, playback, cfg.meeting.rtp_port) {
                Ok(e) => {
                    hardware.media = Box::new(match &cfg.media.content {
                        Some(c) => e.with_content(Capture::content(c)),
                        None => e,
                    })
                }
                Err(e) => tracing::error!(terminal = %cfg.id, error = %e, "no media"),
            }
        }
        hardware.duty_button = cfg
            .duty_button
            .as_ref()
            .map(|b| DutyButton::new(FilePin(cfg.data_dir.join("duty-button")), b));
        if let Some(u) = &cfg.update {
            cfg.launched = Launched::in_process(&cfg.data_dir, u.trial);
        }
        let stopped = daemon::run(cfg.clone(), hardware, power.run.clone()).await?;
        if stop.is_cancelled() {
            return Ok(());
        }
        if stopped == daemon::Stopped::ForUpdate {
            tracing::info!(terminal = %cfg.id, "simulated restart into a new release");
            continue;
        }
        if !power.requested.load(Ordering::Relaxed) {
            return Ok(());
        }
        tracing::info!(terminal = %cfg.id, "simulated reboot");
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(SIM_BOOT_TIME) => {}
        }
    }
}

/// When terminal `id` powers on in a power-on that lasts `power_on`: its own moment in it,
/// the same at every start of the fleet.
pub fn power_on_at(id: &TerminalId, power_on: Duration) -> Duration {
    power_on.mul_f64((spread(id) % 1_000_000) as f64 / 1_000_000.0)
}

/// A running fleet.
#[derive(Debug)]
pub struct Fleet {
    pub ids: Vec<TerminalId>,
    pub controls: Vec<SimSht3xControl>,
    tasks: JoinSet<(TerminalId, Result<(), RunError>)>,
    stop: CancellationToken,
}

impl Fleet {
    /// Starts `ids` as simulated terminals on the current runtime.
    pub fn start(ids: Vec<TerminalId>, opts: &SimOptions) -> Fleet {
        let configs = ids.iter().map(|id| sim_config(*id, opts)).collect();
        let consoles = (0..ids.len())
            .map(|i| SimConsole::for_index(i, opts.decline_percent, opts.hands_percent))
            .collect();
        Fleet::start_configs(configs, opts.interval, consoles, opts.power_on)
    }

    /// Starts terminals with the given configurations (e.g. provisioned ones) on simulated
    /// hardware sampled every `interval`, with the given console behaviour each (missing ones:
    /// nobody declines, nobody raises a hand), powered on over `power_on`.
    pub fn start_configs(
        configs: Vec<TerminalConfig>,
        interval: Duration,
        consoles: Vec<SimConsole>,
        power_on: Duration,
    ) -> Fleet {
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut controls = Vec::with_capacity(configs.len());
        let mut ids = Vec::with_capacity(configs.len());
        for (i, cfg) in configs.into_iter().enumerate() {
            let seed = i as u64 + 1;
            let (_, control) = SimSht3x::new(0x44, seed);
            controls.push(control.clone());
            let (stop, id) = (stop.clone(), cfg.id);
            let console = consoles.get(i).copied().unwrap_or_default();
            ids.push(id);
            let at = power_on_at(&id, power_on);
            tasks.spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => return (id, Ok(())),
                    _ = tokio::time::sleep(at) => {}
                }
                let result = run_rebooting(cfg, seed, interval, control, console, stop).await;
                (id, result)
            });
        }
        Fleet {
            ids,
            controls,
            tasks,
            stop,
        }
    }

    /// Stops every terminal (each says goodbye) and reports the ones that failed.
    pub async fn stop(mut self) -> Vec<(TerminalId, RunError)> {
        self.stop.cancel();
        let mut failed = Vec::new();
        while let Some(r) = self.tasks.join_next().await {
            if let Ok((id, Err(e))) = r {
                failed.push((id, e));
            }
        }
        failed
    }

    /// The first terminal that stopped with an error, if any (non-blocking).
    pub fn try_failure(&mut self) -> Option<(TerminalId, RunError)> {
        while let Some(r) = self.tasks.try_join_next() {
            if let Ok((id, Err(e))) = r {
                return Some((id, e));
            }
        }
        None
    }
}

/// The default place for simulator state.
pub fn default_data_root() -> PathBuf {
    dirs_data().join("cuntong").join("sim")
}

fn dirs_data() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/share")))
        .unwrap_or_else(std::env::temp_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(region: &str, n: usize) -> Vec<String> {
        fleet_ids(&region.parse().unwrap(), n)
            .iter()
            .map(|i| i.to_string())
            .collect()
    }

    #[test]
    fn a_fleet_powers_on_spread_over_its_power_on_and_at_once_without_one() {
        let window = Duration::from_secs(20);
        let fleet = fleet_ids(&"13".parse().unwrap(), 4000);
        // Each tenth of the window gets about a tenth of the boxes.
        let mut tenths = [0usize; 10];
        for id in &fleet {
            let at = power_on_at(id, window);
            assert!(at < window, "{id} at {at:?}");
            assert_eq!(at, power_on_at(id, window), "the same at every start");
            tenths[(at.as_secs_f64() / 2.0) as usize] += 1;
        }
        assert!(
            tenths.iter().all(|&n| (300..500).contains(&n)),
            "{tenths:?}"
        );
        assert!(
            fleet
                .iter()
                .all(|id| power_on_at(id, Duration::ZERO).is_zero())
        );
    }

    #[test]
    fn a_county_fleet_spreads_over_townships_first() {
        let v = ids("130102", 10);
        assert_eq!(v[0], "130102001001-main");
        assert_eq!(v[1], "130102002001-main");
        assert_eq!(v[8], "130102001002-main");
        let mut unique = v.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 10);
    }

    #[test]
    fn every_id_is_inside_the_region_and_unique() {
        for region in ["13", "1301", "130102", "130102001", "130102001001"] {
            let r: Region = region.parse().unwrap();
            let v = fleet_ids(&r, 2000);
            assert_eq!(v.len(), 2000, "{region}");
            assert!(v.iter().all(|i| r.contains(i.site())));
            let mut s: Vec<String> = v.iter().map(|i| i.to_string()).collect();
            s.sort();
            s.dedup();
            assert_eq!(s.len(), 2000, "{region}");
        }
    }
}
