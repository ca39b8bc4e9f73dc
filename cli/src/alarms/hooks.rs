//! Telling others of alarm changes: a program fed the alarm as JSON, or a web hook it is
//! POSTed to, each change in order, with retries.

use std::sync::Arc;
use std::time::Duration;

use cuntong_core::alarm::Alarm;
use tokio::sync::{mpsc, watch};

use super::AlarmJson;
use crate::names::Names;

/// Where an alarm change is told: the alarm as [`AlarmJson`], each change in order, up to three
/// tries, 30 s each.
#[derive(Clone, PartialEq, Eq)]
pub enum Hook {
    /// A program and its arguments, the JSON on stdin; success is exit status 0.
    Command(Vec<String>),
    /// An HTTP(S) POST of the JSON; success is a 2xx answer.
    Webhook(String),
}

impl Hook {
    /// How logs name the hook: the program, or the web hook's scheme and host only (a web
    /// hook's path and query often carry its secret token).
    pub fn name(&self) -> String {
        match self {
            Hook::Command(c) => c.first().cloned().unwrap_or_default(),
            Hook::Webhook(url) => {
                let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
                let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
                let host = host.rsplit('@').next().unwrap_or_default();
                format!("{scheme}://{host}")
            }
        }
    }
}

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hook({})", self.name())
    }
}

/// Why one try of an alarm hook failed. Never quotes a web hook's URL (it may hold a token).
#[derive(Debug, thiserror::Error)]
enum HookError {
    /// A hook command without a program.
    #[error("empty hook")]
    Empty,
    /// The program could not be started, fed or waited for.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// No end (or answer) within [`HOOK_TIMEOUT`].
    #[error("timed out after 30 s")]
    TimedOut,
    /// The program failed.
    #[error("exited with {0}")]
    Exited(std::process::ExitStatus),
    /// The web hook's server cannot be reached (only the kind of failure is said).
    #[error("cannot reach it: {0}")]
    Unreachable(std::io::ErrorKind),
    /// TLS with the web hook's server failed.
    #[error("TLS: {0}")]
    Tls(&'static str),
    /// TLS with the web hook's server failed, as rustls says.
    #[error("TLS: {0}")]
    Rustls(#[source] rustls::Error),
    /// The web hook's host name is not known.
    #[error("host not found")]
    HostNotFound,
    /// No connection to the web hook's server.
    #[error("connection failed")]
    ConnectionFailed,
    /// Any other failure of the request.
    #[error("request failed")]
    RequestFailed,
    /// The web hook answered, not with success.
    #[error("answered {0}")]
    Answered(ureq::http::StatusCode),
    /// The request's thread was lost.
    #[error("{0}")]
    Joined(#[from] tokio::task::JoinError),
}

/// Runs every hook for every change, in order, each up to three times (1 s, 2 s apart).
pub(super) async fn run_hooks(
    hooks: Vec<Hook>,
    mut rx: mpsc::Receiver<Alarm>,
    names: watch::Receiver<Arc<Names>>,
) {
    while let Some(alarm) = rx.recv().await {
        // Names as the store has them now.
        let current = names.borrow().clone();
        let Ok(json) = serde_json::to_vec(&AlarmJson::of(&alarm, &current)) else {
            continue;
        };
        for hook in &hooks {
            let mut delay = Duration::from_secs(1);
            for attempt in 1..=3 {
                let result = match hook {
                    Hook::Command(c) => run_command(c, &json).await,
                    Hook::Webhook(url) => post(url, &json).await,
                };
                match result {
                    Ok(()) => break,
                    Err(e) if attempt < 3 => {
                        tracing::warn!(hook = %hook.name(), attempt, error = %e, "alarm hook failed; retrying");
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                    }
                    Err(e) => {
                        tracing::error!(hook = %hook.name(), id = alarm.id, error = %e, "alarm hook failed; giving up")
                    }
                }
            }
        }
    }
}

/// How long one try of a hook may take.
const HOOK_TIMEOUT: Duration = Duration::from_secs(30);

async fn run_command(hook: &[String], json: &[u8]) -> Result<(), HookError> {
    use tokio::io::AsyncWriteExt;
    let (program, args) = hook.split_first().ok_or(HookError::Empty)?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let stdin = child.stdin.take();
    let run = async {
        if let Some(mut stdin) = stdin {
            // A hook that does not read its input is fine: only its exit status counts.
            match stdin.write_all(json).await {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e),
                _ => {}
            }
        }
        child.wait().await
    };
    let status = tokio::time::timeout(HOOK_TIMEOUT, run)
        .await
        .map_err(|_| HookError::TimedOut)??;
    if status.success() {
        Ok(())
    } else {
        Err(HookError::Exited(status))
    }
}

/// POSTs the alarm to a web hook (on a blocking thread: the HTTP client is synchronous).
async fn post(url: &str, json: &[u8]) -> Result<(), HookError> {
    let (url, body) = (url.to_owned(), json.to_vec());
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(HOOK_TIMEOUT))
            .http_status_as_error(false)
            .user_agent(concat!("cuntong/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let resp = agent
            .post(&url)
            .content_type("application/json")
            .send(&body[..])
            // ureq's errors can quote the URL; say only what kind of failure it was.
            .map_err(|e| match e {
                ureq::Error::Io(e) => HookError::Unreachable(e.kind()),
                ureq::Error::Timeout(_) => HookError::TimedOut,
                ureq::Error::Tls(e) => HookError::Tls(e),
                ureq::Error::Rustls(e) => HookError::Rustls(e),
                ureq::Error::HostNotFound => HookError::HostNotFound,
                ureq::Error::ConnectionFailed => HookError::ConnectionFailed,
                _ => HookError::RequestFailed,
            })?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(HookError::Answered(resp.status()))
        }
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_web_hook_is_logged_without_its_token() {
        let hook = Hook::Webhook("https://user:secret@chat.example/hooks/T0K3N?key=abc".into());
        assert_eq!(hook.name(), "https://chat.example");
        assert!(!format!("{hook:?}").contains("T0K3N"));
    }
}
