//! The admin listener: liveness, readiness and Prometheus metrics. Bind it to a private
//! address; it needs no credentials and reveals upstream names.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::gateway::Gateway;

pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

/// 200 while the gateway can serve: every upstream up (`ready`), or some down (`degraded`,
/// naming them). 503 only once it is asked to stop (still serving during the notice period:
/// `leaving`), while draining, or when no upstream is up at all. One broken upstream
/// must not take every replica out of a load balancer: its tenants get precise errors, the
/// others keep being served, and `palisade_upstream_up` says which one.
pub(crate) async fn readyz(State(gw): State<Arc<Gateway>>) -> Response {
    if gw.draining.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    if gw.leaving.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "leaving: still serving until the drain\n",
        )
            .into_response();
    }
    let upstreams = gw.upstreams();
    let down: Vec<&str> = upstreams
        .iter()
        .filter(|u| !u.is_ready())
        .map(|u| &*u.name)
        .collect();
    let store_down = gw.protection.store_up() == Some(false);
    gw.metrics.rate_limit_store(gw.protection.store_up());
    if store_down && down.len() < upstreams.len() {
        // Still serving, under the configured policy: say so, but stay in the load balancer.
        let policy = match gw.config().rate_limits.when_redis_down {
            palisade_limits::redis::WhenDown::FailOpen => "fail_open: each replica limits alone",
            palisade_limits::redis::WhenDown::FailClosed => {
                "fail_closed: rate-limited calls are refused"
            }
        };
        return (
            StatusCode::OK,
            format!("degraded: the rate limit store (Redis) is down ({policy})\n"),
        )
            .into_response();
    }
    if down.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else if down.len() == upstreams.len() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no upstream is up: {}\n", down.join(", ")),
        )
            .into_response()
    } else {
        (
            StatusCode::OK,
            format!("degraded: upstreams not up: {}\n", down.join(", ")),
        )
            .into_response()
    }
}

pub(crate) async fn metrics(State(gw): State<Arc<Gateway>>) -> Response {
    gw.observe_instances();
    gw.metrics.rate_limit_store(gw.protection.store_up());
    gw.metrics
        .breakers_observed(&gw.protection.breaker_states());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        gw.metrics.render(),
    )
        .into_response()
}

/// The Ed25519 key that verifies the audit trail's checkpoints, for auditors:
/// `palisade audit verify --public-key <public_key>` needs nothing secret.
pub(crate) async fn audit_public_key(State(gw): State<Arc<Gateway>>) -> Response {
    match &gw.audit {
        Some(audit) => (
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!({
                "alg": "Ed25519",
                "public_key": audit.public_key_base64(),
            })
            .to_string(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "the audit trail is off\n").into_response(),
    }
}
