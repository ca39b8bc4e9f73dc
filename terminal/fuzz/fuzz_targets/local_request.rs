//! Any line on the status socket: an operator's request, read or refused, never a panic; what
//! is read prints back as a line that reads as the same request.
#![no_main]

use cuntong_terminal::status::LocalRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(req) = LocalRequest::parse(line) {
        let again = req.to_line();
        assert_eq!(LocalRequest::parse(&again), Ok(req), "{again:?}");
    }
});
