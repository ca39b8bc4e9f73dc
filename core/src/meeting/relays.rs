//! Where media flows in a session: relays by hierarchy. Each joined site sends to the nearest
//! relay above it (a county point for its villages, a city point for its counties…; a relay box
//! sends its own media to itself); each relay forwards the session's sources — the chair, the
//! broadcast site, the floor holder — down to its sites and child relays and up to its own
//! relay, never back the way a stream came. A province meeting thus cascades province → city
//! → county → village, and a stream crosses each link once. Only the sources' streams are
//! routed: every other site sends nothing and gets no upstream slot.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::media::audio_ssrc;
use crate::site::SiteCode;
use crate::terminal_id::TerminalId;

/// What a relay is told: where reports go up, where each stream comes from and where it goes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayPlan {
    /// The relay above (`host:port`), if any.
    pub upstream: Option<String>,
    /// (SSRC, destinations `host:port`), by SSRC.
    pub routes: Vec<(u32, Vec<String>)>,
    /// Streams that arrive here first and are viewed: (video SSRC, the viewer's `host:port`).
    /// The relay strips SRTP for the viewer (plain RTP: video there, audio two ports up).
    pub views: Vec<(u32, String)>,
    /// (SSRC, `host:port` it comes from), by SSRC, for every stream routed or viewed here: a
    /// site's own streams from its receive ports (sites send from where they receive: video
    /// from its video port, audio from its audio port), the others from the relay below or
    /// above they pass. The relay forwards a stream from there only.
    pub sources: Vec<(u32, String)>,
}

/// An older host's table (`Downlink::Relay`), which names no sources: a relay refuses it,
/// since it could not tell a stream from a forgery.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnsourcedRelayPlan {
    pub upstream: Option<String>,
    pub routes: Vec<(u32, Vec<String>)>,
    pub views: Vec<(u32, String)>,
}

/// A joined site as far as media goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteMedia {
    pub id: TerminalId,
    /// Its video SSRC (audio is the next one).
    pub ssrc: u32,
    /// Where it receives: host and video port (audio on the port after next).
    pub receives_at: Option<(String, u16)>,
    /// Its relay's address, if the site is a relay.
    pub relay: Option<String>,
    /// On a thin link (a tier below full): it gets the main sources only, never the other
    /// pictures of the screen.
    pub thin: bool,
}

/// The media flow of a session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Topology {
    /// Where each site sends (its relay), if it has one.
    pub send_to: BTreeMap<TerminalId, String>,
    pub relays: BTreeMap<TerminalId, RelayPlan>,
}

impl Topology {
    /// The relay a site's stream reaches first (itself, for a relay).
    pub fn first_relay(&self, sites: &[SiteMedia], site: &TerminalId) -> Option<TerminalId> {
        let to = self.send_to.get(site)?;
        sites
            .iter()
            .find(|s| s.relay.as_ref() == Some(to))
            .map(|s| s.id)
    }
}

/// `host:port`, with brackets for an IPv6 host.
pub fn address(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Lays out the flow of `sources`' streams through the relays among `sites`, and hands each
/// of `views` (a site, a viewer) to the relay its stream reaches first. The streams of
/// `extra` (the other pictures of the screen) reach every relay and every site but the thin;
/// so does `content` (the site sharing it and the video SSRC of its content, which has no
/// sound).
pub fn topology(
    sites: &[SiteMedia],
    sources: &[TerminalId],
    extra: &[TerminalId],
    content: Option<(TerminalId, u32)>,
    views: &[(TerminalId, String)],
) -> Topology {
    let by_id: BTreeMap<&TerminalId, &SiteMedia> = sites.iter().map(|s| (&s.id, s)).collect();
    // The relays by the site they sit at, first by id.
    let mut relays_at: BTreeMap<SiteCode, Vec<&SiteMedia>> = BTreeMap::new();
    for r in sites.iter().filter(|s| s.relay.is_some()) {
        relays_at.entry(*r.id.site()).or_default().push(r);
    }
    for rs in relays_at.values_mut() {
        rs.sort_by_key(|r| r.id);
    }
    // The relay above each site: at its own site one that sorts before it (several relays at one
    // site form a chain, never a loop), else the first at the nearest site above.
    let parents: BTreeMap<TerminalId, &SiteMedia> = sites
        .iter()
        .filter_map(|s| {
            let here = relays_at
                .get(s.id.site())
                .and_then(|rs| rs.iter().rfind(|r| r.id < s.id).copied())
                .or_else(|| {
                    // A plain site is served by a relay at its own site.
                    (s.relay.is_none())
                        .then(|| {
                            relays_at
                                .get(s.id.site())
                                .and_then(|rs| rs.first().copied())
                        })
                        .flatten()
                });
            let p = here.or_else(|| {
                s.id.site()
                    .ancestors()
                    .find_map(|a| relays_at.get(&a).and_then(|rs| rs.first().copied()))
            })?;
            Some((s.id, p))
        })
        .collect();
    let parent = |id: &TerminalId| -> Option<&SiteMedia> { parents.get(id).copied() };
    let mut children_of: BTreeMap<TerminalId, Vec<&SiteMedia>> = BTreeMap::new();
    for s in sites {
        if let Some(p) = parent(&s.id) {
            children_of.entry(p.id).or_default().push(s);
        }
    }
    // The relays a site's stream passes on its way up: its own (if it is one), then each above.
    let chain = |id: &TerminalId| -> Vec<TerminalId> {
        let mut out = Vec::new();
        let mut at = by_id.get(id).copied();
        if at.is_some_and(|s| s.relay.is_some()) {
            out.push(*id);
        }
        while let Some(s) = at {
            match parent(&s.id) {
                Some(p) if !out.contains(&p.id) => {
                    out.push(p.id);
                    at = Some(p);
                }
                _ => break,
            }
        }
        out
    };
    let mut t = Topology::default();
    for s in sites {
        let to = if s.relay.is_some() {
            s.relay.clone()
        } else {
            parent(&s.id).and_then(|p| p.relay.clone())
        };
        if let Some(to) = to {
            t.send_to.insert(s.id, to);
        }
    }
    // Each stream once: its site (under the stream's SSRC), whether it is one of the extra
    // pictures, whether it has sound.
    let sources: Vec<(SiteMedia, bool, bool)> = {
        let mut seen = BTreeSet::new();
        let content = content.and_then(|(id, ssrc)| {
            let site = by_id.get(&id)?;
            Some(SiteMedia {
                ssrc,
                ..(*site).clone()
            })
        });
        sources
            .iter()
            .map(|id| (id, false))
            .chain(extra.iter().map(|id| (id, true)))
            .filter(|(id, _)| seen.insert(**id))
            .filter_map(|(id, extra)| by_id.get(id).map(|s| ((*s).clone(), extra, true)))
            .chain(content.map(|c| (c, true, false)))
            .collect()
    };
    for r in sites.iter().filter(|s| s.relay.is_some()) {
        let children: &[&SiteMedia] = children_of.get(&r.id).map_or(&[], Vec::as_slice);
        let up = parent(&r.id);
        let mut plan = RelayPlan {
            upstream: up.and_then(|u| u.relay.clone()),
            routes: Vec::new(),
            views: Vec::new(),
            sources: Vec::new(),
        };
        for (src, extra, sound) in &sources {
            let (extra, sound) = (*extra, *sound);
            let passes = chain(&src.id);
            let from_below = passes.contains(&r.id);
            // Where the stream reaches this relay from: the site itself (the first relay on
            // its way up), the relay below on its way up, or the relay above.
            let came_from = match passes.iter().position(|p| *p == r.id) {
                Some(0) => Some(Origin::Site(src)),
                Some(i) => passes
                    .get(i - 1)
                    .and_then(|below| by_id.get(below))
                    .and_then(|b| b.relay.clone())
                    .map(Origin::Relay),
                None => up.and_then(|u| u.relay.clone()).map(Origin::Relay),
            };
            // The relay's own box watches too, then its sites, then its child relays (unless
            // the stream came up through one).
            let mut receivers: Vec<&SiteMedia> = Vec::new();
            let takes = |s: &SiteMedia| s.id != src.id && !(extra && s.thin);
            if takes(r) {
                receivers.push(r);
            }
            let mut relays: Vec<String> = Vec::new();
            for c in children.iter().filter(|c| c.relay.is_some() || takes(c)) {
                match &c.relay {
                    Some(addr) if !passes.contains(&c.id) => relays.push(addr.clone()),
                    Some(_) => {}
                    None => receivers.push(c),
                }
            }
            let (mut video, mut audio) = (Vec::new(), Vec::new());
            for s in receivers {
                if let Some((host, port)) = &s.receives_at {
                    video.push(address(host, *port));
                    audio.push(address(host, port.saturating_add(2)));
                }
            }
            video.extend(relays.iter().cloned());
            audio.extend(relays);
            if from_below && let Some(u) = up.and_then(|u| u.relay.clone()) {
                video.push(u.clone());
                audio.push(u);
            }
            if !video.is_empty() {
                plan.routes.push((src.ssrc, video));
                if sound {
                    plan.routes.push((audio_ssrc(src.ssrc), audio));
                }
                if let Some(from) = &came_from {
                    let pair = from.pair(src.ssrc);
                    plan.sources
                        .extend(pair.into_iter().take(if sound { 2 } else { 1 }));
                }
            }
        }
        plan.routes.sort();
        plan.sources.sort();
        t.relays.insert(r.id, plan);
    }
    for (site, to) in views {
        let Some(s) = by_id.get(site).copied() else {
            continue;
        };
        if let Some(r) = t.first_relay(sites, site)
            && let Some(plan) = t.relays.get_mut(&r)
        {
            plan.views.push((s.ssrc, to.clone()));
            plan.views.sort();
            plan.views.dedup();
            // The first relay gets the viewed site's streams from the site itself.
            plan.sources.extend(Origin::Site(s).pair(s.ssrc));
            plan.sources.sort();
            plan.sources.dedup();
        }
    }
    t
}

/// Where a stream reaches a relay from.
enum Origin<'a> {
    /// From the site that sends it: video from its receive port, audio two ports up.
    Site(&'a SiteMedia),
    /// From a relay (both streams of the pair from its one address).
    Relay(String),
}

impl Origin<'_> {
    /// The sources of a site's pair (video SSRC `ssrc`): none for a site that named no
    /// receive address (its streams are not forwarded).
    fn pair(&self, ssrc: u32) -> Vec<(u32, String)> {
        match self {
            Origin::Site(s) => s
                .receives_at
                .as_ref()
                .map(|(host, port)| {
                    alloc::vec![
                        (ssrc, address(host, *port)),
                        (audio_ssrc(ssrc), address(host, port.saturating_add(2))),
                    ]
                })
                .unwrap_or_default(),
            Origin::Relay(a) => alloc::vec![(ssrc, a.clone()), (audio_ssrc(ssrc), a.clone())],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::borrow::ToOwned;
    use alloc::vec;

    fn site(id: &str, ssrc: u32, port: u16, relay: Option<&str>) -> SiteMedia {
        SiteMedia {
            id: id.parse().unwrap(),
            ssrc,
            receives_at: Some(("10.0.0.1".to_owned(), port)),
            relay: relay.map(ToOwned::to_owned),
            thin: false,
        }
    }

    fn t(s: &str) -> TerminalId {
        s.parse().unwrap()
    }

    fn routes(plan: &RelayPlan, ssrc: u32) -> Vec<&str> {
        plan.routes
            .iter()
            .find(|(s, _)| *s == ssrc)
            .map(|(_, d)| d.iter().map(String::as_str).collect())
            .unwrap_or_default()
    }

    fn source(plan: &RelayPlan, ssrc: u32) -> Option<&str> {
        plan.sources
            .iter()
            .find(|(s, _)| *s == ssrc)
            .map(|(_, a)| a.as_str())
    }

    /// A county relay (the county office's box, also the chair) and three villages.
    fn county() -> Vec<SiteMedia> {
        vec![
            site("130102000000-office", 100, 5004, Some("10.0.1.1:6000")),
            site("130102001001-main", 102, 5004, None),
            site("130102001002-main", 104, 5004, None),
            site("130102002001-main", 106, 5004, None),
        ]
    }

    #[test]
    fn a_county_meeting_goes_through_the_county_relay() {
        let chair = t("130102000000-office");
        let topo = topology(&county(), &[chair], &[], None, &[]);
        // Everyone sends to the relay (the relay box to itself).
        assert!(topo.send_to.values().all(|a| a == "10.0.1.1:6000"));
        assert_eq!(topo.send_to.len(), 4);
        let plan = &topo.relays[&chair];
        assert_eq!(plan.upstream, None);
        // The chair's video to the three villages, audio to their audio ports.
        assert_eq!(routes(plan, 100).len(), 3);
        assert!(routes(plan, 101).iter().all(|a| a.ends_with(":5006")));
        // Nobody else is routed.
        assert_eq!(plan.routes.len(), 2);
    }

    #[test]
    fn the_screens_other_pictures_reach_every_site_but_the_thin() {
        let chair = t("130102000000-office");
        let mut sites = county();
        for (i, s) in sites.iter_mut().enumerate() {
            s.receives_at = Some((format!("10.0.0.{i}"), 5004));
        }
        // The third village is on a thin link.
        sites[3].thin = true;
        let shown = [t("130102001001-main"), t("130102001002-main")];
        let topo = topology(&sites, &[chair], &shown, None, &[]);
        let plan = &topo.relays[&chair];
        // The chair (a main source) reaches every village, the thin one too.
        assert_eq!(routes(plan, 100).len(), 3);
        // The first village's picture reaches the relay's own box and the second village,
        // not itself and not the thin village; its sound likewise.
        assert_eq!(routes(plan, 102), ["10.0.0.0:5004", "10.0.0.2:5004"]);
        assert_eq!(routes(plan, 103), ["10.0.0.0:5006", "10.0.0.2:5006"]);
        assert_eq!(routes(plan, 104), ["10.0.0.0:5004", "10.0.0.1:5004"]);
        // The thin village sends nothing anyone is shown: it is not routed.
        assert!(routes(plan, 106).is_empty());
        // Each routed picture is taken only from its own site.
        assert_eq!(source(plan, 102), Some("10.0.0.1:5004"));
    }

    #[test]
    fn the_floor_holders_stream_reaches_the_others_and_not_itself() {
        let chair = t("130102000000-office");
        let speaker = t("130102001001-main");
        let mut sites = county();
        for (i, s) in sites.iter_mut().enumerate() {
            s.receives_at = Some((format!("10.0.0.{i}"), 5004));
        }
        let topo = topology(&sites, &[chair, speaker, chair], &[], None, &[]);
        let plan = &topo.relays[&chair];
        // The speaker's stream: to the relay's own box and the two other villages.
        assert_eq!(
            routes(plan, 102),
            ["10.0.0.0:5004", "10.0.0.2:5004", "10.0.0.3:5004"]
        );
        assert_eq!(plan.routes.len(), 4, "chair and speaker, video and audio");
    }

    #[test]
    fn a_province_meeting_cascades_and_a_stream_never_goes_back_up_its_way() {
        let sites = vec![
            site("130000000000-hall", 10, 5004, Some("10.1.0.1:6000")),
            site("130100000000-relay", 12, 5004, Some("10.2.0.1:6000")),
            site("130102000000-relay", 14, 5004, Some("10.3.0.1:6000")),
            site("130102001001-main", 16, 5004, None),
            site("130105000000-relay", 18, 5004, Some("10.4.0.1:6000")),
        ];
        let hall = t("130000000000-hall");
        let village = t("130102001001-main");
        let topo = topology(&sites, &[hall, village], &[], None, &[]);
        // The village sends to its county, the county relay to the city, the city to the hall.
        assert_eq!(topo.send_to[&village], "10.3.0.1:6000");
        let city = &topo.relays[&t("130100000000-relay")];
        assert_eq!(city.upstream.as_deref(), Some("10.1.0.1:6000"));
        let county = &topo.relays[&t("130102000000-relay")];
        assert_eq!(county.upstream.as_deref(), Some("10.2.0.1:6000"));
        // The hall's stream: the city forwards it to its box and both county relays.
        assert_eq!(
            routes(city, 10),
            ["10.0.0.1:5004", "10.3.0.1:6000", "10.4.0.1:6000"]
        );
        // The village's stream: its county sends it up (and to its own box), the city sends it
        // up and to the other county, not back to the county it came from.
        assert_eq!(routes(county, 16), ["10.0.0.1:5004", "10.2.0.1:6000"]);
        assert_eq!(
            routes(city, 16),
            ["10.0.0.1:5004", "10.4.0.1:6000", "10.1.0.1:6000"]
        );
        // The hall's relay sends the village's stream to its own box only (nothing above).
        assert_eq!(routes(&topo.relays[&hall], 16), ["10.0.0.1:5004"]);
    }

    #[test]
    fn each_relay_is_told_where_each_stream_it_routes_comes_from() {
        let mut sites = vec![
            site("130000000000-hall", 10, 5004, Some("10.1.0.1:6000")),
            site("130100000000-relay", 12, 5004, Some("10.2.0.1:6000")),
            site("130102000000-relay", 14, 5004, Some("10.3.0.1:6000")),
            site("130102001001-main", 16, 5004, None),
            site("130105000000-relay", 18, 5004, Some("10.4.0.1:6000")),
        ];
        sites[3].receives_at = Some(("10.9.0.7".to_owned(), 5010));
        sites[0].receives_at = Some(("10.1.0.1".to_owned(), 5004));
        let (hall, city, county) = (
            t("130000000000-hall"),
            t("130100000000-relay"),
            t("130102000000-relay"),
        );
        let topo = topology(&sites, &[hall, t("130102001001-main")], &[], None, &[]);
        // The village's pair: at its county from its own receive ports (it sends from them),
        // at the city from the county relay, at the hall from the city relay.
        let c = &topo.relays[&county];
        assert_eq!(source(c, 16), Some("10.9.0.7:5010"));
        assert_eq!(source(c, 17), Some("10.9.0.7:5012"));
        assert_eq!(source(&topo.relays[&city], 16), Some("10.3.0.1:6000"));
        assert_eq!(source(&topo.relays[&hall], 17), Some("10.2.0.1:6000"));
        // The hall's pair: at the hall from its own box, below from the relay above.
        assert_eq!(source(&topo.relays[&hall], 10), Some("10.1.0.1:5004"));
        assert_eq!(source(&topo.relays[&city], 11), Some("10.1.0.1:6000"));
        assert_eq!(source(c, 10), Some("10.2.0.1:6000"));
        // Every routed stream has its source, and nothing else has one.
        for plan in topo.relays.values() {
            let routed: Vec<u32> = plan.routes.iter().map(|(s, _)| *s).collect();
            let sourced: Vec<u32> = plan.sources.iter().map(|(s, _)| *s).collect();
            assert_eq!(routed, sourced);
        }
    }

    #[test]
    fn a_view_goes_to_the_relay_the_stream_reaches_first() {
        let village = t("130102001002-main");
        let topo = topology(
            &county(),
            &[],
            &[],
            None,
            &[(village, "10.9.9.9:7000".to_owned())],
        );
        let plan = &topo.relays[&t("130102000000-office")];
        assert_eq!(plan.views, [(104, "10.9.9.9:7000".to_owned())]);
        // The relay takes the viewed site's pair from the site's own ports only.
        assert_eq!(source(plan, 104), Some("10.0.0.1:5004"));
        assert_eq!(source(plan, 105), Some("10.0.0.1:5006"));
        assert!(
            plan.routes.is_empty(),
            "nobody else receives a viewed-only site"
        );
    }

    #[test]
    fn two_relays_at_one_site_form_a_chain_not_a_loop() {
        let sites = vec![
            site("130100000000-relay", 10, 5004, Some("10.2.0.1:6000")),
            site("130102000000-a", 12, 5004, Some("10.3.0.1:6000")),
            site("130102000000-b", 14, 5004, Some("10.3.0.2:6000")),
            site("130102001001-main", 16, 5004, None),
        ];
        let topo = topology(&sites, &[t("130100000000-relay")], &[], None, &[]);
        let a = &topo.relays[&t("130102000000-a")];
        let b = &topo.relays[&t("130102000000-b")];
        assert_eq!(a.upstream.as_deref(), Some("10.2.0.1:6000"));
        assert_eq!(b.upstream.as_deref(), Some("10.3.0.1:6000"));
        // The city's stream: city → a → b and the village; a does not send it back up.
        assert!(routes(a, 10).contains(&"10.3.0.2:6000"));
        assert!(!routes(a, 10).contains(&"10.2.0.1:6000"));
        assert!(!routes(b, 10).contains(&"10.3.0.1:6000"));
    }

    #[test]
    fn without_relays_nobody_has_a_relay_to_send_to() {
        let sites = vec![site("130102001001-main", 2, 5004, None)];
        let topo = topology(&sites, &[t("130102001001-main")], &[], None, &[]);
        assert!(topo.send_to.is_empty() && topo.relays.is_empty());
        assert_eq!(address("fd00::1", 5004), "[fd00::1]:5004");
    }
}
