//! Checking remote commands before anything runs: the fleet's Ed25519 signature over the exact
//! body bytes, the target (this terminal, or a region it is in), the expiry (and a lifetime of
//! at most [`MAX_LIFETIME_MS`]), and a nonce never seen before. Seen nonces are kept on disk until their command expires, so a restart does
//! not reopen the replay window.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cuntong_core::command::{CommandBody, MAX_LIFETIME_MS, SignedCommand};
use cuntong_core::site::Region;
use cuntong_core::terminal_id::TerminalId;
use ring::signature::{ED25519, UnparsedPublicKey};

/// Commands issued this far in the future are refused (clocks differ, but not by this much).
const MAX_CLOCK_SKEW_MS: u64 = 5 * 60 * 1000;

/// Why a command was refused. The text is what central sees; it never contains key material.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("malformed command: {0}")]
    Malformed(String),
    #[error("bad signature")]
    BadSignature,
    #[error("not for this terminal (target {0})")]
    NotForMe(String),
    #[error("expired")]
    Expired,
    #[error("issued in the future")]
    FromTheFuture,
    #[error("replayed (nonce already used)")]
    Replayed,
    #[error("valid for {lifetime_ms} ms, longer than the 30 days a command may live")]
    TooLong { lifetime_ms: u64 },
}

/// Verifies commands for one terminal.
#[derive(Debug)]
pub struct CommandGuard {
    id: TerminalId,
    key: Vec<u8>,
    state: PathBuf,
    /// nonce → expiry (Unix ms).
    seen: BTreeMap<u64, u64>,
}

/// Why the guard could not start.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("{path}: {detail}")]
    File { path: PathBuf, detail: String },
}

/// Reads an Ed25519 public key file: 64 hex digits (what `cuntong ca init` writes).
pub fn read_public_key(path: &Path) -> Result<Vec<u8>, GuardError> {
    let err = |detail: String| GuardError::File {
        path: path.to_owned(),
        detail,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let hex = text.trim();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(err("not an Ed25519 public key (64 hex digits)".into()));
    }
    (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| err(e.to_string())))
        .collect()
}

impl CommandGuard {
    /// A guard with the fleet's public key, keeping seen nonces in `data_dir/commands.state`.
    pub fn open(id: TerminalId, key: Vec<u8>, data_dir: &Path) -> Result<CommandGuard, GuardError> {
        let state = data_dir.join("commands.state");
        let seen = std::fs::read_to_string(&state)
            .map(|text| parse_window(&text))
            .unwrap_or_default();
        Ok(CommandGuard {
            id,
            key,
            state,
            seen,
        })
    }

    /// True if the nonce was used before (a retained copy coming back after a reconnect).
    pub fn already_ran(&self, nonce: u64) -> bool {
        self.seen.contains_key(&nonce)
    }

    /// Checks a command; on success its nonce is recorded (durably) before it is returned, so
    /// it can run at most once.
    pub fn check(&mut self, bytes: &[u8], now_ms: u64) -> Result<CommandBody, Refusal> {
        let signed = SignedCommand::decode(bytes).map_err(|e| Refusal::Malformed(e.to_string()))?;
        UnparsedPublicKey::new(&ED25519, &self.key)
            .verify(&signed.body, &signed.signature)
            .map_err(|_| Refusal::BadSignature)?;
        let body = signed
            .body()
            .map_err(|e| Refusal::Malformed(e.to_string()))?;
        let for_me = body.target == self.id.to_string()
            || body
                .target
                .parse::<Region>()
                .is_ok_and(|r| body.target.len() < 12 && r.contains(self.id.site()));
        if !for_me {
            return Err(Refusal::NotForMe(body.target));
        }
        if now_ms >= body.expires_ms {
            return Err(Refusal::Expired);
        }
        if body.issued_ms > now_ms.saturating_add(MAX_CLOCK_SKEW_MS) {
            return Err(Refusal::FromTheFuture);
        }
        if body.lifetime_ms() > MAX_LIFETIME_MS {
            return Err(Refusal::TooLong {
                lifetime_ms: body.lifetime_ms(),
            });
        }
        if self.seen.contains_key(&body.nonce) {
            return Err(Refusal::Replayed);
        }
        self.seen.retain(|_, exp| *exp >= now_ms);
        self.seen.insert(body.nonce, body.expires_ms);
        if let Err(e) = self.save() {
            // Without a durable record the command could run twice after a restart.
            self.seen.remove(&body.nonce);
            return Err(Refusal::Malformed(format!("cannot record the nonce: {e}")));
        }
        Ok(body)
    }

    fn save(&self) -> std::io::Result<()> {
        crate::atomic::write(&self.state, window_text(&self.seen).as_bytes())
    }
}

/// The nonce window as stored: one `nonce expiry` per line.
fn window_text(seen: &BTreeMap<u64, u64>) -> String {
    seen.iter().map(|(n, e)| format!("{n} {e}\n")).collect()
}

fn parse_window(text: &str) -> BTreeMap<u64, u64> {
    let mut seen = BTreeMap::new();
    for line in text.lines() {
        let mut it = line.split_whitespace().map(str::parse::<u64>);
        if let (Some(Ok(n)), Some(Ok(e))) = (it.next(), it.next()) {
            seen.insert(n, e);
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;
    use cuntong_core::command::Action;
    use cuntong_core::envelope::encode;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    fn keypair() -> Ed25519KeyPair {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
    }

    fn sign(key: &Ed25519KeyPair, target: &str, nonce: u64, expires_ms: u64) -> Vec<u8> {
        let body = encode(&CommandBody {
            target: target.into(),
            nonce,
            issued_ms: 1_000,
            expires_ms,
            action: Action::Ping,
        })
        .unwrap();
        let signature = key.sign(&body).as_ref().to_vec();
        encode(&SignedCommand { body, signature }).unwrap()
    }

    #[test]
    fn only_fresh_signed_commands_for_this_terminal_pass_and_each_once() {
        let dir = tempfile::tempdir().unwrap();
        let key = keypair();
        let id: TerminalId = "130102001001-main".parse().unwrap();
        let mut g = CommandGuard::open(id, key.public_key().as_ref().to_vec(), dir.path()).unwrap();
        assert!(
            g.check(&sign(&key, "130102001001-main", 1, 10_000), 5_000)
                .is_ok()
        );
        assert_eq!(
            g.check(&sign(&key, "130102001001-main", 1, 10_000), 5_000),
            Err(Refusal::Replayed)
        );
        assert!(
            g.check(&sign(&key, "130102", 2, 10_000), 5_000).is_ok(),
            "its county"
        );
        assert!(matches!(
            g.check(&sign(&key, "130103", 3, 10_000), 5_000),
            Err(Refusal::NotForMe(_))
        ));
        assert!(matches!(
            g.check(&sign(&key, "130102002001-main", 4, 10_000), 5_000),
            Err(Refusal::NotForMe(_))
        ));
        assert_eq!(
            g.check(&sign(&key, "130102001001-main", 5, 4_000), 5_000),
            Err(Refusal::Expired)
        );
        let other = keypair();
        assert_eq!(
            g.check(&sign(&other, "130102001001-main", 6, 10_000), 5_000),
            Err(Refusal::BadSignature)
        );
        let mut tampered = sign(&key, "130102001001-main", 7, 10_000);
        let at = tampered.len() - 70;
        tampered[at] ^= 1;
        assert!(g.check(&tampered, 5_000).is_err());
        // The replay window survives a restart.
        drop(g);
        let mut g = CommandGuard::open(id, key.public_key().as_ref().to_vec(), dir.path()).unwrap();
        assert_eq!(
            g.check(&sign(&key, "130102001001-main", 1, 10_000), 5_000),
            Err(Refusal::Replayed)
        );
    }

    #[test]
    fn a_power_cut_while_saving_the_nonce_window_never_loses_an_accepted_nonce() {
        use crate::atomic::{Mode, replace, sim::Sim};
        let path = Path::new("/data/commands.state");
        // Nonces 1 and 2 were accepted (saved) before; nonce 3 is being accepted now, while
        // nonce 1's command expires and leaves the window.
        let before = BTreeMap::from([(1, 100), (2, 300)]);
        let after = BTreeMap::from([(2, 300), (3, 400)]);
        for cut in 0..=4 {
            let mut sim = Sim::new(path, Some(window_text(&before).as_bytes()), cut);
            let accepted = replace(&mut sim, path, window_text(&after).as_bytes(), Mode::Keep);
            for found in sim.after_cut(path) {
                let window = parse_window(&String::from_utf8(found.unwrap_or_default()).unwrap());
                assert!(
                    window.contains_key(&2),
                    "cut after {cut} steps lost nonce 2"
                );
                if accepted.is_ok() {
                    assert_eq!(window, after, "an accepted nonce 3 came back without it");
                } else {
                    assert!(
                        window == before || window == after,
                        "cut after {cut}: {window:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_command_whose_nonce_cannot_be_stored_is_refused_and_not_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let key = keypair();
        let id: TerminalId = "130102001001-main".parse().unwrap();
        let mut g = CommandGuard::open(id, key.public_key().as_ref().to_vec(), dir.path()).unwrap();
        // The temporary file cannot be created: the window cannot be saved.
        std::fs::create_dir(dir.path().join("commands.state.tmp")).unwrap();
        let refused = g.check(&sign(&key, "130102001001-main", 1, 10_000), 5_000);
        assert!(
            matches!(&refused, Err(Refusal::Malformed(m)) if m.contains("cannot record the nonce")),
            "{refused:?}"
        );
        assert!(!g.already_ran(1));
        std::fs::remove_dir(dir.path().join("commands.state.tmp")).unwrap();
        assert!(
            g.check(&sign(&key, "130102001001-main", 1, 10_000), 5_000)
                .is_ok()
        );
        let g = CommandGuard::open(id, key.public_key().as_ref().to_vec(), dir.path()).unwrap();
        assert!(g.already_ran(1), "the accepted nonce is on disk");
    }

    #[test]
    fn a_command_valid_for_longer_than_thirty_days_is_refused_even_when_signed() {
        let dir = tempfile::tempdir().unwrap();
        let key = keypair();
        let id: TerminalId = "130102001001-main".parse().unwrap();
        let mut g = CommandGuard::open(id, key.public_key().as_ref().to_vec(), dir.path()).unwrap();
        // Issued at 1_000 (see `sign`): exactly 30 days passes, a millisecond more does not.
        let at_limit = 1_000 + MAX_LIFETIME_MS;
        assert!(g.check(&sign(&key, "130102", 1, at_limit), 5_000).is_ok());
        for (nonce, expires) in [(2, at_limit + 1), (3, u64::MAX)] {
            assert_eq!(
                g.check(&sign(&key, "130102", nonce, expires), 5_000),
                Err(Refusal::TooLong {
                    lifetime_ms: expires - 1_000
                })
            );
            assert!(!g.already_ran(nonce), "a refused nonce is not kept");
        }
    }
}
