//! What the daemon's event loop does with each thing that happens.

use cuntong_core::envelope::Event;
use cuntong_core::telemetry::Metric;
use cuntong_core::topic::{Channel, Topic};

use super::{Daemon, RunError, unix_ms};
use crate::hj212::Hj212Stats;
use crate::sensors::SensorError;
use crate::status;

/// The terminal's own downlink topics (meeting topics are the conference's).
pub(super) struct Downlinks {
    ack: String,
    command: String,
    notice: String,
}

impl Downlinks {
    pub(super) fn of(id: &cuntong_core::terminal_id::TerminalId) -> Downlinks {
        let topic = |c| Topic::terminal(id, c).to_string();
        Downlinks {
            ack: topic(Channel::Ack),
            command: topic(Channel::Command),
            notice: topic(Channel::Notice),
        }
    }
}

/// What the event loop does with each thing that happens: one handler each, and after every
/// one [`Daemon::send_due`].
impl Daemon {
    /// The link came up (everything unconfirmed goes again, the meeting catches up) or went.
    pub(super) fn on_link(&mut self, up: bool) {
        if up {
            self.delivery.link_up(unix_ms());
            let msgs = self.conference.reconnected(unix_ms());
            self.meeting_out(msgs);
        } else {
            self.delivery.link_down();
        }
    }

    /// The duty button was held: the duty report it stands for.
    pub(super) fn on_duty_button(&mut self, kind: String, text: String) {
        match self.duty_report(kind, text) {
            Ok(line) => tracing::info!("duty button: {line}"),
            Err(e) => tracing::error!("duty button: {e}"),
        }
    }

    /// The meetings' heartbeat, with the link's quality.
    pub(super) fn on_meeting_tick(&mut self) {
        let (rtt_ms, loss_percent) = self.link.quality();
        let msgs = self.conference.tick(unix_ms(), rtt_ms, loss_percent);
        self.meeting_out(msgs);
    }

    /// A request on the status socket: its answer.
    pub(super) fn on_request(
        &mut self,
        req: status::LocalRequest,
    ) -> Result<String, status::Refusal> {
        match req {
            status::LocalRequest::Conference(r) => {
                self.conference.operator(r, unix_ms()).map(|(line, msgs)| {
                    self.meeting_out(msgs);
                    line
                })
            }
            status::LocalRequest::DutyReport { kind, text } => self.duty_report(kind, text),
        }
    }

    /// The health round: the box's `readings` with the link's, the outbox's, the meetings' and
    /// the HJ 212 listener's figures.
    pub(super) fn on_health(&mut self, mut readings: Vec<(Metric, f64)>, hj: &Hj212Stats) {
        let now = unix_ms();
        let l = self.link.status();
        if let Some(rtt) = l.rtt_ms {
            readings.push((Metric::LinkRtt, rtt));
        }
        readings.push((Metric::LinkLoss, l.ping_loss_percent));
        readings.push((Metric::OutboxDepth, self.outbox.len() as f64));
        readings.push((Metric::Dropped, self.outbox.dropped_total() as f64));
        readings.extend(self.conference.media_sample());
        readings.push((Metric::MeetingsJoined, self.conference.joined() as f64));
        if self.cfg.hj212.is_some() {
            let frames = hj.frames.load(std::sync::atomic::Ordering::Relaxed);
            let bad = hj.bad_frames.load(std::sync::atomic::Ordering::Relaxed);
            readings.push((Metric::Hj212Frames, frames as f64));
            readings.push((Metric::Hj212Bad, bad as f64));
        }
        self.offer(&readings, now);
    }

    /// Sensor `index` (`name`) was read: its readings, or the first fault of a run of them and
    /// the recovery after it as events.
    pub(super) fn on_sensor(
        &mut self,
        index: usize,
        name: String,
        result: Result<Vec<(Metric, f64)>, SensorError>,
    ) -> Result<(), RunError> {
        let now = unix_ms();
        match result {
            Ok(readings) => {
                let recovered = self.sensor_ok(index, &readings, now);
                self.offer(&readings, now);
                if recovered {
                    self.event(Event::SensorRecovered { sensor: name })?;
                }
            }
            Err(e) => {
                let detail = e.to_string();
                if self.sensor_failed(index, &detail, now) {
                    tracing::warn!(sensor = %name, error = %detail, "sensor fault");
                    self.event(Event::SensorFault {
                        sensor: name,
                        detail,
                    })?;
                }
            }
        }
        Ok(())
    }

    /// A message from the broker: central's watermarks, a command, a notice, or the meetings'.
    pub(super) fn on_message(
        &mut self,
        m: &crate::link::Incoming,
        topics: &Downlinks,
    ) -> Result<(), RunError> {
        if m.topic == topics.ack {
            self.confirmed(&m.payload, m.retain)?;
        } else if m.topic == topics.command && !m.payload.is_empty() {
            self.command(&m.payload, m.retain)?;
        } else if m.topic == topics.notice {
            self.notice(&m.payload);
        } else if !self.conference_message(m) {
            tracing::debug!(topic = %m.topic, bytes = m.payload.len(), "received");
        }
        Ok(())
    }

    /// After everything that happened: certificate and update checks, then what is due is
    /// recorded in the outbox and handed to the link.
    pub(super) fn send_due(&mut self) -> Result<(), RunError> {
        self.check_tls()?;
        self.update_tick()?;
        self.flush(false)?;
        self.pump();
        Ok(())
    }
}
