//! One picture and one sound for a meeting room: every video stream the box receives is drawn
//! in its tile of the layout by GStreamer's `compositor`, every audio stream mixed into one by
//! `audiomixer`. They go to the box's screen and speaker or, for tests and for people to look
//! at, to a Matroska file (H.264 and Opus).
//!
//! A live black source under the tiles keeps the picture going before the first stream comes,
//! and a live silence keeps the sound going: a room never waits on a site. Where the tiles go
//! is core's ([`cuntong_core::media::layout`]): the main source (the speaker, or whom
//! [`Room::set_main`] names) first, the others in the order they came.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use cuntong_core::media::layout::{Layout, VoiceSwitch, arrange};
use gstreamer as gst;
use gstreamer::prelude::*;

use super::{MediaError, capsfilter, make, make_with};
pub use crate::config::Display;

/// The most a site's stream may take from the network to the room (jitter buffer, decoder).
const INPUT_LATENCY: gst::ClockTime = gst::ClockTime::from_mseconds(300);

/// The composed picture: 720p at 25 frames a second.
pub const WIDTH: u32 = 1280;
pub const HEIGHT: u32 = 720;
pub const FPS: i32 = 25;

/// The most tiles a layout has (a 4x4 grid), each with its caption.
const CAPTIONS: usize = 16;

/// A picture that gave no frame for this long is taken for frozen: its tile shows a
/// placeholder instead of the last frame.
const FROZEN_AFTER_MS: u64 = 2_000;

/// How often the room looks for frozen pictures.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// The captions' font: the CJK font the package depends on, in pixels (the picture is 720p).
const FONT: &str = "Noto Sans CJK SC 20px";

/// What a tile shows under its caption besides the site's name.
const WAITING: &str = "等待图像";
const FROZEN: &str = "图像中断";

/// The tiles as they stand: the layouts (configured, the chair's, the operator's), the main
/// source, the chair's screen (the sites on it with their names), and the video streams in
/// the order they came, each with its compositor pad and the time of its last frame; the sound
/// level of each audio stream, and who the voice switch gives the main tile in the speaker
/// layout; the captions and what they show.
#[derive(Debug)]
struct Tiles {
    configured: Layout,
    chair: Option<Layout>,
    operator: Option<Layout>,
    main: Option<u32>,
    screen: Vec<(u32, String)>,
    /// The content shared (its video SSRC and caption): large, the others beside it.
    content: Option<(u32, String)>,
    order: Vec<u32>,
    pads: BTreeMap<u32, gst::Pad>,
    /// When each stream's last frame reached the compositor, in ms from `epoch` (0: none yet).
    frames: BTreeMap<u32, Arc<AtomicU64>>,
    levels: BTreeMap<u32, f64>,
    voice: VoiceSwitch<u32>,
    captions: Vec<gst::Element>,
    /// What each caption was last told: its text and where.
    captioned: Vec<(String, i32, i32)>,
    /// Where each stream's pad was last put, and whether it showed.
    placed: BTreeMap<u32, Placed>,
    epoch: std::time::Instant,
}

/// A pad's tile (none: off the layout) and whether its picture shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Placed {
    rect: Option<cuntong_core::media::layout::Rect>,
    shown: bool,
}

impl Tiles {
    /// The layout in force: the operator's at the box, else the chair's, else the configured.
    /// (While content is shared, [`Layout::with_content`] of it.)
    fn layout(&self) -> Layout {
        if self.content.is_some() {
            self.chosen().with_content()
        } else {
            self.chosen()
        }
    }

    /// The layout chosen, content or not.
    fn chosen(&self) -> Layout {
        self.operator.or(self.chair).unwrap_or(self.configured)
    }

    /// The video stream in the main tile: in the speaker layout the loudest site's, else the
    /// one named, else the first on the chair's screen, else the first to come.
    /// Never the content, which has a tile of its own.
    fn main(&self) -> Option<u32> {
        let voiced = (self.chosen() == Layout::Speaker)
            .then(|| self.voice.holder().map(|audio| audio & !1))
            .flatten();
        let content = self.content.as_ref().map(|(c, _)| *c);
        voiced
            .or(self.main)
            .filter(|m| self.pads.contains_key(m))
            .or_else(|| self.screen.first().map(|(s, _)| *s))
            .or_else(|| self.order.iter().copied().find(|s| Some(*s) != content))
    }

    /// Whether stream `ssrc` gave a frame lately.
    fn live(&self, ssrc: u32, now_ms: u64) -> bool {
        self.frames.get(&ssrc).is_some_and(|f| {
            let last = f.load(Ordering::Relaxed);
            last != 0 && now_ms.saturating_sub(last) < FROZEN_AFTER_MS
        })
    }

    /// A tile's caption: the site's name, and what the tile shows instead of a picture it does
    /// not have (none yet, or frozen).
    fn caption(&self, ssrc: u32, now_ms: u64) -> String {
        let name = self
            .screen
            .iter()
            .chain(&self.content)
            .find(|(s, _)| *s == ssrc)
            .map_or("", |(_, n)| n.as_str());
        let missing = if !self.pads.contains_key(&ssrc) {
            Some(WAITING)
        } else if !self.live(ssrc, now_ms) {
            let came = self
                .frames
                .get(&ssrc)
                .is_some_and(|f| f.load(Ordering::Relaxed) != 0);
            Some(if came { FROZEN } else { WAITING })
        } else {
            None
        };
        match (name.is_empty(), missing) {
            (_, None) => name.to_owned(),
            (true, Some(m)) => m.to_owned(),
            (false, Some(m)) => format!("{name}  {m}"),
        }
    }

    /// Moves every stream's pad to its tile and captions each tile; streams the layout has no
    /// tile for, and pictures that froze, are hidden (the tile shows the background and says
    /// why).
    fn apply(&mut self) {
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        let main = self.main();
        let content = self.content.as_ref().map(|(c, _)| *c);
        let mut sources: Vec<u32> = content.into_iter().chain(main).collect();
        for s in self
            .screen
            .iter()
            .map(|(s, _)| *s)
            .chain(self.order.iter().copied())
        {
            if !sources.contains(&s) {
                sources.push(s);
            }
        }
        let tiles = arrange(self.layout(), &sources, WIDTH, HEIGHT);
        for (ssrc, pad) in &self.pads {
            // Where the pad goes and whether it shows (a pad the layout has no tile for, or
            // whose picture froze, does not); set only when it changes, since the compositor
            // sets its scaler up again on every change.
            let wanted = match tiles.iter().find(|t| t.source == *ssrc) {
                Some(t) => Placed {
                    rect: Some(t.rect),
                    shown: self.live(*ssrc, now_ms),
                },
                None => Placed {
                    rect: None,
                    shown: false,
                },
            };
            if self.placed.get(ssrc) == Some(&wanted) {
                continue;
            }
            if let Some(r) = wanted.rect {
                pad.set_property("xpos", r.x as i32);
                pad.set_property("ypos", r.y as i32);
                pad.set_property("width", r.w as i32);
                pad.set_property("height", r.h as i32);
            }
            pad.set_property("alpha", if wanted.shown { 1.0f64 } else { 0.0 });
            self.placed.insert(*ssrc, wanted);
        }
        for i in 0..self.captions.len() {
            let wanted = match tiles.get(i) {
                // At the tile's bottom left, clear of its edges.
                Some(t) => (
                    self.caption(t.source, now_ms),
                    t.rect.x as i32 + 12,
                    (t.rect.y + t.rect.h) as i32 - 44,
                ),
                None => (String::new(), 0, 0),
            };
            if self.captioned.get(i) != Some(&wanted) {
                let c = &self.captions[i];
                c.set_property("text", wanted.0.as_str());
                c.set_property("deltax", wanted.1);
                c.set_property("deltay", wanted.2);
                if let Some(slot) = self.captioned.get_mut(i) {
                    *slot = wanted;
                }
            }
        }
    }
}

/// A room's compositor and mixer, in a receiving pipeline.
#[derive(Clone, Debug)]
pub struct Room {
    compositor: gst::Element,
    mixer: gst::Element,
    tiles: Arc<Mutex<Tiles>>,
    epoch: std::time::Instant,
    /// Writing a file: the pipeline ends with an end of stream, so that the file is whole.
    pub to_file: bool,
}

/// Sends the composed picture (H.264 constrained baseline, packetization mode 1) and the mixed
/// sound to the room system of `call`, where and as its offer asked (over SRTP if it offered
/// SRTP); what it did not offer is dropped.
fn to_call(
    pipeline: &gst::Pipeline,
    call: &crate::sip::CallMedia,
    video_end: &gst::Element,
    audio_end: &gst::Element,
) -> Result<(), MediaError> {
    let agreed = call
        .get()
        .ok_or_else(|| MediaError::Pipeline("no call to send the room to".into()))?;
    let udp = |to: std::net::SocketAddr| {
        make_with(
            "udpsink",
            &[
                ("host", to.ip().to_string().to_value()),
                ("port", i32::from(to.port()).to_value()),
                ("sync", false.to_value()),
                ("async", false.to_value()),
            ],
        )
    };
    // SRTP under the box's key of the call where the room system offered SRTP.
    let key = gst::Buffer::from_slice(agreed.key.to_vec());
    let protect = |secure: bool| {
        if secure {
            make_with("srtpenc", &[("key", key.to_value())])
        } else {
            make("identity")
        }
    };
    let video: Vec<gst::Element> = match agreed.offer.video {
        Some((to, pt)) => {
            let encoder = make_with(
                "x264enc",
                &[
                    ("bitrate", 1_000u32.to_value()),
                    ("key-int-max", 50u32.to_value()),
                ],
            )?;
            encoder.set_property_from_str("tune", "zerolatency");
            encoder.set_property_from_str("speed-preset", "ultrafast");
            let baseline = gst::Caps::builder("video/x-h264")
                .field("profile", "constrained-baseline")
                .build();
            vec![
                make("queue")?,
                encoder,
                capsfilter(&baseline)?,
                make_with(
                    "rtph264pay",
                    &[
                        ("pt", u32::from(pt).to_value()),
                        ("config-interval", (-1i32).to_value()),
                        ("mtu", 1200u32.to_value()),
                    ],
                )?,
                protect(agreed.offer.video_key.is_some())?,
                udp(to)?,
            ]
        }
        None => vec![make("fakesink")?],
    };
    let audio: Vec<gst::Element> = match agreed.offer.audio {
        Some((to, codec, pt)) => {
            let s = super::sound(codec);
            vec![
                make("queue")?,
                make(s.encoder)?,
                make_with(s.pay, &[("pt", u32::from(pt).to_value())])?,
                protect(agreed.offer.audio_key.is_some())?,
                udp(to)?,
            ]
        }
        None => vec![make("fakesink")?],
    };
    pipeline.add_many(video.iter().chain(&audio))?;
    for (end, chain) in [(video_end, &video), (audio_end, &audio)] {
        end.link(&chain[0])?;
        gst::Element::link_many(chain.iter())?;
    }
    Ok(())
}

impl Room {
    /// Adds the compositor and the mixer, their live background and silence, and the way out
    /// to `display`, to `pipeline`.
    pub fn build(
        pipeline: &gst::Pipeline,
        display: &Display,
        layout: Layout,
    ) -> Result<Room, MediaError> {
        let compositor = make("compositor")?;
        compositor.set_property_from_str("background", "black");
        let mixer = make("audiomixer")?;
        // Sites' streams come after the start, each behind its jitter buffer and decoder:
        // without room for their latency, the live aggregators would drop their every frame
        // as late and show only the background.
        for a in [&compositor, &mixer] {
            a.set_property("min-upstream-latency", INPUT_LATENCY.nseconds());
        }
        pipeline.add_many([&compositor, &mixer])?;
        keep_pace(&compositor);

        let picture = gst::Caps::builder("video/x-raw")
            .field("width", WIDTH as i32)
            .field("height", HEIGHT as i32)
            .field("framerate", gst::Fraction::new(FPS, 1))
            .build();
        let black = gst::ElementFactory::make("videotestsrc")
            .property("is-live", true)
            .property_from_str("pattern", "black")
            .build()
            .map_err(|_| MediaError::Missing("videotestsrc".into()))?;
        let black_caps = capsfilter(&picture)?;
        let silence = gst::ElementFactory::make("audiotestsrc")
            .property("is-live", true)
            .property_from_str("wave", "silence")
            .build()
            .map_err(|_| MediaError::Missing("audiotestsrc".into()))?;
        pipeline.add_many([&black, &black_caps, &silence])?;
        gst::Element::link_many([&black, &black_caps, &compositor])?;
        silence.link(&mixer)?;

        let captions = (0..CAPTIONS)
            .map(|_| caption())
            .collect::<Result<Vec<_>, _>>()?;
        let video_out = [make("videoconvert")?, capsfilter(&picture)?];
        let audio_out = [make("audioconvert")?, make("audioresample")?];
        pipeline.add_many(captions.iter().chain(&video_out).chain(&audio_out))?;
        let mut last = compositor.clone();
        for c in &captions {
            last.link_pads(Some("src"), c, Some("video_sink"))?;
            last = c.clone();
        }
        last.link(&video_out[0])?;
        video_out[0].link(&video_out[1])?;
        mixer.link(&audio_out[0])?;
        audio_out[0].link(&audio_out[1])?;
        let (video_end, audio_end) = (&video_out[1], &audio_out[1]);
        match display {
            Display::Call(call) => to_call(pipeline, call, video_end, audio_end)?,
            Display::Screen { kms } => {
                let screen = make(if *kms { "kmssink" } else { "autovideosink" })?;
                let speaker = make("autoaudiosink")?;
                pipeline.add_many([&screen, &speaker])?;
                video_end.link(&screen)?;
                audio_end.link(&speaker)?;
            }
            Display::File(_) | Display::Recording { .. } => {
                let encoder = make_with(
                    "x264enc",
                    &[
                        ("bitrate", 2_000u32.to_value()),
                        ("key-int-max", 50u32.to_value()),
                    ],
                )?;
                encoder.set_property_from_str("tune", "zerolatency");
                encoder.set_property_from_str("speed-preset", "ultrafast");
                // A box or a central too busy to encode every picture drops some, rather than
                // fall behind the meeting further with every second (and, at its end, lose
                // what it had not caught up with).
                let keep_up = make_with(
                    "queue",
                    &[
                        ("max-size-buffers", 2u32.to_value()),
                        ("max-size-bytes", 0u32.to_value()),
                        ("max-size-time", 0u64.to_value()),
                    ],
                )?;
                keep_up.set_property_from_str("leaky", "downstream");
                let video = [keep_up, encoder, make("h264parse")?, make("queue")?];
                let audio = [make("opusenc")?, make("queue")?];
                pipeline.add_many(video.iter().chain(&audio))?;
                video_end.link(&video[0])?;
                gst::Element::link_many(&video)?;
                audio_end.link(&audio[0])?;
                gst::Element::link_many(&audio)?;
                let (video_in, audio_in) = match display {
                    Display::Recording { path, segment } => {
                        let split = segments(path, *segment)?;
                        pipeline.add(&split)?;
                        let pad = |name: &str| {
                            split.request_pad_simple(name).ok_or_else(|| {
                                MediaError::Pipeline("the recording takes no input".into())
                            })
                        };
                        (pad("video")?, pad("audio_%u")?)
                    }
                    _ => {
                        let path = match display {
                            Display::File(p) => p.to_string_lossy().to_string(),
                            _ => String::new(),
                        };
                        let mux = make("matroskamux")?;
                        let file = make_with("filesink", &[("location", path.to_value())])?;
                        pipeline.add_many([&mux, &file])?;
                        mux.link(&file)?;
                        let pad = |template: &str| {
                            mux.request_pad_simple(template).ok_or_else(|| {
                                MediaError::Pipeline("the muxer takes no input".into())
                            })
                        };
                        (pad("video_%u")?, pad("audio_%u")?)
                    }
                };
                for (from, to) in [(&video[3], video_in), (&audio[1], audio_in)] {
                    let out = from
                        .static_pad("src")
                        .ok_or_else(|| MediaError::Pipeline("a queue has no output".into()))?;
                    out.link(&to)
                        .map_err(|e| MediaError::Pipeline(format!("muxer: {e:?}")))?;
                }
            }
        }
        let epoch = std::time::Instant::now();
        let tiles = Arc::new(Mutex::new(Tiles {
            configured: layout,
            chair: None,
            operator: None,
            main: None,
            screen: Vec::new(),
            content: None,
            order: Vec::new(),
            pads: BTreeMap::new(),
            frames: BTreeMap::new(),
            levels: BTreeMap::new(),
            voice: VoiceSwitch::new(),
            captioned: vec![(String::new(), 0, 0); captions.len()],
            placed: BTreeMap::new(),
            captions,
            epoch,
        }));
        watch_for_frozen(Arc::downgrade(&tiles));
        Ok(Room {
            compositor,
            mixer,
            tiles,
            epoch,
            to_file: matches!(display, Display::File(_) | Display::Recording { .. }),
        })
    }

    /// Draws decoded video stream `ssrc` (from `out`) in its tile.
    pub fn add_video(&self, ssrc: u32, out: &gst::Element) -> Result<(), MediaError> {
        let pad = self
            .compositor
            .request_pad_simple("sink_%u")
            .ok_or_else(|| MediaError::Pipeline("the compositor gave no input".into()))?;
        // Above the black background.
        pad.set_property("zorder", 1u32);
        let src = out
            .static_pad("src")
            .ok_or_else(|| MediaError::Pipeline("a video branch has no output".into()))?;
        src.link(&pad)
            .map_err(|e| MediaError::Pipeline(format!("compositor: {e:?}")))?;
        let last_frame = Arc::new(AtomicU64::new(0));
        let (seen, epoch) = (last_frame.clone(), self.epoch);
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            let ms = epoch.elapsed().as_millis() as u64;
            seen.store(ms.max(1), Ordering::Relaxed);
            gst::PadProbeReturn::Ok
        });
        let mut tiles = self.tiles.lock().unwrap_or_else(PoisonError::into_inner);
        tiles.order.push(ssrc);
        tiles.pads.insert(ssrc, pad);
        tiles.frames.insert(ssrc, last_frame);
        tiles.apply();
        Ok(())
    }

    /// Mixes a decoded audio stream (from `out`, its meter) into the room's sound.
    pub fn add_audio(&self, out: &gst::Element) -> Result<(), MediaError> {
        let pad = self
            .mixer
            .request_pad_simple("sink_%u")
            .ok_or_else(|| MediaError::Pipeline("the mixer gave no input".into()))?;
        let src = out
            .static_pad("src")
            .ok_or_else(|| MediaError::Pipeline("an audio branch has no output".into()))?;
        src.link(&pad)
            .map_err(|e| MediaError::Pipeline(format!("audio mixer: {e:?}")))?;
        Ok(())
    }

    /// Ends the room's picture and sound at one moment, whatever still flows from the sites:
    /// the end of stream goes in right after the compositor and the mixer, so the last picture
    /// is a whole one. (Ended input by input, the pictures composed between the first input's
    /// end and the last's would show the sites that ended first as black tiles.)
    pub fn finish(&self) {
        for aggregator in [&self.compositor, &self.mixer] {
            if let Some(next) = aggregator.static_pad("src").and_then(|p| p.peer()) {
                next.send_event(gst::event::Eos::new());
            }
        }
    }

    /// The operator at the box lays the tiles out anew, whatever the chair's layout.
    pub fn set_layout(&self, layout: Layout) {
        let mut tiles = self.tiles.lock().unwrap_or_else(PoisonError::into_inner);
        tiles.operator = Some(layout);
        tiles.apply();
    }

    /// The chair's screen for this box: its layout (`None`: the box's own) and the sites in its
    /// tiles, main first, as (video SSRC, name), without this box itself.
    pub fn set_screen(&self, layout: Option<Layout>, sites: Vec<(u32, String)>) {
        let mut tiles = self.tiles.lock().unwrap_or_else(PoisonError::into_inner);
        tiles.chair = layout;
        tiles.screen = sites;
        tiles.apply();
    }

    /// The content shared, as (video SSRC, caption), or none: while there is, it has the
    /// large tile and the layout in force is [`Layout::with_content`].
    pub fn set_content(&self, content: Option<(u32, String)>) {
        let mut tiles = self.tiles.lock().unwrap_or_else(PoisonError::into_inner);
        if tiles.content != content {
            tiles.content = content;
            tiles.apply();
        }
    }

    /// What each tile's caption says now, in the order of the tiles (main first).
    pub fn captions(&self) -> Vec<String> {
        let tiles = self.tiles.lock().unwrap_or_else(PoisonError::into_inner);
        let shown = tiles.layout().tiles();
        tiles
            .captioned
            .iter()
            .take(shown)
            .map(|(text, _, _)| text.clone())
            .collect()
    }

    /// Which video stream has the main tile (`None`: the first to come).
    pub fn set_main(&self, ssrc: Option<u32>) {
        let mut tiles = self.tiles.lock().unwrap_or_else(PoisonError::into_inner);
        tiles.main = ssrc;
        tiles.apply();
    }

    pub fn layout(&self) -> Layout {
        self.tiles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .layout()
    }

    /// The video stream in the main tile, if any came.
    pub fn main(&self) -> Option<u32> {
        self.tiles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .main()
    }

    /// Audio stream `ssrc` measured `db` (dBov, the loudest channel's RMS) just now: in the
    /// speaker layout, the voice switch may give its site the main tile.
    pub fn audio_level(&self, ssrc: u32, db: f64) {
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        let mut tiles = self.tiles.lock().unwrap_or_else(PoisonError::into_inner);
        tiles.levels.insert(ssrc, db);
        let before = tiles.main();
        let levels: Vec<(u32, f64)> = tiles.levels.iter().map(|(s, l)| (*s, *l)).collect();
        tiles.voice.observe(&levels, now_ms);
        if tiles.main() != before {
            tiles.apply();
        }
    }

    /// The name of the level meter of audio stream `ssrc`, and the stream a meter's name is of.
    pub fn meter_name(ssrc: u32) -> String {
        format!("level-{ssrc}")
    }

    pub fn metered(name: &str) -> Option<u32> {
        name.strip_prefix("level-")?.parse().ok()
    }
}

/// A caption over the composed picture: white text on a shaded band, placed in pixels.
fn caption() -> Result<gst::Element, MediaError> {
    let c = make_with(
        "textoverlay",
        &[
            ("font-desc", FONT.to_value()),
            ("auto-resize", false.to_value()),
            ("shaded-background", true.to_value()),
            ("xpad", 0i32.to_value()),
            ("ypad", 0i32.to_value()),
            ("text", "".to_value()),
        ],
    )?;
    c.set_property_from_str("halignment", "left");
    c.set_property_from_str("valignment", "top");
    Ok(c)
}

/// Every [`WATCH_EVERY`], hides the pictures that froze and shows those that came back, for
/// as long as the room lives.
fn watch_for_frozen(tiles: std::sync::Weak<Mutex<Tiles>>) {
    let spawned = std::thread::Builder::new()
        .name("room-watch".into())
        .spawn(move || {
            while let Some(tiles) = tiles.upgrade() {
                tiles.lock().unwrap_or_else(PoisonError::into_inner).apply();
                drop(tiles);
                std::thread::sleep(WATCH_EVERY);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot watch the room's pictures; frozen ones stay as they are");
    }
}

/// Keeps the composed picture at the meeting's pace on a box or a central too busy to compose
/// every frame: a picture that leaves the compositor later than its time (its running time and
/// the compositor's latency) by more than a frame tells the compositor so, as a synchronised
/// sink would (a QoS event), and the compositor skips the pictures it is already too late for.
/// Without it, a room short of CPU falls further behind the meeting with every second, and its
/// end cuts off the pictures it had not caught up with.
fn keep_pace(compositor: &gst::Element) {
    let Some(out) = compositor.static_pad("src") else {
        return;
    };
    let frame = gst::ClockTime::SECOND / FPS as u64;
    // The compositor's latency, asked again every second (sites come and go).
    let latency: Mutex<Option<(gst::ClockTime, std::time::Instant)>> = Mutex::new(None);
    out.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        let Some(due) = info
            .buffer()
            .and_then(|b| b.pts())
            .and_then(|pts| running_time(pad, pts))
        else {
            return gst::PadProbeReturn::Ok;
        };
        let now = pad.parent_element().and_then(|e| e.current_running_time());
        let mut known = latency.lock().unwrap_or_else(PoisonError::into_inner);
        if known.is_none_or(|(_, asked)| asked.elapsed() >= std::time::Duration::from_secs(1)) {
            let mut query = gst::query::Latency::new();
            *known = pad
                .query(&mut query)
                .then(|| (query.result().1, std::time::Instant::now()));
        }
        let late = now
            .zip(*known)
            .and_then(|(now, (latency, _))| now.checked_sub(due + latency));
        drop(known);
        if let Some(late) = late.filter(|late| *late > frame) {
            let diff = i64::try_from(late.nseconds()).unwrap_or(i64::MAX);
            pad.send_event(gst::event::Qos::new(
                gst::QOSType::Underflow,
                1.0,
                diff,
                due,
            ));
        }
        gst::PadProbeReturn::Ok
    });
}

/// The running time of `pts` in the segment that `pad` carries.
fn running_time(pad: &gst::Pad, pts: gst::ClockTime) -> Option<gst::ClockTime> {
    let event = pad.sticky_event::<gst::event::Segment>(0)?;
    event
        .segment()
        .downcast_ref::<gst::ClockTime>()?
        .to_running_time(pts)
}

/// Matroska files of at most `every` each, the first at `path` (a new one begins at a
/// keyframe, which it asks the encoder for).
fn segments(
    path: &std::path::Path,
    every: std::time::Duration,
) -> Result<gst::Element, MediaError> {
    let split = make_with(
        "splitmuxsink",
        &[
            ("muxer", make("matroskamux")?.to_value()),
            ("max-size-time", (every.as_nanos() as u64).to_value()),
            ("send-keyframe-requests", true.to_value()),
        ],
    )?;
    let path = path.to_path_buf();
    split.connect("format-location", false, move |args| {
        let n = args.get(1).and_then(|v| v.get::<u32>().ok()).unwrap_or(0);
        let file = crate::config::recording_segment(&path, n);
        Some(file.to_string_lossy().to_string().to_value())
    });
    Ok(split)
}
