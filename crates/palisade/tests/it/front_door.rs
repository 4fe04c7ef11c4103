//! Bad input at the front door gets a precise HTTP status and JSON-RPC error, and sessions are
//! bound to the principal that opened them. Runs the real gateway binary.

use crate::common;

use common::*;
use serde_json::{Value, json};

fn code(a: &Answer) -> i64 {
    a.response()["error"]["code"].as_i64().unwrap_or(0)
}

#[tokio::test]
async fn malformed_requests_get_precise_errors() {
    let gw = two_tenants_on_kit("").await;
    gw.ready().await;
    let key = gw.key("acme").to_owned();

    let a = gw.post(Some(&key), &[], "{not json").await;
    assert_eq!((a.status, code(&a)), (400, -32700), "{:?}", a.messages);

    let a = gw
        .post(
            Some(&key),
            &[],
            r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
        )
        .await;
    assert_eq!((a.status, code(&a)), (400, -32600));
    assert!(
        a.response()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("batch")
    );

    let a = gw
        .post(
            Some(&key),
            &[],
            r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
        )
        .await;
    assert_eq!((a.status, code(&a)), (400, -32600));

    // Over the 4 MiB default body limit.
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{{"pad":"{}"}}}}"#,
        "x".repeat(5 << 20)
    );
    let a = gw.post(Some(&key), &[], big).await;
    assert_eq!(a.status, 413);
    assert!(
        a.response()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_body_bytes")
    );
}

#[tokio::test]
async fn unknown_methods_and_tools() {
    let gw = two_tenants_on_kit("").await;
    gw.ready().await;
    let s = gw.legacy("acme").await;
    let a = s.request(1, "no/such", json!({})).await;
    assert_eq!((a.status, code(&a)), (200, -32601));
    let a = s.call(2, "kit__no_such_tool", json!({})).await;
    assert_eq!(code(&a), -32602, "{:?}", a.messages);
    let a = s.call(3, "other__echo", json!({"message": "x"})).await;
    assert_eq!(code(&a), -32602);
    assert!(
        a.response()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown tool")
    );
    let a = s
        .request(4, "resources/read", json!({"uri": "nowhere+test://x"}))
        .await;
    assert_eq!(
        code(&a),
        -32002,
        "legacy resource not found: {:?}",
        a.messages
    );
    let a = s
        .request(5, "tools/list", json!({"cursor": "forged"}))
        .await;
    assert_eq!(code(&a), -32602);
    // Names nobody listed never become metric labels: cardinality stays bounded.
    let m = gw.metrics().await;
    assert!(!m.contains("no_such_tool"), "{m}");
    assert!(m.contains(r#"tool="other""#), "{m}");
}

#[tokio::test]
async fn headers_and_credentials() {
    let gw = two_tenants_on_kit("").await;
    let key = gw.key("acme").to_owned();
    let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;

    // Accept must list both types.
    let r = gw
        .http
        .post(&gw.mcp)
        .header("accept", "application/json")
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {key}"))
        .body(ping)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 406);

    let a = gw
        .post(Some(&key), &[("origin", "https://evil.example")], ping)
        .await;
    assert_eq!(a.status, 403);
    let a = gw
        .post(Some(&key), &[("origin", "http://localhost:3000")], ping)
        .await;
    assert_ne!(a.status, 403, "loopback origins are allowed");
    let a = gw.post(Some(&key), &[("host", "evil.example")], ping).await;
    assert_eq!(a.status, 403, "DNS rebinding: foreign Host refused");

    let r = gw
        .http
        .post(&gw.mcp)
        .header("accept", ACCEPT)
        .header("content-type", "application/json")
        .body(ping)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );

    let a = gw.post(Some("pal_not_a_real_key"), &[], ping).await;
    assert_eq!(a.status, 401);
    assert!(
        !format!("{:?}", a.messages).contains("pal_not_a_real_key"),
        "errors never echo credentials"
    );
    assert!(
        !gw.log().contains("pal_not_a_real_key"),
        "logs never hold credentials"
    );

    let a = gw.post(Some(&key), &[], ping).await;
    assert_eq!(a.status, 400, "legacy request without a session");
    let a = gw
        .post(Some(&key), &[("mcp-session-id", "nope")], ping)
        .await;
    assert_eq!(a.status, 404, "unknown session");
    let a = gw
        .post(Some(&key), &[("mcp-protocol-version", "1999-01-01")], ping)
        .await;
    assert_eq!(a.status, 400, "unsupported protocol version header");
}

#[tokio::test]
async fn session_is_bound_to_its_principal() {
    let gw = two_tenants_on_kit("").await;
    gw.ready().await;
    let acme = gw.legacy("acme").await;
    let ping = json!({"jsonrpc":"2.0","id":1,"method":"ping"}).to_string();
    let own = gw
        .post(
            Some(&acme.key),
            &[("mcp-session-id", &acme.session)],
            ping.clone(),
        )
        .await;
    assert_eq!(own.status, 200);
    // Tenant B's key with tenant A's session id: exactly like an unknown session.
    let foreign = gw
        .post(
            Some(gw.key("globex")),
            &[("mcp-session-id", &acme.session)],
            ping.clone(),
        )
        .await;
    assert_eq!(foreign.status, 404);
    // DELETE ends the session; afterwards it is unknown.
    let r = gw
        .http
        .delete(&gw.mcp)
        .header("authorization", format!("Bearer {}", acme.key))
        .header("mcp-session-id", &acme.session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let gone = gw
        .post(Some(&acme.key), &[("mcp-session-id", &acme.session)], ping)
        .await;
    assert_eq!(gone.status, 404);
    assert!(gw.metrics().await.contains("palisade_sessions_active 0"));
}

#[tokio::test]
async fn modern_era_checks_headers_against_the_body() {
    let gw = two_tenants_on_kit("").await;
    gw.ready().await;
    let key = gw.key("acme").to_owned();
    let meta = json!({"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}});
    let body = |method: &str, params: Value| {
        json!({"jsonrpc":"2.0","id":7,"method":method,"params":params}).to_string()
    };

    let ok = gw.modern("acme", 1, "server/discover", json!({})).await;
    assert_eq!(ok.status, 200, "{:?}", ok.messages);
    let r = &ok.response()["result"];
    assert_eq!(r["resultType"], "complete");
    assert!(
        r["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&json!("2026-07-28"))
    );
    assert!(r["capabilities"]["tools"].is_object());

    let a = gw
        .post(
            Some(&key),
            &[
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/list"),
            ],
            body("tools/call", json!({"name":"kit__echo","_meta":meta})),
        )
        .await;
    assert_eq!((a.status, code(&a)), (400, -32020), "Mcp-Method mismatch");
    let a = gw
        .post(
            Some(&key),
            &[
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/call"),
                ("mcp-name", "kit__add"),
            ],
            body(
                "tools/call",
                json!({"name":"kit__echo","arguments":{"message":"x"},"_meta":meta}),
            ),
        )
        .await;
    assert_eq!((a.status, code(&a)), (400, -32020), "Mcp-Name mismatch");
    let a = gw
        .post(
            Some(&key),
            &[
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/list"),
            ],
            body("tools/list", json!({})),
        )
        .await;
    assert_eq!((a.status, code(&a)), (400, -32602), "missing _meta");
    let future = json!({"io.modelcontextprotocol/protocolVersion":"2030-01-01","io.modelcontextprotocol/clientCapabilities":{}});
    let a = gw
        .post(
            Some(&key),
            &[("mcp-method", "tools/list")],
            body("tools/list", json!({"_meta": future})),
        )
        .await;
    assert_eq!((a.status, code(&a)), (400, -32022), "{:?}", a.messages);
    assert!(
        a.response()["error"]["data"]["supported"]
            .as_array()
            .unwrap()
            .contains(&json!("2026-07-28"))
    );

    // Header and body disagree: a mismatch, whatever the body's version is.
    let v999 = json!({"io.modelcontextprotocol/protocolVersion":"v999.0.0","io.modelcontextprotocol/clientCapabilities":{}});
    let a = gw
        .post(
            Some(&key),
            &[
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/list"),
            ],
            body("tools/list", json!({"_meta": v999})),
        )
        .await;
    assert_eq!((a.status, code(&a)), (400, -32020), "{:?}", a.messages);
    // Both unsupported: -32022, for this request id, naming what was asked for.
    let a = gw
        .post(
            Some(&key),
            &[
                ("mcp-protocol-version", "v999.0.0"),
                ("mcp-method", "tools/list"),
            ],
            body("tools/list", json!({"_meta": v999})),
        )
        .await;
    assert_eq!((a.status, code(&a)), (400, -32022), "{:?}", a.messages);
    assert_eq!(a.response()["id"], 7);
    assert_eq!(a.response()["error"]["data"]["requested"], "v999.0.0");
    // The handshake and ping do not exist in 2026-07-28.
    for method in ["initialize", "ping"] {
        let a = gw
            .modern("acme", 3, method, json!({"protocolVersion": "2025-11-25"}))
            .await;
        assert_eq!(
            (a.status, code(&a)),
            (404, -32601),
            "{method}: {:?}",
            a.messages
        );
    }

    let a = gw.modern("acme", 2, "no/such", json!({})).await;
    assert_eq!((a.status, code(&a)), (404, -32601));

    let r = gw
        .http
        .get(&gw.mcp)
        .header("accept", "text/event-stream")
        .header("authorization", format!("Bearer {key}"))
        .header("mcp-protocol-version", "2026-07-28")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
}

#[tokio::test]
async fn check_names_the_offending_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        format!(
            "{}\n[[tenants]]\nid = \"acme\"\nservers = [\"missing\"]\n",
            stdio_server("kit", "")
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tenants[0].servers") && err.contains("missing"),
        "{err}"
    );

    std::fs::write(
        &path,
        format!("{}\nbogus_key = 1\n", stdio_server("kit", "")),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bogus_key"));
}

#[tokio::test]
async fn per_tenant_state_is_capped() {
    let gw = Gw::in_process(
        &stdio_server("kit", "protocol = \"legacy\""),
        &[TenantSpec {
            id: "acme",
            servers: &["kit"],
            namespacing: true,
        }],
        "[limits]\nmax_sessions_per_tenant = 2\nmax_parked_per_tenant = 1\n",
    )
    .await;
    gw.ready().await;
    let first = gw.legacy("acme").await;
    let _second = gw.legacy("acme").await;
    let init = json!({"jsonrpc":"2.0","id":9,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}});
    let a = gw.post(Some(gw.key("acme")), &[], init.to_string()).await;
    assert_eq!((a.status, code(&a)), (429, -32005), "{:?}", a.messages);
    assert!(
        a.response()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limits.max_sessions_per_tenant")
    );
    // Ending a session frees its slot.
    let r = gw
        .http
        .delete(&gw.mcp)
        .header("authorization", format!("Bearer {}", first.key))
        .header("mcp-session-id", &first.session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        gw.post(Some(gw.key("acme")), &[], init.to_string())
            .await
            .status,
        200
    );

    // Calls parked waiting for a modern client's input are capped too.
    let sampling = json!({"name": "kit__sampling", "arguments": {"prompt": "q"}});
    let parked = gw.modern("acme", 1, "tools/call", sampling.clone()).await;
    assert_eq!(parked.response()["result"]["resultType"], "input_required");
    let refused = gw.modern("acme", 2, "tools/call", sampling).await;
    assert_eq!(
        (refused.status, code(&refused)),
        (429, -32005),
        "{:?}",
        refused.messages
    );
}

#[tokio::test]
async fn what_a_client_makes_a_session_store_is_bounded() {
    let gw = Gw::in_process(
        &stdio_server("kit", ""),
        &[TenantSpec {
            id: "acme",
            servers: &["kit"],
            namespacing: true,
        }],
        "[limits]\ninitialize_rate = { per_second = 0.01, burst = 2 }\n",
    )
    .await;
    gw.ready().await;
    let key = gw.key("acme").to_owned();
    let init = |capabilities: Value| {
        json!({"jsonrpc":"2.0","id":9,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":capabilities,"clientInfo":{"name":"t","version":"1"}}}).to_string()
    };
    // Capabilities larger than a session stores: refused before any session exists.
    let huge = json!({"experimental": {"pad": "x".repeat(20_000)}});
    let a = gw.post(Some(&key), &[], init(huge)).await;
    assert_eq!(code(&a), -32602, "{:?}", a.messages);
    assert!(a.headers.get("mcp-session-id").is_none());

    // A subscription to a URI longer than a session stores.
    let session = gw.legacy("acme").await;
    let long = format!("kit+file:///{}", "u".repeat(5_000));
    let a = session
        .request(2, "resources/subscribe", json!({ "uri": long }))
        .await;
    assert_eq!(code(&a), -32602, "{:?}", a.messages);

    // The tenant's `initialize` rate: a burst of two, then 429 with when to retry.
    let _second = gw.legacy("acme").await;
    let a = gw.post(Some(&key), &[], init(json!({}))).await;
    assert_eq!((a.status, code(&a)), (429, -32005), "{:?}", a.messages);
    assert!(
        a.response()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limits.initialize_rate")
    );
    assert!(a.headers.get("retry-after").is_some(), "{:?}", a.headers);
}

#[tokio::test]
async fn the_example_config_checks() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/palisade.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["check", "--config", example])
        .env("PALISADE_PEPPER", "p".repeat(48))
        .output()
        .unwrap();
    assert!(succeeded(out).contains("OK (2 servers, 2 tenants)"));
}

/// The MCP listener's address, `host:port`.
fn addr_of(gw: &Gw) -> String {
    gw.mcp
        .trim_start_matches("http://")
        .trim_end_matches("/mcp")
        .to_owned()
}

/// A raw connection to the MCP listener from the loopback address `from`.
async fn connect_from(from: [u8; 4], addr: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(std::net::SocketAddr::from((from, 0))).unwrap();
    socket.connect(addr.parse().unwrap()).await.unwrap()
}

/// Whether the gateway closes `stream` within `within` (reading whatever it sends first).
async fn closed_within(stream: &mut tokio::net::TcpStream, within: std::time::Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut buf))
        .await
        .is_ok()
}

/// A keep-alive HTTP/1.1 request with `key`, and its response head and body as text.
async fn raw_ping(stream: &mut tokio::net::TcpStream, key: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let request = format!(
        "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\nAccept: application/json, text/event-stream\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // The answer is small and ends with its JSON body.
    while !got.ends_with(b"}") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed before the answer");
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn acme_on_kit_listening(listen: &str) -> Gw {
    Gw::start_full(
        &stdio_server("kit", ""),
        &[TenantSpec {
            id: "acme",
            servers: &["kit"],
            namespacing: true,
        }],
        "",
        listen,
    )
}

#[tokio::test]
async fn slow_clients_and_connection_floods_are_bounded() {
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    let gw = acme_on_kit_listening("header_read_timeout_ms = 1000\nmax_connections = 3\n");
    gw.ready().await;
    let addr = addr_of(&gw);

    // Headers that never finish: the connection is closed after the timeout.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    assert!(
        closed_within(&mut slow, Duration::from_secs(5)).await,
        "a slow-header client is disconnected"
    );

    // Every slot held by a client that sends nothing, one byte, or only the HTTP/2 preface:
    // each is closed by its first-request deadline, whatever the protocol, and the listener
    // serves again.
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut one_byte = tokio::net::TcpStream::connect(&addr).await.unwrap();
    one_byte.write_all(b"P").await.unwrap();
    let mut h2 = tokio::net::TcpStream::connect(&addr).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let waiting = gw.post(Some(gw.key("acme")), &[], ping);
    tokio::pin!(waiting);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut waiting)
            .await
            .is_err(),
        "served while the listener was full"
    );
    for (what, stream) in [
        ("silent", &mut silent),
        ("one byte", &mut one_byte),
        ("HTTP/2 preface", &mut h2),
    ] {
        assert!(
            closed_within(stream, Duration::from_secs(5)).await,
            "a connection that sent {what} is closed"
        );
    }
    let answer = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("served once the silent connections were closed");
    assert_eq!(
        answer.status, 400,
        "a legacy ping without a session: answered, not dropped"
    );
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(r#"palisade_http_rejections_total{reason="first_request_timeout"}"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn idle_connections_close_and_busy_ones_stay() {
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    let gw = acme_on_kit_listening("idle_timeout_ms = 1000\nbody_read_timeout_ms = 1000\n");
    gw.ready().await;
    let addr = addr_of(&gw);
    let key = gw.key("acme").to_owned();

    // After its request, a keep-alive connection is closed once idle for the timeout.
    let mut idle = connect_from([127, 0, 0, 1], &addr).await;
    let answer = raw_ping(&mut idle, &key).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        closed_within(&mut idle, Duration::from_secs(5)).await,
        "an idle connection is closed"
    );

    // A call running longer than the idle timeout keeps its connection.
    let legacy = gw.legacy("acme").await;
    let answer = legacy
        .call(2, "kit__slow", serde_json::json!({"ms": 2500}))
        .await;
    assert!(
        answer.response().get("result").is_some(),
        "{}",
        answer.response()
    );

    // A body that never finishes is answered 408 after its deadline.
    let mut partial = connect_from([127, 0, 0, 1], &addr).await;
    let head = format!(
        "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\nAccept: application/json, text/event-stream\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"jsonrpc\""
    );
    partial.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    use tokio::io::AsyncReadExt;
    let read = tokio::time::timeout(Duration::from_secs(5), partial.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "a stalled body is not held forever");
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(got.contains("body_read_timeout_ms"), "{got}");
}

#[tokio::test]
async fn one_source_cannot_hold_every_unauthenticated_slot() {
    use std::time::Duration;
    // A long first-request deadline: what closes connections here is the per-source cap.
    let gw = acme_on_kit_listening(
        "header_read_timeout_ms = 60000\nmax_unauthenticated_per_source = 2\n",
    );
    gw.ready().await;
    let addr = addr_of(&gw);
    let key = gw.key("acme").to_owned();

    // An authenticated connection does not count against its source.
    let mut authenticated = connect_from([127, 0, 0, 1], &addr).await;
    assert!(
        raw_ping(&mut authenticated, &key)
            .await
            .starts_with("HTTP/1.1 400")
    );
    let _held1 = connect_from([127, 0, 0, 1], &addr).await;
    let _held2 = connect_from([127, 0, 0, 1], &addr).await;
    let mut third = connect_from([127, 0, 0, 1], &addr).await;
    assert!(
        closed_within(&mut third, Duration::from_secs(5)).await,
        "a third unauthenticated connection from one address is closed at once"
    );
    // Another address, and the authenticated connection, are still served.
    let mut other = connect_from([127, 0, 0, 2], &addr).await;
    assert!(raw_ping(&mut other, &key).await.starts_with("HTTP/1.1 400"));
    assert!(
        raw_ping(&mut authenticated, &key)
            .await
            .starts_with("HTTP/1.1 400")
    );
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(r#"palisade_http_rejections_total{reason="source_limit"} 1"#),
        "{metrics}"
    );
}

/// The gateway's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The gateway's open file descriptors.
fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// A client that never reads its stream while the upstream floods it with progress (20,000
/// notifications of 8 KiB, 160 MB): the gateway drops what does not fit the call's queue and
/// counts it instead of buffering, so its memory grows by far less than the flood; the call's
/// result is kept and arrives once the client reads.
#[tokio::test]
async fn a_client_that_never_reads_costs_bounded_memory() {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = one_kit("").await;
    let s = gw.legacy("acme").await;
    let before = rss_kib(gw.pid());
    let body = json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{
        "name":"kit__progress","arguments":{"steps":20000,"message_bytes":8192},
        "_meta":{"progressToken":"p"}}})
    .to_string();
    let request = format!(
        "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nMcp-Session-Id: {}\r\nAccept: application/json, text/event-stream\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        s.key,
        s.session,
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(addr_of(&gw)).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();

    // Not reading: the flood goes on upstream until most of it has been dropped.
    let dropped = r#"palisade_call_events_dropped_total{server="kit",kind="notification"}"#;
    let mut peak = before;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        peak = peak.max(rss_kib(gw.pid()));
        let n = metric(&gw.metrics().await, dropped);
        if n >= 15_000.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {n} notifications dropped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // What it may hold for this stream: 64 queued events of ~8 KiB, hyper's write buffer, and
    // the allocator's slack; the flood was 160 MB.
    assert!(
        peak < before + 48 * 1024,
        "memory grew from {before} KiB to {peak} KiB for one unread stream"
    );

    // Reading now: the stream ends with the call's result.
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let done = br#""text":"done""#;
    while !got.windows(done.len()).any(|w| w == done) {
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf))
            .await
            .expect("the result never came")
            .unwrap();
        assert!(n > 0, "the stream ended without the result");
        got.extend_from_slice(&buf[..n]);
        // Keep only a tail: what matters is the end.
        if got.len() > 1 << 20 {
            got.drain(..got.len() - 1024);
        }
    }
}

/// 10,000 connections that never send a request, from 100 source addresses (within the
/// per-source limit): a client is still served beside them, each costs little memory, and the
/// gateway closes them all at their first-request deadline, giving their files back.
#[tokio::test]
async fn ten_thousand_idle_connections() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    use std::time::Duration;
    // The test holds the 10,000 sockets too: it raises its soft limit as the gateway does.
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if hard < 10_500 {
        skip(&format!("the open-file limit ({hard}) is below 10,500"));
        return;
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    let gw = acme_on_kit_listening("header_read_timeout_ms = 15000\nmax_connections = 10100\n");
    gw.ready().await;
    let addr = addr_of(&gw);
    let s = gw.legacy("acme").await;
    let (rss_before, files_before) = (rss_kib(gw.pid()), open_files(gw.pid()));

    // In batches the listen backlog holds, each accepted before the next.
    let mut idle = Vec::with_capacity(10_000);
    for batch in 0..20u32 {
        let connects = (batch * 500..(batch + 1) * 500).map(|i| {
            let from = [127, 0, 1 + (i / 100 / 250) as u8, 1 + (i / 100 % 250) as u8];
            connect_from(from, &addr)
        });
        idle.extend(futures_util::future::join_all(connects).await);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while open_files(gw.pid()) < files_before + idle.len() {
            assert!(
                std::time::Instant::now() < deadline,
                "{} files open with {} connections",
                open_files(gw.pid()),
                idle.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let answer = s
        .call(1, "kit__echo", json!({"message": "still here"}))
        .await;
    assert_eq!(
        text(answer.response()),
        "still here",
        "{:?}",
        answer.messages
    );
    let rss_held = rss_kib(gw.pid());
    let per_connection = (rss_held.saturating_sub(rss_before)) * 1024 / 10_000;
    eprintln!("10,000 idle connections: {per_connection} bytes of gateway memory each");
    assert!(
        per_connection < 16 * 1024,
        "{per_connection} bytes of memory per idle connection"
    );

    // All closed by the gateway at their deadline.
    for stream in &mut idle {
        assert!(closed_within(stream, Duration::from_secs(30)).await);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while open_files(gw.pid()) > files_before + 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} files still open, {files_before} before",
            open_files(gw.pid())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Each one counted (the count may trail the close by a moment).
    let timeouts = r#"palisade_http_rejections_total{reason="first_request_timeout"}"#;
    while metric(&gw.metrics().await, timeouts) < 10_000.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            gw.metrics().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client that opens legacy sessions as fast as it can from 8 connections and abandons
/// them: `initialize` is refused (429) beyond the tenant's rate (a burst of 200, then 50 a
/// second, the defaults), another tenant still opens a session, and the abandoned sessions are
/// reaped once idle.
#[tokio::test]
async fn a_client_that_abandons_sessions_as_fast_as_it_can() {
    use std::time::{Duration, Instant};
    let gw = two_tenants_on_kit_with("", "[limits]\nsession_idle_secs = 2\n").await;
    gw.ready().await;
    let key = gw.key("acme").to_owned();
    let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"greedy","version":"1"}}}).to_string();
    let started = Instant::now();
    let loops = (0..8).map(|_| async {
        let (mut opened, mut refused) = (0u32, 0u32);
        for _ in 0..150 {
            let a = gw.post(Some(&key), &[], init.clone()).await;
            match a.status {
                200 => opened += 1,
                429 => refused += 1,
                status => panic!("initialize answered {status}: {:?}", a.messages),
            }
        }
        (opened, refused)
    });
    let counts = futures_util::future::join_all(loops).await;
    let elapsed = started.elapsed().as_secs_f64();
    let opened: u32 = counts.iter().map(|c| c.0).sum();
    let refused: u32 = counts.iter().map(|c| c.1).sum();
    assert!(refused > 0, "{opened} sessions opened, none refused");
    assert!(
        f64::from(opened) <= 200.0 + 50.0 * (elapsed + 1.0),
        "{opened} sessions opened in {elapsed:.1} s"
    );
    let globex = gw.legacy("globex").await;
    assert!(!globex.session.is_empty());
    let active = metric(&gw.metrics().await, "palisade_sessions_active");
    assert_eq!(active, f64::from(opened + 1), "sessions held");

    // Abandoned: reaped once idle (2 s here, checked every 5 s).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let active = metric(&gw.metrics().await, "palisade_sessions_active");
        if active == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{active} sessions still open");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
