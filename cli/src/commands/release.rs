//! `cuntong release sign|add|list`: signed releases of the terminal package, and the ones
//! recorded in the store for rollouts.

use std::path::PathBuf;

use clap::Subcommand;
use cuntong_core::envelope::encode;
use cuntong_terminal::println;

use super::common::{Failure, database, fail};
use crate::store::{Database, ReleaseRow};
use crate::view::rfc3339_ms;

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
    /// Sign a terminal package and record it, with its artifact, in central's store, from
    /// where central serves it to the boxes (`GET /releases/SHA256`) and `cuntong rollout
    /// start V` rolls it out.
    Add {
        file: PathBuf,
        #[arg(long)]
        version: String,
        /// The fleet CA directory (holds `release-key.pk8`).
        #[arg(long, env = "CUNTONG_CA", default_value = "ca")]
        ca: PathBuf,
        #[arg(long, env = "CUNTONG_DB")]
        db: Option<Database>,
    },
    /// The releases recorded in the store.
    List {
        #[arg(long)]
        json: bool,
        #[arg(long, env = "CUNTONG_DB")]
        db: Option<Database>,
    },
}

/// `cuntong release list --json`: one object per release.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseJson {
    pub version: String,
    pub sha256: String,
    pub size: u64,
    /// RFC 3339 with milliseconds, UTC.
    pub added_at: String,
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
        ReleaseAction::Add {
            file,
            version,
            ca,
            db,
        } => {
            let signed = crate::release::sign(&ca, &file, &version).map_err(fail)?;
            let manifest = signed.manifest().map_err(fail)?;
            let artifact =
                std::fs::read(&file).map_err(|e| fail(format!("{}: {e}", file.display())))?;
            if artifact.len() as u64 != manifest.size {
                return Err(fail(format!("{}: changed while read", file.display())));
            }
            let row = ReleaseRow {
                version: version.clone(),
                sha256: cuntong_terminal::hex::encode(&manifest.sha256),
                size: manifest.size,
                signed: encode(&signed).map_err(fail)?,
                added_ms: cuntong_terminal::link::unix_ms(),
            };
            let mut store = database(db).open().map_err(fail)?;
            let new = store.add_release(&row, &artifact).map_err(fail)?;
            let how = if new { "recorded" } else { "already recorded" };
            println!(
                "release {version} {how}: {} bytes, SHA-256 {}",
                row.size, row.sha256
            );
            Ok(())
        }
        ReleaseAction::List { json, db } => {
            let rows = database(db)
                .open_read_only()
                .and_then(|s| s.releases())
                .map_err(fail)?;
            let out: Vec<ReleaseJson> = rows
                .into_iter()
                .map(|r| ReleaseJson {
                    version: r.version,
                    sha256: r.sha256,
                    size: r.size,
                    added_at: rfc3339_ms(r.added_ms),
                })
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&out).map_err(fail)?);
                return Ok(());
            }
            println!("{:<16} {:>12} {:<24} SHA-256", "VERSION", "BYTES", "ADDED");
            for r in &out {
                println!(
                    "{:<16} {:>12} {:<24} {}",
                    r.version, r.size, r.added_at, r.sha256
                );
            }
            Ok(())
        }
    }
}
