//! Any text as a terminal's configuration file: read or refused with an error that names what
//! and where, never a panic.
#![no_main]

use cuntong_terminal::config::TerminalConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = TerminalConfig::parse(text, std::path::Path::new("fuzz.toml")) {
        assert!(!e.to_string().is_empty());
    }
});
