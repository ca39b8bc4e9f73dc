//! Releases: a terminal package described by a manifest (version, size, SHA-256) and signed
//! with the fleet's release key, as boxes check it before installing anything
//! ([`cuntong_core::update`]).

use std::path::Path;

use cuntong_core::envelope::encode;
use cuntong_core::update::{Artifact, Manifest, SignedRelease};
use ring::signature::Ed25519KeyPair;

use crate::ca::RELEASE_KEY;

/// Signs the package at `artifact` as release `version` with the release key of `ca_dir`.
pub fn sign(ca_dir: &Path, artifact: &Path, version: &str) -> Result<SignedRelease, String> {
    if version.is_empty() || version.len() > 64 || version.chars().any(char::is_whitespace) {
        return Err(format!(
            "--version {version:?}: give the package's version (e.g. 0.2.0)"
        ));
    }
    let key_path = ca_dir.join(RELEASE_KEY);
    let pkcs8 = std::fs::read(&key_path).map_err(|e| {
        format!(
            "{}: {e} (the release key is made by `cuntong ca init`)",
            key_path.display()
        )
    })?;
    let key = Ed25519KeyPair::from_pkcs8(&pkcs8)
        .map_err(|_| format!("{}: not an Ed25519 key", key_path.display()))?;
    let (sha256, size) =
        cuntong_terminal::update::release::sha256_of(artifact).map_err(|e| e.to_string())?;
    if size == 0 {
        return Err(format!("{}: empty", artifact.display()));
    }
    let manifest = encode(&Manifest {
        version: version.to_owned(),
        artifact: Artifact::Deb,
        size,
        sha256,
        created_ms: cuntong_terminal::link::unix_ms(),
    })
    .map_err(|e| e.to_string())?;
    let signature = key.sign(&manifest).as_ref().to_vec();
    Ok(SignedRelease {
        manifest,
        signature,
    })
}

/// Reads a signed release written by `cuntong release sign`.
pub fn read(path: &Path) -> Result<SignedRelease, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    SignedRelease::decode(&bytes)
        .map_err(|e| format!("{}: not a signed release ({e})", path.display()))
}
