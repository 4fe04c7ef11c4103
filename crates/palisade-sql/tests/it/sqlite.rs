//! palisade-sql on SQLite, called directly (no gateway): each tenant reads only its own file,
//! whatever SQL it sends, and an assertion is the only way to name a tenant in shared placement.

use crate::common;

use common::{Issuer, Server, error_text, rows, tenants_in};
use serde_json::json;

#[test]
fn dedicated_placement_serves_the_tenant_of_its_environment() {
    let dir = tempfile::tempdir().unwrap();
    common::sqlite_sample(dir.path());
    let sqlite_dir = dir.path().to_str().unwrap();
    for tenant in ["acme", "globex"] {
        let mut server = Server::spawn(
            &["serve", "--sqlite-dir", sqlite_dir],
            &[("TENANT_ID", tenant)],
        );
        let result = server.query("SELECT tenant_id, id, item FROM orders", None);
        assert_eq!(tenants_in(&result), [tenant]);
        assert_eq!(rows(&result).len(), 150);
        assert_eq!(
            result["structuredContent"]["columns"],
            json!(["tenant_id", "id", "item"])
        );
        // Structured content and its text agree.
        let text: serde_json::Value =
            serde_json::from_str(result["content"][0]["text"].as_str().unwrap()).unwrap();
        assert_eq!(text, result["structuredContent"]);
    }
}

#[test]
fn shared_placement_takes_the_tenant_from_the_assertion_alone() {
    let dir = tempfile::tempdir().unwrap();
    common::sqlite_sample(dir.path());
    let issuer = Issuer::new("k1");
    let mut server = common::shared_sqlite(dir.path(), &issuer, &[]);
    for tenant in ["acme", "globex"] {
        let token = issuer.for_tenant(tenant);
        let result = server.call(
            "query_database",
            json!({"sql": "SELECT tenant_id, name FROM customers", "tenant": "globex", "tenant_id": "globex"}),
            Some(&token),
        );
        assert_eq!(
            tenants_in(&result),
            [tenant],
            "arguments cannot name a tenant"
        );
    }
    // No assertion: refused before any database work.
    let message = error_text(&server.query("SELECT 1", None));
    assert!(message.contains("no tenant assertion"), "{message}");
    // The other tools, and parameters.
    let token = issuer.for_tenant("acme");
    let tables = server.call("list_tables", json!({}), Some(&token));
    assert_eq!(
        tables["structuredContent"]["tables"],
        json!(["customers", "orders"])
    );
    let described = server.call("describe_table", json!({"table": "orders"}), Some(&token));
    assert_eq!(
        described["structuredContent"]["columns"][0]["name"],
        "tenant_id"
    );
    let missing = server.call("describe_table", json!({"table": "nope"}), Some(&token));
    assert!(error_text(&missing).contains("no table named \"nope\""));
    let result = server.call(
        "query_database",
        json!({"sql": "SELECT tenant_id, id FROM orders WHERE id <= ?1 AND item = ?2", "params": [12, "magnet"]}),
        Some(&token),
    );
    assert_eq!(rows(&result), [json!(["acme", 4]), json!(["acme", 10])]);
    let bad = server.call(
        "query_database",
        json!({"sql": "SELECT ?1", "params": [{"a": 1}]}),
        Some(&token),
    );
    assert!(error_text(&bad).contains("parameters must be"));
}

#[test]
fn no_sql_reaches_another_tenants_rows_or_changes_anything() {
    let dir = tempfile::tempdir().unwrap();
    common::sqlite_sample(dir.path());
    let globex_db = dir.path().join("globex.db");
    let issuer = Issuer::new("k1");
    let mut server = common::shared_sqlite(dir.path(), &issuer, &["--statement-timeout-ms", "300"]);
    let token = issuer.for_tenant("acme");
    let attach = format!("ATTACH DATABASE '{}' AS g", globex_db.display());
    let attach_in_with = format!(
        "WITH x AS (SELECT 1) SELECT * FROM x; ATTACH DATABASE '{}' AS g",
        globex_db.display()
    );
    let cases: Vec<(&str, &str)> = vec![
        (&attach, "`ATTACH` is not allowed"),
        (
            "/* hidden */ ATTACH DATABASE 'globex.db' AS g",
            "`ATTACH` is not allowed",
        ),
        // rusqlite compiles the rest to see whether it is a statement: the authorizer stops it.
        (&attach_in_with, "not authorized"),
        (
            "SELECT * FROM orders; SELECT * FROM customers",
            "only one statement per call",
        ),
        ("PRAGMA table_info(orders)", "`PRAGMA` is not allowed"),
        ("SELECT * FROM pragma_database_list", "not authorized"),
        (
            "INSERT INTO orders VALUES ('globex', 999, 1, 'x', 1, 'now')",
            "`INSERT` is not allowed",
        ),
        ("-- comment\nDELETE FROM orders", "`DELETE` is not allowed"),
        ("WITH d AS (SELECT 1) DELETE FROM orders", "not authorized"),
        (
            "WITH d AS (SELECT 1) UPDATE orders SET tenant_id = 'globex'",
            "not authorized",
        ),
        ("SELECT load_extension('/tmp/evil')", "not authorized"),
        ("SELECT * FROM temp.sqlite_schema", "not authorized"),
        (
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
            "longer than 300 ms",
        ),
        ("SELECT * FROM globex.orders", "no such table"),
    ];
    for (sql, expected) in &cases {
        let result = server.query(sql, Some(&token));
        let message = error_text(&result);
        assert!(message.contains(expected), "{sql}: {message}");
        assert!(!message.contains(dir.path().to_str().unwrap()) || sql.contains("ATTACH"));
    }
    // A UNION over the table is still only the tenant's own file.
    let union = server.query(
        "SELECT tenant_id, id FROM orders WHERE tenant_id = 'acme' UNION ALL SELECT tenant_id, id FROM orders WHERE tenant_id = 'globex'",
        Some(&token),
    );
    assert_eq!(tenants_in(&union), ["acme"]);
    // Nothing was written: globex's rows are intact and acme's file unchanged.
    let mut globex = Server::spawn(
        &["serve", "--sqlite-dir", dir.path().to_str().unwrap()],
        &[("TENANT_ID", "globex")],
    );
    assert_eq!(
        rows(&globex.query("SELECT tenant_id FROM orders", None)).len(),
        150
    );
    assert_eq!(
        rows(&server.query(
            "SELECT count(*) FROM orders WHERE tenant_id = 'acme'",
            Some(&token)
        )),
        [json!([150])]
    );
}

#[test]
fn the_row_and_size_caps_hold() {
    let dir = tempfile::tempdir().unwrap();
    common::sqlite_sample(dir.path());
    let sqlite_dir = dir.path().to_str().unwrap();
    let mut server = Server::spawn(
        &["serve", "--sqlite-dir", sqlite_dir, "--max-rows", "7"],
        &[("TENANT_ID", "acme")],
    );
    let result = server.query("SELECT * FROM orders", None);
    assert_eq!(rows(&result).len(), 7);
    assert_eq!(result["structuredContent"]["truncated"], true);
    let small = server.query("SELECT * FROM orders LIMIT 3", None);
    assert_eq!(small["structuredContent"]["truncated"], false);

    let mut server = Server::spawn(
        &[
            "serve",
            "--sqlite-dir",
            sqlite_dir,
            "--max-result-bytes",
            "2000",
        ],
        &[("TENANT_ID", "acme")],
    );
    let big = server.query("SELECT * FROM orders", None);
    assert!(error_text(&big).contains("larger than 2000 bytes"));
    let blob = server.query("SELECT zeroblob(100000000)", None);
    assert!(error_text(&blob).contains("too big"), "{blob}");
    assert_eq!(
        rows(&server.query("SELECT id FROM orders LIMIT 5", None)).len(),
        5
    );
}

#[test]
fn a_dedicated_process_does_not_serve_http_beyond_loopback_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_palisade-sql"))
        .args(["serve", "--http", "0.0.0.0:0", "--sqlite-dir"])
        .arg(dir.path())
        .env("TENANT_ID", "acme")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no caller authentication"), "{stderr}");
}
