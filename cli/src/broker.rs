//! The embedded MQTT broker (rumqttd), for single-machine use and the demo.
//!
//! Production sites use Mosquitto or an EMQX cluster; this one needs no installation.
//!
//! Without `--auth` it is open: any client may connect, so it listens on loopback by default.
//! With `--auth FILE` a client must log in with a user name and password from FILE (see
//! [`load_users`]); rumqttd compares them in constant time.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the broker thread: {0}")]
    Thread(std::io::Error),
    #[error("the broker did not start answering MQTT on {addr}")]
    NotReady { addr: SocketAddr },
}

/// Why a users file was refused. Never quotes a password.
#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{} is readable by group or others (mode {mode:o}): it holds passwords; chmod 600 it",
        path.display()
    )]
    Readable { path: PathBuf, mode: u32 },
    #[error("{}:{line}: {why}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        why: String,
    },
    #[error("{} lists no users: every client would be refused", path.display())]
    Empty { path: PathBuf },
}

/// Users of the broker: user name to password.
pub type Users = HashMap<String, String>;

/// Reads a users file: one `username:password` a line (the password is everything after the
/// first `:`, without surrounding blanks), blank lines and `#` comments ignored. Passwords are
/// plain text, because rumqttd compares plain strings: the file must be readable by its owner
/// only (mode 0600), and a file readable by group or others is refused.
pub fn load_users(path: &Path) -> Result<Users, AuthFileError> {
    let read = |source| AuthFileError::Read {
        path: path.to_owned(),
        source,
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).map_err(read)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(AuthFileError::Readable {
                path: path.to_owned(),
                mode,
            });
        }
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    parse_users(path, &text)
}

/// Parses the text of a users file (see [`load_users`]); errors name `path` and the line.
pub fn parse_users(path: &Path, text: &str) -> Result<Users, AuthFileError> {
    let mut users = Users::new();
    let mut first_seen: HashMap<String, usize> = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let bad = |why: String| AuthFileError::Line {
            path: path.to_owned(),
            line,
            why,
        };
        let entry = raw.trim();
        if entry.is_empty() || entry.starts_with('#') {
            continue;
        }
        let Some((user, password)) = entry.split_once(':') else {
            return Err(bad("expected username:password".into()));
        };
        let (user, password) = (user.trim(), password.trim());
        if user.is_empty() || user.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad(
                "the user name must be non-empty, without blanks or control characters".into(),
            ));
        }
        if password.is_empty() {
            return Err(bad(format!("user {user:?} has an empty password")));
        }
        if let Some(earlier) = first_seen.insert(user.to_owned(), line) {
            return Err(bad(format!("user {user:?} is already on line {earlier}")));
        }
        users.insert(user.to_owned(), password.to_owned());
    }
    if users.is_empty() {
        return Err(AuthFileError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(users)
}

/// The broker's configuration for one plain MQTT 3.1.1 listener; with `users`, only they may
/// connect.
pub fn config(listen: SocketAddr, max_connections: usize, users: Option<Users>) -> Config {
    let connections = ConnectionSettings {
        connection_timeout_ms: 10_000,
        // Read as a packet limit: a client sending more is disconnected (as Mosquitto's
        // `max_packet_size` in the generated configuration).
        max_payload_size: cuntong_terminal::link::MAX_BROKER_PACKET,
        max_inflight_count: 256,
        auth: users,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = ServerSettings {
        name: "v4".to_owned(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections,
    };
    Config {
        id: 0,
        router: RouterConfig {
            max_connections,
            max_outgoing_packet_count: 1024,
            max_segment_size: 16 * 1024 * 1024,
            max_segment_count: 4,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("1".to_owned(), server)])),
        ..Config::default()
    }
}

/// Starts the broker on its own threads and returns the address it answers MQTT on, once it
/// does (port 0 in `listen` picks a free port). The broker runs until the process exits. With
/// `users` a client must log in as one of them.
pub async fn serve(listen: SocketAddr, users: Option<Users>) -> Result<SocketAddr, BrokerError> {
    // A free port is found by binding it and handed to the broker, which binds it again: in
    // between another process may take it. The broker is ready only once it answers MQTT
    // there; if it does not, a port of our choosing is chosen again.
    let tries = if listen.port() == 0 { 5 } else { 1 };
    for _ in 0..tries {
        let addr = start(listen, users.clone())?;
        if wait_ready(addr, std::time::Duration::from_secs(10)).await {
            return Ok(addr);
        }
    }
    Err(BrokerError::NotReady { addr: listen })
}

fn start(listen: SocketAddr, users: Option<Users>) -> Result<SocketAddr, BrokerError> {
    // rumqttd binds by address and reports a failed bind only in its log: bind here first,
    // which checks the address and resolves port 0, then hand the port over at once.
    let bound = TcpListener::bind(listen)
        .and_then(|l| l.local_addr())
        .map_err(|source| BrokerError::Listen {
            addr: listen,
            source,
        })?;
    let mut broker = Broker::new(config(bound, 20_000, users));
    std::thread::Builder::new()
        .name("broker".to_owned())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .map_err(BrokerError::Thread)?;
    Ok(bound)
}

/// Waits until an MQTT broker answers at `addr`: a CONNECT gets a CONNACK (accepted or not),
/// so a port that merely accepts connections is not taken for a broker.
pub async fn wait_ready(addr: SocketAddr, timeout: std::time::Duration) -> bool {
    let probe = async {
        loop {
            let once = tokio::time::timeout(std::time::Duration::from_secs(2), connack(addr));
            if let Ok(Some(())) = once.await {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(timeout, probe).await.is_ok()
}

/// One MQTT 3.1.1 CONNECT (clean session, client id "ready-probe") and its CONNACK.
async fn connack(addr: SocketAddr) -> Option<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let mut connect = vec![
        0x10, 23, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 10, 0, 11,
    ];
    connect.extend_from_slice(b"ready-probe");
    s.write_all(&connect).await.ok()?;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).await.ok()?;
    (ack[0] == 0x20 && ack[1] == 2).then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Users, AuthFileError> {
        parse_users(Path::new("users.txt"), text)
    }

    #[test]
    fn a_users_file_takes_comments_blanks_and_colons_in_passwords() {
        let users = parse("# broker users\n\ncentral: pa:ss word \n  sim:x\r\n").unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(users["central"], "pa:ss word");
        assert_eq!(users["sim"], "x");
    }

    #[test]
    fn a_bad_users_file_is_refused_naming_file_and_line_but_no_password() {
        for (text, line) in [
            ("central:ok\njust-a-name-hunter2\n", 2),
            ("# c\n:hunter2\n", 2),
            ("two words:hunter2\n", 1),
            ("central:\n", 1),
            ("central:hunter2\n\ncentral:hunter2\n", 3),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("users.txt:{line}: ")),
                "{text:?}: {e}"
            );
            assert!(!e.contains("hunter2"), "{text:?}: {e}");
        }
        assert!(
            parse("# nobody\n")
                .unwrap_err()
                .to_string()
                .contains("no users")
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_users_file_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        std::fs::write(&path, "central:secret\n").unwrap();
        for mode in [0o640, 0o604, 0o644] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = load_users(&path).unwrap_err().to_string();
            assert!(e.contains("chmod 600"), "{mode:o}: {e}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(load_users(&path).unwrap()["central"], "secret");
    }
}
