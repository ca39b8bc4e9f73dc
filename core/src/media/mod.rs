//! Meeting media as the core sees it: RTP and RTCP packets as a relay reads them ([`rtp`]), a
//! relay's forwarding table ([`routes`]) and the standard descriptions of streams ([`sdp`]). Encoding and decoding are the terminal's media
//! engine's (GStreamer); forwarding is the relay's (`cuntong_terminal::relay`).

/// A site's audio SSRC: the one after its (even) video SSRC.
pub fn audio_ssrc(video_ssrc: u32) -> u32 {
    video_ssrc | 1
}

pub mod routes;
pub mod rtp;
pub mod sdp;
