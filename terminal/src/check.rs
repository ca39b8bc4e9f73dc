//! `cuntong-terminal check`: the on-site self-test a technician runs after installing a box,
//! and the start-up checks the daemon itself refuses to run without.
//!
//! [`startup`] is the one place that decides whether the daemon may start: the configuration
//! (already parsed and validated), a writable data directory, a readable outbox state, the
//! command key file, the TLS files and the duty button's GPIO line. The daemon calls it before anything else and refuses
//! to start (exit 2) on any failure; `check` prints the same lines, then probes each sensor and
//! the broker. Each check prints one pass/fail line; `check` exits 2 when the daemon would
//! refuse to start, 1 when only a sensor or the broker failed.

use std::time::Duration;

use crate::config::TerminalConfig;
use crate::duty_button::DutyButton;
use crate::hardware;
use crate::link::{Link, LinkOptions};

/// The outcome of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckLine {
    pub pass: bool,
    pub what: String,
    pub detail: String,
    /// The daemon refuses to start when this check fails.
    pub needed_to_start: bool,
}

impl std::fmt::Display for CheckLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = if self.pass { "PASS" } else { "FAIL" };
        write!(f, "{verdict}  {:<22} {}", self.what, self.detail)
    }
}

fn line(pass: bool, what: impl Into<String>, detail: impl Into<String>) -> CheckLine {
    CheckLine {
        pass,
        what: what.into(),
        detail: detail.into(),
        needed_to_start: false,
    }
}

/// What [`startup`] found, and the duty button it opened (the daemon keeps it).
#[derive(Debug)]
pub struct Startup {
    pub lines: Vec<CheckLine>,
    pub duty_button: Option<DutyButton>,
}

impl Startup {
    /// Why the daemon must not start (every failed check), if it must not.
    pub fn refusal(&self) -> Option<String> {
        let failed: Vec<String> = self
            .lines
            .iter()
            .filter(|l| !l.pass)
            .map(|l| format!("{}: {}", l.what, l.detail))
            .collect();
        (!failed.is_empty()).then(|| failed.join("; "))
    }
}

/// Checks (and opens) everything the daemon refuses to start without; see the module doc.
pub fn startup(cfg: &TerminalConfig) -> Startup {
    let mut lines = vec![line(true, "config", format!("terminal {}", cfg.id))];

    let probe = cfg.data_dir.join(".check");
    let writable = std::fs::create_dir_all(&cfg.data_dir)
        .and_then(|_| std::fs::write(&probe, b"ok"))
        .and_then(|_| std::fs::remove_file(&probe));
    lines.push(match writable {
        Ok(()) => line(true, "data dir", cfg.data_dir.display().to_string()),
        Err(e) => line(
            false,
            "data dir",
            format!("{}: cannot write there: {e}", cfg.data_dir.display()),
        ),
    });

    let outbox = cfg.data_dir.join("outbox");
    lines.push(match crate::outbox::Outbox::check(&outbox) {
        Ok(()) => line(true, "outbox", outbox.display().to_string()),
        Err(e) => line(false, "outbox", e.to_string()),
    });

    if let Some(c) = &cfg.commands {
        lines.push(match crate::commands::read_public_key(&c.key) {
            Ok(_) => line(true, "command key", c.key.display().to_string()),
            Err(e) => line(false, "command key", e.to_string()),
        });
    }

    if let Some(files) = &cfg.tls {
        lines.push(match crate::tls::client_config(files) {
            Ok(_) => line(true, "certificates", files.cert.display().to_string()),
            Err(e) => line(false, "certificates", e.to_string()),
        });
    }

    let mut duty_button = None;
    if let Some(b) = &cfg.duty_button {
        lines.push(match crate::duty_button::open(b) {
            Ok(button) => {
                duty_button = Some(button);
                line(
                    true,
                    "duty button",
                    format!("{} line {}", b.chip.display(), b.line),
                )
            }
            Err(e) => {
                let e = e.to_string();
                let e = e.strip_prefix("duty button: ").unwrap_or(&e).to_owned();
                line(false, "duty button", e)
            }
        });
    }

    for l in &mut lines {
        l.needed_to_start = true;
    }
    Startup { lines, duty_button }
}

/// Runs every check of a loaded configuration: what the daemon needs to start, each sensor,
/// the broker.
pub async fn run(cfg: &TerminalConfig, broker_timeout: Duration) -> Vec<CheckLine> {
    let start = startup(cfg);
    // The line is released: the running daemon (if any) or the next start takes it.
    drop(start.duty_button);
    let mut out = start.lines;

    for s in &cfg.sensors {
        let label = format!("sensor {}", s.kind.label());
        let kind = s.kind.clone();
        let read = tokio::task::spawn_blocking(move || {
            let mut sensor = hardware::open(&kind)?;
            sensor.read()
        })
        .await;
        out.push(match read {
            Ok(Ok(values)) => {
                let shown: Vec<String> = values
                    .iter()
                    .map(|(m, v)| format!("{m}={v:.2} {}", m.unit()))
                    .collect();
                line(true, label, shown.join("  "))
            }
            Ok(Err(e)) => line(false, label, e.to_string()),
            Err(e) => line(false, label, format!("probe crashed: {e}")),
        });
    }

    let mut opts = LinkOptions::new(format!("{}-check", cfg.id), cfg.broker.clone());
    opts.keep_alive = Duration::from_secs(5);
    if let Some(files) = &cfg.tls {
        match crate::tls::client_config(files) {
            Ok(tls) => opts.tls = Some(tls),
            // Already reported above.
            Err(_) => return out,
        }
    }
    let (link, _incoming) = Link::start(opts);
    let connected = link.wait_connected(broker_timeout).await;
    let status = link.status();
    link.shutdown();
    out.push(if connected {
        line(true, "broker", format!("{} answered", cfg.broker))
    } else {
        let why = status
            .last_error
            .unwrap_or_else(|| format!("no answer within {broker_timeout:?}"));
        line(false, "broker", format!("{}: {why}", cfg.broker))
    });
    out
}
