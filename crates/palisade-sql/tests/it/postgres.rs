//! palisade-sql on PostgreSQL with row-level security, against a real server (a scratch
//! database and scratch roles per test). Needs PALISADE_TEST_POSTGRES_URL (an administrator's
//! URL); without it each test says it is skipped, and fails under `CI=true`.

use crate::common;

use std::time::Duration;

use common::{Issuer, Server, error_text, rows, tenants_in};
use palisade_sql::TenantId;
use palisade_sql::backend::postgres::Postgres;
use palisade_sql::backend::{Limits, Query};
use serde_json::json;
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, Connection as _};

/// A scratch database migrated for palisade-sql, with its own login and reader roles.
struct Scratch {
    /// `postgres://user@host:port`, without a database.
    base: String,
    server: String,
    db: String,
    login: String,
    reader: String,
}

/// Runs `f` to its end on a runtime of its own (these tests are plain `#[test]`s: the server
/// under test is a child process, spoken to synchronously).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

fn admin_exec(url: &str, sql: &str) -> Result<(), String> {
    block_on(async {
        let mut conn = sqlx::PgConnection::connect(url)
            .await
            .map_err(|e| e.to_string())?;
        sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
            .execute(&mut conn)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
}

impl Scratch {
    fn new(name: &str) -> Option<Scratch> {
        let url = testenv::postgres()?;
        let rest = url.strip_prefix("postgres://").expect("a postgres:// URL");
        let (authority, _) = rest.split_once('/').unwrap_or((rest, ""));
        let (_, server) = authority.split_once('@').expect("user@host in the URL");
        let tag = format!("{name}_{}", std::process::id());
        let scratch = Scratch {
            base: format!("postgres://{authority}"),
            server: server.to_owned(),
            db: format!("psql_{tag}"),
            login: format!("psql_login_{tag}"),
            reader: format!("psql_reader_{tag}"),
        };
        admin_exec(
            &format!("{}/postgres", scratch.base),
            &format!("CREATE DATABASE {}", scratch.db),
        )
        .unwrap();
        // Twice: migrating again must be harmless.
        for _ in 0..2 {
            scratch.migrate();
        }
        Some(scratch)
    }

    fn admin_url(&self) -> String {
        format!("{}/{}", self.base, self.db)
    }

    fn login_url(&self) -> String {
        format!("postgres://{}@{}/{}", self.login, self.server, self.db)
    }

    fn migrate(&self) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_palisade-sql"))
            .args(["migrate", "--database-url", &self.admin_url()])
            .args(["--login-role", &self.login, "--reader-role", &self.reader])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "migrate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn serve(&self, placement: &[&str], env: &[(&str, &str)], extra: &[&str]) -> Server {
        let url = self.login_url();
        let mut args = vec![
            "serve",
            "--database-url",
            &url,
            "--reader-role",
            &self.reader,
        ];
        args.extend_from_slice(placement);
        args.extend_from_slice(extra);
        Server::spawn(&args, env)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let admin = format!("{}/postgres", self.base);
        let _ = admin_exec(
            &admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db),
        );
        let _ = admin_exec(
            &admin,
            &format!(
                "DROP ROLE IF EXISTS {}; DROP ROLE IF EXISTS {}",
                self.login, self.reader
            ),
        );
    }
}

#[test]
fn each_tenant_sees_only_its_rows_in_both_placements() {
    let Some(pg) = Scratch::new("both") else {
        return;
    };
    for tenant in ["acme", "globex"] {
        let mut server = pg.serve(&[], &[("TENANT_ID", tenant)], &[]);
        let result = server.query(
            "SELECT tenant_id, id, amount_cents FROM orders ORDER BY id",
            None,
        );
        assert_eq!(tenants_in(&result), [tenant]);
        assert_eq!(rows(&result).len(), 150);
        assert_eq!(
            result["structuredContent"]["columns"],
            json!(["tenant_id", "id", "amount_cents"])
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let issuer = Issuer::new("k1");
    let jwks = common::jwks_file(dir.path(), &issuer);
    let mut shared = pg.serve(
        &[
            "--placement",
            "shared",
            "--jwks-file",
            jwks.to_str().unwrap(),
        ],
        &[],
        &[],
    );
    for tenant in ["acme", "globex"] {
        let token = issuer.for_tenant(tenant);
        let result = shared.query("SELECT tenant_id, name FROM customers", Some(&token));
        assert_eq!(tenants_in(&result), [tenant]);
        let tables = shared.call("list_tables", json!({}), Some(&token));
        assert_eq!(
            tables["structuredContent"]["tables"],
            json!(["customers", "orders"])
        );
        let columns = shared.call("describe_table", json!({"table": "orders"}), Some(&token));
        assert_eq!(
            columns["structuredContent"]["columns"][0],
            json!({"name": "tenant_id", "type": "text", "nullable": false})
        );
    }
    let token = issuer.for_tenant("acme");
    let params = shared.call(
        "query_database",
        json!({"sql": "SELECT tenant_id, id FROM orders WHERE id <= $1 AND item = $2 ORDER BY id", "params": [12, "magnet"]}),
        Some(&token),
    );
    assert_eq!(rows(&params), [json!(["acme", 4]), json!(["acme", 10])]);
    // Columns named like the server's own wrapper alias are just columns.
    let named = shared.query(
        "SELECT 1 AS palisade_row, 2 AS q, tenant_id FROM orders LIMIT 1",
        Some(&token),
    );
    assert_eq!(rows(&named), [json!([1, 2, "acme"])]);
    let empty = shared.query("SELECT id, item FROM orders WHERE false", Some(&token));
    assert_eq!(
        empty["structuredContent"]["columns"],
        json!(["id", "item"]),
        "columns of an empty result"
    );
    assert!(error_text(&shared.query("SELECT 1", None)).contains("no tenant assertion"));
}

#[test]
fn no_sql_reaches_another_tenants_rows() {
    let Some(pg) = Scratch::new("attacks") else {
        return;
    };
    let mut server = pg.serve(
        &[],
        &[("TENANT_ID", "acme")],
        &["--statement-timeout-ms", "500"],
    );
    let cases = [
        ("SET app.tenant_id = 'globex'", "`SET` is not allowed"),
        ("/* sneaky */ SET ROLE postgres", "`SET` is not allowed"),
        ("-- x\nRESET ROLE", "`RESET` is not allowed"),
        ("SELECT 1; SET app.tenant_id = 'globex'", "syntax error"),
        ("SELECT * FROM orders; SELECT * FROM orders", "syntax error"),
        (
            "SELECT set_config('app.tenant_id', 'globex', false)",
            "permission denied for function set_config",
        ),
        (
            "SELECT * FROM orders WHERE set_config('app.tenant_id', 'globex', true) IS NOT NULL",
            "permission denied for function set_config",
        ),
        (
            "SELECT set_config('role', 'postgres', true)",
            "permission denied for function set_config",
        ),
        ("SELECT 1 FROM pg_catalog.pg_authid", "permission denied"),
        ("COPY orders TO STDOUT", "`COPY` is not allowed"),
        // Closing the server's wrapper early still leaves one prepared statement only.
        (
            "SELECT 1) q; COPY orders TO STDOUT; SELECT (1",
            "cannot insert multiple commands",
        ),
        (
            "INSERT INTO orders VALUES ('globex', 999, 1, 'x', 1, 'now')",
            "`INSERT` is not allowed",
        ),
        (
            "WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d",
            "WITH clause containing a data-modifying statement",
        ),
        ("SELECT pg_sleep(5)", "longer than 500 ms"),
        ("SELECT repeat('x', 8000000)", "larger than 4194304 bytes"),
        (
            "SELECT pg_terminate_backend(pg_backend_pid())",
            "permission denied",
        ),
        ("SELECT lo_import('/etc/passwd')", "permission denied"),
        ("SELECT pg_read_file('/etc/passwd')", "permission denied"),
        ("SELECT nextval('orders_id_seq')", "does not exist"),
    ];
    for (sql, expected) in cases {
        let started = std::time::Instant::now();
        let message = error_text(&server.query(sql, None));
        assert!(message.contains(expected), "{sql}: {message}");
        assert!(
            !message.contains("postgres://"),
            "no connection string: {message}"
        );
        if sql.contains("pg_sleep") {
            assert!(started.elapsed() < std::time::Duration::from_secs(3));
        }
    }
    // Queries that run, yet see acme's rows alone (the join: none, as globex's customers are
    // invisible).
    for sql in [
        "SELECT tenant_id, id FROM orders UNION ALL SELECT tenant_id, id FROM orders WHERE tenant_id = 'globex'",
        "SELECT tenant_id, id FROM public.orders WHERE tenant_id <> 'acme' OR true -- comment",
        "SELECT o.tenant_id FROM orders o JOIN customers c ON c.tenant_id = 'globex'",
        "SELECT current_setting('app.tenant_id') AS tenant_id",
    ] {
        let seen = tenants_in(&server.query(sql, None));
        assert!(seen.iter().all(|t| t == "acme"), "{sql}: {seen:?}");
    }
    // Nothing a call did outlives it: the next call is still acme, still read-only.
    let after = server.query(
        "SELECT current_setting('app.tenant_id'), current_user::text",
        None,
    );
    assert_eq!(rows(&after)[0], json!(["acme", pg.reader]));
}

#[test]
fn a_cancelled_call_leaves_no_transaction_to_the_next() {
    let Some(pg) = Scratch::new("cancel") else {
        return;
    };
    block_on(async {
        let options: PgConnectOptions = pg.login_url().parse().unwrap();
        let backend = Postgres::connect(options, pg.reader.clone()).await.unwrap();
        // The connection `connect` used goes back to the pool in a task of its own: once it is
        // idle there, every call below takes that one connection in turn.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let limits = Limits {
            max_rows: 100,
            max_bytes: 1 << 20,
            timeout: Duration::from_secs(10),
        };
        // Dropped mid-statement: after its BEGIN, tenant setting and SET LOCAL ROLE, before
        // its ROLLBACK.
        let acme = TenantId::parse("acme").unwrap();
        let call = backend.query(Query {
            tenant: &acme,
            sql: "SELECT pg_sleep(1)",
            params: Vec::new(),
            limits,
        });
        let cancelled = tokio::time::timeout(Duration::from_millis(300), call).await;
        assert!(cancelled.is_err(), "the call should have been cut short");
        // Once the statement has ended, a connection handed back to the pool would sit idle
        // in its transaction there, to be taken by the next call.
        let mut admin = sqlx::PgConnection::connect(&pg.admin_url()).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let sleeping: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE usename = $1 AND state = 'active' AND query LIKE '%pg_sleep%'",
            )
            .bind(&pg.login)
            .fetch_one(&mut admin)
            .await
            .unwrap();
            if sleeping == 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "pg_sleep never ended"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left_open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE usename = $1 AND state LIKE 'idle in transaction%'",
        )
        .bind(&pg.login)
        .fetch_one(&mut admin)
        .await
        .unwrap();
        assert_eq!(
            left_open, 0,
            "a connection of the cancelled call is still inside its transaction"
        );
        // The next call, another tenant's, runs in a transaction of its own, begun just now
        // (inside the cancelled call's, `now()` would be seconds old).
        let after = backend
            .query(Query {
                tenant: &TenantId::parse("globex").unwrap(),
                sql: "SELECT current_setting('app.tenant_id') AS tenant, current_user::text AS role, \
                 clock_timestamp() - now() < interval '1 second' AS fresh",
                params: Vec::new(),
                limits,
            })
            .await
            .unwrap_or_else(|e| panic!("the call after a cancelled one failed: {e}"));
        assert_eq!(
            after.rows,
            [vec![json!("globex"), json!(pg.reader), json!(true)]]
        );
    });
}

#[test]
fn the_database_itself_refuses_without_the_servers_setup() {
    let Some(pg) = Scratch::new("roles") else {
        return;
    };
    block_on(async {
        let mut conn = sqlx::PgConnection::connect(&pg.login_url()).await.unwrap();
        // The login role itself reads nothing.
        let e = sqlx::query("SELECT * FROM orders")
            .fetch_all(&mut conn)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("permission denied"), "{e}");
        // As the reader without a tenant: no rows at all (the policy compares with NULL).
        sqlx::raw_sql(AssertSqlSafe(format!("SET ROLE {}", pg.reader)))
            .execute(&mut conn)
            .await
            .unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(n, 0);
        // Even the table owner is held by the forced policy.
        let (forced, enabled): (bool, bool) = sqlx::query_as(
            "SELECT relforcerowsecurity, relrowsecurity FROM pg_class WHERE relname = 'orders'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert!(forced && enabled);
        let (superuser, bypass): (bool, bool) = sqlx::query_as(
            "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = session_user",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert!(!superuser && !bypass);
    });
}

#[test]
fn a_role_that_bypasses_rls_is_refused_at_start() {
    let Some(pg) = Scratch::new("super") else {
        return;
    };
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_palisade-sql"))
        .args(["serve", "--database-url", &pg.admin_url()])
        .env("TENANT_ID", "acme")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bypasses row-level security"), "{stderr}");
    assert!(
        !stderr.contains("postgres://"),
        "no connection string: {stderr}"
    );
}
