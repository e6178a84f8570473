//! An incremental parser for the server-sent events an upstream streams.
//!
//! Bytes arrive in arbitrary pieces (a line, a UTF-8 character or a `\r\n` may be split);
//! the parser buffers until an event is complete and yields each event's `data`, joined
//! with `\n` when an event has several data lines, as the SSE spec says. Comments, `event:`,
//! `id:` and `retry:` lines are skipped: OpenAI-compatible streams carry everything in data.

/// Collects SSE bytes and yields complete events' data.
#[derive(Debug, Default)]
pub struct SseParser {
    buffer: Vec<u8>,
    data: Option<String>,
}

/// Upper bound for one event, so a peer that never ends a line cannot grow memory forever.
pub const MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;

/// The stream broke the SSE format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// An event grew past [`MAX_EVENT_BYTES`].
    #[error("an event exceeds {MAX_EVENT_BYTES} bytes")]
    TooLarge,
    /// A line is not valid UTF-8.
    #[error("the stream is not valid UTF-8")]
    InvalidUtf8,
}

impl SseParser {
    /// A parser with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; returns the data of every event completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<String>, SseError> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut consumed = 0;
        while let Some(pos) = self.buffer[consumed..].iter().position(|b| *b == b'\n' || *b == b'\r') {
            let end = consumed + pos;
            // A `\r` at the very end may be the first half of `\r\n`: wait for more bytes.
            if self.buffer[end] == b'\r' && end + 1 == self.buffer.len() {
                break;
            }
            let line = std::str::from_utf8(&self.buffer[consumed..end]).map_err(|_| SseError::InvalidUtf8)?;
            handle_line(&mut self.data, line, &mut events);
            consumed = end + 1;
            if self.buffer[end] == b'\r' && self.buffer.get(end + 1) == Some(&b'\n') {
                consumed += 1;
            }
        }
        self.buffer.drain(..consumed);
        if self.buffer.len() + self.data.as_ref().map_or(0, String::len) > MAX_EVENT_BYTES {
            return Err(SseError::TooLarge);
        }
        Ok(events)
    }

    /// Ends the stream: an event not terminated by a blank line is still delivered.
    pub fn finish(&mut self) -> Result<Option<String>, SseError> {
        let mut events = Vec::new();
        if !self.buffer.is_empty() {
            let rest = std::mem::take(&mut self.buffer);
            let line = std::str::from_utf8(&rest).map_err(|_| SseError::InvalidUtf8)?;
            let line = line.trim_end_matches('\r').to_string();
            handle_line(&mut self.data, &line, &mut events);
        }
        Ok(events.pop().or_else(|| self.data.take()))
    }
}

/// Applies one line to the event being collected, completing it on a blank line.
fn handle_line(data: &mut Option<String>, line: &str, events: &mut Vec<String>) {
    if line.is_empty() {
        if let Some(complete) = data.take() {
            events.push(complete);
        }
        return;
    }
    if line.starts_with(':') {
        return;
    }
    let (field, value) = match line.split_once(':') {
        Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
        None => (line, ""),
    };
    if field == "data" {
        match data {
            Some(existing) => {
                existing.push('\n');
                existing.push_str(value);
            }
            None => *data = Some(value.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_all(pieces: &[&[u8]]) -> Vec<String> {
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        for piece in pieces {
            out.extend(parser.push(piece).unwrap());
        }
        out.extend(parser.finish().unwrap());
        out
    }

    #[test]
    fn parses_events_and_skips_comments_and_other_fields() {
        let input = b": keep-alive\nevent: message\nid: 1\ndata: {\"a\":1}\n\ndata: [DONE]\n\n";
        assert_eq!(parse_all(&[input]), vec!["{\"a\":1}", "[DONE]"]);
    }

    #[test]
    fn joins_multi_line_data_and_handles_crlf() {
        let input = b"data: one\r\ndata: two\r\n\r\ndata:three\r\n\r\n";
        assert_eq!(parse_all(&[input]), vec!["one\ntwo", "three"]);
    }

    #[test]
    fn delivers_an_unterminated_last_event() {
        assert_eq!(parse_all(&[b"data: last"]), vec!["last"]);
    }

    #[test]
    fn rejects_invalid_utf8() {
        let mut parser = SseParser::new();
        assert_eq!(parser.push(b"data: \xff\n\n"), Err(SseError::InvalidUtf8));
    }

    proptest! {
        #[test]
        fn any_split_gives_the_same_events(
            payloads in proptest::collection::vec("[a-zA-Z0-9 {}\":,日本]{0,30}", 1..8),
            crlf in any::<bool>(),
            cuts in proptest::collection::vec(1usize..9, 1..64),
        ) {
            let nl = if crlf { "\r\n" } else { "\n" };
            let text: String = payloads.iter().map(|p| format!("data: {p}{nl}{nl}")).collect();
            let bytes = text.as_bytes();
            let mut pieces = Vec::new();
            let mut at = 0;
            for c in cuts.iter().cycle() {
                if at >= bytes.len() { break; }
                let end = (at + c).min(bytes.len());
                pieces.push(&bytes[at..end]);
                at = end;
            }
            prop_assert_eq!(parse_all(&pieces), payloads);
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut parser = SseParser::new();
            let _ = parser.push(&bytes);
            let _ = parser.finish();
        }
    }
}
