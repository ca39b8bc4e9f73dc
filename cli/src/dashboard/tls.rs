//! The dashboard over TLS (`cuntong central --http-tls DIR`): central shows its server
//! certificate, and staff sign in with certificates of the fleet CA (`cuntong provision staff
//! NAME`). A connection whose client certificate chains to the CA, is not on the CRL read at
//! start and names a staff member (`staff:NAME`) is signed in as NAME for as long as it lasts;
//! a box's certificate, or none, signs nobody in.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Time a client has to finish its handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// The files of `--http-tls DIR`.
pub const SERVER_CERT: &str = "server.pem";
pub const SERVER_KEY: &str = "server-key.pem";
pub const CA: &str = "ca.pem";
pub const CRL: &str = "crl.pem";

/// A staff member signed in by their certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaffCert(pub String);

/// The dashboard's TLS: its certificate and the staff certificates it takes.
#[derive(Clone)]
pub struct DashboardTls {
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for DashboardTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DashboardTls")
    }
}

impl DashboardTls {
    /// Reads `dir`: `server.pem` and `server-key.pem` (`cuntong ca issue-server`), the fleet
    /// CA's `ca.pem`, and its `crl.pem` if there is one (copied from the CA after a revocation;
    /// read at start).
    pub fn load(dir: &Path) -> Result<DashboardTls, cuntong_terminal::tls::TlsError> {
        let crl: PathBuf = dir.join(CRL);
        let config = cuntong_terminal::tls::server_config_with_clients(
            &dir.join(SERVER_CERT),
            &dir.join(SERVER_KEY),
            &dir.join(CA),
            crl.exists().then_some(crl.as_path()),
        )?;
        let mut config = Arc::unwrap_or_clone(config);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(DashboardTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// The handshake of a new connection, and the staff member its certificate names.
    pub async fn accept(
        &self,
        stream: TcpStream,
    ) -> std::io::Result<(TlsStream<TcpStream>, Option<StaffCert>)> {
        let tls = tokio::time::timeout(HANDSHAKE, self.acceptor.accept(stream))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let staff = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|der| staff_of(der.as_ref()));
        Ok((tls, staff))
    }
}

/// The staff member a (verified) client certificate names, if it is a staff certificate.
fn staff_of(der: &[u8]) -> Option<StaffCert> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    let name = cn.strip_prefix(crate::ca::STAFF_PREFIX)?;
    crate::staff::check_name(name).ok()?;
    Some(StaffCert(name.to_owned()))
}
