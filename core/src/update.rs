//! Over-the-air updates: what a release is, the stages a box goes through with one, and the
//! rules that keep a box from being bricked by one.
//!
//! A release is an artifact (the terminal's Debian package) described by a [`Manifest`]
//! (version, size, SHA-256) and signed with the fleet's release key ([`SignedRelease`]).
//! Central offers it to a box in an [`Offer`] inside a signed command. The box downloads it,
//! checks the signature and the digest before anything else, installs it into the slot it is
//! not running from and restarts into it on trial. The [`SlotTable`] decides at each start what
//! runs: the trial only while it has boots left and time before its deadline, otherwise the
//! build that was committed before. A trial becomes the committed build only once it proves
//! itself healthy. [`Pace`] keeps all of it out of the way of meetings.
//!
//! Signing, hashing, downloading and files live at the edges; the rules live here.

use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

pub use crate::envelope::UpdateStage as Stage;
use crate::envelope::{DecodeError, decode};

/// What kind of file a release is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Artifact {
    /// A terminal Debian package (`cuntong-terminal_V_ARCH.deb`), unpacked into a slot.
    Deb,
}

/// The signed description of a release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The version it installs (`0.2.0`).
    pub version: String,
    pub artifact: Artifact,
    /// The artifact's length in bytes.
    pub size: u64,
    /// SHA-256 of the artifact.
    pub sha256: [u8; 32],
    /// Unix ms when it was signed.
    pub created_ms: u64,
}

/// A manifest as it travels: the encoded [`Manifest`] and the release key's Ed25519 signature
/// over those exact bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRelease {
    pub manifest: Vec<u8>,
    pub signature: Vec<u8>,
}

impl SignedRelease {
    pub fn decode(bytes: &[u8]) -> Result<SignedRelease, DecodeError> {
        decode(bytes)
    }

    /// The manifest, once the signature has been checked by the caller.
    pub fn manifest(&self) -> Result<Manifest, DecodeError> {
        decode(&self.manifest)
    }
}

/// Central's offer of a release to a box, carried by a signed command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// The rollout it belongs to (its reports name it).
    pub rollout: u64,
    pub release: SignedRelease,
    /// Where the artifact can be fetched (HTTP(S) URLs that answer range requests), tried in
    /// order. The bytes are trusted only through the signed manifest, never through the source.
    pub sources: Vec<String>,
}

/// One of a box's two install slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

/// A release installed in a slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    pub slot: Slot,
    pub version: String,
    pub rollout: u64,
}

/// A release on trial: installed, not yet proven.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    pub installed: Installed,
    /// Starts so far (each counted before the build runs, so a crash cannot skip one).
    pub boots: u32,
    /// Unix ms when it was installed; the health deadline counts from here.
    pub since_ms: u64,
}

/// How a trial ended, kept until the box has reported it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub rollout: u64,
    pub version: String,
    /// [`Stage::Committed`] or [`Stage::RolledBack`].
    pub stage: Stage,
    pub reason: String,
}

/// How long a trial may take to prove itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrialRules {
    /// Starts allowed before the trial counts as a crash loop.
    pub max_boots: u32,
    /// From install to a passed health check.
    pub deadline_ms: u64,
}

impl Default for TrialRules {
    /// Three starts and five minutes.
    fn default() -> TrialRules {
        TrialRules {
            max_boots: 3,
            deadline_ms: 5 * 60 * 1000,
        }
    }
}

/// What runs at a start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Boot {
    /// The build the package installed (no release committed yet).
    Base,
    /// The committed release in this slot.
    Committed(Slot),
    /// The trial in this slot, for start number `boot` (1-based); it must be healthy by
    /// `deadline_ms` (Unix ms).
    Trial {
        slot: Slot,
        boot: u32,
        deadline_ms: u64,
    },
}

/// The box's slots: what is committed, what is on trial, how the last trial ended. Persisted
/// by the box and consulted at every start, before the daemon runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotTable {
    /// The committed release; `None` runs the packaged build.
    pub committed: Option<Installed>,
    pub trial: Option<Trial>,
    /// The last trial's end, until reported.
    pub outcome: Option<Outcome>,
}

impl SlotTable {
    /// The slot a new release is installed into: never the one the committed build runs from.
    pub fn inactive(&self) -> Slot {
        match &self.committed {
            Some(c) => c.slot.other(),
            None => Slot::A,
        }
    }

    /// The version the box runs when no trial is on (`None`: the packaged build's).
    pub fn committed_version(&self) -> Option<&str> {
        self.committed.as_ref().map(|c| c.version.as_str())
    }

    /// Starts a trial of a release just installed into [`inactive`](Self::inactive).
    pub fn begin_trial(&mut self, version: String, rollout: u64, now_ms: u64) {
        self.trial = Some(Trial {
            installed: Installed {
                slot: self.inactive(),
                version,
                rollout,
            },
            boots: 0,
            since_ms: now_ms,
        });
    }

    /// Decides what this start runs, counting the start if it is a trial's. A trial out of
    /// starts or past its deadline is rolled back first. Persist the table before running
    /// what it returns.
    pub fn boot(&mut self, rules: TrialRules, now_ms: u64) -> Boot {
        if let Some(t) = &self.trial {
            let deadline_ms = t.since_ms.saturating_add(rules.deadline_ms);
            if t.boots >= rules.max_boots {
                let why =
                    alloc::format!("stopped {} times without passing its health check", t.boots);
                self.roll_back(why);
            } else if now_ms >= deadline_ms {
                self.roll_back(alloc::format!(
                    "not healthy within {} s of its install",
                    rules.deadline_ms / 1000
                ));
            }
        }
        if let Some(t) = &mut self.trial {
            t.boots += 1;
            return Boot::Trial {
                slot: t.installed.slot,
                boot: t.boots,
                deadline_ms: t.since_ms.saturating_add(rules.deadline_ms),
            };
        }
        match &self.committed {
            Some(c) => Boot::Committed(c.slot),
            None => Boot::Base,
        }
    }

    /// The trial passed its health check: it is what the box runs from now on. False if no
    /// trial is on (already committed, or rolled back meanwhile).
    pub fn commit(&mut self) -> bool {
        let Some(t) = self.trial.take() else {
            return false;
        };
        self.outcome = Some(Outcome {
            rollout: t.installed.rollout,
            version: t.installed.version.clone(),
            stage: Stage::Committed,
            reason: String::new(),
        });
        self.committed = Some(t.installed);
        true
    }

    /// Abandons the trial; the committed build (or the packaged one) runs again.
    pub fn roll_back(&mut self, reason: String) {
        if let Some(t) = self.trial.take() {
            self.outcome = Some(Outcome {
                rollout: t.installed.rollout,
                version: t.installed.version,
                stage: Stage::RolledBack,
                reason,
            });
        }
    }
}

/// How hard an update may use the box, given its meetings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    /// Download at the configured rate; install and restart when ready.
    Free,
    /// In a meeting, or a session the box is invited to starts within [`QUIET_BEFORE_MS`]:
    /// download only at [`YIELD_SHARE`] of the rate, and neither install nor restart.
    Yield,
}

/// How long before an invited session a box stays quiet: an hour.
pub const QUIET_BEFORE_MS: u64 = 60 * 60 * 1000;

/// The share of its download rate a box uses while meeting media needs the link: an eighth.
pub const YIELD_SHARE: (u64, u64) = (1, 8);

impl Pace {
    /// The pace for a box that is (or is not) in a meeting, with its next invited session
    /// starting at `next_session_ms` (Unix ms), at `now_ms`.
    pub fn of(in_meeting: bool, next_session_ms: Option<u64>, now_ms: u64) -> Pace {
        let soon = next_session_ms.is_some_and(|s| {
            s >= now_ms.saturating_sub(QUIET_BEFORE_MS) && s <= now_ms + QUIET_BEFORE_MS
        });
        if in_meeting || soon {
            Pace::Yield
        } else {
            Pace::Free
        }
    }

    /// The download rate (bytes/s) at this pace for a box configured with `max_rate`.
    pub fn rate(self, max_rate: u64) -> u64 {
        match self {
            Pace::Free => max_rate,
            Pace::Yield => (max_rate * YIELD_SHARE.0 / YIELD_SHARE.1).max(1),
        }
    }

    pub fn may_install(self) -> bool {
        self == Pace::Free
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::encode;

    const RULES: TrialRules = TrialRules {
        max_boots: 3,
        deadline_ms: 60_000,
    };

    fn installed(t: &mut SlotTable, version: &str, now: u64) -> Slot {
        let slot = t.inactive();
        t.begin_trial(version.into(), 7, now);
        slot
    }

    #[test]
    fn a_healthy_trial_is_committed_and_runs_from_then_on() {
        let mut t = SlotTable::default();
        assert_eq!(t.boot(RULES, 0), Boot::Base);
        let slot = installed(&mut t, "0.2.0", 1_000);
        assert_eq!(slot, Slot::A);
        assert_eq!(
            t.boot(RULES, 2_000),
            Boot::Trial {
                slot: Slot::A,
                boot: 1,
                deadline_ms: 61_000
            }
        );
        assert!(t.commit());
        assert!(!t.commit(), "a second commit finds no trial");
        assert_eq!(t.boot(RULES, 100_000), Boot::Committed(Slot::A));
        assert_eq!(t.committed_version(), Some("0.2.0"));
        assert_eq!(t.outcome.as_ref().map(|o| o.stage), Some(Stage::Committed));
        // The next release goes to the other slot; the committed one is never overwritten.
        assert_eq!(installed(&mut t, "0.3.0", 200_000), Slot::B);
    }

    #[test]
    fn a_trial_that_keeps_stopping_is_rolled_back_after_its_boots() {
        let mut t = SlotTable::default();
        installed(&mut t, "0.2.0", 0);
        assert!(t.commit());
        installed(&mut t, "0.3.0", 10_000);
        for boot in 1..=3 {
            assert!(
                matches!(t.boot(RULES, 10_001), Boot::Trial { slot: Slot::B, boot: b, .. } if b == boot)
            );
        }
        // The fourth start finds three counted starts and no commit: back to 0.2.0 in A.
        assert_eq!(t.boot(RULES, 10_002), Boot::Committed(Slot::A));
        let o = t.outcome.clone().unwrap();
        assert_eq!(
            (o.stage, o.version.as_str(), o.rollout),
            (Stage::RolledBack, "0.3.0", 7)
        );
        assert!(o.reason.contains("3 times"), "{}", o.reason);
        assert_eq!(t.committed_version(), Some("0.2.0"));
        assert!(!t.commit(), "nothing left to commit");
    }

    #[test]
    fn a_trial_past_its_deadline_is_rolled_back_at_the_next_start() {
        let mut t = SlotTable::default();
        installed(&mut t, "0.2.0", 0);
        assert!(matches!(
            t.boot(RULES, 1),
            Boot::Trial {
                boot: 1,
                deadline_ms: 60_000,
                ..
            }
        ));
        assert_eq!(t.boot(RULES, 60_000), Boot::Base);
        let o = t.outcome.clone().unwrap();
        assert_eq!(o.stage, Stage::RolledBack);
        assert!(o.reason.contains("within 60 s"), "{}", o.reason);
    }

    #[test]
    fn a_table_survives_its_encoding() {
        let mut t = SlotTable::default();
        installed(&mut t, "0.2.0", 5);
        t.boot(RULES, 6);
        let bytes = encode(&t).unwrap();
        let back: SlotTable = decode(&bytes).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn stages_have_stable_names_and_only_the_ends_are_final() {
        for s in Stage::ALL {
            assert_eq!(Stage::parse(s.as_str()), Some(s));
        }
        let finals: Vec<&str> = Stage::ALL
            .into_iter()
            .filter(|s| s.is_final())
            .map(Stage::as_str)
            .collect();
        assert_eq!(finals, ["committed", "failed", "rolled-back", "timed-out"]);
        assert!(!Stage::Committed.is_failure() && Stage::RolledBack.is_failure());
        assert_eq!(Stage::parse("done"), None);
    }

    #[test]
    fn a_box_yields_in_a_meeting_and_an_hour_around_its_sessions() {
        let hour = QUIET_BEFORE_MS;
        let now = 10 * hour;
        assert_eq!(Pace::of(false, None, now), Pace::Free);
        assert_eq!(Pace::of(true, None, now), Pace::Yield);
        assert_eq!(Pace::of(false, Some(now + hour - 1), now), Pace::Yield);
        assert_eq!(Pace::of(false, Some(now + hour + 1), now), Pace::Free);
        // A session that should have started is still on (the meeting may not have been
        // joined yet): quiet for its first hour.
        assert_eq!(Pace::of(false, Some(now - 1), now), Pace::Yield);
        assert_eq!(Pace::Yield.rate(80_000), 10_000);
        assert_eq!(Pace::Free.rate(80_000), 80_000);
        assert!(!Pace::Yield.may_install() && Pace::Free.may_install());
    }

    #[test]
    fn a_signed_release_carries_its_manifest() {
        let m = Manifest {
            version: "0.2.0".into(),
            artifact: Artifact::Deb,
            size: 3,
            sha256: [9; 32],
            created_ms: 1,
        };
        let r = SignedRelease {
            manifest: encode(&m).unwrap(),
            signature: alloc::vec![1; 64],
        };
        let back = SignedRelease::decode(&encode(&r).unwrap()).unwrap();
        assert_eq!(back.manifest().unwrap(), m);
    }
}
