//! Any message on central's control topics: a request (or an answer) read or refused, never a
//! panic; what is read writes back as JSON that reads as the same message. The control
//! protocol is the `cuntong` binary's own module, compiled here as it is there.
#![no_main]
#![allow(dead_code)]

#[path = "../../src/control.rs"]
mod control;

use control::{Request, Response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<Request>(data) {
        let again = serde_json::to_vec(&req).expect("a request read writes back");
        let back: Request = serde_json::from_slice(&again).expect("and reads again");
        assert_eq!(
            serde_json::to_vec(&back).expect("again"),
            again,
            "{}",
            String::from_utf8_lossy(&again)
        );
    }
    if let Ok(res) = serde_json::from_slice::<Response>(data) {
        let again = serde_json::to_vec(&res).expect("an answer read writes back");
        assert!(serde_json::from_slice::<Response>(&again).is_ok());
    }
});
