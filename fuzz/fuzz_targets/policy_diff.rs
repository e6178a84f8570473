//! Any two texts given as policy versions are compared or refused with a located error, and
//! a text compared with itself shows no change. A resolved text that compiles compiles to
//! the same policy summary.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (a, b) = text.split_at(text.char_indices().nth(text.chars().count() / 2).map_or(0, |(i, _)| i));
    if let Ok(diff) = keel_policy::diff::diff("a.toml", a, "b.toml", b) {
        let _ = diff.render();
    }
    if let Ok(same) = keel_policy::diff::diff("a.toml", a, "a.toml", a) {
        assert!(same.changes.is_empty() && same.text.is_empty());
    }
    if let (Ok(resolved), Ok(policy)) =
        (keel_policy::resolve::resolve_text("fuzz.toml", text), keel_policy::Policy::parse("fuzz.toml", text))
    {
        let again = keel_policy::Policy::parse("resolved.toml", &resolved).map(|p| p.summary());
        assert_eq!(again.ok(), Some(policy.summary()));
    }
});
