//! `cuntong hj212`: tools for technicians debugging a data logger on site. `decode` turns
//! frames (one per line, as captured from the wire) into fields or a precise error; `encode`
//! builds frames from JSON, with the length and CRC computed.
//!
//! The JSON form is a contract: an object with `qn`, `st`, `cn`, `pw`, `mn`, `flag`, `pnum`,
//! `pno` (strings as they appear in the frame, null when absent) and `cp`, an object of every CP
//! `key=value` pair in frame order (`"DataTime": "20160801085857"`, `"w01018-Rtd": "194.200"`).

use cuntong_core::hj212::{self, Packet};
use serde::{Deserialize, Serialize};

/// One frame as JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrameJson {
    pub qn: Option<String>,
    pub st: Option<String>,
    pub cn: Option<String>,
    pub pw: Option<String>,
    pub mn: Option<String>,
    pub flag: Option<String>,
    pub pnum: Option<String>,
    pub pno: Option<String>,
    pub cp: serde_json::Map<String, serde_json::Value>,
}

impl From<&Packet> for FrameJson {
    fn from(p: &Packet) -> FrameJson {
        FrameJson {
            qn: p.qn.clone(),
            st: p.st.clone(),
            cn: p.cn.clone(),
            pw: p.pw.clone(),
            mn: p.mn.clone(),
            flag: p.flag.map(|f| f.to_string()),
            pnum: p.pnum.map(|n| n.to_string()),
            pno: p.pno.map(|n| n.to_string()),
            cp: p
                .cp
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect(),
        }
    }
}

/// A field of a technician's frame that is not one: which, and why.
#[derive(Debug, thiserror::Error)]
pub enum FieldError {
    #[error("{field}: {value:?} is not a number")]
    NotNumber { field: &'static str, value: String },
    #[error("flag: {0} is more than 255")]
    Flag(u16),
    #[error("cp.{key}: {value} is not a string or number")]
    Cp {
        key: String,
        value: serde_json::Value,
    },
}

impl FrameJson {
    /// The packet this JSON describes; errors name the field.
    pub fn to_packet(&self) -> Result<Packet, FieldError> {
        let num = |field: &'static str, v: &Option<String>| {
            v.as_ref()
                .map(|s| {
                    s.parse::<u16>().map_err(|_| FieldError::NotNumber {
                        field,
                        value: s.clone(),
                    })
                })
                .transpose()
        };
        let flag = num("flag", &self.flag)?
            .map(|f| u8::try_from(f).map_err(|_| FieldError::Flag(f)))
            .transpose()?;
        let mut cp = Vec::with_capacity(self.cp.len());
        for (k, v) in &self.cp {
            let v = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                other => {
                    return Err(FieldError::Cp {
                        key: k.clone(),
                        value: other.clone(),
                    });
                }
            };
            cp.push((k.clone(), v));
        }
        Ok(Packet {
            qn: self.qn.clone(),
            st: self.st.clone(),
            cn: self.cn.clone(),
            pw: self.pw.clone(),
            mn: self.mn.clone(),
            flag,
            pnum: num("pnum", &self.pnum)?,
            pno: num("pno", &self.pno)?,
            cp,
        })
    }
}

/// Why a captured line is not a frame, said in terms of the line (never past its end).
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    /// The line is shorter than the smallest frame.
    #[error(
        "the line has {len} bytes, fewer than the {} of the smallest frame (CR LF not counted)",
        hj212::OVERHEAD - 2
    )]
    TooShort { len: usize },
    /// The line is shorter than the frame its length field announces.
    #[error(
        "the line has {len} bytes, but its length field says {declared} data bytes (a frame of {} bytes before CR LF)",
        declared + hj212::OVERHEAD - 2
    )]
    ShorterThanDeclared { len: usize, declared: usize },
    /// The line stops before its frame does.
    #[error("the line ends after {len} bytes, before its frame does")]
    EndsEarly { len: usize },
    /// The frame in the line is bad (its CRC, a field, a byte that is not UTF-8, …).
    #[error("{0}")]
    Frame(#[source] hj212::Hj212Error),
}

/// Decodes one captured line, as bytes (the trailing CR LF may be missing; a byte that is not
/// UTF-8 is an error at its offset, like any other). An error never points past the line: a
/// line that stops before its frame does says so.
pub fn decode_line(line: &[u8]) -> Result<Packet, LineError> {
    let mut end = line.len();
    while end > 0 && matches!(line[end - 1], b'\r' | b'\n') {
        end -= 1;
    }
    let mut frame = line[..end].to_vec();
    frame.extend_from_slice(b"\r\n");
    hj212::decode(&frame).map_err(|e| match e {
        hj212::Hj212Error::Truncated { .. } => LineError::TooShort { len: end },
        hj212::Hj212Error::LengthMismatch { declared, .. }
            if end < declared + hj212::OVERHEAD - 2 =>
        {
            LineError::ShorterThanDeclared { len: end, declared }
        }
        e if e.at().is_some_and(|at| at >= end) => LineError::EndsEarly { len: end },
        e => LineError::Frame(e),
    })
}

/// Every field of a packet, for people.
pub fn describe(p: &Packet) -> String {
    let mut out = String::new();
    let field = |out: &mut String, k: &str, v: Option<String>| {
        out.push_str(&format!(
            "{k:<5} {}\n",
            v.unwrap_or_else(|| "(absent)".into())
        ));
    };
    field(&mut out, "QN", p.qn.clone());
    field(&mut out, "ST", p.st.clone());
    field(&mut out, "CN", p.cn.clone());
    field(&mut out, "PW", p.pw.clone());
    field(&mut out, "MN", p.mn.clone());
    field(
        &mut out,
        "Flag",
        p.flag.map(|f| {
            format!(
                "{f} ({:?}{}{})",
                p.version(),
                if p.needs_ack() {
                    ", answer required"
                } else {
                    ""
                },
                if p.is_split() { ", split" } else { "" }
            )
        }),
    );
    if p.is_split() {
        field(&mut out, "PNUM", p.pnum.map(|n| n.to_string()));
        field(&mut out, "PNO", p.pno.map(|n| n.to_string()));
    }
    for (k, v) in &p.cp {
        out.push_str(&format!("  {k} = {v}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "##0101QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;Flag=5;CP=&&RtdInterval=30&&1C80";

    #[test]
    fn the_standards_example_decodes_and_round_trips_through_json() {
        let p = decode_line(EXAMPLE.as_bytes()).unwrap();
        let json = FrameJson::from(&p);
        assert_eq!(json.cn.as_deref(), Some("1062"));
        assert_eq!(json.flag.as_deref(), Some("5"));
        assert_eq!(json.cp["RtdInterval"], "30");
        let back = json.to_packet().unwrap();
        assert_eq!(
            String::from_utf8(hj212::encode(&back)).unwrap(),
            format!("{EXAMPLE}\r\n")
        );
    }

    #[test]
    fn a_corrupted_line_gets_a_precise_error() {
        let bad = EXAMPLE.replace("CN=1062", "CN=1063");
        let err = decode_line(bad.as_bytes()).unwrap_err().to_string();
        assert!(err.to_lowercase().contains("crc"), "{err}");
    }

    #[test]
    fn a_short_line_is_named_as_short_never_by_the_cr_lf_it_lacks() {
        for line in ["##", "##01", "##0101QN=2016", &EXAMPLE[..EXAMPLE.len() - 2]] {
            let err = decode_line(line.as_bytes()).unwrap_err().to_string();
            assert!(
                !err.contains("\\r") && !err.contains("CR LF\""),
                "{line}: {err}"
            );
            assert!(err.contains("the line"), "{line}: {err}");
        }
    }

    #[test]
    fn a_byte_that_is_not_utf8_is_an_error_at_its_offset() {
        let mut line = EXAMPLE.as_bytes().to_vec();
        line[20] = 0xff;
        let err = decode_line(&line).unwrap_err().to_string();
        assert!(err.contains("byte"), "{err}");
    }
}
