//! Each client served in its own era, and legacy streams that survive a broken connection.
//!
//! - A legacy client's call answered as an event stream keeps running when the stream breaks
//!   (a disconnect is not a cancellation in that era), and the client gets the rest with `GET`
//!   and `Last-Event-ID`: what it missed, once, then the response.
//! - A broken GET stream is resumed the same way, and goes on live under the same stream.
//! - Over HTTP each legacy client session has its own upstream session, so what an upstream
//!   sends on its session's GET stream (rmcp servers send logs there) reaches that session alone,
//!   however many sessions call at once.
//! - An HTTP server that speaks both eras is spoken to in each client's era: 2026-07-28 clients
//!   get the server's own input requests, keys and all; legacy clients get its legacy era.
//! - A 2026-07-28 request's `inputResponses` and `requestState` are checked for shape.

use crate::common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};

/// Reads events from an SSE response until `done` says stop; returns `(id, message)` pairs
/// (priming events have no message) and whether the stream ended.
async fn events_until(
    resp: &mut (impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    decoder: &mut mcp_wire::sse::Decoder,
    done: impl Fn(&[(String, Value)]) -> bool,
) -> (Vec<(String, Value)>, bool) {
    let mut out = Vec::new();
    loop {
        while let Some(ev) = decoder.next_event().unwrap() {
            let id = ev.id.unwrap_or_default();
            let msg = if ev.data.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&ev.data).unwrap()
            };
            out.push((id, msg));
        }
        if done(&out) {
            return (out, false);
        }
        match tokio::time::timeout(Duration::from_secs(10), resp.next())
            .await
            .expect("stream stalled")
        {
            Some(chunk) => decoder.push(&chunk.unwrap()),
            None => return (out, true),
        }
    }
}

#[tokio::test]
async fn a_broken_legacy_stream_is_resumed_after_its_last_event() {
    let gw = one_kit("").await;
    let s = gw.legacy("acme").await;
    // The call asks the client a question, so it waits for the client mid-stream.
    let resp = s
        .start(json!({"jsonrpc":"2.0","id":1,"method":"tools/call",
            "params":{"name":"kit__elicitation","arguments":{"message":"who?"}}}))
        .await;
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.bytes_stream();
    let mut decoder = mcp_wire::sse::Decoder::new(1 << 20);
    let (events, _) = events_until(&mut body, &mut decoder, |e| {
        e.iter().any(|(_, m)| m["method"] == "elicitation/create")
    })
    .await;
    // A priming event first: an id and no data.
    assert!(
        events[0].1.is_null() && !events[0].0.is_empty(),
        "{events:?}"
    );
    let (last_id, request) = events.last().unwrap().clone();
    assert!(
        events.iter().all(|(id, _)| !id.is_empty()),
        "every event has an id: {events:?}"
    );
    // The connection breaks; the call goes on, and the client answers the question meanwhile.
    drop(body);
    let answer = json!({"jsonrpc":"2.0","id":request["id"],
        "result":{"action":"accept","content":{"name":"Ada"}}});
    assert_eq!(s.send(answer).await.status, 202);

    let resumed = s.resume(&last_id).await;
    assert_eq!(resumed.status(), 200);
    let mut body = resumed.bytes_stream();
    let mut decoder = mcp_wire::sse::Decoder::new(1 << 20);
    let (rest, ended) = events_until(&mut body, &mut decoder, |_| false).await;
    assert!(ended, "the resumed stream ends with the call");
    let messages: Vec<&Value> = rest.iter().map(|(_, m)| m).collect();
    assert_eq!(
        messages.len(),
        1,
        "only what came after {last_id}: {rest:?}"
    );
    assert_eq!(messages[0]["id"], 1);
    assert!(
        text(messages[0]).contains("Ada"),
        "the call completed with the answer: {}",
        messages[0]
    );

    // An id this session never issued, or one from the future, is refused, not guessed at.
    for bad in ["nope", "999_1", &format!("{last_id}9")] {
        assert_eq!(s.resume(bad).await.status(), 400, "{bad}");
    }
    // Another session cannot resume this one's stream.
    let other = gw.legacy("acme").await;
    assert_eq!(other.resume(&last_id).await.status(), 400);
}

#[tokio::test]
async fn a_broken_get_stream_is_resumed_and_goes_on() {
    let gw = one_kit("").await;
    let s = gw.legacy("acme").await;
    let get = s.open_get_stream().await;
    assert_eq!(get.status(), 200);
    let mut body = get.bytes_stream();
    let mut decoder = mcp_wire::sse::Decoder::new(1 << 20);
    let is_change = |m: &Value| m["method"] == "notifications/tools/list_changed";
    let toggled = s.call(1, "kit__toggle_tool", json!({})).await;
    assert!(text(toggled.response()).contains("added"));
    let (events, _) = events_until(&mut body, &mut decoder, |e| {
        e.iter().any(|(_, m)| is_change(m))
    })
    .await;
    let priming = events[0].0.clone();
    assert!(events[0].1.is_null() && !priming.is_empty(), "{events:?}");
    let (change_id, _) = events.iter().find(|(_, m)| is_change(m)).unwrap().clone();
    // While the stream is open, a second one is refused: a message is never sent twice.
    assert_eq!(s.resume(&priming).await.status(), 409);

    // The connection breaks. Resuming from the priming event replays what came after it, on
    // the same stream, which then goes on live.
    drop(body);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let resumed = loop {
        let r = s.resume(&priming).await;
        if r.status() != 409 {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the broken GET stream was never noticed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(resumed.status(), 200);
    let mut body = resumed.bytes_stream();
    let mut decoder = mcp_wire::sse::Decoder::new(1 << 20);
    let toggled = s.call(2, "kit__toggle_tool", json!({})).await;
    assert!(text(toggled.response()).contains("removed"));
    let (events, ended) = events_until(&mut body, &mut decoder, |e| {
        e.iter().filter(|(_, m)| is_change(m)).count() == 2
    })
    .await;
    assert!(!ended, "{events:?}");
    let ids: Vec<&str> = events.iter().map(|(id, _)| id.as_str()).collect();
    let stream = priming.split_once('_').unwrap().0;
    assert_eq!(ids[0], change_id, "the missed event first: {events:?}");
    assert_eq!(
        ids[1],
        format!("{stream}_2"),
        "then the same stream's next: {events:?}"
    );
}

#[tokio::test]
async fn a_legacy_session_over_http_gets_every_log_of_its_own_calls_and_no_other() {
    // rmcp, which the testkit is built on, sends a call's logs on the session's GET stream,
    // not the call's. With one upstream session for all clients, logs of two sessions' calls in
    // flight at once could not be attributed and were dropped; with one upstream session per
    // client session, each log has one owner. A log that trails its call's response arrives on
    // the client's own GET stream, as it would directly.
    let (gw, _web) = acme_on_web("legacy", false).await;
    let sessions = [gw.legacy("acme").await, gw.legacy("acme").await];
    let mut streams = Vec::new();
    for s in &sessions {
        streams.push((
            s.open_get_stream().await.bytes_stream(),
            mcp_wire::sse::Decoder::new(1 << 20),
        ));
    }
    let rounds = 10;
    let mut seen: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        let calls = sessions.iter().enumerate().map(|(who, s)| {
            let message = format!("s{who}-{round}");
            async move {
                s.call(round, "log", json!({"message": message, "level": "info"}))
                    .await
            }
        });
        let answers = futures_util::future::join_all(calls).await;
        for (who, answer) in answers.iter().enumerate() {
            seen[who].extend(
                answer
                    .messages
                    .iter()
                    .filter(|m| m["method"] == "notifications/message")
                    .map(|m| m["params"]["data"].to_string()),
            );
        }
    }
    for (who, (stream, decoder)) in streams.iter_mut().enumerate() {
        while seen[who].len() < rounds as usize {
            let Ok(Some(Ok(chunk))) =
                tokio::time::timeout(Duration::from_secs(3), stream.next()).await
            else {
                break;
            };
            decoder.push(&chunk);
            while let Some(ev) = decoder.next_event().unwrap() {
                let msg: Value = serde_json::from_str(&ev.data).unwrap_or_default();
                if msg["method"] == "notifications/message" {
                    seen[who].push(msg["params"]["data"].to_string());
                }
            }
        }
    }
    for (who, logs) in seen.iter().enumerate() {
        let mut expected: Vec<String> = (0..rounds)
            .map(|round| format!("\"s{who}-{round}\""))
            .collect();
        let mut got = logs.clone();
        expected.sort();
        got.sort();
        assert_eq!(got, expected, "session {who}: its own logs, each once");
    }
}

#[tokio::test]
async fn a_dual_era_http_server_serves_each_client_in_its_own_era() {
    let (gw, _web) = acme_on_web("auto", false).await;
    // A legacy client's call reaches the server in the legacy era, on its own upstream session.
    let s = gw.legacy("acme").await;
    let legacy = s.call(1, "whoami", json!({})).await;
    let legacy: Value = serde_json::from_str(text(legacy.response())).unwrap();
    assert!(
        legacy["meta"]
            .get("io.modelcontextprotocol/protocolVersion")
            .is_none(),
        "{legacy}"
    );
    assert!(
        gw.log().contains("\"server\":\"web~session\""),
        "{}",
        gw.log()
    );

    // A 2026-07-28 client's reaches it in that era: the server's own input request, key and all.
    let modern = gw
        .modern(
            "acme",
            2,
            "tools/call",
            json!({"name": "whoami", "arguments": {}}),
        )
        .await;
    let modern: Value = serde_json::from_str(text(modern.response())).unwrap();
    assert_eq!(
        modern["meta"]["io.modelcontextprotocol/protocolVersion"], "2026-07-28",
        "{modern}"
    );
    let asked = gw
        .modern(
            "acme",
            3,
            "tools/call",
            json!({"name": "test_input_required_result_elicitation", "arguments": {}}),
        )
        .await;
    let result = &asked.response()["result"];
    assert_eq!(result["resultType"], "input_required", "{result}");
    assert!(
        result["inputRequests"].get("user_name").is_some(),
        "{result}"
    );
}

#[tokio::test]
async fn malformed_round_trip_fields_of_a_modern_request_are_refused() {
    let gw = one_kit("").await;
    for (field, value) in [
        ("inputResponses", json!({"user_name": 12345})),
        ("inputResponses", Value::Null),
        ("inputResponses", json!([1])),
        ("requestState", json!(7)),
    ] {
        let mut params = json!({"name": "kit__echo", "arguments": {"message": "x"}});
        params[field] = value.clone();
        let a = gw.modern("acme", 1, "tools/call", params).await;
        assert_eq!(
            a.response()["error"]["code"],
            -32602,
            "{field} = {value}: {:?}",
            a.messages
        );
    }
    // Well-formed ones pass on to the tool.
    let params = json!({"name": "kit__echo", "arguments": {"message": "x"},
        "inputResponses": {"k": {"action": "decline"}}});
    let a = gw.modern("acme", 2, "tools/call", params).await;
    assert_eq!(text(a.response()), "x", "{:?}", a.messages);
}

/// Under `protocol = "auto"` a server that is slow to start (an interpreter importing its SDK)
/// is not taken for a legacy one: it answers nothing, not even the `ping` sent after half the
/// handshake time, until it reads discover and answers it.
#[tokio::test]
async fn a_slow_starting_modern_server_is_spoken_to_in_the_modern_era() {
    // The server reads nothing until the gateway has sent it two messages: `server/discover`
    // and whatever the gateway sends when discover goes unanswered (the probe, at half of
    // connect_timeout_ms). So it is silent past the probe by construction, not by a timer.
    let server = format!(
        "[[servers]]\nname = \"kit\"\nprotocol = \"auto\"\nconnect_timeout_ms = 6000\n\
         [servers.stdio]\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"read -r a; read -r b; \
         {{ printf '%s\\\\n%s\\\\n' \\\"$a\\\" \\\"$b\\\"; exec cat; }} | exec '{}' stdio\"]\n",
        testkit().display()
    );
    let gw = acme_on_kit(&server).await;
    gw.wait_logged("upstream connected", 1).await;
    let log = gw.log();
    assert!(!log.contains("using the legacy era"), "{log}");
    assert!(log.contains(r#""era":"Modern""#), "{log}");
}
