//! What the gateway relays between clients and upstreams, in both eras: results byte for byte,
//! progress with the client's own token, logs, server→client requests to the session whose call
//! caused them, list merging with namespacing across a stdio and an HTTP upstream, list caching
//! and `list_changed`, and cancellation when a client goes away.

use crate::common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};

async fn two_upstreams(http_url: &str) -> Gw {
    let servers = format!(
        "{}{}",
        stdio_server("kit", ""),
        http_server("web", http_url)
    );
    Gw::in_process(
        &servers,
        &[
            TenantSpec {
                id: "acme",
                servers: &["kit", "web"],
                namespacing: true,
            },
            TenantSpec {
                id: "solo",
                servers: &["kit"],
                namespacing: false,
            },
        ],
        "",
    )
    .await
}

fn names(list: &Value, field: &str, key: &str) -> Vec<String> {
    list["result"][field]
        .as_array()
        .unwrap_or(&vec![])
        .iter()
        .filter_map(|t| t[key].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn lists_merge_and_calls_route_across_stdio_and_http() {
    let (web, url) = testkit_http();
    let _web = Reap(web);
    let gw = two_upstreams(&url).await;
    gw.ready().await;
    let s = gw.legacy("acme").await;

    let tools = s.request(1, "tools/list", json!({})).await;
    let tools = names(tools.response(), "tools", "name");
    assert!(
        tools.contains(&"kit__echo".to_owned()) && tools.contains(&"web__echo".to_owned()),
        "{tools:?}"
    );
    assert!(
        tools
            .iter()
            .all(|n| n.starts_with("kit__") || n.starts_with("web__"))
    );

    let a = s
        .call(2, "kit__echo", json!({"message": "via stdio"}))
        .await;
    assert_eq!(text(a.response()), "via stdio");
    assert!(
        !a.sse,
        "a call with nothing to relay first is answered as plain JSON"
    );
    let a = s.call(3, "web__echo", json!({"message": "via http"})).await;
    assert_eq!(text(a.response()), "via http");

    // Unknown fields in arguments and results pass through untouched.
    let a = s.call(4, "kit__add", json!({"a": 2, "b": 3})).await;
    assert_eq!(
        a.response()["result"]["structuredContent"]["sum"].as_f64(),
        Some(5.0)
    );

    let res = s.request(5, "resources/list", json!({})).await;
    let uris = names(res.response(), "resources", "uri");
    assert!(
        uris.contains(&"kit+test://static-text".to_owned())
            && uris.contains(&"web+test://static-text".to_owned()),
        "{uris:?}"
    );
    let read = s
        .request(
            6,
            "resources/read",
            json!({"uri": "web+test://static-text"}),
        )
        .await;
    let contents = &read.response()["result"]["contents"][0];
    assert_eq!(
        contents["uri"], "web+test://static-text",
        "URIs in read results are exposed like in lists"
    );
    assert!(contents["text"].as_str().unwrap().contains("static text"));

    let templates = s.request(7, "resources/templates/list", json!({})).await;
    assert!(
        names(templates.response(), "resourceTemplates", "uriTemplate")
            .contains(&"kit+test://template/{id}/data".to_owned())
    );

    let prompts = s.request(8, "prompts/list", json!({})).await;
    assert!(
        names(prompts.response(), "prompts", "name")
            .contains(&"web__test_simple_prompt".to_owned())
    );
    let p = s.request(9, "prompts/get", json!({"name": "kit__test_prompt_with_arguments", "arguments": {"arg1": "a", "arg2": "b"}})).await;
    assert!(
        p.response()["result"]["messages"][0]["content"]["text"]
            .as_str()
            .unwrap()
            .contains("arg1='a'"),
        "{:?}",
        p.messages
    );

    let c = s
        .request(10, "completion/complete", json!({"ref": {"type": "ref/prompt", "name": "kit__test_prompt_with_arguments"}, "argument": {"name": "arg1", "value": "al"}}))
        .await;
    assert_eq!(
        c.response()["result"]["completion"]["values"][0],
        "alpha",
        "{:?}",
        c.messages
    );

    // A tenant with one server and namespacing off sees the upstream's own names.
    let solo = gw.legacy("solo").await;
    let tools = solo.request(1, "tools/list", json!({})).await;
    assert!(names(tools.response(), "tools", "name").contains(&"echo".to_owned()));
    assert_eq!(
        text(
            solo.call(2, "echo", json!({"message": "plain"}))
                .await
                .response()
        ),
        "plain"
    );

    let m = gw.metrics().await;
    assert!(
        m.contains(
            r#"palisade_tool_calls_total{tenant="acme",server="kit",tool="echo",outcome="ok"} 1"#
        ),
        "{m}"
    );
    assert!(m.contains("palisade_catalog_cache_total"), "{m}");
}

#[tokio::test]
async fn progress_and_logs_reach_the_caller_with_its_own_token() {
    let gw = one_kit("").await;
    let s = gw.legacy("acme").await;
    let a = s
        .request(1, "tools/call", json!({"name": "kit__progress", "arguments": {"steps": 3}, "_meta": {"progressToken": "my-token"}}))
        .await;
    assert!(a.sse);
    let progress: Vec<&Value> = a
        .messages
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .collect();
    assert_eq!(progress.len(), 3, "{:?}", a.messages);
    assert!(
        progress
            .iter()
            .all(|p| p["params"]["progressToken"] == "my-token")
    );
    assert_eq!(text(a.response()), "done");
    assert_eq!(a.response()["id"], 1);

    let a = s
        .call(
            2,
            "kit__log",
            json!({"message": "hello log", "level": "warning"}),
        )
        .await;
    let log = a
        .messages
        .iter()
        .find(|m| m["method"] == "notifications/message")
        .expect("log relayed");
    assert!(log.to_string().contains("hello log"));

    // logging/setLevel filters what the gateway relays to this session.
    let set = s
        .request(3, "logging/setLevel", json!({"level": "error"}))
        .await;
    assert!(set.response()["result"].is_object());
    let a = s
        .call(4, "kit__log", json!({"message": "quiet", "level": "info"}))
        .await;
    assert!(
        a.messages
            .iter()
            .all(|m| m["method"] != "notifications/message"),
        "{:?}",
        a.messages
    );
}

#[tokio::test]
async fn sampling_request_goes_to_the_calling_session_and_back() {
    // Upstream of either era: a legacy upstream sends sampling/createMessage mid-call; a modern
    // one answers input_required, which the gateway turns into the same request for this client.
    for protocol in ["legacy", "modern"] {
        let gw = acme_on_kit(&stdio_server("kit", &format!("protocol = \"{protocol}\""))).await;
        let s = gw.legacy("acme").await;
        let call = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"kit__sampling","arguments":{"prompt":"2+2?"}}});
        let (asked, final_msg) = s.call_answering(call, sampling_reply).await;
        assert_eq!(asked, ["sampling/createMessage"], "{protocol} upstream");
        assert_eq!(final_msg["id"], 1);
        assert!(
            text(&final_msg).contains("four"),
            "{protocol} upstream: {final_msg}"
        );
    }
}

#[tokio::test]
async fn modern_client_answers_input_requests_of_either_era_upstream() {
    for protocol in ["legacy", "modern"] {
        let gw = two_tenants_on_kit(&format!("protocol = \"{protocol}\"")).await;
        gw.ready().await;
        let first = gw
            .modern(
                "acme",
                1,
                "tools/call",
                json!({"name": "kit__sampling", "arguments": {"prompt": "2+2?"}}),
            )
            .await;
        let r = &first.response()["result"];
        assert_eq!(
            r["resultType"], "input_required",
            "{protocol}: {:?}",
            first.messages
        );
        let (key, request) = r["inputRequests"]
            .as_object()
            .unwrap()
            .iter()
            .next()
            .unwrap();
        assert_eq!(request["method"], "sampling/createMessage");
        let state = r["requestState"].as_str().unwrap();

        if protocol == "legacy" {
            // The gateway's own state: another tenant cannot resume it.
            let stolen = gw
                .modern("globex", 2, "tools/call", json!({"name": "kit__sampling", "arguments": {"prompt": "2+2?"}, "requestState": state, "inputResponses": {key: sampling_reply(&Value::Null)}}))
                .await;
            assert_eq!(
                stolen.response()["error"]["code"],
                -32602,
                "{:?}",
                stolen.messages
            );
            // The state names the replica that holds the call: a retry that reaches another
            // replica is told which, and that it may retry (here: a state naming another).
            let (random, _replica) = state.rsplit_once('.').unwrap();
            let elsewhere = format!("{random}.r9");
            let moved = gw
                .modern("acme", 2, "tools/call", json!({"name": "kit__sampling", "arguments": {"prompt": "2+2?"}, "requestState": elsewhere, "inputResponses": {key: sampling_reply(&Value::Null)}}))
                .await;
            let error = &moved.response()["error"];
            assert_eq!(error["data"]["replica"], "r9", "{:?}", moved.messages);
            assert_eq!(error["data"]["retryable"], true);
            assert!(
                error["message"].as_str().unwrap().contains("retry"),
                "{error}"
            );
        }

        let retry = gw
            .modern("acme", 3, "tools/call", json!({"name": "kit__sampling", "arguments": {"prompt": "2+2?"}, "requestState": state, "inputResponses": {key: sampling_reply(&Value::Null)}}))
            .await;
        let r = retry.response();
        assert_eq!(r["id"], 3);
        assert_eq!(r["result"]["resultType"], "complete", "{protocol}: {r}");
        assert!(text(r).contains("four"), "{protocol}: {r}");
    }
}

#[tokio::test]
async fn modern_client_against_legacy_upstream() {
    // Pinned: `auto` would speak 2026-07-28 to the testkit, which adds `resultType` itself.
    let gw = one_kit("protocol = \"legacy\"").await;
    let list = gw.modern("acme", 1, "tools/list", json!({})).await;
    assert_eq!(list.status, 200);
    let r = &list.response()["result"];
    assert!(
        r["tools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "kit__echo")
    );
    assert_eq!(r["resultType"], "complete");
    assert!(r["ttlMs"].is_number() && r["cacheScope"] == "private");
    let call = gw
        .modern(
            "acme",
            2,
            "tools/call",
            json!({"name": "kit__echo", "arguments": {"message": "modern"}}),
        )
        .await;
    assert_eq!(text(call.response()), "modern");
    assert_eq!(
        call.response()["result"]["resultType"],
        "complete",
        "resultType added for a legacy upstream"
    );
    let read = gw
        .modern(
            "acme",
            3,
            "resources/read",
            json!({"uri": "kit+test://static-text"}),
        )
        .await;
    assert_eq!(read.response()["result"]["cacheScope"], "private");
}

#[tokio::test]
async fn list_changed_from_a_legacy_upstream_invalidates_the_cache_and_reaches_listeners() {
    list_changed_reaches_listeners("legacy").await;
}

#[tokio::test]
async fn list_changed_from_a_modern_upstream_invalidates_the_cache_and_reaches_listeners() {
    list_changed_reaches_listeners("modern").await;
}

/// A tool list change (testkit `toggle_tool`) empties the cache and is announced on a legacy
/// GET stream and on a modern `subscriptions/listen` stream.
async fn list_changed_reaches_listeners(protocol: &str) {
    let gw = one_kit(&format!("protocol = \"{protocol}\"")).await;
    let s = gw.legacy("acme").await;
    let before = names(
        s.request(1, "tools/list", json!({})).await.response(),
        "tools",
        "name",
    );
    assert!(!before.contains(&"kit__extra".to_owned()));

    // A legacy GET stream, and a modern subscriptions/listen stream.
    let get = s.open_get_stream().await;
    assert_eq!(get.status(), 200);
    let listen = gw.listen(&s.key).await;
    assert_eq!(listen.status(), 200);

    let toggled = s.call(2, "kit__toggle_tool", json!({})).await;
    assert!(text(toggled.response()).contains("added"));

    // A legacy upstream announces the change before the tool's result; a modern one on its
    // listen stream, which may come a moment after.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let after = names(
            s.request(3, "tools/list", json!({})).await.response(),
            "tools",
            "name",
        );
        if after.contains(&"kit__extra".to_owned()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "cache not invalidated by list_changed: {after:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let got = first_messages(get, 1).await;
    assert_eq!(got[0]["method"], "notifications/tools/list_changed");
    let got = first_messages(listen, 2).await;
    assert_eq!(got[0]["method"], "notifications/subscriptions/acknowledged");
    assert_eq!(got[0]["params"]["notifications"]["toolsListChanged"], true);
    assert_eq!(got[1]["method"], "notifications/tools/list_changed");
    assert_eq!(
        got[1]["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        "sub-1"
    );
}

async fn first_messages(resp: reqwest::Response, n: usize) -> Vec<Value> {
    let mut body = resp.bytes_stream();
    let mut decoder = mcp_wire::sse::Decoder::new(1 << 20);
    let mut out = Vec::new();
    while out.len() < n {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("no event in time")
            .expect("stream ended")
            .unwrap();
        decoder.push(&chunk);
        while let Some(ev) = decoder.next_event().unwrap() {
            if !ev.data.is_empty() {
                out.push(serde_json::from_str(&ev.data).unwrap());
            }
        }
    }
    out
}

#[tokio::test]
async fn a_client_that_drops_its_stream_cancels_the_upstream_call() {
    let gw = one_kit("").await;
    let s = gw.legacy("acme").await;
    // The client gives up on a slow call: its HTTP request goes away mid-call.
    let call = s.call(1, "kit__slow", json!({"ms": 30_000}));
    let _ = tokio::time::timeout(Duration::from_millis(500), call).await;
    // The upstream saw the cancellation.
    gw.wait_logged("slow cancelled", 1).await;

    // notifications/cancelled from the client does the same.
    let s2 = gw.legacy("acme").await;
    let key = s2.key.clone();
    let session = s2.session.clone();
    let http = gw.http.clone();
    let mcp = gw.mcp.clone();
    let started = gw.log().matches("slow started").count();
    let pending = tokio::spawn(async move {
        http.post(&mcp)
            .header("accept", ACCEPT)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {key}"))
            .header("mcp-session-id", session)
            .body(json!({"jsonrpc":"2.0","id":"c1","method":"tools/call","params":{"name":"kit__slow","arguments":{"ms":30000}}}).to_string())
            .send()
            .await
    });
    gw.wait_logged("slow started", started + 1).await;
    let before = gw.log().matches("slow cancelled").count();
    let n = s2.send(json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"c1","reason":"user"}})).await;
    assert_eq!(n.status, 202);
    let done = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("cancelled call ended")
        .unwrap()
        .unwrap();
    assert!(done.status().is_success());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while gw.log().matches("slow cancelled").count() <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "no cancellation upstream"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn http_upstream_in_either_era() {
    for protocol in ["legacy", "modern"] {
        let (gw, _web) = acme_on_web(protocol, true).await;
        assert!(
            gw.log().contains(if protocol == "modern" {
                "Modern"
            } else {
                "Legacy"
            }),
            "handshake era"
        );
        let s = gw.legacy("acme").await;
        assert_eq!(
            text(
                s.call(1, "web__echo", json!({"message": "over http"}))
                    .await
                    .response()
            ),
            "over http"
        );
        // Progress arrives on the upstream's SSE response and is relayed to this call.
        let a = s.request(2, "tools/call", json!({"name": "web__progress", "arguments": {"steps": 2}, "_meta": {"progressToken": 99}})).await;
        let progress: Vec<&Value> = a
            .messages
            .iter()
            .filter(|m| m["method"] == "notifications/progress")
            .collect();
        assert_eq!(progress.len(), 2, "{protocol}: {:?}", a.messages);
        assert_eq!(progress[0]["params"]["progressToken"], 99);
        let call = json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"web__sampling","arguments":{"prompt":"q"}}});
        let (asked, final_msg) = s.call_answering(call, sampling_reply).await;
        assert_eq!(asked, ["sampling/createMessage"], "{protocol}");
        assert!(text(&final_msg).contains("four"), "{protocol}: {final_msg}");
        // Modern client, same upstream.
        let m = gw
            .modern(
                "acme",
                4,
                "tools/call",
                json!({"name": "web__echo", "arguments": {"message": "m"}}),
            )
            .await;
        assert_eq!(text(m.response()), "m", "{protocol}: {:?}", m.messages);
    }
}

#[tokio::test]
async fn modern_upstream_errors_keep_their_http_status() {
    let gw = one_kit("protocol = \"modern\"").await;
    // No sampling capability declared: the upstream refuses with -32021, which is a 400.
    let body = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"kit__sampling","arguments":{"prompt":"q"},
        "_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}});
    let a = gw
        .post(
            Some(gw.key("acme")),
            &[
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/call"),
                ("mcp-name", "kit__sampling"),
            ],
            body.to_string(),
        )
        .await;
    assert_eq!(a.status, 400, "{:?}", a.messages);
    assert_eq!(a.response()["error"]["code"], -32021);
}

#[tokio::test]
async fn mcp_param_headers_are_checked_and_sent_upstream() {
    let (gw, _web) = acme_on_web("modern", false).await;
    let key = gw.key("acme").to_owned();
    let call = |region: &str| {
        json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"test_custom_header","arguments":{"region":region},
            "_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}})
        .to_string()
    };
    let base = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "test_custom_header"),
    ];
    let with = |v: &'static str| {
        let mut h = base.to_vec();
        h.push(("mcp-param-region", v));
        h
    };
    // Matching header (literal, then Base64): accepted, and the upstream (which checks the
    // header it receives) answers, so the gateway sent it on.
    let a = gw
        .post(Some(&key), &with("us-west1"), call("us-west1"))
        .await;
    assert_eq!(text(a.response()), "region=us-west1", "{:?}", a.messages);
    let a = gw
        .post(
            Some(&key),
            &with("=?base64?dXMtd2VzdDE=?="),
            call("us-west1"),
        )
        .await;
    assert_eq!(text(a.response()), "region=us-west1", "{:?}", a.messages);
    // Missing, mismatched or malformed: 400 / -32020 from the gateway itself.
    for headers in [
        base.to_vec(),
        with("eu-central1"),
        with("=?base64?dXMtd2VzdDE?="),
    ] {
        let a = gw.post(Some(&key), &headers, call("us-west1")).await;
        assert_eq!(
            (a.status, a.response()["error"]["code"].as_i64()),
            (400, Some(-32020)),
            "{headers:?}: {:?}",
            a.messages
        );
    }
}

#[tokio::test]
async fn every_log_of_a_legacy_http_upstream_reaches_the_session() {
    // A legacy HTTP upstream sends logs on its own GET stream, which races its POST response:
    // each log arrives exactly once, on the call's stream or, when it trails the result, on
    // the session's GET stream. (Which of two sessions may own a log is `attribution`'s unit
    // test; the race itself is too rare to provoke here.)
    let (gw, _web) = acme_on_web("legacy", false).await;
    let s = gw.legacy("acme").await;
    let get = s.open_get_stream().await;
    let mut on_get = get.bytes_stream();
    let mut decoder = mcp_wire::sse::Decoder::new(1 << 20);
    let rounds = 20;
    let mut on_post = 0;
    for i in 0..rounds {
        let a = s
            .call(
                i + 1,
                "log",
                json!({"message": format!("line {i}"), "level": "info"}),
            )
            .await;
        on_post += a
            .messages
            .iter()
            .filter(|m| m["method"] == "notifications/message")
            .count();
    }
    let mut on_stream = 0;
    while on_post + on_stream < rounds as usize {
        let Ok(Some(Ok(chunk))) = tokio::time::timeout(Duration::from_secs(3), on_get.next()).await
        else {
            break;
        };
        decoder.push(&chunk);
        while let Some(ev) = decoder.next_event().unwrap() {
            let msg: Value = serde_json::from_str(&ev.data).unwrap_or_default();
            if msg["method"] == "notifications/message" {
                on_stream += 1;
            }
        }
    }
    assert_eq!(
        on_post + on_stream,
        rounds as usize,
        "{on_post} on the calls' streams, {on_stream} on the GET stream"
    );
}

#[tokio::test]
async fn an_upstream_withdrawing_its_request_names_the_clients_id() {
    let gw = one_kit("protocol = \"legacy\"").await;
    let s = gw.legacy("acme").await;
    let a = s
        .call(1, "kit__withdrawn_request", json!({"ms": 200}))
        .await;
    let asked = a
        .messages
        .iter()
        .find(|m| m["method"] == "sampling/createMessage")
        .expect("the request reached the client");
    let cancelled = a
        .messages
        .iter()
        .find(|m| m["method"] == "notifications/cancelled")
        .expect("the withdrawal reached the client");
    assert_eq!(
        cancelled["params"]["requestId"], asked["id"],
        "{:?}",
        a.messages
    );
    assert_eq!(text(a.response()), "withdrawn");
}

#[tokio::test]
async fn names_longer_than_64_characters_are_shortened_and_still_reach_their_tool() {
    let server = "a-server-name-of-thirty-two-char";
    assert_eq!(server.len(), 32);
    let gw = Gw::in_process(
        &stdio_server(server, "protocol = \"legacy\""),
        &[TenantSpec {
            id: "acme",
            servers: &[server],
            namespacing: true,
        }],
        "",
    )
    .await;
    gw.ready().await;
    let s = gw.legacy("acme").await;
    let tools = names(
        s.request(1, "tools/list", json!({})).await.response(),
        "tools",
        "name",
    );
    assert!(tools.iter().all(|n| n.len() <= 64), "{tools:?}");
    let full = format!("{server}__test_elicitation_sep1034_defaults");
    assert!(full.len() > 64);
    let short = tools
        .iter()
        .find(|n| n.len() == 64 && n.starts_with(&full[..40]))
        .expect("a shortened name")
        .clone();
    let mut unique = tools.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), tools.len(), "shortened names stay unique");
    let call = json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name": short, "arguments": {}}});
    let (asked, final_msg) = s
        .call_answering(
            call,
            |_| json!({"action": "accept", "content": {"name": "Ada"}}),
        )
        .await;
    assert_eq!(asked, ["elicitation/create"], "{final_msg}");
    assert!(final_msg.get("result").is_some(), "{final_msg}");
}

/// Waits until the gateway has counted `n` unattributed messages of `kind` from `kit`.
async fn unattributed(gw: &Gw, kind: &str, n: u64) {
    let series =
        format!(r#"palisade_upstream_unattributed_total{{server="kit",kind="{kind}"}} {n}"#);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = gw.metrics().await;
        if metrics.contains(&series) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never counted {series}: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A shared stdio server logs and asks after its call answered (as a background task would):
/// with another tenant's call in flight, the only candidate, neither reaches it. Once a process
/// has carried one principal's calls only, the same late messages do reach that principal.
#[tokio::test]
async fn messages_without_an_established_owner_reach_nobody() {
    // Legacy: the era in which servers may ask the client on their own.
    let gw = two_tenants_on_kit("protocol = \"legacy\"").await;
    gw.ready().await;
    let acme = gw.legacy("acme").await;
    let globex = gw.legacy("globex").await;
    let late = json!({"message": "globex-private-log", "after_ms": 300});
    let (in_flight, ()) = tokio::join!(acme.call(1, "kit__slow", json!({"ms": 2500})), async {
        let a = globex.call(1, "kit__log", late).await;
        assert_eq!(text(a.response()), "will log");
        unattributed(&gw, "notification", 1).await;
        unattributed(&gw, "request", 1).await;
    });
    assert_eq!(text(in_flight.response()), "slept");
    assert_eq!(
        in_flight.messages.len(),
        1,
        "only acme's own result: {:?}",
        in_flight.messages
    );
    assert!(!format!("{:?}", in_flight.messages).contains("globex-private"));

    // One principal's process: its own late log reaches its call in flight.
    let solo = one_kit("protocol = \"legacy\"").await;
    let acme = solo.legacy("acme").await;
    let late = json!({"message": "acme-own-log", "after_ms": 300});
    let (in_flight, ()) = tokio::join!(acme.call(2, "kit__slow", json!({"ms": 2500})), async {
        assert_eq!(
            text(acme.call(1, "kit__log", late).await.response()),
            "will log"
        );
    });
    assert!(
        in_flight
            .messages
            .iter()
            .any(|m| m["params"]["data"] == "acme-own-log"),
        "{:?}",
        in_flight.messages
    );
}

/// A GET stream read one message at a time.
struct Events {
    body: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    decoder: mcp_wire::sse::Decoder,
    ready: std::collections::VecDeque<Value>,
}

impl Events {
    fn of(resp: reqwest::Response) -> Events {
        Events {
            body: resp.bytes_stream().boxed(),
            decoder: mcp_wire::sse::Decoder::new(1 << 20),
            ready: Default::default(),
        }
    }

    async fn next(&mut self) -> Value {
        loop {
            if let Some(v) = self.ready.pop_front() {
                return v;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.body.next())
                .await
                .expect("no event in time")
                .expect("stream ended")
                .unwrap();
            self.decoder.push(&chunk);
            while let Some(ev) = self.decoder.next_event().unwrap() {
                if !ev.data.is_empty() {
                    self.ready
                        .push_back(serde_json::from_str(&ev.data).unwrap());
                }
            }
        }
    }
}

/// A tenant stops counting among a resource's subscribers on a shared server when what held its
/// subscription ends without unsubscribing: a legacy session deleted, a modern listen closed.
/// Then the other tenant, alone subscribed, gets its updates.
#[tokio::test]
async fn subscribers_that_go_away_stop_counting() {
    let gw = two_tenants_on_kit("protocol = \"legacy\"").await;
    gw.ready().await;
    let acme = gw.legacy("acme").await;
    let mut acme_events = Events::of(acme.open_get_stream().await);
    let watched = json!({"uri": "kit+test://watched-resource"});
    let a = acme
        .request(1, "resources/subscribe", watched.clone())
        .await;
    assert_eq!(a.response()["result"], json!({}), "{:?}", a.messages);

    // A globex session subscribes and is deleted; a globex listen names it and is closed.
    let globex = gw.legacy("globex").await;
    let a = globex
        .request(1, "resources/subscribe", watched.clone())
        .await;
    assert_eq!(a.response()["result"], json!({}), "{:?}", a.messages);
    assert_eq!(globex.delete().await, 204);
    let notifications = json!({"resourceSubscriptions": ["kit+test://watched-resource"]});
    let listen = gw.listen_for(gw.key("globex"), notifications).await;
    assert_eq!(listen.status(), 200);
    let acknowledged = first_messages(listen, 1).await;
    assert_eq!(
        acknowledged[0]["method"], "notifications/subscriptions/acknowledged",
        "{acknowledged:?}"
    );
    // `first_messages` dropped the stream: the listen is closed. Its end is seen by the
    // gateway a moment later, so touch until the update arrives.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut id = 2;
    let update = loop {
        assert_eq!(
            text(acme.call(id, "kit__touch", json!({})).await.response()),
            "touched"
        );
        id += 1;
        if let Ok(update) =
            tokio::time::timeout(Duration::from_millis(200), acme_events.next()).await
        {
            break update;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the update never reached acme: globex still counts as subscribed"
        );
    };
    assert_eq!(
        update["method"], "notifications/resources/updated",
        "{update}"
    );
    assert_eq!(update["params"]["uri"], "kit+test://watched-resource");
}

/// Two tenants on one shared server subscribe to the same resource: its update cannot be told
/// apart, so it reaches neither; once one tenant alone is subscribed, it reaches that tenant
/// alone. Subscribing and completing are audited for the tenant like calls.
#[tokio::test]
async fn a_shared_servers_resource_updates_reach_only_the_subscribed_tenant() {
    let gw = two_tenants_on_kit("protocol = \"legacy\"").await;
    gw.ready().await;
    let acme = gw.legacy("acme").await;
    let globex = gw.legacy("globex").await;
    let mut acme_events = Events::of(acme.open_get_stream().await);
    let mut globex_events = Events::of(globex.open_get_stream().await);
    let watched = json!({"uri": "kit+test://watched-resource"});
    for (s, id) in [(&acme, 1), (&globex, 1)] {
        let a = s.request(id, "resources/subscribe", watched.clone()).await;
        assert_eq!(a.response()["result"], json!({}), "{:?}", a.messages);
    }
    assert_eq!(
        text(acme.call(2, "kit__touch", json!({})).await.response()),
        "touched"
    );
    unattributed(&gw, "notification", 1).await;

    let a = globex
        .request(3, "resources/unsubscribe", watched.clone())
        .await;
    assert_eq!(a.response()["result"], json!({}), "{:?}", a.messages);
    assert_eq!(
        text(acme.call(4, "kit__touch", json!({})).await.response()),
        "touched"
    );
    let update = acme_events.next().await;
    assert_eq!(
        update["method"], "notifications/resources/updated",
        "{update}"
    );
    assert_eq!(update["params"]["uri"], "kit+test://watched-resource");
    // A list change reaches both streams after the update: globex's first message is it.
    globex.call(5, "kit__toggle_tool", json!({})).await;
    let first = globex_events.next().await;
    assert_eq!(
        first["method"], "notifications/tools/list_changed",
        "{first}"
    );
    assert_eq!(
        acme_events.next().await["method"],
        "notifications/tools/list_changed"
    );

    // Every request that can carry a tenant's data left a BEGIN record of its tenant.
    let complete = json!({"ref": {"type": "ref/prompt", "name": "kit__test_prompt_with_arguments"}, "argument": {"name": "arg1", "value": ""}});
    let a = globex.request(6, "completion/complete", complete).await;
    assert!(
        a.response()["result"]["completion"]["values"].is_array(),
        "{:?}",
        a.messages
    );
    let trail = gw.config.with_file_name("palisade-data").join("audit");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text: String = palisade_audit::list_files(&trail)
            .unwrap_or_default()
            .iter()
            .map(|f| String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned())
            .collect();
        let begun = |tenant: &str, method: &str| {
            text.lines().any(|l| {
                l.contains(r#""kind":"BEGIN""#)
                    && l.contains(&format!(r#""tenant":"{tenant}""#))
                    && l.contains(&format!(r#""method":"{method}""#))
            })
        };
        if begun("acme", "resources/subscribe")
            && begun("globex", "resources/subscribe")
            && begun("globex", "resources/unsubscribe")
            && begun("globex", "completion/complete")
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
