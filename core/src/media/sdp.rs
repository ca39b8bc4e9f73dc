//! Session descriptions (SDP, RFC 4566) of the streams cuntong sends, so that any standard
//! player — ffmpeg, VLC, a hardware room system — can open one: H.264 as RFC 6184 describes it
//! (constrained baseline, packetization mode 1), Opus as RFC 7587 (48 kHz, 2 channels on the
//! wire), G.711 A-law with its static payload type, and, for SRTP, the key as an RFC 4568 `crypto`
//! attribute.

use alloc::format;
use alloc::string::String;
use base64::Engine;
use core::net::IpAddr;

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
            AudioCodec::Pcma => 8,
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
            line(format!("a=rtpmap:{pt} H264/90000"));
            line(format!(
                "a=fmtp:{pt} packetization-mode=1;profile-level-id={}",
                profile_level_id(v.level)
            ));
            if v.content {
                line(String::from("a=content:slides"));
            }
            line(String::from("a=recvonly"));
            if let Some(c) = &crypto {
                line(c.clone());
            }
        }
        if let Some(a) = self.audio {
            let pt = a.payload_type();
            line(format!("m=audio {} {profile} {pt}", a.port));
            match a.codec {
                AudioCodec::Opus => {
                    line(format!("a=rtpmap:{pt} opus/48000/2"));
                    line(format!("a=fmtp:{pt} minptime=10;useinbandfec=1"));
                }
                AudioCodec::Pcma => line(format!("a=rtpmap:{pt} PCMA/8000")),
            }
            line(String::from("a=recvonly"));
            if let Some(c) = &crypto {
                line(c.clone());
            }
        }
        s
    }
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
}
