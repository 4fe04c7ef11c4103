//! `palisade audit tail|find|export` against the trail a real gateway wrote: `find` finds the
//! calls made with given arguments (per tenant, per tool, whatever their key order) without
//! printing them; `tail` shows one tenant's last records and follows new ones, across a new
//! file; `export` prints stored lines byte for byte, filtered by time and tenant.

use crate::common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Gw, Legacy, two_tenants_on_kit};
use serde_json::{Value, json};

fn audit_dir(gw: &Gw) -> PathBuf {
    gw.config.with_file_name("palisade-data").join("audit")
}

/// Every stored line of the trail files, checkpoints included, read here without the CLI.
fn stored_lines(gw: &Gw) -> Vec<String> {
    palisade_audit::list_files(&audit_dir(gw))
        .unwrap_or_default()
        .iter()
        .flat_map(|f| {
            let bytes = std::fs::read(f).unwrap();
            let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
            String::from_utf8(bytes[..end].to_vec())
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The trail's record lines (no checkpoints), each with its JSON.
fn records(gw: &Gw) -> Vec<(String, Value)> {
    stored_lines(gw)
        .into_iter()
        .filter(|l| !l.starts_with("{\"checkpoint\""))
        .filter_map(|l| serde_json::from_str(&l).ok().map(|v| (l, v)))
        .collect()
}

/// The records once `ends` END records are in the trail (they are written just after a call).
async fn wait_for_ends(gw: &Gw, ends: usize) -> Vec<(String, Value)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = records(gw);
        if r.iter().filter(|(_, v)| v["kind"] == "END").count() >= ends {
            return r;
        }
        assert!(Instant::now() < deadline, "trail incomplete: {r:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn echo(s: &Legacy<'_>, id: u64, message: &str) {
    let a = s.call(id, "kit__echo", json!({ "message": message })).await;
    assert_eq!(common::text(a.response()), message, "{:?}", a.response());
}

/// Runs the CLI; asserts it succeeded and returns its standard output.
async fn cli_ok(gw: &Gw, args: &[&str]) -> String {
    common::succeeded(gw.cli(args).await)
}

/// `find` with `args` written (as this exact text) to a file.
async fn find(gw: &Gw, tenant: &str, args: &str, tool: Option<&str>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("args.json");
    std::fs::write(&file, args).unwrap();
    let file = file.to_str().unwrap();
    let mut cli = vec!["audit", "find", "--tenant", tenant, "--args", file];
    if let Some(t) = tool {
        cli.extend(["--tool", t]);
    }
    cli_ok(gw, &cli).await
}

/// Ids of the records `find` printed, by kind.
fn printed_ids(out: &str, kind: &str) -> Vec<String> {
    out.lines()
        .filter(|l| l.split_whitespace().nth(1) == Some(kind))
        .map(|l| l.split_whitespace().nth(3).unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn find_lists_the_calls_made_with_the_same_arguments() {
    let gw = two_tenants_on_kit("").await;
    gw.ready().await;
    let acme = gw.legacy("acme").await;
    let globex = gw.legacy("globex").await;
    echo(&acme, 1, "alpha-secret-marker").await;
    echo(&acme, 2, "beta").await;
    echo(&acme, 3, "alpha-secret-marker").await;
    echo(&globex, 1, "alpha-secret-marker").await;
    // Sent with its keys in this order, as raw text.
    let raw = r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"kit__echo","arguments":{"message":"keys","b":1,"a":2}}}"#;
    let a = gw
        .post(
            Some(&acme.key),
            &[
                ("mcp-session-id", acme.session.as_str()),
                ("mcp-protocol-version", "2025-11-25"),
            ],
            raw,
        )
        .await;
    assert_eq!(common::text(a.response()), "keys");
    let trail = wait_for_ends(&gw, 5).await;
    let begins = |tenant: &str| -> Vec<String> {
        trail
            .iter()
            .filter(|(_, v)| v["kind"] == "BEGIN" && v["tenant"] == tenant)
            .map(|(_, v)| v["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (acme_ids, globex_ids) = (begins("acme"), begins("globex"));
    assert_eq!((acme_ids.len(), globex_ids.len()), (4, 1));

    let alpha = r#"{"message": "alpha-secret-marker"}"#;
    let out = find(&gw, "acme", alpha, None).await;
    assert_eq!(out.lines().last(), Some("2 calls found"), "{out}");
    assert_eq!(
        printed_ids(&out, "BEGIN"),
        [acme_ids[0].as_str(), acme_ids[2].as_str()]
    );
    // Each call followed by its END.
    assert_eq!(
        printed_ids(&out, "END"),
        [acme_ids[0].as_str(), acme_ids[2].as_str()]
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].contains(" BEGIN ") && lines[1].contains(" END "));
    assert!(lines[1].contains(" ok "), "{out}");
    assert!(!out.contains("alpha-secret-marker"), "arguments printed");

    let out = find(&gw, "globex", alpha, None).await;
    assert_eq!(out.lines().last(), Some("1 calls found"), "{out}");
    assert_eq!(printed_ids(&out, "BEGIN"), globex_ids);

    let out = find(&gw, "acme", alpha, Some("echo")).await;
    assert_eq!(out.lines().last(), Some("2 calls found"), "{out}");
    let out = find(&gw, "acme", alpha, Some("add")).await;
    assert_eq!(out.trim(), "0 calls found");

    let out = find(&gw, "acme", r#"{"message": "beta"}"#, None).await;
    assert_eq!(printed_ids(&out, "BEGIN"), [acme_ids[1].as_str()]);

    // Canonical JSON: the key order of the file does not matter, the values do.
    let out = find(&gw, "acme", r#"{"a":2,"b":1,"message":"keys"}"#, None).await;
    assert_eq!(printed_ids(&out, "BEGIN"), [acme_ids[3].as_str()], "{out}");
    let out = find(&gw, "acme", r#"{"a":1,"b":2,"message":"keys"}"#, None).await;
    assert_eq!(out.trim(), "0 calls found");

    let out = gw
        .cli(&[
            "audit",
            "find",
            "--tenant",
            "acme",
            "--args",
            "/nonexistent",
        ])
        .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the arguments file"));
}

#[tokio::test]
async fn tail_shows_one_tenants_last_records_and_follows_new_ones() {
    // The binary: it is killed and restarted mid-test.
    let mut gw = Gw::start(
        &common::stdio_server("kit", ""),
        &common::ACME_AND_GLOBEX_ON_KIT,
    );
    gw.ready().await;
    {
        let acme = gw.legacy("acme").await;
        let globex = gw.legacy("globex").await;
        echo(&acme, 1, "a1").await;
        echo(&acme, 2, "a2").await;
        // The trail ends with globex's records.
        echo(&globex, 1, "g1").await;
    }
    let trail = wait_for_ends(&gw, 3).await;
    assert_eq!(trail.last().unwrap().1["tenant"], "globex");
    let acme_lines: Vec<&str> = trail
        .iter()
        .filter(|(_, v)| v["tenant"] == "acme")
        .map(|(l, _)| l.as_str())
        .collect();
    assert_eq!(acme_lines.len(), 4);

    let out = cli_ok(
        &gw,
        &["audit", "tail", "--tenant", "acme", "-n", "2", "--json"],
    )
    .await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, acme_lines[2..], "the last two of acme's, as stored");

    // Human form: one line per record, oldest first, nothing of globex's.
    let out = cli_ok(&gw, &["audit", "tail", "--tenant", "acme"]).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    let kinds: Vec<&str> = lines
        .iter()
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(kinds, ["BEGIN", "END", "BEGIN", "END"]);
    assert!(lines[0].contains("tools/call kit/echo allowed"), "{out}");
    assert!(lines[1].contains("tools/call kit/echo ok ") && lines[1].ends_with("ms"));
    let globex_id = trail.last().unwrap().1["id"].as_str().unwrap().to_owned();
    assert!(!out.contains(&globex_id));

    // --follow prints new records of acme, also from the file a restarted gateway starts.
    let mut follow = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args([
            "audit", "tail", "--tenant", "acme", "-n", "1", "--follow", "--json",
        ])
        .arg("--config")
        .arg(&gw.config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = |what: &str| -> Value {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("tail --follow printed no {what}"));
        serde_json::from_str(&line).unwrap()
    };
    // Its last record, printed once the trail so far is read: what comes next is new.
    assert_eq!(
        next("the last record"),
        serde_json::from_str::<Value>(acme_lines[3]).unwrap()
    );
    {
        let globex = gw.legacy("globex").await;
        echo(&globex, 2, "g2").await;
        let acme = gw.legacy("acme").await;
        echo(&acme, 3, "a3").await;
    }
    let (begin, end) = (next("BEGIN"), next("END"));
    assert_eq!(
        (&begin["kind"], &begin["tenant"]),
        (&json!("BEGIN"), &json!("acme"))
    );
    assert_eq!((&end["kind"], &end["id"]), (&json!("END"), &begin["id"]));

    let files = palisade_audit::list_files(&audit_dir(&gw)).unwrap().len();
    gw.kill_and_restart();
    gw.ready().await;
    assert_eq!(
        palisade_audit::list_files(&audit_dir(&gw)).unwrap().len(),
        files + 1
    );
    {
        let acme = gw.legacy("acme").await;
        echo(&acme, 1, "after restart").await;
    }
    let (begin, end) = (next("BEGIN"), next("END"));
    assert_eq!(
        (&begin["kind"], &begin["tenant"]),
        (&json!("BEGIN"), &json!("acme"))
    );
    assert_eq!(end["id"], begin["id"]);
    let last_file = palisade_audit::list_files(&audit_dir(&gw))
        .unwrap()
        .pop()
        .unwrap();
    let id = begin["id"].as_str().unwrap();
    assert!(std::fs::read_to_string(&last_file).unwrap().contains(id));
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "tail --follow printed more than acme's records"
    );
    let _ = follow.kill();
    let _ = follow.wait();
}

#[tokio::test]
async fn export_prints_stored_lines_verbatim_filtered_by_time_and_tenant() {
    let gw = two_tenants_on_kit("").await;
    gw.ready().await;
    {
        let acme = gw.legacy("acme").await;
        let globex = gw.legacy("globex").await;
        echo(&acme, 1, "a1").await;
        echo(&globex, 1, "g1").await;
        echo(&acme, 2, "a2").await;
    }
    let trail = wait_for_ends(&gw, 3).await;
    let stored: HashSet<String> = stored_lines(&gw).into_iter().collect();

    let out = cli_ok(
        &gw,
        &["audit", "export", "--since", "1h", "--format", "jsonl"],
    )
    .await;
    let lines: Vec<&str> = out.lines().collect();
    let all: Vec<&str> = trail.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(lines, all, "every record, in order");
    for line in &lines {
        assert!(stored.contains(*line), "not a stored line: {line}");
        assert!(!line.starts_with("{\"checkpoint\""));
        // Each line still verifies on its own: its hash covers prev_hash and its bytes.
        let (body, hash) = palisade_audit::split_line(line).unwrap();
        let v: Value = serde_json::from_str(line).unwrap();
        let mut prev = [0u8; 32];
        hex::decode_to_slice(v["prev_hash"].as_str().unwrap(), &mut prev).unwrap();
        assert_eq!(
            hex::encode(palisade_audit::hash_line(&prev, body.as_bytes())),
            hash
        );
    }

    let out = cli_ok(
        &gw,
        &["audit", "export", "--tenant", "globex", "--format", "jsonl"],
    )
    .await;
    let globex: Vec<&str> = trail
        .iter()
        .filter(|(_, v)| v["tenant"] == "globex")
        .map(|(l, _)| l.as_str())
        .collect();
    assert_eq!(globex.len(), 2);
    assert_eq!(out.lines().collect::<Vec<_>>(), globex);

    // Time filters: nothing is older than an hour, nor from the future.
    for filter in [["--until", "1h"], ["--since", "2999-01-01T00:00:00Z"]] {
        let mut args = vec!["audit", "export", "--format", "jsonl"];
        args.extend(filter);
        assert_eq!(cli_ok(&gw, &args).await, "", "{filter:?}");
    }
    let out = cli_ok(
        &gw,
        &[
            "audit",
            "export",
            "--since",
            "2020-01-01T00:00:00+02:00",
            "--until",
            "1d",
            "--format",
            "jsonl",
        ],
    )
    .await;
    assert_eq!(out, "");
    let first = trail[0].1["time"].as_str().unwrap();
    let out = cli_ok(
        &gw,
        &["audit", "export", "--since", first, "--format", "jsonl"],
    )
    .await;
    assert_eq!(out.lines().next(), Some(all[0]), "--since is inclusive");
    let out = cli_ok(
        &gw,
        &["audit", "export", "--until", first, "--format", "jsonl"],
    )
    .await;
    assert!(!out.contains(all[0]), "--until is exclusive");

    let out = gw.cli(&["audit", "export", "--format", "csv"]).await;
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(said.contains("'csv'") && said.contains("jsonl"), "{said}");
    let out = gw
        .cli(&[
            "audit",
            "export",
            "--since",
            "yesterday",
            "--format",
            "jsonl",
        ])
        .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("RFC 3339"));

    // A copy of the trail with a line torn by a crash at its end: the torn line is skipped.
    let copy = tempfile::tempdir().unwrap();
    let file = palisade_audit::list_files(&audit_dir(&gw))
        .unwrap()
        .remove(0);
    let text = palisade_audit::read_file(&file).unwrap().text;
    std::fs::write(
        copy.path().join(file.file_name().unwrap()),
        format!("{text}{{\"seq\":99,\"id\":\"torn"),
    )
    .unwrap();
    let dir = copy.path().to_str().unwrap();
    let out = cli_ok(&gw, &["audit", "export", "--dir", dir, "--format", "jsonl"]).await;
    assert_eq!(out.lines().collect::<Vec<_>>(), all);
    let out = cli_ok(
        &gw,
        &["audit", "tail", "--dir", dir, "--tenant", "acme", "--json"],
    )
    .await;
    assert_eq!(out.lines().count(), 4);

    let empty = tempfile::tempdir().unwrap();
    let dir = empty.path().to_str().unwrap();
    let out = gw
        .cli(&["audit", "export", "--dir", dir, "--format", "jsonl"])
        .await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is [audit] dir right"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn deep_arguments_are_refused_at_the_door_and_the_deepest_allowed_are_found() {
    let gw = two_tenants_on_kit("").await;
    gw.ready().await;
    let acme = gw.legacy("acme").await;
    let headers = [
        ("mcp-session-id", acme.session.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    let nest = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let call = |args: &str| {
        format!(
            r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"kit__echo","arguments":{args}}}}}"#
        )
    };
    // 128 levels: refused at once, never forwarded (an upstream's parser would drop it and the
    // client would wait for the whole call timeout).
    let deep = format!(r#"{{"message":"deep","nest":{}}}"#, nest(128));
    let a = gw.post(Some(&acme.key), &headers, call(&deep)).await;
    assert_eq!((a.status, code(a.response())), (400, -32600));
    let message = a.response()["error"]["message"].as_str().unwrap();
    assert!(message.contains("max_json_depth"), "{message}");

    // The deepest message allowed (64 levels: envelope, params, arguments and 61 arrays) is
    // forwarded, and its BEGIN record carries a real fingerprint that `find` locates.
    let deepest = format!(r#"{{"message":"deepest","nest":{}}}"#, nest(61));
    let a = gw.post(Some(&acme.key), &headers, call(&deepest)).await;
    assert_eq!(common::text(a.response()), "deepest", "{:?}", a.response());
    let trail = wait_for_ends(&gw, 1).await;
    let begins: Vec<&Value> = trail
        .iter()
        .map(|(_, v)| v)
        .filter(|v| v["kind"] == "BEGIN")
        .collect();
    assert_eq!(
        begins.len(),
        1,
        "the refused call left no BEGIN: {trail:#?}"
    );
    let out = find(&gw, "acme", &deepest, None).await;
    assert_eq!(
        printed_ids(&out, "BEGIN"),
        [begins[0]["id"].as_str().unwrap()],
        "{out}"
    );
    let out = find(&gw, "acme", r#"{"message":"deepest","nest":null}"#, None).await;
    assert_eq!(out.trim(), "0 calls found", "not fingerprinted as null");
}

fn code(response: &Value) -> i64 {
    response["error"]["code"].as_i64().unwrap_or_default()
}
