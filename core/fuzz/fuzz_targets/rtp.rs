//! Any datagram on a media port: classified or refused, never a panic.
#![no_main]

use cuntong_core::media::rtp::classify;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = classify(data) {
        let _ = p.ssrc();
    }
});
