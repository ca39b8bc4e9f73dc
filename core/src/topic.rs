//! The MQTT topic tree, which mirrors the administrative hierarchy.
//!
//! Terminal topics carry the full five-group site path and the slug:
//! `ct/v1/t/13/01/02/001/001/main/tm`. So one wildcard selects a region
//! (`ct/v1/t/13/01/02/#`), one ACL prefix confines a terminal (`ct/v1/t/…/main/#`), and a region
//! broadcast (`ct/v1/b/13/01/02`) reaches every terminal below it, because each terminal
//! subscribes to the broadcast topic of its own site and of each ancestor.
//! `docs/protocol.md` is the written specification.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::{self, Write};

use crate::site::{Level, Region, SiteCode, SiteCodeError};
use crate::terminal_id::{Slug, SlugError, TerminalId};

/// Every topic starts with this prefix; the `v1` changes only with an incompatible tree.
pub const PREFIX: &str = "ct/v1";

/// The per-terminal channels. Uplinks are written by the terminal, downlinks read by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    /// Retained online/offline record; the last will writes offline.
    Presence,
    /// Telemetry batches (envelope, postcard).
    Telemetry,
    /// Events (envelope, postcard).
    Events,
    /// Meeting uplink: accept, join, roll-call answers, hands.
    MeetingUp,
    /// Command results.
    Result,
    /// Central's stored-up-to watermark, retained.
    Ack,
    /// Signed commands.
    Command,
    /// Per-terminal meeting downlink: media plan, keys.
    MeetingDown,
}

impl Channel {
    pub const ALL: [Channel; 8] = [
        Channel::Presence,
        Channel::Telemetry,
        Channel::Events,
        Channel::MeetingUp,
        Channel::Result,
        Channel::Ack,
        Channel::Command,
        Channel::MeetingDown,
    ];

    /// The last topic segment.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Presence => "presence",
            Channel::Telemetry => "tm",
            Channel::Events => "ev",
            Channel::MeetingUp => "mt",
            Channel::Result => "res",
            Channel::Ack => "ack",
            Channel::Command => "cmd",
            Channel::MeetingDown => "md",
        }
    }

    /// True for channels the terminal writes.
    pub fn is_uplink(self) -> bool {
        !matches!(self, Channel::Ack | Channel::Command | Channel::MeetingDown)
    }

    fn from_segment(s: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// Why a topic string was not understood.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TopicError {
    /// Does not start with `ct/v1/`.
    Prefix,
    /// Wrong number of segments for its kind.
    Segments {
        found: usize,
    },
    /// The segment of this level has the wrong width or is not digits.
    SiteSegment {
        level: Level,
    },
    Site(SiteCodeError),
    Slug(SlugError),
    UnknownChannel,
    UnknownKind,
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopicError::Prefix => write!(f, "does not start with {PREFIX}/"),
            TopicError::Segments { found } => write!(f, "has {found} segments after {PREFIX}/"),
            TopicError::SiteSegment { level } => {
                write!(f, "{level} segment is not {} digits", WIDTHS[level.depth()])
            }
            TopicError::Site(e) => write!(f, "site code {e}"),
            TopicError::Slug(e) => e.fmt(f),
            TopicError::UnknownChannel => f.write_str("unknown channel"),
            TopicError::UnknownKind => f.write_str("unknown topic kind (expected t or b)"),
        }
    }
}

impl core::error::Error for TopicError {}

/// A parsed topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    /// `ct/v1/t/pp/cc/dd/ttt/vvv/slug/channel`
    Terminal { id: TerminalId, channel: Channel },
    /// `ct/v1/b/pp[/cc[/dd[/ttt[/vvv]]]]`: everything at and below the site.
    Broadcast(SiteCode),
}

impl Topic {
    pub fn terminal(id: &TerminalId, channel: Channel) -> Topic {
        Topic::Terminal { id: *id, channel }
    }

    /// The broadcast topics a terminal at `site` listens to: each ancestor's and its own,
    /// from the province down.
    pub fn broadcasts_for(site: &SiteCode) -> Vec<Topic> {
        let mut v: Vec<Topic> = site.ancestors().map(Topic::Broadcast).collect();
        v.reverse();
        v.push(Topic::Broadcast(*site));
        v
    }

    pub fn parse(s: &str) -> Result<Topic, TopicError> {
        let rest = s
            .strip_prefix(PREFIX)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or(TopicError::Prefix)?;
        let segs: Vec<&str> = rest.split('/').collect();
        match segs.first().copied() {
            Some("t") => {
                if segs.len() != 8 {
                    return Err(TopicError::Segments { found: segs.len() });
                }
                let site = parse_site(&segs[1..6])?;
                let slug: Slug = segs[6].parse().map_err(TopicError::Slug)?;
                let channel = Channel::from_segment(segs[7]).ok_or(TopicError::UnknownChannel)?;
                Ok(Topic::Terminal {
                    id: TerminalId::new(site, slug),
                    channel,
                })
            }
            Some("b") => {
                if !(2..=6).contains(&segs.len()) {
                    return Err(TopicError::Segments { found: segs.len() });
                }
                let site = parse_site(&segs[1..])?;
                // A broadcast topic names its site by its significant groups only.
                if site.significant_groups().len() != segs.len() - 1 {
                    return Err(TopicError::Segments { found: segs.len() });
                }
                Ok(Topic::Broadcast(site))
            }
            _ => Err(TopicError::UnknownKind),
        }
    }
}

const WIDTHS: [usize; 5] = [2, 2, 2, 3, 3];

fn parse_site(segs: &[&str]) -> Result<SiteCode, TopicError> {
    let mut groups = [0u16; 5];
    for (i, seg) in segs.iter().enumerate() {
        if seg.len() != WIDTHS[i] || !seg.bytes().all(|b| b.is_ascii_digit()) {
            return Err(TopicError::SiteSegment {
                level: Level::ALL[i],
            });
        }
        groups[i] = seg.parse().map_err(|_| TopicError::SiteSegment {
            level: Level::ALL[i],
        })?;
    }
    SiteCode::from_groups(groups).map_err(TopicError::Site)
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topic::Terminal { id, channel } => {
                write!(f, "{PREFIX}/t/")?;
                id.site().write_full_path(f)?;
                write!(f, "/{}/{}", id.slug(), channel.as_str())
            }
            Topic::Broadcast(site) => {
                write!(f, "{PREFIX}/b/")?;
                site.write_path(f)
            }
        }
    }
}

/// A subscription filter for `channel` of every terminal in `region` (all of them if `None`).
///
/// `region_filter(Some(&"130102".parse()?), Some(Channel::Telemetry))` is
/// `ct/v1/t/13/01/02/+/+/+/tm`; with no channel it ends in `#`.
pub fn region_filter(region: Option<&Region>, channel: Option<Channel>) -> String {
    let mut s = String::from(PREFIX);
    s.push_str("/t");
    let depth = match region {
        Some(r) => {
            s.push('/');
            // Writing to a String cannot fail.
            let _ = r.root().write_path(&mut s);
            r.root().level().depth() + 1
        }
        None => 0,
    };
    match channel {
        Some(c) => {
            // Remaining site groups, then the slug.
            for _ in depth..6 {
                s.push_str("/+");
            }
            let _ = write!(s, "/{}", c.as_str());
        }
        None => s.push_str("/#"),
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    fn id(s: &str) -> TerminalId {
        s.parse().unwrap()
    }

    #[test]
    fn terminal_topics_carry_the_full_site_path() {
        let t = Topic::terminal(&id("130102001001-main"), Channel::Telemetry);
        assert_eq!(t.to_string(), "ct/v1/t/13/01/02/001/001/main/tm");
        let county = Topic::terminal(&id("130102000000-hall"), Channel::Presence);
        assert_eq!(county.to_string(), "ct/v1/t/13/01/02/000/000/hall/presence");
        assert_eq!(Topic::parse(&county.to_string()), Ok(county));
    }

    #[test]
    fn a_terminal_listens_to_every_ancestor_broadcast() {
        let topics: Vec<String> = Topic::broadcasts_for(id("130102001001-main").site())
            .iter()
            .map(|t| t.to_string())
            .collect();
        assert_eq!(
            topics,
            [
                "ct/v1/b/13",
                "ct/v1/b/13/01",
                "ct/v1/b/13/01/02",
                "ct/v1/b/13/01/02/001",
                "ct/v1/b/13/01/02/001/001"
            ]
        );
        for t in &topics {
            assert_eq!(Topic::parse(t).unwrap().to_string(), *t);
        }
    }

    #[test]
    fn region_filters_select_by_prefix() {
        let county: Region = "130102".parse().unwrap();
        assert_eq!(
            region_filter(Some(&county), Some(Channel::Telemetry)),
            "ct/v1/t/13/01/02/+/+/+/tm"
        );
        assert_eq!(region_filter(Some(&county), None), "ct/v1/t/13/01/02/#");
        assert_eq!(
            region_filter(None, Some(Channel::Presence)),
            "ct/v1/t/+/+/+/+/+/+/presence"
        );
        let village: Region = "130102001001".parse().unwrap();
        assert_eq!(
            region_filter(Some(&village), Some(Channel::Events)),
            "ct/v1/t/13/01/02/001/001/+/ev"
        );
    }

    #[test]
    fn malformed_topics_are_refused() {
        assert_eq!(Topic::parse("x/v1/t"), Err(TopicError::Prefix));
        assert_eq!(
            Topic::parse("ct/v1/t/13/01/02/001/001/main"),
            Err(TopicError::Segments { found: 7 })
        );
        assert_eq!(
            Topic::parse("ct/v1/t/13/1/02/001/001/main/tm"),
            Err(TopicError::SiteSegment {
                level: Level::Prefecture
            })
        );
        assert_eq!(
            Topic::parse("ct/v1/t/13/01/02/001/001/main/zz"),
            Err(TopicError::UnknownChannel)
        );
        assert_eq!(
            Topic::parse("ct/v1/b/13/01/00"),
            Err(TopicError::Segments { found: 4 })
        );
    }

    proptest::proptest! {
        #[test]
        fn garbage_never_panics(s in "(ct/v1/)?[tb]?(/[0-9a-z+#]{0,4}){0,9}") {
            let _ = Topic::parse(&s);
        }
    }
}
