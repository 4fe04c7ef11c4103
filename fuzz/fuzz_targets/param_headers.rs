//! `Mcp-Param-*` headers: `mcp_wire::param_headers::{annotations, encode, decode, check}`.
//!
//! Input fields (split at NUL): a tool definition (JSON), the call's arguments (a JSON object),
//! a raw header value.
//!
//! Checks:
//! - nothing panics on any tool, arguments or header value;
//! - `decode(encode(v))` gives back the text the argument stands for (the string itself, or
//!   the JSON text of any other value);
//! - a client that mirrors every annotated argument with `encode` passes `check` (what the
//!   gateway sends upstream is what an upstream doing the same check accepts), and dropping a
//!   header of a present argument fails it.
//!
//! The first finding (fuzz/README.md): a string of the form `=?base64?…?=` was sent as it is;
//! `encode` now encodes it, and `artifacts/param_headers/` holds the inputs that showed it.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use mcp_wire::RawObject;
use mcp_wire::param_headers::{annotations, check, decode, encode};
use palisade_fuzz::{fields, text};
use serde_json::Value;

fn plain(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fuzz_target!(|data: &[u8]| {
    let f = fields(data, 3);
    let (tool, args, header) = (text(f[0]), text(f[1]), text(f[2]));

    // A raw header value: decoding never panics, and a decoded value re-encodes to something
    // that decodes to it again.
    if let Ok(decoded) = decode(&header) {
        let again = encode(&Value::String(decoded.clone())).expect("a string encodes");
        assert_eq!(decode(&again).as_ref(), Ok(&decoded), "header {header:?}");
    }

    // Any JSON value as an argument.
    for candidate in [&args, &header] {
        if let Ok(v) = serde_json::from_str::<Value>(candidate) {
            match encode(&v) {
                None => assert!(v.is_null()),
                Some(h) => {
                    assert_eq!(
                        decode(&h),
                        Ok(plain(&v).unwrap_or_default()),
                        "value {v} sent as {h:?}"
                    );
                }
            }
        }
    }
    let as_string = Value::String(header.clone());
    let h = encode(&as_string).expect("a string encodes");
    assert_eq!(
        decode(&h),
        Ok(header.clone()),
        "string {header:?} sent as {h:?}"
    );

    // The check, with headers mirrored the way a client does it.
    let params = annotations(&tool);
    for p in &params {
        assert!(!p.header.is_empty());
    }
    let Some(arguments) = RawObject::parse(&args) else {
        let _ = check(&params, None, |_| None);
        return;
    };
    let mut names = HashMap::new();
    let mut assert_mirror = true;
    for p in &params {
        let parsed = arguments
            .get(&p.property)
            .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok());
        let value = parsed.and_then(|v| encode(&v));
        if names.insert(p.header.clone(), value).is_some() {
            assert_mirror = false;
        }
    }
    let mirrored = check(&params, Some(&arguments), |name| {
        names.get(name).and_then(|v| v.as_deref())
    });
    if assert_mirror {
        assert_eq!(
            mirrored,
            Ok(()),
            "mirrored headers refused; tool {tool:?}, arguments {args:?}"
        );
        // Without the headers, a present argument is refused.
        let present = params.iter().any(|p| {
            arguments
                .get(&p.property)
                .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok())
                .is_some_and(|v| !v.is_null())
        });
        assert_eq!(check(&params, Some(&arguments), |_| None).is_err(), present);
    }
    // An arbitrary header value for every annotation: no panic.
    let _ = check(&params, Some(&arguments), |_| Some(header.as_str()));
});
