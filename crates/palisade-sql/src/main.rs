//! `palisade-sql`: read-only SQL over MCP, one tenant per call (see the library's docs).
//!
//! - `palisade-sql serve`: stdio by default, or Streamable HTTP at `/mcp` with `--http ADDR`
//!   (prints `listening on http://ADDR/mcp` once bound). Logs go to stderr.
//! - `palisade-sql migrate`: sets up PostgreSQL (roles, policies, sample data) or writes the
//!   per-tenant SQLite files.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::serve::ListenerExt as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use palisade_sql::TenantId;
use palisade_sql::assertion::{KeySource, Verifier};
use palisade_sql::backend::{Backend, Limits, postgres::Postgres, sqlite::Sqlite};
use palisade_sql::server::{SqlServer, Tenancy};
use rmcp::ServiceExt as _;
use rmcp::transport::{
    StreamableHttpServerConfig, StreamableHttpService,
    streamable_http_server::session::local::LocalSessionManager,
};
use sqlx::postgres::PgConnectOptions;

#[derive(Debug, Parser)]
#[command(
    name = "palisade-sql",
    version,
    about = "Read-only SQL over MCP, one tenant per call"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the tools over stdio (default) or Streamable HTTP.
    Serve(Serve),
    /// Set up PostgreSQL (roles, row-level security, sample data) or the SQLite files.
    Migrate(Migrate),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Placement {
    /// One process per tenant: the tenant is `TENANT_ID`.
    Dedicated,
    /// One process for all tenants: the tenant comes from the gateway's assertion.
    Shared,
}

#[derive(Debug, Args)]
struct Database {
    /// Serve `<dir>/<tenant>.db` (SQLite).
    #[arg(long, env = "PALISADE_SQL_SQLITE_DIR")]
    sqlite_dir: Option<PathBuf>,
    /// PostgreSQL URL. Without it and without --sqlite-dir, DB_HOST, DB_PORT, DB_NAME,
    /// DB_USER and DB_PASSWORD are used.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
}

#[derive(Debug, Args)]
struct Serve {
    #[command(flatten)]
    database: Database,
    #[arg(
        long,
        value_enum,
        env = "PALISADE_SQL_PLACEMENT",
        default_value = "dedicated"
    )]
    placement: Placement,
    /// Shared placement: the gateway's JWK set (`http://GATEWAY/.well-known/jwks.json`).
    #[arg(long, env = "PALISADE_SQL_JWKS_URL")]
    jwks_url: Option<String>,
    /// Shared placement: a JWK set file, in place of --jwks-url.
    #[arg(long, env = "PALISADE_SQL_JWKS_FILE")]
    jwks_file: Option<PathBuf>,
    /// Shared placement: this server's name in the gateway (the assertions' audience).
    #[arg(long, env = "PALISADE_SQL_AUDIENCE", default_value = "sql")]
    audience: String,
    /// Shared placement: the assertions' issuer.
    #[arg(long, default_value = "palisade")]
    issuer: String,
    /// Shared placement: clock difference tolerated when checking `exp` and `iat`.
    #[arg(long, default_value_t = 5)]
    clock_skew_secs: u64,
    /// PostgreSQL: the role queries run as (made by `migrate`).
    #[arg(long, default_value = "palisade_sql_reader")]
    reader_role: String,
    /// How long one query may run.
    #[arg(long, default_value_t = 5000)]
    statement_timeout_ms: u64,
    /// Rows returned at most; the result says when more were cut off.
    #[arg(long, default_value_t = 1000)]
    max_rows: usize,
    /// Size of a result at most, in bytes (roughly its values as text); a larger one is an
    /// error. Keep it below the gateway's `max_line_bytes` (16 MiB).
    #[arg(long, default_value_t = 4 << 20)]
    max_result_bytes: usize,
    /// Serve Streamable HTTP at /mcp on this address instead of stdio.
    #[arg(long)]
    http: Option<SocketAddr>,
    /// HTTP: accept any Host and Origin (default: loopback only, against DNS rebinding).
    #[arg(long)]
    allow_any_host: bool,
}

#[derive(Debug, Args)]
struct Migrate {
    /// Write `<dir>/<tenant>.db` for each tenant (SQLite).
    #[arg(long, conflicts_with = "database_url")]
    sqlite_dir: Option<PathBuf>,
    /// PostgreSQL URL of an administrator (creates roles, revokes from PUBLIC).
    #[arg(long, env = "PALISADE_SQL_ADMIN_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Tenants to load sample data for.
    #[arg(long, value_delimiter = ',', default_value = "acme,globex")]
    tenants: Vec<String>,
    /// PostgreSQL: the role palisade-sql logs in as.
    #[arg(long, default_value = "palisade_sql")]
    login_role: String,
    /// PostgreSQL: the role queries run as.
    #[arg(long, default_value = "palisade_sql_reader")]
    reader_role: String,
    /// PostgreSQL: an environment variable holding the login role's password (absent: no
    /// password is set, for trust or certificate authentication).
    #[arg(long)]
    login_password_env: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,palisade_sql=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    match Cli::parse().command {
        Command::Serve(serve) => run_serve(serve).await,
        Command::Migrate(migrate) => run_migrate(migrate).await,
    }
}

/// PostgreSQL options from a URL or the DB_* variables. The URL is never printed: it may
/// hold a password.
fn pg_options(url: Option<&str>) -> anyhow::Result<PgConnectOptions> {
    if let Some(url) = url {
        return PgConnectOptions::from_str(url).map_err(|_| {
            anyhow::anyhow!("the PostgreSQL URL is not valid (not shown: it may hold a password); expected postgres://USER@HOST:PORT/DB")
        });
    }
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let Some(host) = var("DB_HOST") else {
        bail!(
            "no database: give --sqlite-dir DIR, --database-url (or DATABASE_URL), or DB_HOST with DB_NAME, DB_USER and DB_PASSWORD"
        );
    };
    let mut options = PgConnectOptions::new().host(&host);
    if let Some(port) = var("DB_PORT") {
        options = options.port(port.parse().context("DB_PORT is not a port number")?);
    }
    if let Some(name) = var("DB_NAME") {
        options = options.database(&name);
    }
    if let Some(user) = var("DB_USER") {
        options = options.username(&user);
    }
    if let Some(password) = var("DB_PASSWORD") {
        options = options.password(&password);
    }
    Ok(options)
}

async fn run_serve(serve: Serve) -> anyhow::Result<()> {
    let tenancy = match serve.placement {
        Placement::Dedicated => {
            let tenant = std::env::var("TENANT_ID").unwrap_or_default();
            let Ok(tenant) = TenantId::parse(&tenant) else {
                bail!(
                    "dedicated placement needs TENANT_ID, the tenant this process serves (1-63 of [a-z0-9-]); for one process serving all tenants use --placement shared with --jwks-url"
                );
            };
            Tenancy::Dedicated(tenant)
        }
        Placement::Shared => {
            let source = match (serve.jwks_url, serve.jwks_file) {
                (Some(url), None) => KeySource::Url(url),
                (None, Some(file)) => KeySource::File(file),
                _ => bail!(
                    "shared placement needs exactly one of --jwks-url (the gateway's /.well-known/jwks.json) or --jwks-file"
                ),
            };
            Tenancy::Shared(Verifier::new(
                source,
                serve.audience,
                serve.issuer,
                serve.clock_skew_secs,
            ))
        }
    };
    // A dedicated process answers for its tenant to whoever reaches it: over HTTP that must be
    // a deliberate choice beyond loopback.
    if let (Placement::Dedicated, Some(addr)) = (serve.placement, serve.http)
        && !addr.ip().is_loopback()
        && !serve.allow_any_host
    {
        bail!(
            "dedicated placement has no caller authentication: serve HTTP on a loopback address, or pass --allow-any-host if the network itself is private to this tenant"
        );
    }
    let backend = match (&serve.database.sqlite_dir, &serve.database.database_url) {
        (Some(dir), _) => Backend::Sqlite(Sqlite::new(dir.clone())),
        (None, url) => {
            let options = pg_options(url.as_deref())?;
            Backend::Postgres(
                Postgres::connect(options, serve.reader_role)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
            )
        }
    };
    let limits = Limits {
        max_rows: serve.max_rows,
        max_bytes: serve.max_result_bytes,
        timeout: Duration::from_millis(serve.statement_timeout_ms.max(1)),
    };
    let server = SqlServer::new(backend, tenancy, limits);
    match serve.http {
        None => {
            let running = server
                .serve(rmcp::transport::stdio())
                .await
                .context("starting the stdio session")?;
            running.waiting().await.context("stdio session")?;
            Ok(())
        }
        Some(listen) => serve_http(server, listen, serve.allow_any_host).await,
    }
}

async fn serve_http(
    server: SqlServer,
    listen: SocketAddr,
    allow_any_host: bool,
) -> anyhow::Result<()> {
    let mut config = StreamableHttpServerConfig::default();
    if allow_any_host {
        config = config.disable_allowed_hosts().disable_allowed_origins();
    }
    let ct = config.cancellation_token.clone();
    let service = StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let router = axum::Router::new().route_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let local = listener.local_addr().context("reading the bound address")?;
    // Replies are small and written in pieces: without NODELAY each waits for the peer's
    // delayed ACK (40 ms).
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
    });
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on http://{local}/mcp")?;
        stdout.flush()?;
    }
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
            ct.cancel();
        })
        .await
        .context("serving HTTP")
}

async fn run_migrate(migrate: Migrate) -> anyhow::Result<()> {
    if let Some(dir) = &migrate.sqlite_dir {
        palisade_sql::migrate::sqlite(dir, &migrate.tenants)?;
        println!(
            "wrote {} SQLite databases in {}",
            migrate.tenants.len(),
            dir.display()
        );
        return Ok(());
    }
    let Some(url) = migrate.database_url.as_deref() else {
        bail!("give --sqlite-dir DIR or --database-url (an administrator's PostgreSQL URL)");
    };
    let password = match &migrate.login_password_env {
        Some(var) => Some(std::env::var(var).with_context(|| format!("{var} is not set"))?),
        None => None,
    };
    let plan = palisade_sql::migrate::PgPlan {
        login_role: &migrate.login_role,
        login_password: password.as_deref(),
        reader_role: &migrate.reader_role,
        tenants: &migrate.tenants,
    };
    palisade_sql::migrate::postgres(pg_options(Some(url))?, &plan).await?;
    println!(
        "PostgreSQL ready: log in as {} (NOSUPERUSER NOBYPASSRLS); queries run as {} under row-level security",
        migrate.login_role, migrate.reader_role
    );
    Ok(())
}
