//! `cuntong monitor`: a live terminal view of the fleet for technicians and central staff — the
//! region tree with counts online / offline / alarming at each level, drill down to a township
//! and a terminal (its recent values as sparklines, its alarms), the active alarms and the
//! meetings in progress. It reads the store, so it runs wherever the store is (beside
//! `cuntong central`), and refreshes every two seconds.
//!
//! Keys: ↑/↓ select, Enter drill down, Backspace/Esc up, q quit.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cuntong_core::alarm::{Alarm, Subject};
use cuntong_core::meeting::Status;
use cuntong_core::meeting::host::{Host, SitePhase};
use cuntong_core::site::{Level, Region, SiteCode};
use cuntong_core::telemetry::Metric;
use cuntong_core::terminal_id::TerminalId;
use ratatui::Frame;
use ratatui::layout::{Constraint, Direction, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{
    Block, Borders, List, ListItem, Paragraph, Row, Sparkline, Table, TableState,
};

use crate::names::Names;
use crate::store::{Database, NamesCache, SiteRow, Store, StoreError};

/// One row of the region view: a child region with its counts, or a terminal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Region {
        code: SiteCode,
        total: usize,
        online: usize,
        alarming: usize,
    },
    Terminal {
        id: String,
        online: bool,
        alarming: bool,
        last_seen_ms: Option<u64>,
    },
}

/// A session in progress, for the side panel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveMeeting {
    pub id: String,
    pub title: String,
    pub joined: usize,
    pub known: usize,
}

/// Everything the monitor shows, read from the store.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub sites: Vec<SiteRow>,
    pub alarms: Vec<Alarm>,
    pub meetings: Vec<LiveMeeting>,
    /// Names of the codes and terminals (shared between snapshots while they do not change).
    pub names: Arc<Names>,
}

/// Snapshots are equal when they show the same; names are compared by identity, since a
/// [`NamesCache`] hands out the same names until they change.
impl PartialEq for Snapshot {
    fn eq(&self, other: &Snapshot) -> bool {
        self.sites == other.sites
            && self.alarms == other.alarms
            && self.meetings == other.meetings
            && Arc::ptr_eq(&self.names, &other.names)
    }
}

impl Snapshot {
    pub fn read(db: &Database, names: &mut NamesCache) -> Result<Snapshot, StoreError> {
        let store = db.open_read_only()?;
        let store = store.as_ref();
        let sites = store.sites(None)?;
        let alarms = store.alarms(None, true, 10_000)?;
        let meetings = live_meetings(store).unwrap_or_default();
        Ok(Snapshot {
            sites,
            alarms,
            meetings,
            names: names.get(store)?,
        })
    }

    /// Terminals with an active alarm of their own or under a root-cause alarm.
    fn alarming(&self) -> std::collections::BTreeSet<String> {
        let mut set = std::collections::BTreeSet::new();
        for a in &self.alarms {
            if let Subject::Terminal(t) = a.subject {
                set.insert(t.to_string());
            }
            set.extend(a.suppressed.iter().map(|t| t.to_string()));
        }
        set
    }

    /// The rows under `region` (the whole network if `None`): one per child region at the next
    /// level, and the terminals whose site is the region itself (or, at a village, all).
    pub fn entries(&self, region: Option<&Region>) -> Vec<Entry> {
        let alarming = self.alarming();
        // Child regions down to townships; a township lists its terminals.
        let next = match region {
            None => Some(Level::Province),
            Some(r) => Level::ALL.get(r.root().level().depth() + 1).copied(),
        }
        .filter(|l| *l != Level::Village);
        let mut regions: BTreeMap<SiteCode, (usize, usize, usize)> = BTreeMap::new();
        let mut terminals = Vec::new();
        for s in &self.sites {
            let Ok(id) = s.terminal.parse::<TerminalId>() else {
                continue;
            };
            if region.is_some_and(|r| !r.contains(id.site())) {
                continue;
            }
            let child = next
                .and_then(|l| id.site().at_level(l))
                .filter(|c| region.is_none_or(|r| *c != r.root()));
            match child {
                Some(code) if next.is_some_and(|l| code.level() == l) => {
                    let c = regions.entry(code).or_default();
                    c.0 += 1;
                    c.1 += usize::from(s.online);
                    c.2 += usize::from(alarming.contains(&s.terminal));
                }
                _ => terminals.push(Entry::Terminal {
                    id: s.terminal.clone(),
                    online: s.online,
                    alarming: alarming.contains(&s.terminal),
                    last_seen_ms: s.last_seen_ms,
                }),
            }
        }
        terminals
            .into_iter()
            .chain(
                regions
                    .into_iter()
                    .map(|(code, (total, online, alarming))| Entry::Region {
                        code,
                        total,
                        online,
                        alarming,
                    }),
            )
            .collect()
    }
}

/// The live sessions in the store.
fn live_meetings(store: &dyn Store) -> Result<Vec<LiveMeeting>, StoreError> {
    Ok(store
        .live_meetings()?
        .iter()
        .filter_map(|b| Host::from_store(b).ok())
        .filter(|h| h.state().status == Status::Live)
        .map(|h| LiveMeeting {
            id: h.state().spec.id.to_string(),
            title: h.state().spec.title.clone(),
            joined: h
                .sites()
                .values()
                .filter(|r| r.phase == SitePhase::Joined)
                .count(),
            known: h.sites().len(),
        })
        .collect())
}

/// Where the operator is.
#[derive(Debug, Default)]
pub struct View {
    /// The region shown (the whole network if `None`).
    pub region: Option<Region>,
    /// The terminal in detail, if one is open.
    pub terminal: Option<String>,
    pub selected: usize,
    /// Recent values of the terminal in detail: (metric, values oldest first).
    pub history: Vec<(String, Vec<u64>)>,
}

/// Metrics shown as sparklines for a terminal.
const SPARK: [Metric; 4] = [
    Metric::AirTemp,
    Metric::CpuLoad,
    Metric::LinkRtt,
    Metric::OutboxDepth,
];

impl View {
    /// Enter on the selected row.
    pub fn enter(&mut self, entries: &[Entry], db: &Database) {
        match entries.get(self.selected) {
            Some(Entry::Region { code, .. }) => {
                self.region = Some(Region::of(*code));
                self.selected = 0;
            }
            Some(Entry::Terminal { id, .. }) => {
                self.terminal = Some(id.clone());
                self.load_history(db);
            }
            None => {}
        }
    }

    /// Back up one level.
    pub fn back(&mut self) {
        if self.terminal.take().is_some() {
            return;
        }
        self.region = self.region.and_then(|r| r.root().parent()).map(Region::of);
        self.selected = 0;
    }

    /// Reads the last hour of the terminal in detail.
    pub fn load_history(&mut self, db: &Database) {
        self.history.clear();
        let Some(id) = self
            .terminal
            .as_ref()
            .and_then(|t| t.parse::<TerminalId>().ok())
        else {
            return;
        };
        let Ok(store) = db.open_read_only() else {
            return;
        };
        let since = cuntong_terminal::link::unix_ms().saturating_sub(3_600_000);
        for m in SPARK {
            let values: Vec<u64> = store
                .telemetry(&id, Some(&m), Some(since))
                .map(|rows| {
                    rows.iter()
                        .map(|r| (r.value * 100.0).max(0.0) as u64)
                        .collect()
                })
                .unwrap_or_default();
            self.history.push((m.name().to_owned(), values));
        }
    }
}

/// Draws the whole screen.
pub fn draw(frame: &mut Frame, snap: &Snapshot, view: &View, now_ms: u64) {
    let entries = snap.entries(view.region.as_ref());
    let area = frame.area();
    let rows = Layout::default()
        .direction(Direction::Vertical)
        .constraints([
            Constraint::Length(1),
            Constraint::Min(5),
            Constraint::Length(1),
        ])
        .split(area);
    let total = snap
        .sites
        .iter()
        .filter(|s| view.region.is_none_or(|r| s.site.starts_with(&r.prefix())))
        .count();
    let online = snap
        .sites
        .iter()
        .filter(|s| s.online && view.region.is_none_or(|r| s.site.starts_with(&r.prefix())))
        .count();
    let place = view.region.map_or("all regions".to_owned(), |r| {
        format!("{} {r} ({})", snap.names.path(&r.root()), r.root().level())
    });
    frame.render_widget(
        Paragraph::new(format!(
            "cuntong monitor — {place}: {total} terminals, {online} online, {} offline; {} active alarms",
            total - online,
            snap.alarms.len()
        ))
        .style(Style::default().add_modifier(Modifier::BOLD)),
        rows[0],
    );
    let cols = Layout::default()
        .direction(Direction::Horizontal)
        .constraints([Constraint::Percentage(60), Constraint::Percentage(40)])
        .split(rows[1]);
    match &view.terminal {
        Some(t) => draw_terminal(frame, cols[0], snap, view, t, now_ms),
        None => draw_regions(frame, cols[0], &entries, &snap.names, view.selected, now_ms),
    }
    let side = Layout::default()
        .direction(Direction::Vertical)
        .constraints([Constraint::Percentage(60), Constraint::Percentage(40)])
        .split(cols[1]);
    let alarms: Vec<ListItem> = snap
        .alarms
        .iter()
        .map(|a| {
            let style = match a.severity {
                cuntong_core::alarm::Severity::Critical => Style::default().fg(Color::Red),
                cuntong_core::alarm::Severity::Major => Style::default().fg(Color::Yellow),
                _ => Style::default(),
            };
            ListItem::new(Line::styled(
                format!(
                    "#{} {} {} {} {}{}",
                    a.id,
                    a.kind.as_str(),
                    a.subject,
                    snap.names.subject(&a.subject),
                    a.detail,
                    if a.suppressed.is_empty() {
                        String::new()
                    } else {
                        format!(" [{}]", a.suppressed.len())
                    }
                ),
                style,
            ))
        })
        .collect();
    frame.render_widget(
        List::new(alarms).block(
            Block::default()
                .borders(Borders::ALL)
                .title("active alarms"),
        ),
        side[0],
    );
    let meetings: Vec<ListItem> = snap
        .meetings
        .iter()
        .map(|m| {
            ListItem::new(format!(
                "{} {} — {}/{} joined",
                m.id, m.title, m.joined, m.known
            ))
        })
        .collect();
    frame.render_widget(
        List::new(meetings).block(
            Block::default()
                .borders(Borders::ALL)
                .title("meetings in progress"),
        ),
        side[1],
    );
    frame.render_widget(
        Paragraph::new("↑/↓ select   Enter open   Backspace/Esc back   q quit"),
        rows[2],
    );
}

fn draw_regions(
    frame: &mut Frame,
    area: ratatui::layout::Rect,
    entries: &[Entry],
    names: &Names,
    selected: usize,
    now_ms: u64,
) {
    let rows: Vec<Row> = entries
        .iter()
        .map(|e| match e {
            Entry::Region {
                code,
                total,
                online,
                alarming,
            } => {
                let style = if *alarming > 0 {
                    Style::default().fg(Color::Red)
                } else if online < total {
                    Style::default().fg(Color::Yellow)
                } else {
                    Style::default()
                };
                Row::new(vec![
                    Region::of(*code).to_string(),
                    names.name(code).to_owned(),
                    code.level().to_string(),
                    total.to_string(),
                    online.to_string(),
                    (total - online).to_string(),
                    alarming.to_string(),
                ])
                .style(style)
            }
            Entry::Terminal {
                id,
                online,
                alarming,
                last_seen_ms,
            } => {
                let style = if *alarming {
                    Style::default().fg(Color::Red)
                } else if !online {
                    Style::default().fg(Color::Yellow)
                } else {
                    Style::default()
                };
                let seen = last_seen_ms.map_or("never".to_owned(), |t| {
                    format!("{} s ago", now_ms.saturating_sub(t) / 1000)
                });
                Row::new(vec![
                    id.clone(),
                    names.terminal_str(id).to_owned(),
                    "terminal".to_owned(),
                    if *online { "online" } else { "OFFLINE" }.to_owned(),
                    seen,
                    String::new(),
                    if *alarming { "ALARM" } else { "" }.to_owned(),
                ])
                .style(style)
            }
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Length(18),
            Constraint::Length(16),
            Constraint::Length(11),
            Constraint::Length(12),
            Constraint::Length(12),
            Constraint::Length(8),
            Constraint::Length(9),
        ],
    )
    .header(
        Row::new(vec![
            "CODE",
            "NAME",
            "LEVEL",
            "TOTAL|STATE",
            "ONLINE|SEEN",
            "OFFLINE",
            "ALARMING",
        ])
        .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED))
    .block(Block::default().borders(Borders::ALL).title("regions"));
    let mut state =
        TableState::default().with_selected(Some(selected.min(entries.len().saturating_sub(1))));
    frame.render_stateful_widget(table, area, &mut state);
}

fn draw_terminal(
    frame: &mut Frame,
    area: ratatui::layout::Rect,
    snap: &Snapshot,
    view: &View,
    id: &str,
    now_ms: u64,
) {
    let site = snap.sites.iter().find(|s| s.terminal == id);
    let mut lines = vec![match site {
        Some(s) => format!(
            "{id}  {}  last seen {}",
            if s.online { "online" } else { "OFFLINE" },
            s.last_seen_ms.map_or("never".to_owned(), |t| format!(
                "{} s ago",
                now_ms.saturating_sub(t) / 1000
            ))
        ),
        None => format!("{id} (not in the store)"),
    }];
    if let Some(s) = site {
        lines.push(
            s.metrics
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("  "),
        );
    }
    let n = view.history.len().max(1) as u16;
    let mut constraints = vec![Constraint::Length(4)];
    constraints.extend((0..n).map(|_| Constraint::Length(3)));
    constraints.push(Constraint::Min(0));
    let parts = Layout::default()
        .direction(Direction::Vertical)
        .constraints(constraints)
        .split(area);
    frame.render_widget(
        Paragraph::new(lines.join("\n"))
            .block(Block::default().borders(Borders::ALL).title("terminal")),
        parts[0],
    );
    for (i, (metric, values)) in view.history.iter().enumerate() {
        frame.render_widget(
            Sparkline::default()
                .block(
                    Block::default()
                        .borders(Borders::ALL)
                        .title(format!("{metric}, last hour")),
                )
                .data(values),
            parts[i + 1],
        );
    }
}

/// Why the monitor stopped other than by `q`.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// The terminal (the screen) cannot be taken over.
    #[error("cannot open the terminal: {0}")]
    OpenTerminal(#[source] std::io::Error),
    /// Drawing, or reading the keys, failed.
    #[error("{0}")]
    Screen(#[from] std::io::Error),
    /// The store cannot be read.
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// Runs the monitor until `q`.
pub fn run(db: &Database, region: Option<Region>) -> Result<(), MonitorError> {
    use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind};
    let mut view = View {
        region,
        ..View::default()
    };
    let mut terminal = ratatui::try_init().map_err(MonitorError::OpenTerminal)?;
    let mut names = NamesCache::default();
    let result = (|| -> Result<(), MonitorError> {
        loop {
            let snap = Snapshot::read(db, &mut names)?;
            let entries = snap.entries(view.region.as_ref());
            terminal.draw(|f| draw(f, &snap, &view, cuntong_terminal::link::unix_ms()))?;
            if !event::poll(Duration::from_secs(2))? {
                if view.terminal.is_some() {
                    view.load_history(db);
                }
                continue;
            }
            if let Event::Key(k) = event::read()? {
                if k.kind != KeyEventKind::Press {
                    continue;
                }
                match k.code {
                    KeyCode::Char('q') => return Ok(()),
                    KeyCode::Up => view.selected = view.selected.saturating_sub(1),
                    KeyCode::Down => {
                        view.selected = (view.selected + 1).min(entries.len().saturating_sub(1))
                    }
                    KeyCode::Enter => view.enter(&entries, db),
                    KeyCode::Backspace | KeyCode::Esc => view.back(),
                    _ => {}
                }
            }
        }
    })();
    ratatui::restore();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use cuntong_core::alarm::{AlarmKind, AlarmState, Severity};
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    fn site(id: &str, online: bool) -> SiteRow {
        SiteRow {
            terminal: id.into(),
            site: id[..12].into(),
            level: "village".into(),
            online,
            version: None,
            last_seen_ms: Some(1_000),
            metrics: vec![("env.temp".into(), 21.5)],
        }
    }

    fn snapshot() -> Snapshot {
        let township_down = ["130102009001-main", "130102009002-main"];
        Snapshot {
            sites: vec![
                site("130102000000-hall", true),
                site("130102001001-main", true),
                site("130102001002-main", true),
                site(township_down[0], false),
                site(township_down[1], false),
                site("130103001001-main", true),
            ],
            alarms: vec![Alarm {
                id: 4,
                kind: AlarmKind::Offline,
                subject: Subject::Region("130102009000".parse().unwrap()),
                severity: Severity::Critical,
                state: AlarmState::Active,
                raised_ms: 0,
                detail: "all 2 terminals offline".into(),
                metric: None,
                acknowledged: None,
                cleared_ms: None,
                suppressed: township_down.iter().map(|t| t.parse().unwrap()).collect(),
                report: None,
                rule: None,
                dropped: 0,
            }],
            meetings: vec![LiveMeeting {
                id: "m1".into(),
                title: "全县防汛工作会议".into(),
                joined: 4,
                known: 6,
            }],
            ..Snapshot::default()
        }
    }

    #[test]
    fn a_county_shows_its_own_terminals_and_its_townships_with_counts() {
        let snap = snapshot();
        let county: Region = "130102".parse().unwrap();
        let rows = snap.entries(Some(&county));
        assert_eq!(
            rows,
            vec![
                Entry::Terminal {
                    id: "130102000000-hall".into(),
                    online: true,
                    alarming: false,
                    last_seen_ms: Some(1_000)
                },
                Entry::Region {
                    code: "130102001000".parse().unwrap(),
                    total: 2,
                    online: 2,
                    alarming: 0
                },
                Entry::Region {
                    code: "130102009000".parse().unwrap(),
                    total: 2,
                    online: 0,
                    alarming: 2
                },
            ]
        );
        let top = snap.entries(None);
        assert_eq!(
            top,
            vec![Entry::Region {
                code: "130000000000".parse().unwrap(),
                total: 6,
                online: 4,
                alarming: 2
            }]
        );
        let township: Region = "130102009".parse().unwrap();
        assert!(snap.entries(Some(&township)).iter().all(|e| matches!(
            e,
            Entry::Terminal {
                online: false,
                alarming: true,
                ..
            }
        )));
    }

    #[test]
    fn drilling_down_and_back_up() {
        let snap = snapshot();
        let mut v = View {
            region: Some("130102".parse().unwrap()),
            ..View::default()
        };
        let rows = snap.entries(v.region.as_ref());
        v.selected = 2;
        v.enter(&rows, &Database::Sqlite("/nonexistent.db".into()));
        assert_eq!(v.region, Some("130102009".parse().unwrap()));
        let rows = snap.entries(v.region.as_ref());
        v.enter(&rows, &Database::Sqlite("/nonexistent.db".into()));
        assert_eq!(v.terminal.as_deref(), Some("130102009001-main"));
        v.back();
        assert_eq!(v.terminal, None);
        v.back();
        assert_eq!(v.region, Some("130102".parse().unwrap()));
    }

    #[test]
    fn the_screen_shows_the_tree_the_alarms_and_the_meetings() {
        let snap = snapshot();
        let view = View {
            region: Some("130102".parse().unwrap()),
            ..View::default()
        };
        let mut term = Terminal::new(TestBackend::new(140, 20)).unwrap();
        term.draw(|f| draw(f, &snap, &view, 5_000)).unwrap();
        let text: String = term
            .backend()
            .buffer()
            .content()
            .iter()
            .map(|c| c.symbol())
            .collect();
        for want in [
            "130102 (county): 5 terminals, 3 online, 2 offline; 1 active alarms",
            "130102009",
            "township",
            "#4 offline 130102009 (unnamed)",
            // Wide characters take two cells: the test buffer shows the second as a space.
            "河 北 省  石 家 庄 市  长 安 区",
            "建 北 街 道",
            "m1",
            "4/6 joined",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
    }
}
