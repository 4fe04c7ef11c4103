//! The MCP messages `bench-load` sends and the checks it makes on every answer.
//!
//! A call counts as a latency sample only when the answer is a JSON-RPC result for the request's
//! id whose first text content is the message sent; anything else is a [`CallError`], counted by
//! kind. Answers may be plain JSON or an SSE stream (the response is the last `data:` event that
//! carries a JSON-RPC response with the request's id).

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde_json::value::RawValue;

/// The legacy revision the load generator negotiates and sends in `MCP-Protocol-Version`.
pub const LEGACY_VERSION: &str = "2025-11-25";
/// The modern, stateless revision.
pub const MODERN_VERSION: &str = "2026-07-28";

/// Which protocol era the load generator speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Era {
    /// `initialize` + `notifications/initialized`, then calls carrying `Mcp-Session-Id`.
    Legacy,
    /// Stateless: every call carries `_meta` and the `Mcp-Method` / `Mcp-Name` headers.
    Modern,
}

impl Era {
    /// The value of the `MCP-Protocol-Version` header for this era.
    pub fn version(self) -> &'static str {
        match self {
            Era::Legacy => LEGACY_VERSION,
            Era::Modern => MODERN_VERSION,
        }
    }
}

/// The body of an `initialize` request.
pub fn initialize_body(id: u64) -> Vec<u8> {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"initialize","params":{{"protocolVersion":"{LEGACY_VERSION}","capabilities":{{}},"clientInfo":{{"name":"bench-load","version":"0.1.0"}}}}}}"#
    )
    .into_bytes()
}

/// The body of the `notifications/initialized` notification.
pub const INITIALIZED_BODY: &[u8] = br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;

/// The `tools/call` every call of a run sends, and what its result must be.
pub struct ToolCall {
    /// The tool's name as a JSON string literal.
    name_json: String,
    /// The arguments object, as JSON text.
    arguments_json: String,
    /// Extra `_meta` entries (`"key":value,…`), sent in both eras.
    meta_entries: String,
    /// `echo`: the text the result must carry; other tools: any result that is not `isError`.
    expect_text: Option<String>,
}

impl ToolCall {
    /// `echo` of `message`, checked to come back unchanged.
    pub fn echo(message: &str) -> ToolCall {
        ToolCall {
            name_json: r#""echo""#.into(),
            arguments_json: serde_json::json!({ "message": message }).to_string(),
            meta_entries: String::new(),
            expect_text: Some(message.to_owned()),
        }
    }

    /// Any tool with JSON `arguments` and extra `_meta` entries (both JSON objects).
    pub fn other(
        name: &str,
        arguments: &serde_json::Value,
        meta: &serde_json::Map<String, serde_json::Value>,
    ) -> ToolCall {
        let meta_entries = serde_json::Value::Object(meta.clone()).to_string();
        ToolCall {
            name_json: serde_json::Value::from(name).to_string(),
            arguments_json: arguments.to_string(),
            meta_entries: meta_entries[1..meta_entries.len() - 1].to_owned(),
            expect_text: None,
        }
    }

    /// Checks one result of this call.
    pub fn check(&self, result: &RawValue) -> Result<(), CallError> {
        match &self.expect_text {
            Some(text) => check_echo(result, text),
            None => check_success(result),
        }
    }
}

/// The body of one `tools/call` of `call`.
pub fn call_body(era: Era, id: u64, call: &ToolCall) -> Vec<u8> {
    let mut meta = match era {
        Era::Legacy => String::new(),
        Era::Modern => format!(
            r#""io.modelcontextprotocol/protocolVersion":"{MODERN_VERSION}","io.modelcontextprotocol/clientCapabilities":{{}}"#
        ),
    };
    if !call.meta_entries.is_empty() {
        if !meta.is_empty() {
            meta.push(',');
        }
        meta.push_str(&call.meta_entries);
    }
    let meta = if meta.is_empty() {
        meta
    } else {
        format!(r#","_meta":{{{meta}}}"#)
    };
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":{},"arguments":{}{meta}}}}}"#,
        call.name_json, call.arguments_json
    )
    .into_bytes()
}

/// Why one call did not count as a latency sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// Connecting, writing or reading failed; the connection is unusable.
    Transport(String),
    /// No answer within the per-call timeout; the connection is dropped.
    Timeout,
    /// The peer closed (stdio child exited): no further calls are possible.
    Closed,
    /// Open loop: a call due in the window was never sent, the target being too far behind.
    Unsent,
    /// An HTTP status other than 200.
    Status(u16),
    /// A JSON-RPC error response.
    JsonRpc(i64, String),
    /// An answer that is not the expected result (wrong id, wrong text, `isError`, bad JSON).
    Bad(String),
}

impl CallError {
    /// A short label for counting errors by kind.
    pub fn kind(&self) -> String {
        match self {
            CallError::Transport(_) => "transport".into(),
            CallError::Timeout => "timeout".into(),
            CallError::Closed => "closed".into(),
            CallError::Unsent => "unsent".into(),
            CallError::Status(s) => format!("http {s}"),
            CallError::JsonRpc(code, _) => format!("jsonrpc {code}"),
            CallError::Bad(_) => "bad response".into(),
        }
    }

    /// True when the connection (or session) must be re-established before the next call.
    pub fn needs_reconnect(&self) -> bool {
        matches!(
            self,
            CallError::Transport(_) | CallError::Timeout | CallError::Status(404)
        )
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Transport(e) => write!(f, "transport error: {e}"),
            CallError::Timeout => write!(f, "timed out"),
            CallError::Closed => write!(f, "peer closed"),
            CallError::Unsent => write!(
                f,
                "not sent: the target fell behind the requested rate by the end of the window"
            ),
            CallError::Status(s) => write!(f, "HTTP status {s}"),
            CallError::JsonRpc(code, msg) => write!(f, "JSON-RPC error {code}: {msg}"),
            CallError::Bad(why) => write!(f, "unexpected response: {why}"),
        }
    }
}

impl std::error::Error for CallError {}

#[derive(Deserialize)]
struct Response<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    method: Option<&'a RawValue>,
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
    #[serde(borrow, default)]
    error: Option<RpcError<'a>>,
}

#[derive(Deserialize)]
struct RpcError<'a> {
    code: i64,
    #[serde(borrow, default)]
    message: Cow<'a, str>,
}

fn id_matches(raw: Option<&RawValue>, id: u64) -> bool {
    raw.is_some_and(|r| r.get().parse::<u64>() == Ok(id))
}

/// Finds the JSON-RPC response for `id` in an HTTP body (JSON or SSE) and runs `check` on its
/// result.
pub fn verify_response(
    content_type: Option<&str>,
    body: &[u8],
    id: u64,
    check: impl FnOnce(&RawValue) -> Result<(), CallError>,
) -> Result<(), CallError> {
    let is_sse = content_type.is_some_and(|ct| {
        ct.trim_start()
            .to_ascii_lowercase()
            .starts_with("text/event-stream")
    });
    if is_sse {
        let data = last_sse_response(body, id)
            .ok_or_else(|| CallError::Bad(format!("no SSE event answers id {id}")))?;
        verify_message(&data, id, check)
    } else {
        verify_message(body, id, check)
    }
}

/// Parses one JSON-RPC message (a JSON body or a stdio line) that must answer `id`.
pub fn verify_message(
    message: &[u8],
    id: u64,
    check: impl FnOnce(&RawValue) -> Result<(), CallError>,
) -> Result<(), CallError> {
    let resp: Response<'_> = serde_json::from_slice(message)
        .map_err(|e| CallError::Bad(format!("not a JSON-RPC message: {e}")))?;
    if resp.method.is_some() || !id_matches(resp.id, id) {
        return Err(CallError::Bad(format!("not the response to id {id}")));
    }
    if let Some(err) = resp.error {
        return Err(CallError::JsonRpc(err.code, err.message.into_owned()));
    }
    match resp.result {
        Some(result) => check(result),
        None => Err(CallError::Bad("neither result nor error".into())),
    }
}

/// Keeps `data` as the answer when it is a JSON-RPC response (no `method`) for `id`.
fn consider<'a>(data: Option<Cow<'a, [u8]>>, id: u64, found: &mut Option<Cow<'a, [u8]>>) {
    if let Some(d) = data {
        let answers = serde_json::from_slice::<Response<'_>>(&d)
            .is_ok_and(|r| r.method.is_none() && id_matches(r.id, id));
        if answers {
            *found = Some(d);
        }
    }
}

/// The data of the last SSE event in `body` that is a JSON-RPC response (no `method`) for `id`.
fn last_sse_response(body: &[u8], id: u64) -> Option<Cow<'_, [u8]>> {
    let mut found: Option<Cow<'_, [u8]>> = None;
    let mut data: Option<Cow<'_, [u8]>> = None;
    for raw_line in body.split(|b| *b == b'\n') {
        let line = raw_line.strip_suffix(b"\r").unwrap_or(raw_line);
        if line.is_empty() {
            consider(data.take(), id, &mut found);
            continue;
        }
        let Some(rest) = line.strip_prefix(b"data:") else {
            continue; // event:, id:, retry:, comments
        };
        let rest = rest.strip_prefix(b" ").unwrap_or(rest);
        data = Some(match data.take() {
            None => Cow::Borrowed(rest),
            Some(prev) => {
                let mut joined = prev.into_owned();
                joined.push(b'\n');
                joined.extend_from_slice(rest);
                Cow::Owned(joined)
            }
        });
    }
    consider(data.take(), id, &mut found);
    found
}

#[derive(Deserialize)]
struct CallResult<'a> {
    #[serde(borrow, default)]
    content: Vec<Content<'a>>,
    #[serde(default, rename = "isError")]
    is_error: bool,
}

#[derive(Deserialize)]
struct Content<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

/// Checks a `tools/call` result: not `isError`, first content is text equal to `expected`.
pub fn check_echo(result: &RawValue, expected: &str) -> Result<(), CallError> {
    let r: CallResult<'_> = serde_json::from_str(result.get())
        .map_err(|e| CallError::Bad(format!("not a CallToolResult: {e}")))?;
    if r.is_error {
        return Err(CallError::Bad("tool result has isError: true".into()));
    }
    match r.content.first() {
        Some(c) if c.kind == "text" && c.text.as_deref() == Some(expected) => Ok(()),
        Some(_) => Err(CallError::Bad(
            "echoed text differs from the message".into(),
        )),
        None => Err(CallError::Bad("empty content".into())),
    }
}

/// Checks a `tools/call` result of any tool: not `isError`, some content.
pub fn check_success(result: &RawValue) -> Result<(), CallError> {
    let r: CallResult<'_> = serde_json::from_str(result.get())
        .map_err(|e| CallError::Bad(format!("not a CallToolResult: {e}")))?;
    if r.is_error {
        return Err(CallError::Bad("tool result has isError: true".into()));
    }
    if r.content.is_empty() {
        return Err(CallError::Bad("empty content".into()));
    }
    Ok(())
}

/// Checks an `initialize` result: it names a protocol version.
pub fn check_initialize(result: &RawValue) -> Result<(), CallError> {
    #[derive(Deserialize)]
    struct Init<'a> {
        #[serde(borrow, rename = "protocolVersion")]
        protocol_version: Cow<'a, str>,
    }
    let init: Init<'_> = serde_json::from_str(result.get())
        .map_err(|e| CallError::Bad(format!("not an InitializeResult: {e}")))?;
    if init.protocol_version.is_empty() {
        return Err(CallError::Bad("empty protocolVersion".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &[u8] =
        br#"{"jsonrpc":"2.0","id":42,"result":{"content":[{"type":"text","text":"hello"}],"isError":false}}"#;

    fn echo(ct: Option<&str>, body: &[u8], id: u64) -> Result<(), CallError> {
        verify_response(ct, body, id, |r| check_echo(r, "hello"))
    }

    #[test]
    fn bodies_are_valid_json() {
        for era in [Era::Legacy, Era::Modern] {
            let v: serde_json::Value =
                serde_json::from_slice(&call_body(era, 9, &ToolCall::echo("hi"))).expect("json");
            assert_eq!(v["params"]["arguments"]["message"], "hi");
            assert_eq!(v["id"], 9);
            assert_eq!(
                v["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"].is_string(),
                era == Era::Modern
            );
            let mut meta = serde_json::Map::new();
            meta.insert("io.palisade/tenant".into(), "t0k3n".into());
            let other = ToolCall::other(
                "query_database",
                &serde_json::json!({"sql": "SELECT 1"}),
                &meta,
            );
            let v: serde_json::Value =
                serde_json::from_slice(&call_body(era, 10, &other)).expect("json");
            assert_eq!(v["params"]["name"], "query_database");
            assert_eq!(v["params"]["arguments"]["sql"], "SELECT 1");
            assert_eq!(v["params"]["_meta"]["io.palisade/tenant"], "t0k3n");
        }
        let v: serde_json::Value = serde_json::from_slice(&initialize_body(1)).expect("json");
        assert_eq!(v["params"]["protocolVersion"], LEGACY_VERSION);
        let _: serde_json::Value = serde_json::from_slice(INITIALIZED_BODY).expect("json");
    }

    #[test]
    fn json_answers() {
        assert_eq!(echo(Some("application/json"), OK, 42), Ok(()));
        assert!(matches!(echo(None, OK, 43), Err(CallError::Bad(_))));
        let err = br#"{"jsonrpc":"2.0","id":42,"error":{"code":-32601,"message":"nope"}}"#;
        assert_eq!(
            echo(None, err, 42),
            Err(CallError::JsonRpc(-32601, "nope".into()))
        );
        let wrong =
            br#"{"jsonrpc":"2.0","id":42,"result":{"content":[{"type":"text","text":"bye"}]}}"#;
        assert!(matches!(echo(None, wrong, 42), Err(CallError::Bad(_))));
        let is_error = br#"{"jsonrpc":"2.0","id":42,"result":{"content":[{"type":"text","text":"hello"}],"isError":true}}"#;
        assert!(matches!(echo(None, is_error, 42), Err(CallError::Bad(_))));
        assert!(matches!(echo(None, b"<html>", 42), Err(CallError::Bad(_))));
    }

    #[test]
    fn sse_answers() {
        let body = concat!(
            ": comment\r\n",
            "event: message\r\n",
            "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"id\":42}}\r\n",
            "\r\n",
            "id: 7\n",
            "data: {\"jsonrpc\":\"2.0\",\"id\":42,\n",
            "data: \"result\":{\"content\":[{\"type\":\"text\",\"text\":\"hello\"}]}}\n",
            "\n"
        );
        assert_eq!(
            echo(
                Some("text/event-stream; charset=utf-8"),
                body.as_bytes(),
                42
            ),
            Ok(())
        );
        let only_note = "data: {\"jsonrpc\":\"2.0\",\"method\":\"x\"}\n\n";
        assert!(matches!(
            echo(Some("text/event-stream"), only_note.as_bytes(), 42),
            Err(CallError::Bad(_))
        ));
        // No trailing blank line: the last event still counts.
        let unterminated = format!("data: {}", std::str::from_utf8(OK).expect("utf-8"));
        assert_eq!(
            echo(Some("text/event-stream"), unterminated.as_bytes(), 42),
            Ok(())
        );
    }

    #[test]
    fn initialize_check() {
        let body = br#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-11-25","capabilities":{}}}"#;
        assert_eq!(verify_response(None, body, 1, check_initialize), Ok(()));
        let bad = br#"{"jsonrpc":"2.0","id":1,"result":{}}"#;
        assert!(verify_response(None, bad, 1, check_initialize).is_err());
    }
}
