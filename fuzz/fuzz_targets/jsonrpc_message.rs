//! JSON-RPC envelopes: `mcp_wire::Message::parse` (every POST body and every upstream message)
//! and the nesting pre-check `mcp_wire::jsonrpc::nests_deeper_than`.
//!
//! Checks:
//! - neither panics;
//! - `nests_deeper_than` is exact on valid JSON (depth d: deeper than d-1, not deeper than d)
//!   and monotonic in its limit on any bytes;
//! - a parsed message rebuilt with the crate's own builders (`request`, `notification`,
//!   `result`, `error_raw`) parses back to the same kind, id bytes, method and raw params/result;
//! - the error class is consistent: valid JSON is never a parse error (-32700), a batch error
//!   only for input starting with `[`, and every error maps to -32700 or -32600.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_wire::jsonrpc::{self, nests_deeper_than};
use mcp_wire::{ErrorCode, Message, WireError};

fn depth(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn rebuild(msg: &Message) -> Vec<u8> {
    match msg {
        Message::Request(r) => {
            jsonrpc::request(&r.id, &r.method, r.params.as_deref().map(|p| p.get()))
        }
        Message::Notification(n) => {
            jsonrpc::notification(&n.method, n.params.as_deref().map(|p| p.get()))
        }
        Message::Response(r) => match &r.outcome {
            Ok(result) => jsonrpc::result(r.id.as_ref().expect("a result has an id"), result.get()),
            Err(error) => jsonrpc::error_raw(r.id.as_ref(), error.get()),
        },
    }
}

fn same(a: &Message, b: &Message) -> bool {
    let raw =
        |p: &Option<Box<serde_json::value::RawValue>>| p.as_deref().map(|p| p.get().to_owned());
    match (a, b) {
        (Message::Request(x), Message::Request(y)) => {
            x.id == y.id && x.method == y.method && raw(&x.params) == raw(&y.params)
        }
        (Message::Notification(x), Message::Notification(y)) => {
            x.method == y.method && raw(&x.params) == raw(&y.params)
        }
        (Message::Response(x), Message::Response(y)) => {
            x.id == y.id
                && match (&x.outcome, &y.outcome) {
                    (Ok(p), Ok(q)) | (Err(p), Err(q)) => p.get() == q.get(),
                    _ => false,
                }
        }
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    // The nesting scan.
    let limits = [0usize, 1, 2, 8, 64];
    let deeper: Vec<bool> = limits.iter().map(|l| nests_deeper_than(data, *l)).collect();
    for w in deeper.windows(2) {
        assert!(
            w[0] || !w[1],
            "nests_deeper_than is not monotonic in its limit"
        );
    }
    assert!(!nests_deeper_than(data, usize::MAX));
    let value = serde_json::from_slice::<serde_json::Value>(data).ok();
    if let Some(v) = &value {
        let d = depth(v);
        assert!(
            !nests_deeper_than(data, d),
            "valid JSON of depth {d} reported deeper"
        );
        if d > 0 {
            assert!(
                nests_deeper_than(data, d - 1),
                "valid JSON of depth {d} not deeper than {}",
                d - 1
            );
        }
    }

    // The envelope.
    match Message::parse(data) {
        Ok(msg) => {
            let bytes = rebuild(&msg);
            let again = Message::parse(&bytes).unwrap_or_else(|e| {
                panic!(
                    "rebuilt message does not parse: {e}: {}",
                    String::from_utf8_lossy(&bytes)
                )
            });
            assert!(
                same(&msg, &again),
                "rebuilt message differs: {msg:?} vs {again:?}"
            );
            if let Message::Request(r) = &msg {
                assert_eq!(msg.request_id(), Some(&r.id));
                // Ids keep their bytes and are strings or integers.
                let id = r.id.as_json();
                assert!(id.starts_with('"') || id.bytes().all(|b| b == b'-' || b.is_ascii_digit()));
            }
        }
        Err(e) => {
            assert!(e.code() == ErrorCode::PARSE_ERROR || e.code() == ErrorCode::INVALID_REQUEST);
            if value.is_some() {
                assert!(
                    !matches!(e, WireError::Parse(_)),
                    "valid JSON classified as a parse error: {e}"
                );
            }
            if e == WireError::Batch {
                assert_eq!(data.iter().find(|b| !b.is_ascii_whitespace()), Some(&b'['));
            }
            // The error response the gateway would send is itself a valid message.
            let reply = jsonrpc::error(None, e.code(), &e.to_string(), None);
            assert!(matches!(Message::parse(&reply), Ok(Message::Response(_))));
        }
    }

    // Builders with an arbitrary method and string id.
    if let Ok(s) = std::str::from_utf8(data)
        && s.len() <= 256
    {
        let id = mcp_wire::Id::string(s);
        let bytes = jsonrpc::request(&id, s, Some("{}"));
        match Message::parse(&bytes) {
            Ok(Message::Request(r)) => {
                assert_eq!(r.id, id);
                assert_eq!(r.method, s);
            }
            other => panic!("request builder output parses as {other:?}"),
        }
    }
});
