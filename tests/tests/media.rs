//! Meeting media end to end (Mosquitto, real GStreamer pipelines with test sources): a county
//! meeting chaired from the county office's box, which is also the county's relay; the host
//! assigns it as the relay of the three villages; the chair's video and audio reach every
//! village (frames decoded, reported in telemetry); granting the floor to a village switches
//! the speaker: its stream reaches the two other villages and the chair, not itself.
//!
//! Against a site that lies: one that names someone else's address as its receive address
//! gets that address a few consent probes and no media, while an address that answers the
//! relay's probes gets the streams; RTP forged with a routed SSRC from another address is not
//! forwarded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cuntong_e2e::{COUNTY_RELAY, MediaCounty, ok, run, sites, wait_until};
use cuntong_firmware_sim::fleet::free_udp_pair;

const RELAY: &str = COUNTY_RELAY;
const SPEAKER: &str = "130102001001-main";

/// Each terminal's latest value of `metric`.
fn latest(db: &Path, metric: &str) -> Vec<(String, f64)> {
    sites(db, None)
        .into_iter()
        .map(|s| {
            let v = s.metrics.get(metric).copied().unwrap_or(-1.0);
            (s.terminal, v)
        })
        .collect()
}

#[test]
fn the_chair_reaches_every_village_through_the_county_relay_and_the_floor_switches_the_speaker() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let county = MediaCounty::start(d, 3, &[]);
    let (broker, db, id, central) = (&county.broker, &county.db, &county.id, &county.central);
    let cuntong = |args: &[&str]| county.cuntong(args);

    // Every village decodes the chair's stream, and only it; the chair's box sends.
    let villages = county.villages();
    assert_eq!(villages.len(), 3);
    let receiving = |want_streams: f64, who: &[String]| {
        let frames = latest(db, "media.frames");
        let streams = latest(db, "media.streams");
        who.iter().all(|t| {
            frames.iter().any(|(x, v)| x == t && *v >= 10.0)
                && streams.iter().any(|(x, v)| x == t && *v == want_streams)
        })
    };
    assert!(
        wait_until(Duration::from_secs(40), || receiving(1.0, &villages)),
        "the chair did not reach every village: frames {:?} streams {:?}\n{}",
        latest(db, "media.frames"),
        latest(db, "media.streams"),
        central.log_text()
    );
    // Terminals report on their own clocks: what one says may come a batch after another.
    let reported = |metric: &str, who: &[String], ok: &dyn Fn(f64) -> bool| {
        wait_until(Duration::from_secs(20), || {
            let values = latest(db, metric);
            who.iter()
                .all(|t| values.iter().any(|(x, v)| x == t && ok(*v)))
        })
    };
    let relay = [RELAY.to_owned()];
    assert!(
        reported("media.tx", &relay, &|v| v > 20.0),
        "the chair's box does not send: {:?}",
        latest(db, "media.tx")
    );
    assert!(
        reported("media.rx", &villages, &|v| v > 20.0),
        "{:?}",
        latest(db, "media.rx")
    );

    // The floor to one village: the two others now decode two streams (chair and speaker),
    // the chair's box the speaker's, the speaker only the chair's.
    ok(cuntong(&["meeting", "floor", id, "grant", SPEAKER]));
    let others: Vec<String> = villages.iter().filter(|t| *t != SPEAKER).cloned().collect();
    assert!(
        wait_until(Duration::from_secs(40), || receiving(2.0, &others)
            && receiving(1.0, &[SPEAKER.to_owned(), RELAY.to_owned()])),
        "the speaker did not switch: streams {:?} frames {:?}",
        latest(db, "media.streams"),
        latest(db, "media.frames"),
    );
    assert!(
        reported("media.tx", &[SPEAKER.to_owned()], &|v| v > 20.0),
        "the speaker does not send: {:?}",
        latest(db, "media.tx")
    );
    // The chair sees it in the meeting's status too.
    let status = || -> Vec<cuntong::control::SiteJson> {
        serde_json::from_str(&ok(cuntong(&["meeting", "status", id, "--json"]))).unwrap()
    };
    let shows = |s: &[cuntong::control::SiteJson]| {
        s.iter().all(|site| match site.media.as_ref() {
            Some(m) if site.terminal == SPEAKER => m.sending && m.receiving,
            Some(m) if others.contains(&site.terminal) => m.receiving && !m.sending,
            _ => site.terminal == RELAY,
        })
    };
    assert!(
        wait_until(Duration::from_secs(20), || shows(&status())),
        "{:?}",
        status()
    );

    // The floor taken back and given again: the speaker holds its stream back, then resumes it
    // (the same stream going on, starting with a keyframe for the others).
    ok(cuntong(&["meeting", "floor", id, "revoke"]));
    assert!(
        wait_until(Duration::from_secs(30), || receiving(1.0, &others)),
        "the speaker's stream did not stop: {:?}",
        latest(db, "media.streams")
    );
    ok(cuntong(&["meeting", "floor", id, "grant", SPEAKER]));
    assert!(
        wait_until(Duration::from_secs(30), || receiving(2.0, &others)),
        "the speaker's stream did not resume: {:?}",
        latest(db, "media.streams")
    );

    // Nobody lost media on the way (loopback).
    for (t, loss) in latest(db, "media.loss") {
        assert!(loss < 5.0, "{t}: {loss} % lost");
    }

    // An operations console views a village that is not speaking: the county relay strips
    // SRTP and sends it plain; Debian's ffmpeg opens it from the printed SDP alone.
    let viewed = villages.iter().find(|t| *t != SPEAKER).unwrap();
    let port = free_udp_pair().unwrap();
    let to = format!("127.0.0.1:{port}");
    let bad = cuntong(&["meeting", "view", id, viewed, "--to", "console:1"]);
    assert_eq!(bad.status.code(), Some(2), "a bad --to is a usage error");
    let sdp = ok(cuntong(&["meeting", "view", id, viewed, "--to", &to]));
    assert!(sdp.starts_with("v=0\r\n"), "{sdp}");
    assert!(sdp.contains(&format!("m=video {port} RTP/AVP 96")), "{sdp}");
    let file = d.join("view.sdp");
    std::fs::write(&file, &sdp).unwrap();
    let out = std::process::Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-nostdin",
            "-protocol_whitelist",
            "file,udp,rtp",
            "-i",
        ])
        .arg(&file)
        .args(["-frames:v", "30", "-f", "null", "-"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ffmpeg (the test command installs it)");
    let text = bounded_output(out, Duration::from_secs(40));
    assert!(
        text.contains("Video: h264 (Constrained Baseline)"),
        "{text}"
    );
    assert!(text.contains("yuv420p"), "{text}");
    assert!(text.contains("Audio: opus"), "{text}");
    assert!(text.contains("frame=   30"), "{text}");
    ok(cuntong(&[
        "meeting", "view", id, viewed, "--to", &to, "--stop",
    ]));

    lying_sites_get_no_media_and_forged_rtp_is_not_forwarded(&broker.url, id, d);
}

/// Two terminals of the county join the live meeting `id` by hand (published as they would):
/// one names as its receive address a pair of sockets that never answer STUN (someone else's
/// address), the other a pair that answers the relay's probes. Only the second gets media;
/// then RTP with a routed SSRC sent to the relay from another socket reaches nobody.
fn lying_sites_get_no_media_and_forged_rtp_is_not_forwarded(broker: &str, id: &str, d: &Path) {
    use cuntong_core::envelope::encode;
    use cuntong_core::media::rtp::{Packet, classify};
    use cuntong_core::meeting::{Hand, Tier, Uplink};
    use cuntong_core::terminal_id::TerminalId;
    use cuntong_core::topic::{Channel, Topic};

    let port = broker.rsplit(':').next().unwrap().to_owned();
    let meeting = id.parse().unwrap();
    let publish = |who: &TerminalId, msg: &Uplink| {
        let file = d.join(format!("uplink-{}.bin", who.slug()));
        std::fs::write(&file, encode(msg).unwrap()).unwrap();
        let topic = Topic::terminal(who, Channel::MeetingUp).to_string();
        let file = file.to_str().unwrap();
        ok(run(
            Path::new("mosquitto_pub"),
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-t",
                &topic,
                "-q",
                "1",
                "-f",
                file,
            ],
        ));
    };
    let foreign = FakeReceiver::start(false);
    let willing = FakeReceiver::start(true);
    let liar: TerminalId = "130102003001-liar".parse().unwrap();
    let honest: TerminalId = "130102003002-honest".parse().unwrap();
    let join = |who: &TerminalId, p: &FakeReceiver| {
        publish(
            who,
            &Uplink::Join {
                meeting,
                tier: Tier::ReceiveOnly,
                rtp_port: p.base,
                media_host: Some("127.0.0.1".into()),
                relay: None,
                joining: 1,
            },
        )
    };
    // Joined, and kept in with a status a second (the host drops a silent site).
    let keep_in = |who: &TerminalId| {
        publish(
            who,
            &Uplink::Status {
                meeting,
                seen: 0,
                muted: true,
                hand: Hand::default(),
                answer: None,
            },
        )
    };
    join(&liar, &foreign);
    join(&honest, &willing);
    let mut tick = 0;
    let mut heartbeat = || {
        tick += 1;
        if tick % 10 == 0 {
            keep_in(&liar);
            keep_in(&honest);
        }
    };
    assert!(
        wait_until(Duration::from_secs(30), || {
            heartbeat();
            willing.media().len() >= 100
        }),
        "the address that answers probes got no media: {} datagrams",
        willing.all().len()
    );
    // The relay and a routed SSRC (the chair's or the speaker's), from what the willing
    // address received.
    let (relay, ssrc) = willing
        .media()
        .iter()
        .find_map(|(from, b)| match classify(b) {
            Ok(Packet::Rtp { ssrc, .. }) => Some((*from, ssrc)),
            _ => None,
        })
        .unwrap();
    // 100 packets with that SSRC, from a socket that is not its sender's.
    const MARK: &[u8] = b"forged-by-the-test-0123456789";
    let forger = UdpSocket::bind("127.0.0.1:0").unwrap();
    for seq in 0..100u16 {
        let mut p = vec![0x80, 96];
        p.extend(seq.to_be_bytes());
        p.extend(0u32.to_be_bytes());
        p.extend(ssrc.to_be_bytes());
        p.extend(MARK);
        forger.send_to(&p, relay).unwrap();
    }
    // The real streams go on meanwhile, the forgeries nowhere.
    let before = willing.media().len();
    assert!(wait_until(Duration::from_secs(10), || {
        heartbeat();
        willing.media().len() >= before + 50
    }));
    let forged = |p: &FakeReceiver| {
        p.media()
            .iter()
            .filter(|(_, b)| b.windows(MARK.len()).any(|w| w == MARK))
            .count()
    };
    assert_eq!(forged(&willing), 0, "forged RTP was forwarded");
    // The address that never answered: some probes (STUN, 20 bytes), no media at all.
    let at_foreign = foreign.all();
    assert!(
        at_foreign.iter().all(|(_, b)| b.len() == 20 && b[0] <= 3),
        "media reached an address that never asked for it: {} datagrams, {} not probes",
        at_foreign.len(),
        at_foreign.iter().filter(|(_, b)| b[0] > 3).count()
    );
    assert!(!at_foreign.is_empty(), "the relay did probe it");
    assert!(at_foreign.len() < 30, "{} probes", at_foreign.len());
    for who in [&liar, &honest] {
        publish(who, &Uplink::Leave { meeting });
    }
}

/// A datagram and where it came from.
type Datagram = (SocketAddr, Vec<u8>);

/// A pair of UDP sockets where a site would receive (video port, audio two up) that records
/// what arrives, answering the relay's consent probes if told to; it stops when dropped.
struct FakeReceiver {
    base: u16,
    got: Arc<Mutex<Vec<Datagram>>>,
    stop: Arc<AtomicBool>,
}

impl FakeReceiver {
    fn start(answer: bool) -> FakeReceiver {
        use cuntong_core::media::stun::{Message, binding_success, decode};
        let base = free_udp_pair().unwrap();
        let sockets: Vec<UdpSocket> = [base, base + 2]
            .iter()
            .map(|p| {
                let s = UdpSocket::bind(("127.0.0.1", *p)).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                s
            })
            .collect();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, st) = (got.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !st.load(Ordering::Relaxed) {
                for s in &sockets {
                    while let Ok((n, from)) = s.recv_from(&mut buf) {
                        if let (true, Ok(Message::BindingRequest { id })) =
                            (answer, decode(&buf[..n]))
                        {
                            s.send_to(binding_success(&id, from).as_bytes(), from)
                                .unwrap();
                        }
                        g.lock().unwrap().push((from, buf[..n].to_vec()));
                    }
                }
            }
        });
        FakeReceiver { base, got, stop }
    }

    /// Everything that arrived.
    fn all(&self) -> Vec<Datagram> {
        self.got.lock().unwrap().clone()
    }

    /// What arrived of RTP and RTCP (first byte 128–191), not STUN.
    fn media(&self) -> Vec<Datagram> {
        let mut all = self.all();
        all.retain(|(_, b)| b.first().is_some_and(|f| *f >= 128));
        all
    }
}

impl Drop for FakeReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A child's stderr once it exits, killed after `timeout`.
fn bounded_output(mut child: std::process::Child, timeout: Duration) -> String {
    let end = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < end && child.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let mut text = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut text);
    }
    let _ = child.wait();
    text
}
