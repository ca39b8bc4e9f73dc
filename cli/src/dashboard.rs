//! `cuntong central --http ADDR`: the web dashboard for central staff. The page (HTML, script
//! and style compiled into the binary) shows the region tree with terminals online / offline /
//! alarming per region, the active alarms and the meetings in progress, and a terminal's
//! history as charts. It stays live over server-sent events: one task reads the store once a
//! second ([`Snapshot`], the same picture `cuntong monitor` draws) and every open page receives
//! its region's view whenever that view changes.
//!
//! Routes: `/` (the page), `/api/view?region=CODE` (the view as JSON), `/api/live?region=CODE`
//! (the same view as an event stream, event `view`), `/api/terminal/ID?hours=N` (a terminal,
//! its alarms and its samples of the last N hours, 1 to 168).
//!
//! The dashboard only reads; it changes nothing in the fleet.
//!
//! It serves at most [`MAX_CLIENTS`] connections at once (an open page holds one), within what
//! central's open-files limit leaves after a reserve for its broker link and store, and closes
//! one that does not send its request headers within 10 s; connections beyond are closed at
//! once and accept errors back off ([`cuntong_terminal::listen`]), so a flood of connections
//! cannot cut central off its broker.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cuntong_core::alarm::{Alarm, Subject};
use cuntong_core::site::Region;
use cuntong_core::terminal_id::TerminalId;
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

mod signin;
mod tls;

pub use tls::DashboardTls;

use crate::alarms::AlarmJson;
use crate::monitor::{Entry, Snapshot};
use crate::names::Names;
use crate::store::{Database, NamesCache, StoreError};
use crate::view::rfc3339_ms;

/// Connections served at once.
pub const MAX_CLIENTS: usize = 64;

/// How often the store is read for the live views.
const REFRESH: Duration = Duration::from_secs(1);
/// Samples per metric in a terminal's history, at most (older ones are thinned evenly).
const MAX_POINTS: usize = 1500;

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const APP_CSS: &str = include_str!("dashboard/app.css");

/// A region (or the whole network) as the page shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ViewJson {
    /// The region's code prefix (`130102`), `null` for the whole network.
    pub region: Option<String>,
    /// The region's official name (`长安区`), `null` for the whole network.
    pub name: Option<String>,
    /// The regions above it, outermost first (code prefixes).
    pub parents: Vec<String>,
    /// Their names, in the same order.
    pub parent_names: Vec<String>,
    pub totals: Counts,
    /// Child regions at the next level, with their counts.
    pub regions: Vec<RegionJson>,
    /// Terminals listed at this level (a township's, or those sitting at the region itself).
    pub terminals: Vec<TerminalRowJson>,
    /// Active and acknowledged alarms concerning the region, newest first.
    pub alarms: Vec<AlarmJson>,
    pub meetings: Vec<MeetingJson>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub terminals: usize,
    pub online: usize,
    pub offline: usize,
    /// Terminals with an alarm of their own or folded into a root-cause alarm.
    pub alarming: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionJson {
    pub code: String,
    pub level: String,
    pub name: String,
    #[serde(flatten)]
    pub counts: Counts,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TerminalRowJson {
    pub id: String,
    pub name: String,
    pub online: bool,
    pub alarming: bool,
    /// RFC 3339.
    pub last_seen: Option<String>,
    /// Newest value of each metric.
    pub metrics: BTreeMap<String, f64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeetingJson {
    pub id: String,
    pub title: String,
    pub joined: usize,
    pub sites: usize,
}

/// `/api/terminal/ID`: one terminal in detail.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TerminalJson {
    pub id: String,
    pub name: String,
    /// The official names from the province down to its site.
    pub region_path: String,
    pub online: bool,
    pub version: Option<String>,
    pub last_seen: Option<String>,
    pub alarms: Vec<AlarmJson>,
    /// One series per metric, by name: `[time ms, value]` pairs, oldest first.
    pub series: BTreeMap<String, Vec<(u64, f64)>>,
}

/// Builds the view of `region` from a snapshot of the store.
pub fn view(snap: &Snapshot, region: Option<&Region>) -> ViewJson {
    let names = &snap.names;
    let mut totals = Counts::default();
    let mut regions = Vec::new();
    let mut terminals = Vec::new();
    let metrics: BTreeMap<&str, &[(std::sync::Arc<str>, f64)]> = snap
        .sites
        .iter()
        .map(|s| (s.terminal.as_str(), s.metrics.as_slice()))
        .collect();
    for entry in snap.entries(region) {
        match entry {
            Entry::Region {
                code,
                total,
                online,
                alarming,
            } => {
                let counts = Counts {
                    terminals: total,
                    online,
                    offline: total - online,
                    alarming,
                };
                add(&mut totals, counts);
                regions.push(RegionJson {
                    code: Region::of(code).prefix(),
                    level: code.level().as_str().to_owned(),
                    name: names.name(&code).to_owned(),
                    counts,
                });
            }
            Entry::Terminal {
                id,
                online,
                alarming,
                last_seen_ms,
            } => {
                add(
                    &mut totals,
                    Counts {
                        terminals: 1,
                        online: usize::from(online),
                        offline: usize::from(!online),
                        alarming: usize::from(alarming),
                    },
                );
                terminals.push(TerminalRowJson {
                    name: names.terminal_str(&id).to_owned(),
                    metrics: metrics
                        .get(id.as_str())
                        .map(|m| m.iter().map(|(k, v)| (k.to_string(), *v)).collect())
                        .unwrap_or_default(),
                    id,
                    online,
                    alarming,
                    last_seen: last_seen_ms.map(rfc3339_ms),
                });
            }
        }
    }
    let mut parents = Vec::new();
    let mut parent_names = Vec::new();
    let mut up = region.and_then(|r| r.root().parent());
    while let Some(code) = up {
        parents.push(Region::of(code).prefix());
        parent_names.push(names.name(&code).to_owned());
        up = code.parent();
    }
    parents.reverse();
    parent_names.reverse();
    ViewJson {
        region: region.map(Region::prefix),
        name: region.map(|r| names.name(&r.root()).to_owned()),
        parents,
        parent_names,
        totals,
        regions,
        terminals,
        alarms: snap
            .alarms
            .iter()
            .filter(|a| concerns(a, region))
            .map(|a| AlarmJson::of(a, names))
            .collect(),
        meetings: snap
            .meetings
            .iter()
            .map(|m| MeetingJson {
                id: m.id.clone(),
                title: m.title.clone(),
                joined: m.joined,
                sites: m.known,
            })
            .collect(),
    }
}

fn add(totals: &mut Counts, c: Counts) {
    totals.terminals += c.terminals;
    totals.online += c.online;
    totals.offline += c.offline;
    totals.alarming += c.alarming;
}

/// An alarm concerns a region if its subject is inside it, or if it is a root cause above it.
fn concerns(alarm: &Alarm, region: Option<&Region>) -> bool {
    let Some(region) = region else { return true };
    match &alarm.subject {
        Subject::Terminal(t) => region.contains(t.site()),
        Subject::Region(code) => region.contains(code) || code.contains(&region.root()),
    }
}

/// Why the dashboard cannot show what a page asks for.
#[derive(Debug, thiserror::Error)]
enum DashboardError {
    /// The store cannot be read.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The read on the blocking pool was lost (it panicked or was cancelled).
    #[error("{0}")]
    Reader(#[from] tokio::task::JoinError),
    /// No terminal of this id in the store.
    #[error("terminal {0} is not known to central")]
    UnknownTerminal(TerminalId),
}

/// The terminal `id` with its samples since `since_ms`.
fn terminal(
    db: &Database,
    id: &TerminalId,
    since_ms: u64,
    names: &Names,
) -> Result<TerminalJson, DashboardError> {
    let store = db.open_read_only()?;
    let row = store
        .sites(Some(&Region::of(*id.site())))?
        .into_iter()
        .find(|s| s.terminal == id.to_string())
        .ok_or(DashboardError::UnknownTerminal(*id))?;
    let mut series: BTreeMap<String, Vec<(u64, f64)>> = BTreeMap::new();
    for s in store.telemetry(id, None, Some(since_ms))? {
        series.entry(s.metric).or_default().push((s.ts_ms, s.value));
    }
    for points in series.values_mut() {
        points.sort_by_key(|p| p.0);
        thin(points, MAX_POINTS);
    }
    let alarms = store
        .alarms(Some(&Region::of(*id.site())), false, 200)?
        .iter()
        .filter(|a| a.subject == Subject::Terminal(*id) || a.suppressed.iter().any(|t| t == id))
        .map(|a| AlarmJson::of(a, names))
        .collect();
    Ok(TerminalJson {
        id: row.terminal,
        name: names.terminal(id).to_owned(),
        region_path: names.path(id.site()),
        online: row.online,
        version: row.version,
        last_seen: row.last_seen_ms.map(rfc3339_ms),
        alarms,
        series,
    })
}

/// Keeps at most `max` points, evenly spread, always with the newest.
fn thin(points: &mut Vec<(u64, f64)>, max: usize) {
    if points.len() <= max || max < 2 {
        return;
    }
    let n = points.len();
    let kept: Vec<(u64, f64)> = (0..max).map(|i| points[i * (n - 1) / (max - 1)]).collect();
    *points = kept;
}

#[derive(Clone)]
struct App {
    db: Arc<Database>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    reader: Arc<Reader>,
}

/// Reads snapshots of the store: the refresher once a second while a live page is open, a
/// view asked with none open for itself. A province's store is not read every second for
/// nobody (54,145 sites, each read a full pass over them).
struct Reader {
    db: Database,
    names: std::sync::Mutex<NamesCache>,
    /// When the last snapshot was read.
    read_at: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl Reader {
    /// A snapshot read now (on the blocking pool).
    async fn read(self: &Arc<Self>) -> Result<Snapshot, DashboardError> {
        let me = self.clone();
        let snap = tokio::task::spawn_blocking(move || {
            let mut names = me
                .names
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            Snapshot::read(&me.db, &mut names)
        })
        .await??;
        if let Ok(mut at) = self.read_at.lock() {
            *at = Some(tokio::time::Instant::now());
        }
        Ok(snap)
    }

    /// Whether the last snapshot is at most [`REFRESH`] old.
    fn fresh(&self) -> bool {
        self.read_at
            .lock()
            .ok()
            .and_then(|at| *at)
            .is_some_and(|at| at.elapsed() <= REFRESH)
    }
}

#[derive(Deserialize)]
struct RegionQuery {
    region: Option<String>,
}

#[derive(Deserialize)]
struct HistoryQuery {
    hours: Option<u64>,
}

type Refusal = (StatusCode, String);

fn region_param(q: &RegionQuery) -> Result<Option<Region>, Refusal> {
    match q.region.as_deref().filter(|r| !r.is_empty()) {
        None => Ok(None),
        Some(r) => r
            .parse::<Region>()
            .map(Some)
            .map_err(|e| (StatusCode::BAD_REQUEST, format!("region {r:?}: {e}"))),
    }
}

/// Serves the dashboard on `addr` until `stop` fires. Fails only if it cannot listen.
pub async fn serve(
    addr: SocketAddr,
    db: Database,
    stop: CancellationToken,
) -> Result<(), std::io::Error> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let cache = crate::artifacts::default_cache(&db);
    serve_on(listener, db, cache, Access::default(), stop).await
}

/// Who may see the dashboard. With neither, anyone who reaches it (read-only); with either,
/// only staff signed in: by password (`users`, `--http-users`), or over TLS by a staff
/// certificate of the fleet CA (`tls`, `--http-tls`).
#[derive(Clone, Debug, Default)]
pub struct Access {
    pub users: Option<Arc<crate::staff::Users>>,
    pub tls: Option<DashboardTls>,
}

/// Serves the dashboard, and the release artifacts (cached in `artifacts`), on a bound
/// listener, to whom `access` lets in (the boxes fetch releases without signing in).
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    db: Database,
    artifacts: std::path::PathBuf,
    access: Access,
    stop: CancellationToken,
) -> Result<(), std::io::Error> {
    let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
    let reader = Arc::new(Reader {
        db: db.clone(),
        names: std::sync::Mutex::new(NamesCache::default()),
        read_at: std::sync::Mutex::new(None),
    });
    tokio::spawn(refresh(reader.clone(), tx, stop.clone()));
    let releases = crate::artifacts::router(db.clone(), artifacts);
    let app = App {
        db: Arc::new(db),
        snapshots: rx,
        reader,
    };
    let router = Router::new()
        .route("/", get(|| page(INDEX_HTML, "text/html; charset=utf-8")))
        .route(
            "/app.js",
            get(|| page(APP_JS, "text/javascript; charset=utf-8")),
        )
        .route("/app.css", get(|| page(APP_CSS, "text/css; charset=utf-8")))
        .route("/api/view", get(view_now))
        .route("/api/live", get(live))
        .route("/api/terminal/:id", get(terminal_detail))
        .route("/api/rollouts", get(rollouts))
        .with_state(app);
    let router = if access.users.is_some() || access.tls.is_some() {
        signin::guard(router, access.users)
    } else {
        router
    }
    .merge(releases);
    tracing::info!(addr = %listener.local_addr()?, tls = access.tls.is_some(), "dashboard listening");
    let descriptors = cuntong_terminal::listen::Descriptors::process();
    let gate = cuntong_terminal::listen::Gate::new("dashboard", MAX_CLIENTS, &descriptors);
    let tls = access.tls;
    cuntong_terminal::listen::serve(listener, gate, stop, move |stream, peer| {
        let (router, tls) = (router.clone(), tls.clone());
        async move {
            match tls {
                None => serve_connection(stream, router, peer).await,
                Some(tls) => match tls.accept(stream).await {
                    // The connection's staff member, if its certificate names one, goes with
                    // each of its requests.
                    Ok((stream, Some(staff))) => {
                        tracing::debug!(%peer, name = %staff.0, "staff certificate");
                        let router = router.layer(axum::Extension(staff));
                        serve_connection(stream, router, peer).await;
                    }
                    Ok((stream, None)) => serve_connection(stream, router, peer).await,
                    Err(e) => tracing::debug!(%peer, error = %e, "dashboard TLS handshake failed"),
                },
            }
        }
    })
    .await;
    Ok(())
}

/// Serves HTTP/1.1 on one connection until it ends.
async fn serve_connection<S>(stream: S, router: Router, peer: String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(router);
    let io = hyper_util::rt::TokioIo::new(stream);
    let served = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .serve_connection(io, service)
        .await;
    if let Err(e) = served {
        tracing::debug!(%peer, error = %e, "dashboard connection ended");
    }
}

/// Reads the store once a second while a live page is open, and hands every changed snapshot
/// to the open pages.
async fn refresh(reader: Arc<Reader>, tx: watch::Sender<Arc<Snapshot>>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // The app's own receiver is always there; a live page holds another.
        if tx.receiver_count() <= 1 {
            continue;
        }
        match reader.read().await {
            Ok(snap) => {
                warned = false;
                tx.send_if_modified(|old| {
                    let changed = **old != snap;
                    if changed {
                        *old = Arc::new(snap);
                    }
                    changed
                });
            }
            Err(e) if !warned => {
                warned = true;
                tracing::warn!(error = %e, "dashboard cannot read the store");
            }
            Err(_) => {}
        }
    }
}

async fn page(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

async fn view_now(
    State(app): State<App>,
    Query(q): Query<RegionQuery>,
) -> Result<Json<ViewJson>, Refusal> {
    let region = region_param(&q)?;
    // With a live page open the shared snapshot is at most a second old; else read one now.
    let snap = if app.reader.fresh() {
        app.snapshots.borrow().clone()
    } else {
        let read = app.reader.read().await;
        Arc::new(read.map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, format!("the store: {e}")))?)
    };
    Ok(Json(view(&snap, region.as_ref())))
}

/// The region's view now and after every change, as `view` events.
async fn live(
    State(app): State<App>,
    Query(q): Query<RegionQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Refusal> {
    let region = region_param(&q)?;
    let mut rx = app.snapshots.clone();
    rx.mark_changed();
    let stream = futures_util::stream::unfold(
        (rx, None::<ViewJson>),
        move |(mut rx, mut last)| async move {
            loop {
                rx.changed().await.ok()?;
                let snap = rx.borrow_and_update().clone();
                let now = view(&snap, region.as_ref());
                if last.as_ref() == Some(&now) {
                    continue;
                }
                let event = Event::default()
                    .event("view")
                    .json_data(&now)
                    .unwrap_or_else(|_| Event::default().event("error"));
                last = Some(now);
                return Some((Ok(event), (rx, last)));
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// The rollouts, newest first, as `cuntong rollout list --json` gives them.
async fn rollouts(
    State(app): State<App>,
) -> Result<Json<Vec<crate::rollouts::RolloutJson>>, Refusal> {
    let db = app.db.clone();
    tokio::task::spawn_blocking(move || {
        let store = match db.open_read_only() {
            // No store yet: no rollouts yet.
            Err(crate::store::StoreError::Missing { .. }) => return Ok(Vec::new()),
            other => other?,
        };
        let mut list = crate::rollouts::list(store.as_ref())?;
        list.reverse();
        Ok::<_, crate::store::StoreError>(list)
    })
    .await
    .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map(Json)
    .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, format!("the store: {e}")))
}

async fn terminal_detail(
    State(app): State<App>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<TerminalJson>, Refusal> {
    let id: TerminalId = id
        .parse()
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("terminal {id:?}: {e}")))?;
    let hours = q.hours.unwrap_or(1);
    if !(1..=168).contains(&hours) {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("hours {hours}: between 1 and 168"),
        ));
    }
    let since = cuntong_terminal::link::unix_ms().saturating_sub(hours * 3_600_000);
    let db = app.db.clone();
    let names = app.snapshots.borrow().names.clone();
    tokio::task::spawn_blocking(move || terminal(&db, &id, since, &names))
        .await
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map(Json)
        .map_err(|e| {
            let status = match e {
                DashboardError::UnknownTerminal(_) => StatusCode::NOT_FOUND,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            (status, e.to_string())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::LiveMeeting;
    use crate::store::SiteRow;
    use cuntong_core::alarm::{AlarmKind, AlarmState, Severity};

    fn site(id: &str, online: bool) -> SiteRow {
        SiteRow {
            terminal: id.to_owned(),
            site: id.split('-').next().unwrap_or_default().to_owned(),
            level: "village".to_owned(),
            online,
            version: None,
            last_seen_ms: Some(1_000),
            metrics: vec![("env.temp".into(), 21.5)],
        }
    }

    fn alarm(id: u64, subject: Subject) -> Alarm {
        Alarm {
            id,
            kind: AlarmKind::Offline,
            subject,
            severity: Severity::Critical,
            state: AlarmState::Active,
            raised_ms: 1_000,
            suppressed: Vec::new(),
            detail: String::new(),
            metric: None,
            acknowledged: None,
            cleared_ms: None,
            report: None,
            rule: None,
            dropped: 0,
        }
    }

    fn snapshot() -> Snapshot {
        Snapshot {
            sites: vec![
                site("130102001001-01", true),
                site("130102001002-01", false),
                site("130102002001-01", true),
                site("130203001001-01", true),
            ],
            alarms: vec![
                alarm(1, Subject::Terminal("130102001002-01".parse().unwrap())),
                alarm(2, Subject::Terminal("130203001001-01".parse().unwrap())),
            ],
            meetings: vec![LiveMeeting {
                id: "m1".into(),
                title: "county meeting".into(),
                joined: 2,
                known: 3,
            }],
            ..Snapshot::default()
        }
    }

    #[test]
    fn a_county_view_counts_its_townships_and_shows_only_its_own_alarms() {
        let county: Region = "130102".parse().unwrap();
        let v = view(&snapshot(), Some(&county));
        assert_eq!(v.region.as_deref(), Some("130102"));
        assert_eq!(v.parents, vec!["13".to_owned(), "1301".to_owned()]);
        let codes: Vec<(&str, usize, usize, usize)> = v
            .regions
            .iter()
            .map(|r| {
                (
                    r.code.as_str(),
                    r.counts.terminals,
                    r.counts.offline,
                    r.counts.alarming,
                )
            })
            .collect();
        assert_eq!(codes, vec![("130102001", 2, 1, 1), ("130102002", 1, 0, 0)]);
        assert_eq!(
            v.totals,
            Counts {
                terminals: 3,
                online: 2,
                offline: 1,
                alarming: 1
            }
        );
        assert_eq!(v.alarms.len(), 1);
        assert_eq!(v.alarms[0].subject, "130102001002-01");
        assert_eq!(v.meetings[0].sites, 3);
    }

    #[test]
    fn a_township_view_lists_its_terminals_with_their_latest_values() {
        let township: Region = "130102001".parse().unwrap();
        let v = view(&snapshot(), Some(&township));
        assert!(v.regions.is_empty());
        let rows: Vec<(&str, bool, bool)> = v
            .terminals
            .iter()
            .map(|t| (t.id.as_str(), t.online, t.alarming))
            .collect();
        assert_eq!(
            rows,
            vec![
                ("130102001001-01", true, false),
                ("130102001002-01", false, true)
            ]
        );
        assert_eq!(v.terminals[0].metrics.get("env.temp"), Some(&21.5));
    }

    #[test]
    fn a_root_cause_alarm_above_a_region_concerns_it() {
        let mut a = alarm(3, Subject::Region("130102000000".parse().unwrap()));
        a.suppressed = vec!["130102001001-01".parse().unwrap()];
        assert!(concerns(&a, Some(&"130102001".parse().unwrap())));
        assert!(concerns(&a, Some(&"13".parse().unwrap())));
        assert!(!concerns(&a, Some(&"130203".parse().unwrap())));
    }

    /// A flood of held connections gets no more than [`MAX_CLIENTS`] places: the others are
    /// closed at once, and once the flood lets go the page is served again.
    #[tokio::test]
    async fn a_flood_of_held_connections_is_capped_and_the_page_is_served_after_it() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(serve_on(
            listener,
            Database::Sqlite(dir.path().join("none.db")),
            dir.path().join("releases"),
            Access::default(),
            stop.clone(),
        ));
        let test = async {
            let mut all = Vec::new();
            for _ in 0..MAX_CLIENTS + 50 {
                all.push(tokio::net::TcpStream::connect(addr).await.unwrap());
            }
            // Let the server take them all (it waits 10 s for a request on a held one).
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (mut held, mut closed) = (Vec::new(), 0);
            for mut c in all {
                let mut b = [0u8; 1];
                // A held place waits for a request; a refused connection is closed at once.
                match tokio::time::timeout(Duration::from_millis(20), c.read(&mut b)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => closed += 1,
                    _ => held.push(c),
                }
            }
            assert_eq!(held.len(), MAX_CLIENTS);
            assert_eq!(closed, 50);
            drop(held);
            loop {
                let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
                let _ = c
                    .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                    .await;
                let mut answer = Vec::new();
                let _ = c.read_to_end(&mut answer).await;
                if answer.starts_with(b"HTTP/1.1 200") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), test)
            .await
            .unwrap();
        stop.cancel();
    }

    #[test]
    fn thinning_keeps_the_ends_and_the_count() {
        let mut points: Vec<(u64, f64)> = (0..10_000).map(|i| (i, i as f64)).collect();
        thin(&mut points, 1500);
        assert_eq!(points.len(), 1500);
        assert_eq!(points.first().map(|p| p.0), Some(0));
        assert_eq!(points.last().map(|p| p.0), Some(9_999));
        assert!(points.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
