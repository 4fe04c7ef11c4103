//! Every valid Streamable HTTP answer an upstream may give is read as its `Content-Type` says:
//! SSE with several events before the response, events whose data spans several `data:` lines,
//! comments, `retry` fields, priming events, CRLF line ends, JSON with a charset and trailing
//! whitespace; and an answer of another type fails with an error that names it.
//!
//! No SDK server sends all of these, so the upstream here is scripted: a raw HTTP/1.1 server
//! that answers each JSON-RPC method with fixed bytes.

mod common;

use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The bytes after the status line for one request, by method (and tool name).
fn answer(request: &Value) -> Option<String> {
    let id = request["id"].clone();
    let method = request["method"].as_str().unwrap_or("");
    let tool = request["params"]["name"].as_str().unwrap_or("");
    let progress = request["params"]["_meta"]["progressToken"].clone();
    let sse = |body: &str| format!("Content-Type: text/event-stream\r\n\r\n{body}");
    let response = |result: Value| json!({"jsonrpc": "2.0", "id": id, "result": result});
    Some(match (method, tool) {
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
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head_end, length) = loop {
                    let Ok(n) = socket.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
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
                    let Ok(n) = socket.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let request: Value =
                    serde_json::from_slice(&buf[head_end..head_end + length]).unwrap_or_default();
                let reply = match answer(&request) {
                    Some(rest) => format!("HTTP/1.1 200 OK\r\nConnection: close\r\n{rest}"),
                    // Notifications, GET and anything else.
                    None if buf.starts_with(b"GET") => {
                        "HTTP/1.1 405 Method Not Allowed\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
                            .to_owned()
                    }
                    None => "HTTP/1.1 202 Accepted\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
                        .to_owned(),
                };
                let _ = socket.write_all(reply.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    url
}

#[tokio::test]
async fn every_valid_framing_is_read_and_an_unknown_one_is_named() {
    let url = scripted_upstream().await;
    let server =
        http_server("web", &url).replace("[servers.http]", "protocol = \"legacy\"\n[servers.http]");
    let gw = Gw::start(
        &server,
        &[TenantSpec {
            id: "acme",
            servers: &["web"],
            namespacing: false,
        }],
    );
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
    assert_eq!(names, ["several", "html", "untyped"]);

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
