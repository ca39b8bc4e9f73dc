//! `cuntong readiness`: before a meeting, every terminal of the meeting (or of a region) checks
//! itself — camera, microphone, link, clock, disk — when asked by a signed `readiness` command;
//! the answers are shown as a ready / not-ready table and kept in the store (`readiness`).

use cuntong_core::command::{Check, Readiness};
use cuntong_core::envelope::DecodeError;
use cuntong_core::meeting::host::Host;
use cuntong_core::terminal_id::TerminalId;
use serde::{Deserialize, Serialize};

use crate::cmd::Answer;
use crate::store::{Database, StoreError};

/// `cuntong readiness --json`: one object per terminal asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadinessJson {
    pub terminal: String,
    /// `null` when the terminal did not answer in time.
    pub ready: Option<bool>,
    pub checks: Vec<Check>,
}

/// Why the terminals of a meeting cannot be found in the store.
#[derive(Debug, thiserror::Error)]
pub enum ReadinessError {
    /// The store cannot be read.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The store has no session of that id.
    #[error("no meeting {0} in the store")]
    NoMeeting(String),
    /// The stored session's record does not decode.
    #[error("meeting {meeting}: {source}")]
    Record {
        meeting: String,
        source: DecodeError,
    },
}

/// The terminals a meeting knows (invited and expected, joined or not), from the store.
pub fn meeting_terminals(db: &Database, meeting: &str) -> Result<Vec<TerminalId>, ReadinessError> {
    let blob = db
        .open_read_only()
        .and_then(|s| s.meeting(meeting))?
        .ok_or_else(|| ReadinessError::NoMeeting(meeting.to_owned()))?;
    let host = Host::from_store(&blob).map_err(|source| ReadinessError::Record {
        meeting: meeting.to_owned(),
        source,
    })?;
    Ok(host.sites().keys().copied().collect())
}

/// Turns the command answers into readiness rows.
pub fn rows(answers: &[Answer]) -> Vec<ReadinessJson> {
    answers
        .iter()
        .map(|a| {
            let parsed = a
                .output
                .as_deref()
                .filter(|_| a.ok == Some(true))
                .and_then(|o| serde_json::from_str::<Readiness>(o).ok());
            match parsed {
                Some(r) => ReadinessJson {
                    terminal: a.terminal.clone(),
                    ready: Some(r.ready),
                    checks: r.checks,
                },
                None => ReadinessJson {
                    terminal: a.terminal.clone(),
                    ready: a.ok.map(|_| false),
                    checks: a
                        .output
                        .iter()
                        .map(|o| Check {
                            name: "answer".into(),
                            ok: false,
                            detail: o.clone(),
                        })
                        .collect(),
                },
            }
        })
        .collect()
}

/// Keeps the results in the store.
pub fn save(db: &Database, rows: &[ReadinessJson], at_ms: u64) -> Result<(), StoreError> {
    let rows: Vec<(String, Option<bool>, String)> = rows
        .iter()
        .map(|r| {
            let json = serde_json::to_string(r).unwrap_or_default();
            (r.terminal.clone(), r.ready, json)
        })
        .collect();
    db.open()?.save_readiness(&rows, at_ms)
}

/// The table for people: one row per terminal, one column per check.
pub fn table(rows: &[ReadinessJson]) -> String {
    let names = ["camera", "microphone", "link", "clock", "disk"];
    let ready = rows.iter().filter(|r| r.ready == Some(true)).count();
    let mut out = format!("{ready} of {} ready\n", rows.len());
    out.push_str(&format!("{:<20} {:<10}", "TERMINAL", "READY"));
    for n in names {
        out.push_str(&format!(" {:<11}", n.to_uppercase()));
    }
    out.push_str(" WHY NOT\n");
    for r in rows {
        let state = match r.ready {
            Some(true) => "ready",
            Some(false) => "NOT READY",
            None => "no answer",
        };
        out.push_str(&format!("{:<20} {:<10}", r.terminal, state));
        for n in names {
            let mark = r
                .checks
                .iter()
                .find(|c| c.name == n)
                .map_or("-", |c| if c.ok { "ok" } else { "FAIL" });
            out.push_str(&format!(" {mark:<11}"));
        }
        let why: Vec<String> = r
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect();
        out.push_str(&format!(" {}\n", why.join("; ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_become_rows_and_unanswered_terminals_say_so() {
        let ok = Readiness::of(vec![Check {
            name: "camera".into(),
            ok: true,
            detail: "/dev/video0".into(),
        }]);
        let answers = vec![
            Answer {
                terminal: "130102001001-main".into(),
                nonce: 1,
                ok: Some(true),
                output: Some(serde_json::to_string(&ok).unwrap()),
            },
            Answer {
                terminal: "130102002001-main".into(),
                nonce: 2,
                ok: None,
                output: None,
            },
            Answer {
                terminal: "130102003001-main".into(),
                nonce: 3,
                ok: Some(false),
                output: Some("refused: expired".into()),
            },
        ];
        let r = rows(&answers);
        assert_eq!(r[0].ready, Some(true));
        assert_eq!(r[1].ready, None);
        assert_eq!(r[2].ready, Some(false));
        assert!(r[2].checks[0].detail.contains("expired"));
        let t = table(&r);
        assert!(t.starts_with("1 of 3 ready"), "{t}");
        assert!(t.contains("no answer"));
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("c.db");
        let store = Database::Sqlite(db.clone());
        save(&store, &r, 5).unwrap();
        save(&store, &r, 6).unwrap();
        let n: i64 = rusqlite::Connection::open(&db)
            .unwrap()
            .query_row("SELECT count(*) FROM readiness", [], |x| x.get(0))
            .unwrap();
        assert_eq!(n, 6, "every run is kept");
    }
}
