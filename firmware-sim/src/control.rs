//! The link proxy's control socket: `cuntong-sim proxy` serves it, and `cuntong-sim link`
//! sends it one line (cut, stall, restore, delay…) and prints the answer.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use cuntong_firmware_sim::proxy;
use cuntong_terminal::daemon::shutdown_signal;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

/// Why `link` got no answer from the proxy, or an answer that is an error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TellError {
    /// The control socket cannot be connected to.
    #[error("cannot reach the proxy at {}: {source}", path.display())]
    Reach {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Sending the line or reading the answer failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The proxy answered with an error line (shown as it is).
    #[error("{0}")]
    Refused(String),
}

/// Serves the control socket of the started proxy `p` until a signal.
pub(crate) async fn run_proxy(
    p: proxy::ProxyControl,
    upstream: SocketAddr,
    control: &Path,
) -> ExitCode {
    let _ = std::fs::remove_file(control);
    let listener = match UnixListener::bind(control) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: control socket {}: {e}", control.display());
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "proxy listening on {} -> {upstream}, control {}",
        p.addr,
        control.display()
    );
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        on_signal.cancel();
    });
    let mut errors = 0u32;
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => match a {
                Ok((s, _)) => {
                    errors = 0;
                    s
                }
                Err(_) => {
                    // Out of descriptors, say: wait rather than spin.
                    errors = errors.saturating_add(1);
                    tokio::time::sleep(cuntong_terminal::listen::backoff(errors)).await;
                    continue;
                }
            },
        };
        let (r, mut w) = stream.into_split();
        let mut line = String::new();
        if BufReader::new(r).read_line(&mut line).await.is_err() {
            continue;
        }
        let mut words = line.split_whitespace();
        let answer = match (words.next(), words.next().map(str::parse::<u64>)) {
            (Some("cut"), None) => {
                p.cut();
                "cut".to_owned()
            }
            (Some("stall"), None) => {
                p.stall();
                "stalled".to_owned()
            }
            (Some("restore"), None) => {
                p.restore();
                "restored".to_owned()
            }
            (Some("delay"), Some(Ok(ms))) => {
                p.set_delay(Duration::from_millis(ms));
                format!("delay {ms} ms")
            }
            (Some("jitter"), Some(Ok(ms))) => {
                p.set_jitter(Duration::from_millis(ms));
                format!("jitter {ms} ms")
            }
            (Some("stats"), None) => p.stats.line(),
            (Some("loss"), Some(Ok(pct))) => {
                p.set_loss(pct);
                format!("loss {}%", pct.min(100))
            }
            _ => format!("error: unknown command {:?}", line.trim()),
        };
        let _ = w.write_all(format!("{answer}\n").as_bytes()).await;
    }
    let _ = std::fs::remove_file(control);
    ExitCode::SUCCESS
}

pub(crate) async fn tell(control: &Path, line: &str) -> Result<String, TellError> {
    let mut s = UnixStream::connect(control)
        .await
        .map_err(|source| TellError::Reach {
            path: control.to_owned(),
            source,
        })?;
    s.write_all(format!("{line}\n").as_bytes()).await?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).await?;
    let answer = answer.trim().to_owned();
    if answer.starts_with("error") {
        return Err(TellError::Refused(answer));
    }
    Ok(answer)
}
