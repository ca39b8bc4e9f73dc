//! The terminal's configuration file as the TOML reader sees it: every table and key, with
//! their values still as written, before they are checked.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::broker_url::{BrokerUrl, Brokers};

/// `broker = "URL"` or `broker = ["URL", …]`.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawBrokers {
    One(String),
    Many(Vec<String>),
}

impl RawBrokers {
    pub(super) fn brokers(&self) -> Result<Brokers, crate::broker_url::BrokersError> {
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
pub(super) struct RawConfig {
    pub(super) id: String,
    pub(super) broker: RawBrokers,
    pub(super) data_dir: PathBuf,
    pub(super) keep_alive: Option<String>,
    pub(super) subscribe_qos: Option<u8>,
    pub(super) status_socket: Option<PathBuf>,
    #[serde(default)]
    pub(super) telemetry: RawTelemetry,
    #[serde(default)]
    pub(super) metric: BTreeMap<String, RawMetric>,
    #[serde(default)]
    pub(super) sensor: Vec<RawSensor>,
    #[serde(default)]
    pub(super) outbox: RawOutbox,
    #[serde(default)]
    pub(super) delivery: RawDelivery,
    pub(super) hj212: Option<RawHj212>,
    pub(super) tls: Option<RawTls>,
    pub(super) commands: Option<RawCommands>,
    #[serde(default)]
    pub(super) meeting: RawMeeting,
    #[serde(default)]
    pub(super) media: RawMedia,
    pub(super) duty_button: Option<RawDutyButton>,
    pub(super) update: Option<RawUpdate>,
    pub(super) sip: Option<RawSip>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSip {
    pub(super) listen: String,
    pub(super) allow: Vec<String>,
    pub(super) rtp_port: Option<u16>,
    pub(super) tls: Option<RawSipTls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSipTls {
    pub(super) listen: String,
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
    pub(super) ca: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpdate {
    pub(super) key: PathBuf,
    pub(super) max_rate: Option<String>,
    pub(super) health_deadline: Option<String>,
    pub(super) max_boots: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDutyButton {
    pub(super) chip: Option<PathBuf>,
    pub(super) line: u32,
    pub(super) active_low: Option<bool>,
    pub(super) hold: Option<String>,
    pub(super) cooldown: Option<String>,
    pub(super) kind: Option<String>,
    pub(super) text: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMedia {
    pub(super) display: Option<String>,
    pub(super) layout: Option<String>,
    pub(super) content: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMeeting {
    pub(super) accept: Option<String>,
    pub(super) rtp_port: Option<u16>,
    pub(super) tier: Option<String>,
    pub(super) audio_only_rtt: Option<String>,
    pub(super) audio_only_loss: Option<f64>,
    pub(super) receive_only_rtt: Option<String>,
    pub(super) receive_only_loss: Option<f64>,
    pub(super) media_host: Option<String>,
    pub(super) relay: Option<String>,
    pub(super) relay_advertise: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCommands {
    pub(super) key: PathBuf,
    pub(super) reboot: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) ca: PathBuf,
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHj212 {
    pub(super) listen: Option<String>,
    pub(super) serial: Option<String>,
    pub(super) baud: Option<u32>,
    pub(super) max_connections: Option<usize>,
    pub(super) idle_timeout: Option<String>,
    #[serde(default)]
    pub(super) logger: Vec<RawLogger>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLogger {
    pub(super) mn: String,
    pub(super) password: Option<String>,
    #[serde(default)]
    pub(super) factors: BTreeMap<String, String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutbox {
    pub(super) budget: Option<String>,
    pub(super) sync: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDelivery {
    pub(super) rate: Option<u32>,
    pub(super) burst: Option<u32>,
    pub(super) order: Option<String>,
    pub(super) resend_after: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTelemetry {
    pub(super) health_interval: Option<String>,
    pub(super) batch_max: Option<usize>,
    pub(super) batch_age: Option<String>,
    pub(super) queue: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetric {
    pub(super) interval: Option<String>,
    pub(super) deadband: Option<f64>,
    pub(super) max_silence: Option<String>,
    pub(super) decimals: Option<u8>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSensor {
    pub(super) kind: String,
    pub(super) bus: Option<String>,
    pub(super) address: Option<u8>,
    pub(super) interval: Option<String>,
}
