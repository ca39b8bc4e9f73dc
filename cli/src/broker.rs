//! The embedded MQTT broker (rumqttd), for single-machine use and the demo.
//!
//! Production sites use Mosquitto or an EMQX cluster; this one needs no installation.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};

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
}

/// The broker's configuration for one plain MQTT 3.1.1 listener.
pub fn config(listen: SocketAddr, max_connections: usize) -> Config {
    let connections = ConnectionSettings {
        connection_timeout_ms: 10_000,
        // Read as a packet limit: a client sending more is disconnected (as Mosquitto's
        // `max_packet_size` in the generated configuration).
        max_payload_size: cuntong_terminal::link::MAX_BROKER_PACKET,
        max_inflight_count: 256,
        auth: None,
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

/// Starts the broker on its own threads and returns the address it listens on (port 0 in
/// `listen` picks a free port). The broker runs until the process exits.
pub fn start(listen: SocketAddr) -> Result<SocketAddr, BrokerError> {
    // rumqttd binds by address and reports a failed bind only in its log: bind here first,
    // which checks the address and resolves port 0, then hand the port over at once.
    let bound = TcpListener::bind(listen)
        .and_then(|l| l.local_addr())
        .map_err(|source| BrokerError::Listen {
            addr: listen,
            source,
        })?;
    let mut broker = Broker::new(config(bound, 20_000));
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

/// Waits until something accepts TCP connections on `addr`.
pub async fn wait_ready(addr: SocketAddr, timeout: std::time::Duration) -> bool {
    let probe = async {
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(timeout, probe).await.is_ok()
}
