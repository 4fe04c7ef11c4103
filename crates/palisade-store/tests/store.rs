//! The same suite against both backends: every case is written once as an async fn taking a
//! fresh [`Store`] (and its URL, for re-opening), and `cases!` runs it as `sqlite::<case>`
//! (a file in a temporary directory) and `postgres::<case>` (a fresh database on the server
//! named by `PALISADE_TEST_POSTGRES_URL`, dropped afterwards; skipped, saying so, when unset;
//! a failure under `CI=true`).

use std::future::Future;
use std::time::Duration;

use palisade_store::{
    Backend, Declared, KeyHash, KeyRecord, NewKey, NewTenant, ReconcileReport, ReplicaRecord,
    Source, Status, Store, StoreError, TenantId, TenantPatch, TenantRecord,
};
use serde_json::json;
use sqlx::{AssertSqlSafe, Connection, Executor};

const POSTGRES_ENV: &str = "PALISADE_TEST_POSTGRES_URL";

// ---- harness ----

async fn with_sqlite<F, Fut>(case: F)
where
    F: FnOnce(Store, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/registry.db", dir.path().display());
    let store = Store::open(&url).await.unwrap();
    assert_eq!(store.backend(), Backend::Sqlite);
    case(store.clone(), url).await;
    store.close().await;
}

async fn with_postgres<F, Fut>(case: F)
where
    F: FnOnce(Store, String) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(admin) = testenv::service(POSTGRES_ENV) else {
        return;
    };
    let name = format!("palisade_test_{:016x}", rand::random::<u64>());
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    conn.execute(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .unwrap();
    let url = with_database(&admin, &name);
    // In its own task, so that a failing case still drops its database.
    let outcome = tokio::spawn(async move {
        let store = Store::open(&url).await.unwrap();
        assert_eq!(store.backend(), Backend::Postgres);
        case(store.clone(), url).await;
        store.close().await;
    })
    .await;
    conn.execute(AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)")))
        .await
        .unwrap();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// The admin URL with its database replaced by `name` (query kept).
fn with_database(admin: &str, name: &str) -> String {
    let (base, query) = match admin.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (admin, String::new()),
    };
    let after_scheme = base.find("://").map(|i| i + 3).unwrap_or(0);
    let authority_end = base[after_scheme..]
        .find('/')
        .map(|i| after_scheme + i)
        .unwrap_or(base.len());
    format!("{}/{name}{query}", &base[..authority_end])
}

macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    super::with_sqlite(super::$case).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    super::with_postgres(super::$case).await
                }
            )*
        }
    };
}

cases!(
    sealed_secret_values,
    migrations_run_on_open_and_reopen,
    tenants_crud,
    suspend_resume_keeps_fields,
    revision_moves_with_every_write_only,
    delete_cascades,
    keys_insert_list_revoke,
    record_last_used_keeps_max,
    replicas_heartbeat,
    policy_round_trip,
    secret_meta,
    reconcile_creates_and_updates,
    reconcile_replaces_config_keys,
    reconcile_deletes_only_config_tenants,
    reconcile_is_one_transaction,
    snapshot_contents,
    concurrent_writes,
);

// ---- fixtures ----

fn tenant_id(id: &str) -> TenantId {
    TenantId::parse(id).unwrap()
}

fn api_tenant(id: &str) -> NewTenant {
    NewTenant {
        id: tenant_id(id),
        display_name: format!("TenantRecord {id}"),
        servers: vec!["github".into(), "postgres".into()],
        namespacing: true,
        limits: json!({"rps": 5, "burst": {"size": 10}}),
        source: Source::Api,
    }
}

fn new_key(id: &str, tenant: &str, byte: u8) -> NewKey {
    NewKey {
        id: id.into(),
        tenant_id: tenant_id(tenant),
        name: format!("key {id}"),
        hash: KeyHash([byte; 32]),
        scopes: vec!["tools:call".into(), "tools:list".into()],
        source: Source::Api,
        expires_at_ms: Some(4_102_444_800_000),
    }
}

fn declared(id: &str, keys: &[(&str, u8)], policy: Option<serde_json::Value>) -> Declared {
    Declared {
        tenant: NewTenant {
            source: Source::Config,
            ..api_tenant(id)
        },
        keys: keys
            .iter()
            .map(|(kid, byte)| NewKey {
                source: Source::Config,
                ..new_key(kid, id, *byte)
            })
            .collect(),
        policy,
    }
}

fn report(created: &[&str], updated: &[&str], deleted: &[&str]) -> ReconcileReport {
    let v = |s: &[&str]| s.iter().map(|x| tenant_id(x)).collect();
    ReconcileReport {
        created: v(created),
        updated: v(updated),
        deleted: v(deleted),
    }
}

fn assert_not_found(r: Result<impl std::fmt::Debug, StoreError>, message: &str) {
    match r {
        Err(e @ StoreError::NotFound { .. }) => assert_eq!(e.to_string(), message),
        other => panic!("expected NotFound ({message}), got {other:?}"),
    }
}

fn assert_conflict(r: Result<impl std::fmt::Debug, StoreError>, message: &str) {
    match r {
        Err(e @ StoreError::Conflict { .. }) => assert_eq!(e.to_string(), message),
        other => panic!("expected Conflict ({message}), got {other:?}"),
    }
}

async fn key_ids(store: &Store, tenant: &str) -> Vec<String> {
    store
        .list_keys(tenant)
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.id)
        .collect()
}

// ---- cases ----

async fn migrations_run_on_open_and_reopen(store: Store, url: String) {
    // The schema exists right after open: the revision row is there and writes work.
    assert_eq!(store.revision().await.unwrap(), 0);
    store.create_tenant(&api_tenant("acme")).await.unwrap();
    let rev = store.revision().await.unwrap();

    // Re-opening (while the first pool is still open, then again) re-runs nothing and
    // keeps the data.
    for _ in 0..2 {
        let again = Store::open(&url).await.unwrap();
        assert_eq!(again.backend(), store.backend());
        assert_eq!(again.revision().await.unwrap(), rev);
        let t = again.get_tenant("acme").await.unwrap().unwrap();
        assert_eq!(t.display_name, "TenantRecord acme");
        again.close().await;
    }
    assert_eq!(store.list_tenants().await.unwrap().len(), 1);
}

async fn tenants_crud(store: Store, _url: String) {
    let created = store.create_tenant(&api_tenant("acme")).await.unwrap();
    assert_eq!(created.id, "acme");
    assert_eq!(created.display_name, "TenantRecord acme");
    assert_eq!(created.status, Status::Active);
    assert_eq!(created.status_reason, None);
    assert_eq!(created.servers, vec!["github", "postgres"]);
    assert!(created.namespacing);
    assert_eq!(created.limits, json!({"rps": 5, "burst": {"size": 10}}));
    assert_eq!(created.source, Source::Api);
    assert!(created.created_at > 1_600_000_000_000);
    assert_eq!(created.created_at, created.updated_at);
    assert_eq!(
        store.get_tenant("acme").await.unwrap().as_ref(),
        Some(&created)
    );
    assert_eq!(store.get_tenant("nope").await.unwrap(), None);

    // A second create with the same id conflicts and leaves the first alone.
    let mut dup = api_tenant("acme");
    dup.display_name = "Impostor".into();
    assert_conflict(
        store.create_tenant(&dup).await,
        "tenant `acme` already exists",
    );
    assert_eq!(
        store
            .get_tenant("acme")
            .await
            .unwrap()
            .unwrap()
            .display_name,
        "TenantRecord acme"
    );

    // Byte order on both backends (PostgreSQL's default collation would differ).
    for id in ["beta", "ab", "a-c", "0z"] {
        let mut t = api_tenant(id);
        t.namespacing = false;
        t.servers = vec![];
        t.limits = json!({});
        let got = store.create_tenant(&t).await.unwrap();
        assert!(!got.namespacing);
        assert!(got.servers.is_empty());
    }
    let ids: Vec<TenantId> = store
        .list_tenants()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    // A collation that ignores '-' would put `ab` before `a-c`.
    assert_eq!(ids, vec!["0z", "a-c", "ab", "acme", "beta"]);

    // A partial patch changes only what it names.
    let patched = store
        .update_tenant(
            "acme",
            &TenantPatch {
                display_name: Some("Acme Corp".into()),
                ..TenantPatch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(patched.display_name, "Acme Corp");
    assert_eq!(patched.servers, created.servers);
    assert_eq!(patched.limits, created.limits);
    assert!(patched.namespacing);
    assert_eq!(patched.created_at, created.created_at);
    assert!(patched.updated_at > created.updated_at);

    let patched2 = store
        .update_tenant(
            "acme",
            &TenantPatch {
                servers: Some(vec!["slack".into()]),
                namespacing: Some(false),
                limits: Some(json!({"rps": 1})),
                display_name: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(patched2.display_name, "Acme Corp");
    assert_eq!(patched2.servers, vec!["slack"]);
    assert!(!patched2.namespacing);
    assert_eq!(patched2.limits, json!({"rps": 1}));
    assert!(patched2.updated_at > patched.updated_at);
    assert_eq!(
        store.get_tenant("acme").await.unwrap().as_ref(),
        Some(&patched2)
    );

    assert_not_found(
        store.update_tenant("nope", &TenantPatch::default()).await,
        "tenant `nope` not found",
    );

    store.delete_tenant("acme").await.unwrap();
    assert_eq!(store.get_tenant("acme").await.unwrap(), None);
    assert_not_found(store.delete_tenant("acme").await, "tenant `acme` not found");
    assert_eq!(store.list_tenants().await.unwrap().len(), 4);
}

async fn suspend_resume_keeps_fields(store: Store, _url: String) {
    let created = store.create_tenant(&api_tenant("acme")).await.unwrap();

    let suspended = store
        .set_status("acme", Status::Suspended, Some("invoice overdue"))
        .await
        .unwrap();
    assert_eq!(suspended.status, Status::Suspended);
    assert_eq!(suspended.status_reason.as_deref(), Some("invoice overdue"));
    assert!(suspended.updated_at > created.updated_at);
    assert_eq!(suspended.created_at, created.created_at);
    assert_eq!(suspended.display_name, created.display_name);
    assert_eq!(suspended.servers, created.servers);
    assert_eq!(suspended.namespacing, created.namespacing);
    assert_eq!(suspended.limits, created.limits);
    assert_eq!(suspended.source, created.source);
    assert_eq!(
        store.get_tenant("acme").await.unwrap().as_ref(),
        Some(&suspended)
    );

    let resumed = store
        .set_status("acme", Status::Active, None)
        .await
        .unwrap();
    assert_eq!(resumed.status, Status::Active);
    assert_eq!(resumed.status_reason, None);
    assert!(resumed.updated_at > suspended.updated_at);
    assert_eq!(
        TenantRecord {
            status: created.status,
            status_reason: created.status_reason.clone(),
            updated_at: created.updated_at,
            ..resumed.clone()
        },
        created
    );

    assert_not_found(
        store.set_status("nope", Status::Suspended, None).await,
        "tenant `nope` not found",
    );

    // Serialized in lowercase, as the admin API shows it.
    let v = serde_json::to_value(&suspended).unwrap();
    assert_eq!(v["status"], "suspended");
    assert_eq!(v["source"], "api");
}

async fn revision_moves_with_every_write_only(store: Store, _url: String) {
    let mut last = store.revision().await.unwrap();
    assert_eq!(last, 0);
    macro_rules! bumped {
        ($what:literal) => {{
            let now = store.revision().await.unwrap();
            assert!(
                now > last,
                "{}: revision {} did not move past {}",
                $what,
                now,
                last
            );
            last = now;
        }};
    }
    macro_rules! unchanged {
        ($what:literal) => {{
            let now = store.revision().await.unwrap();
            assert_eq!(now, last, "{}: revision moved", $what);
        }};
    }

    store.create_tenant(&api_tenant("acme")).await.unwrap();
    bumped!("create_tenant");
    store
        .update_tenant(
            "acme",
            &TenantPatch {
                display_name: Some("x".into()),
                ..TenantPatch::default()
            },
        )
        .await
        .unwrap();
    bumped!("update_tenant");
    store
        .set_status("acme", Status::Suspended, Some("r"))
        .await
        .unwrap();
    bumped!("set_status");
    store
        .insert_key(&new_key("pal_a", "acme", 1))
        .await
        .unwrap();
    bumped!("insert_key");
    store
        .record_last_used(&[("pal_a".to_string(), 1_700_000_000_000)])
        .await
        .unwrap();
    unchanged!("record_last_used");
    store.revoke_key("acme", "pal_a").await.unwrap();
    bumped!("revoke_key");
    store.revoke_key("acme", "pal_a").await.unwrap();
    unchanged!("revoke_key of a revoked key (no change)");
    store.put_policy("acme", &json!({"a": 1})).await.unwrap();
    bumped!("put_policy");
    store.put_secret("acme", "TOKEN", b"sealed").await.unwrap();
    bumped!("put_secret");
    store.delete_secret_meta("acme", "TOKEN").await.unwrap();
    bumped!("delete_secret_meta");
    store
        .reconcile(&[declared("cfg", &[("pal_c", 9)], None)])
        .await
        .unwrap();
    bumped!("reconcile");
    store
        .reconcile(&[declared("cfg", &[("pal_c", 9)], None)])
        .await
        .unwrap();
    unchanged!("reconcile that changes nothing");

    // Reads and failed writes leave it alone.
    store.snapshot().await.unwrap();
    store.list_tenants().await.unwrap();
    store.get_policy("acme").await.unwrap();
    assert!(store.create_tenant(&api_tenant("acme")).await.is_err());
    assert!(
        store
            .insert_key(&new_key("pal_a", "acme", 2))
            .await
            .is_err()
    );
    assert!(store.put_policy("nope", &json!({})).await.is_err());
    assert!(store.delete_secret_meta("acme", "TOKEN").await.is_err());
    unchanged!("reads and failed writes");

    store.delete_tenant("acme").await.unwrap();
    bumped!("delete_tenant");
    let _ = last;
}

async fn delete_cascades(store: Store, _url: String) {
    store.create_tenant(&api_tenant("acme")).await.unwrap();
    store.create_tenant(&api_tenant("other")).await.unwrap();
    store
        .insert_key(&new_key("pal_a1", "acme", 1))
        .await
        .unwrap();
    store
        .insert_key(&new_key("pal_a2", "acme", 2))
        .await
        .unwrap();
    store
        .insert_key(&new_key("pal_o1", "other", 3))
        .await
        .unwrap();
    store
        .put_policy("acme", &json!({"allow": ["*"]}))
        .await
        .unwrap();
    store
        .put_policy("other", &json!({"deny": ["x"]}))
        .await
        .unwrap();
    store
        .put_secret("acme", "GITHUB_TOKEN", b"sealed")
        .await
        .unwrap();
    store
        .put_secret("other", "SLACK_TOKEN", b"sealed")
        .await
        .unwrap();

    store.delete_tenant("acme").await.unwrap();

    let snap = store.snapshot().await.unwrap();
    assert_eq!(
        snap.tenants
            .iter()
            .map(|t| t.id.as_str())
            .collect::<Vec<_>>(),
        vec!["other"]
    );
    assert_eq!(
        snap.keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
        vec!["pal_o1"]
    );
    assert_eq!(
        snap.policies,
        vec![(tenant_id("other"), json!({"deny": ["x"]}))]
    );
    assert_not_found(store.list_keys("acme").await, "tenant `acme` not found");
    assert_not_found(
        store.list_secret_meta("acme").await,
        "tenant `acme` not found",
    );
    assert_eq!(store.get_policy("acme").await.unwrap(), None);

    // Re-created under the same id, the tenant starts empty: the rows are gone, not hidden.
    store.create_tenant(&api_tenant("acme")).await.unwrap();
    assert!(store.list_keys("acme").await.unwrap().is_empty());
    assert!(store.list_secret_meta("acme").await.unwrap().is_empty());
    assert_eq!(store.get_policy("acme").await.unwrap(), None);
    // ...and the deleted keys' ids and hashes are free again.
    store
        .insert_key(&new_key("pal_a1", "acme", 1))
        .await
        .unwrap();
    store
        .insert_key(&new_key("pal_new", "acme", 2))
        .await
        .unwrap();

    // The other tenant kept everything.
    assert_eq!(key_ids(&store, "other").await, vec!["pal_o1"]);
    assert_eq!(store.list_secret_meta("other").await.unwrap().len(), 1);
}

async fn keys_insert_list_revoke(store: Store, _url: String) {
    store.create_tenant(&api_tenant("acme")).await.unwrap();
    store.create_tenant(&api_tenant("other")).await.unwrap();

    let k1 = store
        .insert_key(&new_key("pal_k1", "acme", 1))
        .await
        .unwrap();
    assert_eq!(k1.id, "pal_k1");
    assert_eq!(k1.tenant_id, "acme");
    assert_eq!(k1.name, "key pal_k1");
    assert_eq!(k1.hash, KeyHash([1; 32]));
    assert_eq!(k1.scopes, vec!["tools:call", "tools:list"]);
    assert_eq!(k1.source, Source::Api);
    assert!(k1.created_at > 1_600_000_000_000);
    assert_eq!(k1.expires_at_ms, Some(4_102_444_800_000));
    assert_eq!(k1.revoked_at, None);
    assert_eq!(k1.last_used_at, None);

    // The hash never leaves through serde or Debug.
    let v = serde_json::to_value(&k1).unwrap();
    assert!(v.get("hash").is_none(), "hash serialized: {v}");
    assert_eq!(v["id"], "pal_k1");
    assert!(!format!("{k1:?}").contains("[1, 1"));

    tokio::time::sleep(Duration::from_millis(3)).await;
    let mut k2_new = new_key("pal_k2", "acme", 2);
    k2_new.expires_at_ms = None;
    k2_new.scopes = vec![];
    let k2 = store.insert_key(&k2_new).await.unwrap();
    assert!(k2.created_at > k1.created_at);
    assert_eq!(k2.expires_at_ms, None);
    assert!(k2.scopes.is_empty());
    let o1 = store
        .insert_key(&new_key("pal_o1", "other", 3))
        .await
        .unwrap();

    assert_not_found(
        store.insert_key(&new_key("pal_x", "nope", 4)).await,
        "tenant `nope` not found",
    );
    assert_conflict(
        store.insert_key(&new_key("pal_k1", "acme", 5)).await,
        "API key `pal_k1` already exists",
    );
    // The same hash under another id, even for another tenant, conflicts without naming
    // the holder.
    assert_conflict(
        store.insert_key(&new_key("pal_dup", "other", 1)).await,
        "an API key with the same hash as `pal_dup` already exists",
    );

    let listed = store.list_keys("acme").await.unwrap();
    assert_eq!(listed, vec![k1.clone(), k2.clone()]);
    assert_not_found(store.list_keys("nope").await, "tenant `nope` not found");

    // Revoking another tenant's key is NotFound and leaves it live.
    assert_not_found(
        store.revoke_key("acme", "pal_o1").await,
        "API key `pal_o1` not found",
    );
    assert_not_found(
        store.revoke_key("acme", "pal_missing").await,
        "API key `pal_missing` not found",
    );
    assert_eq!(store.list_keys("other").await.unwrap(), vec![o1.clone()]);

    let revoked = store.revoke_key("acme", "pal_k1").await.unwrap();
    let at = revoked.revoked_at.unwrap();
    assert!(at >= k1.created_at);
    assert_eq!(
        KeyRecord {
            revoked_at: None,
            ..revoked.clone()
        },
        k1
    );
    // Idempotent: the first revocation time stays.
    tokio::time::sleep(Duration::from_millis(3)).await;
    assert_eq!(
        store.revoke_key("acme", "pal_k1").await.unwrap().revoked_at,
        Some(at)
    );

    // list_keys shows the revoked key; the snapshot does not.
    let listed = store.list_keys("acme").await.unwrap();
    assert_eq!(listed, vec![revoked, k2.clone()]);
    let snap = store.snapshot().await.unwrap();
    assert_eq!(snap.keys, vec![k2, o1]);
}

async fn replicas_heartbeat(store: Store, _url: String) {
    let beat = |name: &str, at: i64, health: &str| ReplicaRecord {
        name: name.into(),
        version: "0.1.0".into(),
        started_at: 1_000,
        heartbeat_at: at,
        sessions: at / 1000,
        health: health.into(),
    };
    let rev = store.revision().await.unwrap();
    store.heartbeat(&beat("r2", 5_000, "ready")).await.unwrap();
    store.heartbeat(&beat("r1", 5_000, "ready")).await.unwrap();
    store
        .heartbeat(&beat("r1", 6_000, "leaving"))
        .await
        .unwrap();
    assert_eq!(
        store.replicas().await.unwrap(),
        vec![beat("r1", 6_000, "leaving"), beat("r2", 5_000, "ready")],
        "one row per replica, its last heartbeat, by name"
    );
    assert_eq!(
        store.revision().await.unwrap(),
        rev,
        "no reload for a heartbeat"
    );
    // A day later, a heartbeat forgets the replicas silent since.
    let day = 24 * 3600 * 1000;
    store
        .heartbeat(&beat("r3", 5_500 + day, "ready"))
        .await
        .unwrap();
    let names: Vec<String> = store
        .replicas()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["r1", "r3"]);
}

async fn record_last_used_keeps_max(store: Store, _url: String) {
    store.create_tenant(&api_tenant("acme")).await.unwrap();
    store
        .insert_key(&new_key("pal_a", "acme", 1))
        .await
        .unwrap();
    store
        .insert_key(&new_key("pal_b", "acme", 2))
        .await
        .unwrap();
    let last_used = |store: Store| async move {
        store
            .list_keys("acme")
            .await
            .unwrap()
            .into_iter()
            .map(|k| (k.id, k.last_used_at))
            .collect::<Vec<_>>()
    };

    store.record_last_used(&[]).await.unwrap();
    store
        .record_last_used(&[("pal_a".into(), 1_000)])
        .await
        .unwrap();
    assert_eq!(
        last_used(store.clone()).await,
        vec![("pal_a".into(), Some(1_000)), ("pal_b".into(), None)]
    );

    // An older time does not overwrite a newer one; in one batch the max wins; unknown
    // ids are ignored.
    store
        .record_last_used(&[
            ("pal_a".into(), 500),
            ("pal_b".into(), 3_000),
            ("pal_b".into(), 2_000),
            ("pal_gone".into(), 9_000),
        ])
        .await
        .unwrap();
    assert_eq!(
        last_used(store.clone()).await,
        vec![("pal_a".into(), Some(1_000)), ("pal_b".into(), Some(3_000))]
    );
    store
        .record_last_used(&[("pal_a".into(), 1_001)])
        .await
        .unwrap();
    assert_eq!(
        last_used(store.clone()).await,
        vec![("pal_a".into(), Some(1_001)), ("pal_b".into(), Some(3_000))]
    );
}

async fn policy_round_trip(store: Store, _url: String) {
    store.create_tenant(&api_tenant("acme")).await.unwrap();
    assert_eq!(store.get_policy("acme").await.unwrap(), None);
    assert_eq!(store.get_policy("nope").await.unwrap(), None);

    let policy = json!({
        "servers": {
            "github": {"allow_tools": ["issues.*", "repos.get"], "deny_tools": []},
            "postgres": {"allow_tools": ["query"], "required_scopes": {"query": ["db:read"]}}
        },
        "limits": {"max": 1.5, "big": 9007199254740993u64, "neg": -3},
        "flags": [true, false, null],
        "note": "héllo \"quoted\" ✓ 'single' -- ; DROP TABLE tenants"
    });
    store.put_policy("acme", &policy).await.unwrap();
    assert_eq!(
        store.get_policy("acme").await.unwrap(),
        Some(policy.clone())
    );

    let replaced = json!({"deny_tools": ["*"]});
    store.put_policy("acme", &replaced).await.unwrap();
    assert_eq!(
        store.get_policy("acme").await.unwrap(),
        Some(replaced.clone())
    );
    assert_eq!(
        store.snapshot().await.unwrap().policies,
        vec![(tenant_id("acme"), replaced)]
    );

    assert_not_found(
        store.put_policy("nope", &policy).await,
        "tenant `nope` not found",
    );
    assert_eq!(store.get_policy("nope").await.unwrap(), None);
}

async fn sealed_secret_values(store: Store, _url: String) {
    store.create_tenant(&api_tenant("acme")).await.unwrap();
    store.create_tenant(&api_tenant("other")).await.unwrap();
    assert_eq!(store.get_secret("acme", "token").await.unwrap(), None);
    store
        .put_secret("acme", "token", b"\x00sealed-1")
        .await
        .unwrap();
    store
        .put_secret("acme", "token", b"\x00sealed-2")
        .await
        .unwrap();
    assert_eq!(
        store.get_secret("acme", "token").await.unwrap().as_deref(),
        Some(&b"\x00sealed-2"[..])
    );
    assert_eq!(store.get_secret("other", "token").await.unwrap(), None);
    let names: Vec<String> = store
        .list_secret_meta("acme")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names, ["token"]);
    assert!(
        store
            .put_secret("ghost", "token", b"x")
            .await
            .unwrap_err()
            .is_not_found()
    );
    // Deleting the metadata, or the tenant, deletes the value.
    store.delete_secret_meta("acme", "token").await.unwrap();
    assert_eq!(store.get_secret("acme", "token").await.unwrap(), None);
    store.put_secret("other", "k", b"v").await.unwrap();
    store.delete_tenant("other").await.unwrap();
    assert_eq!(store.get_secret("other", "k").await.unwrap(), None);
}

async fn secret_meta(store: Store, _url: String) {
    store.create_tenant(&api_tenant("acme")).await.unwrap();
    store.create_tenant(&api_tenant("other")).await.unwrap();
    store
        .put_secret("acme", "SLACK_TOKEN", b"sealed")
        .await
        .unwrap();
    store
        .put_secret("acme", "GITHUB_TOKEN", b"sealed")
        .await
        .unwrap();
    store.put_secret("other", "OTHER", b"sealed").await.unwrap();

    let listed = store.list_secret_meta("acme").await.unwrap();
    assert_eq!(
        listed.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        vec!["GITHUB_TOKEN", "SLACK_TOKEN"]
    );
    assert!(listed.iter().all(|s| s.created_at == s.updated_at));

    // Putting again updates the time and keeps the creation.
    store
        .put_secret("acme", "GITHUB_TOKEN", b"sealed")
        .await
        .unwrap();
    let again = store.list_secret_meta("acme").await.unwrap();
    assert_eq!(again[0].name, "GITHUB_TOKEN");
    assert_eq!(again[0].created_at, listed[0].created_at);
    assert!(again[0].updated_at > listed[0].updated_at);
    assert_eq!(again[1], listed[1]);

    store
        .delete_secret_meta("acme", "GITHUB_TOKEN")
        .await
        .unwrap();
    assert_eq!(
        store
            .list_secret_meta("acme")
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect::<Vec<_>>(),
        vec!["SLACK_TOKEN"]
    );
    assert_not_found(
        store.delete_secret_meta("acme", "GITHUB_TOKEN").await,
        "secret `GITHUB_TOKEN` not found",
    );
    // Another tenant's secret is not reachable through this tenant.
    assert_not_found(
        store.delete_secret_meta("acme", "OTHER").await,
        "secret `OTHER` not found",
    );
    assert_eq!(store.list_secret_meta("other").await.unwrap().len(), 1);

    assert_not_found(
        store.put_secret("nope", "X", b"sealed").await,
        "tenant `nope` not found",
    );
    assert_not_found(
        store.list_secret_meta("nope").await,
        "tenant `nope` not found",
    );
    assert!(matches!(
        store.put_secret("acme", "", b"sealed").await,
        Err(StoreError::Invalid(_))
    ));
}

async fn reconcile_creates_and_updates(store: Store, _url: String) {
    let policy = json!({"allow_tools": ["*"]});
    let r = store
        .reconcile(&[
            declared("beta", &[], None),
            declared("alpha", &[("pal_a1", 1)], Some(policy.clone())),
        ])
        .await
        .unwrap();
    assert_eq!(r, report(&["alpha", "beta"], &[], &[]));

    let alpha = store.get_tenant("alpha").await.unwrap().unwrap();
    assert_eq!(alpha.source, Source::Config);
    assert_eq!(alpha.status, Status::Active);
    assert_eq!(alpha.servers, vec!["github", "postgres"]);
    assert_eq!(alpha.limits, json!({"rps": 5, "burst": {"size": 10}}));
    let keys = store.list_keys("alpha").await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].source, Source::Config);
    assert_eq!(keys[0].hash, KeyHash([1; 32]));
    assert_eq!(
        store.get_policy("alpha").await.unwrap(),
        Some(policy.clone())
    );
    assert_eq!(store.get_policy("beta").await.unwrap(), None);

    // An operator suspends alpha; the next reload changes its fields but keeps the status.
    store
        .set_status("alpha", Status::Suspended, Some("abuse"))
        .await
        .unwrap();
    let mut changed = declared("alpha", &[("pal_a1", 1)], None);
    changed.tenant.display_name = "Alpha Inc".into();
    changed.tenant.servers = vec!["slack".into()];
    changed.tenant.namespacing = false;
    changed.tenant.limits = json!({"rps": 50});
    let r = store
        .reconcile(&[changed.clone(), declared("beta", &[], None)])
        .await
        .unwrap();
    assert_eq!(r, report(&[], &["alpha"], &[]));
    let after = store.get_tenant("alpha").await.unwrap().unwrap();
    assert_eq!(after.status, Status::Suspended);
    assert_eq!(after.status_reason.as_deref(), Some("abuse"));
    assert_eq!(after.display_name, "Alpha Inc");
    assert_eq!(after.servers, vec!["slack"]);
    assert!(!after.namespacing);
    assert_eq!(after.limits, json!({"rps": 50}));
    assert_eq!(after.created_at, alpha.created_at);
    assert!(after.updated_at > alpha.updated_at);
    // Policy None left the stored one alone.
    assert_eq!(store.get_policy("alpha").await.unwrap(), Some(policy));

    // The same declaration again changes nothing, not even the revision.
    let rev = store.revision().await.unwrap();
    let r = store
        .reconcile(&[changed.clone(), declared("beta", &[], None)])
        .await
        .unwrap();
    assert!(r.is_empty(), "{r:?}");
    assert_eq!(store.revision().await.unwrap(), rev);
    assert_eq!(store.get_tenant("alpha").await.unwrap().unwrap(), after);

    // A declared policy replaces the stored one.
    let p2 = json!({"deny_tools": ["delete_*"]});
    changed.policy = Some(p2.clone());
    let r = store
        .reconcile(&[changed, declared("beta", &[], None)])
        .await
        .unwrap();
    assert_eq!(r, report(&[], &["alpha"], &[]));
    assert_eq!(store.get_policy("alpha").await.unwrap(), Some(p2));

    // An API tenant that gets declared becomes a config tenant.
    store.create_tenant(&api_tenant("gamma")).await.unwrap();
    let r = store
        .reconcile(&[
            declared("alpha", &[("pal_a1", 1)], None),
            declared("beta", &[], None),
            declared("gamma", &[], None),
        ])
        .await
        .unwrap();
    assert_eq!(r, report(&[], &["alpha", "gamma"], &[]));
    assert_eq!(
        store.get_tenant("gamma").await.unwrap().unwrap().source,
        Source::Config
    );
}

async fn reconcile_replaces_config_keys(store: Store, _url: String) {
    store
        .reconcile(&[declared("acme", &[("pal_c1", 1), ("pal_c2", 2)], None)])
        .await
        .unwrap();
    let before = store.list_keys("acme").await.unwrap();
    assert_eq!(before.len(), 2);
    store
        .record_last_used(&[("pal_c1".into(), 1_234)])
        .await
        .unwrap();
    // A key added through the API.
    store
        .insert_key(&new_key("pal_api", "acme", 7))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(3)).await;

    // c1 stays (same hash), c2 goes, c3 arrives.
    let r = store
        .reconcile(&[declared("acme", &[("pal_c1", 1), ("pal_c3", 3)], None)])
        .await
        .unwrap();
    assert_eq!(r, report(&[], &["acme"], &[]));
    let keys = store.list_keys("acme").await.unwrap();
    let ids: Vec<&str> = keys.iter().map(|k| k.id.as_str()).collect();
    assert_eq!(ids, vec!["pal_c1", "pal_api", "pal_c3"]);
    let c1 = &keys[0];
    assert_eq!(c1.created_at, before[0].created_at);
    assert_eq!(c1.last_used_at, Some(1_234));
    assert_eq!(keys[1].source, Source::Api);
    assert_eq!(keys[2].source, Source::Config);
    assert!(keys[2].created_at > c1.created_at);

    // The removed key no longer authenticates: it is gone from the snapshot, and its hash
    // is free.
    let snap = store.snapshot().await.unwrap();
    assert!(snap.keys.iter().all(|k| k.hash != KeyHash([2; 32])));
    assert_eq!(snap.keys.len(), 3);

    // A changed name/scopes on a kept key is applied in place.
    let mut d = declared("acme", &[("pal_c1", 1), ("pal_c3", 3)], None);
    d.keys[0].scopes = vec!["admin".into()];
    let r = store.reconcile(&[d]).await.unwrap();
    assert_eq!(r, report(&[], &["acme"], &[]));
    let c1_after = store.list_keys("acme").await.unwrap().remove(0);
    assert_eq!(c1_after.scopes, vec!["admin"]);
    assert_eq!(c1_after.created_at, c1.created_at);
    assert_eq!(c1_after.last_used_at, Some(1_234));

    // Declaring no keys removes every config key and keeps the API key.
    store
        .reconcile(&[declared("acme", &[], None)])
        .await
        .unwrap();
    assert_eq!(key_ids(&store, "acme").await, vec!["pal_api"]);

    // A key may move to another config tenant in one reload.
    store
        .reconcile(&[declared("acme", &[("pal_m", 8)], None)])
        .await
        .unwrap();
    let r = store
        .reconcile(&[
            declared("acme", &[], None),
            declared("zeta", &[("pal_m", 8)], None),
        ])
        .await
        .unwrap();
    assert_eq!(r, report(&["zeta"], &["acme"], &[]));
    assert_eq!(key_ids(&store, "zeta").await, vec!["pal_m"]);
    assert_eq!(key_ids(&store, "acme").await, vec!["pal_api"]);
}

async fn reconcile_deletes_only_config_tenants(store: Store, _url: String) {
    store
        .reconcile(&[
            declared("keep", &[("pal_k", 1)], None),
            declared("drop", &[("pal_d", 2)], Some(json!({"a": 1}))),
        ])
        .await
        .unwrap();
    store.put_secret("drop", "TOKEN", b"sealed").await.unwrap();
    let api = store.create_tenant(&api_tenant("api-made")).await.unwrap();
    let api_key = store
        .insert_key(&new_key("pal_api", "api-made", 3))
        .await
        .unwrap();
    store
        .put_policy("api-made", &json!({"b": 2}))
        .await
        .unwrap();

    let r = store
        .reconcile(&[declared("keep", &[("pal_k", 1)], None)])
        .await
        .unwrap();
    assert_eq!(r, report(&[], &[], &["drop"]));
    assert_eq!(store.get_tenant("drop").await.unwrap(), None);
    assert_eq!(store.get_policy("drop").await.unwrap(), None);
    let snap = store.snapshot().await.unwrap();
    assert!(snap.keys.iter().all(|k| k.tenant_id != "drop"));
    // Re-created, it starts empty (keys, policy and secrets' metadata went with it).
    store.create_tenant(&api_tenant("drop")).await.unwrap();
    assert!(store.list_secret_meta("drop").await.unwrap().is_empty());
    assert!(store.list_keys("drop").await.unwrap().is_empty());

    // The API tenant is untouched, down to its timestamps.
    assert_eq!(store.get_tenant("api-made").await.unwrap(), Some(api));
    assert_eq!(store.list_keys("api-made").await.unwrap(), vec![api_key]);
    assert_eq!(
        store.get_policy("api-made").await.unwrap(),
        Some(json!({"b": 2}))
    );

    // Declaring nothing removes every config tenant and still no API tenant.
    let r = store.reconcile(&[]).await.unwrap();
    assert_eq!(r, report(&[], &[], &["keep"]));
    let ids: Vec<TenantId> = store
        .list_tenants()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(ids, vec!["api-made", "drop"]);
}

async fn reconcile_is_one_transaction(store: Store, _url: String) {
    store
        .reconcile(&[declared("old", &[("pal_o", 1)], None)])
        .await
        .unwrap();
    store.create_tenant(&api_tenant("api-made")).await.unwrap();
    store
        .insert_key(&new_key("pal_api", "api-made", 5))
        .await
        .unwrap();
    let before = store.snapshot().await.unwrap();

    // The last declared key collides with an API key's hash: nothing of this reload applies
    // (not the new tenant, not the deletion of `old`, not the revision).
    let result = store
        .reconcile(&[
            declared("new", &[("pal_n", 2)], Some(json!({"x": 1}))),
            declared("clash", &[("pal_clash", 5)], None),
        ])
        .await;
    assert_conflict(
        result,
        "an API key with the same hash as `pal_clash` already exists",
    );
    assert_eq!(store.snapshot().await.unwrap(), before);

    // Malformed declarations are refused before anything is written.
    let dup = store
        .reconcile(&[declared("a", &[], None), declared("a", &[], None)])
        .await;
    assert!(matches!(dup, Err(StoreError::Invalid(_))), "{dup:?}");
    let same_hash = store
        .reconcile(&[declared("a", &[("pal_1", 9), ("pal_2", 9)], None)])
        .await;
    assert!(
        matches!(same_hash, Err(StoreError::Invalid(_))),
        "{same_hash:?}"
    );
    let mut wrong_tenant = declared("a", &[("pal_1", 9)], None);
    wrong_tenant.keys[0].tenant_id = tenant_id("b");
    let wrong = store.reconcile(&[wrong_tenant]).await;
    assert!(matches!(wrong, Err(StoreError::Invalid(_))), "{wrong:?}");
    assert_eq!(store.snapshot().await.unwrap(), before);
}

async fn snapshot_contents(store: Store, _url: String) {
    let empty = store.snapshot().await.unwrap();
    assert_eq!(empty.revision, 0);
    assert!(empty.tenants.is_empty() && empty.keys.is_empty() && empty.policies.is_empty());

    store.create_tenant(&api_tenant("zed")).await.unwrap();
    store.create_tenant(&api_tenant("abc")).await.unwrap();
    store
        .set_status("zed", Status::Suspended, Some("r"))
        .await
        .unwrap();
    store
        .insert_key(&new_key("pal_z1", "zed", 1))
        .await
        .unwrap();
    store
        .insert_key(&new_key("pal_a1", "abc", 2))
        .await
        .unwrap();
    store
        .insert_key(&new_key("pal_a2", "abc", 3))
        .await
        .unwrap();
    store.revoke_key("abc", "pal_a2").await.unwrap();
    store
        .put_policy("zed", &json!({"z": [1, 2]}))
        .await
        .unwrap();
    store.put_policy("abc", &json!({"a": {}})).await.unwrap();
    store
        .record_last_used(&[("pal_a1".into(), 42)])
        .await
        .unwrap();

    let snap = store.snapshot().await.unwrap();
    assert_eq!(snap.revision, store.revision().await.unwrap());
    assert_eq!(snap.tenants, store.list_tenants().await.unwrap());
    assert_eq!(
        snap.tenants
            .iter()
            .map(|t| (t.id.as_str(), t.status))
            .collect::<Vec<_>>(),
        vec![("abc", Status::Active), ("zed", Status::Suspended)]
    );
    // Non-revoked keys only, by tenant; with their hashes and last use.
    let keys: Vec<(&str, &str, KeyHash, Option<i64>)> = snap
        .keys
        .iter()
        .map(|k| (k.id.as_str(), k.tenant_id.as_str(), k.hash, k.last_used_at))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("pal_a1", "abc", KeyHash([2; 32]), Some(42)),
            ("pal_z1", "zed", KeyHash([1; 32]), None)
        ]
    );
    assert_eq!(
        snap.policies,
        vec![
            (tenant_id("abc"), json!({"a": {}})),
            (tenant_id("zed"), json!({"z": [1, 2]}))
        ]
    );
}

async fn concurrent_writes(store: Store, _url: String) {
    let start = store.revision().await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let id = format!("t{i:02}");
            store.create_tenant(&api_tenant(&id)).await.unwrap();
            store
                .insert_key(&new_key(&format!("pal_{i:02}"), &id, i as u8))
                .await
                .unwrap();
            store
                .record_last_used(&[(format!("pal_{i:02}"), i64::from(i))])
                .await
                .unwrap();
            store.snapshot().await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(store.revision().await.unwrap(), start + 32);
    let snap = store.snapshot().await.unwrap();
    assert_eq!(snap.tenants.len(), 16);
    assert_eq!(snap.keys.len(), 16);
    assert!(snap.keys.iter().all(|k| k.last_used_at.is_some()));
}

// ---- backend-specific and backend-free checks ----

#[tokio::test]
async fn sqlite_file_and_directory_are_created_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/deeper/registry.db");
    let store = Store::open(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    store.create_tenant(&api_tenant("acme")).await.unwrap();
    assert!(path.is_file());

    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let (mode,): (String,) = sqlx::query_as("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    // The foreign keys exist (and cascade) in the schema.
    let (fks,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM pragma_foreign_key_list('api_keys')")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(fks, 1);
    conn.close().await.unwrap();
    store.close().await;
}

#[tokio::test]
async fn unknown_scheme_names_the_accepted_forms() {
    let err = Store::open("mysql://app:hunter2@db/registry")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::UnsupportedUrl(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("sqlite://PATH") && msg.contains("postgres://"),
        "{msg}"
    );
    assert!(!msg.contains("hunter2"), "{msg}");

    let err = Store::open("registry.db").await.unwrap_err();
    assert!(matches!(err, StoreError::UnsupportedUrl(_)), "{err:?}");
}

#[tokio::test]
async fn unreachable_postgres_error_hides_the_password() {
    // Port 1 on loopback refuses connections.
    let err = Store::open("postgres://app:hunter2@127.0.0.1:1/registry?password=hunter2")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(!msg.contains("hunter2"), "{msg}");
    assert!(
        msg.contains("postgres://app:***@127.0.0.1:1/registry"),
        "{msg}"
    );
}

#[test]
fn with_database_replaces_the_path() {
    assert_eq!(
        with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
        "postgres://postgres@127.0.0.1:5432/x"
    );
    assert_eq!(
        with_database("postgres://u:p@h/db?sslmode=disable", "x"),
        "postgres://u:p@h/x?sslmode=disable"
    );
    assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
}
