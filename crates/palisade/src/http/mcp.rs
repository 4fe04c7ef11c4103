//! The MCP endpoint (`/mcp`), Streamable HTTP in both eras.
//!
//! Every request passes the same gates, in this order: Origin/Host (403) → Accept (406) and
//! Content-Type (415) → authentication (401) → body limit (413) → JSON-RPC parse (400) → era
//! detection and the era's header checks (400) → session (400 missing / 404 unknown) → dispatch.
//! A forwarded call answers with plain JSON when the upstream sends nothing before its response,
//! and switches to an SSE stream as soon as there is something else to relay first.
//!
//! Here: the handlers (`post`, `get`, `delete`) and `respond`. `gates.rs`: the gates.
//! `answers.rs`: JSON and SSE answers, resumable streams, parking, refusals.

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use mcp_wire::era::{self, header as mcp_header};
use mcp_wire::jsonrpc::{self, ErrorCode};
use mcp_wire::{Era, Message};

use super::answers::{
    call_response, json, method_not_allowed, one_message, prefers_event_stream, refusal_response,
    replay_body, rpc_error, sse_body, sse_response, standalone_response,
};
use super::gates::{Need, detect_era, gates, header_str, param_headers, session_of};
use crate::auth::Principal;
use crate::dispatch::{self, ModernHeaders, Reply};
use crate::gateway::Gateway;
use crate::http::conn::ClientConn;
use crate::pipeline::Caller;
use crate::resume::{self, Replayed, ResumeError};
use crate::session::Session;

pub(crate) async fn post(
    State(gw): State<Arc<Gateway>>,
    conn: Option<Extension<Arc<ClientConn>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (principal, tenant) = match gates(&gw, conn, &headers, Need::Post).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let tenant = &*tenant;
    let config = gw.config();
    let within = Duration::from_millis(config.listen.body_read_timeout_ms);
    let read = axum::body::to_bytes(body, config.limits.max_body_bytes);
    let bytes = match tokio::time::timeout(within, read).await {
        Ok(Ok(b)) => b,
        Err(_) => {
            gw.metrics.rejected("body_timeout");
            return rpc_error(
                StatusCode::REQUEST_TIMEOUT,
                ErrorCode::INVALID_REQUEST,
                "the request body did not arrive in time (listen.body_read_timeout_ms)",
            );
        }
        Ok(Err(_)) => {
            gw.metrics.rejected("body_too_large");
            let msg = format!(
                "request body exceeds the limit of {} bytes (limits.max_body_bytes)",
                gw.config().limits.max_body_bytes
            );
            return rpc_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::INVALID_REQUEST,
                &msg,
            );
        }
    };
    if jsonrpc::nests_deeper_than(&bytes, config.limits.max_json_depth) {
        gw.metrics.rejected("too_deep");
        let msg = format!(
            "the message nests arrays and objects deeper than {} levels (limits.max_json_depth)",
            config.limits.max_json_depth
        );
        return rpc_error(StatusCode::BAD_REQUEST, ErrorCode::INVALID_REQUEST, &msg);
    }
    let msg = match Message::parse(&bytes) {
        Ok(m) => m,
        Err(e) => {
            gw.metrics.rejected("malformed");
            return json(
                StatusCode::BAD_REQUEST,
                jsonrpc::error(None, e.code(), &e.to_string(), None),
            );
        }
    };
    let sse_first = prefers_event_stream(&headers);
    let era = match detect_era(&headers, &msg) {
        Ok(era) => era,
        Err(r) => return r,
    };
    if era == Era::Modern {
        if let Message::Request(req) = &msg {
            let h = ModernHeaders {
                protocol_version: header_str(&headers, mcp_header::PROTOCOL_VERSION),
                method: header_str(&headers, mcp_header::METHOD),
                name: header_str(&headers, mcp_header::NAME),
            };
            if let Err((status, body)) =
                dispatch::check_modern(&req.method, req.params.as_deref(), Some(&req.id), &h)
            {
                gw.metrics.rejected("bad_headers");
                return json(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
                    body,
                );
            }
        }
        let caller = Caller {
            tenant,
            subject: principal.subject.clone(),
            scopes: principal.scopes.clone(),
            era,
            session: None,
            param_headers: param_headers(&headers),
        };
        return respond(&gw, &principal, &caller, sse_first, msg).await;
    }
    // Legacy: everything but `initialize` belongs to a session.
    let is_initialize = matches!(&msg, Message::Request(r) if r.method == "initialize");
    let session = if is_initialize {
        None
    } else {
        match session_of(&gw, &headers, &principal, tenant).await {
            Ok(s) => Some(s),
            Err(r) => return r,
        }
    };
    let caller = Caller {
        tenant,
        subject: principal.subject.clone(),
        scopes: principal.scopes.clone(),
        era,
        session,
        param_headers: Vec::new(),
    };
    respond(&gw, &principal, &caller, sse_first, msg).await
}

async fn respond(
    gw: &Arc<Gateway>,
    principal: &Principal,
    caller: &Caller<'_>,
    sse_first: bool,
    msg: Message,
) -> Response {
    let reply = match msg {
        Message::Request(req) => dispatch::request(gw, principal, caller, req).await,
        Message::Notification(n) => {
            dispatch::notification(gw, caller, &n).await;
            Reply::Accepted
        }
        Message::Response(resp) => {
            dispatch::response(gw, caller, resp).await;
            Reply::Accepted
        }
    };
    match reply {
        Reply::Message(body) => {
            one_message(caller.session.as_ref(), sse_first, StatusCode::OK, body)
        }
        Reply::Refused(answer) => refusal_response(gw, caller.session.as_ref(), sse_first, answer),
        Reply::Accepted => StatusCode::ACCEPTED.into_response(),
        Reply::Initialized { body, session } => {
            let mut r = one_message(Some(&session), sse_first, StatusCode::OK, body);
            if let Ok(v) = HeaderValue::from_str(&session.id) {
                r.headers_mut().insert(mcp_header::SESSION_ID, v);
            }
            r
        }
        Reply::Call(fwd) => {
            let session = caller.session.clone();
            call_response(gw, session, caller.subject.clone(), sse_first, *fwd).await
        }
        Reply::Stream { rx, listen } => sse_response(gw, rx, listen),
    }
}

/// GET: the legacy era's stream for messages not tied to a request, or, with `Last-Event-ID`,
/// the rest of a stream that broke.
pub(crate) async fn get(
    State(gw): State<Arc<Gateway>>,
    conn: Option<Extension<Arc<ClientConn>>>,
    headers: HeaderMap,
) -> Response {
    let (principal, tenant) = match gates(&gw, conn, &headers, Need::Get).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    if header_str(&headers, mcp_header::PROTOCOL_VERSION) == Some(era::MODERN) {
        return method_not_allowed(
            "GET is not part of protocol version 2026-07-28; use subscriptions/listen",
        );
    }
    let session = match session_of(&gw, &headers, &principal, &tenant).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let (log, missed) = match header_str(&headers, mcp_header::LAST_EVENT_ID) {
        Some(last) => match session.streams.resume(last) {
            Ok((log, attached)) if !log.standalone => {
                return sse_body(replay_body(attached.missed, attached.live));
            }
            // The standalone stream goes on, after what the client missed.
            Ok((log, attached)) => (log, attached.missed),
            // Another replica served the stream: what the fleet kept of it.
            Err(ResumeError::Unknown(_))
                if let Some(replayed) = replay_elsewhere(&gw, &session, last).await =>
            {
                if !replayed.standalone {
                    // A call's stream: what it carried since; while the call goes on there,
                    // the client comes back for more after the priming event's retry delay.
                    return sse_body(replay_body(replayed.missed, None));
                }
                let log = session.streams.open_standalone();
                let mut missed = replayed.missed;
                missed.push(log.priming());
                (log, missed)
            }
            Err(e) => {
                gw.metrics.rejected("resume");
                return rpc_error(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::INVALID_REQUEST,
                    &e.to_string(),
                );
            }
        },
        None => {
            let log = session.streams.open_standalone();
            let priming = log.priming();
            (log, vec![priming])
        }
    };
    let Some((tx, rx)) = session.open_stream() else {
        return rpc_error(
            StatusCode::CONFLICT,
            ErrorCode::INVALID_REQUEST,
            "this session already has an open GET stream",
        );
    };
    // A resumed standalone stream is live again: it no longer expires.
    log.reopen();
    dispatch::relay_to_session(&gw, &tenant, &session, tx);
    standalone_response(&gw, rx, session, log, missed)
}

/// What the fleet kept of the stream a `Last-Event-ID` names, when this replica did not serve
/// it; `None` without a fleet key, when the fleet keeps nothing of it, or its events after the
/// id are gone (the client is told to send the request again, as for an unknown stream).
async fn replay_elsewhere(gw: &Gateway, session: &Session, last: &str) -> Option<Replayed> {
    let sharing = gw.sessions.sharing()?;
    let (stream, seq) = resume::parse_event_id(last)?;
    match sharing.store.replay(session.handle(), stream, seq).await {
        Ok(Some(Ok(replayed))) => Some(replayed),
        Ok(_) => None,
        Err(_) => {
            gw.metrics.session_store_failed();
            None
        }
    }
}

/// DELETE: ends a legacy session.
pub(crate) async fn delete(
    State(gw): State<Arc<Gateway>>,
    conn: Option<Extension<Arc<ClientConn>>>,
    headers: HeaderMap,
) -> Response {
    let (principal, tenant) = match gates(&gw, conn, &headers, Need::Delete).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    if header_str(&headers, mcp_header::PROTOCOL_VERSION) == Some(era::MODERN) {
        return method_not_allowed(
            "DELETE is not part of protocol version 2026-07-28: there are no sessions",
        );
    }
    let session = match session_of(&gw, &headers, &principal, &tenant).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    gw.sessions.end(&session.id).await;
    StatusCode::NO_CONTENT.into_response()
}

// ---- gates ---------------------------------------------------------------------------------
