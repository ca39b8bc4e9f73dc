//! The retained presence record of a terminal.
//!
//! A terminal publishes `online` (retained) when it connects and registers the same record with
//! `online: false` as its MQTT last will, so the broker marks it offline when its keep-alive
//! lapses. Encoded with [`crate::envelope::encode`].

use alloc::string::String;

use serde::{Deserialize, Serialize};

use crate::envelope::{DecodeError, decode};

/// What a terminal says about itself on its retained presence topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    pub online: bool,
    /// Software version of the terminal.
    pub version: String,
    /// When this run of the terminal started, ms since the Unix epoch.
    pub started_ms: u64,
    /// MQTT keep-alive in seconds: the broker reports the terminal offline after 1.5 times it.
    pub keep_alive_s: u16,
}

impl Presence {
    pub fn decode(bytes: &[u8]) -> Result<Presence, DecodeError> {
        decode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::encode;

    #[test]
    fn online_and_offline_records_have_pinned_bytes() {
        let p = |online| Presence {
            online,
            version: "0.1.0".into(),
            started_ms: 1_763_798_400_000,
            keep_alive_s: 30,
        };
        crate::envelope::golden::assert_pinned(&[
            (p(true), "010105302e312e3080f8ced4aa331e"),
            (p(false), "010005302e312e3080f8ced4aa331e"),
        ]);
    }

    #[test]
    fn round_trips() {
        let p = Presence {
            online: true,
            version: "0.1.0".into(),
            started_ms: 1_763_798_400_000,
            keep_alive_s: 30,
        };
        let bytes = encode(&p).unwrap();
        assert_eq!(Presence::decode(&bytes), Ok(p));
        assert!(Presence::decode(&bytes[..4]).is_err());
    }
}
