//! RTCP feedback on a box, both ways. As a receiver it asks a stream's sender for a keyframe
//! when the stream starts (a site that joins, or a tile that changes, has a picture at once
//! instead of at the next periodic keyframe) and whenever its depayloader lost packets, and it
//! reports what it receives of each stream whenever the media engine takes in the link's
//! figures. As a sender it makes the
//! encoder of the stream asked about (its camera's, its content's) emit a keyframe when a
//! member of the session asks, and keeps what its receivers
//! report losing ([`Feedback::reported_loss_percent`]) for the bitrate to follow.
//!
//! Feedback is SRTCP under the session's key, authenticated and not encrypted
//! ([`cuntong_core::media::srtcp`]), sent from the site's video socket to the address the stream
//! comes from: the relays pass it back the way the stream came
//! ([`cuntong_core::media::routes::Routes::feedback`]). Incoming feedback arrives on the same
//! socket and never reaches the SRTP decrypter.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use cuntong_core::media::rtcp::{self, Report};
use cuntong_core::media::srtcp::Srtcp;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_net::gio;
use gstreamer_net::gio::prelude::*;

use super::MediaError;

/// A receiver asks for a keyframe of one stream at most this often (its relay passes on fewer).
const ASK_EVERY: Duration = Duration::from_millis(500);
/// A sender emits a keyframe on request at most this often.
const KEYFRAME_EVERY: Duration = Duration::from_millis(100);
/// Receivers' reports older than this no longer count.
const REPORTS_LAST: Duration = Duration::from_secs(6);
/// Receivers whose reports are kept, at most.
const MAX_REPORTERS: usize = 4_096;

/// An encoder that heeds keyframe requests, and when it last emitted one on request.
type Heeded = (gst::glib::WeakRef<gst::Element>, Option<Instant>);

/// One session's feedback on a box.
pub struct Feedback {
    srtcp: Mutex<Srtcp>,
    /// This site's video SSRC: what its feedback speaks as, and the stream whose receivers'
    /// reports it keeps (0 until the engine says).
    me: AtomicU32,
    /// The video source whose socket feedback goes out of.
    video_src: Mutex<Option<gst::glib::WeakRef<gst::Element>>>,
    /// Where each stream comes from (its first packet's address).
    origins: Mutex<BTreeMap<u32, SocketAddr>>,
    /// When this site last asked for a keyframe of each stream.
    asked: Mutex<BTreeMap<u32, Instant>>,
    /// The encoder of each video stream this site sends, and when it last emitted a keyframe
    /// on request.
    encoders: Mutex<BTreeMap<u32, Heeded>>,
    /// Per receiver of this site's video: its latest fraction lost (1/256) and when it came.
    reported: Mutex<BTreeMap<u32, (u8, Instant)>>,
    /// Per received stream: (packets pushed, lost) at the last report.
    counted: Mutex<BTreeMap<u32, (u64, u64)>>,
}

impl std::fmt::Debug for Feedback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feedback")
            .field("me", &self.me.load(Ordering::Relaxed))
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Feedback {
    /// Feedback under the session's SRTP master key and salt.
    pub fn new(key: &[u8]) -> Result<Feedback, MediaError> {
        // A box that starts again under the same SSRC goes on above its last SRTCP index: the
        // index starts from the clock, in 4 ms steps (it wraps after about 99 days).
        let first = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| (d.as_millis() / 4) as u32);
        let srtcp =
            Srtcp::new(key, first).map_err(|e| MediaError::Pipeline(format!("SRTCP: {e}")))?;
        Ok(Feedback {
            srtcp: Mutex::new(srtcp),
            me: AtomicU32::new(0),
            video_src: Mutex::new(None),
            origins: Mutex::default(),
            asked: Mutex::default(),
            encoders: Mutex::default(),
            reported: Mutex::default(),
            counted: Mutex::default(),
        })
    }

    /// This site's video SSRC.
    pub fn set_me(&self, ssrc: u32) {
        self.me.store(ssrc, Ordering::Relaxed);
    }

    /// Feedback goes out of `src`'s socket (the video `udpsrc`).
    pub fn send_from(&self, src: &gst::Element) {
        *lock(&self.video_src) = Some(src.downgrade());
    }

    /// Heeds keyframe requests for video stream `ssrc` with `encoder` (encoders gone are
    /// forgotten).
    pub fn heed(&self, ssrc: u32, encoder: &gst::Element) {
        let mut encoders = lock(&self.encoders);
        encoders.retain(|_, (e, _)| e.upgrade().is_some());
        encoders.insert(ssrc, (encoder.downgrade(), None));
    }

    /// Whether it knows where stream `ssrc` comes from.
    pub fn knows(&self, ssrc: u32) -> bool {
        lock(&self.origins).contains_key(&ssrc)
    }

    /// Stream `ssrc` comes from `from`.
    pub fn heard_from(&self, ssrc: u32, from: SocketAddr) {
        lock(&self.origins).insert(ssrc, from);
    }

    /// Asks the sender of stream `ssrc` for a keyframe (unless asked just before).
    pub fn ask_keyframe(&self, ssrc: u32, report: Report) {
        {
            let mut asked = lock(&self.asked);
            let now = Instant::now();
            if asked.get(&ssrc).is_some_and(|t| now < *t + ASK_EVERY) {
                return;
            }
            asked.insert(ssrc, now);
        }
        self.send(ssrc, report, true);
    }

    /// Reports on stream `ssrc`: `pushed` packets received and `lost` lost since it started,
    /// `jitter_us` of interarrival jitter.
    pub fn report(&self, ssrc: u32, pushed: u64, lost: u64, jitter_us: u64) {
        let report = {
            let mut counted = lock(&self.counted);
            let (p0, l0) = counted.insert(ssrc, (pushed, lost)).unwrap_or((0, 0));
            let (dp, dl) = (pushed.saturating_sub(p0), lost.saturating_sub(l0));
            let expected = dp + dl;
            Report {
                fraction_lost: (dl * 256)
                    .checked_div(expected)
                    .map_or(0, |f| f.min(255) as u8),
                cumulative_lost: lost.min(0x00ff_ffff) as u32,
                highest_sequence: 0,
                // In the video clock's units (90 kHz).
                jitter: (jitter_us * 90 / 1_000).min(u64::from(u32::MAX)) as u32,
            }
        };
        self.send(ssrc, report, false);
    }

    fn send(&self, about: u32, report: Report, keyframe: bool) {
        let Some(to) = lock(&self.origins).get(&about).copied() else {
            return;
        };
        let packet = rtcp::Feedback {
            from: self.me.load(Ordering::Relaxed),
            about,
            report,
            keyframe,
        }
        .encode();
        let protected = match lock(&self.srtcp).protect(&packet, false) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "cannot protect feedback");
                return;
            }
        };
        let socket = lock(&self.video_src)
            .as_ref()
            .and_then(|w| w.upgrade())
            .and_then(|s| s.property::<Option<gio::Socket>>("used-socket"));
        let Some(socket) = socket else {
            return;
        };
        let addr = gio::InetSocketAddress::from(to);
        if let Err(e) = socket.send_to(Some(&addr), &protected, gio::Cancellable::NONE) {
            tracing::debug!(%to, error = %e, "cannot send feedback");
        } else if keyframe {
            tracing::debug!(ssrc = about, %to, "asked for a keyframe");
        }
    }

    /// Feedback that arrived on the video socket: a keyframe request for a stream this site
    /// sends makes its encoder emit one; a report on its camera's video is kept. Anything not
    /// made under the session's key is dropped.
    pub fn on_rtcp(&self, datagram: &[u8]) {
        let Ok(plain) = lock(&self.srtcp).unprotect(datagram) else {
            return;
        };
        let Ok(fb) = rtcp::Feedback::decode(&plain) else {
            return;
        };
        let now = Instant::now();
        if fb.keyframe {
            self.force_keyframe(fb.about, now);
        }
        if fb.about != self.me.load(Ordering::Relaxed) || fb.about == 0 {
            return;
        }
        {
            let mut reported = lock(&self.reported);
            reported.retain(|_, (_, t)| now < *t + REPORTS_LAST);
            if reported.len() < MAX_REPORTERS || reported.contains_key(&fb.from) {
                reported.insert(fb.from, (fb.report.fraction_lost, now));
            }
        }
    }

    fn force_keyframe(&self, ssrc: u32, now: Instant) {
        let encoder = {
            let mut encoders = lock(&self.encoders);
            let Some((e, last)) = encoders.get_mut(&ssrc) else {
                return;
            };
            if last.is_some_and(|t| now < t + KEYFRAME_EVERY) {
                return;
            }
            *last = Some(now);
            e.upgrade()
        };
        if encoder.is_some_and(|e| request_keyframe(&e)) {
            tracing::debug!("keyframe on request");
        }
    }

    /// The worst loss a receiver of this site's video reported lately, in percent.
    pub fn reported_loss_percent(&self) -> f64 {
        let now = Instant::now();
        lock(&self.reported)
            .values()
            .filter(|(_, t)| now < *t + REPORTS_LAST)
            .map(|(f, _)| f64::from(*f) * 100.0 / 256.0)
            .fold(0.0, f64::max)
    }
}

/// Makes `encoder` emit a keyframe, with its parameter sets, as soon as it can: what
/// GStreamer's video encoders take as a keyframe request from downstream. False if it has no
/// way out to take the request.
pub fn request_keyframe(encoder: &gst::Element) -> bool {
    let Some(pad) = encoder.static_pad("src") else {
        return false;
    };
    pad.send_event(gst::event::CustomUpstream::new(
        gst::Structure::builder("GstForceKeyUnit")
            .field("running-time", u64::MAX)
            .field("all-headers", true)
            .field("count", 0u32)
            .build(),
    ))
}
