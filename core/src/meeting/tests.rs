//! Host and participant together: unit tests of the rules, and a model-based property test of
//! convergence under message loss, duplication, reordering and disconnects.
#![allow(clippy::unwrap_used)]

use alloc::string::ToString;
use alloc::vec;
use alloc::vec::Vec;

use crate::site::Region;

use super::host::{
    ChairOp, Host, HostConfig, HostOutput, Notice, OpError, Operator, PLAN_IN_FLIGHT_MS,
    PLANS_PER_S, SitePhase, plan_in_flight_ms,
};
use super::participant::{
    AcceptPolicy, Input, MediaCommand, Output, Participant, ParticipantConfig, Phase,
    paced_join_retry,
};
use super::*;
use crate::envelope::encode;
use crate::media::layout::Layout;

const HB: u64 = 10_000;

fn t(s: &str) -> TerminalId {
    s.parse().unwrap()
}

fn spec(kind: Kind, invite: &[&str], chair: Option<&str>) -> MeetingSpec {
    MeetingSpec {
        id: "m1".parse().unwrap(),
        kind,
        title: "防汛工作会议".into(),
        chair: chair.map(t),
        invitees: invite.iter().map(|s| s.parse().unwrap()).collect(),
        starts_ms: Some(1_000),
        profile: MediaProfile::named("sd").unwrap(),
        floor_mutes_others: true,
        heartbeat_ms: HB as u32,
    }
}

fn host(kind: Kind, invite: &[&str]) -> Host {
    Host::new(
        spec(kind, invite, Some("130102000000-hall")),
        HostConfig::default(),
        vec![7; 30],
        0,
    )
    .0
}

fn pcfg(accept: AcceptPolicy) -> ParticipantConfig {
    ParticipantConfig {
        accept,
        reconnect_grace_ms: HB,
        join_retry: participant::JOIN_RETRY,
        tier: Tier::Full,
        rtp_port: 5004,
        media_host: None,
        relay: None,
        boot: 0,
    }
}

/// A lossless little world: one host, some participants, messages delivered at once.
struct World {
    host: Host,
    sites: Vec<Participant>,
    now: u64,
    retained: Option<MeetingState>,
    notices: Vec<Notice>,
    media: Vec<(TerminalId, MediaCommand)>,
    screens: Vec<Screen>,
    /// Calls the sites (SIP gateways) were told to make.
    dials: Vec<(TerminalId, MeetingId, String)>,
}

impl World {
    fn new(host: Host, ids: &[&str], accept: AcceptPolicy) -> World {
        let mut w = World {
            retained: Some(host.state().clone()),
            host,
            sites: ids
                .iter()
                .map(|i| Participant::new(t(i), pcfg(accept)))
                .collect(),
            now: 1_000,
            notices: Vec::new(),
            media: Vec::new(),
            screens: Vec::new(),
            dials: Vec::new(),
        };
        let s = w.retained.clone().unwrap();
        for i in 0..w.sites.len() {
            w.deliver_to(i, Input::State(s.clone().into()));
        }
        w
    }

    fn op(&mut self, op: ChairOp) -> Result<(), OpError> {
        let mut out = self.host.op(&Operator::Chair, op, self.now)?;
        out.extend(self.host.media_updates(self.now));
        self.host_out(out);
        Ok(())
    }

    fn host_out(&mut self, out: Vec<HostOutput>) {
        for o in out {
            match o {
                HostOutput::Publish(s) => {
                    self.retained = Some((*s).clone());
                    for i in 0..self.sites.len() {
                        self.deliver_to(i, Input::State(s.clone()));
                    }
                }
                HostOutput::Clear => {
                    self.retained = None;
                    let id = self.host.state().spec.id;
                    for i in 0..self.sites.len() {
                        self.deliver_to(i, Input::Cleared(id));
                    }
                }
                HostOutput::Send(to, d) => {
                    if let Some(i) = self.sites.iter().position(|p| *p.id() == to) {
                        self.deliver_to(i, Input::Downlink(d));
                    }
                }
                HostOutput::Notice(n) => self.notices.push(n),
                HostOutput::Screen(s) => self.screens.push(*s),
            }
        }
    }

    fn deliver_to(&mut self, i: usize, input: Input) {
        let out = self.sites[i].handle(input, self.now);
        let me = *self.sites[i].id();
        for o in out {
            match o {
                Output::Send(up) => {
                    // Laid out after each message, as central does when nothing else waits.
                    let mut r = self.host.uplink(me, up, self.now);
                    r.extend(self.host.media_updates(self.now));
                    self.host_out(r);
                }
                Output::Media(m) => self.media.push((me, m)),
                Output::Dial { meeting, uri } => self.dials.push((me, meeting, uri)),
            }
        }
    }

    fn session(&self, i: usize) -> &participant::Session {
        self.sites[i].session(&"m1".parse().unwrap()).unwrap()
    }

    fn advance(&mut self, ms: u64) {
        self.now += ms;
        let mut out = self.host.tick(self.now);
        out.extend(self.host.media_updates(self.now));
        self.host_out(out);
        for i in 0..self.sites.len() {
            self.deliver_to(i, Input::Tick);
        }
    }
}

#[test]
fn scheduled_meeting_is_joined_on_its_own_when_it_starts() {
    let mut w = World::new(
        host(Kind::Meeting, &["130102"]),
        &["130102001001-main"],
        AcceptPolicy::Scheduled,
    );
    assert_eq!(w.session(0).phase, Phase::Invited, "not before it starts");
    w.op(ChairOp::Start).unwrap();
    assert_eq!(w.session(0).phase, Phase::Joined);
    assert!(matches!(w.media[0].1, MediaCommand::Start { .. }));
    assert!(w.host.converged(&t("130102001001-main")));
    assert!(w.notices.contains(&Notice::Joined(t("130102001001-main"))));
}

#[test]
fn late_site_gets_current_mute_state_on_reconnect() {
    let v = t("130102001001-main");
    let mut w = World::new(
        host(Kind::Meeting, &["130102"]),
        &["130102001001-main"],
        AcceptPolicy::All,
    );
    w.op(ChairOp::Start).unwrap();
    // The site goes away; the chair mutes it and broadcasts another site meanwhile.
    let away = w.sites.remove(0);
    w.op(ChairOp::Mute(v)).unwrap();
    w.op(ChairOp::Broadcast(Some(t("130102002001-main"))))
        .unwrap();
    w.advance(HB * 4);
    assert_eq!(w.host.sites()[&v].phase, SitePhase::Unreachable);
    w.sites.push(away);
    // Back: the retained state arrives right after the reconnect.
    w.deliver_to(0, Input::Reconnected);
    let s = w.retained.clone().unwrap();
    w.deliver_to(0, Input::State(s.into()));
    let applied = w.session(0).applied.unwrap();
    assert!(applied.muted);
    assert_eq!(applied.shown, Some(t("130102002001-main")));
    assert!(
        w.host.converged(&v),
        "the host knows at once, within one heartbeat"
    );
    assert_eq!(w.host.sites()[&v].phase, SitePhase::Joined);
}

#[test]
fn roll_call_records_each_sites_true_answer_time() {
    let (a, b) = (t("130102001001-main"), t("130102002001-main"));
    let mut w = World::new(
        host(Kind::Meeting, &["130102"]),
        &["130102001001-main", "130102002001-main"],
        AcceptPolicy::All,
    );
    w.op(ChairOp::Start).unwrap();
    let away = w.sites.remove(1);
    w.advance(100);
    w.op(ChairOp::RollCall).unwrap();
    let opened = w.now;
    w.sites.push(away);
    w.advance(2_500);
    w.deliver_to(1, Input::Reconnected);
    let s = w.retained.clone().unwrap();
    w.deliver_to(1, Input::State(s.into()));
    let r = w.host.roll_call_results().unwrap();
    let (rc, rows) = (r.roll_call, r.sites);
    assert_eq!(rc.opened_ms, opened);
    let latency = |x: &TerminalId| rows.iter().find(|(t, _)| t == x).unwrap().1;
    assert_eq!(latency(&a), Some(0));
    assert_eq!(latency(&b), Some(2_500), "answered when it came back");
    assert_eq!(
        latency(&t("130102000000-hall")),
        None,
        "the chair's box never joined"
    );
    // A new roll call: the old answers no longer count, everybody answers again.
    w.advance(10);
    w.op(ChairOp::RollCall).unwrap();
    let r = w.host.roll_call_results().unwrap();
    let (rc2, rows) = (r.roll_call, r.sites);
    assert_eq!(rc2.number, rc.number + 1);
    assert!(
        rows.iter()
            .filter(|(t, _)| *t != t_hall())
            .all(|(_, l)| *l == Some(0))
    );
}

fn t_hall() -> TerminalId {
    t("130102000000-hall")
}

#[test]
fn granting_the_floor_mutes_the_others_and_lowers_the_hand() {
    let (a, b) = (t("130102001001-main"), t("130102002001-main"));
    let mut w = World::new(
        host(Kind::Meeting, &["130102"]),
        &["130102001001-main", "130102002001-main"],
        AcceptPolicy::All,
    );
    w.op(ChairOp::Start).unwrap();
    w.deliver_to(0, Input::RaiseHand("m1".parse().unwrap()));
    assert_eq!(w.host.state().hands, vec![a]);
    assert!(w.session(0).applied.unwrap().hand);
    w.op(ChairOp::Grant(a)).unwrap();
    let st = w.host.state().clone();
    assert_eq!(st.floor, Some(a));
    assert!(st.hands.is_empty());
    assert!(!st.is_muted(&a) && st.is_muted(&b) && !st.is_muted(&t_hall()));
    assert_eq!(w.session(0).applied.unwrap().role, Role::Speaker);
    assert_eq!(
        w.session(1).applied.unwrap().shown,
        Some(a),
        "the speaker is shown"
    );
    // The site's status keeps repeating its raise; the hand stays down.
    w.advance(HB);
    assert!(w.host.state().hands.is_empty());
    w.op(ChairOp::Revoke).unwrap();
    assert!(w.host.state().is_muted(&a), "mute-all still holds");
}

#[test]
fn chair_lowering_a_hand_is_not_undone_by_repeated_status() {
    let a = t("130102001001-main");
    let mut w = World::new(
        host(Kind::Meeting, &["130102"]),
        &["130102001001-main"],
        AcceptPolicy::All,
    );
    w.op(ChairOp::Start).unwrap();
    w.deliver_to(0, Input::RaiseHand("m1".parse().unwrap()));
    w.op(ChairOp::LowerHand(a)).unwrap();
    w.advance(HB);
    w.advance(HB);
    assert!(w.host.state().hands.is_empty());
    assert!(!w.session(0).applied.unwrap().hand);
    w.deliver_to(0, Input::RaiseHand("m1".parse().unwrap()));
    assert_eq!(w.host.state().hands, vec![a], "raising again works");
}

#[test]
fn a_delegate_controls_only_its_county() {
    let mut h = host(Kind::Meeting, &["13"]);
    h.op(&Operator::Chair, ChairOp::Start, 1).unwrap();
    let county = Operator::Delegate("130102".parse().unwrap());
    h.expect([
        t("130102001001-main"),
        t("130102002001-main"),
        t("130103001001-main"),
    ]);
    assert!(
        h.op(&county, ChairOp::Mute(t("130102001001-main")), 2)
            .is_ok()
    );
    assert_eq!(
        h.op(&county, ChairOp::Mute(t("130103001001-main")), 3),
        Err(OpError::OutsideScope {
            target: t("130103001001-main"),
            scope: "130102".parse().unwrap()
        })
    );
    assert_eq!(
        h.op(&county, ChairOp::End, 4),
        Err(OpError::ChairOnly { op: "end" })
    );
    assert_eq!(
        h.op(&county, ChairOp::RollCall, 4),
        Err(OpError::ChairOnly { op: "rollcall" })
    );
    h.op(&county, ChairOp::MuteAll, 5).unwrap();
    let st = h.state();
    assert!(st.is_muted(&t("130102002001-main")));
    assert!(
        !st.is_muted(&t("130103001001-main")),
        "the neighbouring county is untouched"
    );
    assert!(!st.mute_all);
}

#[test]
fn a_county_box_delegated_by_the_chair_controls_its_county_from_the_box() {
    let hall = t("130102000000-hall");
    let mut h = host(Kind::Meeting, &["13"]);
    h.op(&Operator::Chair, ChairOp::Start, 1).unwrap();
    let mute = |x: &str| ChairOp::Mute(t(x));
    assert_eq!(
        h.op_by_site(hall, mute("130102001001-main"), 2),
        Err(OpError::NotDelegate(hall)),
        "not before the chair delegates"
    );
    h.op(
        &Operator::Chair,
        ChairOp::Delegate(hall, Some("130102".parse().unwrap())),
        3,
    )
    .unwrap();
    assert!(h.op_by_site(hall, mute("130102001001-main"), 4).is_ok());
    assert!(h.state().is_muted(&t("130102001001-main")));
    assert!(matches!(
        h.op_by_site(hall, mute("130103001001-main"), 5),
        Err(OpError::OutsideScope { .. })
    ));
    assert!(
        matches!(
            h.op_by_site(
                hall,
                ChairOp::Delegate(hall, Some("13".parse().unwrap())),
                6
            ),
            Err(OpError::ChairOnly { .. })
        ),
        "a delegate cannot widen its own region"
    );
    h.op(&Operator::Chair, ChairOp::Delegate(hall, None), 7)
        .unwrap();
    assert_eq!(
        h.op_by_site(hall, mute("130102002001-main"), 8),
        Err(OpError::NotDelegate(hall))
    );
}

#[test]
fn either_party_hanging_up_ends_a_call() {
    let caller = "130102001001-main";
    let (h, _) = Host::new(
        MeetingSpec {
            kind: Kind::Call,
            chair: Some(t(caller)),
            invitees: vec![Invitee::Terminal(t("130102000000-hall"))],
            starts_ms: None,
            floor_mutes_others: false,
            ..spec(Kind::Call, &[], None)
        },
        HostConfig::default(),
        vec![1; 30],
        0,
    );
    let mut w = World::new(
        h,
        &[caller, "130102000000-hall", "130102000000-other"],
        AcceptPolicy::All,
    );
    w.op(ChairOp::Start).unwrap();
    assert_eq!(w.session(0).phase, Phase::Joined);
    assert_eq!(w.session(1).phase, Phase::Joined);
    assert!(
        w.sites[2].sessions().is_empty(),
        "not a party: never sees the call"
    );
    assert!(!w.host.state().is_muted(&t("130102000000-hall")));
    w.deliver_to(1, Input::Leave("m1".parse().unwrap()));
    assert_eq!(w.host.state().status, Status::Ended);
    assert_eq!(w.session(0).phase, Phase::Ended);
    assert!(w.retained.is_none(), "the retained state is cleared");
    assert!(
        w.host
            .sites()
            .values()
            .all(|r| r.phase != SitePhase::Joined)
    );
    assert!(
        w.media
            .iter()
            .any(|(who, m)| *who == t(caller) && matches!(m, MediaCommand::Stop { .. }))
    );
}

#[test]
fn a_status_claiming_a_version_the_host_never_published_does_not_stick() {
    let v = t("130102001001-main");
    let mut w = World::new(
        host(Kind::Meeting, &["130102"]),
        &["130102001001-main"],
        AcceptPolicy::All,
    );
    w.op(ChairOp::Start).unwrap();
    assert!(w.host.converged(&v));
    let mid: MeetingId = "m1".parse().unwrap();
    for seen in [u64::MAX, w.host.state().version + 1] {
        let forged = Uplink::Status {
            meeting: mid,
            seen,
            muted: true,
            hand: Hand {
                number: 0,
                raised: false,
            },
            answer: None,
        };
        let out = w.host.uplink(v, forged, w.now);
        w.host_out(out);
        assert!(
            w.host.sites()[&v].seen <= w.host.state().version,
            "seen {seen} taken"
        );
    }
    // The chair changes the state; the site applies it and says so: the host knows.
    w.op(ChairOp::Mute(v)).unwrap();
    assert_eq!(w.session(0).state.version, w.host.state().version);
    assert!(
        w.host.converged(&v),
        "the forged status left the site unconverged"
    );
}

#[test]
fn a_call_its_caller_never_joins_ends_soon_even_if_the_callee_answered() {
    let caller = t("130102001001-main");
    let callee = "130102000000-hall";
    let (h, _) = Host::new(
        MeetingSpec {
            kind: Kind::Call,
            chair: Some(caller),
            invitees: vec![Invitee::Terminal(t(callee))],
            starts_ms: None,
            floor_mutes_others: false,
            ..spec(Kind::Call, &[], None)
        },
        HostConfig::default(),
        vec![1; 30],
        0,
    );
    // Only the callee's box is there (it auto-accepts); the "caller" only placed the call.
    let mut w = World::new(h, &[callee], AcceptPolicy::All);
    w.op(ChairOp::Start).unwrap();
    assert_eq!(w.session(0).phase, Phase::Joined, "the callee answered");
    w.advance(host::CALLER_ABSENT_MS);
    assert_eq!(w.host.state().status, Status::Live, "not before the bound");
    w.advance(1);
    assert_eq!(w.host.state().status, Status::Ended);
    assert_eq!(w.session(0).phase, Phase::Ended, "the callee's box hung up");
}

#[test]
fn a_call_with_both_parties_in_it_goes_on_and_ends_when_the_caller_falls_silent() {
    let caller = "130102001001-main";
    let callee = "130102000000-hall";
    let (h, _) = Host::new(
        MeetingSpec {
            kind: Kind::Call,
            chair: Some(t(caller)),
            invitees: vec![Invitee::Terminal(t(callee))],
            starts_ms: None,
            floor_mutes_others: false,
            ..spec(Kind::Call, &[], None)
        },
        HostConfig::default(),
        vec![1; 30],
        0,
    );
    let mut w = World::new(h, &[caller, callee], AcceptPolicy::All);
    w.op(ChairOp::Start).unwrap();
    for _ in 0..40 {
        w.advance(HB / 2);
    }
    assert_eq!(
        w.host.state().status,
        Status::Live,
        "a call of 200 s goes on"
    );
    // The caller's box goes away without hanging up: the call ends once it is unreachable
    // and absent for the bound.
    w.sites.remove(0);
    for _ in 0..20 {
        w.advance(HB / 2);
    }
    assert_eq!(w.host.state().status, Status::Ended);
}

#[test]
fn training_audience_is_receive_only_until_given_the_floor() {
    let a = t("130102001001-main");
    let mut w = World::new(
        host(Kind::Training, &["130102"]),
        &["130102001001-main"],
        AcceptPolicy::All,
    );
    w.op(ChairOp::Start).unwrap();
    let applied = w.session(0).applied.unwrap();
    assert_eq!(applied.role, Role::Listener);
    assert!(applied.muted);
    assert_eq!(applied.shown, Some(t_hall()), "the lecturer");
    w.deliver_to(0, Input::RaiseHand("m1".parse().unwrap()));
    w.op(ChairOp::Grant(a)).unwrap();
    let applied = w.session(0).applied.unwrap();
    assert_eq!(applied.role, Role::Speaker);
    assert!(!applied.muted, "a question from the floor");
}

#[test]
fn a_gateway_told_to_dial_calls_only_into_a_session_it_knows_that_has_not_ended() {
    let gw = t("130102000000-hall");
    let mut w = World::new(
        host(Kind::Meeting, &["130102"]),
        &["130102000000-hall"],
        AcceptPolicy::Manual,
    );
    let m1: MeetingId = "m1".parse().unwrap();
    let dial = |meeting| {
        Input::Downlink(Downlink::Dial {
            meeting,
            uri: "sip:hall@10.13.2.40".into(),
        })
    };
    w.op(ChairOp::Start).unwrap();
    w.deliver_to(0, dial(m1));
    // A session that never reached the box is not one it knows.
    w.deliver_to(0, dial("m2".parse().unwrap()));
    assert_eq!(w.dials, vec![(gw, m1, "sip:hall@10.13.2.40".to_owned())]);
    w.op(ChairOp::End).unwrap();
    w.deliver_to(0, dial(m1));
    assert_eq!(w.dials.len(), 1, "no call into an ended session");
}

#[test]
fn session_cleared_while_away_is_dropped_after_reconnect() {
    let mut w = World::new(
        host(Kind::Meeting, &["130102"]),
        &["130102001001-main"],
        AcceptPolicy::All,
    );
    w.op(ChairOp::Start).unwrap();
    let away = w.sites.remove(0);
    w.op(ChairOp::End).unwrap();
    w.sites.push(away);
    w.deliver_to(0, Input::Reconnected);
    assert_eq!(
        w.session(0).phase,
        Phase::Joined,
        "not yet: the retained state may be coming"
    );
    w.advance(HB);
    assert!(w.sites[0].sessions().is_empty(), "dropped");
    assert!(matches!(
        w.media.last().unwrap().1,
        MediaCommand::Stop { .. }
    ));
    // Had it only been late (a broker restart), it comes back as new and is joined again.
    let mut late = World::new(
        host(Kind::Meeting, &["130102"]),
        &["130102001001-main"],
        AcceptPolicy::All,
    );
    late.op(ChairOp::Start).unwrap();
    late.deliver_to(0, Input::Reconnected);
    late.advance(HB);
    assert!(late.sites[0].sessions().is_empty());
    let s = late.retained.clone().unwrap();
    late.deliver_to(0, Input::State(s.into()));
    assert_eq!(late.session(0).phase, Phase::Joined);
    assert!(late.host.converged(&t("130102001001-main")));
}

#[test]
fn a_restored_host_outranks_what_it_published_before_the_crash_and_keeps_big_meetings() {
    let mut h = host(Kind::Meeting, &["13"]);
    h.expect((1..=5000).map(|i| t(&format!("130102{:03}{:03}-main", 1 + i / 999, 1 + i % 999))));
    let saved = h.to_store().unwrap();
    assert!(
        saved.len() > crate::envelope::MAX_PAYLOAD,
        "bigger than a wire message"
    );
    h.op(&Operator::Chair, ChairOp::Start, 5).unwrap();
    h.op(&Operator::Chair, ChairOp::MuteAll, 6).unwrap();
    let published = h.state().version;
    // Crash: the last two versions were published but never saved.
    let mut back = Host::from_store(&saved).unwrap();
    back.restored(1_700_000_000_000);
    assert_eq!(back.sites().len(), 5001, "5,000 sites and the chair");
    assert!(back.state().version > published);
    assert!(Host::from_store(&saved[..saved.len() / 2]).is_err());
}

#[test]
fn a_status_the_host_cannot_place_asks_the_site_to_join_again() {
    let a = t("130102001001-main");
    let mut w = World::new(
        host(Kind::Meeting, &["130102"]),
        &["130102001001-main"],
        AcceptPolicy::All,
    );
    w.op(ChairOp::Start).unwrap();
    // The host lost the join (restored from an older save): the site's next status brings it back.
    let (fresh, _) = Host::new(
        spec(Kind::Meeting, &["130102"], Some("130102000000-hall")),
        HostConfig::default(),
        vec![7; 30],
        0,
    );
    let mut fresh = fresh;
    fresh.op(&Operator::Chair, ChairOp::Start, 1).unwrap();
    fresh.restored(w.now);
    w.host = fresh;
    assert_ne!(
        w.host.sites().get(&a).map(|r| r.phase),
        Some(SitePhase::Joined)
    );
    w.advance(HB);
    assert_eq!(w.host.sites()[&a].phase, SitePhase::Joined);
    let s = w.host.state().clone();
    w.deliver_to(0, Input::State(s.into()));
    assert!(w.host.converged(&a));
}

/// A started session and its state, as the sites receive it.
fn live(invite: &[&str]) -> (Host, alloc::boxed::Box<MeetingState>) {
    let mut h = host(Kind::Meeting, invite);
    let state = published(h.op(&Operator::Chair, ChairOp::Start, 1_000).unwrap());
    (h, state)
}

/// The state the host published among `out`.
fn published(out: Vec<HostOutput>) -> alloc::boxed::Box<MeetingState> {
    out.into_iter()
        .find_map(|o| match o {
            HostOutput::Publish(s) => Some(s),
            _ => None,
        })
        .unwrap()
}

/// When a participant sends its joins over `ms` of ticks every 100 ms, nothing answering.
fn join_times(p: &mut Participant, from: u64, ms: u64) -> Vec<u64> {
    (from..from + ms)
        .step_by(100)
        .filter(|now| {
            p.handle(Input::Tick, *now)
                .iter()
                .any(|o| matches!(o, Output::Send(Uplink::Join { .. })))
        })
        .collect()
}

#[test]
fn unanswered_joins_back_off_to_a_minute_each_site_at_its_own_pace_and_start_over_when_asked() {
    let (mut host, mut state) = live(&["130102"]);
    // A heartbeat short enough to keep the configured back-off (see `paced_join_retry`).
    state.spec.heartbeat_ms = 6_000;
    let sites: Vec<Participant> = (1..=200)
        .map(|k| {
            let mut p =
                Participant::new(t(&format!("130102{k:03}001-main")), pcfg(AcceptPolicy::All));
            let out = p.handle(Input::State(state.clone()), 1_000);
            assert!(
                out.iter()
                    .any(|o| matches!(o, Output::Send(Uplink::Join { .. })))
            );
            p
        })
        .collect();
    let mut first_retries = Vec::new();
    for mut p in sites {
        let mut times = vec![1_000];
        times.extend(join_times(&mut p, 1_100, 600_000));
        // Each wait is within the upper half of its doubling: 3, 6, 12, 24, 48, then 60 s.
        assert_backs_off(&times, 3_000, p.id());
        assert!(
            (13..=22).contains(&times.len()),
            "{} joins in 10 min",
            times.len()
        );
        first_retries.push(times[1]);
        // Asked to join again after being admitted: a join at once, the retries short again.
        let meeting = state.spec.id;
        let mut out = host.uplink(*p.id(), full_join(meeting), 700_000);
        out.extend(host.media_updates(700_000));
        let plan = out
            .into_iter()
            .find_map(|o| match o {
                HostOutput::Send(_, d @ Downlink::Admitted { .. }) => Some(d),
                _ => None,
            })
            .unwrap();
        p.handle(Input::Downlink(plan), 700_000);
        assert_eq!(p.session(&meeting).unwrap().phase, Phase::Joined);
        let out = p.handle(Input::Downlink(Downlink::Rejoin { meeting }), 700_000);
        assert!(
            out.iter()
                .any(|o| matches!(o, Output::Send(Uplink::Join { .. })))
        );
        let again = join_times(&mut p, 700_100, 3_100);
        assert_eq!(again.len(), 1, "the first retry within 3 s: {again:?}");
    }
    // The sites' first retries spread over [2.5 s, 4 s], not in one instant.
    first_retries.sort_unstable();
    first_retries.dedup();
    assert!(first_retries.len() >= 12, "{first_retries:?}");
}

/// Asserts that the joins sent at `times` (ms) wait within the upper half of a back-off from
/// `first_ms`, doubling to a minute (100 ms of tick granularity either way).
fn assert_backs_off(times: &[u64], first_ms: u64, site: &TerminalId) {
    for (k, pair) in times.windows(2).enumerate() {
        let full = first_ms.saturating_mul(1 << k.min(10)).min(60_000);
        let gap = pair[1] - pair[0];
        assert!(
            gap + 100 >= full / 2 && gap <= full + 100,
            "retry {k} of {site}: {gap} ms ({times:?})"
        );
    }
}

/// The `joining` of every join among `out`.
fn joinings(out: impl IntoIterator<Item = Output>) -> Vec<u64> {
    out.into_iter()
        .filter_map(|o| match o {
            Output::Send(Uplink::Join { joining, .. }) => Some(joining),
            _ => None,
        })
        .collect()
}

/// The `joining` of every join `p` sends over `ms` of ticks, nothing answering.
fn joinings_sent(p: &mut Participant, from: u64, ms: u64) -> Vec<u64> {
    joinings(
        (from..from + ms)
            .step_by(100)
            .flat_map(|now| p.handle(Input::Tick, now)),
    )
}

#[test]
fn a_sites_repeated_joins_name_one_joining_and_a_new_joining_or_a_restart_another() {
    let (mut host, mut state) = live(&["130102"]);
    state.spec.heartbeat_ms = 6_000;
    let meeting = state.spec.id;
    let start = |boot| {
        let mut p = Participant::new(
            t("130102001001-main"),
            ParticipantConfig {
                boot,
                ..pcfg(AcceptPolicy::All)
            },
        );
        let first = joinings(p.handle(Input::State(state.clone()), 1_000));
        (p, first)
    };
    let (mut p, first) = start(1);
    let repeats = joinings_sent(&mut p, 1_100, 60_000);
    assert!(repeats.len() >= 4, "{repeats:?}");
    assert!(
        first[0] != 0 && repeats.iter().all(|j| *j == first[0]),
        "{first:?} {repeats:?}"
    );
    // Admitted, then asked to join again: a new joining.
    let mut out = host.uplink(*p.id(), full_join(meeting), 61_000);
    out.extend(host.media_updates(61_000));
    for o in out {
        if let HostOutput::Send(_, d @ Downlink::Admitted { .. }) = o {
            p.handle(Input::Downlink(d), 61_100);
        }
    }
    assert_eq!(p.session(&meeting).unwrap().phase, Phase::Joined);
    let again = joinings(p.handle(Input::Downlink(Downlink::Rejoin { meeting }), 61_200));
    assert!(again.len() == 1 && again[0] != first[0], "{again:?}");
    let (_, same_boot) = start(1);
    assert_eq!(
        same_boot, first,
        "the number follows from the boot, the site and the time"
    );
    // The same box restarted, at the very same clock: another number.
    let (_, restarted) = start(2);
    assert_ne!(restarted, first);
}

#[test]
fn a_participant_says_when_its_clock_next_has_something_to_do() {
    let (mut host, state) = live(&["130102"]);
    let meeting = state.spec.id;
    let mut p = Participant::new(t("130102001001-main"), pcfg(AcceptPolicy::All));
    assert_eq!(p.next_due_ms(), None, "nothing known, nothing due");
    p.handle(Input::State(state.clone()), 1_000);
    // Joining: the next repeat of the join (a quarter to half of the heartbeat on), and
    // nothing happens on a tick before it.
    let hb = u64::from(state.spec.heartbeat_ms);
    let due = p.next_due_ms().unwrap();
    assert!((1_000 + hb / 4..=1_000 + hb / 2).contains(&due), "{due}");
    assert!(joinings_sent(&mut p, 1_100, due - 1_100).is_empty());
    assert_eq!(joinings_sent(&mut p, due, 100).len(), 1);
    // Joined: the next status, one heartbeat after the last.
    let mut out = host.uplink(*p.id(), full_join(meeting), 7_000);
    out.extend(host.media_updates(7_000));
    for o in out {
        if let HostOutput::Send(_, d @ Downlink::Admitted { .. }) = o {
            p.handle(Input::Downlink(d), 7_100);
        }
    }
    assert_eq!(p.session(&meeting).unwrap().phase, Phase::Joined);
    assert_eq!(p.next_due_ms(), Some(7_100 + hb));
    let statuses = |p: &mut Participant, now| {
        p.handle(Input::Tick, now)
            .iter()
            .filter(|o| matches!(o, Output::Send(Uplink::Status { .. })))
            .count()
    };
    assert_eq!(statuses(&mut p, 7_100 + hb - 1), 0);
    assert_eq!(statuses(&mut p, 7_100 + hb), 1);
    assert_eq!(p.next_due_ms(), Some(7_100 + 2 * hb));
    // After a reconnect: the grace for the retained state, if sooner.
    p.handle(Input::Reconnected, 8_000 + hb);
    assert_eq!(p.next_due_ms(), Some(8_000 + hb + HB));
}

#[test]
fn a_repeated_join_gets_the_same_plan_once_the_last_had_time_to_arrive() {
    let (mut h, _) = live(&["130102"]);
    let m = h.state().spec.id;
    let site = t("130102001001-main");
    let join = |joining| Uplink::Join {
        meeting: m,
        tier: Tier::Full,
        rtp_port: 5004,
        media_host: Some("10.0.0.9".into()),
        relay: None,
        joining,
    };
    let plans = |out: Vec<HostOutput>| -> Vec<MediaPlan> {
        out.into_iter()
            .filter_map(|o| match o {
                HostOutput::Send(_, Downlink::Admitted { plan, .. }) => Some(plan),
                _ => None,
            })
            .collect()
    };
    let mut out = h.uplink(site, join(5), 10_000);
    out.extend(h.media_updates(10_200));
    let first = plans(out);
    assert_eq!(first.len(), 1);
    // The same joining again while its plan is on its way: nothing new is laid out or sent.
    let mut out = h.uplink(site, join(5), 10_200 + PLAN_IN_FLIGHT_MS - 1);
    out.extend(h.media_updates(10_200 + PLAN_IN_FLIGHT_MS));
    assert_eq!(plans(out), vec![]);
    // Again once the plan had time to arrive: the very same plan (same SSRC), sent again.
    let mut out = h.uplink(site, join(5), 10_200 + PLAN_IN_FLIGHT_MS);
    out.extend(h.media_updates(10_300 + PLAN_IN_FLIGHT_MS));
    assert_eq!(plans(out), first);
    // A new joining (the box restarted its media): a new SSRC, never one used before.
    let mut out = h.uplink(site, join(6), 20_000);
    out.extend(h.media_updates(20_000));
    let second = plans(out);
    assert_eq!(second.len(), 1);
    assert_ne!(second[0].ssrc, first[0].ssrc);
    // An older terminal's joins name no joining: each is a new one.
    let untagged = Uplink::JoinUntagged {
        meeting: m,
        tier: Tier::Full,
        rtp_port: 5004,
        media_host: Some("10.0.0.9".into()),
        relay: None,
    };
    let bytes = crate::envelope::encode(&untagged).unwrap();
    let decoded = Uplink::decode(&bytes).unwrap();
    assert_eq!(decoded, join(0));
    let mut ssrcs = Vec::new();
    for now in [30_000, 40_000] {
        let mut out = h.uplink(site, untagged.clone(), now);
        out.extend(h.media_updates(now));
        ssrcs.extend(plans(out).iter().map(|p| p.ssrc));
    }
    assert_eq!(ssrcs.len(), 2);
    assert!(
        ssrcs[0] != ssrcs[1] && !ssrcs.contains(&second[0].ssrc),
        "{ssrcs:?}"
    );
}

#[test]
fn a_roll_call_after_a_closed_one_takes_a_new_number() {
    let mut w = World::new(
        host(Kind::Meeting, &["130102"]),
        &["130102001001-main"],
        AcceptPolicy::All,
    );
    w.op(ChairOp::Start).unwrap();
    w.op(ChairOp::RollCall).unwrap();
    w.op(ChairOp::CloseRollCall).unwrap();
    w.advance(100);
    w.op(ChairOp::RollCall).unwrap();
    let r = w.host.roll_call_results().unwrap();
    assert_eq!(r.roll_call.number, 2);
    assert_eq!(
        r.sites
            .iter()
            .find(|(x, _)| *x == t("130102001001-main"))
            .unwrap()
            .1,
        Some(0)
    );
}

#[test]
fn a_delegate_never_mutes_or_takes_the_floor_outside_its_region() {
    let mut h = host(Kind::Meeting, &["13"]);
    h.op(&Operator::Chair, ChairOp::Start, 1).unwrap();
    h.expect([
        t("130102001001-main"),
        t("130102002001-main"),
        t("130103001001-main"),
    ]);
    let county = Operator::Delegate("130102".parse().unwrap());
    h.op(&Operator::Chair, ChairOp::Grant(t("130103001001-main")), 2)
        .unwrap();
    let before = h.state().clone();
    assert!(matches!(
        h.op(&county, ChairOp::Grant(t("130102001001-main")), 3),
        Err(OpError::OutsideScope { .. })
    ));
    assert_eq!(*h.state(), before, "a refused operation changes nothing");
    h.op(&Operator::Chair, ChairOp::Revoke, 4).unwrap();
    h.op(&Operator::Chair, ChairOp::UnmuteAll, 5).unwrap();
    h.op(&county, ChairOp::Grant(t("130102001001-main")), 6)
        .unwrap();
    let st = h.state();
    assert!(!st.mute_all, "the others' audio is the chair's business");
    assert!(st.is_muted(&t("130102002001-main")));
    assert!(!st.is_muted(&t("130103001001-main")));
}

#[test]
fn stale_and_duplicate_states_change_nothing() {
    let mut w = World::new(
        host(Kind::Meeting, &["130102"]),
        &["130102001001-main"],
        AcceptPolicy::All,
    );
    w.op(ChairOp::Start).unwrap();
    let old = w.retained.clone().unwrap();
    w.op(ChairOp::MuteAll).unwrap();
    let media = w.media.len();
    w.deliver_to(0, Input::State(old.into()));
    let s = w.retained.clone().unwrap();
    w.deliver_to(0, Input::State(s.into()));
    assert_eq!(
        w.media.len(),
        media,
        "no media command for a stale or repeated state"
    );
    assert!(w.session(0).applied.unwrap().muted);
    // A chair operation that changes nothing publishes nothing.
    assert_eq!(
        w.host
            .op(&Operator::Chair, ChairOp::MuteAll, w.now)
            .unwrap(),
        vec![]
    );
}

/// A join at full tier, receiving no media yet, from a site that relays nothing.
fn full_join(meeting: MeetingId) -> Uplink {
    Uplink::Join {
        meeting,
        tier: Tier::Full,
        rtp_port: 0,
        media_host: None,
        relay: None,
        joining: 1,
    }
}

#[test]
fn uninvited_sites_are_refused_and_ended_sessions_refuse_joins() {
    let mut h = host(Kind::Meeting, &["130102"]);
    let m: MeetingId = "m1".parse().unwrap();
    let join = full_join(m);
    let out = h.uplink(t("130103001001-main"), join.clone(), 5);
    assert!(matches!(
        &out[..],
        [HostOutput::Send(_, Downlink::Refused { .. })]
    ));
    h.op(&Operator::Chair, ChairOp::End, 6).unwrap();
    let out = h.uplink(t("130102001001-main"), join, 7);
    assert!(matches!(
        &out[..],
        [HostOutput::Send(_, Downlink::Refused { .. })]
    ));
    assert_eq!(
        h.op(&Operator::Chair, ChairOp::Start, 8),
        Err(OpError::Ended)
    );
}

#[test]
fn the_county_hall_relays_for_its_villages_and_the_tables_go_out_when_they_change_only() {
    let mut h = host(Kind::Meeting, &["130102"]);
    h.op(&Operator::Chair, ChairOp::Start, 1).unwrap();
    let m: MeetingId = "m1".parse().unwrap();
    let join = |relay: Option<&str>, joining| Uplink::Join {
        meeting: m,
        tier: Tier::Full,
        rtp_port: 5004,
        media_host: Some("10.0.0.9".into()),
        relay: relay.map(Into::into),
        joining,
    };
    let hall = t("130102000000-hall");
    let village = t("130102001001-main");
    let mut out = h.uplink(hall, join(Some("10.0.0.1:6000"), 1), 2);
    out.extend(h.uplink(village, join(None, 1), 3));
    out.extend(h.media_updates(3));
    // The village is told to send to the hall's relay; the hall gets its table.
    let plan = out.iter().find_map(|o| match o {
        HostOutput::Send(to, Downlink::Admitted { plan, .. }) if *to == village => Some(plan),
        _ => None,
    });
    assert_eq!(
        plan.and_then(|p| p.send_to.as_deref()),
        Some("10.0.0.1:6000")
    );
    let table = out.iter().find_map(|o| match o {
        HostOutput::Send(to, Downlink::Forward { plan, .. }) if *to == hall => Some(plan),
        _ => None,
    });
    let hall_ssrc = h.sites()[&hall].ssrc;
    assert!(
        table.is_some_and(|p| p
            .routes
            .iter()
            .any(|(s, d)| *s == hall_ssrc && d == &vec!["10.0.0.9:5004".to_string()])),
        "{out:?}"
    );
    // The hall's own stream is forwarded only from the ports its box receives on.
    assert_eq!(
        table.map(|p| p.sources.clone()),
        Some(vec![
            (hall_ssrc, "10.0.0.9:5004".to_string()),
            (hall_ssrc | 1, "10.0.0.9:5006".to_string())
        ])
    );
    // A status that changes nothing lays out nothing.
    let status = Uplink::Status {
        meeting: m,
        seen: h.state().version,
        muted: false,
        hand: Hand::default(),
        answer: None,
    };
    h.uplink(village, status, 4);
    assert!(h.media_updates(4).is_empty());
    // The relay box restarts and joins again (a new joining): its table is sent again, its
    // SSRC is new.
    h.uplink(hall, join(Some("10.0.0.1:6000"), 2), 5);
    let out = h.media_updates(5);
    assert!(
        out.iter()
            .any(|o| matches!(o, HostOutput::Send(to, Downlink::Forward { .. }) if *to == hall))
    );
    assert_ne!(h.sites()[&hall].ssrc, hall_ssrc, "no SRTP index may repeat");
}

#[test]
fn a_thin_link_joins_receive_only_and_gets_no_send_address() {
    let mut h = host(Kind::Meeting, &["130102"]);
    h.set_media_point(Some("10.0.0.1:5004".into()));
    let m: MeetingId = "m1".parse().unwrap();
    let join = |tier| Uplink::Join {
        meeting: m,
        tier,
        rtp_port: 5004,
        media_host: None,
        relay: None,
        joining: 1,
    };
    let plan = |out: Vec<HostOutput>| match &out[..] {
        [.., HostOutput::Send(_, Downlink::Admitted { plan, .. })] => plan.clone(),
        other => panic!("{other:?}"),
    };
    h.uplink(t("130102001001-main"), join(Tier::Full), 1);
    let full = plan(h.media_updates(1));
    assert_eq!(full.send_to.as_deref(), Some("10.0.0.1:5004"));
    h.uplink(t("130102002001-main"), join(Tier::ReceiveOnly), 1);
    let thin = plan(h.media_updates(1));
    assert_eq!(thin.send_to, None);
    assert_ne!(full.ssrc, thin.ssrc);
    assert!(
        !alloc::format!("{thin:?}").contains("7, 7"),
        "keys never in Debug output"
    );
}

#[test]
fn weak_links_join_audio_only_or_receive_only() {
    let th = TierThresholds::default();
    assert_eq!(th.tier(Some(40.0), 0.0), Tier::Full);
    assert_eq!(th.tier(None, 0.0), Tier::Full, "not measured yet");
    assert_eq!(th.tier(Some(450.0), 0.0), Tier::AudioOnly);
    assert_eq!(th.tier(Some(40.0), 10.0), Tier::AudioOnly);
    assert_eq!(th.tier(Some(1_200.0), 0.0), Tier::ReceiveOnly);
    assert_eq!(th.tier(Some(40.0), 25.0), Tier::ReceiveOnly);
    // A joined site whose link degrades joins again with the lower tier.
    let mut w = World::new(
        host(Kind::Meeting, &["130102"]),
        &["130102001001-main"],
        AcceptPolicy::All,
    );
    w.op(ChairOp::Start).unwrap();
    w.deliver_to(0, Input::SetTier(Tier::AudioOnly));
    assert_eq!(
        w.host.sites()[&t("130102001001-main")].tier,
        Some(Tier::AudioOnly)
    );
    assert_eq!(w.session(0).plan.as_ref().unwrap().tier, Tier::AudioOnly);
    assert_eq!(w.session(0).phase, Phase::Joined);
}

/// A box follows its link's tier without a clock of its own: it looks again when a keep-alive
/// changes the measurement, and when a waiting tier would take over.
#[test]
fn the_tier_says_when_a_waiting_change_takes_over() {
    let mut tr = TierTracker::new(Tier::Full);
    assert_eq!(tr.next_change_ms(), None, "nothing waits");
    tr.observe(Tier::AudioOnly, 10_000);
    assert_eq!(tr.next_change_ms(), Some(13_000), "worse: after 3 s");
    assert_eq!(tr.observe(Tier::AudioOnly, 12_999), Tier::Full);
    assert_eq!(tr.observe(Tier::AudioOnly, 13_000), Tier::AudioOnly);
    assert_eq!(tr.next_change_ms(), None, "taken over");
    tr.observe(Tier::Full, 20_000);
    assert_eq!(tr.next_change_ms(), Some(50_000), "better: after 30 s");
    tr.observe(Tier::ReceiveOnly, 25_000);
    assert_eq!(
        tr.next_change_ms(),
        Some(28_000),
        "another measurement restarts the wait at its own hold"
    );
    tr.observe(Tier::AudioOnly, 26_000);
    assert_eq!(tr.next_change_ms(), None, "the current tier measured again");
}

#[test]
fn the_tier_follows_the_link_with_hysteresis() {
    let mut tr = TierTracker::new(Tier::Full);
    assert_eq!(
        tr.observe(Tier::AudioOnly, 0),
        Tier::Full,
        "one bad reading is not enough"
    );
    assert_eq!(tr.observe(Tier::Full, 1_000), Tier::Full);
    assert_eq!(tr.observe(Tier::AudioOnly, 2_000), Tier::Full);
    assert_eq!(
        tr.observe(Tier::AudioOnly, 5_000),
        Tier::AudioOnly,
        "held 3 s: degrade"
    );
    assert_eq!(tr.observe(Tier::Full, 6_000), Tier::AudioOnly);
    assert_eq!(
        tr.observe(Tier::Full, 20_000),
        Tier::AudioOnly,
        "recovering takes longer"
    );
    assert_eq!(tr.observe(Tier::Full, 36_000), Tier::Full);
    assert_eq!(tr.observe(Tier::ReceiveOnly, 37_000), Tier::Full);
    assert_eq!(
        tr.observe(Tier::AudioOnly, 38_000),
        Tier::Full,
        "a different reading restarts the wait"
    );
    assert_eq!(tr.observe(Tier::AudioOnly, 41_000), Tier::AudioOnly);
}

#[test]
fn messages_round_trip_and_garbage_is_refused() {
    let h = host(Kind::Meeting, &["130102", "130103001001-main"]);
    let bytes = encode(h.state()).unwrap();
    assert_eq!(MeetingState::decode(&bytes).unwrap(), *h.state());
    let up = Uplink::Status {
        meeting: "m1".parse().unwrap(),
        seen: 3,
        muted: true,
        hand: Hand {
            number: 2,
            raised: true,
        },
        answer: Some(Answer {
            number: 1,
            answered_ms: 1_700_000_000_000,
        }),
    };
    let bytes = encode(&up).unwrap();
    assert!(bytes.len() < 20, "a status is small: {} bytes", bytes.len());
    assert_eq!(Uplink::decode(&bytes).unwrap(), up);
    for cut in 0..bytes.len() {
        assert!(Uplink::decode(&bytes[..cut]).is_err());
    }
    // A relay's table, byte for byte: variant 5, then the meeting, upstream, routes, views and
    // sources (each a varint count of entries).
    let table = Downlink::Forward {
        meeting: "m1".parse().unwrap(),
        plan: relays::RelayPlan {
            upstream: None,
            routes: vec![(2, vec!["10.0.0.1:5004".into()])],
            views: vec![],
            sources: vec![(2, "10.0.0.2:6000".into())],
        },
    };
    let bytes = encode(&table).unwrap();
    let mut golden = vec![1, 5, 2, b'm', b'1', 0, 1, 2, 1, 13];
    golden.extend(b"10.0.0.1:5004");
    golden.extend([0, 1, 2, 13]);
    golden.extend(b"10.0.0.2:6000");
    assert_eq!(bytes, golden);
    assert_eq!(Downlink::decode(&bytes).unwrap(), table);
    assert!(MeetingId::from_str("1abc").is_err());
    assert!(MeetingId::from_str("Abc").is_err());
    assert_eq!(
        "m20261201a".parse::<MeetingId>().unwrap().to_string(),
        "m20261201a"
    );
}

#[test]
fn a_relay_takes_a_table_with_sources_and_ignores_an_older_hosts_without() {
    let me = t("130102000000-hall");
    let mut p = Participant::new(me, pcfg(AcceptPolicy::All));
    let h = host(Kind::Meeting, &["130102"]);
    let m = h.state().spec.id;
    let mut live = h.state().clone();
    live.status = Status::Live;
    p.handle(Input::State(Box::new(live)), 1);
    let old = Downlink::Relay {
        meeting: m,
        plan: relays::UnsourcedRelayPlan {
            upstream: None,
            routes: vec![(2, vec!["10.0.0.1:5004".into()])],
            views: vec![],
        },
    };
    assert!(p.handle(Input::Downlink(old), 2).is_empty());
    let plan = relays::RelayPlan {
        sources: vec![(2, "10.0.0.2:5004".into())],
        routes: vec![(2, vec!["10.0.0.1:5004".into()])],
        ..relays::RelayPlan::default()
    };
    let out = p.handle(
        Input::Downlink(Downlink::Forward {
            meeting: m,
            plan: plan.clone(),
        }),
        3,
    );
    assert_eq!(
        out,
        [Output::Media(MediaCommand::Relay { meeting: m, plan })]
    );
}

/// Model-based: random chair operations and site actions over a network that loses,
/// duplicates and reorders messages and disconnects sites; then the network heals. Every site
/// that stays connected long enough converges to the host's state, and the host knows it.
mod convergence {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Step {
        Op(u8, u8),
        Deliver {
            pick: u16,
            fate: u8,
        },
        Advance(u16),
        Hand(u8, bool),
        Disconnect(u8),
        /// Reconnects; with `true` the retained state comes later, through the lossy network.
        Reconnect(u8, bool),
        Leave(u8),
        Accept(u8),
        /// Central saves its host to the store.
        Save,
        /// Central crashes and restarts from what it last saved, then publishes it again.
        Restart,
        /// A status with any version number at all in a site's name (a broken or hostile
        /// box), into the network like any uplink.
        Forge(u8, u64, bool),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => (0u8..12, 0u8..6).prop_map(|(k, t)| Step::Op(k, t)),
            8 => (any::<u16>(), 0u8..10).prop_map(|(pick, fate)| Step::Deliver { pick, fate }),
            2 => (0u16..15_000).prop_map(Step::Advance),
            1 => (0u8..5, any::<bool>()).prop_map(|(p, r)| Step::Hand(p, r)),
            1 => (0u8..5).prop_map(Step::Disconnect),
            1 => (0u8..5, any::<bool>()).prop_map(|(p, late)| Step::Reconnect(p, late)),
            1 => (0u8..5).prop_map(Step::Leave),
            1 => (0u8..5).prop_map(Step::Accept),
            1 => Just(Step::Save),
            1 => Just(Step::Restart),
            1 => (0u8..5, prop_oneof![any::<u64>(), 0u64..40, Just(u64::MAX)], any::<bool>())
                .prop_map(|(p, seen, muted)| Step::Forge(p, seen, muted)),
        ]
    }

    enum Msg {
        Down(usize, Input),
        Up(TerminalId, Uplink),
    }

    struct Net {
        host: Host,
        sites: Vec<Participant>,
        online: Vec<bool>,
        retained: Option<MeetingState>,
        queue: Vec<Msg>,
        now: u64,
    }

    const IDS: [&str; 5] = [
        "130102001001-main",
        "130102002001-main",
        "130102003001-main",
        "130102004001-main",
        "130102000000-hall",
    ];

    impl Net {
        fn host_out(&mut self, out: Vec<HostOutput>) {
            for o in out {
                match o {
                    HostOutput::Publish(s) => {
                        self.retained = Some((*s).clone());
                        for i in 0..self.sites.len() {
                            if self.online[i] {
                                self.queue.push(Msg::Down(i, Input::State(s.clone())));
                            }
                        }
                    }
                    HostOutput::Clear => {
                        self.retained = None;
                        let id = self.host.state().spec.id;
                        for i in 0..self.sites.len() {
                            if self.online[i] {
                                self.queue.push(Msg::Down(i, Input::Cleared(id)));
                            }
                        }
                    }
                    HostOutput::Send(to, d) => {
                        if let Some(i) = self.sites.iter().position(|p| *p.id() == to)
                            && self.online[i]
                        {
                            self.queue.push(Msg::Down(i, Input::Downlink(d)));
                        }
                    }
                    HostOutput::Notice(_) | HostOutput::Screen(_) => {}
                }
            }
        }

        fn site_in(&mut self, i: usize, input: Input) {
            let me = *self.sites[i].id();
            for o in self.sites[i].handle(input, self.now) {
                if let Output::Send(up) = o
                    && self.online[i]
                {
                    self.queue.push(Msg::Up(me, up));
                }
            }
        }

        fn deliver(&mut self, m: Msg) {
            match m {
                Msg::Down(i, input) => {
                    if self.online[i] {
                        self.site_in(i, input);
                    }
                }
                Msg::Up(from, up) => {
                    let out = self.host.uplink(from, up, self.now);
                    self.host_out(out);
                }
            }
        }

        /// A clean session: what the broker had queued for the site is gone with it.
        fn disconnect(&mut self, i: usize) {
            self.online[i] = false;
            self.queue
                .retain(|m| !matches!(m, Msg::Down(j, _) if *j == i));
        }

        fn reconnect(&mut self, i: usize, late: bool) {
            self.online[i] = true;
            self.site_in(i, Input::Reconnected);
            if let Some(s) = self.retained.clone() {
                if late {
                    self.queue.push(Msg::Down(i, Input::State(s.into())));
                } else {
                    self.site_in(i, Input::State(s.into()));
                }
            }
        }

        fn advance(&mut self, ms: u64) {
            self.now += ms;
            // Joins are answered by a layout, which in a storm comes only with the tick.
            let mut out = self.host.tick(self.now);
            out.extend(self.host.media_updates(self.now));
            self.host_out(out);
            for i in 0..self.sites.len() {
                self.site_in(i, Input::Tick);
            }
        }
    }

    fn op(kind: u8, target: TerminalId) -> ChairOp {
        match kind {
            0 => ChairOp::Start,
            1 => ChairOp::RollCall,
            2 => ChairOp::CloseRollCall,
            3 => ChairOp::Grant(target),
            4 => ChairOp::Revoke,
            5 => ChairOp::Mute(target),
            6 => ChairOp::Unmute(target),
            7 => ChairOp::MuteAll,
            8 => ChairOp::UnmuteAll,
            9 => ChairOp::Broadcast(Some(target)),
            10 => ChairOp::LowerHand(target),
            _ => ChairOp::Broadcast(None),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn every_site_that_stays_connected_converges(
            steps in proptest::collection::vec(step(), 1..200),
            end in proptest::bool::weighted(0.15),
            mutes_others in any::<bool>(),
        ) {
            let mut s = spec(Kind::Meeting, &["130102"], Some("130102000000-hall"));
            s.floor_mutes_others = mutes_others;
            let (host, first) = Host::new(s, HostConfig::default(), vec![3; 30], 0);
            let mut net = Net {
                host,
                sites: IDS.iter().map(|i| Participant::new(t(i), pcfg(AcceptPolicy::All))).collect(),
                online: vec![true; IDS.len()],
                retained: None,
                queue: Vec::new(),
                now: 1_000,
            };
            net.host_out(first);
            let mut saved = net.host.to_store().unwrap();
            let mid: MeetingId = "m1".parse().unwrap();
            for st in steps {
                match st {
                    Step::Op(k, target) => {
                        let target = t(IDS[usize::from(target) % IDS.len()]);
                        if let Ok(out) = net.host.op(&Operator::Chair, op(k, target), net.now) {
                            net.host_out(out);
                        }
                    }
                    Step::Deliver { pick, fate } => {
                        if !net.queue.is_empty() {
                            let at = usize::from(pick) % net.queue.len();
                            let m = net.queue.remove(at);
                            match fate {
                                // Lost: MQTT loses a QoS 1 message only with the connection,
                                // so a site that loses a downlink message is disconnected
                                // (until it reconnects); a lost uplink is just lost.
                                0 | 1 => {
                                    if let Msg::Down(i, _) = m {
                                        net.disconnect(i);
                                    }
                                }
                                // Duplicated: delivered now and again later.
                                2 => {
                                    let copy = match &m {
                                        Msg::Down(i, input) => Msg::Down(*i, input.clone()),
                                        Msg::Up(f, u) => Msg::Up(*f, u.clone()),
                                    };
                                    net.deliver(m);
                                    net.queue.push(copy);
                                }
                                _ => net.deliver(m),
                            }
                        }
                    }
                    Step::Advance(ms) => net.advance(u64::from(ms)),
                    Step::Hand(p, raised) => {
                        let i = usize::from(p) % IDS.len();
                        let input = if raised { Input::RaiseHand(mid) } else { Input::LowerHand(mid) };
                        net.site_in(i, input);
                    }
                    Step::Disconnect(p) => net.disconnect(usize::from(p) % IDS.len()),
                    Step::Reconnect(p, late) => {
                        let i = usize::from(p) % IDS.len();
                        if !net.online[i] {
                            net.reconnect(i, late);
                        }
                    }
                    Step::Leave(p) => net.site_in(usize::from(p) % IDS.len(), Input::Leave(mid)),
                    Step::Accept(p) => net.site_in(usize::from(p) % IDS.len(), Input::Accept(mid)),
                    Step::Save => saved = net.host.to_store().unwrap(),
                    Step::Forge(p, seen, muted) => {
                        let from = t(IDS[usize::from(p) % IDS.len()]);
                        let hand = Hand { number: 0, raised: false };
                        let up = Uplink::Status { meeting: mid, seen, muted, hand, answer: None };
                        net.queue.push(Msg::Up(from, up));
                    }
                    Step::Restart => {
                        // A restart takes a while.
                        net.now += 1_000;
                        let mut host = Host::from_store(&saved).unwrap();
                        host.restored(net.now);
                        net.host = host;
                        // Central publishes every live state again when it is back.
                        let st = net.host.state().clone();
                        let out = if st.status == Status::Ended {
                            vec![HostOutput::Publish(st.into()), HostOutput::Clear]
                        } else {
                            vec![HostOutput::Publish(st.into())]
                        };
                        net.host_out(out);
                    }
                }
            }
            if end
                && let Ok(out) = net.host.op(&Operator::Chair, ChairOp::End, net.now) {
                    net.host_out(out);
                }
            // The network heals: everybody reconnects, nothing is lost any more, and the
            // operators of the sites that left or declined accept again.
            for i in 0..IDS.len() {
                if !net.online[i] {
                    net.reconnect(i, false);
                }
                net.site_in(i, Input::Accept(mid));
            }
            // Within four heartbeats, and the longest a site waits between joins.
            let heal = 4 * HB + participant::JOIN_RETRY.max.as_millis() as u64;
            for _ in 0..heal.div_ceil(HB) {
                while !net.queue.is_empty() {
                    let m = net.queue.remove(0);
                    net.deliver(m);
                }
                net.advance(HB);
            }
            while !net.queue.is_empty() {
                let m = net.queue.remove(0);
                net.deliver(m);
            }
            let st = net.host.state().clone();
            for p in &net.sites {
                let me = *p.id();
                let s = p.session(&mid);
                if st.status == Status::Ended {
                    prop_assert!(s.is_none_or(|s| s.phase == Phase::Ended && s.applied.is_none()),
                        "{me}: still in an ended session");
                    continue;
                }
                let s = s.unwrap();
                prop_assert_eq!(s.state.version, st.version, "{} has an old state", me);
                prop_assert_eq!(s.phase, Phase::Joined, "{} is not joined", me);
                if st.status == Status::Live {
                    prop_assert_eq!(s.applied, Some(st.desired_for(&me)), "{} did not converge", me);
                }
                prop_assert!(net.host.converged(&me), "the host does not know {} converged", me);
                if let Some(rc) = st.roll_call {
                    let a = net.host.sites()[&me].answer;
                    prop_assert!(a.is_some_and(|a| a.number == rc.number), "{} did not answer", me);
                }
                prop_assert_eq!(net.host.sites()[&me].phase, SitePhase::Joined);
            }
        }
    }
}

/// Every uplink, downlink and chair operation variant, and the desired state with every kind,
/// status, invitee form and audio codec, byte for byte: the variant indexes and field order
/// are what deployed terminals read.
#[test]
fn every_meeting_message_has_pinned_bytes() {
    use crate::envelope::golden::{assert_pinned, hex};
    let m: MeetingId = "m1".parse().unwrap();
    let site = t("130102001001-main");
    let county: Region = "130102".parse().unwrap();
    let chair = |op| Uplink::Chair { meeting: m, op };
    let join = |tier, relay: Option<&str>| Uplink::JoinUntagged {
        meeting: m,
        tier,
        rtp_port: 5004,
        media_host: Some("10.0.0.1".into()),
        relay: relay.map(Into::into),
    };
    assert_pinned(&[
        (
            Uplink::Join {
                meeting: m,
                tier: Tier::Full,
                rtp_port: 5004,
                media_host: Some("10.0.0.1".into()),
                relay: Some("10.0.0.1:6000".into()),
                joining: 7,
            },
            "0106026d31008c27010831302e302e302e31010d31302e302e302e313a3630303007",
        ),
        (
            join(Tier::Full, Some("10.0.0.1:6000")),
            "0100026d31008c27010831302e302e302e31010d31302e302e302e313a36303030",
        ),
        (
            join(Tier::AudioOnly, None),
            "0100026d31018c27010831302e302e302e3100",
        ),
        (
            join(Tier::ReceiveOnly, None),
            "0100026d31028c27010831302e302e302e3100",
        ),
        (
            Uplink::Status {
                meeting: m,
                seen: 3,
                muted: true,
                hand: Hand {
                    number: 2,
                    raised: true,
                },
                answer: Some(Answer {
                    number: 1,
                    answered_ms: 1_763_798_400_000,
                }),
            },
            "0101026d3103010201010180f8ced4aa33",
        ),
        (
            Uplink::Status {
                meeting: m,
                seen: 0,
                muted: false,
                hand: Hand::default(),
                answer: None,
            },
            "0101026d310000000000",
        ),
        (
            Uplink::Decline {
                meeting: m,
                reason: "busy".into(),
            },
            "0102026d310462757379",
        ),
        (Uplink::Leave { meeting: m }, "0103026d31"),
        (
            Uplink::Call {
                meeting: m,
                to: site,
            },
            "0104026d31e9fabbd5e403046d61696e",
        ),
        (chair(ChairOp::Start), "0105026d3100"),
        (chair(ChairOp::End), "0105026d3101"),
        (chair(ChairOp::RollCall), "0105026d3102"),
        (chair(ChairOp::CloseRollCall), "0105026d3103"),
        (
            chair(ChairOp::Grant(site)),
            "0105026d3104e9fabbd5e403046d61696e",
        ),
        (chair(ChairOp::Revoke), "0105026d3105"),
        (
            chair(ChairOp::Mute(site)),
            "0105026d3106e9fabbd5e403046d61696e",
        ),
        (
            chair(ChairOp::Unmute(site)),
            "0105026d3107e9fabbd5e403046d61696e",
        ),
        (chair(ChairOp::MuteAll), "0105026d3108"),
        (chair(ChairOp::UnmuteAll), "0105026d3109"),
        (
            chair(ChairOp::Broadcast(Some(site))),
            "0105026d310a01e9fabbd5e403046d61696e",
        ),
        (chair(ChairOp::Broadcast(None)), "0105026d310a00"),
        (
            chair(ChairOp::LowerHand(site)),
            "0105026d310be9fabbd5e403046d61696e",
        ),
        (
            chair(ChairOp::Delegate(site, Some(county))),
            "0105026d310ce9fabbd5e403046d61696e0180f3bbd5e403",
        ),
        (
            chair(ChairOp::Delegate(site, None)),
            "0105026d310ce9fabbd5e403046d61696e00",
        ),
        (
            chair(ChairOp::Layout(Some(Layout::Grid(2)))),
            "0105026d310d0103327832",
        ),
        (chair(ChairOp::Layout(None)), "0105026d310d00"),
        (
            chair(ChairOp::Content(Some(site))),
            "0105026d310e01e9fabbd5e403046d61696e",
        ),
        (chair(ChairOp::Content(None)), "0105026d310e00"),
        (
            Uplink::Content {
                meeting: m,
                share: true,
            },
            "0107026d3101",
        ),
    ]);
    // A screen without content is written as boxes that know no content read it; one with
    // content has it after the tiles.
    let tile = OnScreen {
        site,
        ssrc: 2,
        name: "东村".into(),
    };
    let mut screen = Screen {
        meeting: m,
        version: 3,
        layout: Some(Layout::OnePlus(5)),
        tiles: vec![tile.clone()],
        content: None,
    };
    let without = "01026d31030103312b3501e9fabbd5e403046d61696e0206e4b89ce69d91";
    assert_eq!(hex(&screen.encode().unwrap()), without);
    assert_eq!(
        Screen::decode(&screen.encode().unwrap()),
        Ok(screen.clone())
    );
    screen.content = Some(OnScreen { ssrc: 4, ..tile });
    let with = screen.encode().unwrap();
    assert_eq!(
        hex(&with),
        alloc::format!("{without}01e9fabbd5e403046d61696e0406e4b89ce69d91")
    );
    assert_eq!(Screen::decode(&with), Ok(screen));
    assert_pinned(&[
        (
            Downlink::Admitted {
                meeting: m,
                plan: MediaPlan {
                    ssrc: 2,
                    send_to: Some("10.0.0.1:6000".into()),
                    srtp_key: vec![7; 30],
                    tier: Tier::Full,
                    viewed: false,
                },
            },
            "0100026d3102010d31302e302e302e313a363030301e0707070707070707070707070707070707070707070707070707070707070000",
        ),
        (
            Downlink::Refused {
                meeting: m,
                reason: "ended".into(),
            },
            "0101026d3105656e646564",
        ),
        (
            Downlink::Answer {
                meeting: m,
                op: "mute".into(),
                error: None,
            },
            "0102026d31046d75746500",
        ),
        (
            Downlink::Answer {
                meeting: m,
                op: "start".into(),
                error: Some("chair only".into()),
            },
            "0102026d31057374617274010a6368616972206f6e6c79",
        ),
        (Downlink::Rejoin { meeting: m }, "0103026d31"),
        (
            Downlink::Relay {
                meeting: m,
                plan: relays::UnsourcedRelayPlan {
                    upstream: Some("10.0.0.9:6000".into()),
                    routes: vec![(2, vec!["10.0.0.1:5004".into()])],
                    views: vec![(2, "10.0.0.3:7000".into())],
                },
            },
            "0104026d31010d31302e302e302e393a363030300102010d31302e302e302e313a3530303401020d31302e302e302e333a37303030",
        ),
        (
            Downlink::Forward {
                meeting: m,
                plan: relays::RelayPlan {
                    upstream: Some("10.0.0.9:6000".into()),
                    routes: vec![(2, vec!["10.0.0.1:5004".into()])],
                    views: vec![(2, "10.0.0.3:7000".into())],
                    sources: vec![(2, "10.0.0.2:6000".into())],
                },
            },
            "0105026d31010d31302e302e302e393a363030300102010d31302e302e302e313a3530303401020d31302e302e302e333a3730303001020d31302e302e302e323a36303030",
        ),
        (
            Downlink::Dial {
                meeting: m,
                uri: "sip:hall@10.0.0.9".into(),
            },
            "0106026d31117369703a68616c6c4031302e302e302e39",
        ),
    ]);
    let state = |kind, status, profile: MediaProfile| MeetingState {
        version: 5,
        spec: MeetingSpec {
            id: m,
            kind,
            title: "t".into(),
            chair: Some(t("130102000000-hall")),
            invitees: vec![Invitee::Region(county), Invitee::Terminal(site)],
            starts_ms: Some(1_763_798_400_000),
            profile,
            floor_mutes_others: true,
            heartbeat_ms: 10_000,
        },
        status,
        floor: Some(site),
        broadcast: None,
        mute_all: true,
        exceptions: vec![site],
        roll_call: Some(RollCall {
            number: 1,
            opened_ms: 1_763_798_400_000,
        }),
        hands: vec![site],
    };
    let pcma = MediaProfile {
        name: "g711".into(),
        video: None,
        audio: AudioCodec::Pcma,
        audio_kbps: 64,
    };
    assert_pinned(&[
        (
            state(
                Kind::Meeting,
                Status::Scheduled,
                MediaProfile::named("sd").unwrap(),
            ),
            "0105026d310001740180f3bbd5e4030468616c6c020080f3bbd5e40301e9fabbd5e403046d61696e0180f8ced4aa3302736401008005e80219d804002001904e0001e9fabbd5e403046d61696e000101e9fabbd5e403046d61696e010180f8ced4aa3301e9fabbd5e403046d61696e",
        ),
        (
            state(
                Kind::Training,
                Status::Live,
                MediaProfile::named("audio").unwrap(),
            ),
            "0105026d310101740180f3bbd5e4030468616c6c020080f3bbd5e40301e9fabbd5e403046d61696e0180f8ced4aa3305617564696f00002001904e0101e9fabbd5e403046d61696e000101e9fabbd5e403046d61696e010180f8ced4aa3301e9fabbd5e403046d61696e",
        ),
        (
            state(Kind::Call, Status::Ended, pcma),
            "0105026d310201740180f3bbd5e4030468616c6c020080f3bbd5e40301e9fabbd5e403046d61696e0180f8ced4aa33046737313100014001904e0201e9fabbd5e403046d61696e000101e9fabbd5e403046d61696e010180f8ced4aa3301e9fabbd5e403046d61696e",
        ),
    ]);
}

#[test]
fn a_session_kind_reads_back_from_its_name_and_nothing_else_is_a_kind() {
    for k in [Kind::Meeting, Kind::Training, Kind::Call] {
        assert_eq!(k.to_string(), k.as_str());
        assert_eq!(k.as_str().parse::<Kind>(), Ok(k));
    }
    for bad in ["", "Meeting", "party", "call "] {
        let e = bad.parse::<Kind>().unwrap_err();
        assert!(e.contains(&alloc::format!("{bad:?}")), "{e}");
    }
}

#[test]
fn a_session_that_expects_a_province_keeps_the_pace_it_started_with_through_the_join_storm() {
    let mut h = host(Kind::Meeting, &["13"]);
    let site = |i: usize| t(&format!("130101{:03}{:03}-main", 1 + i / 999, 1 + i % 999));
    h.expect((0..12_000).map(site));
    let started = h.op(&Operator::Chair, ChairOp::Start, 5).unwrap();
    let paced: Vec<u32> = started
        .iter()
        .filter_map(|o| match o {
            HostOutput::Publish(s) => Some(s.spec.heartbeat_ms),
            _ => None,
        })
        .collect();
    assert_eq!(paced, [20_000], "12,000 expected sites: 10 s → 20 s");
    let join = full_join("m1".parse().unwrap());
    let mut now = 10;
    for batch in 0..6 {
        for i in batch * 2_000..(batch + 1) * 2_000 {
            h.uplink(site(i), join.clone(), now);
        }
        now += 200;
        let states = h
            .media_updates(now)
            .iter()
            .filter(|o| matches!(o, HostOutput::Publish(_)))
            .count();
        assert_eq!(
            states,
            0,
            "a new state while {} sites joined",
            (batch + 1) * 2_000
        );
    }
    assert_eq!(h.state().spec.heartbeat_ms, 20_000);
    // Sites nobody expected still slow it as they join.
    for i in 12_000..20_000 {
        let unannounced = format!("131102{:03}{:03}-main", 1 + i / 999, 1 + i % 999);
        h.uplink(t(&unannounced), join.clone(), now);
    }
    let states: Vec<u32> = h
        .media_updates(now + 200)
        .iter()
        .filter_map(|o| match o {
            HostOutput::Publish(s) => Some(s.spec.heartbeat_ms),
            _ => None,
        })
        .collect();
    assert_eq!(states, [40_000]);
}

#[test]
fn a_province_session_slows_its_heartbeat_as_it_grows_and_never_speeds_it_up() {
    use super::host::{STATUS_BUDGET_PER_S, paced_heartbeat_ms};
    let mut h = host(Kind::Meeting, &["13"]);
    h.op(&Operator::Chair, ChairOp::Start, 5).unwrap();
    let m: MeetingId = "m1".parse().unwrap();
    let join = full_join(m);
    let site = |i: usize| {
        t(&format!(
            "13{:02}01{:03}{:03}-main",
            1 + i / 999_000 % 11,
            1 + i / 999 % 999,
            1 + i % 999
        ))
    };
    let mut versions = Vec::new();
    let mut now = 10;
    for batch in 0..27 {
        for i in batch * 2_000..(batch + 1) * 2_000 {
            h.uplink(site(i), join.clone(), now);
        }
        now += 200;
        for o in h.media_updates(now) {
            if let HostOutput::Publish(s) = o {
                versions.push((s.version, s.spec.heartbeat_ms));
            }
        }
        let joined = (batch + 1) * 2_000;
        let hb = u64::from(h.state().spec.heartbeat_ms);
        // Every heartbeat's statuses fit the budget, and no faster than the session began.
        assert!(
            joined as u64 * 1_000 / hb <= STATUS_BUDGET_PER_S,
            "{joined} sites at {hb} ms"
        );
        assert!(hb >= HB, "{joined} sites at {hb} ms");
    }
    // 54,000 sites: 10 s → 20 s → 40 s → 80 s, each change one state publish.
    assert_eq!(
        versions.iter().map(|v| v.1).collect::<Vec<_>>(),
        [20_000, 40_000, 80_000]
    );
    assert!(versions.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(
        paced_heartbeat_ms(10_000, 0),
        10_000,
        "small sessions keep their pace"
    );
    assert_eq!(
        paced_heartbeat_ms(80_000, 10),
        80_000,
        "a session never speeds up again"
    );
    // Sites are judged by the slower pace: quiet for two of the old heartbeats is no silence.
    now += 3 * HB;
    assert!(
        !h.tick(now)
            .iter()
            .any(|o| matches!(o, HostOutput::Notice(Notice::Unreachable(_)))),
        "no site is unreachable after 30 s of an 80 s heartbeat"
    );
    now += 3 * 80_000;
    assert!(
        h.tick(now)
            .iter()
            .any(|o| matches!(o, HostOutput::Notice(Notice::Unreachable(_))))
    );
}

/// The screens a world's host published, as (layout, sites on it).
fn screen_sites(w: &World) -> Vec<(Option<Layout>, Vec<TerminalId>)> {
    w.screens
        .iter()
        .map(|s| (s.layout, s.tiles.iter().map(|t| t.site).collect()))
        .collect()
}

#[test]
fn the_chairs_layout_puts_the_speaker_first_and_the_others_in_the_order_they_joined() {
    let villages = [
        "130102001004-main",
        "130102001002-main",
        "130102001003-main",
        "130102001001-main",
        "130102001005-main",
    ];
    let mut ids = vec!["130102000000-hall"];
    ids.extend(villages);
    let mut w = World::new(host(Kind::Meeting, &["130102"]), &ids, AcceptPolicy::All);
    w.op(ChairOp::Start).unwrap();
    w.advance(HB);
    let hall = t("130102000000-hall");
    // Without the chair's layout the screen lists the sources everybody receives: the chair.
    let last = screen_sites(&w).pop().unwrap();
    assert_eq!(last, (None, vec![hall]));
    w.op(ChairOp::Layout(Some(Layout::Grid(2)))).unwrap();
    let screen = w.screens.last().unwrap().clone();
    assert_eq!(screen.layout, Some(Layout::Grid(2)));
    // The chair, then four villages (one more than the 2x2 shows) in the order they joined,
    // each under the SSRC of its plan.
    let sites: Vec<TerminalId> = screen.tiles.iter().map(|x| x.site).collect();
    assert_eq!(
        sites,
        [
            hall,
            t(villages[0]),
            t(villages[1]),
            t(villages[2]),
            t(villages[3])
        ]
    );
    for tile in &screen.tiles {
        assert_eq!(tile.ssrc, w.host.sites()[&tile.site].ssrc);
    }
    // A site on the screen sees the four others; one that is not sees the first four.
    let shows =
        |me: &str| -> Vec<TerminalId> { screen.tiles_for(&t(me)).map(|x| x.site).collect() };
    assert_eq!(
        shows(villages[0]),
        [hall, t(villages[1]), t(villages[2]), t(villages[3])]
    );
    assert_eq!(
        shows(villages[4]),
        [hall, t(villages[0]), t(villages[1]), t(villages[2])]
    );
    // The speaker goes first; the version moves on.
    w.op(ChairOp::Grant(t(villages[3]))).unwrap();
    let next = w.screens.last().unwrap();
    assert_eq!(next.tiles[0].site, t(villages[3]));
    assert_eq!(next.tiles[1].site, hall);
    assert!(next.version > screen.version);
    // Nothing changed, nothing published.
    let published = w.screens.len();
    w.op(ChairOp::Layout(Some(Layout::Grid(2)))).unwrap();
    w.advance(HB);
    assert_eq!(w.screens.len(), published);
    // The layout is the chair's alone.
    assert_eq!(
        w.host.op(
            &Operator::Delegate("130102".parse().unwrap()),
            ChairOp::Layout(None),
            w.now
        ),
        Err(OpError::ChairOnly { op: "layout" })
    );
}

#[test]
fn the_screens_pictures_are_routed_to_full_sites_and_a_thin_site_is_not_on_it() {
    let (mut h, _) = live(&["130102"]);
    let m: MeetingId = "m1".parse().unwrap();
    let relay = t("130102000000-hall");
    let join = |tier, port, relay: Option<&str>| Uplink::Join {
        meeting: m,
        tier,
        rtp_port: port,
        media_host: Some("10.0.0.9".into()),
        relay: relay.map(Into::into),
        joining: 1,
    };
    h.uplink(relay, join(Tier::Full, 5004, Some("10.0.0.1:6000")), 1_100);
    let (a, b, thin) = (
        t("130102001001-main"),
        t("130102001002-main"),
        t("130102001003-main"),
    );
    h.uplink(a, join(Tier::Full, 5010, None), 1_200);
    h.uplink(thin, join(Tier::ReceiveOnly, 5020, None), 1_300);
    h.uplink(b, join(Tier::Full, 5030, None), 1_400);
    h.op(
        &Operator::Chair,
        ChairOp::Layout(Some(Layout::Grid(3))),
        1_500,
    )
    .unwrap();
    let out = h.media_updates(1_600);
    let table = out
        .iter()
        .find_map(|o| match o {
            HostOutput::Send(to, Downlink::Forward { plan, .. }) if *to == relay => Some(plan),
            _ => None,
        })
        .unwrap();
    let to = |ssrc: u32| -> Vec<&str> {
        table
            .routes
            .iter()
            .find(|(s, _)| *s == ssrc)
            .map(|(_, d)| d.iter().map(String::as_str).collect())
            .unwrap_or_default()
    };
    let ssrc = |x: &TerminalId| h.sites()[x].ssrc;
    // The village a's picture reaches the hall's own box and village b, not the thin one.
    assert_eq!(to(ssrc(&a)), ["10.0.0.9:5004", "10.0.0.9:5030"]);
    // The chair's reaches every village.
    assert_eq!(to(ssrc(&relay)).len(), 3);
    // The thin site sends no picture anyone is shown.
    assert!(to(ssrc(&thin)).is_empty());
    let screen = h.screen().unwrap();
    assert!(screen.tiles.iter().all(|x| x.site != thin));
}

#[test]
fn a_host_stored_before_screens_existed_is_restored_without_a_layout() {
    let mut h = host(Kind::Meeting, &["130102"]);
    h.op(&Operator::Chair, ChairOp::Start, 5).unwrap();
    let mut saved = h.to_store().unwrap();
    // The oldest form ends where the layout, the screen and the content begin; the one
    // before content, where the content begins.
    let mut before_content = saved.clone();
    assert_eq!(before_content.pop(), Some(0));
    assert_eq!(saved.split_off(saved.len() - 3), [0, 0, 0]);
    let back = Host::from_store(&saved).unwrap();
    assert_eq!(back.layout(), None);
    assert_eq!(back.state(), h.state());
    let back = Host::from_store(&before_content).unwrap();
    assert_eq!(back.content(), None);
    assert_eq!(back.state(), h.state());
    // A layout survives a store and a restore.
    h.op(&Operator::Chair, ChairOp::Layout(Some(Layout::Speaker)), 6)
        .unwrap();
    let back = Host::from_store(&h.to_store().unwrap()).unwrap();
    assert_eq!(back.layout(), Some(Layout::Speaker));
}

#[test]
fn a_recorder_takes_every_picture_on_the_screen_from_its_regions_relay() {
    let (mut h, _) = live(&["130102"]);
    let m: MeetingId = "m1".parse().unwrap();
    let relay = t("130102000000-hall");
    let join = |port, relay: Option<&str>| Uplink::Join {
        meeting: m,
        tier: Tier::Full,
        rtp_port: port,
        media_host: Some("10.0.0.9".into()),
        relay: relay.map(Into::into),
        joining: 1,
    };
    h.uplink(relay, join(5004, Some("10.0.0.1:6000")), 1_100);
    let village = t("130102001001-main");
    h.uplink(village, join(5010, None), 1_200);
    h.op(
        &Operator::Chair,
        ChairOp::Layout(Some(Layout::Grid(2))),
        1_300,
    )
    .unwrap();
    h.media_updates(1_400);
    assert_eq!(h.recorder_id(), Some(t("130102000000-recorder")));
    h.set_recorder(Some(("10.0.0.7".into(), 7000)));
    let table = |out: &[HostOutput]| forwarding_to(out, &relay);
    let plan = table(&h.media_updates(1_500));
    let to = |plan: &relays::RelayPlan, ssrc: u32| -> Vec<String> {
        plan.routes
            .iter()
            .find(|(s, _)| *s == ssrc)
            .map(|(_, d)| d.clone())
            .unwrap_or_default()
    };
    let ssrc = |x: &TerminalId| h.sites()[x].ssrc;
    // The chair's picture and sound, and the village's on the screen, reach the recorder.
    for s in [ssrc(&relay), ssrc(&village)] {
        assert!(
            to(&plan, s).contains(&"10.0.0.7:7000".to_owned()),
            "{plan:?}"
        );
        assert!(to(&plan, s | 1).contains(&"10.0.0.7:7002".to_owned()));
    }
    // The recorder is no site: not in the roll call, the status or the screen.
    assert!(!h.sites().contains_key(&t("130102000000-recorder")));
    assert!(
        h.screen()
            .unwrap()
            .tiles
            .iter()
            .all(|x| x.site.slug().as_str() != "recorder")
    );
    // Stopped: its routes go.
    h.set_recorder(None);
    let plan = table(&h.media_updates(1_600));
    assert!(
        plan.routes
            .iter()
            .all(|(_, d)| !d.contains(&"10.0.0.7:7000".to_owned()))
    );
}

/// The forwarding table among `out` for `relay`.
fn forwarding_to(out: &[HostOutput], relay: &TerminalId) -> relays::RelayPlan {
    out.iter()
        .find_map(|o| match o {
            HostOutput::Send(to, Downlink::Forward { plan, .. }) if to == relay => {
                Some(plan.clone())
            }
            _ => None,
        })
        .unwrap()
}

#[test]
fn content_is_shared_by_one_site_at_a_time_and_reaches_every_full_site_under_its_own_ssrc() {
    let (mut h, _) = live(&["130102"]);
    let m: MeetingId = "m1".parse().unwrap();
    let relay = t("130102000000-hall");
    let join = |tier, port, relay: Option<&str>, joining| Uplink::Join {
        meeting: m,
        tier,
        rtp_port: port,
        media_host: Some("10.0.0.9".into()),
        relay: relay.map(Into::into),
        joining,
    };
    h.uplink(
        relay,
        join(Tier::Full, 5004, Some("10.0.0.1:6000"), 1),
        1_100,
    );
    let (a, b, thin) = (
        t("130102001001-main"),
        t("130102001002-main"),
        t("130102001003-main"),
    );
    h.uplink(a, join(Tier::Full, 5010, None, 1), 1_200);
    h.uplink(thin, join(Tier::AudioOnly, 5020, None, 1), 1_300);
    h.uplink(b, join(Tier::Full, 5030, None, 1), 1_400);
    h.media_updates(1_450);
    let table = |out: &[HostOutput]| forwarding_to(out, &relay);
    let screen_of = |out: &[HostOutput]| -> Screen {
        out.iter()
            .find_map(|o| match o {
                HostOutput::Screen(s) => Some((**s).clone()),
                _ => None,
            })
            .unwrap()
    };

    // Village a asks and has it, under an SSRC of its own.
    assert_eq!(h.share_content(a, true), Ok(()));
    let out = h.media_updates(1_500);
    let (holder, c) = h.content().unwrap();
    assert_eq!(holder, a);
    assert!(h.sites().values().all(|r| r.ssrc != c) && c % 2 == 0);
    let screen = screen_of(&out);
    assert_eq!(
        screen.content.as_ref().map(|x| (x.site, x.ssrc)),
        Some((a, c))
    );
    // Every room shows it but a's own; a recorder's too. Unnamed, it is captioned by site.
    assert_eq!(screen.content_tile(Some(&a)), None);
    let tile = Some((c, "130102001001 · 共享内容".to_string()));
    assert_eq!(screen.content_tile(Some(&b)), tile);
    assert_eq!(screen.content_tile(None), tile);
    // It comes from a's video port and reaches the hall's box and village b: not a itself,
    // not the audio-only village. Content has no sound.
    let plan = table(&out);
    let routed = |plan: &relays::RelayPlan, ssrc: u32| -> Vec<String> {
        plan.routes
            .iter()
            .find(|(s, _)| *s == ssrc)
            .map(|(_, d)| d.clone())
            .unwrap_or_default()
    };
    assert_eq!(routed(&plan, c), ["10.0.0.9:5004", "10.0.0.9:5030"]);
    assert!(routed(&plan, crate::media::audio_ssrc(c)).is_empty());
    assert!(plan.sources.contains(&(c, "10.0.0.9:5010".into())));
    assert!(
        !plan
            .sources
            .iter()
            .any(|(s, _)| *s == crate::media::audio_ssrc(c))
    );

    // Village b's request is refused while a shares; a's repeat changes nothing.
    assert_eq!(h.share_content(b, true), Err(OpError::ContentHeld(a)));
    assert_eq!(h.share_content(a, true), Ok(()));
    assert_eq!(h.content(), Some((a, c)));
    assert!(h.media_updates(1_600).is_empty());
    // A site without video cannot share; one that does not share cannot stop a's.
    h.share_content(b, false).unwrap();
    assert_eq!(h.content(), Some((a, c)));

    // The chair gives it to b: a fresh SSRC. b stops: nobody shares, and the screen says so.
    h.op(&Operator::Chair, ChairOp::Content(Some(b)), 1_700)
        .unwrap();
    let (holder, c2) = h.content().unwrap();
    assert_eq!(holder, b);
    assert_ne!(c2, c);
    h.share_content(b, false).unwrap();
    assert_eq!(h.content(), None);
    assert_eq!(screen_of(&h.media_updates(1_800)).content, None);
    assert_eq!(h.share_content(thin, true), Err(OpError::CannotShare(thin)));
    assert_eq!(
        h.op(&Operator::Chair, ChairOp::Content(Some(thin)), 1_850),
        Err(OpError::CannotShare(thin))
    );

    // A sharing site that joins again starts its content sender again, under a fresh SSRC;
    // one that leaves stops sharing.
    h.share_content(a, true).unwrap();
    let (_, before) = h.content().unwrap();
    h.uplink(a, join(Tier::Full, 5012, None, 2), 1_900);
    let (holder, after) = h.content().unwrap();
    assert_eq!(holder, a);
    assert_ne!(after, before);
    assert_ne!(after, h.sites()[&a].ssrc);
    h.uplink(a, Uplink::Leave { meeting: m }, 2_000);
    assert_eq!(h.content(), None);
}

#[test]
fn a_delegate_gives_content_within_its_region_only() {
    let (mut h, _) = live(&["130102", "130103"]);
    let m: MeetingId = "m1".parse().unwrap();
    let (ours, theirs) = (t("130102001001-main"), t("130103001001-main"));
    for (site, port) in [(ours, 5010), (theirs, 5020)] {
        h.uplink(
            site,
            Uplink::Join {
                meeting: m,
                tier: Tier::Full,
                rtp_port: port,
                media_host: Some("10.0.0.9".into()),
                relay: None,
                joining: 1,
            },
            1_100,
        );
    }
    let county = Operator::Delegate("130102".parse().unwrap());
    h.op(&county, ChairOp::Content(Some(ours)), 1_200).unwrap();
    assert_eq!(h.content().map(|c| c.0), Some(ours));
    assert!(matches!(
        h.op(&county, ChairOp::Content(Some(theirs)), 1_300),
        Err(OpError::OutsideScope { .. })
    ));
    h.op(&Operator::Chair, ChairOp::Content(Some(theirs)), 1_400)
        .unwrap();
    // Nor does it take the content from another region's site.
    assert!(matches!(
        h.op(&county, ChairOp::Content(None), 1_500),
        Err(OpError::OutsideScope { .. })
    ));
    assert_eq!(h.content().map(|c| c.0), Some(theirs));
}

/// While relays join, a site that sends nothing keeps the relay it was given: it is told of a
/// nearer one when it comes to send (here, given the floor). A site that sends is told at once.
#[test]
fn a_site_that_sends_nothing_is_told_of_a_nearer_relay_only_when_it_comes_to_send() {
    let mut h = host(Kind::Meeting, &["1301"]);
    h.op(&Operator::Chair, ChairOp::Start, 1).unwrap();
    let m: MeetingId = "m1".parse().unwrap();
    let join = |relay: Option<&str>, host: &str| Uplink::Join {
        meeting: m,
        tier: Tier::Full,
        rtp_port: 5004,
        media_host: Some(host.into()),
        relay: relay.map(Into::into),
        joining: 1,
    };
    let plans_to = |out: &[HostOutput], site: TerminalId| -> Vec<Option<String>> {
        out.iter()
            .filter_map(|o| match o {
                HostOutput::Send(to, Downlink::Admitted { plan, .. }) if *to == site => {
                    Some(plan.send_to.clone())
                }
                _ => None,
            })
            .collect()
    };
    let village = t("130103001001-main");
    // The chair (a source) and the city's relay.
    let mut out = h.uplink(t("130102000000-hall"), join(None, "10.0.0.5"), 2);
    out.extend(h.uplink(
        t("130100000000-city"),
        join(Some("10.0.0.2:6000"), "10.0.0.2"),
        2,
    ));
    out.extend(h.uplink(village, join(None, "10.0.1.1"), 3));
    out.extend(h.media_updates(3));
    assert_eq!(plans_to(&out, village), [Some("10.0.0.2:6000".into())]);

    // Its county's relay joins: the village would send there, but sends nothing.
    let county = t("130103000000-hall");
    let mut out = h.uplink(county, join(Some("10.0.0.3:6000"), "10.0.0.3"), 4);
    out.extend(h.media_updates(4));
    assert_eq!(plans_to(&out, village), Vec::<Option<String>>::new());
    assert_eq!(plans_to(&out, county), [Some("10.0.0.3:6000".into())]);
    // The county's relay forwards the chair's stream down to it all the same.
    assert!(out.iter().any(|o| matches!(
        o,
        HostOutput::Send(to, Downlink::Forward { plan, .. })
            if *to == county && plan.routes.iter().any(|(_, d)| d.contains(&"10.0.1.1:5004".to_string()))
    )));

    // Given the floor, it sends: to its county's relay.
    h.op(&Operator::Chair, ChairOp::Grant(village), 5).unwrap();
    let out = h.media_updates(5);
    assert_eq!(plans_to(&out, village), [Some("10.0.0.3:6000".into())]);

    // A relay at its own site joins while it holds the floor: it is told at once.
    let mut out = h.uplink(
        t("130103001001-box"),
        join(Some("10.0.0.4:6000"), "10.0.0.4"),
        6,
    );
    out.extend(h.media_updates(6));
    assert_eq!(plans_to(&out, village), [Some("10.0.0.4:6000".into())]);
}

/// In a session of many sites a plan may wait behind the others' on its way: a repeated join
/// is answered again only once all the session's plans could have crossed the links.
#[test]
fn a_repeated_join_in_a_large_session_waits_longer_for_its_plan_again() {
    assert_eq!(plan_in_flight_ms(1), PLAN_IN_FLIGHT_MS);
    assert_eq!(plan_in_flight_ms(54_145), 54_145 * 1_000 / PLANS_PER_S);
    assert!(plan_in_flight_ms(54_145) > 13_000);

    let mut h = host(Kind::Meeting, &["13"]);
    h.op(&Operator::Chair, ChairOp::Start, 1).unwrap();
    let join = full_join(h.state().spec.id);
    // 40,000 sites join and are given their plans.
    let sites: Vec<TerminalId> = (0..40_000u32)
        .map(|i| t(&format!("130102{:03}{:03}-main", 1 + i / 500, 1 + i % 500)))
        .collect();
    for s in &sites {
        h.uplink(*s, join.clone(), 10_000);
    }
    let plans = |out: &[HostOutput]| {
        out.iter()
            .filter(|o| matches!(o, HostOutput::Send(_, Downlink::Admitted { .. })))
            .count()
    };
    assert_eq!(plans(&h.media_updates(10_000)), 40_000);
    let in_flight = plan_in_flight_ms(40_000);
    assert_eq!(in_flight, 10_000);
    // A site repeats its join after the small session's wait: not yet answered again.
    h.uplink(sites[7], join.clone(), 10_000 + PLAN_IN_FLIGHT_MS);
    assert_eq!(plans(&h.media_updates(10_000 + PLAN_IN_FLIGHT_MS)), 0);
    // Once all the session's plans could have crossed: the same plan again.
    h.uplink(sites[7], join.clone(), 10_000 + in_flight);
    assert_eq!(plans(&h.media_updates(10_000 + in_flight)), 1);
}

/// Where plans take longer to arrive than the session's size says (a busy broker tier), a
/// repeated join is answered again only once its plan has been on its way twice as long as
/// plans are taking; once they come fast again, a lost plan is answered after the usual wait.
#[test]
fn a_repeated_join_waits_as_long_as_plans_are_taking_to_arrive() {
    let (mut h, state) = live(&["130102"]);
    let m = state.spec.id;
    let join = full_join(m);
    let sites: Vec<TerminalId> = (1..=10)
        .map(|k| t(&format!("130102001{k:03}-main")))
        .collect();
    let plans = |out: &[HostOutput]| {
        out.iter()
            .filter(|o| matches!(o, HostOutput::Send(_, Downlink::Admitted { .. })))
            .count()
    };
    for s in &sites {
        h.uplink(*s, join.clone(), 10_000);
    }
    assert_eq!(plans(&h.media_updates(10_000)), 10);
    // Nine plans take 12 s to arrive: each site's first status after its plan says so.
    let status = Uplink::Status {
        meeting: m,
        seen: state.version,
        muted: false,
        hand: Hand::default(),
        answer: None,
    };
    for s in &sites[..9] {
        h.uplink(*s, status.clone(), 22_000);
    }
    // The tenth repeats its join 16 s after its plan went out (three times the small
    // session's wait): its plan is taken to be still on its way.
    assert!(16_000 > 3 * plan_in_flight_ms(10));
    h.uplink(sites[9], join.clone(), 26_000);
    assert_eq!(plans(&h.media_updates(26_000)), 0);
    // Later statuses (heartbeats) say nothing of plans: the estimate falls with the clock.
    for s in &sites[..9] {
        h.uplink(*s, status.clone(), 40_000);
    }
    // A minute on, plans are taken to be as fast as the session's size says: answered.
    h.uplink(sites[9], join.clone(), 70_000);
    assert_eq!(plans(&h.media_updates(70_000)), 1);
}

/// A session paced for a province (its heartbeat 80 s) takes seconds to carry its plans: a
/// site repeats its join no sooner than a quarter of the heartbeat (20 s), where a small
/// session's sites repeat after 1.5 s.
#[test]
fn a_site_of_a_province_sized_session_repeats_its_join_less_often() {
    let (_, mut state) = live(&["130102"]);
    state.spec.heartbeat_ms = 80_000;
    let mut gaps = Vec::new();
    for k in 1..=50 {
        let mut p = Participant::new(t(&format!("130102{k:03}001-main")), pcfg(AcceptPolicy::All));
        p.handle(Input::State(state.clone()), 1_000);
        let mut times = vec![1_000];
        times.extend(join_times(&mut p, 1_100, 120_000));
        // 40 s doubling to a minute, each wait in the upper half of its step.
        assert_backs_off(&times, 40_000, p.id());
        gaps.push(times[1] - times[0]);
    }
    assert!(gaps.iter().all(|g| *g >= 20_000), "{gaps:?}");
    assert!(gaps.iter().any(|g| *g < 30_000), "{gaps:?}");
    assert_eq!(
        paced_join_retry(participant::JOIN_RETRY, 6_000),
        participant::JOIN_RETRY,
        "a small session keeps the configured back-off"
    );
}

/// A province's sites join when they see the session created (at the default heartbeat) and
/// learn its pace at the start: the repeat of a join sent before the start moves out with the
/// pace, so the start's storm is not followed by every site's join again seconds later.
#[test]
fn a_join_sent_before_the_start_is_repeated_at_the_pace_the_start_sets() {
    let (_, live_state) = live(&["130102"]);
    let mut scheduled = (*live_state).clone();
    scheduled.status = Status::Scheduled;
    scheduled.version -= 1;
    scheduled.spec.heartbeat_ms = HB as u32;
    let mut paced = (*live_state).clone();
    paced.spec.heartbeat_ms = 80_000;
    for k in 1..=50 {
        let mut p = Participant::new(t(&format!("130102{k:03}001-main")), pcfg(AcceptPolicy::All));
        let first = p.handle(Input::State(Box::new(scheduled.clone())), 1_000);
        assert_eq!(joinings(first).len(), 1, "joins when invited");
        p.handle(Input::State(Box::new(paced.clone())), 1_500);
        let times = join_times(&mut p, 1_600, 60_000);
        let repeat = times.first().copied();
        assert!(
            repeat.is_some_and(|r| (21_000..=41_100).contains(&r)),
            "{}: repeated at {repeat:?}",
            p.id()
        );
    }
    // The other way, a slower pace set back: the repeat comes sooner again.
    let mut p = Participant::new(t("130102001001-main"), pcfg(AcceptPolicy::All));
    let mut slow = paced.clone();
    slow.version -= 1;
    p.handle(Input::State(Box::new(slow)), 1_000);
    let mut quick = (*live_state).clone();
    quick.spec.heartbeat_ms = HB as u32;
    p.handle(Input::State(Box::new(quick)), 1_500);
    let times = join_times(&mut p, 1_600, 10_000);
    assert!(times.first().is_some_and(|r| *r <= 6_100), "{times:?}");
}

/// A site whose plan is still on its way (a province's plans wait seconds behind each other in
/// the brokers) answers a roll call at once, saying it has applied nothing yet; that status is
/// not taken for its plan's arrival.
#[test]
fn a_site_waiting_for_its_plan_answers_a_roll_call_at_once() {
    let (mut h, state) = live(&["130102"]);
    let m = state.spec.id;
    let mut p = Participant::new(t("130102001001-main"), pcfg(AcceptPolicy::All));
    let join = p
        .handle(Input::State(state.clone()), 1_000)
        .into_iter()
        .find_map(|o| match o {
            Output::Send(up @ Uplink::Join { .. }) => Some(up),
            _ => None,
        })
        .unwrap();
    h.uplink(*p.id(), join.clone(), 1_100);
    let plans = |out: Vec<HostOutput>| -> Vec<Downlink> {
        out.into_iter()
            .filter_map(|o| match o {
                HostOutput::Send(_, d @ Downlink::Admitted { .. }) => Some(d),
                _ => None,
            })
            .collect()
    };
    // The plan goes out, and waits on the way.
    let plan = plans(h.media_updates(1_100)).pop().unwrap();
    let with_roll_call = published(h.op(&Operator::Chair, ChairOp::RollCall, 21_000).unwrap());
    let statuses: Vec<Uplink> = p
        .handle(Input::State(with_roll_call), 21_050)
        .into_iter()
        .filter_map(|o| match o {
            Output::Send(up @ Uplink::Status { .. }) => Some(up),
            _ => None,
        })
        .collect();
    assert!(
        matches!(
            &statuses[..],
            [Uplink::Status {
                seen: 0,
                answer: Some(_),
                ..
            }]
        ),
        "{statuses:?}"
    );
    assert_eq!(p.session(&m).unwrap().phase, Phase::Joining);
    for up in statuses {
        h.uplink(*p.id(), up, 21_100);
    }
    let rows = h.roll_call_results().unwrap().sites;
    let site = rows.iter().find(|(s, _)| s == p.id()).unwrap();
    assert_eq!(site.1, Some(50), "answered when it saw the roll call");
    // The answer is not the plan's arrival (20 s after it went out, which would have the
    // host wait 40 s for plans): the repeated join 30 s on gets the plan again.
    h.uplink(*p.id(), join, 31_100);
    assert_eq!(plans(h.media_updates(31_100)), core::slice::from_ref(&plan));
    // Its plan arrives at last: it joins, applies the state and reports it.
    let out = p.handle(Input::Downlink(plan), 31_200);
    assert_eq!(p.session(&m).unwrap().phase, Phase::Joined);
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Send(Uplink::Status { seen, .. }) if *seen != 0
    )));
}
