//! Request handling of `bench-echo`, the deliberately fast MCP upstream, independent of transport.
//!
//! One JSON-RPC message in, at most one JSON-RPC message out. Parsing borrows from the input
//! (`RawValue` for ids, params and the echoed message) and the answer is assembled from byte
//! slices, so the upstream costs a few microseconds per call and does not hide the gateway's cost.
//! Request ids are copied byte for byte; the echoed message is copied as the JSON string it came
//! in as.

use std::borrow::Cow;
use std::hash::{BuildHasher, Hasher};

use serde::Deserialize;
use serde_json::value::RawValue;

/// The modern, stateless protocol revision.
pub const MODERN: &str = "2026-07-28";
/// Legacy revisions the echo server accepts in `initialize`, newest first.
pub const LEGACY_VERSIONS: [&str; 3] = ["2025-11-25", "2025-06-18", "2025-03-26"];
/// The `_meta` key that marks a modern-era request.
pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";

const SERVER_INFO: &str = r#"{"name":"bench-echo","version":"0.1.0"}"#;

/// What to send back for one incoming message.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// A notification (or a response): nothing to answer. HTTP 202 with no body.
    Accepted,
    /// A JSON-RPC response.
    Json {
        /// The HTTP status to use when the transport is HTTP.
        status: u16,
        /// The serialized JSON-RPC response (one line, no trailing newline).
        body: Vec<u8>,
        /// True for a successful `initialize`: HTTP sets a fresh `Mcp-Session-Id`.
        new_session: bool,
    },
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    params: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct Params<'a> {
    #[serde(borrow, default, rename = "protocolVersion")]
    protocol_version: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<Arguments<'a>>,
    #[serde(borrow, default, rename = "_meta")]
    meta: Option<Meta<'a>>,
}

#[derive(Deserialize)]
struct Arguments<'a> {
    #[serde(borrow, default)]
    message: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(borrow, default, rename = "io.modelcontextprotocol/protocolVersion")]
    protocol_version: Option<Cow<'a, str>>,
}

/// Answers one JSON-RPC message (the bytes of one HTTP body or one stdio line).
pub fn handle(input: &[u8]) -> Reply {
    if input.trim_ascii_start().first() == Some(&b'[') {
        // A batch (removed in 2025-06-18); serde would also read an array as a struct.
        return error(
            400,
            None,
            -32600,
            "Invalid Request: batches are not supported",
        );
    }
    let msg: Message<'_> = match serde_json::from_slice(input) {
        Ok(msg) => msg,
        Err(e) if e.is_data() => return error(400, None, -32600, "Invalid Request"),
        Err(_) => return error(400, None, -32700, "Parse error"),
    };
    let (Some(id), Some(method)) = (msg.id, msg.method.as_deref()) else {
        // Notifications (no id) and responses (no method) need no answer.
        return Reply::Accepted;
    };
    let params: Params<'_> = match msg.params {
        Some(raw) => match serde_json::from_str(raw.get()) {
            Ok(p) => p,
            Err(_) => return error(200, Some(id), -32602, "Invalid params"),
        },
        None => Params::default(),
    };
    let modern = params
        .meta
        .as_ref()
        .and_then(|m| m.protocol_version.as_deref())
        .is_some();
    match method {
        "initialize" => {
            let asked = params.protocol_version.as_deref().unwrap_or_default();
            let version = LEGACY_VERSIONS
                .iter()
                .find(|v| **v == asked)
                .unwrap_or(&LEGACY_VERSIONS[0]);
            let mut result = Vec::with_capacity(128);
            result.extend_from_slice(br#"{"protocolVersion":""#);
            result.extend_from_slice(version.as_bytes());
            result.extend_from_slice(br#"","capabilities":{"tools":{}},"serverInfo":"#);
            result.extend_from_slice(SERVER_INFO.as_bytes());
            result.push(b'}');
            respond(id, &result, true)
        }
        "server/discover" => {
            let result = format!(
                r#"{{"supportedVersions":["{MODERN}","{}"],"capabilities":{{"tools":{{}}}},"serverInfo":{SERVER_INFO},"resultType":"complete"}}"#,
                LEGACY_VERSIONS[0]
            );
            success(id, result.as_bytes())
        }
        "ping" => success(
            id,
            if modern {
                br#"{"resultType":"complete"}"#
            } else {
                b"{}"
            },
        ),
        "tools/list" => {
            let tail: &[u8] = if modern {
                br#","resultType":"complete","ttlMs":60000}"#
            } else {
                b"}"
            };
            let mut result = Vec::with_capacity(256);
            result.extend_from_slice(
                br#"{"tools":[{"name":"echo","description":"Echoes the message back","inputSchema":{"type":"object","properties":{"message":{"type":"string"}},"required":["message"]}}]"#,
            );
            result.extend_from_slice(tail);
            success(id, &result)
        }
        "tools/call" => call(id, &params, modern),
        _ => error(
            if modern { 404 } else { 200 },
            Some(id),
            -32601,
            "Method not found",
        ),
    }
}

fn call(id: &RawValue, params: &Params<'_>, modern: bool) -> Reply {
    if params.name.as_deref() != Some("echo") {
        return error(200, Some(id), -32602, "Unknown tool");
    }
    let message = params.arguments.as_ref().and_then(|a| a.message);
    let Some(message) = message.filter(|m| m.get().starts_with('"')) else {
        return error(
            200,
            Some(id),
            -32602,
            "Invalid arguments: message must be a string",
        );
    };
    let mut result = Vec::with_capacity(80 + message.get().len());
    result.extend_from_slice(br#"{"content":[{"type":"text","text":"#);
    result.extend_from_slice(message.get().as_bytes());
    result.extend_from_slice(br#"}],"isError":false"#);
    if modern {
        result.extend_from_slice(br#","resultType":"complete""#);
    }
    result.push(b'}');
    success(id, &result)
}

fn success(id: &RawValue, result: &[u8]) -> Reply {
    respond(id, result, false)
}

fn respond(id: &RawValue, result: &[u8], new_session: bool) -> Reply {
    let mut body = Vec::with_capacity(32 + id.get().len() + result.len());
    body.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
    body.extend_from_slice(id.get().as_bytes());
    body.extend_from_slice(br#","result":"#);
    body.extend_from_slice(result);
    body.push(b'}');
    Reply::Json {
        status: 200,
        body,
        new_session,
    }
}

fn error(status: u16, id: Option<&RawValue>, code: i32, message: &str) -> Reply {
    let id = id.map_or("null", RawValue::get);
    let body =
        format!(r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":{code},"message":"{message}"}}}}"#);
    Reply::Json {
        status,
        body: body.into_bytes(),
        new_session: false,
    }
}

/// A fresh random session id: 32 hex digits from the standard library's randomly keyed hasher.
pub fn new_session_id() -> String {
    let state = std::collections::hash_map::RandomState::new();
    let mut a = state.build_hasher();
    a.write_u64(0x5eed);
    let mut b = state.build_hasher();
    b.write_u64(a.finish());
    format!("{:016x}{:016x}", a.finish(), b.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(reply: Reply) -> (u16, serde_json::Value, bool) {
        match reply {
            Reply::Json {
                status,
                body,
                new_session,
            } => (
                status,
                serde_json::from_slice(&body).expect("reply is JSON"),
                new_session,
            ),
            Reply::Accepted => panic!("expected a JSON reply"),
        }
    }

    #[test]
    fn initialize_echoes_known_versions_and_falls_back_to_latest() {
        let (status, v, new_session) = json(handle(
            br#"{"jsonrpc":"2.0","id":"a-1","method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#,
        ));
        assert_eq!(status, 200);
        assert!(new_session);
        assert_eq!(v["id"], "a-1");
        assert_eq!(v["result"]["protocolVersion"], "2025-06-18");
        assert_eq!(
            v["result"]["capabilities"],
            serde_json::json!({"tools": {}})
        );
        assert_eq!(v["result"]["serverInfo"]["name"], "bench-echo");

        let (_, v, _) = json(handle(
            br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"1999-01-01"}}"#,
        ));
        assert_eq!(v["result"]["protocolVersion"], "2025-11-25");
    }

    #[test]
    fn notifications_are_accepted_without_a_body() {
        assert_eq!(
            handle(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#),
            Reply::Accepted
        );
    }

    #[test]
    fn tools_call_echoes_the_message_and_keeps_the_id_bytes() {
        let reply = handle(
            br#"{"jsonrpc":"2.0","id":  1.50 ,"method":"tools/call","params":{"name":"echo","arguments":{"message":"h\u00e9llo \"x\""}}}"#,
        );
        let Reply::Json { body, .. } = &reply else {
            panic!("expected JSON")
        };
        let text = std::str::from_utf8(body).expect("utf-8");
        assert!(text.contains(r#""id":1.50,"#), "{text}");
        let (_, v, _) = json(reply);
        assert_eq!(v["result"]["content"][0]["type"], "text");
        assert_eq!(v["result"]["content"][0]["text"], "h\u{e9}llo \"x\"");
        assert_eq!(v["result"]["isError"], false);
        assert!(v["result"].get("resultType").is_none());
    }

    #[test]
    fn modern_calls_carry_result_type() {
        let (_, v, _) = json(handle(
            br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hello"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#,
        ));
        assert_eq!(v["result"]["resultType"], "complete");
        assert_eq!(v["result"]["content"][0]["text"], "hello");
    }

    #[test]
    fn discover_ping_and_list() {
        let (_, v, _) = json(handle(
            br#"{"jsonrpc":"2.0","id":2,"method":"server/discover","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#,
        ));
        assert_eq!(
            v["result"]["supportedVersions"],
            serde_json::json!(["2026-07-28", "2025-11-25"])
        );
        assert_eq!(v["result"]["resultType"], "complete");
        let (_, v, _) = json(handle(br#"{"jsonrpc":"2.0","id":3,"method":"ping"}"#));
        assert_eq!(v["result"], serde_json::json!({}));
        let (_, v, _) = json(handle(br#"{"jsonrpc":"2.0","id":4,"method":"tools/list"}"#));
        assert_eq!(v["result"]["tools"][0]["name"], "echo");
        assert_eq!(
            v["result"]["tools"][0]["inputSchema"]["required"],
            serde_json::json!(["message"])
        );
    }

    #[test]
    fn errors() {
        let (status, v, _) = json(handle(br#"{"jsonrpc":"2.0","id":5,"method":"nope"}"#));
        assert_eq!(status, 200);
        assert_eq!(v["error"]["code"], -32601);
        assert_eq!(v["id"], 5);
        let (status, v, _) = json(handle(b"{not json"));
        assert_eq!(status, 400);
        assert_eq!(v["error"]["code"], -32700);
        assert!(v["id"].is_null());
        let (_, v, _) = json(handle(br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#));
        assert_eq!(v["error"]["code"], -32600);
        let (_, v, _) = json(handle(
            br#"{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"echo","arguments":{"message":3}}}"#,
        ));
        assert_eq!(v["error"]["code"], -32602);
    }

    #[test]
    fn session_ids_are_distinct_hex() {
        let a = new_session_id();
        let b = new_session_id();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
