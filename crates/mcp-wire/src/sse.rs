//! Server-Sent Events: an encoder for the streams the gateway serves, and an incremental decoder
//! for the streams upstreams send it.
//!
//! The decoder treats its input as hostile: an event larger than its limit is an error, not an
//! ever-growing buffer.

use bytes::{Buf, BytesMut};

/// One SSE event. `data` is the joined `data:` lines.
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
    for line in data.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.push(b'\n');
    out
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
pub struct Decoder {
    buf: BytesMut,
    current: Event,
    has_data: bool,
    max_event: usize,
    scanned: usize,
}

impl Decoder {
    pub fn new(max_event: usize) -> Decoder {
        Decoder {
            buf: BytesMut::new(),
            current: Event::default(),
            has_data: false,
            max_event,
            scanned: 0,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
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
                if self.buf.len() + self.current.data.len() > self.max_event {
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
                if self.has_data {
                    self.has_data = false;
                    return Ok(Some(std::mem::take(&mut self.current)));
                }
                self.current = Event::default();
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
                        self.current.data.push('\n');
                    }
                    self.current.data.push_str(value);
                    self.has_data = true;
                    if self.current.data.len() > self.max_event {
                        return Err(SseError::TooLarge(self.max_event));
                    }
                }
                "event" => self.current.event = Some(value.to_owned()),
                "id" if !value.contains('\0') => self.current.id = Some(value.to_owned()),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn endless_event_is_an_error() {
        let mut d = Decoder::new(16);
        d.push(b"data: 0123456789");
        assert_eq!(d.next_event().unwrap(), None);
        d.push(b"0123456789");
        assert_eq!(d.next_event().unwrap_err(), SseError::TooLarge(16));
    }
}
