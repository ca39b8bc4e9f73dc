//! A staged rollout of a release to a region, as central runs it: which boxes are offered the
//! release when (at a rate, inside a time window, only while they are online), what each has
//! reported, and when the rollout stops by itself (every box done, too many failures, the
//! offer expired). Sans-IO: central feeds it the boxes' `update` events and their presence,
//! asks it every tick whom to offer the release now, and stores what changed.
//!
//! A box's stages are [`Stage`]s: `queued` and `notified` are central's; the others the box
//! reports; `timed-out` is central's judgement of a box that did not finish in time (a later
//! report from the box overrides it).

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::site::Region;
use crate::terminal_id::TerminalId;
use crate::update::Stage;

const MINUTE_MS: u64 = 60_000;
const DAY_MS: u64 = 24 * 60 * MINUTE_MS;

/// The hours of the day (UTC, minutes from midnight) offers may go out; `start > end` wraps
/// past midnight. Boxes already offered carry on outside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub start_min: u16,
    pub end_min: u16,
}

impl Window {
    /// True if `now_ms` (Unix ms) is inside the window.
    pub fn contains(&self, now_ms: u64) -> bool {
        let m = ((now_ms % DAY_MS) / MINUTE_MS) as u16;
        if self.start_min <= self.end_min {
            self.start_min <= m && m < self.end_min
        } else {
            m >= self.start_min || m < self.end_min
        }
    }
}

/// What the operator asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub id: u64,
    pub version: String,
    pub region: Region,
    /// Offers per minute, at most.
    pub rate_per_min: u32,
    /// The rollout aborts once this share (percent) of the boxes that finished failed…
    pub abort_failed_percent: u8,
    /// …and at least this many have finished.
    pub min_executed: u32,
    pub window: Option<Window>,
    /// How long a box may take from the offer to its commit.
    pub timeout_ms: u64,
    /// When the signed offer expires: nothing is offered after it.
    pub expires_ms: u64,
    pub created_ms: u64,
}

/// Where a rollout stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    Running,
    Paused,
    /// Every box has finished.
    Done,
    /// Stopped by the operator.
    Cancelled,
    /// Stopped at its failure threshold.
    Aborted,
    /// The signed offer expired with boxes still queued.
    Expired,
}

impl State {
    pub const ALL: [State; 6] = [
        State::Running,
        State::Paused,
        State::Done,
        State::Cancelled,
        State::Aborted,
        State::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Paused => "paused",
            State::Done => "done",
            State::Cancelled => "cancelled",
            State::Aborted => "aborted",
            State::Expired => "expired",
        }
    }

    /// True once the rollout offers nothing more, ever.
    pub fn is_over(self) -> bool {
        !matches!(self, State::Running | State::Paused)
    }
}

/// One box in a rollout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Site {
    pub stage: Stage,
    /// Bytes of the artifact the box has (as it last reported).
    pub bytes: u64,
    pub reason: String,
    pub notified_ms: Option<u64>,
    pub updated_ms: u64,
}

impl Site {
    fn queued(now_ms: u64) -> Site {
        Site {
            stage: Stage::Queued,
            bytes: 0,
            reason: String::new(),
            notified_ms: None,
            updated_ms: now_ms,
        }
    }
}

/// What an operator may do to a rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Pause,
    Resume,
    Cancel,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Pause => "pause",
            Op::Resume => "resume",
            Op::Cancel => "cancel",
        }
    }
}

/// A rollout: its plan, its state and its boxes.
#[derive(Clone, Debug)]
pub struct Rollout {
    pub plan: Plan,
    pub state: State,
    /// Why it stopped (aborted, expired), for the operator.
    pub reason: String,
    sites: BTreeMap<TerminalId, Site>,
    /// Offers that may go out now, in 1/60,000ths of an offer (one per ms per offer a minute).
    credit: u64,
    last_tick_ms: u64,
    /// Boxes whose entry changed since [`Rollout::take_changes`].
    changed: BTreeSet<TerminalId>,
    /// The rollout's own fields changed since then.
    changed_self: bool,
}

impl Rollout {
    /// A new rollout of `plan` to `boxes` (each with the version it runs, if known): those
    /// already on the release are committed at once, the others queued.
    pub fn start(
        plan: Plan,
        boxes: impl IntoIterator<Item = (TerminalId, Option<String>)>,
        now_ms: u64,
    ) -> Rollout {
        let mut r = Rollout::resume_stored(
            plan,
            State::Running,
            String::new(),
            BTreeMap::new(),
            now_ms,
            BTreeSet::new(),
        );
        r.changed_self = true;
        for (id, version) in boxes {
            r.admit(id, version.as_deref(), now_ms);
        }
        // The first offer goes out at once.
        r.credit = MINUTE_MS;
        r
    }

    /// Takes in a box of the region that the rollout does not have yet (one installed or
    /// first heard from after it started), queued, or committed if it already runs the
    /// release. True if it was taken in; a rollout that is over takes in nothing.
    pub fn admit(&mut self, id: TerminalId, version: Option<&str>, now_ms: u64) -> bool {
        if self.state.is_over()
            || !self.plan.region.contains(id.site())
            || self.sites.contains_key(&id)
        {
            return false;
        }
        let mut site = Site::queued(now_ms);
        if version == Some(self.plan.version.as_str()) {
            site.stage = Stage::Committed;
            site.reason = format!("already runs {}", self.plan.version);
        }
        self.sites.insert(id, site);
        self.changed.insert(id);
        true
    }

    /// A rollout as stored, to carry on with: the next offer waits its turn (a restart is
    /// not a burst).
    pub fn stored(
        plan: Plan,
        state: State,
        reason: String,
        sites: BTreeMap<TerminalId, Site>,
        now_ms: u64,
    ) -> Rollout {
        Rollout::resume_stored(plan, state, reason, sites, now_ms, BTreeSet::new())
    }

    fn resume_stored(
        plan: Plan,
        state: State,
        reason: String,
        sites: BTreeMap<TerminalId, Site>,
        now_ms: u64,
        changed: BTreeSet<TerminalId>,
    ) -> Rollout {
        let changed_self = !changed.is_empty();
        Rollout {
            plan,
            state,
            reason,
            sites,
            credit: 0,
            last_tick_ms: now_ms,
            changed,
            changed_self,
        }
    }

    pub fn sites(&self) -> &BTreeMap<TerminalId, Site> {
        &self.sites
    }

    /// How many boxes are at each stage, in [`Stage::ALL`]'s order.
    pub fn counts(&self) -> [usize; Stage::ALL.len()] {
        let mut n = [0; Stage::ALL.len()];
        for s in self.sites.values() {
            if let Some(i) = Stage::ALL.iter().position(|x| *x == s.stage) {
                n[i] += 1;
            }
        }
        n
    }

    /// The boxes to offer the release to now (their stage is `notified` from here on), after
    /// judging timeouts, the failure threshold, the expiry and completion. `online` says
    /// whether a box is connected: offline boxes keep their place in the queue.
    pub fn tick(&mut self, now_ms: u64, online: impl Fn(&TerminalId) -> bool) -> Vec<TerminalId> {
        let elapsed = now_ms.saturating_sub(self.last_tick_ms);
        self.last_tick_ms = now_ms;
        if self.state.is_over() {
            return Vec::new();
        }
        let timeout = self.plan.timeout_ms;
        let late: Vec<TerminalId> = self
            .sites
            .iter()
            .filter(|(_, s)| {
                !s.stage.is_final()
                    && s.notified_ms
                        .is_some_and(|at| now_ms.saturating_sub(at) >= timeout)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            let reason = format!("not committed within {} s of the offer", timeout / 1000);
            self.set(id, Stage::TimedOut, None, reason, now_ms);
        }
        if self.judge() {
            return Vec::new();
        }
        if now_ms >= self.plan.expires_ms {
            let queued = self.count(|s| s == Stage::Queued);
            self.stop(
                State::Expired,
                format!("the signed offer expired with {queued} boxes queued"),
            );
            return Vec::new();
        }
        if self.state != State::Running {
            return Vec::new();
        }
        let rate = u64::from(self.plan.rate_per_min.max(1));
        // At most a second's worth (and one offer) may gather: a pause is not made up in a burst.
        let cap = MINUTE_MS * (1 + rate / 60);
        self.credit = (self.credit + elapsed * rate).min(cap);
        if self.plan.window.is_some_and(|w| !w.contains(now_ms)) {
            return Vec::new();
        }
        let mut offers = Vec::new();
        let queued: Vec<TerminalId> = self
            .sites
            .iter()
            .filter(|(id, s)| s.stage == Stage::Queued && online(id))
            .map(|(id, _)| *id)
            .take((self.credit / MINUTE_MS) as usize)
            .collect();
        for id in queued {
            self.credit -= MINUTE_MS;
            if let Some(s) = self.sites.get_mut(&id) {
                s.stage = Stage::Notified;
                s.notified_ms = Some(now_ms);
                s.updated_ms = now_ms;
                self.changed.insert(id);
            }
            offers.push(id);
        }
        offers
    }

    /// What box `id` reported; true if it is its first report in this rollout (the offer
    /// reached it). Reports of boxes not in the rollout, or of a box that finished (but one
    /// central had given up on), change nothing.
    pub fn reported(
        &mut self,
        id: TerminalId,
        stage: Stage,
        bytes: u64,
        reason: &str,
        now_ms: u64,
    ) -> bool {
        let Some(site) = self.sites.get(&id) else {
            return false;
        };
        let first = matches!(site.stage, Stage::Queued | Stage::Notified);
        let settled = site.stage.is_final() && site.stage != Stage::TimedOut;
        if settled || matches!(stage, Stage::Queued | Stage::Notified) {
            return false;
        }
        self.set(id, stage, Some(bytes), reason.to_string(), now_ms);
        if let Some(s) = self.sites.get_mut(&id) {
            s.notified_ms.get_or_insert(now_ms);
        }
        if !self.state.is_over() {
            self.judge();
        }
        first
    }

    /// The operator's `pause`, `resume` or `cancel`; refused (with why) where it makes no sense.
    pub fn apply(&mut self, op: Op) -> Result<(), String> {
        let next = match (op, self.state) {
            (_, s) if s.is_over() => {
                return Err(format!(
                    "rollout {} is {}: it cannot {}",
                    self.plan.id,
                    s.as_str(),
                    op.as_str()
                ));
            }
            (Op::Pause, _) => State::Paused,
            (Op::Resume, _) => State::Running,
            (Op::Cancel, _) => State::Cancelled,
        };
        if next != self.state {
            self.state = next;
            self.changed_self = true;
        }
        Ok(())
    }

    /// The boxes offered the release that have not begun (for central to take back the
    /// offer once the rollout is over).
    pub fn offered_not_begun(&self) -> impl Iterator<Item = &TerminalId> {
        self.sites
            .iter()
            .filter(|(_, s)| s.stage == Stage::Notified)
            .map(|(id, _)| id)
    }

    /// The boxes and whether the rollout itself changed, since the last call.
    pub fn take_changes(&mut self) -> (bool, Vec<(TerminalId, Site)>) {
        let ids = core::mem::take(&mut self.changed);
        let sites = ids
            .into_iter()
            .filter_map(|id| self.sites.get(&id).map(|s| (id, s.clone())))
            .collect();
        (core::mem::take(&mut self.changed_self), sites)
    }

    fn set(&mut self, id: TerminalId, stage: Stage, bytes: Option<u64>, reason: String, now: u64) {
        if let Some(s) = self.sites.get_mut(&id) {
            s.stage = stage;
            if let Some(b) = bytes {
                s.bytes = b;
            }
            s.reason = reason;
            s.updated_ms = now;
            self.changed.insert(id);
        }
    }

    fn count(&self, f: impl Fn(Stage) -> bool) -> usize {
        self.sites.values().filter(|s| f(s.stage)).count()
    }

    /// Stops the rollout at its failure threshold, or as done once every box finished; true if
    /// it is over.
    fn judge(&mut self) -> bool {
        if self.state.is_over() {
            return true;
        }
        let failed = self.count(Stage::is_failure);
        let executed = self.count(Stage::is_final);
        let threshold = usize::from(self.plan.abort_failed_percent);
        if failed > 0
            && executed >= self.plan.min_executed as usize
            && failed * 100 >= threshold * executed
        {
            self.stop(
                State::Aborted,
                format!("{failed} of {executed} finished boxes failed (threshold {threshold}%)"),
            );
            return true;
        }
        if executed == self.sites.len() {
            self.stop(State::Done, String::new());
            return true;
        }
        false
    }

    fn stop(&mut self, state: State, reason: String) {
        self.state = state;
        self.reason = reason;
        self.changed_self = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> TerminalId {
        format!("130102001{n:03}-main").parse().unwrap()
    }

    fn plan(rate: u32) -> Plan {
        Plan {
            id: 7,
            version: "1.1.0".into(),
            region: "130102".parse().unwrap(),
            rate_per_min: rate,
            abort_failed_percent: 10,
            min_executed: 5,
            window: None,
            timeout_ms: 3_600_000,
            expires_ms: 100 * DAY_MS,
            created_ms: 0,
        }
    }

    fn boxes(n: u32) -> Vec<(TerminalId, Option<String>)> {
        (1..=n).map(|i| (id(i), Some("1.0.0".into()))).collect()
    }

    #[test]
    fn offers_go_out_at_the_rate_and_only_to_online_boxes_in_the_region() {
        let mut b = boxes(30);
        b.push(("130103001001-main".parse().unwrap(), None));
        let mut r = Rollout::start(plan(60), b, 0);
        assert_eq!(r.sites().len(), 30, "a box outside the region is not in it");
        let offline = id(2);
        let mut offered = Vec::new();
        // 60 a minute: one a second, starting with one at once.
        for t in 0..=10u64 {
            offered.extend(r.tick(t * 1000, |i| *i != offline));
        }
        assert_eq!(offered.len(), 11);
        assert!(!offered.contains(&offline));
        assert_eq!(offered[0], id(1));
        assert_eq!(offered[1], id(3));
        // A long pause gathers at most a second's worth.
        assert_eq!(r.tick(600_000, |_| true).len(), 2);
    }

    #[test]
    fn boxes_already_on_the_release_are_committed_without_an_offer() {
        let mut b = boxes(3);
        b[1].1 = Some("1.1.0".into());
        let mut r = Rollout::start(plan(600), b, 0);
        assert_eq!(r.sites()[&id(2)].stage, Stage::Committed);
        let offered: Vec<_> = (0..5).flat_map(|t| r.tick(t * 1000, |_| true)).collect();
        assert_eq!(offered, vec![id(1), id(3)]);
    }

    #[test]
    fn a_box_of_the_region_heard_from_after_the_start_joins_the_queue_until_the_rollout_is_over() {
        let mut r = Rollout::start(plan(600), boxes(1), 0);
        let _ = r.take_changes();
        assert!(r.admit(id(2), Some("1.0.0"), 10), "a new box of the region");
        assert!(!r.admit(id(2), Some("1.0.0"), 20), "once");
        assert!(r.admit(id(3), Some("1.1.0"), 20), "already on the release");
        assert!(!r.admit("130103001001-main".parse().unwrap(), None, 20));
        assert_eq!(r.sites()[&id(3)].stage, Stage::Committed);
        let (_, changed) = r.take_changes();
        assert_eq!(
            changed.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            vec![id(2), id(3)]
        );
        let offered: Vec<_> = (0..5).flat_map(|t| r.tick(t * 1000, |_| true)).collect();
        assert_eq!(offered, vec![id(1), id(2)]);
        r.apply(Op::Cancel).unwrap();
        assert!(
            !r.admit(id(4), None, 6000),
            "a rollout that is over takes in nothing"
        );
    }

    #[test]
    fn a_rollout_is_done_once_every_box_committed() {
        let mut r = Rollout::start(plan(600), boxes(2), 0);
        for t in 0..3 {
            r.tick(t * 1000, |_| true);
        }
        assert!(r.reported(id(1), Stage::Downloading, 10, "", 3000));
        assert!(!r.reported(id(1), Stage::Committed, 100, "", 4000));
        assert_eq!(r.state, State::Running);
        r.reported(id(2), Stage::Committed, 100, "", 5000);
        assert_eq!(r.state, State::Done);
        assert!(r.tick(6000, |_| true).is_empty());
    }

    #[test]
    fn failures_at_the_threshold_abort_and_the_queue_is_left_untouched() {
        let mut p = plan(600);
        p.abort_failed_percent = 20;
        p.min_executed = 5;
        let mut r = Rollout::start(p, boxes(50), 0);
        let offered: Vec<_> = (0..10).flat_map(|t| r.tick(t * 100, |_| true)).collect();
        assert!(offered.len() >= 10);
        // 3 commit, then one fails: 1 of 4 (25%) but fewer than 5 finished: carry on.
        for i in 1..=3 {
            r.reported(id(i), Stage::Committed, 1, "", 2000);
        }
        r.reported(id(4), Stage::RolledBack, 1, "exit status 3", 2000);
        assert_eq!(r.state, State::Running);
        // A fifth finishes: 1 of 5 is 20%: aborted.
        r.reported(id(5), Stage::Committed, 1, "", 2100);
        assert_eq!(r.state, State::Aborted, "{}", r.reason);
        assert!(r.reason.contains("1 of 5"), "{}", r.reason);
        let queued_before = r.count(|s| s == Stage::Queued);
        assert!(r.tick(100_000, |_| true).is_empty());
        assert_eq!(r.count(|s| s == Stage::Queued), queued_before);
        assert!(queued_before > 0);
        // Reports of boxes still at work are kept after the abort.
        r.reported(id(6), Stage::RolledBack, 1, "crash loop", 3000);
        assert_eq!(r.sites()[&id(6)].stage, Stage::RolledBack);
    }

    #[test]
    fn a_box_that_does_not_finish_in_time_times_out_and_a_late_commit_overrides_it() {
        let mut p = plan(600);
        p.timeout_ms = 10_000;
        p.min_executed = 100;
        let mut r = Rollout::start(p, boxes(3), 0);
        assert_eq!(r.tick(0, |_| true), vec![id(1)]);
        r.reported(id(1), Stage::Downloading, 5, "", 1000);
        r.tick(10_000, |_| true);
        assert_eq!(r.sites()[&id(1)].stage, Stage::TimedOut);
        r.reported(id(1), Stage::Committed, 9, "", 11_000);
        assert_eq!(r.sites()[&id(1)].stage, Stage::Committed);
        // A committed box stays committed.
        r.reported(id(1), Stage::Failed, 9, "late", 12_000);
        assert_eq!(r.sites()[&id(1)].stage, Stage::Committed);
    }

    #[test]
    fn pause_holds_offers_resume_carries_on_cancel_is_final() {
        let mut r = Rollout::start(plan(600), boxes(5), 0);
        assert_eq!(r.tick(0, |_| true).len(), 1);
        r.apply(Op::Pause).unwrap();
        assert!(r.tick(60_000, |_| true).is_empty());
        r.apply(Op::Resume).unwrap();
        assert!(!r.tick(61_000, |_| true).is_empty());
        r.apply(Op::Cancel).unwrap();
        assert!(r.tick(120_000, |_| true).is_empty());
        let e = r.apply(Op::Resume).unwrap_err();
        assert!(e.contains("cancelled"), "{e}");
    }

    #[test]
    fn offers_wait_for_the_window_and_stop_at_the_expiry() {
        let mut p = plan(30);
        // 01:00-05:00 UTC.
        p.window = Some(Window {
            start_min: 60,
            end_min: 300,
        });
        p.expires_ms = DAY_MS + 2 * 3_600_000;
        let mut r = Rollout::start(p, boxes(3), 0);
        assert!(r.tick(30 * MINUTE_MS, |_| true).is_empty());
        assert_eq!(r.tick(61 * MINUTE_MS, |_| true).len(), 1);
        assert!(r.tick(DAY_MS - MINUTE_MS, |_| true).is_empty());
        r.tick(DAY_MS + 2 * 3_600_000, |_| true);
        assert_eq!(r.state, State::Expired);
        assert!(r.reason.contains("2 boxes queued"), "{}", r.reason);
        // A window across midnight.
        let w = Window {
            start_min: 23 * 60,
            end_min: 60,
        };
        assert!(w.contains(30 * MINUTE_MS) && w.contains(DAY_MS - MINUTE_MS));
        assert!(!w.contains(120 * MINUTE_MS));
    }

    #[test]
    fn a_stored_rollout_carries_on_without_a_burst() {
        let mut r = Rollout::start(plan(6), boxes(5), 0);
        assert_eq!(r.tick(0, |_| true).len(), 1);
        let sites = r.sites().clone();
        let mut again = Rollout::stored(r.plan.clone(), State::Running, String::new(), sites, 1000);
        // Six a minute: the next one 10 s after the restart, not at once.
        assert!(again.tick(1000, |_| true).is_empty());
        assert!(again.tick(10_000, |_| true).is_empty());
        assert_eq!(again.tick(11_000, |_| true).len(), 1);
    }

    #[test]
    fn changes_are_handed_over_once() {
        let mut r = Rollout::start(plan(600), boxes(2), 0);
        let (me, sites) = r.take_changes();
        assert!(me);
        assert_eq!(sites.len(), 2);
        assert_eq!(r.take_changes(), (false, Vec::new()));
        r.tick(0, |_| true);
        let (_, sites) = r.take_changes();
        assert_eq!(sites.len(), 1);
        assert_eq!(sites[0].1.stage, Stage::Notified);
    }
}
