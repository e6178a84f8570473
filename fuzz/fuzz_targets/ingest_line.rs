//! The ingest line parser never panics, and a line it accepts always names a model and a time
//! that can be stored, and parses to the same interaction (same derived id) every time.
#![no_main]

use keel_gateway::ingest::parse_line;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match parse_line(text) {
        Ok(line) => {
            assert!(!line.model.is_empty());
            assert!((1970..=2200).contains(&line.timestamp.year()));
            if let Some(f) = &line.feedback {
                assert!(f.satisfaction.is_none_or(|s| (1..=5).contains(&s)));
            }
            assert_eq!(parse_line(text).map(|again| again.id).ok(), Some(line.id));
        }
        Err(e) => {
            if let Some(field) = &e.field {
                assert!(e.message.starts_with(field.as_str()), "{}", e.message);
            }
        }
    }
});
