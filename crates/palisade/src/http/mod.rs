//! The HTTP side: the MCP endpoint and the admin listener, and how they start and stop.
//!
//! Layers, outermost first, are visible in [`mcp::post`]: Origin/Host check → Accept and
//! Content-Type → authentication → body limit → parse → era detection and header checks →
//! session → dispatch.

pub mod admin;
pub mod mcp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::gateway::Gateway;

pub fn mcp_router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/mcp", get(mcp::get).post(mcp::post).delete(mcp::delete))
        .with_state(gw)
}

pub fn admin_router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/healthz", get(admin::healthz))
        .route("/readyz", get(admin::readyz))
        .route("/metrics", get(admin::metrics))
        .with_state(gw)
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
    let grace = Duration::from_secs(gw.config.limits.shutdown_grace_secs);
    let drain = gw.draining.clone();
    let mcp = axum::serve(bound.mcp, mcp_router(gw.clone()))
        .with_graceful_shutdown(drain.clone().cancelled_owned());
    let admin = axum::serve(bound.admin, admin_router(gw.clone()))
        .with_graceful_shutdown(drain.clone().cancelled_owned());
    let servers = async { tokio::try_join!(mcp.into_future(), admin.into_future()) };
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
