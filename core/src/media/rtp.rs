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

#[cfg(test)]
mod tests {
    use super::*;

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
