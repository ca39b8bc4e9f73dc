//! Any bytes as an outbox's segment and state files after a crash: the outbox opens (cutting
//! what is damaged) or refuses with an error, never a panic; once open, what it holds is
//! consistent, and a record appended then survives a reopen.
#![no_main]

use cuntong_core::envelope::Stream;
use cuntong_terminal::outbox::{Outbox, OutboxConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    // The first byte says how much of the rest is the state file (none if 255).
    let at = (usize::from(split) * rest.len() / 254).min(rest.len());
    let (state, segment) = rest.split_at(at);
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    let _ = std::fs::write(dir.path().join(format!("seg-{:020}.log", 1)), segment);
    if split != 255 {
        let _ = std::fs::write(dir.path().join("outbox.state"), state);
    }
    let cfg = OutboxConfig::default();
    let Ok((mut ob, _)) = Outbox::open(dir.path(), cfg.clone()) else {
        return;
    };
    for stream in [Stream::Telemetry, Stream::Events] {
        let confirmed = ob.confirmed(stream);
        let next = ob.next_seq(stream);
        for (seq, _) in ob.pending(stream) {
            assert!(seq > confirmed && seq < next, "{seq} outside ({confirmed}, {next})");
        }
    }
    let Ok((seq, _)) = ob.append(Stream::Events, 7, b"after the crash") else {
        return;
    };
    if ob.flush().is_err() {
        return;
    }
    drop(ob);
    let (again, _) = Outbox::open(dir.path(), cfg).expect("an outbox it wrote itself opens");
    let kept = again.get(Stream::Events, seq).expect("the appended record survives");
    assert_eq!(kept.payload, b"after the crash");
});
