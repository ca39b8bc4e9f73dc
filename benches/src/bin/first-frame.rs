//! Join → first decoded picture, behind a relay, with the periodic keyframe every 10 s: each
//! joining site asks for a keyframe (SRTCP feedback back the way the stream came) and decodes
//! its first picture from it. Baseline in the same run: when the first datagram of the stream
//! reached the joining site (no picture can come before it), so the ratio is what waiting for
//! a keyframe adds.
//!
//! `cargo build --release -p cuntong-benches && ./target/release/first-frame [--joins 20]`

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use cuntong_core::media::audio_ssrc;
use cuntong_core::media::routes::Routes;
use cuntong_core::meeting::{AudioCodec, MediaProfile, Tier};
use cuntong_terminal::media::{Capture, Playback, Receiver, SendSettings, Sender};
use cuntong_terminal::relay::Relay;

#[derive(Parser)]
struct Args {
    /// Sites that join, one after another.
    #[arg(long, default_value_t = 20)]
    joins: usize,
    /// The sender's periodic keyframe, seconds.
    #[arg(long, default_value_t = 10)]
    keyframe_every: u32,
    /// Media profile: hd, sd or low.
    #[arg(long, default_value = "sd")]
    profile: String,
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len().saturating_sub(1)) as f64 * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let profile = MediaProfile::named(&args.profile).context("--profile: hd, sd or low")?;
    let key = [4u8; 30];
    let ssrc = 0x5000;
    let home = Receiver::start(0, &key, Playback::Discard, 60, AudioCodec::Opus)?;
    home.identify(ssrc);
    let relay = Relay::start(local(0), Routes::new(None))?;
    relay.update(|r| {
        r.expect(ssrc, local(home.video_port()));
        r.expect(audio_ssrc(ssrc), local(home.audio_port()));
    });
    let settings = SendSettings {
        keyframe_every_s: args.keyframe_every,
        ..SendSettings::for_tier(&profile, Tier::Full)
    };
    let mut tx = Sender::start(
        &Capture::Test,
        settings,
        ssrc,
        Some(&key),
        relay.local_addr(),
        Some(&home),
    )?;
    tx.set_active(true);
    std::thread::sleep(Duration::from_secs(2));
    let (mut packet, mut frame) = (Vec::new(), Vec::new());
    for _ in 0..args.joins {
        let rx = Receiver::start(0, &key, Playback::Discard, 60, AudioCodec::Opus)?;
        let joined = Instant::now();
        relay.update(|r| {
            r.add(ssrc, local(rx.video_port()));
            r.add(audio_ssrc(ssrc), local(rx.audio_port()));
        });
        let mut first_packet = None;
        while rx.frames(ssrc) == 0 {
            if first_packet.is_none() && rx.bytes.load(Ordering::Relaxed) > 0 {
                first_packet = Some(joined.elapsed());
            }
            anyhow::ensure!(
                joined.elapsed() < Duration::from_secs(30),
                "no picture in 30 s"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        frame.push(joined.elapsed());
        packet.push(first_packet.unwrap_or_else(|| joined.elapsed()));
        relay.update(|r| {
            r.remove(ssrc, local(rx.video_port()));
            r.remove(audio_ssrc(ssrc), local(rx.audio_port()));
        });
        drop(rx);
        std::thread::sleep(Duration::from_millis(700));
    }
    packet.sort();
    frame.sort();
    println!(
        "{} joins, {} profile, periodic keyframe every {} s",
        args.joins, args.profile, args.keyframe_every
    );
    println!("{:<34} {:>9} {:>9}", "", "p50 ms", "p99 ms");
    for (what, v) in [
        ("first datagram (baseline)", &packet),
        ("first decoded picture", &frame),
    ] {
        println!(
            "{what:<34} {:>9.1} {:>9.1}",
            ms(percentile(v, 0.5)),
            ms(percentile(v, 0.99))
        );
    }
    let ratio = |p| ms(percentile(&frame, p)) / ms(percentile(&packet, p)).max(0.001);
    println!(
        "ratio picture / datagram: p50 {:.1}, p99 {:.1}",
        ratio(0.5),
        ratio(0.99)
    );
    let stats = relay.stats();
    println!(
        "relay: {} keyframe requests and reports held back",
        stats.get(|s| &s.feedback_held)
    );
    Ok(())
}
