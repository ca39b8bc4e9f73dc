//! A simulated HJ 212 data logger (数采仪) at a pollution source: it connects to a terminal's
//! listener and uploads real-time water quality data the way field loggers do, including split
//! packets and, on request, corrupted frames.

use std::net::SocketAddr;
use std::time::Duration;

use cuntong_core::hj212::{self, Packet};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Which edition of the standard the logger speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Edition {
    /// HJ 212-2017: QN and Flag present, factor codes like `w01018`.
    V2017,
    /// HJ/T 212-2005: no QN, no Flag, factor codes like `011`.
    V2005,
}

/// How the simulated logger behaves.
#[derive(Clone, Debug)]
pub struct LoggerOptions {
    pub connect: SocketAddr,
    pub mn: String,
    pub password: String,
    pub interval: Duration,
    pub edition: Edition,
    /// Every Nth upload is split into two packets (0: never).
    pub split_every: u32,
    /// Every Nth frame has one byte flipped (0: never).
    pub corrupt_every: u32,
    /// Stop after this many uploads (None: run until stopped).
    pub uploads: Option<u64>,
    pub seed: u64,
}

/// What the logger did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoggerReport {
    /// Uploads sent intact (as one packet or all parts of a split one).
    pub uploads: u64,
    /// Frames sent with a flipped byte.
    pub corrupted: u64,
    /// Data acknowledgements (9014) received.
    pub acks: u64,
}

/// The factors this logger measures: (2017 code, 2005 code, typical value, spread, decimals).
const FACTORS: [(&str, &str, f64, f64, usize); 4] = [
    ("w01018", "011", 42.0, 6.0, 1), // COD, mg/L
    ("w21003", "060", 1.8, 0.4, 2),  // ammonia nitrogen, mg/L
    ("w01001", "001", 7.2, 0.3, 2),  // pH
    ("w00000", "B01", 12.5, 2.0, 2), // wastewater flow, L/s
];

fn upload(opts: &LoggerOptions, rng: &mut SmallRng, now_ms: u64) -> Packet {
    let mut cp = vec![("DataTime".to_owned(), hj212::format_cst(now_ms, false))];
    for (code17, code05, typical, spread, decimals) in FACTORS {
        let code = match opts.edition {
            Edition::V2017 => code17,
            Edition::V2005 => code05,
        };
        let value = typical + rng.gen_range(-spread..spread);
        cp.push((format!("{code}-Rtd"), format!("{value:.decimals$}")));
        let flag = if rng.gen_ratio(1, 20) { "T" } else { "N" };
        cp.push((format!("{code}-Flag"), flag.to_owned()));
    }
    let (qn, flag) = match opts.edition {
        Edition::V2017 => (Some(hj212::format_cst(now_ms, true)), Some(4 | 1)),
        Edition::V2005 => (None, None),
    };
    Packet {
        qn,
        st: Some("32".to_owned()),
        cn: Some(hj212::cn::REALTIME.to_owned()),
        pw: Some(opts.password.clone()),
        mn: Some(opts.mn.clone()),
        flag,
        pnum: None,
        pno: None,
        cp,
    }
}

/// Splits an upload into two parts as the standard does: each part its own QN, Flag bit D,
/// PNUM=2 and PNO=1/2, both with the DataTime.
fn split(p: &Packet) -> Vec<Packet> {
    let data_time = p.cp[0].clone();
    let rest = &p.cp[1..];
    let half = rest.len() / 2 / 2 * 2; // keep each factor's value and flag together
    let mut parts = Vec::new();
    for (i, chunk) in [&rest[..half], &rest[half..]].into_iter().enumerate() {
        let mut part = p.clone();
        part.flag = p.flag.map(|f| f | 2);
        part.qn = p.qn.as_ref().map(|q| {
            let n: u64 = q.parse().unwrap_or(0) + i as u64;
            format!("{n:017}")
        });
        part.pnum = Some(2);
        part.pno = Some(i as u16 + 1);
        part.cp = std::iter::once(data_time.clone())
            .chain(chunk.iter().cloned())
            .collect();
        parts.push(part);
    }
    parts
}

/// Runs the logger until `stop` fires or it has sent `opts.uploads` uploads.
pub async fn run(opts: LoggerOptions, stop: CancellationToken) -> std::io::Result<LoggerReport> {
    let mut stream = TcpStream::connect(opts.connect).await?;
    let mut rng = SmallRng::seed_from_u64(opts.seed);
    let mut report = LoggerReport::default();
    let mut tick = tokio::time::interval(opts.interval);
    let mut frames = 0u64;
    let mut n = 0u64;
    let mut answers = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            r = stream.read(&mut buf) => {
                let k = r?;
                if k == 0 {
                    break;
                }
                answers.extend_from_slice(&buf[..k]);
                while let hj212::Framing::Frame(len) | hj212::Framing::Skip(len) = hj212::next_frame(&answers) {
                    let frame: Vec<u8> = answers.drain(..len.min(answers.len())).collect();
                    if hj212::decode(&frame).is_ok_and(|p| p.cn.as_deref() == Some(hj212::cn::DATA_ACK)) {
                        report.acks += 1;
                    }
                }
            }
            _ = tick.tick() => {
                if opts.uploads.is_some_and(|max| report.uploads >= max) {
                    break;
                }
                n += 1;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                let packet = upload(&opts, &mut rng, now);
                let parts = if opts.split_every > 0 && n.is_multiple_of(u64::from(opts.split_every)) {
                    split(&packet)
                } else {
                    vec![packet]
                };
                let mut intact = true;
                for part in parts {
                    frames += 1;
                    let mut bytes = hj212::encode(&part);
                    if opts.corrupt_every > 0 && frames.is_multiple_of(u64::from(opts.corrupt_every)) {
                        // Flip a bit inside the data segment: the CRC must catch it.
                        let at = rng.gen_range(6..bytes.len() - 6);
                        bytes[at] ^= 0x01;
                        report.corrupted += 1;
                        intact = false;
                    }
                    stream.write_all(&bytes).await?;
                }
                if intact {
                    report.uploads += 1;
                }
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_decode_and_split_parts_reassemble_to_the_whole() {
        let opts = LoggerOptions {
            connect: "127.0.0.1:1".parse().unwrap(),
            mn: "010000A8900016F000169DC0".into(),
            password: "123456".into(),
            interval: Duration::from_secs(1),
            edition: Edition::V2017,
            split_every: 1,
            corrupt_every: 0,
            uploads: None,
            seed: 1,
        };
        let mut rng = SmallRng::seed_from_u64(1);
        let p = upload(&opts, &mut rng, 1_470_013_137_223);
        let decoded = hj212::decode(&hj212::encode(&p)).unwrap();
        assert_eq!(decoded, p);
        assert_eq!(decoded.readings().unwrap().len(), 4);
        let parts = split(&p);
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|q| q.is_split() && q.needs_ack()));
        assert_ne!(parts[0].qn, parts[1].qn);
        let keys: usize = parts.iter().map(|q| q.cp.len() - 1).sum();
        assert_eq!(keys + 1, p.cp.len());
    }
}
