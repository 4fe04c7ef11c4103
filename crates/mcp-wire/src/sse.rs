//! Server-Sent Events: an encoder for the streams the gateway serves, and an incremental decoder
//! for the streams upstreams send it.
//!
//! The decoder treats its input as hostile: an event larger than its limit is an error, not an
//! ever-growing buffer.

use bytes::{Buf, BytesMut};

/// One SSE event. `data` is the joined `data:` lines; `id` is the stream's last event id when
/// the event was dispatched (an id persists across events, as in `EventSource`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Event {
    pub event: Option<String>,
    pub id: Option<String>,
    pub data: String,
}

/// Encodes one event carrying `data` (one JSON-RPC message). Data containing line breaks (e.g.
/// pretty-printed upstream JSON) is split over several `data:` lines, as SSE requires.
pub fn encode(id: Option<&str>, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 32);
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"event: message\n");
    // SSE ends a line at CR LF, LF or a lone CR: each becomes a `data:` line of its own, so no
    // byte of the message can end a field early (JSON allows CR as whitespace between tokens).
    let mut rest = data;
    loop {
        let end = rest
            .iter()
            .position(|b| *b == b'\n' || *b == b'\r')
            .unwrap_or(rest.len());
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&rest[..end]);
        out.push(b'\n');
        match rest.get(end..end + 2) {
            Some(b"\r\n") => rest = &rest[end + 2..],
            _ if end < rest.len() => rest = &rest[end + 1..],
            _ => break,
        }
    }
    out.push(b'\n');
    out
}

/// The event that opens a resumable stream: its id (so a client that loses the stream at once
/// can still resume it), the reconnection delay, and no data.
pub fn priming(id: &str, retry_ms: u64) -> Vec<u8> {
    format!("id: {id}\nretry: {retry_ms}\ndata: \n\n").into_bytes()
}

/// A comment line, used as a keep-alive.
pub const KEEPALIVE: &[u8] = b": keep-alive\n\n";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SseError {
    #[error("SSE event exceeds the limit of {0} bytes")]
    TooLarge(usize),
    #[error("SSE stream is not valid UTF-8")]
    Utf8,
}

/// Incremental decoder: `push` bytes as they arrive, then take events with `next_event`.
///
/// It keeps what a reconnecting client needs, as `EventSource` does: the last event id (set by
/// any `id:` field, even on an event without data, such as a priming event) and the last
/// `retry:` delay. Comments and unknown fields are ignored; events without data are not
/// dispatched.
pub struct Decoder {
    buf: BytesMut,
    data: String,
    has_data: bool,
    event: Option<String>,
    last_id: Option<String>,
    retry_ms: Option<u64>,
    max_event: usize,
    scanned: usize,
}

impl Decoder {
    pub fn new(max_event: usize) -> Decoder {
        Decoder {
            buf: BytesMut::new(),
            data: String::new(),
            has_data: false,
            event: None,
            last_id: None,
            retry_ms: None,
            max_event,
            scanned: 0,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The last event id the stream set, for `Last-Event-ID` on reconnection.
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    /// The reconnection delay the stream asked for, in milliseconds.
    pub fn retry_ms(&self) -> Option<u64> {
        self.retry_ms
    }

    /// The next complete event, `Ok(None)` if more bytes are needed.
    pub fn next_event(&mut self) -> Result<Option<Event>, SseError> {
        loop {
            let Some(pos) = self.buf[self.scanned..]
                .iter()
                .position(|b| *b == b'\n' || *b == b'\r')
                .map(|p| p + self.scanned)
            else {
                self.scanned = self.buf.len();
                if self.buf.len() + self.data.len() > self.max_event {
                    return Err(SseError::TooLarge(self.max_event));
                }
                return Ok(None);
            };
            // A lone '\r' at the end may be the first half of "\r\n": wait for more.
            let mut eol = 1;
            if self.buf[pos] == b'\r' {
                if pos + 1 == self.buf.len() {
                    self.scanned = pos;
                    return Ok(None);
                }
                if self.buf[pos + 1] == b'\n' {
                    eol = 2;
                }
            }
            let line = self.buf.split_to(pos);
            self.buf.advance(eol);
            self.scanned = 0;
            let line = std::str::from_utf8(&line).map_err(|_| SseError::Utf8)?;
            if line.is_empty() {
                let event = self.event.take();
                if std::mem::take(&mut self.has_data) {
                    return Ok(Some(Event {
                        event,
                        id: self.last_id.clone(),
                        data: std::mem::take(&mut self.data),
                    }));
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            };
            match field {
                "data" => {
                    if self.has_data {
                        self.data.push('\n');
                    }
                    self.data.push_str(value);
                    self.has_data = true;
                    if self.data.len() > self.max_event {
                        return Err(SseError::TooLarge(self.max_event));
                    }
                }
                "event" => self.event = Some(value.to_owned()),
                "id" if !value.contains('\0') => self.last_id = Some(value.to_owned()),
                "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                    self.retry_ms = value.parse().ok();
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carriage_returns_in_a_message_do_not_break_its_event() {
        let message = b"{\"a\":1,\r\"b\":[2,\r\n3],\n\"c\":\"x\\ry\"}";
        let encoded = encode(Some("7"), message);
        assert!(
            !encoded.windows(2).any(|w| w[0] == b'\r'),
            "no CR on the wire"
        );
        let mut d = Decoder::new(1024);
        d.push(&encoded);
        let event = d.next_event().unwrap().unwrap();
        assert_eq!(event.id.as_deref(), Some("7"));
        let decoded: serde_json::Value = serde_json::from_str(&event.data).unwrap();
        let original: serde_json::Value = serde_json::from_slice(message).unwrap();
        assert_eq!(decoded, original);
        assert_eq!(d.next_event().unwrap(), None, "one event, not several");
    }

    #[test]
    fn decodes_split_input_and_line_endings() {
        let mut d = Decoder::new(1024);
        d.push(b": hi\r\nid: 1\r\ndata: {\"a\":\r");
        assert_eq!(d.next_event().unwrap(), None);
        d.push(b"\ndata: 1}\r\n\r\nevent: message\ndata: x\n\n");
        let e = d.next_event().unwrap().unwrap();
        assert_eq!(e.id.as_deref(), Some("1"));
        assert_eq!(e.data, "{\"a\":\n1}");
        let e = d.next_event().unwrap().unwrap();
        assert_eq!(e.data, "x");
        assert_eq!(d.next_event().unwrap(), None);
    }

    #[test]
    fn round_trips_multiline_data() {
        let mut d = Decoder::new(1024);
        d.push(&encode(Some("7"), b"{\n  \"a\": 1\n}"));
        let e = d.next_event().unwrap().unwrap();
        assert_eq!(e.data, "{\n  \"a\": 1\n}");
        assert_eq!(e.id.as_deref(), Some("7"));
    }

    #[test]
    fn remembers_the_last_id_and_retry_across_events() {
        let mut d = Decoder::new(1024);
        // A priming event (id and retry, empty data), a comment, an event that spans two data
        // lines, and an event without an id of its own.
        d.push(&priming("s1_0", 250));
        d.push(b": ping\n\nid: s1_1\ndata: {\"a\":\ndata: 2}\n\nevent: message\ndata: {}\n\n");
        let e = d.next_event().unwrap().unwrap();
        assert_eq!(e.data, "", "a priming event is dispatched with empty data");
        assert_eq!(e.id.as_deref(), Some("s1_0"));
        let e = d.next_event().unwrap().unwrap();
        assert_eq!(
            (e.id.as_deref(), e.data.as_str()),
            (Some("s1_1"), "{\"a\":\n2}")
        );
        let e = d.next_event().unwrap().unwrap();
        assert_eq!(e.id.as_deref(), Some("s1_1"), "an id persists");
        assert_eq!(d.retry_ms(), Some(250));
        // An id alone is remembered without dispatching anything.
        d.push(b"id: s1_9\n\nretry: x\n\n");
        assert_eq!(d.next_event().unwrap(), None);
        assert_eq!(d.last_event_id(), Some("s1_9"));
        assert_eq!(
            d.retry_ms(),
            Some(250),
            "a retry that is not a number is ignored"
        );
    }

    #[test]
    fn endless_event_is_an_error() {
        let mut d = Decoder::new(16);
        d.push(b"data: 0123456789");
        assert_eq!(d.next_event().unwrap(), None);
        d.push(b"0123456789");
        assert_eq!(d.next_event().unwrap_err(), SseError::TooLarge(16));
    }
}
