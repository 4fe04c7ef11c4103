//! Hostile or failing upstreams: a crash, garbage or an endless line on stdout, a hang, an
//! HTTP upstream that is down. Each caller gets a clear error naming the upstream, the child is
//! killed and restarted, the next call works, and shutdown leaves no process behind.

use crate::common;

use std::time::Duration;

use common::*;
use serde_json::json;

/// After a failure, the upstream is back and serves the next call.
async fn the_next_call_works(s: &Legacy<'_>, id: u64) {
    let a = s.call(id, "kit__echo", json!({"message": "again"})).await;
    assert_eq!(text(a.response()), "again", "{:?}", a.messages);
}

fn error_message(a: &Answer) -> String {
    a.response()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn crash_mid_call_fails_that_call_and_the_next_one_works() {
    let gw = one_kit("").await;
    let s = gw.legacy("acme").await;
    let a = s.call(1, "kit__crash", json!({})).await;
    assert_eq!(a.response()["error"]["code"], -32001, "{:?}", a.messages);
    let msg = error_message(&a);
    assert!(msg.contains("`kit`") && msg.contains("exit"), "{msg}");
    assert_eq!(a.response()["error"]["data"]["server"], "kit");
    // Restarted with backoff; the next call waits for the new process and succeeds.
    the_next_call_works(&s, 2).await;
    assert!(
        gw.metrics()
            .await
            .contains(r#"palisade_upstream_restarts_total{server="kit"} 1"#)
    );
}

#[tokio::test]
async fn garbage_on_stdout_kills_and_restarts_the_child() {
    let gw = one_kit("").await;
    let s = gw.legacy("acme").await;
    let a = s.call(1, "kit__garbage", json!({})).await;
    let msg = error_message(&a);
    assert!(
        msg.contains("other than a JSON-RPC message"),
        "{:?}",
        a.messages
    );
    the_next_call_works(&s, 2).await;
}

#[tokio::test]
async fn an_endless_line_is_cut_off_at_the_limit() {
    let servers = format!("{}max_line_bytes = 65536\n", stdio_server("kit", ""));
    let gw = acme_on_kit(&servers).await;
    let s = gw.legacy("acme").await;
    let a = s.call(1, "kit__endless_line", json!({})).await;
    let msg = error_message(&a);
    assert!(msg.contains("longer than"), "{:?}", a.messages);
    the_next_call_works(&s, 2).await;
}

#[tokio::test]
async fn a_hung_call_times_out_and_is_cancelled_upstream() {
    let gw = one_kit("call_timeout_ms = 300").await;
    let s = gw.legacy("acme").await;
    let a = s.call(1, "kit__slow", json!({"ms": 20_000})).await;
    let msg = error_message(&a);
    assert!(msg.contains("did not answer within 300 ms"), "{msg}");
    // The upstream saw the cancellation.
    gw.wait_logged("slow cancelled", 1).await;
    assert!(gw.metrics().await.contains(r#"outcome="timeout"} 1"#));
    // Huge but legal output passes.
    let a = s
        .call(2, "kit__huge_output", json!({"bytes": 2_000_000}))
        .await;
    assert_eq!(text(a.response()).len(), 2_000_000);
}

/// Chaos: a shared upstream frozen with SIGSTOP. No call hangs past its timeout, and once the
/// process runs again, calls work without a restart.
#[tokio::test]
async fn a_frozen_upstream_times_calls_out_and_serves_again_when_thawed() {
    use nix::sys::signal::{Signal, kill};
    let gw = one_kit("call_timeout_ms = 500").await;
    let s = gw.legacy("acme").await;
    the_next_call_works(&s, 1).await;
    let kids = children_of(gw.pid());
    assert_eq!(kids.len(), 1, "{kids:?}");
    let pid = nix::unistd::Pid::from_raw(kids[0] as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    for id in 2..4 {
        let a = tokio::time::timeout(
            Duration::from_secs(10),
            s.call(id, "kit__echo", json!({"message": "frozen"})),
        )
        .await
        .expect("a call to a frozen upstream must end at its timeout");
        let msg = error_message(&a);
        assert!(msg.contains("did not answer within 500 ms"), "{msg}");
    }
    kill(pid, Signal::SIGCONT).unwrap();
    the_next_call_works(&s, 4).await;
    assert_eq!(
        children_of(gw.pid()),
        kids,
        "the same process, not a restart"
    );
}

#[tokio::test]
async fn one_upstream_down_does_not_fail_the_list() {
    // Nothing listens on this port.
    let gone = http_server("gone", "http://127.0.0.1:9/mcp").replace(
        "[servers.http]",
        "connect_timeout_ms = 1000\nlist_timeout_ms = 500\n[servers.http]",
    );
    let servers = format!("{}{gone}", stdio_server("kit", ""));
    let gw = Gw::start(
        &servers,
        &[TenantSpec {
            id: "acme",
            servers: &["kit", "gone"],
            namespacing: true,
        }],
    );
    let s = gw.legacy("acme").await;
    let tools = s.request(1, "tools/list", json!({})).await;
    let names: Vec<&str> = tools.response()["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(names.contains(&"kit__echo"), "{names:?}");
    assert!(
        gw.metrics()
            .await
            .contains(r#"palisade_catalog_upstream_skipped_total{server="gone",list="tools"} 1"#)
    );
    let a = s.call(2, "gone__echo", json!({"message": "x"})).await;
    let msg = error_message(&a);
    assert!(
        msg.contains("`gone`") && msg.contains("unavailable"),
        "{msg}"
    );
    assert!(
        msg.contains("request failed") || msg.contains("not connected"),
        "the reason is given: {msg}"
    );
    let ready = gw
        .http
        .get(format!("{}/readyz", gw.admin))
        .send()
        .await
        .unwrap();
    // Degraded, not unready: one broken upstream must not take the replica out of service.
    assert_eq!(ready.status(), 200);
    let body = ready.text().await.unwrap();
    assert!(
        body.starts_with("degraded") && body.contains("gone"),
        "{body}"
    );
    assert!(
        gw.metrics()
            .await
            .contains(r#"palisade_upstream_up{server="kit"} 1"#)
    );
}

#[tokio::test]
async fn shutdown_stops_every_upstream_process() {
    // The binary: SIGTERM and the exit status are what is tested.
    let mut gw = Gw::start(&stdio_server("kit", ""), &ACME_ON_KIT);
    gw.ready().await;
    let s = gw.legacy("acme").await;
    the_next_call_works(&s, 1).await;
    let children = children_of(gw.pid());
    assert!(
        !children.is_empty(),
        "the testkit child runs under the gateway"
    );
    assert_eq!(gw.terminate(), Some(0), "graceful exit; log:\n{}", gw.log());
    for pid in children {
        assert!(!alive(pid), "child {pid} outlived the gateway");
    }
}

#[tokio::test]
async fn a_replica_asked_to_stop_leaves_the_load_balancer_before_it_stops_serving() {
    // The binary: signals are what is tested.
    let mut gw = Gw::start_with(
        &stdio_server("kit", ""),
        &ACME_ON_KIT,
        "[limits]\nshutdown_notice_secs = 600\n",
    );
    gw.ready().await;
    let before = gw.legacy("acme").await;
    gw.sigterm();
    let readyz = format!("{}/readyz", gw.admin);
    let http = gw.http.clone();
    wait_until(Duration::from_secs(10), "/readyz answers 503", || async {
        let r = http.get(&readyz).send().await;
        r.is_ok_and(|r| r.status() == 503)
    })
    .await;
    // Within the notice period: an open session and a new one are both served.
    the_next_call_works(&before, 2).await;
    let after = gw.legacy("acme").await;
    the_next_call_works(&after, 3).await;
    let body = gw.http.get(&readyz).send().await.unwrap().text().await;
    assert_eq!(body.unwrap(), "leaving: still serving until the drain\n");
    assert!(gw.running(), "it waits out the notice period");
    // Asked again: it drains now, well before the 600 s notice ends.
    assert_eq!(gw.terminate(), Some(0), "log:\n{}", gw.log());
}

#[tokio::test]
async fn shutdown_lets_in_flight_calls_finish() {
    // The binary: SIGTERM and the exit status are what is tested.
    let mut gw = Gw::start(&stdio_server("kit", ""), &ACME_ON_KIT);
    gw.ready().await;
    let s = gw.legacy("acme").await;
    // A JSON answer's headers only come with the result, so the call runs in its own task
    // and is surely mid-call when the signal arrives.
    let http = gw.http.clone();
    let (mcp, key, session) = (gw.mcp.clone(), s.key.clone(), s.session.clone());
    let in_flight = tokio::spawn(async move {
        let r = http
            .post(&mcp)
            .header("accept", ACCEPT)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {key}"))
            .header("mcp-session-id", session)
            .body(json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"kit__slow","arguments":{"ms":1500}}}).to_string())
            .send()
            .await
            .expect("in-flight request");
        read_answer(r).await
    });
    gw.wait_logged("slow started", 1).await;
    let exit = tokio::task::spawn_blocking(move || {
        let code = gw.terminate();
        (code, gw)
    });
    let answer = in_flight.await.unwrap();
    assert_eq!(
        text(answer.response()),
        "slept",
        "the call in flight finished: {:?}",
        answer.messages
    );
    let (code, gw) = exit.await.unwrap();
    assert_eq!(code, Some(0), "log:\n{}", gw.log());
}
