//! Fetching an artifact in pieces over HTTP(S) range requests: resumed from what the partial
//! file already holds (after a link cut or a reboot nothing is fetched twice), at a rate the
//! caller may change at any time (meetings take the link), from the first source that answers.
//!
//! The bytes are trusted only after [`super::release::check_artifact`]; a source needs no
//! authority. `https://` sources are checked against the fleet CA when one is given.

use std::io::{Read, Seek, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::UpdateError;

/// Bytes written between two flushes to disk: what a power cut can cost.
const SYNC_EVERY: u64 = 256 * 1024;
/// The largest piece read at once.
const MAX_PIECE: u64 = 16 * 1024;

/// What to fetch and where to.
#[derive(Clone, Copy, Debug)]
pub struct Download<'a> {
    pub sources: &'a [String],
    /// The artifact's length (from the signed manifest).
    pub size: u64,
    /// The partial file; its length is where the fetch resumes.
    pub part: &'a Path,
    /// The fleet CA, for `https://` sources.
    pub ca: Option<&'a Path>,
}

/// How a fetch ended short of the whole artifact.
#[derive(Debug)]
pub enum Interrupted {
    /// `stop` was set.
    Stopped,
    /// No source could be read; the partial file keeps what arrived.
    Failed(UpdateError),
}

/// Fetches until the partial file holds `size` bytes. `rate()` is the cap in bytes a second,
/// read again for every piece (zero pauses); `progress(have)` hears each piece written.
/// Returns the bytes this call transferred.
pub fn fetch(
    d: &Download<'_>,
    rate: &dyn Fn() -> u64,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, Interrupted> {
    if let Some(dir) = d.part.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Interrupted::Failed(UpdateError::file(dir)(e)))?;
    }
    let agent = agent(d.ca).map_err(Interrupted::Failed)?;
    let mut moved = 0u64;
    let mut last_error = None;
    for source in d.sources {
        match fetch_from(&agent, source, d, rate, stop, progress, &mut moved) {
            Ok(()) => return Ok(moved),
            Err(Interrupted::Stopped) => return Err(Interrupted::Stopped),
            Err(Interrupted::Failed(e)) => {
                tracing::warn!(error = %e, "update download");
                last_error = Some(e);
            }
        }
    }
    Err(Interrupted::Failed(last_error.unwrap_or_else(|| {
        UpdateError::Malformed("the offer names no source".into())
    })))
}

fn agent(ca: Option<&Path>) -> Result<ureq::Agent, UpdateError> {
    let mut config = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(15)))
        .timeout_recv_response(Some(Duration::from_secs(30)))
        .timeout_per_read(Some(Duration::from_secs(30)))
        .http_status_as_error(false);
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).map_err(UpdateError::file(ca))?;
        let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        config = config.tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                .build(),
        );
    }
    Ok(config.build().new_agent())
}

fn fetch_from(
    agent: &ureq::Agent,
    source: &str,
    d: &Download<'_>,
    rate: &dyn Fn() -> u64,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(u64),
    moved: &mut u64,
) -> Result<(), Interrupted> {
    let link = |detail: String| {
        Interrupted::Failed(UpdateError::Link {
            source_url: source.to_owned(),
            detail,
        })
    };
    let file_err = |e| Interrupted::Failed(UpdateError::file(d.part)(e));
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(d.part)
        .map_err(file_err)?;
    let mut have = file.metadata().map_err(file_err)?.len();
    if have > d.size {
        // Not this artifact's bytes (or a corrupted tail): start over.
        file.set_len(0).map_err(file_err)?;
        have = 0;
    }
    if have == d.size {
        return Ok(());
    }
    let response = agent
        .get(source)
        .header("Range", format!("bytes={have}-"))
        .call()
        .map_err(|e| link(e.to_string()))?;
    match response.status().as_u16() {
        206 => {
            let start = response
                .headers()
                .get("content-range")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.parse::<u64>().ok());
            if start != Some(have) {
                return Err(link(format!(
                    "asked for bytes from {have}, got a range starting at {start:?}"
                )));
            }
        }
        // A source that ignores ranges sends everything: keep only what is missing.
        200 => {
            file.set_len(0).map_err(file_err)?;
            have = 0;
        }
        // The range starts at the end: the file is complete (checked by the digest later).
        416 if have > 0 => return Ok(()),
        code => return Err(link(format!("HTTP {code}"))),
    }
    file.seek(std::io::SeekFrom::Start(have))
        .map_err(file_err)?;
    let mut body = response.into_body().into_reader();
    let mut pacer = Pacer::new(rate());
    let mut unsynced = 0u64;
    let mut buf = vec![0u8; MAX_PIECE as usize];
    while have < d.size {
        if stop.load(Ordering::Relaxed) {
            let _ = file.sync_data();
            return Err(Interrupted::Stopped);
        }
        let cap = rate();
        if cap == 0 {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        pacer.set_rate(cap);
        let want = (d.size - have).min(MAX_PIECE).min((cap / 4).max(1024)) as usize;
        let n = body
            .read(&mut buf[..want])
            .map_err(|e| link(e.to_string()))?;
        if n == 0 {
            let _ = file.sync_data();
            return Err(link(format!(
                "the source ended at byte {have} of {}",
                d.size
            )));
        }
        file.write_all(&buf[..n]).map_err(file_err)?;
        have += n as u64;
        *moved += n as u64;
        unsynced += n as u64;
        if unsynced >= SYNC_EVERY {
            file.sync_data().map_err(file_err)?;
            unsynced = 0;
        }
        progress(have);
        pacer.spent(n as u64);
    }
    file.sync_data().map_err(file_err)
}

/// Keeps a transfer at or under a rate: after each piece, sleeps until the bytes so far fit.
struct Pacer {
    rate: u64,
    since: Instant,
    bytes: u64,
}

impl Pacer {
    fn new(rate: u64) -> Pacer {
        Pacer {
            rate: rate.max(1),
            since: Instant::now(),
            bytes: 0,
        }
    }

    /// A new cap counts from now.
    fn set_rate(&mut self, rate: u64) {
        if rate != self.rate {
            *self = Pacer::new(rate);
        }
    }

    fn spent(&mut self, n: u64) {
        self.bytes += n;
        let due = Duration::from_secs_f64(self.bytes as f64 / self.rate as f64);
        let elapsed = self.since.elapsed();
        if due > elapsed {
            std::thread::sleep(due - elapsed);
        }
    }
}
