//! End-to-end smoke tests of the `palisade-testkit` binary: both eras over
//! stdio, and the HTTP listening line plus one request per era.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_palisade-testkit");

struct StdioKit {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl StdioKit {
    fn spawn() -> Self {
        let mut child = Command::new(BIN)
            .arg("stdio")
            .env("TENANT_ID", "acme")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn palisade-testkit stdio");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Self {
            child,
            stdin,
            stdout,
        }
    }

    fn send(&mut self, message: Value) {
        writeln!(self.stdin, "{message}").expect("write");
        self.stdin.flush().expect("flush");
    }

    fn recv(&mut self) -> Value {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
    }

    /// Sends a request and returns (notifications before it, the response).
    fn request(&mut self, id: u64, method: &str, params: Value) -> (Vec<Value>, Value) {
        self.send(json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }));
        let mut notes = Vec::new();
        loop {
            let message = self.recv();
            if message["id"] == id && message.get("method").is_none() {
                return (notes, message);
            }
            notes.push(message);
        }
    }
}

impl Drop for StdioKit {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn text(response: &Value) -> &str {
    response["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or("")
}

fn modern_meta() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": { "sampling": {} },
    })
}

#[test]
fn stdio_legacy_initialize_echo_progress_and_sampling() {
    let mut kit = StdioKit::spawn();
    let (_, init) = kit.request(
        0,
        "initialize",
        json!({
            "protocolVersion": "2025-11-25",
            "capabilities": { "sampling": {} },
            "clientInfo": { "name": "smoke", "version": "0" },
        }),
    );
    assert_eq!(init["result"]["protocolVersion"], "2025-11-25");
    kit.send(json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }));

    let (_, echo) = kit.request(
        1,
        "tools/call",
        json!({ "name": "echo", "arguments": { "message": "hi" } }),
    );
    assert_eq!(text(&echo), "hi");
    assert!(
        echo["result"].get("resultType").is_none(),
        "legacy results carry no resultType"
    );

    let (notes, done) = kit.request(
        2,
        "tools/call",
        json!({ "name": "progress", "arguments": { "steps": 2 }, "_meta": { "progressToken": "t" } }),
    );
    assert_eq!(text(&done), "done");
    let progress: Vec<&Value> = notes.iter().map(|n| &n["params"]["progress"]).collect();
    assert_eq!(progress, [&json!(1.0), &json!(2.0)]);

    // sampling is a real server→client request on a legacy session.
    kit.send(json!({
        "jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": { "name": "sampling", "arguments": { "prompt": "2+2?" } },
    }));
    let asked = kit.recv();
    assert_eq!(asked["method"], "sampling/createMessage");
    kit.send(json!({
        "jsonrpc": "2.0", "id": asked["id"],
        "result": { "role": "assistant", "content": { "type": "text", "text": "four" }, "model": "m" },
    }));
    let answer = kit.recv();
    assert_eq!(answer["id"], 3);
    assert_eq!(text(&answer), "four");

    let (_, whoami) = kit.request(
        4,
        "tools/call",
        json!({ "name": "whoami", "arguments": {} }),
    );
    let whoami: Value = serde_json::from_str(text(&whoami)).expect("whoami JSON");
    assert_eq!(whoami["tenant_env"], "acme");
}

#[test]
fn stdio_modern_discover_and_input_required_round_trip() {
    let mut kit = StdioKit::spawn();
    let (_, discover) = kit.request(1, "server/discover", json!({ "_meta": modern_meta() }));
    let versions = discover["result"]["supportedVersions"].to_string();
    assert!(versions.contains("2026-07-28") && versions.contains("2025-11-25"));

    let call = |state: Option<&Value>, responses: Option<Value>| {
        let mut params = json!({
            "name": "sampling", "arguments": { "prompt": "2+2?" }, "_meta": modern_meta(),
        });
        if let Some(state) = state {
            params["requestState"] = state.clone();
        }
        if let Some(responses) = responses {
            params["inputResponses"] = responses;
        }
        params
    };
    let (_, first) = kit.request(2, "tools/call", call(None, None));
    assert_eq!(first["result"]["resultType"], "input_required");
    let state = first["result"]["requestState"].clone();
    let reply = json!({ "reply": { "role": "assistant", "content": { "type": "text", "text": "four" }, "model": "m" } });

    let (_, done) = kit.request(3, "tools/call", call(Some(&state), Some(reply.clone())));
    assert_eq!(done["result"]["resultType"], "complete");
    assert_eq!(text(&done), "four");

    let tampered = json!(format!("{}x", state.as_str().unwrap_or_default()));
    let (_, rejected) = kit.request(4, "tools/call", call(Some(&tampered), Some(reply)));
    assert_eq!(rejected["error"]["code"], -32602);
}

#[test]
fn stdio_garbage_then_crash_exits_3() {
    let mut kit = StdioKit::spawn();
    kit.send(json!({
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": { "name": "garbage", "arguments": {}, "_meta": modern_meta() },
    }));
    let mut line = String::new();
    kit.stdout.read_line(&mut line).expect("read");
    assert_eq!(line, "this is not json\n");
    assert_eq!(text(&kit.recv()), "sent garbage");
    kit.send(json!({
        "jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": { "name": "crash", "arguments": {}, "_meta": modern_meta() },
    }));
    let status = kit.child.wait().expect("wait");
    assert_eq!(status.code(), Some(3));
}

/// One HTTP/1.1 POST; returns (status, body).
fn post(addr: &str, headers: &[(&str, &str)], body: &Value) -> (u16, String) {
    let body = body.to_string();
    let mut stream = TcpStream::connect(addr).expect("connect");
    let mut request = format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(&body);
    stream.write_all(request.as_bytes()).expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, response)
}

#[test]
fn http_prints_the_url_and_serves_both_eras() {
    let mut child = Command::new(BIN)
        .args(["http", "--listen", "127.0.0.1:0", "--json-response"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn palisade-testkit http");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read listening line");
    let url = line
        .trim()
        .strip_prefix("listening on http://")
        .expect("listening line");
    let addr = url.strip_suffix("/mcp").expect("/mcp path").to_owned();

    let (status, body) = post(
        &addr,
        &[
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", "server/discover"),
        ],
        &json!({ "jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": { "_meta": modern_meta() } }),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("supportedVersions"), "{body}");

    let (status, body) = post(
        &addr,
        &[],
        &json!({
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": { "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": { "name": "s", "version": "0" } },
        }),
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        body.to_ascii_lowercase().contains("mcp-session-id:"),
        "{body}"
    );

    let (status, _) = post(&addr, &[("Origin", "http://evil.example.com")], &json!({}));
    assert_eq!(status, 403);

    let _ = child.kill();
    let _ = child.wait();
}
