//! `cuntong cmd`: signed remote commands to terminals, and their answers.
//!
//! Each command is signed with the fleet's command key (from the CA directory), carries a
//! fresh nonce and an expiry, and is published *retained* on the terminal's command topic: a
//! terminal that is offline finds it when it reconnects and runs it if it has not expired. The
//! answers come back on the terminals' result topics; once a terminal answered, its retained
//! command is cleared.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cuntong_core::command::{Action, CommandBody, CommandResult, SignedCommand};
use cuntong_core::envelope::{EncodeError, encode};
use cuntong_core::terminal_id::TerminalId;
use cuntong_core::topic::{Channel, Topic};
use cuntong_terminal::broker_url::Brokers;
use cuntong_terminal::link::{Link, LinkOptions, Message, PublishError, unix_ms};
use ring::rand::SecureRandom;
use ring::signature::Ed25519KeyPair;
use serde::Serialize;

/// One terminal's answer, as `--json` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Answer {
    pub terminal: String,
    pub nonce: u64,
    /// `null` when the terminal did not answer in time (the command stays queued until it
    /// expires).
    pub ok: Option<bool>,
    pub output: Option<String>,
}

/// Why a signed command could not be made or sent.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// The command key file cannot be read.
    #[error("{}: {source}", path.display())]
    KeyUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The command key file does not hold an Ed25519 key.
    #[error("{}: not an Ed25519 key", path.display())]
    NotEd25519 { path: PathBuf },
    /// The system gave no randomness for the command's nonce.
    #[error("no randomness for the nonce")]
    NoRandomness,
    /// The command could not be encoded.
    #[error("{0}")]
    Encode(#[from] EncodeError),
    /// The broker link could not be opened.
    #[error("{0}")]
    Link(cuntong_terminal::link::LinkError),
    /// The link took no more messages.
    #[error("{0}")]
    Publish(#[from] PublishError),
}

/// Why the words of a command are not an action a box takes.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("config-set {0:?}: expected KEY=VALUE")]
    NotKeyValue(String),
    #[error("config-set {0:?}: the KEY is empty")]
    EmptyKey(String),
    #[error("update FILE.release URL…: name at least one URL to fetch from")]
    NoSource,
    #[error("update: {0:?} is not an http:// or https:// URL")]
    NotHttp(String),
    #[error("{0}")]
    Release(#[from] crate::release::ReleaseError),
    #[error("dial {given:?}: not a meeting id ({problem})")]
    Meeting {
        given: String,
        problem: cuntong_core::meeting_id::MeetingIdError,
    },
    #[error("dial {0}")]
    Uri(cuntong_core::sip::UriError),
    #[error(
        "command {0:?}: use ping, reboot, diag, logs, readiness, config-set KEY=VALUE, update FILE.release URL… or dial MEETING sip:ROOM@HOST"
    )]
    Unknown(String),
}

/// Parses `ping`, `reboot`, `diag`, `logs`, `readiness`, `config-set KEY=VALUE`,
/// `update FILE.release URL…` (a release signed by `cuntong release sign`, offered from the
/// URLs, which must answer HTTP range requests) or `dial MEETING sip:ROOM@HOST`.
pub fn parse_action(words: &[String]) -> Result<Action, ActionError> {
    match words {
        [a] if a == "ping" => Ok(Action::Ping),
        [a] if a == "reboot" => Ok(Action::Reboot),
        [a] if a == "diag" => Ok(Action::Diag),
        [a] if a == "logs" => Ok(Action::Logs),
        [a] if a == "readiness" => Ok(Action::Readiness),
        [a, kv] if a == "config-set" => {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| ActionError::NotKeyValue(kv.clone()))?;
            if k.trim().is_empty() {
                return Err(ActionError::EmptyKey(kv.clone()));
            }
            Ok(Action::ConfigSet {
                key: k.to_owned(),
                value: v.to_owned(),
            })
        }
        [a, release, sources @ ..] if a == "update" => {
            if sources.is_empty() {
                return Err(ActionError::NoSource);
            }
            if let Some(bad) = sources
                .iter()
                .find(|u| !(u.starts_with("http://") || u.starts_with("https://")))
            {
                return Err(ActionError::NotHttp(bad.clone()));
            }
            let release = crate::release::read(Path::new(release))?;
            Ok(Action::Update(cuntong_core::update::Offer {
                rollout: 0,
                release,
                sources: sources.to_vec(),
            }))
        }
        [a, meeting, uri] if a == "dial" => {
            let meeting = meeting.parse().map_err(|problem| ActionError::Meeting {
                given: meeting.clone(),
                problem,
            })?;
            cuntong_core::sip::check_uri(uri).map_err(ActionError::Uri)?;
            Ok(Action::Dial {
                meeting,
                uri: uri.clone(),
            })
        }
        other => Err(ActionError::Unknown(other.join(" "))),
    }
}

/// Signs `action` for `target`, expiring after `expires`.
pub fn sign(
    key: &Ed25519KeyPair,
    target: &str,
    action: Action,
    expires: Duration,
) -> Result<(u64, Vec<u8>), CmdError> {
    let mut nonce = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| CmdError::NoRandomness)?;
    let nonce = u64::from_le_bytes(nonce);
    let now = unix_ms();
    let body = encode(&CommandBody {
        target: target.to_owned(),
        nonce,
        issued_ms: now,
        expires_ms: now.saturating_add(u64::try_from(expires.as_millis()).unwrap_or(u64::MAX)),
        action,
    })?;
    let signature = key.sign(&body).as_ref().to_vec();
    let bytes = encode(&SignedCommand { body, signature })?;
    Ok((nonce, bytes))
}

/// The fleet's command signing key from a CA directory.
pub fn signing_key(ca_dir: &Path) -> Result<Ed25519KeyPair, CmdError> {
    let path = ca_dir.join("command-key.pk8");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(source) => return Err(CmdError::KeyUnreadable { path, source }),
    };
    Ed25519KeyPair::from_pkcs8(&bytes).map_err(|_| CmdError::NotEd25519 { path })
}

/// Sends the command to every target and collects the answers for up to `wait`.
pub async fn send(
    (broker, subscribe_qos): (Brokers, cuntong_terminal::link::QoS),
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    key: &Ed25519KeyPair,
    targets: &[TerminalId],
    action: &Action,
    expires: Duration,
    wait: Duration,
) -> Result<Vec<Answer>, CmdError> {
    let mut opts = LinkOptions::new(format!("cuntong-cmd-{}", std::process::id()), broker);
    opts.tls = tls;
    opts.subscribe_qos = subscribe_qos;
    opts.subscriptions = targets
        .iter()
        .map(|t| Topic::terminal(t, Channel::Result).to_string())
        .collect();
    opts.queue_capacity = targets.len() * 2 + 8;
    let (link, mut incoming) = Link::connect(opts, Duration::from_secs(10))
        .await
        .map_err(CmdError::Link)?;
    let mut pending: BTreeMap<u64, TerminalId> = BTreeMap::new();
    let mut answers: BTreeMap<String, Answer> = BTreeMap::new();
    for t in targets {
        let (nonce, bytes) = sign(key, &t.to_string(), action.clone(), expires)?;
        let topic = Topic::terminal(t, Channel::Command).to_string();
        link.publish(Message::new(topic, bytes).retained()).await?;
        pending.insert(nonce, *t);
        answers.insert(
            t.to_string(),
            Answer {
                terminal: t.to_string(),
                nonce,
                ok: None,
                output: None,
            },
        );
    }
    let deadline = tokio::time::Instant::now() + wait;
    while !pending.is_empty() {
        let msg = tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            m = incoming.recv() => match m { Some(m) => m, None => break },
        };
        let Ok(result) = CommandResult::decode(&msg.payload) else {
            continue;
        };
        if let Some(t) = pending.remove(&result.nonce) {
            if let Some(a) = answers.get_mut(&t.to_string()) {
                a.ok = Some(result.ok);
                a.output = Some(result.output);
            }
            // Answered: the retained copy has done its job.
            let topic = Topic::terminal(&t, Channel::Command).to_string();
            let _ = link
                .publish(Message::new(topic, Vec::new()).retained())
                .await;
        }
    }
    // Let the clearing publishes go out before the link closes.
    let sent = link.status().published;
    let drained = async {
        while link.status().queued > 0 || link.status().published <= sent {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), drained).await;
    link.shutdown();
    Ok(answers.into_values().collect())
}
