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

use crate::envelope::Stream;
use crate::meeting_id::{Invitee, MeetingId, MeetingIdError};
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
    /// Central's notices to the terminal: a duty report acknowledged.
    Notice,
}

impl Stream {
    /// The channel the stream is published on.
    pub fn channel(self) -> Channel {
        match self {
            Stream::Telemetry => Channel::Telemetry,
            Stream::Events => Channel::Events,
        }
    }
}

impl Channel {
    pub const ALL: [Channel; 9] = [
        Channel::Presence,
        Channel::Telemetry,
        Channel::Events,
        Channel::MeetingUp,
        Channel::Result,
        Channel::Ack,
        Channel::Command,
        Channel::MeetingDown,
        Channel::Notice,
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
            Channel::Notice => "nt",
        }
    }

    /// True for channels the terminal writes.
    pub fn is_uplink(self) -> bool {
        !matches!(
            self,
            Channel::Ack | Channel::Command | Channel::MeetingDown | Channel::Notice
        )
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
    Meeting(MeetingIdError),
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
            TopicError::UnknownKind => f.write_str("unknown topic kind (expected t, b or m)"),
            TopicError::Meeting(e) => e.fmt(f),
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
    /// A session's retained desired state for one invitee: `ct/v1/m/pp[/cc…]/ID` for an
    /// invited region, `ct/v1/m/pp/cc/dd/ttt/vvv/slug/ID` for an invited terminal.
    Meeting { invitee: Invitee, id: MeetingId },
    /// A session's retained screen ([`crate::meeting::Screen`]) for one invitee:
    /// `ct/v1/s/…/ID`, the invitee's path as in [`Topic::Meeting`].
    Screen { invitee: Invitee, id: MeetingId },
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
            Some(kind @ ("m" | "s")) => {
                let (invitee, id) = parse_session(&segs)?;
                Ok(if kind == "m" {
                    Topic::Meeting { invitee, id }
                } else {
                    Topic::Screen { invitee, id }
                })
            }
            _ => Err(TopicError::UnknownKind),
        }
    }
}

const WIDTHS: [usize; 5] = [2, 2, 2, 3, 3];

/// The invitee and the session of a session's topic (`m` or `s`, then the invitee's path, then
/// the id).
fn parse_session(segs: &[&str]) -> Result<(Invitee, MeetingId), TopicError> {
    let n = segs.len();
    if !(3..=8).contains(&n) {
        return Err(TopicError::Segments { found: n });
    }
    let id: MeetingId = segs[n - 1].parse().map_err(TopicError::Meeting)?;
    let invitee = if n == 8 {
        let site = parse_site(&segs[1..6])?;
        let slug: Slug = segs[6].parse().map_err(TopicError::Slug)?;
        Invitee::Terminal(TerminalId::new(site, slug))
    } else {
        let site = parse_site(&segs[1..n - 1])?;
        if site.significant_groups().len() != n - 2 {
            return Err(TopicError::Segments { found: n });
        }
        Invitee::Region(Region::of(site))
    };
    Ok((invitee, id))
}

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
            Topic::Meeting { invitee, id } | Topic::Screen { invitee, id } => {
                let kind = if matches!(self, Topic::Meeting { .. }) {
                    "m"
                } else {
                    "s"
                };
                write!(f, "{PREFIX}/{kind}/")?;
                match invitee {
                    Invitee::Region(r) => r.root().write_path(f)?,
                    Invitee::Terminal(t) => {
                        t.site().write_full_path(f)?;
                        write!(f, "/{}", t.slug())?;
                    }
                }
                write!(f, "/{id}")
            }
        }
    }
}

/// The subscription filters through which a terminal receives the sessions it is invited to:
/// one per ancestor region and its own site (`ct/v1/m/13/+`, …, `ct/v1/m/13/01/02/001/001/+`)
/// and one for itself (`ct/v1/m/13/01/02/001/001/main/+`), then the same for their screens
/// (`ct/v1/s/13/+`, …). Retained, so a terminal that (re)connects learns every session in
/// progress at once.
pub fn meeting_filters(id: &TerminalId) -> Vec<String> {
    let mut v = Vec::new();
    for kind in ["m", "s"] {
        for site in id.site().ancestors().collect::<Vec<_>>().into_iter().rev() {
            let mut s = alloc::format!("{PREFIX}/{kind}/");
            let _ = site.write_path(&mut s);
            s.push_str("/+");
            v.push(s);
        }
        let mut here = alloc::format!("{PREFIX}/{kind}/");
        let _ = id.site().write_path(&mut here);
        here.push_str("/+");
        v.push(here);
        let mut own = alloc::format!("{PREFIX}/{kind}/");
        let _ = id.site().write_full_path(&mut own);
        let _ = write!(own, "/{}/+", id.slug());
        v.push(own);
    }
    v
}

/// Requests from a `cuntong` command (client `client`) to the central service.
pub fn control_request(client: &str) -> String {
    alloc::format!("{PREFIX}/c/req/{client}")
}

/// The central service's answers to client `client`.
pub fn control_response(client: &str) -> String {
    alloc::format!("{PREFIX}/c/res/{client}")
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

    #[test]
    fn meeting_topics_name_the_invitee_and_match_the_terminals_filters() {
        let m: MeetingId = "m1".parse().unwrap();
        let county = Topic::Meeting {
            invitee: Invitee::Region("130102".parse().unwrap()),
            id: m,
        };
        assert_eq!(county.to_string(), "ct/v1/m/13/01/02/m1");
        let hall = Topic::Meeting {
            invitee: Invitee::Terminal(id("130102000000-hall")),
            id: m,
        };
        assert_eq!(hall.to_string(), "ct/v1/m/13/01/02/000/000/hall/m1");
        for t in [county, hall] {
            assert_eq!(Topic::parse(&t.to_string()), Ok(t));
        }
        let matches = |f: &str, t: &str| {
            let (fs, ts): (Vec<&str>, Vec<&str>) = (f.split('/').collect(), t.split('/').collect());
            fs.len() == ts.len() && fs.iter().zip(&ts).all(|(a, b)| *a == "+" || a == b)
        };
        let filters = meeting_filters(&id("130102001001-main"));
        assert_eq!(filters[2], "ct/v1/m/13/01/02/+");
        assert_eq!(filters[5], "ct/v1/m/13/01/02/001/001/main/+");
        // The same again for the screens.
        assert_eq!(filters[8], "ct/v1/s/13/01/02/+");
        assert_eq!(filters[11], "ct/v1/s/13/01/02/001/001/main/+");
        assert_eq!(filters.len(), 12);
        let screen = Topic::Screen {
            invitee: Invitee::Region("130102".parse().unwrap()),
            id: m,
        };
        assert_eq!(screen.to_string(), "ct/v1/s/13/01/02/m1");
        assert_eq!(Topic::parse("ct/v1/s/13/01/02/m1"), Ok(screen));
        assert!(filters.iter().any(|f| matches(f, "ct/v1/s/13/01/02/m1")));
        // The hall's own topic is not matched by any village filter (one level per `+`).
        assert!(filters.iter().any(|f| matches(f, "ct/v1/m/13/01/02/m1")));
        assert!(
            !filters
                .iter()
                .any(|f| matches(f, "ct/v1/m/13/01/02/000/000/hall/m1"))
        );
        assert_eq!(
            Topic::parse("ct/v1/m/13/01/02/9x"),
            Err(TopicError::Meeting(MeetingIdError::FirstNotLetter))
        );
        assert!(Topic::parse("ct/v1/m/13/01/00/m1").is_err());
    }

    proptest::proptest! {
        #[test]
        fn garbage_never_panics(s in "(ct/v1/)?[tbm]?(/[0-9a-z+#]{0,4}){0,9}") {
            let _ = Topic::parse(&s);
        }
    }
}
