//! Central's rollout role: runs the staged rollouts ([`cuntong_core::rollout`]) as the holder
//! of the host role. It offers each box the release by sending it the rollout's signed command
//! (signed once by the operator with the fleet's command key; central holds no key), retained
//! on the box's command topic so a box that drops off finds it; follows the boxes' `update`
//! events; and writes what changed through the store thread, so the rollout carries on where
//! it was after a restart or a takeover.

use std::collections::{BTreeMap, HashMap};

use cuntong_core::command::{Action, SignedCommand};
use cuntong_core::envelope::Event;
use cuntong_core::rollout::{Op, Plan, Rollout};
use cuntong_core::terminal_id::TerminalId;
use cuntong_core::topic::{Channel, Topic};
use cuntong_core::update::Stage;

use crate::control::ControlError;
use crate::view::rfc3339_ms;
use cuntong_terminal::link::Message;

use crate::store::{Record, RolloutRow, StateWriter, Store, StoreError};

/// How often the rollouts are judged and offers go out.
const TICK_MS: u64 = 1000;

struct Running {
    rollout: Rollout,
    command: Vec<u8>,
    /// When its end was acted on (logged, offers not begun taken back).
    ended_ms: Option<u64>,
}

/// The rollouts central runs.
pub struct RolloutService {
    rollouts: BTreeMap<u64, Running>,
    /// Every rollout id ever stored, over ones too: an id is never used twice.
    ids: std::collections::HashSet<u64>,
    /// Every box heard from: online, and the version its presence names.
    boxes: HashMap<TerminalId, (bool, Option<String>)>,
    writer: StateWriter,
    outbound: Vec<Message>,
    last_tick_ms: u64,
    /// Writes handed to the store thread so far.
    handed: u64,
}

impl std::fmt::Debug for RolloutService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RolloutService")
            .field("rollouts", &self.rollouts.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl RolloutService {
    /// Carries on with the rollouts in `store` that are not over (read once, before central's
    /// loop starts); writes through `writer`.
    pub fn open(
        store: &dyn Store,
        writer: StateWriter,
        now_ms: u64,
    ) -> Result<RolloutService, StoreError> {
        let mut rollouts = BTreeMap::new();
        let mut ids = std::collections::HashSet::new();
        for row in store.rollouts()? {
            ids.insert(row.plan.id);
            if row.state.is_over() {
                continue;
            }
            let sites = store.rollout_sites(row.plan.id)?;
            let id = row.plan.id;
            let mut rollout = Rollout::stored(row.plan, row.state, row.reason, sites, now_ms);
            replay(store, &mut rollout)?;
            rollouts.insert(
                id,
                Running {
                    rollout,
                    command: row.command,
                    ended_ms: None,
                },
            );
        }
        let boxes: HashMap<TerminalId, (bool, Option<String>)> = store
            .known_terminals()?
            .into_iter()
            .map(|k| (k.terminal, (k.online, k.version)))
            .collect();
        // Boxes first heard from while central was down join the rollouts of their region.
        for r in rollouts.values_mut() {
            for (id, (_, version)) in &boxes {
                r.rollout.admit(*id, version.as_deref(), now_ms);
            }
        }
        Ok(RolloutService {
            rollouts,
            ids,
            boxes,
            writer,
            outbound: Vec::new(),
            last_tick_ms: 0,
            handed: 0,
        })
    }

    /// Feeds what a received record says: who is online on which version, and the boxes'
    /// progress.
    pub fn record(&mut self, record: &Record, now_ms: u64) {
        match record {
            Record::Presence {
                terminal, presence, ..
            } => {
                self.boxes
                    .insert(*terminal, (presence.online, Some(presence.version.clone())));
                // A box installed in a region after its rollout started joins it.
                for r in self.rollouts.values_mut() {
                    r.rollout.admit(*terminal, Some(&presence.version), now_ms);
                }
            }
            Record::Event {
                terminal, envelope, ..
            } => {
                if let Event::Update {
                    rollout,
                    stage,
                    bytes,
                    reason,
                    ..
                } = &envelope.body
                    && let Some(r) = self.rollouts.get_mut(rollout)
                    && r.rollout
                        .reported(*terminal, *stage, *bytes, reason, now_ms)
                {
                    // The offer reached the box: its retained copy has done its job.
                    self.outbound.push(take_back(terminal));
                }
            }
            _ => {}
        }
    }

    /// Starts rollout `plan` with the operator's signed `command`, which must offer this
    /// release to this region under this rollout's id (the boxes check the signature).
    /// Refused, it says why ([`ControlError::Refused`]).
    pub fn start(
        &mut self,
        mut plan: Plan,
        command: Vec<u8>,
        now_ms: u64,
    ) -> Result<(), ControlError> {
        let refused = ControlError::Refused;
        if self.ids.contains(&plan.id) {
            return Err(refused(format!("rollout {} exists already", plan.id)));
        }
        let body = SignedCommand::decode(&command)
            .and_then(|c| c.body())
            .map_err(|e| refused(format!("the rollout's command does not decode: {e}")))?;
        let Action::Update(offer) = &body.action else {
            return Err(refused(format!(
                "the rollout's command is {}, not update",
                body.action.name()
            )));
        };
        let version = offer
            .release
            .manifest()
            .map_err(|e| refused(format!("the rollout's release does not decode: {e}")))?
            .version;
        if offer.rollout != plan.id || version != plan.version {
            return Err(refused(format!(
                "the command offers {version} as rollout {}, not {} as rollout {}",
                offer.rollout, plan.version, plan.id
            )));
        }
        if body.target != plan.region.prefix() {
            return Err(refused(format!(
                "the command is for {}, not region {}",
                body.target, plan.region
            )));
        }
        if body.expires_ms <= now_ms {
            return Err(refused("the rollout's command has expired".into()));
        }
        plan.expires_ms = body.expires_ms;
        let boxes = self
            .boxes
            .iter()
            .map(|(id, (_, version))| (*id, version.clone()));
        let rollout = Rollout::start(plan, boxes, now_ms);
        tracing::info!(
            rollout = rollout.plan.id,
            version = %rollout.plan.version,
            region = %rollout.plan.region,
            boxes = rollout.sites().len(),
            "rollout started"
        );
        self.ids.insert(rollout.plan.id);
        let running = Running {
            rollout,
            command,
            ended_ms: None,
        };
        self.rollouts.insert(running.rollout.plan.id, running);
        self.save(now_ms);
        Ok(())
    }

    /// The operator pauses, resumes or cancels rollout `id`.
    /// Refused, it says why ([`ControlError::Refused`]).
    pub fn apply(&mut self, id: u64, op: Op, now_ms: u64) -> Result<(), ControlError> {
        let r = self
            .rollouts
            .get_mut(&id)
            .ok_or_else(|| ControlError::Refused(format!("no rollout {id} in progress")))?;
        r.rollout.apply(op).map_err(ControlError::Refused)?;
        tracing::info!(rollout = id, op = op.as_str(), "rollout changed");
        self.tick(now_ms, true);
        Ok(())
    }

    /// Once a second (sooner if `now`): offers what the rollouts allow, judges them, and hands
    /// what changed to the store thread.
    pub fn tick(&mut self, now_ms: u64, now: bool) {
        if !now && now_ms < self.last_tick_ms + TICK_MS {
            return;
        }
        self.last_tick_ms = now_ms;
        let boxes = &self.boxes;
        for r in self.rollouts.values_mut() {
            let offers = r
                .rollout
                .tick(now_ms, |id| boxes.get(id).is_some_and(|b| b.0));
            for id in offers {
                let topic = Topic::terminal(&id, Channel::Command).to_string();
                self.outbound
                    .push(Message::new(topic, r.command.clone()).retained());
            }
            // Over here, or on a report since the last round.
            if r.rollout.state.is_over() && r.ended_ms.is_none() {
                r.ended_ms = Some(now_ms);
                tracing::warn!(
                    rollout = r.rollout.plan.id,
                    state = r.rollout.state.as_str(),
                    reason = %r.rollout.reason,
                    "rollout over"
                );
                // Boxes offered the release that have not begun do not begin now.
                for id in r.rollout.offered_not_begun() {
                    self.outbound.push(take_back(id));
                }
            }
        }
        self.save(now_ms);
        // A rollout that is over follows the boxes still at work on it until they finish or
        // its timeout passes, then leaves memory (later reports stay in the history).
        self.rollouts.retain(|_, r| {
            let Some(ended) = r.ended_ms else {
                return true;
            };
            let at_work = r
                .rollout
                .sites()
                .values()
                .any(|s| !s.stage.is_final() && s.stage != Stage::Queued);
            at_work && now_ms < ended.saturating_add(r.rollout.plan.timeout_ms)
        });
    }

    /// How many writes were handed to the store thread so far.
    pub fn handed_over(&self) -> u64 {
        self.handed
    }

    /// Messages for the boxes waiting to be published.
    pub fn take_outbound(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.outbound)
    }

    fn save(&mut self, now_ms: u64) {
        let mut rows = Vec::new();
        let mut sites = Vec::new();
        for (id, r) in self.rollouts.iter_mut() {
            let (itself, changed) = r.rollout.take_changes();
            if itself || !changed.is_empty() {
                rows.push(RolloutRow {
                    plan: r.rollout.plan.clone(),
                    state: r.rollout.state,
                    reason: r.rollout.reason.clone(),
                    command: r.command.clone(),
                    updated_ms: now_ms,
                });
            }
            sites.extend(changed.into_iter().map(|(t, s)| (*id, t, s)));
        }
        if rows.is_empty() && sites.is_empty() {
            return;
        }
        self.handed += 1;
        if let Err(e) = self.writer.rollouts(rows, sites) {
            tracing::error!(error = %e, "cannot store rollout changes");
        }
    }
}

/// `cuntong rollout list --json` (and the head of `status --json`): one rollout.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutJson {
    pub id: u64,
    pub version: String,
    pub region: String,
    /// `running`, `paused`, `done`, `cancelled`, `aborted` or `expired`.
    pub state: String,
    pub reason: String,
    pub created_at: String,
    pub updated_at: String,
    /// Boxes at each stage (every stage named, zeros too).
    pub counts: std::collections::BTreeMap<String, usize>,
    /// Each box, in `status --json` only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sites: Vec<RolloutSiteJson>,
}

/// One box in `cuntong rollout status ID --json`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSiteJson {
    pub terminal: String,
    pub stage: String,
    pub bytes: u64,
    pub reason: String,
    pub notified_at: Option<String>,
    pub updated_at: String,
}

/// A rollout as `rollout list` and the dashboard show it, from its row and how many of its
/// boxes are at each stage.
pub fn summary(row: &RolloutRow, stages: impl IntoIterator<Item = (Stage, usize)>) -> RolloutJson {
    let mut counts: std::collections::BTreeMap<String, usize> = Stage::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), 0))
        .collect();
    for (stage, n) in stages {
        *counts.entry(stage.as_str().to_owned()).or_default() += n;
    }
    RolloutJson {
        id: row.plan.id,
        version: row.plan.version.clone(),
        region: row.plan.region.to_string(),
        state: row.state.as_str().to_owned(),
        reason: row.reason.clone(),
        created_at: rfc3339_ms(row.plan.created_ms),
        updated_at: rfc3339_ms(row.updated_ms),
        counts,
        sites: Vec::new(),
    }
}

/// Every rollout stored, as `rollout list --json` and the dashboard show them.
pub fn list(store: &dyn Store) -> Result<Vec<RolloutJson>, StoreError> {
    let counts = store.rollout_counts()?;
    Ok(store
        .rollouts()?
        .iter()
        .map(|row| {
            let id = row.plan.id;
            let stages = counts
                .iter()
                .filter(|(r, _, _)| *r == id)
                .map(|(_, stage, n)| (*stage, *n));
            summary(row, stages)
        })
        .collect())
}

/// How far before a rollout's start its boxes' clocks may be: their reports are looked for
/// from then.
const CLOCK_SLACK_MS: u64 = 10 * 60 * 1000;

/// Feeds a stored rollout the boxes' reports stored since it started: what central received
/// but had not yet written into the rollout when it stopped (the store thread writes the
/// reports with the rest of the history, the rollout's rows a tick later) is not lost.
fn replay(store: &dyn Store, rollout: &mut Rollout) -> Result<(), StoreError> {
    let since = rollout.plan.created_ms.saturating_sub(CLOCK_SLACK_MS);
    let mut reports: Vec<_> = store
        .events(Some(&rollout.plan.region), Some(since))?
        .into_iter()
        .filter(|e| matches!(&e.event, Event::Update { rollout: r, .. } if *r == rollout.plan.id))
        .collect();
    reports.sort_by(|a, b| (&a.terminal, a.seq).cmp(&(&b.terminal, b.seq)));
    for e in reports {
        if let (
            Ok(id),
            Event::Update {
                stage,
                bytes,
                reason,
                ..
            },
        ) = (e.terminal.parse::<TerminalId>(), &e.event)
        {
            rollout.reported(id, *stage, *bytes, reason, e.time_ms);
        }
    }
    Ok(())
}

/// Clears the retained offer on a box's command topic.
fn take_back(id: &TerminalId) -> Message {
    Message::new(
        Topic::terminal(id, Channel::Command).to_string(),
        Vec::new(),
    )
    .retained()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cuntong_core::envelope::Envelope;
    use cuntong_core::presence::Presence;
    use cuntong_core::update::{Artifact, Manifest, Offer, SignedRelease};
    use ring::signature::Ed25519KeyPair;

    use crate::store::{Database, Writer};

    const BOX: &str = "130102001001-main";

    fn key() -> Ed25519KeyPair {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
    }

    fn command(key: &Ed25519KeyPair, target: &str, rollout: u64, version: &str) -> Vec<u8> {
        let manifest = cuntong_core::envelope::encode(&Manifest {
            version: version.into(),
            artifact: Artifact::Deb,
            size: 10,
            sha256: [7; 32],
            created_ms: 1,
        })
        .unwrap();
        let offer = Offer {
            rollout,
            release: SignedRelease {
                manifest,
                signature: vec![0; 64],
            },
            sources: vec!["http://central/releases/x".into()],
        };
        let action = Action::Update(offer);
        crate::cmd::sign(key, target, action, std::time::Duration::from_secs(3600))
            .unwrap()
            .1
    }

    fn plan(id: u64) -> Plan {
        Plan {
            id,
            version: "0.2.0".into(),
            region: "130102".parse().unwrap(),
            rate_per_min: 600,
            abort_failed_percent: 10,
            min_executed: 5,
            window: None,
            timeout_ms: 3_600_000,
            expires_ms: 0,
            created_ms: 0,
        }
    }

    fn presence(online: bool) -> Record {
        Record::Presence {
            terminal: BOX.parse().unwrap(),
            received_ms: 1,
            presence: Presence {
                online,
                version: "0.1.0".into(),
                started_ms: 1,
                keep_alive_s: 30,
            },
        }
    }

    fn report(rollout: u64, stage: Stage) -> Record {
        let envelope = Envelope {
            seq: 5,
            time_ms: cuntong_terminal::link::unix_ms(),
            body: Event::Update {
                rollout,
                version: "0.2.0".into(),
                stage,
                bytes: 10,
                reason: String::new(),
            },
        };
        let raw = cuntong_core::envelope::encode(&envelope).unwrap().into();
        Record::Event {
            terminal: BOX.parse().unwrap(),
            received_ms: 1,
            envelope,
            raw,
        }
    }

    /// A store in a temporary directory and its store thread (stopped by the token).
    fn store() -> (
        tempfile::TempDir,
        Database,
        Writer,
        tokio_util::sync::CancellationToken,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::Sqlite(dir.path().join("central.db"));
        let stop = tokio_util::sync::CancellationToken::new();
        let writer = Writer::start(db.open().unwrap(), |_| {}, stop.clone()).unwrap();
        (dir, db, writer, stop)
    }

    #[test]
    fn a_rollout_starts_only_with_its_own_command_offers_and_survives_a_restart() {
        let (_dir, db, writer, stop) = store();
        let now = cuntong_terminal::link::unix_ms();
        let mut service =
            RolloutService::open(db.open().unwrap().as_ref(), writer.state.clone(), now).unwrap();
        service.record(&presence(true), now);
        let key = key();
        // Another region's, another rollout's, another release's, or not an update: refused.
        let refusals = [
            command(&key, "130103", 1, "0.2.0"),
            command(&key, "130102", 2, "0.2.0"),
            command(&key, "130102", 1, "0.3.0"),
            crate::cmd::sign(
                &key,
                "130102",
                Action::Ping,
                std::time::Duration::from_secs(60),
            )
            .unwrap()
            .1,
            b"junk".to_vec(),
        ];
        for c in refusals {
            assert!(service.start(plan(1), c, now).is_err());
        }
        let good = command(&key, "130102", 1, "0.2.0");
        service.start(plan(1), good.clone(), now).unwrap();
        let e = service.start(plan(1), good.clone(), now).unwrap_err();
        assert!(e.to_string().contains("exists already"), "{e}");
        // The first offer goes out at once, retained, on the box's command topic.
        service.tick(now, true);
        let out = service.take_outbound();
        assert_eq!(out.len(), 1);
        assert!(out[0].retain && out[0].payload.as_ref() == good.as_slice());
        assert!(out[0].topic.ends_with("/cmd"), "{}", out[0].topic);
        // The box's first report takes the retained offer back.
        service.record(&report(1, Stage::Downloading), now);
        let out = service.take_outbound();
        assert_eq!(out.len(), 1);
        assert!(out[0].retain && out[0].payload.is_empty());
        // Written with the next round.
        service.tick(now + 1000, false);
        writer.state.flush().unwrap();
        // Read back: the box is downloading, the id is taken.
        let mut again =
            RolloutService::open(db.open().unwrap().as_ref(), writer.state.clone(), now).unwrap();
        let r = &again.rollouts[&1].rollout;
        assert_eq!(r.sites()[&BOX.parse().unwrap()].stage, Stage::Downloading);
        assert!(again.start(plan(1), good, now).is_err());
        stop.cancel();
    }

    #[test]
    fn a_box_first_heard_from_after_the_start_is_offered_the_release_and_kept_across_a_restart() {
        let (_dir, db, writer, stop) = store();
        let now = cuntong_terminal::link::unix_ms();
        let mut service =
            RolloutService::open(db.open().unwrap().as_ref(), writer.state.clone(), now).unwrap();
        // One box of the region known, offline: the rollout waits for it.
        let other: TerminalId = "130102001002-main".parse().unwrap();
        service.boxes.insert(other, (false, None));
        service
            .start(plan(4), command(&key(), "130102", 4, "0.2.0"), now)
            .unwrap();
        service.tick(now, true);
        assert!(service.take_outbound().is_empty(), "no box online yet");
        service.record(&presence(true), now + 500);
        service.tick(now + 1000, false);
        let out = service.take_outbound();
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(out[0].retain && out[0].topic.ends_with("/cmd"));
        writer.state.flush().unwrap();
        let again =
            RolloutService::open(db.open().unwrap().as_ref(), writer.state.clone(), now).unwrap();
        let site = &again.rollouts[&4].rollout.sites()[&BOX.parse().unwrap()];
        assert_eq!(site.stage, Stage::Notified);
        stop.cancel();
    }

    #[test]
    fn a_rollout_aborted_by_a_report_takes_back_the_offers_not_begun() {
        let (_dir, db, writer, stop) = store();
        let now = cuntong_terminal::link::unix_ms();
        let mut service =
            RolloutService::open(db.open().unwrap().as_ref(), writer.state.clone(), now).unwrap();
        let other: TerminalId = "130102001002-main".parse().unwrap();
        service.record(&presence(true), now);
        service.boxes.insert(other, (true, None));
        let mut p = plan(3);
        p.min_executed = 1;
        service
            .start(p, command(&key(), "130102", 3, "0.2.0"), now)
            .unwrap();
        service.tick(now, true);
        service.tick(now + 1000, false);
        assert_eq!(service.take_outbound().len(), 2, "both offered");
        service.record(&report(3, Stage::RolledBack), now + 1500);
        service.tick(now + 2000, false);
        let out = service.take_outbound();
        let cmd = Topic::terminal(&other, Channel::Command).to_string();
        assert!(
            out.iter()
                .any(|m| m.topic == cmd && m.retain && m.payload.is_empty()),
            "{out:?}"
        );
        // The offer taken back may still have reached the box: the rollout follows it until
        // its timeout, then leaves memory.
        service.tick(now + 3_000_000, false);
        assert!(service.rollouts.contains_key(&3));
        service.tick(now + 2000 + 3_600_000, false);
        assert!(service.rollouts.is_empty());
        stop.cancel();
    }
}
