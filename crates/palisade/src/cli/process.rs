//! `palisade process list|restart|drain`: a tenant's own server instances, through the admin
//! API of the running gateway (processes live in the gateway, not in the store).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::config::Config;

/// How to reach the running gateway's admin API.
#[derive(Args)]
pub struct AdminArgs {
    /// The gateway's config (for the admin address).
    #[arg(long, short, env = "PALISADE_CONFIG")]
    pub config: PathBuf,
    /// An admin key (`[admin] keys`).
    #[arg(long, env = "PALISADE_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: String,
    /// Overrides the admin address from the config, e.g. `http://10.0.0.5:9090`.
    #[arg(long)]
    pub admin_url: Option<String>,
}

#[derive(Subcommand)]
pub enum ProcessCommand {
    /// List a tenant's instances: server, state, pid, uptime, calls, RSS.
    List {
        tenant: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Replace a tenant's processes now (all, or one server's).
    Restart {
        tenant: String,
        #[arg(long)]
        server: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Stop a tenant's processes once their calls finish; the next call starts new ones.
    Drain {
        tenant: String,
        #[arg(long)]
        server: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

pub(super) async fn run(command: ProcessCommand) -> anyhow::Result<()> {
    match command {
        ProcessCommand::List { tenant, admin } => {
            let body = call(&admin, reqwest::Method::GET, &tenant, "", None).await?;
            for p in body["processes"].as_array().into_iter().flatten() {
                let field = |k: &str| match &p[k] {
                    Value::Null => "-".to_owned(),
                    Value::String(s) => s.clone(),
                    v => v.to_string(),
                };
                println!(
                    "{}\t{}\tpid={}\tuptime_secs={}\tcalls={}\trss_kib={}",
                    field("server"),
                    field("state"),
                    field("pid"),
                    field("uptime_secs"),
                    field("calls"),
                    field("rss_kib")
                );
            }
            Ok(())
        }
        ProcessCommand::Restart {
            tenant,
            server,
            admin,
        } => {
            let body = json!({ "server": server });
            let r = call(
                &admin,
                reqwest::Method::POST,
                &tenant,
                "/restart",
                Some(body),
            )
            .await?;
            println!("restarting: {}", r["restarting"]);
            Ok(())
        }
        ProcessCommand::Drain {
            tenant,
            server,
            admin,
        } => {
            let body = json!({ "server": server });
            let r = call(&admin, reqwest::Method::POST, &tenant, "/drain", Some(body)).await?;
            println!("draining: {}", r["draining"]);
            Ok(())
        }
    }
}

async fn call(
    admin: &AdminArgs,
    method: reqwest::Method,
    tenant: &str,
    action: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let path = format!("/admin/v1/tenants/{tenant}/processes{action}");
    admin_request(admin, method, &path, body).await
}

/// One admin API request to the running gateway; its JSON answer, or an error naming the status.
pub(super) async fn admin_request(
    admin: &AdminArgs,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let base = match &admin.admin_url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => {
            let config = Config::load(&admin.config)?;
            let mut addr = config.listen.admin;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{addr}")
        }
    };
    let url = format!("{base}{path}");
    let mut req = reqwest::Client::new()
        .request(method, &url)
        .bearer_auth(&admin.admin_key);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = req.send().await.with_context(|| {
        format!("cannot reach the admin API at {base}: is the gateway running?")
    })?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if !status.is_success() {
        let msg = value["error"]["message"].as_str().unwrap_or("no details");
        anyhow::bail!("admin API answered {status}: {msg}");
    }
    Ok(value)
}
