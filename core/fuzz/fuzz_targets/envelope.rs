//! Fuzzes the payload decoders: telemetry and event envelopes, presence records.
//! Whatever decodes must re-encode to bytes that decode to the same value, and renumbered
//! (as a terminal's outbox renumbers a clashing numbering) decode to it under the new seq.
#![no_main]

use cuntong_core::envelope::{decode_event, decode_telemetry, encode, with_seq};
use cuntong_core::presence::Presence;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = decode_telemetry(data) {
        let again = encode(&env).expect("a decoded envelope encodes");
        assert_eq!(decode_telemetry(&again), Ok(env));
    }
    if let Ok(env) = decode_event(data) {
        let again = encode(&env).expect("a decoded envelope encodes");
        assert_eq!(decode_event(&again), Ok(env.clone()));
        let seq = env.seq.wrapping_mul(31).wrapping_add(7);
        let renumbered = with_seq(data, seq).expect("a decoded envelope renumbers");
        let moved = decode_event(&renumbered).expect("a renumbered envelope decodes");
        assert_eq!((moved.seq, moved.time_ms, moved.body), (seq, env.time_ms, env.body));
    }
    let _ = with_seq(data, 1);
    let _ = Presence::decode(data);
});
