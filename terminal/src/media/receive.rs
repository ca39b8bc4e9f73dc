//! A site's incoming media: every stream its relay sends it, through SRTP and a branch per
//! stream (jitter buffer, depayloader, decoder) into the room or discarded, with counters per
//! stream; the receive sockets answer consent probes and carry RTCP feedback
//! ([`super::feedback`]). Also the plain-RTP view of one stream that a relay box serves a
//! player ([`Unwrap`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use cuntong_core::media::VIDEO_PT;
use cuntong_core::media::consent::Consent;
use cuntong_core::media::stun::{self, Message, Responder};
use cuntong_core::meeting::AudioCodec;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_net::gio;
use gstreamer_net::gio::prelude::*;

use super::feedback::Feedback;
use super::{
    FrameLog, MediaError, Playback, count_bytes, first_available, init, make, make_with, room,
    sound, srtp_decrypter, srtp_key, watch_bus, watch_bus_of,
};

/// What arrived of one stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    pub ssrc: u32,
    pub video: bool,
    /// Frames (video) or audio buffers decoded.
    pub decoded: u64,
    pub packets: u64,
    pub lost: u64,
    /// Mean interarrival jitter, microseconds.
    pub jitter_us: u64,
    /// The size of its decoded pictures (width, height), once one was decoded.
    pub size: Option<(u32, u32)>,
}

/// The branches of a receiver: one per (is video, SSRC).
type Branches = Mutex<BTreeMap<(bool, u32), Arc<Branch>>>;

#[derive(Debug, Default)]
struct Branch {
    decoded: AtomicU64,
    jitterbuffer: Mutex<Option<gst::Element>>,
    /// When each frame came out of the decoder, if the receiver logs frames.
    times: FrameLog,
    /// The decoder's output, whose caps say the pictures' size.
    decoded_out: Mutex<Option<gst::Pad>>,
}

/// A site's incoming media: every stream the relay sends it, decoded.
#[derive(Debug)]
pub struct Receiver {
    pipeline: gst::Pipeline,
    /// The UDP sources: video, audio.
    sources: Vec<gst::Element>,
    /// Whether the address this site sends to wants its media (answers its probes).
    consent: Arc<Mutex<Consent>>,
    epoch: std::time::Instant,
    branches: Arc<Branches>,
    pub bytes: Arc<AtomicU64>,
    video_port: u16,
    audio_port: u16,
    log_frames: Arc<std::sync::atomic::AtomicBool>,
    /// The room's picture and sound, unless the streams are discarded.
    room: Option<room::Room>,
    /// RTCP feedback: keyframe requests and reports out, requests for this site's video in.
    pub(super) feedback: Arc<Feedback>,
}

impl Receiver {
    /// Listens on `video_port` and `video_port + 2` (0: any free ports) for SRTP under `key`;
    /// the jitter buffers hold `latency_ms`.
    pub fn start(
        video_port: u16,
        key: &[u8],
        playback: Playback,
        latency_ms: u32,
        audio: AudioCodec,
    ) -> Result<Receiver, MediaError> {
        let any = SocketAddr::from(([0, 0, 0, 0], video_port));
        Receiver::start_at(any, key, playback, latency_ms, audio)
    }

    /// As [`Receiver::start`], on the address and port of `video` (port 0: any free ports).
    pub fn start_at(
        video: SocketAddr,
        key: &[u8],
        playback: Playback,
        latency_ms: u32,
        audio: AudioCodec,
    ) -> Result<Receiver, MediaError> {
        let (video_addr, video_port) = (video, video.port());
        init()?;
        let feedback = Arc::new(Feedback::new(key)?);
        let key = srtp_key(key)?;
        let pipeline = gst::Pipeline::with_name("receive");
        let branches: Arc<Branches> = Arc::default();
        let bytes = Arc::new(AtomicU64::new(0));
        let log_frames = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let audio_port = if video_port == 0 { 0 } else { video_port + 2 };
        let mut sources = Vec::with_capacity(2);
        let consent = Arc::new(Mutex::new(Consent::new()));
        let epoch = std::time::Instant::now();
        let room = match playback {
            Playback::Discard => None,
            Playback::Room { display, layout } => {
                Some(room::Room::build(&pipeline, &display, layout)?)
            }
        };
        for (video, port) in [(true, video_port), (false, audio_port)] {
            let (src, dec) = srtp_input(port, video, audio, &key)?;
            src.set_property("address", video_addr.ip().to_string());
            let heard = video.then(|| feedback.clone());
            if video {
                feedback.send_from(&src);
            }
            answer_consent_probes(&src, consent.clone(), epoch, heard);
            if let Some(pad) = src.static_pad("src") {
                count_bytes(&pad, bytes.clone());
            }
            let demux = make("rtpssrcdemux")?;
            pipeline.add_many([&src, &dec, &demux])?;
            src.link(&dec)?;
            dec.link_pads(Some("rtp_src"), &demux, Some("sink"))?;
            let (pl, br, log) = (pipeline.downgrade(), branches.clone(), log_frames.clone());
            let room = room.clone();
            let feedback = feedback.clone();
            demux.connect("new-ssrc-pad", false, move |args| {
                let ssrc = args.get(1).and_then(|v| v.get::<u32>().ok())?;
                let pad = args.get(2).and_then(|v| v.get::<gst::Pad>().ok())?;
                let pipeline = pl.upgrade()?;
                if let Err(e) = add_branch(
                    &pipeline,
                    &pad,
                    (ssrc, video, audio),
                    room.as_ref(),
                    latency_ms,
                    &br,
                    &log,
                    &feedback,
                ) {
                    tracing::error!(ssrc, error = %e, "cannot decode a new stream");
                }
                None
            });
            sources.push(src);
        }
        watch_bus_of(&pipeline, "receive", room.clone());
        pipeline.set_state(gst::State::Playing)?;
        let (video_port, audio_port) = (bound_port(&sources, 0), bound_port(&sources, 1));
        Ok(Receiver {
            pipeline,
            sources,
            consent,
            epoch,
            branches,
            bytes,
            video_port,
            audio_port,
            log_frames,
            room,
            feedback,
        })
    }

    /// This site's video SSRC: its feedback speaks as it, and heeds keyframe requests for it.
    pub fn identify(&self, ssrc: u32) {
        self.feedback.set_me(ssrc);
    }

    /// Reports on every video stream received to where it comes from (call every second or
    /// so; the relays pass on one report per stream a second).
    pub fn report(&self) {
        for s in self.streams().into_iter().filter(|s| s.video) {
            self.feedback.report(s.ssrc, s.packets, s.lost, s.jitter_us);
        }
    }

    /// The worst loss a receiver of this site's video reported lately, in percent.
    pub fn reported_loss_percent(&self) -> f64 {
        self.feedback.reported_loss_percent()
    }

    /// The room's picture and sound, unless this receiver discards what it receives.
    pub fn room(&self) -> Option<&room::Room> {
        self.room.as_ref()
    }

    /// Whether `to` (the relay this site sends to) wants its media: probes it (from the video
    /// socket, whose answers come back here) as often as consent asks, and says whether it
    /// answered lately. A relay address comes from another terminal's join, so it could be
    /// anyone's: media goes there only while it answers.
    pub fn consented(&self, to: SocketAddr) -> bool {
        let now = self.epoch.elapsed().as_millis() as u64;
        let probes = {
            let mut c = self.consent.lock().unwrap_or_else(PoisonError::into_inner);
            c.watch([to]);
            c.probes(now, rand::random)
        };
        if let Some(socket) = self.socket(true) {
            for (a, probe) in probes {
                let a = gio::InetSocketAddress::from(a);
                if let Err(e) = socket.send_to(Some(&a), probe, gio::Cancellable::NONE) {
                    tracing::debug!(error = %e, "cannot probe the relay");
                }
            }
        }
        self.consent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .granted(&to, now)
    }

    /// The socket video (or audio) arrives on: the site's streams leave from it too.
    pub fn socket(&self, video: bool) -> Option<gio::Socket> {
        self.sources
            .get(usize::from(!video))
            .and_then(|s| s.property::<Option<gio::Socket>>("used-socket"))
    }

    /// From now on, keep the time each decoded frame comes out (for latency measurements).
    pub fn log_frames(&self) {
        self.log_frames.store(true, Ordering::Relaxed);
    }

    /// When each video frame of stream `ssrc` was decoded, since `log_frames`.
    pub fn frame_times(&self, ssrc: u32) -> Vec<std::time::Instant> {
        let branches = self.branches.lock().unwrap_or_else(PoisonError::into_inner);
        branches.get(&(true, ssrc)).map_or(Vec::new(), |b| {
            b.times
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        })
    }

    pub fn video_port(&self) -> u16 {
        self.video_port
    }

    /// Sizes each stream's jitter buffer from the jitter measured on it: three times the mean
    /// interarrival jitter plus 20 ms for the decoder, between 30 and 200 ms (a fixed 200 ms
    /// would be most of a meeting's latency budget on a good link).
    pub fn fit_latency(&self) {
        let branches = self.branches.lock().unwrap_or_else(PoisonError::into_inner);
        for b in branches.values() {
            let jb = b
                .jitterbuffer
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let Some(jb) = jb.as_ref() else { continue };
            let stats = jb.property::<gst::Structure>("stats");
            let jitter_ms = stats.get::<u64>("avg-jitter").unwrap_or(0) / 1_000_000;
            let want = (3 * jitter_ms + 20).clamp(30, 200) as u32;
            let now = jb.property::<u32>("latency");
            if now.abs_diff(want) >= 10 {
                jb.set_property("latency", want);
            }
        }
    }

    pub fn audio_port(&self) -> u16 {
        self.audio_port
    }

    /// Frames of video decoded so far from stream `ssrc`.
    pub fn frames(&self, ssrc: u32) -> u64 {
        self.stream(true, ssrc).map_or(0, |s| s.decoded)
    }

    /// Audio buffers decoded so far from stream `ssrc` (its audio SSRC).
    pub fn audio_buffers(&self, ssrc: u32) -> u64 {
        self.stream(false, ssrc).map_or(0, |s| s.decoded)
    }

    fn stream(&self, video: bool, ssrc: u32) -> Option<StreamStats> {
        self.streams()
            .into_iter()
            .find(|s| s.video == video && s.ssrc == ssrc)
    }

    /// Every stream that arrived.
    pub fn streams(&self) -> Vec<StreamStats> {
        let branches = self.branches.lock().unwrap_or_else(PoisonError::into_inner);
        branches
            .iter()
            .map(|(&(video, ssrc), b)| {
                let mut s = StreamStats {
                    ssrc,
                    video,
                    decoded: b.decoded.load(Ordering::Relaxed),
                    ..StreamStats::default()
                };
                let jb = b
                    .jitterbuffer
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if let Some(stats) = jb.as_ref().map(|j| j.property::<gst::Structure>("stats")) {
                    s.packets = stats.get::<u64>("num-pushed").unwrap_or(0);
                    s.lost = stats.get::<u64>("num-lost").unwrap_or(0);
                    s.jitter_us = stats.get::<u64>("avg-jitter").unwrap_or(0) / 1000;
                }
                let out = b.decoded_out.lock().unwrap_or_else(PoisonError::into_inner);
                s.size = out
                    .as_ref()
                    .filter(|_| video)
                    .and_then(gst::Pad::current_caps)
                    .and_then(|caps| {
                        let st = caps.structure(0)?;
                        let w = st.get::<i32>("width").ok()?;
                        let h = st.get::<i32>("height").ok()?;
                        Some((u32::try_from(w).ok()?, u32::try_from(h).ok()?))
                    });
                s
            })
            .collect()
    }
}

/// How long a room's file may take to be finished after its receiver stopped (the encoder's
/// backlog on a busy box).
const FINISH_WITHIN: gst::ClockTime = gst::ClockTime::from_seconds(30);

impl Drop for Receiver {
    fn drop(&mut self) {
        let Some(room) = self.room.as_ref().filter(|r| r.to_file) else {
            let _ = self.pipeline.set_state(gst::State::Null);
            return;
        };
        // The receive sockets go at once (a new session may want the port); the room's file
        // is whole (its index and duration written) once the end of its streams has gone
        // through the encoder and the muxer, which a thread of its own waits for, so that
        // neither the caller nor the next session waits.
        for src in &self.sources {
            let _ = src.set_state(gst::State::Null);
        }
        room.finish();
        let pipeline = self.pipeline.clone();
        let waiting = std::thread::Builder::new()
            .name("room-finish".into())
            .spawn(move || {
                if let Some(bus) = pipeline.bus() {
                    let ended = bus.timed_pop_filtered(
                        FINISH_WITHIN,
                        &[gst::MessageType::Eos, gst::MessageType::Error],
                    );
                    if ended.is_none() {
                        tracing::warn!(within = %FINISH_WITHIN, "the room's file was not finished");
                    }
                }
                let _ = pipeline.set_state(gst::State::Null);
            });
        if waiting.is_err() {
            let _ = self.pipeline.set_state(gst::State::Null);
        }
    }
}

/// The port the `i`th of `sources` (UDP sources, playing) bound: with port 0, a free one.
fn bound_port(sources: &[gst::Element], i: usize) -> u16 {
    sources
        .get(i)
        .map_or(0, |s| u16::try_from(s.property::<i32>("port")).unwrap_or(0))
}

/// A UDP source of SRTP on `port` (0: a free one) and its decrypter, which takes `key` for
/// every SSRC that arrives; not yet in a pipeline.
fn srtp_input(
    port: u16,
    video: bool,
    audio: AudioCodec,
    key: &gst::Buffer,
) -> Result<(gst::Element, gst::Element), MediaError> {
    let caps = if video {
        gst::Caps::builder("application/x-srtp")
            .field("media", "video")
            .field("clock-rate", 90_000i32)
            .field("encoding-name", "H264")
            .field("payload", i32::from(VIDEO_PT))
            .build()
    } else {
        let s = sound(audio);
        gst::Caps::builder("application/x-srtp")
            .field("media", "audio")
            .field("clock-rate", s.rate)
            .field("encoding-name", s.name)
            .field("payload", i32::from(audio.payload_type()))
            .build()
    };
    let src = make_with(
        "udpsrc",
        &[
            ("port", (i32::from(port)).to_value()),
            ("caps", caps.to_value()),
        ],
    )?;
    let dec = srtp_decrypter(key)?;
    Ok((src, dec))
}

/// Makes a UDP source handle STUN itself, from its own socket: it answers Binding Requests
/// (its relay's consent probes) at a bounded rate, records in `consent` the answers to this
/// site's own probes, and drops every STUN datagram before it reaches the decrypter.
fn answer_consent_probes(
    src: &gst::Element,
    consent: Arc<Mutex<Consent>>,
    epoch: std::time::Instant,
    feedback: Option<Arc<Feedback>>,
) {
    let Some(pad) = src.static_pad("src") else {
        return;
    };
    let udpsrc = src.downgrade();
    let responder = Mutex::new(Responder::new());
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        let Some(gst::PadProbeData::Buffer(buffer)) = &info.data else {
            return gst::PadProbeReturn::Ok;
        };
        let Ok(data) = buffer.map_readable() else {
            return gst::PadProbeReturn::Ok;
        };
        let sender = || {
            buffer
                .meta::<gstreamer_net::NetAddressMeta>()
                .and_then(|m| m.addr().downcast::<gio::InetSocketAddress>().ok())
        };
        if !stun::is_stun(data.as_slice()) {
            let Some(feedback) = &feedback else {
                return gst::PadProbeReturn::Ok;
            };
            return match cuntong_core::media::rtp::classify(data.as_slice()) {
                // Feedback for this site's own video: never for the SRTP decrypter.
                Ok(cuntong_core::media::rtp::Packet::Rtcp { .. }) => {
                    feedback.on_rtcp(data.as_slice());
                    gst::PadProbeReturn::Drop
                }
                Ok(cuntong_core::media::rtp::Packet::Rtp { ssrc, .. }) => {
                    if !feedback.knows(ssrc)
                        && let Some(from) = sender()
                    {
                        feedback.heard_from(ssrc, SocketAddr::from(from));
                    }
                    gst::PadProbeReturn::Ok
                }
                Err(_) => gst::PadProbeReturn::Ok,
            };
        }
        let Some(from) = sender() else {
            return gst::PadProbeReturn::Drop;
        };
        let now_ms = epoch.elapsed().as_millis() as u64;
        match stun::decode(data.as_slice()) {
            Ok(Message::BindingRequest { .. }) => {
                let answer = responder
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .answer(data.as_slice(), SocketAddr::from(from.clone()), now_ms);
                let socket = udpsrc
                    .upgrade()
                    .and_then(|s| s.property::<Option<gio::Socket>>("used-socket"));
                if let (Some(answer), Some(socket)) = (answer, socket)
                    && let Err(e) =
                        socket.send_to(Some(&from), answer.as_bytes(), gio::Cancellable::NONE)
                {
                    tracing::debug!(error = %e, "cannot answer a consent probe");
                }
            }
            Ok(Message::BindingSuccess { id }) => {
                consent
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .answered(SocketAddr::from(from), &id, now_ms);
            }
            Err(_) => {}
        }
        gst::PadProbeReturn::Drop
    });
}

/// A view of one stream for a player: SRTP in (the relay routes the stream here), plain RTP
/// out to the viewer (video to its port, audio two ports up). A player cannot ask for a
/// keyframe, and it starts when its operator starts it, after the view opened: so the view
/// asks the stream's sender for one every second during its first `VIEW_WARM_UP`, and on
/// until the parameter sets of one have passed. A player started then has a picture within a
/// second, not at the sender's next periodic keyframe.
#[derive(Debug)]
pub struct Unwrap {
    pipeline: gst::Pipeline,
    pub video_in: u16,
    pub audio_in: u16,
}

impl Unwrap {
    pub fn start(
        key: &[u8],
        audio: AudioCodec,
        ssrc: u32,
        to: SocketAddr,
    ) -> Result<Unwrap, MediaError> {
        init()?;
        let feedback = Arc::new(Feedback::new(key)?);
        let key = srtp_key(key)?;
        let pipeline = gst::Pipeline::with_name("view");
        let mut sources = Vec::new();
        for (video, port) in [(true, to.port()), (false, to.port().saturating_add(2))] {
            let (src, dec) = srtp_input(0, video, audio, &key)?;
            // The relay of this box sends here; it needs no consent, but STUN and the
            // relay's RTCP must not reach the decrypter.
            let heard = video.then(|| feedback.clone());
            if video {
                feedback.send_from(&src);
                ask_until_parameter_sets(&dec, ssrc, feedback.clone());
            }
            answer_consent_probes(&src, Arc::default(), std::time::Instant::now(), heard);
            let sink = make_with(
                "udpsink",
                &[
                    ("host", to.ip().to_string().to_value()),
                    ("port", i32::from(port).to_value()),
                    ("sync", false.to_value()),
                    ("async", false.to_value()),
                ],
            )?;
            pipeline.add_many([&src, &dec, &sink])?;
            src.link(&dec)?;
            dec.link_pads(Some("rtp_src"), &sink, Some("sink"))?;
            sources.push(src);
        }
        watch_bus(&pipeline, "view");
        pipeline.set_state(gst::State::Playing)?;
        Ok(Unwrap {
            video_in: bound_port(&sources, 0),
            audio_in: bound_port(&sources, 1),
            pipeline,
        })
    }
}

impl Drop for Unwrap {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// How long a view keeps asking for keyframes, from its first packet: a player is started
/// within it.
pub const VIEW_WARM_UP: std::time::Duration = std::time::Duration::from_secs(10);

/// Asks the sender of video stream `ssrc`, as packets pass `dec`, for a keyframe every second
/// during [`VIEW_WARM_UP`] from the first, and after it until one carrying H.264 parameter
/// sets has passed.
fn ask_until_parameter_sets(dec: &gst::Element, ssrc: u32, feedback: Arc<Feedback>) {
    let Some(pad) = dec.static_pad("rtp_src") else {
        return;
    };
    // (first packet, last request, parameter sets seen)
    let asked = Mutex::new((
        None::<std::time::Instant>,
        None::<std::time::Instant>,
        false,
    ));
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        let Some(gst::PadProbeData::Buffer(buffer)) = &info.data else {
            return gst::PadProbeReturn::Ok;
        };
        let now = std::time::Instant::now();
        let mut asked = asked.lock().unwrap_or_else(PoisonError::into_inner);
        let (first, last, seen) = &mut *asked;
        let first = *first.get_or_insert(now);
        *seen |= buffer.map_readable().is_ok_and(|data| {
            cuntong_core::media::rtp::payload(data.as_slice())
                .is_some_and(cuntong_core::media::rtp::h264_has_parameter_sets)
        });
        if *seen && now >= first + VIEW_WARM_UP {
            tracing::debug!(ssrc, "a view has had its keyframes");
            return gst::PadProbeReturn::Remove;
        }
        if last.is_none_or(|t| now >= t + std::time::Duration::from_secs(1)) {
            *last = Some(now);
            feedback.ask_keyframe(ssrc, Default::default());
        }
        gst::PadProbeReturn::Ok
    });
}

/// One arriving stream: jitter buffer → depayload → decode → sink, counting decoded buffers.
#[allow(clippy::too_many_arguments)]
/// Decodes stream `ssrc` (video or audio, in `codec`) from `pad` into `room`, or discards it.
fn add_branch(
    pipeline: &gst::Pipeline,
    pad: &gst::Pad,
    (ssrc, video, codec): (u32, bool, AudioCodec),
    room: Option<&room::Room>,
    latency_ms: u32,
    branches: &Branches,
    log_frames: &Arc<std::sync::atomic::AtomicBool>,
    feedback: &Arc<Feedback>,
) -> Result<(), MediaError> {
    let jb = make_with("rtpjitterbuffer", &[("latency", latency_ms.to_value())])?;
    let (depay, decoder) = if video {
        // The depayloader asks upstream for a keyframe when packets were lost; the request
        // goes to the stream's sender as feedback.
        let depay = make_with("rtph264depay", &[("request-keyframe", true.to_value())])?;
        if let Some(pad) = jb.static_pad("src") {
            let feedback = feedback.clone();
            pad.add_probe(gst::PadProbeType::EVENT_UPSTREAM, move |_, info| {
                if let Some(gst::PadProbeData::Event(e)) = &info.data
                    && e.structure().is_some_and(|s| s.name() == "GstForceKeyUnit")
                {
                    feedback.ask_keyframe(ssrc, Default::default());
                }
                gst::PadProbeReturn::Ok
            });
        }
        (
            depay,
            first_available(&["v4l2h264dec", "avdec_h264", "openh264dec"])?,
        )
    } else {
        let s = sound(codec);
        (make(s.depay)?, make(s.decoder)?)
    };
    // Into the room: converted for the compositor or the mixer. Discarded: a sink that, added
    // to a playing pipeline, does not wait for its first buffer (preroll), or the whole
    // pipeline would pause until a stream joined mid-way gave its first keyframe.
    let tail: Vec<gst::Element> = match (room, video) {
        (Some(_), true) => vec![make("videoconvert")?],
        (Some(_), false) => vec![
            make("audioconvert")?,
            make("audioresample")?,
            gst::ElementFactory::make("level")
                .name(room::Room::meter_name(ssrc))
                .property("interval", 100_000_000u64)
                .property("post-messages", true)
                .build()
                .map_err(|_| MediaError::Missing("level".into()))?,
        ],
        (None, _) => vec![make_with(
            "fakesink",
            &[("sync", false.to_value()), ("async", false.to_value())],
        )?],
    };
    let branch = Arc::new(Branch::default());
    if let Some(out) = decoder.static_pad("src") {
        *branch
            .decoded_out
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(out.clone());
        let b = branch.clone();
        let log = log_frames.clone();
        out.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            b.decoded.fetch_add(1, Ordering::Relaxed);
            if log.load(Ordering::Relaxed) {
                b.times
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(std::time::Instant::now());
            }
            gst::PadProbeReturn::Ok
        });
    }
    let chain: Vec<gst::Element> = [jb.clone(), depay, decoder]
        .into_iter()
        .chain(tail)
        .collect();
    pipeline.add_many(&chain)?;
    gst::Element::link_many(&chain)?;
    if let (Some(room), Some(out)) = (room, chain.last()) {
        if video {
            room.add_video(ssrc, out)?;
        } else {
            room.add_audio(out)?;
        }
    }
    for e in &chain {
        e.sync_state_with_parent()?;
    }
    let sinkpad = jb
        .static_pad("sink")
        .ok_or_else(|| MediaError::Pipeline("jitter buffer has no sink pad".into()))?;
    pad.link(&sinkpad)
        .map_err(|e| MediaError::Pipeline(format!("{e:?}")))?;
    *branch
        .jitterbuffer
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = Some(jb);
    branches
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert((video, ssrc), branch);
    tracing::info!(ssrc, video, "receiving a new stream");
    // A stream that starts here needs a keyframe to decode from: ask at once rather than
    // wait for the sender's next one.
    if video {
        feedback.ask_keyframe(ssrc, Default::default());
    }
    Ok(())
}
