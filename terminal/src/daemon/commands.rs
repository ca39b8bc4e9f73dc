//! Signed commands from central, checked before they run, and their results.

use cuntong_core::envelope::{Event, encode};
use cuntong_core::topic::{Channel, Topic};

use super::{Daemon, RunError, push_error, unix_ms};
use crate::link::Message;
use crate::status::StatusReport;

impl Daemon {
    /// A command arrived: check it, run it if it passes, answer on `res`, and report it.
    pub(super) fn command(&mut self, payload: &[u8], retained: bool) -> Result<(), RunError> {
        use cuntong_core::command::{Action, CommandResult, SignedCommand};
        let now = unix_ms();
        let decoded = SignedCommand::decode(payload)
            .ok()
            .and_then(|s| s.body().ok());
        let (nonce, action) = decoded
            .as_ref()
            .map_or((0, "?"), |b| (b.nonce, b.action.name()));
        let checked = match self.guard.as_mut() {
            None => Err("this terminal has no command key configured".to_owned()),
            // A retained command that already ran comes back after every reconnect.
            Some(g) if retained && decoded.as_ref().is_some_and(|b| g.already_ran(b.nonce)) => {
                return Ok(());
            }
            Some(g) => g.check(payload, now).map_err(|r| r.to_string()),
        };
        let (ok, output) = match checked {
            Err(reason) => {
                let msg = format!("command {action} refused: {reason}");
                if let Some(more) = self.log.allow("command refused") {
                    tracing::warn!("{msg}{more}");
                }
                self.with_status(|s| push_error(s, now, msg));
                self.event(Event::CommandRefused {
                    action: action.to_owned(),
                    reason: reason.clone(),
                })?;
                (false, format!("refused: {reason}"))
            }
            Ok(body) => {
                let (ok, output) = match &body.action {
                    Action::Ping => (true, "pong".to_owned()),
                    Action::Diag => {
                        let report = self.status.lock().map(|s| s.clone()).unwrap_or_default();
                        let report = StatusReport {
                            link: self.link.status(),
                            ..report
                        };
                        (true, serde_json::to_string(&report).unwrap_or_default())
                    }
                    Action::Logs => {
                        let lines = self
                            .status
                            .lock()
                            .map(|s| {
                                s.recent_errors
                                    .iter()
                                    .map(|(t, e)| format!("{t} {e}"))
                                    .collect::<Vec<_>>()
                                    .join("\n")
                            })
                            .unwrap_or_default();
                        (true, lines)
                    }
                    Action::Readiness => {
                        let checks = crate::readiness::checks(
                            &self.conference.capture_devices(),
                            &self.link.status(),
                            self.conference.thresholds(),
                            &self.cfg.data_dir,
                            self.cfg.outbox.budget_bytes,
                            body.issued_ms,
                            now,
                        );
                        let r = cuntong_core::command::Readiness::of(checks);
                        (true, serde_json::to_string(&r).unwrap_or_default())
                    }
                    Action::Reboot => match self.power.reboot() {
                        Ok(done) => (true, done),
                        Err(e) => (false, e.to_string()),
                    },
                    Action::ConfigSet { key, value } => match self.config_set(key, value) {
                        Ok(summary) => (true, summary),
                        Err(e) => (false, format!("config-set {key}: {e}")),
                    },
                    Action::Update(offer) => self.update_offer(offer)?,
                    Action::Dial { meeting, uri } => {
                        match self.conference.dial(*meeting, uri.clone()) {
                            Ok(()) => (true, format!("calling {uri} into {meeting}")),
                            Err(e) => (false, e.to_owned()),
                        }
                    }
                    _ => (false, "unknown action".to_owned()),
                };
                self.event(Event::CommandRun {
                    action: body.action.name().to_owned(),
                    ok,
                })?;
                (ok, output)
            }
        };
        let result = CommandResult { nonce, ok, output };
        let topic = Topic::terminal(&self.cfg.id, Channel::Result).to_string();
        if let Ok(bytes) = encode(&result) {
            let _ = self.link.try_publish(Message::new(topic, bytes).urgent());
        }
        Ok(())
    }

    /// Changes one key of the configuration file; applies it now where the daemon can.
    pub(super) fn config_set(
        &mut self,
        key: &str,
        value: &str,
    ) -> Result<String, crate::remote_config::SetError> {
        let Some(path) = self.cfg.source.clone() else {
            return Err(crate::remote_config::SetError::NoFile);
        };
        let change = crate::remote_config::set(&path, key, value)?;
        tracing::info!("{}", change.summary);
        if change.applies == crate::remote_config::Applies::Now {
            self.cfg.health_interval = change.config.health_interval;
            self.cfg.metrics = change.config.metrics;
            self.apply_sampling();
        }
        Ok(change.summary)
    }
}
