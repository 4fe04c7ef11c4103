//! The HTTP side: the MCP endpoint and the admin listener, and how they start and stop.
//! The MCP listener bounds what any client can hold before it is even authenticated: a
//! header-read timeout and a cap on open connections.
//!
//! Layers, outermost first, are visible in [`mcp::post`]: Origin/Host check → Accept and
//! Content-Type → authentication → body limit → parse → era detection and header checks →
//! session → dispatch.

pub mod admin;
pub mod admin_api;
pub mod mcp;
pub mod metadata;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::Listen;

use crate::gateway::Gateway;

pub fn mcp_router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/mcp", get(mcp::get).post(mcp::post).delete(mcp::delete))
        .route(
            "/.well-known/oauth-protected-resource",
            get(metadata::protected_resource),
        )
        .route(
            "/.well-known/oauth-protected-resource/{*resource}",
            get(metadata::protected_resource),
        )
        .route("/.well-known/jwks.json", get(metadata::jwks))
        .with_state(gw)
}

pub fn admin_router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/healthz", get(admin::healthz))
        .route("/readyz", get(admin::readyz))
        .route("/metrics", get(admin::metrics))
        .route("/audit/public-key", get(admin::audit_public_key))
        .merge(admin_api::routes(gw.clone()))
        .with_state(gw)
}

/// Serves the MCP endpoint until `drain` fires, then waits for open connections to finish.
/// Unlike `axum::serve`, it bounds what a client can hold: request headers must arrive within
/// `listen.header_read_timeout_ms`, and at most `listen.max_connections` connections are open
/// (beyond that, clients wait in the kernel's accept queue).
async fn serve_mcp(
    listener: TcpListener,
    router: Router,
    drain: CancellationToken,
    listen: &Listen,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(listen.header_read_timeout_ms));
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(listen.max_connections));
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = drain.cancelled() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = drain.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let conn = graceful.watch(
            builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned(),
        );
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    graceful.shutdown().await;
}

/// The bound listeners (ports may have been 0 in the config).
pub struct Bound {
    pub mcp: TcpListener,
    pub admin: TcpListener,
}

impl Bound {
    pub async fn bind(mcp: SocketAddr, admin: SocketAddr) -> std::io::Result<Bound> {
        let mcp_listener = TcpListener::bind(mcp).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen on {mcp} (listen.mcp): {e}"),
            )
        })?;
        let admin_listener = TcpListener::bind(admin).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen on {admin} (listen.admin): {e}"),
            )
        })?;
        Ok(Bound {
            mcp: mcp_listener,
            admin: admin_listener,
        })
    }
}

/// Serves until `gw.draining` fires, then gives in-flight requests the configured grace period,
/// then stops the upstreams.
pub async fn serve(gw: Arc<Gateway>, bound: Bound) -> std::io::Result<()> {
    gw.start();
    let config = gw.config();
    let grace = Duration::from_secs(config.limits.shutdown_grace_secs);
    let drain = gw.draining.clone();
    let mcp = serve_mcp(
        bound.mcp,
        mcp_router(gw.clone()),
        drain.clone(),
        &config.listen,
    );
    let admin = axum::serve(bound.admin, admin_router(gw.clone()))
        .with_graceful_shutdown(drain.clone().cancelled_owned());
    let servers = async { tokio::join!(mcp, admin.into_future()).1 };
    tokio::pin!(servers);
    let result = tokio::select! {
        r = &mut servers => r.map(|_| ()),
        _ = async { drain.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(grace_secs = grace.as_secs(), "in-flight requests did not finish within the grace period; stopping anyway");
            Ok(())
        }
    };
    gw.stop().await;
    result
}
