//! Suite files (YAML and JSON lines) from untrusted bytes: parsing must never panic, and a
//! suite that parses must hash the same when parsed again.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for file in ["suite.yaml", "suite.jsonl"] {
        if let Ok(suite) = keel_eval::Suite::parse(file, text) {
            let again = keel_eval::Suite::parse(file, text).map(|s| s.sha256());
            assert_eq!(again.ok(), Some(suite.sha256()));
        }
    }
});
