//! The conference participant on the box: the core's [`Participant`] wired to the link (the
//! meeting topics of the site's regions, the `md` downlink, the `mt` uplink), to a
//! [`MediaEngine`], to the people at the box ([`Console`]: buttons, or the simulator's
//! behaviour) and to the operator's requests through the status socket.
//!
//! The bandwidth tier follows the link telemetry: when the keep-alive round trip or loss
//! crosses the configured thresholds the site joins (or joins again) audio-only or
//! receive-only, and the host and the status report say so.

use cuntong_core::envelope::encode;
use cuntong_core::media::routes::Routes;
use cuntong_core::meeting::participant::{
    AcceptPolicy, Input, MediaCommand, Output, Participant, ParticipantConfig, Phase, Session,
};
use cuntong_core::meeting::relays::RelayPlan;
use cuntong_core::meeting::{
    Downlink, MeetingId, MeetingState, Screen, Tier, TierThresholds, TierTracker, Uplink,
};
use cuntong_core::terminal_id::TerminalId;
use cuntong_core::topic::{Channel, Topic, meeting_filters};
use serde::{Deserialize, Serialize};

use crate::link::Message;
use crate::status::Refusal;

mod engine;
mod operator;
mod relay;

pub use engine::{Console, Invitation, MediaEngine, SignallingOnly, Unattended};
pub use operator::OperatorRequest;
use operator::chair_words;

/// How the terminal takes part in meetings (`[meeting]` in the config).
#[derive(Clone, Debug, PartialEq)]
pub struct MeetingConfig {
    pub accept: AcceptPolicy,
    /// Where this box receives media.
    pub rtp_port: u16,
    /// A fixed tier (a box known to sit on a thin line), instead of following the link.
    pub tier: Option<Tier>,
    pub thresholds: TierThresholds,
    /// The address this box's relay reaches it at (its media arrives at `rtp_port` there).
    pub media_host: Option<String>,
    /// The relay role: where it listens, and the address sites send to.
    pub relay: Option<(std::net::SocketAddr, String)>,
}

impl Default for MeetingConfig {
    fn default() -> MeetingConfig {
        MeetingConfig {
            accept: AcceptPolicy::Scheduled,
            rtp_port: 5004,
            tier: None,
            thresholds: TierThresholds::default(),
            media_host: None,
            relay: None,
        }
    }
}

/// One session in the status report (`meetings` in `cuntong-terminal status --json`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeetingReport {
    pub id: String,
    pub kind: String,
    pub title: String,
    /// `scheduled`, `live` or `ended`.
    pub status: String,
    /// `invited`, `joining`, `joined`, `declined`, `left` or `ended`.
    pub phase: String,
    pub version: u64,
    pub role: String,
    pub muted: bool,
    pub tier: Option<String>,
    /// The site shown on screen.
    pub shown: Option<String>,
    pub hand_raised: bool,
    /// The roll call this site answered last.
    pub answered_roll_call: Option<u32>,
    /// The host's answer to this box's last request of it: a chair operation or content
    /// (`mute: ok`, `content: refused: …`).
    #[serde(default)]
    pub chair_answer: Option<String>,
}

/// The participant of one terminal and everything around it.
pub struct Conference {
    me: TerminalId,
    participant: Participant,
    engine: Box<dyn MediaEngine>,
    console: Box<dyn Console>,
    cfg: MeetingConfig,
    tiers: TierTracker,
    uplink: String,
    downlink: String,
    /// The relay role, if this box has one, and what each session asks it to forward.
    relay: Option<crate::relay::Relay>,
    relay_plans: std::collections::BTreeMap<MeetingId, RelayPlan>,
    /// Views being served: (meeting, SSRC, viewer) → where the relay sends the stream locally.
    views: std::collections::BTreeMap<ViewKey, (std::net::SocketAddr, std::net::SocketAddr)>,
    /// Lines logged per received message (a flood of bad ones costs a line a minute).
    log: crate::throttle::LogLimiter,
    /// The newest screen of each session, for its media when it starts.
    screens: std::collections::BTreeMap<MeetingId, Screen>,
    /// The box's SIP gateway, if it is one: the calls it is told to make.
    gateway: Option<tokio::sync::mpsc::Sender<crate::sip::Dial>>,
}

type ViewKey = (MeetingId, u32, std::net::SocketAddr);

impl std::fmt::Debug for Conference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conference")
            .field("me", &self.me)
            .field("sessions", &self.participant.sessions().len())
            .finish()
    }
}

impl Conference {
    pub fn new(
        me: TerminalId,
        cfg: MeetingConfig,
        engine: Box<dyn MediaEngine>,
        console: Box<dyn Console>,
    ) -> Conference {
        let relay = cfg.relay.as_ref().and_then(|(listen, _)| {
            match crate::relay::Relay::start(*listen, Routes::new(None)) {
                Ok(r) => {
                    eprintln!("relay listening on {}", r.local_addr());
                    Some(r)
                }
                Err(e) => {
                    tracing::error!(%listen, error = %e, "cannot start the relay; not relaying");
                    None
                }
            }
        });
        // Sites send where the relay actually listens: port 0 in the configuration becomes the
        // port bound.
        let advertise = relay.as_ref().zip(cfg.relay.as_ref()).map(|(r, (_, a))| {
            match a.parse::<std::net::SocketAddr>() {
                Ok(mut at) if at.port() == 0 => {
                    at.set_port(r.local_addr().port());
                    at.to_string()
                }
                _ => a.clone(),
            }
        });
        if let Some(a) = &advertise {
            tracing::info!(advertise = %a, "relaying media for the sites below");
        }
        let pcfg = ParticipantConfig {
            accept: cfg.accept,
            reconnect_grace_ms: 10_000,
            join_retry: cuntong_core::meeting::participant::JOIN_RETRY,
            tier: cfg.tier.unwrap_or(Tier::Full),
            rtp_port: cfg.rtp_port,
            media_host: cfg.media_host.clone(),
            relay: advertise,
            // Drawn at each start, so no joining of this run is taken for one of the last.
            boot: rand::random(),
        };
        Conference {
            me,
            participant: Participant::new(me, pcfg),
            engine,
            console,
            tiers: TierTracker::new(cfg.tier.unwrap_or(Tier::Full)),
            cfg,
            uplink: Topic::terminal(&me, Channel::MeetingUp).to_string(),
            downlink: Topic::terminal(&me, Channel::MeetingDown).to_string(),
            relay,
            relay_plans: std::collections::BTreeMap::new(),
            views: std::collections::BTreeMap::new(),
            log: crate::throttle::LogLimiter::default(),
            screens: std::collections::BTreeMap::new(),
            gateway: None,
        }
    }

    /// The media's figures since the last call (for telemetry).
    pub fn media_sample(&mut self) -> Vec<(cuntong_core::telemetry::Metric, f64)> {
        self.engine.sample()
    }

    /// Makes this box the SIP gateway whose calls go to `dials`.
    pub fn set_gateway(&mut self, dials: tokio::sync::mpsc::Sender<crate::sip::Dial>) {
        self.gateway = Some(dials);
    }

    /// Has the box's SIP gateway call the room system at `uri` into `meeting` (the chair's
    /// `meeting dial`, or a signed `dial` command); why not, if it cannot.
    pub fn dial(&self, meeting: MeetingId, uri: String) -> Result<(), &'static str> {
        let gateway = self
            .gateway
            .as_ref()
            .ok_or("this box is not a SIP gateway (no [sip])")?;
        gateway
            .try_send(crate::sip::Dial { meeting, uri })
            .map_err(|_| "the SIP gateway is busy or stopping")
    }

    /// The topic filters the link must subscribe to.
    pub fn subscriptions(me: &TerminalId) -> Vec<String> {
        meeting_filters(me)
    }

    /// Handles a received message if it is a meeting message; `None` if it is not one.
    pub fn on_message(&mut self, topic: &str, payload: &[u8], now_ms: u64) -> Option<Vec<Message>> {
        let input = if topic == self.downlink {
            match Downlink::decode(payload) {
                Ok(d) => Input::Downlink(d),
                Err(e) => {
                    if let Some(more) = self.log.allow("malformed downlink") {
                        tracing::warn!(%topic, error = %e, "ignoring a malformed meeting downlink{more}");
                    }
                    return Some(Vec::new());
                }
            }
        } else {
            let id = match Topic::parse(topic) {
                Ok(Topic::Meeting { id, .. }) => id,
                Ok(Topic::Screen { id, .. }) => {
                    self.on_screen(topic, id, payload);
                    return Some(Vec::new());
                }
                _ => return None,
            };
            if payload.is_empty() {
                Input::Cleared(id)
            } else {
                match MeetingState::decode(payload) {
                    Ok(s) if s.spec.id == id => Input::State(Box::new(s)),
                    Ok(_) => {
                        if let Some(more) = self.log.allow("state under another id") {
                            tracing::warn!(%topic, "ignoring a meeting state filed under another id{more}");
                        }
                        return Some(Vec::new());
                    }
                    Err(e) => {
                        if let Some(more) = self.log.allow("malformed state") {
                            tracing::warn!(%topic, error = %e, "ignoring a malformed meeting state{more}");
                        }
                        return Some(Vec::new());
                    }
                }
            }
        };
        Some(self.handle(input, now_ms))
    }

    /// A session's screen arrived (`payload` empty: cleared with the session): keep the
    /// newest, and hand it to the media.
    fn on_screen(&mut self, topic: &str, id: MeetingId, payload: &[u8]) {
        if payload.is_empty() {
            self.screens.remove(&id);
            return;
        }
        match Screen::decode(payload) {
            Ok(s) if s.meeting == id => {
                if self
                    .screens
                    .get(&id)
                    .is_some_and(|old| old.version >= s.version)
                {
                    return;
                }
                self.engine.screen(&s);
                self.screens.insert(id, s);
            }
            Ok(_) => {
                if let Some(more) = self.log.allow("screen under another id") {
                    tracing::warn!(%topic, "ignoring a meeting screen filed under another id{more}");
                }
            }
            Err(e) => {
                if let Some(more) = self.log.allow("malformed screen") {
                    tracing::warn!(%topic, error = %e, "ignoring a malformed meeting screen{more}");
                }
            }
        }
    }

    /// The link connected again: re-announce, and expect the retained states back.
    pub fn reconnected(&mut self, now_ms: u64) -> Vec<Message> {
        self.handle(Input::Reconnected, now_ms)
    }

    /// Time passed; `rtt_ms` and `loss_percent` are the link's latest telemetry.
    pub fn tick(&mut self, now_ms: u64, rtt_ms: Option<f64>, loss_percent: f64) -> Vec<Message> {
        let tier = match self.cfg.tier {
            Some(fixed) => fixed,
            None => self
                .tiers
                .observe(self.cfg.thresholds.tier(rtt_ms, loss_percent), now_ms),
        };
        self.engine.link(rtt_ms, loss_percent);
        let mut out = self.handle(Input::SetTier(tier), now_ms);
        out.extend(self.handle(Input::Tick, now_ms));
        out
    }

    /// An operator's request; answers with a line for the operator.
    pub fn operator(
        &mut self,
        req: OperatorRequest,
        now_ms: u64,
    ) -> Result<(String, Vec<Message>), Refusal> {
        let known = |m: &MeetingId| {
            self.participant
                .session(m)
                .map(|s| s.phase)
                .ok_or(Refusal::NoSession(*m))
        };
        let (input, answer) = match req {
            OperatorRequest::Accept(m) => {
                known(&m)?;
                (Input::Accept(m), format!("accepted {m}"))
            }
            OperatorRequest::Decline(m, r) => {
                known(&m)?;
                (Input::Decline(m, r), format!("declined {m}"))
            }
            OperatorRequest::RaiseHand(m) => {
                if known(&m)? != Phase::Joined {
                    return Err(Refusal::NotJoined(m));
                }
                (Input::RaiseHand(m), format!("hand raised in {m}"))
            }
            OperatorRequest::LowerHand(m) => {
                known(&m)?;
                (Input::LowerHand(m), format!("hand lowered in {m}"))
            }
            OperatorRequest::Leave(m) => {
                known(&m)?;
                (Input::Leave(m), format!("left {m}"))
            }
            OperatorRequest::Chair(m, op) => {
                known(&m)?;
                let words = chair_words(&op);
                (
                    Input::Chair(m, op),
                    format!("{words} sent to the host of {m} (its answer shows in status)"),
                )
            }
            OperatorRequest::Content(m, on) => {
                if known(&m)? != Phase::Joined {
                    return Err(Refusal::NotJoined(m));
                }
                if on && !self.engine.has_content() {
                    return Err(Refusal::NoContentSource);
                }
                (
                    Input::ShareContent(m, on),
                    format!(
                        "content {} asked of the host of {m} (its answer shows in status)",
                        if on { "on" } else { "off" }
                    ),
                )
            }
            OperatorRequest::Layout(m, layout) => {
                known(&m)?;
                return if self.engine.set_layout(m, layout) {
                    Ok((format!("layout {layout} on this box for {m}"), Vec::new()))
                } else {
                    Err(Refusal::NoPicture(m))
                };
            }
            OperatorRequest::Call(to) => {
                if to == self.me {
                    return Err(Refusal::CallSelf);
                }
                let id: MeetingId = format!("c{:08x}", rand::random::<u32>())
                    .parse()
                    .map_err(Refusal::CallId)?;
                (Input::Call(id, to), format!("calling {to} ({id})"))
            }
        };
        Ok((answer, self.handle(input, now_ms)))
    }

    /// The media engine's capture devices.
    pub fn capture_devices(&self) -> crate::readiness::CaptureDevices {
        self.engine.capture_devices()
    }

    pub fn thresholds(&self) -> &TierThresholds {
        &self.cfg.thresholds
    }

    /// No session at all: the clock only follows the link's tier, which needs no second-by-
    /// second tick.
    pub fn idle(&self) -> bool {
        self.participant.sessions().is_empty()
    }

    /// When [`Conference::tick`] is next needed with no new keep-alive (which calls it at
    /// once): every `link_every` after `last` while a media engine adapts to the link in a
    /// session, when the signalling has something due, and when a waiting tier would take
    /// over (unix times against `now_ms`). `None` while nothing waits for time: a box out of
    /// meetings, and a province's simulated boxes on one machine, sleep.
    pub fn next_tick(
        &self,
        last: tokio::time::Instant,
        now_ms: u64,
    ) -> Option<tokio::time::Instant> {
        let at = |due_ms: u64| {
            tokio::time::Instant::now()
                + std::time::Duration::from_millis(due_ms.saturating_sub(now_ms))
        };
        let adapting = match self.engine.link_every() {
            Some(every) if !self.idle() => Some(last + every),
            _ => None,
        };
        let tier = match self.cfg.tier {
            Some(_) => None,
            None => self.tiers.next_change_ms(),
        };
        [self.participant.next_due_ms(), tier]
            .into_iter()
            .flatten()
            .map(at)
            .chain(adapting)
            .min()
    }

    /// Live sessions this terminal has joined (the `meeting.joined` metric).
    pub fn joined(&self) -> usize {
        self.participant
            .sessions()
            .values()
            .filter(|s| {
                s.phase == Phase::Joined && s.state.status == cuntong_core::meeting::Status::Live
            })
            .count()
    }

    /// How hard an update may use the box now: it yields while a session it knows is live,
    /// and within the hour around one it is invited to.
    pub fn update_pace(&self, now_ms: u64) -> cuntong_core::update::Pace {
        use cuntong_core::meeting::Status;
        let sessions = self.participant.sessions();
        let live = sessions.values().any(|s| s.state.status == Status::Live);
        let next = sessions
            .values()
            .filter(|s| s.state.status == Status::Scheduled)
            .filter_map(|s| s.state.spec.starts_ms)
            .min();
        cuntong_core::update::Pace::of(live, next, now_ms)
    }

    /// Every session this terminal knows, for the status report.
    pub fn report(&self) -> Vec<MeetingReport> {
        self.participant
            .sessions()
            .iter()
            .map(|(id, s)| report(&self.me, id, s))
            .collect()
    }

    fn handle(&mut self, input: Input, now_ms: u64) -> Vec<Message> {
        let mut pending = vec![input];
        let mut out = Vec::new();
        while let Some(input) = pending.pop() {
            let before: Vec<(MeetingId, Phase)> = self
                .participant
                .sessions()
                .iter()
                .map(|(id, s)| (*id, s.phase))
                .collect();
            for o in self.participant.handle(input, now_ms) {
                match o {
                    Output::Send(up) => match uplink_message(&self.uplink, &up) {
                        Ok(m) => out.push(m),
                        Err(e) => tracing::warn!(error = %e, "cannot encode a meeting uplink"),
                    },
                    Output::Media(MediaCommand::Start {
                        meeting,
                        plan,
                        profile,
                    }) => {
                        self.engine.start(meeting, &plan, &profile);
                        if let Some(screen) = self.screens.get(&meeting) {
                            self.engine.screen(screen);
                        }
                        // Views wait for the session's media (the key) to be there.
                        if self.relay_plans.contains_key(&meeting) {
                            self.apply_relay_plans();
                        }
                    }
                    Output::Media(MediaCommand::Apply { meeting, applied }) => {
                        self.engine.apply(meeting, &applied)
                    }
                    // A media restart (a new plan) keeps the relay's table: the sites below
                    // still need it. It goes when the session does (below).
                    Output::Media(MediaCommand::Stop { meeting }) => {
                        self.engine.stop(meeting);
                        // Over for this box (not a restart with another plan): said so too.
                        let over = self.participant.session(&meeting).is_none_or(|s| {
                            matches!(s.phase, Phase::Left | Phase::Ended | Phase::Declined)
                        });
                        if over {
                            self.engine.over(meeting);
                        }
                    }
                    Output::Media(MediaCommand::Relay { meeting, plan }) => {
                        self.relay_plans.insert(meeting, plan);
                        self.apply_relay_plans();
                    }
                    Output::Dial { meeting, uri } => match self.dial(meeting, uri.clone()) {
                        Ok(()) => {
                            tracing::info!(%meeting, %uri, "the chair has the gateway call a room system")
                        }
                        Err(e) => {
                            tracing::warn!(%meeting, %uri, error = e, "not calling the room system")
                        }
                    },
                }
            }
            // The console reacts to new invitations and to joining.
            for (id, s) in self.participant.sessions() {
                let was = before.iter().find(|(b, _)| b == id).map(|(_, p)| *p);
                match (was, s.phase) {
                    (None, Phase::Invited) => match self.console.invited(&s.state) {
                        Some(Invitation::Accept) => pending.push(Input::Accept(*id)),
                        Some(Invitation::Decline(r)) => pending.push(Input::Decline(*id, r)),
                        None => {}
                    },
                    (Some(p), Phase::Joined)
                        if p != Phase::Joined && self.console.joined(&s.state) =>
                    {
                        pending.push(Input::RaiseHand(*id));
                    }
                    _ => {}
                }
            }
        }
        let sessions = self.participant.sessions();
        let before = self.relay_plans.len();
        self.relay_plans.retain(|m, _| {
            sessions
                .get(m)
                .is_some_and(|s| matches!(s.phase, Phase::Joining | Phase::Joined))
        });
        if self.relay_plans.len() != before {
            self.apply_relay_plans();
        }
        out
    }
}

/// What the site says to the host, on `topic`: ahead of bulk work. A status at QoS 0: it is
/// repeated at every heartbeat and whole in each copy, and a province's roll call (54,000
/// statuses at once) then costs no acknowledgement at each broker on the way.
fn uplink_message(
    topic: &str,
    up: &Uplink,
) -> Result<Message, cuntong_core::envelope::EncodeError> {
    let m = Message::new(topic, encode(up)?).urgent();
    Ok(match up {
        Uplink::Status { .. } => m.at_most_once(),
        _ => m,
    })
}

fn report(me: &TerminalId, id: &MeetingId, s: &Session) -> MeetingReport {
    let desired = s.state.desired_for(me);
    MeetingReport {
        id: id.to_string(),
        kind: s.state.spec.kind.as_str().to_owned(),
        title: s.state.spec.title.clone(),
        status: s.state.status.as_str().to_owned(),
        phase: s.phase.as_str().to_owned(),
        version: s.state.version,
        role: desired.role.as_str().to_owned(),
        muted: s.applied.map_or(desired.muted, |a| a.muted),
        tier: s.plan.as_ref().map(|p| p.tier.as_str().to_owned()),
        shown: desired.shown.map(|t| t.to_string()),
        hand_raised: desired.hand,
        answered_roll_call: s.answer.map(|a| a.number),
        chair_answer: s.chair_answer.as_ref().map(|(op, error)| match error {
            None => format!("{op}: ok"),
            Some(e) => format!("{op}: refused: {e}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Log output captured in memory.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A village box with no media and nobody at it.
    fn unattended_box() -> Conference {
        Conference::new(
            "130102001001-main".parse().unwrap(),
            MeetingConfig::default(),
            Box::new(SignallingOnly),
            Box::new(Unattended),
        )
    }

    #[test]
    fn statuses_go_at_most_once_and_every_other_uplink_at_least_once() {
        use crate::link::QoS;
        use cuntong_core::meeting::Hand;
        let meeting: MeetingId = "m1".parse().unwrap();
        let status = Uplink::Status {
            meeting,
            seen: 3,
            muted: false,
            hand: Hand::default(),
            answer: None,
        };
        let m = uplink_message("ct/v1/up", &status).unwrap();
        assert_eq!((m.qos, m.urgent), (QoS::AtMostOnce, true));
        assert_eq!(Uplink::decode(&m.payload).unwrap(), status);
        for up in [
            Uplink::Leave { meeting },
            Uplink::Decline {
                meeting,
                reason: "busy".into(),
            },
        ] {
            let m = uplink_message("ct/v1/up", &up).unwrap();
            assert_eq!((m.qos, m.urgent), (QoS::AtLeastOnce, true), "{up:?}");
        }
    }

    /// Out of meetings a box has no clock to keep for them: it wakes for a keep-alive (which
    /// calls `tick`) and, after one that measured a worse link, when the worse tier takes over.
    #[test]
    fn a_box_out_of_meetings_wakes_only_for_a_tier_that_waits() {
        use std::time::Duration;
        let mut c = unattended_box();
        let last = tokio::time::Instant::now();
        assert_eq!(c.next_tick(last, 1_000), None, "nothing waits for time");
        assert!(c.tick(1_000, Some(20.0), 0.0).is_empty());
        assert_eq!(
            c.next_tick(last, 1_000),
            None,
            "a good link changes nothing"
        );
        assert!(c.tick(2_000, Some(5_000.0), 50.0).is_empty());
        let at = c
            .next_tick(last, 2_000)
            .expect("a worse tier waits to take over");
        let wait = at.saturating_duration_since(tokio::time::Instant::now());
        assert!(
            wait > Duration::from_secs(2) && wait <= Duration::from_secs(3),
            "{wait:?}"
        );
        c.tick(5_000, Some(5_000.0), 50.0);
        assert_ne!(c.tiers.current(), Tier::Full, "taken over");
        assert_eq!(c.next_tick(last, 5_000), None);
    }

    #[test]
    fn a_flood_of_malformed_meeting_messages_costs_one_log_line_per_kind() {
        let mut c = unattended_box();
        let id = c.me;
        let down = Topic::terminal(&id, Channel::MeetingDown).to_string();
        let log = Captured::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..1_000 {
                assert_eq!(c.on_message(&down, b"\xff junk", 0), Some(Vec::new()));
            }
        });
        let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("malformed meeting downlink"), "{text}");
    }
}
