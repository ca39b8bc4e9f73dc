//! Meeting media as the core sees it: RTP and RTCP packets as a relay reads them ([`rtp`]), a
//! relay's forwarding table ([`routes`]) and the standard descriptions of streams ([`sdp`]). Encoding and decoding are the terminal's media
//! engine's (GStreamer); forwarding is the relay's (`cuntong_terminal::relay`).

pub mod routes;
pub mod rtp;
pub mod sdp;
