//! The SIP gateway role (`[sip]`): a room system already in a county hall (a SIP endpoint)
//! joins a meeting through this box, which stands for it in the meeting as its site.
//!
//! The room system dials `sip:MEETINGID@box`. The box answers only a room system its
//! configuration allows, only for a meeting it is invited to, and only with what the meeting
//! can carry: H.264 (packetization mode 1) and Opus or G.711, over SRTP (SDES keys) or
//! plain RTP, as the offer proposes ([`cuntong_core::media::sdp::read_offer`]). Answering
//! joins the meeting (as an operator's `accept` would); the room system's picture and voice are
//! then this box's camera and microphone ([`CallMedia`], read by the media engine's capture),
//! and the box's composed room and mixed sound go to the room system instead of a screen. A
//! `BYE` leaves the meeting. The site takes part like any other: roll call, floor, mute.
//!
//! The box also calls a room system it allows when told to (a signed `dial` command,
//! [`Dial`]): its INVITE carries an offer of its own ([`cuntong_core::media::sdp::offer`]); the
//! room system's answer is read as an offer would be, and the call goes on as one that came in.
//!
//! Over UDP and TCP on one port, and TLS on another where the box has a certificate
//! ([`transport`]); a call out goes the way its URI asks (`;transport=tcp`), to the address of
//! its host (a name is looked up). A `200 OK` is sent again (0.5 s, 1 s, 2 s, … as RFC 3261's
//! timer G) until its `ACK` comes, and an INVITE over UDP (timer A) until any answer, at most
//! seven times each.
//!
//! A room system is let in by its IP address, or by its SIP address and where it calls from:
//! a caller's `From` is its own word, so `sip:hall@hall.county` admits only a caller at an
//! address `hall.county` has.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cuntong_core::media::sdp::{self, Offer};
use cuntong_core::meeting::MeetingId;
use cuntong_core::sip::{self as message, Message};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::conference::OperatorRequest;
use crate::status::{LocalRequest, OperatorCall, Refusal};

pub mod transport;

use transport::{Kind, Peer, Transports};

/// The `[sip]` section: where the gateway listens, whom it lets in, where the call's media
/// arrives.
#[derive(Clone, Debug, PartialEq)]
pub struct SipConfig {
    pub listen: SocketAddr,
    /// Room systems let in: an IP address (`10.13.2.40`) or a SIP address
    /// (`sip:hall@10.13.2.40`, matched against the caller's `From`).
    pub allow: Vec<String>,
    /// Where the room system's video arrives (its audio at `rtp_port + 2`).
    pub rtp_port: u16,
    /// The call's media, shared with the media engine.
    pub call: CallMedia,
    /// SIP over TLS, where the box has a certificate for it.
    pub tls: Option<SipTls>,
}

/// Where the gateway takes SIP over TLS, and the certificate it shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SipTls {
    pub listen: SocketAddr,
    /// The certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CAs a room system's certificate must chain to when the gateway calls it over TLS
    /// (PEM); without it, calls out over TLS are not made.
    pub ca: Option<PathBuf>,
}

/// What a call agreed: the room system's offer, the box's ports for what it sends, and the
/// box's SRTP key for what it sends where the room system offered SRTP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Agreed {
    pub offer: Offer,
    pub video_port: u16,
    pub audio_port: u16,
    pub key: [u8; 30],
}

/// The current call's media, if a call is up: set by the gateway when it answers, read by the
/// media engine when the meeting's media start; the engine says when the meeting is over for
/// the box (it ended, or the box left it), and the gateway hangs up. Clones share one call.
#[derive(Clone, Debug)]
pub struct CallMedia {
    agreed: Arc<Mutex<Option<Agreed>>>,
    /// Counts the times a meeting was over for the box.
    over: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Default for CallMedia {
    fn default() -> CallMedia {
        CallMedia {
            agreed: Arc::default(),
            over: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }
}

impl PartialEq for CallMedia {
    fn eq(&self, other: &CallMedia) -> bool {
        Arc::ptr_eq(&self.agreed, &other.agreed)
    }
}

impl Eq for CallMedia {}

impl CallMedia {
    pub fn get(&self) -> Option<Agreed> {
        self.agreed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, agreed: Option<Agreed>) {
        *self.agreed.lock().unwrap_or_else(PoisonError::into_inner) = agreed;
    }

    /// The meeting is over for the box: the call ends with it.
    pub fn over(&self) {
        self.over.send_modify(|n| *n += 1);
    }
}

/// Answers sent again until their `ACK`, and INVITEs until an answer, at most.
const TRIES: u32 = 7;

/// A call the box is to make (a `dial` command): room system `uri` into `meeting`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dial {
    pub meeting: MeetingId,
    pub uri: String,
}

/// The call in progress.
struct Call {
    call_id: String,
    meeting: MeetingId,
    /// What is sent again until the other side shows it arrived: the answer to its INVITE
    /// until the ACK (a call in), or the ACK at each repeated 200 OK (a call out).
    answer: Vec<u8>,
    acked: bool,
    tries: u32,
    next_try: tokio::time::Instant,
    to: Peer,
    /// The BYE that ends it from the gateway's side.
    bye: Vec<u8>,
}

/// A call the box is making, until the room system answers it.
struct Outgoing {
    dial: Dial,
    call_id: String,
    invite: Vec<u8>,
    to: Peer,
    /// A provisional answer (`100 Trying`, `180 Ringing`) came: no more INVITEs.
    heard: bool,
    tries: u32,
    next_try: tokio::time::Instant,
    /// The gateway's own address toward the room system.
    me: SocketAddr,
}

/// Runs the gateway until `stop`: calls come in on `cfg.listen`; joining and leaving go to the
/// daemon as operator requests on `requests`.
pub async fn serve(
    cfg: SipConfig,
    tag: String,
    requests: mpsc::Sender<OperatorCall>,
    mut dials: mpsc::Receiver<Dial>,
    stop: CancellationToken,
) -> Result<(), GatewayError> {
    let (tls, calls_out) = match &cfg.tls {
        Some(t) => (
            Some((t.listen, crate::tls::server_config(&t.cert, &t.key)?)),
            t.ca.as_deref()
                .map(crate::tls::verifying_client)
                .transpose()?,
        ),
        None => (None, None),
    };
    let mut transports = Transports::bind(cfg.listen, tls, calls_out, stop.clone()).await?;
    let mut call: Option<Call> = None;
    let mut outgoing: Option<Outgoing> = None;
    let mut overs = cfg.call.over.subscribe();
    loop {
        let resend_at = call
            .as_ref()
            .filter(|c| !c.acked && c.tries < TRIES)
            .map(|c| c.next_try);
        let invite_at = outgoing
            .as_ref()
            .filter(|o| !o.heard && o.to.kind == Kind::Udp)
            .map(|o| o.next_try);
        let (from, bytes) = tokio::select! {
            _ = stop.cancelled() => break,
            Ok(()) = overs.changed() => {
                // The meeting is over for the box while the call is up: hang up.
                if let Some(c) = call.take_if(|c| c.acked) {
                    cfg.call.set(None);
                    tracing::info!(meeting = %c.meeting, "sip: the meeting is over for the room system: hanging up");
                    transports.send(c.to, &c.bye).await;
                } else if let Some(c) = call.as_ref() {
                    // Before the call was even acknowledged: the end of an earlier call's
                    // meeting, nothing of this one.
                    tracing::debug!(meeting = %c.meeting, "sip: an end before the call was up");
                }
                continue;
            }
            Some(d) = dials.recv() => {
                if call.is_some() || outgoing.is_some() {
                    tracing::warn!(uri = %d.uri, "sip: not calling: this gateway carries one call at a time");
                } else {
                    match start_call(&cfg, &tag, &transports, d).await {
                        Ok(o) => {
                            transports.send(o.to, &o.invite).await;
                            outgoing = Some(o);
                        }
                        Err(e) => tracing::warn!(error = %e, "sip: not calling"),
                    }
                }
                continue;
            }
            _ = tokio::time::sleep_until(invite_at.unwrap_or_else(tokio::time::Instant::now)), if invite_at.is_some() => {
                if let Some(o) = outgoing.as_mut() {
                    o.tries += 1;
                    if o.tries >= TRIES {
                        tracing::warn!(uri = %o.dial.uri, "sip: the room system does not answer");
                        outgoing = None;
                    } else {
                        o.next_try += Duration::from_millis(500 << o.tries.min(3));
                        transports.send(o.to, &o.invite).await;
                    }
                }
                continue;
            }
            m = transports.recv() => match m {
                Some(m) => m,
                None => break,
            },
            _ = tokio::time::sleep_until(resend_at.unwrap_or_else(tokio::time::Instant::now)), if resend_at.is_some() => {
                if let Some(c) = call.as_mut() {
                    c.tries += 1;
                    c.next_try += Duration::from_millis(500 << c.tries.min(3));
                    transports.send(c.to, &c.answer).await;
                }
                continue;
            }
        };
        let m = match message::parse(&bytes) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(%from, error = %e, "sip: not a SIP message");
                continue;
            }
        };
        let answer = match m.method() {
            None => answered(&cfg, &m, &mut outgoing, &mut call, &requests).await,
            Some(method) => {
                let port = match from.kind {
                    Kind::Tls => transports.tls_port.unwrap_or(transports.port),
                    Kind::Udp | Kind::Tcp => transports.port,
                };
                let at = Arrival { from, port };
                on_request(&cfg, &m, method, at, &tag, &mut call, &requests).await
            }
        };
        if let Some(bytes) = answer {
            transports.send(from, &bytes).await;
        }
    }
    // Stopping, the box says goodbye to its meetings: the call ends with them.
    Ok(())
}

/// Why the gateway cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot listen: {0}")]
    Listen(#[from] std::io::Error),
    #[error("SIP over TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// Where a request came from, and the gateway's port it came to.
#[derive(Clone, Copy, Debug)]
struct Arrival {
    from: Peer,
    port: u16,
}

/// The methods the gateway takes.
const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS";

/// A request from a room system; the answer to send, if any.
async fn on_request(
    cfg: &SipConfig,
    m: &Message<'_>,
    method: &str,
    at: Arrival,
    tag: &str,
    call: &mut Option<Call>,
    requests: &mpsc::Sender<OperatorCall>,
) -> Option<Vec<u8>> {
    let reply = |code: u16, reason: &str| message::response(m, code, reason, tag, &[], None);
    let in_call = |c: &Call| Some(c.call_id.as_str()) == m.header("Call-ID");
    match method {
        "INVITE" => Some(invite(cfg, m, at, tag, call, requests).await),
        "ACK" => {
            if let Some(c) = call.as_mut().filter(|c| in_call(c)) {
                c.acked = true;
            }
            None
        }
        "BYE" => match call.take_if(|c| in_call(c)) {
            Some(c) => {
                cfg.call.set(None);
                let left = ask(requests, OperatorRequest::Leave(c.meeting)).await;
                tracing::info!(meeting = %c.meeting, ?left, "sip: the room system hung up");
                Some(reply(200, "OK"))
            }
            None => Some(reply(481, "Call/Transaction Does Not Exist")),
        },
        "OPTIONS" => Some(message::response(
            m,
            200,
            "OK",
            tag,
            &[("Allow", ALLOW)],
            None,
        )),
        "CANCEL" => Some(reply(481, "Call/Transaction Does Not Exist")),
        _ => Some(message::response(
            m,
            405,
            "Method Not Allowed",
            tag,
            &[("Allow", ALLOW)],
            None,
        )),
    }
}

/// Whether the caller at `from`, saying it is `caller`, is let in (or, for a call out, the
/// room system at `from` whose address is `caller`): its IP address is allowed, or its SIP
/// address is and `from` is an address of that SIP address's host.
async fn allowed(allow: &[String], from: IpAddr, caller: Option<&str>) -> bool {
    let Some(caller) = caller.and_then(message::user_at_host) else {
        return allow.iter().any(|a| a.parse::<IpAddr>() == Ok(from));
    };
    for a in allow {
        let admitted = match a.parse::<IpAddr>() {
            Ok(ip) => ip == from,
            Err(_) => match message::user_at_host(a) {
                Some(entry) if entry.eq_ignore_ascii_case(caller) => {
                    let host = entry.rsplit_once('@').map_or(entry, |(_, h)| h);
                    addresses_of(host, 5060)
                        .await
                        .iter()
                        .any(|s| s.ip() == from)
                }
                _ => false,
            },
        };
        if admitted {
            return true;
        }
    }
    false
}

/// Time a host name has to be looked up.
const LOOKUP: Duration = Duration::from_secs(5);

/// The addresses of `host` (an IP address, bracketed for IPv6, or a name looked up), with
/// `port`; none if the name is unknown or does not answer in time.
async fn addresses_of(host: &str, port: u16) -> Vec<SocketAddr> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return vec![SocketAddr::new(ip, port)];
    }
    match tokio::time::timeout(LOOKUP, tokio::net::lookup_host((bare, port))).await {
        Ok(Ok(found)) => found.collect(),
        Ok(Err(e)) => {
            tracing::warn!(host, error = %e, "sip: host name not found");
            Vec::new()
        }
        Err(_) => {
            tracing::warn!(host, "sip: host name lookup timed out");
            Vec::new()
        }
    }
}

/// Why a call out is not made.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("{0:?} is not sip:user@host[:port]")]
    NotSip(String),
    #[error("{0}: its host has no address")]
    NoAddress(String),
    #[error("{0} is not a room system this gateway allows")]
    NotAllowed(String),
    #[error("{uri}: {error}")]
    Connect { uri: String, error: std::io::Error },
}

/// The host and port of a SIP URI's `host[:port]` (an IPv6 host bracketed); the port
/// `default` if none.
fn host_port(hostport: &str, default: u16) -> Option<(&str, u16)> {
    let (host, port) = match hostport.strip_prefix('[') {
        Some(v6) => {
            let end = v6.find(']')?;
            (&hostport[..end + 2], v6[end + 1..].strip_prefix(':'))
        }
        None => match hostport.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        },
    };
    let port = match port {
        Some(p) => p.parse().ok().filter(|p| *p != 0)?,
        None => default,
    };
    (!host.is_empty()).then_some((host, port))
}

/// Starts a call out: the room system of `d` is allowed and reachable at the address its
/// URI names (its host looked up; port 5060, 5061 over TLS, if none), over the transport the
/// URI asks for; the INVITE with the box's offer.
async fn start_call(
    cfg: &SipConfig,
    tag: &str,
    transports: &Transports,
    d: Dial,
) -> Result<Outgoing, DialError> {
    let kind = Kind::of_uri(&d.uri);
    let default_port = if kind == Kind::Tls { 5061 } else { 5060 };
    let (host, port) = message::without_scheme(&d.uri)
        .and_then(|rest| rest.split_once('@'))
        .map(|(_, h)| h.split([';', '?', '>']).next().unwrap_or(h))
        .and_then(|hp| host_port(hp, default_port))
        .ok_or_else(|| DialError::NotSip(d.uri.clone()))?;
    let to = *addresses_of(host, port)
        .await
        .first()
        .ok_or_else(|| DialError::NoAddress(d.uri.clone()))?;
    if !allowed(&cfg.allow, to.ip(), Some(&d.uri)).await {
        return Err(DialError::NotAllowed(d.uri.clone()));
    }
    let peer = transports
        .connect(to, kind, host)
        .await
        .map_err(|error| DialError::Connect {
            uri: d.uri.clone(),
            error,
        })?;
    let here = facing(to).unwrap_or(cfg.listen.ip());
    let me = SocketAddr::new(here, transports.port);
    let call_id = format!("{:016x}@{here}", rand::random::<u64>());
    let description = sdp::offer(
        here,
        (cfg.rtp_port, cfg.rtp_port.saturating_add(2)),
        u64::from(rand::random::<u32>()),
    );
    let invite = message::request(
        "INVITE",
        &d.uri,
        &[
            ("Via", &via(kind, me)),
            ("Max-Forwards", "70"),
            ("From", &format!("<sip:{}@{me}>;tag={tag}", d.meeting)),
            ("To", &format!("<{}>", d.uri)),
            ("Call-ID", &call_id),
            ("CSeq", "1 INVITE"),
            (
                "Contact",
                &format!("<sip:{}@{me}{}>", d.meeting, kind.uri_param()),
            ),
        ],
        Some(("application/sdp", description.as_bytes())),
    );
    tracing::info!(uri = %d.uri, meeting = %d.meeting, %peer, "sip: calling the room system");
    Ok(Outgoing {
        dial: d,
        call_id,
        invite,
        to: peer,
        heard: false,
        tries: 0,
        next_try: tokio::time::Instant::now() + Duration::from_millis(500),
        me,
    })
}

/// A `Via` header's value for a request the gateway at `me` sends over `kind`.
fn via(kind: Kind, me: SocketAddr) -> String {
    format!(
        "SIP/2.0/{} {me};branch=z9hG4bK{:08x};rport",
        kind.via(),
        rand::random::<u32>()
    )
}

/// A response to the box's INVITE: provisional, or the room system's answer (the call joins
/// the meeting; the ACK to send), or a refusal (the ACK to send).
async fn answered(
    cfg: &SipConfig,
    m: &Message<'_>,
    outgoing: &mut Option<Outgoing>,
    call: &mut Option<Call>,
    requests: &mpsc::Sender<OperatorCall>,
) -> Option<Vec<u8>> {
    let message::Start::Response { code, reason } = m.start else {
        return None;
    };
    let call_id = m.header("Call-ID")?;
    if m.cseq_method() != Some("INVITE") {
        return None;
    }
    // The answer again (the ACK was lost): the ACK again.
    if let Some(c) = call
        .as_ref()
        .filter(|c| c.call_id == call_id && (200..300).contains(&code))
    {
        return Some(c.answer.clone());
    }
    let o = outgoing.as_mut().filter(|o| o.call_id == call_id)?;
    if code < 200 {
        o.heard = true;
        return None;
    }
    let o = outgoing.take()?;
    let ack = ack_for(m, &o);
    if code >= 300 {
        tracing::warn!(uri = %o.dial.uri, code, reason, "sip: the room system refused the call");
        return Some(ack);
    }
    let agreed = std::str::from_utf8(m.body)
        .ok()
        .and_then(|text| sdp::read_offer(text).ok())
        .map(|answer| Agreed {
            offer: answer,
            video_port: cfg.rtp_port,
            audio_port: cfg.rtp_port.saturating_add(2),
            key: rand::random(),
        });
    let Some(agreed) = agreed else {
        tracing::warn!(uri = %o.dial.uri, "sip: the room system's answer carries nothing usable");
        return Some(ack);
    };
    cfg.call.set(Some(agreed));
    match ask(requests, OperatorRequest::Accept(o.dial.meeting)).await {
        Ok(_) => {
            tracing::info!(uri = %o.dial.uri, meeting = %o.dial.meeting, "sip: the room system answered and joined the meeting");
            let bye = in_dialog(
                "BYE",
                m.address_of("Contact").unwrap_or(&o.dial.uri),
                (o.me, o.to.kind),
                (m.header("From"), m.header("To")),
                &o.call_id,
                2,
            );
            *call = Some(Call {
                call_id: o.call_id.clone(),
                meeting: o.dial.meeting,
                answer: ack.clone(),
                acked: true,
                tries: 0,
                next_try: tokio::time::Instant::now(),
                to: o.to,
                bye,
            });
        }
        Err(e) => {
            cfg.call.set(None);
            tracing::warn!(meeting = %o.dial.meeting, error = %e, "sip: the call cannot join the meeting");
        }
    }
    Some(ack)
}

/// The ACK of a final response `m` to the INVITE of `o`.
fn ack_for(m: &Message<'_>, o: &Outgoing) -> Vec<u8> {
    in_dialog(
        "ACK",
        m.address_of("Contact").unwrap_or(&o.dial.uri),
        (o.me, o.to.kind),
        (m.header("From"), m.header("To")),
        &o.call_id,
        1,
    )
}

/// A request within a dialog, from the gateway at `me` over `kind`: `(from, to)` as the
/// gateway's side and the room system's, tags included; CSeq `seq`.
fn in_dialog(
    method: &str,
    target: &str,
    (me, kind): (SocketAddr, Kind),
    (from, to): (Option<&str>, Option<&str>),
    call_id: &str,
    seq: u32,
) -> Vec<u8> {
    message::request(
        method,
        target,
        &[
            ("Via", &via(kind, me)),
            ("Max-Forwards", "70"),
            ("From", from.unwrap_or_default()),
            ("To", to.unwrap_or_default()),
            ("Call-ID", call_id),
            ("CSeq", &format!("{seq} {method}")),
        ],
        None,
    )
}

/// Answers an INVITE: refused, or joined and answered with the box's description.
async fn invite(
    cfg: &SipConfig,
    m: &Message<'_>,
    Arrival { from, port }: Arrival,
    tag: &str,
    call: &mut Option<Call>,
    requests: &mpsc::Sender<OperatorCall>,
) -> Vec<u8> {
    let refuse = |code: u16, reason: &str, why: &str| {
        tracing::warn!(%from, code, why, "sip: call refused");
        message::response(
            m,
            code,
            reason,
            tag,
            &[("Warning", &format!("399 cuntong \"{why}\""))],
            None,
        )
    };
    let call_id = m.header("Call-ID").unwrap_or_default();
    if let Some(c) = call.as_ref() {
        // The same INVITE again (its answer was lost): the same answer.
        return if c.call_id == call_id {
            c.answer.clone()
        } else {
            refuse(486, "Busy Here", "this gateway carries one call at a time")
        };
    }
    if !allowed(&cfg.allow, from.addr.ip(), m.address_of("From")).await {
        return refuse(403, "Forbidden", "this room system is not allowed in");
    }
    let Some(meeting) = m.uri_user().and_then(|u| u.parse::<MeetingId>().ok()) else {
        return refuse(404, "Not Found", "dial sip:MEETINGID@gateway");
    };
    let offer = match std::str::from_utf8(m.body)
        .map_err(|_| sdp::SdpError::Line("(not UTF-8)".into()))
        .and_then(sdp::read_offer)
    {
        Ok(o) => o,
        Err(e) => return refuse(488, "Not Acceptable Here", &e.to_string()),
    };
    let agreed = Agreed {
        offer,
        video_port: cfg.rtp_port,
        audio_port: cfg.rtp_port.saturating_add(2),
        key: rand::random(),
    };
    let here = facing(from.addr).unwrap_or(cfg.listen.ip());
    let me = SocketAddr::new(here, port);
    let description = sdp::answer(
        &agreed.offer,
        here,
        (agreed.video_port, agreed.audio_port),
        u64::from(rand::random::<u32>()),
        &agreed.key,
    );
    // The media engine reads the call when the meeting's media start, which joining does.
    cfg.call.set(Some(agreed));
    if let Err(e) = ask(requests, OperatorRequest::Accept(meeting)).await {
        cfg.call.set(None);
        return refuse(404, "Not Found", &e.to_string());
    }
    let contact = format!("<sip:{meeting}@{me}{}>", from.kind.uri_param());
    let bytes = message::response(
        m,
        200,
        "OK",
        tag,
        &[("Contact", &contact)],
        Some(("application/sdp", description.as_bytes())),
    );
    tracing::info!(%meeting, %from, "sip: the room system joined the meeting");
    // The gateway's side of the dialog: its From is the INVITE's To, tagged as answered.
    let ours = m.header("To").map(|to| format!("{to};tag={tag}"));
    let bye = in_dialog(
        "BYE",
        m.address_of("Contact")
            .or(m.address_of("From"))
            .unwrap_or_default(),
        (me, from.kind),
        (ours.as_deref(), m.header("From")),
        call_id,
        1,
    );
    *call = Some(Call {
        call_id: call_id.to_owned(),
        meeting,
        answer: bytes.clone(),
        acked: false,
        tries: 0,
        next_try: tokio::time::Instant::now() + Duration::from_millis(500),
        to: from,
        bye,
    });
    bytes
}

/// The local address the box reaches `peer` from.
fn facing(peer: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr = match peer {
        SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let probe = std::net::UdpSocket::bind(any).ok()?;
    probe.connect(peer).ok()?;
    Some(probe.local_addr().ok()?.ip())
}

/// Asks the daemon to act as an operator would; its answer.
async fn ask(
    requests: &mpsc::Sender<OperatorCall>,
    req: OperatorRequest,
) -> Result<String, Refusal> {
    let (tx, rx) = oneshot::channel();
    requests
        .send((LocalRequest::Conference(req), tx))
        .await
        .map_err(|_| Refusal::Stopping)?;
    rx.await.unwrap_or(Err(Refusal::Stopping))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn room_systems_are_let_in_by_address_or_by_sip_address_and_where_it_calls_from() {
        let allow = vec![
            "10.13.2.40".to_owned(),
            "sip:hall@10.13.2.41".to_owned(),
            "sip:room@localhost".to_owned(),
        ];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(allowed(&allow, ip("10.13.2.40"), None).await);
        assert!(allowed(&allow, ip("10.13.2.41"), Some("SIP:hall@10.13.2.41:5071")).await);
        // A From is the caller's own word: from elsewhere it admits nobody.
        assert!(!allowed(&allow, ip("10.9.9.9"), Some("sip:hall@10.13.2.41")).await);
        assert!(!allowed(&allow, ip("10.13.2.41"), Some("sip:other@10.13.2.41")).await);
        assert!(!allowed(&allow, ip("10.13.2.41"), None).await);
        // A host name: the caller must be at one of its addresses.
        assert!(allowed(&allow, ip("127.0.0.1"), Some("sip:room@localhost")).await);
        assert!(!allowed(&allow, ip("10.9.9.9"), Some("sip:room@localhost")).await);
    }

    #[test]
    fn a_uri_names_its_host_its_port_and_its_transport() {
        assert_eq!(host_port("10.0.0.9", 5060), Some(("10.0.0.9", 5060)));
        assert_eq!(
            host_port("hall.county:5080", 5060),
            Some(("hall.county", 5080))
        );
        assert_eq!(host_port("[::1]:5062", 5060), Some(("[::1]", 5062)));
        assert_eq!(host_port("[::1]", 5061), Some(("[::1]", 5061)));
        assert_eq!(host_port("h:0", 5060), None);
        assert_eq!(host_port("h:x", 5060), None);
        assert_eq!(host_port(":5060", 5060), None);
        assert_eq!(Kind::of_uri("sip:a@h;transport=TCP"), Kind::Tcp);
        assert_eq!(Kind::of_uri("sips:a@h"), Kind::Tls);
        assert_eq!(Kind::of_uri("sip:a@h:5060"), Kind::Udp);
    }
}
