//! Tenants and identity through the real gateway: onboarding with the admin API and the CLI,
//! API keys (issue, use, expire, revoke), suspension, tool policy, the cross-tenant matrix, and
//! config hot reload. The registry store is the gateway's default SQLite file.

use crate::common;

use std::time::{Duration, Instant};

use common::{
    ACME_ON_KIT, Gw, TenantSpec, admin_table, stdio_server, stored_hash, text, wait_until,
};
use serde_json::{Value, json};

const ADMIN_KEY: &str = "pal_admin_key_for_tests_only_aaaaaaaaaaaaaaaaaaaaaaaa";

async fn acme_with_admin(extra_servers: &str) -> Gw {
    let gw = Gw::in_process(
        &format!("{}{extra_servers}", stdio_server("kit", "")),
        &ACME_ON_KIT,
        &admin_table(ADMIN_KEY),
    )
    .await;
    gw.ready().await;
    gw
}

fn tool_names(answer: &common::Answer) -> Vec<String> {
    answer.response()["result"]["tools"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .filter_map(|t| t["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until `ended` resolves, returning how long it took (at most `limit`).
async fn time_until<F: std::future::Future>(limit: Duration, ended: F) -> Option<Duration> {
    let start = Instant::now();
    tokio::time::timeout(limit, ended)
        .await
        .ok()
        .map(|_| start.elapsed())
}

/// Revokes one of acme's API keys through `gw`'s admin API; the key as the API returns it.
async fn revoke(gw: &Gw, id: &str) -> Value {
    let (status, revoked) = gw
        .admin_api(
            "DELETE",
            &format!("/admin/v1/tenants/acme/keys/{id}"),
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(status, 200, "{revoked}");
    revoked
}

/// Whether the gateway ends `stream` within `limit`.
async fn ends_within(stream: &mut reqwest::Response, limit: Duration) -> bool {
    time_until(limit, async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await
    .is_some()
}

#[tokio::test]
async fn admin_api_onboards_a_tenant_without_restart() {
    let gw = acme_with_admin("").await;

    // Every admin route needs an admin credential; a tenant's key is not one.
    let (status, body) = gw.admin_api("GET", "/admin/v1/tenants", None, None).await;
    assert_eq!(status, 401, "{body}");
    let acme_key = gw.key("acme").to_owned();
    let (status, _) = gw
        .admin_api("GET", "/admin/v1/tenants", Some(&acme_key), None)
        .await;
    assert_eq!(status, 401);

    // Create a tenant and a key; the key works at once.
    let (status, t) = gw
        .admin_api(
            "POST",
            "/admin/v1/tenants",
            Some(ADMIN_KEY),
            Some(json!({"id": "newco", "display_name": "New Co", "servers": ["kit"]})),
        )
        .await;
    assert_eq!(status, 201, "{t}");
    assert_eq!(t["status"], "active");
    assert_eq!(t["source"], "api");
    let (status, issued) = gw
        .admin_api(
            "POST",
            "/admin/v1/tenants/newco/keys",
            Some(ADMIN_KEY),
            Some(json!({"name": "ci"})),
        )
        .await;
    assert_eq!(status, 201, "{issued}");
    let key = issued["key"].as_str().expect("plain key once").to_owned();
    assert!(key.starts_with("pal_") && key.len() >= 47, "{key}");
    assert!(key.starts_with(issued["id"].as_str().unwrap()));
    assert!(issued.get("hash").is_none(), "the hash is never shown");
    let s = gw.legacy_as(&key).await;
    let tools = s.request(1, "tools/list", json!({})).await;
    assert!(tool_names(&tools).contains(&"kit__echo".to_owned()));

    // Listing shows the key's id and metadata, never the key.
    let (_, keys) = gw
        .admin_api("GET", "/admin/v1/tenants/newco/keys", Some(ADMIN_KEY), None)
        .await;
    assert!(!keys.to_string().contains(&key));
    assert_eq!(keys["keys"][0]["id"], issued["id"]);

    // Clear refusals that name the problem.
    let (status, body) = gw
        .admin_api(
            "POST",
            "/admin/v1/tenants",
            Some(ADMIN_KEY),
            Some(json!({"id": "other", "servers": ["nope"]})),
        )
        .await;
    assert_eq!(status, 400);
    assert!(body["error"]["message"].as_str().unwrap().contains("nope"));
    let (status, _) = gw
        .admin_api(
            "POST",
            "/admin/v1/tenants",
            Some(ADMIN_KEY),
            Some(json!({"id": "newco", "servers": ["kit"]})),
        )
        .await;
    assert_eq!(status, 409);
    let (status, body) = gw
        .admin_api(
            "PATCH",
            "/admin/v1/tenants/acme",
            Some(ADMIN_KEY),
            Some(json!({"display_name": "x"})),
        )
        .await;
    assert_eq!(
        status, 409,
        "a config tenant is changed in the config: {body}"
    );
    let (status, _) = gw
        .admin_api("GET", "/admin/v1/tenants/ghost", Some(ADMIN_KEY), None)
        .await;
    assert_eq!(status, 404);

    // The OpenAPI document describes the routes.
    let (status, doc) = gw
        .admin_api("GET", "/admin/v1/openapi.json", None, None)
        .await;
    assert_eq!(status, 200);
    assert!(doc["paths"]["/admin/v1/tenants/{tenant}/keys"].is_object());

    // Deleting the tenant removes its keys: the key stops working.
    let (status, _) = gw
        .admin_api("DELETE", "/admin/v1/tenants/newco", Some(ADMIN_KEY), None)
        .await;
    assert_eq!(status, 204);
    let a = s.request(2, "tools/list", json!({})).await;
    assert_eq!(a.status, 401);
}

#[tokio::test]
async fn revocation_and_suspension_end_open_sessions_within_a_second() {
    let gw = acme_with_admin("").await;
    let (_, issued) = gw
        .admin_api(
            "POST",
            "/admin/v1/tenants/acme/keys",
            Some(ADMIN_KEY),
            Some(json!({})),
        )
        .await;
    let key = issued["key"].as_str().unwrap().to_owned();
    let id = issued["id"].as_str().unwrap().to_owned();

    // Revocation through the admin API.
    let s = gw.legacy_as(&key).await;
    let mut stream = s.open_get_stream().await;
    assert_eq!(stream.status(), 200);
    let revoked = revoke(&gw, &id).await;
    assert!(revoked["revoked_at"].is_i64());
    assert!(
        ends_within(&mut stream, Duration::from_secs(1)).await,
        "the revoked key's GET stream stayed open"
    );
    let a = s.request(1, "tools/list", json!({})).await;
    assert_eq!(a.status, 401);

    // Suspension through the CLI: another process writes the store; the gateway polls it.
    let s = gw.legacy("acme").await;
    let mut stream = s.open_get_stream().await;
    gw.cli_ok(&["tenant", "suspend", "acme", "--reason", "invoice overdue"])
        .await;
    assert!(
        ends_within(&mut stream, Duration::from_secs(1)).await,
        "the suspended tenant's GET stream stayed open"
    );
    let a = gw
        .post(
            Some(gw.key("acme")),
            &[],
            json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}).to_string(),
        )
        .await;
    assert_eq!(a.status, 403);
    let msg = a.response()["error"]["message"].as_str().unwrap_or("");
    assert!(
        msg.contains("suspended") && msg.contains("invoice overdue"),
        "{msg}"
    );

    // Resumed, it works again.
    let out = gw.cli(&["tenant", "resume", "acme"]).await;
    assert!(out.status.success());
    wait_until(
        Duration::from_secs(10),
        "the resumed tenant is let in",
        || gw.admits(gw.key("acme")),
    )
    .await;
    let s = gw.legacy("acme").await;
    let a = s.call(2, "kit__echo", json!({"message": "back"})).await;
    assert_eq!(text(a.response()), "back");
}

#[tokio::test]
async fn listen_streams_are_capped_and_end_with_their_key() {
    let gw = Gw::in_process(
        &stdio_server("kit", ""),
        &[TenantSpec {
            id: "acme",
            servers: &["kit"],
            namespacing: true,
        }],
        &format!(
            "{}[limits]\nmax_listens_per_tenant = 1\n",
            admin_table(ADMIN_KEY)
        ),
    )
    .await;
    gw.ready().await;
    let (_, issued) = gw
        .admin_api(
            "POST",
            "/admin/v1/tenants/acme/keys",
            Some(ADMIN_KEY),
            Some(json!({})),
        )
        .await;
    let key = issued["key"].as_str().unwrap().to_owned();
    let id = issued["id"].as_str().unwrap().to_owned();

    let mut listen = gw.listen(&key).await;
    assert_eq!(listen.status(), 200);
    let ack = listen.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&ack).contains("acknowledged"));
    let second = gw.listen(gw.key("acme")).await;
    assert_eq!(second.status(), 429, "one listen per tenant here");
    let body = second.text().await.unwrap();
    assert!(body.contains("limits.max_listens_per_tenant"), "{body}");

    revoke(&gw, &id).await;
    assert!(
        ends_within(&mut listen, Duration::from_secs(5)).await,
        "the revoked key's listen stream stayed open"
    );
    // Its place is free again.
    let mut again = gw.listen(gw.key("acme")).await;
    assert_eq!(again.status(), 200);
    assert!(again.chunk().await.unwrap().is_some());
}

#[tokio::test]
async fn expired_keys_are_refused() {
    let gw = acme_with_admin("").await;
    let stdout = common::succeeded(
        gw.cli(&["key", "issue", "acme", "--expires-in-secs", "1"])
            .await,
    );
    let key = stdout
        .split_whitespace()
        .find(|w| w.starts_with("pal_") && w.len() > 40)
        .expect("key printed")
        .to_owned();
    wait_until(Duration::from_secs(10), "the issued key is known", || {
        gw.admits(&key)
    })
    .await;
    let s = gw.legacy_as(&key).await;
    wait_until(Duration::from_secs(10), "the key expires", || async {
        s.request(1, "tools/list", json!({})).await.status == 401
    })
    .await;
    let a = s.request(1, "tools/list", json!({})).await;
    assert_eq!(a.status, 401);
    assert!(
        a.response()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired")
    );
    assert!(
        a.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );
}

/// Last use is written in batches (every 10 s, and at shutdown), never per call.
#[tokio::test]
async fn key_use_is_recorded_in_batches() {
    // The binary: shutdown on SIGTERM is part of what is tested.
    let mut gw = Gw::start_with(
        &stdio_server("kit", ""),
        &ACME_ON_KIT,
        &admin_table(ADMIN_KEY),
    );
    gw.ready().await;
    let s = gw.legacy("acme").await;
    s.request(1, "tools/list", json!({})).await;
    let listed = ["key", "list", "acme"];
    assert!(
        gw.cli_ok(&listed).await.contains("last_used_at=never"),
        "written per call"
    );
    assert_eq!(gw.terminate(), Some(0));
    let after = gw.cli_ok(&listed).await;
    assert!(
        !after.contains("last_used_at=never") && after.contains("last_used_at=1"),
        "{after}"
    );
}

#[tokio::test]
async fn policy_hides_denied_tools_and_requires_scopes() {
    let gw = acme_with_admin("").await;
    let policy = json!({
        "deny_tools": ["kit/add"],
        "tool_scopes": {"kit/echo": ["echo:use"]},
    });
    let (status, body) = gw
        .admin_api(
            "PUT",
            "/admin/v1/tenants/acme/policy",
            Some(ADMIN_KEY),
            Some(policy.clone()),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, shown) = gw
        .admin_api(
            "GET",
            "/admin/v1/tenants/acme/policy",
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(shown, policy);

    let s = gw.legacy("acme").await;
    let names = tool_names(&s.request(1, "tools/list", json!({})).await);
    assert!(!names.contains(&"kit__add".to_owned()), "{names:?}");
    assert!(names.contains(&"kit__echo".to_owned()), "{names:?}");
    let a = s.call(2, "kit__add", json!({"a": 1, "b": 2})).await;
    let msg = a.response()["error"]["message"].as_str().unwrap_or("");
    assert!(msg.contains("not allowed by the tenant's policy"), "{msg}");

    // The config key has no scopes: 403 insufficient_scope, naming what is needed.
    let a = s.call(3, "kit__echo", json!({"message": "x"})).await;
    assert_eq!(a.status, 403);
    let challenge = a.headers["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.contains(r#"error="insufficient_scope""#)
            && challenge.contains(r#"scope="echo:use""#),
        "{challenge}"
    );

    // A key carrying the scope may call it.
    let (_, issued) = gw
        .admin_api(
            "POST",
            "/admin/v1/tenants/acme/keys",
            Some(ADMIN_KEY),
            Some(json!({"scopes": ["echo:use"]})),
        )
        .await;
    let s = gw.legacy_as(issued["key"].as_str().unwrap()).await;
    let a = s.call(4, "kit__echo", json!({"message": "scoped"})).await;
    assert_eq!(text(a.response()), "scoped");

    let (status, body) = gw
        .admin_api(
            "PUT",
            "/admin/v1/tenants/acme/policy",
            Some(ADMIN_KEY),
            Some(json!({"deny_tools": ["a/b/c"]})),
        )
        .await;
    assert_eq!(status, 400);
    assert!(body["error"]["message"].as_str().unwrap().contains("a/b/c"));
}

/// With tenant A's credentials, nothing of tenant B's is listed, callable, readable or
/// resumable, for every method that reaches an upstream or a session, and no admin object.
#[tokio::test]
async fn cross_tenant_matrix() {
    let servers = format!("{}{}", stdio_server("kit_a", ""), stdio_server("kit_b", ""));
    let gw = Gw::in_process(
        &servers,
        &[
            TenantSpec {
                id: "alpha",
                servers: &["kit_a"],
                namespacing: true,
            },
            TenantSpec {
                id: "beta",
                servers: &["kit_b"],
                namespacing: true,
            },
        ],
        &admin_table(ADMIN_KEY),
    )
    .await;
    gw.ready().await;
    let a = gw.legacy("alpha").await;
    let b = gw.legacy("beta").await;

    // Lists: only A's own server.
    for (method, field) in [
        ("tools/list", "tools"),
        ("prompts/list", "prompts"),
        ("resources/list", "resources"),
        ("resources/templates/list", "resourceTemplates"),
    ] {
        let r = a.request(1, method, json!({})).await;
        let items = r.response()["result"][field]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(!items.is_empty(), "{method}: {:?}", r.messages);
        let dump = Value::Array(items).to_string();
        assert!(
            !dump.contains("kit_b"),
            "{method} leaked B's server: {dump}"
        );
    }

    // Calls that address B's server are unknown to A.
    let attempts = [
        (
            "tools/call",
            json!({"name": "kit_b__echo", "arguments": {"message": "x"}}),
        ),
        ("prompts/get", json!({"name": "kit_b__test_simple_prompt"})),
        ("resources/read", json!({"uri": "kit_b+test://static-text"})),
        (
            "resources/subscribe",
            json!({"uri": "kit_b+test://watched-resource"}),
        ),
        (
            "completion/complete",
            json!({"ref": {"type": "ref/prompt", "name": "kit_b__test_prompt_with_arguments"}, "argument": {"name": "arg1", "value": "a"}}),
        ),
    ];
    for (i, (method, params)) in attempts.iter().enumerate() {
        let r = a.request(10 + i as u64, method, params.clone()).await;
        assert!(
            r.response()["error"].is_object(),
            "{method} with A's key reached B: {:?}",
            r.messages
        );
        // The same request with A's own server works, so the refusal is about the tenant.
        let own = serde_json::to_string(params)
            .unwrap()
            .replace("kit_b", "kit_a");
        let r = a
            .request(20 + i as u64, method, serde_json::from_str(&own).unwrap())
            .await;
        assert!(
            r.response()["result"].is_object(),
            "{method}: {:?}",
            r.messages
        );
    }
    let m = gw
        .modern(
            "alpha",
            30,
            "tools/call",
            json!({"name": "kit_b__echo", "arguments": {"message": "x"}}),
        )
        .await;
    assert!(m.response()["error"].is_object(), "{:?}", m.messages);

    // B's session is not resumable with A's key: POST, GET stream and DELETE all 404.
    let stolen = common::Legacy {
        gw: &gw,
        key: a.key.clone(),
        session: b.session.clone(),
    };
    let r = stolen.request(40, "tools/list", json!({})).await;
    assert_eq!(r.status, 404);
    assert_eq!(stolen.open_get_stream().await.status(), 404);
    let del = gw
        .http
        .delete(&gw.mcp)
        .header("authorization", format!("Bearer {}", a.key))
        .header("mcp-session-id", &b.session)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 404);
    let r = b.request(41, "tools/list", json!({})).await;
    assert_eq!(r.status, 200, "B's session survived A's attempts");

    // No admin object of B's (or anyone's) is reachable with A's key.
    for (method, path) in [
        ("GET", "/admin/v1/tenants/beta"),
        ("GET", "/admin/v1/tenants/beta/keys"),
        ("GET", "/admin/v1/tenants/beta/policy"),
        ("GET", "/admin/v1/tenants/beta/sessions"),
        ("POST", "/admin/v1/tenants/beta/suspend"),
        ("DELETE", "/admin/v1/tenants/beta"),
    ] {
        let (status, _) = gw.admin_api(method, path, Some(&a.key), None).await;
        assert_eq!(status, 401, "{method} {path}");
    }
    // An admin sees B's session by its handle, never its id.
    let (_, sessions) = gw
        .admin_api(
            "GET",
            "/admin/v1/tenants/beta/sessions",
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(sessions["sessions"].as_array().map(Vec::len), Some(1));
    assert!(!sessions.to_string().contains(&b.session));
    let handle = sessions["sessions"][0]["handle"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = gw
        .admin_api(
            "DELETE",
            &format!("/admin/v1/tenants/alpha/sessions/{handle}"),
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(status, 404, "B's session is not reachable under A");
    let (status, _) = gw
        .admin_api(
            "DELETE",
            &format!("/admin/v1/tenants/beta/sessions/{handle}"),
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(b.request(42, "tools/list", json!({})).await.status, 404);
}

#[tokio::test]
async fn config_reload_adds_tenants_and_rejects_bad_configs() {
    // The binary: its config file is watched by `palisade serve`.
    let gw = Gw::start_with(
        &stdio_server("kit", ""),
        &ACME_ON_KIT,
        &admin_table(ADMIN_KEY),
    );
    gw.ready().await;
    let key = "pal_reloaded_tenant_key_bbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    let added = format!(
        "{}\n[[tenants]]\nid = \"later\"\nservers = [\"kit\"]\nkeys = [\"{}\"]\n",
        gw.toml,
        stored_hash(key)
    );
    std::fs::write(&gw.config, &added).unwrap();
    wait_until(
        Duration::from_secs(10),
        "the new tenant becomes usable",
        || gw.admits(key),
    )
    .await;

    // A broken config is rejected; the old one keeps serving.
    std::fs::write(&gw.config, format!("{added}\nbogus_key = 1\n")).unwrap();
    gw.wait_logged("config reload rejected", 1).await;
    assert!(
        gw.metrics()
            .await
            .contains(r#"palisade_config_reloads_total{outcome="rejected"} 1"#)
    );
    let s = gw.legacy_as(key).await;
    let a = s.call(1, "kit__echo", json!({"message": "still"})).await;
    assert_eq!(text(a.response()), "still");

    // SIGHUP reloads too; removing a declared tenant deletes it.
    std::fs::write(&gw.config, &gw.toml).unwrap();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(gw.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.request(2, "tools/list", json!({})).await.status != 401 {
        assert!(Instant::now() < deadline, "the removed tenant kept working");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two replicas sharing one PostgreSQL registry: what one is told, the other enforces within a
/// second, on new requests and on open sessions.
#[tokio::test]
async fn replicas_share_the_postgres_registry() {
    use sqlx::{Connection, Executor};
    let Some(admin_url) = testenv::postgres() else {
        return;
    };
    let name = format!("palisade_gw_test_{:016x}", rand::random::<u64>());
    let mut conn = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .unwrap();
    let (base, _) = admin_url.rsplit_once('/').unwrap();
    let storage = format!("[storage]\ndatabase_url = \"{base}/{name}\"\n");
    let start = |replica: &str| {
        Gw::start_with(
            &stdio_server("kit", ""),
            &[TenantSpec {
                id: "acme",
                servers: &["kit"],
                namespacing: true,
            }],
            &format!(
                "{}{storage}[fleet]\nreplica = \"{replica}\"\n",
                admin_table(ADMIN_KEY)
            ),
        )
    };
    let (one, mut two) = (start("one"), start("two"));
    one.ready().await;
    two.ready().await;

    // A key issued on one replica works on the other within a second.
    let (status, issued) = one
        .admin_api(
            "POST",
            "/admin/v1/tenants/acme/keys",
            Some(ADMIN_KEY),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 201, "{issued}");
    let key = issued["key"].as_str().unwrap().to_owned();
    let usable = time_until(Duration::from_secs(1), async {
        while !two.admits(&key).await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        usable.is_some(),
        "the other replica did not accept the new key within 1 s"
    );

    // Revoked on one replica: the other's open session ends within a second.
    let s = two.legacy_as(&key).await;
    let mut stream = s.open_get_stream().await;
    revoke(&one, issued["id"].as_str().unwrap()).await;
    assert!(
        ends_within(&mut stream, Duration::from_secs(1)).await,
        "the other replica kept the revoked key's stream open"
    );
    assert_eq!(s.request(2, "tools/list", json!({})).await.status, 401);

    // Suspended on the second: the first refuses the tenant within a second.
    let (status, _) = two
        .admin_api(
            "POST",
            "/admin/v1/tenants/acme/suspend",
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let refused = time_until(Duration::from_secs(1), async {
        while one.initialize(one.key("acme")).await.status != 403 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        refused.is_some(),
        "the first replica still served the suspended tenant"
    );

    // Either replica lists the fleet from the heartbeats in the shared store.
    let (status, listed) = two
        .admin_api("GET", "/admin/v1/replicas", Some(ADMIN_KEY), None)
        .await;
    assert_eq!(status, 200, "{listed}");
    let listed = listed["replicas"].clone();
    let seen: Vec<(&str, bool, bool, &str)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap(),
                r["alive"].as_bool().unwrap(),
                r["this"].as_bool().unwrap(),
                r["version"].as_str().unwrap(),
            )
        })
        .collect();
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        seen,
        [("one", true, false, version), ("two", true, true, version)],
        "{listed}"
    );
    // A replica that stops says so in its last heartbeat.
    assert_eq!(two.terminate(), Some(0));
    let (_, listed) = one
        .admin_api("GET", "/admin/v1/replicas", Some(ADMIN_KEY), None)
        .await;
    let listed = listed["replicas"].clone();
    assert_eq!(listed[1]["name"], "two");
    assert_eq!(listed[1]["health"], "stopped", "{listed}");

    drop(one);
    drop(two);
    conn.execute(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .await
    .unwrap();
}
