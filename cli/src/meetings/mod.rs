//! The meeting host inside `cuntong central`: one [`Host`] per session, fed by the sites'
//! `mt` uplinks and by the requests of `cuntong meeting …` commands, its outputs published
//! through central's link (states retained once per invitee, media plans on each site's own
//! `md` downlink). Every session is kept in the store (`meetings` table, the host as it is)
//! and reloaded at start, so a restart of central loses no meeting; on every (re)connect the
//! live states are published again, in case the broker lost its retained copies.
//!
//! A stored session central cannot host (its record does not decode, or its times are out of
//! range) does not stop central: it is skipped, logged once and listed by `meeting list` with
//! its problem, and `meeting end` retires it.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::sync::Arc;

use cuntong_core::envelope::encode;
use cuntong_core::meeting::host::{
    ChairOp, Host, HostConfig, HostOutput, Notice, OpError, Operator,
};
use cuntong_core::meeting::{
    Downlink, Invitee, Kind, MediaProfile, MeetingId, MeetingSpec, MeetingState, Screen, Status,
    Uplink,
};
use cuntong_core::terminal_id::TerminalId;
use cuntong_core::topic::{Channel, Topic, region_filter};
use cuntong_terminal::link::{Incoming, Link, Message};
use ring::rand::SecureRandom;
use tokio::sync::watch;

use crate::control::{
    ControlError, MeetingJson, MeetingStatus, PAGE, PAGE_BYTES, RequestBody, ResponseBody,
    RollCallJson, SiteJson,
};
use crate::names::Names;
use crate::store::{Column, MeetingRow, Record, StateWriter, Store, StoreError, StoredMeeting};
use crate::view::{LAST_MS, rfc3339_ms};

mod answer;
mod listing;
mod outbound;
mod recording;
mod uplink;

use listing::restore;
pub use listing::{meeting_json, status};

use outbound::Outbound;
use recording::Recording;

/// Ended sessions stay in memory (for `status` and `list`) this long; the store keeps them.
const ENDED_KEPT_MS: u64 = 24 * 3600 * 1000;

/// How often a session whose site records changed, but not its state, is saved. Sites repeat
/// those facts (joined, the state they applied, their answer) on every heartbeat, so a host
/// restored from a copy this old learns them again within a heartbeat; saving them at every
/// status would rewrite a province session's record (megabytes) every second.
const RECORDS_SAVED_EVERY_MS: u64 = 10_000;
/// Calls a terminal may have in progress at once.
const CALLS_PER_TERMINAL: usize = 4;
/// Regions and terminals one session invites, at most (each is a state copy per change).
const MAX_INVITEES: usize = 256;
/// How far ahead a session may be scheduled.
pub const SCHEDULE_AHEAD_MS: u64 = 366 * 24 * 3600 * 1000;
/// A session's title, at most (characters): it travels in every state the sites receive.
pub const TITLE_MAX: usize = 200;

/// A session's title or start that central does not host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadSession {
    #[error("a session needs a title")]
    NoTitle,
    #[error("a title has at most {TITLE_MAX} characters")]
    LongTitle,
    #[error("a title is one line of text (no control characters)")]
    TitleLines,
    #[error("a session is scheduled at most a year (366 days) ahead")]
    TooFarAhead,
}

/// A title central hosts: something to show, and not too long.
pub fn check_title(title: &str) -> Result<(), BadSession> {
    if title.trim().is_empty() {
        return Err(BadSession::NoTitle);
    }
    if title.chars().count() > TITLE_MAX {
        return Err(BadSession::LongTitle);
    }
    if title.chars().any(char::is_control) {
        return Err(BadSession::TitleLines);
    }
    Ok(())
}

/// A scheduled start central hosts: at most [`SCHEDULE_AHEAD_MS`] after `now_ms`.
pub fn check_start(at_ms: u64, now_ms: u64) -> Result<(), BadSession> {
    if at_ms > now_ms.saturating_add(SCHEDULE_AHEAD_MS) {
        return Err(BadSession::TooFarAhead);
    }
    Ok(())
}

/// Every session central hosts.
pub struct MeetingService {
    hosts: BTreeMap<MeetingId, Host>,
    /// Stored sessions central cannot host, skipped at start, by the id in their row: as
    /// `meeting list` shows them (status `unusable`, with their problem).
    unusable: BTreeMap<String, MeetingJson>,
    /// The heartbeat new sessions get.
    heartbeat_ms: u32,
    /// Where the sessions are written (the store thread).
    writer: StateWriter,
    /// Every session id the store holds (ended ones too): a new session never reuses one.
    stored: BTreeSet<String>,
    /// Every terminal central has heard of (they are listed as invited until they answer).
    known: BTreeSet<TerminalId>,
    /// The newest media figures each site reported (`media.*`), with their times.
    media: BTreeMap<TerminalId, BTreeMap<String, (u64, f64)>>,
    /// Names of the sites, for the status and roll call answers.
    names: watch::Receiver<Arc<Names>>,
    /// Sessions to save at the next tick: their state changed.
    dirty: BTreeSet<MeetingId>,
    /// Sessions whose site records changed since they were saved, and when that last was.
    records_changed: BTreeSet<MeetingId>,
    records_saved_ms: u64,
    /// Where relays reach this central's recorders.
    media_host: std::net::IpAddr,
    /// The sessions central records, by id.
    recordings: BTreeMap<MeetingId, Recording>,
    outbound: Outbound,
}

impl std::fmt::Debug for MeetingService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeetingService")
            .field("sessions", &self.hosts.len())
            .field("unusable", &self.unusable.len())
            .field("outbound", &self.outbound.len())
            .finish()
    }
}

/// The topics a session's state is published on: one per invitee, and the chair's own if no
/// invitee covers it.
pub fn state_topics(spec: &MeetingSpec) -> Vec<String> {
    session_topics(spec, |invitee, id| Topic::Meeting { invitee, id })
}

/// The topics a session's screen is published on: beside each of its state's.
pub fn screen_topics(spec: &MeetingSpec) -> Vec<String> {
    session_topics(spec, |invitee, id| Topic::Screen { invitee, id })
}

fn session_topics(spec: &MeetingSpec, topic: fn(Invitee, MeetingId) -> Topic) -> Vec<String> {
    let mut audience = spec.invitees.clone();
    if let Some(chair) = spec.chair
        && !spec.invitees.iter().any(|i| i.includes(&chair))
    {
        audience.push(Invitee::Terminal(chair));
    }
    audience
        .into_iter()
        .map(|i| topic(i, spec.id).to_string())
        .collect()
}

impl MeetingService {
    /// Carries on with the sessions kept in `store` (read once, before central's loop starts);
    /// writes through `writer`; new sessions ask their sites for a status every `heartbeat`.
    pub fn open(
        store: &dyn Store,
        heartbeat: std::time::Duration,
        writer: StateWriter,
        names: watch::Receiver<Arc<Names>>,
    ) -> Result<MeetingService, StoreError> {
        let mut hosts = BTreeMap::new();
        let mut unusable = BTreeMap::new();
        for row in store.unended_meetings()? {
            match restore(row) {
                Ok((mid, mut host)) => {
                    // Versions published after the last save may be lost with the crash.
                    host.restored(cuntong_terminal::link::unix_ms());
                    hosts.insert(mid, host);
                }
                Err(json) => {
                    let (id, problem) = (&json.id, json.problem.as_deref().unwrap_or(""));
                    tracing::error!(meeting = %id, %problem, "a stored session cannot be used: skipped (`cuntong meeting end {id}` retires it)");
                    unusable.insert(json.id.clone(), *json);
                }
            }
        }
        if !unusable.is_empty() {
            tracing::warn!(
                sessions = unusable.len(),
                "stored sessions skipped (see `cuntong meeting list`)"
            );
        }
        if !hosts.is_empty() {
            tracing::info!(sessions = hosts.len(), "meetings restored from the store");
        }
        let dirty = hosts.keys().copied().collect();
        Ok(MeetingService {
            hosts,
            unusable,
            heartbeat_ms: heartbeat.as_millis().clamp(500, u128::from(u32::MAX)) as u32,
            writer,
            stored: store.meeting_ids()?.into_iter().collect(),
            known: store.terminal_ids()?.into_iter().collect(),
            media: BTreeMap::new(),
            names,
            dirty,
            records_changed: BTreeSet::new(),
            records_saved_ms: 0,
            media_host: std::net::IpAddr::from([127, 0, 0, 1]),
            recordings: BTreeMap::new(),
            outbound: Outbound::default(),
        })
    }

    /// What central subscribes to for meetings.
    pub fn subscriptions() -> Vec<String> {
        vec![region_filter(None, Some(Channel::MeetingUp))]
    }

    pub fn sessions(&self) -> impl Iterator<Item = &Host> {
        self.hosts.values()
    }

    fn create(
        &mut self,
        spec: MeetingSpec,
        now_ms: u64,
        start: bool,
    ) -> Result<MeetingId, ControlError> {
        let id = spec.id;
        if self.hosts.contains_key(&id) {
            return Err(ControlError::Failed(format!(
                "a session {id} exists already"
            )));
        }
        let mut key = vec![0u8; 30];
        ring::rand::SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| ControlError::Failed("no randomness for the SRTP key".to_owned()))?;
        let (mut host, out) = Host::new(spec, HostConfig::default(), key, now_ms);
        host.expect(self.known.iter().copied());
        self.hosts.insert(id, host);
        self.stored.insert(id.as_str().to_owned());
        self.dirty.insert(id);
        self.apply(id, out);
        if start {
            self.op(id, ChairOp::Start, now_ms)?;
        }
        tracing::info!(meeting = %id, "session created");
        Ok(id)
    }

    fn op(&mut self, id: MeetingId, op: ChairOp, now_ms: u64) -> Result<u64, ControlError> {
        let host = self
            .hosts
            .get_mut(&id)
            .ok_or(ControlError::NoSuchMeeting(id))?;
        let out = host
            .op(&Operator::Chair, op, now_ms)
            .map_err(|e| ControlError::Refused(e.to_string()))?;
        let version = host.state().version;
        self.dirty.insert(id);
        self.apply(id, out);
        Ok(version)
    }

    /// Marks an unusable stored session ended, so it is not loaded again.
    fn retire(&mut self, id: &str) -> Result<(), ControlError> {
        self.writer
            .retire_meeting(id.to_owned())
            .map_err(|e| ControlError::Failed(e.to_string()))?;
        self.unusable.remove(id);
        tracing::info!(meeting = %id, "unusable stored session retired");
        Ok(())
    }

    /// Whether the store holds a session (live or ended) under `id`.
    fn in_store(&self, id: &MeetingId) -> bool {
        self.stored.contains(id.as_str())
    }

    /// Takes in what a received record says of its terminal: that it exists, and its media.
    pub fn record(&mut self, record: &Record) {
        let terminal = match record {
            Record::Telemetry { terminal, .. }
            | Record::Event { terminal, .. }
            | Record::Presence { terminal, .. } => terminal,
            Record::Lost { .. } | Record::Rejected { .. } => return,
        };
        if !self.known.contains(terminal) {
            self.known.insert(*terminal);
        }
        let Record::Telemetry { envelope, .. } = record else {
            return;
        };
        for s in &envelope.body.samples {
            let name = s.metric.name();
            if !name.starts_with("media.") {
                continue;
            }
            let ts = envelope.time_ms.saturating_add(u64::from(s.offset_ms));
            let latest = self.media.entry(*terminal).or_default();
            match latest.get_mut(name) {
                Some(v) if v.0 > ts => {}
                Some(v) => *v = (ts, s.value.to_f64()),
                None => {
                    latest.insert(name.to_owned(), (ts, s.value.to_f64()));
                }
            }
        }
    }

    /// A new session id: `m`, the time in seconds and a random suffix (hex), never one in
    /// memory or in the store.
    fn fresh_id(&self, now_ms: u64) -> Result<MeetingId, ControlError> {
        let failed = |why: String| ControlError::Failed(why);
        for _ in 0..16 {
            let mut salt = [0u8; 2];
            ring::rand::SystemRandom::new()
                .fill(&mut salt)
                .map_err(|_| failed("no randomness for the meeting id".into()))?;
            let id: MeetingId = format!("m{:x}{:04x}", now_ms / 1000, u16::from_le_bytes(salt))
                .parse()
                .map_err(|e| failed(format!("meeting id: {e}")))?;
            if !self.in_store(&id) && !self.hosts.contains_key(&id) {
                return Ok(id);
            }
        }
        Err(failed("cannot find a free meeting id".into()))
    }

    /// Lays out the media of every session something changed in since the last call: the
    /// plans joins are waiting for, new relay tables. One call serves any number of changes,
    /// so the caller calls it on a short tick (and after a chair's operation), never after
    /// each message: a province's join storm then costs a layout per tick, not one per site.
    pub fn lay_out(&mut self, now_ms: u64) {
        let ids: Vec<MeetingId> = self.hosts.keys().copied().collect();
        for id in ids {
            if let Some(h) = self.hosts.get_mut(&id) {
                let out = h.media_updates(now_ms);
                self.apply(id, out);
            }
        }
    }

    fn apply(&mut self, id: MeetingId, out: Vec<HostOutput>) {
        for o in out {
            match o {
                HostOutput::Publish(state) => self.publish_state(&state),
                HostOutput::Clear => {
                    if let Some(r) = self.recordings.remove(&id) {
                        tracing::info!(meeting = %id, out = %r.out.display(), "recording stopped: the session ended");
                    }
                    if let Some(h) = self.hosts.get(&id) {
                        let spec = &h.state().spec;
                        for topic in state_topics(spec).into_iter().chain(screen_topics(spec)) {
                            self.push(Message::new(topic, Vec::new()).retained().urgent());
                        }
                    }
                }
                HostOutput::Screen(screen) => self.publish_screen(*screen),
                HostOutput::Send(to, d) => match encode(&d) {
                    Ok(bytes) => {
                        let topic = Topic::terminal(&to, Channel::MeetingDown).to_string();
                        // Plans and relay tables are the bulk of a start, each the whole of
                        // its kind for its site and meeting; the rest is urgent.
                        let whole = match &d {
                            Downlink::Admitted { meeting, .. } => Some((meeting, "plan")),
                            Downlink::Forward { meeting, .. } => Some((meeting, "relay")),
                            _ => None,
                        };
                        let key = whole.map(|(meeting, kind)| format!("{topic} {meeting} {kind}"));
                        let m = Message::new(topic, bytes);
                        match key {
                            Some(key) => self.outbound.push_replacing(key, m),
                            None => self.push(m.urgent()),
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "cannot encode a meeting downlink"),
                },
                HostOutput::Notice(n) => log_notice(&id, &n),
            }
        }
    }

    fn publish_state(&mut self, state: &MeetingState) {
        match encode(state) {
            Ok(bytes) => {
                for topic in state_topics(&state.spec) {
                    self.push(Message::new(topic, bytes.clone()).retained().urgent());
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot encode a meeting state"),
        }
    }

    /// Publishes a session's screen with its sites' names for the captions.
    fn publish_screen(&mut self, mut screen: Screen) {
        let Some(host) = self.hosts.get(&screen.meeting) else {
            return;
        };
        let topics = screen_topics(&host.state().spec);
        self.name_tiles(&mut screen);
        if let Some(r) = self.recordings.get(&screen.meeting) {
            r.show(&screen);
        }
        match screen.encode() {
            Ok(bytes) => {
                for topic in topics {
                    self.push(Message::new(topic, bytes.clone()).retained().urgent());
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot encode a meeting screen"),
        }
    }

    /// Names each site on `screen` for its caption (none for a site without a name).
    fn name_tiles(&self, screen: &mut Screen) {
        let names = self.names.borrow();
        for tile in screen.tiles.iter_mut().chain(&mut screen.content) {
            let name = names.terminal(&tile.site);
            tile.name = if name == crate::names::UNNAMED {
                String::new()
            } else {
                name.to_owned()
            };
        }
    }

    /// Queues a message on central's outbound queue (drained as the link takes it).
    pub fn push(&mut self, m: Message) {
        self.outbound.push(m);
    }

    /// Hands the links as much as they take now, what sites must hear at once to `urgent`,
    /// the bulk (media plans, relay tables) to `bulk`; the rest waits for the next call.
    pub fn drain(&mut self, urgent: &Link, bulk: &Link) {
        self.outbound.drain(urgent, bulk);
    }

    /// Messages waiting for room in the link.
    pub fn waiting(&self) -> usize {
        self.outbound.len()
    }

    /// Messages the outbound queue dropped since the start (the oldest, when a lane was full).
    pub fn dropped(&self) -> u64 {
        self.outbound.dropped()
    }

    /// Central (re)connected: publish every live state and its screen again.
    pub fn republish(&mut self) {
        let live: Vec<(MeetingState, Option<Screen>)> = self
            .hosts
            .values()
            .filter(|h| h.state().status != Status::Ended)
            .map(|h| (h.state().clone(), h.screen().cloned()))
            .collect();
        for (state, screen) in live {
            self.publish_state(&state);
            if let Some(screen) = screen {
                self.publish_screen(screen);
            }
        }
    }

    /// Once a second or so: unreachable sites, scheduled starts, saving what changed.
    pub fn tick(&mut self, now_ms: u64) {
        let ids: Vec<MeetingId> = self.hosts.keys().copied().collect();
        for id in ids {
            let Some(host) = self.hosts.get_mut(&id) else {
                continue;
            };
            let due = host.state().status == Status::Scheduled
                && host.state().spec.starts_ms.is_some_and(|t| t <= now_ms);
            let out = host.tick(now_ms);
            if !out.is_empty() {
                self.dirty.insert(id);
            }
            self.apply(id, out);
            if due && let Err(e) = self.op(id, ChairOp::Start, now_ms) {
                tracing::warn!(meeting = %id, error = %e, "scheduled start failed");
            }
        }
        self.lay_out(now_ms);
        if now_ms.saturating_sub(self.records_saved_ms) >= RECORDS_SAVED_EVERY_MS {
            self.records_saved_ms = now_ms;
            self.dirty.append(&mut self.records_changed);
        }
        // Save first: a session leaves memory only once its end is handed to the store thread
        // (which writes what it is handed, in order, retrying until it is written).
        if let Err(e) = self.save() {
            tracing::error!(error = %e, "cannot save meetings");
            return;
        }
        self.hosts.retain(|_, h| {
            h.ended_ms()
                .is_none_or(|end| now_ms.saturating_sub(end) < ENDED_KEPT_MS)
        });
    }

    /// Hands every session changed in any way to the store thread (at shutdown).
    pub fn save_all(&mut self) -> Result<bool, crate::store::WriterGone> {
        self.dirty.append(&mut self.records_changed);
        self.save()
    }

    /// Hands the sessions whose state changed to the store thread, written there in one
    /// transaction; whether there were any.
    pub fn save(&mut self) -> Result<bool, crate::store::WriterGone> {
        self.records_changed.retain(|id| !self.dirty.contains(id));
        if self.dirty.is_empty() {
            return Ok(false);
        }
        let mut rows = Vec::with_capacity(self.dirty.len());
        for id in &self.dirty {
            let Some(h) = self.hosts.get(id) else {
                continue;
            };
            match h.to_store() {
                Ok(record) => rows.push(MeetingRow {
                    id: *id,
                    status: h.state().status.as_str(),
                    created_ms: h.created_ms(),
                    record,
                }),
                Err(e) => {
                    tracing::error!(meeting = %id, error = %e, "cannot encode a meeting for the store")
                }
            }
        }
        self.writer.meetings(rows)?;
        self.dirty.clear();
        Ok(true)
    }
}

fn log_notice(id: &MeetingId, n: &Notice) {
    match n {
        Notice::Joined(t) => tracing::debug!(meeting = %id, terminal = %t, "joined"),
        Notice::Declined(t, why) => {
            tracing::info!(meeting = %id, terminal = %t, reason = %why, "declined")
        }
        Notice::Left(t) => tracing::debug!(meeting = %id, terminal = %t, "left"),
        Notice::Unreachable(t) => tracing::info!(meeting = %id, terminal = %t, "unreachable"),
        Notice::Back(t) => tracing::info!(meeting = %id, terminal = %t, "back"),
        Notice::Answered {
            site,
            number,
            latency_ms,
        } => {
            tracing::debug!(meeting = %id, terminal = %site, number, latency_ms, "roll call answered")
        }
        Notice::HandRaised(t) => tracing::info!(meeting = %id, terminal = %t, "hand raised"),
        Notice::HandLowered(t) => tracing::debug!(meeting = %id, terminal = %t, "hand lowered"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{SqliteStore, Writer};
    use rusqlite::{Connection, params};

    /// The meeting host on the store at `db`, with a store thread of its own.
    fn open(db: &std::path::Path, heartbeat: std::time::Duration) -> MeetingService {
        let store = SqliteStore::open(db).unwrap();
        let writer = Writer::start(
            Box::new(SqliteStore::open(db).unwrap()),
            |_| {},
            tokio_util::sync::CancellationToken::new(),
        )
        .unwrap();
        MeetingService::open(
            &store,
            heartbeat,
            writer.state.clone(),
            writer.names.clone(),
        )
        .unwrap()
    }

    /// Creates a meeting titled `title` inviting county 130102 at `now_ms`; its id.
    fn create_county_meeting(svc: &mut MeetingService, title: &str, now_ms: u64) -> MeetingId {
        let body = RequestBody::Create {
            title: title.into(),
            kind: Kind::Meeting,
            invite: vec!["130102".parse().unwrap()],
            at_ms: None,
            profile: MediaProfile::named("sd").unwrap(),
            chair: None,
            floor_mutes_others: true,
        };
        match svc.answer(body, now_ms).unwrap() {
            ResponseBody::Created { id } => id,
            other => panic!("not created: {other:?}"),
        }
    }

    /// A join at full tier, receiving no media, relaying nothing.
    fn full_join(meeting: MeetingId, joining: u64) -> cuntong_core::meeting::Uplink {
        cuntong_core::meeting::Uplink::Join {
            meeting,
            tier: cuntong_core::meeting::Tier::Full,
            rtp_port: 0,
            media_host: None,
            relay: None,
            joining,
        }
    }

    /// `up` from `site`, as central's link hands it over; the service takes it.
    fn send_uplink(
        svc: &mut MeetingService,
        site: &TerminalId,
        up: &cuntong_core::meeting::Uplink,
        now_ms: u64,
    ) {
        let msg = Incoming {
            topic: Topic::terminal(site, Channel::MeetingUp).to_string(),
            payload: cuntong_core::envelope::encode(up).unwrap().into(),
            retain: false,
        };
        assert!(svc.on_message(&msg, now_ms));
    }

    /// Hands the service's changes to its store thread and waits until they are written.
    fn save(svc: &mut MeetingService) {
        svc.save().unwrap();
        svc.writer.flush().unwrap();
    }

    #[test]
    fn sessions_survive_a_restart_of_central_and_ended_ones_stay_in_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("central.db");
        let hb = std::time::Duration::from_secs(10);
        let mut svc = open(&db, hb);
        let a = create_county_meeting(&mut svc, "a", 1_000);
        let b = create_county_meeting(&mut svc, "b", 1_000);
        assert_ne!(a, b);
        let op = |svc: &mut MeetingService, meeting: MeetingId, op: ChairOp| {
            svc.answer(RequestBody::Op { meeting, op }, 2_000)
        };
        op(&mut svc, a, ChairOp::Start).unwrap();
        let site: TerminalId = "130102001001-main".parse().unwrap();
        op(&mut svc, a, ChairOp::Mute(site)).unwrap();
        op(&mut svc, b, ChairOp::End).unwrap();
        let nope: MeetingId = "nope".parse().unwrap();
        assert_eq!(
            op(&mut svc, nope, ChairOp::Start),
            Err(ControlError::NoSuchMeeting(nope))
        );
        save(&mut svc);
        drop(svc);

        let mut again = open(&db, hb);
        let live: Vec<&Host> = again.sessions().collect();
        assert_eq!(live.len(), 1, "the ended session is not reloaded");
        let st = live[0].state();
        assert_eq!(st.spec.id, a);
        assert_eq!(st.status, Status::Live);
        assert!(st.is_muted(&"130102001001-main".parse().unwrap()));
        // Reconnecting publishes the live state again, retained, on its invitee's topic.
        again.republish();
        let m = again.outbound.pop_front().unwrap();
        assert_eq!(m.topic, format!("ct/v1/m/13/01/02/{a}"));
        assert!(m.retain);
        let stored = SqliteStore::open_read_only(&db)
            .unwrap()
            .meeting(b.as_str())
            .unwrap()
            .expect("the ended session is kept in the store");
        let ended = Host::from_store(&stored).unwrap();
        assert_eq!(ended.state().status, Status::Ended);
    }

    #[test]
    fn site_records_are_saved_every_few_seconds_and_a_state_change_at_once() {
        use cuntong_core::meeting::Uplink;
        use cuntong_core::meeting::host::SitePhase;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("central.db");
        let mut svc = open(&db, std::time::Duration::from_secs(10));
        let t0 = 1_800_000_000_000;
        let id = create_county_meeting(&mut svc, "t", t0);
        svc.answer(
            RequestBody::Op {
                meeting: id,
                op: ChairOp::Start,
            },
            t0,
        )
        .unwrap();
        save(&mut svc);
        let site: TerminalId = "130102001001-main".parse().unwrap();
        let send = |svc: &mut MeetingService, up: &Uplink, now| send_uplink(svc, &site, up, now);
        let stored = |svc: &mut MeetingService| {
            svc.writer.flush().unwrap();
            let row = SqliteStore::open_read_only(&db)
                .unwrap()
                .meeting(id.as_str())
                .unwrap()
                .unwrap();
            let host = Host::from_store(&row).unwrap();
            (
                host.state().version,
                host.sites().get(&site).map(|r| r.phase),
            )
        };
        let joined_at_start = stored(&mut svc);
        let join = full_join(id, 1);
        send(&mut svc, &join, t0 + 10);
        assert!(!svc.save().unwrap(), "a join alone is not saved at once");
        // The first tick saves the records; the next ones only every few seconds.
        svc.tick(t0 + 1_000);
        assert_eq!(stored(&mut svc).1, Some(SitePhase::Joined));
        send(&mut svc, &Uplink::Leave { meeting: id }, t0 + 1_100);
        svc.tick(t0 + 2_000);
        assert_eq!(stored(&mut svc).1, Some(SitePhase::Joined));
        svc.tick(t0 + 1_000 + RECORDS_SAVED_EVERY_MS);
        assert_eq!(stored(&mut svc).1, Some(SitePhase::Left));
        // A change of the state is saved by the next save, records and all.
        send(&mut svc, &join, t0 + 12_000);
        svc.answer(
            RequestBody::Op {
                meeting: id,
                op: ChairOp::MuteAll,
            },
            t0 + 12_100,
        )
        .unwrap();
        save(&mut svc);
        let (version, phase) = stored(&mut svc);
        assert!(version > joined_at_start.0);
        assert_eq!(phase, Some(SitePhase::Joined));
    }

    #[test]
    fn a_request_of_every_page_is_answered_with_each_page_in_order_and_nothing_twice() {
        use crate::control::answer_pages;
        let dir = tempfile::tempdir().unwrap();
        let mut svc = open(
            &dir.path().join("central.db"),
            std::time::Duration::from_secs(10),
        );
        let now = 1_800_000_000_000;
        let id = create_county_meeting(&mut svc, "t", now);
        let op = |svc: &mut MeetingService, op| {
            svc.answer(RequestBody::Op { meeting: id, op }, now)
                .unwrap();
        };
        op(&mut svc, ChairOp::Start);
        let sites: Vec<TerminalId> = (0..2 * PAGE + PAGE / 3)
            .map(|i| format!("130102{:03}{:03}-main", 1 + i / 999, 1 + i % 999))
            .map(|t| t.parse().unwrap())
            .collect();
        for (k, site) in sites.iter().enumerate() {
            send_uplink(&mut svc, site, &full_join(id, k as u64 + 1), now);
        }
        op(&mut svc, ChairOp::RollCall);
        let ask = |svc: &mut MeetingService, all, counts| {
            let body = RequestBody::RollCall {
                meeting: id,
                after: None,
                all,
                counts,
            };
            answer_pages(body, |b| svc.answer(b, now))
        };
        let pages = ask(&mut svc, true, false);
        let last = pages.len() - 1;
        assert!(last >= 2, "{} pages", pages.len());
        let mut rows = Vec::new();
        for (k, page) in pages.into_iter().enumerate() {
            let Ok(ResponseBody::RollCall {
                total,
                rows: r,
                next,
                ..
            }) = page
            else {
                panic!("page {k}: {page:?}");
            };
            assert_eq!(total, sites.len());
            assert_eq!(next.is_none(), k == last, "page {k}");
            rows.extend(r.into_iter().map(|r| r.terminal));
        }
        let want: Vec<String> = sites.iter().map(|t| t.to_string()).collect();
        assert_eq!(rows, want);
        assert_eq!(
            ask(&mut svc, false, false).len(),
            1,
            "one page when not asked for all"
        );
        let counted = ask(&mut svc, false, true);
        let [
            Ok(ResponseBody::RollCall {
                total, rows, next, ..
            }),
        ] = &counted[..]
        else {
            panic!("{counted:?}");
        };
        assert_eq!(
            (*total, rows.len(), *next),
            (sites.len(), 0, None),
            "the counts alone"
        );
        let status = RequestBody::Status {
            meeting: id,
            after: None,
            all: true,
        };
        let pages = answer_pages(status, |b| svc.answer(b, now));
        let sites_listed: usize = pages
            .iter()
            .map(|p| match p {
                Ok(ResponseBody::Status(s)) => s.sites.len(),
                other => panic!("{other:?}"),
            })
            .sum();
        assert_eq!(sites_listed, sites.len());
        // A refusal is the one answer.
        let gone = RequestBody::RollCall {
            meeting: "nope".parse().unwrap(),
            after: None,
            all: true,
            counts: false,
        };
        let answers = answer_pages(gone, |b| svc.answer(b, now));
        assert!(matches!(answers[..], [Err(ControlError::NoSuchMeeting(_))]));
    }

    #[test]
    fn stored_sessions_central_cannot_use_are_listed_and_retired_never_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("central.db");
        let hb = std::time::Duration::from_secs(10);
        drop(SqliteStore::open(&db).unwrap());
        let spec = |id: &str, starts_ms| MeetingSpec {
            id: id.parse().unwrap(),
            kind: Kind::Meeting,
            title: "t".into(),
            chair: None,
            invitees: vec!["130102".parse().unwrap()],
            starts_ms,
            profile: MediaProfile::named("sd").unwrap(),
            floor_mutes_others: true,
            heartbeat_ms: 10_000,
        };
        let blob = |id: &str, starts_ms| {
            let (h, _) = Host::new(spec(id, starts_ms), HostConfig::default(), vec![1; 30], 5);
            h.to_store().unwrap()
        };
        let conn = Connection::open(&db).unwrap();
        let put = |id: &dyn rusqlite::ToSql, host: &dyn rusqlite::ToSql| {
            conn.execute(
                "INSERT INTO meetings (id, status, created_ms, host) VALUES (?1, 'live', 5, ?2)",
                params![id, host],
            )
            .unwrap();
        };
        put(&"mok", &blob("mok", Some(1_000)));
        put(&"mfar", &blob("mfar", Some(u64::MAX)));
        put(&"mjunk", &vec![0xffu8; 3]);
        put(&"Bad Id", &blob("mok", None));
        put(&7, &"text, not a record");
        drop(conn);

        let mut svc = open(&db, hb);
        assert_eq!(svc.sessions().count(), 1);
        let ResponseBody::List(rows) = svc.answer(RequestBody::List, 10).unwrap() else {
            panic!("not a list");
        };
        assert_eq!(rows.len(), 5, "{rows:?}");
        for r in rows.iter().filter(|r| r.id != "mok") {
            assert_eq!(r.status, "unusable", "{r:?}");
            assert!(r.problem.is_some(), "{r:?}");
        }
        let op = |svc: &mut MeetingService, id: &str, op: ChairOp| {
            let meeting = id.parse().unwrap();
            svc.answer(RequestBody::Op { meeting, op }, 10)
        };
        let e = op(&mut svc, "mfar", ChairOp::Start).unwrap_err();
        assert!(
            matches!(e, ControlError::Unusable { .. }) && !e.is_bad_request(),
            "{e:?}"
        );
        assert!(e.to_string().contains("meeting end mfar"), "{e}");
        op(&mut svc, "mfar", ChairOp::End).unwrap();
        op(&mut svc, "mjunk", ChairOp::End).unwrap();
        assert_eq!(
            op(&mut svc, "mfar", ChairOp::End),
            Err(ControlError::NoSuchMeeting("mfar".parse().unwrap())),
            "retired: no longer there"
        );
        save(&mut svc);
        drop(svc);
        let mut again = open(&db, hb);
        let ResponseBody::List(rows) = again.answer(RequestBody::List, 10).unwrap() else {
            panic!("not a list");
        };
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["mok", "7", "Bad Id"]);
    }

    #[test]
    fn a_session_is_published_once_per_invitee_and_for_a_chair_outside_them() {
        let spec = MeetingSpec {
            id: "m1".parse().unwrap(),
            kind: Kind::Meeting,
            title: "t".into(),
            chair: Some("130000000000-hall".parse().unwrap()),
            invitees: vec![
                "130102".parse().unwrap(),
                "130103001001-main".parse().unwrap(),
            ],
            starts_ms: None,
            profile: MediaProfile::named("sd").unwrap(),
            floor_mutes_others: true,
            heartbeat_ms: 10_000,
        };
        assert_eq!(
            state_topics(&spec),
            [
                "ct/v1/m/13/01/02/m1",
                "ct/v1/m/13/01/03/001/001/main/m1",
                "ct/v1/m/13/00/00/000/000/hall/m1"
            ]
        );
    }
}
