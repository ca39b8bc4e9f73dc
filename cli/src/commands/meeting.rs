//! `cuntong meeting …` and `cuntong call`: create, control and watch sessions through the
//! meeting host inside `cuntong central` ([`crate::meetings`]). Every value is checked before
//! the command connects; [`client`] carries the requests, [`tables`] prints the answers.

pub mod client;
pub mod tables;

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Subcommand};
use cuntong_core::meeting::{Invitee, MediaProfile, MeetingId};
use cuntong_core::site::Region;
use cuntong_core::terminal_id::TerminalId;
use cuntong_terminal::daemon::shutdown_signal;
use cuntong_terminal::link::unix_ms;
use cuntong_terminal::{print, println};

pub use client::{ANSWER, CentralClient};
pub use tables::quantile;

use super::common::{Conn, Failure, Usage, fail, parse, positive};
use crate::control::{MeetingStatus, RequestBody, ResponseBody};
use crate::view;

#[derive(Debug, Args)]
pub struct MeetingArgs {
    #[command(subcommand)]
    action: MeetingAction,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Debug, Subcommand)]
enum MeetingAction {
    /// Create a meeting (or, with --kind training, a training broadcast); prints its id.
    Create {
        #[arg(long)]
        title: String,
        /// Region codes and terminal ids, comma separated: 130102,130103001001-main.
        #[arg(long, value_delimiter = ',', required = true)]
        invite: Vec<String>,
        /// Scheduled start: RFC 3339 (2026-12-01T09:00:00+08:00) or +DURATION from now.
        /// Terminals join scheduled sessions on their own when they start.
        #[arg(long)]
        at: Option<String>,
        /// Media profile: hd, sd, low or audio.
        #[arg(long, default_value = "sd")]
        profile: String,
        /// meeting or training.
        #[arg(long, default_value = "meeting")]
        kind: String,
        /// The chair's (the lecturer's) terminal.
        #[arg(long)]
        chair: Option<String>,
        /// Granting the floor does not mute the other sites.
        #[arg(long)]
        keep_audio_on_grant: bool,
        #[arg(long)]
        json: bool,
    },
    Start {
        id: String,
    },
    /// End the session: every site leaves, the retained state is cleared.
    End {
        id: String,
    },
    /// Per invited terminal: state, role, muted, last roll-call answer.
    Status {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Call the roll (点名) and wait for the answers.
    Rollcall {
        id: String,
        #[arg(long, default_value = "10s")]
        timeout: String,
        #[arg(long)]
        json: bool,
    },
    /// Have the meeting's relays also send a terminal's stream, as plain RTP, to a player
    /// (an operations console, a recorder, a room system) at HOST:PORT (audio at PORT+2);
    /// prints its SDP for ffmpeg or VLC.
    View {
        id: String,
        terminal: String,
        #[arg(long, value_name = "HOST:PORT")]
        to: String,
        /// Stop the view.
        #[arg(long)]
        stop: bool,
    },
    /// Grant the floor to a terminal, or revoke it.
    Floor {
        id: String,
        /// grant or revoke.
        action: String,
        terminal: Option<String>,
    },
    Mute {
        id: String,
        terminal: Option<String>,
        #[arg(long)]
        all: bool,
    },
    Unmute {
        id: String,
        terminal: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// Show one terminal to every site (--off: back to the chair or the speaker).
    Broadcast {
        id: String,
        terminal: Option<String>,
        #[arg(long)]
        off: bool,
    },
    /// Lower a terminal's raised hand.
    Lower {
        id: String,
        terminal: String,
    },
    /// Make a site's box a delegated chair for a region (a county office in a province
    /// meeting): from the box it mutes, unmutes, grants the floor and lowers hands there only.
    Delegate {
        id: String,
        terminal: String,
        /// The region it controls (default: the county of its site).
        #[arg(long, conflicts_with = "revoke")]
        region: Option<String>,
        /// Take the delegation back.
        #[arg(long)]
        revoke: bool,
    },
    List {
        #[arg(long)]
        json: bool,
    },
    /// Live view of joins, hands and roll-call answers, until the session ends.
    Watch {
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct CallArgs {
    terminal: String,
    /// The calling terminal (e.g. the county office's room box); without it the call is
    /// between the central office and the terminal.
    #[arg(long)]
    from: Option<String>,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    conn: Conn,
}

pub async fn run_call(args: CallArgs) -> Result<(), Failure> {
    let to: TerminalId = parse("terminal", &args.terminal)?;
    let from: Option<TerminalId> = args.from.map(|f| parse("--from", &f)).transpose()?;
    let mut client = args.conn.connect().await?;
    let body = RequestBody::Create {
        title: match &from {
            Some(f) => format!("call {f} → {to}"),
            None => format!("call central → {to}"),
        },
        kind: "call".into(),
        invite: vec![to.to_string()],
        at_ms: None,
        profile: "sd".into(),
        chair: from.map(|f| f.to_string()),
        floor_mutes_others: false,
    };
    let answer = client.ask(body, ANSWER).await;
    client.close();
    print_created(answer.map_err(fail)?, args.json)
}

/// The id of a created session, alone or as `{"id": …}`.
fn print_created(answer: ResponseBody, json: bool) -> Result<(), Failure> {
    match answer {
        ResponseBody::Created { id } if json => {
            println!("{}", serde_json::json!({ "id": id }));
        }
        ResponseBody::Created { id } => println!("{id}"),
        other => return Err(fail(format!("unexpected answer {other:?}"))),
    }
    Ok(())
}

pub async fn run(args: MeetingArgs) -> Result<(), Failure> {
    let MeetingArgs { action, conn } = args;
    use MeetingAction as A;
    let terminal = |t: Option<String>, what: &str| -> Result<String, Failure> {
        let t = t.ok_or_else(|| Usage(format!("{what} needs a terminal id")))?;
        let id: TerminalId = parse("terminal", &t)?;
        Ok(id.to_string())
    };
    // Validate everything before connecting.
    match &action {
        A::Create { .. } | A::List { .. } => {}
        A::Start { id }
        | A::End { id }
        | A::Status { id, .. }
        | A::Rollcall { id, .. }
        | A::View { id, .. }
        | A::Floor { id, .. }
        | A::Mute { id, .. }
        | A::Unmute { id, .. }
        | A::Broadcast { id, .. }
        | A::Lower { id, .. }
        | A::Delegate { id, .. }
        | A::Watch { id } => {
            parse::<MeetingId>("meeting id", id)?;
        }
    }
    let (op, target): (Option<&str>, Option<String>) = match &action {
        A::Start { .. } => (Some("start"), None),
        A::End { .. } => (Some("end"), None),
        A::Floor {
            action,
            terminal: t,
            ..
        } => match action.as_str() {
            "grant" => (Some("grant"), Some(terminal(t.clone(), "floor grant")?)),
            "revoke" => (Some("revoke"), None),
            other => return Err(Usage(format!("floor {other:?}: use grant or revoke")).into()),
        },
        A::Mute { all: true, .. } => (Some("mute-all"), None),
        A::Mute { terminal: t, .. } => (Some("mute"), Some(terminal(t.clone(), "mute")?)),
        A::Unmute { all: true, .. } => (Some("unmute-all"), None),
        A::Unmute { terminal: t, .. } => (Some("unmute"), Some(terminal(t.clone(), "unmute")?)),
        A::Broadcast { off: true, .. } => (Some("broadcast"), None),
        A::Broadcast { terminal: t, .. } => {
            (Some("broadcast"), Some(terminal(t.clone(), "broadcast")?))
        }
        A::Lower { terminal: t, .. } => (
            Some("lower-hand"),
            Some(terminal(Some(t.clone()), "lower")?),
        ),
        A::Delegate { terminal: t, .. } => (
            Some("delegate"),
            Some(terminal(Some(t.clone()), "delegate")?),
        ),
        _ => (None, None),
    };
    let create = match &action {
        A::Create {
            title,
            invite,
            at,
            profile,
            kind,
            chair,
            keep_audio_on_grant,
            ..
        } => {
            crate::meetings::check_title(title).map_err(|e| Usage(format!("--title: {e}")))?;
            for i in invite {
                parse::<Invitee>("--invite", i)?;
            }
            if !matches!(kind.as_str(), "meeting" | "training") {
                return Err(Usage(format!("--kind {kind:?}: use meeting or training")).into());
            }
            if MediaProfile::named(profile).is_none() {
                return Err(Usage(format!(
                    "--profile {profile:?}: use one of {}",
                    MediaProfile::NAMES.join(", ")
                ))
                .into());
            }
            if let Some(c) = chair {
                parse::<TerminalId>("--chair", c)?;
            }
            let at_ms = at
                .as_deref()
                .map(|at| start_time(at, unix_ms()))
                .transpose()?;
            Some(RequestBody::Create {
                title: title.clone(),
                kind: kind.clone(),
                invite: invite.clone(),
                at_ms,
                profile: profile.clone(),
                chair: chair.clone(),
                floor_mutes_others: !keep_audio_on_grant,
            })
        }
        _ => None,
    };
    let region = match &action {
        A::Delegate { revoke: true, .. } => None,
        A::Delegate {
            region: Some(r), ..
        } => Some(parse::<Region>("--region", r)?.to_string()),
        A::Delegate { terminal: t, .. } => {
            // The county of the box's site (or the site's own region above county level).
            let id: TerminalId = parse("terminal", t)?;
            let county = id
                .site()
                .at_level(cuntong_core::site::Level::County)
                .unwrap_or(*id.site());
            Some(Region::of(county).to_string())
        }
        _ => None,
    };
    if let A::View { to, .. } = &action {
        let _: SocketAddr = parse("--to", to)?;
    }
    let timeout = match &action {
        A::Rollcall { timeout, .. } => Some(positive("--timeout", timeout)?),
        _ => None,
    };
    let mut client = conn.connect().await?;
    let result = async {
        match action {
            A::Create { json, .. } => {
                let body = create.ok_or_else(|| fail("internal: no create request"))?;
                print_created(client.ask(body, ANSWER).await.map_err(fail)?, json)?;
            }
            A::Status { id, json } => {
                let s = client.status(&id).await.map_err(fail)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&s.sites).map_err(fail)?);
                } else {
                    print!("{}", tables::status_table(&s));
                }
            }
            A::Rollcall { id, json, .. } => {
                let rows = client
                    .roll_call(&id, timeout.unwrap_or(Duration::from_secs(10)))
                    .await
                    .map_err(fail)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&rows).map_err(fail)?);
                } else {
                    print!("{}", tables::roll_call_table(&rows));
                }
            }
            A::View {
                id,
                terminal,
                to,
                stop,
            } => {
                let body = RequestBody::View {
                    meeting: id,
                    terminal,
                    to,
                    stop,
                };
                match client.ask(body, ANSWER).await.map_err(fail)? {
                    ResponseBody::Sdp(sdp) if !stop => print!("{sdp}"),
                    ResponseBody::Sdp(_) => {}
                    other => return Err(fail(format!("unexpected answer {other:?}"))),
                }
            }
            A::List { json } => {
                let rows = client.list().await.map_err(fail)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&rows).map_err(fail)?);
                } else {
                    print!("{}", tables::list_table(&rows));
                }
            }
            A::Watch { id } => {
                let mut last: Option<MeetingStatus> = None;
                loop {
                    let s = client.status(&id).await.map_err(fail)?;
                    for line in tables::changes(last.as_ref(), &s) {
                        println!("{} {line}", view::rfc3339_ms(unix_ms()));
                    }
                    if s.meeting.status == "ended" {
                        break;
                    }
                    last = Some(s);
                    tokio::select! {
                        _ = shutdown_signal() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
            A::Start { id }
            | A::End { id }
            | A::Floor { id, .. }
            | A::Mute { id, .. }
            | A::Unmute { id, .. }
            | A::Broadcast { id, .. }
            | A::Lower { id, .. }
            | A::Delegate { id, .. } => {
                let op = op.ok_or_else(|| fail("internal: no operation"))?;
                let version = client.op_in(&id, op, target, region).await.map_err(fail)?;
                println!("{id}: {op} done (state v{version})");
            }
        }
        Ok(())
    }
    .await;
    client.close();
    result
}

/// `--at`: RFC 3339, or `+DURATION` from now; no further ahead than central schedules.
fn start_time(s: &str, now_ms: u64) -> Result<u64, Usage> {
    let bad = |why: String| Usage(format!("--at {s:?}: {why}"));
    let at_ms = if let Some(rel) = s.strip_prefix('+') {
        let ahead = cuntong_terminal::config::parse_duration(rel).map_err(bad)?;
        if ahead.is_zero() {
            return Err(bad(
                "must be later than now (to start now, `meeting start ID`)".into(),
            ));
        }
        now_ms.saturating_add(u64::try_from(ahead.as_millis()).unwrap_or(u64::MAX))
    } else {
        humantime::parse_rfc3339_weak(s)
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| u64::try_from(d.as_millis()).ok())
            .ok_or_else(|| {
                Usage(format!(
                    "--at {s:?}: use RFC 3339 (2026-12-01T09:00:00Z) or +DURATION (+10m)"
                ))
            })?
    };
    crate::meetings::check_start(at_ms, now_ms).map_err(bad)?;
    Ok(at_ms)
}
