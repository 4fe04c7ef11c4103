//! The admin listener: liveness, readiness and Prometheus metrics. Bind it to a private
//! address; it needs no credentials and reveals upstream names.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::fleet;
use crate::gateway::Gateway;

pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

/// 200 while the gateway can serve (`ready`, or `degraded: …`), 503 when it cannot or is
/// leaving (see [`fleet::health`]).
pub(crate) async fn readyz(State(gw): State<Arc<Gateway>>) -> Response {
    gw.metrics.rate_limit_store(gw.protection.store_up());
    let health = fleet::health(&gw);
    let status = if health.serving {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, format!("{}\n", health.says)).into_response()
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
