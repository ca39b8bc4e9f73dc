//! The HJ 212 bridge: a TCP listener that pollution-source data loggers (数采仪) connect to,
//! and/or a serial port (RS-232/485) a logger is wired to.
//!
//! Each connection (or the serial line) is read as a byte stream and cut into frames by the core codec
//! ([`cuntong_core::hj212::next_frame`]). Data uploads (real-time 2011, minute 2051, hourly
//! 2061, daily 2031) become samples with the logger's DataTime as their time and the factor's
//! flag as their quality; split packets are reassembled first. When a frame's Flag asks for it,
//! the logger gets the data acknowledgement (9014) the standard requires. A bad frame is
//! counted, logged (throttled, below), and skipped: it never closes the connection or
//! affects other loggers.
//!
//! The TCP listener serves at most `max_connections` loggers at once (a site has one or two)
//! and closes a connection idle for `idle_timeout`; connections beyond are closed at once (see
//! [`crate::listen`]), so a flood of connections cannot take the descriptors the broker link
//! needs. Complaints are logged through one [`LogLimiter`] per bridge: the first of each kind,
//! then at most one a minute with the count of the others.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cuntong_core::decimal::Decimal;
use cuntong_core::hj212::{self, Framing, Packet};
use cuntong_core::telemetry::{Metric, Quality};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::listen::{Descriptors, Gate};
use crate::throttle::LogLimiter;

/// Longest time a split packet waits for its missing parts.
const SPLIT_TIMEOUT: Duration = Duration::from_secs(120);

/// Loggers served at once by default (a site has one or two).
pub const DEFAULT_MAX_CONNECTIONS: usize = 4;

/// A logger connection silent this long is closed by default (loggers report at least every
/// few minutes, and reconnect when they next have data).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

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

/// A logger on a serial line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SerialConfig {
    /// Device path, e.g. `/dev/ttyS1` or `/dev/ttyUSB0`.
    pub path: String,
    /// Baud rate (8 data bits, no parity, 1 stop bit, as loggers use).
    pub baud: u32,
}

/// The bridge's configuration: a TCP listener, a serial line, or both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hj212Config {
    pub listen: Option<SocketAddr>,
    pub serial: Option<SerialConfig>,
    /// Expected loggers; empty accepts every MN.
    pub loggers: Vec<LoggerConfig>,
    /// TCP connections served at once; more are closed at once.
    pub max_connections: usize,
    /// A TCP connection that sends nothing for this long is closed.
    pub idle_timeout: Duration,
}

impl Hj212Config {
    /// A bridge on a TCP listener and/or a serial line, accepting every logger, with the
    /// default limits.
    pub fn new(listen: Option<SocketAddr>, serial: Option<SerialConfig>) -> Hj212Config {
        Hj212Config {
            listen,
            serial,
            loggers: Vec::new(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
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

/// Why a logger's packet brings no samples.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    #[error("{0}")]
    Packet(hj212::Hj212Error),
    #[error("data upload without DataTime")]
    NoDataTime,
    #[error("factor {factor:?}: {problem}")]
    Factor {
        factor: String,
        problem: cuntong_core::telemetry::MetricError,
    },
    #[error("split packet: a new packet began before the last one ended")]
    SplitRestarted,
    #[error("split packet: part {pno} of {pnum} without part 1")]
    SplitWithoutFirst { pno: u16, pnum: u16 },
    #[error("split packet: part {pno} of {pnum} out of sequence")]
    SplitOutOfSequence { pno: u16, pnum: u16 },
    #[error("unexpected logger: MN {0:?} is not configured")]
    UnexpectedLogger(String),
    #[error("wrong password: logger {0:?}")]
    WrongPassword(String),
}

/// Turns a (reassembled) data upload into samples; `Err` says why it carries none.
pub fn samples(packet: &Packet, logger: Option<&LoggerConfig>) -> Result<Vec<HjSample>, Unusable> {
    let time_ms = match packet.data_time() {
        Some(Ok(t)) => t,
        Some(Err(e)) => return Err(Unusable::Packet(e)),
        None => return Err(Unusable::NoDataTime),
    };
    let readings = packet.readings().map_err(Unusable::Packet)?;
    readings
        .into_iter()
        .map(|r| {
            let metric = metric_of(logger, &r.factor, &r.suffix);
            // A factor code that cannot be a metric name would spoil the whole batch.
            Metric::from_name(metric.name()).map_err(|problem| Unusable::Factor {
                factor: r.factor.clone(),
                problem,
            })?;
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

/// Serves loggers (TCP and/or serial) until `stop` fires; TCP connections take their
/// descriptors from `descriptors`. Once the listener is bound (port 0 picks a free port), it
/// reports its address in one line on stderr and to `on_listening`.
pub async fn serve(
    cfg: Hj212Config,
    out: mpsc::Sender<Vec<HjSample>>,
    stats: Arc<Hj212Stats>,
    descriptors: &Descriptors,
    stop: CancellationToken,
    on_listening: impl FnOnce(std::net::SocketAddr),
) -> std::io::Result<()> {
    let shared = Shared {
        cfg: Arc::new(cfg),
        out,
        stats,
        log: Arc::new(LogLimiter::default()),
    };
    if let Some(serial) = shared.cfg.serial.clone() {
        let (s, stop) = (shared.clone(), stop.clone());
        tokio::spawn(async move {
            serve_serial(&serial, &s.cfg, &s.out, &s.stats, &s.log, &stop).await
        });
    }
    let Some(listen) = shared.cfg.listen else {
        stop.cancelled().await;
        return Ok(());
    };
    let listener = TcpListener::bind(listen).await?;
    let bound = listener.local_addr()?;
    let max_connections = shared.cfg.max_connections;
    tracing::info!(%bound, max_connections, "HJ 212 listener up");
    eprintln!("hj212 listening on {bound}");
    on_listening(bound);
    let gate = Gate::new("HJ 212", max_connections, descriptors);
    let serve_stop = stop.clone();
    crate::listen::serve(listener, gate, serve_stop, move |stream, peer| {
        shared.stats.connections.fetch_add(1, Ordering::Relaxed);
        let (s, stop) = (shared.clone(), stop.clone());
        async move {
            let idle = Some(s.cfg.idle_timeout);
            tokio::select! {
                _ = stop.cancelled() => {}
                r = connection(stream, &peer, &s.cfg, &s.out, &s.stats, &s.log, idle) => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "HJ 212 connection ended");
                    }
                }
            }
        }
    })
    .await;
    Ok(())
}

/// What every serial and TCP connection of one listener shares.
#[derive(Clone)]
struct Shared {
    cfg: Arc<Hj212Config>,
    out: mpsc::Sender<Vec<HjSample>>,
    stats: Arc<Hj212Stats>,
    log: Arc<LogLimiter>,
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
    fn add(&mut self, p: Packet) -> Result<Option<Packet>, Unusable> {
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
                return Err(Unusable::SplitRestarted);
            }
        } else {
            let Some(entry) = self.parts.get_mut(&key) else {
                return Err(Unusable::SplitWithoutFirst { pno, pnum });
            };
            if entry.1 != pnum || entry.2.len() + 1 != usize::from(pno) {
                self.parts.remove(&key);
                return Err(Unusable::SplitOutOfSequence { pno, pnum });
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

/// Reads a logger on a serial line, reopening the port (every 5 s) when it fails or vanishes
/// (a USB adapter unplugged), until `stop` fires.
async fn serve_serial(
    serial: &SerialConfig,
    cfg: &Hj212Config,
    out: &mpsc::Sender<Vec<HjSample>>,
    stats: &Hj212Stats,
    log: &LogLimiter,
    stop: &CancellationToken,
) {
    use tokio_serial::SerialPortBuilderExt;
    let peer = format!("serial:{}", serial.path);
    let mut reported = false;
    loop {
        match tokio_serial::new(&serial.path, serial.baud).open_native_async() {
            Ok(port) => {
                reported = false;
                stats.connections.fetch_add(1, Ordering::Relaxed);
                tracing::info!(port = %serial.path, baud = serial.baud, "HJ 212 serial line open");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    r = connection(port, &peer, cfg, out, stats, log, None) => {
                        if let Err(e) = r {
                            tracing::warn!(port = %serial.path, error = %e, "HJ 212 serial line failed");
                        }
                    }
                }
            }
            Err(e) if !reported => {
                tracing::warn!(port = %serial.path, error = %e, "cannot open the HJ 212 serial port; retrying");
                reported = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// Reads frames from one logger's byte stream (a TCP connection or a serial line), answering
/// it on the same stream; a stream silent for `idle` ends with `TimedOut`.
async fn connection<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    peer: &str,
    cfg: &Hj212Config,
    out: &mpsc::Sender<Vec<HjSample>>,
    stats: &Hj212Stats,
    log: &LogLimiter,
    idle: Option<Duration>,
) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let mut splits = Splits::default();
    let complain = |what: String, stats: &Hj212Stats| {
        stats.bad_frames.fetch_add(1, Ordering::Relaxed);
        // The kind of complaint: its words before the detail, without numbers.
        let kind: String = what
            .chars()
            .take_while(|c| *c != ':')
            .filter(|c| !c.is_ascii_digit())
            .collect();
        if let Some(more) = log.allow(&kind) {
            tracing::warn!(%peer, "HJ 212: {what}{more}");
        }
    };
    loop {
        let read = stream.read(&mut chunk);
        let n = match idle {
            Some(idle) => tokio::time::timeout(idle, read).await.map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("nothing received for {idle:?}: closed"),
                )
            })??,
            None => read.await?,
        };
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        loop {
            match hj212::next_frame(&buf) {
                Framing::NeedMore => {
                    // A frame is at most 1024 data bytes plus framing; anything longer
                    // without one is junk.
                    if buf.len() > hj212::MAX_FRAME_LEN {
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
                            complain(why.to_string(), stats);
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
                                complain(why.to_string(), stats);
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
fn expected<'a>(cfg: &'a Hj212Config, p: &Packet) -> Result<Option<&'a LoggerConfig>, Unusable> {
    if cfg.loggers.is_empty() {
        return Ok(None);
    }
    let mn = p.mn.as_deref().unwrap_or("");
    let Some(l) = cfg.loggers.iter().find(|l| l.mn == mn) else {
        return Err(Unusable::UnexpectedLogger(mn.into()));
    };
    if let Some(pw) = &l.password
        && p.pw.as_deref() != Some(pw.as_str())
    {
        return Err(Unusable::WrongPassword(mn.into()));
    }
    Ok(Some(l))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upload(flag: u8) -> Packet {
        Packet {
            qn: Some("20260101120000000".into()),
            st: Some("32".into()),
            cn: Some(hj212::cn::REALTIME.into()),
            pw: Some("123456".into()),
            mn: Some("010000A8900016F000169DC0".into()),
            flag: Some(flag),
            pnum: None,
            pno: None,
            cp: vec![
                ("DataTime".into(), "20260101120000".into()),
                ("w01018-Rtd".into(), "12.50".into()),
                ("w01018-Flag".into(), "T".into()),
                ("w21003-Rtd".into(), "0.8".into()),
            ],
        }
    }

    /// A real pseudo-terminal pair stands for the RS-232 line.
    #[tokio::test]
    async fn a_logger_on_a_serial_line_is_read_and_answered() {
        let (mut logger, port) = tokio_serial::SerialStream::pair().unwrap();
        let cfg = Hj212Config::new(None, None);
        let (tx, mut rx) = mpsc::channel(8);
        let stats = Hj212Stats::default();
        let log = LogLimiter::default();
        let test = async {
            // Noise on the line first, then a frame that asks for an answer.
            logger.write_all(b"\x00\xff##00x1junk").await.unwrap();
            logger.write_all(&hj212::encode(&upload(5))).await.unwrap();
            let samples = rx.recv().await.unwrap();
            let mut answer = vec![0u8; 256];
            let n = logger.read(&mut answer).await.unwrap();
            (samples, answer[..n].to_vec())
        };
        let (samples, answer) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::select! {
                r = test => r,
                _ = connection(port, "serial:test", &cfg, &tx, &stats, &log, None) => panic!("line closed"),
            }
        })
        .await
        .unwrap();
        assert_eq!(samples.len(), 2);
        let cod = &samples[0];
        assert_eq!(cod.metric, Metric::W01018);
        assert_eq!(cod.value.to_string(), "12.50");
        assert_eq!(cod.quality, Some(Quality::OverLimit));
        // 2026-01-01 12:00:00 in Beijing is 04:00:00 UTC.
        assert_eq!(cod.time_ms, 1_767_240_000_000);
        let ack = hj212::decode(&answer).unwrap();
        assert_eq!(ack.cn.as_deref(), Some(hj212::cn::DATA_ACK));
        assert_eq!(ack.qn, upload(5).qn);
        assert!(
            stats.bad_frames.load(Ordering::Relaxed) >= 1,
            "the noise was counted"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_closed_after_the_idle_timeout() {
        let (_logger, port) = tokio::io::duplex(1024);
        let cfg = Hj212Config::new(None, None);
        let (tx, _rx) = mpsc::channel(8);
        let stats = Hj212Stats::default();
        let idle = Duration::from_secs(600);
        let started = tokio::time::Instant::now();
        let r = connection(
            port,
            "test",
            &cfg,
            &tx,
            &stats,
            &LogLimiter::default(),
            Some(idle),
        )
        .await;
        assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), idle);
    }

    #[test]
    fn split_parts_reassemble_in_order_and_out_of_order_parts_are_refused() {
        let part = |pno: u16, key: &str| {
            let mut p = upload(7);
            p.pnum = Some(2);
            p.pno = Some(pno);
            p.cp = vec![
                ("DataTime".into(), "20260101120000".into()),
                (key.into(), "1".into()),
            ];
            p
        };
        let mut splits = Splits::default();
        let (one, two) = (part(1, "w01018-Rtd"), part(2, "w21003-Rtd"));
        assert_eq!(splits.add(one.clone()), Ok(None));
        let whole = splits.add(two.clone()).unwrap().unwrap();
        let keys: Vec<&str> = whole.cp.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["DataTime", "w01018-Rtd", "w21003-Rtd"]);
        assert!(splits.add(two).is_err(), "part 2 without part 1");
        assert_eq!(splits.add(one), Ok(None));
    }

    #[test]
    fn unexpected_loggers_and_wrong_passwords_are_refused() {
        let cfg = Hj212Config {
            loggers: vec![LoggerConfig {
                mn: "010000A8900016F000169DC0".into(),
                password: Some("654321".into()),
                factors: BTreeMap::new(),
            }],
            ..Hj212Config::new(None, None)
        };
        let p = upload(4);
        assert_eq!(
            expected(&cfg, &p).unwrap_err().to_string(),
            "wrong password: logger \"010000A8900016F000169DC0\""
        );
        let mut other = p.clone();
        other.mn = Some("X1".into());
        assert!(
            expected(&cfg, &other)
                .unwrap_err()
                .to_string()
                .contains("not configured")
        );
        other.pw = Some("654321".into());
        other.mn = p.mn.clone();
        assert!(expected(&cfg, &other).unwrap().is_some());
    }
}
