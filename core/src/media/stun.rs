//! The part of STUN (RFC 5389) that media consent uses: Binding Requests and their Success
//! Responses, told apart from RTP on the same port by their first byte (RFC 7983: 0–3 is
//! STUN, 128–191 RTP and RTCP).
//!
//! A relay proves that an address wants a stream before sending it media: it sends a Binding
//! Request with a random 96-bit transaction id there, and only a Success Response carrying that
//! id, arriving from that very address, counts (see [`super::consent`]). Whoever receives media
//! — a relay's forwarding socket, a site's receive sockets — answers with a [`Responder`],
//! which answers at a bounded rate so that it cannot be used to reflect traffic either.
//!
//! Only what consent needs is decoded (the header and a well-formed attribute list); other
//! STUN methods and classes are refused with [`StunError::Unsupported`].

use core::fmt;
use core::net::SocketAddr;

/// The fixed value in every RFC 5389 header.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Bytes of the header: type, length, cookie, transaction id.
pub const HEADER_LEN: usize = 20;
/// Binding Request (method 1, class request).
pub const BINDING_REQUEST: u16 = 0x0001;
/// Binding Success Response (method 1, class success).
pub const BINDING_SUCCESS: u16 = 0x0101;
/// XOR-MAPPED-ADDRESS: the address the request came from, as the answerer saw it.
pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
/// The longest message [`binding_success`] writes (an IPv6 mapped address).
pub const MAX_RESPONSE: usize = HEADER_LEN + 4 + 20;

/// A transaction id: 96 random bits chosen by the requester.
pub type TransactionId = [u8; 12];

/// The messages consent is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message {
    /// "Do you want what I would send you?"
    BindingRequest { id: TransactionId },
    /// "Yes", to the request with this id.
    BindingSuccess { id: TransactionId },
}

/// Why a datagram is not a STUN message consent understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StunError {
    /// Shorter than the 20-byte header.
    TooShort { len: usize },
    /// The first two bits are not zero (RTP, RTCP or something else).
    NotStun { first: u8 },
    /// The magic cookie is not 0x2112A442.
    Cookie { found: u32 },
    /// The length field does not match the datagram (or is not a multiple of 4).
    Length { declared: usize, actual: usize },
    /// An attribute runs past the end of the message; `at` is its offset.
    Attribute { at: usize },
    /// A STUN message of another method or class.
    Unsupported { message_type: u16 },
}

impl fmt::Display for StunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StunError::TooShort { len } => write!(f, "{len}-byte datagram is not a STUN message"),
            StunError::NotStun { first } => {
                write!(f, "first byte {first:#04x} is not a STUN message's")
            }
            StunError::Cookie { found } => {
                write!(f, "STUN magic cookie {found:#010x}, expected 0x2112a442")
            }
            StunError::Length { declared, actual } => write!(
                f,
                "STUN length {declared} does not fit a {actual}-byte body (a multiple of 4)"
            ),
            StunError::Attribute { at } => {
                write!(f, "STUN attribute at byte {at} runs past the message")
            }
            StunError::Unsupported { message_type } => {
                write!(f, "STUN message type {message_type:#06x} is not a binding")
            }
        }
    }
}

impl core::error::Error for StunError {}

/// Whether a datagram on a media port is STUN rather than RTP or RTCP (RFC 7983 §7).
pub fn is_stun(datagram: &[u8]) -> bool {
    datagram.first().is_some_and(|b| *b <= 3)
}

/// Reads a Binding Request or Binding Success Response.
pub fn decode(datagram: &[u8]) -> Result<Message, StunError> {
    let len = datagram.len();
    if len < HEADER_LEN {
        return Err(StunError::TooShort { len });
    }
    if datagram[0] > 3 {
        return Err(StunError::NotStun { first: datagram[0] });
    }
    let message_type = u16::from_be_bytes([datagram[0], datagram[1]]);
    let declared = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    let cookie = u32::from_be_bytes([datagram[4], datagram[5], datagram[6], datagram[7]]);
    if cookie != MAGIC_COOKIE {
        return Err(StunError::Cookie { found: cookie });
    }
    if declared != len - HEADER_LEN || declared % 4 != 0 {
        return Err(StunError::Length {
            declared,
            actual: len - HEADER_LEN,
        });
    }
    // Attributes: type, length, value padded to 4 bytes; each must fit.
    let mut at = HEADER_LEN;
    while at < len {
        let Some(header) = datagram.get(at..at + 4) else {
            return Err(StunError::Attribute { at });
        };
        let value = usize::from(u16::from_be_bytes([header[2], header[3]]));
        let next = at + 4 + value.div_ceil(4) * 4;
        if next > len {
            return Err(StunError::Attribute { at });
        }
        at = next;
    }
    let mut id = [0u8; 12];
    id.copy_from_slice(&datagram[8..HEADER_LEN]);
    match message_type {
        BINDING_REQUEST => Ok(Message::BindingRequest { id }),
        BINDING_SUCCESS => Ok(Message::BindingSuccess { id }),
        other => Err(StunError::Unsupported {
            message_type: other,
        }),
    }
}

fn header(message_type: u16, body: u16, id: &TransactionId) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..2].copy_from_slice(&message_type.to_be_bytes());
    h[2..4].copy_from_slice(&body.to_be_bytes());
    h[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    h[8..].copy_from_slice(id);
    h
}

/// A Binding Request (a consent probe): the 20-byte header alone.
pub fn binding_request(id: &TransactionId) -> [u8; HEADER_LEN] {
    header(BINDING_REQUEST, 0, id)
}

/// A Binding Success Response, ready to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response {
    buf: [u8; MAX_RESPONSE],
    len: usize,
}

impl Response {
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// The answer to Binding Request `id` that came from `from`: a Success Response with that id
/// and `from` as XOR-MAPPED-ADDRESS (RFC 5389 §15.2).
pub fn binding_success(id: &TransactionId, from: SocketAddr) -> Response {
    let mut buf = [0u8; MAX_RESPONSE];
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = from.port() ^ (MAGIC_COOKIE >> 16) as u16;
    let (family, value_len) = match from {
        SocketAddr::V4(_) => (1u8, 8u16),
        SocketAddr::V6(_) => (2u8, 20u16),
    };
    buf[..HEADER_LEN].copy_from_slice(&header(BINDING_SUCCESS, 4 + value_len, id));
    let a = HEADER_LEN;
    buf[a..a + 2].copy_from_slice(&XOR_MAPPED_ADDRESS.to_be_bytes());
    buf[a + 2..a + 4].copy_from_slice(&value_len.to_be_bytes());
    buf[a + 5] = family;
    buf[a + 6..a + 8].copy_from_slice(&port.to_be_bytes());
    // The address XORed with the cookie (and, for IPv6, the transaction id after it).
    let mut key = [0u8; 16];
    key[..4].copy_from_slice(&cookie);
    key[4..].copy_from_slice(id);
    let octets: &[u8] = match &from {
        SocketAddr::V4(v4) => &v4.ip().octets(),
        SocketAddr::V6(v6) => &v6.ip().octets(),
    };
    for (i, o) in octets.iter().enumerate() {
        buf[a + 8 + i] = o ^ key[i];
    }
    Response {
        buf,
        len: HEADER_LEN + 4 + usize::from(value_len),
    }
}

/// Answers Binding Requests at a bounded rate: a burst of [`Responder::BURST`], then
/// [`Responder::PER_SECOND`] a second. A relay's or a site's probes need a few a second; more
/// is someone using the box to reflect traffic, and goes unanswered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Responder {
    /// Answers that may go out now, in thousandths.
    tokens_milli: u64,
    last_ms: Option<u64>,
}

impl Default for Responder {
    fn default() -> Responder {
        Responder::new()
    }
}

impl Responder {
    pub const BURST: u64 = 20;
    pub const PER_SECOND: u64 = 20;

    pub fn new() -> Responder {
        Responder {
            tokens_milli: Responder::BURST * 1000,
            last_ms: None,
        }
    }

    /// What to send back, if anything, for `datagram` (STUN) from `from` at `now_ms`: a
    /// Success Response to a Binding Request while the rate allows; `None` for anything else.
    pub fn answer(&mut self, datagram: &[u8], from: SocketAddr, now_ms: u64) -> Option<Response> {
        let Ok(Message::BindingRequest { id }) = decode(datagram) else {
            return None;
        };
        let elapsed = self.last_ms.map_or(0, |last| now_ms.saturating_sub(last));
        self.last_ms = Some(now_ms.max(self.last_ms.unwrap_or(0)));
        self.tokens_milli = self
            .tokens_milli
            .saturating_add(elapsed.saturating_mul(Responder::PER_SECOND))
            .min(Responder::BURST * 1000);
        if self.tokens_milli < 1000 {
            return None;
        }
        self.tokens_milli -= 1000;
        Some(binding_success(&id, from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: TransactionId = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

    #[test]
    fn golden_bytes_of_a_binding_request() {
        assert_eq!(
            binding_request(&ID),
            [
                0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11,
                12
            ]
        );
        assert_eq!(
            decode(&binding_request(&ID)),
            Ok(Message::BindingRequest { id: ID })
        );
    }

    #[test]
    fn a_success_response_carries_the_id_and_the_xored_mapped_address() {
        // RFC 5769 §2.2's address: 192.0.2.1 port 32853 → port 0xa147, address 0xe112a643.
        let r = binding_success(&ID, "192.0.2.1:32853".parse().unwrap());
        let b = r.as_bytes();
        assert_eq!(b.len(), 32);
        assert_eq!(&b[..4], &[0x01, 0x01, 0x00, 0x0c]);
        assert_eq!(
            &b[20..32],
            &[
                0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43
            ]
        );
        assert_eq!(decode(b), Ok(Message::BindingSuccess { id: ID }));
        let v6 = binding_success(&ID, "[2001:db8::1]:5004".parse().unwrap());
        assert_eq!(v6.as_bytes().len(), MAX_RESPONSE);
        assert_eq!(
            decode(v6.as_bytes()),
            Ok(Message::BindingSuccess { id: ID })
        );
    }

    #[test]
    fn stun_is_told_apart_from_rtp_by_its_first_byte() {
        assert!(is_stun(&binding_request(&ID)));
        assert!(!is_stun(&[0x80, 96, 0, 1]));
        assert!(!is_stun(&[]));
    }

    #[test]
    fn what_is_not_a_binding_is_refused_naming_why() {
        let good = binding_request(&ID);
        assert_eq!(decode(&good[..19]), Err(StunError::TooShort { len: 19 }));
        let mut rtp = good;
        rtp[0] = 0x80;
        assert_eq!(decode(&rtp), Err(StunError::NotStun { first: 0x80 }));
        let mut cookie = good;
        cookie[4] = 0;
        assert_eq!(
            decode(&cookie),
            Err(StunError::Cookie { found: 0x0012_a442 })
        );
        let mut long = good.to_vec();
        long.extend([0, 0, 0, 0]);
        assert_eq!(
            decode(&long),
            Err(StunError::Length {
                declared: 0,
                actual: 4
            })
        );
        // An attribute claiming 8 bytes of value where there are 4.
        let mut attr = good.to_vec();
        attr[3] = 8;
        attr.extend([0x80, 0x22, 0x00, 0x08, 1, 2, 3, 4]);
        assert_eq!(decode(&attr), Err(StunError::Attribute { at: 20 }));
        // An error response (class 0b11) is not consent.
        let mut error = good;
        error[0] = 0x01;
        error[1] = 0x11;
        assert_eq!(
            decode(&error),
            Err(StunError::Unsupported {
                message_type: 0x0111
            })
        );
        assert!(
            StunError::Cookie { found: 0 }
                .to_string()
                .contains("magic cookie")
        );
    }

    #[test]
    fn a_responder_answers_requests_only_and_at_a_bounded_rate() {
        let from: SocketAddr = "10.0.0.7:6000".parse().unwrap();
        let mut r = Responder::new();
        let success = binding_success(&ID, from);
        assert_eq!(r.answer(success.as_bytes(), from, 0), None);
        assert_eq!(r.answer(b"\x80\x60rtp", from, 0), None);
        let req = binding_request(&ID);
        // A burst, then nothing more in the same instant.
        let answered = (0..100)
            .filter(|_| r.answer(&req, from, 1_000).is_some())
            .count();
        assert_eq!(answered as u64, Responder::BURST);
        // A second later, a second's worth; a clock going back gives nothing new.
        let answered = (0..100)
            .filter(|_| r.answer(&req, from, 2_000).is_some())
            .count();
        assert_eq!(answered as u64, Responder::PER_SECOND);
        assert_eq!(r.answer(&req, from, 500), None);
        assert_eq!(
            r.answer(&req, from, 2_100),
            Some(binding_success(&ID, from))
        );
    }
}
