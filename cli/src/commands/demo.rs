//! `cuntong demo`: the embedded broker, the central service and a simulated county in one
//! process, with a live fleet table and a meeting of the county.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use cuntong_core::meeting::host::ChairOp;
use cuntong_core::meeting::{Invitee, Kind, MediaProfile, MeetingId};
use cuntong_core::site::Region;
use cuntong_firmware_sim::fleet::{
    FILES_PER_TERMINAL, Fleet, MAX_FLEET, SimOptions, fleet_ids, make_room_for,
};
use cuntong_terminal::broker_url::BrokerUrl;
use cuntong_terminal::daemon::shutdown_signal;
use cuntong_terminal::link::unix_ms;
use cuntong_terminal::{print, println};
use tokio_util::sync::CancellationToken;

use super::common::{Failure, Usage, fail, parse, positive};
use super::meeting::{ANSWER, CentralClient, quantile};
use crate::broker;
use crate::central::{self, CentralOptions, CentralStats};
use crate::control::{RequestBody, ResponseBody};
use crate::store::{Database, SqliteStore, Store};
use crate::view;

#[derive(Debug, Args)]
pub struct DemoArgs {
    #[arg(long, default_value = "127.0.0.1:1883")]
    listen: String,
    /// Number of simulated terminals.
    #[arg(long, default_value_t = 12)]
    sites: usize,
    /// The simulated region.
    #[arg(long, default_value = "130102")]
    region: String,
    /// How often each terminal samples and reports.
    #[arg(long, default_value = "5s")]
    interval: String,
    /// Stop after this long (default: until Ctrl-C).
    #[arg(long)]
    duration: Option<String>,
    /// The store (default: a new database in a temporary directory).
    #[arg(long)]
    db: Option<PathBuf>,
    /// Where the web dashboard listens.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    http: String,
}

pub async fn run(args: DemoArgs) -> Result<(), Failure> {
    let addr: SocketAddr = parse("--listen", &args.listen)?;
    let http: SocketAddr = parse("--http", &args.http)?;
    let region: Region = parse("--region", &args.region)?;
    let interval = positive("--interval", &args.interval)?;
    let run_for = args
        .duration
        .map(|d| positive("--duration", &d))
        .transpose()?;
    let sites = args.sites;
    if !(1..=MAX_FLEET).contains(&sites) {
        return Err(Usage(format!("--sites {sites}: 1 to {MAX_FLEET}")).into());
    }
    // Each site's connection has its other end in this process too, at the embedded broker.
    make_room_for(sites, FILES_PER_TERMINAL + 1)
        .map_err(|e| Usage(format!("--sites {sites}: {e}")))?;
    demo(addr, http, region, sites, interval, run_for, args.db).await
}

async fn demo(
    addr: SocketAddr,
    http: SocketAddr,
    region: Region,
    sites: usize,
    interval: Duration,
    run_for: Option<Duration>,
    db: Option<PathBuf>,
) -> Result<(), Failure> {
    let workdir = tempfile::Builder::new()
        .prefix("cuntong-demo-")
        .tempdir()
        .map_err(fail)?;
    let db = db.unwrap_or_else(|| workdir.path().join("central.db"));
    let addr = broker::serve(addr, None).await.map_err(fail)?;
    let broker_url: BrokerUrl = parse("--listen", &format!("mqtt://{addr}"))?;
    eprintln!("broker listening on mqtt://{addr} (embedded, open: no authentication)");
    eprintln!("store    {}", db.display());

    let stop = CancellationToken::new();
    let stats = Arc::new(CentralStats::default());
    let mut central = tokio::spawn(central::run(
        CentralOptions {
            http: Some(http),
            ..CentralOptions::new(
                broker_url.clone(),
                Database::Sqlite(db.clone()),
                "central-demo",
            )
        },
        stats.clone(),
        stop.clone(),
    ));
    let fleet = Fleet::start(
        fleet_ids(&region, sites),
        &SimOptions {
            keep_alive: Duration::from_secs(10),
            ..SimOptions::new(
                broker_url.clone(),
                workdir.path().join("terminals"),
                interval,
            )
        },
    );
    eprintln!(
        "fleet    {sites} simulated terminals in region {region}, reporting every {interval:?}"
    );
    // A meeting of the region once the fleet is online: every site joins and answers a roll call.
    let meeting_line = Arc::new(std::sync::Mutex::new(String::from(
        "meeting  (waiting for the fleet)",
    )));
    let meeting = {
        let (line, db, url) = (meeting_line.clone(), db.clone(), broker_url.clone());
        tokio::spawn(async move {
            let result = demo_meeting(url, &db, region, sites, &line).await;
            if let Err(e) = &result
                && let Ok(mut l) = line.lock()
            {
                *l = format!("meeting  failed: {e}");
            }
            result.ok()
        })
    };

    let deadline = run_for.map(|d| tokio::time::Instant::now() + d);
    let live = std::io::stdout().is_terminal();
    let signal = shutdown_signal();
    tokio::pin!(signal);
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let reader = SqliteStore::open(&db).map_err(fail)?;
    let names = reader.names(None).map_err(fail)?;
    // Central ending on its own (it could not listen, say) ends the demo.
    let mut central_ended = None;
    loop {
        let done = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut signal => break,
            _ = done => break,
            r = &mut central => {
                central_ended = Some(r);
                break;
            }
            _ = tick.tick() => {
                if live {
                    let rows = reader.sites(None).map_err(fail)?;
                    print!("\x1b[2J\x1b[H{}", view::sites_table(&rows, unix_ms(), &names));
                    println!(
                        "stored {} messages ({} values), {} duplicates, {} rejected; Ctrl-C to stop",
                        stats.get(|s| &s.stored), stats.get(|s| &s.values),
                        stats.get(|s| &s.duplicates), stats.get(|s| &s.rejected)
                    );
                    if let Ok(l) = meeting_line.lock() {
                        println!("{l}");
                    }
                }
            }
        }
    }
    // The fleet as it was running, then an orderly stop: terminals say goodbye, and central
    // stores that before it stops (bounded, so a stuck broker cannot hang the demo).
    let rows = reader.sites(None).map_err(fail)?;
    // End the meeting (if it got that far) before the sites go.
    if let Ok(Ok(Some((mut client, id)))) =
        tokio::time::timeout(Duration::from_secs(1), meeting).await
    {
        let _ = client.op(id, ChairOp::End).await;
        client.close();
    }
    let failed = fleet.stop().await;
    let all_offline = async {
        while reader.sites(None).is_ok_and(|r| r.iter().any(|s| s.online)) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), all_offline).await;
    stop.cancel();
    let central_result = match central_ended {
        Some(r) => r,
        None => central.await,
    };
    print!("{}", view::sites_table(&rows, unix_ms(), &names));
    println!(
        "stored {} messages ({} values), {} duplicates, {} rejected",
        stats.get(|s| &s.stored),
        stats.get(|s| &s.values),
        stats.get(|s| &s.duplicates),
        stats.get(|s| &s.rejected)
    );
    if let Ok(l) = meeting_line.lock() {
        println!("{l}");
    }
    if let Some((id, e)) = failed.first() {
        return Err(fail(format!("terminal {id}: {e}")));
    }
    match central_result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(fail(e)),
        Err(e) => Err(fail(e)),
    }
}

/// The demo's meeting: once central knows the fleet, a meeting of the region; every site joins
/// and answers a roll call. Keeps `line` up to date; returns the client and the meeting id.
async fn demo_meeting(
    broker: BrokerUrl,
    db: &Path,
    region: Region,
    sites: usize,
    line: &std::sync::Mutex<String>,
) -> Result<(CentralClient, MeetingId), Failure> {
    let set = |text: String| {
        if let Ok(mut l) = line.lock() {
            *l = text;
        }
    };
    let known = || {
        SqliteStore::open_read_only(db)
            .and_then(|s| s.sites(Some(&region)))
            .map_or(0, |r| r.iter().filter(|s| s.online).count())
    };
    let started = tokio::time::Instant::now();
    while known() < sites && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut client = CentralClient::connect(broker, None, cuntong_terminal::link::QoS::AtLeastOnce)
        .await
        .map_err(fail)?;
    let profile = MediaProfile::named("sd").ok_or_else(|| fail("internal: no sd profile"))?;
    let created = client
        .ask(
            RequestBody::Create {
                title: format!("{region} 演示会议 (demo meeting)"),
                kind: Kind::Meeting,
                invite: vec![Invitee::Region(region)],
                at_ms: None,
                profile,
                chair: None,
                floor_mutes_others: true,
            },
            ANSWER,
        )
        .await?;
    let ResponseBody::Created { id } = created else {
        return Err(fail(format!("unexpected answer {created:?}")));
    };
    client.op(id, ChairOp::Start).await?;
    let began = tokio::time::Instant::now();
    let joined = loop {
        let s = client.status(id).await?;
        let j = s.sites.iter().filter(|x| x.state == "joined").count();
        set(format!("meeting  {id}: {j} of {sites} joined"));
        if j >= sites || began.elapsed() > Duration::from_secs(30) {
            break j;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let rows = client.roll_call(id, Duration::from_secs(10)).await?;
    let mut lat: Vec<u64> = rows.iter().filter_map(|r| r.latency_ms).collect();
    lat.sort_unstable();
    let ms = |p| quantile(&lat, p).map_or("-".to_owned(), |v| format!("{v} ms"));
    set(format!(
        "meeting  {id}: {joined} of {sites} joined; roll call {} of {} present, answer p50 {} p99 {} (cuntong meeting status {id})",
        lat.len(),
        rows.len(),
        ms(0.5),
        ms(0.99)
    ));
    Ok((client, id))
}
