//! The `palisade` command line: `serve`, `check`, `demo`, and onboarding (`tenant`, `key`,
//! `policy`), which writes to the registry store the config names — a running gateway picks
//! the change up within a second.

mod audit;
mod breaker;
pub(crate) mod demo;
mod onboard;
mod process;
mod reload;
mod session;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use palisade_sandbox::Layer;

use crate::config::{Config, Placement};
use crate::gateway::Gateway;
use crate::serve::{GatewayBuilder, Running};
pub(crate) use onboard::{KeyCommand, PolicyCommand, SecretCommand, StoreArgs, TenantCommand};

#[derive(Parser)]
#[command(
    name = "palisade",
    version,
    about = "Multi-tenant gateway for the Model Context Protocol"
)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Threads that run requests (default: one per CPU). 0 runs everything on one thread, which
    /// costs the least CPU per call on small hosts (see bench/README.md).
    #[arg(long, global = true, env = "PALISADE_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the gateway. SIGHUP or a change to the config file reloads it.
    Serve {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Validate a config file and exit.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Start the gateway with built-in defaults: two tenants and a test upstream.
    Demo {
        /// MCP port.
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Admin port.
        #[arg(long, default_value_t = 9090)]
        admin_port: u16,
    },
    /// Tenants in the registry store.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// API keys: issued into the registry store, or made for the config file.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// A tenant's tool policy.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// A tenant's secrets in the store (sealed under the `[secrets]` master key).
    Secret {
        #[command(subcommand)]
        command: SecretCommand,
    },
    /// A tenant's own server instances (dedicated placement), in the running gateway.
    Process {
        #[command(subcommand)]
        command: process::ProcessCommand,
    },
    /// Keys that sign the tenant context of calls to shared servers.
    Assertions {
        #[command(subcommand)]
        command: AssertionsCommand,
    },
    /// Circuit breakers of the running gateway: list, reset.
    Breaker {
        #[command(subcommand)]
        command: breaker::BreakerCommand,
    },
    /// Legacy-era sessions of the running gateway (the fleet's, with a fleet key): list, revoke.
    Session {
        #[command(subcommand)]
        command: session::SessionCommand,
    },
    /// The audit trail.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// What this host supports for sandboxing dedicated servers, and what each sandboxed
    /// server of a config would get here.
    Doctor {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum AssertionsCommand {
    /// Add a signing key: it signs from the next few seconds on; the older ones stay published
    /// so assertions in flight keep verifying (remove a key file once a minute has passed).
    Rotate {
        #[command(flatten)]
        store: onboard::StoreArgs,
    },
}

/// `palisade sandbox-exec PLAN_JSON`: the re-exec helper that sandboxes a dedicated server's
/// process, then execs it. Never returns.
pub fn sandbox_exec(plan: Option<std::ffi::OsString>) -> ! {
    let plan = plan
        .as_ref()
        .and_then(|p| p.to_str())
        .ok_or("missing or not UTF-8; usage: palisade sandbox-exec PLAN_JSON")
        .and_then(|p| serde_json::from_str(p).map_err(|_| "not a valid plan"));
    match plan {
        Ok(plan) => palisade_sandbox::exec(plan),
        Err(e) => {
            eprintln!("palisade sandbox: plan: {e}");
            std::process::exit(palisade_sandbox::EXIT_SANDBOX_FAILED)
        }
    }
}

pub fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PALISADE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { store } => {
            let config = load(&store.config)?;
            let paths = store.paths(&config);
            let path = store.config.clone();
            serve_with(GatewayBuilder::new(config, paths), Some(path), |_| {}).await
        }
        Command::Check { config } => {
            let c = Config::parse(&config)?;
            c.check_with_host()?;
            if c.tenants.iter().any(|t| !t.keys.is_empty()) || !c.admin.keys.is_empty() {
                c.pepper().context("auth")?;
            }
            println!(
                "{}: OK ({} servers, {} tenants)",
                config.display(),
                c.servers.len(),
                c.tenants.len()
            );
            Ok(())
        }
        Command::Demo { port, admin_port } => demo::run(port, admin_port).await,
        Command::Tenant { command } => onboard::tenant(command).await,
        Command::Key { command } => onboard::key(command).await,
        Command::Policy { command } => onboard::policy(command).await,
        Command::Secret { command } => onboard::secret(command).await,
        Command::Process { command } => process::run(command).await,
        Command::Breaker { command } => breaker::run(command).await,
        Command::Session { command } => session::run(command).await,
        Command::Assertions {
            command: AssertionsCommand::Rotate { store },
        } => {
            let config = load(&store.config)?;
            let dir = store.paths(&config).data_dir.join("assertion-keys");
            let kid = crate::assertion::rotate(&dir)?;
            println!("new signing key {kid} in {}", dir.display());
            Ok(())
        }
        Command::Audit { command } => audit::run(command).await,
        Command::Doctor { config } => {
            let host = crate::upstream::sandbox::host();
            println!("{}", host.report());
            if let Some(path) = config {
                let c = load(&path)?;
                let dedicated = c
                    .servers
                    .iter()
                    .filter(|s| s.placement == Placement::Dedicated && s.stdio.is_some());
                for s in dedicated {
                    let profile = crate::upstream::sandbox::profile_of(s);
                    let level = host.level(&profile);
                    let whose = if s.sandbox.is_some() {
                        "its [servers.sandbox]"
                    } else {
                        "the default isolation"
                    };
                    println!("server {}: sandbox {} ({whose})", s.name, level.label());
                    let apart = profile.isolates()
                        && !level.skipped.iter().any(|(l, _)| *l == Layer::Namespaces);
                    if apart {
                        println!(
                            "  tenants' processes are kept apart: own pid and mount namespaces, the gateway's data and secret files hidden"
                        );
                    } else {
                        println!(
                            "  WARNING: tenants' processes are NOT kept apart: they can signal each other and the gateway and read each other's environment"
                        );
                    }
                    for (layer, why) in &level.skipped {
                        let required = if profile.requires(*layer) {
                            " (REQUIRED: its processes will not start)"
                        } else {
                            ""
                        };
                        println!("  skipped {}: {why}{required}", layer.name());
                    }
                }
            }
            Ok(())
        }
    }
}

fn load(path: &Path) -> anyhow::Result<Config> {
    Ok(Config::load(path)?)
}

/// Builds the gateway and serves until SIGTERM or ctrl-c; with a config path, SIGHUP and
/// changes to the file reload it. `on_bound` runs once the listeners are bound, before the
/// machine-readable "listening" line.
pub(crate) async fn serve_with(
    builder: GatewayBuilder,
    config_path: Option<PathBuf>,
    on_bound: impl FnOnce(&Running),
) -> anyhow::Result<()> {
    let running = builder.start().await?;
    on_bound(&running);
    // One machine-readable line, for scripts and tests that bind port 0.
    println!(
        "palisade listening mcp={} admin={}",
        running.mcp_url, running.admin_url
    );
    let gw = running.gateway().clone();
    tracing::info!(mcp = %running.mcp_url, admin = %running.admin_url, upstreams = gw.upstreams().len(), tenants = gw.registry().tenants().count(), "serving");
    spawn_signal_handler(gw.clone());
    if let Some(path) = config_path {
        reload::spawn(gw, path);
    }
    running.wait().await?;
    tracing::info!("stopped");
    Ok(())
}

fn spawn_signal_handler(gw: Arc<Gateway>) {
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        loop {
            let asked = async {
                match term.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = asked => {}
            }
            if gw.leaving.is_cancelled() {
                tracing::info!("shutdown requested again: draining now");
            } else {
                let notice = gw.config().limits.shutdown_notice_secs;
                tracing::info!(
                    notice_secs = notice,
                    "shutdown requested: /readyz answers 503; draining after the notice period"
                );
            }
            gw.leave();
            if gw.draining.is_cancelled() {
                return;
            }
        }
    });
}
