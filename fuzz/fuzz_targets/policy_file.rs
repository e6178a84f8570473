//! Any text given as a policy file is either compiled or refused with a located error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(error) = keel_policy::Policy::parse("fuzz.toml", text) {
            if let Some(line) = error.line {
                assert!(line >= 1 && line <= text.lines().count().max(1) + 1);
            }
        }
    }
});
