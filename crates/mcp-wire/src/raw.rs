//! [`RawObject`]: a JSON object whose members stay raw, for the few rewrites the gateway owns.
//!
//! Parsing keeps member order and each value's exact bytes; only the top level is re-serialized.
//! A tool call's `arguments`, for example, is forwarded byte for byte while `name` is rewritten.

use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

#[derive(Debug, Default, Clone)]
pub struct RawObject {
    members: Vec<(String, Box<RawValue>)>,
}

impl RawObject {
    /// Parses a JSON object; `None` if the text is not an object (or has duplicate keys).
    pub fn parse(text: &str) -> Option<RawObject> {
        let mut de = serde_json::Deserializer::from_str(text);
        let obj = de.deserialize_map(ObjVisitor).ok()?;
        de.end().ok()?;
        let mut keys: Vec<&str> = obj.members.iter().map(|(k, _)| k.as_str()).collect();
        keys.sort_unstable();
        if keys.windows(2).any(|w| w[0] == w[1]) {
            return None;
        }
        Some(obj)
    }

    pub fn get(&self, key: &str) -> Option<&RawValue> {
        self.members
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_ref())
    }

    /// The member as a string, if it is one.
    pub fn get_str(&self, key: &str) -> Option<String> {
        serde_json::from_str::<String>(self.get(key)?.get()).ok()
    }

    /// The member as a nested object, if it is one.
    pub fn get_object(&self, key: &str) -> Option<RawObject> {
        RawObject::parse(self.get(key)?.get())
    }

    /// Sets (replacing in place, or appending) a member to raw JSON text that is known valid.
    pub fn set_raw(&mut self, key: &str, value: Box<RawValue>) {
        match self.members.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.members.push((key.to_owned(), value)),
        }
    }

    pub fn set_str(&mut self, key: &str, value: &str) {
        if let Ok(raw) = serde_json::value::to_raw_value(value) {
            self.set_raw(key, raw);
        }
    }

    pub fn set_object(&mut self, key: &str, value: &RawObject) {
        self.set_raw(key, value.to_raw());
    }

    pub fn remove(&mut self, key: &str) -> Option<Box<RawValue>> {
        let pos = self.members.iter().position(|(k, _)| k == key)?;
        Some(self.members.remove(pos).1)
    }

    /// Removes every member whose key satisfies `pred`.
    pub fn retain_keys(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.members.retain(|(k, _)| keep(k));
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.members.iter().map(|(k, _)| k.as_str())
    }

    pub fn to_json(&self) -> String {
        self.write(None)
    }

    /// The JSON text with member `key` set to raw JSON `value` (replaced in place, or appended),
    /// or left out when `value` is `None`; `self` is unchanged, so nothing is copied twice.
    pub fn to_json_with(&self, key: &str, value: Option<&str>) -> String {
        self.write(Some((key, value)))
    }

    fn write(&self, replace: Option<(&str, Option<&str>)>) -> String {
        let extra = replace
            .and_then(|(k, v)| v.map(|v| k.len() + v.len() + 4))
            .unwrap_or(0);
        let size: usize = self
            .members
            .iter()
            .map(|(k, v)| k.len() + v.get().len() + 4)
            .sum();
        let mut out = String::with_capacity(2 + size + extra);
        let mut first = true;
        let mut member = |out: &mut String, k: &str, v: &str| {
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(&serde_json::to_string(k).unwrap_or_default());
            out.push(':');
            out.push_str(v);
        };
        out.push('{');
        let mut replaced = false;
        for (k, v) in &self.members {
            match replace {
                Some((key, value)) if key == k => {
                    replaced = true;
                    if let Some(value) = value {
                        member(&mut out, k, value);
                    }
                }
                _ => member(&mut out, k, v.get()),
            }
        }
        if let (Some((key, Some(value))), false) = (replace, replaced) {
            member(&mut out, key, value);
        }
        out.push('}');
        out
    }

    pub fn to_raw(&self) -> Box<RawValue> {
        // The text is built from valid parts, so this cannot fail; fall back to `{}` regardless.
        RawValue::from_string(self.to_json())
            .unwrap_or_else(|_| RawValue::from_string("{}".into()).unwrap_or_default())
    }
}

struct ObjVisitor;

impl<'de> Visitor<'de> for ObjVisitor {
    type Value = RawObject;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawObject, A::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(4));
        while let Some((k, v)) = map.next_entry::<String, Box<RawValue>>()? {
            members.push((k, v));
        }
        Ok(RawObject { members })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_keeps_other_bytes_and_order() {
        let mut o =
            RawObject::parse(r#"{"name":"a__b", "arguments":{"z":1,  "y":[2]},"x":null}"#).unwrap();
        o.set_str("name", "b");
        assert_eq!(
            o.to_json(),
            r#"{"name":"b","arguments":{"z":1,  "y":[2]},"x":null}"#
        );
        assert_eq!(o.get_str("name").as_deref(), Some("b"));
        assert!(o.remove("x").is_some());
        o.set_str("new", "v");
        assert_eq!(
            o.to_json(),
            r#"{"name":"b","arguments":{"z":1,  "y":[2]},"new":"v"}"#
        );
    }

    #[test]
    fn to_json_with_replaces_appends_or_drops_one_member() {
        let o = RawObject::parse(r#"{"a":1,"_meta":{"x":1},"b":[2]}"#).unwrap();
        assert_eq!(
            o.to_json_with("_meta", Some("{}")),
            r#"{"a":1,"_meta":{},"b":[2]}"#
        );
        assert_eq!(o.to_json_with("_meta", None), r#"{"a":1,"b":[2]}"#);
        assert_eq!(
            o.to_json_with("c", Some("3")),
            r#"{"a":1,"_meta":{"x":1},"b":[2],"c":3}"#
        );
        assert_eq!(o.to_json(), r#"{"a":1,"_meta":{"x":1},"b":[2]}"#);
    }

    #[test]
    fn rejects_non_objects_and_duplicates() {
        assert!(RawObject::parse("[1]").is_none());
        assert!(RawObject::parse(r#"{"a":1,"a":2}"#).is_none());
        assert!(RawObject::parse(r#"{"a":1} x"#).is_none());
    }
}
