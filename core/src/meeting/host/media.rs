//! A session's media flow, from the host's side: where each site sends, what each relay
//! forwards, the screen every room shows, the content shared, the recorder and the views.

use super::*;

impl Host {
    /// Where admitted sites send media (a relay or media point), from the media plan.
    /// The media flow now: each joined site's relay, each relay's forwarding.
    fn topology(&self) -> Topology {
        let sites: Vec<SiteMedia> = self
            .sites
            .iter()
            .filter(|(_, r)| r.phase == SitePhase::Joined && r.ssrc != 0)
            .map(|(id, r)| SiteMedia {
                id: *id,
                ssrc: r.ssrc,
                receives_at: r
                    .media_host
                    .clone()
                    .filter(|_| r.rtp_port != 0)
                    .map(|h| (h, r.rtp_port)),
                relay: r.relay.clone(),
                thin: r.tier.is_some_and(|t| t != Tier::Full),
            })
            .collect();
        let mut sites = sites;
        if let (Some((host, port)), Some(id)) = (&self.recorder, self.recorder_id()) {
            // The recorder takes every picture on the screen from the relay of its region.
            sites.push(SiteMedia {
                id,
                ssrc: 0,
                receives_at: Some((host.clone(), *port)),
                relay: None,
                thin: false,
            });
        }
        let sources = self.main_sources();
        let extra: Vec<TerminalId> = self.screen_tiles().into_iter().map(|t| t.site).collect();
        let views: Vec<(TerminalId, String)> = self
            .views
            .iter()
            .flat_map(|(t, to)| to.iter().map(|v| (*t, v.clone())))
            .collect();
        relays::topology(&sites, &sources, &extra, self.content, &views)
    }

    /// The sources every site receives: the chair, the broadcast site, the speaker.
    fn main_sources(&self) -> Vec<TerminalId> {
        [
            self.state.spec.chair,
            self.state.broadcast,
            self.state.floor,
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// The sites on the screen now: the one shown to all first, the other main sources, then
    /// (with the chair's layout) joined sites that send pictures, in the order they joined
    /// (their SSRCs increase with each first join); as many as the screen lists.
    fn screen_tiles(&self) -> Vec<OnScreen> {
        let joined = |t: &TerminalId| {
            self.sites
                .get(t)
                .filter(|r| r.phase == SitePhase::Joined && r.ssrc != 0)
                .map(|r| r.ssrc)
        };
        let mut order: Vec<TerminalId> = self.state.shown().into_iter().collect();
        order.extend(self.main_sources());
        if self.layout.is_some() {
            let mut others: Vec<(u32, TerminalId)> = self
                .sites
                .iter()
                .filter(|(_, r)| r.tier == Some(Tier::Full))
                .filter_map(|(t, _)| joined(t).map(|ssrc| (ssrc, *t)))
                .collect();
            others.sort_unstable();
            order.extend(others.into_iter().map(|(_, t)| t));
        }
        let mut tiles: Vec<OnScreen> = Vec::new();
        for site in order {
            if tiles.len() == Screen::most_tiles(self.layout) {
                break;
            }
            if let Some(ssrc) = joined(&site)
                && !tiles.iter().any(|t| t.site == site)
            {
                tiles.push(OnScreen {
                    site,
                    ssrc,
                    name: String::new(),
                });
            }
        }
        tiles
    }

    /// Who the session's recorder is in the media flow: `recorder` at the site of the first
    /// invitee (a region's own site, or an invited terminal's), so that the relay of that
    /// region serves it.
    pub fn recorder_id(&self) -> Option<TerminalId> {
        let site = match self.state.spec.invitees.first()? {
            Invitee::Region(r) => r.root(),
            Invitee::Terminal(t) => *t.site(),
        };
        Some(TerminalId::new(site, "recorder".parse().ok()?))
    }

    /// A recorder receives the session at `at` (host, port) from now on, or (`None`) no more.
    pub fn set_recorder(&mut self, at: Option<(String, u16)>) {
        if self.recorder != at {
            self.recorder = at;
            self.media_dirty = true;
        }
    }

    /// The session's SRTP master key and salt: for a recorder that decrypts as a participant.
    pub fn media_key(&self) -> &[u8] {
        &self.srtp_key
    }

    /// Where the session's recorder receives, while one records.
    pub fn recorder(&self) -> Option<&(String, u16)> {
        self.recorder.as_ref()
    }

    /// The screen as last published, if it was.
    pub fn screen(&self) -> Option<&Screen> {
        self.screen.as_ref()
    }

    /// The chair's layout, if it set one.
    pub fn layout(&self) -> Option<Layout> {
        self.layout
    }

    /// The site sharing content, and the video SSRC of its content.
    pub fn content(&self) -> Option<(TerminalId, u32)> {
        self.content
    }

    /// Gives `site` the content under a fresh SSRC, or takes it back (`None`).
    pub(super) fn set_content(&mut self, site: Option<TerminalId>) {
        if site == self.content.map(|(t, _)| t) {
            return;
        }
        self.content = site.map(|t| {
            let ssrc = self.next_ssrc & !1;
            self.next_ssrc = self.next_ssrc.wrapping_add(2).max(2);
            (t, ssrc)
        });
        self.media_dirty = true;
    }

    /// A site's own box asks to share content (`on`), or stops sharing it: granted while no
    /// other site shares, refused while one does (the chair may take it from one and give it
    /// to another, [`ChairOp::Content`]).
    pub fn share_content(&mut self, from: TerminalId, on: bool) -> Result<(), OpError> {
        if self.state.status == Status::Ended {
            return Err(OpError::Ended);
        }
        let holder = self.content.map(|(t, _)| t);
        if !on {
            if holder == Some(from) {
                self.set_content(None);
            }
            return Ok(());
        }
        if self.state.status != Status::Live {
            return Err(OpError::NotLive { op: "content" });
        }
        match holder {
            Some(h) if h != from => return Err(OpError::ContentHeld(h)),
            Some(_) => return Ok(()),
            None => {}
        }
        if !self.can_share(&from) {
            return Err(OpError::CannotShare(from));
        }
        self.set_content(Some(from));
        Ok(())
    }

    /// Whether a site can share content now: joined, and sending video at its tier.
    pub(super) fn can_share(&self, site: &TerminalId) -> bool {
        self.sites
            .get(site)
            .is_some_and(|r| r.phase == SitePhase::Joined && r.tier == Some(Tier::Full))
    }

    /// A joined site's media plan: its SSRC, the session key, and where it sends (its relay,
    /// else the session's media point; nowhere at the receive-only tier).
    fn plan_for(&self, site: &TerminalId, topology: &Topology) -> Option<MediaPlan> {
        let rec = self.sites.get(site)?;
        let tier = rec.tier?;
        Some(MediaPlan {
            ssrc: rec.ssrc,
            send_to: if tier == Tier::ReceiveOnly {
                None
            } else {
                topology
                    .send_to
                    .get(site)
                    .cloned()
                    .or_else(|| self.media_point.clone())
            },
            srtp_key: self.srtp_key.clone(),
            tier,
            viewed: self.views.contains_key(site),
        })
    }

    /// The sites that send now, and so go where their plan says: the one shown to all, the
    /// main sources, the pictures on the screen, the content's site, the viewed.
    fn senders(&self) -> BTreeSet<TerminalId> {
        let on_screen = self
            .screen
            .iter()
            .flat_map(|s| s.tiles.iter().map(|t| t.site));
        self.state
            .shown()
            .into_iter()
            .chain(self.main_sources())
            .chain(on_screen)
            .chain(self.content.map(|(site, _)| site))
            .chain(self.views.keys().copied())
            .collect()
    }

    /// Adds (or, with `on` false, removes) a viewer of `site` at `to` (`host:port`): the relay
    /// its stream reaches first strips SRTP and sends it there as plain RTP. The site must be
    /// in the session and behind a relay.
    pub fn set_view(&mut self, site: TerminalId, to: String, on: bool) -> Result<(), String> {
        if !on {
            self.media_dirty = true;
            if let Some(v) = self.views.get_mut(&site) {
                v.retain(|x| *x != to);
                if v.is_empty() {
                    self.views.remove(&site);
                }
            }
            return Ok(());
        }
        if !self
            .sites
            .get(&site)
            .is_some_and(|r| r.phase == SitePhase::Joined)
        {
            return Err(format!("{site} has not joined {}", self.state.spec.id));
        }
        let topology = self.topology();
        if !topology.send_to.contains_key(&site) {
            return Err(format!("{site} has no relay to view it through"));
        }
        self.media_dirty = true;
        let v = self.views.entry(site).or_default();
        if !v.contains(&to) {
            v.push(to);
        }
        Ok(())
    }

    /// What the media flow's changes ask for: a new plan to each joined site whose relay
    /// changed or who joined since, the forwarding table to each relay whose table changed,
    /// and a new state when the session outgrew its heartbeat (the sites it counts on: the
    /// heartbeat only grows during a session, so no site is ever judged by a faster pace than
    /// the one it was given).
    /// Call after a batch of changes: a join is answered here, so call it soon after (the
    /// central service does whenever its incoming queue runs empty, and at least every 200 ms
    /// while it does not). Its cost grows with the session, not with the changes since.
    pub fn media_updates(&mut self, now_ms: u64) -> Vec<HostOutput> {
        let mut out = Vec::new();
        if self.state.status == Status::Ended {
            self.admitted.clear();
            self.relay_plans.clear();
            return out;
        }
        if !self.media_dirty {
            return out;
        }
        self.media_dirty = false;
        let meeting = self.state.spec.id;
        let topology = self.topology();
        let joined: Vec<TerminalId> = self
            .sites
            .iter()
            .filter(|(_, r)| r.phase == SitePhase::Joined)
            .map(|(id, _)| *id)
            .collect();
        if self.pace_heartbeat() {
            self.state.version += 1;
            out.push(HostOutput::Publish(self.state.clone().into()));
        }
        let tiles = self.screen_tiles();
        let content = self.content.map(|(site, ssrc)| OnScreen {
            site,
            ssrc,
            name: String::new(),
        });
        if self
            .screen
            .as_ref()
            .is_none_or(|s| s.layout != self.layout || s.tiles != tiles || s.content != content)
        {
            let screen = Screen {
                meeting,
                version: self.screen.as_ref().map_or(1, |s| s.version + 1),
                layout: self.layout,
                tiles,
                content,
            };
            out.push(HostOutput::Screen(screen.clone().into()));
            self.screen = Some(screen);
        }
        let sites = &self.sites;
        self.admitted
            .retain(|id, _| sites.get(id).is_some_and(|r| r.phase == SitePhase::Joined));
        let senders = self.senders();
        for id in &joined {
            let Some(plan) = self.plan_for(id, &topology) else {
                continue;
            };
            if outdated(self.admitted.get(id), &plan, senders.contains(id)) {
                self.admitted.insert(*id, plan.clone());
                if let Some(j) = self.joinings.get_mut(id) {
                    j.plan_sent_ms = Some(now_ms);
                    j.plan_arrived = false;
                }
                out.push(HostOutput::Send(*id, Downlink::Admitted { meeting, plan }));
            }
        }
        self.relay_plans
            .retain(|id, _| topology.relays.contains_key(id));
        for (id, plan) in topology.relays {
            if self.relay_plans.get(&id) != Some(&plan) {
                self.relay_plans.insert(id, plan.clone());
                out.push(HostOutput::Send(id, Downlink::Forward { meeting, plan }));
            }
        }
        out
    }

    pub fn set_media_point(&mut self, addr: Option<String>) {
        self.media_point = addr;
    }
}

/// Whether a site that was given `given` must be sent `plan`: it was given none (or lost it:
/// a site back from unreachable missed the changes), or the plan changed. A site that sends
/// nothing is not told of a new relay to send to until it `sends`: while a province's relays
/// join, each of their villages' relays would change once or twice, and the plans would crowd
/// the links for nothing.
fn outdated(given: Option<&MediaPlan>, plan: &MediaPlan, sends: bool) -> bool {
    match given {
        None => true,
        Some(given) if sends => given != plan,
        Some(given) => {
            *given
                != (MediaPlan {
                    send_to: given.send_to.clone(),
                    ..plan.clone()
                })
        }
    }
}
