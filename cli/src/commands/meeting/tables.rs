//! What `cuntong meeting …` prints for people: the status, roll-call and list tables, and the
//! lines of `meeting watch`.

use std::collections::BTreeMap;

use crate::control::{MeetingJson, MeetingStatus, RollCallJson, SiteJson};
use crate::view::pad;

/// `meeting status` for people.
pub fn status_table(s: &MeetingStatus) -> String {
    let m = &s.meeting;
    let mut out = format!(
        "{} {} \"{}\" {} (v{}), {} joined of {} known\n",
        m.id,
        m.kind,
        m.title,
        m.status,
        m.version,
        m.joined,
        s.sites.len()
    );
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    out.push_str(&format!(
        "floor {}  broadcast {}  mute-all {}  hands {}  roll call {}  layout {}\n",
        or_dash(&s.floor),
        or_dash(&s.broadcast),
        if s.mute_all { "on" } else { "off" },
        if s.hands.is_empty() {
            "-".to_owned()
        } else {
            s.hands.join(",")
        },
        s.roll_call.map_or("-".to_owned(), |n| format!("#{n}")),
        s.layout.as_deref().unwrap_or("each box's own"),
    ));
    if let Some(c) = &s.content {
        out.push_str(&format!("content from {c}\n"));
    }
    if let Some(r) = &s.recording {
        out.push_str(&format!("recording to {r}\n"));
    }
    out.push_str(&format!(
        "{:<20} {} {:<12} {:<12} {:<6} {:<25} {}\n",
        "TERMINAL",
        pad("NAME", 16),
        "STATE",
        "ROLE",
        "MUTED",
        "LAST ANSWER",
        "MEDIA"
    ));
    for site in &s.sites {
        let media = site.media.as_ref().map_or("-".to_owned(), |m| {
            format!(
                "in {:.0} / out {:.0} kbit/s, {} stream(s), {:.1} % lost, {:.0} ms jitter",
                m.rx_kbps, m.tx_kbps, m.streams, m.loss_percent, m.jitter_ms
            )
        });
        out.push_str(&format!(
            "{:<20} {} {:<12} {:<12} {:<6} {:<25} {}\n",
            site.terminal,
            pad(&site.name, 16),
            site.state,
            site.role,
            if site.muted { "yes" } else { "no" },
            or_dash(&site.last_answer),
            media
        ));
    }
    out
}

/// `meeting rollcall` for people.
pub fn roll_call_table(rows: &[RollCallJson]) -> String {
    let present = rows.iter().filter(|r| r.present).count();
    let mut latencies: Vec<u64> = rows.iter().filter_map(|r| r.latency_ms).collect();
    latencies.sort_unstable();
    let pct = |p: f64| quantile(&latencies, p).map_or("-".to_owned(), |v| format!("{v} ms"));
    let mut out = format!(
        "{present} of {} present; answer time p50 {} p99 {}\n",
        rows.len(),
        pct(0.5),
        pct(0.99)
    );
    out.push_str(&format!(
        "{:<20} {:<8} {:<10} {}\n",
        "TERMINAL", "PRESENT", "LATENCY", "NAME"
    ));
    for r in rows {
        out.push_str(&format!(
            "{:<20} {:<8} {:<10} {}\n",
            r.terminal,
            if r.present { "yes" } else { "NO" },
            r.latency_ms.map_or("-".to_owned(), |l| format!("{l} ms")),
            r.name
        ));
    }
    out
}

/// The `p` quantile (0 to 1) of sorted values, nearest rank.
pub fn quantile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied()
}

/// `meeting list` for people.
pub fn list_table(rows: &[MeetingJson]) -> String {
    let mut out = format!(
        "{:<18} {:<9} {:<10} {:>6}  {:<24} {}\n",
        "ID", "KIND", "STATUS", "JOINED", "CREATED", "TITLE"
    );
    for m in rows {
        out.push_str(&format!(
            "{:<18} {:<9} {:<10} {:>6}  {:<24} {}",
            m.id, m.kind, m.status, m.joined, m.created, m.title
        ));
        if let Some(p) = &m.problem {
            out.push_str(&format!(
                " (cannot be used: {p}; `meeting end {}` retires it)",
                m.id
            ));
        }
        out.push('\n');
    }
    out
}

/// What changed between two snapshots of a session, one line per change (for `watch`).
pub fn changes(before: Option<&MeetingStatus>, now: &MeetingStatus) -> Vec<String> {
    let mut out = Vec::new();
    let old: BTreeMap<&str, &SiteJson> = before
        .map(|b| b.sites.iter().map(|s| (s.terminal.as_str(), s)).collect())
        .unwrap_or_default();
    for s in &now.sites {
        match old.get(s.terminal.as_str()) {
            Some(o) if o.state == s.state && o.last_answer == s.last_answer => {}
            Some(o) if o.state == s.state => out.push(format!(
                "{} answered the roll call at {}",
                s.terminal,
                s.last_answer.clone().unwrap_or_default()
            )),
            _ => out.push(format!("{} {}", s.terminal, s.state)),
        }
    }
    let old_hands: Vec<&String> = before.map(|b| b.hands.iter().collect()).unwrap_or_default();
    for h in &now.hands {
        if !old_hands.contains(&h) {
            out.push(format!("{h} raised a hand"));
        }
    }
    if before.is_none_or(|b| b.floor != now.floor)
        && let Some(f) = &now.floor
    {
        out.push(format!("{f} has the floor"));
    }
    if before.is_none_or(|b| b.meeting.status != now.meeting.status) {
        out.push(format!("session {}", now.meeting.status));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(sites: Vec<SiteJson>, hands: Vec<String>) -> MeetingStatus {
        MeetingStatus {
            meeting: MeetingJson {
                id: "m1".into(),
                title: "t".into(),
                kind: "meeting".into(),
                status: "live".into(),
                version: 3,
                invited: vec!["130102".into()],
                chair: None,
                joined: 1,
                created: "2026-12-01T08:00:00.000Z".into(),
                starts: None,
                problem: None,
            },
            floor: None,
            broadcast: None,
            mute_all: false,
            hands,
            roll_call: None,
            layout: None,
            content: None,
            recording: None,
            sites,
            next: None,
        }
    }

    fn site(state: &str, answer: Option<&str>) -> SiteJson {
        SiteJson {
            terminal: "130102001001-main".into(),
            name: "棉一东社区居民委员会".into(),
            state: state.into(),
            role: "participant".into(),
            muted: false,
            last_answer: answer.map(str::to_owned),
            converged: true,
            media: None,
        }
    }

    #[test]
    fn watch_lines_name_joins_answers_and_hands() {
        let a = status(vec![site("invited", None)], vec![]);
        let b = status(vec![site("joined", None)], vec!["130102001001-main".into()]);
        let c = status(
            vec![site("joined", Some("2026-12-01T08:00:01.000Z"))],
            vec!["130102001001-main".into()],
        );
        assert_eq!(
            changes(Some(&a), &b),
            [
                "130102001001-main joined",
                "130102001001-main raised a hand"
            ]
        );
        assert_eq!(
            changes(Some(&b), &c),
            ["130102001001-main answered the roll call at 2026-12-01T08:00:01.000Z"]
        );
        assert!(changes(Some(&c), &c).is_empty());
    }

    #[test]
    fn the_roll_call_table_gives_percentiles() {
        let rows: Vec<RollCallJson> = (0..100)
            .map(|i| RollCallJson {
                terminal: format!("130102001{i:03}-main"),
                name: String::new(),
                present: i < 99,
                latency_ms: (i < 99).then_some(i as u64 * 10),
            })
            .collect();
        let t = roll_call_table(&rows);
        assert!(
            t.starts_with("99 of 100 present; answer time p50 490 ms p99 970 ms"),
            "{t}"
        );
    }
}
