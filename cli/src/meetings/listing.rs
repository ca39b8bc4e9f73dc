//! Sessions as `meeting list` and `meeting status` show them, page by page, and the sessions
//! read back from the store when central starts, usable or not.

use super::*;

/// A session as `list` shows it.
pub fn meeting_json(h: &Host) -> MeetingJson {
    let s = h.state();
    MeetingJson {
        id: s.spec.id.to_string(),
        title: s.spec.title.clone(),
        kind: s.spec.kind.as_str().to_owned(),
        status: s.status.as_str().to_owned(),
        version: s.version,
        invited: s.spec.invitees.iter().map(|i| i.to_string()).collect(),
        chair: s.spec.chair.map(|c| c.to_string()),
        joined: h
            .sites()
            .values()
            .filter(|r| r.phase == cuntong_core::meeting::host::SitePhase::Joined)
            .count(),
        created: rfc3339_ms(h.created_ms()),
        starts: s.spec.starts_ms.map(rfc3339_ms),
        problem: None,
    }
}

/// A stored row as a session central can host, or as `list` shows one it cannot: status
/// `unusable`, with its problem.
pub(super) fn restore(row: StoredMeeting) -> Result<(MeetingId, Host), Box<MeetingJson>> {
    let id_text = match &row.id {
        Column::Value(t) | Column::Odd(t) => t.clone(),
    };
    let unusable = |problem: String, host: Option<&Host>| {
        let json = match host {
            Some(h) => meeting_json(h),
            None => MeetingJson {
                id: id_text.clone(),
                title: String::new(),
                kind: String::new(),
                status: String::new(),
                version: 0,
                invited: Vec::new(),
                chair: None,
                joined: 0,
                created: match &row.created_ms {
                    Column::Value(ms) => rfc3339_ms(u64::try_from(*ms).unwrap_or(0)),
                    Column::Odd(text) => text.clone(),
                },
                starts: None,
                problem: None,
            },
        };
        Box::new(MeetingJson {
            id: id_text.clone(),
            status: "unusable".into(),
            problem: Some(problem),
            ..json
        })
    };
    let Column::Value(text) = &row.id else {
        return Err(unusable("its id is not text".into(), None));
    };
    let mid = MeetingId::from_str(text).map_err(|e| unusable(format!("bad id: {e}"), None))?;
    let Column::Value(blob) = &row.record else {
        return Err(unusable("no session record".into(), None));
    };
    let host = Host::from_store(blob)
        .map_err(|e| unusable(format!("the record no longer decodes: {e}"), None))?;
    let problem = if host.created_ms() > LAST_MS {
        Some(format!(
            "created at {} ms, past year 9999",
            host.created_ms()
        ))
    } else {
        match host.state().spec.starts_ms {
            Some(at) if at > LAST_MS => Some(format!("scheduled at {at} ms, past year 9999")),
            _ => None,
        }
    };
    match problem {
        Some(p) => Err(unusable(p, Some(&host))),
        None => Ok((mid, host)),
    }
}

/// The page of `items` after `after` (at most [`PAGE`], those `keep` keeps), and the cursor
/// of the next page. It walks the map from the cursor: a page costs the same whether it is
/// the first or the last of a province's 54,000 sites.
pub(super) fn page<V>(
    items: &BTreeMap<TerminalId, V>,
    keep: impl Fn(&TerminalId) -> bool,
    after: Option<TerminalId>,
) -> (Vec<(&TerminalId, &V)>, Option<TerminalId>) {
    use std::ops::Bound;
    let from = after.map_or(Bound::Unbounded, Bound::Excluded);
    let mut rows = items
        .range((from, Bound::Unbounded))
        .filter(|(t, _)| keep(t))
        .take(PAGE + 1);
    let out: Vec<_> = rows.by_ref().take(PAGE).collect();
    let next = rows.next().and(out.last().map(|(t, _)| **t));
    (out, next)
}

/// Cuts a page's `rows` (in terminal order; `terminal` names each) to the first that fit in
/// [`PAGE_BYTES`] of JSON, one at least; if it cut any, the next page starts after the last
/// kept. Names and media plans make rows long: a page of short ones holds more sites.
pub(super) fn fit<T: serde::Serialize>(
    rows: &mut Vec<T>,
    next: &mut Option<TerminalId>,
    terminal: impl Fn(&T) -> &str,
) {
    // The brackets, and a comma after each row but the last.
    let mut bytes = 1;
    let keep = rows
        .iter()
        .take_while(|r| {
            bytes += serde_json::to_vec(r).map_or(PAGE_BYTES, |v| v.len() + 1);
            bytes <= PAGE_BYTES
        })
        .count()
        .max(1);
    if keep < rows.len() {
        rows.truncate(keep);
        *next = rows.last().and_then(|r| terminal(r).parse().ok());
    }
}

/// A session with a page of its sites (those after `after`), as `status` shows it.
pub fn status(h: &Host, after: Option<TerminalId>) -> MeetingStatus {
    let s = h.state();
    let (sites, next) = page(h.sites(), |_| true, after);
    MeetingStatus {
        meeting: meeting_json(h),
        floor: s.floor.map(|t| t.to_string()),
        broadcast: s.broadcast.map(|t| t.to_string()),
        mute_all: s.mute_all,
        hands: s.hands.iter().map(|t| t.to_string()).collect(),
        roll_call: s.roll_call.map(|r| r.number),
        layout: h.layout().map(|l| l.to_string()),
        content: h.content().map(|(t, _)| t.to_string()),
        recording: None,
        next,
        sites: sites
            .iter()
            .map(|(t, r)| SiteJson {
                terminal: t.to_string(),
                name: String::new(),
                state: r.phase.as_str().to_owned(),
                role: s.role_of(t).as_str().to_owned(),
                muted: s.is_muted(t),
                last_answer: r.answer.map(|a| rfc3339_ms(a.answered_ms)),
                converged: h.converged(t),
                media: None,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_of_long_rows_is_cut_to_fit_a_message_and_the_next_starts_after_its_last_row() {
        let row = |n: usize, name_chars: usize| RollCallJson {
            terminal: format!("130102001{n:03}-main"),
            name: "村".repeat(name_chars),
            present: true,
            latency_ms: Some(1234),
        };
        // Short rows: the page stays whole.
        let mut rows: Vec<RollCallJson> = (1..=200).map(|n| row(n, 4)).collect();
        let mut next = Some("130102001999-main".parse().unwrap());
        fit(&mut rows, &mut next, |r| &r.terminal);
        assert_eq!(rows.len(), 200);
        assert_eq!(next, Some("130102001999-main".parse().unwrap()));
        // Long names: cut within the budget; the next page starts after the last row kept.
        let mut rows: Vec<RollCallJson> = (1..=900).map(|n| row(n, 60)).collect();
        let mut next = None;
        fit(&mut rows, &mut next, |r| &r.terminal);
        assert!(rows.len() < 900);
        let bytes = serde_json::to_vec(&rows).unwrap().len();
        assert!(bytes <= PAGE_BYTES, "{bytes}");
        assert_eq!(
            next.map(|t| t.to_string()),
            Some(rows.last().unwrap().terminal.clone())
        );
        // One row larger than the budget still goes, alone.
        let mut rows = vec![row(1, 20_000), row(2, 1)];
        let mut next = None;
        fit(&mut rows, &mut next, |r| &r.terminal);
        assert_eq!(rows.len(), 1);
        assert_eq!(next.map(|t| t.to_string()), Some(rows[0].terminal.clone()));
    }

    #[test]
    fn pages_cover_every_site_once_in_order() {
        let ids: BTreeMap<TerminalId, usize> = (1..=2 * PAGE + PAGE / 4)
            .map(|i| {
                let t = format!("130102{:03}{:03}-main", 1 + i / 999, 1 + i % 999);
                (t.parse().unwrap(), i)
            })
            .collect();
        for (keep_every, pages_expected) in [(1, 3), (2, 2), (3, 1)] {
            let keep = |t: &TerminalId| ids[t].is_multiple_of(keep_every);
            let mut seen = Vec::new();
            let mut after = None;
            let mut pages = 0;
            loop {
                let (items, next) = page(&ids, keep, after);
                seen.extend(items.iter().map(|(t, _)| **t));
                pages += 1;
                match next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            assert_eq!(pages, pages_expected, "keeping every {keep_every}");
            let want: Vec<TerminalId> = ids.keys().filter(|t| keep(t)).copied().collect();
            assert_eq!(seen, want);
        }
        assert_eq!(
            page(&BTreeMap::<TerminalId, ()>::new(), |_| true, None),
            (Vec::new(), None)
        );
    }
}
