//! Opening an outbox: its state file and segments read back, every intact record kept, a torn
//! or corrupted tail cut off and reported, and a watermark beyond what was numbered set back.

use super::*;

impl Outbox {
    /// Opens (or creates) the outbox in `dir`, recovering every intact record.
    pub fn open(dir: &Path, cfg: OutboxConfig) -> Result<(Outbox, OpenReport), OutboxError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| OutboxError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let state = read_state(&dir.join("outbox.state"))?;
        let mut ids: Vec<u64> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_prefix("seg-")?
                    .strip_suffix(".log")?
                    .parse()
                    .ok()
            })
            .collect();
        ids.sort_unstable();
        // No state and no records: this outbox is created now, and numbers from the clock.
        let state = match state {
            Some(st) => st,
            None if ids.is_empty() => State::numbering_from(clock_ms()),
            None => State::default(),
        };
        let mut ob = Outbox {
            dir: dir.to_owned(),
            cfg,
            segments: VecDeque::new(),
            active: None,
            records: [BTreeMap::new(), BTreeMap::new()],
            next: [1, 1],
            state,
            bytes: 0,
            sent: std::collections::BTreeSet::new(),
            unsynced: false,
            last_sync: Instant::now(),
            disk: disk::Disk::start()?,
        };
        let mut report = OpenReport::default();
        // First the intact length of each segment and the highest seq in it, then (with the
        // watermarks checked against that) the records still waiting.
        let mut max_seq = [0u64; 2];
        let mut segments = Vec::with_capacity(ids.len());
        for id in ids {
            let path = ob.segment_path(id);
            let mut data = Vec::new();
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut data))
                .map_err(io(&path))?;
            let mut pos = 0usize;
            while let Some((stream, seq, _, _, len)) = parse_record(&data[pos..]) {
                let s = idx(stream);
                max_seq[s] = max_seq[s].max(ob.state.moved(s, id, seq));
                pos += len;
            }
            if pos < data.len() {
                let cut = (data.len() - pos) as u64;
                report.damaged.push((path.clone(), pos as u64, cut));
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io(&path))?;
                f.set_len(pos as u64).map_err(io(&path))?;
                f.sync_all().map_err(io(&path))?;
                data.truncate(pos);
            }
            segments.push((id, path, data));
        }
        for (s, stream) in [(0, Stream::Telemetry), (1, Stream::Events)] {
            let st = &mut ob.state;
            // What this outbox has numbered. A state file of an older version does not say:
            // its watermark counts too, unless no terminal could have numbered that much.
            let mut assigned = max_seq[s].max(st.dropped_upto[s]).max(st.assigned[s]);
            if !st.assigned_known && st.confirmed[s] <= MAX_PLAUSIBLE_SEQ {
                assigned = assigned.max(st.confirmed[s]);
            }
            if st.confirmed[s] > assigned {
                // A forged acknowledgement an older version accepted: everything still here
                // after the last reported drop is sent again (central stores each seq once).
                report.repaired.push(RepairedWatermark {
                    stream,
                    watermark: st.confirmed[s],
                    assigned,
                });
                st.confirmed[s] = st.dropped_upto[s].min(assigned);
            }
            st.assigned[s] = assigned;
            ob.next[s] = assigned.saturating_add(1);
        }
        for (id, path, data) in segments {
            let mut pos = 0usize;
            let mut live = 0usize;
            while let Some((stream, seq, time_ms, payload, len)) = parse_record(&data[pos..]) {
                let s = idx(stream);
                let seq = ob.state.moved(s, id, seq);
                if seq > ob.state.confirmed[s] && seq > ob.state.dropped_upto[s] {
                    live += 1;
                    let record = Record {
                        time_ms,
                        payload: payload.to_vec(),
                        segment: id,
                    };
                    // An event carried over just before a crash exists twice: the newer copy
                    // counts, the older one no longer holds its segment.
                    if let Some(older) = ob.records[s].insert(seq, record) {
                        if let Some(g) = ob.segments.iter_mut().find(|g| g.id == older.segment) {
                            g.live = g.live.saturating_sub(1);
                        } else {
                            live -= 1;
                        }
                    }
                }
                pos += len;
            }
            ob.bytes += pos as u64;
            ob.segments.push_back(Segment {
                id,
                path,
                bytes: pos as u64,
                live,
            });
        }
        // Nothing numbered on the events stream since the clock start: not announced yet.
        let events = idx(Stream::Events);
        if ob.state.first[events] > 1 && ob.next[events] == ob.state.first[events] {
            report.numbering_from = [Stream::Events, Stream::Telemetry]
                .into_iter()
                .map(|s| (s, ob.state.first[idx(s)]))
                .collect();
        }
        // A damaged tail held at most this many records, of either stream. Their numbers may
        // have reached central before the damage, so none of them is handed out again.
        let cut: u64 = report.damaged.iter().map(|d| d.2).sum();
        let at_most = cut.div_ceil((HEADER + BODY_FIXED) as u64);
        if at_most > 0 {
            for (s, stream) in [(0, Stream::Telemetry), (1, Stream::Events)] {
                let first = ob.next[s];
                let last = first + at_most - 1;
                report.skipped.push(DroppedRange {
                    stream,
                    first,
                    last,
                    count: at_most,
                });
                ob.state.dropped_upto[s] = last;
                ob.state.assigned[s] = last;
                ob.next[s] = last + 1;
            }
        }
        // From here on the state says what was numbered, before any segment that showed it
        // is released.
        ob.write_state()?;
        report.records = ob.records.iter().map(BTreeMap::len).sum();
        ob.release_empty_segments()?;
        // Opened: what the opening wrote is on disk before anything else happens.
        ob.disk.settle()?;
        Ok((ob, report))
    }

    /// Checks, without changing anything, that an outbox in `dir` (if there is one) can be
    /// opened: its state file reads. (Damaged segments are repaired on open, not refused.)
    pub fn check(dir: &Path) -> Result<(), OutboxError> {
        read_state(&dir.join("outbox.state")).map(|_| ())
    }
}

/// One record at the start of `data`: (stream, seq, time, payload, total length), or `None`
/// if it is truncated or fails its CRC.
fn parse_record(data: &[u8]) -> Option<(Stream, u64, u64, &[u8], usize)> {
    let len = u32::from_le_bytes(data.get(0..4)?.try_into().ok()?) as usize;
    if !(BODY_FIXED..=MAX_RECORD).contains(&len) {
        return None;
    }
    let crc = u32::from_le_bytes(data.get(4..8)?.try_into().ok()?);
    let body = data.get(HEADER..HEADER + len)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    let stream = match body[0] {
        0 => Stream::Telemetry,
        1 => Stream::Events,
        _ => return None,
    };
    let seq = u64::from_le_bytes(body[1..9].try_into().ok()?);
    let time_ms = u64::from_le_bytes(body[9..17].try_into().ok()?);
    Some((stream, seq, time_ms, &body[BODY_FIXED..], HEADER + len))
}
