//! Checking each table of a terminal's configuration file and turning it into the settings of
//! a [`TerminalConfig`], naming the key of any value that is refused.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use cuntong_core::delivery::ReplayOrder;
use cuntong_core::meeting::participant::AcceptPolicy;
use cuntong_core::meeting::{Tier, TierThresholds};
use cuntong_core::sampler::MetricPolicy;
use cuntong_core::telemetry::Metric;
use cuntong_core::terminal_id::TerminalId;

use super::raw::{
    RawCommands, RawConfig, RawDelivery, RawDutyButton, RawHj212, RawMedia, RawMeeting, RawMetric,
    RawOutbox, RawSensor, RawSip, RawTelemetry, RawTls, RawUpdate,
};
use super::{
    BadValue, CommandsConfig, ConfigError, SensorConfig, SensorKind, TerminalConfig,
    parse_duration, parse_size, toml_problem,
};
use crate::conference::MeetingConfig;
use crate::hj212::{Hj212Config, LoggerConfig, SerialConfig};
use crate::outbox::SyncPolicy;
use crate::tls::TlsFiles;

impl TerminalConfig {
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
        let c = Check { path };
        let invalid = |key: &str, problem: String| c.invalid(key, problem);
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
        cfg.keep_alive = c.duration("keep_alive", &raw.keep_alive, cfg.keep_alive)?;
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
        telemetry(&mut cfg, raw.telemetry, raw.metric, &c)?;
        sensors(&mut cfg, raw.sensor, &c)?;
        outbox_and_delivery(&mut cfg, raw.outbox, raw.delivery, &c)?;
        files(&mut cfg, raw.tls, raw.commands, &c);
        cfg.update = raw.update.map(|u| update(u, &c)).transpose()?;
        media(&mut cfg, raw.meeting, raw.media, &c)?;
        cfg.hj212 = raw.hj212.map(|h| hj212(h, &c)).transpose()?;
        cfg.duty_button = raw.duty_button.map(|b| duty_button(b, &c)).transpose()?;
        cfg.sip = raw.sip.map(|sip| sip_gateway(sip, &c)).transpose()?;
        Ok(cfg)
    }
}

/// How a table's values are refused: naming the file and the key.
struct Check<'a> {
    path: &'a Path,
}

impl Check<'_> {
    fn invalid(&self, key: &str, problem: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            key: key.to_owned(),
            problem,
        }
    }

    /// The duration at `key`, or `default` without one.
    fn duration(
        &self,
        key: &str,
        v: &Option<String>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) => parse_duration(s).map_err(|p| self.invalid(key, p.to_string())),
        }
    }

    /// Where file names in the config are taken from: the config file's directory, so a
    /// bundle works wherever it lands.
    fn base(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }
}
/// `[telemetry]` and the `[metric."NAME"]` policies.
fn telemetry(
    cfg: &mut TerminalConfig,
    t: RawTelemetry,
    metrics: BTreeMap<String, RawMetric>,
    c: &Check<'_>,
) -> Result<(), ConfigError> {
    cfg.health_interval = c.duration(
        "telemetry.health_interval",
        &t.health_interval,
        cfg.health_interval,
    )?;
    if cfg.health_interval.is_zero() {
        return Err(c.invalid("telemetry.health_interval", "must be more than 0s".into()));
    }
    cfg.batch_age = c.duration("telemetry.batch_age", &t.batch_age, cfg.batch_age)?;
    if let Some(n) = t.batch_max {
        if n == 0 || n > 1000 {
            return Err(c.invalid(
                "telemetry.batch_max",
                format!("{n} is not between 1 and 1000"),
            ));
        }
        cfg.batch_max = n;
    }
    if let Some(n) = t.queue {
        if n == 0 {
            return Err(c.invalid("telemetry.queue", "must be at least 1".into()));
        }
        cfg.queue_capacity = n;
    }
    for (name, m) in metrics {
        let key = |field: &str| format!("metric.{name:?}.{field}");
        let metric = Metric::from_name(&name)
            .map_err(|e| c.invalid(&format!("metric.{name:?}"), e.to_string()))?;
        let mut policy = MetricPolicy::every(&metric, cfg.health_interval.as_millis() as u64);
        policy.interval_ms = c
            .duration(&key("interval"), &m.interval, Duration::ZERO)?
            .as_millis() as u64;
        if let Some(d) = m.deadband {
            if !(d.is_finite() && d >= 0.0) {
                return Err(c.invalid(
                    &key("deadband"),
                    format!("{d} is not a non-negative number"),
                ));
            }
            policy.deadband = d;
        }
        let silence = c.duration(
            &key("max_silence"),
            &m.max_silence,
            Duration::from_secs(900),
        )?;
        policy.max_silence_ms = silence.as_millis() as u64;
        if let Some(dec) = m.decimals {
            if dec > cuntong_core::decimal::MAX_SCALE {
                return Err(c.invalid(&key("decimals"), format!("{dec} is more than 18")));
            }
            policy.scale = dec;
        }
        cfg.metrics.insert(metric, policy);
    }
    Ok(())
}

/// The `[[sensor]]` tables.
fn sensors(
    cfg: &mut TerminalConfig,
    sensors: Vec<RawSensor>,
    c: &Check<'_>,
) -> Result<(), ConfigError> {
    for (i, s) in sensors.into_iter().enumerate() {
        let key = |field: &str| format!("sensor[{i}].{field}");
        let interval = c.duration(&key("interval"), &s.interval, Duration::from_secs(60))?;
        if interval.is_zero() {
            return Err(c.invalid(&key("interval"), "must be more than 0s".into()));
        }
        let kind = match s.kind.as_str() {
            "sht3x" => {
                let address = s.address.unwrap_or(0x44);
                if address != 0x44 && address != 0x45 {
                    return Err(c.invalid(
                        &key("address"),
                        format!("{address:#04x} is not an SHT3x address (0x44 or 0x45)"),
                    ));
                }
                let bus = s.bus.ok_or_else(|| {
                    c.invalid(&key("bus"), "missing (e.g. \"/dev/i2c-1\")".into())
                })?;
                SensorKind::Sht3x { bus, address }
            }
            other => {
                return Err(c.invalid(
                    &key("kind"),
                    format!("unknown sensor kind {other:?} (known: sht3x)"),
                ));
            }
        };
        cfg.sensors.push(SensorConfig { kind, interval });
    }
    Ok(())
}

/// `[outbox]` and `[delivery]`.
fn outbox_and_delivery(
    cfg: &mut TerminalConfig,
    outbox: RawOutbox,
    d: RawDelivery,
    c: &Check<'_>,
) -> Result<(), ConfigError> {
    if let Some(b) = outbox.budget {
        let bytes = parse_size(&b).map_err(|p| c.invalid("outbox.budget", p.to_string()))?;
        if bytes < 4096 {
            return Err(c.invalid("outbox.budget", format!("{b:?} is less than 4KiB")));
        }
        cfg.outbox.budget_bytes = bytes;
    }
    match outbox.sync.as_deref() {
        None => {}
        Some("always") => cfg.outbox.sync = SyncPolicy::EveryRecord,
        Some(d) => {
            let d = parse_duration(d)
                .map_err(|p| c.invalid("outbox.sync", format!("{p}, or \"always\"")))?;
            cfg.outbox.sync = SyncPolicy::Interval(d);
        }
    }
    if let Some(r) = d.rate {
        cfg.delivery.rate_per_s = r;
    }
    if let Some(b) = d.burst {
        if b == 0 {
            return Err(c.invalid("delivery.burst", "must be at least 1".into()));
        }
        cfg.delivery.burst = b;
    }
    cfg.delivery.order = match d.order.as_deref() {
        None | Some("oldest-first") => ReplayOrder::OldestFirst,
        Some("newest-first") => ReplayOrder::NewestFirst,
        Some(o) => {
            return Err(c.invalid(
                "delivery.order",
                format!("{o:?} is not \"oldest-first\" or \"newest-first\""),
            ));
        }
    };
    let resend = c.duration(
        "delivery.resend_after",
        &d.resend_after,
        Duration::from_secs(30),
    )?;
    if resend < Duration::from_secs(1) {
        return Err(c.invalid("delivery.resend_after", "must be at least 1s".into()));
    }
    cfg.delivery.resend_after_ms = resend.as_millis() as u64;
    Ok(())
}

/// `[tls]` and `[commands]`: their files, relative to the config file.
fn files(
    cfg: &mut TerminalConfig,
    tls: Option<RawTls>,
    commands: Option<RawCommands>,
    c: &Check<'_>,
) {
    cfg.tls = tls.map(|t| TlsFiles {
        ca: c.base().join(t.ca),
        cert: c.base().join(t.cert),
        key: c.base().join(t.key),
    });
    cfg.commands = commands.map(|cmd| CommandsConfig {
        key: c.base().join(cmd.key),
        reboot: cmd.reboot.filter(|r| !r.is_empty()),
    });
}

/// `[update]`.
fn update(u: RawUpdate, c: &Check<'_>) -> Result<crate::update::UpdateConfig, ConfigError> {
    let max_rate = match &u.max_rate {
        None => crate::update::DEFAULT_MAX_RATE,
        Some(r) => parse_size(r).map_err(|p| c.invalid("update.max_rate", p.to_string()))?,
    };
    if max_rate < 1024 {
        return Err(c.invalid("update.max_rate", "must be at least 1KiB (a second)".into()));
    }
    let mut trial = cuntong_core::update::TrialRules::default();
    let deadline = c.duration(
        "update.health_deadline",
        &u.health_deadline,
        Duration::from_millis(trial.deadline_ms),
    )?;
    if deadline < Duration::from_secs(10) {
        return Err(c.invalid("update.health_deadline", "must be at least 10s".into()));
    }
    trial.deadline_ms = deadline.as_millis() as u64;
    if let Some(n) = u.max_boots {
        if !(1..=20).contains(&n) {
            return Err(c.invalid("update.max_boots", format!("{n} is not between 1 and 20")));
        }
        trial.max_boots = n;
    }
    Ok(crate::update::UpdateConfig {
        key: c.base().join(u.key),
        max_rate,
        trial,
    })
}

/// `[meeting]` and `[media]`, and that `[tls]` and the broker's scheme agree.
fn media(
    cfg: &mut TerminalConfig,
    meeting: RawMeeting,
    media: RawMedia,
    c: &Check<'_>,
) -> Result<(), ConfigError> {
    cfg.meeting = meeting_config(meeting, &|k: &str, p: String| c.invalid(k, p))?;
    if let Some(d) = media.display {
        cfg.media.display = d
            .parse()
            .map_err(|e: BadValue| c.invalid("media.display", e.to_string()))?;
    }
    if let Some(content) = media.content {
        cfg.media.content = Some(
            content
                .parse()
                .map_err(|e: BadValue| c.invalid("media.content", e.to_string()))?,
        );
    }
    if let Some(l) = media.layout {
        cfg.media.layout = l
            .parse()
            .map_err(|e: cuntong_core::media::layout::BadLayout| {
                c.invalid("media.layout", e.to_string())
            })?;
    }
    match (cfg.broker.tls(), cfg.tls.is_some()) {
        (true, false) => {
            return Err(c.invalid(
                "tls",
                "an mqtts:// broker needs [tls] ca, cert and key".into(),
            ));
        }
        (false, true) => {
            return Err(c.invalid(
                "broker",
                "[tls] is set, so the broker must be mqtts://".into(),
            ));
        }
        _ => {}
    }
    Ok(())
}

/// `[hj212]` and its `[[hj212.logger]]`s.
fn hj212(h: RawHj212, c: &Check<'_>) -> Result<Hj212Config, ConfigError> {
    let listen = h
        .listen
        .map(|l| {
            l.parse()
                .map_err(|e| c.invalid("hj212.listen", format!("{l:?} is not host:port ({e})")))
        })
        .transpose()?;
    let serial = h.serial.map(|path| SerialConfig {
        path,
        baud: h.baud.unwrap_or(9600),
    });
    if listen.is_none() && serial.is_none() {
        return Err(c.invalid(
            "hj212",
            "needs listen = \"host:port\", serial = \"/dev/ttyS1\", or both".into(),
        ));
    }
    let mut hj = Hj212Config::new(listen, serial);
    if let Some(n) = h.max_connections {
        if !(1..=1024).contains(&n) {
            return Err(c.invalid(
                "hj212.max_connections",
                format!("{n} is not between 1 and 1024"),
            ));
        }
        hj.max_connections = n;
    }
    hj.idle_timeout = c.duration("hj212.idle_timeout", &h.idle_timeout, hj.idle_timeout)?;
    if hj.idle_timeout < Duration::from_secs(1) {
        return Err(c.invalid("hj212.idle_timeout", "must be at least 1s".into()));
    }
    for (i, l) in h.logger.into_iter().enumerate() {
        let key = |f: &str| format!("hj212.logger[{i}].{f}");
        let valid_mn =
            !l.mn.is_empty() && l.mn.len() <= 24 && l.mn.bytes().all(|b| b.is_ascii_alphanumeric());
        if !valid_mn {
            let problem = format!(
                "{:?} is not a device code (1 to 24 letters and digits)",
                l.mn
            );
            return Err(c.invalid(&key("mn"), problem));
        }
        let mut factors = BTreeMap::new();
        for (code, metric) in l.factors {
            let m = Metric::from_name(&metric)
                .map_err(|e| c.invalid(&format!("{}.{code:?}", key("factors")), e.to_string()))?;
            factors.insert(code, m);
        }
        hj.loggers.push(LoggerConfig {
            mn: l.mn,
            password: l.password,
            factors,
        });
    }
    Ok(hj)
}

/// `[duty_button]`.
fn duty_button(
    b: RawDutyButton,
    c: &Check<'_>,
) -> Result<crate::duty_button::DutyButtonConfig, ConfigError> {
    let default = crate::duty_button::DutyButtonConfig::default();
    let duration = |key: &str, v: Option<String>, default: Duration| {
        v.map(|v| parse_duration(&v).map_err(|e| c.invalid(key, e.to_string())))
            .transpose()
            .map(|d| d.unwrap_or(default))
    };
    let kind = b.kind.unwrap_or(default.kind);
    let text = b.text.unwrap_or(default.text);
    crate::status::check_report_kind(&kind)
        .map_err(|e| c.invalid("duty_button.kind", e.to_string()))?;
    crate::status::check_report_text(text.trim())
        .map_err(|e| c.invalid("duty_button.text", e.to_string()))?;
    Ok(crate::duty_button::DutyButtonConfig {
        chip: b.chip.unwrap_or(default.chip),
        line: b.line,
        active_low: b.active_low.unwrap_or(default.active_low),
        hold: duration("duty_button.hold", b.hold, default.hold)?,
        cooldown: duration("duty_button.cooldown", b.cooldown, default.cooldown)?,
        kind,
        text: text.trim().to_owned(),
    })
}

/// `[sip]`.
fn sip_gateway(sip: RawSip, c: &Check<'_>) -> Result<crate::sip::SipConfig, ConfigError> {
    let listen = sip.listen.parse().map_err(|e| {
        c.invalid(
            "sip.listen",
            format!("{:?} is not ip:port ({e})", sip.listen),
        )
    })?;
    if sip.allow.is_empty() {
        return Err(c.invalid(
            "sip.allow",
            "empty: name the room systems let in (an IP address or sip:user@host)".into(),
        ));
    }
    for (i, a) in sip.allow.iter().enumerate() {
        let sip_address = a.starts_with("sip:") && a.contains('@');
        if !sip_address && a.parse::<std::net::IpAddr>().is_err() {
            return Err(c.invalid(
                &format!("sip.allow[{i}]"),
                format!("{a:?} is neither an IP address nor sip:user@host"),
            ));
        }
    }
    let rtp_port = sip.rtp_port.unwrap_or(5070);
    if rtp_port == 0 || rtp_port > u16::MAX - 2 {
        return Err(c.invalid("sip.rtp_port", format!("{rtp_port}: 1 to 65533")));
    }
    let tls = match sip.tls {
        Some(t) => Some(crate::sip::SipTls {
            listen: t.listen.parse().map_err(|e| {
                c.invalid(
                    "sip.tls.listen",
                    format!("{:?} is not ip:port ({e})", t.listen),
                )
            })?,
            cert: c.base().join(t.cert),
            key: c.base().join(t.key),
            ca: t.ca.map(|ca| c.base().join(ca)),
        }),
        None => None,
    };
    Ok(crate::sip::SipConfig {
        listen,
        allow: sip.allow,
        rtp_port,
        call: crate::sip::CallMedia::default(),
        tls,
    })
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
