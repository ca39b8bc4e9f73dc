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

/// How many of those asks may wait for their answers at once (a second's): a central that is
/// slow to answer, or a link that is down, is not asked more.
const ROLL_CALL_ASKS_UNANSWERED: u64 = 10;

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
    /// [`ROLL_CALL_POLL`] without waiting for the last answer (up to
    /// [`ROLL_CALL_ASKS_UNANSWERED`]): through a broker busy with a province's answers a
    /// request and its answer take a while each way, and a chair asking only after each answer
    /// would see the last site a round trip late.
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
        // Answers to requests from before this wait are not its own; answers come in order, so
        // one answers every ask before it too.
        let before = self.next;
        let (mut answered, mut seen) = (before, (0, 0));
        loop {
            let msg = tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Ok(seen),
                _ = ask.tick() => {
                    if self.next.saturating_sub(answered) < ROLL_CALL_ASKS_UNANSWERED {
                        self.send(request.clone())?;
                    }
                    continue;
                }
                m = self.incoming.recv() => m.ok_or_else(|| ClientError::Link("the link closed".into()))?,
            };
            let Ok(resp) = serde_json::from_slice::<Response>(&msg.payload) else {
                continue;
            };
            if resp.id <= before {
                continue;
            }
            answered = answered.max(resp.id);
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

#[cfg(test)]
mod tests {
    use super::*;
    use cuntong_terminal::broker_url::BrokerUrl;
    use cuntong_terminal::link::QoS;

    /// A stand-in for central on an embedded broker: reads every client's requests and, with
    /// `total`, answers the roll-call counts with as many present as requests so far (none
    /// without). Counts the requests.
    async fn stand_in_central(
        url: &BrokerUrl,
        total: Option<usize>,
    ) -> Arc<std::sync::atomic::AtomicUsize> {
        let mut opts = LinkOptions::new("stand-in-central", url.clone());
        opts.subscriptions = vec![control_request("+")];
        let (link, mut requests) = Link::connect(opts, Duration::from_secs(10)).await.unwrap();
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = asked.clone();
        tokio::spawn(async move {
            while let Some(msg) = requests.recv().await {
                let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                let (Some(total), Ok(req)) =
                    (total, serde_json::from_slice::<Request>(&msg.payload))
                else {
                    continue;
                };
                let client = msg.topic.rsplit('/').next().unwrap_or_default();
                let answer = Response {
                    id: req.id,
                    error: None,
                    body: ResponseBody::RollCall {
                        present: n.min(total),
                        total,
                        rows: Vec::new(),
                        next: None,
                    },
                };
                let bytes = serde_json::to_vec(&answer).unwrap();
                link.try_publish(Message::new(control_response(client), bytes))
                    .unwrap();
            }
        });
        asked
    }

    /// A chair waiting for a roll call asks without waiting for each answer, but never leaves
    /// more than [`ROLL_CALL_ASKS_UNANSWERED`] unanswered: a central that answers is asked as
    /// long as it takes, one that does not is asked no more.
    #[tokio::test]
    async fn a_chair_waiting_for_a_roll_call_leaves_at_most_a_seconds_asks_unanswered() {
        let meeting: MeetingId = "m1".parse().unwrap();
        for answering in [true, false] {
            let addr = crate::broker::serve("127.0.0.1:0".parse().unwrap(), None)
                .await
                .unwrap();
            let url: BrokerUrl = format!("mqtt://{addr}").parse().unwrap();
            let total = 30;
            let asked = stand_in_central(&url, answering.then_some(total)).await;
            let mut chair = CentralClient::connect(url, None, QoS::AtLeastOnce)
                .await
                .unwrap();
            let seen = chair
                .await_answers(meeting, Duration::from_secs(6))
                .await
                .unwrap();
            let asked = asked.load(std::sync::atomic::Ordering::SeqCst) as u64;
            if answering {
                // Every site present once the 30th ask was answered: well before the timeout.
                assert_eq!(seen, (total, total));
                assert!(asked >= total as u64, "asked {asked} times");
            } else {
                assert_eq!(seen, (0, 0));
                assert_eq!(asked, ROLL_CALL_ASKS_UNANSWERED);
            }
            chair.close();
        }
    }
}
