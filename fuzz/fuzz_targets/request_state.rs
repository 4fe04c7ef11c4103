//! `requestState` and the other round-trip fields of a 2026-07-28 retry, as the gateway reads
//! them: the params object through `mcp_wire::RawObject` (`parse`, `get_str("requestState")`,
//! `get_object("inputResponses")`) and rewritten with `set_str` / `to_json_with`.
//!
//! The shape check itself (`check_round_trip_fields`) and the parked-call lookup are private to
//! `palisade::pipeline`; see README.md.
//!
//! Checks:
//! - no panic on any params text;
//! - a parsed object re-serializes to JSON that parses back to the same members, each with
//!   its exact raw bytes, and to the same `serde_json::Value` as the input (or fails to, alike);
//! - `requestState` read as a string, set back, and read again is unchanged, and removing it
//!   with `to_json_with` leaves every other member as it was;
//! - duplicate keys are refused (a second `requestState` cannot hide behind the first).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_wire::RawObject;

fn members(o: &RawObject) -> Vec<(String, String)> {
    o.keys()
        .map(|k| (k.to_owned(), o.get(k).expect("listed key").get().to_owned()))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some(params) = RawObject::parse(text) else {
        // Refused: if it is an object at all, it has a duplicate key.
        if let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(text)
        {
            // serde_json keeps the last duplicate; count the members it saw another way.
            let keys = raw_keys(text);
            assert!(
                keys.len() > map.len(),
                "an object without duplicates was refused: {text:?}"
            );
        }
        return;
    };
    let before = members(&params);
    let json = params.to_json();
    let again = RawObject::parse(&json).expect("own output parses");
    assert_eq!(members(&again), before);
    // Raw values keep numbers serde_json::Value cannot hold (1e400): both sides then fail alike.
    let v1 = serde_json::from_str::<serde_json::Value>(text);
    let v2 = serde_json::from_str::<serde_json::Value>(&json);
    match (v1, v2) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(_), Err(_)) => {}
        (a, b) => panic!("input and re-serialization disagree: {a:?} vs {b:?}\n{text}\n{json}"),
    }

    if let Some(state) = params.get_str("requestState") {
        let mut p = params.clone();
        p.set_str("requestState", &state);
        assert_eq!(p.get_str("requestState").as_deref(), Some(state.as_str()));
        let without = RawObject::parse(&params.to_json_with("requestState", None)).expect("parses");
        let rest: Vec<_> = before
            .iter()
            .filter(|(k, _)| k != "requestState")
            .cloned()
            .collect();
        assert_eq!(members(&without), rest);
        let _ = state.starts_with(palisade::pipeline::PARK_PREFIX);
    }
    if let Some(responses) = params.get_object("inputResponses") {
        for k in responses.keys() {
            let _ = responses.get_object(k);
        }
    }
    let replaced = params.to_json_with("requestState", Some("\"palisade.x\""));
    let r = RawObject::parse(&replaced).expect("replaced parses");
    assert_eq!(r.get_str("requestState").as_deref(), Some("palisade.x"));
});

/// Top-level keys of a JSON object, duplicates included.
fn raw_keys(text: &str) -> Vec<String> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<String>, A::Error> {
            let mut keys = Vec::new();
            while let Some((k, IgnoredAny)) = map.next_entry::<String, IgnoredAny>()? {
                keys.push(k);
            }
            Ok(keys)
        }
    }
    serde_json::Deserializer::from_str(text)
        .deserialize_map(Keys)
        .unwrap_or_default()
}
