//! JSON-RPC 2.0 envelopes over raw bytes.
//!
//! [`Message::parse`] classifies one message and borrows nothing: params, results and errors
//! stay [`RawValue`]s so they can be forwarded byte for byte. The builders write envelopes by
//! hand around raw parts, which is both faster and the only way to keep those bytes intact.
//! Batches (JSON arrays) were removed from MCP in 2025-06-18 and are refused here.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde_json::value::RawValue;

/// JSON-RPC and MCP error codes the gateway produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorCode(pub i64);

impl ErrorCode {
    pub const PARSE_ERROR: ErrorCode = ErrorCode(-32700);
    pub const INVALID_REQUEST: ErrorCode = ErrorCode(-32600);
    pub const METHOD_NOT_FOUND: ErrorCode = ErrorCode(-32601);
    pub const INVALID_PARAMS: ErrorCode = ErrorCode(-32602);
    pub const INTERNAL_ERROR: ErrorCode = ErrorCode(-32603);
    /// Legacy era: resource not found (modern uses -32602).
    pub const RESOURCE_NOT_FOUND: ErrorCode = ErrorCode(-32002);
    /// Modern era: `Mcp-Method` / `Mcp-Name` / version header disagrees with the body.
    pub const HEADER_MISMATCH: ErrorCode = ErrorCode(-32020);
    pub const MISSING_CLIENT_CAPABILITY: ErrorCode = ErrorCode(-32021);
    pub const UNSUPPORTED_PROTOCOL_VERSION: ErrorCode = ErrorCode(-32022);
    /// Gateway-specific: the upstream that should answer is unavailable (crashed, down, timed
    /// out). In the implementation-defined server-error range.
    pub const UPSTREAM_UNAVAILABLE: ErrorCode = ErrorCode(-32001);
    /// Gateway-specific: a per-tenant limit (sessions, calls waiting for input) is reached.
    pub const LIMIT_REACHED: ErrorCode = ErrorCode(-32005);
    /// Gateway-specific: a rate limit refused the call; `data` names the limit and carries
    /// `retryAfterMs`.
    pub const RATE_LIMITED: ErrorCode = ErrorCode(-32029);
}

/// Whether arrays and objects in `bytes` nest deeper than `limit` (the message itself is level
/// 1). A linear scan that skips strings, for refusing a message before any parser recurses
/// into it; `bytes` need not be valid JSON.
pub fn nests_deeper_than(bytes: &[u8], limit: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Why bytes are not one acceptable JSON-RPC message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("parse error: the body is not valid JSON ({0})")]
    Parse(String),
    #[error(
        "invalid request: batches (JSON arrays) are not supported since MCP 2025-06-18; send one message per request"
    )]
    Batch,
    #[error("invalid request: {0}")]
    Invalid(&'static str),
}

impl WireError {
    pub fn code(&self) -> ErrorCode {
        match self {
            WireError::Parse(_) => ErrorCode::PARSE_ERROR,
            WireError::Batch | WireError::Invalid(_) => ErrorCode::INVALID_REQUEST,
        }
    }
}

/// A request id: a JSON string or integer, kept as its original bytes so it round-trips exactly.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Id(Box<str>);

impl Id {
    /// An id from raw JSON; `None` unless it is a string or an integer.
    pub fn from_raw(raw: &RawValue) -> Option<Id> {
        let text = raw.get();
        let first = text.as_bytes().first()?;
        let ok = match first {
            b'"' => true,
            b'-' | b'0'..=b'9' => text.bytes().all(|b| b == b'-' || b.is_ascii_digit()),
            _ => false,
        };
        ok.then(|| Id(text.into()))
    }

    pub fn number(n: u64) -> Id {
        Id(n.to_string().into())
    }

    pub fn string(s: &str) -> Id {
        // serde_json escapes correctly; serializing a &str cannot fail.
        Id(serde_json::to_string(s).unwrap_or_default().into())
    }

    /// The id as raw JSON text (quoted if a string).
    pub fn as_json(&self) -> &str {
        &self.0
    }

    /// The integer value, when the id is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        self.0.parse().ok()
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug)]
pub struct Request {
    pub id: Id,
    pub method: String,
    pub params: Option<Box<RawValue>>,
}

#[derive(Debug)]
pub struct Notification {
    pub method: String,
    pub params: Option<Box<RawValue>>,
}

/// A response: `Ok(result)` or `Err(error object)`, both raw. The id is `None` only for error
/// responses to messages whose id could not be read.
#[derive(Debug)]
pub struct Response {
    pub id: Option<Id>,
    pub outcome: Result<Box<RawValue>, Box<RawValue>>,
}

#[derive(Debug)]
pub enum Message {
    Request(Request),
    Notification(Notification),
    Response(Response),
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    jsonrpc: Option<Cow<'a, str>>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
    #[serde(borrow)]
    result: Option<&'a RawValue>,
    #[serde(borrow)]
    error: Option<&'a RawValue>,
}

impl Message {
    /// Parses one message. Unknown top-level members are ignored, as JSON-RPC allows.
    pub fn parse(bytes: &[u8]) -> Result<Message, WireError> {
        let env: Envelope<'_> = match serde_json::from_slice(bytes) {
            Ok(env) => env,
            Err(err) => return Err(classify_failure(bytes, err)),
        };
        if env.jsonrpc.as_deref() != Some("2.0") {
            return Err(WireError::Invalid("\"jsonrpc\" must be \"2.0\""));
        }
        if let Some(params) = env.params
            && !matches!(params.get().as_bytes().first(), Some(b'{') | Some(b'['))
        {
            return Err(WireError::Invalid(
                "\"params\" must be an object or an array",
            ));
        }
        // `"id": null` deserializes as None, which is what JSON-RPC means by it.
        let id = match env.id {
            Some(raw) => Some(
                Id::from_raw(raw)
                    .ok_or(WireError::Invalid("\"id\" must be a string or an integer"))?,
            ),
            None => None,
        };
        match (env.method, env.result, env.error) {
            (Some(method), None, None) => {
                let method = method.into_owned();
                let params = env.params.map(to_owned_raw);
                Ok(match id {
                    Some(id) => Message::Request(Request { id, method, params }),
                    None => Message::Notification(Notification { method, params }),
                })
            }
            (None, Some(result), None) => match id {
                Some(id) => Ok(Message::Response(Response {
                    id: Some(id),
                    outcome: Ok(to_owned_raw(result)),
                })),
                None => Err(WireError::Invalid(
                    "a result must carry the id of its request",
                )),
            },
            (None, None, Some(error)) => {
                if !error.get().starts_with('{') {
                    return Err(WireError::Invalid("\"error\" must be an object"));
                }
                Ok(Message::Response(Response {
                    id,
                    outcome: Err(to_owned_raw(error)),
                }))
            }
            (Some(_), _, _) => Err(WireError::Invalid(
                "a message with \"method\" must not carry \"result\" or \"error\"",
            )),
            (None, Some(_), Some(_)) => Err(WireError::Invalid(
                "a response must not carry both \"result\" and \"error\"",
            )),
            (None, None, None) => Err(WireError::Invalid(
                "a message needs \"method\" (request or notification) or \"result\"/\"error\" (response)",
            )),
        }
    }

    /// The request id, for requests only.
    pub fn request_id(&self) -> Option<&Id> {
        match self {
            Message::Request(r) => Some(&r.id),
            _ => None,
        }
    }
}

fn to_owned_raw(raw: &RawValue) -> Box<RawValue> {
    raw.to_owned()
}

/// Tells a syntax error (-32700) from valid JSON of the wrong shape (-32600).
fn classify_failure(bytes: &[u8], err: serde_json::Error) -> WireError {
    if err.is_syntax() || err.is_eof() || err.is_io() {
        return WireError::Parse(err.to_string());
    }
    let first = bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .copied()
        .unwrap_or(b' ');
    match first {
        b'[' => WireError::Batch,
        b'{' => WireError::Invalid("a member has the wrong type"),
        _ => WireError::Invalid("a message must be a JSON object"),
    }
}

// ---- builders ------------------------------------------------------------------------------

/// `{"jsonrpc":"2.0","id":…,"result":…}` around a raw result.
pub fn result(id: &Id, result: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(40 + id.as_json().len() + result.len());
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id.as_json().as_bytes());
    out.extend_from_slice(b",\"result\":");
    out.extend_from_slice(result.as_bytes());
    out.push(b'}');
    out
}

/// `{"jsonrpc":"2.0","id":…,"error":…}` around a raw error object.
pub fn error_raw(id: Option<&Id>, error: &str) -> Vec<u8> {
    let id = id.map(Id::as_json).unwrap_or("null");
    let mut out = Vec::with_capacity(40 + id.len() + error.len());
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b",\"error\":");
    out.extend_from_slice(error.as_bytes());
    out.push(b'}');
    out
}

/// An error object `{"code":…,"message":…,"data":…}` as JSON text.
pub fn error_object(code: ErrorCode, message: &str, data: Option<&serde_json::Value>) -> String {
    let mut obj = serde_json::json!({ "code": code.0, "message": message });
    if let (Some(data), Some(map)) = (data, obj.as_object_mut()) {
        map.insert("data".into(), data.clone());
    }
    obj.to_string()
}

/// A complete error response.
pub fn error(
    id: Option<&Id>,
    code: ErrorCode,
    message: &str,
    data: Option<&serde_json::Value>,
) -> Vec<u8> {
    error_raw(id, &error_object(code, message, data))
}

/// A request around raw params.
pub fn request(id: &Id, method: &str, params: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + params.map_or(0, str::len));
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id.as_json().as_bytes());
    push_method_params(&mut out, method, params);
    out
}

/// A notification around raw params.
pub fn notification(method: &str, params: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + params.map_or(0, str::len));
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\"");
    push_method_params(&mut out, method, params);
    out
}

fn push_method_params(out: &mut Vec<u8>, method: &str, params: Option<&str>) {
    out.extend_from_slice(b",\"method\":");
    out.extend_from_slice(serde_json::to_string(method).unwrap_or_default().as_bytes());
    if let Some(params) = params {
        out.extend_from_slice(b",\"params\":");
        out.extend_from_slice(params.as_bytes());
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Message, WireError> {
        Message::parse(s.as_bytes())
    }

    #[test]
    fn nesting_is_measured_outside_strings() {
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(!nests_deeper_than(nested(64).as_bytes(), 64));
        assert!(nests_deeper_than(nested(65).as_bytes(), 64));
        assert!(!nests_deeper_than(br#"{"a":"[[[[\"[[[[","b":[1]}"#, 2));
        assert!(nests_deeper_than(br#"{"a":"\\","b":[[1]]}"#, 2));
        // Unbalanced closers do not make room for more openers.
        assert!(nests_deeper_than(b"]]]][[[", 2));
    }

    #[test]
    fn request_keeps_params_bytes() {
        let m = parse(
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"b":1,  "a":{"x":[1, 2]}}}"#,
        )
        .unwrap();
        let Message::Request(r) = m else {
            panic!("not a request")
        };
        assert_eq!(r.id.as_json(), "7");
        assert_eq!(r.method, "tools/call");
        assert_eq!(r.params.unwrap().get(), r#"{"b":1,  "a":{"x":[1, 2]}}"#);
    }

    #[test]
    fn classification() {
        assert!(matches!(
            parse(r#"{"jsonrpc":"2.0","method":"x"}"#),
            Ok(Message::Notification(_))
        ));
        assert!(matches!(
            parse(r#"{"jsonrpc":"2.0","id":"a","result":{}}"#),
            Ok(Message::Response(_))
        ));
        assert!(matches!(
            parse(r#"{"jsonrpc":"2.0","id":null,"error":{"code":1,"message":"m"}}"#),
            Ok(Message::Response(Response { id: None, .. }))
        ));
    }

    #[test]
    fn errors_have_the_right_codes() {
        assert_eq!(parse("{nope").unwrap_err().code(), ErrorCode::PARSE_ERROR);
        assert_eq!(parse("").unwrap_err().code(), ErrorCode::PARSE_ERROR);
        assert_eq!(
            parse(r#"[{"jsonrpc":"2.0","method":"x"}]"#).unwrap_err(),
            WireError::Batch
        );
        assert_eq!(parse("42").unwrap_err().code(), ErrorCode::INVALID_REQUEST);
        for bad in [
            r#"{"jsonrpc":"1.0","id":1,"method":"x"}"#,
            r#"{"id":1,"method":"x"}"#,
            r#"{"jsonrpc":"2.0","id":1.5,"method":"x"}"#,
            r#"{"jsonrpc":"2.0","id":{},"method":"x"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"x","params":3}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":7}"#,
            r#"{"jsonrpc":"2.0","id":1}"#,
            r#"{"jsonrpc":"2.0","result":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{},"error":{}}"#,
        ] {
            assert_eq!(
                parse(bad).unwrap_err().code(),
                ErrorCode::INVALID_REQUEST,
                "{bad}"
            );
        }
    }

    #[test]
    fn builders_round_trip() {
        let id = Id::string("a\"b");
        let bytes = request(&id, "ping", Some("{}"));
        let Message::Request(r) = Message::parse(&bytes).unwrap() else {
            panic!()
        };
        assert_eq!(r.id, id);
        let bytes = error(Some(&id), ErrorCode::INVALID_PARAMS, "bad", None);
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["error"]["code"], -32602);
        assert_eq!(v["id"], "a\"b");
        let bytes = result(&Id::number(3), r#"{"ok":true}"#);
        assert_eq!(bytes, br#"{"jsonrpc":"2.0","id":3,"result":{"ok":true}}"#);
    }
}
