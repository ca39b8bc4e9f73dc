//! The connection of `cuntong meeting …`, `cuntong call` and `cuntong alarms ack` to the
//! meeting host inside `cuntong central`: each request is one [`Request`] on the client's
//! request topic, answered by one [`Response`] on its response topic (one a page, for a
//! request of every page).

use std::sync::Arc;
use std::time::Duration;

use cuntong_core::meeting::MeetingId;
use cuntong_core::meeting::host::ChairOp;
use cuntong_core::topic::{control_request, control_response};
use cuntong_terminal::broker_url::Brokers;
use cuntong_terminal::link::{Incoming, Link, LinkOptions, Message};
use ring::rand::SecureRandom;
use tokio::sync::mpsc;

use crate::commands::common::{Failure, Usage};
use crate::control::{
    ControlError, MeetingJson, MeetingStatus, Request, RequestBody, Response, ResponseBody,
    RollCallJson,
};

/// How long a command waits for the host's answer.
pub const ANSWER: Duration = Duration::from_secs(10);

/// How often a chair waiting for a roll call's answers asks for the counts.
const ROLL_CALL_POLL: Duration = Duration::from_millis(100);

/// Why a request got no useful answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Central answered with a refusal.
    #[error("{0}")]
    Refused(ControlError),
    /// No answer in time, or the link failed.
    #[error("{0}")]
    Link(String),
    /// An answer of another kind than the request asks for.
    #[error("unexpected answer {0:?}")]
    Unexpected(Box<ResponseBody>),
    /// The system gave no randomness for the client id.
    #[error("no randomness for the client id")]
    NoRandomness,
}

impl From<ClientError> for Failure {
    /// A request naming what is not there, or not valid, is bad input (exit code 2).
    fn from(e: ClientError) -> Failure {
        match e {
            ClientError::Refused(e) if e.is_bad_request() => Failure::Usage(Usage(e.to_string())),
            other => Failure::Runtime(other.to_string()),
        }
    }
}

/// A connection to the meeting host.
#[derive(Debug)]
pub struct CentralClient {
    link: Link,
    incoming: mpsc::Receiver<Incoming>,
    client: String,
    next: u64,
}

impl CentralClient {
    /// Connects; the client's answers arrive on its own response topic.
    pub async fn connect(
        broker: impl Into<Brokers>,
        tls: Option<Arc<rustls::ClientConfig>>,
        subscribe_qos: cuntong_terminal::link::QoS,
    ) -> Result<CentralClient, ClientError> {
        let mut salt = [0u8; 4];
        ring::rand::SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| ClientError::NoRandomness)?;
        let client = format!(
            "cuntong-meeting-{}-{:08x}",
            std::process::id(),
            u32::from_le_bytes(salt)
        );
        let mut opts = LinkOptions::new(client.clone(), broker);
        opts.tls = tls;
        opts.subscribe_qos = subscribe_qos;
        opts.subscriptions = vec![control_response(&client)];
        let (link, incoming) = Link::connect(opts, Duration::from_secs(10))
            .await
            .map_err(|e| ClientError::Link(e.to_string()))?;
        Ok(CentralClient {
            link,
            incoming,
            client,
            next: 0,
        })
    }

    /// Sends a request and waits up to `timeout` for its answer.
    pub async fn ask(
        &mut self,
        body: RequestBody,
        timeout: Duration,
    ) -> Result<ResponseBody, ClientError> {
        let id = self.send(body)?;
        self.answer(id, timeout).await
    }

    /// Sends a request of every page (`all`) and gathers its answers, waiting up to `timeout`
    /// for each.
    async fn ask_pages(
        &mut self,
        body: RequestBody,
        timeout: Duration,
    ) -> Result<Vec<ResponseBody>, ClientError> {
        let mut request = body.clone();
        let id = self.send(body)?;
        let mut pages = Vec::new();
        loop {
            let page = self.answer(id, timeout).await?;
            let next = request.next_page(&page);
            pages.push(page);
            match next {
                Some(n) => request = n,
                None => return Ok(pages),
            }
        }
    }

    fn send(&mut self, body: RequestBody) -> Result<u64, ClientError> {
        self.next += 1;
        let req = Request {
            id: self.next,
            body,
        };
        let bytes = serde_json::to_vec(&req).map_err(|e| ClientError::Link(e.to_string()))?;
        self.link
            .try_publish(Message::new(control_request(&self.client), bytes))
            .map_err(|e| ClientError::Link(e.to_string()))?;
        Ok(req.id)
    }

    /// The next answer to request `id`.
    async fn answer(&mut self, id: u64, timeout: Duration) -> Result<ResponseBody, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(ClientError::Link(format!(
                        "no answer from the meeting host within {} (is `cuntong central` running?)",
                        humantime::format_duration(timeout)
                    )));
                }
                m = self.incoming.recv() => m.ok_or_else(|| ClientError::Link("the link closed".into()))?,
            };
            let Ok(resp) = serde_json::from_slice::<Response>(&msg.payload) else {
                continue;
            };
            if resp.id != id {
                continue;
            }
            return match resp.error {
                Some(e) => Err(ClientError::Refused(e)),
                None => Ok(resp.body),
            };
        }
    }

    /// The session with all its sites (every page, in answer to one request).
    pub async fn status(&mut self, meeting: MeetingId) -> Result<MeetingStatus, ClientError> {
        let request = RequestBody::Status {
            meeting,
            after: None,
            all: true,
        };
        let mut all: Option<MeetingStatus> = None;
        for page in self.ask_pages(request, ANSWER).await? {
            let page = match page {
                ResponseBody::Status(s) => *s,
                other => return Err(ClientError::Unexpected(Box::new(other))),
            };
            match &mut all {
                None => all = Some(page),
                Some(a) => a.sites.extend(page.sites),
            }
        }
        let mut s = all.ok_or_else(|| ClientError::Link("no answer".into()))?;
        s.next = None;
        Ok(s)
    }

    /// The latest roll call: (present, total) and, with `rows`, every site's answer (every
    /// page, in answer to one request); without, the counts alone.
    async fn roll_call_page(
        &mut self,
        meeting: MeetingId,
        rows: bool,
    ) -> Result<(usize, usize, Vec<RollCallJson>), ClientError> {
        let request = RequestBody::RollCall {
            meeting,
            after: None,
            all: rows,
            counts: !rows,
        };
        let (mut out, mut counts) = (Vec::new(), (0, 0));
        for page in self.ask_pages(request, ANSWER).await? {
            match page {
                ResponseBody::RollCall {
                    present,
                    total,
                    rows: page,
                    ..
                } => {
                    // Every page is laid out at once: their counts agree.
                    counts = (present, total);
                    out.extend(page);
                }
                other => return Err(ClientError::Unexpected(Box::new(other))),
            }
        }
        Ok((counts.0, counts.1, out))
    }

    /// Opens a roll call, waits until every invited site answered or `timeout` passed, and
    /// answers every site's row.
    pub async fn roll_call(
        &mut self,
        meeting: MeetingId,
        timeout: Duration,
    ) -> Result<Vec<RollCallJson>, ClientError> {
        self.op(meeting, ChairOp::RollCall).await?;
        self.await_answers(meeting, timeout).await?;
        self.roll_call_rows(meeting).await
    }

    /// Waits until every site invited to the open roll call answered or `timeout` passed;
    /// the counts (present, total) last seen. It asks for the counts alone every
    /// [`ROLL_CALL_POLL`] without waiting for the last answer: through a broker busy with a
    /// province's answers a request and its answer take a while each way, and a chair asking
    /// only after each answer would see the last site a round trip late.
    pub async fn await_answers(
        &mut self,
        meeting: MeetingId,
        timeout: Duration,
    ) -> Result<(usize, usize), ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut ask = tokio::time::interval(ROLL_CALL_POLL);
        ask.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let request = RequestBody::RollCall {
            meeting,
            after: None,
            all: false,
            counts: true,
        };
        let (mut first, mut seen) = (None, (0, 0));
        loop {
            let msg = tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Ok(seen),
                _ = ask.tick() => {
                    let id = self.send(request.clone())?;
                    first.get_or_insert(id);
                    continue;
                }
                m = self.incoming.recv() => m.ok_or_else(|| ClientError::Link("the link closed".into()))?,
            };
            let Ok(resp) = serde_json::from_slice::<Response>(&msg.payload) else {
                continue;
            };
            if first.is_none_or(|first| resp.id < first) {
                continue;
            }
            match (resp.error, resp.body) {
                (Some(e), _) => return Err(ClientError::Refused(e)),
                (None, ResponseBody::RollCall { present, total, .. }) => {
                    seen = (present, total);
                    if present >= total {
                        return Ok(seen);
                    }
                }
                (None, other) => return Err(ClientError::Unexpected(Box::new(other))),
            }
        }
    }

    /// Every site's row of the open roll call.
    pub async fn roll_call_rows(
        &mut self,
        meeting: MeetingId,
    ) -> Result<Vec<RollCallJson>, ClientError> {
        Ok(self.roll_call_page(meeting, true).await?.2)
    }

    /// A chair operation; answers the state version it produced.
    pub async fn op(&mut self, meeting: MeetingId, op: ChairOp) -> Result<u64, ClientError> {
        match self.ask(RequestBody::Op { meeting, op }, ANSWER).await? {
            ResponseBody::Done { version } => Ok(version),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    pub async fn list(&mut self) -> Result<Vec<MeetingJson>, ClientError> {
        match self.ask(RequestBody::List, ANSWER).await? {
            ResponseBody::List(v) => Ok(v),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    pub fn close(self) {
        self.link.shutdown();
    }
}
