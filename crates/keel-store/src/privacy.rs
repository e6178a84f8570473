//! What text is kept for an interaction under an app's privacy setting.

use keel_core::{Privacy, StoredText};

use crate::audit::sha256_hex;

/// The text to store for `original` under `privacy`: the original (`Full`), the redacted
/// text when there is one and otherwise the original (`Redacted`), or no text (`None`).
/// The hash is always of the original, so stored records can be matched to it later.
pub fn stored_text(original: &str, redacted: Option<&str>, privacy: Privacy) -> StoredText {
    let text = match privacy {
        Privacy::Full => Some(original.to_owned()),
        Privacy::Redacted => Some(redacted.unwrap_or(original).to_owned()),
        Privacy::None => None,
    };
    StoredText { text, sha256: sha256_hex(original.as_bytes()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO_SHA256: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[test]
    fn full_keeps_the_original() {
        let s = stored_text("hello", Some("[REDACTED]"), Privacy::Full);
        assert_eq!(s.text.as_deref(), Some("hello"));
        assert_eq!(s.sha256, HELLO_SHA256);
    }

    #[test]
    fn redacted_keeps_the_redacted_text_but_hashes_the_original() {
        let s = stored_text("hello", Some("h[X]"), Privacy::Redacted);
        assert_eq!(s.text.as_deref(), Some("h[X]"));
        assert_eq!(s.sha256, HELLO_SHA256);
    }

    #[test]
    fn redacted_without_redaction_keeps_the_original() {
        let s = stored_text("hello", None, Privacy::Redacted);
        assert_eq!(s.text.as_deref(), Some("hello"));
    }

    #[test]
    fn none_keeps_only_the_hash() {
        let s = stored_text("hello", Some("h[X]"), Privacy::None);
        assert_eq!(s.text, None);
        assert_eq!(s.sha256, HELLO_SHA256);
    }
}
