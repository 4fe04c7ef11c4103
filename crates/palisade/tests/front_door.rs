//! Bad input at the front door gets a precise HTTP status and JSON-RPC error, and sessions are
//! bound to the principal that opened them. Runs the real gateway binary.

mod common;

use common::*;
use serde_json::{Value, json};

fn code(a: &Answer) -> i64 {
    a.response()["error"]["code"].as_i64().unwrap_or(0)
}

#[tokio::test]
async fn malformed_requests_get_precise_errors() {
    let gw = two_tenants_on_kit("");
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
    let gw = two_tenants_on_kit("");
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
    let gw = two_tenants_on_kit("");
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
    let gw = two_tenants_on_kit("");
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
    let gw = two_tenants_on_kit("");
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
    let gw = Gw::start_with(
        &stdio_server("kit", "protocol = \"legacy\""),
        &[TenantSpec {
            id: "acme",
            servers: &["kit"],
            namespacing: true,
        }],
        "[limits]\nmax_sessions_per_tenant = 2\nmax_parked_per_tenant = 1\n",
    );
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
async fn the_example_config_checks() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/palisade.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["check", "--config", example])
        .env("PALISADE_PEPPER", "p".repeat(48))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK (2 servers, 2 tenants)"));
}

#[tokio::test]
async fn slow_clients_and_connection_floods_are_bounded() {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = Gw::start_full(
        &stdio_server("kit", ""),
        &[TenantSpec {
            id: "acme",
            servers: &["kit"],
            namespacing: true,
        }],
        "",
        "header_read_timeout_ms = 1000\nmax_connections = 2\n",
    );
    gw.ready().await;
    let addr = gw
        .mcp
        .trim_start_matches("http://")
        .trim_end_matches("/mcp")
        .to_owned();

    // Headers that never finish: the connection is closed after the timeout.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), slow.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "a slow-header client is disconnected");

    // Two connections held open fill the listener; a third client waits until one goes (the
    // held ones send nothing, so the 1 s header timeout would free them too, later than this).
    let hold1 = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let hold2 = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let third = gw.post(Some(gw.key("acme")), &[], ping);
    tokio::pin!(third);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut third)
            .await
            .is_err(),
        "served while the listener was full"
    );
    drop(hold1);
    drop(hold2);
    let answer = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("served once a slot freed");
    assert_eq!(
        answer.status, 400,
        "a legacy ping without a session: answered, not dropped"
    );
}
