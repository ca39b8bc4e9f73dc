//! Metrics, units and sample batches.
//!
//! A [`Metric`] is one of a compact registry (site health, site environment, HJ 212 factor
//! codes), each with a [`Unit`] and a default resolution; anything else travels as
//! [`Metric::Code`], a string escape, so a logger's unknown factor code is passed through
//! unchanged. On the wire a registered metric is one byte.
//!
//! The registry is append-only: each metric's wire id is fixed forever.
//!
//! A batch has its own compact wire form (see [`TelemetryBatch::write_wire`] and
//! `docs/protocol.md`): in the common case a sample is one byte of metric id and the value's
//! mantissa, nothing else, because every byte counts on a metered rural link.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::decimal::Decimal;

/// Longest metric name accepted as a [`Metric::Code`].
pub const MAX_CODE_LEN: usize = 32;

/// What a value measures.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
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
    // HJ 212 bridge health.
    Hj212Frames,
    Hj212Bad,
    // Meetings.
    /// Sessions the terminal has joined and that are live.
    MeetingsJoined,
    // Meeting media (what the box receives, over the last interval).
    /// RTP packets lost.
    MediaLoss,
    /// RTP interarrival jitter (RFC 3550).
    MediaJitter,
    /// Media received.
    MediaRx,
    /// Media sent.
    MediaTx,
    /// Video frames decoded.
    MediaFrames,
    /// Video streams being decoded (the chair's, the speaker's…).
    MediaStreams,
    /// Lines of the shared content's pictures as decoded (1080 for 1920×1080), while content
    /// is shared.
    MediaContent,
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
    KilobitPerSecond,
    /// Picture lines or columns.
    Pixels,
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
            Unit::KilobitPerSecond => "kbit/s",
            Unit::Pixels => "px",
            Unit::Unknown => "",
        }
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.symbol())
    }
}

/// (metric, wire id, name, unit, default decimal places). Names are what users type and see.
/// Wire ids are forever: append only, never reuse one.
const REGISTRY: &[(Metric, u32, &str, Unit, u8)] = &[
    (Metric::Uptime, 1, "uptime", Unit::Seconds, 0),
    (Metric::CpuLoad, 2, "cpu.load", Unit::One, 2),
    (Metric::CpuTemp, 3, "cpu.temp", Unit::Celsius, 1),
    (Metric::MemUsed, 4, "mem.used", Unit::Percent, 1),
    (Metric::DiskUsed, 5, "disk.used", Unit::Percent, 1),
    (Metric::LinkRtt, 6, "link.rtt", Unit::Milliseconds, 1),
    (Metric::LinkLoss, 7, "link.loss", Unit::Percent, 1),
    (Metric::OutboxDepth, 8, "outbox.depth", Unit::Count, 0),
    (Metric::Dropped, 9, "outbox.dropped", Unit::Count, 0),
    (Metric::AirTemp, 10, "env.temp", Unit::Celsius, 2),
    (Metric::Humidity, 11, "env.humidity", Unit::PercentRh, 2),
    (Metric::Pm25, 12, "env.pm25", Unit::MicrogramPerM3, 0),
    (Metric::Pm10, 13, "env.pm10", Unit::MicrogramPerM3, 0),
    (Metric::Noise, 14, "env.noise", Unit::DecibelA, 1),
    (Metric::W00000, 15, "w00000", Unit::LitrePerSecond, 2),
    (Metric::W01001, 16, "w01001", Unit::One, 2),
    (Metric::W01009, 17, "w01009", Unit::MilligramPerL, 1),
    (Metric::W01010, 18, "w01010", Unit::Celsius, 1),
    (Metric::W01012, 19, "w01012", Unit::MilligramPerL, 0),
    (Metric::W01014, 20, "w01014", Unit::MicrosiemensPerCm, 1),
    (Metric::W01018, 21, "w01018", Unit::MilligramPerL, 1),
    (Metric::W01019, 22, "w01019", Unit::MilligramPerL, 1),
    (Metric::W21001, 23, "w21001", Unit::MilligramPerL, 2),
    (Metric::W21003, 24, "w21003", Unit::MilligramPerL, 2),
    (Metric::W21011, 25, "w21011", Unit::MilligramPerL, 2),
    (Metric::A00000, 26, "a00000", Unit::CubicMetrePerSecond, 1),
    (Metric::A01011, 27, "a01011", Unit::MetrePerSecond, 2),
    (Metric::A01012, 28, "a01012", Unit::Celsius, 1),
    (Metric::A19001, 29, "a19001", Unit::Percent, 1),
    (Metric::A21002, 30, "a21002", Unit::MilligramPerM3, 1),
    (Metric::A21005, 31, "a21005", Unit::MilligramPerM3, 3),
    (Metric::A21026, 32, "a21026", Unit::MilligramPerM3, 2),
    (Metric::A34002, 33, "a34002", Unit::MicrogramPerM3, 3),
    (Metric::A34004, 34, "a34004", Unit::MicrogramPerM3, 3),
    (Metric::A34013, 35, "a34013", Unit::MilligramPerM3, 0),
    (Metric::Hj212Frames, 36, "hj212.frames", Unit::Count, 0),
    (Metric::Hj212Bad, 37, "hj212.bad", Unit::Count, 0),
    (Metric::MeetingsJoined, 38, "meeting.joined", Unit::Count, 0),
    (Metric::MediaLoss, 39, "media.loss", Unit::Percent, 1),
    (
        Metric::MediaJitter,
        40,
        "media.jitter",
        Unit::Milliseconds,
        1,
    ),
    (Metric::MediaRx, 41, "media.rx", Unit::KilobitPerSecond, 0),
    (Metric::MediaTx, 42, "media.tx", Unit::KilobitPerSecond, 0),
    (Metric::MediaFrames, 43, "media.frames", Unit::Count, 0),
    (Metric::MediaStreams, 44, "media.streams", Unit::Count, 0),
    (Metric::MediaContent, 45, "media.content", Unit::Pixels, 0),
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
    fn entry(&self) -> Option<&'static (Metric, u32, &'static str, Unit, u8)> {
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
            m => m.entry().map_or("", |e| e.2),
        }
    }

    pub fn unit(&self) -> Unit {
        self.entry().map_or(Unit::Unknown, |e| e.3)
    }

    /// Default number of decimal places a reading of this metric is rounded to.
    pub fn default_scale(&self) -> u8 {
        self.entry().map_or(3, |e| e.4)
    }

    /// The wire id of a registered metric; `None` for a [`Metric::Code`].
    pub fn id(&self) -> Option<u32> {
        self.entry().map(|e| e.1)
    }

    /// The registered metric with that wire id.
    pub fn from_id(id: u32) -> Option<Metric> {
        REGISTRY.iter().find(|e| e.1 == id).map(|e| e.0.clone())
    }

    /// The registered metric of that name, or a [`Metric::Code`] for any other valid name.
    pub fn from_name(name: &str) -> Result<Metric, MetricError> {
        if let Some(e) = REGISTRY.iter().find(|e| e.2 == name) {
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Milliseconds after the envelope's time.
    pub offset_ms: u32,
    pub metric: Metric,
    pub value: Decimal,
    pub quality: Option<Quality>,
}

/// The body of a telemetry envelope: samples in time order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TelemetryBatch {
    pub samples: Vec<Sample>,
}

/// Why a telemetry body was refused. `sample` is the 0-based index of the sample concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BodyError {
    /// The body ends inside `what`, at byte `at`.
    Truncated {
        at: usize,
        what: &'static str,
    },
    /// A varint longer than 10 bytes or beyond 64 bits, at byte `at`.
    BadVarint {
        at: usize,
    },
    /// More samples announced than a body can hold.
    TooManySamples {
        count: u64,
    },
    UnknownMetric {
        sample: usize,
        id: u64,
    },
    BadCode {
        sample: usize,
        error: MetricError,
    },
    BadScale {
        sample: usize,
        scale: u8,
    },
    /// An extras byte with unknown or no flags set.
    BadExtras {
        sample: usize,
        extras: u8,
    },
    OffsetTooLarge {
        sample: usize,
    },
    /// Bytes left after the last sample.
    Trailing {
        count: usize,
    },
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::Truncated { at, what } => write!(f, "body ends at byte {at} inside {what}"),
            BodyError::BadVarint { at } => write!(f, "bad varint at byte {at}"),
            BodyError::TooManySamples { count } => write!(f, "{count} samples announced"),
            BodyError::UnknownMetric { sample, id } => {
                write!(f, "sample {sample}: unknown metric id {id}")
            }
            BodyError::BadCode { sample, error } => write!(f, "sample {sample}: {error}"),
            BodyError::BadScale { sample, scale } => {
                write!(f, "sample {sample}: scale {scale} above 18")
            }
            BodyError::BadExtras { sample, extras } => {
                write!(f, "sample {sample}: bad extras byte {extras:#04x}")
            }
            BodyError::OffsetTooLarge { sample } => write!(f, "sample {sample}: offset too large"),
            BodyError::Trailing { count } => write!(f, "{count} bytes after the last sample"),
        }
    }
}

impl core::error::Error for BodyError {}

const EXTRA_OFFSET: u8 = 1;
const EXTRA_SCALE: u8 = 2;
const EXTRA_QUALITY: u8 = 4;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn byte(&mut self, what: &'static str) -> Result<u8, BodyError> {
        let b = *self
            .bytes
            .get(self.pos)
            .ok_or(BodyError::Truncated { at: self.pos, what })?;
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self, what: &'static str) -> Result<u64, BodyError> {
        let start = self.pos;
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.byte(what)?;
            let bits = u64::from(b & 0x7f);
            if i == 9 && bits > 1 {
                return Err(BodyError::BadVarint { at: start });
            }
            v |= bits << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(BodyError::BadVarint { at: start })
    }

    fn slice(&mut self, n: usize, what: &'static str) -> Result<&[u8], BodyError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or(BodyError::Truncated {
            at: self.bytes.len(),
            what,
        })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
}

impl TelemetryBatch {
    /// Checks what the type cannot: metric codes are valid names.
    pub fn validate(&self) -> Result<(), MetricError> {
        self.samples.iter().try_for_each(|s| match &s.metric {
            Metric::Code(c) => validate_code(c),
            _ => Ok(()),
        })
    }

    /// Appends the batch's wire form to `out`:
    ///
    /// ```text
    /// count varint, then per sample:
    ///   key      varint  metric id << 1 | has-extras     (id 0: a name string follows)
    ///   [name]   varint length + bytes                   (only for id 0)
    ///   [extras] u8      1 offset · 2 scale · 4 quality  (only with has-extras)
    ///   [offset] varint  ms after the envelope time      (only with extras & 1)
    ///   [scale]  u8      decimal places                  (only with extras & 2; else the
    ///                                                     metric's default scale)
    ///   [flag]   u8      HJ 212 data flag letter         (only with extras & 4)
    ///   value    zigzag varint mantissa
    /// ```
    pub fn write_wire(&self, out: &mut Vec<u8>) {
        put_varint(out, self.samples.len() as u64);
        for s in &self.samples {
            let mut extras = 0u8;
            if s.offset_ms != 0 {
                extras |= EXTRA_OFFSET;
            }
            if s.value.scale() != s.metric.default_scale() {
                extras |= EXTRA_SCALE;
            }
            if s.quality.is_some() {
                extras |= EXTRA_QUALITY;
            }
            let id = u64::from(s.metric.id().unwrap_or(0));
            put_varint(out, (id << 1) | u64::from(extras != 0));
            if let Metric::Code(name) = &s.metric {
                put_varint(out, name.len() as u64);
                out.extend_from_slice(name.as_bytes());
            }
            if extras != 0 {
                out.push(extras);
            }
            if extras & EXTRA_OFFSET != 0 {
                put_varint(out, u64::from(s.offset_ms));
            }
            if extras & EXTRA_SCALE != 0 {
                out.push(s.value.scale());
            }
            if let Some(q) = s.quality {
                out.push(q.flag());
            }
            put_varint(out, zigzag(s.value.mantissa()));
        }
    }

    /// Parses a batch's wire form; the whole of `bytes` must be one batch.
    pub fn read_wire(bytes: &[u8]) -> Result<TelemetryBatch, BodyError> {
        let mut r = Reader { bytes, pos: 0 };
        let count = r.varint("the sample count")?;
        // Every sample takes at least two bytes.
        if count > (bytes.len() / 2) as u64 {
            return Err(BodyError::TooManySamples { count });
        }
        let mut samples = Vec::with_capacity(count as usize);
        for sample in 0..count as usize {
            let key = r.varint("a metric id")?;
            let id = key >> 1;
            let metric = if id == 0 {
                let len = r.varint("a metric name length")?;
                let len = usize::try_from(len)
                    .ok()
                    .filter(|&l| l <= MAX_CODE_LEN)
                    .ok_or(BodyError::BadCode {
                        sample,
                        error: MetricError::TooLong {
                            len: MAX_CODE_LEN + 1,
                        },
                    })?;
                let raw = r.slice(len, "a metric name")?;
                let name = core::str::from_utf8(raw).map_err(|_| BodyError::BadCode {
                    sample,
                    error: MetricError::BadChar { pos: 0, found: '?' },
                })?;
                validate_code(name).map_err(|error| BodyError::BadCode { sample, error })?;
                Metric::Code(String::from(name))
            } else {
                u32::try_from(id)
                    .ok()
                    .and_then(Metric::from_id)
                    .ok_or(BodyError::UnknownMetric { sample, id })?
            };
            let extras = if key & 1 == 1 {
                r.byte("an extras byte")?
            } else {
                0
            };
            if key & 1 == 1
                && (extras == 0 || extras & !(EXTRA_OFFSET | EXTRA_SCALE | EXTRA_QUALITY) != 0)
            {
                return Err(BodyError::BadExtras { sample, extras });
            }
            let offset_ms = if extras & EXTRA_OFFSET != 0 {
                u32::try_from(r.varint("an offset")?)
                    .map_err(|_| BodyError::OffsetTooLarge { sample })?
            } else {
                0
            };
            let scale = if extras & EXTRA_SCALE != 0 {
                r.byte("a scale")?
            } else {
                metric.default_scale()
            };
            let quality = if extras & EXTRA_QUALITY != 0 {
                Some(Quality::from_flag(r.byte("a quality flag")?))
            } else {
                None
            };
            let mantissa = unzigzag(r.varint("a value")?);
            let value =
                Decimal::new(mantissa, scale).map_err(|_| BodyError::BadScale { sample, scale })?;
            samples.push(Sample {
                offset_ms,
                metric,
                value,
                quality,
            });
        }
        if r.pos != bytes.len() {
            return Err(BodyError::Trailing {
                count: bytes.len() - r.pos,
            });
        }
        Ok(TelemetryBatch { samples })
    }
}

/// In an envelope, the batch travels as a postcard byte string holding its wire form.
impl serde::Serialize for TelemetryBatch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut out = Vec::with_capacity(8 + 4 * self.samples.len());
        self.write_wire(&mut out);
        s.serialize_bytes(&out)
    }
}

/// The raw wire form of a batch, as carried in an envelope; [`TelemetryBatch::read_wire`]
/// parses it with errors that say which sample is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireBatch(pub Vec<u8>);

impl<'de> serde::Deserialize<'de> for WireBatch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<WireBatch, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = WireBatch;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a telemetry batch as bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<WireBatch, E> {
                Ok(WireBatch(v.to_vec()))
            }
        }
        d.deserialize_bytes(V)
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
    fn every_registered_metric_has_a_unique_name_and_id() {
        for (i, a) in REGISTRY.iter().enumerate() {
            for b in &REGISTRY[i + 1..] {
                assert_ne!(a.1, b.1);
                assert_ne!(a.2, b.2);
                assert_ne!(a.0, b.0);
            }
            assert_eq!(Metric::from_name(a.2).as_ref(), Ok(&a.0));
            assert_eq!(Metric::from_id(a.1), Some(a.0.clone()));
        }
    }

    #[test]
    fn quality_flags_round_trip() {
        for c in b"NFMSDCTBPX" {
            assert_eq!(Quality::from_flag(*c).flag(), *c);
        }
    }
}
