//! What a meeting room sees and hears: where the composed picture and sound go, what the room
//! shares as content, and where a recording's files are written.

use std::path::PathBuf;

use super::BadValue;

/// The second video source a box shares as content (`[media] content`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContentSource {
    /// A V4L2 device: an HDMI capture of the presenter's laptop, a document camera.
    Camera(PathBuf),
    /// Colour bars (the simulator, tests).
    Test,
}

impl std::str::FromStr for ContentSource {
    type Err = BadValue;

    fn from_str(s: &str) -> Result<ContentSource, BadValue> {
        match s {
            "test" => Ok(ContentSource::Test),
            _ => match s.strip_prefix("v4l2:") {
                Some(p) if p.starts_with('/') => Ok(ContentSource::Camera(p.into())),
                _ => Err(BadValue::ContentSource(s.into())),
            },
        }
    }
}

/// Where the composed picture and the mixed sound go (`[media] display`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Display {
    /// The screen (`kmssink` on a plain display without a window system, else the system's
    /// choice) and the speaker.
    Screen { kms: bool },
    /// A Matroska file (H.264 and Opus): for tests, and for people to look at.
    File(PathBuf),
    /// A meeting's recording: Matroska files of at most `segment` each, the first at `path`,
    /// the next ones beside it ([`recording_segment`]).
    Recording {
        path: PathBuf,
        segment: std::time::Duration,
    },
    /// To a room system in a SIP call ([`crate::sip`]): H.264 and its sound over RTP, as the
    /// call agreed.
    Call(crate::sip::CallMedia),
}

/// Recordings are cut into files of this length (a long meeting is several files).
pub const RECORDING_SEGMENT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// Where segment `n` (from 0) of a recording to `path` goes: `path` itself, then
/// `meeting.001.mkv`, `meeting.002.mkv`… beside it.
pub fn recording_segment(path: &std::path::Path, n: u32) -> PathBuf {
    if n == 0 {
        return path.to_path_buf();
    }
    let stem = path.file_stem().map_or_else(
        || "recording".to_owned(),
        |s| s.to_string_lossy().into_owned(),
    );
    let ext = path
        .extension()
        .map_or_else(|| "mkv".to_owned(), |e| e.to_string_lossy().into_owned());
    path.with_file_name(format!("{stem}.{n:03}.{ext}"))
}

impl std::str::FromStr for Display {
    type Err = BadValue;

    fn from_str(s: &str) -> Result<Display, BadValue> {
        match s {
            "auto" => Ok(Display::Screen { kms: false }),
            "kms" => Ok(Display::Screen { kms: true }),
            _ => match s.split_once(':') {
                Some(("file", p)) if !p.is_empty() => Ok(Display::File(p.into())),
                Some(("recording", p)) if !p.is_empty() => Ok(Display::Recording {
                    path: p.into(),
                    segment: RECORDING_SEGMENT,
                }),
                _ => Err(BadValue::Display(s.into())),
            },
        }
    }
}

/// The meeting room's picture and sound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaConfig {
    pub display: Display,
    /// The layout until the chair sets one.
    pub layout: cuntong_core::media::layout::Layout,
    /// What it shares as content, if it can.
    pub content: Option<ContentSource>,
}

impl Default for MediaConfig {
    fn default() -> MediaConfig {
        MediaConfig {
            display: Display::Screen { kms: false },
            layout: cuntong_core::media::layout::Layout::OnePlus(5),
            content: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recordings_segments_go_beside_its_first_file() {
        let first = std::path::Path::new("/srv/rec/县务会.mkv");
        assert_eq!(recording_segment(first, 0), first);
        assert_eq!(
            recording_segment(first, 1),
            std::path::Path::new("/srv/rec/县务会.001.mkv")
        );
        assert_eq!(
            recording_segment(std::path::Path::new("/srv/rec/m1"), 12),
            std::path::Path::new("/srv/rec/m1.012.mkv")
        );
    }
}
