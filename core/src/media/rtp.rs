//! What a relay needs to know of a packet without decoding it: RTP or RTCP (demultiplexed on one
//! port as RFC 5761 §4 says), and the synchronisation source it belongs to. SRTP and SRTCP keep
//! these header fields in the clear, so a relay forwards encrypted media without the keys.

use core::fmt;

/// The header fields of one packet that forwarding looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packet {
    Rtp {
        ssrc: u32,
        payload_type: u8,
        sequence: u16,
        marker: bool,
    },
    /// An RTCP (compound) packet; `ssrc` is its first packet's sender. Feedback names the
    /// stream it is `about` ([`super::rtcp::about`]) and whether it asks for a `keyframe`.
    Rtcp {
        ssrc: u32,
        packet_type: u8,
        about: Option<u32>,
        keyframe: bool,
    },
}

impl Packet {
    pub fn ssrc(&self) -> u32 {
        match self {
            Packet::Rtp { ssrc, .. } | Packet::Rtcp { ssrc, .. } => *ssrc,
        }
    }
}

/// Why a datagram is not RTP or RTCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RtpError {
    /// Shorter than the fixed header (12 bytes for RTP, 8 for RTCP).
    TooShort { len: usize },
    /// The version bits are not 2.
    Version { found: u8 },
}

impl fmt::Display for RtpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RtpError::TooShort { len } => write!(f, "{len}-byte datagram is not RTP or RTCP"),
            RtpError::Version { found } => write!(f, "RTP version {found}, expected 2"),
        }
    }
}

impl core::error::Error for RtpError {}

/// Reads the header of a datagram received on a media port.
pub fn classify(datagram: &[u8]) -> Result<Packet, RtpError> {
    let word = |at: usize| {
        u32::from_be_bytes([
            datagram[at],
            datagram[at + 1],
            datagram[at + 2],
            datagram[at + 3],
        ])
    };
    if datagram.len() < 8 {
        return Err(RtpError::TooShort {
            len: datagram.len(),
        });
    }
    let version = datagram[0] >> 6;
    if version != 2 {
        return Err(RtpError::Version { found: version });
    }
    // RFC 5761 §4: RTCP packet types 192–223 sit where RTP payload types 64–95 would be.
    let second = datagram[1];
    if (192..=223).contains(&second) {
        return Ok(Packet::Rtcp {
            ssrc: word(4),
            packet_type: second,
            about: super::rtcp::about(datagram),
            keyframe: super::rtcp::asks_keyframe(datagram),
        });
    }
    if datagram.len() < 12 {
        return Err(RtpError::TooShort {
            len: datagram.len(),
        });
    }
    Ok(Packet::Rtp {
        ssrc: word(8),
        payload_type: second & 0x7f,
        sequence: u16::from_be_bytes([datagram[2], datagram[3]]),
        marker: second & 0x80 != 0,
    })
}

/// The payload of a plain (not SRTP) RTP packet: after its header, its CSRCs and its header
/// extension, without its padding. `None` if the lengths the header gives do not fit.
pub fn payload(datagram: &[u8]) -> Option<&[u8]> {
    let first = *datagram.first()?;
    if first >> 6 != 2 {
        return None;
    }
    let mut start = 12 + 4 * usize::from(first & 0x0f);
    if first & 0x10 != 0 {
        let words = datagram.get(start + 2..start + 4)?;
        start += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
    }
    let mut end = datagram.len();
    if first & 0x20 != 0 {
        end = end.checked_sub(usize::from(*datagram.last()?))?;
    }
    datagram.get(start..end)
}

/// Whether an H.264 RTP payload (RFC 6184) carries a sequence parameter set: what a decoder
/// that starts mid-stream must see first. The senders put the parameter sets before every
/// keyframe, alone or aggregated (STAP-A); a fragmented one (FU-A) counts at its start.
pub fn h264_has_parameter_sets(payload: &[u8]) -> bool {
    const SPS: u8 = 7;
    const STAP_A: u8 = 24;
    const FU_A: u8 = 28;
    let Some(&header) = payload.first() else {
        return false;
    };
    match header & 0x1f {
        SPS => true,
        STAP_A => {
            let mut rest = &payload[1..];
            while let [hi, lo, units @ ..] = rest {
                let len = usize::from(u16::from_be_bytes([*hi, *lo]));
                let Some(unit) = units.get(..len) else {
                    return false;
                };
                if unit.first().is_some_and(|h| h & 0x1f == SPS) {
                    return true;
                }
                rest = &units[len..];
            }
            false
        }
        FU_A => payload
            .get(1)
            .is_some_and(|fu| fu & 0x80 != 0 && fu & 0x1f == SPS),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(first: u8, tail: &[u8]) -> Vec<u8> {
        let mut p = vec![first, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7];
        p.extend_from_slice(tail);
        p
    }

    #[test]
    fn the_payload_follows_the_csrcs_and_the_extension_and_leaves_the_padding_out() {
        assert_eq!(payload(&rtp(0x80, &[0x67, 1])), Some(&[0x67, 1][..]));
        // One CSRC, then a one-word extension, then the payload, then 2 bytes of padding.
        let p = rtp(
            0x80 | 0x20 | 0x10 | 1,
            &[0, 0, 0, 9, 0xbe, 0xde, 0, 1, 1, 2, 3, 4, 0x65, 0, 2],
        );
        assert_eq!(payload(&p), Some(&[0x65][..]));
        // Lengths that do not fit: an extension past the end, padding longer than the packet.
        assert_eq!(payload(&rtp(0x90, &[0xbe, 0xde, 0, 9])), None);
        assert_eq!(payload(&rtp(0xa0, &[200])), None);
        assert_eq!(payload(&rtp(0x8f, &[])), None);
        assert_eq!(payload(&[0x40; 12]), None);
        assert_eq!(payload(&[]), None);
    }

    #[test]
    fn parameter_sets_are_found_alone_aggregated_or_at_a_fragments_start() {
        // Alone: NAL type 7 (nal_ref_idc 3).
        assert!(h264_has_parameter_sets(&[0x67, 0x42, 0xc0, 0x1f]));
        // A slice, a PPS, an IDR slice: no SPS.
        for nal in [0x41, 0x68, 0x65] {
            assert!(!h264_has_parameter_sets(&[nal, 0x88]));
        }
        // STAP-A: a PPS (2 bytes), then an SPS (3 bytes).
        assert!(h264_has_parameter_sets(&[
            0x78, 0, 2, 0x68, 0xce, 0, 3, 0x67, 0x42, 0xc0
        ]));
        // STAP-A of a PPS only; one whose length runs past the end.
        assert!(!h264_has_parameter_sets(&[0x78, 0, 2, 0x68, 0xce]));
        assert!(!h264_has_parameter_sets(&[0x78, 0, 9, 0x67]));
        // FU-A: the start of an SPS counts, its middle does not.
        assert!(h264_has_parameter_sets(&[0x7c, 0x87, 0x42]));
        assert!(!h264_has_parameter_sets(&[0x7c, 0x07, 0x42]));
        assert!(!h264_has_parameter_sets(&[0x7c]));
        assert!(!h264_has_parameter_sets(&[]));
    }

    #[test]
    fn an_rtp_packet_gives_its_ssrc_payload_type_and_sequence() {
        // V=2, M=1, PT=96, seq 0x1234, ts, SSRC 0xdeadbeef.
        let p = [
            0x80, 0xe0, 0x12, 0x34, 0, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef, 0x65,
        ];
        assert_eq!(
            classify(&p),
            Ok(Packet::Rtp {
                ssrc: 0xdead_beef,
                payload_type: 96,
                sequence: 0x1234,
                marker: true
            })
        );
    }

    #[test]
    fn rtcp_is_told_apart_on_the_same_port() {
        // A sender report (PT 200) of SSRC 7.
        let sr = [0x80, 200, 0, 6, 0, 0, 0, 7];
        assert_eq!(
            classify(&sr),
            Ok(Packet::Rtcp {
                ssrc: 7,
                packet_type: 200,
                about: None,
                keyframe: false,
            })
        );
        // A receiver report with one block (RC = 1): about the block's stream.
        let rr = [0x81, 201, 0, 7, 0, 0, 0, 9, 1, 2, 3, 4];
        assert_eq!(classify(&rr).map(|p| p.ssrc()), Ok(9));
        assert!(matches!(
            classify(&rr),
            Ok(Packet::Rtcp {
                about: Some(0x0102_0304),
                keyframe: false,
                ..
            })
        ));
    }

    #[test]
    fn what_is_not_rtp_is_refused_naming_why() {
        assert_eq!(classify(&[0x80, 96]), Err(RtpError::TooShort { len: 2 }));
        assert_eq!(
            classify(&[0x80, 96, 0, 1, 0, 0, 0, 0, 0]),
            Err(RtpError::TooShort { len: 9 })
        );
        // A STUN binding request starts with two zero bits.
        assert_eq!(
            classify(&[0x00, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0]),
            Err(RtpError::Version { found: 0 })
        );
    }
}
