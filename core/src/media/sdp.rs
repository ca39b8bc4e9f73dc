//! Session descriptions (SDP, RFC 4566) of the streams cuntong sends, so that any standard
//! player — ffmpeg, VLC, a hardware room system — can open one: H.264 as RFC 6184 describes it
//! (constrained baseline, packetization mode 1), Opus as RFC 7587 (48 kHz, 2 channels on the
//! wire), G.711 A-law with its static payload type, and, for SRTP, the key as an RFC 4568 `crypto`
//! attribute.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use base64::Engine;
use core::net::{IpAddr, SocketAddr};

pub use crate::media::AudioCodec;

/// An H.264 video stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Video {
    pub port: u16,
    pub payload_type: u8,
    /// H.264 `level_idc` (31 = level 3.1, 720p30; 40 = level 4, 1080p30).
    pub level: u8,
    /// Content (双流: the presenter's slides), marked `a=content:slides` (RFC 4796) so that a
    /// room system shows it as a second picture; otherwise the camera's picture.
    pub content: bool,
}

/// An audio stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Audio {
    pub port: u16,
    pub codec: AudioCodec,
    /// Dynamic payload type for Opus (static ones are fixed by the codec).
    pub payload_type: u8,
}

impl Audio {
    fn payload_type(&self) -> u8 {
        match self.codec {
            AudioCodec::Opus => self.payload_type,
            static_type => static_type.payload_type(),
        }
    }
}

/// Which way the streams of a description flow, seen from its writer's side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The writer only receives (a viewer, a recorder).
    RecvOnly,
    /// Both ways (a room system in a call).
    SendRecv,
}

impl Direction {
    fn attribute(self) -> &'static str {
        match self {
            Direction::RecvOnly => "a=recvonly",
            Direction::SendRecv => "a=sendrecv",
        }
    }
}

/// What a description says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Description<'a> {
    /// `s=`: what the stream is (`meeting m1: 130102001001-main`).
    pub name: &'a str,
    /// Where the media arrives (the viewer's address).
    pub address: IpAddr,
    pub video: Option<Video>,
    pub audio: Option<Audio>,
    /// SRTP master key and salt (30 bytes, AES_CM_128_HMAC_SHA1_80); plain RTP if `None`.
    pub srtp_key: Option<&'a [u8]>,
    /// `o=` session id and version (a change of the stream bumps the version).
    pub session_id: u64,
    pub version: u64,
    pub direction: Direction,
}

/// Constrained baseline (`profile_idc` 66 with `constraint_set0..2`), at `level`.
pub fn profile_level_id(level: u8) -> String {
    format!("42e0{level:02x}")
}

impl Description<'_> {
    /// The SDP text, CRLF line ends as RFC 4566 requires.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let (net, addr) = match self.address {
            IpAddr::V4(a) => ("IP4", format!("{a}")),
            IpAddr::V6(a) => ("IP6", format!("{a}")),
        };
        let mut line = |l: String| {
            s.push_str(&l);
            s.push_str("\r\n");
        };
        line(String::from("v=0"));
        line(format!(
            "o=cuntong {} {} IN {net} {addr}",
            self.session_id, self.version
        ));
        line(format!("s={}", clean(self.name)));
        line(format!("c=IN {net} {addr}"));
        line(String::from("t=0 0"));
        let profile = if self.srtp_key.is_some() {
            "RTP/SAVP"
        } else {
            "RTP/AVP"
        };
        let crypto = self.srtp_key.map(|k| {
            format!(
                "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{}",
                base64::engine::general_purpose::STANDARD.encode(k)
            )
        });
        if let Some(v) = self.video {
            let pt = v.payload_type;
            line(format!("m=video {} {profile} {pt}", v.port));
            for l in video_attributes(pt, v.level) {
                line(l);
            }
            if v.content {
                line(String::from("a=content:slides"));
            }
            line(String::from(self.direction.attribute()));
            if let Some(c) = &crypto {
                line(c.clone());
            }
        }
        if let Some(a) = self.audio {
            let pt = a.payload_type();
            line(format!("m=audio {} {profile} {pt}", a.port));
            for l in audio_attributes(a.codec, pt) {
                line(l);
            }
            line(String::from(self.direction.attribute()));
            if let Some(c) = &crypto {
                line(c.clone());
            }
        }
        s
    }
}

/// The attributes of an H.264 stream (RFC 6184): constrained baseline at `level`,
/// packetization mode 1.
fn video_attributes(pt: u8, level: u8) -> [String; 2] {
    [
        format!("a=rtpmap:{pt} H264/90000"),
        format!(
            "a=fmtp:{pt} packetization-mode=1;profile-level-id={}",
            profile_level_id(level)
        ),
    ]
}

/// The attributes of a sound stream: Opus as RFC 7587 has it, or G.711 A-law.
fn audio_attributes(codec: AudioCodec, pt: u8) -> Vec<String> {
    match codec {
        AudioCodec::Opus => alloc::vec![
            format!("a=rtpmap:{pt} opus/48000/2"),
            format!("a=fmtp:{pt} minptime=10;useinbandfec=1"),
        ],
        AudioCodec::Pcma => alloc::vec![format!("a=rtpmap:{pt} PCMA/8000")],
        AudioCodec::Pcmu => alloc::vec![format!("a=rtpmap:{pt} PCMU/8000")],
    }
}

/// The session lines of a call's description: version, origin, name, the address of every
/// stream, time.
fn session_lines(here: IpAddr, session_id: u64) -> Vec<String> {
    let (net, addr) = match here {
        IpAddr::V4(a) => ("IP4", format!("{a}")),
        IpAddr::V6(a) => ("IP6", format!("{a}")),
    };
    alloc::vec![
        String::from("v=0"),
        format!("o=cuntong {session_id} 1 IN {net} {addr}"),
        String::from("s=cuntong"),
        format!("c=IN {net} {addr}"),
        String::from("t=0 0"),
    ]
}

/// An offer (RFC 3264) to a room system the box calls: H.264 (packetization mode 1) on
/// `video_port` and sound on `audio_port` in Opus, G.711 A-law or μ-law, over plain RTP, both
/// ways, at `here`.
pub fn offer(here: IpAddr, (video_port, audio_port): (u16, u16), session_id: u64) -> String {
    let codecs = [AudioCodec::Opus, AudioCodec::Pcma, AudioCodec::Pcmu];
    let types: Vec<String> = codecs
        .iter()
        .map(|c| format!("{}", c.payload_type()))
        .collect();
    let mut lines = session_lines(here, session_id);
    lines.push(format!("m=audio {audio_port} RTP/AVP {}", types.join(" ")));
    for c in codecs {
        lines.extend(audio_attributes(c, c.payload_type()));
    }
    lines.push(String::from(Direction::SendRecv.attribute()));
    lines.push(format!(
        "m=video {video_port} RTP/AVP {}",
        crate::media::VIDEO_PT
    ));
    lines.extend(video_attributes(crate::media::VIDEO_PT, 31));
    lines.push(String::from(Direction::SendRecv.attribute()));
    let mut s = lines.join("\r\n");
    s.push_str("\r\n");
    s
}

/// A session name on one line, without characters SDP does not allow.
fn clean(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        out.push(if c.is_control() { ' ' } else { c });
    }
    if out.trim().is_empty() {
        out = String::from("-");
    }
    out
}

/// What a caller's offer (RFC 3264) proposes that a meeting can take: where the caller
/// receives each stream, and the format chosen from its list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    /// Where video goes, and the payload type the caller named H.264 in packetization mode 1.
    pub video: Option<(SocketAddr, u8)>,
    /// Where sound goes, in which codec (Opus if offered, else G.711 A-law, else μ-law), under
    /// which payload type.
    pub audio: Option<(SocketAddr, AudioCodec, u8)>,
    /// Its `m=` lines in order, each as the answer must give it back.
    pub lines: Vec<OfferedLine>,
    /// The caller's SRTP keys (RFC 4568 SDES), for video and for sound, where it offered SRTP;
    /// plain RTP where `None`.
    pub video_key: Option<SdesKey>,
    pub audio_key: Option<SdesKey>,
}

/// An SRTP master key and salt given in an SDP `crypto` attribute (AES_CM_128_HMAC_SHA1_80,
/// the suite every SDES endpoint has), with the attribute's tag the answer repeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SdesKey {
    pub tag: u32,
    pub key: [u8; 30],
}

/// The one SDES suite taken.
const SDES_SUITE: &str = "AES_CM_128_HMAC_SHA1_80";

/// `TAG SUITE inline:KEY[|…]` of an `a=crypto:` value, if it is the suite taken with a key of
/// its length.
fn sdes(value: &str) -> Option<SdesKey> {
    let mut words = value.split_whitespace();
    let tag = words.next()?.parse().ok()?;
    if words.next()? != SDES_SUITE {
        return None;
    }
    let inline = words.next()?.strip_prefix("inline:")?;
    let b64 = inline.split('|').next()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    Some(SdesKey {
        tag,
        key: bytes.try_into().ok()?,
    })
}

/// One `m=` line of an offer: the answer has one for each, in the same order (RFC 3264 §6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfferedLine {
    /// `video`, `audio`, `application`…
    pub kind: String,
    pub proto: String,
    /// Its first format, for refusing it (`m=KIND 0 PROTO FORMAT`).
    pub format: String,
    /// Whether this line carries the stream taken (the video or the sound chosen).
    pub taken: bool,
    /// The tag of the caller's key taken for it (SRTP), which the answer's key repeats.
    pub sdes_tag: Option<u32>,
}

/// Why an offer cannot be answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SdpError {
    /// A line that is not `x=value`, or an `m=` or `c=` line that does not read.
    Line(String),
    /// A stream with no `c=` address, at its own level or the session's.
    NoAddress,
    /// Only SRTP offered, with no key of the suite taken (AES_CM_128_HMAC_SHA1_80).
    SrtpOnly,
    /// Neither H.264 (packetization mode 1) nor Opus or G.711 offered.
    NothingUsable,
}

impl core::fmt::Display for SdpError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SdpError::Line(l) => write!(f, "SDP line {l:?} does not read"),
            SdpError::NoAddress => f.write_str("a stream without a c= address"),
            SdpError::SrtpOnly => {
                f.write_str("SRTP offered without an AES_CM_128_HMAC_SHA1_80 key (RFC 4568)")
            }
            SdpError::NothingUsable => {
                f.write_str("neither H.264 (packetization-mode=1) nor Opus, PCMA or PCMU offered")
            }
        }
    }
}

/// One `m=` section while it is read.
#[derive(Default)]
struct Section<'a> {
    kind: &'a str,
    port: u16,
    proto: &'a str,
    first_format: &'a str,
    secure: bool,
    formats: Vec<u8>,
    address: Option<IpAddr>,
    /// `a=rtpmap`: payload type → encoding (`H264/90000`).
    maps: Vec<(u8, &'a str)>,
    /// `a=fmtp`: payload type → parameters.
    params: Vec<(u8, &'a str)>,
    /// The first `a=crypto` of the suite taken.
    key: Option<SdesKey>,
}

impl Section<'_> {
    fn encoding(&self, pt: u8) -> Option<&str> {
        self.maps.iter().find(|(p, _)| *p == pt).map(|(_, e)| *e)
    }

    fn video(&self) -> Option<u8> {
        self.formats.iter().copied().find(|pt| {
            let h264 = self
                .encoding(*pt)
                .is_some_and(|e| e.eq_ignore_ascii_case("H264/90000"));
            let mode1 = self.params.iter().any(|(p, f)| {
                *p == *pt
                    && f.split(';')
                        .any(|kv| kv.trim().eq_ignore_ascii_case("packetization-mode=1"))
            });
            h264 && mode1
        })
    }

    fn audio(&self) -> Option<(AudioCodec, u8)> {
        let named = |pt: u8, name: &str| {
            self.encoding(pt).is_some_and(|e| {
                e.split('/')
                    .next()
                    .is_some_and(|n| n.eq_ignore_ascii_case(name))
            })
        };
        let opus = self.formats.iter().find(|pt| named(**pt, "opus"));
        let pcma = self
            .formats
            .iter()
            .find(|pt| **pt == 8 || named(**pt, "PCMA"));
        let pcmu = self
            .formats
            .iter()
            .find(|pt| **pt == 0 || named(**pt, "PCMU"));
        opus.map(|pt| (AudioCodec::Opus, *pt))
            .or(pcma.map(|pt| (AudioCodec::Pcma, *pt)))
            .or(pcmu.map(|pt| (AudioCodec::Pcmu, *pt)))
    }
}

/// `PT REST` of an `a=rtpmap:` or `a=fmtp:` value.
fn pt_and(rest: &str) -> Option<(u8, &str)> {
    let (pt, v) = rest.split_once(' ')?;
    Some((pt.parse().ok()?, v.trim()))
}

/// Reads a caller's offer: for video the first H.264 format in packetization mode 1, for sound
/// Opus or else G.711 A-law, each over plain RTP at its `c=` address.
pub fn read_offer(text: &str) -> Result<Offer, SdpError> {
    let mut session_address = None;
    let mut sections: Vec<Section<'_>> = Vec::new();
    for line in text.split('\n') {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .filter(|(k, _)| k.len() == 1)
            .ok_or_else(|| SdpError::Line(line.into()))?;
        let bad = || SdpError::Line(line.into());
        match key {
            "m" => {
                let mut words = value.split(' ');
                let kind = words.next().ok_or_else(bad)?;
                let port = words
                    .next()
                    .and_then(|p| p.split('/').next()?.parse().ok())
                    .ok_or_else(bad)?;
                let proto = words.next().ok_or_else(bad)?;
                let formats: Vec<&str> = words.collect();
                sections.push(Section {
                    kind,
                    port,
                    proto,
                    first_format: formats.first().copied().unwrap_or("0"),
                    secure: proto.contains("SAVP"),
                    formats: formats.iter().filter_map(|f| f.parse().ok()).collect(),
                    ..Section::default()
                });
            }
            "c" => {
                let address = value
                    .split(' ')
                    .nth(2)
                    .and_then(|a| a.split('/').next()?.parse::<IpAddr>().ok())
                    .ok_or_else(bad)?;
                match sections.last_mut() {
                    Some(s) => s.address = Some(address),
                    None => session_address = Some(address),
                }
            }
            "a" => {
                let Some(s) = sections.last_mut() else {
                    continue;
                };
                if let Some(m) = value.strip_prefix("rtpmap:").and_then(pt_and) {
                    s.maps.push(m);
                } else if let Some(f) = value.strip_prefix("fmtp:").and_then(pt_and) {
                    s.params.push(f);
                } else if let Some(k) = value.strip_prefix("crypto:").and_then(sdes) {
                    s.key = s.key.or(Some(k));
                }
            }
            _ => {}
        }
    }
    let mut offer = Offer {
        video: None,
        audio: None,
        lines: Vec::new(),
        video_key: None,
        audio_key: None,
    };
    let mut srtp = false;
    for s in &sections {
        let mut taken = false;
        let at = |ip: Option<IpAddr>| {
            ip.or(session_address)
                .map(|ip| SocketAddr::new(ip, s.port))
                .ok_or(SdpError::NoAddress)
        };
        // A stream refused by the caller itself (port 0) is not taken, nor one over SRTP
        // without a key of the suite taken.
        let usable = s.port != 0 && (!s.secure || s.key.is_some());
        srtp |= s.secure && s.port != 0 && s.key.is_none();
        let key = s.key.filter(|_| s.secure);
        if usable {
            match s.kind {
                "video" if offer.video.is_none() => {
                    if let Some(pt) = s.video() {
                        offer.video = Some((at(s.address)?, pt));
                        offer.video_key = key;
                        taken = true;
                    }
                }
                "audio" if offer.audio.is_none() => {
                    if let Some((codec, pt)) = s.audio() {
                        offer.audio = Some((at(s.address)?, codec, pt));
                        offer.audio_key = key;
                        taken = true;
                    }
                }
                _ => {}
            }
        }
        offer.lines.push(OfferedLine {
            kind: s.kind.into(),
            proto: s.proto.into(),
            format: s.first_format.into(),
            taken,
            sdes_tag: key.filter(|_| taken).map(|k| k.tag),
        });
    }
    match (&offer.video, &offer.audio) {
        (None, None) if srtp => Err(SdpError::SrtpOnly),
        (None, None) => Err(SdpError::NothingUsable),
        _ => Ok(offer),
    }
}

/// The answer to `offer` (RFC 3264): one `m=` line for each of the offer's, in its order; the
/// video and sound taken at `here`, on `video_port` and `audio_port`, both ways, in the formats
/// chosen, over SRTP with `key` where the caller offered SRTP (its tag repeated); every other
/// line refused (port 0).
pub fn answer(
    offer: &Offer,
    here: IpAddr,
    (video_port, audio_port): (u16, u16),
    session_id: u64,
    key: &[u8; 30],
) -> String {
    let mut lines = session_lines(here, session_id);
    for l in &offer.lines {
        match (l.taken, l.kind.as_str(), offer.video, offer.audio) {
            (true, "video", Some((_, pt)), _) => {
                lines.push(format!("m=video {video_port} {} {pt}", l.proto));
                lines.extend(video_attributes(pt, 31));
            }
            (true, "audio", _, Some((_, codec, pt))) => {
                lines.push(format!("m=audio {audio_port} {} {pt}", l.proto));
                lines.extend(audio_attributes(codec, pt));
            }
            _ => {
                lines.push(format!("m={} 0 {} {}", l.kind, l.proto, l.format));
                continue;
            }
        }
        lines.push(String::from(Direction::SendRecv.attribute()));
        if let Some(tag) = l.sdes_tag {
            lines.push(format!(
                "a=crypto:{tag} {SDES_SUITE} inline:{}",
                base64::engine::general_purpose::STANDARD.encode(key)
            ));
        }
    }
    let mut s = lines.join("\r\n");
    s.push_str("\r\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> Description<'static> {
        Description {
            name: "meeting m1: 130102001001-main",
            address: IpAddr::from([127, 0, 0, 1]),
            video: Some(Video {
                port: 5004,
                payload_type: 96,
                level: 31,
                content: false,
            }),
            audio: Some(Audio {
                port: 5006,
                codec: AudioCodec::Opus,
                payload_type: 111,
            }),
            srtp_key: None,
            session_id: 7,
            version: 1,
            direction: Direction::RecvOnly,
        }
    }

    #[test]
    fn a_view_of_a_terminal_is_plain_rtp_with_h264_constrained_baseline_and_opus() {
        let sdp = view().render();
        let lines: alloc::vec::Vec<&str> = sdp.split("\r\n").collect();
        assert_eq!(
            lines,
            [
                "v=0",
                "o=cuntong 7 1 IN IP4 127.0.0.1",
                "s=meeting m1: 130102001001-main",
                "c=IN IP4 127.0.0.1",
                "t=0 0",
                "m=video 5004 RTP/AVP 96",
                "a=rtpmap:96 H264/90000",
                "a=fmtp:96 packetization-mode=1;profile-level-id=42e01f",
                "a=recvonly",
                "m=audio 5006 RTP/AVP 111",
                "a=rtpmap:111 opus/48000/2",
                "a=fmtp:111 minptime=10;useinbandfec=1",
                "a=recvonly",
                "",
            ]
        );
    }

    #[test]
    fn content_is_a_picture_without_sound_marked_as_slides() {
        let d = Description {
            video: Some(Video {
                level: 40,
                content: true,
                ..view().video.unwrap()
            }),
            audio: None,
            ..view()
        };
        let sdp = d.render();
        assert!(sdp.contains(
            "m=video 5004 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n\
             a=fmtp:96 packetization-mode=1;profile-level-id=42e028\r\n\
             a=content:slides\r\na=recvonly\r\n"
        ));
        assert!(!sdp.contains("m=audio"));
    }

    #[test]
    fn an_srtp_stream_carries_its_key_as_an_sdes_crypto_attribute() {
        let key: alloc::vec::Vec<u8> = (0..30).collect();
        let d = Description {
            srtp_key: Some(&key),
            audio: Some(Audio {
                port: 5006,
                codec: AudioCodec::Pcma,
                payload_type: 0,
            }),
            ..view()
        };
        let sdp = d.render();
        assert!(sdp.contains("m=video 5004 RTP/SAVP 96\r\n"));
        assert!(sdp.contains("m=audio 5006 RTP/SAVP 8\r\na=rtpmap:8 PCMA/8000\r\n"));
        assert_eq!(
            sdp.matches("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd\r\n")
                .count(),
            2
        );
    }

    #[test]
    fn a_name_cannot_break_the_description() {
        let d = Description {
            name: "evil\r\nm=video 1 RTP/AVP 0",
            ..view()
        };
        let sdp = d.render();
        assert!(sdp.starts_with(
            "v=0\r\no=cuntong 7 1 IN IP4 127.0.0.1\r\ns=evil  m=video 1 RTP/AVP 0\r\n"
        ));
        let media_lines = sdp.split("\r\n").filter(|l| l.starts_with("m=")).count();
        assert_eq!(media_lines, 2, "{sdp}");
    }

    /// What baresip offers with its video and audio modules (H.264 in both packetization
    /// modes, Opus, G.711), trimmed of attributes that change nothing here.
    const BARESIP: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
        m=audio 10000 RTP/AVP 96 0 8 101\r\na=rtpmap:96 opus/48000/2\r\na=fmtp:96 stereo=1\r\n\
        a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=sendrecv\r\n\
        m=video 10002 RTP/AVP 100 99\r\nc=IN IP4 127.0.0.2\r\n\
        a=rtpmap:100 H264/90000\r\na=fmtp:100 packetization-mode=0\r\n\
        a=rtpmap:99 H264/90000\r\na=fmtp:99 profile-level-id=42e01f;packetization-mode=1\r\n";

    #[test]
    fn an_offer_gives_h264_in_mode_1_and_opus_at_their_addresses() {
        let o = read_offer(BARESIP).unwrap();
        assert_eq!(o.video, Some(("127.0.0.2:10002".parse().unwrap(), 99)));
        assert_eq!(
            o.audio,
            Some(("127.0.0.1:10000".parse().unwrap(), AudioCodec::Opus, 96))
        );
        // The answer gives back each line in the offer's order.
        let a = answer(&o, IpAddr::from([10, 0, 0, 1]), (5070, 5072), 9, &[7; 30]);
        assert!(!a.contains("a=crypto"), "{a}");
        let media: alloc::vec::Vec<&str> =
            a.split("\r\n").filter(|l| l.starts_with("m=")).collect();
        assert_eq!(
            media,
            ["m=audio 5072 RTP/AVP 96", "m=video 5070 RTP/AVP 99"]
        );
        assert!(a.contains("a=rtpmap:99 H264/90000\r\na=fmtp:99 packetization-mode=1;profile-level-id=42e01f\r\na=sendrecv\r\n"), "{a}");
        assert!(a.contains("c=IN IP4 10.0.0.1\r\n"), "{a}");
        let g711 = BARESIP.replace("96 0 8 101", "0 8 101");
        let o = read_offer(&g711).unwrap();
        assert_eq!(o.audio.map(|a| (a.1, a.2)), Some((AudioCodec::Pcma, 8)));
        let mu_law = BARESIP.replace("96 0 8 101", "0 101");
        let o = read_offer(&mu_law).unwrap();
        assert_eq!(o.audio.map(|a| (a.1, a.2)), Some((AudioCodec::Pcmu, 0)));
        let a = answer(&o, IpAddr::from([10, 0, 0, 1]), (5070, 5072), 9, &[7; 30]);
        assert!(
            a.contains("m=audio 5072 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"),
            "{a}"
        );
    }

    #[test]
    fn an_srtp_offer_gives_its_keys_and_is_answered_with_ours_under_its_tags() {
        let key: alloc::vec::Vec<u8> = (0..30).collect();
        let inline = base64::engine::general_purpose::STANDARD.encode(&key);
        let srtp = BARESIP.replace("RTP/AVP", "RTP/SAVP").replace(
            "a=sendrecv\r\n",
            &format!(
                "a=crypto:1 AES_CM_128_HMAC_SHA1_32 inline:{inline}\r\n\
                 a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:{inline}|2^20|1:4\r\n"
            ),
        ) + &format!("a=crypto:5 AES_CM_128_HMAC_SHA1_80 inline:{inline}\r\n");
        let o = read_offer(&srtp).unwrap();
        let theirs = |tag| {
            Some(SdesKey {
                tag,
                key: key.clone().try_into().unwrap(),
            })
        };
        assert_eq!((o.audio_key, o.video_key), (theirs(2), theirs(5)));
        let a = answer(&o, IpAddr::from([10, 0, 0, 1]), (5070, 5072), 9, &[0; 30]);
        assert!(a.contains("m=audio 5072 RTP/SAVP 96\r\n"), "{a}");
        let ours = "AES_CM_128_HMAC_SHA1_80 inline:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        assert!(a.contains(&format!("a=crypto:2 {ours}\r\n")), "{a}");
        assert!(a.contains(&format!("a=crypto:5 {ours}\r\n")), "{a}");
    }

    #[test]
    fn the_boxs_offer_reads_as_h264_and_opus_at_its_ports() {
        let text = offer(IpAddr::from([10, 0, 0, 1]), (5070, 5072), 3);
        let o = read_offer(&text).unwrap();
        assert_eq!(o.video, Some(("10.0.0.1:5070".parse().unwrap(), 96)));
        assert_eq!(
            o.audio,
            Some(("10.0.0.1:5072".parse().unwrap(), AudioCodec::Opus, 111))
        );
        assert!(text.contains("m=audio 5072 RTP/AVP 111 8 0\r\n"), "{text}");
    }

    #[test]
    fn offers_that_cannot_be_answered_say_why() {
        let srtp = BARESIP.replace("RTP/AVP", "RTP/SAVP");
        assert_eq!(read_offer(&srtp), Err(SdpError::SrtpOnly));
        let gsm_only = "v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP 3\r\n";
        assert_eq!(read_offer(gsm_only), Err(SdpError::NothingUsable));
        let no_address = "v=0\r\nm=audio 4000 RTP/AVP 8\r\n";
        assert_eq!(read_offer(no_address), Err(SdpError::NoAddress));
        assert_eq!(
            read_offer("v=0\r\nm=audio\r\n"),
            Err(SdpError::Line("m=audio".into()))
        );
        // A stream refused by the caller (port 0) is not taken, and refused in the answer too.
        let refused = BARESIP.replace("m=video 10002", "m=video 0");
        let o = read_offer(&refused).unwrap();
        assert_eq!(o.video, None);
        let a = answer(&o, IpAddr::from([10, 0, 0, 1]), (5070, 5072), 9, &[7; 30]);
        assert!(a.ends_with("m=video 0 RTP/AVP 100\r\n"), "{a}");
    }
}
