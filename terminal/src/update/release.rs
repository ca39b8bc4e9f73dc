//! Checking a release before anything is installed: the release key's signature over the
//! manifest, then the artifact's exact size and SHA-256.

use std::io::Read;
use std::path::Path;

use cuntong_core::update::{Manifest, SignedRelease};
use ring::signature::{ED25519, UnparsedPublicKey};

use super::{UpdateError, hex};

/// The manifest of `release` if the release key signed it.
pub fn verify(release: &SignedRelease, key: &[u8]) -> Result<Manifest, UpdateError> {
    UnparsedPublicKey::new(&ED25519, key)
        .verify(&release.manifest, &release.signature)
        .map_err(|_| UpdateError::BadSignature)?;
    release
        .manifest()
        .map_err(|e| UpdateError::Malformed(e.to_string()))
}

/// Checks that the file at `path` is the artifact `manifest` describes, byte for byte.
pub fn check_artifact(path: &Path, manifest: &Manifest) -> Result<(), UpdateError> {
    let len = std::fs::metadata(path)
        .map_err(UpdateError::file(path))?
        .len();
    if len != manifest.size {
        return Err(UpdateError::WrongSize {
            got: len,
            want: manifest.size,
        });
    }
    let (digest, _) = sha256_of(path)?;
    if digest != manifest.sha256 {
        return Err(UpdateError::WrongDigest {
            got: hex(&digest),
            want: hex(&manifest.sha256),
        });
    }
    Ok(())
}

/// SHA-256 of a file (what `cuntong release add` signs).
pub fn sha256_of(path: &Path) -> Result<([u8; 32], u64), UpdateError> {
    let mut file = std::fs::File::open(path).map_err(UpdateError::file(path))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(UpdateError::file(path))?;
        if n == 0 {
            break;
        }
        len += n as u64;
        ctx.update(&buf[..n]);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok((out, len))
}
