//! Answering the requests of `cuntong` commands (`meeting …`, `alarms ack`, `rollout …`) as the
//! holder of the host role, each answer sent once what the request changed is stored.

use std::time::Duration;

use cuntong_core::topic::control_response;
use cuntong_terminal::link::{Link, Message, unix_ms};
use cuntong_terminal::throttle::LogLimiter;

use super::Roles;
use crate::control::{ControlError, Request, RequestBody, Response, ResponseBody, answer_pages};

/// How long an answer to a command waits for what the command changed to be stored.
const ANSWER_WAITS_FOR_STORE: Duration = Duration::from_secs(1);

/// Answers a command's request (`meeting …`, `alarms ack`) as the holder of the host role.
/// What the request changed is handed to the store thread now, and the answer goes out once it
/// is written: an operation a chair was told is done survives a crash of central (and is there
/// for the instance that takes over). A store that is slow or away holds the answer up for a
/// second at most (the operation has taken effect for the sites anyway, and is written when the
/// store is back); a request that changed nothing is answered at once. What it changed for the
/// sites goes out on the meeting link (what they must hear at once on the control link), the
/// answers on the control link.
pub(super) fn answer_command(
    roles: &mut Roles,
    (meeting_link, control_link): (&Link, &Link),
    state: &crate::store::StateWriter,
    log: &LogLimiter,
    client: &str,
    payload: &[u8],
) {
    let before = (roles.alarms.handed_over(), roles.rollouts.handed_over());
    let now_ms = unix_ms();
    let answers = control(roles, log, client, payload, now_ms);
    roles.gather_outbound();
    roles.meetings.lay_out(now_ms);
    roles.meetings.drain(control_link, meeting_link);
    let handed = (roles.alarms.handed_over(), roles.rollouts.handed_over());
    let changed = match roles.meetings.save() {
        Ok(saved) => saved || handed != before,
        Err(e) => {
            tracing::error!(error = %e, "cannot save meetings");
            false
        }
    };
    if !answers.is_empty() {
        let link = control_link.clone();
        let written = changed.then(|| state.written());
        tokio::spawn(async move {
            if let Some(written) = written {
                let _ = tokio::time::timeout(ANSWER_WAITS_FOR_STORE, written).await;
            }
            for answer in answers {
                if link.publish(answer).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// The answers to a request of a `cuntong` command (`meeting …`, `alarms ack`, `rollout …`),
/// for its response topic: one, or one a page for a request of every page; none for a request
/// that cannot be read.
fn control(
    roles: &mut Roles,
    log: &LogLimiter,
    client: &str,
    payload: &[u8],
    now_ms: u64,
) -> Vec<Message> {
    let req: Request = match serde_json::from_slice(payload) {
        Ok(r) => r,
        Err(e) => {
            if let Some(more) = log.allow("malformed request") {
                tracing::warn!(%client, error = %e, "ignoring a malformed request{more}");
            }
            return Vec::new();
        }
    };
    let mut answers = Vec::new();
    for result in answer_pages(req.body, |body| answer_one(roles, body, now_ms)) {
        let (error, body) = match result {
            Ok(body) => (None, body),
            Err(e) => (Some(e), ResponseBody::None),
        };
        let resp = Response {
            id: req.id,
            error,
            body,
        };
        match serde_json::to_vec(&resp) {
            Ok(bytes) => answers.push(Message::new(control_response(client), bytes).urgent()),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a response");
                break;
            }
        }
    }
    answers
}

/// The answer to one request (one page of a paged one).
fn answer_one(
    roles: &mut Roles,
    body: RequestBody,
    now_ms: u64,
) -> Result<ResponseBody, ControlError> {
    match body {
        RequestBody::AckAlarm { id, by } => roles
            .alarms
            .acknowledge(id, &by, now_ms)
            .map(|()| ResponseBody::None),
        RequestBody::RolloutStart {
            id,
            version,
            region,
            rate_per_min,
            abort_failed_percent,
            min_executed,
            window,
            timeout_ms,
            command,
        } => roles
            .rollouts
            .start(
                cuntong_core::rollout::Plan {
                    id,
                    version,
                    region,
                    rate_per_min,
                    abort_failed_percent,
                    min_executed,
                    window,
                    timeout_ms,
                    // From the signed command.
                    expires_ms: 0,
                    created_ms: now_ms,
                },
                command.0,
                now_ms,
            )
            .map(|()| ResponseBody::None),
        RequestBody::Rollout { id, op } => roles
            .rollouts
            .apply(id, op, now_ms)
            .map(|()| ResponseBody::None),
        other => roles.meetings.answer(other, now_ms),
    }
}
