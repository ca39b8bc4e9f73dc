//! Sizes and durations as a technician writes them in a configuration file or a flag
//! (`16MiB`, `30s`), and why a value is refused.

use std::time::Duration;

/// A setting's value that is not one: a size, a duration, a content source or a display, as
/// given.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum BadValue {
    #[error("{0:?} is not a size; use e.g. \"16MiB\"")]
    NotSize(String),
    #[error("unknown size unit {unit:?} in {given:?}; use B, KiB, MiB or GiB")]
    SizeUnit { unit: String, given: String },
    #[error("{0:?} is too large")]
    TooLarge(String),
    #[error("{given:?} is not a duration ({problem}); use e.g. \"30s\", \"5m\"")]
    NotDuration {
        given: String,
        problem: humantime::DurationError,
    },
    #[error("{0:?} is longer than 100 years")]
    TooLong(String),
    #[error("{0:?}: \"v4l2:/dev/videoN\" or \"test\"")]
    ContentSource(String),
    #[error("{0:?}: \"auto\", \"kms\", \"file:PATH\" or \"recording:PATH\"")]
    Display(String),
}

/// Parses a size such as `16MiB`, `512KiB`, `1GiB` or a plain number of bytes.
pub fn parse_size(s: &str) -> Result<u64, BadValue> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| BadValue::NotSize(s.into()))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "KB" => 1 << 10,
        "M" | "MiB" | "MB" => 1 << 20,
        "G" | "GiB" | "GB" => 1 << 30,
        other => {
            return Err(BadValue::SizeUnit {
                unit: other.into(),
                given: s.into(),
            });
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| BadValue::TooLarge(s.into()))
}

/// Parses a human duration such as `30s`, `5m` or `1h 30m`.
pub fn parse_duration(s: &str) -> Result<Duration, BadValue> {
    let d = humantime::parse_duration(s).map_err(|problem| BadValue::NotDuration {
        given: s.into(),
        problem,
    })?;
    if d > MAX_DURATION {
        return Err(BadValue::TooLong(s.into()));
    }
    Ok(d)
}

/// The longest duration any setting or flag takes (100 years): longer is a mistake, and
/// anything up to it can be added to the current time, and counted in u64 milliseconds,
/// without overflow or leaving the years a date can be written in.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
