//! Central under a storm: 3,000 sites join a meeting while a fleet replays its outboxes into a
//! store that is far behind (another program holds its write lock). Throughout, the chair is
//! answered at once and every joining site gets its media plan; what central could not keep
//! is shed, never confirmed, and stored once the terminals send it again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cuntong_core::delivery::Watermarks;
use cuntong_core::envelope::{Envelope, encode};
use cuntong_core::meeting::{Downlink, MeetingId};
use cuntong_core::telemetry::{Metric, Sample, TelemetryBatch};
use cuntong_core::terminal_id::TerminalId;
use cuntong_core::topic::{Channel, Topic, region_filter};
use cuntong_e2e::{Broker, BrokerKind, bin, central, join, run, wait_until};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// Sites joining the province meeting.
const JOINING: usize = 3_000;
/// Terminals replaying their outboxes, and the records each replays: more than central keeps
/// waiting for a locked store.
const REPLAYING: usize = 100;
const RECORDS: u64 = 700;
/// What a chair may wait for an answer, storm or not.
const ANSWER_WITHIN: Duration = Duration::from_secs(3);

fn cuntong(broker: &str, args: &[&str]) -> std::process::Output {
    let mut all = args.to_vec();
    all.extend(["--broker", broker]);
    run(&bin("cuntong"), &all)
}

fn joining_site(k: usize) -> TerminalId {
    format!(
        "1301{:02}{:03}{:03}-main",
        k % 20 + 1,
        k / 20 % 100 + 1,
        k / 2000 + 1
    )
    .parse()
    .unwrap()
}

fn replaying_terminal(k: usize) -> TerminalId {
    format!("1302{:02}001{:03}-main", k % 20 + 1, k / 20 + 1)
        .parse()
        .unwrap()
}

fn record(seq: u64) -> Vec<u8> {
    encode(&Envelope {
        seq,
        time_ms: 1_763_798_400_000 + seq * 60_000,
        body: TelemetryBatch {
            samples: vec![Sample {
                offset_ms: 0,
                metric: Metric::AirTemp,
                value: "21.50".parse().unwrap(),
                quality: None,
            }],
        },
    })
    .unwrap()
}

/// A meeting inviting the province, created through central once it answers: its id as
/// given, and parsed.
fn province_meeting(url: &str, central: &cuntong_e2e::Proc) -> (String, MeetingId) {
    let mut id = String::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            let out = cuntong(
                url,
                &["meeting", "create", "--title", "全省会议", "--invite", "13"],
            );
            id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            out.status.success()
        }),
        "{}",
        central.log_text()
    );
    let meeting = id.parse().unwrap();
    (id, meeting)
}

/// An MQTT client whose event loop runs on its own task, handing publishes to `on_publish`.
async fn client(
    id: &str,
    port: u16,
    on_publish: impl Fn(String, bytes::Bytes) + Send + 'static,
) -> AsyncClient {
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(1 << 20, 1 << 20);
    opts.set_inflight(200);
    let (client, mut eventloop) = AsyncClient::new(opts, 1024);
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => on_publish(p.topic, p.payload),
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    client
}

/// The `cuntong meeting status` of the meeting: how long it took, and how many sites joined.
fn status(url: &str, id: &str) -> (Duration, Option<usize>) {
    let asked = Instant::now();
    let out = cuntong(url, &["meeting", "status", id, "--json"]);
    let took = asked.elapsed();
    let joined = out.status.success().then(|| {
        let sites: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        sites.iter().filter(|s| s["state"] == "joined").count()
    });
    (took, joined)
}

fn stored_seqs(db: &std::path::Path) -> Option<BTreeMap<String, (u64, u64, u64)>> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .ok()?;
    let mut q = conn
        .prepare(
            "SELECT terminal, count(*), count(DISTINCT seq), max(seq) FROM messages \
             WHERE stream = 0 GROUP BY terminal",
        )
        .ok()?;
    let rows = q
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                (
                    r.get::<_, u64>(1)?,
                    r.get::<_, u64>(2)?,
                    r.get::<_, u64>(3)?,
                ),
            ))
        })
        .ok()?;
    rows.collect::<Result<_, _>>().ok()
}

#[test]
fn the_chair_is_answered_at_once_while_sites_join_in_thousands_and_a_replay_floods_a_locked_store()
{
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Broker::start(BrokerKind::Embedded, d);
    let url = broker.url.clone();
    let db = d.join("central.db");
    let central = central(&broker, &db, d);
    let (id, meeting) = province_meeting(&url, &central);

    let rt = tokio::runtime::Runtime::new().unwrap();
    // What the sites and terminals hear: media plans, and central's confirmations.
    let admitted = Arc::new(Mutex::new(HashSet::new()));
    let confirmed = Arc::new(Mutex::new(BTreeMap::<TerminalId, u64>::new()));
    let (admitted_in, confirmed_in) = (admitted.clone(), confirmed.clone());
    let (joiner, replayer) = rt.block_on(async {
        let listener = client("storm-listener", broker.port, move |topic, payload| {
            let Ok(Topic::Terminal { id, channel }) = Topic::parse(&topic) else {
                return;
            };
            match channel {
                Channel::MeetingDown => {
                    if let Ok(Downlink::Admitted { .. }) = Downlink::decode(&payload) {
                        admitted_in.lock().unwrap().insert(id);
                    }
                }
                Channel::Ack => {
                    if let Ok(w) = Watermarks::decode(&payload) {
                        confirmed_in.lock().unwrap().insert(id, w.telemetry);
                    }
                }
                _ => {}
            }
        })
        .await;
        for channel in [Channel::MeetingDown, Channel::Ack] {
            listener
                .subscribe(region_filter(None, Some(channel)), QoS::AtLeastOnce)
                .await
                .unwrap();
        }
        let joiner = client("storm-joiner", broker.port, |_, _| {}).await;
        let replayer = client("storm-replayer", broker.port, |_, _| {}).await;
        (joiner, replayer)
    });

    // Another program holds the store's write lock: nothing central receives can be stored.
    let mut other = rusqlite::Connection::open(&db).unwrap();
    let lock = other
        .transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)
        .unwrap();
    let (took, _) = status(&url, &id);
    assert!(
        took < ANSWER_WITHIN,
        "status took {took:?} before the storm"
    );

    // The replay: every terminal's whole outbox at once, far more than central keeps waiting.
    let replay = |from: &BTreeMap<TerminalId, u64>| {
        let (replayer, from) = (replayer.clone(), from.clone());
        rt.spawn(async move {
            for seq in 1..=RECORDS {
                for k in 0..REPLAYING {
                    let t = replaying_terminal(k);
                    if seq > from.get(&t).copied().unwrap_or(0) {
                        let topic = Topic::terminal(&t, Channel::Telemetry).to_string();
                        replayer
                            .publish(topic, QoS::AtLeastOnce, false, record(seq))
                            .await
                            .unwrap();
                    }
                }
            }
        })
    };
    let flood = replay(&BTreeMap::new());
    let ok = cuntong(&url, &["meeting", "start", &id]);
    assert!(ok.status.success(), "{ok:?}\n{}", central.log_text());
    // The join storm: every site joins until it has its plan, as a site does.
    let (joiner_task, admitted_seen) = (joiner.clone(), admitted.clone());
    let joins = rt.spawn(async move {
        let join = join(meeting);
        loop {
            let waiting: Vec<TerminalId> = {
                let admitted = admitted_seen.lock().unwrap();
                (0..JOINING)
                    .map(joining_site)
                    .filter(|s| !admitted.contains(s))
                    .collect()
            };
            if waiting.is_empty() {
                break;
            }
            for s in waiting {
                let topic = Topic::terminal(&s, Channel::MeetingUp).to_string();
                joiner_task
                    .publish(topic, QoS::AtLeastOnce, false, join.clone())
                    .await
                    .unwrap();
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    });

    // The chair asks throughout; every answer comes at once.
    let storm = Instant::now();
    let mut answers = Vec::new();
    let mut joined = 0;
    while joined < JOINING && storm.elapsed() < Duration::from_secs(120) {
        let (took, n) = status(&url, &id);
        answers.push(took);
        assert!(
            took < ANSWER_WITHIN && n.is_some(),
            "status took {took:?} ({n:?}) {:?} into the storm: {answers:?}\n{}",
            storm.elapsed(),
            central.log_text()
        );
        joined = n.unwrap_or(0);
    }
    assert_eq!(joined, JOINING, "{}", central.log_text());
    assert!(
        wait_until(Duration::from_secs(60), || admitted.lock().unwrap().len()
            == JOINING),
        "{} of {JOINING} sites have their plan",
        admitted.lock().unwrap().len()
    );
    rt.block_on(joins).unwrap();
    rt.block_on(flood).unwrap();
    // Central kept what it could wait with and shed the rest, and said so.
    assert!(
        wait_until(Duration::from_secs(30), || central
            .log_text()
            .contains("shedding what terminals send again")),
        "{}",
        central.log_text()
    );
    assert!(
        confirmed.lock().unwrap().is_empty(),
        "nothing is confirmed while nothing is stored"
    );

    // The store is free again: what was kept is stored and confirmed; the terminals send what
    // was shed again (from past their confirmations, as an outbox does) until all of it is.
    drop(lock);
    let all_confirmed = || {
        let c = confirmed.lock().unwrap();
        (0..REPLAYING).all(|k| c.get(&replaying_terminal(k)) == Some(&RECORDS))
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    while !all_confirmed() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(5));
        let from = confirmed.lock().unwrap().clone();
        rt.block_on(replay(&from)).unwrap();
    }
    assert!(all_confirmed(), "{:?}", confirmed.lock().unwrap());
    // Every record once: no gap, no duplicate, nothing confirmed that was not stored.
    let stored = stored_seqs(&db).unwrap();
    for k in 0..REPLAYING {
        let t = replaying_terminal(k).to_string();
        assert_eq!(stored.get(&t), Some(&(RECORDS, RECORDS, RECORDS)), "{t}");
    }
}

/// Sites joining while the broker drops what it has for central's ingest: fewer than the
/// broker queues for one client, so none of their joins is dropped on central's meeting link.
const JOINING_PAST_A_FULL_QUEUE: usize = 50;

#[test]
fn the_chair_is_answered_and_sites_join_while_the_broker_drops_the_fleets_records_for_central() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A broker that keeps one message unacknowledged and 100 more waiting for each client:
    // central cannot take a flood as fast as it comes, and the broker drops the overflow.
    let broker = Broker::mosquitto_queuing(d, (1, 100));
    let url = broker.url.clone();
    let central = central(&broker, &d.join("central.db"), d);
    let (id, meeting) = province_meeting(&url, &central);
    let ok = cuntong(&url, &["meeting", "start", &id]);
    assert!(ok.status.success(), "{ok:?}\n{}", central.log_text());

    // The flood: terminals replaying their outboxes, from four connections, until told to stop.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let floods: Vec<_> = (0..4)
        .map(|f| {
            let stop = stop.clone();
            let port = broker.port;
            rt.spawn(async move {
                let replayer = client(&format!("flood-{f}"), port, |_, _| {}).await;
                let mut seq = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    seq += 1;
                    for k in (f..REPLAYING).step_by(4) {
                        let t = Topic::terminal(&replaying_terminal(k), Channel::Telemetry);
                        replayer
                            .publish(t.to_string(), QoS::AtLeastOnce, false, record(seq))
                            .await
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    // Whether the broker said it dropped messages for central's link `link` (by its id: the
    // ingest link's has no suffix).
    let dropped_for_central = |link: Option<&str>| {
        broker.log_text().lines().any(|l| {
            let Some(id) = l.split("being dropped for client ").nth(1) else {
                return false;
            };
            let suffix = id.trim_end_matches('.').split_once('.').map(|(_, s)| s);
            id.starts_with("central-") && suffix == link
        })
    };
    assert!(
        wait_until(Duration::from_secs(20), || dropped_for_central(None)),
        "the broker never dropped central's records: {}",
        broker.log_text()
    );

    // Sites join, repeating until they have their plan, as a site does.
    let joiner = rt.block_on(client("joiner", broker.port, |_, _| {}));
    let join = join(meeting);
    for k in 0..JOINING_PAST_A_FULL_QUEUE {
        let topic = Topic::terminal(&joining_site(k), Channel::MeetingUp).to_string();
        rt.block_on(joiner.publish(topic, QoS::AtLeastOnce, false, join.clone()))
            .unwrap();
    }
    // The chair asks throughout; every answer comes at once, and the sites are all in.
    let mut answers = Vec::new();
    let mut joined = 0;
    let storm = Instant::now();
    while (joined < JOINING_PAST_A_FULL_QUEUE || answers.len() < 10)
        && storm.elapsed() < Duration::from_secs(60)
    {
        let (took, n) = status(&url, &id);
        answers.push(took);
        assert!(
            took < ANSWER_WITHIN && n.is_some(),
            "status took {took:?} ({n:?}) {:?} into the flood: {answers:?}\n{}\n{}",
            storm.elapsed(),
            central.log_text(),
            broker.log_text()
        );
        joined = n.unwrap_or(0);
    }
    assert_eq!(joined, JOINING_PAST_A_FULL_QUEUE, "{}", central.log_text());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for f in floods {
        rt.block_on(f).unwrap();
    }
    // The broker dropped what it had for central's ingest link, never for its other links.
    for link in ["meeting", "control"] {
        assert!(!dropped_for_central(Some(link)), "{}", broker.log_text());
    }
}
