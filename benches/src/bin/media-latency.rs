//! Media latency on loopback, each figure beside its baseline in the same run:
//!
//! - one relay hop: RTP-sized packets carrying their send time, through a relay to a receiver,
//!   against the same packets sent straight to the receiver (p50/p99 of the difference);
//! - glass to glass: the media engine's own pipelines with a test source — frames timed as they
//!   go to the encoder and as they come out of the decoder, through the relay (SRTP, jitter
//!   buffer at its default) and straight (the same pipelines without the hop); after two
//!   seconds of start-up. It is encoder input to decoder output: a camera's exposure and a
//!   screen's refresh come on top on a box.
//!
//! `cargo build --release -p cuntong-benches && ./target/release/media-latency`

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use cuntong_core::media::audio_ssrc;
use cuntong_core::media::routes::Routes;
use cuntong_core::meeting::{MediaProfile, Tier};
use cuntong_terminal::media::{Capture, Playback, Receiver, SendSettings, Sender};
use cuntong_terminal::relay::Relay;

#[derive(Parser)]
struct Args {
    /// Packets for the hop measurement (at 1,000 a second).
    #[arg(long, default_value_t = 5000)]
    packets: u32,
    /// Seconds of video for glass to glass.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Media profile: hd, sd or low.
    #[arg(long, default_value = "sd")]
    profile: String,
    /// The receivers' jitter buffer, ms (the engine starts at 60 and sizes it from jitter).
    #[arg(long, default_value_t = 60)]
    jitter_buffer: u32,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One-way times of `n` packets sent to `to` and read at `rx`.
fn one_way(
    n: u32,
    tx: &UdpSocket,
    to: SocketAddr,
    rx: &UdpSocket,
    epoch: Instant,
) -> anyhow::Result<Vec<Duration>> {
    rx.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut out = Vec::with_capacity(n as usize);
    let mut buf = [0u8; 2048];
    for seq in 0..n {
        let mut p = vec![0x80, 96];
        p.extend((seq as u16).to_be_bytes());
        p.extend(0u32.to_be_bytes());
        p.extend(7u32.to_be_bytes());
        p.extend((epoch.elapsed().as_nanos() as u64).to_be_bytes());
        p.resize(1200, 0);
        tx.send_to(&p, to)?;
        let (len, _) = rx.recv_from(&mut buf).context("a packet did not arrive")?;
        let now = epoch.elapsed().as_nanos() as u64;
        let sent = u64::from_be_bytes(buf[12..20].try_into()?);
        if len >= 20 {
            out.push(Duration::from_nanos(now.saturating_sub(sent)));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    out.sort();
    Ok(out)
}

/// Glass-to-glass times of a test source sent from `from`'s sockets to `to` (the relay, or the
/// receiver itself) and decoded by `rx`: frame k into the encoder ↔ frame k out of the decoder.
fn glass(
    rx: &Receiver,
    from: &Receiver,
    to: SocketAddr,
    ssrc: u32,
    settings: SendSettings,
    seconds: u64,
) -> anyhow::Result<(Vec<Duration>, usize, usize)> {
    rx.log_frames();
    let key = [5u8; 30];
    let mut tx = Sender::start(&Capture::Test, settings, ssrc, Some(&key), to, Some(from))?;
    tx.set_active(true);
    std::thread::sleep(Duration::from_secs(seconds));
    let captured = tx.captured.lock().map(|v| v.clone()).unwrap_or_default();
    drop(tx);
    std::thread::sleep(Duration::from_millis(500));
    let decoded = rx.frame_times(ssrc);
    // The first two seconds are the start (first keyframe, buffers filling): steady state only.
    let warm_up = captured
        .iter()
        .take_while(|c| c.duration_since(captured[0]) < Duration::from_secs(2))
        .count();
    let mut out: Vec<Duration> = captured
        .iter()
        .zip(&decoded)
        .skip(warm_up)
        .map(|(c, d)| d.saturating_duration_since(*c))
        .collect();
    out.sort();
    Ok((out, captured.len(), decoded.len()))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let epoch = Instant::now();

    // One relay hop.
    let rx = UdpSocket::bind("127.0.0.1:0")?;
    let tx = UdpSocket::bind("127.0.0.1:0")?;
    let direct = one_way(args.packets, &tx, rx.local_addr()?, &rx, epoch)?;
    let mut routes = Routes::new(None);
    routes.expect(7, tx.local_addr()?);
    // The measuring socket does not answer consent probes: vouched for.
    routes.vouch(rx.local_addr()?);
    routes.forward(7, vec![rx.local_addr()?]);
    let relay = Relay::start("127.0.0.1:0".parse()?, routes)?;
    let hopped = one_way(args.packets, &tx, relay.local_addr(), &rx, epoch)?;
    drop(relay);
    println!("one relay hop ({} packets of 1,200 bytes):", args.packets);
    for (name, p) in [("p50", 0.5), ("p99", 0.99)] {
        let (d, h) = (percentile(&direct, p), percentile(&hopped, p));
        println!(
            "  {name}: straight {:.3} ms, through the relay {:.3} ms, added {:.3} ms",
            ms(d),
            ms(h),
            ms(h.saturating_sub(d))
        );
    }

    // Glass to glass.
    let profile = MediaProfile::named(&args.profile).context("--profile: hd, sd or low")?;
    let mut settings = SendSettings::for_tier(&profile, Tier::Full);
    settings.audio = None;
    settings.log_frames = true;
    let key = [5u8; 30];
    let codec = profile.audio;
    // The sending site's own receive sockets, which it sends from.
    let site = Receiver::start(0, &key, Playback::Discard, args.jitter_buffer, codec)?;
    let straight_rx = Receiver::start(0, &key, Playback::Discard, args.jitter_buffer, codec)?;
    let to = SocketAddr::from(([127, 0, 0, 1], straight_rx.video_port()));
    let (straight, c1, d1) = glass(&straight_rx, &site, to, 0x100, settings, args.seconds)?;
    drop(straight_rx);
    let relayed_rx = Receiver::start(0, &key, Playback::Discard, args.jitter_buffer, codec)?;
    let mut routes = Routes::new(None);
    let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
    routes.expect(0x200, local(site.video_port()));
    routes.expect(audio_ssrc(0x200), local(site.audio_port()));
    routes.forward(
        0x200,
        vec![SocketAddr::from(([127, 0, 0, 1], relayed_rx.video_port()))],
    );
    routes.forward(
        audio_ssrc(0x200),
        vec![SocketAddr::from(([127, 0, 0, 1], relayed_rx.audio_port()))],
    );
    let relay = Relay::start("127.0.0.1:0".parse()?, routes)?;
    let (relayed, c2, d2) = glass(
        &relayed_rx,
        &site,
        relay.local_addr(),
        0x200,
        settings,
        args.seconds,
    )?;
    let (w, h, fps, kbps) = settings.video.context("a video profile")?;
    println!(
        "glass to glass ({w}x{h} at {fps} fps, {kbps} kbit/s, H.264 + SRTP, jitter buffer {} ms):",
        args.jitter_buffer
    );
    println!("  straight: {c1} frames in, {d1} decoded; through the relay: {c2} in, {d2} decoded");
    for (name, p) in [("p50", 0.5), ("p99", 0.99)] {
        println!(
            "  {name}: straight {:.1} ms, through the relay {:.1} ms",
            ms(percentile(&straight, p)),
            ms(percentile(&relayed, p))
        );
    }
    Ok(())
}
