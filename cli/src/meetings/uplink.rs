//! What central's meeting host does with the sites' `mt` uplinks: their state reports, the
//! operations a site asks for (a delegated chair's, sharing content) and the calls a terminal
//! places to another.

use super::*;

impl MeetingService {
    /// Handles a message if it is one for the meeting host; false if it is not.
    pub fn on_message(&mut self, msg: &Incoming, now_ms: u64) -> bool {
        let Ok(Topic::Terminal {
            id,
            channel: Channel::MeetingUp,
        }) = Topic::parse(&msg.topic)
        else {
            return false;
        };
        match Uplink::decode(&msg.payload) {
            Ok(Uplink::Call { meeting, to }) => self.call(id, meeting, to, now_ms),
            Ok(Uplink::Chair { meeting, op }) => {
                self.answered(id, meeting, op.name(), now_ms, |h| {
                    h.op_by_site(id, op, now_ms)
                })
            }
            Ok(Uplink::Content { meeting, share }) => {
                self.answered(id, meeting, "content", now_ms, |h| {
                    h.share_content(id, share).map(|()| Vec::new())
                })
            }
            Ok(up) => {
                let mid = up.meeting();
                if let Some(host) = self.hosts.get_mut(&mid) {
                    let version = host.state().version;
                    let out = host.uplink(id, up, now_ms);
                    if host.state().version != version {
                        self.dirty.insert(mid);
                    } else {
                        self.records_changed.insert(mid);
                    }
                    self.apply(mid, out);
                }
            }
            Err(e) => {
                tracing::warn!(terminal = %id, error = %e, "ignoring a malformed meeting uplink")
            }
        }
        true
    }

    /// A site's box asks for an operation `op` (a delegated chair's, or to share content),
    /// which `run` applies to the host; the box gets an answer either way.
    fn answered(
        &mut self,
        from: TerminalId,
        meeting: MeetingId,
        op: &str,
        now_ms: u64,
        run: impl FnOnce(&mut Host) -> Result<Vec<HostOutput>, OpError>,
    ) {
        let Some(host) = self.hosts.get_mut(&meeting) else {
            return;
        };
        let (mut out, error) = match run(host) {
            Ok(out) => (out, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        if let Some(e) = &error {
            tracing::info!(%meeting, terminal = %from, op, error = %e, "a site's request refused");
        }
        // What it changed of the media (the content's streams) goes out at once.
        out.extend(host.media_updates(now_ms));
        self.dirty.insert(meeting);
        self.apply(meeting, out);
        let answer = cuntong_core::meeting::Downlink::Answer {
            meeting,
            op: op.to_owned(),
            error,
        };
        self.apply(meeting, vec![HostOutput::Send(from, answer)]);
    }

    /// A terminal calls another: a two-party session, live at once.
    fn call(&mut self, from: TerminalId, id: MeetingId, to: TerminalId, now_ms: u64) {
        if let Some(h) = self.hosts.get(&id) {
            if h.state().spec.chair != Some(from) {
                self.refuse(from, id, "that id is taken; call again");
            }
            return; // the caller's repeated request
        }
        if self.in_store(&id) {
            self.refuse(from, id, "that id is taken; call again");
            return;
        }
        let calling = self
            .hosts
            .values()
            .filter(|h| {
                h.state().spec.kind == Kind::Call
                    && h.state().status != Status::Ended
                    && h.state().spec.chair == Some(from)
            })
            .count();
        if calling >= CALLS_PER_TERMINAL {
            self.refuse(from, id, "too many calls in progress from this terminal");
            return;
        }
        let spec = MeetingSpec {
            id,
            kind: Kind::Call,
            title: format!("call {from} → {to}"),
            chair: Some(from),
            invitees: vec![Invitee::Terminal(to)],
            starts_ms: None,
            profile: MediaProfile::named("sd").unwrap_or_else(|| MediaProfile {
                name: "sd".into(),
                video: None,
                audio: cuntong_core::meeting::AudioCodec::Opus,
                audio_kbps: 32,
            }),
            floor_mutes_others: false,
            heartbeat_ms: self.heartbeat_ms,
        };
        if let Err(e) = self.create(spec, now_ms, true) {
            tracing::warn!(%from, %to, error = %e, "call refused");
        }
    }

    fn refuse(&mut self, to: TerminalId, meeting: MeetingId, reason: &str) {
        let d = cuntong_core::meeting::Downlink::Refused {
            meeting,
            reason: reason.to_owned(),
        };
        self.apply(meeting, vec![HostOutput::Send(to, d)]);
    }
}
