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

use cuntong_core::media::{OPUS_PT, PCMA_PT, VIDEO_PT};

pub mod feedback;
mod receive;
pub mod room;

pub use receive::{Receiver, StreamStats, Unwrap};

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

/// What a site sends at its tier: video (w, h, fps, kbit/s) and audio (codec, kbit/s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendSettings {
    pub video: Option<(u32, u32, u32, u32)>,
    pub audio: Option<(AudioCodec, u32)>,
    /// Keep the time each video frame left the camera (for latency measurements).
    pub log_frames: bool,
    /// A keyframe at least this often, in seconds; receivers ask for one when they need it
    /// sooner (a site joins, a tile changes, packets were lost).
    pub keyframe_every_s: u32,
}

/// Content (双流): the presenter's slides, sharp and slow, from the box's second video source.
pub const CONTENT_VIDEO: (u32, u32, u32) = (1920, 1080, 5);

/// The periodic keyframe: seldom, since receivers ask for one when they need it (a keyframe
/// costs several times a frame on a metered link).
pub const KEYFRAME_EVERY_S: u32 = 10;

/// Times of video frames, in order.
pub type FrameLog = Arc<Mutex<Vec<std::time::Instant>>>;

impl SendSettings {
    pub fn for_tier(profile: &MediaProfile, tier: Tier) -> SendSettings {
        let video = profile
            .video
            .as_ref()
            .filter(|_| tier == Tier::Full)
            .map(|v| {
                (
                    u32::from(v.width),
                    u32::from(v.height),
                    u32::from(v.fps),
                    v.kbps,
                )
            });
        let audio = (tier != Tier::ReceiveOnly).then_some((profile.audio, profile.audio_kbps));
        SendSettings {
            video,
            audio,
            log_frames: false,
            keyframe_every_s: KEYFRAME_EVERY_S,
        }
    }

    /// What a site sends of its content ([`CONTENT_VIDEO`], at the bitrate of its profile's
    /// video): a picture, no sound.
    pub fn content(profile: &MediaProfile) -> SendSettings {
        let (w, h, fps) = CONTENT_VIDEO;
        SendSettings {
            video: profile.video.as_ref().map(|v| (w, h, fps, v.kbps)),
            audio: None,
            log_frames: false,
            keyframe_every_s: KEYFRAME_EVERY_S,
        }
    }
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
                    tracing::error!(pipeline = what, error = %e.error(), debug = ?e.debug(), "media error")
                }
                gst::MessageView::Warning(w) => {
                    tracing::warn!(pipeline = what, warning = %w.error(), "media warning")
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

/// A site's outgoing media.
#[derive(Debug)]
pub struct Sender {
    pipeline: gst::Pipeline,
    volume: Option<gst::Element>,
    encoder: Option<(gst::Element, String)>,
    pub bytes: Arc<AtomicU64>,
    /// When each video frame went to the encoder (with `log_frames`).
    pub captured: FrameLog,
    /// Valves before the encoders: closed while the site is not a source, so its packets'
    /// sequence numbers (and SRTP indexes) simply go on when it sends again.
    gates: Vec<gst::Element>,
    active: bool,
}

impl Sender {
    /// Sets up sending to `to` with SSRCs `ssrc` (video) and `ssrc + 1` (audio), held back until
    /// [`Sender::set_active`] lets it go, under SRTP
    /// with `key` (plain RTP without one: for a viewer's player, on a trusted network). With
    /// `from`, video goes out of its video socket and audio out of its audio socket (where the
    /// relay expects the site's streams); without, from any free port.
    pub fn start(
        capture: &Capture,
        settings: SendSettings,
        ssrc: u32,
        key: Option<&[u8]>,
        to: SocketAddr,
        from: Option<&Receiver>,
    ) -> Result<Sender, MediaError> {
        init()?;
        let pipeline = gst::Pipeline::with_name("send");
        let bytes = Arc::new(AtomicU64::new(0));
        let key = key.map(srtp_key).transpose()?;
        let captured = FrameLog::default();
        let mut gates = Vec::new();
        let sink = |name: &str, socket: Option<gio::Socket>| -> Result<gst::Element, MediaError> {
            let mut b = gst::ElementFactory::make("udpsink")
                .name(name)
                .property("host", to.ip().to_string())
                .property("port", i32::from(to.port()))
                .property("sync", false)
                .property("async", false);
            if let Some(socket) = socket {
                // The receiver owns the socket and closes it.
                b = b.property("socket", socket).property("close-socket", false);
            }
            let s = b
                .build()
                .map_err(|_| MediaError::Missing("udpsink".into()))?;
            if let Some(pad) = s.static_pad("sink") {
                count_bytes(&pad, bytes.clone());
            }
            Ok(s)
        };
        // SRTP, or a pass-through for plain RTP.
        let srtp = || -> Result<gst::Element, MediaError> {
            match &key {
                Some(k) => make_with("srtpenc", &[("key", k.clone().to_value())]),
                None => make("identity"),
            }
        };
        let mut encoder = None;
        if let Some((w, h, fps, kbps)) = settings.video {
            let src = match capture {
                Capture::Test => gst::ElementFactory::make("videotestsrc")
                    .property("is-live", true)
                    .property_from_str("pattern", "ball")
                    .build()
                    .map_err(|_| MediaError::Missing("videotestsrc".into()))?,
                Capture::Colour(argb) => gst::ElementFactory::make("videotestsrc")
                    .property("is-live", true)
                    .property_from_str("pattern", "solid-color")
                    .property("foreground-color", *argb)
                    .build()
                    .map_err(|_| MediaError::Missing("videotestsrc".into()))?,
                Capture::Slides => gst::ElementFactory::make("videotestsrc")
                    .property("is-live", true)
                    .property_from_str("pattern", "smpte")
                    .build()
                    .map_err(|_| MediaError::Missing("videotestsrc".into()))?,
                Capture::Devices { camera, .. } => {
                    let s = make("v4l2src")?;
                    if let Some(c) = camera {
                        s.set_property("device", c);
                    }
                    s
                }
            };
            let raw = gst::Caps::builder("video/x-raw")
                .field("width", w as i32)
                .field("height", h as i32)
                .field("framerate", gst::Fraction::new(fps as i32, 1))
                .field("format", "I420")
                .build();
            let (enc, factory) = video_encoder(kbps, fps, settings.keyframe_every_s)?;
            let h264 = gst::Caps::builder("video/x-h264")
                .field("profile", "constrained-baseline")
                .build();
            let pay = make_with(
                "rtph264pay",
                &[
                    ("pt", (u32::from(VIDEO_PT)).to_value()),
                    ("ssrc", ssrc.to_value()),
                    ("config-interval", (-1i32).to_value()),
                    ("mtu", 1200u32.to_value()),
                ],
            )?;
            let raw_filter = capsfilter(&raw)?;
            if settings.log_frames
                && let Some(pad) = raw_filter.static_pad("src")
            {
                let log = captured.clone();
                pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                    log.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(std::time::Instant::now());
                    gst::PadProbeReturn::Ok
                });
            }
            let gate = make_with("valve", &[("drop", true.to_value())])?;
            gates.push(gate.clone());
            let chain = [
                src,
                make("videoconvert")?,
                make("videoscale")?,
                make("videorate")?,
                raw_filter,
                gate,
                enc.clone(),
                capsfilter(&h264)?,
                pay,
                srtp()?,
                sink("video-out", from.and_then(|r| r.socket(true)))?,
            ];
            pipeline.add_many(&chain)?;
            gst::Element::link_many(&chain)?;
            // Keyframes when a receiver of the session asks (its feedback comes in on the
            // receiver's socket this sends from).
            if let Some(r) = from {
                r.feedback.heed(ssrc, &enc);
            }
            encoder = Some((enc, factory));
        }
        let mut volume = None;
        if let Some((codec, kbps)) = settings.audio {
            let src = match capture {
                Capture::Test | Capture::Colour(_) | Capture::Slides => make_with(
                    "audiotestsrc",
                    &[("is-live", true.to_value()), ("volume", 0.3f64.to_value())],
                )?,
                Capture::Devices { microphone, .. } => {
                    let s = make("alsasrc")?;
                    if let Some(m) = microphone {
                        s.set_property("device", m);
                    }
                    s
                }
            };
            let vol = make("volume")?;
            let audio_ssrc = cuntong_core::media::audio_ssrc(ssrc);
            let (rate, enc, pay) = match codec {
                AudioCodec::Opus => (
                    48_000,
                    make_with("opusenc", &[("bitrate", ((kbps * 1000) as i32).to_value())])?,
                    make_with(
                        "rtpopuspay",
                        &[
                            ("pt", (u32::from(OPUS_PT)).to_value()),
                            ("ssrc", audio_ssrc.to_value()),
                        ],
                    )?,
                ),
                AudioCodec::Pcma => (
                    8_000,
                    make("alawenc")?,
                    make_with(
                        "rtppcmapay",
                        &[
                            ("pt", (u32::from(PCMA_PT)).to_value()),
                            ("ssrc", audio_ssrc.to_value()),
                        ],
                    )?,
                ),
            };
            let caps = gst::Caps::builder("audio/x-raw")
                .field("rate", rate)
                .field("channels", 1i32)
                .build();
            let gate = make_with("valve", &[("drop", true.to_value())])?;
            gates.push(gate.clone());
            let chain = [
                src,
                gate,
                vol.clone(),
                make("audioconvert")?,
                make("audioresample")?,
                capsfilter(&caps)?,
                enc,
                pay,
                srtp()?,
                sink("audio-out", from.and_then(|r| r.socket(false)))?,
            ];
            pipeline.add_many(&chain)?;
            gst::Element::link_many(&chain)?;
            volume = Some(vol);
        }
        watch_bus(&pipeline, "send");
        pipeline.set_state(gst::State::Playing)?;
        Ok(Sender {
            pipeline,
            volume,
            encoder,
            bytes,
            captured,
            gates,
            active: false,
        })
    }

    /// Sends, or holds the streams back (nothing goes out, nothing is encoded). Sending again
    /// starts with a keyframe, for the sites that have not seen one yet.
    /// True if it changed.
    pub fn set_active(&mut self, on: bool) -> bool {
        if on == self.active {
            return false;
        }
        self.active = on;
        for g in &self.gates {
            g.set_property("drop", !on);
        }
        if on && let Some((encoder, _)) = &self.encoder {
            feedback::request_keyframe(encoder);
        }
        true
    }

    /// Mutes or unmutes the microphone (the stream goes on, silent: no renegotiation).
    pub fn set_muted(&self, muted: bool) {
        if let Some(v) = &self.volume {
            v.set_property("mute", muted);
        }
    }

    /// The video encoder's target bitrate, changed while sending.
    pub fn set_video_kbps(&self, kbps: u32) {
        if let Some((enc, factory)) = &self.encoder {
            match factory.as_str() {
                "x264enc" => enc.set_property("bitrate", kbps),
                "openh264enc" => enc.set_property("bitrate", kbps * 1000),
                _ => {}
            }
        }
    }

    /// The encoder in use (`x264enc`, `openh264enc`, `v4l2h264enc`).
    pub fn encoder(&self) -> Option<&str> {
        self.encoder.as_ref().map(|(_, f)| f.as_str())
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

fn capsfilter(caps: &gst::Caps) -> Result<gst::Element, MediaError> {
    make_with("capsfilter", &[("caps", caps.to_value())])
}

/// The H.264 encoder for this machine: hardware first, then x264 (zero latency), then
/// openh264; a keyframe every `keyframe_s` seconds at least, no B-frames (baseline).
fn video_encoder(
    kbps: u32,
    fps: u32,
    keyframe_s: u32,
) -> Result<(gst::Element, String), MediaError> {
    let gop = fps * keyframe_s.max(1);
    if let Ok(e) = gst::ElementFactory::make("v4l2h264enc").build() {
        return Ok((e, "v4l2h264enc".into()));
    }
    if let Ok(e) = gst::ElementFactory::make("x264enc")
        .property("bitrate", kbps)
        .property_from_str("tune", "zerolatency")
        .property_from_str("speed-preset", "ultrafast")
        .property("key-int-max", gop)
        .property("bframes", 0u32)
        .build()
    {
        return Ok((e, "x264enc".into()));
    }
    let e = gst::ElementFactory::make("openh264enc")
        .property("bitrate", kbps * 1000)
        .property("gop-size", gop)
        .build()
        .map_err(|_| MediaError::Missing("v4l2h264enc, x264enc or openh264enc".into()))?;
    Ok((e, "openh264enc".into()))
}

/// A session's media on this box.
#[derive(Debug)]
struct Session {
    plan: cuntong_core::meeting::MediaPlan,
    settings: SendSettings,
    /// Dropped before the receiver, whose sockets it sends from (as is the content's).
    sender: Option<Sender>,
    /// The content's SSRC and its sender, while the chair's screen says this site shares.
    content: Option<(u32, Sender)>,
    /// What it sends of its content.
    content_settings: SendSettings,
    /// The video SSRC of the content another site shares, if one does.
    content_in: Option<u32>,
    /// The site is a source (its role or the chair's screen asks it to send), whether or not
    /// its relay consents.
    sending: bool,
    /// Its role asks it to send (the chair, the speaker, the site shown, a viewed site).
    role_sends: bool,
    /// The chair's screen lists it.
    on_screen: bool,
    receiver: Option<Receiver>,
    muted: bool,
    audio: AudioCodec,
}

/// The media engine of a box: receives every session it joins, sends while the site is a
/// source (the chair, the floor holder, the broadcast site) and its tier allows.
#[derive(Debug)]
pub struct GstEngine {
    me: cuntong_core::terminal_id::TerminalId,
    capture: Capture,
    playback: Playback,
    rtp_port: u16,
    latency_ms: u32,
    /// The second video source it shares as content, if it has one (`[media] content`).
    content: Option<Capture>,
    sessions: BTreeMap<cuntong_core::meeting::MeetingId, Session>,
    views: BTreeMap<(cuntong_core::meeting::MeetingId, u32, SocketAddr), Unwrap>,
    /// The share of the profile's video bitrate sent now (the link decides), on the clock of
    /// `epoch`.
    bitrate: cuntong_core::media::bitrate::Bitrate,
    epoch: std::time::Instant,
    /// Counters at the last sample: (rx bytes, tx bytes, decoded frames per stream).
    last: (u64, u64, BTreeMap<u32, u64>),
    last_sample: Option<std::time::Instant>,
}

impl GstEngine {
    /// Fails if GStreamer cannot start here (the box then takes part without media).
    pub fn new(
        me: cuntong_core::terminal_id::TerminalId,
        capture: Capture,
        playback: Playback,
        rtp_port: u16,
    ) -> Result<GstEngine, MediaError> {
        init()?;
        Ok(GstEngine {
            me,
            capture,
            playback,
            rtp_port,
            latency_ms: 60,
            content: None,
            sessions: BTreeMap::new(),
            views: BTreeMap::new(),
            bitrate: cuntong_core::media::bitrate::Bitrate::new(),
            epoch: std::time::Instant::now(),
            last: (0, 0, BTreeMap::new()),
            last_sample: None,
        })
    }

    /// Shares `capture` (a second camera, an HDMI capture of the presenter's laptop) as
    /// content when the chair's screen gives this site the content.
    pub fn with_content(mut self, capture: Capture) -> GstEngine {
        self.content = Some(capture);
        self
    }

    /// Sends content under `ssrc` while the screen says this site shares (`Some`), to where
    /// the site sends, from its video socket; stops otherwise. Held back, like the camera's
    /// streams, while the relay does not consent.
    fn update_content(&mut self, meeting: cuntong_core::meeting::MeetingId, ssrc: Option<u32>) {
        let Some(s) = self.sessions.get_mut(&meeting) else {
            return;
        };
        if s.content.as_ref().map(|(c, _)| *c) != ssrc
            && let Some((c, _)) = s.content.take()
        {
            tracing::info!(%meeting, ssrc = c, "content stopped");
        }
        let (Some(ssrc), Some(capture)) = (ssrc, &self.content) else {
            return;
        };
        let to = s
            .plan
            .send_to
            .as_deref()
            .and_then(|a| a.parse::<SocketAddr>().ok());
        let (Some(to), Some(receiver)) = (to, s.receiver.as_ref()) else {
            return;
        };
        if s.content.is_none() {
            match Sender::start(
                capture,
                s.content_settings,
                ssrc,
                Some(&s.plan.srtp_key),
                to,
                Some(receiver),
            ) {
                Ok(sender) => {
                    tracing::info!(%meeting, ssrc, %to, "sharing content");
                    s.content = Some((ssrc, sender));
                }
                Err(e) => {
                    tracing::error!(%meeting, error = %e, "cannot share content");
                    return;
                }
            }
        }
        let consented = receiver.consented(to);
        if let Some((_, sender)) = s.content.as_mut() {
            sender.set_active(consented);
        }
    }

    /// Sends while the site is a source and its relay answers its consent probes; holds the
    /// streams back otherwise (called on every change, and every second to probe again).
    fn update_sender(&mut self, meeting: cuntong_core::meeting::MeetingId, sending: bool) {
        let Some(s) = self.sessions.get_mut(&meeting) else {
            return;
        };
        let changed = s.sending != sending;
        s.sending = sending;
        let to = s.plan.send_to.as_deref().and_then(|a| match a.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                if changed {
                    tracing::error!(%meeting, send_to = a, "the relay's address is not ip:port; not sending");
                }
                None
            }
        });
        let (Some(to), true) = (to, sending) else {
            if let Some(sender) = s.sender.as_mut()
                && sender.set_active(false)
            {
                tracing::info!(%meeting, sending = false, "media sending changed");
            }
            return;
        };
        let Some(receiver) = s.receiver.as_ref() else {
            if changed {
                tracing::error!(%meeting, "no receive sockets to send from; not sending");
            }
            return;
        };
        let consented = receiver.consented(to);
        if s.sender.is_none() {
            if s.settings.video.is_none() && s.settings.audio.is_none() {
                return;
            }
            match Sender::start(
                &self.capture,
                s.settings,
                s.plan.ssrc,
                Some(&s.plan.srtp_key),
                to,
                Some(receiver),
            ) {
                Ok(sender) => {
                    sender.set_muted(s.muted);
                    tracing::info!(%meeting, %to, encoder = ?sender.encoder(), "sending media");
                    s.sender = Some(sender);
                }
                Err(e) => {
                    tracing::error!(%meeting, error = %e, "cannot send media");
                    return;
                }
            }
        }
        if let Some(sender) = s.sender.as_mut()
            && sender.set_active(consented)
        {
            if consented {
                tracing::info!(%meeting, %to, sending = true, "media sending changed");
            } else {
                tracing::warn!(%meeting, %to, "holding media back: the relay does not answer its consent probes");
            }
        }
    }
}

impl crate::conference::MediaEngine for GstEngine {
    fn start(
        &mut self,
        meeting: cuntong_core::meeting::MeetingId,
        plan: &cuntong_core::meeting::MediaPlan,
        profile: &MediaProfile,
    ) {
        let receiver = match Receiver::start(
            self.rtp_port,
            &plan.srtp_key,
            self.playback.clone(),
            self.latency_ms,
            profile.audio,
        ) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::error!(%meeting, port = self.rtp_port, error = %e, "cannot receive media");
                None
            }
        };
        if let Some(r) = &receiver {
            r.identify(plan.ssrc);
        }
        tracing::info!(%meeting, ssrc = plan.ssrc, tier = plan.tier.as_str(), profile = %profile.name, "media started");
        self.sessions.insert(
            meeting,
            Session {
                plan: plan.clone(),
                settings: SendSettings::for_tier(profile, plan.tier),
                receiver,
                sender: None,
                sending: false,
                role_sends: false,
                on_screen: false,
                muted: true,
                audio: profile.audio,
                content_settings: SendSettings::content(profile),
                content: None,
                content_in: None,
            },
        );
    }

    fn apply(
        &mut self,
        meeting: cuntong_core::meeting::MeetingId,
        applied: &cuntong_core::meeting::Applied,
    ) {
        use cuntong_core::meeting::Role;
        let viewed = self.sessions.get(&meeting).is_some_and(|s| s.plan.viewed);
        let role_sends = matches!(applied.role, Role::Chair | Role::Speaker)
            || applied.shown == Some(self.me)
            || viewed;
        let Some(s) = self.sessions.get_mut(&meeting) else {
            return;
        };
        s.muted = applied.muted;
        if let Some(sender) = &s.sender {
            sender.set_muted(applied.muted);
        }
        s.role_sends = role_sends;
        let sending = s.role_sends || s.on_screen;
        self.update_sender(meeting, sending);
    }

    fn screen(&mut self, screen: &cuntong_core::meeting::Screen) {
        let me = self.me;
        let Some(s) = self.sessions.get_mut(&screen.meeting) else {
            return;
        };
        let content = screen.content.as_ref();
        if let Some(room) = s.receiver.as_ref().and_then(Receiver::room) {
            let sites = screen
                .tiles_for(&me)
                .map(|t| (t.ssrc, t.caption()))
                .collect();
            room.set_screen(screen.layout, sites);
            room.set_content(screen.content_tile(Some(&me)));
        }
        s.on_screen = screen.tiles.iter().any(|t| t.site == me);
        s.content_in = screen.content_tile(Some(&me)).map(|(ssrc, _)| ssrc);
        let sending = s.role_sends || s.on_screen;
        self.update_sender(screen.meeting, sending);
        let mine = content.filter(|c| c.site == me).map(|c| c.ssrc);
        self.update_content(screen.meeting, mine);
    }

    fn has_content(&self) -> bool {
        self.content.is_some()
    }

    fn open_view(
        &mut self,
        meeting: cuntong_core::meeting::MeetingId,
        ssrc: u32,
        to: SocketAddr,
    ) -> Option<(SocketAddr, SocketAddr)> {
        let s = self.sessions.get(&meeting)?;
        match Unwrap::start(&s.plan.srtp_key, s.audio, ssrc, to) {
            Ok(u) => {
                let local = |p| SocketAddr::from(([127, 0, 0, 1], p));
                let ports = (local(u.video_in), local(u.audio_in));
                self.views.insert((meeting, ssrc, to), u);
                Some(ports)
            }
            Err(e) => {
                tracing::error!(%meeting, %to, error = %e, "cannot serve a view");
                None
            }
        }
    }

    fn close_view(&mut self, meeting: cuntong_core::meeting::MeetingId, ssrc: u32, to: SocketAddr) {
        self.views.remove(&(meeting, ssrc, to));
    }

    fn stop(&mut self, meeting: cuntong_core::meeting::MeetingId) {
        self.views.retain(|(m, _, _), _| *m != meeting);
        if self.sessions.remove(&meeting).is_some() {
            tracing::info!(%meeting, "media stopped");
        }
    }

    fn capture_devices(&self) -> crate::readiness::CaptureDevices {
        match &self.capture {
            Capture::Test | Capture::Colour(_) | Capture::Slides => {
                crate::readiness::CaptureDevices {
                    camera: Some("videotestsrc (test source)".into()),
                    microphone: Some("audiotestsrc (test source)".into()),
                }
            }
            Capture::Devices { camera, microphone } => {
                let found = crate::readiness::local_devices();
                crate::readiness::CaptureDevices {
                    camera: camera.clone().or(found.camera),
                    microphone: microphone.clone().or(found.microphone),
                }
            }
        }
    }

    fn set_layout(
        &mut self,
        meeting: cuntong_core::meeting::MeetingId,
        layout: cuntong_core::media::layout::Layout,
    ) -> bool {
        let room = self
            .sessions
            .get(&meeting)
            .and_then(|s| s.receiver.as_ref())
            .and_then(Receiver::room);
        room.inspect(|r| r.set_layout(layout)).is_some()
    }

    fn link(&mut self, rtt_ms: Option<f64>, loss_percent: f64) {
        // Consent to the relays sent to: probe again, hold back or go on.
        let sending: Vec<_> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.sending)
            .map(|(m, _)| *m)
            .collect();
        for meeting in sending {
            self.update_sender(meeting, true);
        }
        let sharing: Vec<_> = self
            .sessions
            .iter()
            .filter_map(|(m, s)| s.content.as_ref().map(|(c, _)| (*m, *c)))
            .collect();
        for (meeting, ssrc) in sharing {
            self.update_content(meeting, Some(ssrc));
        }
        // What the receivers of this site's video lose counts as much as the link's own loss.
        let mut loss_percent = loss_percent;
        for s in self.sessions.values() {
            if let Some(r) = &s.receiver {
                r.fit_latency();
                r.report();
                if s.sending {
                    loss_percent = loss_percent.max(r.reported_loss_percent());
                }
            }
        }
        let before = self.bitrate.share();
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        let share = self.bitrate.follow(rtt_ms, loss_percent, now_ms);
        if share != before {
            for (meeting, s) in &self.sessions {
                if let (Some(sender), Some((_, _, _, kbps))) = (&s.sender, s.settings.video) {
                    let k = (f64::from(kbps) * share).round() as u32;
                    sender.set_video_kbps(k);
                    tracing::info!(%meeting, kbps = k, "video bitrate follows the link");
                }
            }
        }
    }

    fn sample(&mut self) -> Vec<(cuntong_core::telemetry::Metric, f64)> {
        use cuntong_core::telemetry::Metric;
        let now = std::time::Instant::now();
        let elapsed = self
            .last_sample
            .replace(now)
            .map_or(0.0, |t| now.duration_since(t).as_secs_f64());
        let (mut rx, mut tx, mut packets, mut lost, mut jitter) = (0, 0, 0u64, 0u64, 0u64);
        let mut frames = BTreeMap::new();
        let mut streams = 0;
        let mut content_lines = None;
        for s in self.sessions.values() {
            if let Some(r) = &s.receiver {
                rx += r.bytes.load(Ordering::Relaxed);
                for st in r.streams() {
                    if Some(st.ssrc) == s.content_in && st.video {
                        content_lines = st.size.map(|(_, h)| h);
                    }
                    packets += st.packets;
                    lost += st.lost;
                    jitter = jitter.max(st.jitter_us);
                    if st.video {
                        frames.insert(st.ssrc, st.decoded);
                    }
                }
            }
            if let Some(snd) = &s.sender {
                tx += snd.bytes.load(Ordering::Relaxed);
            }
        }
        if self.sessions.is_empty() {
            self.last = (0, 0, BTreeMap::new());
            return Vec::new();
        }
        let mut decoded_now = 0;
        for (ssrc, n) in &frames {
            let before = self.last.2.get(ssrc).copied().unwrap_or(0);
            if *n > before {
                streams += 1;
                decoded_now += n - before;
            }
        }
        let kbps = |now: u64, before: u64| {
            if elapsed > 0.0 {
                now.saturating_sub(before) as f64 * 8.0 / 1000.0 / elapsed
            } else {
                0.0
            }
        };
        let mut out = vec![
            (
                Metric::MediaLoss,
                if packets + lost > 0 {
                    100.0 * lost as f64 / (packets + lost) as f64
                } else {
                    0.0
                },
            ),
            (Metric::MediaJitter, jitter as f64 / 1000.0),
            (Metric::MediaRx, kbps(rx, self.last.0).round()),
            (Metric::MediaTx, kbps(tx, self.last.1).round()),
            (Metric::MediaFrames, decoded_now as f64),
            (Metric::MediaStreams, f64::from(streams)),
        ];
        out.extend(content_lines.map(|h| (Metric::MediaContent, f64::from(h))));
        self.last = (rx, tx, frames);
        out
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
