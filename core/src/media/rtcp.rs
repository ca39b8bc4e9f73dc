//! The RTCP feedback a receiving site sends about one stream, back the way the stream came:
//! a receiver report (RFC 3550 §6.4.2) with one report block, and, when the site needs a
//! picture to decode from (it joined, its layout changed, packets were lost), a picture loss
//! indication after it (RFC 4585 §6.3.1). The stream's SSRC is the report block's first
//! word, at the same place (bytes 8 to 11) as a feedback message's media source, so a relay
//! reads whom a packet is about without parsing it ([`about`]).

use alloc::vec::Vec;
use core::fmt;

/// RTCP packet types.
pub const RR: u8 = 201;
pub const RTPFB: u8 = 205;
pub const PSFB: u8 = 206;
/// The payload-specific feedback message type of a picture loss indication.
const PLI: u8 = 1;

/// What a receiver measured of a stream (RFC 3550 §6.4.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Share of the packets expected since the last report that were lost, in 1/256.
    pub fraction_lost: u8,
    /// Packets lost since the start (24 bits).
    pub cumulative_lost: u32,
    /// The highest sequence number received, with its cycles above.
    pub highest_sequence: u32,
    /// Interarrival jitter, in RTP timestamp units.
    pub jitter: u32,
}

/// One feedback packet: `from` (the receiver's SSRC) reports on stream `about`, and asks for a
/// keyframe if `keyframe`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Feedback {
    pub from: u32,
    pub about: u32,
    pub report: Report,
    pub keyframe: bool,
}

/// Why a packet is not feedback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RtcpError {
    /// Cut short: `at` is where the packet ended too soon.
    Truncated {
        at: usize,
    },
    /// The first packet is not a receiver report with a report block.
    NotAReport {
        packet_type: u8,
    },
    Version {
        found: u8,
    },
}

impl fmt::Display for RtcpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RtcpError::Truncated { at } => write!(f, "RTCP packet cut short at byte {at}"),
            RtcpError::NotAReport { packet_type } => {
                write!(
                    f,
                    "RTCP packet type {packet_type} where a receiver report was expected"
                )
            }
            RtcpError::Version { found } => write!(f, "RTCP version {found}, expected 2"),
        }
    }
}

impl core::error::Error for RtcpError {}

fn word(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The stream a (compound) RTCP packet is about: the first report block's SSRC of a receiver
/// report, or the media source of a feedback message. Readable in SRTCP whose E flag is clear.
pub fn about(datagram: &[u8]) -> Option<u32> {
    let first = *datagram.first()?;
    let packet_type = *datagram.get(1)?;
    let count = first & 0x1f;
    match packet_type {
        RR if count >= 1 => word(datagram, 8),
        RTPFB | PSFB => word(datagram, 8),
        _ => None,
    }
}

/// Whether a (compound) RTCP packet holds a picture loss indication. Reads packet headers
/// while they are RTCP's; an SRTCP trailer whose E flag is clear ends the walk.
pub fn asks_keyframe(datagram: &[u8]) -> bool {
    let mut at = 0;
    while let Some(b) = datagram.get(at..at + 4) {
        if b[0] >> 6 != 2 {
            return false;
        }
        if b[1] == PSFB && b[0] & 0x1f == PLI {
            return true;
        }
        at += (usize::from(u16::from_be_bytes([b[2], b[3]])) + 1) * 4;
    }
    false
}

impl Feedback {
    /// The compound packet: the receiver report, then the picture loss indication if asked.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(44);
        // V=2, one report block; 8 words follow the first.
        out.extend_from_slice(&[0x81, RR, 0, 7]);
        out.extend_from_slice(&self.from.to_be_bytes());
        out.extend_from_slice(&self.about.to_be_bytes());
        let r = &self.report;
        out.push(r.fraction_lost);
        out.extend_from_slice(&r.cumulative_lost.min(0x00ff_ffff).to_be_bytes()[1..]);
        out.extend_from_slice(&r.highest_sequence.to_be_bytes());
        out.extend_from_slice(&r.jitter.to_be_bytes());
        // No sender report received: no last SR and no delay since.
        out.extend_from_slice(&[0; 8]);
        if self.keyframe {
            out.extend_from_slice(&[0x80 | PLI, PSFB, 0, 2]);
            out.extend_from_slice(&self.from.to_be_bytes());
            out.extend_from_slice(&self.about.to_be_bytes());
        }
        out
    }

    /// Reads a compound packet that starts with a receiver report about one stream; a picture
    /// loss indication about the same stream anywhere after it asks for a keyframe. Other
    /// packets in the compound are skipped.
    pub fn decode(bytes: &[u8]) -> Result<Feedback, RtcpError> {
        let head = |at: usize| -> Result<(u8, u8, usize), RtcpError> {
            let b = bytes.get(at..at + 4).ok_or(RtcpError::Truncated { at })?;
            if b[0] >> 6 != 2 {
                return Err(RtcpError::Version { found: b[0] >> 6 });
            }
            let len = (usize::from(u16::from_be_bytes([b[2], b[3]])) + 1) * 4;
            Ok((b[0] & 0x1f, b[1], len))
        };
        let (count, packet_type, len) = head(0)?;
        if packet_type != RR || count == 0 {
            return Err(RtcpError::NotAReport { packet_type });
        }
        let field = |at: usize| word(bytes, at).ok_or(RtcpError::Truncated { at });
        if len < 32 || bytes.len() < len {
            return Err(RtcpError::Truncated {
                at: bytes.len().min(len),
            });
        }
        let from = field(4)?;
        let about = field(8)?;
        let lost = field(12)?;
        let report = Report {
            fraction_lost: (lost >> 24) as u8,
            cumulative_lost: lost & 0x00ff_ffff,
            highest_sequence: field(16)?,
            jitter: field(20)?,
        };
        let mut keyframe = false;
        let mut at = len;
        while at < bytes.len() {
            let (fmt, packet_type, len) = head(at)?;
            if bytes.len() < at + len {
                return Err(RtcpError::Truncated { at: bytes.len() });
            }
            if packet_type == PSFB && fmt == PLI && len >= 12 && field(at + 8)? == about {
                keyframe = true;
            }
            at += len;
        }
        Ok(Feedback {
            from,
            about,
            report,
            keyframe,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sample(keyframe: bool) -> Feedback {
        Feedback {
            from: 0x0000_1234,
            about: 0x0000_5678,
            report: Report {
                fraction_lost: 26,
                cumulative_lost: 300,
                highest_sequence: 70_000,
                jitter: 900,
            },
            keyframe,
        }
    }

    #[test]
    fn feedback_has_pinned_bytes_and_reads_back() {
        let pli = sample(true).encode();
        assert_eq!(
            pli,
            [
                0x81, 201, 0, 7, 0, 0, 0x12, 0x34, 0, 0, 0x56, 0x78, 26, 0, 1, 44, 0, 1, 0x11,
                0x70, 0, 0, 3, 0x84, 0, 0, 0, 0, 0, 0, 0, 0, 0x81, 206, 0, 2, 0, 0, 0x12, 0x34, 0,
                0, 0x56, 0x78
            ]
        );
        assert_eq!(Feedback::decode(&pli), Ok(sample(true)));
        let rr = sample(false).encode();
        assert_eq!(rr.len(), 32);
        assert_eq!(Feedback::decode(&rr), Ok(sample(false)));
        // Whom it is about, and whether it asks for a keyframe, as a relay reads it.
        assert_eq!(about(&pli), Some(0x5678));
        assert!(asks_keyframe(&pli) && !asks_keyframe(&rr));
        assert_eq!(about(&pli[32..]), Some(0x5678));
        // A sender report, or a receiver report without blocks, is about nobody in particular.
        assert_eq!(about(&[0x80, 200, 0, 6, 0, 0, 0, 1, 0, 0, 0, 2]), None);
        assert_eq!(about(&[0x80, 201, 0, 1, 0, 0, 0, 1]), None);
    }

    #[test]
    fn what_is_not_feedback_is_refused_naming_why() {
        let pli = sample(true).encode();
        for cut in [0, 3, 8, 31, 40] {
            assert!(
                matches!(
                    Feedback::decode(&pli[..cut]),
                    Err(RtcpError::Truncated { .. })
                ),
                "{cut}"
            );
        }
        assert_eq!(
            Feedback::decode(&pli[32..]),
            Err(RtcpError::NotAReport { packet_type: PSFB })
        );
        let mut bad = pli.clone();
        bad[0] = 0x41;
        assert_eq!(Feedback::decode(&bad), Err(RtcpError::Version { found: 1 }));
        // A picture loss indication about another stream asks nothing of this one.
        let mut other = pli;
        other[43] = 0x79;
        assert!(!Feedback::decode(&other).unwrap().keyframe);
    }
}
