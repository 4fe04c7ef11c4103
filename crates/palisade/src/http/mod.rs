//! The HTTP side: the MCP endpoint and the admin listener, and how they start and stop.
//! The MCP listener bounds what any client can hold before it is even authenticated: deadlines
//! for connections that are not busy, a cap on open connections and a cap per source address
//! ([`conn`]).
//!
//! Layers, outermost first, are visible in [`mcp::post`]: Origin/Host check → Accept and
//! Content-Type → authentication → body limit → parse → era detection and header checks →
//! session → dispatch.

pub(crate) mod admin;
pub(crate) mod admin_api;
mod answers;
pub(crate) mod conn;
mod gates;
pub(crate) mod mcp;
pub(crate) mod metadata;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::Request;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::Listen;

use crate::gateway::Gateway;

pub(crate) fn mcp_router(gw: Arc<Gateway>) -> Router {
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

pub(crate) fn admin_router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/healthz", get(admin::healthz))
        .route("/readyz", get(admin::readyz))
        .route("/metrics", get(admin::metrics))
        .route("/audit/public-key", get(admin::audit_public_key))
        .merge(admin_api::routes(gw.clone()))
        .with_state(gw)
}

/// Serves the MCP endpoint until `drain` fires, then waits for open connections to finish.
/// Unlike `axum::serve`, it bounds what a client can hold: at most `listen.max_connections`
/// connections are open (beyond that, clients wait in the kernel's accept queue), each closed at
/// its deadline when not busy, and each source address holds a bounded number of connections
/// that have not authenticated (see [`conn`]).
async fn serve_mcp(
    listener: TcpListener,
    router: Router,
    gw: Arc<Gateway>,
    drain: CancellationToken,
    listen: &Listen,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(listen.header_read_timeout_ms));
    let first_request = Duration::from_millis(listen.header_read_timeout_ms);
    let idle = Duration::from_millis(listen.idle_timeout_ms);
    let sources = conn::Sources::new(listen.max_unauthenticated_per_source);
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
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = drain.cancelled() => break,
        };
        let Some(ticket) = sources.admit(peer.ip()) else {
            gw.metrics.rejected("source_limit");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let client = conn::ClientConn::new(ticket);
        let service = {
            let (client, router) = (client.clone(), router.clone());
            hyper::service::service_fn(move |mut req: Request<Incoming>| {
                let busy = client.begin();
                req.extensions_mut().insert(client.clone());
                let served = tower_service::Service::call(&mut router.clone(), req);
                async move {
                    let response = served.await?;
                    // The connection stays busy until the response body ends or is dropped:
                    // the closure owns the guard for as long as the body lives.
                    Ok::<_, Infallible>(response.map(|body| {
                        Body::new(body.map_frame(move |frame| {
                            let _ = &busy;
                            frame
                        }))
                    }))
                }
            })
        };
        let served = graceful.watch(
            builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned(),
        );
        let gw = gw.clone();
        tokio::spawn(async move {
            tokio::select! {
                served = served => {
                    // hyper's own header deadline may close a silent connection first: the
                    // same refusal, counted the same.
                    let timed_out = served.is_err_and(|e| {
                        e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_timeout)
                    });
                    if timed_out {
                        gw.metrics.rejected(client.deadline().reason());
                    }
                }
                expired = client.expired(first_request, idle) => gw.metrics.rejected(expired.reason()),
            }
            drop(permit);
        });
    }
    graceful.shutdown().await;
}

/// The bound listeners (ports may have been 0 in the config).
/// Connections the kernel completes and queues while the gateway is busy accepting (capped by
/// `net.core.somaxconn`). The usual 128 overflows under a burst of new connections, and a
/// client whose handshake overflowed believes it is connected while the gateway never sees it.
const LISTEN_BACKLOG: u32 = 4096;

fn listen_on(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

pub(crate) struct Bound {
    pub mcp: TcpListener,
    pub admin: TcpListener,
}

impl Bound {
    pub(crate) async fn bind(mcp: SocketAddr, admin: SocketAddr) -> std::io::Result<Bound> {
        let mcp_listener = listen_on(mcp).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen on {mcp} (listen.mcp): {e}"),
            )
        })?;
        let admin_listener = listen_on(admin).map_err(|e| {
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
pub(crate) async fn serve(gw: Arc<Gateway>, bound: Bound) -> std::io::Result<()> {
    gw.start();
    let config = gw.config();
    let grace = Duration::from_secs(config.limits.shutdown_grace_secs);
    let drain = gw.draining.clone();
    let mcp = serve_mcp(
        bound.mcp,
        mcp_router(gw.clone()),
        gw.clone(),
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
