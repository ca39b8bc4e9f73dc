//! The HJ 212 bridge: a TCP listener that pollution-source data loggers (数采仪) connect to.
//!
//! Each connection is read as a byte stream and cut into frames by the core codec
//! ([`cuntong_core::hj212::next_frame`]). Data uploads (real-time 2011, minute 2051, hourly
//! 2061, daily 2031) become samples with the logger's DataTime as their time and the factor's
//! flag as their quality; split packets are reassembled first. When a frame's Flag asks for it,
//! the logger gets the data acknowledgement (9014) the standard requires. A bad frame is
//! counted, logged once per kind of error, and skipped: it never closes the connection or
//! affects other loggers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cuntong_core::decimal::Decimal;
use cuntong_core::hj212::{self, Framing, Packet};
use cuntong_core::telemetry::{Metric, Quality};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Longest time a split packet waits for its missing parts.
const SPLIT_TIMEOUT: Duration = Duration::from_secs(120);

/// A logger the terminal expects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggerConfig {
    /// Device code (MN) the logger sends.
    pub mn: String,
    /// Access password (PW); `None` accepts any.
    pub password: Option<String>,
    /// Factor code → metric, overriding the built-in mapping.
    pub factors: BTreeMap<String, Metric>,
}

/// The listener's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hj212Config {
    pub listen: SocketAddr,
    /// Expected loggers; empty accepts every MN.
    pub loggers: Vec<LoggerConfig>,
}

/// One value from a logger, ready for the batcher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HjSample {
    pub time_ms: u64,
    pub metric: Metric,
    pub value: Decimal,
    pub quality: Option<Quality>,
}

/// What the listener has seen; reported as metrics and in status.
#[derive(Debug, Default)]
pub struct Hj212Stats {
    pub frames: AtomicU64,
    pub bad_frames: AtomicU64,
    pub samples: AtomicU64,
    pub connections: AtomicU64,
}

/// The metric a reading becomes: the factor's metric for a current or average value, and
/// `<metric>-<Suffix>` for the other statistics (`w01018-Max`, `w01018-Cou`).
fn metric_of(logger: Option<&LoggerConfig>, factor: &str, suffix: &str) -> Metric {
    let base = logger
        .and_then(|l| l.factors.get(factor).cloned())
        .unwrap_or_else(|| hj212::metric_for(factor));
    match suffix {
        "Rtd" | "Avg" => base,
        other => Metric::from_name(&format!("{}-{other}", base.name()))
            .unwrap_or_else(|_| Metric::Code(format!("{factor}-{other}"))),
    }
}

/// Turns a (reassembled) data upload into samples; `Err` says why it carries none.
pub fn samples(packet: &Packet, logger: Option<&LoggerConfig>) -> Result<Vec<HjSample>, String> {
    let time_ms = match packet.data_time() {
        Some(Ok(t)) => t,
        Some(Err(e)) => return Err(e.to_string()),
        None => return Err("data upload without DataTime".to_owned()),
    };
    let readings = packet.readings().map_err(|e| e.to_string())?;
    readings
        .into_iter()
        .map(|r| {
            let metric = metric_of(logger, &r.factor, &r.suffix);
            // A factor code that cannot be a metric name would spoil the whole batch.
            Metric::from_name(metric.name()).map_err(|e| format!("factor {:?}: {e}", r.factor))?;
            Ok(HjSample {
                time_ms,
                metric,
                value: r.value,
                quality: r.flag,
            })
        })
        .collect()
}

fn is_upload(p: &Packet) -> bool {
    matches!(
        p.cn.as_deref(),
        Some(hj212::cn::REALTIME | hj212::cn::MINUTE | hj212::cn::HOURLY | hj212::cn::DAILY)
    )
}

/// Serves loggers until `stop` fires.
pub async fn serve(
    cfg: Hj212Config,
    out: mpsc::Sender<Vec<HjSample>>,
    stats: Arc<Hj212Stats>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(cfg.listen).await?;
    tracing::info!(listen = %cfg.listen, "HJ 212 listener up");
    let cfg = Arc::new(cfg);
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "HJ 212 accept failed");
                    continue;
                }
            },
        };
        stats.connections.fetch_add(1, Ordering::Relaxed);
        let (cfg, out, stats, stop) = (cfg.clone(), out.clone(), stats.clone(), stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                r = connection(stream, peer, &cfg, &out, &stats) => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "HJ 212 connection ended");
                    }
                }
            }
        });
    }
}

/// Parts of split packets being reassembled, by (MN, CN). The standard gives every part its
/// own QN and numbers them `PNO` = 1..=`PNUM`; a logger sends them in order.
#[derive(Default)]
struct Splits {
    parts: HashMap<(String, String), (tokio::time::Instant, u16, Vec<Packet>)>,
}

impl Splits {
    /// Adds a part; returns the whole packet once the last part is there. A part out of
    /// sequence discards the incomplete packet (and says so).
    fn add(&mut self, p: Packet) -> Result<Option<Packet>, String> {
        let now = tokio::time::Instant::now();
        self.parts
            .retain(|_, (t, _, _)| now.duration_since(*t) < SPLIT_TIMEOUT);
        let key = (
            p.mn.clone().unwrap_or_default(),
            p.cn.clone().unwrap_or_default(),
        );
        let (pnum, pno) = (p.pnum.unwrap_or(1), p.pno.unwrap_or(1));
        if pno == 1 {
            let lost = self.parts.insert(key.clone(), (now, pnum, vec![p]));
            if lost.is_some() {
                return Err("split packet: a new packet began before the last one ended".into());
            }
        } else {
            let Some(entry) = self.parts.get_mut(&key) else {
                return Err(format!("split packet: part {pno} of {pnum} without part 1"));
            };
            if entry.1 != pnum || entry.2.len() + 1 != usize::from(pno) {
                self.parts.remove(&key);
                return Err(format!(
                    "split packet: part {pno} of {pnum} out of sequence"
                ));
            }
            entry.0 = now;
            entry.2.push(p);
        }
        let done = self
            .parts
            .get(&key)
            .is_some_and(|e| e.2.len() >= usize::from(e.1));
        if !done {
            return Ok(None);
        }
        let Some((_, _, parts)) = self.parts.remove(&key) else {
            return Ok(None);
        };
        let mut parts = parts.into_iter();
        let Some(mut whole) = parts.next() else {
            return Ok(None);
        };
        for part in parts {
            // Every part repeats DataTime; keep the first.
            whole
                .cp
                .extend(part.cp.into_iter().filter(|(k, _)| k != "DataTime"));
        }
        whole.pnum = None;
        whole.pno = None;
        Ok(Some(whole))
    }
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    cfg: &Hj212Config,
    out: &mpsc::Sender<Vec<HjSample>>,
    stats: &Hj212Stats,
) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let mut splits = Splits::default();
    let mut logged: BTreeSet<String> = BTreeSet::new();
    let mut complain = |what: String, stats: &Hj212Stats| {
        stats.bad_frames.fetch_add(1, Ordering::Relaxed);
        let kind: String = what.chars().take_while(|c| *c != ':').collect();
        if logged.insert(kind) {
            tracing::warn!(%peer, "HJ 212: {what} (further errors of this kind are counted, not logged)");
        }
    };
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        loop {
            match hj212::next_frame(&buf) {
                Framing::NeedMore => {
                    // A frame is at most 1024 data bytes plus framing; anything longer is junk.
                    if buf.len() > 2048 {
                        complain(
                            format!("{} bytes without a frame: discarded", buf.len()),
                            stats,
                        );
                        buf.clear();
                    }
                    break;
                }
                Framing::Skip(k) => {
                    complain(format!("garbage between frames: {k} bytes skipped"), stats);
                    buf.drain(..k.min(buf.len()));
                }
                Framing::Frame(k) => {
                    let frame: Vec<u8> = buf.drain(..k.min(buf.len())).collect();
                    let packet = match hj212::decode(&frame) {
                        Ok(p) => p,
                        Err(e) => {
                            complain(format!("bad frame: {e}"), stats);
                            continue;
                        }
                    };
                    stats.frames.fetch_add(1, Ordering::Relaxed);
                    let logger = match expected(cfg, &packet) {
                        Ok(l) => l,
                        Err(why) => {
                            complain(why, stats);
                            continue;
                        }
                    };
                    if packet.needs_ack() {
                        stream.write_all(&hj212::encode(&packet.data_ack())).await?;
                    }
                    if !is_upload(&packet) {
                        continue;
                    }
                    let whole = if packet.is_split() {
                        match splits.add(packet) {
                            Ok(Some(w)) => w,
                            Ok(None) => continue,
                            Err(why) => {
                                complain(why, stats);
                                continue;
                            }
                        }
                    } else {
                        packet
                    };
                    match samples(&whole, logger) {
                        Ok(s) if s.is_empty() => {}
                        Ok(s) => {
                            stats.samples.fetch_add(s.len() as u64, Ordering::Relaxed);
                            if out.send(s).await.is_err() {
                                return Ok(());
                            }
                        }
                        Err(why) => complain(format!("unusable upload: {why}"), stats),
                    }
                }
            }
        }
    }
}

/// The configured logger this packet comes from; an error if it is not expected or its
/// password is wrong. With no loggers configured, every MN is accepted.
fn expected<'a>(cfg: &'a Hj212Config, p: &Packet) -> Result<Option<&'a LoggerConfig>, String> {
    if cfg.loggers.is_empty() {
        return Ok(None);
    }
    let mn = p.mn.as_deref().unwrap_or("");
    let Some(l) = cfg.loggers.iter().find(|l| l.mn == mn) else {
        return Err(format!("unexpected logger: MN {mn:?} is not configured"));
    };
    if let Some(pw) = &l.password {
        if p.pw.as_deref() != Some(pw.as_str()) {
            return Err(format!("wrong password: logger {mn:?}"));
        }
    }
    Ok(Some(l))
}
