//! Every valid Streamable HTTP answer an upstream may give is read as its `Content-Type` says:
//! SSE with several events before the response, events whose data spans several `data:` lines,
//! comments, `retry` fields, priming events, CRLF line ends, JSON with a charset and trailing
//! whitespace; and an answer of another type fails with an error that names it. Also: a call's
//! stream that the upstream closes before answering (SSE polling) is resumed with
//! `Last-Event-ID`, and a server→client request on a 2026-07-28 call's stream reaches the
//! client that made the call, in the client's own era.
//!
//! No SDK server here sends all of these (the official Python and TypeScript SDKs refuse
//! server→client requests in the 2026-07-28 era, which other servers send anyway), so the
//! upstream is scripted: a raw HTTP/1.1 server that answers each JSON-RPC method with fixed
//! bytes.

use crate::common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// What the scripted upstream remembers between requests.
#[derive(Default)]
struct Script {
    /// The id of the call whose stream it closed, to answer on the resumed stream.
    polled: Option<Value>,
    /// Its own requests waiting for the gateway's answer, by id.
    waiting: HashMap<String, oneshot::Sender<Value>>,
}

type Shared = Arc<Mutex<Script>>;

/// The bytes after the status line for one request, by method (and tool name).
fn answer(request: &Value) -> Option<String> {
    let id = request["id"].clone();
    let method = request["method"].as_str().unwrap_or("");
    let tool = request["params"]["name"].as_str().unwrap_or("");
    let progress = request["params"]["_meta"]["progressToken"].clone();
    let sse = |body: &str| format!("Content-Type: text/event-stream\r\n\r\n{body}");
    let response = |result: Value| json!({"jsonrpc": "2.0", "id": id, "result": result});
    Some(match (method, tool) {
        ("server/discover", _) => format!(
            "Content-Type: application/json\r\n\r\n{}",
            response(json!({
                "resultType": "complete",
                "supportedVersions": ["2026-07-28"],
                "capabilities": {"tools": {}},
                "ttlMs": 0,
                "cacheScope": "private",
                "_meta": {"io.modelcontextprotocol/serverInfo": {"name": "scripted", "version": "1"}},
            }))
        ),
        // JSON with a charset parameter and trailing whitespace.
        ("initialize", _) => format!(
            "Content-Type: application/json; charset=utf-8\r\n\r\n{}\r\n\n  ",
            response(json!({
                "protocolVersion": "2025-11-25",
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "scripted", "version": "1"},
            }))
        ),
        // A priming event, a comment, a retry field, and the response pretty-printed over
        // several data lines with CRLF line ends.
        ("tools/list", _) => {
            let list = serde_json::to_string_pretty(&response(json!({"tools": [
                {"name": "several", "inputSchema": {"type": "object"}},
                {"name": "html", "inputSchema": {"type": "object"}},
                {"name": "untyped", "inputSchema": {"type": "object"}},
                {"name": "polled", "inputSchema": {"type": "object"}},
                {"name": "push", "inputSchema": {"type": "object"}},
            ]})))
            .unwrap();
            let data: String = list.lines().map(|l| format!("data: {l}\r\n")).collect();
            sse(&format!(
                "id: p-0\r\nretry: 3000\r\ndata: \r\n\r\n: a comment\r\n\r\nevent: message\r\nid: p-1\r\n{data}\r\n"
            ))
        }
        // Progress and a log before the response, in one stream.
        ("tools/call", "several") => {
            let p = json!({"jsonrpc": "2.0", "method": "notifications/progress",
                "params": {"progressToken": progress, "progress": 1, "total": 2}});
            let log = json!({"jsonrpc": "2.0", "method": "notifications/message",
                "params": {"level": "info", "data": "working"}});
            let done = response(json!({"content": [{"type": "text", "text": "done"}]}));
            sse(&format!(
                "data: {p}\n\n:keep-alive\n\ndata:{log}\n\nid: 7\ndata: {done}\n\n"
            ))
        }
        ("tools/call", "html") => {
            "Content-Type: text/html\r\n\r\n<html>maintenance</html>".to_owned()
        }
        ("tools/call", "untyped") => format!("\r\n{}", response(json!({"content": []}))),
        _ => return None,
    })
}

/// Serves the script on a loopback port; returns its URL.
async fn scripted_upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let shared = Shared::default();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(serve(socket, shared.clone()));
        }
    });
    url
}

/// One request: its head, and its body as JSON.
async fn read_request(socket: &mut TcpStream) -> Option<(String, Value)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head_end, length) = loop {
        let n = socket.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (end + 4, length);
        }
    };
    while buf.len() < head_end + length {
        let n = socket.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let body = serde_json::from_slice(&buf[head_end..head_end + length]).unwrap_or_default();
    Some((head, body))
}

const SSE_OK: &str =
    "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: text/event-stream\r\n\r\n";

async fn serve(mut socket: TcpStream, shared: Shared) {
    let Some((head, request)) = read_request(&mut socket).await else {
        return;
    };
    let result = |id: &Value, text: &str| json!({"jsonrpc": "2.0", "id": id, "result": {"content": [{"type": "text", "text": text}]}});
    let reply = if head.starts_with("get") {
        // Resuming a closed stream gives the rest of that call; anything else has no stream.
        match (
            head.contains("last-event-id: poll-1"),
            shared.lock().unwrap().polled.take(),
        ) {
            (true, Some(id)) => format!("{SSE_OK}id: poll-2\ndata: {}\n\n", result(&id, "polled")),
            _ => {
                "HTTP/1.1 405 Method Not Allowed\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
                    .to_owned()
            }
        }
    } else if request["params"]["name"] == "polled" {
        // A priming event, then the stream closes: the client must come back for the answer.
        shared.lock().unwrap().polled = Some(request["id"].clone());
        format!("{SSE_OK}id: poll-1\nretry: 20\ndata: \n\n")
    } else if request["params"]["name"] == "push" {
        // A server→client request on the call's own stream; the answer comes in another POST.
        let (tx, rx) = oneshot::channel();
        shared.lock().unwrap().waiting.insert("srv-1".into(), tx);
        let ask = json!({"jsonrpc": "2.0", "id": "srv-1", "method": "sampling/createMessage",
            "params": {"messages": [{"role": "user", "content": {"type": "text", "text": "2+2?"}}],
                "maxTokens": 5}});
        let head = format!("{SSE_OK}data: {ask}\n\n");
        if socket.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let answer = tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let said = answer["result"]["content"]["text"]
            .as_str()
            .unwrap_or("no answer");
        format!(
            "data: {}\n\n",
            result(&request["id"], &format!("sampled: {said}"))
        )
    } else if let Some(waiting) = request["id"]
        .as_str()
        .and_then(|id| shared.lock().unwrap().waiting.remove(id))
        .filter(|_| request.get("method").is_none())
    {
        // The gateway's answer to our request.
        let _ = waiting.send(request);
        "HTTP/1.1 202 Accepted\r\nConnection: close\r\nContent-Length: 0\r\n\r\n".to_owned()
    } else {
        match answer(&request) {
            Some(rest) => format!("HTTP/1.1 200 OK\r\nConnection: close\r\n{rest}"),
            // Notifications and anything else.
            None => {
                "HTTP/1.1 202 Accepted\r\nConnection: close\r\nContent-Length: 0\r\n\r\n".to_owned()
            }
        }
    };
    let _ = socket.write_all(reply.as_bytes()).await;
    let _ = socket.shutdown().await;
}

/// A gateway with tenant `acme` on the scripted upstream, spoken to in `protocol`.
async fn on_script(protocol: &str) -> Gw {
    acme_on_http(&scripted_upstream().await, protocol, false).await
}

#[tokio::test]
async fn every_valid_framing_is_read_and_an_unknown_one_is_named() {
    let url = scripted_upstream().await;
    let server =
        http_server("web", &url).replace("[servers.http]", "protocol = \"legacy\"\n[servers.http]");
    let gw = Gw::in_process(
        &server,
        &[TenantSpec {
            id: "acme",
            servers: &["web"],
            namespacing: false,
        }],
        "",
    )
    .await;
    gw.ready().await;
    let s = gw.legacy("acme").await;

    // Pretty-printed over CRLF data lines, after a priming event, a comment and a retry.
    let tools = s.request(1, "tools/list", json!({})).await;
    let names: Vec<&str> = tools.response()["result"]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["several", "html", "untyped", "polled", "push"]);

    // Everything before the response reaches the client, in order, and then the response.
    let a = s
        .request(
            2,
            "tools/call",
            json!({"name": "several", "arguments": {}, "_meta": {"progressToken": "mine"}}),
        )
        .await;
    let methods: Vec<&str> = a
        .messages
        .iter()
        .map(|m| m["method"].as_str().unwrap_or("response"))
        .collect();
    assert_eq!(
        methods,
        [
            "notifications/progress",
            "notifications/message",
            "response"
        ]
    );
    assert_eq!(a.messages[0]["params"]["progressToken"], "mine");
    assert_eq!(text(a.response()), "done");

    // Another type is an error that says which; so is no type at all.
    for (id, tool, says) in [
        (3, "html", "Content-Type `text/html`"),
        (4, "untyped", "no Content-Type"),
    ] {
        let a = s.call(id, tool, json!({})).await;
        let message = a.response()["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(says), "{tool}: {message}");
        assert_eq!(a.response()["error"]["code"], -32001, "{tool}");
    }
    // The link survives answers it could not read.
    assert_eq!(
        text(s.call(5, "several", json!({})).await.response()),
        "done"
    );
}

#[tokio::test]
async fn a_call_stream_the_upstream_closes_is_resumed_and_a_legacy_client_polls_too() {
    let gw = on_script("legacy").await;
    // A legacy client is asked to do what the upstream did: its stream ends after a priming
    // event and a retry delay, and it comes back with Last-Event-ID for the answer.
    let s = gw.legacy("acme").await;
    let resp = s
        .start(json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"polled","arguments":{}}}))
        .await;
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let body = resp.text().await.unwrap();
    assert!(
        body.contains("retry: 20") && !body.contains("\"result\""),
        "{body}"
    );
    let mut decoder = mcp_wire::sse::Decoder::new(1 << 20);
    decoder.push(body.as_bytes());
    while decoder.next_event().unwrap().is_some() {}
    let last = decoder.last_event_id().expect("an event id").to_owned();
    let answer = read_answer(s.resume(&last).await).await;
    assert_eq!(answer.response()["id"], 7, "{:?}", answer.messages);
    assert_eq!(text(answer.response()), "polled");

    // A 2026-07-28 client cannot resume a stream: the gateway resumes the upstream's for it.
    let a = gw
        .modern(
            "acme",
            8,
            "tools/call",
            json!({"name": "polled", "arguments": {}}),
        )
        .await;
    assert_eq!(text(a.response()), "polled", "{:?}", a.messages);
}

#[tokio::test]
async fn a_request_on_a_modern_calls_stream_reaches_its_client_in_its_own_era() {
    let gw = on_script("modern").await;
    // A legacy client gets it as a request on its call's stream, and answers it.
    let s = gw.legacy("acme").await;
    let call = json!({"jsonrpc":"2.0","id":1,"method":"tools/call",
        "params":{"name":"push","arguments":{}}});
    let (asked, final_msg) = s.call_answering(call, sampling_reply).await;
    assert_eq!(asked, ["sampling/createMessage"]);
    assert_eq!(text(&final_msg), "sampled: four", "{final_msg}");

    // A 2026-07-28 client gets it as an input-required round trip.
    let first = gw
        .modern(
            "acme",
            2,
            "tools/call",
            json!({"name": "push", "arguments": {}}),
        )
        .await;
    let result = &first.response()["result"];
    assert_eq!(result["resultType"], "input_required", "{result}");
    let (key, request) = result["inputRequests"]
        .as_object()
        .and_then(|o| o.iter().next())
        .expect("one input request");
    assert_eq!(request["method"], "sampling/createMessage");
    let retry = json!({"name": "push", "arguments": {},
        "requestState": result["requestState"],
        "inputResponses": {key: {"role": "assistant", "model": "m",
            "content": {"type": "text", "text": "four"}}}});
    let done = gw.modern("acme", 3, "tools/call", retry).await;
    assert_eq!(
        text(done.response()),
        "sampled: four",
        "{:?}",
        done.messages
    );
}
