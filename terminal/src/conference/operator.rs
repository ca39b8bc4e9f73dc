//! The requests the box's operator makes through the status socket (`cuntong-terminal meeting
//! …`, `cuntong-terminal call`), as the words typed and as the one line that carries them.

use cuntong_core::media::layout::Layout;
use cuntong_core::meeting::MeetingId;
use cuntong_core::meeting::host::ChairOp;
use cuntong_core::terminal_id::TerminalId;

use crate::status::BadRequest;

/// A request from the box's operator (`cuntong-terminal meeting …`, `cuntong-terminal call`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OperatorRequest {
    Accept(MeetingId),
    Decline(MeetingId, String),
    RaiseHand(MeetingId),
    LowerHand(MeetingId),
    Leave(MeetingId),
    Call(TerminalId),
    /// A chair operation, for a box the chair made a delegated chair (a county office).
    Chair(MeetingId, ChairOp),
    /// The room's layout on this box, whatever the chair's.
    Layout(MeetingId, Layout),
    /// Share content from this box's second video source (双流), or stop sharing it.
    Content(MeetingId, bool),
}

/// The chair operations a delegated chair's box can ask for, by the name the operator types.
fn chair_op(name: &str, target: Option<TerminalId>) -> Result<ChairOp, BadRequest> {
    let needs = |t: Option<TerminalId>| t.ok_or_else(|| BadRequest::NeedsTerminal(name.into()));
    Ok(match name {
        "mute" => ChairOp::Mute(needs(target)?),
        "unmute" => ChairOp::Unmute(needs(target)?),
        "grant" => ChairOp::Grant(needs(target)?),
        "lower" => ChairOp::LowerHand(needs(target)?),
        "revoke" => ChairOp::Revoke,
        "mute-all" => ChairOp::MuteAll,
        "unmute-all" => ChairOp::UnmuteAll,
        other => return Err(BadRequest::ChairOp(other.into())),
    })
}

/// The operator's words for a chair operation (what [`chair_op`] reads).
pub(super) fn chair_words(op: &ChairOp) -> String {
    match op {
        ChairOp::Mute(t) => format!("mute {t}"),
        ChairOp::Unmute(t) => format!("unmute {t}"),
        ChairOp::Grant(t) => format!("grant {t}"),
        ChairOp::LowerHand(t) => format!("lower {t}"),
        ChairOp::Revoke => "revoke".into(),
        ChairOp::MuteAll => "mute-all".into(),
        ChairOp::UnmuteAll => "unmute-all".into(),
        other => other.name().into(),
    }
}

impl OperatorRequest {
    /// Parses a status-socket line: `meeting accept|decline|hand|lower|leave ID [REASON]`,
    /// `meeting chair ID OP [TERMINAL]` or `call TERMINAL`.
    pub fn parse(line: &str) -> Result<OperatorRequest, BadRequest> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let id = |s: &str| {
            s.parse::<MeetingId>()
                .map_err(|problem| BadRequest::MeetingId {
                    given: s.into(),
                    problem,
                })
        };
        let terminal = |s: &str| {
            s.parse::<TerminalId>()
                .map_err(|problem| BadRequest::Terminal {
                    given: s.into(),
                    problem,
                })
        };
        match words.as_slice() {
            ["meeting", "accept", m] => Ok(OperatorRequest::Accept(id(m)?)),
            ["meeting", "decline", m, reason @ ..] => {
                Ok(OperatorRequest::Decline(id(m)?, reason.join(" ")))
            }
            ["meeting", "hand", m] => Ok(OperatorRequest::RaiseHand(id(m)?)),
            ["meeting", "lower", m] => Ok(OperatorRequest::LowerHand(id(m)?)),
            ["meeting", "leave", m] => Ok(OperatorRequest::Leave(id(m)?)),
            ["meeting", "layout", m, layout] => Ok(OperatorRequest::Layout(
                id(m)?,
                layout.parse().map_err(BadRequest::Layout)?,
            )),
            ["meeting", "content", m, on @ ("on" | "off")] => {
                Ok(OperatorRequest::Content(id(m)?, *on == "on"))
            }
            ["meeting", "chair", m, op, rest @ ..] if rest.len() <= 1 => {
                let target = rest.first().map(|t| terminal(t)).transpose()?;
                Ok(OperatorRequest::Chair(id(m)?, chair_op(op, target)?))
            }
            ["call", t] => terminal(t).map(OperatorRequest::Call),
            _ => Err(BadRequest::Unknown(line.into())),
        }
    }

    /// The line [`OperatorRequest::parse`] reads.
    pub fn to_line(&self) -> String {
        match self {
            OperatorRequest::Accept(m) => format!("meeting accept {m}"),
            OperatorRequest::Decline(m, r) => format!("meeting decline {m} {r}"),
            OperatorRequest::RaiseHand(m) => format!("meeting hand {m}"),
            OperatorRequest::LowerHand(m) => format!("meeting lower {m}"),
            OperatorRequest::Leave(m) => format!("meeting leave {m}"),
            OperatorRequest::Call(t) => format!("call {t}"),
            OperatorRequest::Chair(m, op) => format!("meeting chair {m} {}", chair_words(op)),
            OperatorRequest::Layout(m, l) => format!("meeting layout {m} {l}"),
            OperatorRequest::Content(m, on) => {
                format!("meeting content {m} {}", if *on { "on" } else { "off" })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_requests_parse_and_print_back() {
        for line in [
            "meeting accept m1",
            "meeting decline m1 no staff today",
            "meeting hand m1",
            "meeting lower m1",
            "meeting leave m1",
            "meeting chair m1 mute 130102001001-main",
            "meeting chair m1 revoke",
            "meeting chair m1 mute-all",
            "meeting layout m1 3x3",
            "meeting layout m1 speaker",
            "meeting content m1 on",
            "meeting content m1 off",
            "call 130102000000-hall",
        ] {
            let r = OperatorRequest::parse(line).unwrap();
            assert_eq!(r.to_line(), line);
        }
        assert!(
            OperatorRequest::parse("meeting hand 1x")
                .unwrap_err()
                .to_string()
                .contains("meeting id")
        );
        assert!(
            OperatorRequest::parse("call nobody")
                .unwrap_err()
                .to_string()
                .contains("terminal")
        );
        assert!(OperatorRequest::parse("dance").is_err());
        assert!(OperatorRequest::parse("meeting content m1 maybe").is_err());
        assert!(
            OperatorRequest::parse("meeting layout m1 5x5")
                .unwrap_err()
                .to_string()
                .contains("1+N")
        );
    }
}
