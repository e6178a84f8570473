//! Any text given as a labels file is either read or refused naming its file and a line in it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        match keel_adapt::parse_jsonl("fuzz.jsonl", text) {
            Ok(cases) => assert!(cases.len() <= text.lines().count()),
            Err(keel_adapt::AdaptError::Label { file, line, .. }) => {
                assert_eq!(file, "fuzz.jsonl");
                assert!(line >= 1 && line <= text.lines().count().max(1));
            }
            Err(other) => panic!("unexpected error kind: {other}"),
        }
    }
});
