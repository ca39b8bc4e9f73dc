//! Fuzzes the HJ 212 codec: framing and decoding of arbitrary bytes. Whatever decodes must
//! re-encode to a frame that frames whole and decodes to the same packet; the checked encoder
//! writes that same frame, or refuses what the standard does not allow (`#`, non-ASCII outside
//! text, control characters).
#![no_main]

use cuntong_core::hj212::{Framing, decode, encode, next_frame, try_encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match next_frame(data) {
        Framing::NeedMore => {}
        Framing::Skip(n) => assert!(n >= 1 && n <= data.len()),
        Framing::Frame(n) => {
            assert!(n >= 12 && n <= data.len());
            assert_eq!(&data[n - 2..n], b"\r\n");
            let _ = decode(&data[..n]);
        }
    }
    if let Ok(p) = decode(data) {
        let again = encode(&p);
        assert_eq!(next_frame(&again), Framing::Frame(again.len()));
        if let Ok(checked) = try_encode(&p) {
            assert_eq!(checked, again);
        }
        assert_eq!(decode(&again).as_ref(), Ok(&p));
        let _ = p.readings();
        let _ = p.data_time();
        let ack = p.data_ack();
        assert_eq!(decode(&encode(&ack)), Ok(ack));
    }
});
