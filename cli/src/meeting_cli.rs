//! The `cuntong meeting …` and `cuntong call` clients: each command connects to the broker,
//! sends one [`Request`] to the meeting host inside `cuntong central` and waits for its
//! [`Response`]; `rollcall` and `watch` poll.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cuntong_core::topic::{control_request, control_response};
use cuntong_terminal::broker_url::BrokerUrl;
use cuntong_terminal::link::{Incoming, Link, LinkOptions, Message};
use ring::rand::SecureRandom;
use tokio::sync::mpsc;

use crate::control::{
    MeetingJson, MeetingStatus, Request, RequestBody, Response, ResponseBody, RollCallJson,
};
use crate::view::pad;

/// A connection to the meeting host.
#[derive(Debug)]
pub struct CentralClient {
    link: Link,
    incoming: mpsc::Receiver<Incoming>,
    client: String,
    next: u64,
}

impl CentralClient {
    /// Connects; the client's answers arrive on its own response topic.
    pub async fn connect(
        broker: BrokerUrl,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<CentralClient, String> {
        let mut salt = [0u8; 4];
        ring::rand::SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| "no randomness for the client id".to_owned())?;
        let client = format!(
            "cuntong-meeting-{}-{:08x}",
            std::process::id(),
            u32::from_le_bytes(salt)
        );
        let mut opts = LinkOptions::new(client.clone(), broker);
        opts.tls = tls;
        opts.subscriptions = vec![control_response(&client)];
        let (link, incoming) = Link::connect(opts, Duration::from_secs(10)).await?;
        Ok(CentralClient {
            link,
            incoming,
            client,
            next: 0,
        })
    }

    /// Sends a request and waits up to `timeout` for its answer.
    pub async fn ask(
        &mut self,
        body: RequestBody,
        timeout: Duration,
    ) -> Result<ResponseBody, String> {
        self.next += 1;
        let req = Request {
            id: self.next,
            body,
        };
        let bytes = serde_json::to_vec(&req).map_err(|e| e.to_string())?;
        self.link
            .try_publish(Message::new(control_request(&self.client), bytes))
            .map_err(|e| e.to_string())?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(format!(
                        "no answer from the meeting host within {} (is `cuntong central` running?)",
                        humantime::format_duration(timeout)
                    ));
                }
                m = self.incoming.recv() => m.ok_or("the link closed")?,
            };
            let Ok(resp) = serde_json::from_slice::<Response>(&msg.payload) else {
                continue;
            };
            if resp.id != req.id {
                continue;
            }
            return match resp.error {
                Some(e) => Err(e),
                None => Ok(resp.body),
            };
        }
    }

    /// The session with all its sites (fetched page by page).
    pub async fn status(&mut self, meeting: &str) -> Result<MeetingStatus, String> {
        let mut all: Option<MeetingStatus> = None;
        let mut after = None;
        loop {
            let page = match self
                .ask(
                    RequestBody::Status {
                        meeting: meeting.to_owned(),
                        after: after.take(),
                    },
                    ANSWER,
                )
                .await?
            {
                ResponseBody::Status(s) => *s,
                other => return Err(format!("unexpected answer {other:?}")),
            };
            after.clone_from(&page.next);
            match &mut all {
                None => all = Some(page),
                Some(a) => a.sites.extend(page.sites),
            }
            if after.is_none() {
                break;
            }
        }
        let mut s = all.ok_or("no answer")?;
        s.next = None;
        Ok(s)
    }

    /// The latest roll call: (present, total) and, with `rows`, every site's answer.
    async fn roll_call_page(
        &mut self,
        meeting: &str,
        rows: bool,
    ) -> Result<(usize, usize, Vec<RollCallJson>), String> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            match self
                .ask(
                    RequestBody::RollCall {
                        meeting: meeting.to_owned(),
                        after: after.take(),
                    },
                    ANSWER,
                )
                .await?
            {
                ResponseBody::RollCall {
                    present,
                    total,
                    rows: page,
                    next,
                } => {
                    out.extend(page);
                    if !rows || next.is_none() {
                        return Ok((present, total, out));
                    }
                    after = next;
                }
                other => return Err(format!("unexpected answer {other:?}")),
            }
        }
    }

    /// Opens a roll call and waits until every invited site answered or `timeout` passed.
    pub async fn roll_call(
        &mut self,
        meeting: &str,
        timeout: Duration,
    ) -> Result<Vec<RollCallJson>, String> {
        self.op(meeting, "rollcall", None).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (present, total, _) = self.roll_call_page(meeting, false).await?;
            if present >= total || tokio::time::Instant::now() >= deadline {
                return Ok(self.roll_call_page(meeting, true).await?.2);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A chair operation; answers the state version it produced.
    pub async fn op(
        &mut self,
        meeting: &str,
        op: &str,
        terminal: Option<String>,
    ) -> Result<u64, String> {
        self.op_in(meeting, op, terminal, None).await
    }

    /// A chair operation with a region (`delegate`).
    pub async fn op_in(
        &mut self,
        meeting: &str,
        op: &str,
        terminal: Option<String>,
        region: Option<String>,
    ) -> Result<u64, String> {
        match self
            .ask(
                RequestBody::Op {
                    meeting: meeting.to_owned(),
                    op: op.to_owned(),
                    terminal,
                    region,
                },
                ANSWER,
            )
            .await?
        {
            ResponseBody::Done { version } => Ok(version),
            other => Err(format!("unexpected answer {other:?}")),
        }
    }

    pub async fn list(&mut self) -> Result<Vec<MeetingJson>, String> {
        match self.ask(RequestBody::List, ANSWER).await? {
            ResponseBody::List(v) => Ok(v),
            other => Err(format!("unexpected answer {other:?}")),
        }
    }

    pub fn close(self) {
        self.link.shutdown();
    }
}

/// How long a command waits for the host's answer.
pub const ANSWER: Duration = Duration::from_secs(10);

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
        "floor {}  broadcast {}  mute-all {}  hands {}  roll call {}\n",
        or_dash(&s.floor),
        or_dash(&s.broadcast),
        if s.mute_all { "on" } else { "off" },
        if s.hands.is_empty() {
            "-".to_owned()
        } else {
            s.hands.join(",")
        },
        s.roll_call.map_or("-".to_owned(), |n| format!("#{n}"))
    ));
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
    let old: BTreeMap<&str, &crate::control::SiteJson> = before
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
    if before.is_none_or(|b| b.floor != now.floor) {
        if let Some(f) = &now.floor {
            out.push(format!("{f} has the floor"));
        }
    }
    if before.is_none_or(|b| b.meeting.status != now.meeting.status) {
        out.push(format!("session {}", now.meeting.status));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::SiteJson;

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
