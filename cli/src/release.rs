//! Releases: a terminal package described by a manifest (version, size, SHA-256) and signed
//! with the fleet's release key, as boxes check it before installing anything
//! ([`cuntong_core::update`]).

use std::path::{Path, PathBuf};

use cuntong_core::envelope::{DecodeError, EncodeError, encode};
use cuntong_core::update::{Artifact, Manifest, SignedRelease};
use cuntong_terminal::update::UpdateError;
use ring::signature::Ed25519KeyPair;

use crate::ca::RELEASE_KEY;

/// Why a release could not be signed or read.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// Not a version a package can have.
    #[error("--version {0:?}: give the package's version (e.g. 0.2.0)")]
    BadVersion(String),
    /// The release key file cannot be read.
    #[error(
        "{}: {source} (the release key is made by `cuntong ca init`)",
        path.display()
    )]
    KeyUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The release key file does not hold an Ed25519 key.
    #[error("{}: not an Ed25519 key", path.display())]
    NotEd25519 { path: PathBuf },
    /// The package cannot be read.
    #[error("{0}")]
    Artifact(#[from] UpdateError),
    /// The package is empty.
    #[error("{}: empty", path.display())]
    EmptyArtifact { path: PathBuf },
    /// The manifest could not be encoded.
    #[error("{0}")]
    Encode(#[from] EncodeError),
    /// The signed release file cannot be read.
    #[error("{}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not a signed release.
    #[error("{}: not a signed release ({source})", path.display())]
    NotARelease { path: PathBuf, source: DecodeError },
}

/// Signs the package at `artifact` as release `version` with the release key of `ca_dir`.
pub fn sign(ca_dir: &Path, artifact: &Path, version: &str) -> Result<SignedRelease, ReleaseError> {
    if version.is_empty() || version.len() > 64 || version.chars().any(char::is_whitespace) {
        return Err(ReleaseError::BadVersion(version.to_owned()));
    }
    let path = ca_dir.join(RELEASE_KEY);
    let pkcs8 = match std::fs::read(&path) {
        Ok(p) => p,
        Err(source) => return Err(ReleaseError::KeyUnreadable { path, source }),
    };
    let key = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|_| ReleaseError::NotEd25519 { path })?;
    let (sha256, size) = cuntong_terminal::update::release::sha256_of(artifact)?;
    if size == 0 {
        return Err(ReleaseError::EmptyArtifact {
            path: artifact.to_owned(),
        });
    }
    let manifest = encode(&Manifest {
        version: version.to_owned(),
        artifact: Artifact::Deb,
        size,
        sha256,
        created_ms: cuntong_terminal::link::unix_ms(),
    })?;
    let signature = key.sign(&manifest).as_ref().to_vec();
    Ok(SignedRelease {
        manifest,
        signature,
    })
}

/// Reads a signed release written by `cuntong release sign`.
pub fn read(path: &Path) -> Result<SignedRelease, ReleaseError> {
    let bytes = std::fs::read(path).map_err(|source| ReleaseError::Unreadable {
        path: path.to_owned(),
        source,
    })?;
    SignedRelease::decode(&bytes).map_err(|source| ReleaseError::NotARelease {
        path: path.to_owned(),
        source,
    })
}
