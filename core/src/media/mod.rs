//! Meeting media as the core sees it: RTP and RTCP packets as a relay reads them ([`rtp`]), the
//! share of its bitrate a sending site uses on its link ([`bitrate`]), the
//! feedback a site sends about a stream ([`rtcp`]) under SRTCP ([`srtcp`]), the
//! STUN messages that prove an address wants media ([`stun`], [`consent`]), a relay's
//! forwarding table ([`routes`]), the standard descriptions of streams ([`sdp`]) and the
//! composed picture of a meeting room ([`layout`]). Encoding
//! and decoding are the terminal's media engine's (GStreamer); forwarding is the relay's
//! (`cuntong_terminal::relay`).

/// RTP payload types: H.264 and Opus are dynamic (the SDP names them), G.711 static.
pub const VIDEO_PT: u8 = 96;
pub const OPUS_PT: u8 = 111;
pub const PCMA_PT: u8 = 8;
pub const PCMU_PT: u8 = 0;

/// A site's audio SSRC: the one after its (even) video SSRC.
pub fn audio_ssrc(video_ssrc: u32) -> u32 {
    video_ssrc | 1
}

pub mod bitrate;
pub mod consent;
pub mod layout;
pub mod routes;
pub mod rtcp;
pub mod rtp;
pub mod sdp;
pub mod srtcp;
pub mod stun;

/// The sound's codec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AudioCodec {
    Opus,
    /// G.711 A-law, the interop fallback.
    Pcma,
    /// G.711 μ-law, which room systems offer as often as A-law.
    Pcmu,
}

impl AudioCodec {
    /// Its RTP payload type: static for G.711, the one cuntong names Opus otherwise.
    pub fn payload_type(self) -> u8 {
        match self {
            AudioCodec::Opus => OPUS_PT,
            AudioCodec::Pcma => PCMA_PT,
            AudioCodec::Pcmu => PCMU_PT,
        }
    }
}
