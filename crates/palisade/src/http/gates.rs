//! The gates every `/mcp` request passes, in order: Origin/Host (403) → Accept (406) and
//! Content-Type (415) → authentication (401, with the `WWW-Authenticate` challenge) → era
//! detection → session (400 missing / 404 unknown).

// The gates return the finished error `Response` as their `Err`: it is what the handler
// sends, and boxing it would only add an allocation to the error path.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::Extension;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use mcp_wire::era::{self, header as mcp_header, meta};
use mcp_wire::jsonrpc::{self, ErrorCode};
use mcp_wire::{Era, Message, RawObject};

use super::answers::{json, rpc_error};
use crate::auth::{AuthError, Principal};
use crate::gateway::Gateway;
use crate::http::conn::ClientConn;
use crate::registry::Tenant;
use crate::session::{Lookup, Session};

/// Which handler a request is for: what it must accept and send.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Need {
    Post,
    Get,
    Delete,
}

/// Origin/Host, Accept, Content-Type and authentication; the principal and its tenant. A
/// connection that authenticates no longer counts against its source address.
pub(super) async fn gates(
    gw: &Gateway,
    conn: Option<Extension<Arc<ClientConn>>>,
    headers: &HeaderMap,
    need: Need,
) -> Result<(Principal, Arc<Tenant>), Response> {
    if let Err(problem) = check_origin_and_host(gw, headers) {
        gw.metrics.rejected("origin");
        return Err(rpc_error(
            StatusCode::FORBIDDEN,
            ErrorCode::INVALID_REQUEST,
            &problem,
        ));
    }
    match need {
        Need::Post => {
            if !accepts(headers, "application/json") || !accepts(headers, "text/event-stream") {
                gw.metrics.rejected("not_acceptable");
                return Err(rpc_error(
                    StatusCode::NOT_ACCEPTABLE,
                    ErrorCode::INVALID_REQUEST,
                    "the Accept header must list both application/json and text/event-stream",
                ));
            }
            let ct = header_str(headers, header::CONTENT_TYPE.as_str()).unwrap_or("");
            if !ct
                .split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
            {
                gw.metrics.rejected("content_type");
                return Err(rpc_error(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    ErrorCode::INVALID_REQUEST,
                    "Content-Type must be application/json",
                ));
            }
        }
        Need::Get => {
            if !accepts(headers, "text/event-stream") {
                gw.metrics.rejected("not_acceptable");
                return Err(rpc_error(
                    StatusCode::NOT_ACCEPTABLE,
                    ErrorCode::INVALID_REQUEST,
                    "the Accept header must list text/event-stream",
                ));
            }
        }
        Need::Delete => {}
    }
    let registry = gw.registry();
    let authenticated = gw
        .auth
        .authenticate(
            &registry,
            headers
                .get(header::AUTHORIZATION)
                .map(HeaderValue::as_bytes),
        )
        .await
        .map_err(|e| refused(gw, &e))?;
    if let Some(Extension(conn)) = conn {
        conn.authenticated();
    }
    Ok(authenticated)
}

/// The answer to credentials that were not accepted: 401 with a challenge that tells an OAuth
/// client where to start, 403 for a known caller who may not pass, 503 when tokens cannot be
/// checked at all (failing closed).
pub(super) fn refused(gw: &Gateway, e: &AuthError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED);
    gw.metrics.rejected(match status {
        StatusCode::UNAUTHORIZED => "unauthenticated",
        StatusCode::FORBIDDEN => "forbidden",
        _ => "auth_unavailable",
    });
    let mut r = rpc_error(status, ErrorCode::INVALID_REQUEST, &e.to_string());
    let scopes = match e {
        AuthError::InsufficientScope(s) => Some(s.clone()),
        _ => None,
    };
    let wants_challenge = status == StatusCode::UNAUTHORIZED || scopes.is_some();
    if wants_challenge && let Some(v) = challenge(gw, e.challenge_error(), scopes.as_deref()) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

/// `WWW-Authenticate: Bearer …` per RFC 6750 and RFC 9728: the protected resource metadata
/// URL and the scopes needed (the configured required scopes unless `scopes` says otherwise).
pub(super) fn challenge(
    gw: &Gateway,
    error: Option<&str>,
    scopes: Option<&str>,
) -> Option<HeaderValue> {
    let mut parts = vec![r#"Bearer realm="palisade""#.to_owned()];
    if let Some(e) = error {
        parts.push(format!(r#"error="{e}""#));
    }
    if let Some(oauth) = gw.auth.oauth() {
        let config = oauth.config();
        parts.push(format!(
            r#"resource_metadata="{}""#,
            super::metadata::metadata_url(&config.resource)
        ));
        let scope = scopes
            .map(str::to_owned)
            .unwrap_or_else(|| config.required_scopes.join(" "));
        if !scope.is_empty() {
            parts.push(format!(r#"scope="{scope}""#));
        }
    } else if let Some(s) = scopes {
        parts.push(format!(r#"scope="{s}""#));
    }
    HeaderValue::from_str(&parts.join(", ")).ok()
}

/// DNS-rebinding protection: a browser's Origin must be loopback or listed, and the Host must be
/// a loopback name or listed.
pub(super) fn check_origin_and_host(gw: &Gateway, headers: &HeaderMap) -> Result<(), String> {
    let config = gw.config();
    let listen = &config.listen;
    if let Some(origin) = header_str(headers, header::ORIGIN.as_str()) {
        let listed = listen
            .allowed_origins
            .iter()
            .any(|o| o == origin || o == "*");
        let loopback = origin
            .split_once("://")
            .map(|(_, rest)| host_part(rest))
            .is_some_and(is_loopback_name);
        if !listed && !loopback {
            return Err(format!(
                "Origin `{origin}` is not allowed; add it to listen.allowed_origins"
            ));
        }
    }
    if let Some(host) = header_str(headers, header::HOST.as_str()) {
        let name = host_part(host);
        let listed = listen
            .allowed_hosts
            .iter()
            .any(|h| h == "*" || h.eq_ignore_ascii_case(name) || h.eq_ignore_ascii_case(host));
        if !listed && !is_loopback_name(name) {
            return Err(format!(
                "Host `{host}` is not allowed; add it to listen.allowed_hosts"
            ));
        }
    }
    Ok(())
}

/// The host of `host[:port]`, `[v6]:port`, or of an origin's remainder.
pub(super) fn host_part(s: &str) -> &str {
    let s = s.split('/').next().unwrap_or(s);
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    s.rsplit_once(':').map_or(s, |(h, _)| h)
}

pub(super) fn is_loopback_name(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

pub(super) fn accepts(headers: &HeaderMap, mime: &str) -> bool {
    let (kind, _) = mime.split_once('/').unwrap_or((mime, ""));
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',').any(|item| {
                let t = item.split(';').next().unwrap_or("").trim();
                t.eq_ignore_ascii_case(mime)
                    || t == "*/*"
                    || t.eq_ignore_ascii_case(&format!("{kind}/*"))
            })
        })
}

/// Which era a POST speaks. The version header decides; without it, a request whose `_meta`
/// names the modern version is modern, and anything else is a legacy client that predates the
/// header (2025-03-26).
pub(super) fn detect_era(headers: &HeaderMap, msg: &Message) -> Result<Era, Response> {
    // Parsing params only matters when the header does not settle the era.
    let meta_version = || {
        let params = match msg {
            Message::Request(r) => r.params.as_deref(),
            Message::Notification(n) => n.params.as_deref(),
            Message::Response(_) => None,
        };
        params
            .and_then(|p| RawObject::parse(p.get()))
            .and_then(|o| o.get_object("_meta"))
            .is_some_and(|m| m.get(meta::PROTOCOL_VERSION).is_some())
    };
    match header_str(headers, mcp_header::PROTOCOL_VERSION) {
        Some(v) => match Era::of_version(v) {
            Some(era) => Ok(era),
            // A modern-shaped request: its own checks name the exact problem.
            None if meta_version() => Ok(Era::Modern),
            None => Err(json(
                StatusCode::BAD_REQUEST,
                jsonrpc::error(
                    msg.request_id(),
                    ErrorCode::UNSUPPORTED_PROTOCOL_VERSION,
                    &format!("unsupported MCP-Protocol-Version `{v}`"),
                    Some(&serde_json::json!({ "supported": era::ALL_VERSIONS, "requested": v })),
                ),
            )),
        },
        None => Ok(if meta_version() {
            Era::Modern
        } else {
            Era::Legacy
        }),
    }
}

pub(super) async fn session_of(
    gw: &Gateway,
    headers: &HeaderMap,
    principal: &Principal,
    tenant: &Tenant,
) -> Result<Arc<Session>, Response> {
    let Some(id) = header_str(headers, mcp_header::SESSION_ID) else {
        gw.metrics.rejected("no_session");
        return Err(rpc_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::INVALID_REQUEST,
            "the Mcp-Session-Id header is required: send initialize first",
        ));
    };
    let found = gw.sessions.find(id, principal).await;
    if let Ok((session, true)) = &found {
        crate::fleet::count_subscriptions(tenant, session);
    }
    found.map(|(session, _)| session).map_err(|lookup| match lookup {
        Lookup::NotFound => {
            gw.metrics.rejected("unknown_session");
            rpc_error(
                StatusCode::NOT_FOUND,
                ErrorCode::INVALID_REQUEST,
                "session not found: it ended or expired; send initialize again",
            )
        }
        Lookup::Unavailable => {
            gw.metrics.rejected("session_store");
            retry_soon(
                ErrorCode::INTERNAL_ERROR,
                "this replica cannot continue the session now: the fleet's session store (Redis) cannot be reached; retry shortly",
            )
        }
        Lookup::Refused(_) => {
            gw.metrics.rejected("session_limit");
            retry_soon(
                ErrorCode::LIMIT_REACHED,
                "this replica holds as many of the tenant's sessions as limits.max_sessions_per_tenant or limits.session_memory_per_tenant allow; retry (another replica may take it)",
            )
        }
    })
}

/// A 503 with `Retry-After: 1`: this replica cannot continue a session now, another may.
fn retry_soon(code: ErrorCode, message: &str) -> Response {
    let mut r = rpc_error(StatusCode::SERVICE_UNAVAILABLE, code, message);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// The `Mcp-Param-*` headers, by lowercase suffix.
pub(super) fn param_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter_map(|(name, value)| {
            let suffix = name.as_str().strip_prefix(mcp_header::PARAM_PREFIX)?;
            Some((suffix.to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect()
}

pub(super) fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue, header};

    use super::*;

    #[test]
    fn host_parts() {
        assert_eq!(host_part("localhost:8080"), "localhost");
        assert_eq!(host_part("[::1]:80"), "::1");
        assert_eq!(host_part("127.0.0.1"), "127.0.0.1");
        assert_eq!(host_part("evil.example:80/x"), "evil.example");
        assert!(is_loopback_name("127.0.0.2"));
        assert!(!is_loopback_name("evil.example"));
    }

    #[test]
    fn accept_matching() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream;q=0.9"),
        );
        assert!(accepts(&h, "application/json") && accepts(&h, "text/event-stream"));
        h.insert(header::ACCEPT, HeaderValue::from_static("text/html"));
        assert!(!accepts(&h, "application/json"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        assert!(accepts(&h, "text/event-stream"));
    }
}
