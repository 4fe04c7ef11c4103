//! The stdio line framing `mcp_wire::lines::Lines` (what every stdio upstream writes).
//!
//! Input: byte 0 picks the limit (1..=64), byte 1 the mode and seeds the chunk sizes, the rest
//! is the stream.
//!
//! Checks:
//! - no panic, whatever the bytes and however they are split;
//! - the stream given in 1..16-byte chunks yields the same lines (and the same refusal) as
//!   given whole;
//! - no line is longer than the limit, and the buffer never holds more than the limit, a `\r`
//!   and the last chunk;
//! - refusing: the lines are exactly the stream's leading `\n`-separated lines with one trailing
//!   `\r` removed, stopping at the first one over the limit; truncating: the same lines each cut
//!   to the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_wire::lines::{Lines, OverLong, TooLong};

fn split(data: &[u8], max: usize, mode: OverLong, seed: u8) -> (Vec<Vec<u8>>, Option<TooLong>) {
    let mut lines = Lines::new(max, mode);
    let mut out = Vec::new();
    let mut rest = data;
    let mut s = seed as usize;
    loop {
        loop {
            match lines.next_line() {
                Ok(Some(l)) => {
                    assert!(l.len() <= max, "a line over the limit");
                    out.push(l.to_vec());
                }
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
        if rest.is_empty() {
            break;
        }
        let n = if seed == 0 { rest.len() } else { 1 + s % 16 };
        s = s.wrapping_mul(31).wrapping_add(7);
        let (chunk, tail) = rest.split_at(n.min(rest.len()));
        lines.push(chunk);
        assert!(
            lines.buffered() <= max + 1 + chunk.len(),
            "the buffer grew past the limit"
        );
        rest = tail;
    }
    match lines.finish() {
        Ok(last) => out.extend(last.map(|l| l.to_vec())),
        Err(e) => return (out, Some(e)),
    }
    (out, None)
}

/// What the framing must produce, computed the plain way.
fn reference(data: &[u8], max: usize, mode: OverLong) -> (Vec<Vec<u8>>, Option<TooLong>) {
    let mut out = Vec::new();
    let mut parts: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
    // The piece after the last newline is a line only if it is not empty.
    if parts.last().is_some_and(|p| p.is_empty()) {
        parts.pop();
    }
    let complete = data.iter().filter(|b| **b == b'\n').count();
    for (i, part) in parts.into_iter().enumerate() {
        let mut line = part;
        if i < complete && line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        if line.len() > max {
            if mode == OverLong::Refuse {
                return (out, Some(TooLong { max }));
            }
            line = &line[..max];
        }
        out.push(line.to_vec());
    }
    (out, None)
}

fuzz_target!(|data: &[u8]| {
    let [limit, seed, stream @ ..] = data else {
        return;
    };
    let max = 1 + (*limit as usize % 64);
    let mode = if seed & 1 == 0 {
        OverLong::Refuse
    } else {
        OverLong::Truncate
    };
    let whole = split(stream, max, mode, 0);
    let chunked = split(stream, max, mode, seed | 1);
    let want = reference(stream, max, mode);
    if mode == OverLong::Truncate || whole.1.is_none() {
        assert_eq!(whole, want, "the whole stream differs from the reference");
        assert_eq!(
            chunked, want,
            "the chunked stream differs from the reference"
        );
    } else {
        // A refusal may come as soon as the unfinished line passes the limit, before its
        // newline: the lines before it are the same either way.
        assert_eq!(whole.1, want.1);
        assert_eq!(chunked.1, want.1);
        assert_eq!(whole.0, want.0);
        assert_eq!(chunked.0, want.0);
    }
});
