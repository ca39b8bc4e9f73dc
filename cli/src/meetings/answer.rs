//! Answering the requests of `cuntong meeting …` commands: creating, changing, listing and
//! ending sessions, their status and roll calls page by page, and a site's view for a player.

use super::listing::{fit, page};
use super::*;

impl MeetingService {
    /// Answers a `cuntong meeting …` request.
    pub fn answer(&mut self, body: RequestBody, now_ms: u64) -> Result<ResponseBody, ControlError> {
        match body {
            RequestBody::Create {
                title,
                kind,
                invite,
                at_ms,
                profile,
                chair,
                floor_mutes_others,
            } => {
                let bad = ControlError::BadRequest;
                check_title(&title).map_err(|e| bad(e.to_string()))?;
                if let Some(at) = at_ms {
                    check_start(at, now_ms).map_err(|e| bad(e.to_string()))?;
                }
                if invite.is_empty() {
                    return Err(bad("invite at least one region or terminal".into()));
                }
                if invite.len() > MAX_INVITEES {
                    return Err(bad(format!(
                        "{} invitees: at most {MAX_INVITEES} (invite a region instead of its sites)",
                        invite.len()
                    )));
                }
                if kind == Kind::Training && chair.is_none() {
                    return Err(bad(
                        "a training needs its lecturer's terminal (--chair)".into()
                    ));
                }
                let id = self.fresh_id(now_ms)?;
                let spec = MeetingSpec {
                    id,
                    kind,
                    title,
                    chair,
                    invitees: invite,
                    starts_ms: at_ms,
                    profile,
                    floor_mutes_others,
                    heartbeat_ms: self.heartbeat_ms,
                };
                let id = self.create(spec, now_ms, kind == Kind::Call)?;
                // In the store before the answer: other commands (readiness) look it up there.
                if let Err(e) = self.save() {
                    tracing::error!(error = %e, "cannot save the new session; retrying at the next tick");
                }
                Ok(ResponseBody::Created { id })
            }
            RequestBody::Op {
                meeting,
                op: ChairOp::End,
            } if self.unusable.contains_key(meeting.as_str()) => {
                self.retire(meeting.as_str())?;
                Ok(ResponseBody::Done { version: 0 })
            }
            RequestBody::Op { meeting, op } => {
                let id = self.find(meeting)?;
                let version = self.op(id, op, now_ms)?;
                Ok(ResponseBody::Done { version })
            }
            RequestBody::Status { meeting, after, .. } => {
                let id = self.find(meeting)?;
                let names = self.names.borrow();
                let mut st = status(&self.hosts[&id], after);
                st.recording = self
                    .recordings
                    .get(&id)
                    .map(|r| r.out.display().to_string());
                for site in &mut st.sites {
                    site.name = names.terminal_str(&site.terminal).to_owned();
                    if site.state == "joined" {
                        site.media = site.terminal.parse().ok().and_then(|t| self.media_of(&t));
                    }
                }
                fit(&mut st.sites, &mut st.next, |s| &s.terminal);
                Ok(ResponseBody::Status(Box::new(st)))
            }
            RequestBody::RollCall {
                meeting,
                after,
                counts,
                ..
            } => {
                let id = self.find(meeting)?;
                let host = &self.hosts[&id];
                if host.state().roll_call.is_none() {
                    return Err(ControlError::NoRollCall(id));
                }
                let chair = host.state().spec.chair;
                let asked = |t: &TerminalId| chair.as_ref() != Some(t);
                let (mut present, mut total) = (0, 0);
                for (t, r) in host.sites() {
                    if asked(t) {
                        total += 1;
                        present += usize::from(host.roll_call_latency(r).is_some());
                    }
                }
                let (page, mut next) = if counts {
                    (Vec::new(), None)
                } else {
                    page(host.sites(), asked, after)
                };
                let names = self.names.borrow();
                let mut rows: Vec<RollCallJson> = page
                    .iter()
                    .map(|(t, r)| {
                        let latency_ms = host.roll_call_latency(r);
                        RollCallJson {
                            terminal: t.to_string(),
                            name: names.terminal(t).to_owned(),
                            present: latency_ms.is_some(),
                            latency_ms,
                        }
                    })
                    .collect();
                fit(&mut rows, &mut next, |r| &r.terminal);
                Ok(ResponseBody::RollCall {
                    present,
                    total,
                    rows,
                    next,
                })
            }
            RequestBody::List => Ok(ResponseBody::List(
                self.hosts
                    .values()
                    .map(meeting_json)
                    .chain(self.unusable.values().cloned())
                    .collect(),
            )),
            RequestBody::Record {
                meeting,
                out,
                layout,
            } => {
                let id = self.find(meeting)?;
                self.record_to(id, out, layout)?;
                self.apply(id, Vec::new());
                Ok(ResponseBody::Done { version: 0 })
            }
            RequestBody::View {
                meeting,
                terminal,
                to,
                stop,
            } => {
                let id = self.find(meeting)?;
                let host = self
                    .hosts
                    .get_mut(&id)
                    .ok_or(ControlError::NoSuchMeeting(id))?;
                host.set_view(terminal, to.to_string(), !stop)
                    .map_err(ControlError::Refused)?;
                let sdp = view_sdp(host.state(), &terminal, to);
                self.apply(id, Vec::new());
                Ok(ResponseBody::Sdp(sdp))
            }
            RequestBody::Dial {
                meeting,
                gateway,
                uri,
            } => {
                let id = self.find(meeting)?;
                cuntong_core::sip::check_uri(&uri)
                    .map_err(|e| ControlError::BadRequest(e.to_string()))?;
                let state = self.hosts[&id].state();
                if state.status != Status::Live {
                    return Err(ControlError::Refused(format!(
                        "{id} is {}: a room system is called into a session in progress",
                        state.status.as_str()
                    )));
                }
                if !state.spec.invites(&gateway) {
                    return Err(ControlError::Refused(format!(
                        "{gateway} is not invited to {id}: the gateway joins for the room system it calls"
                    )));
                }
                tracing::info!(meeting = %id, %gateway, %uri, "the chair has a SIP gateway call a room system");
                self.apply(
                    id,
                    vec![HostOutput::Send(
                        gateway,
                        Downlink::Dial { meeting: id, uri },
                    )],
                );
                Ok(ResponseBody::Done { version: 0 })
            }
            RequestBody::AckAlarm { .. }
            | RequestBody::RolloutStart { .. }
            | RequestBody::Rollout { .. } => {
                Err(ControlError::Failed("not a meeting request".into()))
            }
        }
    }

    /// The session a request names, if central hosts it.
    fn find(&self, id: MeetingId) -> Result<MeetingId, ControlError> {
        if let Some(u) = self.unusable.get(id.as_str()) {
            return Err(ControlError::Unusable {
                meeting: id,
                problem: u.problem.clone().unwrap_or_else(|| "?".into()),
            });
        }
        if self.hosts.contains_key(&id) {
            Ok(id)
        } else {
            Err(ControlError::NoSuchMeeting(id))
        }
    }
}

impl MeetingService {
    /// A site's media from its latest telemetry, if it reported any.
    fn media_of(&self, terminal: &TerminalId) -> Option<crate::control::MediaJson> {
        let values = self.media.get(terminal)?;
        let v = |m: &str| values.get(m).map(|(_, v)| *v);
        let (rx, tx) = (v("media.rx")?, v("media.tx").unwrap_or(0.0));
        Some(crate::control::MediaJson {
            sending: tx > 0.0,
            receiving: rx > 0.0,
            rx_kbps: rx,
            tx_kbps: tx,
            loss_percent: v("media.loss").unwrap_or(0.0),
            jitter_ms: v("media.jitter").unwrap_or(0.0),
            frames: v("media.frames").unwrap_or(0.0),
            streams: v("media.streams").unwrap_or(0.0),
        })
    }
}

/// The plain-RTP description of a site's view for a player at `to`: video there, audio two
/// ports up, as the session's profile sends them.
fn view_sdp(state: &MeetingState, site: &TerminalId, to: std::net::SocketAddr) -> String {
    use cuntong_core::media::sdp::{Audio, Description, Video};
    let profile = &state.spec.profile;
    Description {
        name: &format!("{} {}: {site}", state.spec.id, state.spec.title),
        address: to.ip(),
        video: profile.video.map(|_| Video {
            port: to.port(),
            payload_type: cuntong_core::media::VIDEO_PT,
            // 720p25 at most: level 3.1 covers every profile.
            level: 31,
            content: false,
        }),
        audio: Some(Audio {
            port: to.port().saturating_add(2),
            codec: profile.audio,
            payload_type: cuntong_core::media::OPUS_PT,
        }),
        srtp_key: None,
        session_id: u64::from(site.site().groups()[4]) << 16 | u64::from(to.port()),
        version: state.version,
        direction: cuntong_core::media::sdp::Direction::RecvOnly,
    }
    .render()
}
