//! `cuntong release sign`: a signed release for a terminal package.

use std::path::PathBuf;

use clap::Subcommand;
use cuntong_core::envelope::encode;
use cuntong_terminal::println;

use super::common::{Failure, fail};

#[derive(Debug, Subcommand)]
pub enum ReleaseAction {
    /// Sign a terminal package with the fleet's release key: writes FILE.release (the
    /// manifest with its version, size and SHA-256, and the signature), which
    /// `cuntong cmd … update FILE.release URL…` offers to boxes.
    Sign {
        /// The terminal package (`cuntong-terminal_V_ARCH.deb`).
        file: PathBuf,
        #[arg(long)]
        version: String,
        /// The fleet CA directory (holds `release-key.pk8`).
        #[arg(long, env = "CUNTONG_CA", default_value = "ca")]
        ca: PathBuf,
        /// Where to write the signed release (default: FILE.release).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub fn run(action: ReleaseAction) -> Result<(), Failure> {
    match action {
        ReleaseAction::Sign {
            file,
            version,
            ca,
            out,
        } => {
            let signed = crate::release::sign(&ca, &file, &version).map_err(fail)?;
            let out = out.unwrap_or_else(|| {
                let mut s = file.clone().into_os_string();
                s.push(".release");
                PathBuf::from(s)
            });
            let bytes = encode(&signed).map_err(fail)?;
            if out.exists() {
                return Err(fail(format!("{}: exists; not overwritten", out.display())));
            }
            std::fs::write(&out, bytes).map_err(|e| fail(format!("{}: {e}", out.display())))?;
            println!("{} signed as {version}: {}", file.display(), out.display());
            Ok(())
        }
    }
}
