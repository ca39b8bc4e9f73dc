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
//! audio_only_loss = 10      # keep-alives lost (% of the last 20) at or above which it joins audio-only
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

use cuntong_core::delivery::DeliveryConfig;
use cuntong_core::sampler::MetricPolicy;
use cuntong_core::telemetry::Metric;
use cuntong_core::terminal_id::TerminalId;

use crate::broker_url::Brokers;
use crate::conference::MeetingConfig;
use crate::hj212::Hj212Config;
use crate::outbox::OutboxConfig;
use crate::tls::TlsFiles;

mod media;
mod problems;
mod raw;
mod sections;
mod values;

pub use media::{ContentSource, Display, MediaConfig, RECORDING_SEGMENT, recording_segment};
pub use problems::toml_problem;
pub use values::{BadValue, MAX_DURATION, parse_duration, parse_size};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::SyncPolicy;
    use cuntong_core::delivery::ReplayOrder;
    use cuntong_core::meeting::participant::AcceptPolicy;

    fn parse(text: &str) -> Result<TerminalConfig, ConfigError> {
        TerminalConfig::parse(text, Path::new("terminal.toml"))
    }

    const BASE: &str =
        "id = \"130102001001-main\"\nbroker = \"mqtt://127.0.0.1:1883\"\ndata_dir = \"/tmp/x\"\n";

    #[test]
    fn the_documented_example_parses() {
        let text = documented_example(include_str!("mod.rs")).unwrap();
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
        let text = documented_example(include_str!("../duty_button.rs")).unwrap();
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
