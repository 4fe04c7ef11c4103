//! `palisade tenant|key|policy`: onboarding from the command line. The same operations as the
//! admin API ([`crate::onboarding`]), run directly against the registry store the config
//! names; a running gateway sees the change within a second.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use palisade_store::Store;

use crate::apikey::{Pepper, generate_key};
use crate::config::{Config, DataPaths};
use crate::onboarding::{CreateTenant, IssueKey, Onboarding};
use crate::policy::Policy;
use crate::secrets::{MasterKey, SecretError, Vault};

/// Which config (for the store, the pepper and the server names) and which store.
#[derive(Args)]
pub struct StoreArgs {
    #[arg(long, short, env = "PALISADE_CONFIG")]
    pub config: PathBuf,
    /// Overrides `storage.database_url`: `sqlite://PATH` or `postgres://…`.
    #[arg(long, env = "PALISADE_DATABASE_URL")]
    pub(crate) database_url: Option<String>,
}

impl StoreArgs {
    /// The config's data paths, with `--database-url` taking precedence.
    pub fn paths(&self, config: &Config) -> DataPaths {
        let mut paths = config.data_paths(self.config.parent().unwrap_or(Path::new(".")));
        if let Some(url) = &self.database_url {
            paths.database_url = url.clone();
        }
        paths
    }

    async fn open(&self) -> anyhow::Result<Opened> {
        let config = Config::load(&self.config)?;
        let pepper = crate::serve::pepper_or_random(&config)?;
        let store = crate::serve::open_store(&self.paths(&config).database_url).await?;
        Ok(Opened {
            config,
            pepper,
            store,
        })
    }
}

struct Opened {
    config: Config,
    pepper: Pepper,
    store: Store,
}

impl Opened {
    fn ops(&self) -> Onboarding<'_> {
        Onboarding {
            store: &self.store,
            config: &self.config,
            pepper: &self.pepper,
        }
    }
}

#[derive(Subcommand)]
pub enum TenantCommand {
    /// Create a tenant.
    Create {
        id: String,
        /// Servers (names from the config's [[servers]]), comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        servers: Vec<String>,
        #[arg(long)]
        display_name: Option<String>,
        /// Keep tool names unprefixed (only with exactly one server).
        #[arg(long)]
        no_namespacing: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List tenants.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Show one tenant as JSON.
    Show {
        id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Suspend a tenant: its requests are refused and its sessions end within a second.
    Suspend {
        id: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Make a suspended tenant active again.
    Resume {
        id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Delete a tenant with its keys and policy (its audit history stays).
    Delete {
        id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Issue a key for a tenant: printed once, stored only as its hash.
    Issue {
        tenant: String,
        #[arg(long, default_value = "")]
        name: String,
        /// A scope the key carries (repeat for more).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Seconds until the key expires (default: never).
        #[arg(long)]
        expires_in_secs: Option<u64>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List a tenant's keys (ids and metadata, never the keys).
    List {
        tenant: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke a key by its id (`pal_…`, as `key list` shows it).
    Revoke {
        tenant: String,
        key_id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Make a key for the config file: prints it once, and the line for a tenant's `keys`
    /// or `[admin] keys`.
    New {
        /// The config whose pepper hashes the key.
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum SecretCommand {
    /// Set a tenant's secret for its dedicated servers' `${secret:NAME}`: the value is read
    /// from standard input (never from the command line), sealed under the master key, stored.
    Set {
        tenant: String,
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List a tenant's secrets (names and times; values are never shown).
    List {
        tenant: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Delete a tenant's secret.
    Delete {
        tenant: String,
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Show a tenant's policy as JSON.
    Show {
        tenant: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Replace a tenant's policy with a JSON document (`-` reads standard input).
    Set {
        tenant: String,
        #[arg(long)]
        file: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub(super) async fn tenant(command: TenantCommand) -> anyhow::Result<()> {
    match command {
        TenantCommand::Create {
            id,
            servers,
            display_name,
            no_namespacing,
            store,
        } => {
            let opened = store.open().await?;
            let ops = opened.ops();
            let t = ops
                .create_tenant(CreateTenant {
                    id,
                    display_name,
                    servers,
                    namespacing: !no_namespacing,
                })
                .await?;
            print_json(&t)
        }
        TenantCommand::List { store } => {
            let opened = store.open().await?;
            for t in opened.store.list_tenants().await? {
                let status = serde_json::to_value(t.status)?;
                println!(
                    "{}\t{}\t{}\tservers={}",
                    t.id,
                    status.as_str().unwrap_or("?"),
                    t.display_name,
                    t.servers.join(",")
                );
            }
            Ok(())
        }
        TenantCommand::Show { id, store } => {
            let opened = store.open().await?;
            let ops = opened.ops();
            print_json(&ops.tenant(&id).await?)
        }
        TenantCommand::Suspend { id, reason, store } => {
            let opened = store.open().await?;
            let ops = opened.ops();
            print_json(&ops.suspend(&id, reason.as_deref()).await?)
        }
        TenantCommand::Resume { id, store } => {
            let opened = store.open().await?;
            let ops = opened.ops();
            print_json(&ops.resume(&id).await?)
        }
        TenantCommand::Delete { id, store } => {
            let opened = store.open().await?;
            let ops = opened.ops();
            ops.delete_tenant(&id).await?;
            println!("deleted tenant {id}");
            Ok(())
        }
    }
}

pub(super) async fn key(command: KeyCommand) -> anyhow::Result<()> {
    match command {
        KeyCommand::Issue {
            tenant,
            name,
            scopes,
            expires_in_secs,
            store,
        } => {
            let opened = store.open().await?;
            opened
                .config
                .pepper()
                .context("issuing a key needs the gateway's pepper")?;
            let ops = opened.ops();
            let issued = ops
                .issue_key(
                    &tenant,
                    IssueKey {
                        name,
                        scopes,
                        expires_in_secs,
                    },
                )
                .await?;
            println!(
                "API key (shown once, give it to the client): {}",
                issued.key
            );
            println!("key id: {}", issued.record.id);
            Ok(())
        }
        KeyCommand::List { tenant, store } => {
            let opened = store.open().await?;
            for k in opened.store.list_keys(&tenant).await? {
                let state = if k.revoked_at.is_some() {
                    "revoked"
                } else {
                    "live"
                };
                let time = |t: Option<i64>| t.map_or("never".into(), |t| t.to_string());
                println!(
                    "{}\t{state}\t{}\tscopes={}\texpires_at={}\tlast_used_at={}",
                    k.id,
                    k.name,
                    k.scopes.join(","),
                    time(k.expires_at_ms),
                    time(k.last_used_at)
                );
            }
            Ok(())
        }
        KeyCommand::Revoke {
            tenant,
            key_id,
            store,
        } => {
            let opened = store.open().await?;
            opened.store.revoke_key(&tenant, &key_id).await?;
            println!("revoked {key_id}; running gateways refuse it within a second");
            Ok(())
        }
        KeyCommand::New { config } => {
            let c = Config::load(&config)?;
            let pepper = c.pepper().context("auth")?;
            let key = generate_key();
            println!("API key (shown once, give it to the client): {key}");
            println!(
                "add to the tenant's keys (or [admin] keys):  \"{}\"",
                pepper.stored_hash(&key)
            );
            Ok(())
        }
    }
}

pub(super) async fn secret(command: SecretCommand) -> anyhow::Result<()> {
    match command {
        SecretCommand::Set {
            tenant,
            name,
            store,
        } => {
            if !crate::config::template::valid_secret_name(&name) {
                anyhow::bail!("secret names are 1-64 of [A-Za-z0-9_-]");
            }
            let mut value = String::new();
            std::io::stdin().read_to_string(&mut value)?;
            let value = value.strip_suffix('\n').unwrap_or(&value);
            let opened = store.open().await?;
            let key = MasterKey::from_config(&opened.config)?.ok_or(SecretError::NoMasterKey)?;
            let vault = Vault {
                store: opened.store.clone(),
                key: Some(std::sync::Arc::new(key)),
            };
            vault.put(&tenant, &name, value).await?;
            println!("secret {name} of {tenant} is set; processes started from now on use it");
            Ok(())
        }
        SecretCommand::List { tenant, store } => {
            let opened = store.open().await?;
            for m in opened.store.list_secret_meta(&tenant).await? {
                println!("{}\tupdated_at={}", m.name, m.updated_at);
            }
            Ok(())
        }
        SecretCommand::Delete {
            tenant,
            name,
            store,
        } => {
            let opened = store.open().await?;
            opened.store.delete_secret_meta(&tenant, &name).await?;
            println!("deleted secret {name} of {tenant}");
            Ok(())
        }
    }
}

pub(super) async fn policy(command: PolicyCommand) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Show { tenant, store } => {
            let opened = store.open().await?;
            let ops = opened.ops();
            print_json(&ops.policy(&tenant).await?)
        }
        PolicyCommand::Set {
            tenant,
            file,
            store,
        } => {
            let text = if file.as_os_str() == "-" {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s)?;
                s
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?
            };
            let policy: Policy = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a valid policy document", file.display()))?;
            let opened = store.open().await?;
            let ops = opened.ops();
            ops.set_policy(&tenant, &policy).await?;
            print_json(&policy)
        }
    }
}
