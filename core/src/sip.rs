//! SIP messages (RFC 3261), as much of them as a room system's call into a meeting needs: a
//! request or response read from one datagram or cut from a stream ([`frame`]: start line,
//! headers in their long or compact forms, a body as long as `Content-Length` says), and the
//! responses a called party sends.
//!
//! What a call does with them (answer an INVITE, take its ACK, end at a BYE) is the gateway's;
//! this module holds no state: it reads and writes the text, refusing what is malformed with
//! [`SipError`] and never reading past what it was given.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// Largest message read (a SIP message over UDP stays under the path's MTU; 8 KiB is room for
/// a long SDP offer).
pub const MAX_MESSAGE: usize = 8 * 1024;
/// Headers a message may carry, at most.
pub const MAX_HEADERS: usize = 64;
/// The start line and headers of a message, at most (bytes): what a response copies of a
/// request (its `Via`s, `From`, `To`, …) then always fits in [`MAX_MESSAGE`] beside its own.
pub const MAX_HEAD: usize = 4 * 1024;
/// `Via` headers a message may carry, at most (a hop each): a response copies them all, so
/// it stays within [`MAX_HEADERS`].
pub const MAX_VIAS: usize = 16;

/// Why a datagram is not a SIP message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SipError {
    /// Longer than [`MAX_MESSAGE`].
    TooLong(usize),
    /// Not UTF-8 text before the body.
    NotText,
    /// No blank line ending the headers.
    Unterminated,
    /// The first line is neither `METHOD URI SIP/2.0` nor `SIP/2.0 CODE REASON`.
    StartLine(String),
    /// A header line without a colon, or more than [`MAX_HEADERS`].
    Header(String),
    /// Start line and headers longer than [`MAX_HEAD`].
    HeadTooLong(usize),
    /// More than [`MAX_VIAS`] `Via` headers.
    TooManyVias(usize),
    /// A header every request needs is missing.
    Missing(&'static str),
    /// `Content-Length` is not a number, or more than the datagram holds.
    ContentLength(String),
}

impl core::fmt::Display for SipError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SipError::TooLong(n) => write!(f, "{n} bytes: a SIP message is at most {MAX_MESSAGE}"),
            SipError::NotText => f.write_str("the start line and headers are not UTF-8"),
            SipError::Unterminated => f.write_str("no blank line after the headers"),
            SipError::StartLine(l) => write!(f, "start line {l:?}: not a SIP request or response"),
            SipError::Header(h) => write!(f, "header {h:?}: not NAME: VALUE"),
            SipError::HeadTooLong(n) => {
                write!(f, "{n} bytes of headers: at most {MAX_HEAD}")
            }
            SipError::TooManyVias(n) => write!(f, "{n} Via headers: at most {MAX_VIAS}"),
            SipError::Missing(h) => write!(f, "no {h} header"),
            SipError::ContentLength(v) => write!(f, "Content-Length {v:?}: not the body's length"),
        }
    }
}

/// The first line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start<'a> {
    Request { method: &'a str, uri: &'a str },
    Response { code: u16, reason: &'a str },
}

/// A SIP message, borrowing the datagram it was read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    pub start: Start<'a>,
    /// Headers in order, names as written.
    pub headers: Vec<(&'a str, &'a str)>,
    pub body: &'a [u8],
}

/// The long name of a header written in its compact form (RFC 3261 §7.3.3).
fn long_name(name: &str) -> &str {
    match name {
        "v" | "V" => "Via",
        "f" | "F" => "From",
        "t" | "T" => "To",
        "i" | "I" => "Call-ID",
        "m" | "M" => "Contact",
        "l" | "L" => "Content-Length",
        "c" | "C" => "Content-Type",
        "k" | "K" => "Supported",
        other => other,
    }
}

/// Reads one SIP message from `datagram`.
pub fn parse(datagram: &[u8]) -> Result<Message<'_>, SipError> {
    if datagram.len() > MAX_MESSAGE {
        return Err(SipError::TooLong(datagram.len()));
    }
    let end = datagram
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(SipError::Unterminated)?;
    if end > MAX_HEAD {
        return Err(SipError::HeadTooLong(end));
    }
    let head = core::str::from_utf8(&datagram[..end]).map_err(|_| SipError::NotText)?;
    let rest = &datagram[end + 4..];
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let start = start_line(first).ok_or_else(|| SipError::StartLine(first.into()))?;
    let mut headers: Vec<(&str, &str)> = Vec::new();
    for line in lines {
        // A line starting with white space continues the header before it (folding): its
        // value is kept as the first line's, the rest is rarely used and never by a call.
        if line.starts_with([' ', '\t']) && !headers.is_empty() {
            continue;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| SipError::Header(line.into()))?;
        let name = name.trim();
        if name.is_empty() || headers.len() >= MAX_HEADERS {
            return Err(SipError::Header(line.into()));
        }
        headers.push((long_name(name), value.trim()));
    }
    let vias = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("Via"))
        .count();
    if vias > MAX_VIAS {
        return Err(SipError::TooManyVias(vias));
    }
    let mut message = Message {
        start,
        headers,
        body: &[],
    };
    let length = match message.header("Content-Length") {
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| *n <= rest.len())
            .ok_or_else(|| SipError::ContentLength(v.into()))?,
        // Over UDP the body is the rest of the datagram.
        None => rest.len(),
    };
    message.body = &rest[..length];
    if let Start::Request { .. } = message.start {
        for needed in ["Via", "From", "To", "Call-ID", "CSeq"] {
            if message.header(needed).is_none() {
                return Err(SipError::Missing(needed));
            }
        }
    }
    Ok(message)
}

/// What the front of a stream (SIP over TCP or TLS, RFC 3261 §18.3) holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// Not a whole message yet: read more.
    Need,
    /// Blank lines between messages (keep-alives, RFC 5626): drop this many bytes.
    Skip(usize),
    /// A whole message: the first this many bytes, for [`parse`].
    Message(usize),
}

/// Where the first message of a stream ends. On a stream `Content-Length` is required, since
/// nothing else says where the body ends; a message longer than [`MAX_MESSAGE`] is refused
/// before it is read.
pub fn frame(stream: &[u8]) -> Result<Framing, SipError> {
    let blank = stream
        .iter()
        .take_while(|b| matches!(b, b'\r' | b'\n'))
        .count();
    if blank > 0 {
        return Ok(Framing::Skip(blank));
    }
    let window = &stream[..stream.len().min(MAX_MESSAGE)];
    let Some(end) = window.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if stream.len() > MAX_MESSAGE {
            Err(SipError::TooLong(stream.len()))
        } else {
            Ok(Framing::Need)
        };
    };
    let head = core::str::from_utf8(&stream[..end]).map_err(|_| SipError::NotText)?;
    let length = head
        .split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| long_name(name.trim()).eq_ignore_ascii_case("Content-Length"))
        .map(|(_, v)| v.trim())
        .ok_or_else(|| SipError::ContentLength("(missing on a stream)".into()))?;
    let length = length
        .parse::<usize>()
        .map_err(|_| SipError::ContentLength(length.into()))?;
    let total = (end + 4).saturating_add(length);
    if total > MAX_MESSAGE {
        return Err(SipError::TooLong(total));
    }
    Ok(if stream.len() < total {
        Framing::Need
    } else {
        Framing::Message(total)
    })
}

fn start_line(line: &str) -> Option<Start<'_>> {
    if let Some(rest) = line.strip_prefix("SIP/2.0 ") {
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        let code = code.parse().ok().filter(|c| (100..700).contains(c))?;
        return Some(Start::Response { code, reason });
    }
    let mut words = line.split(' ');
    let (method, uri, version) = (words.next()?, words.next()?, words.next()?);
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphabetic());
    (token(method) && !uri.is_empty() && version == "SIP/2.0" && words.next().is_none())
        .then_some(Start::Request { method, uri })
}

impl<'a> Message<'a> {
    /// The first header called `name` (case-insensitively; compact forms read as long ones).
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }

    /// The request's method, if it is a request.
    pub fn method(&self) -> Option<&'a str> {
        match self.start {
            Start::Request { method, .. } => Some(method),
            Start::Response { .. } => None,
        }
    }

    /// The user part of the request URI (`m1` of `sip:m1@gateway`).
    pub fn uri_user(&self) -> Option<&'a str> {
        let Start::Request { uri, .. } = self.start else {
            return None;
        };
        let (user, _) = without_scheme(uri)?.split_once('@')?;
        Some(user.split(';').next().unwrap_or(user))
    }

    /// The method named by the `CSeq` header (`INVITE` of `1 INVITE`).
    pub fn cseq_method(&self) -> Option<&'a str> {
        self.header("CSeq")?.split_whitespace().nth(1)
    }

    /// The address of a `From` or `To` header, without display name or parameters
    /// (`sip:hall@10.1.2.3` of `"Hall" <sip:hall@10.1.2.3>;tag=1`).
    pub fn address_of(&self, header: &str) -> Option<&'a str> {
        let v = self.header(header)?;
        let inner = match (v.find('<'), v.find('>')) {
            (Some(a), Some(b)) if a < b => &v[a + 1..b],
            _ => v.split(';').next().unwrap_or(v),
        };
        Some(inner.trim())
    }

    /// The `tag` parameter of a `From` or `To` header.
    pub fn tag_of(&self, header: &str) -> Option<&'a str> {
        let v = self.header(header)?;
        let params = v.rsplit_once('>').map_or(v, |(_, p)| p);
        params
            .split(';')
            .filter_map(|p| p.trim().strip_prefix("tag="))
            .next()
    }
}

/// A response to `request`: its `Via`s, `From`, `Call-ID` and `CSeq` copied, its `To` given
/// `to_tag` if it has none, then `extra` headers and `body` (with its content type).
pub fn response(
    request: &Message<'_>,
    code: u16,
    reason: &str,
    to_tag: &str,
    extra: &[(&str, &str)],
    body: Option<(&str, &[u8])>,
) -> Vec<u8> {
    let mut s = format!("SIP/2.0 {code} {reason}\r\n");
    for (name, value) in &request.headers {
        if name.eq_ignore_ascii_case("Via") {
            s.push_str(&format!("Via: {value}\r\n"));
        }
    }
    for name in ["From", "Call-ID", "CSeq"] {
        if let Some(v) = request.header(name) {
            s.push_str(&format!("{name}: {v}\r\n"));
        }
    }
    if let Some(to) = request.header("To") {
        if request.tag_of("To").is_some() || code == 100 {
            s.push_str(&format!("To: {to}\r\n"));
        } else {
            s.push_str(&format!("To: {to};tag={to_tag}\r\n"));
        }
    }
    with_body(s, extra, body)
}

/// `head` (a start line and headers), then `headers`, then `body` (with its content type) and
/// its length: the end every message shares.
fn with_body(mut head: String, headers: &[(&str, &str)], body: Option<(&str, &[u8])>) -> Vec<u8> {
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let (kind, bytes) = body.unwrap_or(("", &[]));
    if !kind.is_empty() {
        head.push_str(&format!("Content-Type: {kind}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", bytes.len()));
    let mut out = head.into_bytes();
    out.extend_from_slice(bytes);
    out
}

/// A request: `METHOD uri SIP/2.0`, then `headers` in order, then `body` (with its content
/// type) and its length.
pub fn request(
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, &[u8])>,
) -> Vec<u8> {
    with_body(format!("{method} {uri} SIP/2.0\r\n"), headers, body)
}

/// A SIP address without its `sip:` or `sips:` (the scheme is case-insensitive, RFC 3261
/// §19.1.4).
pub fn without_scheme(address: &str) -> Option<&str> {
    ["sip:", "sips:"].iter().find_map(|scheme| {
        address
            .get(..scheme.len())
            .filter(|p| p.eq_ignore_ascii_case(scheme))
            .and_then(|_| address.get(scheme.len()..))
    })
}

/// Longest SIP address a gateway is told to call.
pub const MAX_URI: usize = 256;

/// Why a SIP address cannot be called.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UriError(pub String);

impl core::fmt::Display for UriError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{:?}: not a SIP address to call (sip:user@host[:port][;transport=tcp], at most {MAX_URI} characters)",
            self.0
        )
    }
}

/// A room system's address a gateway may be told to call: `sip:` or `sips:`, a user and a
/// host, one line of printable text without spaces, at most [`MAX_URI`] characters.
pub fn check_uri(uri: &str) -> Result<(), UriError> {
    let printable = uri.chars().all(|c| c.is_ascii_graphic() || !c.is_ascii());
    if uri.len() <= MAX_URI && printable && !uri.contains(['<', '>']) && user_at_host(uri).is_some()
    {
        Ok(())
    } else {
        Err(UriError(uri.chars().take(MAX_URI).collect()))
    }
}

/// `user@host` of a SIP address, without scheme, port or parameters (`hall@10.0.0.9` of
/// `sip:hall@10.0.0.9:5071;transport=udp`), for comparing addresses.
pub fn user_at_host(address: &str) -> Option<&str> {
    let rest = without_scheme(address)?;
    let rest = rest.split([';', '?', '>']).next().unwrap_or(rest);
    let (user, hostport) = rest.split_once('@')?;
    // An IPv6 host is bracketed: its port follows the bracket.
    let host_end = match hostport.find(']') {
        Some(b) => b + 1,
        None => hostport.find(':').unwrap_or(hostport.len()),
    };
    (!user.is_empty() && host_end > 0).then(|| &rest[..user.len() + 1 + host_end])
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &str = "INVITE sip:m6b116f770194@10.0.0.1:5060 SIP/2.0\r\n\
        Via: SIP/2.0/UDP 10.0.0.9:5071;branch=z9hG4bK776asdhds;rport\r\n\
        v: SIP/2.0/UDP 10.0.0.8:5060;branch=z9hG4bKnashds8\r\n\
        Max-Forwards: 70\r\n\
        To: <sip:m6b116f770194@10.0.0.1:5060>\r\n\
        f: \"Hall\" <sip:hall@10.0.0.9>;tag=1928301774\r\n\
        i: a84b4c76e66710@10.0.0.9\r\n\
        CSeq: 314159 INVITE\r\n\
        Contact: <sip:hall@10.0.0.9:5071>\r\n\
        Content-Type: application/sdp\r\n\
        Content-Length: 4\r\n\r\nv=0\n";

    #[test]
    fn what_a_response_could_not_carry_back_is_refused_in_the_request() {
        // A response copies every Via and the request's head: a request with more hops, or a
        // longer head, than a response can carry back readable is refused as it is read.
        let vias = "Via: SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKx\r\n".repeat(MAX_VIAS + 1);
        let many = INVITE.replace("Max-Forwards: 70\r\n", &vias);
        assert_eq!(
            parse(many.as_bytes()),
            Err(SipError::TooManyVias(MAX_VIAS + 3))
        );
        let long = INVITE.replace("Max-Forwards: 70", &format!("X: {}", "y".repeat(MAX_HEAD)));
        assert!(matches!(
            parse(long.as_bytes()),
            Err(SipError::HeadTooLong(_))
        ));
        // At the limits, the answer to it reads back whole.
        let vias = "Via: SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKx\r\n".repeat(MAX_VIAS - 2);
        let pad = "y".repeat(MAX_HEAD - INVITE.len() - vias.len() - 40);
        let full = INVITE.replace("Max-Forwards: 70\r\n", &format!("{vias}X: {pad}\r\n"));
        let m = parse(full.as_bytes()).unwrap();
        let reply = response(
            &m,
            200,
            "OK",
            "tag1",
            &[("Contact", "<sip:m1@10.0.0.1>")],
            Some(("application/sdp", b"v=0\r\n")),
        );
        assert_eq!(
            parse(&reply).unwrap().header("Call-ID"),
            m.header("Call-ID")
        );
    }

    #[test]
    fn a_stream_is_cut_into_messages_by_their_content_length() {
        let two = [INVITE.as_bytes(), b"\r\n\r\n", INVITE.as_bytes()].concat();
        let first = INVITE.len();
        assert_eq!(frame(&two), Ok(Framing::Message(first)));
        assert_eq!(parse(&two[..first]).unwrap().body, b"v=0\n");
        assert_eq!(frame(&two[first..]), Ok(Framing::Skip(4)));
        assert_eq!(frame(&two[first + 4..]), Ok(Framing::Message(first)));
        // Cut anywhere before its end, a message is not yet whole.
        for cut in [1, 40, first - 5, first - 1] {
            assert_eq!(frame(&two[..cut]), Ok(Framing::Need), "cut at {cut}");
        }
        // Compact form and any case.
        let compact = INVITE.replace("Content-Length: 4", "l: 4");
        assert_eq!(
            frame(compact.as_bytes()),
            Ok(Framing::Message(compact.len()))
        );
    }

    #[test]
    fn a_stream_message_without_a_length_or_too_long_is_refused() {
        let bare = INVITE.replace("Content-Length: 4\r\n", "");
        assert!(matches!(
            frame(bare.as_bytes()),
            Err(SipError::ContentLength(_))
        ));
        let huge = INVITE.replace("Content-Length: 4", "Content-Length: 99999999999999999999");
        assert!(frame(huge.as_bytes()).is_err());
        let big = INVITE.replace("Content-Length: 4", "Content-Length: 9000");
        assert!(matches!(frame(big.as_bytes()), Err(SipError::TooLong(_))));
        // Headers that never end are refused once past the limit, not buffered for ever.
        let endless = [
            b"INVITE sip:a@b SIP/2.0\r\nX: ".as_slice(),
            &[b'y'; MAX_MESSAGE],
        ]
        .concat();
        assert!(matches!(frame(&endless), Err(SipError::TooLong(_))));
        assert_eq!(frame(&endless[..100]), Ok(Framing::Need));
    }

    #[test]
    fn an_invite_reads_with_its_compact_headers_and_its_body() {
        let m = parse(INVITE.as_bytes()).unwrap();
        assert_eq!(m.method(), Some("INVITE"));
        assert_eq!(m.uri_user(), Some("m6b116f770194"));
        assert_eq!(m.header("call-id"), Some("a84b4c76e66710@10.0.0.9"));
        assert_eq!(m.address_of("From"), Some("sip:hall@10.0.0.9"));
        assert_eq!(m.tag_of("From"), Some("1928301774"));
        assert_eq!(m.tag_of("To"), None);
        assert_eq!(m.cseq_method(), Some("INVITE"));
        assert_eq!(m.body, b"v=0\n");
    }

    #[test]
    fn a_response_copies_what_it_must_and_tags_the_callee() {
        let m = parse(INVITE.as_bytes()).unwrap();
        let r = response(
            &m,
            200,
            "OK",
            "gw1",
            &[("Contact", "<sip:gw@10.0.0.1>")],
            Some(("application/sdp", b"v=0\r\n")),
        );
        let text = String::from_utf8(r.clone()).unwrap();
        assert!(text.starts_with("SIP/2.0 200 OK\r\n"), "{text}");
        assert_eq!(text.matches("Via: ").count(), 2, "{text}");
        assert!(
            text.contains("To: <sip:m6b116f770194@10.0.0.1:5060>;tag=gw1\r\n"),
            "{text}"
        );
        let back = parse(&r).unwrap();
        assert_eq!(
            back.start,
            Start::Response {
                code: 200,
                reason: "OK"
            }
        );
        assert_eq!(back.header("CSeq"), Some("314159 INVITE"));
        assert_eq!(back.body, b"v=0\r\n");
    }

    #[test]
    fn a_request_reads_back_and_addresses_compare_without_port_or_parameters() {
        let r = request(
            "INVITE",
            "sip:hall@10.0.0.9:5071",
            &[
                ("Via", "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1"),
                ("From", "<sip:m1@10.0.0.1>;tag=a"),
                ("To", "<sip:hall@10.0.0.9:5071>"),
                ("Call-ID", "c1"),
                ("CSeq", "1 INVITE"),
            ],
            Some(("application/sdp", b"v=0\r\n")),
        );
        let m = parse(&r).unwrap();
        assert_eq!(m.method(), Some("INVITE"));
        assert_eq!(m.uri_user(), Some("hall"));
        assert_eq!(m.body, b"v=0\r\n");
        assert_eq!(
            user_at_host("sip:hall@10.0.0.9:5071;transport=udp"),
            Some("hall@10.0.0.9")
        );
        assert_eq!(user_at_host("sip:hall@10.0.0.9"), Some("hall@10.0.0.9"));
        assert_eq!(user_at_host("sips:a@[fd00::1]:5061"), Some("a@[fd00::1]"));
        assert_eq!(user_at_host("SIP:hall@10.0.0.9"), Some("hall@10.0.0.9"));
        assert_eq!(user_at_host("hall@10.0.0.9"), None);
        assert_eq!(user_at_host("sip:@10.0.0.9"), None);
    }

    #[test]
    fn malformed_messages_are_refused_naming_what_is_wrong() {
        let cases: [(&[u8], SipError); 5] = [
            (
                b"INVITE sip:a@b SIP/2.0\r\nVia: x\r\n",
                SipError::Unterminated,
            ),
            (b"HELLO\r\n\r\n", SipError::StartLine("HELLO".into())),
            (
                b"BYE sip:a@b SIP/2.0\r\nno colon\r\n\r\n",
                SipError::Header("no colon".into()),
            ),
            (
                b"BYE sip:a@b SIP/2.0\r\nVia: x\r\n\r\n",
                SipError::Missing("From"),
            ),
            (
                b"SIP/2.0 200 OK\r\nContent-Length: 99\r\n\r\nshort",
                SipError::ContentLength("99".into()),
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(parse(bytes), Err(want));
        }
        assert_eq!(
            parse(&[b'x'; MAX_MESSAGE + 1]),
            Err(SipError::TooLong(MAX_MESSAGE + 1))
        );
    }
}
