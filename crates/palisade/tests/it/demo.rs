//! The README's first command: `palisade demo` starts with embedded defaults, prints a key per
//! tenant, and each key reaches its own tenant's rows through the shared palisade-sql (which
//! learns the tenant from the gateway's signed assertion).

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::common::{ACCEPT, read_answer};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// What the demo printed before it served: each tenant's key, and the MCP URL it listens on.
struct Printed {
    keys: Vec<(String, String)>,
    mcp: String,
}

async fn read_until_listening(out: tokio::process::ChildStdout) -> Printed {
    let mut lines = BufReader::new(out).lines();
    let mut keys = Vec::new();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some((tenant, key)) = line.trim().split_once(": API key ") {
            keys.push((tenant.to_owned(), key.to_owned()));
        }
        if let Some(rest) = line.strip_prefix("palisade listening mcp=") {
            let mcp = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
            // Keep reading, so the demo never writes to a closed pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Printed { keys, mcp };
        }
    }
    panic!("the demo ended before it was listening (keys so far: {keys:?})");
}

/// A legacy session for `key`: its `initialize`, then one `tools/call`; the call's result.
async fn call_as(mcp: &str, key: &str, tool: &str, arguments: Value) -> Value {
    let http = reqwest::Client::new();
    let post = |session: Option<&str>, body: Value| {
        let mut req = http
            .post(mcp)
            .bearer_auth(key)
            .header("accept", ACCEPT)
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(s) = session {
            req = req
                .header("mcp-session-id", s)
                .header("mcp-protocol-version", "2025-06-18");
        }
        req.send()
    };
    let init = post(
        None,
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "demo-test", "version": "1"}}}),
    )
    .await
    .expect("initialize");
    assert_eq!(init.status(), 200, "the demo refused a key it printed");
    let session = init
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .expect("a session id")
        .to_owned();
    let _ = read_answer(init).await;
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    post(Some(&session), initialized)
        .await
        .expect("initialized");
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": tool, "arguments": arguments}});
    let answer = read_answer(post(Some(&session), call).await.expect("tools/call")).await;
    answer.response()["result"].clone()
}

#[tokio::test]
async fn the_demo_prints_keys_that_reach_each_tenants_own_rows() {
    let mut demo = tokio::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["demo", "--port", &free_port().to_string()])
        .args(["--admin-port", &free_port().to_string()])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run palisade demo");
    let out = demo.stdout.take().expect("stdout");
    let printed = tokio::time::timeout(Duration::from_secs(60), read_until_listening(out))
        .await
        .expect("the demo was listening within 60 s");
    let tenants: Vec<&str> = printed.keys.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(tenants, ["acme", "globex"], "a key per tenant");

    for (tenant, key) in &printed.keys {
        let sql = json!({"sql": "SELECT DISTINCT tenant_id FROM orders"});
        let result = call_as(&printed.mcp, key, "sql__query_database", sql).await;
        assert_eq!(result["isError"], false, "{result}");
        assert_eq!(
            result["structuredContent"]["rows"],
            json!([[tenant]]),
            "{tenant}'s key sees {tenant}'s rows and no one else's"
        );
        let echo = json!({"message": format!("hello from {tenant}")});
        let result = call_as(&printed.mcp, key, "kit__echo", echo).await;
        assert!(
            result.to_string().contains(&format!("hello from {tenant}")),
            "{result}"
        );
    }

    let pid = nix::unistd::Pid::from_raw(demo.id().expect("running") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let status = tokio::time::timeout(Duration::from_secs(20), demo.wait())
        .await
        .expect("the demo stopped within 20 s of SIGTERM")
        .expect("exit status");
    assert!(status.success(), "{status}");
}
