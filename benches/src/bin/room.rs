//! The meeting room's cost on a box: the CPU of receiving N sites' streams (720p25 at the `hd`
//! profile by default) and composing them into one picture in the `3x3` layout with one mixed
//! sound, against decoding the same streams without composing, in the same run. The senders run
//! in this process too; their own CPU, measured alone first, is taken off both.
//!
//! `cargo build --release -p cuntong-benches && ./target/release/room --sites 9 --seconds 20`

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use cuntong_core::media::layout::Layout;
use cuntong_core::meeting::{AudioCodec, MediaProfile, Tier};
use cuntong_terminal::config::Display;
use cuntong_terminal::media::{Capture, Playback, Receiver, SendSettings, Sender};

#[derive(Parser)]
struct Args {
    /// Sites sending to the box.
    #[arg(long, default_value_t = 9)]
    sites: u32,
    /// Seconds each phase runs.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Media profile the sites send at: hd (720p25), sd or low.
    #[arg(long, default_value = "hd")]
    profile: String,
    /// Where the room's picture goes ("file:PATH"; "recording:PATH" as central's recorder
    /// writes a meeting; "auto" for the screen).
    #[arg(long, default_value = "file:/dev/null")]
    display: String,
    #[arg(long, default_value = "3x3")]
    layout: String,
}

/// CPU seconds this process has used (user and system).
fn cpu() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("/proc/self/stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11).context("utime")?.parse::<f64>()?
        + fields.get(12).context("stime")?.parse::<f64>()?;
    Ok(ticks / 100.0)
}

/// The CPU (cores) this process uses over `seconds`, after two seconds of start.
fn cores_over(seconds: u64) -> anyhow::Result<f64> {
    std::thread::sleep(Duration::from_secs(2));
    let (t, c) = (Instant::now(), cpu()?);
    std::thread::sleep(Duration::from_secs(seconds));
    Ok((cpu()? - c) / t.elapsed().as_secs_f64())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let profile = MediaProfile::named(&args.profile).context("--profile: hd, sd or low")?;
    let full = SendSettings::for_tier(&profile, Tier::Full);
    let key = [3u8; 30];
    let layout: Layout = args.layout.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let display: Display = args.display.parse().map_err(anyhow::Error::msg)?;
    let colours = [
        0xffff_0000u32,
        0xff00_ff00,
        0xff00_00ff,
        0xffff_ff00,
        0xff00_ffff,
        0xffff_00ff,
        0xff80_8080,
        0xffff_8000,
        0xffff_ffff,
    ];
    // The sites send to `video` and `video + 2`.
    let start_sites = |video: u16| -> anyhow::Result<Vec<Sender>> {
        let mut out = Vec::new();
        for i in 0..args.sites {
            let ssrc = 0x4000 + 2 * i;
            let capture = Capture::Colour(colours[i as usize % colours.len()]);
            for (settings, port) in [
                (
                    SendSettings {
                        audio: None,
                        ..full
                    },
                    video,
                ),
                (
                    SendSettings {
                        video: None,
                        ..full
                    },
                    video + 2,
                ),
            ] {
                let to: SocketAddr = format!("127.0.0.1:{port}").parse()?;
                let mut tx = Sender::start(&capture, settings, ssrc, Some(&key), to, None)?;
                tx.set_active(true);
                out.push(tx);
            }
        }
        Ok(out)
    };
    println!(
        "{} sites at {} ({:?}), {} s a phase",
        args.sites, args.profile, full.video, args.seconds
    );

    // The senders alone, to a port nobody reads.
    let senders = start_sites(9)?;
    let alone = cores_over(args.seconds)?;
    drop(senders);
    println!("  senders alone                 {alone:.2} cores");

    let phase = |playback: Playback| -> anyhow::Result<(f64, u64)> {
        let rx = Receiver::start(0, &key, playback, 60, AudioCodec::Opus)?;
        // Every tile captioned, as the chair's screen names the sites.
        if let Some(room) = rx.room() {
            let sites = (0..args.sites)
                .map(|i| (0x4000 + 2 * i, format!("石家庄市长安区第{i}村")))
                .collect();
            room.set_screen(Some(layout), sites);
        }
        let senders = start_sites(rx.video_port())?;
        let cores = cores_over(args.seconds)?;
        let frames: u64 = (0..args.sites).map(|i| rx.frames(0x4000 + 2 * i)).sum();
        drop(senders);
        drop(rx);
        Ok((cores - alone, frames))
    };
    let (decode, decoded) = phase(Playback::Discard)?;
    println!("  decoding without composing    {decode:.2} cores ({decoded} frames decoded)");
    let (compose, composed) = phase(Playback::Room { display, layout })?;
    println!(
        "  composing {layout}, captions, mixing  {compose:.2} cores ({composed} frames decoded)"
    );
    println!(
        "  ratio composing / decoding    {:.2}",
        compose / decode.max(0.001)
    );
    Ok(())
}
