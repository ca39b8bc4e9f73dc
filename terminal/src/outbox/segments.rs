//! The outbox's segment files: a new one started when the last is full, spent ones deleted,
//! and the oldest dropped when the outbox is over its byte budget, their events carried over.

use super::*;

impl Outbox {
    pub(super) fn roll(&mut self) -> Result<(), OutboxError> {
        self.flush()?;
        // Past every segment a renumbering moves, even when those are gone already.
        let past_moved = self.state.moved.iter().map(|m| m.1 + 1).max().unwrap_or(0);
        let id = self.segments.back().map_or(0, |s| s.id + 1).max(past_moved);
        let path = self.segment_path(id);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(self.io(&path))?;
        self.disk.sync_dir(&self.dir)?;
        self.active = Some(file);
        self.segments.push_back(Segment {
            id,
            path,
            bytes: 0,
            live: 0,
        });
        Ok(())
    }

    /// Deletes fully confirmed segments (never the one being appended to).
    pub(super) fn release_empty_segments(&mut self) -> Result<(), OutboxError> {
        let active = if self.active.is_some() {
            self.segments.back().map(|s| s.id)
        } else {
            None
        };
        let mut kept = VecDeque::with_capacity(self.segments.len());
        while let Some(seg) = self.segments.pop_front() {
            if seg.live == 0 && Some(seg.id) != active {
                self.disk.remove(seg.path.clone())?;
                self.bytes -= seg.bytes;
            } else {
                kept.push_back(seg);
            }
        }
        self.segments = kept;
        Ok(())
    }

    /// Drops the oldest segments while the outbox is over budget. Telemetry in them is lost
    /// (and reported); events are carried over into the newest segment, since they are small
    /// and one of them is what tells central about the loss.
    pub(super) fn enforce_budget(&mut self) -> Result<Vec<DroppedRange>, OutboxError> {
        let mut dropped: Vec<DroppedRange> = Vec::new();
        let mut carried: Vec<(u64, Record)> = Vec::new();
        let mut doomed: Vec<Segment> = Vec::new();
        let mut freed = 0u64;
        let candidates: Vec<u64> = self
            .segments
            .iter()
            .take(self.segments.len().saturating_sub(1))
            .map(|g| g.id)
            .collect();
        for id in candidates {
            if self.bytes - freed <= self.cfg.budget_bytes {
                break;
            }
            let Some(pos) = self.segments.iter().position(|g| g.id == id) else {
                continue;
            };
            let Some(seg) = self.segments.remove(pos) else {
                continue;
            };
            let seqs: Vec<u64> = self.records[0]
                .iter()
                .filter(|(_, r)| r.segment == id)
                .map(|(q, _)| *q)
                .collect();
            if let (Some(&first), Some(&last)) = (seqs.first(), seqs.last()) {
                let mut count = 0u64;
                for q in &seqs {
                    self.records[0].remove(q);
                    // A record that went out may well be stored already: it is not a loss.
                    if !self.sent.remove(q) {
                        count += 1;
                    }
                }
                self.state.dropped_upto[0] = self.state.dropped_upto[0].max(last);
                self.state.dropped_total += count;
                match dropped.iter_mut().find(|d| d.last + 1 == first) {
                    Some(d) => {
                        d.last = last;
                        d.count += count;
                    }
                    None => dropped.push(DroppedRange {
                        stream: Stream::Telemetry,
                        first,
                        last,
                        count,
                    }),
                }
            }
            let events: Vec<u64> = self.records[1]
                .iter()
                .filter(|(_, r)| r.segment == id)
                .map(|(q, _)| *q)
                .collect();
            for q in events {
                if let Some(r) = self.records[1].remove(&q) {
                    carried.push((q, r));
                }
            }
            freed += seg.bytes;
            doomed.push(seg);
        }
        // Carried events are durable in their new place before their old one goes.
        for (seq, r) in &carried {
            self.write_record(Stream::Events, *seq, r.time_ms, &r.payload)?;
        }
        if !carried.is_empty() {
            self.unsynced = true;
            self.flush()?;
        }
        for seg in doomed {
            self.disk.remove(seg.path.clone())?;
            self.bytes -= seg.bytes;
        }
        if !dropped.is_empty() {
            self.write_state()?;
        }
        Ok(dropped)
    }
}
