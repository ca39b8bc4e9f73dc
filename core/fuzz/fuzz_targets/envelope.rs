//! Fuzzes the payload decoders: telemetry and event envelopes, presence records.
//! Whatever decodes must re-encode to bytes that decode to the same value.
#![no_main]

use cuntong_core::envelope::{decode_event, decode_telemetry, encode};
use cuntong_core::presence::Presence;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = decode_telemetry(data) {
        let again = encode(&env).expect("a decoded envelope encodes");
        assert_eq!(decode_telemetry(&again), Ok(env));
    }
    if let Ok(env) = decode_event(data) {
        let again = encode(&env).expect("a decoded envelope encodes");
        assert_eq!(decode_event(&again), Ok(env));
    }
    let _ = Presence::decode(data);
});
