//! What the terminal notices about itself at start-up: whether its previous run ended cleanly
//! (a power cut or crash leaves the `running` marker behind), and whether its configuration or
//! key files changed since it last ran. Both become events for central.

use std::path::{Path, PathBuf};

use cuntong_core::envelope::Event;

use crate::config::TerminalConfig;

/// The files whose change is a security event: the config, the TLS files, the command key.
fn watched(cfg: &TerminalConfig) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = cfg.source.iter().cloned().collect();
    if let Some(t) = &cfg.tls {
        files.extend([t.ca.clone(), t.cert.clone(), t.key.clone()]);
    }
    if let Some(c) = &cfg.commands {
        files.push(c.key.clone());
    }
    files
}

fn fingerprint(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => ring::digest::digest(&ring::digest::SHA256, &bytes)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        Err(_) => "missing".to_owned(),
    }
}

/// Runs the start-up checks and returns the events to report. Marks this run as running.
pub fn on_start(cfg: &TerminalConfig) -> std::io::Result<Vec<Event>> {
    let dir = &cfg.data_dir;
    std::fs::create_dir_all(dir)?;
    let mut events = Vec::new();
    let marker = dir.join("running");
    if marker.exists() {
        events.push(Event::UnexpectedRestart);
    }
    std::fs::write(&marker, b"")?;

    let state = dir.join("files.sha256");
    let before = std::fs::read_to_string(&state).unwrap_or_default();
    let mut now = String::new();
    let mut changed = Vec::new();
    for f in watched(cfg) {
        let line = format!("{} {}\n", fingerprint(&f), f.display());
        let known = before.lines().find(|l| {
            l.split_once(' ')
                .is_some_and(|(_, p)| p == f.display().to_string())
        });
        if known.is_some_and(|k| format!("{k}\n") != line) {
            changed.push(f.display().to_string());
        }
        now.push_str(&line);
    }
    if !changed.is_empty() {
        events.push(Event::FilesChanged { files: changed });
    }
    crate::atomic::write(&state, now.as_bytes())?;
    Ok(events)
}

/// Records the current fingerprint of `file` after the terminal changed it itself (remote
/// configuration), so the next start does not report it as changed.
pub fn accept_change(cfg: &TerminalConfig, file: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)?;
    let state = cfg.data_dir.join("files.sha256");
    let shown = file.display().to_string();
    let mut lines: Vec<String> = std::fs::read_to_string(&state)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split_once(' ').is_none_or(|(_, p)| p != shown))
        .map(|l| format!("{l}\n"))
        .collect();
    lines.push(format!("{} {shown}\n", fingerprint(file)));
    crate::atomic::write(&state, lines.concat().as_bytes())
}

/// Marks a clean stop.
pub fn on_clean_stop(cfg: &TerminalConfig) {
    let _ = std::fs::remove_file(cfg.data_dir.join("running"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unclean_stop_and_a_changed_file_are_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("terminal.toml");
        let text = format!(
            "id = \"130102001001-main\"\nbroker = \"mqtt://127.0.0.1:1\"\ndata_dir = {:?}\n",
            dir.path().join("data")
        );
        std::fs::write(&path, &text).unwrap();
        let cfg = TerminalConfig::load(&path).unwrap();
        assert_eq!(on_start(&cfg).unwrap(), vec![], "first run: a baseline");
        on_clean_stop(&cfg);
        assert_eq!(
            on_start(&cfg).unwrap(),
            vec![],
            "clean stop, nothing changed"
        );
        // No clean stop this time (power cut), and the config is edited by hand.
        std::fs::write(&path, format!("{text}# edited\n")).unwrap();
        let events = on_start(&cfg).unwrap();
        assert_eq!(events[0], Event::UnexpectedRestart);
        assert_eq!(
            events[1],
            Event::FilesChanged {
                files: vec![path.display().to_string()]
            }
        );
        on_clean_stop(&cfg);
        assert_eq!(
            on_start(&cfg).unwrap(),
            vec![],
            "the change is reported once"
        );
        // A change the terminal made itself (remote configuration) is not tampering.
        on_clean_stop(&cfg);
        std::fs::write(&path, format!("{text}# set remotely\n")).unwrap();
        accept_change(&cfg, &path).unwrap();
        assert_eq!(on_start(&cfg).unwrap(), vec![]);
    }
}
