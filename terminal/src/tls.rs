//! Mutual TLS for the MQTT link: the fleet CA to verify the broker, and this client's
//! certificate and key to prove who it is. rustls with exactly one crypto provider (ring),
//! chosen explicitly, so start-up never depends on which providers happen to be linked.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Where a bundle's TLS files are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The fleet CA (`ca.pem`).
    pub ca: PathBuf,
    /// This client's certificate (`cert.pem`).
    pub cert: PathBuf,
    /// This client's private key (`key.pem`).
    pub key: PathBuf,
}

impl TlsFiles {
    /// The files of a provisioning bundle directory.
    pub fn in_dir(dir: &Path) -> TlsFiles {
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
    }
}

/// Why the TLS set-up failed. Key material is never printed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {detail}")]
    File { path: PathBuf, detail: String },
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        detail: e.to_string(),
    }
}

/// The rustls client configuration for these files.
pub fn client_config(files: &TlsFiles) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let (chain, key) = identity(&files.cert, &files.key)?;
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(&files.ca)?)
        .with_client_auth_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// The rustls client configuration that trusts the CAs in `ca` and shows no certificate of
/// its own (the SIP gateway calling a room system over TLS).
pub fn verifying_client(ca: &Path) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca)?)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The CA certificates of the PEM file `ca`.
fn roots(ca: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| file_err(ca, e))? {
        let cert = cert.map_err(|e| file_err(ca, e))?;
        roots.add(cert).map_err(|e| file_err(ca, e))?;
    }
    if roots.is_empty() {
        return Err(file_err(ca, "no certificate in the CA file"));
    }
    Ok(roots)
}

/// The rustls server configuration of a service that shows the certificate `cert` (its chain,
/// PEM) with its key `key`, and asks its clients for none (SIP room systems over TLS).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let (chain, key) = identity(cert, key)?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// The rustls server configuration of a service that shows `cert` with `key` and asks its
/// clients for a certificate of the CAs in `ca`, not revoked by the CRL at `crl` (PEM); a
/// client without one is let through the handshake, for the service to decide.
pub fn server_config_with_clients(
    cert: &Path,
    key: &Path,
    ca: &Path,
    crl: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let (chain, key) = identity(cert, key)?;
    let crls = match crl {
        Some(path) => rustls::pki_types::CertificateRevocationListDer::pem_file_iter(path)
            .map_err(|e| file_err(path, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| file_err(path, e))?,
        None => Vec::new(),
    };
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(ca)?),
        provider(),
    )
    .with_crls(crls)
    .allow_unauthenticated()
    .build()
    .map_err(|e| file_err(ca, e))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and its private key, read from PEM files.
fn identity(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_err(cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(cert, e))?;
    if chain.is_empty() {
        return Err(file_err(cert, "no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|_| file_err(key, "not a readable PEM private key"))?;
    Ok((chain, key))
}
