//! `palisade breaker list|reset`: the running gateway's circuit breakers, through its admin
//! API (breakers live in each replica's memory, not in the store).

use clap::Subcommand;
use serde_json::json;

use super::process::{AdminArgs, admin_request};

#[derive(Subcommand)]
pub enum BreakerCommand {
    /// Breakers that are not closed: server, tenant (or the server's own), state.
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Close a server's breaker, or with --tenant that tenant's breaker on it.
    Reset {
        #[arg(long)]
        server: String,
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

pub(super) async fn run(command: BreakerCommand) -> anyhow::Result<()> {
    match command {
        BreakerCommand::List { admin } => {
            let body =
                admin_request(&admin, reqwest::Method::GET, "/admin/v1/breakers", None).await?;
            let list = body["breakers"].as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("every breaker is closed");
            }
            for b in list {
                println!(
                    "server={} tenant={} state={}",
                    b["server"].as_str().unwrap_or("?"),
                    b["tenant"].as_str().unwrap_or("(server)"),
                    b["state"].as_str().unwrap_or("?")
                );
            }
            Ok(())
        }
        BreakerCommand::Reset {
            server,
            tenant,
            admin,
        } => {
            let body = json!({ "server": server, "tenant": tenant });
            let answer = admin_request(
                &admin,
                reqwest::Method::POST,
                "/admin/v1/breakers/reset",
                Some(body),
            )
            .await?;
            if answer["reset"] == true {
                println!("closed");
            } else {
                println!("it was not open");
            }
            Ok(())
        }
    }
}
