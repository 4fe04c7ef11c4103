//! The audit trail through the real gateway, on the file sink and on the PostgreSQL sink (the
//! same tests; PostgreSQL ones print `skipped` without `PALISADE_TEST_POSTGRES_URL`, and fail
//! under `CI=true`):
//! every call leaves BEGIN then END with one id, refusals DENIED, admin changes ADMIN; nothing
//! personal or secret is stored; a kill -9 mid-load loses no BEGIN of an executed call; an
//! unwritable sink refuses calls until it recovers; `audit verify` names each kind of
//! tampering; the stdout sink carries the same records.

use crate::common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Gw, TenantSpec, admin_table, stdio_server, testkit};
use serde_json::{Value, json};
use sqlx::{Connection as _, Executor as _};

const EMAIL: &str = "jane.doe.marker@example.com";
const CARD: &str = "4111111111111111";
const NAME: &str = "Jane Q. Markerson";
const ADMIN_KEY: &str = "pal_admin_key_for_audit_tests_aaaaaaaaaaaaaaaaaaaaaa";

/// Where the trail under test lives.
struct Trail {
    /// The `[audit]` table for the gateway's config.
    toml: String,
    pg: Option<Pg>,
}

struct Pg {
    /// An administrator's connection URL to the server (its default database).
    server: String,
    /// An administrator's connection URL to the test's own database.
    admin_url: String,
    db: String,
    role: String,
}

impl Drop for Pg {
    /// The test's database and role go with it (FORCE: a gateway may still hold connections).
    fn drop(&mut self) {
        let (server, db, role) = (self.server.clone(), self.db.clone(), self.role.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&server).await.ok()?;
                for sql in [
                    format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
                    format!("DROP ROLE IF EXISTS {role}"),
                ] {
                    conn.execute(sqlx::AssertSqlSafe(sql)).await.ok()?;
                }
                Some(())
            })
        });
        let _ = dropped.join();
    }
}

impl Trail {
    fn file() -> Trail {
        Trail {
            toml: String::new(),
            pg: None,
        }
    }

    /// A fresh database with the audit table, written by a role of its own (INSERT and
    /// SELECT only). `None` (and a printed `skipped`) without PostgreSQL.
    async fn postgres() -> Option<Trail> {
        let server = testenv::postgres()?;
        let suffix = format!("{:016x}", rand::random::<u64>());
        let db = format!("palisade_audit_test_{suffix}");
        let role = format!("palisade_audit_w_{suffix}");
        let mut conn = sqlx::PgConnection::connect(&server).await.unwrap();
        conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
            .await
            .unwrap();
        let (base, _) = server.rsplit_once('/').unwrap();
        let admin_url = format!("{base}/{db}");
        palisade_audit::postgres::install(&admin_url, &role)
            .await
            .unwrap();
        let writer_url = with_user(&admin_url, &role);
        Some(Trail {
            toml: format!(
                "[audit]\nsinks = [\"postgres\"]\npostgres_url = \"{writer_url}\"\nreplica = \"r1\"\n"
            ),
            pg: Some(Pg {
                server,
                admin_url,
                db,
                role,
            }),
        })
    }

    /// Every stored record line, in chain order (checkpoints left out).
    async fn lines(&self, gw: &Gw) -> Vec<String> {
        let all = match &self.pg {
            None => {
                let dir = audit_dir(gw);
                palisade_audit::list_files(&dir)
                    .unwrap_or_default()
                    .iter()
                    .flat_map(|f| {
                        palisade_audit::read_file(f)
                            .map(|t| t.text.lines().map(str::to_owned).collect::<Vec<_>>())
                            .unwrap_or_default()
                    })
                    .collect::<Vec<_>>()
            }
            Some(pg) => palisade_audit::postgres::read_chains(&pg.admin_url)
                .await
                .unwrap()
                .into_iter()
                .flat_map(|(_, lines)| lines)
                .collect(),
        };
        all.into_iter()
            .filter(|l| !l.starts_with("{\"checkpoint\""))
            .collect()
    }

    /// Every stored line, checkpoints included, in chain order (one chain).
    async fn all_lines(&self, gw: &Gw) -> Vec<String> {
        match &self.pg {
            None => {
                let files = palisade_audit::list_files(&audit_dir(gw)).unwrap();
                assert_eq!(files.len(), 1);
                let text = palisade_audit::read_file(&files[0]).unwrap().text;
                text.lines().map(str::to_owned).collect()
            }
            Some(pg) => {
                let mut chains = palisade_audit::postgres::read_chains(&pg.admin_url)
                    .await
                    .unwrap();
                assert_eq!(chains.len(), 1);
                chains.remove(0).1
            }
        }
    }

    /// `audit verify --expect-closed` on the trail with its lines replaced by `lines`: a copy
    /// of the files, or the table's rows rewritten by an administrator (triggers disabled).
    async fn verify_tampered(&self, gw: &Gw, lines: &[String]) -> std::process::Output {
        let body = lines.join("\n") + "\n";
        match &self.pg {
            None => {
                let copy = tempfile::tempdir().unwrap();
                let file = palisade_audit::list_files(&audit_dir(gw))
                    .unwrap()
                    .remove(0);
                std::fs::write(copy.path().join(file.file_name().unwrap()), body).unwrap();
                let dir = copy.path().to_str().unwrap();
                gw.cli(&["audit", "verify", "--expect-closed", "--dir", dir])
                    .await
            }
            Some(pg) => {
                let mut conn = sqlx::PgConnection::connect(&pg.admin_url).await.unwrap();
                let mut tx = conn.begin().await.unwrap();
                tx.execute("ALTER TABLE palisade_audit DISABLE TRIGGER USER")
                    .await
                    .unwrap();
                tx.execute("DELETE FROM palisade_audit").await.unwrap();
                for (i, line) in lines.iter().enumerate() {
                    sqlx::query(
                        "INSERT INTO palisade_audit (replica, pos, seq, kind, time, line) \
                         VALUES ('r1', $1, 0, 'x', '', $2)",
                    )
                    .bind(i as i64 + 1)
                    .bind(line)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                }
                tx.execute("ALTER TABLE palisade_audit ENABLE TRIGGER USER")
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                gw.cli(&["audit", "verify", "--expect-closed"]).await
            }
        }
    }

    async fn records(&self, gw: &Gw) -> Vec<Value> {
        self.lines(gw)
            .await
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The records once `done` holds for them (END and DENIED records are not waited for).
    async fn wait(&self, gw: &Gw, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = self.records(gw).await;
            if done(&r) {
                return r;
            }
            assert!(Instant::now() < deadline, "trail incomplete: {r:#?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Makes the sink refuse writes (`true`) or accept them again (`false`): the file's
    /// immutable flag, or the writer role's INSERT privilege. False if this host cannot (the
    /// flag needs root and a file system that has it).
    async fn break_sink(&self, gw: &Gw, broken: bool) -> bool {
        match &self.pg {
            None => {
                for f in palisade_audit::list_files(&audit_dir(gw)).unwrap() {
                    let flag = if broken { "+i" } else { "-i" };
                    let done = Command::new("chattr")
                        .arg(flag)
                        .arg(&f)
                        .status()
                        .is_ok_and(|s| s.success());
                    if !done {
                        return false;
                    }
                }
                true
            }
            Some(pg) => {
                let sql = if broken {
                    format!("REVOKE INSERT ON palisade_audit FROM {}", pg.role)
                } else {
                    format!("GRANT INSERT ON palisade_audit TO {}", pg.role)
                };
                let mut conn = sqlx::PgConnection::connect(&pg.admin_url).await.unwrap();
                conn.execute(sqlx::AssertSqlSafe(sql)).await.unwrap();
                true
            }
        }
    }
}

fn with_user(url: &str, user: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let host = rest.split_once('@').map_or(rest, |(_, h)| h);
    format!("{scheme}://{user}@{host}")
}

fn audit_dir(gw: &Gw) -> PathBuf {
    gw.config.with_file_name("palisade-data").join("audit")
}

fn kit_counting(count_file: &Path) -> String {
    format!(
        "[[servers]]\nname = \"kit\"\n[servers.stdio]\ncommand = \"{}\"\nargs = [\"stdio\"]\nenv = {{ TESTKIT_COUNT_FILE = \"{}\" }}\n",
        testkit().display(),
        count_file.display()
    )
}

fn acme() -> [TenantSpec<'static>; 1] {
    [TenantSpec {
        id: "acme",
        servers: &["kit"],
        namespacing: true,
    }]
}

/// The binary: these tests read its stdout, kill it mid-load and stop it with SIGTERM.
fn start(trail: &Trail, servers: &str) -> Gw {
    Gw::start_with(
        servers,
        &acme(),
        &format!("{}{}", trail.toml, admin_table(ADMIN_KEY)),
    )
}

/// The fingerprint the gateway records for `args` of a call by `tenant`.
fn fingerprint(gw: &Gw, tenant: &str, args: &Value) -> String {
    let config = palisade::config::Config::load(&gw.config).unwrap();
    let keys =
        palisade::audit::AuditKeys::load(&config, &gw.config.with_file_name("palisade-data"))
            .unwrap();
    keys.fingerprinter().fingerprint(tenant, args).1
}

/// Runs `$body(trail)` on the file sink and on the PostgreSQL sink.
macro_rules! on_both_sinks {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn file() {
                super::$name(super::Trail::file()).await;
            }
            #[tokio::test]
            async fn postgres() {
                if let Some(trail) = super::Trail::postgres().await {
                    super::$name(trail).await;
                }
            }
        }
    };
}

on_both_sinks!(every_call_denial_and_admin_change_is_recorded);
on_both_sinks!(kill_9_mid_load_leaves_no_executed_call_without_begin);
on_both_sinks!(an_unwritable_sink_refuses_calls_until_it_recovers);
on_both_sinks!(verify_names_each_kind_of_tampering);

async fn every_call_denial_and_admin_change_is_recorded(trail: Trail) {
    let gw = start(&trail, &stdio_server("kit", ""));
    gw.ready().await;
    let s = gw.legacy("acme").await;
    let message = format!("{EMAIL} {CARD} {NAME}");
    let a = s.call(1, "kit__echo", json!({ "message": message })).await;
    assert_eq!(common::text(a.response()), message);
    let r = s
        .request(
            2,
            "resources/read",
            json!({"uri": "kit+test://static-text"}),
        )
        .await;
    assert!(
        r.response()["result"]["contents"].is_array(),
        "{:?}",
        r.response()
    );
    let p = s
        .request(
            3,
            "prompts/get",
            json!({"name": "kit__test_prompt_with_arguments", "arguments": {"arg1": EMAIL, "arg2": "b"}}),
        )
        .await;
    assert!(p.response()["result"].is_object(), "{:?}", p.response());

    // Admin changes: a tenant, a key, a policy that denies `add`.
    let (status, _) = gw
        .admin_api(
            "POST",
            "/admin/v1/tenants",
            Some(ADMIN_KEY),
            Some(json!({"id": "globex", "servers": ["kit"]})),
        )
        .await;
    assert_eq!(status, 201);
    let (status, issued) = gw
        .admin_api(
            "POST",
            "/admin/v1/tenants/globex/keys",
            Some(ADMIN_KEY),
            Some(json!({"name": "ci"})),
        )
        .await;
    assert_eq!(status, 201);
    let key = issued["key"].as_str().unwrap().to_owned();
    let (status, _) = gw
        .admin_api(
            "PUT",
            "/admin/v1/tenants/globex/policy",
            Some(ADMIN_KEY),
            Some(json!({"deny_tools": ["kit/add"]})),
        )
        .await;
    assert_eq!(status, 200);
    let g = gw.legacy_as(&key).await;
    let d = g.call(1, "kit__add", json!({"a": 1, "b": 2})).await;
    assert!(d.response()["error"].is_object());

    let records = trail
        .wait(&gw, |r| {
            r.iter().filter(|v| v["kind"] == "END").count() >= 6
                && r.iter().any(|v| v["kind"] == "DENIED")
        })
        .await;
    let of = |kind: &str| -> Vec<&Value> { records.iter().filter(|v| v["kind"] == kind).collect() };
    // Every BEGIN has an END with its id, after it.
    for method in ["tools/call", "resources/read", "prompts/get"] {
        let begin = of("BEGIN")
            .into_iter()
            .find(|v| v["method"] == method)
            .unwrap_or_else(|| panic!("no BEGIN for {method}: {records:#?}"));
        let end = of("END")
            .into_iter()
            .find(|v| v["id"] == begin["id"])
            .unwrap_or_else(|| panic!("no END for {method}"));
        assert_eq!(begin["tenant"], "acme");
        assert_eq!(begin["decision"], "allowed");
        assert_eq!(end["outcome"], "ok");
        assert!(begin["seq"].as_u64() < end["seq"].as_u64());
        assert!(end["latency_us"].is_u64());
        assert!(begin["subject"].as_str().unwrap().starts_with("h:"));
        if method != "resources/read" {
            // A resource has no arguments: its URI is the target.
            assert!(
                begin["args_fingerprint"]
                    .as_str()
                    .is_some_and(|f| f.len() == 64)
            );
            assert_eq!(begin["args_bytes"].as_u64().map(|n| n > 0), Some(true));
        }
    }
    let call = of("BEGIN")
        .into_iter()
        .find(|v| v["method"] == "tools/call")
        .unwrap();
    assert_eq!(call["target"], "echo");
    assert_eq!(
        call["args_fingerprint"],
        fingerprint(&gw, "acme", &json!({ "message": message }))
    );
    let denied = of("DENIED");
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0]["tenant"], "globex");
    assert_eq!(denied[0]["target"], "add");
    assert!(denied[0]["outcome"].as_str().unwrap().contains("policy"));
    // Three admin writes, each with its END; who made them is hashed.
    let admin = of("ADMIN");
    let targets: Vec<&str> = admin
        .iter()
        .map(|v| v["target"].as_str().unwrap())
        .collect();
    assert_eq!(
        targets,
        ["tenants", "tenants/globex/keys", "tenants/globex/policy"]
    );
    for a in &admin {
        assert!(a["subject"].as_str().unwrap().starts_with("h:"));
        let end = of("END").into_iter().find(|v| v["id"] == a["id"]).unwrap();
        assert_eq!(end["outcome"], "ok");
    }
    assert_eq!(admin[1]["tenant"], "globex");
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("palisade_audit_begin_duration_seconds_count 3"),
        "three calls waited for their BEGIN: {metrics}"
    );
    assert_eq!(admin[2]["method"], "admin PUT");

    // Nothing personal or secret anywhere: trail, log, stdout.
    let stored = trail.lines(&gw).await.join("\n");
    for marker in [EMAIL, CARD, NAME, key.as_str(), ADMIN_KEY] {
        assert!(!stored.contains(marker), "{marker} in the trail");
        assert!(!gw.log().contains(marker), "{marker} in the log");
        assert!(!gw.stdout().contains(marker), "{marker} on stdout");
    }
    let said = gw.cli_ok(&["audit", "verify"]).await;
    assert!(said.contains("OK"), "{said}");

    // The call is found by its arguments, on this sink too.
    let args = gw.config.with_file_name("args.json");
    std::fs::write(&args, json!({ "message": message }).to_string()).unwrap();
    let found = gw
        .cli_ok(&[
            "audit",
            "find",
            "--tenant",
            "acme",
            "--args",
            args.to_str().unwrap(),
        ])
        .await;
    assert!(found.ends_with("1 calls found\n"), "{found}");
    assert!(!found.contains(EMAIL), "{found}");
    let tail = gw
        .cli_ok(&["audit", "tail", "--tenant", "globex", "--json"])
        .await;
    let kinds: Vec<String> = tail
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["kind"].to_string())
        .collect();
    assert_eq!(
        kinds,
        ["\"ADMIN\"", "\"END\"", "\"ADMIN\"", "\"END\"", "\"DENIED\""],
        "{tail}"
    );
}

async fn kill_9_mid_load_leaves_no_executed_call_without_begin(trail: Trail) {
    let dir = tempfile::tempdir().unwrap();
    let count_file = dir.path().join("executions");
    let mut gw = start(&trail, &kit_counting(&count_file));
    gw.ready().await;
    let mcp = gw.mcp.clone();
    let key = gw.key("acme").to_owned();
    // Eight clients call `count` with unique messages until the gateway is gone.
    let mut load = Vec::new();
    for c in 0..8 {
        let (mcp, key) = (mcp.clone(), key.clone());
        load.push(tokio::spawn(count_until_gone(mcp, key, c)));
    }
    // Killed mid-load: once the upstream has run a few dozen calls.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(&count_file)
        .unwrap_or_default()
        .lines()
        .count()
        < 30
    {
        assert!(std::time::Instant::now() < deadline, "no load");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.kill_and_restart();
    let mut answered = 0;
    for l in load {
        answered += l.await.unwrap();
    }
    gw.ready().await;
    let executed: Vec<String> = std::fs::read_to_string(&count_file)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(
        executed.len() >= 20,
        "too little load: {} executions",
        executed.len()
    );
    assert!(executed.len() as u32 >= answered);
    let begins: HashSet<String> = trail
        .records(&gw)
        .await
        .iter()
        .filter(|v| v["kind"] == "BEGIN" && v["target"] == "count")
        .filter_map(|v| v["args_fingerprint"].as_str().map(str::to_owned))
        .collect();
    let missing: Vec<&String> = executed
        .iter()
        .filter(|m| !begins.contains(&fingerprint(&gw, "acme", &json!({ "message": m }))))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} executions have no BEGIN: {missing:?}",
        missing.len(),
        executed.len()
    );
    eprintln!(
        "{} executions, {answered} answered before the kill, {} BEGIN records, 0 missing",
        executed.len(),
        begins.len()
    );
    // The restarted gateway continues the chain, and the whole of it verifies.
    let s = gw.legacy("acme").await;
    let a = s
        .call(1, "kit__count", json!({"message": "after-restart"}))
        .await;
    assert!(a.response()["result"].is_object());
    let said = gw.cli_ok(&["audit", "verify"]).await;
    assert!(said.contains("OK"), "{said}");
}

/// A legacy client calling `count` with unique messages until the gateway goes away; returns
/// how many calls were answered with a result.
async fn count_until_gone(mcp: String, key: String, client: u32) -> u32 {
    let http = reqwest::Client::new();
    let post = |body: Value, session: Option<String>| {
        let mut req = http
            .post(&mcp)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {key}"))
            .body(body.to_string());
        if let Some(s) = session {
            req = req
                .header("mcp-session-id", s)
                .header("mcp-protocol-version", "2025-11-25");
        }
        req.send()
    };
    let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"load","version":"1"}}});
    let Ok(r) = post(init, None).await else {
        return 0;
    };
    let Some(session) = r
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        return 0;
    };
    let _ = r.bytes().await;
    let note = json!({"jsonrpc":"2.0","method":"notifications/initialized"});
    if post(note, Some(session.clone())).await.is_err() {
        return 0;
    }
    let mut answered = 0;
    for i in 1.. {
        let call = json!({"jsonrpc":"2.0","id":i,"method":"tools/call","params":{"name":"kit__count","arguments":{"message":format!("c{client}-{i}")}}});
        let Ok(r) = post(call, Some(session.clone())).await else {
            break;
        };
        let Ok(body) = r.text().await else {
            break;
        };
        if body.contains("\"result\"") {
            answered += 1;
        }
    }
    answered
}

async fn an_unwritable_sink_refuses_calls_until_it_recovers(trail: Trail) {
    let dir = tempfile::tempdir().unwrap();
    let count_file = dir.path().join("executions");
    let gw = start(&trail, &kit_counting(&count_file));
    gw.ready().await;
    let s = gw.legacy("acme").await;
    let a = s.call(1, "kit__count", json!({"message": "before"})).await;
    assert_eq!(common::text(a.response()), "1");

    if !trail.break_sink(&gw, true).await {
        eprintln!(
            "skipped: cannot make the audit file immutable here (chattr +i needs root and ext4 or similar)"
        );
        return;
    }
    for id in 2..5 {
        let a = s
            .call(id, "kit__count", json!({"message": "while broken"}))
            .await;
        let msg = a.response()["error"]["message"].as_str().unwrap_or("");
        assert!(
            msg.contains("audit trail cannot record this call"),
            "{:?}",
            a.response()
        );
    }
    let executed = std::fs::read_to_string(&count_file).unwrap();
    assert_eq!(
        executed.lines().count(),
        1,
        "a call reached the upstream: {executed}"
    );
    assert!(gw.log().contains("audit trail unavailable: call refused"));
    assert!(
        gw.metrics().await.contains("reason=\"audit_unavailable\""),
        "no refusal metric"
    );

    // Restored, the trail heals itself: calls run again and the chain verifies.
    assert!(trail.break_sink(&gw, false).await);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut id = 10;
    loop {
        let a = s.call(id, "kit__count", json!({"message": "after"})).await;
        if a.response()["result"].is_object() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "did not recover: {:?}",
            a.response()
        );
        id += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        std::fs::read_to_string(&count_file)
            .unwrap()
            .lines()
            .count(),
        2
    );
    let said = gw.cli_ok(&["audit", "verify"]).await;
    assert!(said.contains("OK"), "{said}");
}

#[tokio::test]
async fn stdout_sink_carries_the_records_the_files_have() {
    let trail = Trail {
        toml: "[audit]\nsinks = [\"file\", \"stdout\"]\n".into(),
        pg: None,
    };
    let mut gw = start(&trail, &stdio_server("kit", ""));
    gw.ready().await;
    let s = gw.legacy("acme").await;
    for i in 1..=3 {
        let a = s
            .call(i, "kit__echo", json!({"message": format!("{EMAIL} {i}")}))
            .await;
        assert!(a.response()["result"].is_object());
    }
    trail
        .wait(&gw, |r| {
            r.iter().filter(|v| v["kind"] == "END").count() == 3
        })
        .await;
    assert_eq!(gw.terminate(), Some(0));
    let files = trail.lines(&gw).await;
    let streamed: Vec<String> = gw
        .stdout()
        .lines()
        .filter(|l| !l.starts_with("{\"checkpoint\""))
        .map(str::to_owned)
        .collect();
    assert_eq!(files.len(), 6);
    assert_eq!(
        streamed, files,
        "stdout and the files hold the same records"
    );
    assert!(gw.stdout().contains("\"reason\":\"close\""));
    assert!(!gw.stdout().contains(EMAIL));
}

/// Each case replaces the stored lines with a tampered copy; verify must name it.
async fn verify_names_each_kind_of_tampering(trail: Trail) {
    let mut gw = start(&trail, &stdio_server("kit", ""));
    gw.ready().await;
    let s = gw.legacy("acme").await;
    for i in 1..=4 {
        s.call(i, "kit__echo", json!({"message": format!("m{i}")}))
            .await;
    }
    trail
        .wait(&gw, |r| {
            r.iter().filter(|v| v["kind"] == "END").count() == 4
        })
        .await;
    assert_eq!(gw.terminate(), Some(0));
    let untouched = gw.cli_ok(&["audit", "verify", "--expect-closed"]).await;
    assert!(untouched.contains("OK"), "{untouched}");
    let lines = trail.all_lines(&gw).await;
    let records: Vec<usize> = (0..lines.len())
        .filter(|&i| !lines[i].starts_with("{\"checkpoint\""))
        .collect();
    assert_eq!(records.len(), 8, "{lines:#?}");
    assert!(lines.last().unwrap().contains("\"reason\":\"close\""));

    let byte = {
        let mut l = lines.clone();
        let r = records[1];
        let at = l[r].find("\"tools/call\"").unwrap() + 2;
        let mut b = l[r].clone().into_bytes();
        b[at] ^= 0x01;
        l[r] = String::from_utf8(b).unwrap();
        l
    };
    let deleted = {
        let mut l = lines.clone();
        l.remove(records[2]);
        l
    };
    let swapped = {
        let mut l = lines.clone();
        l.swap(records[2], records[3]);
        l
    };
    let truncated = lines[..records[5]].to_vec();
    let forged = {
        let mut l = lines.clone();
        let last = l.len() - 1;
        let mut cp: Value = serde_json::from_str(&l[last]).unwrap();
        cp["checkpoint"]["seq"] = json!(2);
        l[last] = cp.to_string();
        l
    };
    let cases = [
        ("one byte modified", byte, "modified"),
        ("a record deleted", deleted, "deleted"),
        ("two records swapped", swapped, "reordered"),
        ("the trail truncated", truncated, "truncated"),
        ("a checkpoint forged", forged, "bad checkpoint signature"),
    ];
    for (what, tampered, expected) in cases {
        let out = trail.verify_tampered(&gw, &tampered).await;
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{what}: verify passed");
        assert!(said.contains(expected), "{what}: {said}");
    }
}

#[tokio::test]
async fn postgres_sink_rows_cannot_be_changed_and_a_privileged_role_is_refused() {
    let Some(trail) = Trail::postgres().await else {
        return;
    };
    let pg = trail.pg.as_ref().unwrap();
    let gw = start(&trail, &stdio_server("kit", ""));
    gw.ready().await;
    let s = gw.legacy("acme").await;
    s.call(1, "kit__echo", json!({"message": "x"})).await;
    trail
        .wait(&gw, |r| r.iter().any(|v| v["kind"] == "END"))
        .await;

    // The writer role may insert and select, nothing else; the owner is stopped by triggers.
    let writer = with_user(&pg.admin_url, &pg.role);
    for (url, who) in [(&writer, "writer"), (&pg.admin_url, "administrator")] {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        for sql in [
            "UPDATE palisade_audit SET line = 'x'",
            "DELETE FROM palisade_audit",
            "TRUNCATE palisade_audit",
        ] {
            let e = conn.execute(sql).await.unwrap_err().to_string();
            assert!(
                e.contains("permission denied") || e.contains("append-only"),
                "{who}: {sql}: {e}"
            );
        }
    }

    // A gateway connecting as a role that could change rows does not start.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("palisade.toml");
    std::fs::write(
        &config,
        format!(
            "[audit]\nsinks = [\"postgres\"]\npostgres_url = \"{}\"\nreplica = \"other\"\n[listen]\nmcp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n",
            pg.admin_url
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        said.contains("may update or delete audit rows") && said.contains("init-postgres"),
        "{said}"
    );
    assert!(
        !said.contains(&pg.admin_url),
        "the URL is never printed: {said}"
    );
}
