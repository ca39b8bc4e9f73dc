//! `cuntong rollout`: staged rollouts of a recorded release to a region. `start` signs the
//! offer with the fleet's command key and hands it, with the plan, to the rollout role inside
//! `cuntong central`, which runs it ([`crate::rollouts`]); `pause`, `resume` and `cancel` go
//! the same way; `status` and `list` read the store.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use cuntong_core::command::{Action, MAX_LIFETIME_MS};
use cuntong_core::rollout::{Op, Window};
use cuntong_core::update::{Offer, SignedRelease, Stage};
use cuntong_terminal::println;
use ring::rand::SecureRandom;

use super::common::{Conn, Failure, Usage, database, duration, fail, off_runtime, parse};
use super::meeting::ANSWER;
use crate::control::{Hex, RequestBody};
use crate::rollouts::{RolloutSiteJson, summary};
use crate::store::Database;
use crate::view::rfc3339_ms;

#[derive(Debug, Subcommand)]
pub enum RolloutAction {
    /// Roll release VERSION (recorded by `cuntong release add`) out to a region: offers go
    /// out at --rate to the boxes online, inside --window; the rollout aborts once
    /// --abort-failed of at least --min-executed finished boxes failed.
    Start(Box<StartArgs>),
    /// One rollout: its state, the count at each stage and each box's progress.
    Status {
        id: u64,
        #[arg(long)]
        json: bool,
        #[arg(long, env = "CUNTONG_DB")]
        db: Option<Database>,
    },
    /// Every rollout stored.
    List {
        #[arg(long)]
        json: bool,
        #[arg(long, env = "CUNTONG_DB")]
        db: Option<Database>,
    },
    /// Hold the offers (boxes at work carry on).
    Pause {
        id: u64,
        #[command(flatten)]
        conn: Conn,
    },
    /// Carry on offering.
    Resume {
        id: u64,
        #[command(flatten)]
        conn: Conn,
    },
    /// Stop for good: no more offers; offers not yet begun are taken back.
    Cancel {
        id: u64,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Debug, Args)]
pub struct StartArgs {
    version: String,
    #[arg(long)]
    region: String,
    /// Where boxes download: central's `--http` address or a mirror laid out the same
    /// way (`http://central:8080`; the artifact is BASE/releases/SHA256). Repeat for
    /// more sources, tried in order.
    #[arg(long = "from", value_name = "BASE", required = true)]
    from: Vec<String>,
    /// Offers per minute (`50/min`, `2/s`, `50`).
    #[arg(long, default_value = "50/min")]
    rate: String,
    /// Abort once this share of the finished boxes failed (`10%`).
    #[arg(long, default_value = "10%")]
    abort_failed: String,
    /// …and at least this many boxes finished.
    #[arg(long, default_value_t = 20)]
    min_executed: u32,
    /// Offer only inside these hours, Beijing time (`01:00-05:00`; `Z` at the end for
    /// UTC). Boxes already offered carry on outside them.
    #[arg(long)]
    window: Option<String>,
    /// How long a box may take from the offer to its commit before it counts as failed.
    #[arg(long, default_value = "2h")]
    timeout: String,
    /// How long the signed offer stays valid (at most 30d): nothing is offered after it.
    #[arg(long, default_value = "7d")]
    expires: String,
    /// The fleet CA directory (holds `command-key.pk8`).
    #[arg(long, env = "CUNTONG_CA", default_value = "ca")]
    ca: PathBuf,
    #[arg(long, env = "CUNTONG_DB")]
    db: Option<Database>,
    #[command(flatten)]
    conn: Conn,
}

pub async fn run(action: RolloutAction) -> Result<(), Failure> {
    match action {
        RolloutAction::Start(args) => {
            let StartArgs {
                version,
                region,
                from,
                rate,
                abort_failed,
                min_executed,
                window,
                timeout,
                expires,
                ca,
                db,
                conn,
            } = *args;
            let region: cuntong_core::site::Region = parse("--region", &region)?;
            let rate = rate_per_min(&rate)?;
            let abort_failed_percent = percent("--abort-failed", &abort_failed)?;
            let window = window.map(|w| parse_window(&w)).transpose()?;
            let timeout = duration("--timeout", &timeout)?;
            let expires = duration("--expires", &expires)?;
            if expires.as_millis() > u128::from(MAX_LIFETIME_MS) || expires.as_secs() < 60 {
                return Err(Usage("--expires: from 1m to 30d".into()).into());
            }
            for f in &from {
                if !(f.starts_with("http://") || f.starts_with("https://")) {
                    return Err(Usage(format!("--from {f:?}: an http:// or https:// URL")).into());
                }
            }
            let release = off_runtime(|| find_release(db, &version))?;
            let manifest = release.manifest().map_err(fail)?;
            let sha = cuntong_terminal::hex::encode(&manifest.sha256);
            let sources = from
                .iter()
                .map(|b| format!("{}/releases/{sha}", b.trim_end_matches('/')))
                .collect();
            let id = rollout_id()?;
            let key = crate::cmd::signing_key(&ca).map_err(fail)?;
            let offer = Offer {
                rollout: id,
                release,
                sources,
            };
            let (_, command) =
                crate::cmd::sign(&key, &region.prefix(), Action::Update(offer), expires)
                    .map_err(fail)?;
            ask(
                &conn,
                RequestBody::RolloutStart {
                    id,
                    version: version.clone(),
                    region,
                    rate_per_min: rate,
                    abort_failed_percent,
                    min_executed,
                    window,
                    timeout_ms: timeout.as_millis() as u64,
                    command: Hex(command),
                },
            )
            .await?;
            println!("rollout {id} of {version} to {region} started");
            Ok(())
        }
        RolloutAction::Status { id, json, db } => off_runtime(|| status(id, json, db)),
        RolloutAction::List { json, db } => off_runtime(|| list(json, db)),
        RolloutAction::Pause { id, conn } => operate(id, Op::Pause, &conn).await,
        RolloutAction::Resume { id, conn } => operate(id, Op::Resume, &conn).await,
        RolloutAction::Cancel { id, conn } => operate(id, Op::Cancel, &conn).await,
    }
}

async fn ask(conn: &Conn, body: RequestBody) -> Result<(), Failure> {
    let mut client = conn.connect().await?;
    let answer = client.ask(body, ANSWER).await;
    client.close();
    answer?;
    Ok(())
}

async fn operate(id: u64, op: Op, conn: &Conn) -> Result<(), Failure> {
    ask(conn, RequestBody::Rollout { id, op }).await?;
    println!("rollout {id}: {}", op.as_str());
    Ok(())
}

/// A new rollout's id: random, short enough to type.
fn rollout_id() -> Result<u64, Failure> {
    let mut b = [0u8; 4];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| fail("no randomness for the rollout's id"))?;
    Ok(u64::from(u32::from_le_bytes(b) % 900_000_000 + 100_000_000))
}

fn find_release(db: Option<Database>, version: &str) -> Result<SignedRelease, Failure> {
    let rows = database(db)
        .open_read_only()
        .and_then(|s| s.releases())
        .map_err(fail)?;
    let row = rows
        .into_iter()
        .find(|r| r.version == version)
        .ok_or_else(|| {
            Usage(format!(
                "no release {version} recorded (`cuntong release add FILE --version {version}`)"
            ))
        })?;
    SignedRelease::decode(&row.signed).map_err(fail)
}

/// `50/min`, `2/s`, `50` (a minute): offers a minute.
pub fn rate_per_min(text: &str) -> Result<u32, Usage> {
    let bad = || {
        Usage(format!(
            "--rate {text:?}: offers a minute, like 50/min or 2/s"
        ))
    };
    let (n, per) = text.split_once('/').unwrap_or((text, "min"));
    let n: u32 = n.trim().parse().map_err(|_| bad())?;
    let per_min = match per.trim() {
        "min" | "m" => n,
        "s" | "sec" => n.checked_mul(60).ok_or_else(bad)?,
        "h" => n.div_ceil(60),
        _ => return Err(bad()),
    };
    if per_min == 0 {
        return Err(bad());
    }
    Ok(per_min)
}

/// `10%` or `10`: a percentage from 0 to 100.
fn percent(flag: &str, text: &str) -> Result<u8, Usage> {
    text.trim()
        .trim_end_matches('%')
        .parse::<u8>()
        .ok()
        .filter(|p| *p <= 100)
        .ok_or_else(|| Usage(format!("{flag} {text:?}: a percentage from 0% to 100%")))
}

/// `HH:MM-HH:MM` in Beijing time (UTC+8), or UTC with a trailing `Z`, as UTC minutes.
pub fn parse_window(text: &str) -> Result<Window, Usage> {
    let bad = || {
        Usage(format!(
            "--window {text:?}: like 01:00-05:00 (Beijing time)"
        ))
    };
    let (body, offset) = match text.strip_suffix('Z') {
        Some(b) => (b, 0),
        None => (text, 8 * 60),
    };
    let minute = |hm: &str| -> Option<u16> {
        let (h, m) = hm.trim().split_once(':')?;
        let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
        (h <= 24 && m < 60 && h * 60 + m <= 24 * 60).then_some(h * 60 + m)
    };
    let (a, b) = body.split_once('-').ok_or_else(bad)?;
    let (a, b) = (minute(a).ok_or_else(bad)?, minute(b).ok_or_else(bad)?);
    if a == b {
        return Err(bad());
    }
    let utc = |m: u16| (m + 24 * 60 - offset) % (24 * 60);
    Ok(Window {
        start_min: utc(a),
        end_min: utc(b),
    })
}

fn status(id: u64, json: bool, db: Option<Database>) -> Result<(), Failure> {
    let store = database(db).open_read_only().map_err(fail)?;
    let row = store
        .rollouts()
        .map_err(fail)?
        .into_iter()
        .find(|r| r.plan.id == id)
        .ok_or_else(|| Usage(format!("no rollout {id}")))?;
    let sites: Vec<(String, cuntong_core::rollout::Site)> = store
        .rollout_sites(id)
        .map_err(fail)?
        .into_iter()
        .map(|(t, s)| (t.to_string(), s))
        .collect();
    let mut out = summary(&row, sites.iter().map(|(_, s)| (s.stage, 1)));
    out.sites = sites
        .into_iter()
        .map(|(terminal, s)| RolloutSiteJson {
            terminal,
            stage: s.stage.as_str().to_owned(),
            bytes: s.bytes,
            reason: s.reason,
            notified_at: s.notified_ms.map(rfc3339_ms),
            updated_at: rfc3339_ms(s.updated_ms),
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&out).map_err(fail)?);
        return Ok(());
    }
    println!(
        "rollout {} of {} to {}: {}{}",
        out.id,
        out.version,
        out.region,
        out.state,
        if out.reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", out.reason)
        }
    );
    let counts: Vec<String> = out
        .counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(s, n)| format!("{s} {n}"))
        .collect();
    println!("{}", counts.join(", "));
    println!("{:<20} {:<12} {:>12} REASON", "TERMINAL", "STAGE", "BYTES");
    for s in &out.sites {
        println!(
            "{:<20} {:<12} {:>12} {}",
            s.terminal, s.stage, s.bytes, s.reason
        );
    }
    Ok(())
}

fn list(json: bool, db: Option<Database>) -> Result<(), Failure> {
    let store = database(db).open_read_only().map_err(fail)?;
    let out = crate::rollouts::list(store.as_ref()).map_err(fail)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&out).map_err(fail)?);
        return Ok(());
    }
    println!(
        "{:<10} {:<12} {:<8} {:<10} {:>9} {:>7} {:>6} CREATED",
        "ID", "VERSION", "REGION", "STATE", "COMMITTED", "FAILED", "BOXES"
    );
    for r in &out {
        let failed: usize = Stage::ALL
            .iter()
            .filter(|s| s.is_failure())
            .map(|s| r.counts[s.as_str()])
            .sum();
        let boxes: usize = r.counts.values().sum();
        println!(
            "{:<10} {:<12} {:<8} {:<10} {:>9} {:>7} {:>6} {}",
            r.id, r.version, r.region, r.state, r.counts["committed"], failed, boxes, r.created_at
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_windows_and_percentages_are_read_or_refused_naming_the_flag() {
        assert_eq!(rate_per_min("50/min").unwrap(), 50);
        assert_eq!(rate_per_min("2/s").unwrap(), 120);
        assert_eq!(rate_per_min("200").unwrap(), 200);
        assert!(rate_per_min("0/min").unwrap_err().0.contains("--rate"));
        assert!(rate_per_min("fast").is_err());
        // 01:00-05:00 Beijing time is 17:00-21:00 UTC.
        assert_eq!(
            parse_window("01:00-05:00").unwrap(),
            Window {
                start_min: 17 * 60,
                end_min: 21 * 60
            }
        );
        assert_eq!(
            parse_window("01:00-05:00Z").unwrap(),
            Window {
                start_min: 60,
                end_min: 300
            }
        );
        assert!(
            parse_window("25:00-01:00")
                .unwrap_err()
                .0
                .contains("--window")
        );
        assert!(parse_window("01:00").is_err());
        assert_eq!(percent("--abort-failed", "10%").unwrap(), 10);
        assert!(percent("--abort-failed", "150%").is_err());
    }
}
