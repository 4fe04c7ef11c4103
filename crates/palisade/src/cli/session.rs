//! `palisade session list|revoke`: legacy-era sessions, through the running gateway's admin
//! API (with a fleet key, the fleet's sessions from any replica; without, that replica's).

use clap::Subcommand;

use super::process::{AdminArgs, admin_request};

#[derive(Subcommand)]
pub enum SessionCommand {
    /// Open sessions (of one tenant with --tenant): handle, tenant, subject, version, replica.
    List {
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// End a session by its handle (as `list` shows it), on every replica.
    Revoke {
        tenant: String,
        handle: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

pub(super) async fn run(command: SessionCommand) -> anyhow::Result<()> {
    match command {
        SessionCommand::List { tenant, admin } => {
            let path = match &tenant {
                Some(t) => format!("/admin/v1/tenants/{t}/sessions"),
                None => "/admin/v1/sessions".to_owned(),
            };
            let body = admin_request(&admin, reqwest::Method::GET, &path, None).await?;
            let list = body["sessions"].as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("no open sessions");
            }
            for s in list {
                let field = |name: &str| s[name].as_str().unwrap_or("?").to_owned();
                println!(
                    "{} tenant={} subject={} version={} replica={}",
                    field("handle"),
                    field("tenant"),
                    field("subject"),
                    field("protocol_version"),
                    field("replica"),
                );
            }
            Ok(())
        }
        SessionCommand::Revoke {
            tenant,
            handle,
            admin,
        } => {
            let path = format!("/admin/v1/tenants/{tenant}/sessions/{handle}");
            admin_request(&admin, reqwest::Method::DELETE, &path, None).await?;
            println!("ended session {handle}");
            Ok(())
        }
    }
}
