//! The daemon's records on their way to central: appended to the outbox, handed to the link as
//! delivery allows, confirmed by central's watermarks, and (a new box's held numbering)
//! renumbered when central holds what it would clash with.

use cuntong_core::delivery::{Confirmation, Delivery, Watermarks, held_upto};
use cuntong_core::envelope::{Envelope, Event, Stream, encode};
use cuntong_core::topic::Topic;

use super::{Daemon, OUTBOX_FIGURES, RunError, push_error, unix_ms};
use crate::link::Message;
use crate::outbox::{DroppedRange, Numbering, Outbox};
use crate::status::OutboxReport;

/// The delivery state of what `outbox` holds (at start, and after a renumbering): its
/// numbering, confirmations, waiting records and hold.
pub(super) fn delivery_of(
    outbox: &Outbox,
    cfg: cuntong_core::delivery::DeliveryConfig,
    now_ms: u64,
) -> Delivery {
    let mut delivery = Delivery::new(cfg, now_ms);
    for stream in Stream::ALL {
        delivery.assigned_upto(stream, outbox.next_seq(stream).saturating_sub(1));
        delivery.confirmed(stream, outbox.confirmed(stream), now_ms);
        for (seq, _) in outbox.pending(stream) {
            delivery.queued(stream, seq);
        }
    }
    if let Some(events) = outbox.holding() {
        delivery.hold(Stream::Events, Some(events));
        let telemetry = held_upto(Stream::Telemetry, outbox.first_seq(Stream::Telemetry));
        delivery.hold(Stream::Telemetry, Some(telemetry));
    }
    delivery
}

impl Daemon {
    /// Records every batch that is due (all pending ones if `all`) in the outbox.
    pub(super) fn flush(&mut self, all: bool) -> Result<(), RunError> {
        while (all && !self.batcher.is_empty()) || self.batcher.is_due(unix_ms()) {
            let Some((time_ms, body)) = self.batcher.take() else {
                break;
            };
            let payload = |seq| {
                encode(&Envelope {
                    seq,
                    time_ms,
                    body: &body,
                })
            };
            self.record(Stream::Telemetry, time_ms, payload)?;
        }
        self.refresh_outbox_status();
        Ok(())
    }

    pub(super) fn event(&mut self, event: Event) -> Result<(), RunError> {
        let time_ms = unix_ms();
        let payload = |seq| {
            encode(&Envelope {
                seq,
                time_ms,
                body: &event,
            })
        };
        self.record(Stream::Events, time_ms, payload)
    }

    /// Appends a record (its payload built for the seq the outbox assigns) and queues it for
    /// delivery. Anything the append pushed out of a full outbox is reported as an event.
    pub(super) fn record(
        &mut self,
        stream: Stream,
        time_ms: u64,
        payload: impl Fn(u64) -> Result<Vec<u8>, cuntong_core::envelope::EncodeError>,
    ) -> Result<(), RunError> {
        let bytes = payload(self.outbox.next_seq(stream))?;
        let (seq, dropped) = self.outbox.append(stream, time_ms, &bytes)?;
        self.delivery.queued(stream, seq);
        self.report_dropped(&dropped, "outbox full: dropped unsent")
    }

    /// Tells delivery, the log, the status and central about records that left unsent.
    pub(super) fn report_dropped(
        &mut self,
        ranges: &[DroppedRange],
        why: &str,
    ) -> Result<(), RunError> {
        for d in ranges {
            self.delivery.dropped_upto(d.stream, d.last);
            let msg = format!(
                "{why} {} records of {} (seq {}..={}), reported as dropped",
                d.count,
                d.stream.as_str(),
                d.first,
                d.last
            );
            tracing::warn!("{msg}");
            self.with_status(|s| push_error(s, unix_ms(), msg));
            self.event(Event::Dropped {
                stream: d.stream,
                first: d.first,
                last: d.last,
            })?;
        }
        Ok(())
    }

    /// Central's watermarks arrived (`retained`: the copy the broker kept, not central's
    /// answer just now): confirmed records leave the outbox. A watermark beyond the last seq
    /// ever numbered is refused and reported; one beyond a held numbering is a predecessor's,
    /// and the numbering moves above it; one that reaches the held numbering's announcements
    /// releases it.
    pub(super) fn confirmed(&mut self, payload: &[u8], retained: bool) -> Result<(), RunError> {
        let marks = match Watermarks::decode(payload) {
            Ok(m) => m,
            Err(e) => {
                if let Some(more) = self.log.allow("malformed acknowledgement") {
                    tracing::warn!(error = %e, "ignoring a malformed acknowledgement{more}");
                }
                return Ok(());
            }
        };
        if !retained {
            self.delivery.central_answered();
        }
        for stream in Stream::ALL {
            let watermark = marks.get(stream);
            match self.delivery.confirmed(stream, watermark, unix_ms()) {
                Confirmation::Advanced => {
                    self.outbox.confirm(stream, watermark)?;
                }
                Confirmation::Stale => {}
                Confirmation::Clash { watermark } => {
                    // Beyond any numbering there can be: forged, not a predecessor's.
                    if !self.renumber(stream, watermark, "its watermark")? {
                        let assigned = self.delivery.assigned(stream);
                        self.ack_refused(stream, watermark, assigned)?;
                    }
                }
                Confirmation::Beyond { assigned } => {
                    self.ack_refused(stream, watermark, assigned)?
                }
            }
        }
        // Central has the announcements (after any renumbering they follow): it agreed.
        if let Some(upto) = self.outbox.holding()
            && self.delivery.watermark(Stream::Events) >= upto
        {
            self.outbox.release()?;
            self.delivery.hold(Stream::Events, None);
            self.delivery.hold(Stream::Telemetry, None);
            tracing::info!("central agreed to the numbering: everything waiting goes");
        }
        self.refresh_outbox_status();
        Ok(())
    }

    /// A watermark beyond the last seq ever numbered: refused, and reported as a security
    /// event (one a minute per stream at most: a retained forgery comes back at every
    /// reconnect).
    pub(super) fn ack_refused(
        &mut self,
        stream: Stream,
        watermark: u64,
        assigned: u64,
    ) -> Result<(), RunError> {
        let Some(more) = self.log.allow(&format!("ack refused {}", stream.as_str())) else {
            return Ok(());
        };
        let event = Event::AckRefused {
            stream,
            watermark,
            assigned,
        };
        let msg = format!("acknowledgement refused: {event}");
        tracing::warn!("{msg}{more}");
        self.with_status(|s| push_error(s, unix_ms(), msg));
        self.event(event)
    }

    /// Central holds seqs of `stream` up to `highest` under this id that this box never sent
    /// (a predecessor's, when this box's clock was behind): the held numbering moves above
    /// them (and the events' past every seq given), announced again at the front of the
    /// events. False if it cannot move (not held, or beyond any numbering there can be).
    pub(super) fn renumber(
        &mut self,
        stream: Stream,
        highest: u64,
        why: &str,
    ) -> Result<bool, RunError> {
        let above = highest.saturating_add(1);
        let before = Numbering {
            telemetry: self.outbox.first_seq(Stream::Telemetry),
            events: self.outbox.first_seq(Stream::Events),
        };
        let mut first = Numbering {
            telemetry: before.telemetry,
            events: self.outbox.next_seq(Stream::Events),
        };
        match stream {
            Stream::Telemetry => first.telemetry = first.telemetry.max(above),
            _ => first.events = first.events.max(above),
        }
        let time_ms = unix_ms();
        let announce = |seq, stream, first| {
            encode(&Envelope {
                seq,
                time_ms,
                body: Event::NumberingFrom { stream, first },
            })
        };
        let announcements = [
            announce(first.events, Stream::Events, first.events)?,
            announce(first.events + 1, Stream::Telemetry, first.telemetry)?,
        ];
        let [events, telemetry] = &announcements;
        if !self.outbox.renumber(first, [events, telemetry])? {
            return Ok(false);
        }
        tracing::warn!(
            stream = stream.as_str(),
            ?before,
            ?first,
            "central holds seqs at or above this box's numbering under its id ({why} says {highest}): renumbered above them"
        );
        self.delivery = delivery_of(&self.outbox, self.cfg.delivery, time_ms);
        if self.link.is_connected() {
            self.delivery.link_up(time_ms);
        }
        self.refresh_outbox_status();
        Ok(true)
    }

    /// Hands the link whatever delivery says is due now.
    pub(super) fn pump(&mut self) {
        let now = unix_ms();
        while let Some((stream, seq)) = self.delivery.next_send(now) {
            let Some(record) = self.outbox.get(stream, seq) else {
                continue;
            };
            // A renumbered record still carries the seq it was written with.
            let payload = match cuntong_core::envelope::with_seq(&record.payload, seq) {
                Ok(p) => p.into_owned(),
                Err(e) => {
                    tracing::warn!(stream = stream.as_str(), seq, error = %e, "an outbox record is no envelope: sent as it is");
                    record.payload.clone()
                }
            };
            let topic = Topic::terminal(&self.cfg.id, stream.channel()).to_string();
            let msg = Message::new(topic, payload);
            if self.link.try_publish(msg).is_err() {
                // The link's queue is full: the record stays in the outbox for later.
                self.delivery.not_sent(stream, seq);
                break;
            }
            self.outbox.mark_sent(stream, seq);
        }
    }

    /// Brings the status report's outbox part up to date. It runs after everything the loop
    /// handles, so the report is rebuilt only when a figure in it changed.
    pub(super) fn refresh_outbox_status(&mut self) {
        let mut figures = [0; OUTBOX_FIGURES];
        let streams = Stream::ALL.iter().flat_map(|s| {
            [
                self.outbox.first_seq(*s),
                self.outbox.next_seq(*s),
                self.outbox.confirmed(*s),
            ]
        });
        let totals = [
            self.outbox.len() as u64,
            self.outbox.bytes(),
            self.outbox.dropped_total(),
        ];
        for (slot, value) in figures.iter_mut().zip(totals.into_iter().chain(streams)) {
            *slot = value;
        }
        if self.outbox_reported == Some(figures) {
            return;
        }
        self.outbox_reported = Some(figures);
        let report = OutboxReport {
            depth: self.outbox.len(),
            bytes: self.outbox.bytes(),
            dropped: self.outbox.dropped_total(),
            first_seq: Stream::ALL
                .iter()
                .map(|s| (s.as_str().to_owned(), self.outbox.first_seq(*s)))
                .collect(),
            next_seq: Stream::ALL
                .iter()
                .map(|s| (s.as_str().to_owned(), self.outbox.next_seq(*s)))
                .collect(),
            confirmed: Stream::ALL
                .iter()
                .map(|s| (s.as_str().to_owned(), self.outbox.confirmed(*s)))
                .collect(),
        };
        self.with_status(|s| s.outbox = report);
    }
}
