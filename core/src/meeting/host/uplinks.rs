//! What the host makes of a site's messages: joins, statuses, hands, roll-call answers,
//! declines and leaves.

use super::*;

impl Host {
    /// Handles a site's message.
    pub fn uplink(&mut self, from: TerminalId, msg: Uplink, now_ms: u64) -> Vec<HostOutput> {
        let mut out = Vec::new();
        let msg = msg.tagged();
        let meeting = self.state.spec.id;
        if msg.meeting() != meeting {
            return out;
        }
        let refused = if !self.state.spec.invites(&from) {
            Some("not invited")
        } else if self.state.status == Status::Ended {
            Some("the session has ended")
        } else {
            None
        };
        if let Some(reason) = refused {
            // Only a join is answered; anything else from such a site is ignored.
            if matches!(msg, Uplink::Join { .. }) {
                let reason = reason.into();
                out.push(HostOutput::Send(
                    from,
                    Downlink::Refused { meeting, reason },
                ));
            }
            return out;
        }
        let before = self.state.clone();
        let phase_before = self.sites.get(&from).map(|r| r.phase);
        // A join changes the media unless it repeats one whose plan is on its way (below).
        if matches!(msg, Uplink::Leave { .. } | Uplink::Decline { .. }) {
            self.media_dirty = true;
        }
        let rec = self.sites.entry(from).or_insert_with(SiteRecord::new);
        match msg {
            Uplink::Join {
                tier,
                rtp_port,
                media_host,
                relay,
                joining,
                ..
            } => {
                rec.last_heard_ms = Some(now_ms);
                let repeat = joining != 0
                    && rec.phase == SitePhase::Joined
                    && (rec.tier, rec.rtp_port) == (Some(tier), rtp_port)
                    && (&rec.media_host, &rec.relay) == (&media_host, &relay)
                    && self.joinings.get(&from).map(|j| j.number) == Some(joining);
                if repeat {
                    // The same joining asking again: its plan is on its way or was lost. It
                    // keeps its SSRC (its media has not started) and gets the same plan
                    // again, once the last one has had time to arrive.
                    let sent = self.joinings.get(&from).and_then(|j| j.plan_sent_ms);
                    let in_flight = plan_in_flight_ms(self.admitted.len())
                        .max(self.plan_delay.now(now_ms).saturating_mul(2));
                    if sent.is_none_or(|t| now_ms.saturating_sub(t) >= in_flight) {
                        self.admitted.remove(&from);
                        self.media_dirty = true;
                    }
                    return out;
                }
                self.media_dirty = true;
                self.joinings.insert(
                    from,
                    Joining {
                        number: joining,
                        ..Joining::default()
                    },
                );
                if rec.phase != SitePhase::Joined {
                    if rec.phase != SitePhase::Unreachable {
                        out.push(HostOutput::Notice(Notice::Joined(from)));
                    } else {
                        out.push(HostOutput::Notice(Notice::Back(from)));
                    }
                    rec.phase = SitePhase::Joined;
                }
                rec.tier = Some(tier);
                rec.rtp_port = rtp_port;
                rec.media_host = media_host;
                rec.relay = relay;
                rec.note = None;
                // A fresh SSRC pair for every join (video even, audio the next: media::
                // audio_ssrc): a site that joins again has restarted its media, and its new
                // packets must never reuse an SRTP index under the session key.
                rec.ssrc = self.next_ssrc & !1;
                self.next_ssrc = self.next_ssrc.wrapping_add(2).max(2);
                // Its content sender starts again too: under a fresh SSRC as well.
                if let Some((_, ssrc)) = self.content.as_mut().filter(|(t, _)| *t == from) {
                    *ssrc = self.next_ssrc & !1;
                    self.next_ssrc = self.next_ssrc.wrapping_add(2).max(2);
                }
                // A relay that joins again has lost its table: it gets it again.
                self.relay_plans.remove(&from);
                // Every join is answered with the plan, by the next `media_updates`: the site
                // repeats its join until it has one, so the answer must be idempotent. Laying
                // the session out once for many joins keeps a join storm of a province linear.
                self.admitted.remove(&from);
            }
            Uplink::Status {
                seen,
                muted,
                hand,
                answer,
                ..
            } => {
                if !matches!(rec.phase, SitePhase::Joined | SitePhase::Unreachable) {
                    // The site thinks it is in, the host does not (a late copy of a status
                    // from before it left, a join the host never saw): ask it to join again.
                    // A site that really left ignores this.
                    out.push(HostOutput::Send(from, Downlink::Rejoin { meeting }));
                    return out;
                }
                rec.last_heard_ms = Some(now_ms);
                // A status with `seen` 0 comes from a site still waiting for its plan (it
                // answers a roll call meanwhile); any other says the plan arrived.
                if let Some(j) = self.joinings.get_mut(&from).filter(|_| seen != 0)
                    && let Some(sent) = j.plan_sent_ms.filter(|_| !j.plan_arrived)
                {
                    j.plan_arrived = true;
                    self.plan_delay.observe(now_ms.saturating_sub(sent), now_ms);
                }
                if rec.phase == SitePhase::Unreachable {
                    rec.phase = SitePhase::Joined;
                    out.push(HostOutput::Notice(Notice::Back(from)));
                }
                // A site can only have applied a version the host published: a larger `seen`
                // is refused (it would pass for every later version), as is an older status
                // arriving late.
                let published = self.state.version;
                if seen <= published && (seen >= rec.seen || rec.seen > published) {
                    rec.seen = seen;
                    rec.muted = Some(muted);
                }
                let hand_change = self.apply_hand(from, hand);
                out.extend(hand_change);
                self.apply_answer(from, answer, now_ms, &mut out);
            }
            Uplink::Decline { reason, .. } => {
                if rec.phase != SitePhase::Declined {
                    rec.phase = SitePhase::Declined;
                    rec.note = Some(reason.clone());
                    out.push(HostOutput::Notice(Notice::Declined(from, reason)));
                }
                self.forget_site_in_state(&from);
                if self.state.spec.kind == Kind::Call {
                    // The callee declined: the call is over.
                    self.end(now_ms, &mut out);
                    return out;
                }
            }
            // Calls are created by central's meeting service, not by a running session, a
            // delegate's operations go through `op_by_site`, which answers them, and a request
            // to share content through `share_content`.
            // (`tagged` made an older terminal's join a `Join`.)
            Uplink::Call { .. }
            | Uplink::Chair { .. }
            | Uplink::Content { .. }
            | Uplink::JoinUntagged { .. } => {}
            Uplink::Leave { .. } => {
                if rec.phase != SitePhase::Left {
                    rec.phase = SitePhase::Left;
                    out.push(HostOutput::Notice(Notice::Left(from)));
                }
                self.forget_site_in_state(&from);
                if self.state.spec.kind == Kind::Call {
                    // Either party hanging up ends a call.
                    self.end(now_ms, &mut out);
                    return out;
                }
            }
        }
        if self.state != before {
            self.state.version = before.version + 1;
            out.push(HostOutput::Publish(self.state.clone().into()));
        }
        if self.state != before || self.sites.get(&from).map(|r| r.phase) != phase_before {
            self.media_dirty = true;
        }
        out
    }

    /// A site that left or declined no longer holds the floor, a raised hand or the content.
    fn forget_site_in_state(&mut self, t: &TerminalId) {
        if self.state.floor.as_ref() == Some(t) {
            self.state.floor = None;
        }
        if self.content.is_some_and(|(h, _)| h == *t) {
            self.set_content(None);
        }
        self.state.hands.retain(|h| h != t);
    }

    fn apply_hand(&mut self, from: TerminalId, hand: Hand) -> Option<HostOutput> {
        let rec = self.sites.get_mut(&from)?;
        if hand.number <= rec.hand_number {
            return None;
        }
        rec.hand_number = hand.number;
        let queued = self.state.hands.contains(&from);
        if hand.raised
            && !queued
            && self.state.floor != Some(from)
            && self.state.hands.len() < self.cfg.max_hands
        {
            self.state.hands.push(from);
            Some(HostOutput::Notice(Notice::HandRaised(from)))
        } else if !hand.raised && queued {
            self.state.hands.retain(|h| *h != from);
            Some(HostOutput::Notice(Notice::HandLowered(from)))
        } else {
            None
        }
    }

    fn apply_answer(
        &mut self,
        from: TerminalId,
        answer: Option<Answer>,
        now_ms: u64,
        out: &mut Vec<HostOutput>,
    ) {
        let (Some(rc), Some(a), Some(rec)) =
            (self.state.roll_call, answer, self.sites.get_mut(&from))
        else {
            return;
        };
        if a.number != rc.number || rec.answer.is_some_and(|x| x.number == rc.number) {
            return;
        }
        let answered_ms = a.answered_ms.clamp(rc.opened_ms, now_ms.max(rc.opened_ms));
        rec.answer = Some(Answer {
            number: rc.number,
            answered_ms,
        });
        out.push(HostOutput::Notice(Notice::Answered {
            site: from,
            number: rc.number,
            latency_ms: answered_ms.saturating_sub(rc.opened_ms),
        }));
    }
}
