//! The versioned wire envelope, and the one place payloads are encoded and decoded.
//!
//! Every payload is one version byte followed by a postcard body. Telemetry and events ride in
//! an [`Envelope`]: `version · seq (varint) · time (varint, ms since the Unix epoch, UTC) ·
//! body`. The topic names the terminal, and broker ACLs guarantee a terminal writes only its
//! own topics, so the id is not repeated in every message (that would cost ~18 bytes each).
//! Sequence numbers are per terminal and per [`Stream`], contiguous, so a gap is visible. A box
//! numbers each stream from the Unix time in milliseconds at which its outbox was created, and
//! says so with [`Event::NumberingFrom`], so a replacement box under the same id never reuses a
//! seq its predecessor sent. A clock can be wrong (a box without a battery-backed clock starts
//! in the past), so a new box sends nothing but that announcement until central has agreed to
//! its numbering, and renumbers above what central holds under its id if it must (see
//! [`crate::delivery`]).
//!
//! Decoding refuses oversize, truncated, trailing or malformed input with a [`DecodeError`]
//! and never panics.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::telemetry::{BodyError, TelemetryBatch, WireBatch};

/// The wire version this crate writes and reads.
pub const VERSION: u8 = 1;

/// Largest payload a decoder accepts, in bytes.
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// A sequence-numbered stream of a terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Stream {
    Telemetry,
    Events,
}

impl Stream {
    pub const ALL: [Stream; 2] = [Stream::Telemetry, Stream::Events];

    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Telemetry => "telemetry",
            Stream::Events => "events",
        }
    }
}

/// A sequence-numbered, timestamped body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<B> {
    /// Position in the terminal's stream (see [`Event::NumberingFrom`]).
    pub seq: u64,
    /// Milliseconds since the Unix epoch (UTC) when the body was produced.
    pub time_ms: u64,
    pub body: B,
}

/// Where a box stands with a release (`update::Stage`, see [`crate::update`]). A rollout
/// shows one per box.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum UpdateStage {
    /// In the rollout, not yet offered (waiting for the rate, the window, or a meeting).
    Queued,
    /// Offered; the box has not started downloading.
    Notified,
    Downloading,
    Downloaded,
    /// Signature and SHA-256 checked.
    Verified,
    Installing,
    /// Installed in the inactive slot; restarting into it on trial.
    Restarting,
    /// The new build passed its health check and is what the box runs from now on.
    Committed,
    /// The box could not get or install the release; it still runs the build it had.
    Failed,
    /// The new build crashed or stayed unhealthy; the box returned to the build it had.
    RolledBack,
    /// The box did not finish within the rollout's timeout.
    TimedOut,
}

impl UpdateStage {
    pub const ALL: [UpdateStage; 11] = [
        UpdateStage::Queued,
        UpdateStage::Notified,
        UpdateStage::Downloading,
        UpdateStage::Downloaded,
        UpdateStage::Verified,
        UpdateStage::Installing,
        UpdateStage::Restarting,
        UpdateStage::Committed,
        UpdateStage::Failed,
        UpdateStage::RolledBack,
        UpdateStage::TimedOut,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpdateStage::Queued => "queued",
            UpdateStage::Notified => "notified",
            UpdateStage::Downloading => "downloading",
            UpdateStage::Downloaded => "downloaded",
            UpdateStage::Verified => "verified",
            UpdateStage::Installing => "installing",
            UpdateStage::Restarting => "restarting",
            UpdateStage::Committed => "committed",
            UpdateStage::Failed => "failed",
            UpdateStage::RolledBack => "rolled-back",
            UpdateStage::TimedOut => "timed-out",
        }
    }

    pub fn parse(name: &str) -> Option<UpdateStage> {
        UpdateStage::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// True once nothing more will happen to this box in this rollout.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            UpdateStage::Committed
                | UpdateStage::Failed
                | UpdateStage::RolledBack
                | UpdateStage::TimedOut
        )
    }

    /// True for the outcomes that count against a rollout's failure threshold.
    pub fn is_failure(self) -> bool {
        self.is_final() && self != UpdateStage::Committed
    }
}

/// Something a terminal reports once, in order, on its event stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Event {
    /// The terminal software started.
    Started { version: String },
    /// A sensor stopped answering correctly.
    SensorFault { sensor: String, detail: String },
    /// A sensor that had failed answers correctly again.
    SensorRecovered { sensor: String },
    /// The outbox was full: records `first..=last` of `stream` were discarded unsent. Central
    /// counts the range as accounted for, so its watermark can pass the gap.
    Dropped {
        stream: Stream,
        first: u64,
        last: u64,
    },
    /// A command was refused (bad signature, expired, replayed, not for this terminal):
    /// a security event.
    CommandRefused { action: String, reason: String },
    /// A command ran.
    CommandRun { action: String, ok: bool },
    /// The terminal started again without having stopped cleanly (power cut, crash, watchdog).
    UnexpectedRestart,
    /// Configuration or key files changed since the terminal last ran (not by provisioning
    /// through the terminal itself): a security event.
    FilesChanged { files: Vec<String> },
    /// The TLS handshake with the broker failed (certificate not trusted, expired, refused by
    /// the broker): a security event, reported once per episode.
    TlsFailure { detail: String },
    /// A duty report (值班报告 / emergency report) raised at the site, by its operator or its
    /// button: a critical alarm for the duty office above it.
    DutyReport {
        /// The terminal's number for it (its acknowledgement names it).
        report: u64,
        kind: String,
        text: String,
    },
    /// An acknowledgement claimed `stream` stored up to `watermark`, beyond the highest seq the
    /// terminal ever assigned (`assigned`): refused as forged (or meant for another box), or
    /// found persisted by an older version and repaired at start. A security event.
    AckRefused {
        stream: Stream,
        watermark: u64,
        assigned: u64,
    },
    /// The box numbers `stream` from `first`: its outbox was created then (a new or replaced
    /// box, or a wiped data directory) and took the Unix time in milliseconds as its start, or
    /// renumbered above what central holds under its id. Central counts `1..first` of the
    /// stream as accounted for (an earlier box's, or never used: not lost data), so its
    /// watermark passes them, and tells the box if it holds seqs at or above `first`
    /// ([`crate::alarm::TerminalNotice::Held`]). The first two events of a new outbox, events'
    /// first, then telemetry's; central applies one again whenever it arrives.
    NumberingFrom { stream: Stream, first: u64 },
    /// An over-the-air update moved to `stage` (see [`crate::update`]): `bytes` of the
    /// artifact fetched so far, `reason` why it failed or was rolled back (empty otherwise).
    Update {
        rollout: u64,
        version: String,
        stage: UpdateStage,
        bytes: u64,
        reason: String,
    },
}

impl Event {
    /// A short stable name of the kind of event (`command-refused`), for tables and JSON.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Started { .. } => "started",
            Event::SensorFault { .. } => "sensor-fault",
            Event::SensorRecovered { .. } => "sensor-recovered",
            Event::Dropped { .. } => "dropped",
            Event::CommandRefused { .. } => "command-refused",
            Event::CommandRun { .. } => "command-run",
            Event::UnexpectedRestart => "unexpected-restart",
            Event::FilesChanged { .. } => "files-changed",
            Event::TlsFailure { .. } => "tls-failure",
            Event::DutyReport { .. } => "duty-report",
            Event::AckRefused { .. } => "ack-refused",
            Event::NumberingFrom { .. } => "numbering-from",
            Event::Update { .. } => "update",
        }
    }

    /// True for the events central staff must look at as possible tampering or attack.
    pub fn is_security(&self) -> bool {
        matches!(
            self,
            Event::CommandRefused { .. }
                | Event::UnexpectedRestart
                | Event::FilesChanged { .. }
                | Event::TlsFailure { .. }
                | Event::AckRefused { .. }
        )
    }
}

/// What happened, in words (without the kind).
impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Started { version } => write!(f, "version {version}"),
            Event::SensorFault { sensor, detail } => write!(f, "{sensor}: {detail}"),
            Event::SensorRecovered { sensor } => f.write_str(sensor),
            Event::Dropped {
                stream,
                first,
                last,
            } => write!(
                f,
                "{} seq {first}..={last} discarded unsent",
                stream.as_str()
            ),
            Event::CommandRefused { action, reason } => write!(f, "{action}: {reason}"),
            Event::CommandRun { action, ok } => {
                write!(f, "{action}: {}", if *ok { "ok" } else { "failed" })
            }
            Event::UnexpectedRestart => f.write_str("previous run did not stop cleanly"),
            Event::FilesChanged { files } => write!(f, "{}", files.join(", ")),
            Event::TlsFailure { detail } => f.write_str(detail),
            Event::DutyReport { report, kind, text } => write!(f, "#{report} {kind}: {text}"),
            Event::AckRefused {
                stream,
                watermark,
                assigned,
            } => write!(
                f,
                "{} watermark {watermark} refused: only seq 1..={assigned} were ever sent",
                stream.as_str()
            ),
            Event::NumberingFrom { stream, first } => {
                write!(f, "{} numbered from seq {first}", stream.as_str())
            }
            Event::Update {
                rollout,
                version,
                stage,
                bytes,
                reason,
            } => {
                write!(f, "{version} (rollout {rollout}): {}", stage.as_str())?;
                if *bytes > 0 {
                    write!(f, ", {bytes} bytes")?;
                }
                if !reason.is_empty() {
                    write!(f, ": {reason}")?;
                }
                Ok(())
            }
        }
    }
}

/// Why a payload could not be encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodeError(postcard::Error);

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot encode payload: {}", self.0)
    }
}

impl core::error::Error for EncodeError {}

/// Why a payload was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    Empty,
    TooLong {
        len: usize,
        max: usize,
    },
    /// Written by a newer (or unknown) protocol version.
    Version {
        found: u8,
    },
    /// The envelope does not parse.
    Malformed {
        what: &'static str,
    },
    /// Bytes left over after a complete body.
    Trailing {
        count: usize,
    },
    /// The telemetry body inside the envelope is wrong.
    Body(BodyError),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Empty => f.write_str("empty payload"),
            DecodeError::TooLong { len, max } => {
                write!(f, "payload of {len} bytes exceeds the {max}-byte limit")
            }
            DecodeError::Version { found } => {
                write!(
                    f,
                    "payload version {found}, this build reads version {VERSION}"
                )
            }
            DecodeError::Malformed { what } => write!(f, "malformed payload: {what}"),
            DecodeError::Trailing { count } => {
                write!(f, "{count} unexpected bytes after the payload")
            }
            DecodeError::Body(e) => write!(f, "telemetry body: {e}"),
        }
    }
}

impl core::error::Error for DecodeError {}

/// Encodes `value` as a versioned payload.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(64);
    out.push(VERSION);
    postcard::to_extend(value, out).map_err(EncodeError)
}

/// Decodes a versioned payload: version byte, exactly one body, nothing after it.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() > MAX_PAYLOAD {
        return Err(DecodeError::TooLong {
            len: bytes.len(),
            max: MAX_PAYLOAD,
        });
    }
    decode_stored(bytes)
}

/// Decodes a payload kept in local storage (no wire size limit; otherwise as [`decode`]).
pub fn decode_stored<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != VERSION {
        return Err(DecodeError::Version { found: version });
    }
    let (value, rest) = postcard::take_from_bytes::<T>(body)
        .map_err(|e| DecodeError::Malformed { what: describe(&e) })?;
    if !rest.is_empty() {
        return Err(DecodeError::Trailing { count: rest.len() });
    }
    Ok(value)
}

/// An encoded envelope renumbered to `seq`: the version byte and the body as they were, the seq
/// (the envelope's first field) replaced. Borrowed when it already says `seq`. The terminal's
/// outbox renumbers what it holds when a new box's numbering clashes with what central holds
/// under its id (see [`Event::NumberingFrom`]).
pub fn with_seq(bytes: &[u8], seq: u64) -> Result<alloc::borrow::Cow<'_, [u8]>, DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != VERSION {
        return Err(DecodeError::Version { found: version });
    }
    let (old, rest) = postcard::take_from_bytes::<u64>(body)
        .map_err(|e| DecodeError::Malformed { what: describe(&e) })?;
    if old == seq {
        return Ok(alloc::borrow::Cow::Borrowed(bytes));
    }
    let mut out = Vec::with_capacity(bytes.len() + 2);
    out.push(VERSION);
    let mut out = postcard::to_extend(&seq, out).map_err(|_| DecodeError::Malformed {
        what: "unencodable seq",
    })?;
    out.extend_from_slice(rest);
    Ok(alloc::borrow::Cow::Owned(out))
}

/// Decodes a telemetry envelope and checks its contents.
pub fn decode_telemetry(bytes: &[u8]) -> Result<Envelope<TelemetryBatch>, DecodeError> {
    let env: Envelope<WireBatch> = decode(bytes)?;
    Ok(Envelope {
        seq: env.seq,
        time_ms: env.time_ms,
        body: TelemetryBatch::read_wire(&env.body.0).map_err(DecodeError::Body)?,
    })
}

/// Decodes an event envelope.
pub fn decode_event(bytes: &[u8]) -> Result<Envelope<Event>, DecodeError> {
    decode(bytes)
}

fn describe(e: &postcard::Error) -> &'static str {
    use postcard::Error as E;
    match e {
        E::DeserializeUnexpectedEnd => "truncated",
        E::DeserializeBadVarint => "bad varint",
        E::DeserializeBadBool => "bad boolean",
        E::DeserializeBadChar => "bad character",
        E::DeserializeBadUtf8 => "bad UTF-8 in a string",
        E::DeserializeBadOption => "bad option tag",
        E::DeserializeBadEnum => "unknown enum variant",
        E::DeserializeBadEncoding => "bad encoding",
        _ => "does not parse",
    }
}

/// Test support: pins the exact bytes of wire messages, so a reordered enum variant or field
/// cannot silently change what deployed terminals read. Each module that defines a message
/// keeps a table of (value, hex) cases beside its tests.
#[cfg(test)]
pub(crate) mod golden {
    use alloc::string::String;
    use core::fmt::{Debug, Write};

    use serde::Serialize;
    use serde::de::DeserializeOwned;

    /// Lower-case hex without separators.
    pub(crate) fn hex(bytes: &[u8]) -> String {
        let mut out = String::new();
        for b in bytes {
            let _ = write!(out, "{b:02x}");
        }
        out
    }

    /// Every value encodes to exactly its pinned hex (whitespace in it ignored) and those
    /// bytes decode back to the value. A mismatch lists every case that changed, with the
    /// bytes the code writes now.
    pub(crate) fn assert_pinned<T>(cases: &[(T, &str)])
    where
        T: Serialize + DeserializeOwned + PartialEq + Debug,
    {
        let mut changed = String::new();
        for (i, (value, pinned)) in cases.iter().enumerate() {
            let bytes = super::encode(value).unwrap();
            let pinned: String = pinned.chars().filter(|c| !c.is_whitespace()).collect();
            let now = hex(&bytes);
            if now != pinned {
                let _ = writeln!(
                    changed,
                    "case {i}: {value:?}\n  pinned {pinned}\n  now    {now}"
                );
                continue;
            }
            assert_eq!(
                super::decode::<T>(&bytes).as_ref(),
                Ok(value),
                "case {i} does not decode back"
            );
        }
        assert!(
            changed.is_empty(),
            "wire bytes changed (restore the format, or bump VERSION on purpose):\n{changed}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decimal::Decimal;
    use crate::telemetry::{Metric, Quality, Sample};
    use alloc::vec;

    fn batch() -> Envelope<TelemetryBatch> {
        Envelope {
            seq: 1,
            time_ms: 1_763_798_400_000,
            body: TelemetryBatch {
                samples: vec![
                    Sample {
                        offset_ms: 0,
                        metric: Metric::AirTemp,
                        value: "23.45".parse().unwrap(),
                        quality: None,
                    },
                    Sample {
                        offset_ms: 250,
                        metric: Metric::W01018,
                        value: Decimal::from_int(42),
                        quality: Some(Quality::Normal),
                    },
                    Sample {
                        offset_ms: 300,
                        metric: Metric::Code("a99054".into()),
                        value: "-0.5".parse().unwrap(),
                        quality: Some(Quality::Other(b'P')),
                    },
                ],
            },
        }
    }

    /// The wire format is a contract with every deployed terminal: these bytes must not change.
    #[test]
    fn golden_bytes_of_a_telemetry_envelope() {
        let bytes = encode(&batch()).unwrap();
        assert_eq!(
            bytes,
            [
                1, // version
                1, // seq
                128, 248, 206, 212, 170, 51, // time, varint
                25, // body length
                3,  // three samples
                20, 210, 36, // env.temp (id 10), 2345 zigzag
                43, 7, 250, 1, 0, 78,
                84, // w01018 (id 21) + extras: +250 ms, scale 0, flag N, 42
                1, 6, 97, 57, 57, 48, 53, 52, 7, 172, 2, 1, 80,
                9, // "a99054", +300 ms, scale 1, P, -5
            ]
        );
        assert_eq!(decode_telemetry(&bytes), Ok(batch()));
    }

    /// Every event variant, byte for byte: the variant index is the wire identity.
    #[test]
    fn every_event_variant_has_pinned_bytes() {
        let env = |body| Envelope {
            seq: 7,
            time_ms: 1_763_798_400_000,
            body,
        };
        super::golden::assert_pinned(&[
            (
                env(Event::Started {
                    version: "0.1.0".into(),
                }),
                "010780f8ced4aa330005302e312e30",
            ),
            (
                env(Event::SensorFault {
                    sensor: "sht3x".into(),
                    detail: "crc".into(),
                }),
                "010780f8ced4aa330105736874337803637263",
            ),
            (
                env(Event::SensorRecovered {
                    sensor: "sht3x".into(),
                }),
                "010780f8ced4aa3302057368743378",
            ),
            (
                env(Event::Dropped {
                    stream: Stream::Telemetry,
                    first: 3,
                    last: 300,
                }),
                "010780f8ced4aa33030003ac02",
            ),
            (
                env(Event::CommandRefused {
                    action: "reboot".into(),
                    reason: "replayed".into(),
                }),
                "010780f8ced4aa3304067265626f6f74087265706c61796564",
            ),
            (
                env(Event::CommandRun {
                    action: "ping".into(),
                    ok: true,
                }),
                "010780f8ced4aa33050470696e6701",
            ),
            (env(Event::UnexpectedRestart), "010780f8ced4aa3306"),
            (
                env(Event::FilesChanged {
                    files: vec!["a.toml".into(), "k".into()],
                }),
                "010780f8ced4aa33070206612e746f6d6c016b",
            ),
            (
                env(Event::TlsFailure {
                    detail: "expired".into(),
                }),
                "010780f8ced4aa33080765787069726564",
            ),
            (
                env(Event::DutyReport {
                    report: 2,
                    kind: "fire".into(),
                    text: "\u{706b}".into(),
                }),
                "010780f8ced4aa330902046669726503e781ab",
            ),
            (
                env(Event::AckRefused {
                    stream: Stream::Events,
                    watermark: 9,
                    assigned: 8,
                }),
                "010780f8ced4aa330a010908",
            ),
            (
                env(Event::NumberingFrom {
                    stream: Stream::Events,
                    first: 1,
                }),
                "010780f8ced4aa330b0101",
            ),
        ]);
    }

    /// The version byte is the one docs/protocol.md states: changing it is a protocol change
    /// made on purpose, together with the document.
    #[test]
    fn the_wire_version_is_the_one_the_protocol_document_states() {
        let doc = include_str!("../../docs/protocol.md");
        let stated = alloc::format!("**version byte** (currently `{VERSION}`)");
        assert!(
            doc.contains(&stated),
            "docs/protocol.md does not say {stated:?}"
        );
        assert_eq!(encode(&()).unwrap(), [VERSION]);
    }

    #[test]
    fn events_round_trip() {
        let env = Envelope {
            seq: 7,
            time_ms: 5,
            body: Event::SensorFault {
                sensor: "sht3x@0x44".into(),
                detail: "CRC mismatch".into(),
            },
        };
        assert_eq!(decode_event(&encode(&env).unwrap()), Ok(env));
    }

    #[test]
    fn a_refused_acknowledgement_has_golden_bytes_and_is_a_security_event() {
        let env = Envelope {
            seq: 1,
            time_ms: 2,
            body: Event::AckRefused {
                stream: Stream::Telemetry,
                watermark: u64::MAX,
                assigned: 300,
            },
        };
        let bytes = encode(&env).unwrap();
        // version, seq, time, variant 10, stream 0, watermark (10-byte varint), assigned.
        assert_eq!(
            bytes,
            [
                1, 1, 2, 10, 0, 255, 255, 255, 255, 255, 255, 255, 255, 255, 1, 172, 2
            ]
        );
        assert_eq!(decode_event(&bytes), Ok(env.clone()));
        assert!(env.body.is_security());
        assert_eq!(env.body.kind(), "ack-refused");
        assert_eq!(
            env.body.to_string(),
            "telemetry watermark 18446744073709551615 refused: only seq 1..=300 were ever sent"
        );
    }

    #[test]
    fn an_envelope_renumbered_keeps_its_time_and_body_and_refuses_what_is_no_envelope() {
        let body = Event::Started {
            version: "1.2.3".into(),
        };
        let bytes = encode(&Envelope {
            seq: 5_000,
            time_ms: 42,
            body: body.clone(),
        })
        .unwrap();
        for seq in [0, 127, 128, 5_000, 1_763_798_400_000, u64::MAX] {
            let renumbered = with_seq(&bytes, seq).unwrap();
            let env: Envelope<Event> = decode(&renumbered).unwrap();
            assert_eq!((env.seq, env.time_ms, &env.body), (seq, 42, &body));
        }
        assert!(matches!(
            with_seq(&bytes, 5_000).unwrap(),
            alloc::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(with_seq(&[], 1), Err(DecodeError::Empty));
        assert_eq!(with_seq(&[9, 1], 1), Err(DecodeError::Version { found: 9 }));
        assert!(matches!(
            with_seq(&[VERSION, 0xff], 1),
            Err(DecodeError::Malformed { .. })
        ));
    }

    #[test]
    fn the_start_of_numbering_has_golden_bytes_and_is_not_a_security_event() {
        let env = Envelope {
            seq: 1_763_798_400_000,
            time_ms: 1_763_798_400_000,
            body: Event::NumberingFrom {
                stream: Stream::Events,
                first: 1_763_798_400_000,
            },
        };
        let bytes = encode(&env).unwrap();
        // version, seq, time, variant 11, stream 1, first: varints of 1763798400000.
        let start = [128, 248, 206, 212, 170, 51];
        let mut expected = vec![1];
        expected.extend(start);
        expected.extend(start);
        expected.extend([11, 1]);
        expected.extend(start);
        assert_eq!(bytes, expected);
        assert_eq!(decode_event(&bytes), Ok(env.clone()));
        assert!(!env.body.is_security());
        assert_eq!(env.body.kind(), "numbering-from");
        assert_eq!(
            env.body.to_string(),
            "events numbered from seq 1763798400000"
        );
    }

    #[test]
    fn refuses_bad_input_with_a_reason() {
        let good = encode(&batch()).unwrap();
        assert_eq!(decode_telemetry(&[]), Err(DecodeError::Empty));
        assert_eq!(
            decode_telemetry(&[9, 1, 1, 0]),
            Err(DecodeError::Version { found: 9 })
        );
        assert_eq!(
            decode_telemetry(&good[..good.len() - 1]),
            Err(DecodeError::Malformed { what: "truncated" })
        );
        let mut long = good.clone();
        long.push(0);
        assert_eq!(
            decode_telemetry(&long),
            Err(DecodeError::Trailing { count: 1 })
        );
        let huge = vec![VERSION; MAX_PAYLOAD + 1];
        assert!(matches!(
            decode_telemetry(&huge),
            Err(DecodeError::TooLong { .. })
        ));
        let mut bad_code = good.clone();
        let at = bad_code.iter().position(|&b| b == b'a').unwrap();
        bad_code[at] = b' ';
        assert_eq!(
            decode_telemetry(&bad_code),
            Err(DecodeError::Body(BodyError::BadCode {
                sample: 2,
                error: crate::telemetry::MetricError::BadChar { pos: 0, found: ' ' }
            }))
        );
        let mut unknown = good.clone();
        unknown[10] = 0x7e; // metric id 63, not registered
        assert!(matches!(
            decode_telemetry(&unknown),
            Err(DecodeError::Body(BodyError::UnknownMetric {
                sample: 0,
                id: 63
            }))
        ));
    }

    fn arb_metric() -> impl proptest::strategy::Strategy<Value = Metric> {
        use proptest::prelude::*;
        let registered: Vec<Metric> = Metric::registered().cloned().collect();
        prop_oneof![
            proptest::sample::select(registered),
            "[a-z][a-z0-9._-]{0,31}".prop_map(|s| Metric::from_name(&s).unwrap()),
        ]
    }

    fn arb_envelope() -> impl proptest::strategy::Strategy<Value = Envelope<TelemetryBatch>> {
        use proptest::prelude::*;
        let sample = (
            any::<u32>(),
            arb_metric(),
            any::<i64>(),
            0u8..=18,
            proptest::option::of(any::<u8>().prop_map(Quality::from_flag)),
        )
            .prop_map(|(offset_ms, metric, m, s, quality)| Sample {
                offset_ms,
                metric,
                value: Decimal::new(m, s).unwrap(),
                quality,
            });
        (
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(sample, 0..40),
        )
            .prop_map(|(seq, time_ms, samples)| Envelope {
                seq,
                time_ms,
                body: TelemetryBatch { samples },
            })
    }

    proptest::proptest! {
        #[test]
        fn telemetry_round_trips(env in arb_envelope()) {
            let bytes = encode(&env).unwrap();
            proptest::prop_assert_eq!(decode_telemetry(&bytes), Ok(env));
        }

        #[test]
        fn every_truncation_is_refused(env in arb_envelope()) {
            let bytes = encode(&env).unwrap();
            for cut in 0..bytes.len() {
                proptest::prop_assert!(decode_telemetry(&bytes[..cut]).is_err());
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = decode_telemetry(&bytes);
            let _ = decode_event(&bytes);
            let _ = crate::presence::Presence::decode(&bytes);
        }
    }
}
