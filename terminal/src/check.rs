//! `cuntong-terminal check`: the on-site self-test a technician runs after installing a box.
//!
//! Each check prints one pass/fail line; the command fails if any check fails.

use std::time::Duration;

use crate::config::TerminalConfig;
use crate::hardware;
use crate::link::{Link, LinkOptions};

/// The outcome of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckLine {
    pub pass: bool,
    pub what: String,
    pub detail: String,
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
    }
}

/// Runs every check of a loaded configuration: data directory, each sensor, the broker.
pub async fn run(cfg: &TerminalConfig, broker_timeout: Duration) -> Vec<CheckLine> {
    let mut out = vec![line(true, "config", format!("terminal {}", cfg.id))];

    let probe = cfg.data_dir.join(".check");
    let writable = std::fs::create_dir_all(&cfg.data_dir)
        .and_then(|_| std::fs::write(&probe, b"ok"))
        .and_then(|_| std::fs::remove_file(&probe));
    out.push(match writable {
        Ok(()) => line(true, "data dir", cfg.data_dir.display().to_string()),
        Err(e) => line(
            false,
            "data dir",
            format!("{}: {e}", cfg.data_dir.display()),
        ),
    });

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
            Ok(tls) => {
                out.push(line(true, "certificates", files.cert.display().to_string()));
                opts.tls = Some(tls);
            }
            Err(e) => {
                out.push(line(false, "certificates", e.to_string()));
                return out;
            }
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
