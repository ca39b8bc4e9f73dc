//! The media engine of a box: the sessions it takes part in, each with its receiver and, while
//! the site is a source, its senders; what the meeting and the link ask of them.

use super::*;

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

    fn over(&mut self, _meeting: cuntong_core::meeting::MeetingId) {
        // A SIP gateway's room system is hung up on.
        if let Capture::Call(call) = &self.capture {
            call.over();
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
            Capture::Call(_) => crate::readiness::CaptureDevices {
                camera: Some("a room system's picture (SIP call)".into()),
                microphone: Some("a room system's voice (SIP call)".into()),
            },
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
