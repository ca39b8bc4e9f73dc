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

/// The tiles as they stand: the layout, the main source, and the video streams in the order
/// they came, each with its compositor pad; the sound level of each audio stream, and who the
/// voice switch gives the main tile in the speaker layout.
#[derive(Debug)]
struct Tiles {
    layout: Layout,
    main: Option<u32>,
    order: Vec<u32>,
    pads: BTreeMap<u32, gst::Pad>,
    levels: BTreeMap<u32, f64>,
    voice: VoiceSwitch<u32>,
}

impl Tiles {
    /// The video stream in the main tile: in the speaker layout the loudest site's, else the
    /// one named, else the first to come.
    fn main(&self) -> Option<u32> {
        let voiced = (self.layout == Layout::Speaker)
            .then(|| self.voice.holder().map(|audio| audio & !1))
            .flatten();
        voiced
            .or(self.main)
            .filter(|m| self.pads.contains_key(m))
            .or_else(|| self.order.first().copied())
    }

    /// Moves every stream's pad to its tile; streams the layout has no tile for are hidden.
    fn apply(&self) {
        let main = self.main();
        let mut sources: Vec<u32> = main.into_iter().collect();
        sources.extend(self.order.iter().filter(|s| Some(**s) != main));
        let tiles = arrange(self.layout, &sources, WIDTH, HEIGHT);
        for (ssrc, pad) in &self.pads {
            match tiles.iter().find(|t| t.source == *ssrc) {
                Some(t) => {
                    pad.set_property("xpos", t.rect.x as i32);
                    pad.set_property("ypos", t.rect.y as i32);
                    pad.set_property("width", t.rect.w as i32);
                    pad.set_property("height", t.rect.h as i32);
                    pad.set_property("alpha", 1.0f64);
                }
                None => pad.set_property("alpha", 0.0f64),
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

        let video_out = [make("videoconvert")?, capsfilter(&picture)?];
        let audio_out = [make("audioconvert")?, make("audioresample")?];
        pipeline.add_many(video_out.iter().chain(&audio_out))?;
        compositor.link(&video_out[0])?;
        video_out[0].link(&video_out[1])?;
        mixer.link(&audio_out[0])?;
        audio_out[0].link(&audio_out[1])?;
        let (video_end, audio_end) = (&video_out[1], &audio_out[1]);
        match display {
            Display::Screen { kms } => {
                let screen = make(if *kms { "kmssink" } else { "autovideosink" })?;
                let speaker = make("autoaudiosink")?;
                pipeline.add_many([&screen, &speaker])?;
                video_end.link(&screen)?;
                audio_end.link(&speaker)?;
            }
            Display::File(path) => {
                let encoder = make_with(
                    "x264enc",
                    &[
                        ("bitrate", 2_000u32.to_value()),
                        ("key-int-max", 50u32.to_value()),
                    ],
                )?;
                encoder.set_property_from_str("tune", "zerolatency");
                encoder.set_property_from_str("speed-preset", "ultrafast");
                let video = [encoder, make("h264parse")?, make("queue")?];
                let audio = [make("opusenc")?, make("queue")?];
                let mux = make("matroskamux")?;
                let file = make_with(
                    "filesink",
                    &[("location", path.to_string_lossy().to_string().to_value())],
                )?;
                pipeline.add_many(video.iter().chain(&audio).chain([&mux, &file]))?;
                video_end.link(&video[0])?;
                gst::Element::link_many(&video)?;
                audio_end.link(&audio[0])?;
                gst::Element::link_many(&audio)?;
                video[2].link(&mux)?;
                audio[1].link(&mux)?;
                mux.link(&file)?;
            }
        }
        Ok(Room {
            compositor,
            mixer,
            tiles: Arc::new(Mutex::new(Tiles {
                layout,
                main: None,
                order: Vec::new(),
                pads: BTreeMap::new(),
                levels: BTreeMap::new(),
                voice: VoiceSwitch::new(),
            })),
            epoch: std::time::Instant::now(),
            to_file: matches!(display, Display::File(_)),
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
        let mut tiles = self.tiles.lock().unwrap_or_else(PoisonError::into_inner);
        tiles.order.push(ssrc);
        tiles.pads.insert(ssrc, pad);
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

    /// Lays the tiles out anew.
    pub fn set_layout(&self, layout: Layout) {
        let mut tiles = self.tiles.lock().unwrap_or_else(PoisonError::into_inner);
        tiles.layout = layout;
        tiles.apply();
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
            .layout
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
