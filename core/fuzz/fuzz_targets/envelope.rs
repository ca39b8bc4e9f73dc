//! Fuzzes the payload decoders: telemetry and event envelopes, presence records.
//! A decoded value must re-encode to exactly the input bytes (the encoding is canonical).
#![no_main]

use cuntong_core::envelope::{decode_event, decode_telemetry, encode};
use cuntong_core::presence::Presence;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = decode_telemetry(data) {
        assert_eq!(encode(&env).ok().as_deref(), Some(data));
    }
    if let Ok(env) = decode_event(data) {
        assert_eq!(encode(&env).ok().as_deref(), Some(data));
    }
    let _ = Presence::decode(data);
});
