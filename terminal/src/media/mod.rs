//! The media engine: a site's audio and video through GStreamer pipelines (cargo feature
//! `media`), built element by element with typed properties, never from strings.
//!
//! Sending: camera (`v4l2src`) or `videotestsrc` → scale/rate to the profile → H.264
//! constrained baseline 4:2:0 (hardware `v4l2h264enc` when present, else `x264enc` tuned for
//! zero latency, else `openh264enc`) → RTP (RFC 6184, SPS/PPS with every keyframe) → SRTP →
//! UDP; microphone (ALSA) or `audiotestsrc` → Opus (RFC 7587) → RTP → SRTP → UDP, to the
//! site's relay. Receiving: UDP → SRTP (the meeting's key for every SSRC) → one branch per
//! stream (jitter buffer → depayload → decode → display, or discard in tests), with counters
//! per stream: packets, losses, jitter, bytes, frames decoded.
//!
//! Video arrives on the site's `rtp_port`, audio on `rtp_port + 2`, and a site sends from those
//! very sockets (symmetric RTP, RFC 4961): its relay forwards its streams only from there. The
//! video socket also carries RTCP feedback both ways ([`feedback`]): keyframe requests and
//! reports about the streams received go out, requests for the site's own video come in; the
//! periodic keyframe is seldom ([`KEYFRAME_EVERY_S`]). The
//! receive sockets answer the relay's consent probes (STUN Binding Requests, RFC 7983 demux)
//! themselves, so media comes only to a site that asked for it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use cuntong_core::meeting::{AudioCodec, MediaProfile, Tier};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_net::gio;

use cuntong_core::media::VIDEO_PT;

mod engine;
pub mod feedback;
mod receive;
pub mod room;
mod send;

pub use engine::GstEngine;
pub use receive::{Receiver, StreamStats, Unwrap};
pub use send::{CONTENT_VIDEO, FrameLog, KEYFRAME_EVERY_S, SendSettings, Sender};

/// Why media could not start.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("GStreamer: {0}")]
    Init(String),
    #[error("GStreamer element {0} is missing (install the GStreamer plugins)")]
    Missing(String),
    #[error("GStreamer pipeline: {0}")]
    Pipeline(String),
    #[error("the SRTP key must be 30 bytes (AES-128 key and salt), not {0}")]
    Key(usize),
}

impl From<gst::glib::BoolError> for MediaError {
    fn from(e: gst::glib::BoolError) -> MediaError {
        MediaError::Pipeline(e.to_string())
    }
}

impl From<gst::StateChangeError> for MediaError {
    fn from(e: gst::StateChangeError) -> MediaError {
        MediaError::Pipeline(e.to_string())
    }
}

/// Initialises GStreamer (once; later calls do nothing).
pub fn init() -> Result<(), MediaError> {
    gst::init().map_err(|e| MediaError::Init(e.to_string()))
}

fn make(factory: &str) -> Result<gst::Element, MediaError> {
    gst::ElementFactory::make(factory)
        .build()
        .map_err(|_| MediaError::Missing(factory.to_owned()))
}

/// An element with its properties set.
fn make_with(
    factory: &str,
    props: &[(&str, gst::glib::Value)],
) -> Result<gst::Element, MediaError> {
    let mut b = gst::ElementFactory::make(factory);
    for (name, value) in props {
        b = b.property(name, value.clone());
    }
    b.build()
        .map_err(|_| MediaError::Missing(factory.to_owned()))
}

/// The first of `factories` this machine has.
fn first_available(factories: &[&str]) -> Result<gst::Element, MediaError> {
    factories
        .iter()
        .find_map(|f| gst::ElementFactory::make(f).build().ok())
        .ok_or_else(|| MediaError::Missing(factories.join(" or ")))
}

/// How GStreamer carries a sound codec: its RTP clock rate and encoding name, and the elements
/// that encode, packetize, depacketize and decode it. The one table of them.
pub(crate) struct Sound {
    pub rate: i32,
    pub name: &'static str,
    pub encoder: &'static str,
    pub pay: &'static str,
    pub depay: &'static str,
    pub decoder: &'static str,
}

pub(crate) fn sound(codec: AudioCodec) -> Sound {
    match codec {
        AudioCodec::Opus => Sound {
            rate: 48_000,
            name: "OPUS",
            encoder: "opusenc",
            pay: "rtpopuspay",
            depay: "rtpopusdepay",
            decoder: "opusdec",
        },
        AudioCodec::Pcma => Sound {
            rate: 8_000,
            name: "PCMA",
            encoder: "alawenc",
            pay: "rtppcmapay",
            depay: "rtppcmadepay",
            decoder: "alawdec",
        },
        AudioCodec::Pcmu => Sound {
            rate: 8_000,
            name: "PCMU",
            encoder: "mulawenc",
            pay: "rtppcmupay",
            depay: "rtppcmudepay",
            decoder: "mulawdec",
        },
    }
}

/// What the box captures from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Capture {
    /// Test patterns and tones (simulator, tests).
    Test,
    /// A picture of one colour (`0xAARRGGBB`) and a tone: sites told apart on a screen.
    Colour(u32),
    /// Colour bars and no sound: content (slides) from the simulator and tests.
    Slides,
    /// A V4L2 camera and an ALSA microphone (`None`: the system default).
    Devices {
        camera: Option<String>,
        microphone: Option<String>,
    },
    /// A room system in a SIP call ([`crate::sip`]): its picture and voice as the call agreed.
    Call(crate::sip::CallMedia),
}

/// The room system's stream of a SIP call (video, or sound) as a live source: UDP → (SRTP, if
/// the call agreed it) → jitter buffer → depayload → decode; black or silence if the call
/// carries no such stream.
fn call_source(call: &crate::sip::CallMedia, video: bool) -> Result<gst::Element, MediaError> {
    let agreed = call.get();
    let secure = agreed.as_ref().and_then(|a| {
        if video {
            a.offer.video_key
        } else {
            a.offer.audio_key
        }
    });
    let rtp = |media: &str, rate: i32, name: &str, pt: u8| {
        let kind = if secure.is_some() {
            "application/x-srtp"
        } else {
            "application/x-rtp"
        };
        gst::Caps::builder(kind)
            .field("media", media)
            .field("clock-rate", rate)
            .field("encoding-name", name)
            .field("payload", i32::from(pt))
            .build()
    };
    let udp = |port: u16, caps: gst::Caps| {
        make_with(
            "udpsrc",
            &[
                ("port", i32::from(port).to_value()),
                ("caps", caps.to_value()),
            ],
        )
    };
    let jitter = || make_with("rtpjitterbuffer", &[("latency", 100u32.to_value())]);
    let chain = match (video, agreed) {
        (true, Some(a)) if a.offer.video.is_some() => {
            let pt = a.offer.video.map_or(0, |v| v.1);
            vec![
                udp(a.video_port, rtp("video", 90_000, "H264", pt))?,
                jitter()?,
                make("rtph264depay")?,
                first_available(&["v4l2h264dec", "avdec_h264", "openh264dec"])?,
            ]
        }
        (false, Some(a)) if a.offer.audio.is_some() => {
            let (codec, pt) = a.offer.audio.map_or((AudioCodec::Pcma, 8), |x| (x.1, x.2));
            let s = sound(codec);
            vec![
                udp(a.audio_port, rtp("audio", s.rate, s.name, pt))?,
                jitter()?,
                make(s.depay)?,
                make(s.decoder)?,
            ]
        }
        (true, _) => {
            let black = make_with("videotestsrc", &[("is-live", true.to_value())])?;
            black.set_property_from_str("pattern", "black");
            return Ok(black);
        }
        (false, _) => {
            let silence = make_with("audiotestsrc", &[("is-live", true.to_value())])?;
            silence.set_property_from_str("wave", "silence");
            return Ok(silence);
        }
    };
    let mut chain = chain;
    if let Some(k) = secure {
        // Decrypted between the socket and the jitter buffer, with the room system's key.
        chain.insert(1, srtp_decrypter(&srtp_key(&k.key)?)?);
    }
    let bin = gst::Bin::new();
    bin.add_many(&chain)?;
    gst::Element::link_many(&chain)?;
    let last = chain
        .last()
        .and_then(|e| e.static_pad("src"))
        .ok_or_else(|| MediaError::Pipeline("the call's decoder has no output".into()))?;
    let ghost = gst::GhostPad::with_target(&last)
        .map_err(|e| MediaError::Pipeline(format!("the call's source: {e}")))?;
    bin.add_pad(&ghost)
        .map_err(|e| MediaError::Pipeline(format!("the call's source: {e}")))?;
    Ok(bin.upcast())
}

impl Capture {
    /// The capture of a content source: its camera alone (content has no sound).
    pub fn content(source: &crate::config::ContentSource) -> Capture {
        match source {
            crate::config::ContentSource::Camera(device) => Capture::Devices {
                camera: Some(device.display().to_string()),
                microphone: None,
            },
            crate::config::ContentSource::Test => Capture::Slides,
        }
    }
}

/// What the box does with what it receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Playback {
    /// Decode and count, show nothing (tests, the simulator, a headless relay).
    Discard,
    /// One picture of every video stream in the tiles of `layout`, one sound of every audio
    /// stream, to `display` ([`room`]).
    Room {
        display: room::Display,
        layout: cuntong_core::media::layout::Layout,
    },
}

fn capsfilter(caps: &gst::Caps) -> Result<gst::Element, MediaError> {
    make_with("capsfilter", &[("caps", caps.to_value())])
}

/// Bytes counted at a pad.
fn count_bytes(pad: &gst::Pad, counter: Arc<AtomicU64>) {
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        if let Some(gst::PadProbeData::Buffer(b)) = &info.data {
            counter.fetch_add(b.size() as u64, Ordering::Relaxed);
        }
        gst::PadProbeReturn::Ok
    });
}

fn srtp_key(key: &[u8]) -> Result<gst::Buffer, MediaError> {
    if key.len() != 30 {
        return Err(MediaError::Key(key.len()));
    }
    Ok(gst::Buffer::from_slice(key.to_vec()))
}

/// An SRTP decrypter for streams under `key` (AES_CM_128_HMAC_SHA1_80, SRTP and SRTCP), for
/// every SSRC it sees.
fn srtp_decrypter(key: &gst::Buffer) -> Result<gst::Element, MediaError> {
    let dec = make("srtpdec")?;
    let k = key.clone();
    dec.connect("request-key", false, move |_| {
        let caps = gst::Caps::builder("application/x-srtp")
            .field("srtp-key", &k)
            .field("srtp-cipher", "aes-128-icm")
            .field("srtp-auth", "hmac-sha1-80")
            .field("srtcp-cipher", "aes-128-icm")
            .field("srtcp-auth", "hmac-sha1-80")
            .build();
        Some(caps.to_value())
    });
    Ok(dec)
}

/// Logs the pipeline's errors and warnings as they come (from GStreamer's own thread).
fn watch_bus(pipeline: &gst::Pipeline, what: &'static str) {
    watch_bus_of(pipeline, what, None);
}

/// Logs `pipeline`'s errors and warnings, hands its room the audio levels measured, and keeps
/// only its end of stream on the bus (for whoever waits for it).
fn watch_bus_of(pipeline: &gst::Pipeline, what: &'static str, room: Option<room::Room>) {
    if let Some(bus) = pipeline.bus() {
        bus.set_sync_handler(move |_, msg| {
            match msg.view() {
                gst::MessageView::Error(e) => {
                    let element = e.src().map(|s| s.path_string().to_string());
                    tracing::error!(pipeline = what, element = element.as_deref().unwrap_or("?"), error = %e.error(), debug = ?e.debug(), "media error")
                }
                gst::MessageView::Warning(w) => {
                    let element = w.src().map(|s| s.path_string().to_string());
                    tracing::warn!(pipeline = what, element = element.as_deref().unwrap_or("?"), warning = %w.error(), debug = ?w.debug(), "media warning")
                }
                gst::MessageView::Eos(_) => return gst::BusSyncReply::Pass,
                gst::MessageView::Element(e) => {
                    if let (Some(room), Some(s)) = (&room, e.structure())
                        && s.name() == "level"
                        && let Some(ssrc) = msg.src().and_then(|src| room::Room::metered(&src.name()))
                        && let Ok(rms) = s.get::<gst::glib::ValueArray>("rms")
                    {
                        let loudest = rms
                            .iter()
                            .filter_map(|v| v.get::<f64>().ok())
                            .fold(f64::NEG_INFINITY, f64::max);
                        room.audio_level(ssrc, loudest);
                    }
                }
                _ => {}
            }
            gst::BusSyncReply::Drop
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tier_decides_what_a_site_sends() {
        let sd = MediaProfile::named("sd").unwrap();
        assert_eq!(
            SendSettings::for_tier(&sd, Tier::Full).video,
            Some((640, 360, 25, 600))
        );
        let audio_only = SendSettings::for_tier(&sd, Tier::AudioOnly);
        assert!(audio_only.video.is_none() && audio_only.audio.is_some());
        let receive_only = SendSettings::for_tier(&sd, Tier::ReceiveOnly);
        assert!(receive_only.video.is_none() && receive_only.audio.is_none());
    }
}
