//! `palisade demo`: the gateway with embedded defaults and nothing to configure.
//!
//! Two tenants, `acme` and `globex`, share `palisade-sql` in shared placement: one process for
//! both, on a SQLite file per tenant with sample orders, told the tenant by the gateway's signed
//! assertion. Beside it, a few plain tools of the test upstream (`palisade-testkit`, built with
//! the workspace); its fault-injection tools (crash, hog, …) are denied by the tenants' policy.
//! Keys and the pepper are fresh for every run and exist only in memory; the keys are printed
//! once, with a ready command per tenant.

use anyhow::Context;

use crate::apikey::{Pepper, generate_key};
use crate::config::Config;

/// What the demo's tenants may call: palisade-sql, and the test upstream's plain tools (not
/// the ones that crash it, hog it or write garbage, which are there for tests).
const DEMO_TOOLS: &str = r#"["sql/*", "kit/echo", "kit/add", "kit/progress"]"#;

pub(crate) async fn run(port: u16, admin_port: u16) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot locate the palisade binary")?;
    let testkit = exe.with_file_name("palisade-testkit");
    let sql = exe.with_file_name("palisade-sql");
    for upstream in [&testkit, &sql] {
        if !upstream.exists() {
            anyhow::bail!(
                "the demo upstream {} is missing: build the whole workspace first (`cargo build --workspace --bins`)",
                upstream.display()
            );
        }
    }
    // A fresh pepper, keys and registry for every run: nothing outlives the demo.
    let pepper = Pepper::random();
    let acme_key = generate_key();
    let globex_key = generate_key();
    let admin_key = generate_key();
    let data_dir = std::env::temp_dir().join(format!("palisade-demo-{}", std::process::id()));
    let sql_dir = data_dir.join("sql");
    let migrated = std::process::Command::new(&sql)
        .args(["migrate", "--tenants", "acme,globex", "--sqlite-dir"])
        .arg(&sql_dir)
        .stdout(std::process::Stdio::null())
        .status()
        .context("cannot run palisade-sql to write the demo databases")?;
    if !migrated.success() {
        anyhow::bail!(
            "palisade-sql could not write the demo databases in {}",
            sql_dir.display()
        );
    }
    let toml = format!(
        r#"
[listen]
mcp = "127.0.0.1:{port}"
admin = "127.0.0.1:{admin_port}"

[auth]
pepper_env = "PALISADE_DEMO_PEPPER_UNUSED"

[admin]
keys = ["{admin}"]

[[servers]]
name = "kit"
[servers.stdio]
command = "{testkit}"
args = ["stdio"]

[[servers]]
name = "sql"
placement = "shared"
[servers.stdio]
command = "{sql}"
args = ["serve", "--placement", "shared", "--audience", "sql", "--sqlite-dir", "{sql_dir}", "--jwks-url", "http://127.0.0.1:{port}/.well-known/jwks.json"]

[[tenants]]
id = "acme"
servers = ["kit", "sql"]
keys = ["{acme}"]
[tenants.policy]
allow_tools = {demo_tools}

[[tenants]]
id = "globex"
servers = ["kit", "sql"]
keys = ["{globex}"]
[tenants.policy]
allow_tools = {demo_tools}
"#,
        demo_tools = DEMO_TOOLS,
        testkit = testkit.display(),
        sql = sql.display(),
        sql_dir = sql_dir.display(),
        acme = pepper.stored_hash(&acme_key),
        globex = pepper.stored_hash(&globex_key),
        admin = pepper.stored_hash(&admin_key),
    );
    let config = Config::from_toml(&toml)?;
    let paths = crate::config::DataPaths {
        database_url: format!("sqlite://{}", data_dir.join("palisade.db").display()),
        data_dir: data_dir.clone(),
    };
    let builder = crate::serve::GatewayBuilder::new(config, paths).pepper(pepper);
    // The addresses bound (a port of 0 picks a free one), not the ones asked for.
    let served = super::serve_with(builder, None, |running| {
        let (url, admin) = (&running.mcp_url, &running.admin_url);
        println!();
        println!("Palisade demo: tenants acme and globex share the upstreams `sql` (palisade-sql on SQLite) and `kit` (palisade-testkit).");
        println!("Their policy allows sql__query_database, sql__list_tables, sql__describe_table, kit__echo, kit__add and kit__progress.");
        println!("The same query gives each tenant its own orders: the gateway tells palisade-sql the tenant in a signed assertion.\n");
        for (tenant, key) in [("acme", &acme_key), ("globex", &globex_key)] {
            println!("  {tenant}: API key {key}");
            println!("    python3 examples/mcp_client.py --url {url} --key {key} --call kit__echo '{{\"message\":\"hello from {tenant}\"}}'");
            println!("    python3 examples/mcp_client.py --url {url} --key {key} --call sql__query_database '{{\"sql\":\"SELECT tenant_id, item, amount_cents FROM orders LIMIT 3\"}}'");
        }
        println!("\n  admin API (tenants, keys, policies): admin key {admin_key}");
        println!("    curl -H 'Authorization: Bearer {admin_key}' {admin}/admin/v1/tenants");
        println!("\n  (the client needs `pip install mcp`; metrics at {admin}/metrics; ctrl-c stops)\n");
    })
    .await;
    let _ = std::fs::remove_dir_all(&data_dir);
    served
}
