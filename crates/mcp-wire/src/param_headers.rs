//! `Mcp-Param-*` headers (2026-07-28, SEP-2243): a tool's input schema may mark properties with
//! `x-mcp-header: Name`, and a client then mirrors those arguments into `Mcp-Param-Name` so
//! that HTTP infrastructure can route on them. A server that reads the body must check the two
//! agree; an intermediary that is a client upstream must send them.
//!
//! Values that are not plain visible ASCII (or that have surrounding whitespace, or look
//! encoded themselves) travel as `=?base64?…?=`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

use crate::RawObject;

/// One annotated property of a tool's input schema.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderParam {
    pub property: String,
    /// The header is `Mcp-Param-<header>`.
    pub header: String,
}

/// The annotated properties of a tool definition (`{name, inputSchema, …}`).
pub fn annotations(tool: &str) -> Vec<HeaderParam> {
    let Ok(tool) = serde_json::from_str::<Value>(tool) else {
        return Vec::new();
    };
    let Some(props) = tool["inputSchema"]["properties"].as_object() else {
        return Vec::new();
    };
    props
        .iter()
        .filter_map(|(property, schema)| {
            let header = schema.get("x-mcp-header")?.as_str()?;
            (!header.is_empty()).then(|| HeaderParam {
                property: property.clone(),
                header: header.to_owned(),
            })
        })
        .collect()
}

/// The text a value stands for in a header, before any encoding; `None` for null.
fn plain(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        other => Some(other.to_string()),
    }
}

/// The header value a client sends for an argument.
pub fn encode(value: &Value) -> Option<String> {
    let text = plain(value)?;
    // Text that reads as an encoded value is encoded itself, or `decode` would unwrap it.
    let looks_encoded = text.starts_with("=?base64?") && text.ends_with("?=");
    let safe =
        text.bytes().all(|b| (0x20..0x7f).contains(&b)) && text.trim() == text && !looks_encoded;
    Some(if safe {
        text
    } else {
        format!("=?base64?{}?=", STANDARD.encode(text.as_bytes()))
    })
}

/// The text a received header value stands for; `Err` for malformed Base64.
pub fn decode(header: &str) -> Result<String, String> {
    let header = header.trim_matches([' ', '\t']);
    let Some(inner) = header
        .strip_prefix("=?base64?")
        .and_then(|rest| rest.strip_suffix("?="))
    else {
        return Ok(header.to_owned());
    };
    let bytes = STANDARD
        .decode(inner)
        .map_err(|_| "is not valid Base64".to_owned())?;
    String::from_utf8(bytes).map_err(|_| "does not decode to UTF-8 text".to_owned())
}

/// Checks a request's `Mcp-Param-*` headers against its arguments. `header` looks a header up
/// by its suffix (case-insensitively). The error names the header and the problem.
pub fn check<'h>(
    params: &[HeaderParam],
    arguments: Option<&RawObject>,
    header: impl Fn(&str) -> Option<&'h str>,
) -> Result<(), String> {
    for p in params {
        let value = arguments
            .and_then(|a| a.get(&p.property))
            .and_then(|v| serde_json::from_str::<Value>(v.get()).ok())
            .and_then(|v| plain(&v));
        let Some(expected) = value else { continue };
        let name = format!("Mcp-Param-{}", p.header);
        let Some(received) = header(&p.header) else {
            return Err(format!(
                "the {name} header is required: argument `{}` is present",
                p.property
            ));
        };
        let received = decode(received).map_err(|e| format!("the {name} header {e}"))?;
        if received != expected {
            return Err(format!(
                "the {name} header does not match argument `{}`",
                p.property
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_that_looks_encoded_round_trips() {
        for text in ["=?base64?SGk=?=", "=?base64?SGVsbG8?=", "=?base64??="] {
            let header = encode(&Value::String(text.into())).unwrap();
            assert_ne!(header, text, "sent encoded");
            assert_eq!(decode(&header).as_deref(), Ok(text));
        }
    }

    #[test]
    fn annotations_are_read_from_the_schema() {
        let tool = r#"{"name":"t","inputSchema":{"type":"object","properties":{"region":{"type":"string","x-mcp-header":"Region"},"q":{"type":"string"}}}}"#;
        assert_eq!(
            annotations(tool),
            vec![HeaderParam {
                property: "region".into(),
                header: "Region".into()
            }]
        );
    }

    #[test]
    fn encoding_round_trips() {
        for v in [
            serde_json::json!("eu-west1"),
            serde_json::json!(" padded "),
            serde_json::json!("héllo"),
            serde_json::json!(42),
            serde_json::json!(true),
        ] {
            let h = encode(&v).unwrap();
            assert_eq!(decode(&h).unwrap(), plain(&v).unwrap(), "{h}");
        }
        assert_eq!(encode(&serde_json::json!(" x")).unwrap(), "=?base64?IHg=?=");
        assert!(decode("=?base64?SGVsbG8?=").is_err(), "missing padding");
        assert!(decode("=?base64?SGVs!!!bG8=?=").is_err());
        assert_eq!(
            decode("=?base64?SGVsbG8=").unwrap(),
            "=?base64?SGVsbG8=",
            "literal"
        );
    }

    #[test]
    fn check_requires_matching_headers() {
        let params = vec![HeaderParam {
            property: "region".into(),
            header: "Region".into(),
        }];
        let args = RawObject::parse(r#"{"region":"us-west1"}"#).unwrap();
        assert!(check(&params, Some(&args), |_| Some("us-west1")).is_ok());
        assert!(check(&params, Some(&args), |_| Some("eu-central1")).is_err());
        assert!(check(&params, Some(&args), |_| None).is_err());
        assert!(
            check(&params, None, |_| None).is_ok(),
            "absent argument, no header needed"
        );
    }
}
