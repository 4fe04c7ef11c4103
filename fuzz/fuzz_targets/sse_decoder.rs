//! The SSE decoder `mcp_wire::sse::Decoder` (upstream event streams) and its encoder.
//!
//! Input: byte 0 picks the event limit, byte 1 seeds the chunk sizes, the rest is the stream.
//!
//! Checks:
//! - no panic, whatever the bytes and however they are split;
//! - the stream given in arbitrary chunks yields the same events, last event id and retry as
//!   given whole; when one of the two stops with an error, its events are a prefix of the
//!   other's (a line over the limit can be refused while still incomplete in one and after its
//!   end in the other);
//! - no event's data is longer than the limit;
//! - `encode(id, data)` decodes to exactly that event, with the data's line endings (CR LF,
//!   LF, lone CR) as LF and nothing else changed (id without CR/LF/NUL),
//!   and `priming(id, retry)` to an empty event carrying the id and the retry.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_wire::sse::{self, Decoder, Event, SseError};

struct Outcome {
    events: Vec<Event>,
    error: Option<SseError>,
    last_id: Option<String>,
    retry: Option<u64>,
}

fn drain(d: &mut Decoder, events: &mut Vec<Event>) -> Result<(), SseError> {
    while let Some(e) = d.next_event()? {
        events.push(e);
    }
    Ok(())
}

fn decode(stream: &[u8], max: usize, chunks: impl Iterator<Item = usize>) -> Outcome {
    let mut d = Decoder::new(max);
    let mut events = Vec::new();
    let mut rest = stream;
    let mut error = None;
    let mut sizes = chunks;
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        d.push(chunk);
        if let Err(e) = drain(&mut d, &mut events) {
            error = Some(e);
            break;
        }
    }
    if rest.is_empty() && error.is_none() {
        // One more call with nothing new must not change anything.
        if let Err(e) = drain(&mut d, &mut events) {
            error = Some(e);
        }
    }
    Outcome {
        events,
        error,
        last_id: d.last_event_id().map(str::to_owned),
        retry: d.retry_ms(),
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let max = 1 + (data[0] as usize) * 16;
    let seed = data[1] as usize;
    let stream = &data[2..];

    let whole = decode(stream, max, std::iter::empty());
    // Chunk sizes cycle through 1..=8 from the seed; a seed of 0 feeds byte by byte.
    let chunked = decode(
        stream,
        max,
        (0..).map(move |i| {
            if seed == 0 {
                1
            } else {
                1 + (seed * 7 + i * 13) % 8
            }
        }),
    );

    for o in [&whole, &chunked] {
        for e in &o.events {
            assert!(
                e.data.len() <= max,
                "event data of {} bytes over the limit {max}",
                e.data.len()
            );
        }
    }
    match (&whole.error, &chunked.error) {
        (None, None) => {
            assert_eq!(whole.events, chunked.events, "chunking changed the events");
            assert_eq!(whole.last_id, chunked.last_id);
            assert_eq!(whole.retry, chunked.retry);
        }
        (Some(_), _) if whole.events.len() <= chunked.events.len() => {
            assert_eq!(whole.events[..], chunked.events[..whole.events.len()]);
        }
        (_, Some(_)) if chunked.events.len() <= whole.events.len() => {
            assert_eq!(chunked.events[..], whole.events[..chunked.events.len()]);
        }
        (w, c) => panic!(
            "the run that stopped with an error ({w:?} / {c:?}) has more events than the other"
        ),
    }

    // Encoder round trip: the stream's text as data, a prefix of it as the id.
    if let Ok(text) = std::str::from_utf8(stream) {
        // Every line ending in the data (CR LF, LF, lone CR) comes back as LF.
        let data_text = text.to_owned();
        let expected = data_text.replace("\r\n", "\n").replace('\r', "\n");
        let id: String = text
            .chars()
            .take(16)
            .filter(|c| !matches!(c, '\r' | '\n' | '\0'))
            .collect();
        let mut d = Decoder::new(data_text.len() + 64);
        d.push(&sse::encode(Some(&id), data_text.as_bytes()));
        let e = d
            .next_event()
            .expect("encoded event decodes")
            .expect("one event");
        assert_eq!(e.data, expected);
        assert_eq!(e.id.as_deref(), Some(id.as_str()));
        assert_eq!(e.event.as_deref(), Some("message"));
        assert_eq!(d.next_event(), Ok(None));

        let retry = u64::from(data[1]) * 1000;
        let mut d = Decoder::new(64);
        d.push(&sse::priming(&id, retry));
        let e = d
            .next_event()
            .expect("priming decodes")
            .expect("priming is an event");
        assert_eq!(e.data, "");
        assert_eq!(e.id.as_deref(), Some(id.as_str()));
        assert_eq!(d.retry_ms(), Some(retry));
    }
});
