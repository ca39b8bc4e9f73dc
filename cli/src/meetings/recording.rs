//! Central's recordings of its sessions (`cuntong meeting record`).

use cuntong_core::media::layout::Layout;
use cuntong_core::meeting::host::Host;
use cuntong_core::meeting::{MeetingId, Screen, Status};

use super::MeetingService;
use crate::control::ControlError;

/// A session central records: a receive-only participant in the media flow (the relay of
/// the session's region sends it every picture on the screen) that decrypts with the session's
/// key and composes the picture and mixes the sound as a box's room does, into Matroska
/// segments (H.264 and Opus) beginning at `out`.
pub(super) struct Recording {
    receiver: cuntong_terminal::media::Receiver,
    pub(super) out: std::path::PathBuf,
    /// The layout asked for, over the chair's.
    layout: Option<Layout>,
}

impl Recording {
    fn start(
        host: &Host,
        out: std::path::PathBuf,
        layout: Option<Layout>,
        at: std::net::IpAddr,
    ) -> Result<Recording, cuntong_terminal::media::MediaError> {
        use cuntong_terminal::config::Display;
        use cuntong_terminal::media::{Playback, Receiver};
        let playback = Playback::Room {
            display: Display::Recording {
                path: out.clone(),
                segment: cuntong_terminal::config::RECORDING_SEGMENT,
            },
            layout: layout.or(host.layout()).unwrap_or(Layout::OnePlus(5)),
        };
        let bind = std::net::SocketAddr::new(at, 0);
        let receiver = Receiver::start_at(
            bind,
            host.media_key(),
            playback,
            60,
            host.state().spec.profile.audio,
        )?;
        Ok(Recording {
            receiver,
            out,
            layout,
        })
    }

    /// Lays the recording out as `screen` (its tiles named) says: every site on it, in the
    /// layout asked for or else the chair's.
    pub(super) fn show(&self, screen: &Screen) {
        if let Some(room) = self.receiver.room() {
            let sites = screen.tiles.iter().map(|t| (t.ssrc, t.caption())).collect();
            room.set_screen(self.layout.or(screen.layout), sites);
            room.set_content(screen.content_tile(None));
        }
    }
}

impl MeetingService {
    /// Relays reach this central's recorders at `host`.
    pub fn recording_at(mut self, host: std::net::IpAddr) -> MeetingService {
        self.media_host = host;
        self
    }

    /// Records session `id` to `out` in `layout` (default: the chair's), or (`out` none) stops
    /// recording it.
    pub(super) fn record_to(
        &mut self,
        id: MeetingId,
        out: Option<std::path::PathBuf>,
        layout: Option<Layout>,
    ) -> Result<(), ControlError> {
        let host = self
            .hosts
            .get_mut(&id)
            .ok_or(ControlError::NoSuchMeeting(id))?;
        let Some(out) = out else {
            return match self.recordings.remove(&id) {
                Some(r) => {
                    host.set_recorder(None);
                    tracing::info!(meeting = %id, out = %r.out.display(), "recording stopped");
                    Ok(())
                }
                None => Err(ControlError::Refused(format!("{id} is not being recorded"))),
            };
        };
        if host.state().status != Status::Live {
            return Err(ControlError::Refused(format!("{id} is not live")));
        }
        if let Some(r) = self.recordings.get(&id) {
            return Err(ControlError::Refused(format!(
                "{id} is being recorded to {} already",
                r.out.display()
            )));
        }
        let recording = Recording::start(host, out, layout, self.media_host)
            .map_err(|e| ControlError::Failed(format!("cannot record {id}: {e}")))?;
        host.set_recorder(Some((
            self.media_host.to_string(),
            recording.receiver.video_port(),
        )));
        if let Some(mut screen) = host.screen().cloned() {
            self.name_tiles(&mut screen);
            recording.show(&screen);
        }
        tracing::info!(meeting = %id, out = %recording.out.display(), "recording started");
        self.recordings.insert(id, recording);
        Ok(())
    }
}
