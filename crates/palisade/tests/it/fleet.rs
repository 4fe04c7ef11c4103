//! The example fleet (`examples/fleet/run.sh`, the files an operator starts by hand): three
//! replicas on one PostgreSQL registry and Redis, with a fleet key, behind HAProxy balancing
//! every request round-robin with no stickiness. 2026-07-28 calls land on every replica; a
//! legacy session opened on one continues on the others: calls, its log level, a sampling
//! request whose answer lands on another replica than the call, a resource update from the
//! replica that took the subscription reaching the GET stream on another, a call's stream and
//! the GET stream resumed with `Last-Event-ID` on another replica, DELETE; it is bound to its
//! principal, listed and revoked fleet-wide (admin API and CLI), and ended by a suspension. A
//! 2026-07-28 call parked for input is refused clearly (retryable) by another replica; rate
//! limits are the fleet's; the fleet lists itself; a rolling restart (each replica in turn sent
//! SIGTERM, leaving the load balancer before it stops) fails no call and loses no session; and
//! a key revoked through one replica's admin API is refused by all within a second.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::common::{ACCEPT, Answer, read_answer, sampling_reply};

/// What run.sh printed once the fleet was up.
#[derive(Clone)]
struct Fleet {
    mcp: String,
    admins: Vec<String>,
    key: String,
    admin_key: String,
    dir: PathBuf,
}

fn field<'a>(line: &'a str, name: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
}

/// A base port with the 14 after it free (the load balancer, three MCP and three admin ports).
fn free_base() -> u16 {
    (0..200)
        .map(|_| 20_000 + (rand::random::<u16>() % 2_000) * 20)
        .find(|base| (0..14).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()))
        .expect("a free run of ports")
}

/// SIGTERM to run.sh's process group when the test ends, however it ends: the replicas drain,
/// HAProxy stops, and run.sh drops the fleet's database.
struct StopsGroup(i32);

impl Drop for StopsGroup {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.0);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGTERM);
    }
}

/// One 2026-07-28 tool call through the load balancer (`params` beside the name: arguments,
/// and a retry's `requestState` and `inputResponses`).
async fn modern_call(
    http: &reqwest::Client,
    fleet: &Fleet,
    key: &str,
    n: usize,
    tool: &str,
    mut params: Value,
) -> Result<Answer, String> {
    params["name"] = json!(tool);
    params["_meta"] = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                             "io.modelcontextprotocol/clientCapabilities": {"sampling": {}}});
    let body = json!({"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": params});
    let r = http
        .post(&fleet.mcp)
        .bearer_auth(key)
        .header("accept", ACCEPT)
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", tool)
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| format!("call {n}: {e}"))?;
    Ok(read_answer(r).await)
}

/// A 2026-07-28 echo through the load balancer, checked.
async fn echo(http: &reqwest::Client, fleet: &Fleet, key: &str, n: usize) -> Result<(), String> {
    let args = json!({"arguments": {"message": format!("call {n}")}});
    let answer = modern_call(http, fleet, key, n, "kit__echo", args).await?;
    let text = &answer.response()["result"]["content"][0]["text"];
    if answer.status == 200 && *text == format!("call {n}") {
        Ok(())
    } else {
        Err(format!("call {n}: {} {:?}", answer.status, answer.messages))
    }
}

/// The sum of a replica's series named `name` (all labels), from its metrics.
async fn metric_on(http: &reqwest::Client, admin: &str, name: &str) -> f64 {
    let text = http
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .filter(|l| l.split([' ', '{']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

const LEGACY: &str = "2025-11-25";

/// One legacy-era POST through the load balancer.
async fn legacy_post(
    http: &reqwest::Client,
    fleet: &Fleet,
    key: &str,
    session: Option<&str>,
    body: Value,
) -> reqwest::Response {
    let mut r = http
        .post(&fleet.mcp)
        .bearer_auth(key)
        .header("accept", ACCEPT)
        .header("content-type", "application/json")
        .header("mcp-protocol-version", LEGACY)
        .body(body.to_string());
    if let Some(id) = session {
        r = r.header("mcp-session-id", id);
    }
    r.send().await.expect("a legacy request")
}

/// Opens a legacy session through the load balancer: its id.
async fn open_session(http: &reqwest::Client, fleet: &Fleet, key: &str) -> String {
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": LEGACY, "capabilities": {"sampling": {}},
        "clientInfo": {"name": "fleet-test", "version": "1"}}});
    let r = legacy_post(http, fleet, key, None, init).await;
    assert_eq!(r.status(), 200);
    let id = r.headers()["mcp-session-id"]
        .to_str()
        .expect("session id")
        .to_owned();
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let r = legacy_post(http, fleet, key, Some(&id), initialized).await;
    assert_eq!(r.status(), 202);
    id
}

/// A legacy-era tool call in a session: the answer's messages (notifications, then the
/// response), or its HTTP status when that is not 200.
async fn legacy_call(
    http: &reqwest::Client,
    fleet: &Fleet,
    session: &str,
    n: usize,
    tool: &str,
    arguments: Value,
) -> Result<Vec<Value>, u16> {
    let body = json!({"jsonrpc": "2.0", "id": n, "method": "tools/call",
                      "params": {"name": tool, "arguments": arguments}});
    let answer = read_answer(legacy_post(http, fleet, &fleet.key, Some(session), body).await).await;
    if answer.status == 200 && answer.response().get("result").is_some() {
        Ok(answer.messages)
    } else {
        Err(answer.status)
    }
}

/// An echo in a legacy session, checked.
async fn legacy_echo(
    http: &reqwest::Client,
    fleet: &Fleet,
    session: &str,
    n: usize,
) -> Result<(), String> {
    let args = json!({"message": format!("legacy {n}")});
    match legacy_call(http, fleet, session, n, "kit__echo", args).await {
        Ok(messages)
            if messages.last().map(|m| &m["result"]["content"][0]["text"])
                == Some(&json!(format!("legacy {n}"))) =>
        {
            Ok(())
        }
        Ok(messages) => Err(format!("legacy call {n}: {messages:?}")),
        Err(status) => Err(format!("legacy call {n}: HTTP {status}")),
    }
}

/// A sampling round trip: the tool asks the client on the call's stream (on one replica), the
/// client's answer is a new POST that the load balancer sends to the next replica.
async fn sampling_round_trip(
    http: &reqwest::Client,
    fleet: &Fleet,
    session: &str,
    n: usize,
) -> String {
    let body = json!({"jsonrpc": "2.0", "id": n, "method": "tools/call",
                      "params": {"name": "kit__sampling", "arguments": {"prompt": "hello"}}});
    let mut r = legacy_post(http, fleet, &fleet.key, Some(session), body).await;
    assert_eq!(r.status(), 200);
    let mut decoder = mcp_wire::sse::Decoder::new(1 << 20);
    loop {
        let chunk = tokio::time::timeout(Duration::from_secs(10), r.chunk())
            .await
            .expect("the call's stream went on")
            .expect("the call's stream")
            .expect("the call's stream ended before its response");
        decoder.push(&chunk);
        while let Ok(Some(event)) = decoder.next_event() {
            if event.data.is_empty() {
                continue;
            }
            let message: Value = serde_json::from_str(&event.data).expect("event json");
            if message["method"] == "sampling/createMessage" {
                let answer = json!({"jsonrpc": "2.0", "id": message["id"], "result": {
                    "role": "assistant", "model": "fleet-test",
                    "content": {"type": "text", "text": "sampled on the fleet"}}});
                let a = legacy_post(http, fleet, &fleet.key, Some(session), answer).await;
                assert_eq!(a.status(), 202);
            } else if message.get("result").is_some() {
                return message["result"]["content"][0]["text"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
            }
        }
    }
}

/// A request to replica `i`'s admin API (index into `fleet.admins`): status and JSON answer.
async fn admin(
    http: &reqwest::Client,
    fleet: &Fleet,
    i: usize,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> (u16, Value) {
    let r = http
        .request(method, format!("{}{path}", fleet.admins[i]))
        .bearer_auth(&fleet.admin_key)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("admin API {path}: {e}"));
    let status = r.status().as_u16();
    let body = r.bytes().await.unwrap_or_default();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// Creates `tenant` on the test server through replica 0's admin API.
async fn new_tenant(http: &reqwest::Client, fleet: &Fleet, tenant: &str) {
    let body = json!({"id": tenant, "servers": ["kit"]});
    let path = "/admin/v1/tenants";
    let (status, answer) = admin(http, fleet, 0, reqwest::Method::POST, path, body).await;
    assert_eq!(status, 201, "{answer}");
}

/// Issues a key of `tenant` through replica `i`'s admin API, and waits until every replica
/// takes it (with `tools/list`, which no rate limit counts).
async fn new_key(http: &reqwest::Client, fleet: &Fleet, i: usize, tenant: &str) -> String {
    let path = format!("/admin/v1/tenants/{tenant}/keys");
    let (status, issued) = admin(http, fleet, i, reqwest::Method::POST, &path, json!({})).await;
    assert_eq!(status, 201, "{issued}");
    let key = issued["key"].as_str().expect("the issued key").to_owned();
    let listed = |key: String| async move {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {
            "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                      "io.modelcontextprotocol/clientCapabilities": {}}}});
        let r = http
            .post(&fleet.mcp)
            .bearer_auth(&key)
            .header("accept", ACCEPT)
            .header("content-type", "application/json")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tools/list")
            .body(body.to_string())
            .send()
            .await;
        r.is_ok_and(|r| r.status() == 200)
    };
    testenv::wait_until(
        Duration::from_secs(5),
        "every replica takes the new key",
        || async {
            let mut all = true;
            for _ in 0..6 {
                all &= listed(key.clone()).await;
            }
            all
        },
    )
    .await;
    key
}

/// Waits up to a second (the fleet's bound) until every replica refuses the session.
async fn refused_everywhere(http: &reqwest::Client, fleet: &Fleet, session: &str, what: &str) {
    testenv::wait_until(Duration::from_secs(1), what, || async {
        let mut all = true;
        for n in 0..6 {
            all &= legacy_echo(http, fleet, session, n).await.is_err();
        }
        all
    })
    .await;
}

/// The session's GET stream through `fleet.mcp`, resumed after `last` when given.
async fn get_stream(
    http: &reqwest::Client,
    fleet: &Fleet,
    session: &str,
    last: Option<&str>,
) -> reqwest::Response {
    let mut r = http
        .get(&fleet.mcp)
        .bearer_auth(&fleet.key)
        .header("accept", "text/event-stream")
        .header("mcp-protocol-version", LEGACY)
        .header("mcp-session-id", session);
    if let Some(last) = last {
        r = r.header("last-event-id", last);
    }
    r.send().await.expect("a GET stream")
}

/// The id of the first event of an SSE response (which is then dropped).
async fn first_event_id(mut r: reqwest::Response) -> String {
    let mut d = mcp_wire::sse::Decoder::new(1 << 20);
    loop {
        let chunk = r.chunk().await.expect("the stream").expect("an event");
        d.push(&chunk);
        if let Ok(Some(event)) = d.next_event() {
            return event.id.expect("an event id");
        }
    }
}

/// The session's public handle, as the admin API names it.
fn handle(session: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(session.as_bytes())[..8])
}

/// The pid of replica `name`'s `palisade serve`, under the fleet's directory.
fn replica_pid(dir: &Path, name: &str) -> i32 {
    let config = format!("{}/{name}.toml", dir.display());
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .find_map(|p| {
            let pid: i32 = p.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(p.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let serves = args.contains(&b"serve".as_slice()) && args.contains(&config.as_bytes());
            serves.then_some(pid)
        })
        .unwrap_or_else(|| panic!("no process serves {config}"))
}

#[tokio::test]
async fn the_example_fleet_balances_every_request_and_loses_no_call_in_a_rolling_restart() {
    let (Some(postgres), Some(redis)) = (testenv::postgres(), testenv::redis()) else {
        return;
    };
    let haproxy = std::process::Command::new("haproxy").arg("-v").output();
    if !haproxy.is_ok_and(|o| o.status.success()) {
        testenv::lacking::<()>("haproxy is not installed");
        return;
    }
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_palisade"))
        .parent()
        .expect("bin dir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/fleet/run.sh");
    let mut run = tokio::process::Command::new("bash")
        .arg(&script)
        .env("PALISADE_BIN_DIR", bin_dir)
        .env("FLEET_POSTGRES", &postgres)
        .env("PALISADE_REDIS_URL", &redis)
        .env("FLEET_BASE_PORT", free_base().to_string())
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("run examples/fleet/run.sh");
    let _stops = StopsGroup(run.id().expect("run.sh pid") as i32);
    let mut lines = BufReader::new(run.stdout.take().expect("stdout")).lines();
    let line = tokio::time::timeout(Duration::from_secs(90), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.starts_with("fleet ") {
                return line;
            }
        }
        panic!("run.sh ended before the fleet was up");
    })
    .await
    .expect("the fleet was up within 90 s");
    let fleet = Fleet {
        mcp: field(&line, "mcp").to_owned(),
        admins: field(&line, "admin")
            .split(',')
            .map(str::to_owned)
            .collect(),
        key: field(&line, "key").to_owned(),
        admin_key: field(&line, "admin_key").to_owned(),
        dir: PathBuf::from(field(&line, "dir")),
    };
    let http = reqwest::Client::new();

    // Every request is balanced on its own: thirty calls land on all three replicas.
    for n in 0..30 {
        echo(&http, &fleet, &fleet.key, n).await.expect("a call");
    }
    for admin in &fleet.admins {
        assert!(
            metric_on(&http, admin, "palisade_tool_calls_total").await >= 5.0,
            "{admin} took few calls"
        );
    }

    // Any replica lists the fleet.
    let listed: Value = http
        .get(format!("{}/admin/v1/replicas", fleet.admins[1]))
        .bearer_auth(&fleet.admin_key)
        .send()
        .await
        .expect("replicas")
        .bytes()
        .await
        .map(|b| serde_json::from_slice(&b).expect("replicas json"))
        .expect("replicas body");
    let names: Vec<(&str, bool)> = listed["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .map(|r| (r["name"].as_str().unwrap_or(""), r["alive"] == true))
        .collect();
    assert_eq!(
        names,
        [("r1", true), ("r2", true), ("r3", true)],
        "{listed}"
    );

    // A legacy session opened through one replica continues on the others, with no new
    // initialize: calls, its log level, a sampling request answered through another replica.
    let session = open_session(&http, &fleet, &fleet.key).await;
    for n in 0..30 {
        legacy_echo(&http, &fleet, &session, n)
            .await
            .expect("a legacy call");
    }
    let mut continued = 0;
    for admin in &fleet.admins {
        if metric_on(&http, admin, "palisade_sessions_continued_total").await >= 1.0 {
            continued += 1;
        }
    }
    assert_eq!(
        continued, 2,
        "the two replicas that did not open it continued it"
    );
    let set = json!({"jsonrpc": "2.0", "id": 100, "method": "logging/setLevel", "params": {"level": "error"}});
    let r = legacy_post(&http, &fleet, &fleet.key, Some(&session), set).await;
    assert_eq!(r.status(), 200);
    for n in 0..6 {
        for (level, shown) in [("warning", false), ("error", true)] {
            let args = json!({"message": format!("log {n}"), "level": level});
            let messages = legacy_call(&http, &fleet, &session, 200 + n, "kit__log", args)
                .await
                .expect("a log call");
            let logged = messages
                .iter()
                .any(|m| m["method"] == "notifications/message");
            assert_eq!(
                logged, shown,
                "a {level} log under level error, call {n}: {messages:?}"
            );
        }
    }
    for n in 0..3 {
        let text = sampling_round_trip(&http, &fleet, &session, 300 + n).await;
        assert!(text.contains("sampled on the fleet"), "{text}");
    }

    // A 2026-07-28 input-required round trip through a server the gateway speaks 2025-11-25 to:
    // the gateway parks the call on the replica that made it; a retry the load balancer sends
    // elsewhere is told which replica holds it and that it may retry, and one that reaches it
    // completes. (A server's own requestState passes through untouched: it resumes on any
    // replica when the server can verify it there.)
    for n in 0..3 {
        let first = modern_call(
            &http,
            &fleet,
            &fleet.key,
            500 + n,
            "kitl__sampling",
            json!({"arguments": {"prompt": "2+2?"}}),
        )
        .await
        .expect("the first request");
        let result = &first.response()["result"];
        assert_eq!(
            result["resultType"], "input_required",
            "{:?}",
            first.messages
        );
        let (key, _) = result["inputRequests"]
            .as_object()
            .expect("inputRequests")
            .iter()
            .next()
            .expect("an input request");
        let retry = json!({"arguments": {"prompt": "2+2?"}, "requestState": result["requestState"],
                           "inputResponses": {key.as_str(): sampling_reply(&Value::Null)}});
        let mut elsewhere = 0;
        let text = loop {
            let done = modern_call(
                &http,
                &fleet,
                &fleet.key,
                600 + n,
                "kitl__sampling",
                retry.clone(),
            )
            .await
            .expect("the retry");
            let error = &done.response()["error"];
            if error.is_object() {
                assert_eq!(error["data"]["retryable"], true, "{:?}", done.messages);
                assert!(
                    error["message"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("replica"),
                    "{error}"
                );
                elsewhere += 1;
                assert!(
                    elsewhere < 3,
                    "round-robin reaches the replica within three tries"
                );
                continue;
            }
            break done.response()["result"]["content"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
        };
        assert!(text.contains("four"), "{text}");
        assert!(
            n > 0 || elsewhere > 0,
            "the first retry was balanced to another replica"
        );
    }

    // A resource update from the replica that took the subscription (r2) reaches the session's
    // GET stream on another (r1), through the fleet's events channel.
    let replica = |i: u16| {
        let base: u16 = fleet
            .mcp
            .rsplit(':')
            .next()
            .and_then(|p| p.strip_suffix("/mcp"))
            .and_then(|p| p.parse().ok())
            .expect("the load balancer's port");
        Fleet {
            mcp: format!("http://127.0.0.1:{}/mcp", base + i),
            ..fleet.clone()
        }
    };
    let mut stream = get_stream(&http, &replica(1), &session, None).await;
    assert_eq!(stream.status(), 200);
    let uri = "kit+test://watched-resource";
    let subscribe = json!({"jsonrpc": "2.0", "id": 400, "method": "resources/subscribe", "params": {"uri": uri}});
    let r =
        read_answer(legacy_post(&http, &replica(2), &fleet.key, Some(&session), subscribe).await)
            .await;
    assert!(r.response().get("result").is_some(), "{:?}", r.messages);
    legacy_call(&http, &replica(2), &session, 401, "kit__touch", json!({}))
        .await
        .expect("touch");
    let mut decoder = mcp_wire::sse::Decoder::new(1 << 20);
    let updated = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let chunk = stream
                .chunk()
                .await
                .expect("the GET stream")
                .expect("the GET stream ended");
            decoder.push(&chunk);
            while let Ok(Some(event)) = decoder.next_event() {
                let Ok(message) = serde_json::from_str::<Value>(&event.data) else {
                    continue;
                };
                if message["method"] == "notifications/resources/updated" {
                    return message;
                }
            }
        }
    })
    .await
    .expect("the update reached the GET stream on r1 within 5 s");
    assert_eq!(updated["params"]["uri"], uri, "{updated}");
    drop(stream);

    // Streams resume on any replica. A call's stream that broke on r1 (the call waits there
    // for the client's sampling answer, which reaches r3) is resumed through r2 with
    // `Last-Event-ID`: r2 replays what the fleet kept, and the client comes back until the
    // result is there.
    let call = json!({"jsonrpc": "2.0", "id": 700, "method": "tools/call",
                      "params": {"name": "kit__sampling", "arguments": {"prompt": "resume me"}}});
    let mut broken = legacy_post(&http, &replica(1), &fleet.key, Some(&session), call).await;
    assert_eq!(broken.status(), 200);
    let mut decoder = mcp_wire::sse::Decoder::new(1 << 20);
    let (asked, mut last) = loop {
        let chunk = broken
            .chunk()
            .await
            .expect("the call's stream")
            .expect("more of it");
        decoder.push(&chunk);
        let mut found = None;
        while let Ok(Some(event)) = decoder.next_event() {
            if let Ok(m) = serde_json::from_str::<Value>(&event.data)
                && m["method"] == "sampling/createMessage"
            {
                found = Some((m, event.id.clone().expect("an event id")));
            }
        }
        if let Some(found) = found {
            break found;
        }
    };
    drop(broken);
    let answer = json!({"jsonrpc": "2.0", "id": asked["id"], "result": {
        "role": "assistant", "model": "fleet-test",
        "content": {"type": "text", "text": "resumed elsewhere"}}});
    let r = legacy_post(&http, &replica(3), &fleet.key, Some(&session), answer).await;
    assert_eq!(r.status(), 202);
    let resumed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let r = get_stream(&http, &replica(2), &session, Some(&last)).await;
            assert_eq!(r.status(), 200, "resuming {last} on r2");
            let body = r.bytes().await.expect("the replay");
            let mut d = mcp_wire::sse::Decoder::new(1 << 20);
            d.push(&body);
            while let Ok(Some(event)) = d.next_event() {
                if let Some(id) = event.id {
                    last = id;
                }
                if let Ok(m) = serde_json::from_str::<Value>(&event.data)
                    && m["id"] == 700
                {
                    return m;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the result, resumed on r2, within 10 s");
    assert_eq!(
        resumed["result"]["content"][0]["text"], "resumed elsewhere",
        "{resumed}"
    );

    // The session's GET stream, broken on r1, goes on on r2 (after what it missed).
    let priming = first_event_id(get_stream(&http, &replica(1), &session, None).await).await;
    // The fleet's copy of the stream is written off the hot path: a resume may come back
    // (as a client does after the priming event's retry delay) until it is there.
    let deadline = Instant::now() + Duration::from_secs(2);
    let again = loop {
        let r = get_stream(&http, &replica(2), &session, Some(&priming)).await;
        if r.status() == 200 {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "r2 resumes the GET stream of r1 within 2 s: {}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let goes_on = first_event_id(again).await;
    assert_ne!(goes_on, priming, "a new stream goes on");

    // Bound to its principal: another key of the same tenant gets 404 on every replica.
    let other = new_key(&http, &fleet, 2, "acme").await;
    for n in 0..6 {
        let body = json!({"jsonrpc": "2.0", "id": n, "method": "ping"});
        let r = legacy_post(&http, &fleet, &other, Some(&session), body).await;
        assert_eq!(r.status(), 404, "another principal's request {n}");
    }

    // DELETE through one replica ends the session on all within a second.
    let doomed = open_session(&http, &fleet, &fleet.key).await;
    for n in 0..3 {
        legacy_echo(&http, &fleet, &doomed, n)
            .await
            .expect("a call before DELETE");
    }
    let r = http
        .delete(&fleet.mcp)
        .bearer_auth(&fleet.key)
        .header("mcp-protocol-version", LEGACY)
        .header("mcp-session-id", &doomed)
        .send()
        .await
        .expect("DELETE");
    assert_eq!(r.status(), 204);
    refused_everywhere(
        &http,
        &fleet,
        &doomed,
        "every replica refuses the ended session",
    )
    .await;

    // The fleet's sessions, listed by any replica; one revoked through r1 is refused by every
    // replica within a second.
    let revoked = open_session(&http, &fleet, &fleet.key).await;
    for n in 0..3 {
        legacy_echo(&http, &fleet, &revoked, n)
            .await
            .expect("a call before revocation");
    }
    let listed: Value = http
        .get(format!("{}/admin/v1/sessions", fleet.admins[1]))
        .bearer_auth(&fleet.admin_key)
        .send()
        .await
        .expect("sessions")
        .bytes()
        .await
        .map(|b| serde_json::from_slice(&b).expect("sessions json"))
        .expect("sessions body");
    let handles: Vec<&str> = listed["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .filter_map(|s| s["handle"].as_str())
        .collect();
    assert!(handles.contains(&handle(&session).as_str()), "{listed}");
    assert!(handles.contains(&handle(&revoked).as_str()), "{listed}");
    assert!(
        !handles.contains(&handle(&doomed).as_str()),
        "ended: {listed}"
    );
    let r = http
        .delete(format!(
            "{}/admin/v1/tenants/acme/sessions/{}",
            fleet.admins[0],
            handle(&revoked)
        ))
        .bearer_auth(&fleet.admin_key)
        .send()
        .await
        .expect("revoke a session");
    assert_eq!(r.status(), 204);
    refused_everywhere(
        &http,
        &fleet,
        &revoked,
        "every replica refuses the revoked session",
    )
    .await;

    // The CLI lists the fleet's sessions through any replica, and revokes one.
    let cli = |args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_palisade"));
        cmd.args(args);
        for line in std::fs::read_to_string(fleet.dir.join("env"))
            .expect("run.sh's env file")
            .lines()
        {
            for pair in line.trim_start_matches("export ").split(' ') {
                if let Some((k, v)) = pair.split_once('=') {
                    cmd.env(k, v);
                }
            }
        }
        let out = cmd.output().expect("palisade");
        assert!(
            out.status.success(),
            "palisade {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let r1 = fleet.dir.join("r1.toml");
    let r1 = r1.to_str().expect("path");
    let by_cli = open_session(&http, &fleet, &fleet.key).await;
    legacy_echo(&http, &fleet, &by_cli, 1)
        .await
        .expect("a call");
    let listed = cli(&[
        "session",
        "list",
        "--tenant",
        "acme",
        "--config",
        r1,
        "--admin-key",
        &fleet.admin_key,
        "--admin-url",
        &fleet.admins[2],
    ]);
    assert!(listed.contains(&handle(&by_cli)), "{listed}");
    cli(&[
        "session",
        "revoke",
        "acme",
        &handle(&by_cli),
        "--config",
        r1,
        "--admin-key",
        &fleet.admin_key,
    ]);
    refused_everywhere(
        &http,
        &fleet,
        &by_cli,
        "every replica refuses the session the CLI revoked",
    )
    .await;

    // A tenant suspended through the CLI: its sessions are refused by every replica within a
    // second.
    new_tenant(&http, &fleet, "globex").await;
    let globex = Fleet {
        key: new_key(&http, &fleet, 0, "globex").await,
        ..fleet.clone()
    };
    let suspended = open_session(&http, &globex, &globex.key).await;
    for n in 0..3 {
        legacy_echo(&http, &globex, &suspended, n)
            .await
            .expect("globex calls");
    }
    cli(&[
        "tenant",
        "suspend",
        "globex",
        "--reason",
        "fleet test",
        "--config",
        r1,
    ]);
    refused_everywhere(
        &http,
        &globex,
        &suspended,
        "every replica refuses the suspended tenant's session",
    )
    .await;
    legacy_echo(&http, &fleet, &session, 1)
        .await
        .expect("acme's session goes on");

    // Rate limits are the fleet's: a tenant allowed a burst of 30 calls (and one more every
    // 100 s) gets 30 through three replicas, not 30 from each.
    new_tenant(&http, &fleet, "initech").await;
    let policy = json!({"rates": {"tenant": {"per_second": 0.01, "burst": 30}}});
    let path = "/admin/v1/tenants/initech/policy";
    let (status, _) = admin(&http, &fleet, 0, reqwest::Method::PUT, path, policy).await;
    assert_eq!(status, 200);
    let initech = new_key(&http, &fleet, 0, "initech").await;
    let mut accepted = 0;
    for n in 0..60 {
        if echo(&http, &fleet, &initech, n).await.is_ok() {
            accepted += 1;
        }
    }
    assert!(
        (29..=31).contains(&accepted),
        "{accepted} calls of a 30-call quota went through three replicas"
    );

    // A rolling restart while a client calls without pause: each replica in turn is sent
    // SIGTERM, leaves the load balancer (its /readyz says 503 while it still serves), drains,
    // exits, and run.sh starts it again; the next waits until it is back. No call fails.
    let (done, failed, made) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(std::sync::Mutex::new(Vec::new())),
        Arc::new(AtomicUsize::new(0)),
    );
    let client = {
        let (done, failed, made) = (done.clone(), failed.clone(), made.clone());
        let (http, fleet, session) = (http.clone(), fleet.clone(), session.clone());
        tokio::spawn(async move {
            let mut n = 1000;
            while !done.load(Ordering::Relaxed) {
                // A 2026-07-28 call, then one in the legacy session opened before.
                for made_call in [
                    echo(&http, &fleet, &fleet.key, n).await,
                    legacy_echo(&http, &fleet, &session, n).await,
                ] {
                    if let Err(e) = made_call {
                        failed.lock().unwrap_or_else(|e| e.into_inner()).push(e);
                    }
                }
                made.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
        })
    };
    for (i, name) in ["r1", "r2", "r3"].into_iter().enumerate() {
        let old = replica_pid(&fleet.dir, name);
        let before = made.load(Ordering::Relaxed);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(old),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
        let asked = Instant::now();
        testenv::wait_until(Duration::from_secs(30), "the replica exited", || async {
            !Path::new(&format!("/proc/{old}")).exists()
        })
        .await;
        assert!(
            asked.elapsed() >= Duration::from_secs(2),
            "{name} served out its notice period"
        );
        assert!(
            made.load(Ordering::Relaxed) > before,
            "calls were made while {name} left"
        );
        let readyz = format!("{}/readyz", fleet.admins[i]);
        testenv::wait_until(Duration::from_secs(30), "the replica is back", || async {
            let r = http.get(&readyz).send().await;
            r.is_ok_and(|r| r.status() == 200)
        })
        .await;
        assert_ne!(replica_pid(&fleet.dir, name), old, "{name} was restarted");
    }
    // A few more calls with every replica back.
    let back = made.load(Ordering::Relaxed);
    testenv::wait_until(Duration::from_secs(10), "calls after the restart", || {
        let made = made.clone();
        async move { made.load(Ordering::Relaxed) >= back + 6 }
    })
    .await;
    done.store(true, Ordering::Relaxed);
    client.await.expect("client");
    let failed = failed.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(
        failed.is_empty(),
        "calls failed in the rolling restart: {failed:?}"
    );

    // A key revoked through r1's admin API is refused through the load balancer (by every
    // replica) within a second.
    let id = palisade::apikey::key_id(&fleet.key);
    let revoked = http
        .delete(format!(
            "{}/admin/v1/tenants/acme/keys/{id}",
            fleet.admins[0]
        ))
        .bearer_auth(&fleet.admin_key)
        .send()
        .await
        .expect("revoke");
    assert_eq!(revoked.status(), 200);
    testenv::wait_until(
        Duration::from_secs(1),
        "the fleet refuses the revoked key",
        || async {
            let mut all = true;
            for n in 0..6 {
                all &= echo(&http, &fleet, &fleet.key, n).await.is_err();
            }
            all
        },
    )
    .await;

    // run.sh stops what it started on SIGTERM.
    let pid = nix::unistd::Pid::from_raw(run.id().expect("run.sh") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM run.sh");
    tokio::time::timeout(Duration::from_secs(30), run.wait())
        .await
        .expect("run.sh stopped the fleet within 30 s")
        .expect("run.sh exit");
    for name in ["r1", "r2", "r3"] {
        let config = format!("{}/{name}.toml", fleet.dir.display());
        let still = std::fs::read_dir("/proc")
            .expect("/proc")
            .flatten()
            .any(|p| {
                std::fs::read(p.path().join("cmdline"))
                    .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == config.as_bytes()))
            });
        assert!(!still, "{name} outlived run.sh");
    }
}
