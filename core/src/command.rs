//! Remote commands from central staff to terminals, signed so that nobody else can command a
//! terminal.
//!
//! A [`SignedCommand`] carries the encoded [`CommandBody`] and an Ed25519 signature over those
//! exact bytes, made with the fleet's command key. The body names its target (a terminal id or
//! a region prefix), a nonce, when it was issued and when it expires. The terminal verifies the
//! signature, the target, the expiry and that the nonce is new before it runs anything, and
//! answers on its `res` topic with a [`CommandResult`]. Signing and verifying need a crypto
//! library and live at the edges; the types and their encoding live here.

use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::envelope::{DecodeError, decode};

/// What a command asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Action {
    /// Answer "pong": is the terminal reachable and does it accept our key?
    Ping,
    /// Restart the box (a system command configured on the terminal).
    Reboot,
    /// Report the terminal's state (link, outbox, sensors).
    Diag,
    /// Change one configuration key.
    ConfigSet { key: String, value: String },
    /// Report the recent errors.
    Logs,
    /// Pre-meeting readiness: camera, microphone, link, clock, disk ([`Readiness`] as JSON).
    Readiness,
    /// Fetch, verify and install a release, then restart into it on trial
    /// ([`crate::update`]). The box answers at once and reports each stage as an event.
    Update(crate::update::Offer),
    /// A SIP gateway calls a room system it allows (`sip:hall@10.13.2.40`) into a meeting it is
    /// invited to; the room system joins as the gateway's site once it answers.
    Dial {
        meeting: crate::meeting_id::MeetingId,
        uri: String,
    },
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Ping => "ping",
            Action::Reboot => "reboot",
            Action::Diag => "diag",
            Action::ConfigSet { .. } => "config-set",
            Action::Logs => "logs",
            Action::Readiness => "readiness",
            Action::Update(_) => "update",
            Action::Dial { .. } => "dial",
        }
    }
}

/// The signed part of a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandBody {
    /// A terminal id (`130102001001-main`) or a region prefix (`130102`).
    pub target: String,
    /// Unique per command; a terminal runs each nonce at most once.
    pub nonce: u64,
    /// Unix ms.
    pub issued_ms: u64,
    /// Unix ms after which the command must not run.
    pub expires_ms: u64,
    pub action: Action,
}

/// The shortest lifetime central gives a command (`cuntong cmd --expires`): one minute.
pub const MIN_LIFETIME_MS: u64 = 60 * 1000;
/// The longest lifetime a command may have (from issued to expiry): 30 days. Terminals refuse
/// longer-lived ones: a command stays usable, and its nonce must be kept, until it expires.
pub const MAX_LIFETIME_MS: u64 = 30 * 24 * 3600 * 1000;

impl CommandBody {
    /// From issued to expiry (zero if it expires before it is issued).
    pub fn lifetime_ms(&self) -> u64 {
        self.expires_ms.saturating_sub(self.issued_ms)
    }
}

/// A command as it travels: the encoded body and the signature over it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCommand {
    pub body: Vec<u8>,
    pub signature: Vec<u8>,
}

impl SignedCommand {
    pub fn decode(bytes: &[u8]) -> Result<SignedCommand, DecodeError> {
        decode(bytes)
    }

    /// The body, once the signature has been checked by the caller.
    pub fn body(&self) -> Result<CommandBody, DecodeError> {
        decode(&self.body)
    }
}

/// One self-check of a terminal before a meeting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// `camera`, `microphone`, `link`, `clock`, `disk`.
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// A terminal's answer to [`Action::Readiness`] (in [`CommandResult::output`], as JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    pub ready: bool,
    pub checks: Vec<Check>,
}

impl Readiness {
    pub fn of(checks: Vec<Check>) -> Readiness {
        Readiness {
            ready: checks.iter().all(|c| c.ok),
            checks,
        }
    }
}

/// A terminal's answer, on its `res` topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    pub nonce: u64,
    pub ok: bool,
    /// The command's output, or why it was refused or failed.
    pub output: String,
}

impl CommandResult {
    pub fn decode(bytes: &[u8]) -> Result<CommandResult, DecodeError> {
        decode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::encode;

    /// Every action, the signed command around a body, and a result, byte for byte.
    #[test]
    fn every_command_message_has_pinned_bytes() {
        use crate::envelope::golden::assert_pinned;
        let body = |action| CommandBody {
            target: "130102".into(),
            nonce: 42,
            issued_ms: 1_763_798_400_000,
            expires_ms: 1_763_798_460_000,
            action,
        };
        assert_pinned(&[
            (
                body(Action::Ping),
                "01063133303130322a80f8ced4aa33e0ccd2d4aa3300",
            ),
            (
                body(Action::Reboot),
                "01063133303130322a80f8ced4aa33e0ccd2d4aa3301",
            ),
            (
                body(Action::Diag),
                "01063133303130322a80f8ced4aa33e0ccd2d4aa3302",
            ),
            (
                body(Action::ConfigSet {
                    key: "tier".into(),
                    value: "full".into(),
                }),
                "01063133303130322a80f8ced4aa33e0ccd2d4aa330304746965720466756c6c",
            ),
            (
                body(Action::Logs),
                "01063133303130322a80f8ced4aa33e0ccd2d4aa3304",
            ),
            (
                body(Action::Readiness),
                "01063133303130322a80f8ced4aa33e0ccd2d4aa3305",
            ),
        ]);
        assert_pinned(&[(
            SignedCommand {
                body: encode(&body(Action::Ping)).unwrap(),
                signature: alloc::vec![0xa5; 64],
            },
            "011601063133303130322a80f8ced4aa33e0ccd2d4aa330040a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5",
        )]);
        assert_pinned(&[
            (
                CommandResult {
                    nonce: 42,
                    ok: true,
                    output: "pong".into(),
                },
                "012a0104706f6e67",
            ),
            (
                CommandResult {
                    nonce: 43,
                    ok: false,
                    output: "expired".into(),
                },
                "012b000765787069726564",
            ),
        ]);
    }

    #[test]
    fn commands_and_results_round_trip() {
        let body = CommandBody {
            target: "130102".into(),
            nonce: 42,
            issued_ms: 1,
            expires_ms: 2,
            action: Action::ConfigSet {
                key: "telemetry.health_interval".into(),
                value: "30s".into(),
            },
        };
        let signed = SignedCommand {
            body: encode(&body).unwrap(),
            signature: alloc::vec![7; 64],
        };
        let back = SignedCommand::decode(&encode(&signed).unwrap()).unwrap();
        assert_eq!(back.body().unwrap(), body);
        let r = CommandResult {
            nonce: 42,
            ok: true,
            output: "pong".into(),
        };
        assert_eq!(CommandResult::decode(&encode(&r).unwrap()), Ok(r));
        assert!(SignedCommand::decode(&[1, 0xff]).is_err());
    }
}
