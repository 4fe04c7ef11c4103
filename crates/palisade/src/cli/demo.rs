//! `palisade demo`: the gateway with embedded defaults and nothing to configure.
//!
//! Two tenants, `acme` and `globex`, share the test upstream (`palisade-testkit`, built with the
//! workspace) over stdio. Keys and the pepper are fresh for every run and exist only in memory;
//! the keys are printed once, with a ready command per tenant.

use anyhow::Context;

use crate::auth::apikey::{Pepper, generate_key};
use crate::config::Config;

pub async fn run(port: u16, admin_port: u16) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot locate the palisade binary")?;
    let testkit = exe.with_file_name("palisade-testkit");
    if !testkit.exists() {
        anyhow::bail!(
            "the demo upstream {} is missing: build the whole workspace first (`cargo build --release`)",
            testkit.display()
        );
    }
    // A fresh pepper, keys and registry for every run: nothing outlives the demo.
    let pepper = Pepper::random();
    let acme_key = generate_key();
    let globex_key = generate_key();
    let admin_key = generate_key();
    let data_dir = std::env::temp_dir().join(format!("palisade-demo-{}", std::process::id()));
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

[[tenants]]
id = "acme"
servers = ["kit"]
keys = ["{acme}"]

[[tenants]]
id = "globex"
servers = ["kit"]
keys = ["{globex}"]
"#,
        testkit = testkit.display(),
        acme = pepper.stored_hash(&acme_key),
        globex = pepper.stored_hash(&globex_key),
        admin = pepper.stored_hash(&admin_key),
    );
    let config = Config::from_toml(&toml)?;
    let url = format!("http://127.0.0.1:{port}/mcp");
    let paths = crate::config::DataPaths {
        database_url: format!("sqlite://{}", data_dir.join("palisade.db").display()),
        data_dir: data_dir.clone(),
    };
    let served = super::serve_with_pepper(config, pepper, &paths, None, |_| {
        println!();
        println!("Palisade demo: tenants acme and globex share the upstream `kit` (palisade-testkit over stdio).");
        println!("Tool names are namespaced: kit__echo, kit__add, kit__progress, …\n");
        for (tenant, key) in [("acme", &acme_key), ("globex", &globex_key)] {
            println!("  {tenant}: API key {key}");
            println!("    python3 examples/mcp_client.py --url {url} --key {key} --call kit__echo '{{\"message\":\"hello from {tenant}\"}}'");
        }
        println!("\n  admin API (tenants, keys, policies): admin key {admin_key}");
        println!("    curl -H 'Authorization: Bearer {admin_key}' http://127.0.0.1:{admin_port}/admin/v1/tenants");
        println!("\n  (the client needs `pip install mcp`; metrics at http://127.0.0.1:{admin_port}/metrics; ctrl-c stops)\n");
    })
    .await;
    let _ = std::fs::remove_dir_all(&data_dir);
    served
}
