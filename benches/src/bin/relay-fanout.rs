//! Relay fan-out: one video stream (default 1.5 Mbit/s in 1,200-byte RTP packets) sent to a
//! county relay on loopback and forwarded to N sites, for growing N. For each N it measures the
//! relay thread's CPU time per forwarded packet and whether every site received every packet,
//! beside a raw `sendmmsg` loop sending the same packets to the same N sockets at the same pace
//! in the same run (the floor: what the kernel costs). One core's capacity in sites is N divided
//! by the share of a core the relay used.
//!
//! `cargo build --release -p cuntong-benches && ./target/release/relay-fanout`

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use cuntong_core::media::routes::Routes;
use cuntong_terminal::relay::{Relay, Sender};

#[derive(Parser)]
struct Args {
    /// Site counts to try.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "250,500,1000,1500,2000,2500"
    )]
    sites: Vec<usize>,
    /// Seconds of stream per run.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    #[arg(long, default_value_t = 1500)]
    kbps: u64,
    #[arg(long, default_value_t = 1200)]
    size: usize,
}

/// CPU time a thread of this process has run, in nanoseconds (the scheduler's own count).
fn thread_cpu(tid: u64) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))?;
    let ns: u64 = stat
        .split_whitespace()
        .next()
        .context("schedstat format")?
        .parse()?;
    Ok(Duration::from_nanos(ns))
}

/// The thread id of this process's thread named `name` (it names itself as it starts).
fn tid_of(name: &str) -> anyhow::Result<u64> {
    let end = Instant::now() + Duration::from_secs(2);
    while Instant::now() < end {
        for e in std::fs::read_dir("/proc/self/task")? {
            let e = e?;
            let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            if comm.trim() == name {
                return Ok(e.file_name().to_string_lossy().parse()?);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    bail!("no thread named {name}")
}

fn own_tid() -> anyhow::Result<u64> {
    let link = std::fs::read_link("/proc/thread-self")?;
    Ok(link
        .file_name()
        .context("thread-self")?
        .to_string_lossy()
        .parse()?)
}

/// N receiving sockets drained by one thread; counts what arrives.
struct Sites {
    addrs: Vec<SocketAddr>,
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sites {
    fn start(n: usize) -> anyhow::Result<Sites> {
        let sockets: Vec<UdpSocket> = (0..n)
            .map(|_| {
                let s = UdpSocket::bind("127.0.0.1:0")?;
                s.set_nonblocking(true)?;
                Ok(s)
            })
            .collect::<std::io::Result<_>>()?;
        let addrs = sockets
            .iter()
            .map(UdpSocket::local_addr)
            .collect::<std::io::Result<_>>()?;
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (received, stop) = (received.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    let mut any = false;
                    for s in &sockets {
                        while s.recv_from(&mut buf).is_ok() {
                            received.fetch_add(1, Ordering::Relaxed);
                            any = true;
                        }
                    }
                    if !any {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
            })
        };
        Ok(Sites {
            addrs,
            received,
            stop,
            thread: Some(thread),
        })
    }

    /// Waits (bounded) until `expected` have arrived; what arrived.
    fn settle(&self, expected: u64) -> u64 {
        let end = Instant::now() + Duration::from_secs(3);
        while self.received.load(Ordering::Relaxed) < expected && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for Sites {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn packet(seq: u16, size: usize) -> Vec<u8> {
    let mut p = vec![0x80, 96];
    p.extend(seq.to_be_bytes());
    p.extend((u32::from(seq) * 3000).to_be_bytes());
    p.extend(1u32.to_be_bytes());
    p.resize(size, 0xab);
    p
}

/// Sends `count` packets paced at `every`, each through `send`.
fn paced(count: u64, every: Duration, size: usize, mut send: impl FnMut(&[u8])) {
    let start = Instant::now();
    for i in 0..count {
        let due = start + every * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        send(&packet(i as u16, size));
    }
}

struct Run {
    cpu: Duration,
    copies: u64,
    received: u64,
    wall: Duration,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pps = (args.kbps * 1000 / 8) as f64 / args.size as f64;
    let count = (pps * args.seconds as f64).round() as u64;
    let every = Duration::from_secs_f64(1.0 / pps);
    println!(
        "stream: {} kbit/s, {}-byte packets, {pps:.0} packets/s, {count} packets per run",
        args.kbps, args.size
    );
    println!(
        "{:>6} | {:>10} {:>9} {:>7} | {:>10} {:>7} | {:>7} {:>12}",
        "sites", "relay ns/p", "lost", "core %", "raw ns/p", "core %", "raw/rel", "sites/core"
    );
    for &n in &args.sites {
        // The relay.
        let sites = Sites::start(n)?;
        let source = UdpSocket::bind("127.0.0.1:0")?;
        let mut routes = Routes::new(None);
        routes.expect(1, source.local_addr()?);
        // The benchmark's sites do not answer consent probes: vouched for.
        for a in &sites.addrs {
            routes.vouch(*a);
        }
        routes.forward(1, sites.addrs.clone());
        let relay = Relay::start("127.0.0.1:0".parse()?, routes)?;
        let tid = tid_of("relay")?;
        let to = relay.local_addr();
        let cpu0 = thread_cpu(tid)?;
        let t0 = Instant::now();
        paced(count, every, args.size, |p| {
            let _ = source.send_to(p, to);
        });
        let received = sites.settle(count * n as u64);
        let relayed = Run {
            cpu: thread_cpu(tid)? - cpu0,
            copies: relay.stats().get(|s| &s.forwarded),
            received,
            wall: t0.elapsed(),
        };
        drop(relay);
        drop(sites);

        // The raw loop: the same packets to the same number of sockets.
        let sites = Sites::start(n)?;
        let addrs = sites.addrs.clone();
        let size = args.size;
        let raw = std::thread::Builder::new()
            .name("raw-sendmmsg".into())
            .spawn(move || -> anyhow::Result<(Duration, u64, Duration)> {
                let socket = UdpSocket::bind("127.0.0.1:0")?;
                let mut sender = Sender::new();
                let tid = own_tid()?;
                let cpu0 = thread_cpu(tid)?;
                let t0 = Instant::now();
                let mut copies = 0;
                paced(count, every, size, |p| {
                    copies += sender.send(&socket, p, &addrs).0 as u64;
                });
                Ok((thread_cpu(tid)? - cpu0, copies, t0.elapsed()))
            })?
            .join()
            .map_err(|_| anyhow::anyhow!("raw loop panicked"))??;
        let raw = Run {
            cpu: raw.0,
            copies: raw.1,
            received: sites.settle(count * n as u64),
            wall: raw.2,
        };
        drop(sites);

        let ns = |r: &Run| r.cpu.as_nanos() as f64 / r.copies.max(1) as f64;
        let share = |r: &Run| r.cpu.as_secs_f64() / r.wall.as_secs_f64();
        let lost = count * n as u64 - relayed.received;
        println!(
            "{n:>6} | {:>10.0} {:>9} {:>6.1}% | {:>10.0} {:>6.1}% | {:>7.2} {:>12.0}",
            ns(&relayed),
            lost,
            100.0 * share(&relayed),
            ns(&raw),
            100.0 * share(&raw),
            ns(&raw) / ns(&relayed),
            n as f64 / share(&relayed).max(1e-9),
        );
        if raw.received < count * n as u64 {
            println!(
                "       (raw loop: {} of {} arrived)",
                raw.received,
                count * n as u64
            );
        }
    }
    Ok(())
}
