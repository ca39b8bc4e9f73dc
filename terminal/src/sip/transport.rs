//! The gateway's SIP transports (RFC 3261 §18): datagrams over UDP, and streams over TCP and,
//! where the gateway has a certificate, TLS. The calls see one queue of messages, each with the
//! [`Peer`] it came from, and answer a peer the same way whichever way it came: a stream's
//! answers go back on the stream.
//!
//! Streams are bounded like everything else a stranger can open: at most [`MAX_STREAMS`] at
//! once, each closed after [`IDLE`] without a message, a TLS handshake given [`HANDSHAKE`], and
//! a message longer than [`cuntong_core::sip::MAX_MESSAGE`] closes its stream.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cuntong_core::sip::{self as message, Framing};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Streams open at once, at most; more are closed as they are accepted.
pub const MAX_STREAMS: usize = 64;
/// A stream silent this long is closed.
pub const IDLE: Duration = Duration::from_secs(15 * 60);
/// Time a TLS client has to finish its handshake.
pub const HANDSHAKE: Duration = Duration::from_secs(10);
/// Time a call out has to open its TCP connection.
const CONNECT: Duration = Duration::from_secs(5);
/// Messages waiting for the calls, at most (the transports wait when it is full).
const QUEUED: usize = 256;

/// How a message travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Udp,
    Tcp,
    Tls,
}

impl Kind {
    /// The name in a `Via` header.
    pub fn via(self) -> &'static str {
        match self {
            Kind::Udp => "UDP",
            Kind::Tcp => "TCP",
            Kind::Tls => "TLS",
        }
    }

    /// The URI parameter that asks for it (none for UDP, SIP's default).
    pub fn uri_param(self) -> &'static str {
        match self {
            Kind::Udp => "",
            Kind::Tcp => ";transport=tcp",
            Kind::Tls => ";transport=tls",
        }
    }

    /// The transport a SIP URI asks for: `sips:` or `;transport=tls` is TLS, `;transport=tcp`
    /// TCP, anything else UDP.
    pub fn of_uri(uri: &str) -> Kind {
        let lower = uri.to_ascii_lowercase();
        if lower.starts_with("sips:") || lower.contains(";transport=tls") {
            Kind::Tls
        } else if lower.contains(";transport=tcp") {
            Kind::Tcp
        } else {
            Kind::Udp
        }
    }
}

/// Where a message came from, and where its answer goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub addr: SocketAddr,
    pub kind: Kind,
    /// The stream it came on (0 for UDP).
    stream: u64,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} over {}", self.addr, self.kind.via())
    }
}

/// The open streams' outgoing queues, by stream.
type Streams = Arc<Mutex<HashMap<u64, mpsc::Sender<Vec<u8>>>>>;

/// Every transport the gateway listens on.
pub struct Transports {
    udp: Arc<UdpSocket>,
    /// The port of UDP and TCP (the same), for `Via` and `Contact`.
    pub port: u16,
    /// The TLS port, if the gateway listens on TLS.
    pub tls_port: Option<u16>,
    sender: mpsc::Sender<(Peer, Vec<u8>)>,
    incoming: mpsc::Receiver<(Peer, Vec<u8>)>,
    streams: Streams,
    next_stream: Arc<AtomicU64>,
    stop: CancellationToken,
    /// How calls out over TLS check the room system, if they are made.
    tls_client: Option<tokio_rustls::TlsConnector>,
}

impl std::fmt::Debug for Transports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transports")
            .field("port", &self.port)
            .field("tls_port", &self.tls_port)
            .finish_non_exhaustive()
    }
}

impl Transports {
    /// Listens on UDP and TCP at `listen` (port 0: one the system gives, the same for both)
    /// and, with a certificate, on TLS at `tls`; until `stop`. Calls out over TLS are made
    /// with `tls_client`, if given.
    pub async fn bind(
        listen: SocketAddr,
        tls: Option<(SocketAddr, Arc<rustls::ServerConfig>)>,
        tls_client: Option<Arc<rustls::ClientConfig>>,
        stop: CancellationToken,
    ) -> std::io::Result<Transports> {
        let udp = Arc::new(UdpSocket::bind(listen).await?);
        let port = udp.local_addr()?.port();
        let tcp = TcpListener::bind(SocketAddr::new(listen.ip(), port)).await?;
        let tls = match tls {
            Some((at, config)) => Some((TcpListener::bind(at).await?, config)),
            None => None,
        };
        let tls_port = match &tls {
            Some((l, _)) => Some(l.local_addr()?.port()),
            None => None,
        };
        let (sender, incoming) = mpsc::channel(QUEUED);
        let t = Transports {
            udp,
            port,
            tls_port,
            sender,
            incoming,
            streams: Arc::default(),
            next_stream: Arc::new(AtomicU64::new(1)),
            stop,
            tls_client: tls_client.map(tokio_rustls::TlsConnector::from),
        };
        tokio::spawn(datagrams(t.udp.clone(), t.sender.clone(), t.stop.clone()));
        tokio::spawn(t.clone_handle().accept(tcp, None));
        if let Some((listener, config)) = tls {
            tokio::spawn(t.clone_handle().accept(listener, Some(config)));
        }
        eprintln!(
            "sip gateway listening on {} (UDP, TCP){}",
            SocketAddr::new(listen.ip(), port),
            tls_port.map_or(String::new(), |p| format!(", TLS port {p}"))
        );
        Ok(t)
    }

    /// The next message from a room system (`None` once stopped).
    pub async fn recv(&mut self) -> Option<(Peer, Vec<u8>)> {
        self.incoming.recv().await
    }

    /// Sends `bytes` to `peer`: a datagram, or on the stream it came on.
    pub async fn send(&self, peer: Peer, bytes: &[u8]) {
        let sent = match peer.kind {
            Kind::Udp => self.udp.send_to(bytes, peer.addr).await.map(|_| ()),
            Kind::Tcp | Kind::Tls => {
                let queue = self
                    .streams
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(&peer.stream)
                    .cloned();
                match queue {
                    Some(q) => q
                        .send(bytes.to_vec())
                        .await
                        .map_err(|_| std::io::ErrorKind::BrokenPipe.into()),
                    None => Err(std::io::ErrorKind::NotConnected.into()),
                }
            }
        };
        if let Err(e) = sent {
            tracing::debug!(%peer, error = %e, "sip: not sent");
        }
    }

    /// The peer at `to` over `kind`: for TCP, a connection opened to it; for TLS, one whose
    /// certificate names `host` and chains to the gateway's CAs.
    pub async fn connect(&self, to: SocketAddr, kind: Kind, host: &str) -> std::io::Result<Peer> {
        if kind == Kind::Udp {
            return Ok(Peer {
                addr: to,
                kind,
                stream: 0,
            });
        }
        let tls = match (kind, &self.tls_client) {
            (Kind::Tls, None) => {
                return Err(std::io::Error::other(
                    "calls out over TLS need [sip] tls.ca (the CAs of the room systems' certificates)",
                ));
            }
            (Kind::Tls, Some(connector)) => {
                let name = rustls::pki_types::ServerName::try_from(
                    host.trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_owned(),
                )
                .map_err(|e| std::io::Error::other(format!("{host}: {e}")))?;
                Some((connector.clone(), name))
            }
            _ => None,
        };
        let stream = within(TcpStream::connect(to)).await?;
        let (peer, queue) = self
            .clone_handle()
            .open(to, kind)
            .ok_or_else(|| std::io::Error::other("too many SIP streams open"))?;
        let carrier = self.clone_handle();
        match tls {
            None => {
                tokio::spawn(carrier.carry(stream, peer, queue));
            }
            Some((connector, name)) => match within(connector.connect(name, stream)).await {
                Ok(s) => {
                    tokio::spawn(carrier.carry(s, peer, queue));
                }
                Err(e) => {
                    carrier.close(peer);
                    return Err(e);
                }
            },
        }
        Ok(peer)
    }

    fn clone_handle(&self) -> Handle {
        Handle {
            sender: self.sender.clone(),
            streams: self.streams.clone(),
            next_stream: self.next_stream.clone(),
            stop: self.stop.clone(),
        }
    }
}

/// What the tasks carrying streams share with [`Transports`].
#[derive(Clone)]
struct Handle {
    sender: mpsc::Sender<(Peer, Vec<u8>)>,
    streams: Streams,
    next_stream: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl Handle {
    /// Accepts streams on `listener` (TLS with `tls`) until stopped.
    async fn accept(self, listener: TcpListener, tls: Option<Arc<rustls::ServerConfig>>) {
        let kind = if tls.is_some() { Kind::Tls } else { Kind::Tcp };
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        loop {
            let (stream, addr) = tokio::select! {
                _ = self.stop.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, "sip: accepting a stream failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Some((peer, queue)) = self.open(addr, kind) else {
                tracing::warn!(%addr, "sip: {MAX_STREAMS} streams open: closing a new one");
                continue;
            };
            let carrier = self.clone();
            match acceptor.clone() {
                None => {
                    tokio::spawn(carrier.carry(stream, peer, queue));
                }
                Some(acceptor) => {
                    tokio::spawn(async move {
                        match tokio::time::timeout(HANDSHAKE, acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => carrier.carry(tls, peer, queue).await,
                            Ok(Err(e)) => {
                                carrier.close(peer);
                                tracing::warn!(%peer, error = %e, "sip: TLS handshake failed");
                            }
                            Err(_) => {
                                carrier.close(peer);
                                tracing::warn!(%peer, "sip: TLS handshake not finished in time");
                            }
                        }
                    });
                }
            }
        }
    }

    /// A new stream's peer and outgoing queue, if there is room for another.
    fn open(&self, addr: SocketAddr, kind: Kind) -> Option<(Peer, mpsc::Receiver<Vec<u8>>)> {
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        if streams.len() >= MAX_STREAMS {
            return None;
        }
        let stream = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let (queue, out) = mpsc::channel(16);
        streams.insert(stream, queue);
        Some((Peer { addr, kind, stream }, out))
    }

    fn close(&self, peer: Peer) {
        self.streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&peer.stream);
    }

    /// Reads `io`'s messages into the queue and writes what is sent to `peer`, until either
    /// side closes, a message is malformed, it is idle too long, or the gateway stops.
    async fn carry<S>(self, io: S, peer: Peer, mut out: mpsc::Receiver<Vec<u8>>)
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (mut reader, mut writer) = tokio::io::split(io);
        let mut buf = Vec::with_capacity(4096);
        let why = 'stream: loop {
            tokio::select! {
                _ = self.stop.cancelled() => break "the gateway stops",
                bytes = out.recv() => match bytes {
                    Some(b) => {
                        if let Err(e) = writer.write_all(&b).await {
                            tracing::debug!(%peer, error = %e, "sip: write failed");
                            break "it cannot be written";
                        }
                    }
                    None => break "nothing sends on it",
                },
                r = tokio::time::timeout(IDLE, reader.read_buf(&mut buf)) => match r {
                    Err(_) => break "it was idle",
                    Ok(Ok(0)) => break "the room system closed it",
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "sip: read failed");
                        break "it cannot be read";
                    }
                    Ok(Ok(_)) => loop {
                        match message::frame(&buf) {
                            Ok(Framing::Need) => break,
                            Ok(Framing::Skip(n)) => {
                                buf.drain(..n);
                            }
                            Ok(Framing::Message(n)) => {
                                let m: Vec<u8> = buf.drain(..n).collect();
                                if self.sender.send((peer, m)).await.is_err() {
                                    break 'stream "the gateway stops";
                                }
                            }
                            Err(e) => {
                                tracing::warn!(%peer, error = %e, "sip: not a SIP stream");
                                break 'stream "it carried something that is not SIP";
                            }
                        }
                    },
                },
            }
        };
        self.close(peer);
        let _ = writer.shutdown().await;
        tracing::debug!(%peer, why, "sip: stream closed");
    }
}

/// `step` of opening a stream, given [`CONNECT`] to finish.
async fn within<T>(
    step: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    tokio::time::timeout(CONNECT, step)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// Reads datagrams into the queue until stopped.
async fn datagrams(
    udp: Arc<UdpSocket>,
    sender: mpsc::Sender<(Peer, Vec<u8>)>,
    stop: CancellationToken,
) {
    let mut buf = vec![0u8; message::MAX_MESSAGE + 1];
    loop {
        let (n, addr) = tokio::select! {
            _ = stop.cancelled() => return,
            r = udp.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "sip: receive failed");
                    continue;
                }
            },
        };
        let peer = Peer {
            addr,
            kind: Kind::Udp,
            stream: 0,
        };
        if sender.send((peer, buf[..n].to_vec())).await.is_err() {
            return;
        }
    }
}
