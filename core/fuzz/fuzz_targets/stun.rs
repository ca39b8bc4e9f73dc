//! Any datagram on a media port as STUN: decoded or refused, never a panic; whatever is
//! answered is a well-formed Success Response to that very request.
#![no_main]

use cuntong_core::media::stun::{Message, Responder, decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let decoded = decode(data);
    let from = "192.0.2.1:5004".parse().expect("an address");
    if let Some(r) = Responder::new().answer(data, from, 0) {
        let Ok(Message::BindingRequest { id }) = decoded else {
            panic!("answered what is not a binding request");
        };
        assert_eq!(decode(r.as_bytes()), Ok(Message::BindingSuccess { id }));
    }
});
