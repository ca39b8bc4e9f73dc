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
//! Over UDP; a `200 OK` is sent again (0.5 s, 1 s, 2 s, … as RFC 3261's timer G) until its
//! `ACK` comes, and an INVITE (timer A) until any answer, at most seven times each.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cuntong_core::media::sdp::{self, Offer};
use cuntong_core::meeting::MeetingId;
use cuntong_core::sip::{self as message, Message};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::conference::OperatorRequest;
use crate::status::{LocalRequest, OperatorCall};

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
    to: SocketAddr,
    /// The BYE that ends it from the gateway's side.
    bye: Vec<u8>,
}

/// A call the box is making, until the room system answers it.
struct Outgoing {
    dial: Dial,
    call_id: String,
    invite: Vec<u8>,
    to: SocketAddr,
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
) -> std::io::Result<()> {
    let socket = UdpSocket::bind(cfg.listen).await?;
    let port = socket.local_addr()?.port();
    eprintln!("sip gateway listening on {}", socket.local_addr()?);
    let mut call: Option<Call> = None;
    let mut outgoing: Option<Outgoing> = None;
    let mut buf = vec![0u8; message::MAX_MESSAGE + 1];
    let mut overs = cfg.call.over.subscribe();
    loop {
        let resend_at = call
            .as_ref()
            .filter(|c| !c.acked && c.tries < TRIES)
            .map(|c| c.next_try);
        let invite_at = outgoing.as_ref().filter(|o| !o.heard).map(|o| o.next_try);
        let (n, from) = tokio::select! {
            _ = stop.cancelled() => break,
            Ok(()) = overs.changed() => {
                // The meeting is over for the box while the call is up: hang up.
                if let Some(c) = call.take_if(|c| c.acked) {
                    cfg.call.set(None);
                    tracing::info!(meeting = %c.meeting, "sip: the meeting is over for the room system: hanging up");
                    let _ = socket.send_to(&c.bye, c.to).await;
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
                    match start_call(&cfg, &tag, port, d) {
                        Ok(o) => {
                            let _ = socket.send_to(&o.invite, o.to).await;
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
                        let _ = socket.send_to(&o.invite, o.to).await;
                    }
                }
                continue;
            }
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "sip: receive failed");
                    continue;
                }
            },
            _ = tokio::time::sleep_until(resend_at.unwrap_or_else(tokio::time::Instant::now)), if resend_at.is_some() => {
                if let Some(c) = call.as_mut() {
                    c.tries += 1;
                    c.next_try += Duration::from_millis(500 << c.tries.min(3));
                    let _ = socket.send_to(&c.answer, c.to).await;
                }
                continue;
            }
        };
        let m = match message::parse(&buf[..n]) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(%from, error = %e, "sip: not a SIP message");
                continue;
            }
        };
        let Some(method) = m.method() else {
            if let Some(bytes) = answered(&cfg, &m, &mut outgoing, &mut call, &requests).await {
                let _ = socket.send_to(&bytes, from).await;
            }
            continue;
        };
        let out = on_request(&cfg, &m, method, from, &tag, &mut call, &requests).await;
        if let Some(bytes) = out
            && let Err(e) = socket.send_to(&bytes, from).await
        {
            tracing::debug!(%from, error = %e, "sip: answer not sent");
        }
    }
    // Stopping, the box says goodbye to its meetings: the call ends with them.
    Ok(())
}

/// The methods the gateway takes.
const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS";

/// A request from a room system; the answer to send, if any.
async fn on_request(
    cfg: &SipConfig,
    m: &Message<'_>,
    method: &str,
    from: SocketAddr,
    tag: &str,
    call: &mut Option<Call>,
    requests: &mpsc::Sender<OperatorCall>,
) -> Option<Vec<u8>> {
    let reply = |code: u16, reason: &str| message::response(m, code, reason, tag, &[], None);
    let in_call = |c: &Call| Some(c.call_id.as_str()) == m.header("Call-ID");
    match method {
        "INVITE" => Some(invite(cfg, m, from, tag, call, requests).await),
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
/// room system at `from` whose address is `caller`).
fn allowed(allow: &[String], from: IpAddr, caller: Option<&str>) -> bool {
    let caller = caller.and_then(message::user_at_host);
    allow.iter().any(|a| match a.parse::<IpAddr>() {
        Ok(ip) => ip == from,
        Err(_) => caller
            .is_some_and(|c| message::user_at_host(a).is_some_and(|a| a.eq_ignore_ascii_case(c))),
    })
}

/// Starts a call out: the room system of `d` is allowed, and reachable at the address its
/// URI names (an IP address; port 5060 if none); the INVITE with the box's offer.
fn start_call(cfg: &SipConfig, tag: &str, port: u16, d: Dial) -> Result<Outgoing, String> {
    let hostport = d
        .uri
        .split_once('@')
        .map(|(_, h)| h.split([';', '?', '>']).next().unwrap_or(h))
        .ok_or_else(|| format!("{:?} is not sip:user@host", d.uri))?;
    let to: SocketAddr = hostport
        .parse()
        .or_else(|_| {
            hostport
                .parse::<IpAddr>()
                .map(|ip| SocketAddr::new(ip, 5060))
        })
        .map_err(|_| format!("{:?}: the host must be an IP address", d.uri))?;
    if !allowed(&cfg.allow, to.ip(), Some(&d.uri)) {
        return Err(format!(
            "{} is not a room system this gateway allows",
            d.uri
        ));
    }
    let here = facing(to).unwrap_or(cfg.listen.ip());
    let me = SocketAddr::new(here, port);
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
            (
                "Via",
                &format!(
                    "SIP/2.0/UDP {me};branch=z9hG4bK{:08x};rport",
                    rand::random::<u32>()
                ),
            ),
            ("Max-Forwards", "70"),
            ("From", &format!("<sip:{}@{me}>;tag={tag}", d.meeting)),
            ("To", &format!("<{}>", d.uri)),
            ("Call-ID", &call_id),
            ("CSeq", "1 INVITE"),
            ("Contact", &format!("<sip:{}@{me}>", d.meeting)),
        ],
        Some(("application/sdp", description.as_bytes())),
    );
    tracing::info!(uri = %d.uri, meeting = %d.meeting, "sip: calling the room system");
    Ok(Outgoing {
        dial: d,
        call_id,
        invite,
        to,
        heard: false,
        tries: 0,
        next_try: tokio::time::Instant::now() + Duration::from_millis(500),
        me,
    })
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
                o.me,
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
        o.me,
        (m.header("From"), m.header("To")),
        &o.call_id,
        1,
    )
}

/// A request within a dialog, from the gateway at `me`: `(from, to)` as the gateway's side
/// and the room system's, tags included; CSeq `seq`.
fn in_dialog(
    method: &str,
    target: &str,
    me: SocketAddr,
    (from, to): (Option<&str>, Option<&str>),
    call_id: &str,
    seq: u32,
) -> Vec<u8> {
    let via = format!(
        "SIP/2.0/UDP {me};branch=z9hG4bK{:08x};rport",
        rand::random::<u32>()
    );
    message::request(
        method,
        target,
        &[
            ("Via", &via),
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
    from: SocketAddr,
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
    if !allowed(&cfg.allow, from.ip(), m.address_of("From")) {
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
    let here = facing(from).unwrap_or(cfg.listen.ip());
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
        return refuse(404, "Not Found", &e);
    }
    let contact = format!(
        "<sip:{meeting}@{}>",
        SocketAddr::new(here, cfg.listen.port())
    );
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
        SocketAddr::new(here, cfg.listen.port()),
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
) -> Result<String, String> {
    let (tx, rx) = oneshot::channel();
    requests
        .send((LocalRequest::Conference(req), tx))
        .await
        .map_err(|_| "the daemon is stopping".to_owned())?;
    rx.await
        .unwrap_or_else(|_| Err("the daemon is stopping".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_systems_are_let_in_by_address_or_by_sip_address() {
        let allow = vec!["10.13.2.40".to_owned(), "sip:hall@10.13.2.41".to_owned()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(allowed(&allow, ip("10.13.2.40"), None));
        assert!(allowed(&allow, ip("10.9.9.9"), Some("SIP:hall@10.13.2.41")));
        assert!(!allowed(
            &allow,
            ip("10.9.9.9"),
            Some("sip:other@10.13.2.41")
        ));
        assert!(!allowed(&allow, ip("10.13.2.41"), None));
    }
}
