//! Meetings end to end against Mosquitto: 200 simulated terminals of a county join a county
//! meeting and answer a roll call; ten of them lose their link mid-meeting and are muted and
//! taken off the broadcast while away; back, they converge to the chair's state within one
//! heartbeat; the end tears everything down and clears the retained state.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use cuntong::control::{RollCallJson, SiteJson};
use cuntong_e2e::{
    Broker, BrokerKind, LinkProxy, Proc, bin, central_with, ok, run, sim_fleet, sites, wait_until,
};

/// The county the meeting invites.
const COUNTY: &str = "130102";
/// The township whose ten villages are cut off (none of the first fleet's sites is in it).
const AWAY: &str = "130102009";
const HEARTBEAT: Duration = Duration::from_secs(2);

fn cuntong(broker: &str, args: &[&str]) -> Output {
    let mut all = args.to_vec();
    all.extend(["--broker", broker]);
    run(&bin("cuntong"), &all)
}

fn status(broker: &str, id: &str) -> Vec<SiteJson> {
    let out = cuntong(broker, &["meeting", "status", id, "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// Retained messages under the meeting tree, as `topic payload-length` lines, read with a
/// marker so that an empty answer means "nothing retained", not "not subscribed yet".
fn retained_meeting_topics(port: u16) -> Vec<String> {
    let port = port.to_string();
    let marker = "ct/v1/m/13/zzmarker";
    let publish = |payload: &[&str]| {
        let mut args = vec![
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            marker,
            "-r",
            "-q",
            "1",
        ];
        args.extend_from_slice(payload);
        assert!(run(Path::new("mosquitto_pub"), &args).status.success());
    };
    publish(&["-m", "marker"]);
    let out = run(
        Path::new("mosquitto_sub"),
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "ct/v1/m/#",
            "--retained-only",
            "-W",
            "2",
            "-F",
            "%t %l",
        ],
    );
    publish(&["-n"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    assert!(
        lines.iter().any(|l| l.starts_with(marker)),
        "the retained marker did not come back: {text}"
    );
    lines
        .into_iter()
        .filter(|l| !l.starts_with(marker))
        .collect()
}

#[test]
fn a_county_meeting_of_200_sites_converges_after_a_link_cut_and_tears_down() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Broker::start(BrokerKind::Mosquitto, d);
    let url = broker.url.clone();
    let db = d.join("central.db");
    let central = central_with(&broker, &db, d, &["--meeting-heartbeat", "2s"]);
    // 190 sites straight to the broker, 10 behind a link the test cuts.
    let link = LinkProxy::start(d, broker.port);
    let _near = sim_fleet(&url, COUNTY, 190, d, "near");
    let away_fleet = sim_fleet(&link.url(), AWAY, 10, d, "away");
    assert!(
        wait_until(Duration::from_secs(60), || sites(&db, Some(COUNTY))
            .iter()
            .filter(|s| s.online)
            .count()
            == 200),
        "not all 200 terminals came online:\n{}",
        away_fleet.log_text()
    );

    let created = ok(cuntong(
        &url,
        &[
            "meeting",
            "create",
            "--title",
            "全县防汛工作会议",
            "--invite",
            COUNTY,
            "--json",
        ],
    ));
    let id = serde_json::from_str::<serde_json::Value>(&created).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(cuntong(&url, &["meeting", "start", &id]));
    let all_joined = |rows: &[SiteJson]| {
        rows.len() == 200 && rows.iter().all(|s| s.state == "joined" && s.converged)
    };
    assert!(
        wait_until(Duration::from_secs(30), || all_joined(&status(&url, &id))),
        "{}",
        central.log_text()
    );

    // Sites are listed with their names: a village's imported official name, "(unnamed)"
    // for the others.
    let named = status(&url, &id)[0].terminal.clone();
    let code = named.split('-').next().unwrap().to_owned();
    let csv = d.join("villages.csv");
    std::fs::write(&csv, format!("code,name\n{code},\"演示村村委会\"\n")).unwrap();
    ok(std::process::Command::new(cuntong_e2e::bin("cuntong"))
        .args(["regions", "import", csv.to_str().unwrap(), "--db"])
        .arg(&db)
        .output()
        .unwrap());
    let name_of = |rows: &[SiteJson], t: &str| {
        rows.iter()
            .find(|s| s.terminal == t)
            .map(|s| s.name.clone())
    };
    assert!(
        wait_until(Duration::from_secs(10), || name_of(
            &status(&url, &id),
            &named
        )
        .as_deref()
            == Some("演示村村委会")),
        "{:?}",
        name_of(&status(&url, &id), &named)
    );
    assert!(status(&url, &id).iter().all(|s| !s.name.is_empty()));

    // Roll call: every site answers.
    let out = ok(cuntong(
        &url,
        &["meeting", "rollcall", &id, "--timeout", "20s", "--json"],
    ));
    let rows: Vec<RollCallJson> = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.len(), 200);
    assert!(
        rows.iter()
            .any(|r| r.terminal == named && r.name == "演示村村委会")
    );
    assert_eq!(
        rows.iter().filter(|r| r.present).count(),
        200,
        "absent: {:?}",
        rows.iter().filter(|r| !r.present).collect::<Vec<_>>()
    );
    assert!(rows.iter().all(|r| r.latency_ms.is_some()));

    // One of the ten is broadcast to everybody; then their link is cut.
    let away: Vec<String> = sites(&db, Some(AWAY))
        .into_iter()
        .map(|s| s.terminal)
        .collect();
    assert_eq!(away.len(), 10);
    ok(cuntong(&url, &["meeting", "broadcast", &id, &away[0]]));
    assert!(wait_until(Duration::from_secs(10), || all_joined(&status(
        &url, &id
    ))));
    link.set("cut");
    assert!(
        wait_until(Duration::from_secs(20), || {
            let rows = status(&url, &id);
            rows.iter()
                .filter(|s| away.contains(&s.terminal))
                .all(|s| s.state == "unreachable")
        }),
        "the cut sites are not reported unreachable"
    );

    // While they are away the chair mutes them and ends the broadcast.
    for t in &away {
        ok(cuntong(&url, &["meeting", "mute", &id, t]));
    }
    ok(cuntong(&url, &["meeting", "broadcast", &id, "--off"]));
    let rows = status(&url, &id);
    assert!(
        rows.iter()
            .filter(|s| away.contains(&s.terminal))
            .all(|s| s.muted && !s.converged),
        "they cannot have applied it yet: {rows:?}"
    );

    // Back: each converges as soon as it is heard again, within one heartbeat.
    link.set("restore");
    let mut back: BTreeMap<String, Instant> = BTreeMap::new();
    let mut converged: BTreeMap<String, Instant> = BTreeMap::new();
    let done = wait_until(Duration::from_secs(30), || {
        let now = Instant::now();
        for s in status(&url, &id)
            .into_iter()
            .filter(|s| away.contains(&s.terminal))
        {
            if s.state == "joined" {
                back.entry(s.terminal.clone()).or_insert(now);
            }
            if s.converged && s.muted {
                converged.entry(s.terminal.clone()).or_insert(now);
            }
        }
        converged.len() == away.len()
    });
    assert!(done, "converged: {converged:?}\n{}", away_fleet.log_text());
    for t in &away {
        let lag = converged[t].saturating_duration_since(back[t]);
        assert!(
            lag <= HEARTBEAT,
            "{t} took {lag:?} after it was back to apply the chair's state"
        );
    }
    assert!(all_joined(&status(&url, &id)), "the other 190 stayed put");

    // The retained state is there while the meeting runs, and gone after the end.
    let live = retained_meeting_topics(broker.port);
    assert_eq!(
        live.len(),
        1,
        "one state for the one invited region: {live:?}"
    );
    assert!(live[0].starts_with(&format!("ct/v1/m/13/01/02/{id} ")));
    ok(cuntong(&url, &["meeting", "end", &id]));
    assert!(
        wait_until(Duration::from_secs(10), || status(&url, &id)
            .iter()
            .all(|s| s.state == "left")),
        "not everybody left"
    );
    assert!(
        retained_meeting_topics(broker.port).is_empty(),
        "the retained state was not cleared"
    );
}

/// One simulated box with its status socket, for the operator's commands.
struct BoxSim {
    socket: std::path::PathBuf,
    _proc: Proc,
}

impl BoxSim {
    fn start(id: &str, broker: &str, d: &Path) -> BoxSim {
        let data = d.join(id);
        let proc = Proc::spawn(
            &bin("cuntong-sim"),
            &[
                "terminal",
                "--id",
                id,
                "--broker",
                broker,
                "--data-dir",
                data.to_str().unwrap(),
                "--interval",
                "2s",
            ],
            d.join(format!("{id}.log")),
        );
        BoxSim {
            socket: data.join(id).join("status.sock"),
            _proc: proc,
        }
    }

    /// `cuntong-terminal ARGS --socket …`: the operator at the box.
    fn operator(&self, args: &[&str]) -> Output {
        let mut all = args.to_vec();
        all.extend(["--socket", self.socket.to_str().unwrap()]);
        run(&bin("cuntong-terminal"), &all)
    }

    fn meetings(&self) -> Vec<serde_json::Value> {
        let out = self.operator(&["status", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["meetings"].as_array().cloned().unwrap_or_default()
    }
}

#[test]
fn a_village_calls_its_county_office_and_a_county_box_chairs_its_county() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Broker::start(BrokerKind::Mosquitto, d);
    let url = broker.url.clone();
    let db = d.join("central.db");
    let central = central_with(&broker, &db, d, &["--meeting-heartbeat", "1s"]);
    let village = BoxSim::start("130102001001-main", &url, d);
    let hall = BoxSim::start("130102000000-hall", &url, d);
    let _other_county = BoxSim::start("130103001001-main", &url, d);
    assert!(
        wait_until(Duration::from_secs(30), || sites(&db, None)
            .iter()
            .filter(|s| s.online)
            .count()
            == 3),
        "the three boxes did not come online"
    );

    // 可视电话: the village point calls its county office from its box; the office's box
    // (unattended, so it accepts) joins; the office hangs up, which ends the call.
    let out = ok(village.operator(&["call", "130102000000-hall"]));
    let call = out
        .split_whitespace()
        .last()
        .unwrap()
        .trim_matches(|c| c == '(' || c == ')')
        .to_owned();
    let joined = |b: &BoxSim| {
        b.meetings()
            .iter()
            .any(|m| m["id"] == call.as_str() && m["kind"] == "call" && m["phase"] == "joined")
    };
    assert!(
        wait_until(Duration::from_secs(15), || joined(&village)
            && joined(&hall)),
        "call {call}: {:?} / {:?}\n{}",
        village.meetings(),
        hall.meetings(),
        central.log_text()
    );
    ok(hall.operator(&["meeting", "leave", &call]));
    assert!(
        wait_until(Duration::from_secs(10), || village
            .meetings()
            .iter()
            .any(|m| m["id"] == call.as_str() && m["phase"] == "ended")),
        "hanging up did not end the call for the caller: {:?}",
        village.meetings()
    );

    // A prefecture meeting; the county office's box is made the chair of its county.
    let created = ok(cuntong(
        &url,
        &[
            "meeting",
            "create",
            "--title",
            "全市会议",
            "--invite",
            "1301",
            "--json",
        ],
    ));
    let id = serde_json::from_str::<serde_json::Value>(&created).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(cuntong(&url, &["meeting", "start", &id]));
    ok(cuntong(
        &url,
        &["meeting", "delegate", &id, "130102000000-hall"],
    ));
    let muted = |t: &str| {
        status(&url, &id)
            .iter()
            .any(|s| s.terminal == t && s.muted && s.converged)
    };
    assert!(wait_until(Duration::from_secs(15), || {
        status(&url, &id)
            .iter()
            .filter(|s| s.state == "joined")
            .count()
            == 3
    }));
    ok(hall.operator(&["meeting", "chair", &id, "mute", "130102001001-main"]));
    assert!(
        wait_until(Duration::from_secs(10), || muted("130102001001-main")),
        "the delegate could not mute a village of its county"
    );
    ok(hall.operator(&["meeting", "chair", &id, "mute", "130103001001-main"]));
    let answer = || {
        hall.meetings()
            .iter()
            .find(|m| m["id"] == id.as_str())
            .map(|m| m["chair_answer"].as_str().unwrap_or("").to_owned())
            .unwrap_or_default()
    };
    assert!(
        wait_until(Duration::from_secs(10), || answer()
            .contains("outside the delegated region")),
        "answer: {}",
        answer()
    );
    assert!(
        !muted("130103001001-main"),
        "the neighbouring county was muted"
    );
    // The village box itself is no delegate.
    ok(village.operator(&["meeting", "chair", &id, "unmute", "130102001001-main"]));
    assert!(wait_until(Duration::from_secs(10), || village
        .meetings()
        .iter()
        .any(|m| m["chair_answer"]
            .as_str()
            .is_some_and(|a| a.contains("not a delegated chair")))));
    assert!(muted("130102001001-main"));
    ok(cuntong(&url, &["meeting", "end", &id]));
}

#[test]
fn a_stored_meeting_central_cannot_use_is_skipped_listed_and_ended_while_central_keeps_running() {
    use cuntong::control::MeetingJson;
    use cuntong_core::meeting::host::{Host, HostConfig};
    use cuntong_core::meeting::{Kind, MediaProfile, MeetingSpec};

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Broker::start(BrokerKind::Embedded, d);
    let url = broker.url.clone();
    let db = d.join("central.db");
    let start_central = |n: usize| {
        Proc::spawn(
            &bin("cuntong"),
            &["central", "--broker", &url, "--db", db.to_str().unwrap()],
            d.join(format!("central-{n}.log")),
        )
    };
    let list = || -> Option<Vec<MeetingJson>> {
        let out = cuntong(&url, &["meeting", "list", "--json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    };

    // A healthy scheduled meeting; central sets up its store.
    let mut central = start_central(1);
    let mut good = String::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            let out = cuntong(
                &url,
                &[
                    "meeting", "create", "--title", "例会", "--invite", COUNTY, "--at", "+1h",
                ],
            );
            good = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            out.status.success()
        }),
        "{}",
        central.log_text()
    );
    assert!(central.terminate(Duration::from_secs(10)).is_some());

    // Two rows central cannot use, written straight into the store: a meeting scheduled past
    // year 9999 (what `--at +99999999999h` stored before it was refused) and one that no
    // longer decodes.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let far = now + 99_999_999_999 * 3_600_000;
    let (host, _) = Host::new(
        MeetingSpec {
            id: "mfar".parse().unwrap(),
            kind: Kind::Meeting,
            title: "x".into(),
            chair: None,
            invitees: vec![COUNTY.parse().unwrap()],
            starts_ms: Some(far),
            profile: MediaProfile::named("sd").unwrap(),
            floor_mutes_others: true,
            heartbeat_ms: 10_000,
        },
        HostConfig::default(),
        vec![7; 30],
        now,
    );
    let conn = rusqlite::Connection::open(&db).unwrap();
    let insert = "INSERT INTO meetings (id, status, created_ms, host) VALUES (?1, ?2, ?3, ?4)";
    conn.execute(
        insert,
        rusqlite::params!["mfar", "scheduled", now as i64, host.to_store().unwrap()],
    )
    .unwrap();
    conn.execute(
        insert,
        rusqlite::params!["mjunk", "live", now as i64, b"not a session".to_vec()],
    )
    .unwrap();
    drop(conn);

    // Central starts with them, answers, and lists them with what is wrong; again after a
    // power cut.
    for n in 2..=3 {
        let mut central = start_central(n);
        let mut rows = Vec::new();
        assert!(
            wait_until(Duration::from_secs(20), || {
                rows = list().unwrap_or_default();
                rows.len() == 3
            }),
            "{rows:?}\n{}",
            central.log_text()
        );
        let row = |id: &str| rows.iter().find(|m| m.id == id).unwrap().clone();
        assert_eq!(row(&good).status, "scheduled");
        assert_eq!(row(&good).problem, None);
        let far = row("mfar");
        assert_eq!(far.status, "unusable");
        assert!(far.problem.as_deref().unwrap().contains("9999"), "{far:?}");
        assert!(row("mjunk").problem.is_some());
        let human = ok(cuntong(&url, &["meeting", "list"]));
        assert!(
            human.contains("mfar") && human.contains("cannot be used"),
            "{human}"
        );
        // The other requests answer, naming the problem.
        let status = cuntong(&url, &["meeting", "status", "mfar"]);
        assert_eq!(status.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&status.stderr).contains("meeting end mfar"));
        assert!(
            central.child.try_wait().unwrap().is_none(),
            "central stopped:\n{}",
            central.log_text()
        );
        let log = central.log_text();
        assert_eq!(
            log.matches("a stored session cannot be used").count(),
            2,
            "{log}"
        );
        central.kill();
    }

    // `meeting end` retires them for good.
    let mut central = start_central(4);
    assert!(wait_until(Duration::from_secs(20), || list().is_some()));
    for id in ["mfar", "mjunk"] {
        ok(cuntong(&url, &["meeting", "end", id]));
    }
    let ids = |rows: Vec<MeetingJson>| rows.into_iter().map(|m| m.id).collect::<Vec<_>>();
    assert_eq!(ids(list().unwrap()), [good.clone()]);
    central.kill();
    let mut central = start_central(5);
    let mut rows = Vec::new();
    assert!(wait_until(Duration::from_secs(20), || {
        rows = list().unwrap_or_default();
        !rows.is_empty()
    }));
    assert_eq!(ids(rows), [good]);
    assert!(central.child.try_wait().unwrap().is_none());
}

#[test]
fn a_store_held_by_another_writer_keeps_no_chair_waiting_and_loses_no_change() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Broker::start(BrokerKind::Embedded, d);
    let url = broker.url.clone();
    let db = d.join("central.db");
    let central = Proc::spawn(
        &bin("cuntong"),
        &["central", "--broker", &url, "--db", db.to_str().unwrap()],
        d.join("central.log"),
    );
    let mut id = String::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            let out = cuntong(
                &url,
                &[
                    "meeting", "create", "--title", "例会", "--invite", COUNTY, "--at", "+1h",
                ],
            );
            id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            out.status.success()
        }),
        "{}",
        central.log_text()
    );
    let stored_status = || -> Option<String> {
        let conn =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .ok()?;
        conn.query_row("SELECT status FROM meetings WHERE id = ?1", [&id], |r| {
            r.get(0)
        })
        .ok()
    };
    assert!(wait_until(Duration::from_secs(10), || stored_status()
        .as_deref()
        == Some("scheduled")));

    // Another program holds the store's write lock for longer than any write waits for it.
    let mut other = rusqlite::Connection::open(&db).unwrap();
    let lock = other
        .transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)
        .unwrap();
    // The meeting host writes every second; none of it may hold up an answer.
    for op in ["start", "status", "mute", "status"] {
        let args: Vec<&str> = match op {
            "mute" => vec!["meeting", "mute", &id, "--all"],
            other => vec!["meeting", other, &id],
        };
        let asked = Instant::now();
        let out = cuntong(&url, &args);
        let took = asked.elapsed();
        assert!(
            out.status.success(),
            "{op}: {out:?}\n{}",
            central.log_text()
        );
        assert!(
            took < Duration::from_secs(3),
            "{op} took {took:?} while the store was locked"
        );
    }
    assert_eq!(stored_status().as_deref(), Some("scheduled"));
    drop(lock);
    // Once the store is free again, what changed meanwhile is written.
    assert!(
        wait_until(Duration::from_secs(20), || stored_status().as_deref()
            == Some("live")),
        "{}",
        central.log_text()
    );
}

#[test]
fn a_meeting_that_is_not_there_is_named_and_exits_2_while_a_refusal_of_one_that_is_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Not even a meeting id: refused before anything connects.
    let out = cuntong("mqtt://127.0.0.1:1", &["meeting", "status", "NOPE"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"NOPE\""));

    let broker = Broker::start(BrokerKind::Embedded, d);
    let url = broker.url.clone();
    let db = d.join("central.db");
    let central = central_with(&broker, &db, d, &[]);
    assert!(
        wait_until(Duration::from_secs(20), || cuntong(
            &url,
            &["meeting", "list"]
        )
        .status
        .success()),
        "{}",
        central.log_text()
    );
    // A well-formed id central does not host, whatever is asked of it.
    for args in [
        &["meeting", "status", "nope"][..],
        &["meeting", "status", "nope", "--json"],
        &["meeting", "start", "nope"],
        &["meeting", "end", "nope"],
        &["meeting", "mute", "nope", "--all"],
        &["meeting", "floor", "nope", "grant", "130102001001-main"],
        &["meeting", "delegate", "nope", "130102001001-main"],
        &["meeting", "rollcall", "nope"],
        &["meeting", "watch", "nope"],
        &[
            "meeting",
            "view",
            "nope",
            "130102001001-main",
            "--to",
            "127.0.0.1:5000",
        ],
    ] {
        let out = cuntong(&url, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim(), "error: no session nope", "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    // A value central does not take is bad input too.
    let out = cuntong(
        &url,
        &[
            "meeting", "create", "--title", "培训", "--invite", COUNTY, "--kind", "training",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--chair"));
    // A meeting that is there but refuses what is asked, as it stands, is not.
    let id = ok(cuntong(
        &url,
        &["meeting", "create", "--title", "例会", "--invite", COUNTY],
    ));
    let id = id.trim();
    ok(cuntong(&url, &["meeting", "end", id]));
    let out = cuntong(&url, &["meeting", "start", id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ended"));
}
