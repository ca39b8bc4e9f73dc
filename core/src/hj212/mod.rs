//! HJ 212 frames: the Chinese environmental-monitoring data-transfer protocol that pollution
//! source data loggers (数采仪) speak (HJ/T 212-2005, HJ 212-2017, HJ 212-2025).
//!
//! This module is the sans-IO codec: it cuts a byte stream into frames ([`next_frame`]), checks
//! and parses one frame into a [`Packet`] ([`decode`]), writes a packet as a frame ([`encode`],
//! [`try_encode`]), and reads what the bridge needs from a packet: the data time
//! ([`Packet::data_time`]), the measured values ([`Packet::readings`]), the protocol version,
//! and the answers the standard requires ([`Packet::data_ack`] and friends).
//!
//! # Frame
//!
//! ```text
//! "##" | LLLL | data segment (0..=1024 bytes) | CCCC | "\r\n"
//! ```
//!
//! `LLLL` is the length of the data segment in decimal, zero-padded to 4 digits. It counts raw
//! bytes (the standard says characters; for non-ASCII UTF-8 text, byte-oriented devices count
//! bytes, UTF-16 ones do not, and this codec counts and checks bytes). `CCCC` is the CRC of the
//! data segment in hexadecimal, high byte first. The data segment is
//!
//! ```text
//! QN=…;ST=…;CN=…;PW=…;MN=…;Flag=…;[PNUM=…;PNO=…;]CP=&&key=value;key=value,key=value&&
//! ```
//!
//! Flag bits are `V5 V4 V3 V2 V1 V0 D A`: `A` asks for an answer, `D` says PNUM and PNO are
//! present (a split packet), and the six `V` bits give the version: 0 for 2005, 1 for 2017, 2
//! for 2025.
//!
//! # CRC
//!
//! [`crc16`] is the algorithm of the standard's Appendix A (the same in 2005 and 2017): the
//! register starts at `0xFFFF`; for each byte, the register's high byte is XORed with the input
//! byte and becomes the new register (the low byte is dropped), then 8 rounds of shift right,
//! XOR `0xA001` when a 1 fell out. No final XOR. It is neither CRC-16/ARC nor CRC-16/MODBUS.
//! The standard's example data segment gives `0x1C80` (its prose says `1C08`, a typo).
//!
//! # Strict and lenient
//!
//! Strict, because a frame that fails these is not a frame:
//! - `##`, four decimal digits of length (at most 1024), exactly that many data bytes, four hex
//!   digits of CRC (either case accepted, uppercase written), `\r\n`;
//! - the CRC must match; the data segment must be UTF-8;
//! - header fields are exactly `QN ST CN PW MN Flag PNUM PNO` (case-sensitive); an unknown or
//!   repeated header field is an error, because a [`Packet`] could not carry it and silently
//!   dropping it would hide a misspelt field; `Flag` is a number 0–255, `PNUM`/`PNO` numbers
//!   1–65535 that come together with `1 <= PNO <= PNUM`, and Flag bit D requires them;
//! - the data segment ends with `CP=&&…&&`, preceded by `;` (or `,`) unless it is the first
//!   field;
//! - no `=` or `&` inside a header value or a plain CP value, and no header value starting
//!   with `//` (which would read as text in CP).
//!
//! Lenient, because real devices (and the standard's own examples) vary:
//! - every header field is optional (2005 devices omit `QN` and `Flag`; the caller decides what
//!   it needs), and header fields may come in any order ([`encode`] writes the standard order);
//! - `ST`, `CN`, `PW`, `MN`, `QN` are opaque strings of any length (ST=101, 14-character 2005
//!   MNs, 13-digit QNs); unknown codes pass through;
//! - `,` is accepted where `;` belongs (and vice versa), empty items (`;;`, a trailing `;`) are
//!   skipped, and spaces around keys and values are trimmed (`CP=&& PolId=w01018 &&`);
//! - CP keys are kept as written, in order, duplicates included; unknown keys and suffixes pass
//!   through. A value that starts with `//` is text and runs to the next `//`, so it may hold
//!   `;`, `,`, `=` or `&` (`i11001-Info=//清洗管路//`).
//!
//! Numeric CP values are only interpreted by [`Packet::readings`], exactly (no rounding, no
//! exponent); [`Packet::data_time`] reads `DataTime` as China Standard Time (UTC+8).
//!
//! A decoded packet re-encodes to a frame that decodes to the same packet (not necessarily the
//! same bytes: separators, spaces and leading zeros are normalised). [`encode`] writes whatever
//! it is given; [`try_encode`] refuses a packet that would not read back identically.
//!
//! ```
//! use cuntong_core::hj212::{self, Version};
//!
//! let frame = b"##0101QN=20160801085857223;ST=32;CN=1062;PW=100000;\
//! MN=010000A8900016F000169DC0;Flag=5;CP=&&RtdInterval=30&&1C80\r\n";
//! assert_eq!(hj212::next_frame(frame), hj212::Framing::Frame(frame.len()));
//! let p = hj212::decode(frame)?;
//! assert_eq!(p.cn.as_deref(), Some("1062"));
//! assert_eq!(p.version(), Version::V2017);
//! assert!(p.needs_ack());
//! assert_eq!(p.get("RtdInterval"), Some("30"));
//! assert_eq!(hj212::encode(&p), frame);
//! # Ok::<(), hj212::Hj212Error>(())
//! ```

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::decimal::Decimal;
use crate::telemetry::Quality;

mod codes;
mod decode;
mod encode;
mod frame;
mod packet;

pub use codes::{cn, code_2017, flag, metric_for, st};
pub use decode::decode;
pub use encode::{encode, try_encode};
pub use frame::{Framing, MAX_DATA_LEN, MAX_FRAME_LEN, OVERHEAD, crc16, next_frame};
pub use packet::{format_cst, parse_cst};
// What the parts share.
use decode::*;
use encode::*;
use frame::*;

/// One HJ 212 packet: the header fields as written, and CP as an ordered list of pairs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Packet {
    /// Request id, `YYYYMMDDhhmmsszzz` by the standard; answers echo it.
    pub qn: Option<String>,
    /// System code ([`st`]).
    pub st: Option<String>,
    /// Command code ([`cn`]).
    pub cn: Option<String>,
    /// Access password.
    pub pw: Option<String>,
    /// Device id (24 hex characters in 2017, 14 characters in 2005).
    pub mn: Option<String>,
    /// Version, split and answer bits ([`flag`]).
    pub flag: Option<u8>,
    /// Total number of parts of a split packet.
    pub pnum: Option<u16>,
    /// This part's number, from 1.
    pub pno: Option<u16>,
    /// CP as written: the ordered list of `key=value` pairs (keys like "DataTime", "w01018-Rtd", "w01018-Flag", "RtdInterval").
    pub cp: Vec<(String, String)>,
}

/// The protocol version a packet's Flag declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    /// HJ/T 212-2005: version bits 0, or no Flag at all.
    V2005,
    /// HJ 212-2017: version bits 1.
    V2017,
    /// HJ 212-2025: version bits 2.
    V2025,
    /// Version bits 3 to 63, not defined yet.
    Unknown(u8),
}

impl Version {
    /// The six version bits (Flag >> 2).
    pub fn bits(self) -> u8 {
        match self {
            Version::V2005 => 0,
            Version::V2017 => 1,
            Version::V2025 => 2,
            Version::Unknown(v) => v,
        }
    }

    fn from_bits(v: u8) -> Version {
        match v {
            0 => Version::V2005,
            1 => Version::V2017,
            2 => Version::V2025,
            v => Version::Unknown(v),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Version::V2005 => f.write_str("HJ/T 212-2005"),
            Version::V2017 => f.write_str("HJ 212-2017"),
            Version::V2025 => f.write_str("HJ 212-2025"),
            Version::Unknown(v) => write!(f, "HJ 212 version {v}"),
        }
    }
}

/// Request return codes (`QnRtn`, answer 9011).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QnRtn {
    /// 1: ready to execute the request.
    Ready,
    /// 2: request rejected.
    Rejected,
    /// 3: wrong password.
    BadPassword,
    /// 4: wrong MN.
    BadMn,
    /// 5: wrong ST.
    BadSt,
    /// 6: wrong Flag.
    BadFlag,
    /// 7: wrong QN.
    BadQn,
    /// 8: wrong CN.
    BadCn,
    /// 9: CRC error.
    BadCrc,
    /// 100: unknown error.
    Unknown,
}

impl QnRtn {
    pub fn code(self) -> u16 {
        match self {
            QnRtn::Ready => 1,
            QnRtn::Rejected => 2,
            QnRtn::BadPassword => 3,
            QnRtn::BadMn => 4,
            QnRtn::BadSt => 5,
            QnRtn::BadFlag => 6,
            QnRtn::BadQn => 7,
            QnRtn::BadCn => 8,
            QnRtn::BadCrc => 9,
            QnRtn::Unknown => 100,
        }
    }
}

/// Execution return codes (`ExeRtn`, answer 9012).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExeRtn {
    /// 1: executed.
    Success,
    /// 2: failed, reason unknown.
    Failed,
    /// 3: request conditions wrong.
    BadConditions,
    /// 4: communication timeout.
    Timeout,
    /// 5: system busy.
    Busy,
    /// 6: system fault.
    SystemFault,
    /// 100: no data.
    NoData,
}

impl ExeRtn {
    pub fn code(self) -> u16 {
        match self {
            ExeRtn::Success => 1,
            ExeRtn::Failed => 2,
            ExeRtn::BadConditions => 3,
            ExeRtn::Timeout => 4,
            ExeRtn::Busy => 5,
            ExeRtn::SystemFault => 6,
            ExeRtn::NoData => 100,
        }
    }
}

/// One measured value of a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reading {
    /// The factor code as written (`w01018`, `011`, `a34004`).
    pub factor: String,
    /// The value suffix (`Rtd`, `Avg`, `ZsRtd`, …).
    pub suffix: String,
    pub value: Decimal,
    /// The factor's data flag, if the packet gives one.
    pub flag: Option<Quality>,
}

/// CP key suffixes that carry a measured value: real-time, period statistics, converted (折算)
/// values, noise values, equipment running time and running status.
pub const VALUE_SUFFIXES: &[&str] = &[
    "Rtd",
    "Avg",
    "Min",
    "Max",
    "Cou",
    "ZsRtd",
    "ZsAvg",
    "ZsMin",
    "ZsMax",
    "Data",
    "DayData",
    "NightData",
    "RT",
    "RS",
];

/// Why a frame, a packet or one of its values was refused. Offsets are 0-based bytes from the
/// frame's first `#`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Hj212Error {
    /// The frame has `len` bytes, fewer than the 12 of the smallest frame.
    Truncated { len: usize },
    /// Byte `at` (0 or 1) is not `#`.
    BadHeader { at: usize },
    /// Byte `at` of the length field (2 to 5) is `found`, not a decimal digit.
    BadLength { at: usize, found: u8 },
    /// The length field (bytes 2 to 5) says more than 1024 bytes.
    LengthTooLarge { declared: usize },
    /// The length field says `declared` data bytes; the frame holds `actual`.
    LengthMismatch { declared: usize, actual: usize },
    /// Byte `at` should be CR (the second-last byte) or LF (the last byte).
    BadTrailer { at: usize },
    /// Byte `at` of the CRC field is `found`, not a hexadecimal digit.
    BadCrcDigit { at: usize, found: u8 },
    /// The CRC field at byte `at` says `found`; the data segment gives `expected`.
    BadCrc {
        at: usize,
        expected: u16,
        found: u16,
    },
    /// The data segment is not UTF-8 from byte `at`.
    BadText { at: usize },
    /// The header field `field` (as written) at byte `at` is wrong, for `reason`.
    BadField {
        at: usize,
        field: String,
        reason: &'static str,
    },
    /// CP is malformed at byte `at`.
    BadCp { at: usize, detail: &'static str },
    /// `DataTime` is not a valid `YYYYMMDDhhmmss` time at or after the Unix epoch.
    BadDataTime { value: String },
    /// The value of `key` is not a plain decimal (sign, digits, one point, at most 18 decimal
    /// places, fits 64 bits; no exponent).
    BadValue { key: String, value: String },
    /// The data flag `key` is not one printable ASCII character.
    BadFlag { key: String, value: String },
}

fn show_byte(b: u8) -> impl fmt::Display {
    core::ascii::escape_default(b)
}

impl fmt::Display for Hj212Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hj212Error::Truncated { len } => write!(
                f,
                "frame of {len} bytes is shorter than the {OVERHEAD}-byte minimum"
            ),
            Hj212Error::BadHeader { at } => write!(f, "byte {at}: header is not \"##\""),
            Hj212Error::BadLength { at, found } => write!(
                f,
                "byte {at}: length field has '{}', not a decimal digit",
                show_byte(*found)
            ),
            Hj212Error::LengthTooLarge { declared } => write!(
                f,
                "byte 2: length field says {declared} bytes, more than {MAX_DATA_LEN}"
            ),
            Hj212Error::LengthMismatch { declared, actual } => write!(
                f,
                "byte 2: length field says {declared} data bytes, the frame holds {actual}"
            ),
            Hj212Error::BadTrailer { at } => {
                write!(f, "byte {at}: frame does not end with CR LF")
            }
            Hj212Error::BadCrcDigit { at, found } => write!(
                f,
                "byte {at}: CRC field has '{}', not a hexadecimal digit",
                show_byte(*found)
            ),
            Hj212Error::BadCrc {
                at,
                expected,
                found,
            } => write!(
                f,
                "byte {at}: CRC is {found:04X} but the data segment gives {expected:04X}"
            ),
            Hj212Error::BadText { at } => write!(f, "byte {at}: data segment is not UTF-8"),
            Hj212Error::BadField { at, field, reason } => {
                write!(f, "byte {at}: header field {field:?}: {reason}")
            }
            Hj212Error::BadCp { at, detail } => write!(f, "byte {at}: CP: {detail}"),
            Hj212Error::BadDataTime { value } => write!(
                f,
                "DataTime {value:?} is not a valid YYYYMMDDhhmmss time after 1970"
            ),
            Hj212Error::BadValue { key, value } => write!(
                f,
                "{key}: {value:?} is not a plain decimal number (no exponent, at most 18 decimal places)"
            ),
            Hj212Error::BadFlag { key, value } => {
                write!(f, "{key}: {value:?} is not a one-letter data flag")
            }
        }
    }
}

impl core::error::Error for Hj212Error {}

impl Hj212Error {
    /// The frame byte the error is at, if it is at one.
    pub fn at(&self) -> Option<usize> {
        match self {
            Hj212Error::BadHeader { at }
            | Hj212Error::BadLength { at, .. }
            | Hj212Error::BadTrailer { at }
            | Hj212Error::BadCrcDigit { at, .. }
            | Hj212Error::BadCrc { at, .. }
            | Hj212Error::BadText { at }
            | Hj212Error::BadField { at, .. }
            | Hj212Error::BadCp { at, .. } => Some(*at),
            Hj212Error::LengthTooLarge { .. } | Hj212Error::LengthMismatch { .. } => Some(2),
            Hj212Error::Truncated { .. }
            | Hj212Error::BadDataTime { .. }
            | Hj212Error::BadValue { .. }
            | Hj212Error::BadFlag { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Metric;
    use alloc::format;
    use alloc::string::ToString;
    use alloc::vec;
    use proptest::prelude::*;

    const EXAMPLE: &[u8] = b"##0101QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;Flag=5;CP=&&RtdInterval=30&&1C80\r\n";

    /// Builds a frame around `data` with its correct length and CRC.
    fn frame(data: &str) -> Vec<u8> {
        format!(
            "##{:04}{data}{:04X}\r\n",
            data.len(),
            crc16(data.as_bytes())
        )
        .into_bytes()
    }

    fn s(v: &str) -> Option<String> {
        Some(v.to_owned())
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// The CRC written the way Appendix A describes it, bit by bit.
    fn crc16_bitwise(data: &[u8]) -> u16 {
        let mut reg: u16 = 0xFFFF;
        for &b in data {
            reg = (reg >> 8) ^ u16::from(b);
            for _ in 0..8 {
                let lsb = reg & 1;
                reg >>= 1;
                if lsb == 1 {
                    reg ^= 0xA001;
                }
            }
        }
        reg
    }

    #[test]
    fn hj212_crc_matches_the_standard() {
        assert_eq!(crc16(&EXAMPLE[6..107]), 0x1C80);
        assert_eq!(crc16(b"123456789"), 0x2F80);
        assert_eq!(crc16(b""), 0xFFFF);
        assert_eq!(CRC_TABLE[1], 0xC0C1);
        assert_eq!(CRC_TABLE[255], 0x4040);
        // The low byte of every CRC is one of eight values.
        for t in CRC_TABLE {
            assert!([0x00, 0x01, 0x40, 0x41, 0x80, 0x81, 0xC0, 0xC1].contains(&(t & 0xFF)));
        }
    }

    #[test]
    fn hj212_standard_example_decodes_and_reencodes_byte_for_byte() {
        let p = decode(EXAMPLE).unwrap();
        assert_eq!(
            p,
            Packet {
                qn: s("20160801085857223"),
                st: s("32"),
                cn: s("1062"),
                pw: s("100000"),
                mn: s("010000A8900016F000169DC0"),
                flag: Some(5),
                pnum: None,
                pno: None,
                cp: pairs(&[("RtdInterval", "30")]),
            }
        );
        assert_eq!(p.version(), Version::V2017);
        assert!(p.needs_ack());
        assert!(!p.is_split());
        assert_eq!(encode(&p), EXAMPLE);
        assert_eq!(try_encode(&p).unwrap(), EXAMPLE);
        assert_eq!(next_frame(EXAMPLE), Framing::Frame(EXAMPLE.len()));
    }

    #[test]
    fn hj212_lowercase_crc_is_accepted() {
        let lower = String::from_utf8(EXAMPLE.to_vec())
            .unwrap()
            .replace("1C80", "1c80");
        assert_eq!(decode(lower.as_bytes()), decode(EXAMPLE));
        assert_eq!(encode(&decode(lower.as_bytes()).unwrap()), EXAMPLE);
    }

    #[test]
    fn hj212_realtime_upload_2017() {
        let data = "QN=20160801085857223;ST=32;CN=2011;PW=123456;MN=010000A8900016F000169DC0;Flag=5;\
            CP=&&DataTime=20160801085857;w01018-Rtd=235.292750833832,w01018-Flag=N;\
            w21003-Rtd=1.80,w21003-Flag=T;w00000-Rtd=-0.052,w00000-Flag=D;a99054-Rtd=7&&";
        let f = frame(data);
        assert_eq!(next_frame(&f), Framing::Frame(f.len()));
        let p = decode(&f).unwrap();
        assert_eq!(encode(&p), f, "the standard's separators are reproduced");
        assert_eq!(p.cn.as_deref(), Some(cn::REALTIME));
        assert!(cn::is_data_upload(p.cn.as_deref().unwrap()));
        // 2016-08-01 08:58:57 in Beijing is 00:58:57 UTC.
        assert_eq!(p.data_time(), Some(Ok(1_470_013_137_000)));
        let r = p.readings().unwrap();
        let got: Vec<_> = r
            .iter()
            .map(|r| {
                (
                    r.factor.as_str(),
                    r.suffix.as_str(),
                    r.value.to_string(),
                    r.flag,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "w01018",
                    "Rtd",
                    "235.292750833832".to_string(),
                    Some(Quality::Normal)
                ),
                (
                    "w21003",
                    "Rtd",
                    "1.80".to_string(),
                    Some(Quality::OverLimit)
                ),
                ("w00000", "Rtd", "-0.052".to_string(), Some(Quality::Fault)),
                ("a99054", "Rtd", "7".to_string(), None),
            ]
        );
        assert_eq!(metric_for("w01018"), Metric::W01018);
        assert_eq!(metric_for("a99054"), Metric::Code("a99054".into()));
    }

    #[test]
    fn hj212_minute_data_with_statistics() {
        let data = "QN=20160801085857223;ST=32;CN=2051;PW=123456;MN=010000A8900016F000169DC0;Flag=4;\
            CP=&&DataTime=20160801084000;w00000-Cou=10.5,w00000-Min=16.4,w00000-Avg=17.5,\
            w00000-Max=20.1,w00000-Flag=N;w01001-Min=7.1,w01001-Avg=7.2,w01001-Max=7.3,\
            w01001-ZsAvg=7.25,w01001-EFlag=A01,w01001-Flag=M&&";
        let f = frame(data);
        let p = decode(&f).unwrap();
        assert_eq!(encode(&p), f);
        assert!(!p.needs_ack());
        let r = p.readings().unwrap();
        assert_eq!(r.len(), 8);
        assert_eq!(r[0].suffix, "Cou");
        assert_eq!(r[0].value, Decimal::new(105, 1).unwrap());
        assert_eq!(r[7].suffix, "ZsAvg");
        assert_eq!(r[7].flag, Some(Quality::Maintenance));
    }

    #[test]
    fn hj212_split_packet() {
        let data = "QN=20160801085857534;ST=32;CN=2011;PW=123456;MN=010000A8900016F000169DC0;Flag=7;\
            PNUM=2;PNO=1;CP=&&DataTime=20160801085857;w01018-Rtd=12.5,w01018-Flag=N&&";
        let f = frame(data);
        let p = decode(&f).unwrap();
        assert!(p.is_split() && p.needs_ack());
        assert_eq!((p.pnum, p.pno), (Some(2), Some(1)));
        assert_eq!(encode(&p), f);
        let ack = p.data_ack();
        assert_eq!(ack.qn.as_deref(), Some("20160801085857534"));
        assert_eq!((ack.flag, ack.pnum, ack.pno), (Some(4), None, None));
    }

    #[test]
    fn hj212_2005_frame_without_qn_and_flag() {
        let data = "ST=32;CN=2011;PW=123456;MN=LD130133000015;CP=&&DataTime=20160801085857;\
            011-Rtd=42.1,011-Flag=N;060-Rtd=1.85,060-Flag=P;001-Rtd=7.20;B01-Rtd=12.50;\
            831-Rtd=3&&";
        let f = frame(data);
        let p = decode(&f).unwrap();
        assert_eq!((p.qn.as_deref(), p.flag), (None, None));
        assert_eq!(p.version(), Version::V2005);
        assert!(!p.needs_ack() && !p.is_split());
        assert_eq!(encode(&p), f);
        let metrics: Vec<_> = p
            .readings()
            .unwrap()
            .iter()
            .map(|r| (metric_for(&r.factor), r.flag))
            .collect();
        assert_eq!(
            metrics,
            vec![
                (Metric::W01018, Some(Quality::Normal)),
                (Metric::W21003, Some(Quality::Other(b'P'))),
                (Metric::W01001, None),
                (Metric::W00000, None),
                (Metric::Code("831".into()), None),
            ]
        );
        assert_eq!(metric_for("S03"), Metric::A01012);
        assert_eq!(metric_for("110"), Metric::Code("w23002".into()));
        assert_eq!(code_2017("02"), Some("a21026"));
        assert_eq!(code_2017("w01018"), None);
    }

    #[test]
    fn hj212_2025_frame() {
        let data = "QN=20260105120000001;ST=31;CN=2011;PW=123456;MN=010000A8900016F000169DC0;Flag=9;\
            CP=&&DataTime=20260105120000;a34004-Rtd=35,a34004-Flag=N&&";
        let p = decode(&frame(data)).unwrap();
        assert_eq!(p.version(), Version::V2025);
        assert!(p.needs_ack());
        assert_eq!(p.data_ack().flag, Some(8));
        assert_eq!(metric_for("a34004"), Metric::A34004);
        let p = Packet {
            flag: Some(0b1111_0100),
            ..p
        };
        assert_eq!(p.version(), Version::Unknown(61));
        assert_eq!(Version::V2025.to_string(), "HJ 212-2025");
    }

    #[test]
    fn hj212_data_ack_format() {
        let p = decode(EXAMPLE).unwrap();
        let ack = encode(&p.data_ack());
        let want = frame(
            "QN=20160801085857223;ST=91;CN=9014;PW=100000;MN=010000A8900016F000169DC0;Flag=4;CP=&&&&",
        );
        assert_eq!(ack, want);
        assert!(!decode(&ack).unwrap().needs_ack());
        assert_eq!(
            encode(&p.request_answer(QnRtn::Ready)),
            frame(
                "QN=20160801085857223;ST=91;CN=9011;PW=100000;MN=010000A8900016F000169DC0;Flag=4;CP=&&QnRtn=1&&"
            )
        );
        assert_eq!(
            encode(&p.execution_result(ExeRtn::NoData)),
            frame(
                "QN=20160801085857223;ST=91;CN=9012;PW=100000;MN=010000A8900016F000169DC0;Flag=4;CP=&&ExeRtn=100&&"
            )
        );
        assert_eq!(p.notification_answer().cn.as_deref(), Some("9013"));
        // 2005: the request's QN goes into CP; Flag only if the request had one.
        let old = decode(&frame(
            "QN=20040516010101001;ST=32;CN=1072;PW=123456;MN=88888880000001;Flag=1;CP=&&NewPW=654321&&",
        ))
        .unwrap();
        assert_eq!(
            encode(&old.request_answer(QnRtn::BadPassword)),
            frame(
                "ST=91;CN=9011;PW=123456;MN=88888880000001;Flag=0;CP=&&QN=20040516010101001;QnRtn=3&&"
            )
        );
        let no_flag = Packet { flag: None, ..old };
        assert_eq!(
            encode(&no_flag.data_ack()),
            frame("ST=91;CN=9014;PW=123456;MN=88888880000001;CP=&&QN=20040516010101001&&")
        );
    }

    #[test]
    fn hj212_lenient_fields() {
        // Comma in the header, spaces in CP, empty items, a text value with separators inside,
        // fields out of order, leading zeros, duplicate keys, unknown ST/CN.
        let data = "ST=101,QN=1470013137223;CN=3020;PW=123456;MN=A110000_0001;Flag=04;;\
            CP=&& PolId=w01018 ;i11001-Info = //清洗管路;a=b&c// ,VaseNo=1 ;;e01001-Rtd=1.1;e01001-Rtd=2.2; &&";
        let p = decode(&frame(data)).unwrap();
        assert_eq!(p.st.as_deref(), Some("101"));
        assert_eq!(p.qn.as_deref(), Some("1470013137223"));
        assert_eq!(p.flag, Some(4));
        assert_eq!(
            p.cp,
            pairs(&[
                ("PolId", "w01018"),
                ("i11001-Info", "//清洗管路;a=b&c//"),
                ("VaseNo", "1"),
                ("e01001-Rtd", "1.1"),
                ("e01001-Rtd", "2.2"),
            ])
        );
        let again = encode(&p);
        assert_eq!(decode(&again).unwrap(), p);
        assert_eq!(try_encode(&p).unwrap(), again);
        assert_eq!(p.readings().unwrap().len(), 2);
        // An empty CP, with a space in it.
        let p = decode(&frame("ST=32;CN=2011;CP=&& &&")).unwrap();
        assert!(p.cp.is_empty());
        // Length counts bytes: 清 is three (19 characters, 21 bytes).
        let f = frame("CP=&&i-Info=//清//&&");
        assert_eq!(&f[2..6], b"0021");
        assert!(decode(&f).is_ok());
    }

    #[test]
    fn hj212_flags_nearest_and_bare() {
        let p = Packet {
            cp: pairs(&[
                ("a-Rtd", "1"),
                ("a-Flag", "N"),
                ("a-Rtd", "2"),
                ("a-Flag", "D"),
                ("b-Rtd", "3"),
                ("Flag", "M"),
                ("c-Avg", "4"),
            ]),
            ..Packet::default()
        };
        let flags: Vec<_> = p.readings().unwrap().iter().map(|r| r.flag).collect();
        assert_eq!(
            flags,
            vec![
                Some(Quality::Normal),
                Some(Quality::Fault),
                Some(Quality::Maintenance),
                Some(Quality::Maintenance),
            ]
        );
    }

    #[test]
    fn hj212_values_are_exact_or_refused() {
        let with = |v: &str| Packet {
            cp: pairs(&[("w01018-Rtd", v)]),
            ..Packet::default()
        };
        let r = with("0.000000000000000001").readings().unwrap();
        assert_eq!(r[0].value, Decimal::new(1, 18).unwrap());
        for bad in [
            "1e3",
            "1.0000000000000000001",
            "99999999999999999999",
            "",
            "-",
            "N/A",
        ] {
            assert_eq!(
                with(bad).readings(),
                Err(Hj212Error::BadValue {
                    key: "w01018-Rtd".into(),
                    value: bad.into()
                }),
                "{bad}"
            );
        }
        let p = Packet {
            cp: pairs(&[("w01018-Rtd", "1"), ("w01018-Flag", "NN")]),
            ..Packet::default()
        };
        let e = p.readings().unwrap_err();
        assert_eq!(
            e,
            Hj212Error::BadFlag {
                key: "w01018-Flag".into(),
                value: "NN".into()
            }
        );
        assert!(e.to_string().contains("w01018-Flag"));
        // Keys that are not values are not readings.
        let p = Packet {
            cp: pairs(&[
                ("DataTime", "x"),
                ("w01018-EFlag", "A01"),
                ("w01018-SampleTime", "x"),
                ("-Rtd", "1"),
                ("L10-Da", "54.0"),
            ]),
            ..Packet::default()
        };
        assert_eq!(p.readings(), Ok(vec![]));
    }

    #[test]
    fn hj212_data_time() {
        let at = |t: &str| Packet {
            cp: pairs(&[("DataTime", t)]),
            ..Packet::default()
        };
        assert_eq!(at("19700101080000").data_time(), Some(Ok(0)));
        assert_eq!(
            at("20240229235959").data_time(),
            Some(Ok(1_709_222_399_000))
        );
        assert_eq!(
            at("21000301000000").data_time(),
            Some(Ok(4_107_513_600_000))
        );
        for bad in [
            "19700101075959",
            "20230229000000",
            "21000229000000",
            "20241301000000",
            "20240100000000",
            "20240101240000",
            "20240101006000",
            "20240101000060",
            "2024010100000",
            "202401010000001",
            "2024010100000a",
            "+2024010100000",
        ] {
            assert_eq!(
                at(bad).data_time(),
                Some(Err(Hj212Error::BadDataTime { value: bad.into() })),
                "{bad}"
            );
        }
        assert_eq!(
            at("20000229120000").data_time().map(|r| r.is_ok()),
            Some(true)
        );
        assert_eq!(Packet::default().data_time(), None);
        assert_eq!(format_cst(1_470_013_137_223, true), "20160801085857223");
        assert_eq!(format_cst(0, false), "19700101080000");
    }

    #[test]
    fn hj212_every_error_names_its_offset() {
        use Hj212Error::*;
        let ex = || EXAMPLE.to_vec();
        let with = |i: usize, b: u8| {
            let mut f = ex();
            f[i] = b;
            f
        };
        let cases: Vec<(Vec<u8>, Hj212Error)> = vec![
            (b"##00".to_vec(), Truncated { len: 4 }),
            (b"".to_vec(), Truncated { len: 0 }),
            (with(0, b'$'), BadHeader { at: 0 }),
            (with(1, b'$'), BadHeader { at: 1 }),
            (with(4, b'x'), BadLength { at: 4, found: b'x' }),
            (
                frame("CP=&&&&").iter().copied().take(10).collect(),
                Truncated { len: 10 },
            ),
            (with(2, b'2'), LengthTooLarge { declared: 2101 }),
            (
                with(5, b'2'),
                LengthMismatch {
                    declared: 102,
                    actual: 101,
                },
            ),
            (with(111, b'\n'), BadTrailer { at: 111 }),
            (with(112, b'\r'), BadTrailer { at: 112 }),
            (
                with(109, b'G'),
                BadCrcDigit {
                    at: 109,
                    found: b'G',
                },
            ),
            (
                with(110, b'1'),
                BadCrc {
                    at: 107,
                    expected: 0x1C80,
                    found: 0x1C81,
                },
            ),
            (
                {
                    // An invalid UTF-8 pair, with a correct CRC.
                    let data = [b"CP=&&a=".as_slice(), &[0xC3, 0x28], b"&&"].concat();
                    [
                        b"##0011".as_slice(),
                        &data,
                        format!("{:04X}\r\n", crc16(&data)).as_bytes(),
                    ]
                    .concat()
                },
                BadText { at: 13 },
            ),
            (
                frame("ST=32;XX=1;CP=&&&&"),
                BadField {
                    at: 12,
                    field: "XX=1".into(),
                    reason: "unknown header field",
                },
            ),
            (
                frame("ST=32;ST=33;CP=&&&&"),
                BadField {
                    at: 12,
                    field: "ST=33".into(),
                    reason: "repeated field",
                },
            ),
            (
                frame("ST=32;Flag=256;CP=&&&&"),
                BadField {
                    at: 12,
                    field: "Flag=256".into(),
                    reason: "Flag is not a number 0-255",
                },
            ),
            (
                frame("ST;CP=&&&&"),
                BadField {
                    at: 6,
                    field: "ST".into(),
                    reason: "no '=' in the field",
                },
            ),
            (
                frame("PW=a=b;CP=&&&&"),
                BadField {
                    at: 6,
                    field: "PW=a=b".into(),
                    reason: "'=' or '&' in the value, or a value starting with //",
                },
            ),
            (
                frame("QN=//x;CP=&&&&"),
                BadField {
                    at: 6,
                    field: "QN=//x".into(),
                    reason: "'=' or '&' in the value, or a value starting with //",
                },
            ),
            (
                frame("Flag=5CP=&&&&"),
                BadField {
                    at: 12,
                    field: "CP".into(),
                    reason: "no ';' before CP",
                },
            ),
            (
                frame("Flag=6;CP=&&&&"),
                BadField {
                    at: 6,
                    field: "Flag".into(),
                    reason: "Flag says split (bit D) but PNUM and PNO are missing",
                },
            ),
            (
                frame("Flag=6;PNUM=2;CP=&&&&"),
                BadField {
                    at: 13,
                    field: "PNUM".into(),
                    reason: "PNUM without PNO",
                },
            ),
            (
                frame("PNO=1;CP=&&&&"),
                BadField {
                    at: 6,
                    field: "PNO".into(),
                    reason: "PNO without PNUM",
                },
            ),
            (
                frame("PNUM=2;PNO=3;CP=&&&&"),
                BadField {
                    at: 13,
                    field: "PNO".into(),
                    reason: "PNO is not between 1 and PNUM",
                },
            ),
            (
                frame("PNUM=70000;PNO=3;CP=&&&&"),
                BadField {
                    at: 6,
                    field: "PNUM=70000".into(),
                    reason: "not a number 0-65535",
                },
            ),
            (
                frame("ST=32;CN=2011"),
                BadCp {
                    at: 19,
                    detail: "no CP=&& in the data segment",
                },
            ),
            (
                frame("ST=32;CP=&&a=1&"),
                BadCp {
                    at: 12,
                    detail: "CP does not end with && at the end of the data segment",
                },
            ),
            (
                frame("CP=&&&"),
                BadCp {
                    at: 6,
                    detail: "CP does not end with && at the end of the data segment",
                },
            ),
            (
                frame("CP=&&a=1;b&&"),
                BadCp {
                    at: 15,
                    detail: "no '=' after the key",
                },
            ),
            (
                frame("CP=&&a=1;=2&&"),
                BadCp {
                    at: 15,
                    detail: "empty key",
                },
            ),
            (
                frame("CP=&&a&b=1&&"),
                BadCp {
                    at: 12,
                    detail: "'&' in a key",
                },
            ),
            (
                frame("CP=&&a=1=2&&"),
                BadCp {
                    at: 14,
                    detail: "'=' or '&' in a value",
                },
            ),
            (
                frame("CP=&&a=//x;y&&"),
                BadCp {
                    at: 13,
                    detail: "text value without its closing //",
                },
            ),
            (
                frame("CP=&&a=//x//y&&"),
                BadCp {
                    at: 18,
                    detail: "text value not followed by ';' or ','",
                },
            ),
        ];
        for (f, want) in cases {
            let got = decode(&f);
            assert_eq!(
                got.as_ref(),
                Err(&want),
                "{:?}",
                String::from_utf8_lossy(&f)
            );
            // Every message says where.
            let msg = want.to_string();
            assert!(msg.contains("byte") || msg.contains("frame of"), "{msg}");
        }
        // Errors that only values can have.
        let msg = BadDataTime { value: "x".into() }.to_string();
        assert!(msg.contains("\"x\""));
        assert!(
            BadValue {
                key: "k".into(),
                value: "1e3".into()
            }
            .to_string()
            .contains("1e3")
        );
    }

    #[test]
    fn hj212_try_encode_refuses_what_would_not_read_back() {
        let ok = decode(EXAMPLE).unwrap();
        let refused = [
            Packet {
                pw: s("a;b"),
                ..ok.clone()
            },
            Packet {
                mn: s(" x"),
                ..ok.clone()
            },
            Packet {
                flag: Some(7),
                ..ok.clone()
            },
            Packet {
                pnum: Some(1),
                ..ok.clone()
            },
            Packet {
                pnum: Some(1),
                pno: Some(2),
                ..ok.clone()
            },
            Packet {
                cp: pairs(&[("", "1")]),
                ..ok.clone()
            },
            Packet {
                cp: pairs(&[("a", "1,2")]),
                ..ok.clone()
            },
            Packet {
                cp: pairs(&[("a", "//x//y//")]),
                ..ok.clone()
            },
            Packet {
                cp: pairs(&[("a", "//x")]),
                ..ok.clone()
            },
            Packet {
                cp: vec![("k".into(), "1".repeat(1100))],
                ..ok.clone()
            },
            // One value that would read as fields of its own, or start a frame, or not be
            // what the standard allows where it is.
            Packet {
                mn: s("x;MN=EVIL"),
                ..ok.clone()
            },
            Packet {
                cp: pairs(&[("a", "1;MN=EVIL")]),
                ..ok.clone()
            },
            Packet {
                mn: s("a##0101"),
                ..ok.clone()
            },
            Packet {
                cp: pairs(&[("a#", "1")]),
                ..ok.clone()
            },
            Packet {
                cp: pairs(&[("a", "//x#y//")]),
                ..ok.clone()
            },
            Packet {
                mn: s("站点"),
                ..ok.clone()
            },
            Packet {
                cp: pairs(&[("因子", "1")]),
                ..ok.clone()
            },
            Packet {
                cp: pairs(&[("a", "1\r\n")]),
                ..ok.clone()
            },
            Packet {
                cp: pairs(&[("a", "//x\ny//")]),
                ..ok.clone()
            },
            Packet {
                cp: vec![("k".into(), "1".repeat(5000))],
                ..ok.clone()
            },
        ];
        // Text values may hold what the standard lets text hold.
        assert!(
            try_encode(&Packet {
                cp: pairs(&[("i11001-Info", "//清洗管路; a=b & c//")]),
                ..ok.clone()
            })
            .is_ok()
        );
        for p in refused {
            assert!(try_encode(&p).is_err(), "{p:?}");
        }
        let e = try_encode(&Packet {
            pw: s("a;b"),
            ..ok.clone()
        })
        .unwrap_err();
        assert_eq!(
            e,
            Hj212Error::BadField {
                at: 41,
                field: "PW=a;b".into(),
                reason: "';', ',', '=', '&', '#', a character other than printable ASCII, a leading or trailing space, or a leading // in the value",
            }
        );
    }

    #[test]
    fn hj212_every_single_byte_change_of_the_example_is_caught() {
        let good = decode(EXAMPLE).unwrap();
        for i in 0..EXAMPLE.len() {
            for b in 0..=255u8 {
                if b == EXAMPLE[i] {
                    continue;
                }
                let mut f = EXAMPLE.to_vec();
                f[i] = b;
                let case_flip = (107..111).contains(&i) && b.eq_ignore_ascii_case(&EXAMPLE[i]);
                match decode(&f) {
                    Ok(p) => assert!(case_flip && p == good, "byte {i} = {b:#04x} not caught"),
                    Err(_) => assert!(!case_flip),
                }
            }
        }
    }

    #[test]
    fn hj212_framing_basics() {
        assert_eq!(next_frame(b""), Framing::NeedMore);
        assert_eq!(next_frame(b"#"), Framing::NeedMore);
        assert_eq!(next_frame(b"##"), Framing::NeedMore);
        assert_eq!(next_frame(b"##010"), Framing::NeedMore);
        assert_eq!(next_frame(&EXAMPLE[..50]), Framing::NeedMore);
        assert_eq!(next_frame(b"xy"), Framing::Skip(2));
        assert_eq!(next_frame(b"xy#"), Framing::Skip(2));
        assert_eq!(next_frame(b"xy##01"), Framing::Skip(2));
        assert_eq!(next_frame(b"##x"), Framing::Skip(3));
        assert_eq!(next_frame(b"###0101"), Framing::Skip(1));
        assert_eq!(next_frame(b"##01a1##0"), Framing::Skip(6));
        assert_eq!(next_frame(b"##1025"), Framing::Skip(6));
        assert_eq!(next_frame(b"##81QN=1"), Framing::Skip(8));
        // A stale length: no CR LF where it should be.
        let mut stale = b"##0005CP=&&&&FFFF\r\n".to_vec();
        stale.extend_from_slice(EXAMPLE);
        assert_eq!(next_frame(&stale), Framing::Skip(19));
        assert_eq!(next_frame(&stale[19..]), Framing::Frame(EXAMPLE.len()));
        // A frame with a bad CRC is still a frame: decode says what is wrong.
        let mut bad = EXAMPLE.to_vec();
        bad[20] = b'X';
        assert_eq!(next_frame(&bad), Framing::Frame(bad.len()));
        assert!(matches!(decode(&bad), Err(Hj212Error::BadCrc { .. })));
    }

    /// Runs a receiver over `stream` delivered in chunks of `chunk` bytes; returns the frames.
    fn receive(stream: &[u8], chunk: usize) -> Vec<Vec<u8>> {
        let mut buf = Vec::new();
        let mut frames = Vec::new();
        for piece in stream.chunks(chunk.max(1)) {
            buf.extend_from_slice(piece);
            loop {
                match next_frame(&buf) {
                    Framing::NeedMore => break,
                    Framing::Skip(n) => {
                        assert!(n >= 1 && n <= buf.len());
                        buf.drain(..n);
                    }
                    Framing::Frame(n) => {
                        assert!(n <= buf.len());
                        frames.push(buf.drain(..n).collect());
                    }
                }
            }
        }
        frames
    }

    fn header_value() -> impl Strategy<Value = Option<String>> {
        proptest::option::of("([0-9A-Za-z_][0-9A-Za-z_/]{0,23})?")
    }

    /// Strings an outsider might hand the encoder: reserved characters, CR LF, other scripts,
    /// text markers, lengths past a frame.
    fn hostile() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9;,=&# /\\r\\n\\t站-]{0,10}",
            "//[a-z;,=&# /\\r\\n站]{0,10}//",
            "[a-z0-9]{0,8}",
            "[0-9]{1000,1030}",
            any::<String>(),
        ]
    }

    fn cp_value() -> impl Strategy<Value = String> {
        prop_oneof![
            "-?[0-9]{1,6}(\\.[0-9]{1,6})?",
            "[NFMSDCTBP]",
            "([A-Za-z0-9.:_-]([A-Za-z0-9 ./:_-]{0,8}[A-Za-z0-9./:_-])?)?",
            "//[^/#\\p{Cc}]{0,10}//",
        ]
    }

    prop_compose! {
        fn packet()(
            qn in header_value(), st in header_value(), cn in header_value(),
            pw in header_value(), mn in header_value(),
            flag in proptest::option::of(any::<u8>()),
            split in proptest::option::of((1u16..=9999).prop_flat_map(|n| (Just(n), 1..=n))),
            cp in proptest::collection::vec(
                ("[A-Za-z][A-Za-z0-9]{0,7}(-[A-Za-z]{1,6})?", cp_value()), 0..12),
        ) -> Packet {
            let flag = if split.is_none() { flag.map(|f| f & !flag::SPLIT) } else { flag };
            Packet {
                qn, st, cn, pw, mn, flag,
                pnum: split.map(|s| s.0),
                pno: split.map(|s| s.1),
                cp,
            }
        }
    }

    proptest! {
        #[test]
        fn hj212_encode_decode_round_trips(p in packet()) {
            let f = encode(&p);
            prop_assert_eq!(try_encode(&p), Ok(f.clone()));
            prop_assert_eq!(next_frame(&f), Framing::Frame(f.len()));
            prop_assert_eq!(decode(&f), Ok(p.clone()));
            let ack = encode(&p.data_ack());
            prop_assert_eq!(decode(&ack), Ok(p.data_ack()));
            let _ = p.readings();
        }

        #[test]
        fn hj212_checked_packets_round_trip(
            qn in proptest::option::of("[a-z;,=& /]{0,6}"),
            mn in proptest::option::of("[a-z;,=& /]{0,6}"),
            flag in proptest::option::of(any::<u8>()),
            pnum in proptest::option::of(any::<u16>()),
            pno in proptest::option::of(any::<u16>()),
            cp in proptest::collection::vec(("[a-z;,=& /-]{0,6}", "[a-z;,=& /]{0,8}"), 0..6),
        ) {
            let p = Packet { qn, mn, flag, pnum, pno, cp, ..Packet::default() };
            if let Ok(f) = try_encode(&p) {
                prop_assert_eq!(decode(&f), Ok(p.clone()));
                let ack = p.data_ack();
                prop_assert_eq!(decode(&encode(&ack)), Ok(ack));
            }
        }

        #[test]
        fn hj212_whatever_try_encode_accepts_is_one_clean_frame_that_decodes_to_the_same_packet(
            head in proptest::collection::vec(proptest::option::of(hostile()), 5),
            flag in proptest::option::of(any::<u8>()),
            pnum in proptest::option::of(1u16..4),
            pno in proptest::option::of(1u16..4),
            cp in proptest::collection::vec((hostile(), hostile()), 0..6),
        ) {
            let p = Packet {
                qn: head[0].clone(), st: head[1].clone(), cn: head[2].clone(),
                pw: head[3].clone(), mn: head[4].clone(), flag, pnum, pno, cp,
            };
            if let Ok(f) = try_encode(&p) {
                prop_assert!(f.len() <= MAX_FRAME_LEN);
                prop_assert_eq!(next_frame(&f), Framing::Frame(f.len()));
                prop_assert!(!f[2..].contains(&b'#'), "no frame start inside the frame");
                let body = &f[..f.len() - 2];
                prop_assert!(!body.iter().any(|b| b.is_ascii_control()), "no control bytes");
                let decoded = decode(&f);
                prop_assert_eq!(decoded, Ok(p.clone()));
                for v in [&p.qn, &p.st, &p.cn, &p.pw, &p.mn].into_iter().flatten() {
                    prop_assert!(v.is_ascii(), "header values are ASCII");
                }
            }
        }

        #[test]
        fn hj212_any_single_byte_change_is_caught(p in packet(), mask in 1u8..=255) {
            let f = encode(&p);
            let crc = f.len() - 6..f.len() - 2;
            for i in 0..f.len() {
                let mut g = f.clone();
                g[i] ^= mask;
                let case_flip = crc.contains(&i) && g[i].eq_ignore_ascii_case(&f[i]);
                match decode(&g) {
                    Ok(q) => prop_assert!(case_flip && q == p, "byte {} ^ {:#04x} not caught", i, mask),
                    Err(_) => prop_assert!(!case_flip),
                }
                let _ = next_frame(&g);
            }
        }

        #[test]
        fn hj212_next_frame_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..1200)) {
            check_framing(&buf)?;
        }

        #[test]
        fn hj212_next_frame_never_panics_on_near_frames(
            buf in proptest::collection::vec(proptest::sample::select(b"##0123\r\nCP=&".to_vec()), 0..64)
        ) {
            check_framing(&buf)?;
            let _ = decode(&buf);
        }

        #[test]
        fn hj212_stream_yields_exactly_the_frames(
            parts in proptest::collection::vec(
                (packet(),
                 proptest::collection::vec(any::<u8>().prop_filter("no #", |b| *b != b'#'), 0..40),
                 any::<bool>()),
                1..5),
            chunk in 1usize..200,
        ) {
            let mut stream = Vec::new();
            let mut want = Vec::new();
            for (p, garbage, hash) in &parts {
                stream.extend_from_slice(garbage);
                if *hash {
                    stream.push(b'#');
                }
                let f = encode(p);
                stream.extend_from_slice(&f);
                want.push(f);
            }
            prop_assert_eq!(&receive(&stream, stream.len()), &want);
            prop_assert_eq!(&receive(&stream, chunk), &want);
            for (f, (p, _, _)) in want.iter().zip(&parts) {
                prop_assert_eq!(&decode(f), &Ok(p.clone()));
            }
        }

        #[test]
        fn hj212_whatever_decodes_reencodes_to_the_same_packet(
            p in packet(),
            edits in proptest::collection::vec((any::<usize>(), any::<bool>(), proptest::sample::select(vec![
                "QN=", "ST=", "Flag=", "PNUM=", "PNO=", "CP=&&", "&&", ";", ",", "=", " ", "  ",
                "//", "/", "&", "0", "7", "a", "-Flag", "w01018-Rtd=", "Flag=N", "\u{6e05}", "DataTime=",
            ])), 0..6),
        ) {
            // Mutate a valid data segment, then frame it with the right length and CRC, so
            // that the field parser (not the CRC) decides.
            let f = encode(&p);
            let mut data = String::from_utf8(f[6..f.len() - 6].to_vec()).unwrap();
            for (at, replace, token) in edits {
                let mut at = at % (data.len() + 1);
                while !data.is_char_boundary(at) {
                    at -= 1;
                }
                if replace && at < data.len() {
                    let mut end = at + 1;
                    while !data.is_char_boundary(end) {
                        end += 1;
                    }
                    data.replace_range(at..end, token);
                } else {
                    data.insert_str(at, token);
                }
            }
            if data.len() <= MAX_DATA_LEN {
                let f = frame(&data);
                prop_assert_eq!(next_frame(&f), Framing::Frame(f.len()));
                if let Ok(q) = decode(&f) {
                    let again = encode(&q);
                    prop_assert!(again.len() <= f.len());
                    // The checked encoder writes the same frame, or refuses what the standard
                    // does not allow (non-ASCII outside text, say) though the decoder took it.
                    if let Ok(checked) = try_encode(&q) {
                        prop_assert_eq!(checked, again.clone());
                    }
                    prop_assert_eq!(decode(&again), Ok(q.clone()));
                    let ack = q.data_ack();
                    prop_assert_eq!(decode(&encode(&ack)), Ok(ack));
                    let _ = q.readings();
                    let _ = q.data_time();
                }
            }
        }

        #[test]
        fn hj212_time_formats_round_trip(ms in 0u64..253_402_271_999_000) {
            let t = format_cst(ms, false);
            prop_assert_eq!(parse_cst(&t), Ok(ms / 1000 * 1000));
            prop_assert_eq!(format_cst(ms, true).len(), 17);
        }
    }

    fn check_framing(buf: &[u8]) -> Result<(), TestCaseError> {
        match next_frame(buf) {
            Framing::NeedMore => {}
            Framing::Skip(n) => prop_assert!(n >= 1 && n <= buf.len()),
            Framing::Frame(n) => {
                prop_assert!((OVERHEAD..=MAX_FRAME_LEN).contains(&n) && n <= buf.len());
                prop_assert_eq!(&buf[n - 2..n], b"\r\n");
                let _ = decode(&buf[..n]);
            }
        }
        Ok(())
    }

    #[test]
    fn hj212_crc_table_equals_the_bitwise_algorithm() {
        let data: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
        for i in 0..data.len() {
            assert_eq!(crc16(&data[..i]), crc16_bitwise(&data[..i]));
        }
        assert_eq!(crc16_bitwise(&EXAMPLE[6..107]), 0x1C80);
    }
}
