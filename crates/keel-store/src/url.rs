//! Database URLs: which backend a URL names, and how to show one without its secrets.

use std::fmt;

/// The storage backends a database URL can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `sqlite://PATH`, `sqlite:PATH` or `sqlite::memory:`.
    Sqlite,
    /// `postgres://…` or `postgresql://…` (planned).
    Postgres,
}

impl Backend {
    /// The backend a URL names, by its scheme, or `None` for an unknown scheme.
    pub fn of_url(url: &str) -> Option<Self> {
        let scheme = url.split_once(':').map(|(s, _)| s.to_ascii_lowercase())?;
        match scheme.as_str() {
            "sqlite" => Some(Backend::Sqlite),
            "postgres" | "postgresql" => Some(Backend::Postgres),
            _ => None,
        }
    }
}

/// The URL with any password or user name and any query string replaced, safe for logs and
/// error messages: `postgres://keel:secret@db:5432/keel?sslmode=require` becomes
/// `postgres://***@db:5432/keel?***`.
pub fn redact_url(url: &str) -> String {
    let (base, had_query) = match url.find(['?', '#']) {
        Some(i) => (&url[..i], true),
        None => (url, false),
    };
    let mut out = match base.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, ""),
            };
            match authority.rfind('@') {
                Some(i) => format!("{scheme}://***@{}{path}", &authority[i + 1..]),
                None => base.to_owned(),
            }
        }
        None => base.to_owned(),
    };
    if had_query {
        out.push_str("?***");
    }
    out
}

/// A database URL that shows only its redacted form in `Debug` and `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct RedactedUrl(String);

impl RedactedUrl {
    /// Wraps a URL; only [`redact_url`]'s form of it is kept.
    pub fn new(url: &str) -> Self {
        Self(redact_url(url))
    }

    /// The redacted text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RedactedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for RedactedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_query_are_hidden() {
        assert_eq!(
            redact_url("postgres://keel:secret@db:5432/keel?sslmode=require"),
            "postgres://***@db:5432/keel?***"
        );
        assert_eq!(redact_url("postgresql://user@db/keel"), "postgresql://***@db/keel");
    }

    #[test]
    fn sqlite_paths_stay_readable() {
        assert_eq!(redact_url("sqlite://data/keel.db"), "sqlite://data/keel.db");
        assert_eq!(redact_url("sqlite::memory:"), "sqlite::memory:");
    }

    #[test]
    fn debug_shows_only_the_redacted_form() {
        let url = RedactedUrl::new("postgres://a:hunter2@h/db");
        assert!(!format!("{url:?}").contains("hunter2"));
    }

    #[test]
    fn backend_is_chosen_by_scheme() {
        assert_eq!(Backend::of_url("sqlite://x.db"), Some(Backend::Sqlite));
        assert_eq!(Backend::of_url("sqlite::memory:"), Some(Backend::Sqlite));
        assert_eq!(Backend::of_url("POSTGRES://h/db"), Some(Backend::Postgres));
        assert_eq!(Backend::of_url("mysql://h/db"), None);
        assert_eq!(Backend::of_url("keel.db"), None);
    }
}
