//! A SIP room system joins a county meeting through a gateway box: baresip (Debian's, with its
//! H.264, Opus and test-source modules) dials `sip:MEETINGID@gateway`, is present in the roll
//! call, decodes the room's picture and sound, and its own picture reaches the villages when
//! the chair gives it the floor; a room system the gateway does not allow is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use cuntong::control::{RollCallJson, SiteJson};
use cuntong_e2e::{
    Broker, BrokerKind, COUNTY_RELAY, Proc, bin, central_with, free_port, free_ports, ok, run,
    sim_fleet_with, sites, wait_until,
};
use cuntong_firmware_sim::fleet::free_udp_pair;

const HALL: &str = "130102000000-hall";

/// baresip's configuration in `dir` (its `name`): a UA at `sip:USER@127.0.0.1` on `port`
/// with the account parameters `params` (`;mediaenc=srtp-mand` for SRTP with SDES keys),
/// sending a test picture and a tone, dumping the sound it decodes (`sndfile`) and, asked, a
/// decoded picture (`snapshot`).
fn baresip(dir: &Path, name: &str, user: &str, port: u16, params: &str) -> PathBuf {
    let conf = dir.join(format!("baresip-{name}"));
    // baresip's tone source sends at 48 kHz only: a G.711 call sends the bridge's silence.
    let source = if params.contains("PCM") {
        "aubridge,nil"
    } else {
        "ausine,440"
    };
    std::fs::create_dir_all(&conf).unwrap();
    let modules = [
        "g711",
        "opus",
        "avcodec",
        "fakevideo",
        "ausine",
        "sndfile",
        "snapshot",
        "srtp",
    ];
    let mut text = format!(
        "poll_method epoll\nsip_listen 127.0.0.1:{port}\n\
         audio_source {source}\naudio_player aubridge,nil\naudio_alert aubridge,nil\n\
         video_source fakevideo,nil\nvideo_display fakevideo,nil\n\
         video_size 320x240\nvideo_bitrate 300000\nvideo_fps 15\n\
         avcodec_h264enc libx264\navcodec_h264dec h264\n\
         snd_path {}\nmodule_path /usr/lib/baresip/modules\nmodule aubridge.so\n",
        conf.display()
    );
    for m in modules {
        text.push_str(&format!("module {m}.so\n"));
    }
    text.push_str("module_app account.so\nmodule_app menu.so\n");
    std::fs::write(conf.join("config"), text).unwrap();
    std::fs::write(
        conf.join("accounts"),
        format!("<sip:{user}@127.0.0.1>;regint=0{params}\n"),
    )
    .unwrap();
    conf
}

/// Starts baresip with `conf`, asking for the first picture it decodes into
/// `conf/picture.png`, and dialling `uri` if given (else waiting for a call).
fn start(conf: &Path, uri: Option<&str>) -> Proc {
    let picture = format!("/snapshot_recv {}", conf.join("picture.png").display());
    let mut args = vec!["-f", conf.to_str().unwrap(), "-e", &picture];
    let dial = uri.map(|u| format!("/dial {u}"));
    if let Some(d) = &dial {
        args.extend(["-e", d]);
    }
    Proc::spawn(Path::new("baresip"), &args, conf.join("baresip.log"))
}

fn dial(conf: &Path, uri: &str) -> Proc {
    start(conf, Some(uri))
}

/// Whether the UA of `conf` decoded a picture.
fn decoded_picture(conf: &Path) -> bool {
    conf.join("picture.png")
        .metadata()
        .is_ok_and(|m| m.len() > 100)
}

/// Whether the UA of `conf` decoded sound that is heard: its dump of what it decoded (16-bit
/// WAV) holds samples louder than -30 dBFS (the villages' tones, mixed), not only silence.
fn decoded_sound(conf: &Path) -> bool {
    std::fs::read_dir(conf)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with("-dec.wav"))
        .any(|e| {
            let wav = std::fs::read(e.path()).unwrap_or_default();
            wav.get(44..)
                .unwrap_or_default()
                .chunks_exact(2)
                .any(|s| i16::from_le_bytes([s[0], s[1]]).unsigned_abs() > 1_000)
        })
}

/// A server certificate of the fleet CA at `ca` for `name`, into `out` (`server.pem`,
/// `server-key.pem`, `ca.pem`).
fn issue_server(ca: &Path, name: &str, out: &Path) {
    let (ca, out) = (ca.to_str().unwrap(), out.to_str().unwrap());
    ok(run(
        &bin("cuntong"),
        &[
            "ca",
            "issue-server",
            "--ca",
            ca,
            "--name",
            name,
            "--out",
            out,
        ],
    ));
}

#[test]
fn a_room_system_dials_in_is_in_the_roll_call_decodes_the_room_and_is_seen_with_the_floor() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Broker::start(BrokerKind::Mosquitto, d);
    let db = d.join("central.db");
    let central = central_with(&broker, &db, d, &["--meeting-heartbeat", "2s"]);
    let fleet = sim_fleet_with(&broker.url, "130102", 2, d, "fleet", &["--media"]);

    // The gateway box of the county hall: it lets in one room system, by its SIP address
    // (by its IP address, and by a host name).
    let ca = d.join("ca");
    ok(run(
        &bin("cuntong"),
        &["ca", "init", "--dir", ca.to_str().unwrap()],
    ));
    let sip_port = free_port();
    let tls_port = free_port();
    let tls = d.join("sip-tls");
    issue_server(&ca, "127.0.0.1", &tls);
    let data = d.join(HALL);
    std::fs::create_dir_all(&data).unwrap();
    let config = d.join("hall.toml");
    std::fs::write(
        &config,
        format!(
            "id = \"{HALL}\"\nbroker = \"{}\"\ndata_dir = \"{}\"\nkeep_alive = \"5s\"\n\n\
             [telemetry]\nhealth_interval = \"2s\"\nbatch_age = \"2s\"\n\n\
             [meeting]\naccept = \"manual\"\nrtp_port = {}\nmedia_host = \"127.0.0.1\"\n\n\
             [sip]\nlisten = \"127.0.0.1:{sip_port}\"\nallow = [\"sip:hall@127.0.0.1\", \"sip:hall@localhost\"]\n\
             rtp_port = {}\ntls = {{ listen = \"127.0.0.1:{tls_port}\", cert = \"{}\", key = \"{}\", ca = \"{}\" }}\n\n\
             [commands]\nkey = \"{}\"\n",
            broker.url,
            data.display(),
            free_udp_pair().unwrap(),
            free_udp_pair().unwrap(),
            tls.join("server.pem").display(),
            tls.join("server-key.pem").display(),
            tls.join("ca.pem").display(),
            ca.join("command.pub").display(),
        ),
    )
    .unwrap();
    let gateway = Proc::spawn(
        &bin("cuntong-sim"),
        &[
            "terminal",
            "--config",
            config.to_str().unwrap(),
            "--interval",
            "2s",
        ],
        d.join("hall.log"),
    );
    assert!(
        wait_until(Duration::from_secs(40), || sites(&db, None)
            .iter()
            .filter(|s| s.online)
            .count()
            == 4),
        "relay, two villages and the hall online: {:?}\n{}",
        sites(&db, None),
        fleet.log_text()
    );
    let cuntong = |args: &[&str]| cuntong_e2e::cuntong_on(&broker.url, args);
    let id = ok(cuntong(&[
        "meeting",
        "create",
        "--title",
        "县务会",
        "--invite",
        "130102",
        "--profile",
        "low",
        "--chair",
        COUNTY_RELAY,
    ]))
    .trim()
    .to_owned();
    ok(cuntong(&["meeting", "start", &id]));
    let status = || -> Vec<SiteJson> {
        serde_json::from_str(&ok(cuntong(&["meeting", "status", &id, "--json"]))).unwrap()
    };
    let state_of = |who: &str| {
        status()
            .into_iter()
            .find(|s| s.terminal == who)
            .map(|s| s.state)
    };
    assert_eq!(state_of(HALL).as_deref(), Some("invited"), "{:?}", status());

    // A room system the gateway does not let in is refused, and nothing joins.
    let intruder = baresip(d, "intruder", "intruder", free_ports(2), "");
    let uri = format!("sip:{id}@127.0.0.1:{sip_port}");
    let mut refused = dial(&intruder, &uri);
    assert!(
        wait_until(Duration::from_secs(15), || refused
            .log_text()
            .contains("403 Forbidden")),
        "{}",
        refused.log_text()
    );
    refused.kill();
    assert_eq!(state_of(HALL).as_deref(), Some("invited"));

    // The hall's room system dials in, over TLS with SRTP (SDES keys): the hall joins and
    // answers the roll call.
    let hall = baresip(d, "srtp", "hall", free_ports(2), ";mediaenc=srtp-mand");
    let mut call = dial(
        &hall,
        &format!("sip:{id}@127.0.0.1:{tls_port};transport=tls"),
    );
    assert!(
        wait_until(Duration::from_secs(20), || state_of(HALL).as_deref()
            == Some("joined")),
        "the hall did not join: {:?}\nbaresip:\n{}\ngateway:\n{}",
        status(),
        call.log_text(),
        gateway.log_text()
    );
    let rows: Vec<RollCallJson> = serde_json::from_str(&ok(cuntong(&[
        "meeting",
        "rollcall",
        &id,
        "--timeout",
        "20s",
        "--json",
    ])))
    .unwrap();
    assert!(
        rows.iter().any(|r| r.terminal == HALL && r.present),
        "{rows:?}"
    );

    // It decodes the room: a picture, and sound.
    assert!(
        wait_until(Duration::from_secs(30), || decoded_picture(&hall)),
        "no picture decoded by the room system\n{}",
        call.log_text()
    );
    // The picture is the room's: composed at 1280x720 (PNG's IHDR: width, height).
    let png = std::fs::read(hall.join("picture.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    let size = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    assert_eq!(
        (size(16), size(20)),
        (1280, 720),
        "the room system decoded another picture"
    );
    assert!(
        wait_until(Duration::from_secs(30), || decoded_sound(&hall)),
        "no sound decoded by the room system: {:?}\n{}",
        std::fs::read_dir(&hall)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect::<Vec<_>>(),
        call.log_text()
    );

    for e in std::fs::read_dir(&hall).unwrap().filter_map(Result::ok) {
        println!(
            "{}: {} bytes",
            e.path().display(),
            e.metadata().map_or(0, |m| m.len())
        );
    }

    // The floor to the hall: every village decodes its picture beside the chair's.
    ok(cuntong(&["meeting", "floor", &id, "grant", HALL]));
    let villages: Vec<String> = sites(&db, None)
        .into_iter()
        .map(|s| s.terminal)
        .filter(|t| t != COUNTY_RELAY && t != HALL)
        .collect();
    assert_eq!(villages.len(), 2);
    let two_streams = || {
        let all = sites(&db, None);
        villages.iter().all(|v| {
            all.iter().any(|s| {
                &s.terminal == v
                    && s.metrics.get("media.streams") == Some(&2.0)
                    && s.metrics.get("media.frames").is_some_and(|f| *f >= 10.0)
            })
        })
    };
    assert!(
        wait_until(Duration::from_secs(40), two_streams),
        "the hall's picture did not reach the villages: {:?}\ngateway:\n{}",
        sites(&db, None)
            .iter()
            .map(|s| (s.terminal.clone(), s.metrics.get("media.streams").copied()))
            .collect::<Vec<_>>(),
        gateway.log_text()
    );

    assert!(
        call.log_text().contains("SRTP is Enabled"),
        "the call was not encrypted:\n{}",
        call.log_text()
    );
    assert!(
        gateway
            .log_text()
            .contains("the room system joined the meeting")
            && gateway.log_text().contains("over TLS"),
        "the call did not come over TLS:\n{}",
        gateway.log_text()
    );

    // The room system hangs up: the hall leaves the meeting.
    call.terminate(Duration::from_secs(10));
    let left = || state_of(HALL).as_deref() == Some("left");
    assert!(wait_until(Duration::from_secs(20), left), "{:?}", status());

    // It calls again over TCP and plain RTP, with G.711 μ-law alone: joined again, and the
    // room's picture and sound decoded.
    let plain = baresip(
        d,
        "plain",
        "hall",
        free_ports(2),
        ";audio_codecs=PCMU/8000/1",
    );
    let mut again = dial(&plain, &format!("{uri};transport=tcp"));
    let joined = || state_of(HALL).as_deref() == Some("joined");
    assert!(
        wait_until(Duration::from_secs(20), joined),
        "the hall did not join again: {:?}\ngateway:\n{}\nbaresip:\n{}",
        status(),
        gateway.log_text(),
        again.log_text()
    );
    assert!(
        wait_until(Duration::from_secs(30), || decoded_picture(&plain)),
        "no picture decoded over plain RTP\n{}",
        again.log_text()
    );
    assert!(
        wait_until(Duration::from_secs(30), || decoded_sound(&plain)),
        "no μ-law sound decoded\n{}",
        again.log_text()
    );
    assert!(
        again.log_text().contains("Set audio decoder: PCMU"),
        "{}",
        again.log_text()
    );
    assert!(
        gateway.log_text().contains("over TCP"),
        "the call did not come over TCP:\n{}",
        gateway.log_text()
    );
    again.terminate(Duration::from_secs(10));
    assert!(wait_until(Duration::from_secs(20), left), "{:?}", status());

    // The chair has the gateway call the room system (`meeting dial`, over TLS): it answers,
    // the hall joins, and the room system decodes the room. A room system the gateway does
    // not allow is not called (told by a signed command to the gateway).
    let called_port = free_ports(2);
    let called = baresip(d, "called", "hall", called_port, ";answermode=auto");
    // It takes SIP over TLS too (on its port + 1), with a certificate of the fleet CA's for
    // its host name, which the gateway checks.
    let room_tls = d.join("room-tls");
    issue_server(&ca, "localhost", &room_tls);
    let pem = [
        std::fs::read(room_tls.join("server.pem")).unwrap(),
        std::fs::read(room_tls.join("server-key.pem")).unwrap(),
    ]
    .concat();
    std::fs::write(called.join("room.pem"), pem).unwrap();
    let mut config = std::fs::read_to_string(called.join("config")).unwrap();
    config.push_str(&format!(
        "sip_certificate {}\n",
        called.join("room.pem").display()
    ));
    std::fs::write(called.join("config"), config).unwrap();
    let answering = start(&called, None);
    let cmd = |target: &str| {
        let out = run(
            &bin("cuntong"),
            &[
                "cmd",
                HALL,
                "dial",
                &id,
                target,
                "--ca",
                ca.to_str().unwrap(),
                "--broker",
                &broker.url,
                "--json",
            ],
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    let nobody = "sip:nobody@127.0.0.1:5999";
    assert_eq!(cmd(nobody)[0]["ok"], true, "the gateway takes the command");
    // Central refuses a gateway the meeting does not invite, and what is not a SIP address.
    let refused = cuntong(&[
        "meeting",
        "dial",
        &id,
        "sip:hall@127.0.0.1",
        "--via",
        "130203000000-hall",
    ]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("not invited"),
        "{refused:?}"
    );
    let bad = cuntong(&["meeting", "dial", &id, "sip:hall 127.0.0.1", "--via", HALL]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("not a SIP address"),
        "{bad:?}"
    );
    // At an address its certificate does not name, the gateway does not call it.
    let unnamed = format!("sip:hall@127.0.0.1:{};transport=tls", called_port + 1);
    ok(cuntong(&["meeting", "dial", &id, &unnamed, "--via", HALL]));
    assert!(
        wait_until(Duration::from_secs(20), || gateway
            .log_text()
            .contains("invalid peer certificate")),
        "{}",
        gateway.log_text()
    );
    let room = format!("sip:hall@localhost:{};transport=tls", called_port + 1);
    ok(cuntong(&["meeting", "dial", &id, &room, "--via", HALL]));
    assert!(
        wait_until(Duration::from_secs(20), joined),
        "the called room system did not join: {:?}\nbaresip:\n{}\ngateway:\n{}",
        status(),
        answering.log_text(),
        gateway.log_text()
    );
    assert!(
        wait_until(Duration::from_secs(30), || decoded_picture(&called)),
        "the called room system decoded no picture\nbaresip:\n{}\ngateway:\n{}",
        answering.log_text(),
        gateway.log_text()
    );
    assert!(
        gateway.log_text().contains("calling the room system")
            && gateway
                .log_text()
                .contains(&format!("{} over TLS", called_port + 1)),
        "{}",
        gateway.log_text()
    );
    assert!(
        gateway.log_text().contains(&format!(
            "{nobody} is not a room system this gateway allows"
        )),
        "{}",
        gateway.log_text()
    );

    // The meeting ends: the gateway hangs up on the room system.
    ok(cuntong(&["meeting", "end", &id]));
    assert!(
        // (baresip says a call the other side ended was reset by it.)
        wait_until(Duration::from_secs(20), || answering
            .log_text()
            .contains("session closed: Connection reset by peer")),
        "the room system was not hung up on:\n{}\ngateway:\n{}",
        answering.log_text(),
        gateway.log_text()
    );
    drop(central);
}
