//! Any datagram on a media port: classified or refused, its payload found or refused and
//! looked into as H.264, never a panic.
#![no_main]

use cuntong_core::media::rtp::{classify, h264_has_parameter_sets, payload};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = classify(data) {
        let _ = p.ssrc();
    }
    if let Some(body) = payload(data) {
        assert!(body.len() + 12 <= data.len());
        let _ = h264_has_parameter_sets(body);
    }
});
