//! Any datagram as RTCP feedback, plain and as SRTCP: refused or read, never a panic; what is
//! read is what its encoding reads back, and what a relay reads of it agrees with the decoder.
#![no_main]

use cuntong_core::media::rtcp::{Feedback, about, asks_keyframe};
use cuntong_core::media::srtcp::Srtcp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = asks_keyframe(data);
    if let Ok(fb) = Feedback::decode(data) {
        assert_eq!(about(data), Some(fb.about));
        let again = fb.encode();
        assert_eq!(Feedback::decode(&again), Ok(fb));
        assert_eq!(asks_keyframe(&again), fb.keyframe);
    }
    let mut srtcp = Srtcp::new(&[7u8; 30], 0).expect("a 30-byte key");
    let _ = srtcp.unprotect(data);
    if data.len() >= 8 {
        let sealed = srtcp.protect(data, data[0] & 1 == 1).expect("8 bytes or more");
        let mut other = Srtcp::new(&[7u8; 30], 0).expect("a 30-byte key");
        assert_eq!(other.unprotect(&sealed).as_deref(), Ok(data));
    }
});
