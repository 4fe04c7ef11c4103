//! palisade-sql behind the real gateway: acme and globex send the same `query_database` call
//! and each gets only its own rows — with one shared process for both (stdio and HTTP; the
//! tenant comes from the gateway's signed assertion) and with a process per tenant (dedicated;
//! the tenant comes from `TENANT_ID`).

use crate::common;

use std::process::{Command, Stdio};

use common::{Gw, Reap, TenantSpec};
use serde_json::{Value, json};

fn palisade_sql() -> std::path::PathBuf {
    let p = common::bin_dir().join("palisade-sql");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Writes acme's and globex's sample databases into `dir`.
fn sample(dir: &std::path::Path) {
    let status = Command::new(palisade_sql())
        .args(["migrate", "--sqlite-dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .status()
        .expect("migrate");
    assert!(status.success());
}

/// `palisade-sql serve --http` in shared placement, and its URL.
fn sql_http(dir: &std::path::Path, jwks_url: &str) -> (Reap, String) {
    let mut cmd = Command::new(palisade_sql());
    cmd.args(["serve", "--http", "127.0.0.1:0", "--placement", "shared"])
        .args([
            "--audience",
            "sqlweb",
            "--jwks-url",
            jwks_url,
            "--sqlite-dir",
        ])
        .arg(dir);
    let (child, url) = common::listening(cmd);
    (Reap(child), url)
}

/// The tenant ids in a `query_database` result (its first column).
fn tenants_of(answer: &Value) -> Vec<String> {
    let result = &answer["result"];
    assert_eq!(result["isError"], false, "{answer}");
    let rows = result["structuredContent"]["rows"]
        .as_array()
        .expect("rows");
    assert_eq!(rows.len(), 150, "every order of one tenant");
    let mut tenants: Vec<String> = rows
        .iter()
        .map(|r| r[0].as_str().unwrap_or("").to_owned())
        .collect();
    tenants.dedup();
    tenants
}

#[tokio::test]
async fn each_tenant_sees_only_its_rows_shared_and_dedicated() {
    let data = tempfile::tempdir().unwrap();
    sample(data.path());
    let dir = data.path().display().to_string();
    let port = free_port();
    let jwks_url = format!("http://127.0.0.1:{port}/.well-known/jwks.json");
    let (_web, web_url) = sql_http(data.path(), &jwks_url);
    let bin = palisade_sql().display().to_string();
    let servers = format!(
        r#"
[[servers]]
name = "sql"
placement = "shared"
[servers.stdio]
command = "{bin}"
args = ["serve", "--placement", "shared", "--sqlite-dir", "{dir}", "--jwks-url", "{jwks_url}", "--audience", "sql"]

[[servers]]
name = "sqlweb"
placement = "shared"
[servers.http]
url = "{web_url}"

[[servers]]
name = "sqld"
placement = "dedicated"
[servers.stdio]
command = "{bin}"
args = ["serve", "--sqlite-dir", "{dir}"]
env = {{ TENANT_ID = "${{tenant.id}}" }}
"#
    );
    let all = ["sql", "sqlweb", "sqld"];
    let gw = Gw::start_at(
        &servers,
        &[
            TenantSpec {
                id: "acme",
                servers: &all,
                namespacing: true,
            },
            TenantSpec {
                id: "globex",
                servers: &all,
                namespacing: true,
            },
        ],
        "",
        "",
        &format!("127.0.0.1:{port}"),
    );
    gw.ready().await;
    let acme = gw.legacy("acme").await;
    let globex = gw.legacy("globex").await;
    let sql = json!({"sql": "SELECT tenant_id, id, amount_cents FROM orders ORDER BY id"});
    let mut id = 1;
    for server in all {
        let tool = format!("{server}__query_database");
        let a = acme.call(id, &tool, sql.clone()).await;
        let g = globex.call(id + 1, &tool, sql.clone()).await;
        id += 2;
        assert_eq!(tenants_of(a.response()), ["acme"], "{server}");
        assert_eq!(tenants_of(g.response()), ["globex"], "{server}");
        // Same query, different data: the amounts differ per tenant.
        assert_ne!(
            a.response()["result"]["structuredContent"]["rows"][0],
            g.response()["result"]["structuredContent"]["rows"][0]
        );
    }
    // A client's own assertion is stripped and replaced: it cannot name globex.
    let forged = acme
        .request(
            id,
            "tools/call",
            json!({"name": "sql__query_database", "arguments": sql, "_meta": {"io.palisade/tenant": "forged.token.here"}}),
        )
        .await;
    assert_eq!(tenants_of(forged.response()), ["acme"]);
}
