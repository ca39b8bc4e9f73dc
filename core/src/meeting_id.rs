//! The addresses of sessions: a meeting's id, and who a session invites (a region, or one
//! terminal). Below the topics and the messages that name them.

use alloc::string::String;
use core::fmt;
use core::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::site::Region;
use crate::terminal_id::{Slug, SlugError, TerminalId};

/// A meeting's id: `[a-z][a-z0-9]{0,15}`. It starts with a letter, so in a topic it can never
/// be mistaken for a group of a site code.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MeetingId(Slug);

/// Why a meeting id was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MeetingIdError {
    /// Ids start with a letter a-z.
    FirstNotLetter,
    Slug(SlugError),
}

impl fmt::Display for MeetingIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MeetingIdError::FirstNotLetter => {
                f.write_str("meeting id must start with a letter a-z")
            }
            MeetingIdError::Slug(e) => write!(f, "meeting id: {e}"),
        }
    }
}

impl core::error::Error for MeetingIdError {}

impl FromStr for MeetingId {
    type Err = MeetingIdError;

    fn from_str(s: &str) -> Result<MeetingId, MeetingIdError> {
        let slug: Slug = s.parse().map_err(MeetingIdError::Slug)?;
        if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
            return Err(MeetingIdError::FirstNotLetter);
        }
        Ok(MeetingId(slug))
    }
}

impl MeetingId {
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Display for MeetingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for MeetingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MeetingId({self})")
    }
}

/// Who is invited: everything in a region, or one terminal (calls, single guests).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Invitee {
    Region(Region),
    Terminal(TerminalId),
}

impl Invitee {
    pub fn includes(&self, t: &TerminalId) -> bool {
        match self {
            Invitee::Region(r) => r.contains(t.site()),
            Invitee::Terminal(id) => id == t,
        }
    }
}

impl fmt::Display for Invitee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Invitee::Region(r) => r.fmt(f),
            Invitee::Terminal(t) => t.fmt(f),
        }
    }
}

impl FromStr for Invitee {
    type Err = String;

    /// A region code prefix (`130102`) or a terminal id (`130102001001-main`).
    fn from_str(s: &str) -> Result<Invitee, String> {
        if s.contains('-') {
            s.parse()
                .map(Invitee::Terminal)
                .map_err(|e| alloc::format!("{s:?}: {e}"))
        } else {
            s.parse()
                .map(Invitee::Region)
                .map_err(|e| alloc::format!("{s:?}: {e}"))
        }
    }
}
