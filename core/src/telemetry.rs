//! Metrics, units and sample batches.
//!
//! A [`Metric`] is one of a compact registry (site health, site environment, HJ 212 factor
//! codes), each with a [`Unit`] and a default resolution; anything else travels as
//! [`Metric::Code`], a string escape, so a logger's unknown factor code is passed through
//! unchanged. On the wire a registered metric is one byte.
//!
//! The registry is append-only: the position of a variant is its wire id.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use serde::{Deserialize, Serialize};

use crate::decimal::Decimal;

/// Longest metric name accepted as a [`Metric::Code`].
pub const MAX_CODE_LEN: usize = 32;

/// What a value measures. Variant order is the wire id: append only.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Metric {
    /// Any metric outside the registry, by name (e.g. an unlisted HJ 212 factor code).
    Code(String),
    // Site health.
    Uptime,
    CpuLoad,
    CpuTemp,
    MemUsed,
    DiskUsed,
    LinkRtt,
    LinkLoss,
    OutboxDepth,
    Dropped,
    // Site environment.
    AirTemp,
    Humidity,
    Pm25,
    Pm10,
    Noise,
    // HJ 212 water factors.
    W00000,
    W01001,
    W01009,
    W01010,
    W01012,
    W01014,
    W01018,
    W01019,
    W21001,
    W21003,
    W21011,
    // HJ 212 air factors.
    A00000,
    A01011,
    A01012,
    A19001,
    A21002,
    A21005,
    A21026,
    A34002,
    A34004,
    A34013,
}

/// Unit of a metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Unit {
    Seconds,
    Milliseconds,
    /// Dimensionless (load average, pH).
    One,
    Percent,
    PercentRh,
    Celsius,
    Count,
    MicrogramPerM3,
    MilligramPerM3,
    MilligramPerL,
    DecibelA,
    LitrePerSecond,
    CubicMetrePerSecond,
    MetrePerSecond,
    MicrosiemensPerCm,
    /// Not known (metrics outside the registry).
    Unknown,
}

impl Unit {
    pub fn symbol(self) -> &'static str {
        match self {
            Unit::Seconds => "s",
            Unit::Milliseconds => "ms",
            Unit::One => "1",
            Unit::Percent => "%",
            Unit::PercentRh => "%RH",
            Unit::Celsius => "°C",
            Unit::Count => "count",
            Unit::MicrogramPerM3 => "µg/m³",
            Unit::MilligramPerM3 => "mg/m³",
            Unit::MilligramPerL => "mg/L",
            Unit::DecibelA => "dB(A)",
            Unit::LitrePerSecond => "L/s",
            Unit::CubicMetrePerSecond => "m³/s",
            Unit::MetrePerSecond => "m/s",
            Unit::MicrosiemensPerCm => "µS/cm",
            Unit::Unknown => "",
        }
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.symbol())
    }
}

/// (metric, name, unit, default decimal places). Names are what users type and see.
const REGISTRY: &[(Metric, &str, Unit, u8)] = &[
    (Metric::Uptime, "uptime", Unit::Seconds, 0),
    (Metric::CpuLoad, "cpu.load", Unit::One, 2),
    (Metric::CpuTemp, "cpu.temp", Unit::Celsius, 1),
    (Metric::MemUsed, "mem.used", Unit::Percent, 1),
    (Metric::DiskUsed, "disk.used", Unit::Percent, 1),
    (Metric::LinkRtt, "link.rtt", Unit::Milliseconds, 1),
    (Metric::LinkLoss, "link.loss", Unit::Percent, 1),
    (Metric::OutboxDepth, "outbox.depth", Unit::Count, 0),
    (Metric::Dropped, "outbox.dropped", Unit::Count, 0),
    (Metric::AirTemp, "env.temp", Unit::Celsius, 2),
    (Metric::Humidity, "env.humidity", Unit::PercentRh, 2),
    (Metric::Pm25, "env.pm25", Unit::MicrogramPerM3, 0),
    (Metric::Pm10, "env.pm10", Unit::MicrogramPerM3, 0),
    (Metric::Noise, "env.noise", Unit::DecibelA, 1),
    (Metric::W00000, "w00000", Unit::LitrePerSecond, 2),
    (Metric::W01001, "w01001", Unit::One, 2),
    (Metric::W01009, "w01009", Unit::MilligramPerL, 1),
    (Metric::W01010, "w01010", Unit::Celsius, 1),
    (Metric::W01012, "w01012", Unit::MilligramPerL, 0),
    (Metric::W01014, "w01014", Unit::MicrosiemensPerCm, 1),
    (Metric::W01018, "w01018", Unit::MilligramPerL, 1),
    (Metric::W01019, "w01019", Unit::MilligramPerL, 1),
    (Metric::W21001, "w21001", Unit::MilligramPerL, 2),
    (Metric::W21003, "w21003", Unit::MilligramPerL, 2),
    (Metric::W21011, "w21011", Unit::MilligramPerL, 2),
    (Metric::A00000, "a00000", Unit::CubicMetrePerSecond, 1),
    (Metric::A01011, "a01011", Unit::MetrePerSecond, 2),
    (Metric::A01012, "a01012", Unit::Celsius, 1),
    (Metric::A19001, "a19001", Unit::Percent, 1),
    (Metric::A21002, "a21002", Unit::MilligramPerM3, 1),
    (Metric::A21005, "a21005", Unit::MilligramPerM3, 3),
    (Metric::A21026, "a21026", Unit::MilligramPerM3, 2),
    (Metric::A34002, "a34002", Unit::MicrogramPerM3, 3),
    (Metric::A34004, "a34004", Unit::MicrogramPerM3, 3),
    (Metric::A34013, "a34013", Unit::MilligramPerM3, 0),
];

/// Why a metric name was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetricError {
    Empty,
    TooLong { len: usize },
    BadChar { pos: usize, found: char },
}

impl fmt::Display for MetricError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricError::Empty => f.write_str("metric name is empty"),
            MetricError::TooLong { len } => {
                write!(
                    f,
                    "metric name has {len} characters, at most {MAX_CODE_LEN}"
                )
            }
            MetricError::BadChar { pos, found } => write!(
                f,
                "metric name character {found:?} at position {} is not a letter, digit, '.', '_' or '-'",
                pos + 1
            ),
        }
    }
}

impl core::error::Error for MetricError {}

impl Metric {
    fn entry(&self) -> Option<&'static (Metric, &'static str, Unit, u8)> {
        REGISTRY.iter().find(|e| e.0 == *self)
    }

    /// Every registered metric.
    pub fn registered() -> impl Iterator<Item = &'static Metric> {
        REGISTRY.iter().map(|e| &e.0)
    }

    /// The name users see: `env.temp`, `w01018`, or the code itself.
    pub fn name(&self) -> &str {
        match self {
            Metric::Code(s) => s,
            m => m.entry().map_or("", |e| e.1),
        }
    }

    pub fn unit(&self) -> Unit {
        self.entry().map_or(Unit::Unknown, |e| e.2)
    }

    /// Default number of decimal places a reading of this metric is rounded to.
    pub fn default_scale(&self) -> u8 {
        self.entry().map_or(3, |e| e.3)
    }

    /// The registered metric of that name, or a [`Metric::Code`] for any other valid name.
    pub fn from_name(name: &str) -> Result<Metric, MetricError> {
        if let Some(e) = REGISTRY.iter().find(|e| e.1 == name) {
            return Ok(e.0.clone());
        }
        validate_code(name)?;
        Ok(Metric::Code(String::from(name)))
    }
}

fn validate_code(name: &str) -> Result<(), MetricError> {
    if name.is_empty() {
        return Err(MetricError::Empty);
    }
    if let Some((pos, found)) = name
        .chars()
        .enumerate()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(MetricError::BadChar { pos, found });
    }
    if name.len() > MAX_CODE_LEN {
        return Err(MetricError::TooLong { len: name.len() });
    }
    Ok(())
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Data quality, as HJ 212 flags it. `None` on a sample means normal and unflagged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Quality {
    /// N: normal.
    Normal,
    /// F: the source was stopped.
    Stopped,
    /// M: under maintenance.
    Maintenance,
    /// S: entered by hand.
    Manual,
    /// D: instrument fault.
    Fault,
    /// C: calibration.
    Calibration,
    /// T: over the limit.
    OverLimit,
    /// B: communication abnormal.
    CommFault,
    /// Any other one-letter flag (older or vendor-specific), as its ASCII byte.
    Other(u8),
}

impl Quality {
    /// From an HJ 212 flag letter.
    pub fn from_flag(c: u8) -> Quality {
        match c {
            b'N' => Quality::Normal,
            b'F' => Quality::Stopped,
            b'M' => Quality::Maintenance,
            b'S' => Quality::Manual,
            b'D' => Quality::Fault,
            b'C' => Quality::Calibration,
            b'T' => Quality::OverLimit,
            b'B' => Quality::CommFault,
            other => Quality::Other(other),
        }
    }

    /// The HJ 212 flag letter.
    pub fn flag(self) -> u8 {
        match self {
            Quality::Normal => b'N',
            Quality::Stopped => b'F',
            Quality::Maintenance => b'M',
            Quality::Manual => b'S',
            Quality::Fault => b'D',
            Quality::Calibration => b'C',
            Quality::OverLimit => b'T',
            Quality::CommFault => b'B',
            Quality::Other(c) => c,
        }
    }
}

/// One measured value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// Milliseconds after the envelope's time.
    pub offset_ms: u32,
    pub metric: Metric,
    pub value: Decimal,
    pub quality: Option<Quality>,
}

/// The body of a telemetry envelope: samples in time order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TelemetryBatch {
    pub samples: Vec<Sample>,
}

impl TelemetryBatch {
    /// Checks what serde cannot: metric codes are valid names.
    pub fn validate(&self) -> Result<(), MetricError> {
        self.samples.iter().try_for_each(|s| match &s.metric {
            Metric::Code(c) => validate_code(c),
            _ => Ok(()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_units_come_from_the_registry() {
        assert_eq!(Metric::from_name("env.temp"), Ok(Metric::AirTemp));
        assert_eq!(Metric::AirTemp.unit().symbol(), "°C");
        assert_eq!(Metric::from_name("w01018"), Ok(Metric::W01018));
        assert_eq!(Metric::W21003.unit(), Unit::MilligramPerL);
        assert_eq!(
            Metric::from_name("a99054"),
            Ok(Metric::Code(String::from("a99054")))
        );
        assert_eq!(Metric::Code(String::from("a99054")).unit(), Unit::Unknown);
        assert!(matches!(
            Metric::from_name("a b"),
            Err(MetricError::BadChar { pos: 1, .. })
        ));
    }

    #[test]
    fn every_registered_metric_has_a_unique_name() {
        for (i, a) in REGISTRY.iter().enumerate() {
            for b in &REGISTRY[i + 1..] {
                assert_ne!(a.1, b.1);
                assert_ne!(a.0, b.0);
            }
            assert_eq!(Metric::from_name(a.1).as_ref(), Ok(&a.0));
        }
    }

    #[test]
    fn quality_flags_round_trip() {
        for c in b"NFMSDCTBPX" {
            assert_eq!(Quality::from_flag(*c).flag(), *c);
        }
    }
}
