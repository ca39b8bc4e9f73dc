//! What a meeting needs from the rest of the box: a media engine that sends and receives a
//! session's sound and pictures, and the people at the box who accept or decline invitations.

use cuntong_core::media::layout::Layout;
use cuntong_core::meeting::{Applied, MediaPlan, MediaProfile, MeetingId, MeetingState, Screen};

/// Sends and receives a session's audio and video. The GStreamer engine implements it with
/// real pipelines; [`SignallingOnly`] takes part in the signalling without media.
pub trait MediaEngine: Send {
    fn start(&mut self, meeting: MeetingId, plan: &MediaPlan, profile: &MediaProfile);
    /// Mute or unmute the microphone, change role, show another site.
    fn apply(&mut self, meeting: MeetingId, applied: &Applied);
    fn stop(&mut self, meeting: MeetingId);
    /// The session is over for this box (it left, declined, or the session ended), after its
    /// media stopped: a SIP gateway hangs up on its room system.
    fn over(&mut self, _meeting: MeetingId) {}
    /// What it captures with (for the readiness check): by default the box's own devices.
    fn capture_devices(&self) -> crate::readiness::CaptureDevices {
        crate::readiness::local_devices()
    }
    /// What the media did since the last sample (`media.*` metrics); nothing without media.
    fn sample(&mut self) -> Vec<(cuntong_core::telemetry::Metric, f64)> {
        Vec::new()
    }
    /// On a relay box: strips SRTP from stream `ssrc` of `meeting` for a viewer at `to`; the
    /// local addresses (video, audio) the relay routes the stream to. `None` without media.
    fn open_view(
        &mut self,
        _meeting: MeetingId,
        _ssrc: u32,
        _to: std::net::SocketAddr,
    ) -> Option<(std::net::SocketAddr, std::net::SocketAddr)> {
        None
    }
    fn close_view(&mut self, _meeting: MeetingId, _ssrc: u32, _to: std::net::SocketAddr) {}
    /// The link now (keep-alive round trip, ping loss), every [`MediaEngine::link_every`]
    /// while in a session: adapt the bitrate and the jitter buffers.
    fn link(&mut self, _rtt_ms: Option<f64>, _loss_percent: f64) {}
    /// How often it wants [`MediaEngine::link`] while in a session; `None` if it has no use
    /// for it (no media), and the terminal's meeting clock then runs only when the
    /// signalling has something due.
    fn link_every(&self) -> Option<std::time::Duration> {
        Some(std::time::Duration::from_secs(1))
    }
    /// Lays the room's picture of `meeting` out in `layout`; false if there is none.
    fn set_layout(&mut self, _meeting: MeetingId, _layout: Layout) -> bool {
        false
    }
    /// The chair's screen of a session this box is in (after its media started, and on every
    /// change): lay the room out by it, send while this site is on it, and send content
    /// while the screen's content is this site's.
    fn screen(&mut self, _screen: &Screen) {}
    /// Whether the box has a second video source to share as content.
    fn has_content(&self) -> bool {
        false
    }
}

/// Takes part in meetings without sending or receiving media (boxes without a camera, and
/// builds without the media engine).
#[derive(Clone, Copy, Debug, Default)]
pub struct SignallingOnly;

impl MediaEngine for SignallingOnly {
    fn start(&mut self, meeting: MeetingId, plan: &MediaPlan, profile: &MediaProfile) {
        tracing::info!(%meeting, ssrc = plan.ssrc, tier = plan.tier.as_str(), profile = %profile.name, "media plan received (signalling only)");
    }

    fn apply(&mut self, meeting: MeetingId, applied: &Applied) {
        tracing::debug!(%meeting, muted = applied.muted, role = applied.role.as_str(), "meeting state applied");
    }

    fn stop(&mut self, meeting: MeetingId) {
        tracing::info!(%meeting, "media stopped");
    }

    fn link_every(&self) -> Option<std::time::Duration> {
        None
    }
}

/// What the people at the box do on their own: a real box leaves everything to its
/// operator's requests ([`Unattended`]); the simulator declines or raises hands.
pub trait Console: Send {
    /// A new invitation arrived: accept, decline, or leave it to the accept policy.
    fn invited(&mut self, _state: &MeetingState) -> Option<Invitation> {
        None
    }
    /// The site joined a live session: raise the hand?
    fn joined(&mut self, _state: &MeetingState) -> bool {
        false
    }
}

/// A console's answer to an invitation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invitation {
    Accept,
    Decline(String),
}

/// Nobody at the box: the accept policy and the operator's requests decide.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unattended;

impl Console for Unattended {}
