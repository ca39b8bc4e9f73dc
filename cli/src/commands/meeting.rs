//! `cuntong meeting …` and `cuntong call`: create, control and watch sessions through the
//! meeting host inside `cuntong central` ([`crate::meetings`]). Every value is checked before
//! the command connects; [`client`] carries the requests, [`tables`] prints the answers.

pub mod client;
pub mod tables;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use cuntong_core::media::layout::Layout;
use cuntong_core::meeting::host::ChairOp;
use cuntong_core::meeting::{Invitee, Kind, MediaProfile, MeetingId};
use cuntong_core::site::Region;
use cuntong_core::terminal_id::TerminalId;
use cuntong_terminal::daemon::shutdown_signal;
use cuntong_terminal::link::unix_ms;
use cuntong_terminal::{print, println};

pub use client::{ANSWER, CentralClient, ClientError};
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
    /// Record the meeting in central: the composed picture and the mixed sound (H.264 and
    /// Opus, Matroska) to FILE on central's machine, a new file every 30 minutes beside it
    /// (meeting.001.mkv…), until --stop or the meeting ends.
    Record {
        id: String,
        #[arg(long, value_name = "FILE", required_unless_present = "stop")]
        out: Option<PathBuf>,
        /// The recording's layout (default: the chair's, else 1+5).
        #[arg(long, conflicts_with = "stop")]
        layout: Option<String>,
        /// Stop recording.
        #[arg(long, conflicts_with = "out")]
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
    /// Set every site's layout (多画面): single, 1+N (N 1 to 7), 2x2, 3x3, 4x4 or speaker; the
    /// main tile shows the speaker (or the broadcast site, or the chair), the others the sites
    /// in the order they joined. --off: each box shows its own layout again.
    Layout {
        id: String,
        layout: Option<String>,
        #[arg(long)]
        off: bool,
    },
    /// Give a site the content (双流: the presenter's slides from its second video source,
    /// shown large in every room with the speaker beside it), taking it from whoever shares
    /// it. --off: nobody shares.
    Content {
        id: String,
        terminal: Option<String>,
        #[arg(long)]
        off: bool,
    },
    /// Have a SIP gateway invited to the meeting call a room system (sip:hall@10.13.2.40,
    /// ;transport=tcp for TCP): it joins as the gateway's site once it answers. The gateway
    /// calls only room systems its `[sip]` allow list names.
    Dial {
        id: String,
        /// The room system's SIP address.
        uri: String,
        /// The gateway's terminal id.
        #[arg(long, value_name = "TERMINAL")]
        via: String,
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
    let profile = MediaProfile::named("sd").ok_or_else(|| fail("internal: no sd profile"))?;
    let mut client = args.conn.connect().await?;
    let body = RequestBody::Create {
        title: match &from {
            Some(f) => format!("call {f} → {to}"),
            None => format!("call central → {to}"),
        },
        kind: Kind::Call,
        invite: vec![Invitee::Terminal(to)],
        at_ms: None,
        profile,
        chair: from,
        floor_mutes_others: false,
    };
    let answer = client.ask(body, ANSWER).await;
    client.close();
    print_created(answer?, args.json)
}

/// The id of a created session, alone or as `{"id": …}`.
fn print_created(answer: ResponseBody, json: bool) -> Result<(), Failure> {
    match answer {
        ResponseBody::Created { id } if json => {
            println!("{}", serde_json::json!({ "id": id.as_str() }));
        }
        ResponseBody::Created { id } => println!("{id}"),
        other => return Err(fail(format!("unexpected answer {other:?}"))),
    }
    Ok(())
}

/// A meeting command with every value checked, ready to send.
enum Plan {
    Create {
        body: RequestBody,
        json: bool,
    },
    Op {
        id: MeetingId,
        op: ChairOp,
    },
    Dial {
        id: MeetingId,
        gateway: TerminalId,
        uri: String,
    },
    Status {
        id: MeetingId,
        json: bool,
    },
    Rollcall {
        id: MeetingId,
        timeout: Duration,
        json: bool,
    },
    View {
        id: MeetingId,
        terminal: TerminalId,
        to: SocketAddr,
        stop: bool,
    },
    Record {
        id: MeetingId,
        out: Option<PathBuf>,
        layout: Option<Layout>,
    },
    List {
        json: bool,
    },
    Watch {
        id: MeetingId,
    },
}

impl Plan {
    /// Checks every value of `action`, before anything connects.
    fn of(action: MeetingAction) -> Result<Plan, Failure> {
        use MeetingAction as A;
        let meeting = |id: &str| parse::<MeetingId>("meeting id", id);
        let terminal = |t: Option<String>, what: &str| -> Result<TerminalId, Usage> {
            let t = t.ok_or_else(|| Usage(format!("{what} needs a terminal id")))?;
            parse("terminal", &t)
        };
        Ok(match action {
            A::Create {
                title,
                invite,
                at,
                profile,
                kind,
                chair,
                keep_audio_on_grant,
                json,
            } => {
                crate::meetings::check_title(&title).map_err(|e| Usage(format!("--title: {e}")))?;
                let invite = invite
                    .iter()
                    .map(|i| parse::<Invitee>("--invite", i))
                    .collect::<Result<Vec<_>, _>>()?;
                let kind = match kind.as_str() {
                    "meeting" => Kind::Meeting,
                    "training" => Kind::Training,
                    _ => {
                        return Err(
                            Usage(format!("--kind {kind:?}: use meeting or training")).into()
                        );
                    }
                };
                let profile = MediaProfile::named(&profile).ok_or_else(|| {
                    Usage(format!(
                        "--profile {profile:?}: use one of {}",
                        MediaProfile::NAMES.join(", ")
                    ))
                })?;
                let chair = chair
                    .map(|c| parse::<TerminalId>("--chair", &c))
                    .transpose()?;
                let at_ms = at
                    .as_deref()
                    .map(|at| start_time(at, unix_ms()))
                    .transpose()?;
                let body = RequestBody::Create {
                    title,
                    kind,
                    invite,
                    at_ms,
                    profile,
                    chair,
                    floor_mutes_others: !keep_audio_on_grant,
                };
                Plan::Create { body, json }
            }
            // The meeting id is checked first (struct fields are evaluated in order), as it
            // comes first on the command line.
            A::Start { id } => Plan::Op {
                id: meeting(&id)?,
                op: ChairOp::Start,
            },
            A::End { id } => Plan::Op {
                id: meeting(&id)?,
                op: ChairOp::End,
            },
            A::Floor {
                id,
                action,
                terminal: t,
            } => Plan::Op {
                id: meeting(&id)?,
                op: match action.as_str() {
                    "grant" => ChairOp::Grant(terminal(t, "floor grant")?),
                    "revoke" => ChairOp::Revoke,
                    other => {
                        return Err(Usage(format!("floor {other:?}: use grant or revoke")).into());
                    }
                },
            },
            A::Mute {
                id,
                terminal: t,
                all,
            } => Plan::Op {
                id: meeting(&id)?,
                op: if all {
                    ChairOp::MuteAll
                } else {
                    ChairOp::Mute(terminal(t, "mute")?)
                },
            },
            A::Unmute {
                id,
                terminal: t,
                all,
            } => Plan::Op {
                id: meeting(&id)?,
                op: if all {
                    ChairOp::UnmuteAll
                } else {
                    ChairOp::Unmute(terminal(t, "unmute")?)
                },
            },
            A::Broadcast {
                id,
                terminal: t,
                off,
            } => Plan::Op {
                id: meeting(&id)?,
                op: ChairOp::Broadcast(if off {
                    None
                } else {
                    Some(terminal(t, "broadcast")?)
                }),
            },
            A::Layout { id, layout, off } => Plan::Op {
                id: meeting(&id)?,
                op: ChairOp::Layout(match (layout, off) {
                    (None, true) => None,
                    (Some(l), false) => Some(l.parse().map_err(|e| Usage(format!("{e}")))?),
                    _ => return Err(Usage("layout needs a layout or --off".into()).into()),
                }),
            },
            A::Content {
                id,
                terminal: t,
                off,
            } => Plan::Op {
                id: meeting(&id)?,
                op: ChairOp::Content(if off {
                    None
                } else {
                    Some(terminal(t, "content")?)
                }),
            },
            A::Dial { id, uri, via } => {
                cuntong_core::sip::check_uri(&uri).map_err(|e| Usage(e.to_string()))?;
                Plan::Dial {
                    id: meeting(&id)?,
                    gateway: terminal(Some(via), "dial")?,
                    uri,
                }
            }
            A::Lower { id, terminal: t } => Plan::Op {
                id: meeting(&id)?,
                op: ChairOp::LowerHand(terminal(Some(t), "lower")?),
            },
            A::Delegate {
                id,
                terminal: t,
                region,
                revoke,
            } => {
                let id = meeting(&id)?;
                let box_id = terminal(Some(t), "delegate")?;
                let region = match region {
                    _ if revoke => None,
                    Some(r) => Some(parse::<Region>("--region", &r)?),
                    // The county of the box's site (or the site's own region above county
                    // level).
                    None => Some(Region::of(
                        box_id
                            .site()
                            .at_level(cuntong_core::site::Level::County)
                            .unwrap_or(*box_id.site()),
                    )),
                };
                Plan::Op {
                    id,
                    op: ChairOp::Delegate(box_id, region),
                }
            }
            A::Status { id, json } => Plan::Status {
                id: meeting(&id)?,
                json,
            },
            A::Rollcall { id, timeout, json } => Plan::Rollcall {
                id: meeting(&id)?,
                timeout: positive("--timeout", &timeout)?,
                json,
            },
            A::View {
                id,
                terminal: t,
                to,
                stop,
            } => Plan::View {
                id: meeting(&id)?,
                terminal: terminal(Some(t), "view")?,
                to: parse("--to", &to)?,
                stop,
            },
            A::Record {
                id,
                out,
                layout,
                stop: _,
            } => Plan::Record {
                id: meeting(&id)?,
                // Central's own machine: a relative path is taken from here.
                out: out
                    .map(std::path::absolute)
                    .transpose()
                    .map_err(|e| Usage(format!("--out: {e}")))?,
                layout: layout
                    .map(|l| l.parse().map_err(|e| Usage(format!("--layout: {e}"))))
                    .transpose()?,
            },
            A::List { json } => Plan::List { json },
            A::Watch { id } => Plan::Watch { id: meeting(&id)? },
        })
    }

    /// Sends the request (or, `rollcall` and `watch`, the requests) and prints the answers.
    async fn run(self, client: &mut CentralClient) -> Result<(), Failure> {
        match self {
            Plan::Create { body, json } => print_created(client.ask(body, ANSWER).await?, json)?,
            Plan::Op { id, op } => {
                let version = client.op(id, op).await?;
                println!("{id}: {} done (state v{version})", op.name());
            }
            Plan::Dial { id, gateway, uri } => {
                let body = RequestBody::Dial {
                    meeting: id,
                    gateway,
                    uri: uri.clone(),
                };
                client.ask(body, ANSWER).await?;
                println!("{id}: {gateway} is calling {uri}");
            }
            Plan::Status { id, json } => {
                let s = client.status(id).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&s.sites).map_err(fail)?);
                } else {
                    print!("{}", tables::status_table(&s));
                }
            }
            Plan::Rollcall { id, timeout, json } => {
                let rows = client.roll_call(id, timeout).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&rows).map_err(fail)?);
                } else {
                    print!("{}", tables::roll_call_table(&rows));
                }
            }
            Plan::View {
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
                match client.ask(body, ANSWER).await? {
                    ResponseBody::Sdp(sdp) if !stop => print!("{sdp}"),
                    ResponseBody::Sdp(_) => {}
                    other => return Err(fail(format!("unexpected answer {other:?}"))),
                }
            }
            Plan::Record { id, out, layout } => {
                let body = RequestBody::Record {
                    meeting: id,
                    out: out.clone(),
                    layout,
                };
                client.ask(body, ANSWER).await?;
                match out {
                    Some(out) => println!("{id}: recording to {}", out.display()),
                    None => println!("{id}: recording stopped"),
                }
            }
            Plan::List { json } => {
                let rows = client.list().await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&rows).map_err(fail)?);
                } else {
                    print!("{}", tables::list_table(&rows));
                }
            }
            Plan::Watch { id } => {
                let mut last: Option<MeetingStatus> = None;
                loop {
                    let s = client.status(id).await?;
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
        }
        Ok(())
    }
}

pub async fn run(args: MeetingArgs) -> Result<(), Failure> {
    let plan = Plan::of(args.action)?;
    let mut client = args.conn.connect().await?;
    let result = plan.run(&mut client).await;
    client.close();
    result
}

/// `--at`: RFC 3339, or `+DURATION` from now; no further ahead than central schedules.
fn start_time(s: &str, now_ms: u64) -> Result<u64, Usage> {
    let bad = |why: String| Usage(format!("--at {s:?}: {why}"));
    let at_ms = if let Some(rel) = s.strip_prefix('+') {
        let ahead =
            cuntong_terminal::config::parse_duration(rel).map_err(|e| bad(e.to_string()))?;
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
    crate::meetings::check_start(at_ms, now_ms).map_err(|e| bad(e.to_string()))?;
    Ok(at_ms)
}
