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
//! Over UDP; a `200 OK` is sent again (0.5 s, 1 s, 2 s, … as RFC 3261's timer G) until its
//! `ACK` comes, at most seven times.

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
/// media engine when the meeting's media start. Clones share one call.
#[derive(Clone, Debug, Default)]
pub struct CallMedia(Arc<Mutex<Option<Agreed>>>);

impl PartialEq for CallMedia {
    fn eq(&self, other: &CallMedia) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for CallMedia {}

impl CallMedia {
    pub fn get(&self) -> Option<Agreed> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, agreed: Option<Agreed>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = agreed;
    }
}

/// Answers sent again until their `ACK`, at most.
const ANSWER_TRIES: u32 = 7;

/// The call in progress.
struct Call {
    call_id: String,
    meeting: MeetingId,
    /// The last answer to its INVITE, sent again until the ACK.
    answer: Vec<u8>,
    acked: bool,
    tries: u32,
    next_try: tokio::time::Instant,
    to: SocketAddr,
}

/// Runs the gateway until `stop`: calls come in on `cfg.listen`; joining and leaving go to the
/// daemon as operator requests on `requests`.
pub async fn serve(
    cfg: SipConfig,
    tag: String,
    requests: mpsc::Sender<OperatorCall>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let socket = UdpSocket::bind(cfg.listen).await?;
    eprintln!("sip gateway listening on {}", socket.local_addr()?);
    let mut call: Option<Call> = None;
    let mut buf = vec![0u8; message::MAX_MESSAGE + 1];
    loop {
        let resend_at = call
            .as_ref()
            .filter(|c| !c.acked && c.tries < ANSWER_TRIES)
            .map(|c| c.next_try);
        let (n, from) = tokio::select! {
            _ = stop.cancelled() => break,
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
            continue; // a response: the gateway sends no requests
        };
        let reply = |code: u16, reason: &str| message::response(&m, code, reason, &tag, &[], None);
        let out = match method {
            "INVITE" => Some(invite(&cfg, &m, from, &tag, &mut call, &requests).await),
            "ACK" => {
                if let Some(c) = call
                    .as_mut()
                    .filter(|c| Some(c.call_id.as_str()) == m.header("Call-ID"))
                {
                    c.acked = true;
                }
                None
            }
            "BYE" => {
                let ours = call
                    .as_ref()
                    .is_some_and(|c| Some(c.call_id.as_str()) == m.header("Call-ID"));
                if ours && let Some(c) = call.take() {
                    cfg.call.set(None);
                    let left = ask(&requests, OperatorRequest::Leave(c.meeting)).await;
                    tracing::info!(meeting = %c.meeting, ?left, "sip: the room system hung up");
                    Some(reply(200, "OK"))
                } else {
                    Some(reply(481, "Call/Transaction Does Not Exist"))
                }
            }
            "OPTIONS" => Some(message::response(
                &m,
                200,
                "OK",
                &tag,
                &[("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS")],
                None,
            )),
            "CANCEL" => Some(reply(481, "Call/Transaction Does Not Exist")),
            _ => Some(message::response(
                &m,
                405,
                "Method Not Allowed",
                &tag,
                &[("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS")],
                None,
            )),
        };
        if let Some(bytes) = out
            && let Err(e) = socket.send_to(&bytes, from).await
        {
            tracing::debug!(%from, error = %e, "sip: answer not sent");
        }
    }
    // Stopping, the box says goodbye to its meetings: the call ends with them.
    Ok(())
}

/// Whether the caller at `from`, saying it is `caller`, is let in.
fn allowed(allow: &[String], from: IpAddr, caller: Option<&str>) -> bool {
    allow.iter().any(|a| match a.parse::<IpAddr>() {
        Ok(ip) => ip == from,
        Err(_) => caller.is_some_and(|c| c.eq_ignore_ascii_case(a)),
    })
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
    *call = Some(Call {
        call_id: call_id.to_owned(),
        meeting,
        answer: bytes.clone(),
        acked: false,
        tries: 0,
        next_try: tokio::time::Instant::now() + Duration::from_millis(500),
        to: from,
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
