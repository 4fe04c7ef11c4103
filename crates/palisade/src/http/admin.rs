//! The admin listener: liveness, readiness and Prometheus metrics. Bind it to a private
//! address; it needs no credentials and reveals upstream names.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::gateway::Gateway;

pub async fn healthz() -> &'static str {
    "ok\n"
}

/// 200 when every upstream has a live link, else 503 naming the ones that do not.
pub async fn readyz(State(gw): State<Arc<Gateway>>) -> Response {
    if gw.draining.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    let down: Vec<&str> = gw
        .upstreams
        .iter()
        .filter(|u| !u.is_ready())
        .map(|u| &*u.name)
        .collect();
    if down.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("upstreams not ready: {}\n", down.join(", ")),
        )
            .into_response()
    }
}

pub async fn metrics(State(gw): State<Arc<Gateway>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        gw.metrics.render(),
    )
        .into_response()
}
