//! Fuzzes the signed-command decoders: a command as it travels, its body (an update's offer
//! among them), a terminal's answer, and a signed release with its manifest.
//! Whatever decodes must re-encode to bytes that decode to the same value.
#![no_main]

use cuntong_core::command::{CommandResult, SignedCommand};
use cuntong_core::envelope::encode;
use cuntong_core::update::SignedRelease;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(cmd) = SignedCommand::decode(data) {
        let again = encode(&cmd).expect("a decoded command encodes");
        assert_eq!(SignedCommand::decode(&again), Ok(cmd.clone()));
        if let Ok(body) = cmd.body() {
            let _ = body.lifetime_ms();
            let again = encode(&body).expect("a decoded body encodes");
            assert_eq!(SignedCommand { body: again, signature: Vec::new() }.body(), Ok(body));
        }
    }
    if let Ok(release) = SignedRelease::decode(data) {
        let again = encode(&release).expect("a decoded release encodes");
        assert_eq!(SignedRelease::decode(&again), Ok(release.clone()));
        if let Ok(manifest) = release.manifest() {
            let again = encode(&manifest).expect("a decoded manifest encodes");
            assert_eq!(SignedRelease { manifest: again, signature: Vec::new() }.manifest(), Ok(manifest));
        }
    }
    if let Ok(result) = CommandResult::decode(data) {
        let again = encode(&result).expect("a decoded result encodes");
        assert_eq!(CommandResult::decode(&again), Ok(result));
    }
});
