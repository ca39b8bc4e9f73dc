//! The terminal's configuration: a TOML file, validated into a typed [`TerminalConfig`].
//!
//! Every problem is reported with the key it concerns (`sensor[1].address: …`), so a
//! technician can fix the file without reading code. Example:
//!
//! ```toml
//! id = "130102001001-main"
//! broker = "mqtt://10.0.0.1:1883"   # or a cluster's nodes: ["mqtts://a:8883", "mqtts://b:8883"]
//! data_dir = "/var/lib/cuntong"
//! keep_alive = "30s"
//! subscribe_qos = 1                 # 0 on a NATS cluster (docs/operations.md, "Broker cluster")
//!
//! [telemetry]
//! health_interval = "60s"   # how often site health is sampled
//! batch_max = 32            # samples per message at most
//! batch_age = "60s"         # a sample waits at most this long for its batch
//!
//! [metric."env.temp"]
//! interval = "60s"
//! deadband = 0.2            # skip changes smaller than this
//! max_silence = "15m"       # but send at least this often
//!
//! [[sensor]]
//! kind = "sht3x"
//! bus = "/dev/i2c-1"
//! address = 0x44
//! interval = "30s"
//!
//! [outbox]
//! budget = "16MiB"          # oldest records are dropped (and reported) beyond this
//! sync = "1s"               # fsync at most this often; "always" after every record
//!
//! [delivery]
//! rate = 50                 # records per second at most when catching up (0: unlimited)
//! burst = 50
//! order = "oldest-first"    # or "newest-first"
//! resend_after = "30s"      # unconfirmed records are sent again after this
//!
//! [meeting]
//! accept = "scheduled"      # join scheduled sessions on their own; "all", or "manual"
//! rtp_port = 5004           # where this box receives media
//! # tier = "audio-only"     # fix the tier; otherwise it follows the link:
//! audio_only_rtt = "400ms"  # round trip at or above which the box joins audio-only
//! audio_only_loss = 5       # ping loss (%) at or above which it joins audio-only
//! receive_only_rtt = "1s"
//! receive_only_loss = 20
//! media_host = "10.13.2.21"  # the address this box's relay sends its media to
//! # relay = "0.0.0.0:6000"  # a county/city point: relay media for the sites below
//! # relay_advertise = "10.13.2.21:6000"  # where they send (default media_host and relay's port)
//!
//! [media]                   # the meeting room: one composed picture, one mixed sound
//! display = "auto"          # the screen; "kms" without a window system; "file:PATH" (Matroska);
//!                           # "recording:PATH" (Matroska, a new file every 30 minutes)
//! layout = "1+5"            # single, 1+N (N 1 to 7), 2x2, 3x3, 4x4 or speaker
//! # content = "v4l2:/dev/video1"  # a second video source to share (双流): "v4l2:DEVICE", "test"
//!
//! [hj212]                   # pollution-source data loggers (HJ 212) connect here
//! listen = "0.0.0.0:6000"
//! max_connections = 4       # loggers served at once (1 to 1024); more are closed at once
//! idle_timeout = "10m"      # a connection silent this long is closed
//! # serial = "/dev/ttyS1"   # and/or a logger wired to a serial port
//! # baud = 9600
//!
//! [[hj212.logger]]          # expected loggers; without any, every MN is accepted
//! mn = "010000A8900016F000169DC0"
//! password = "100000"
//! factors = { "011" = "w01018" }   # factor code -> metric, beyond the built-in mapping
//!
//! # [sip]                   # a SIP gateway: a room system joins meetings as this box's site
//! # listen = "10.13.2.21:5060"     # where it dials sip:MEETINGID@10.13.2.21:5060
//! # allow = ["sip:hall@10.13.2.40"] # who is let in (SIP addresses or IP addresses)
//! # rtp_port = 5070                # where its video arrives (audio at 5072)
//! # tls = { listen = "10.13.2.21:5061", cert = "sip-cert.pem", key = "sip-key.pem",
//! #         ca = "rooms-ca.pem" }       # SIP over TLS; ca: to call room systems over TLS
//!
//! [update]                  # over-the-air updates (docs/operations.md, "Updates")
//! key = "release.pub"       # the fleet's release key; without [update] nothing is installed
//! max_rate = "64KiB"        # download cap per second (an eighth of it during meetings)
//! health_deadline = "5m"    # a new build must pass its health check within this
//! max_boots = 3             # starts a new build gets before it counts as a crash loop
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cuntong_core::delivery::{DeliveryConfig, ReplayOrder};
use cuntong_core::sampler::MetricPolicy;
use cuntong_core::telemetry::Metric;
use cuntong_core::terminal_id::TerminalId;
use serde::Deserialize;

use crate::broker_url::{BrokerUrl, Brokers};
use crate::conference::MeetingConfig;
use crate::hj212::{Hj212Config, LoggerConfig, SerialConfig};
use crate::outbox::{OutboxConfig, SyncPolicy};
use crate::tls::TlsFiles;
use cuntong_core::meeting::participant::AcceptPolicy;
use cuntong_core::meeting::{Tier, TierThresholds};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The TOML parser refused the file: a syntax error, a value of the wrong type, an
    /// unknown or a missing key. `line` is where (1-based), when the parser says.
    #[error("{path}: {}{key}: {problem}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
    Syntax {
        path: PathBuf,
        line: Option<usize>,
        key: String,
        problem: String,
    },
    #[error("{path}: {key}: {problem}")]
    Invalid {
        path: PathBuf,
        key: String,
        problem: String,
    },
}

/// How the terminal runs: identity, broker, storage, sampling and sensors.
#[derive(Clone, Debug)]
pub struct TerminalConfig {
    pub id: TerminalId,
    /// The broker, or a cluster's nodes in order of preference.
    pub broker: Brokers,
    /// Where the terminal keeps its state (sequence counters, status socket).
    pub data_dir: PathBuf,
    /// MQTT keep-alive; the broker reports the terminal offline after 1.5 times it.
    pub keep_alive: Duration,
    /// The QoS of the terminal's subscriptions (1; 0 on a NATS cluster).
    pub subscribe_qos: rumqttc::QoS,
    /// Local status socket; `None` disables it.
    pub status_socket: Option<PathBuf>,
    pub health_interval: Duration,
    pub batch_max: usize,
    pub batch_age: Duration,
    /// Messages waiting for the link, at most.
    pub queue_capacity: usize,
    /// Per-metric sampling policies; other metrics are sampled at their source's interval.
    pub metrics: BTreeMap<Metric, MetricPolicy>,
    pub sensors: Vec<SensorConfig>,
    pub outbox: OutboxConfig,
    pub delivery: DeliveryConfig,
    /// The HJ 212 listener, if data loggers report to this terminal.
    pub hj212: Option<Hj212Config>,
    /// Mutual TLS files (with an `mqtts://` broker).
    pub tls: Option<TlsFiles>,
    /// Remote commands: the fleet's command key; without it, commands are refused.
    pub commands: Option<CommandsConfig>,
    /// Taking part in meetings.
    pub meeting: MeetingConfig,
    /// What the room sees and hears.
    pub media: MediaConfig,
    /// The duty button, if the box has one.
    pub duty_button: Option<crate::duty_button::DutyButtonConfig>,
    /// Over-the-air updates; `None` installs nothing.
    pub update: Option<crate::update::UpdateConfig>,
    /// The SIP gateway role: a room system joins meetings as this box's site.
    pub sip: Option<crate::sip::SipConfig>,
    /// Which build this is (not from the file: the launcher says).
    pub launched: crate::update::launcher::Launched,
    /// The file this configuration was read from, if any.
    pub source: Option<PathBuf>,
}

/// How remote commands are checked and what `reboot` runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandsConfig {
    /// The fleet's Ed25519 public command key (64 hex digits).
    pub key: PathBuf,
    /// The system command `reboot` runs (e.g. `["systemctl", "reboot"]`).
    pub reboot: Option<Vec<String>>,
}

/// One sensor to poll.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SensorConfig {
    pub kind: SensorKind,
    pub interval: Duration,
}

/// The sensor drivers the terminal has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SensorKind {
    /// Sensirion SHT3x temperature/humidity on a Linux I2C bus.
    Sht3x { bus: String, address: u8 },
}

impl SensorKind {
    pub fn label(&self) -> String {
        match self {
            SensorKind::Sht3x { address, .. } => format!("sht3x@{address:#04x}"),
        }
    }
}

impl TerminalConfig {
    /// A configuration with the defaults for everything but identity, broker and data dir.
    pub fn new(id: TerminalId, broker: impl Into<Brokers>, data_dir: PathBuf) -> TerminalConfig {
        let status_socket = Some(data_dir.join("status.sock"));
        TerminalConfig {
            id,
            broker: broker.into(),
            data_dir,
            keep_alive: Duration::from_secs(30),
            subscribe_qos: rumqttc::QoS::AtLeastOnce,
            status_socket,
            health_interval: Duration::from_secs(60),
            batch_max: 32,
            batch_age: Duration::from_secs(60),
            queue_capacity: 1024,
            metrics: BTreeMap::new(),
            sensors: Vec::new(),
            outbox: OutboxConfig::default(),
            delivery: DeliveryConfig::default(),
            hj212: None,
            tls: None,
            commands: None,
            meeting: MeetingConfig::default(),
            media: MediaConfig::default(),
            duty_button: None,
            update: None,
            sip: None,
            launched: crate::update::launcher::Launched::default(),
            source: None,
        }
    }

    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<TerminalConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut cfg = TerminalConfig::parse(&text, path)?;
        cfg.source = Some(path.to_owned());
        Ok(cfg)
    }

    /// Parses and validates TOML text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<TerminalConfig, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let (line, key, problem) = toml_problem(text, &e);
            ConfigError::Syntax {
                path: path.to_owned(),
                line,
                key,
                problem,
            }
        })?;
        let invalid = |key: &str, problem: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            problem,
        };
        let id: TerminalId = raw.id.parse().map_err(|e| invalid("id", format!("{e}")))?;
        let broker = raw
            .broker
            .brokers()
            .map_err(|e| invalid("broker", format!("{e}")))?;
        if raw.data_dir.as_os_str().is_empty() {
            return Err(invalid(
                "data_dir",
                "empty: say where the terminal keeps its state (e.g. \"/var/lib/cuntong\")".into(),
            ));
        }
        let mut cfg = TerminalConfig::new(id, broker, raw.data_dir);
        if let Some(s) = raw.status_socket {
            cfg.status_socket = if s.as_os_str().is_empty() {
                None
            } else {
                Some(s)
            };
        }
        let duration = |key: &str, v: &Option<String>, default: Duration| match v {
            None => Ok(default),
            Some(s) => parse_duration(s).map_err(|p| invalid(key, p.to_string())),
        };
        cfg.keep_alive = duration("keep_alive", &raw.keep_alive, cfg.keep_alive)?;
        if !(Duration::from_secs(1)..=Duration::from_secs(65_535)).contains(&cfg.keep_alive) {
            return Err(invalid(
                "keep_alive",
                "must be between 1s and 65535s".into(),
            ));
        }
        if let Some(q) = raw.subscribe_qos {
            cfg.subscribe_qos = crate::link::subscribe_qos(q)
                .map_err(|e| invalid("subscribe_qos", e.to_string()))?;
        }
        let t = raw.telemetry;
        cfg.health_interval = duration(
            "telemetry.health_interval",
            &t.health_interval,
            cfg.health_interval,
        )?;
        if cfg.health_interval.is_zero() {
            return Err(invalid(
                "telemetry.health_interval",
                "must be more than 0s".into(),
            ));
        }
        cfg.batch_age = duration("telemetry.batch_age", &t.batch_age, cfg.batch_age)?;
        if let Some(n) = t.batch_max {
            if n == 0 || n > 1000 {
                return Err(invalid(
                    "telemetry.batch_max",
                    format!("{n} is not between 1 and 1000"),
                ));
            }
            cfg.batch_max = n;
        }
        if let Some(n) = t.queue {
            if n == 0 {
                return Err(invalid("telemetry.queue", "must be at least 1".into()));
            }
            cfg.queue_capacity = n;
        }
        for (name, m) in raw.metric {
            let key = |field: &str| format!("metric.{name:?}.{field}");
            let metric = Metric::from_name(&name)
                .map_err(|e| invalid(&format!("metric.{name:?}"), e.to_string()))?;
            let mut policy = MetricPolicy::every(&metric, cfg.health_interval.as_millis() as u64);
            policy.interval_ms =
                duration(&key("interval"), &m.interval, Duration::ZERO)?.as_millis() as u64;
            if let Some(d) = m.deadband {
                if !(d.is_finite() && d >= 0.0) {
                    return Err(invalid(
                        &key("deadband"),
                        format!("{d} is not a non-negative number"),
                    ));
                }
                policy.deadband = d;
            }
            let silence = duration(
                &key("max_silence"),
                &m.max_silence,
                Duration::from_secs(900),
            )?;
            policy.max_silence_ms = silence.as_millis() as u64;
            if let Some(dec) = m.decimals {
                if dec > cuntong_core::decimal::MAX_SCALE {
                    return Err(invalid(&key("decimals"), format!("{dec} is more than 18")));
                }
                policy.scale = dec;
            }
            cfg.metrics.insert(metric, policy);
        }
        for (i, s) in raw.sensor.into_iter().enumerate() {
            let key = |field: &str| format!("sensor[{i}].{field}");
            let interval = duration(&key("interval"), &s.interval, Duration::from_secs(60))?;
            if interval.is_zero() {
                return Err(invalid(&key("interval"), "must be more than 0s".into()));
            }
            let kind = match s.kind.as_str() {
                "sht3x" => {
                    let address = s.address.unwrap_or(0x44);
                    if address != 0x44 && address != 0x45 {
                        return Err(invalid(
                            &key("address"),
                            format!("{address:#04x} is not an SHT3x address (0x44 or 0x45)"),
                        ));
                    }
                    let bus = s.bus.ok_or_else(|| {
                        invalid(&key("bus"), "missing (e.g. \"/dev/i2c-1\")".into())
                    })?;
                    SensorKind::Sht3x { bus, address }
                }
                other => {
                    return Err(invalid(
                        &key("kind"),
                        format!("unknown sensor kind {other:?} (known: sht3x)"),
                    ));
                }
            };
            cfg.sensors.push(SensorConfig { kind, interval });
        }
        if let Some(b) = raw.outbox.budget {
            let bytes = parse_size(&b).map_err(|p| invalid("outbox.budget", p.to_string()))?;
            if bytes < 4096 {
                return Err(invalid("outbox.budget", format!("{b:?} is less than 4KiB")));
            }
            cfg.outbox.budget_bytes = bytes;
        }
        match raw.outbox.sync.as_deref() {
            None => {}
            Some("always") => cfg.outbox.sync = SyncPolicy::EveryRecord,
            Some(d) => {
                let d = parse_duration(d)
                    .map_err(|p| invalid("outbox.sync", format!("{p}, or \"always\"")))?;
                cfg.outbox.sync = SyncPolicy::Interval(d);
            }
        }
        let d = raw.delivery;
        if let Some(r) = d.rate {
            cfg.delivery.rate_per_s = r;
        }
        if let Some(b) = d.burst {
            if b == 0 {
                return Err(invalid("delivery.burst", "must be at least 1".into()));
            }
            cfg.delivery.burst = b;
        }
        cfg.delivery.order = match d.order.as_deref() {
            None | Some("oldest-first") => ReplayOrder::OldestFirst,
            Some("newest-first") => ReplayOrder::NewestFirst,
            Some(o) => {
                return Err(invalid(
                    "delivery.order",
                    format!("{o:?} is not \"oldest-first\" or \"newest-first\""),
                ));
            }
        };
        let resend = duration(
            "delivery.resend_after",
            &d.resend_after,
            Duration::from_secs(30),
        )?;
        if resend < Duration::from_secs(1) {
            return Err(invalid(
                "delivery.resend_after",
                "must be at least 1s".into(),
            ));
        }
        cfg.delivery.resend_after_ms = resend.as_millis() as u64;
        // TLS file names are relative to the config file, so a bundle works wherever it lands.
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.tls = raw.tls.map(|t| TlsFiles {
            ca: base.join(t.ca),
            cert: base.join(t.cert),
            key: base.join(t.key),
        });
        cfg.commands = raw.commands.map(|c| CommandsConfig {
            key: base.join(c.key),
            reboot: c.reboot.filter(|r| !r.is_empty()),
        });
        if let Some(u) = raw.update {
            let max_rate = match &u.max_rate {
                None => crate::update::DEFAULT_MAX_RATE,
                Some(r) => parse_size(r).map_err(|p| invalid("update.max_rate", p.to_string()))?,
            };
            if max_rate < 1024 {
                return Err(invalid(
                    "update.max_rate",
                    "must be at least 1KiB (a second)".into(),
                ));
            }
            let mut trial = cuntong_core::update::TrialRules::default();
            let deadline = duration(
                "update.health_deadline",
                &u.health_deadline,
                Duration::from_millis(trial.deadline_ms),
            )?;
            if deadline < Duration::from_secs(10) {
                return Err(invalid(
                    "update.health_deadline",
                    "must be at least 10s".into(),
                ));
            }
            trial.deadline_ms = deadline.as_millis() as u64;
            if let Some(n) = u.max_boots {
                if !(1..=20).contains(&n) {
                    return Err(invalid(
                        "update.max_boots",
                        format!("{n} is not between 1 and 20"),
                    ));
                }
                trial.max_boots = n;
            }
            cfg.update = Some(crate::update::UpdateConfig {
                key: base.join(u.key),
                max_rate,
                trial,
            });
        }
        cfg.meeting = meeting_config(raw.meeting, &invalid)?;
        if let Some(d) = raw.media.display {
            cfg.media.display = d
                .parse()
                .map_err(|e: BadValue| invalid("media.display", e.to_string()))?;
        }
        if let Some(c) = raw.media.content {
            cfg.media.content = Some(
                c.parse()
                    .map_err(|e: BadValue| invalid("media.content", e.to_string()))?,
            );
        }
        if let Some(l) = raw.media.layout {
            cfg.media.layout = l
                .parse()
                .map_err(|e: cuntong_core::media::layout::BadLayout| {
                    invalid("media.layout", e.to_string())
                })?;
        }
        match (cfg.broker.tls(), cfg.tls.is_some()) {
            (true, false) => {
                return Err(invalid(
                    "tls",
                    "an mqtts:// broker needs [tls] ca, cert and key".into(),
                ));
            }
            (false, true) => {
                return Err(invalid(
                    "broker",
                    "[tls] is set, so the broker must be mqtts://".into(),
                ));
            }
            _ => {}
        }
        if let Some(h) = raw.hj212 {
            let listen = h
                .listen
                .map(|l| {
                    l.parse().map_err(|e| {
                        invalid("hj212.listen", format!("{l:?} is not host:port ({e})"))
                    })
                })
                .transpose()?;
            let serial = h.serial.map(|path| SerialConfig {
                path,
                baud: h.baud.unwrap_or(9600),
            });
            if listen.is_none() && serial.is_none() {
                return Err(invalid(
                    "hj212",
                    "needs listen = \"host:port\", serial = \"/dev/ttyS1\", or both".into(),
                ));
            }
            let mut hj = Hj212Config::new(listen, serial);
            if let Some(n) = h.max_connections {
                if !(1..=1024).contains(&n) {
                    return Err(invalid(
                        "hj212.max_connections",
                        format!("{n} is not between 1 and 1024"),
                    ));
                }
                hj.max_connections = n;
            }
            hj.idle_timeout = duration("hj212.idle_timeout", &h.idle_timeout, hj.idle_timeout)?;
            if hj.idle_timeout < Duration::from_secs(1) {
                return Err(invalid("hj212.idle_timeout", "must be at least 1s".into()));
            }
            for (i, l) in h.logger.into_iter().enumerate() {
                let key = |f: &str| format!("hj212.logger[{i}].{f}");
                let valid_mn = !l.mn.is_empty()
                    && l.mn.len() <= 24
                    && l.mn.bytes().all(|b| b.is_ascii_alphanumeric());
                if !valid_mn {
                    let problem = format!(
                        "{:?} is not a device code (1 to 24 letters and digits)",
                        l.mn
                    );
                    return Err(invalid(&key("mn"), problem));
                }
                let mut factors = BTreeMap::new();
                for (code, metric) in l.factors {
                    let m = Metric::from_name(&metric).map_err(|e| {
                        invalid(&format!("{}.{code:?}", key("factors")), e.to_string())
                    })?;
                    factors.insert(code, m);
                }
                hj.loggers.push(LoggerConfig {
                    mn: l.mn,
                    password: l.password,
                    factors,
                });
            }
            cfg.hj212 = Some(hj);
        }
        if let Some(b) = raw.duty_button {
            let default = crate::duty_button::DutyButtonConfig::default();
            let duration = |key: &str, v: Option<String>, default: Duration| {
                v.map(|v| parse_duration(&v).map_err(|e| invalid(key, e.to_string())))
                    .transpose()
                    .map(|d| d.unwrap_or(default))
            };
            let kind = b.kind.unwrap_or(default.kind);
            let text = b.text.unwrap_or(default.text);
            crate::status::check_report_kind(&kind)
                .map_err(|e| invalid("duty_button.kind", e.to_string()))?;
            crate::status::check_report_text(text.trim())
                .map_err(|e| invalid("duty_button.text", e.to_string()))?;
            cfg.duty_button = Some(crate::duty_button::DutyButtonConfig {
                chip: b.chip.unwrap_or(default.chip),
                line: b.line,
                active_low: b.active_low.unwrap_or(default.active_low),
                hold: duration("duty_button.hold", b.hold, default.hold)?,
                cooldown: duration("duty_button.cooldown", b.cooldown, default.cooldown)?,
                kind,
                text: text.trim().to_owned(),
            });
        }
        if let Some(sip) = raw.sip {
            let listen = sip.listen.parse().map_err(|e| {
                invalid(
                    "sip.listen",
                    format!("{:?} is not ip:port ({e})", sip.listen),
                )
            })?;
            if sip.allow.is_empty() {
                return Err(invalid(
                    "sip.allow",
                    "empty: name the room systems let in (an IP address or sip:user@host)".into(),
                ));
            }
            for (i, a) in sip.allow.iter().enumerate() {
                let sip_address = a.starts_with("sip:") && a.contains('@');
                if !sip_address && a.parse::<std::net::IpAddr>().is_err() {
                    return Err(invalid(
                        &format!("sip.allow[{i}]"),
                        format!("{a:?} is neither an IP address nor sip:user@host"),
                    ));
                }
            }
            let rtp_port = sip.rtp_port.unwrap_or(5070);
            if rtp_port == 0 || rtp_port > u16::MAX - 2 {
                return Err(invalid("sip.rtp_port", format!("{rtp_port}: 1 to 65533")));
            }
            let tls = match sip.tls {
                Some(t) => Some(crate::sip::SipTls {
                    listen: t.listen.parse().map_err(|e| {
                        invalid(
                            "sip.tls.listen",
                            format!("{:?} is not ip:port ({e})", t.listen),
                        )
                    })?,
                    cert: base.join(t.cert),
                    key: base.join(t.key),
                    ca: t.ca.map(|ca| base.join(ca)),
                }),
                None => None,
            };
            cfg.sip = Some(crate::sip::SipConfig {
                listen,
                allow: sip.allow,
                rtp_port,
                call: crate::sip::CallMedia::default(),
                tls,
            });
        }
        Ok(cfg)
    }
}

/// A TOML parser error in the words of the validated errors: (line, key, problem), the key
/// with its table (`sensor[1].address`, `hj212.logger[0].mn`), instead of the parser's
/// multi-line dump with its list of every field.
pub fn toml_problem(text: &str, e: &toml::de::Error) -> (Option<usize>, String, String) {
    let message = e.message().trim();
    let at = e.span().map(|s| s.start.min(text.len()));
    let line = at.map(|a| text[..a].matches('\n').count() + 1);
    // The table the error is in: the last header at or above its line, with its index for
    // an array of tables.
    let mut table = String::new();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut key_on_line = None;
    for (i, raw_line) in text.lines().enumerate() {
        if line.is_none_or(|l| i + 1 > l) {
            break;
        }
        let l = raw_line.trim();
        if let Some(name) = l.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim().to_owned();
            let n = counts.entry(name.clone()).or_insert(0);
            table = format!("{name}[{n}]");
            *n += 1;
        } else if let Some(name) = l.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = name.trim().to_owned();
        }
        if line == Some(i + 1) {
            key_on_line = l
                .split_once('=')
                .map(|(k, _)| k.trim().to_owned())
                .filter(|k| !k.is_empty() && !k.starts_with('['));
        }
    }
    let in_table = |k: &str| {
        if table.is_empty() {
            k.to_owned()
        } else {
            format!("{table}.{k}")
        }
    };
    let quoted = |prefix: &str| {
        message
            .strip_prefix(prefix)
            .and_then(|r| r.split('`').next())
            .map(str::to_owned)
    };
    if let Some(k) = quoted("unknown field `") {
        let known = message
            .split_once("expected ")
            .map(|(_, rest)| {
                let rest = rest.trim_start_matches("one of ").replace('`', "");
                format!(" (known here: {rest})")
            })
            .unwrap_or_default();
        return (line, in_table(&k), format!("unknown key{known}"));
    }
    if let Some(k) = quoted("missing field `") {
        // A key missing from the top level has no line; one missing from a table, the table's.
        let line = line.filter(|_| !table.is_empty());
        return (line, in_table(&k), "missing (it is required)".to_owned());
    }
    let key = match &key_on_line {
        Some(k) => in_table(k),
        None if table.is_empty() => "(file)".to_owned(),
        None => table.clone(),
    };
    let problem = match message.strip_prefix("invalid type: ") {
        Some(rest) => match rest.split_once(", expected ") {
            Some((found, expected)) => format!("wrong type: expected {expected}, found {found}"),
            None => format!("wrong type: {rest}"),
        },
        None => message.lines().last().unwrap_or(message).to_owned(),
    };
    (line, key, problem)
}

/// The first TOML example (a ```` ```toml ```` block) in a module's `//!` documentation, as
/// TOML text. The tests of every configuration file parse the documented example with it, so
/// the documentation stays true.
pub fn documented_example(source: &str) -> Option<String> {
    let start = source.find("//! ```toml")?;
    let rest = &source[start..];
    let body = rest
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("//! ```"));
    let text: Vec<&str> = body
        .map(|l| l.strip_prefix("//!").unwrap_or(l).trim_start_matches(' '))
        .collect();
    Some(text.join("\n"))
}

/// A setting's value that is not one: a size, a duration, a content source or a display, as
/// given.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum BadValue {
    #[error("{0:?} is not a size; use e.g. \"16MiB\"")]
    NotSize(String),
    #[error("unknown size unit {unit:?} in {given:?}; use B, KiB, MiB or GiB")]
    SizeUnit { unit: String, given: String },
    #[error("{0:?} is too large")]
    TooLarge(String),
    #[error("{given:?} is not a duration ({problem}); use e.g. \"30s\", \"5m\"")]
    NotDuration {
        given: String,
        problem: humantime::DurationError,
    },
    #[error("{0:?} is longer than 100 years")]
    TooLong(String),
    #[error("{0:?}: \"v4l2:/dev/videoN\" or \"test\"")]
    ContentSource(String),
    #[error("{0:?}: \"auto\", \"kms\", \"file:PATH\" or \"recording:PATH\"")]
    Display(String),
}

/// Parses a size such as `16MiB`, `512KiB`, `1GiB` or a plain number of bytes.
pub fn parse_size(s: &str) -> Result<u64, BadValue> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| BadValue::NotSize(s.into()))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "KB" => 1 << 10,
        "M" | "MiB" | "MB" => 1 << 20,
        "G" | "GiB" | "GB" => 1 << 30,
        other => {
            return Err(BadValue::SizeUnit {
                unit: other.into(),
                given: s.into(),
            });
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| BadValue::TooLarge(s.into()))
}

/// Parses a human duration such as `30s`, `5m` or `1h 30m`.
pub fn parse_duration(s: &str) -> Result<Duration, BadValue> {
    let d = humantime::parse_duration(s).map_err(|problem| BadValue::NotDuration {
        given: s.into(),
        problem,
    })?;
    if d > MAX_DURATION {
        return Err(BadValue::TooLong(s.into()));
    }
    Ok(d)
}

/// The longest duration any setting or flag takes (100 years): longer is a mistake, and
/// anything up to it can be added to the current time, and counted in u64 milliseconds,
/// without overflow or leaving the years a date can be written in.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `broker = "URL"` or `broker = ["URL", …]`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawBrokers {
    One(String),
    Many(Vec<String>),
}

impl RawBrokers {
    fn brokers(&self) -> Result<Brokers, crate::broker_url::BrokersError> {
        match self {
            RawBrokers::One(url) => url.parse(),
            RawBrokers::Many(urls) => Brokers::new(
                urls.iter()
                    .map(|u| u.parse())
                    .collect::<Result<Vec<BrokerUrl>, _>>()?,
            ),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    id: String,
    broker: RawBrokers,
    data_dir: PathBuf,
    keep_alive: Option<String>,
    subscribe_qos: Option<u8>,
    status_socket: Option<PathBuf>,
    #[serde(default)]
    telemetry: RawTelemetry,
    #[serde(default)]
    metric: BTreeMap<String, RawMetric>,
    #[serde(default)]
    sensor: Vec<RawSensor>,
    #[serde(default)]
    outbox: RawOutbox,
    #[serde(default)]
    delivery: RawDelivery,
    hj212: Option<RawHj212>,
    tls: Option<RawTls>,
    commands: Option<RawCommands>,
    #[serde(default)]
    meeting: RawMeeting,
    #[serde(default)]
    media: RawMedia,
    duty_button: Option<RawDutyButton>,
    update: Option<RawUpdate>,
    sip: Option<RawSip>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSip {
    listen: String,
    allow: Vec<String>,
    rtp_port: Option<u16>,
    tls: Option<RawSipTls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSipTls {
    listen: String,
    cert: PathBuf,
    key: PathBuf,
    ca: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpdate {
    key: PathBuf,
    max_rate: Option<String>,
    health_deadline: Option<String>,
    max_boots: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDutyButton {
    chip: Option<PathBuf>,
    line: u32,
    active_low: Option<bool>,
    hold: Option<String>,
    cooldown: Option<String>,
    kind: Option<String>,
    text: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMedia {
    display: Option<String>,
    layout: Option<String>,
    content: Option<String>,
}

/// The second video source a box shares as content (`[media] content`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContentSource {
    /// A V4L2 device: an HDMI capture of the presenter's laptop, a document camera.
    Camera(PathBuf),
    /// Colour bars (the simulator, tests).
    Test,
}

impl std::str::FromStr for ContentSource {
    type Err = BadValue;

    fn from_str(s: &str) -> Result<ContentSource, BadValue> {
        match s {
            "test" => Ok(ContentSource::Test),
            _ => match s.strip_prefix("v4l2:") {
                Some(p) if p.starts_with('/') => Ok(ContentSource::Camera(p.into())),
                _ => Err(BadValue::ContentSource(s.into())),
            },
        }
    }
}

/// Where the composed picture and the mixed sound go (`[media] display`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Display {
    /// The screen (`kmssink` on a plain display without a window system, else the system's
    /// choice) and the speaker.
    Screen { kms: bool },
    /// A Matroska file (H.264 and Opus): for tests, and for people to look at.
    File(PathBuf),
    /// A meeting's recording: Matroska files of at most `segment` each, the first at `path`,
    /// the next ones beside it ([`recording_segment`]).
    Recording {
        path: PathBuf,
        segment: std::time::Duration,
    },
    /// To a room system in a SIP call ([`crate::sip`]): H.264 and its sound over RTP, as the
    /// call agreed.
    Call(crate::sip::CallMedia),
}

/// Recordings are cut into files of this length (a long meeting is several files).
pub const RECORDING_SEGMENT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// Where segment `n` (from 0) of a recording to `path` goes: `path` itself, then
/// `meeting.001.mkv`, `meeting.002.mkv`… beside it.
pub fn recording_segment(path: &std::path::Path, n: u32) -> PathBuf {
    if n == 0 {
        return path.to_path_buf();
    }
    let stem = path.file_stem().map_or_else(
        || "recording".to_owned(),
        |s| s.to_string_lossy().into_owned(),
    );
    let ext = path
        .extension()
        .map_or_else(|| "mkv".to_owned(), |e| e.to_string_lossy().into_owned());
    path.with_file_name(format!("{stem}.{n:03}.{ext}"))
}

impl std::str::FromStr for Display {
    type Err = BadValue;

    fn from_str(s: &str) -> Result<Display, BadValue> {
        match s {
            "auto" => Ok(Display::Screen { kms: false }),
            "kms" => Ok(Display::Screen { kms: true }),
            _ => match s.split_once(':') {
                Some(("file", p)) if !p.is_empty() => Ok(Display::File(p.into())),
                Some(("recording", p)) if !p.is_empty() => Ok(Display::Recording {
                    path: p.into(),
                    segment: RECORDING_SEGMENT,
                }),
                _ => Err(BadValue::Display(s.into())),
            },
        }
    }
}

/// The meeting room's picture and sound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaConfig {
    pub display: Display,
    /// The layout until the chair sets one.
    pub layout: cuntong_core::media::layout::Layout,
    /// What it shares as content, if it can.
    pub content: Option<ContentSource>,
}

impl Default for MediaConfig {
    fn default() -> MediaConfig {
        MediaConfig {
            display: Display::Screen { kms: false },
            layout: cuntong_core::media::layout::Layout::OnePlus(5),
            content: None,
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMeeting {
    accept: Option<String>,
    rtp_port: Option<u16>,
    tier: Option<String>,
    audio_only_rtt: Option<String>,
    audio_only_loss: Option<f64>,
    receive_only_rtt: Option<String>,
    receive_only_loss: Option<f64>,
    media_host: Option<String>,
    relay: Option<String>,
    relay_advertise: Option<String>,
}

fn meeting_config(
    raw: RawMeeting,
    invalid: &impl Fn(&str, String) -> ConfigError,
) -> Result<MeetingConfig, ConfigError> {
    let accept = match raw.accept.as_deref() {
        None | Some("scheduled") => AcceptPolicy::Scheduled,
        Some("all") => AcceptPolicy::All,
        Some("manual") => AcceptPolicy::Manual,
        Some(other) => {
            return Err(invalid(
                "meeting.accept",
                format!("{other:?} is not one of \"scheduled\", \"all\", \"manual\""),
            ));
        }
    };
    let mut m = MeetingConfig {
        accept,
        ..MeetingConfig::default()
    };
    if let Some(p) = raw.rtp_port {
        m.rtp_port = p;
    }
    m.tier = match raw.tier.as_deref() {
        None => None,
        Some("full") => Some(Tier::Full),
        Some("audio-only") => Some(Tier::AudioOnly),
        Some("receive-only") => Some(Tier::ReceiveOnly),
        Some(other) => {
            return Err(invalid(
                "meeting.tier",
                format!("{other:?} is not one of \"full\", \"audio-only\", \"receive-only\""),
            ));
        }
    };
    let ms = |key: &str, v: Option<String>, default: f64| -> Result<f64, ConfigError> {
        v.map_or(Ok(default), |s| {
            parse_duration(&s)
                .map(|d| d.as_secs_f64() * 1000.0)
                .map_err(|p| invalid(key, p.to_string()))
        })
    };
    let percent = |key: &str, v: Option<f64>, default: f64| -> Result<f64, ConfigError> {
        match v {
            None => Ok(default),
            Some(p) if (0.0..=100.0).contains(&p) => Ok(p),
            Some(p) => Err(invalid(key, format!("{p} is not a percentage (0 to 100)"))),
        }
    };
    let t = m.thresholds;
    m.thresholds = TierThresholds {
        audio_only_rtt_ms: ms(
            "meeting.audio_only_rtt",
            raw.audio_only_rtt,
            t.audio_only_rtt_ms,
        )?,
        audio_only_loss_percent: percent(
            "meeting.audio_only_loss",
            raw.audio_only_loss,
            t.audio_only_loss_percent,
        )?,
        receive_only_rtt_ms: ms(
            "meeting.receive_only_rtt",
            raw.receive_only_rtt,
            t.receive_only_rtt_ms,
        )?,
        receive_only_loss_percent: percent(
            "meeting.receive_only_loss",
            raw.receive_only_loss,
            t.receive_only_loss_percent,
        )?,
    };
    if let Some(h) = raw.media_host {
        if h.parse::<std::net::IpAddr>().is_err() {
            return Err(invalid(
                "meeting.media_host",
                format!("{h:?} is not an IP address"),
            ));
        }
        m.media_host = Some(h);
    }
    if let Some(r) = raw.relay {
        let listen: std::net::SocketAddr = r
            .parse()
            .map_err(|e| invalid("meeting.relay", format!("{r:?} is not ip:port ({e})")))?;
        let advertise = match (raw.relay_advertise, &m.media_host) {
            (Some(a), _) => a
                .parse::<std::net::SocketAddr>()
                .map(|a| a.to_string())
                .map_err(|e| {
                    invalid(
                        "meeting.relay_advertise",
                        format!("{a:?} is not ip:port ({e})"),
                    )
                })?,
            (None, Some(h)) => cuntong_core::meeting::relays::address(h, listen.port()),
            (None, None) if !listen.ip().is_unspecified() => listen.to_string(),
            (None, None) => {
                return Err(invalid(
                    "meeting.relay",
                    "listening on every address: say where sites send (relay_advertise or media_host)"
                        .into(),
                ));
            }
        };
        m.relay = Some((listen, advertise));
    }
    Ok(m)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCommands {
    key: PathBuf,
    reboot: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHj212 {
    listen: Option<String>,
    serial: Option<String>,
    baud: Option<u32>,
    max_connections: Option<usize>,
    idle_timeout: Option<String>,
    #[serde(default)]
    logger: Vec<RawLogger>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLogger {
    mn: String,
    password: Option<String>,
    #[serde(default)]
    factors: BTreeMap<String, String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutbox {
    budget: Option<String>,
    sync: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDelivery {
    rate: Option<u32>,
    burst: Option<u32>,
    order: Option<String>,
    resend_after: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTelemetry {
    health_interval: Option<String>,
    batch_max: Option<usize>,
    batch_age: Option<String>,
    queue: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetric {
    interval: Option<String>,
    deadband: Option<f64>,
    max_silence: Option<String>,
    decimals: Option<u8>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSensor {
    kind: String,
    bus: Option<String>,
    address: Option<u8>,
    interval: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<TerminalConfig, ConfigError> {
        TerminalConfig::parse(text, Path::new("terminal.toml"))
    }

    const BASE: &str =
        "id = \"130102001001-main\"\nbroker = \"mqtt://127.0.0.1:1883\"\ndata_dir = \"/tmp/x\"\n";

    #[test]
    fn the_documented_example_parses() {
        let text = documented_example(include_str!("config.rs")).unwrap();
        let cfg = parse(&text).unwrap();
        assert_eq!(cfg.sensors.len(), 1);
        assert_eq!(cfg.sensors[0].interval, Duration::from_secs(30));
        let p = &cfg.metrics[&Metric::AirTemp];
        assert_eq!(
            (p.interval_ms, p.deadband, p.max_silence_ms),
            (60_000, 0.2, 900_000)
        );
        assert_eq!(cfg.outbox.budget_bytes, 16 << 20);
        assert_eq!(
            cfg.outbox.sync,
            SyncPolicy::Interval(Duration::from_secs(1))
        );
        assert_eq!(cfg.delivery.order, ReplayOrder::OldestFirst);
        assert_eq!(cfg.delivery.resend_after_ms, 30_000);
        assert_eq!(cfg.meeting.accept, AcceptPolicy::Scheduled);
        assert_eq!(cfg.meeting.thresholds.receive_only_rtt_ms, 1000.0);
        let hj = cfg.hj212.unwrap();
        assert_eq!(hj.listen.map(|l| l.port()), Some(6000));
        assert_eq!(hj.serial, None);
        assert_eq!(hj.max_connections, 4);
        assert_eq!(hj.idle_timeout, Duration::from_secs(600));
        assert_eq!(hj.loggers[0].password.as_deref(), Some("100000"));
        assert_eq!(hj.loggers[0].factors["011"], Metric::W01018);
        assert_eq!(cfg.media.display, Display::Screen { kms: false });
        assert_eq!(cfg.media.layout.to_string(), "1+5");
    }

    #[test]
    fn a_recordings_segments_go_beside_its_first_file() {
        let first = std::path::Path::new("/srv/rec/县务会.mkv");
        assert_eq!(recording_segment(first, 0), first);
        assert_eq!(
            recording_segment(first, 1),
            std::path::Path::new("/srv/rec/县务会.001.mkv")
        );
        assert_eq!(
            recording_segment(std::path::Path::new("/srv/rec/m1"), 12),
            std::path::Path::new("/srv/rec/m1.012.mkv")
        );
    }

    #[test]
    fn the_rooms_display_and_layout_are_read_and_bad_ones_named() {
        let cfg = parse(&format!(
            "{BASE}[media]\ndisplay = \"file:/tmp/room.mkv\"\nlayout = \"3x3\"\n"
        ))
        .unwrap();
        assert_eq!(cfg.media.display, Display::File("/tmp/room.mkv".into()));
        assert_eq!(cfg.media.layout.to_string(), "3x3");
        assert_eq!(cfg.media.content, None);
        let shared = |text: &str| {
            parse(&format!("{BASE}[media]\ncontent = \"{text}\"\n")).map(|c| c.media.content)
        };
        assert_eq!(
            shared("v4l2:/dev/video1").unwrap(),
            Some(ContentSource::Camera("/dev/video1".into()))
        );
        assert_eq!(shared("test").unwrap(), Some(ContentSource::Test));
        assert_eq!(
            "recording:/srv/rec/room.mkv".parse::<Display>(),
            Ok(Display::Recording {
                path: "/srv/rec/room.mkv".into(),
                segment: RECORDING_SEGMENT
            })
        );
        for (text, key) in [
            ("content = \"hdmi\"", "media.content"),
            ("content = \"v4l2:video1\"", "media.content"),
            ("display = \"hdmi\"", "media.display"),
            ("display = \"file:\"", "media.display"),
            ("layout = \"5x5\"", "media.layout"),
            ("layout = \"1+9\"", "media.layout"),
        ] {
            let e = parse(&format!("{BASE}[media]\n{text}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn the_duty_button_documented_with_its_module_parses() {
        let text = documented_example(include_str!("duty_button.rs")).unwrap();
        let cfg = parse(&format!("{BASE}{text}\n")).unwrap();
        let b = cfg.duty_button.unwrap();
        assert_eq!(
            (b.line, b.active_low, b.kind.as_str()),
            (17, true, "emergency")
        );
        assert_eq!(b.hold, Duration::from_secs(1));
        let err = |extra: &str| parse(&format!("{BASE}{extra}")).unwrap_err().to_string();
        assert!(err("[duty_button]\nline = 3\nkind = \"SOS!\"\n").contains("duty_button.kind"));
        assert!(err("[duty_button]\nline = 3\nhold = \"long\"\n").contains("duty_button.hold"));
        assert!(err("[duty_button]\nchip = \"/dev/gpiochip0\"\n").contains("line"));
    }

    #[test]
    fn a_list_of_brokers_and_the_subscription_qos_parse_and_bad_ones_are_refused_naming_the_key() {
        let list = |urls: &str| {
            format!("id = \"130102001001-main\"\nbroker = {urls}\ndata_dir = \"/x\"\n")
        };
        let cfg = parse(&list(r#"["mqtt://a:1883", "mqtt://b:1884", "mqtt://c"]"#)).unwrap();
        let hosts: Vec<_> = cfg
            .broker
            .iter()
            .map(|b| (b.host.as_str(), b.port))
            .collect();
        assert_eq!(hosts, [("a", 1883), ("b", 1884), ("c", 1883)]);
        for bad in [
            r#"["mqtts://a:8883", "mqtt://b:1883"]"#,
            r#"["mqtt://a:1883", "http://b"]"#,
            "[]",
        ] {
            let e = parse(&list(bad)).unwrap_err().to_string();
            assert!(e.starts_with("terminal.toml: broker: "), "{bad}: {e}");
        }
        let qos = |v: &str| parse(&format!("{BASE}subscribe_qos = {v}\n"));
        assert_eq!(qos("0").unwrap().subscribe_qos, rumqttc::QoS::AtMostOnce);
        assert_eq!(
            parse(BASE).unwrap().subscribe_qos,
            rumqttc::QoS::AtLeastOnce
        );
        let e = qos("2").unwrap_err().to_string();
        assert!(
            e.starts_with("terminal.toml: subscribe_qos: 2: must be 0 or 1"),
            "{e}"
        );
        let mixed = parse(&list(r#"["mqtts://a:8883", "mqtt://b:1883"]"#))
            .unwrap_err()
            .to_string();
        assert!(
            mixed.contains("mqtts://a:8883") && mixed.contains("mqtt://b:1883"),
            "{mixed}"
        );
    }

    /// The parser's own refusals name the table, the key and the line, in one line, as the
    /// validated errors do.
    #[test]
    fn parser_errors_name_the_line_the_table_and_the_key() {
        let err = |extra: &str| parse(&format!("{BASE}{extra}")).unwrap_err().to_string();
        let cases = [
            // Wrong type.
            (
                "[outbox]\nbudget = 5\n",
                "terminal.toml: line 5: outbox.budget: wrong type: expected a string, found integer `5`",
            ),
            (
                "[[sensor]]\nkind = \"sht3x\"\n[[sensor]]\nkind = \"sht3x\"\naddress = \"0x44\"\n",
                "terminal.toml: line 8: sensor[1].address: wrong type: expected u8, found string \"0x44\"",
            ),
            (
                "keep_alive = 30\n",
                "terminal.toml: line 4: keep_alive: wrong type",
            ),
            // Unknown key.
            (
                "[[hj212.logger]]\nmn = \"X1\"\npasword = \"1\"\n",
                "terminal.toml: line 6: hj212.logger[0].pasword: unknown key (known here: mn, password, factors)",
            ),
            (
                "[delivery]\nspeed = 3\n",
                "terminal.toml: line 5: delivery.speed: unknown key",
            ),
            // Missing key.
            (
                "[[sensor]]\ninterval = \"1s\"\n",
                "terminal.toml: line 4: sensor[0].kind: missing (it is required)",
            ),
            (
                "[duty_button]\nhold = \"1s\"\n",
                "duty_button.line: missing",
            ),
            // Plain syntax.
            ("[meeting\n", "terminal.toml: line 4: "),
        ];
        for (extra, expected) in cases {
            let e = err(extra);
            assert!(e.contains(expected), "{extra:?} gave {e:?}");
            assert!(
                !e.contains('\n') && !e.contains(" | "),
                "one line, no dump: {e:?}"
            );
            assert!(!e.contains("TOML parse error"), "{e:?}");
        }
        let missing = parse("broker = \"mqtt://h\"\ndata_dir = \"/x\"\n").unwrap_err();
        assert_eq!(
            missing.to_string(),
            "terminal.toml: id: missing (it is required)"
        );
    }

    #[test]
    fn errors_name_the_key() {
        let err = |extra: &str| parse(&format!("{BASE}{extra}")).unwrap_err().to_string();
        assert_eq!(
            err("keep_alive = \"soon\"\n")
                .split(':')
                .take(2)
                .collect::<Vec<_>>(),
            ["terminal.toml", " keep_alive"]
        );
        assert!(
            err("[[sensor]]\nkind = \"sht3x\"\nbus = \"/dev/i2c-1\"\naddress = 0x50\n")
                .contains("sensor[0].address: 0x50 is not an SHT3x address")
        );
        assert!(
            err("[[sensor]]\nkind = \"bmp280\"\n").contains("sensor[0].kind: unknown sensor kind")
        );
        assert!(err("[metric.\"a b\"]\n").contains("metric.\"a b\""));
        assert!(err("colour = 1\n").starts_with("terminal.toml: line 4: colour: unknown key"));
        assert!(
            err("[outbox]\nbudget = \"lots\"\n").contains("outbox.budget: \"lots\" is not a size")
        );
        assert!(err("[delivery]\norder = \"random\"\n").contains("delivery.order"));
        assert!(err("[meeting]\naccept = \"maybe\"\n").contains("meeting.accept: \"maybe\""));
        assert!(err("[meeting]\ntier = \"4k\"\n").contains("meeting.tier"));
        assert!(err("[meeting]\naudio_only_loss = 150.0\n").contains("meeting.audio_only_loss"));
        assert!(err("[meeting]\nheartbeat = \"1s\"\n").contains("meeting.heartbeat: unknown key"));
        assert!(
            err("[telemetry]\nhealth_interval = \"0s\"\n")
                .contains("telemetry.health_interval: must be more than 0s")
        );
        let sip = |body: &str| err(&format!("[sip]\nlisten = \"0.0.0.0:5060\"\n{body}"));
        assert!(sip("allow = []\n").contains("sip.allow: empty"));
        assert!(sip("allow = [\"10.1.2.3\", \"hall\"]\n").contains("sip.allow[1]: \"hall\""));
        assert!(sip("allow = [\"10.1.2.3\"]\nrtp_port = 0\n").contains("sip.rtp_port: 0"));
        assert!(err("[sip]\nlisten = \"x\"\nallow = [\"10.1.2.3\"]\n").contains("sip.listen"));
        let gateway = parse(&format!(
            "{BASE}[sip]\nlisten = \"10.0.0.1:5060\"\nallow = [\"sip:hall@10.0.0.9\"]\n"
        ))
        .unwrap();
        let sip = gateway.sip.expect("the [sip] section");
        assert_eq!((sip.listen.port(), sip.rtp_port), (5060, 5070));
        assert_eq!(sip.allow, ["sip:hall@10.0.0.9"]);
        let bad_id =
            parse("id = \"13-x\"\nbroker = \"mqtt://h\"\ndata_dir = \"/x\"\n").unwrap_err();
        assert!(
            bad_id
                .to_string()
                .starts_with("terminal.toml: id: site code has 2 digits")
        );
    }
}
