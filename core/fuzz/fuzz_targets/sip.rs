//! Any datagram on the SIP gateway's port, or the front of a TCP/TLS stream: cut where its
//! first message ends or refused, read as a SIP message or refused, never a panic; a
//! request read has the headers a call needs, and any response to it reads back with the same
//! Call-ID and CSeq. Its body, as an SDP offer: answered at the addresses it names, or refused.
#![no_main]

use cuntong_core::media::sdp::read_offer;
use cuntong_core::sip::{Framing, MAX_MESSAGE, Start, frame, parse, response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // As the front of a stream: a cut within what was given, or more needed, or refused.
    match frame(data) {
        Ok(Framing::Skip(n) | Framing::Message(n)) => assert!(n > 0 && n <= data.len()),
        Ok(Framing::Need) => assert!(data.len() <= MAX_MESSAGE),
        Err(_) => {}
    }
    let Ok(m) = parse(data) else { return };
    if let Start::Request { .. } = m.start {
        let reply = response(&m, 200, "OK", "tag1", &[], Some(("application/sdp", b"v=0\r\n")));
        let back = parse(&reply).expect("a response reads back");
        assert_eq!(back.start, Start::Response { code: 200, reason: "OK" });
        assert_eq!(back.header("Call-ID"), m.header("Call-ID"));
        assert_eq!(back.header("CSeq"), m.header("CSeq"));
        assert_eq!(back.body, b"v=0\r\n");
    }
    if let Ok(text) = core::str::from_utf8(m.body)
        && let Ok(offer) = read_offer(text)
    {
        assert!(offer.video.is_some() || offer.audio.is_some());
    }
});
