//! The chair's operations (and a delegated chair's, within its region) on a session.

use super::*;

impl Host {
    /// Applies a chair operation.
    pub fn op(
        &mut self,
        by: &Operator,
        op: ChairOp,
        now_ms: u64,
    ) -> Result<Vec<HostOutput>, OpError> {
        if self.state.status == Status::Ended {
            return Err(OpError::Ended);
        }
        let chair_only = || match by {
            Operator::Chair => Ok(()),
            Operator::Delegate(_) => Err(OpError::ChairOnly { op: op.name() }),
        };
        let live = |s: &MeetingState| {
            if s.status == Status::Live {
                Ok(())
            } else {
                Err(OpError::NotLive { op: op.name() })
            }
        };
        let before = self.state.clone();
        let mut out = Vec::new();
        if let ChairOp::End = op {
            chair_only()?;
            self.end(now_ms, &mut out);
            return Ok(out);
        }
        // An operation applies whole or not at all: a refusal part-way leaves no change.
        if let Err(e) = self.apply_op(by, op, now_ms, chair_only, live) {
            self.state = before;
            return Err(e);
        }
        if self.state != before {
            self.state.version = before.version + 1;
            out.push(HostOutput::Publish(self.state.clone().into()));
            self.media_dirty = true;
        }
        Ok(out)
    }

    fn apply_op(
        &mut self,
        by: &Operator,
        op: ChairOp,
        now_ms: u64,
        chair_only: impl Fn() -> Result<(), OpError>,
        live: impl Fn(&MeetingState) -> Result<(), OpError>,
    ) -> Result<(), OpError> {
        match op {
            ChairOp::Start => {
                chair_only()?;
                if self.state.status != Status::Live {
                    self.live_since_ms = Some(now_ms);
                }
                self.state.status = Status::Live;
                // Sites learn the pace of the session they join from its start.
                self.pace_heartbeat();
            }
            ChairOp::End => chair_only()?,
            ChairOp::RollCall => {
                chair_only()?;
                live(&self.state)?;
                // Never reused, even after a close: old answers must not count again.
                self.roll_calls += 1;
                self.state.roll_call = Some(RollCall {
                    number: self.roll_calls,
                    opened_ms: now_ms,
                });
            }
            ChairOp::CloseRollCall => {
                chair_only()?;
                self.state.roll_call = None;
            }
            ChairOp::Grant(t) => {
                self.check_target(by, &t)?;
                live(&self.state)?;
                match by {
                    Operator::Chair => {
                        if self.state.spec.floor_mutes_others {
                            self.state.mute_all = true;
                            self.state.exceptions.clear();
                        }
                    }
                    Operator::Delegate(region) => {
                        // A delegate never takes the floor from another region's speaker,
                        // and mutes only its own region.
                        if let Some(f) = self.state.floor {
                            self.check_target(by, &f)?;
                        }
                        if self.state.spec.floor_mutes_others {
                            let inside: Vec<TerminalId> = self
                                .sites
                                .keys()
                                .filter(|x| region.contains(x.site()) && **x != t)
                                .copied()
                                .collect();
                            for x in inside {
                                self.set_muted(&x, true)?;
                            }
                        }
                    }
                }
                self.state.floor = Some(t);
                self.state.hands.retain(|h| *h != t);
            }
            ChairOp::Revoke => {
                if let (Operator::Delegate(_), Some(f)) = (by, self.state.floor) {
                    self.check_target(by, &f)?;
                }
                self.state.floor = None;
            }
            ChairOp::Mute(t) => {
                self.check_target(by, &t)?;
                self.set_muted(&t, true)?;
            }
            ChairOp::Unmute(t) => {
                self.check_target(by, &t)?;
                self.set_muted(&t, false)?;
            }
            ChairOp::MuteAll | ChairOp::UnmuteAll => {
                let muted = op == ChairOp::MuteAll;
                match by {
                    Operator::Chair => {
                        // The chair and the speaker stay heard.
                        self.state.mute_all = muted;
                        self.state.exceptions.clear();
                    }
                    Operator::Delegate(region) => {
                        let inside: Vec<TerminalId> = self
                            .sites
                            .keys()
                            .filter(|t| region.contains(t.site()))
                            .copied()
                            .collect();
                        for t in inside {
                            self.set_muted(&t, muted)?;
                        }
                    }
                }
            }
            ChairOp::Broadcast(t) => {
                chair_only()?;
                if let Some(t) = &t {
                    self.check_target(by, t)?;
                }
                self.state.broadcast = t;
            }
            ChairOp::LowerHand(t) => {
                self.check_target(by, &t)?;
                self.state.hands.retain(|h| *h != t);
            }
            ChairOp::Delegate(t, region) => {
                chair_only()?;
                match region {
                    Some(r) => self.delegates.insert(t, r),
                    None => self.delegates.remove(&t),
                };
            }
            ChairOp::Layout(layout) => {
                chair_only()?;
                if self.layout != layout {
                    self.layout = layout;
                    self.media_dirty = true;
                }
            }
            ChairOp::Content(site) => {
                if let Some(t) = &site {
                    self.check_target(by, t)?;
                    live(&self.state)?;
                    if !self.can_share(t) {
                        return Err(OpError::CannotShare(*t));
                    }
                }
                // A delegate never takes the content from another region's site.
                if let (Operator::Delegate(_), Some((h, _))) = (by, self.content) {
                    self.check_target(by, &h)?;
                }
                self.set_content(site);
            }
        }
        Ok(())
    }

    /// A chair operation asked for by a site's own terminal: allowed only to a delegated
    /// chair, within its region.
    pub fn op_by_site(
        &mut self,
        from: TerminalId,
        op: ChairOp,
        now_ms: u64,
    ) -> Result<Vec<HostOutput>, OpError> {
        let region = *self
            .delegates
            .get(&from)
            .ok_or(OpError::NotDelegate(from))?;
        self.op(&Operator::Delegate(region), op, now_ms)
    }

    /// The delegated chairs and their regions.
    pub fn delegates(&self) -> &BTreeMap<TerminalId, Region> {
        &self.delegates
    }

    fn check_target(&self, by: &Operator, t: &TerminalId) -> Result<(), OpError> {
        if !self.state.spec.invites(t) {
            return Err(OpError::NotInvited(*t));
        }
        match by {
            Operator::Delegate(scope) if !scope.contains(t.site()) => Err(OpError::OutsideScope {
                target: *t,
                scope: *scope,
            }),
            _ => Ok(()),
        }
    }

    fn set_muted(&mut self, t: &TerminalId, muted: bool) -> Result<(), OpError> {
        if muted && self.state.floor.as_ref() == Some(t) {
            self.state.floor = None;
        }
        // Under mute-all the exceptions are the sites heard; otherwise the sites muted.
        let listed = muted != self.state.mute_all;
        let ex = &mut self.state.exceptions;
        match (ex.binary_search(t), listed) {
            (Err(at), true) => {
                if ex.len() >= self.cfg.max_exceptions {
                    return Err(OpError::TooMany {
                        what: "individually muted or unmuted sites",
                        max: self.cfg.max_exceptions,
                    });
                }
                ex.insert(at, *t);
            }
            (Ok(at), false) => {
                ex.remove(at);
            }
            _ => {}
        }
        Ok(())
    }
}
