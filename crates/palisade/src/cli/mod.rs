//! The `palisade` command line: `serve`, `check`, `demo`, `key new`.

pub mod demo;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::auth::apikey::{ApiKeys, Pepper, generate_key};
use crate::config::Config;
use crate::gateway::Gateway;
use crate::http::{self, Bound};

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
    /// Run the gateway.
    Serve {
        #[arg(long, short, env = "PALISADE_CONFIG")]
        config: PathBuf,
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
    /// API keys.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
}

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Create a key: prints it once, and the line to put in the tenant's `keys`.
    New {
        /// The config whose pepper hashes the key.
        #[arg(long, short)]
        config: PathBuf,
    },
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
        Command::Serve { config } => {
            let config = load(&config)?;
            serve(config).await
        }
        Command::Check { config } => {
            let c = load(&config)?;
            c.check_host()?;
            if c.tenants.iter().any(|t| !t.keys.is_empty()) {
                Pepper::from_config(&c).context("auth")?;
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
        Command::Key {
            command: KeyCommand::New { config },
        } => {
            let c = load(&config)?;
            let pepper = Pepper::from_config(&c).context("auth")?;
            let key = generate_key();
            println!("API key (shown once, give it to the client): {key}");
            println!(
                "add to the tenant's keys:                    \"{}\"",
                pepper.stored_hash(&key)
            );
            Ok(())
        }
    }
}

fn load(path: &Path) -> anyhow::Result<Config> {
    Ok(Config::load(path)?)
}

/// Builds the gateway from a config and serves until SIGTERM or ctrl-c.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let pepper = match Pepper::from_config(&config) {
        Ok(p) => p,
        Err(e) if config.tenants.iter().all(|t| t.keys.is_empty()) => {
            tracing::warn!("{e}; no tenant has API keys, so nobody can authenticate");
            Pepper::random()
        }
        Err(e) => return Err(e).context("auth"),
    };
    serve_with(config, pepper, |_| {}).await
}

/// Serves with a given pepper; `on_bound` sees the bound addresses before serving starts.
pub async fn serve_with(
    config: Config,
    pepper: Pepper,
    on_bound: impl FnOnce(&Bound),
) -> anyhow::Result<()> {
    let auth = Box::new(ApiKeys::from_config(&config, pepper));
    let bound = Bound::bind(config.listen.mcp, config.listen.admin).await?;
    let gw = Gateway::new(config, auth);
    let mcp_addr = bound.mcp.local_addr()?;
    let admin_addr = bound.admin.local_addr()?;
    on_bound(&bound);
    // One machine-readable line, for scripts and tests that bind port 0.
    println!("palisade listening mcp=http://{mcp_addr}/mcp admin=http://{admin_addr}");
    tracing::info!(%mcp_addr, %admin_addr, upstreams = gw.upstreams.len(), tenants = gw.tenants.len(), "serving");
    spawn_signal_handler(gw.clone());
    http::serve(gw, bound).await?;
    tracing::info!("stopped");
    Ok(())
}

fn spawn_signal_handler(gw: Arc<Gateway>) {
    tokio::spawn(async move {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
        tracing::info!("shutdown requested: draining");
        gw.draining.cancel();
    });
}
