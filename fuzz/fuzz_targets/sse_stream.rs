//! The SSE parser yields the same events however the bytes are split, and never panics.
#![no_main]

use keel_gateway::sse::SseParser;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, bytes)) = data.split_first() else { return };
    let mut whole = SseParser::new();
    let expected = whole.push(bytes).map(|mut events| {
        events.extend(whole.finish().ok().flatten());
        events
    });
    let mut pieces = SseParser::new();
    let step = usize::from(split).max(1);
    let mut events = Vec::new();
    let mut failed = false;
    for chunk in bytes.chunks(step) {
        match pieces.push(chunk) {
            Ok(e) => events.extend(e),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    if !failed {
        events.extend(pieces.finish().ok().flatten());
    }
    if let (Ok(expected), false) = (expected, failed) {
        assert_eq!(expected, events);
    }
});
