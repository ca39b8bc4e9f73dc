//! Sending: a site's camera (or content) and microphone, encoded, packetized, encrypted and
//! sent to its relay, at what its tier and the link allow.

use super::*;

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
                Capture::Call(call) => call_source(call, true)?,
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
                Capture::Call(call) => call_source(call, false)?,
            };
            let vol = make("volume")?;
            let audio_ssrc = cuntong_core::media::audio_ssrc(ssrc);
            let s = sound(codec);
            let enc = make(s.encoder)?;
            if codec == AudioCodec::Opus {
                enc.set_property("bitrate", (kbps * 1000) as i32);
            }
            let pay = make_with(
                s.pay,
                &[
                    ("pt", u32::from(codec.payload_type()).to_value()),
                    ("ssrc", audio_ssrc.to_value()),
                ],
            )?;
            let rate = s.rate;
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
