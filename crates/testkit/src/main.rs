//! `palisade-testkit`: the test upstream MCP server for Palisade's integration
//! tests and the official conformance suite.
//!
//! It speaks both protocol eras through rmcp 3.11 — legacy 2025-11-25
//! (`initialize`, sessions, server→client requests) and stateless 2026-07-28
//! (`server/discover`, per-request `_meta`, `InputRequiredResult`) — over:
//!
//! - `palisade-testkit stdio`: newline-delimited JSON-RPC on stdin/stdout;
//!   logs go to stderr only.
//! - `palisade-testkit http --listen ADDR [--stateless] [--json-response]`:
//!   Streamable HTTP at `/mcp`; once bound it prints exactly one line,
//!   `listening on http://ADDR/mcp`, to stdout.

mod asks;
mod catalog;
mod conformance;
mod inputs;
mod server;
mod tools;

use std::{io::Write, net::SocketAddr, sync::Arc};

use anyhow::Context;
use clap::{Parser, Subcommand};
use rmcp::{
    ServiceExt,
    transport::{
        StreamableHttpServerConfig, StreamableHttpService,
        streamable_http_server::session::local::LocalSessionManager,
    },
};
use server::{Mode, Shared, Testkit};

/// Browser origins accepted unless `--allow-any-host` is given.
const LOOPBACK_ORIGINS: [&str; 6] = [
    "http://localhost:*",
    "http://127.0.0.1:*",
    "http://[::1]:*",
    "https://localhost:*",
    "https://127.0.0.1:*",
    "https://[::1]:*",
];

#[derive(Debug, Parser)]
#[command(
    name = "palisade-testkit",
    version,
    about = "Test upstream MCP server (both eras, stdio and HTTP)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve newline-delimited JSON-RPC on stdin/stdout.
    Stdio,
    /// Serve Streamable HTTP at /mcp.
    Http {
        /// Address to bind; port 0 picks a free port (printed once bound).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Serve legacy clients statelessly too (no Mcp-Session-Id, no GET
        /// stream); 2026-07-28 requests are always stateless.
        #[arg(long)]
        stateless: bool,
        /// Answer with application/json instead of an SSE stream when the
        /// reply is a single message.
        #[arg(long)]
        json_response: bool,
        /// Accept any Host and Origin header. By default only loopback hosts
        /// and loopback `http`/`https` origins are accepted (DNS-rebinding
        /// protection: others get 403).
        #[arg(long)]
        allow_any_host: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,palisade_testkit=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();

    match Cli::parse().command {
        Command::Stdio => serve_stdio().await,
        Command::Http {
            listen,
            stateless,
            json_response,
            allow_any_host,
        } => serve_http(listen, stateless, json_response, allow_any_host).await,
    }
}

async fn serve_stdio() -> anyhow::Result<()> {
    let kit = Testkit::new(Shared::new(Mode::Stdio, false));
    let running = kit
        .serve(rmcp::transport::stdio())
        .await
        .context("starting the stdio session")?;
    let reason = running.waiting().await.context("stdio session")?;
    tracing::info!(?reason, "stdio session ended");
    Ok(())
}

async fn serve_http(
    listen: SocketAddr,
    stateless: bool,
    json_response: bool,
    allow_any_host: bool,
) -> anyhow::Result<()> {
    let shared = Shared::new(Mode::Http, stateless);
    let mut config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(!stateless)
        .with_json_response(json_response);
    config = if allow_any_host {
        config.disable_allowed_hosts().disable_allowed_origins()
    } else {
        // rmcp checks Host against loopback names by default but leaves
        // Origin unchecked unless given an allowlist.
        config
            .with_allowed_origins(LOOPBACK_ORIGINS)
            .enforce_origin_validation()
    };
    let ct = config.cancellation_token.clone();
    let service = StreamableHttpService::new(
        move || Ok(Testkit::new(shared.clone())),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let router = axum::Router::new().route_service("/mcp", service);

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let local = listener.local_addr().context("reading the bound address")?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on http://{local}/mcp")?;
        stdout.flush()?;
    }
    tracing::info!(%local, stateless, json_response, "serving Streamable HTTP at /mcp");

    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            if let Err(error) = tokio::signal::ctrl_c().await {
                tracing::warn!(%error, "cannot wait for ctrl-c");
                std::future::pending::<()>().await;
            }
            ct.cancel();
        })
        .await
        .context("serving HTTP")
}
