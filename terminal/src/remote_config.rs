//! Remote configuration (`config-set KEY=VALUE` from central staff): one key of the terminal's
//! TOML file changed in place, comments and layout kept. The whole new file is validated before
//! it replaces the old one (atomically, the previous version kept beside it as `.prev`), and
//! its fingerprint is recorded, so a sanctioned change is not reported as tampering.
//!
//! Identity, storage and security settings (`id`, `data_dir`, `[tls]`, `[commands]`) are not
//! remotely settable: they change only by provisioning a new bundle.

use std::path::{Path, PathBuf};

use crate::config::TerminalConfig;

/// When a change takes effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applies {
    /// The running daemon applies it at once (sampling intervals, metric policies).
    Now,
    /// Saved; the daemon applies it at its next start.
    AtRestart,
}

/// Why a key was not set.
#[derive(Debug, thiserror::Error)]
pub enum SetError {
    #[error("{0:?} is not a TOML key")]
    NotKey(String),
    #[error("empty key")]
    EmptyKey,
    #[error("{key}: {top} is set by provisioning only, not remotely")]
    Provisioned { key: String, top: String },
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Toml {
        path: PathBuf,
        source: toml_edit::TomlError,
    },
    /// The file, or the file with the change, is not a valid configuration.
    #[error(transparent)]
    Invalid(#[from] crate::config::ConfigError),
    #[error("{key}: {here} is not a table")]
    NotTable { key: String, here: String },
    #[error("{0}: is a table; set one of its keys")]
    IsTable(String),
    #[error("{0}: would change the terminal's identity")]
    Identity(String),
    #[error("{}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("saved, but the change could not be recorded: {0}")]
    NotRecorded(#[source] std::io::Error),
    #[error("this terminal runs without a configuration file")]
    NoFile,
}

/// A change that was validated and saved.
#[derive(Clone, Debug)]
pub struct ConfigChange {
    /// The configuration as it now is on disk.
    pub config: TerminalConfig,
    pub applies: Applies,
    /// One line for central: what changed, where, and when it applies.
    pub summary: String,
}

/// Top-level keys that only provisioning may change.
const PROVISIONED: [&str; 4] = ["id", "data_dir", "tls", "commands"];

/// Sets `key` (a TOML dotted key such as `telemetry.health_interval` or
/// `metric."env.temp".deadband`) to `value` in the configuration file at `path`.
///
/// `value` is read as a TOML value (`20`, `true`, `"x"`, `[1, 2]`) and otherwise taken as a
/// string (`30s`, `16MiB`). Nothing is written unless the resulting file is a valid
/// configuration for the same terminal.
pub fn set(path: &Path, key: &str, value: &str) -> Result<ConfigChange, SetError> {
    let keys = toml_edit::Key::parse(key).map_err(|_| SetError::NotKey(key.into()))?;
    let Some((last, parents)) = keys.split_last() else {
        return Err(SetError::EmptyKey);
    };
    let top = keys[0].get();
    if PROVISIONED.contains(&top) {
        return Err(SetError::Provisioned {
            key: key.into(),
            top: top.into(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|source| SetError::Read {
        path: path.to_owned(),
        source,
    })?;
    let before = TerminalConfig::parse(&text, path)?;
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|source| SetError::Toml {
        path: path.to_owned(),
        source,
    })?;
    let parsed: toml_edit::Value = value
        .parse()
        .unwrap_or_else(|_| toml_edit::Value::from(value));

    let mut table: &mut dyn toml_edit::TableLike = doc.as_table_mut();
    for (depth, k) in parents.iter().enumerate() {
        let here = keys[..=depth]
            .iter()
            .map(|k| k.get())
            .collect::<Vec<_>>()
            .join(".");
        let item = table.entry(k.get()).or_insert_with(|| {
            let mut t = toml_edit::Table::new();
            t.set_implicit(true);
            toml_edit::Item::Table(t)
        });
        table = item.as_table_like_mut().ok_or_else(|| SetError::NotTable {
            key: key.into(),
            here,
        })?;
    }
    if table
        .get(last.get())
        .is_some_and(|i| i.is_table_like() || i.is_array_of_tables())
    {
        return Err(SetError::IsTable(key.into()));
    }
    table.insert(last.get(), toml_edit::Item::Value(parsed));

    let new_text = doc.to_string();
    let mut config = TerminalConfig::parse(&new_text, path)?;
    config.source = Some(path.to_owned());
    if config.id != before.id {
        return Err(SetError::Identity(key.into()));
    }
    write_replacing(path, &new_text).map_err(|source| SetError::Write {
        path: path.to_owned(),
        source,
    })?;
    crate::integrity::accept_change(&config, path).map_err(SetError::NotRecorded)?;

    let applies = if top == "metric" || key == "telemetry.health_interval" {
        Applies::Now
    } else {
        Applies::AtRestart
    };
    let when = match applies {
        Applies::Now => "applied now",
        Applies::AtRestart => "applies at the next restart",
    };
    Ok(ConfigChange {
        config,
        applies,
        summary: format!("{key} = {value} saved to {}; {when}", path.display()),
    })
}

/// Writes `text` to `path` atomically, keeping the previous file as `<path>.prev`.
fn write_replacing(path: &Path, text: &str) -> std::io::Result<()> {
    let with_suffix = |suffix: &str| -> PathBuf {
        let mut s = path.as_os_str().to_owned();
        s.push(suffix);
        PathBuf::from(s)
    };
    crate::atomic::write(&with_suffix(".prev"), &std::fs::read(path)?)?;
    crate::atomic::write(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "# the village point's box\nid = \"130102001001-main\"\nbroker = \"mqtt://127.0.0.1:1883\"\ndata_dir = \"DATA\"\n\n[telemetry]\nhealth_interval = \"60s\"  # health sampling\n";

    fn file() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("terminal.toml");
        let data = dir.path().join("data");
        std::fs::write(&path, BASE.replace("DATA", data.to_str().unwrap())).unwrap();
        (dir, path)
    }

    #[test]
    fn a_key_is_changed_in_place_keeping_comments_and_the_previous_file() {
        let (_dir, path) = file();
        let change = set(&path, "telemetry.health_interval", "30s").unwrap();
        assert_eq!(change.applies, Applies::Now);
        assert_eq!(change.config.health_interval.as_secs(), 30);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("# the village point's box"), "{text}");
        assert!(text.contains("health_interval = \"30s\""), "{text}");
        let prev = std::fs::read_to_string(path.with_extension("toml.prev")).unwrap();
        assert!(prev.contains("health_interval = \"60s\""));

        let change = set(&path, "delivery.rate", "20").unwrap();
        assert_eq!(change.applies, Applies::AtRestart);
        assert_eq!(change.config.delivery.rate_per_s, 20);
        let change = set(&path, "metric.\"env.temp\".deadband", "0.5").unwrap();
        assert_eq!(change.applies, Applies::Now);
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .contains("[metric.\"env.temp\"]")
        );
    }

    #[test]
    fn invalid_values_and_provisioned_keys_are_refused_and_nothing_is_written() {
        let (_dir, path) = file();
        let before = std::fs::read_to_string(&path).unwrap();
        let e = set(&path, "telemetry.health_interval", "soon")
            .unwrap_err()
            .to_string();
        assert!(e.contains("telemetry.health_interval"), "{e}");
        for key in ["id", "data_dir", "tls.cert", "commands.key"] {
            let e = set(&path, key, "x").unwrap_err().to_string();
            assert!(e.contains("provisioning"), "{key}: {e}");
        }
        assert!(
            set(&path, "telemetry", "1")
                .unwrap_err()
                .to_string()
                .contains("is a table")
        );
        assert!(
            set(&path, "broker.host", "1")
                .unwrap_err()
                .to_string()
                .contains("not a table")
        );
        assert!(set(&path, "a..b", "1").is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
    }
}
