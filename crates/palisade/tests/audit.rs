//! The audit trail through the real gateway: every forwarded call leaves a BEGIN and an END
//! with the same id, a policy refusal a DENIED; arguments appear only as fingerprints; and
//! `palisade audit verify` passes on the trail and names a modified record.

mod common;

use std::time::{Duration, Instant};

use common::{Gw, TenantSpec, stdio_server};
use serde_json::{Value, json};

const EMAIL: &str = "jane.doe.marker@example.com";
const CARD: &str = "4111111111111111";

fn trail(gw: &Gw) -> Vec<Value> {
    let dir = gw.config.with_file_name("palisade-data").join("audit");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| v.get("kind").is_some())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The trail once it holds a record of `kind` (END and DENIED records are not waited for).
async fn trail_with(gw: &Gw, kind: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = trail(gw);
        if r.iter().any(|v| v["kind"] == kind) {
            return r;
        }
        assert!(Instant::now() < deadline, "no {kind} record: {r:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn raw_trail(gw: &Gw) -> String {
    let dir = gw.config.with_file_name("palisade-data").join("audit");
    std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                .collect()
        })
        .unwrap_or_default()
}

fn verify(gw: &Gw) -> std::process::Output {
    gw.cli(&["audit", "verify"])
}

#[tokio::test]
async fn calls_leave_begin_and_end_and_no_arguments() {
    let gw = Gw::start(
        &stdio_server("kit", ""),
        &[TenantSpec {
            id: "acme",
            servers: &["kit"],
            namespacing: true,
        }],
    );
    gw.ready().await;
    let s = gw.legacy("acme").await;
    let message = format!("{EMAIL} {CARD} Jane Doe");
    let a = s.call(1, "kit__echo", json!({ "message": message })).await;
    assert_eq!(common::text(a.response()), message);

    let records = trail_with(&gw, "END").await;
    let begin = records.iter().find(|v| v["kind"] == "BEGIN").unwrap();
    let end = records.iter().find(|v| v["kind"] == "END").unwrap();
    assert_eq!(begin["id"], end["id"]);
    assert_eq!(begin["tenant"], "acme");
    assert_eq!(begin["method"], "tools/call");
    assert_eq!(begin["target"], "echo");
    assert_eq!(end["outcome"], "ok");
    assert!(
        begin["args_fingerprint"]
            .as_str()
            .is_some_and(|f| f.len() == 64)
    );
    assert!(
        begin["subject"].as_str().unwrap().starts_with("h:"),
        "subjects are hashed"
    );
    assert!(begin["seq"].as_u64() < end["seq"].as_u64());

    // No raw PII in the trail or the log.
    let raw = raw_trail(&gw);
    for marker in [EMAIL, CARD, "Jane Doe"] {
        assert!(!raw.contains(marker), "{marker} in the trail");
        assert!(!gw.log().contains(marker), "{marker} in the log");
    }

    let out = verify(&gw);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn denied_calls_are_recorded_and_tampering_is_named() {
    let gw = Gw::start_full(
        &stdio_server("kit", ""),
        &[TenantSpec {
            id: "acme",
            servers: &["kit"],
            namespacing: true,
        }],
        "",
        "",
    );
    gw.ready().await;
    // A policy that denies `add`, set through the CLI (the running gateway sees it within a
    // second).
    let policy = gw.config.with_file_name("policy.json");
    std::fs::write(&policy, r#"{"deny_tools": ["kit/add"]}"#).unwrap();
    let out = gw.cli(&["policy", "set", "acme", "--file", policy.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let s = gw.legacy("acme").await;
    let a = s.call(1, "kit__add", json!({"a": 1, "b": 2})).await;
    assert!(a.response()["error"].is_object());
    let denied: Vec<Value> = trail_with(&gw, "DENIED")
        .await
        .into_iter()
        .filter(|v| v["kind"] == "DENIED")
        .collect();
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0]["target"], "add");
    assert!(denied[0]["outcome"].as_str().unwrap().contains("policy"));

    // One byte changed in a record: verify fails and names it.
    assert!(verify(&gw).status.success());
    let dir = gw.config.with_file_name("palisade-data").join("audit");
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .contains("DENIED")
        })
        .unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replacen("\"add\"", "\"adx\"", 1)).unwrap();
    let out = verify(&gw);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("modified"), "{said}");
}
