//! Real GStreamer pipelines through a real relay on loopback: the villages' receive sockets
//! answer the relay's consent probes and the sites send from them; the chair's video and audio
//! reach three villages (frames decoded counted at each) and nothing reaches an address that
//! never answered; the floor switches which village's stream the others receive (and the chair
//! routed to it mid-stream decodes it too), and a stream under the wrong SRTP key is rejected.
//! (The players' side — ffmpeg opening a view from its SDP — is in the end-to-end tests,
//! tests/media.rs.)
#![cfg(feature = "media")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cuntong_core::media::audio_ssrc;
use cuntong_core::media::routes::Routes;
use cuntong_core::meeting::{AudioCodec, MediaProfile, Tier};
use cuntong_terminal::media::{Capture, Playback, Receiver, SendSettings, Sender};
use cuntong_terminal::relay::Relay;

const KEY: [u8; 30] = [7; 30];

fn wait(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn settings() -> SendSettings {
    SendSettings::for_tier(&MediaProfile::named("low").unwrap(), Tier::Full)
}

#[test]
fn the_chair_reaches_every_village_the_floor_switches_and_a_wrong_key_is_rejected() {
    let villages: Vec<Receiver> = (0..3)
        .map(|_| Receiver::start(0, &KEY, Playback::Discard, 50, AudioCodec::Opus).unwrap())
        .collect();
    for v in &villages {
        assert!(v.video_port() != 0 && v.audio_port() != 0, "{v:?}");
    }
    // Someone else's address, named as a receive address: it never answers a probe.
    let foreign = std::net::UdpSocket::bind(local(0)).unwrap();
    let relay = Relay::start(local(0), Routes::new(None)).unwrap();
    // A stream from `from`'s ports to `to`'s.
    let route = |ssrc: u32, from: &Receiver, to: &[&Receiver]| {
        relay.update(|r| {
            r.expect(ssrc, local(from.video_port()));
            r.expect(audio_ssrc(ssrc), local(from.audio_port()));
            r.forward(ssrc, to.iter().map(|v| local(v.video_port())).collect());
            r.forward(
                audio_ssrc(ssrc),
                to.iter().map(|v| local(v.audio_port())).collect(),
            );
        })
    };
    let chair_rx = Receiver::start(0, &KEY, Playback::Discard, 50, AudioCodec::Opus).unwrap();
    let chair_ssrc = 0x1000_0000;
    route(chair_ssrc, &chair_rx, &villages.iter().collect::<Vec<_>>());
    relay.update(|r| r.add(chair_ssrc, foreign.local_addr().unwrap()));
    let mut chair = Sender::start(
        &Capture::Test,
        settings(),
        chair_ssrc,
        Some(&KEY),
        relay.local_addr(),
        Some(&chair_rx),
    )
    .unwrap();
    assert!(chair.set_active(true), "a sender starts held back");
    assert!(chair.encoder().is_some());

    let all_have = |ssrc: u32, which: &[&Receiver]| {
        which
            .iter()
            .all(|v| v.frames(ssrc) >= 10 && v.audio_buffers(audio_ssrc(ssrc)) >= 10)
    };
    assert!(
        wait(Duration::from_secs(30), || all_have(
            chair_ssrc,
            &villages.iter().collect::<Vec<_>>()
        )),
        "the chair did not reach every village: {:?} {:?}",
        villages.iter().map(Receiver::streams).collect::<Vec<_>>(),
        relay.stats()
    );
    // The address that never answered got probes (STUN, first byte 0–3), never media.
    foreign
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 2048];
    while let Ok(n) = foreign.recv(&mut buf) {
        assert!(
            n == 20 && buf[0] <= 3,
            "{n}-byte datagram at a foreign address"
        );
    }
    assert!(relay.stats().get(|s| &s.unconsented) > 10);
    assert_eq!(relay.stats().get(|s| &s.forged), 0);

    // The floor goes to village 0: its stream reaches the two others, not itself.
    let speaker_ssrc = 0x1000_0002;
    route(speaker_ssrc, &villages[0], &[&villages[1], &villages[2]]);
    let mut speaker = Sender::start(
        &Capture::Test,
        settings(),
        speaker_ssrc,
        Some(&KEY),
        relay.local_addr(),
        Some(&villages[0]),
    )
    .unwrap();
    speaker.set_active(true);
    assert!(
        wait(Duration::from_secs(30), || all_have(
            speaker_ssrc,
            &[&villages[1], &villages[2]]
        )),
        "the speaker did not reach the others: {:?}",
        villages.iter().map(Receiver::streams).collect::<Vec<_>>()
    );
    // The chair's box is routed the speaker's stream only now, mid-way (as when its relay's
    // table changes after the speaker started): it still decodes it, from the next keyframe.
    relay.update(|r| {
        r.add(speaker_ssrc, local(chair_rx.video_port()));
        r.add(audio_ssrc(speaker_ssrc), local(chair_rx.audio_port()));
    });
    assert!(
        wait(Duration::from_secs(30), || all_have(
            speaker_ssrc,
            &[&villages[1], &villages[2], &chair_rx]
        )),
        "the speaker did not reach the others and the chair (which sends from the same \
         sockets): {:?} {:?} {:?}",
        villages.iter().map(Receiver::streams).collect::<Vec<_>>(),
        chair_rx.streams(),
        relay.stats()
    );
    assert_eq!(villages[0].frames(speaker_ssrc), 0);

    // A stream under another key reaches every village through the relay and is rejected.
    let intruder_rx = Receiver::start(0, &KEY, Playback::Discard, 50, AudioCodec::Opus).unwrap();
    let intruder_ssrc = 0x1000_0004;
    route(
        intruder_ssrc,
        &intruder_rx,
        &villages.iter().collect::<Vec<_>>(),
    );
    let forwarded_before = relay.stats().get(|s| &s.forwarded);
    let chair_before = villages[0].frames(chair_ssrc);
    let mut intruder = Sender::start(
        &Capture::Test,
        settings(),
        intruder_ssrc,
        Some(&[9; 30]),
        relay.local_addr(),
        Some(&intruder_rx),
    )
    .unwrap();
    intruder.set_active(true);
    assert!(wait(Duration::from_secs(20), || {
        relay.stats().get(|s| &s.forwarded) > forwarded_before + 300
            && villages[0].frames(chair_ssrc) > chair_before + 20
    }));
    for v in &villages {
        assert_eq!(v.frames(intruder_ssrc), 0, "{:?}", v.streams());
        assert_eq!(v.audio_buffers(audio_ssrc(intruder_ssrc)), 0);
    }
}

/// The address a site sends to comes from another terminal's join (a relay names itself), so
/// it could be anyone's: the engine holds its streams back until that address answers its
/// probes, and sends once it does.
#[test]
fn a_site_sends_only_to_a_relay_address_that_answers_its_probes() {
    use cuntong_core::meeting::{Applied, MediaPlan, MeetingId, Role};
    use cuntong_terminal::conference::MediaEngine;
    use cuntong_terminal::media::GstEngine;

    let stranger = std::net::UdpSocket::bind(local(0)).unwrap();
    let meeting: MeetingId = "m1".parse().unwrap();
    let plan = |to: SocketAddr| MediaPlan {
        ssrc: 0x2000_0000,
        send_to: Some(to.to_string()),
        srtp_key: KEY.to_vec(),
        tier: Tier::Full,
        viewed: false,
    };
    let chair = Applied {
        version: 1,
        muted: false,
        role: Role::Chair,
        shown: None,
        hand: false,
    };
    let mut engine = GstEngine::new(
        "130102000000-office".parse().unwrap(),
        Capture::Test,
        Playback::Discard,
        0,
    )
    .unwrap();
    let profile = MediaProfile::named("low").unwrap();
    engine.start(meeting, &plan(stranger.local_addr().unwrap()), &profile);
    engine.apply(meeting, &chair);
    // Five seconds of being the chair, probing every second: the stranger gets a few 20-byte
    // probes, never media.
    stranger
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 2048];
    let (mut probes, end) = (0, Instant::now() + Duration::from_secs(5));
    while Instant::now() < end {
        engine.link(None, 0.0);
        while let Ok(n) = stranger.recv(&mut buf) {
            assert!(
                n == 20 && buf[0] <= 3,
                "{n}-byte datagram sent to a stranger"
            );
            probes += 1;
        }
    }
    assert!((1..=8).contains(&probes), "{probes} probes");
    engine.stop(meeting);

    // A relay answers: the chair's streams reach it, from where it was told they come from.
    let relay = Relay::start(local(0), Routes::new(None)).unwrap();
    engine.start(meeting, &plan(relay.local_addr()), &profile);
    engine.apply(meeting, &chair);
    assert!(
        wait(Duration::from_secs(20), || {
            engine.link(None, 0.0);
            relay.stats().get(|s| &s.received) > 100
        }),
        "{:?}",
        relay.stats()
    );
}
