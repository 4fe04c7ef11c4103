//! The MCP endpoint (`/mcp`), Streamable HTTP in both eras.
//!
//! Every request passes the same gates, in this order: Origin/Host (403) → Accept (406) and
//! Content-Type (415) → authentication (401) → body limit (413) → JSON-RPC parse (400) → era
//! detection and the era's header checks (400) → session (400 missing / 404 unknown) → dispatch.
//! A forwarded call answers with plain JSON when the upstream sends nothing before its response,
//! and switches to an SSE stream as soon as there is something else to relay first.

// The gates below return the finished error `Response` as their `Err`: it is what the handler
// sends, and boxing it would only add an allocation to the error path.
#![allow(clippy::result_large_err)]

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use mcp_wire::era::{self, header as mcp_header, meta};
use mcp_wire::jsonrpc::{self, ErrorCode};
use mcp_wire::{Era, Message, RawObject, sse};
use tokio::sync::mpsc;

use crate::auth::{AuthError, Principal};
use crate::dispatch::{self, ModernHeaders, Reply};
use crate::gateway::Gateway;
use crate::http::conn::ClientConn;
use crate::listens::Listen;
use crate::pipeline::{Answer, Caller, Forward, Out};
use crate::registry::Tenant;
use crate::resume;
use crate::session::Session;

const KEEPALIVE_EVERY: Duration = Duration::from_secs(15);

pub async fn post(
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
        match session_of(&gw, &headers, &principal) {
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
            dispatch::notification(caller, &n);
            Reply::Accepted
        }
        Message::Response(resp) => {
            dispatch::response(caller, resp).await;
            Reply::Accepted
        }
    };
    match reply {
        Reply::Message(body) => {
            one_message(caller.session.as_ref(), sse_first, StatusCode::OK, body)
        }
        Reply::Refused(answer) => refusal(gw, caller.session.as_ref(), sse_first, answer),
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

/// One message for the client: plain JSON, or, for a client that prefers event streams, a
/// stream of that one event (in a legacy session a resumable one: a priming event first, the
/// event with its id). Errors with their own HTTP status are always JSON.
fn one_message(
    session: Option<&Arc<Session>>,
    sse_first: bool,
    status: StatusCode,
    body: Vec<u8>,
) -> Response {
    if !sse_first || status != StatusCode::OK {
        return json(status, body);
    }
    let bytes = match session {
        Some(session) => {
            let log = session.streams.open();
            let (message, _) = session.streams.push(&log, &body);
            log.finish();
            [log.priming(), message].concat()
        }
        None => sse::encode(None, &body),
    };
    sse_body(Body::from(bytes))
}

/// Whether a client prefers an event stream to JSON for a single message: a higher `q` in
/// `Accept`, or at equal `q` the type it lists first. Clients must take both; most list JSON
/// first, and get it.
fn prefers_event_stream(headers: &HeaderMap) -> bool {
    let mut json = None;
    let mut sse = None;
    let mut position = 0usize;
    for value in headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        for item in value.split(',') {
            let mut parts = item.split(';');
            let media = parts.next().unwrap_or("").trim();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            position += 1;
            let slot = if media.eq_ignore_ascii_case("application/json") {
                &mut json
            } else if media.eq_ignore_ascii_case("text/event-stream") {
                &mut sse
            } else {
                continue;
            };
            slot.get_or_insert((q, position));
        }
    }
    match (sse, json) {
        (Some((qs, ps)), Some((qj, pj))) => qs > qj || (qs == qj && ps < pj),
        (Some(_), None) => true,
        _ => false,
    }
}

/// JSON if the first thing the upstream sends is the response; otherwise SSE: a resumable
/// stream for a legacy session, a plain one for a modern client (2026-07-28 removed
/// resumability; closing its stream cancels the call).
async fn call_response(
    gw: &Arc<Gateway>,
    session: Option<Arc<Session>>,
    subject: Arc<str>,
    sse_first: bool,
    mut fwd: Forward,
) -> Response {
    let first = match fwd.next().await {
        Some(Out::Final(body)) => {
            let status = StatusCode::from_u16(fwd.status()).unwrap_or(StatusCode::OK);
            return one_message(session.as_ref(), sse_first, status, body);
        }
        Some(Out::Park { body, state }) => {
            return match park(gw, state, fwd, subject) {
                Ok(()) => json(StatusCode::OK, body),
                Err(answer) => refusal(gw, None, false, answer),
            };
        }
        Some(Out::Cancelled) | None => return StatusCode::ACCEPTED.into_response(),
        Some(first) => first,
    };
    if let Some(session) = session {
        return resumable_call(session, fwd, first);
    }
    let Out::Message(first) = first else {
        // Only legacy sessions are asked to pause.
        return StatusCode::ACCEPTED.into_response();
    };
    // Calls in flight are not cut off by draining: shutdown gives them the grace period.
    let gw = gw.clone();
    let stream = futures_util::stream::unfold((Some(first), Some(fwd)), move |(first, fwd)| {
        let gw = gw.clone();
        let subject = subject.clone();
        async move {
            let mut fwd = fwd?;
            if let Some(m) = first {
                return Some((event(&m), (None, Some(fwd))));
            }
            tokio::select! {
                out = fwd.next() => match out {
                    Some(Out::Message(m)) | Some(Out::Final(m)) => Some((event(&m), (None, Some(fwd)))),
                    Some(Out::Park { body, state }) => match park(&gw, state, fwd, subject) {
                        Ok(()) => Some((event(&body), (None, None))),
                        Err(answer) => Some((event(&answer.body), (None, None))),
                    },
                    Some(Out::Cancelled) | Some(Out::Pause { .. }) | None => None,
                },
                _ = tokio::time::sleep(KEEPALIVE_EVERY) => Some((Bytes::from_static(sse::KEEPALIVE), (None, Some(fwd)))),
            }
        }
    });
    sse_body(Body::from_stream(stream.map(Ok::<_, Infallible>)))
}

/// A legacy session's call answered as a resumable stream. The call runs to its end whether or
/// not the client stays connected (in the legacy era a broken stream is not a cancellation;
/// `notifications/cancelled` is): every message is recorded for a client that resumes with
/// `Last-Event-ID`, and sent to the one that is connected.
fn resumable_call(session: Arc<Session>, mut fwd: Forward, first: Out) -> Response {
    let log = session.streams.open();
    let live = log.connect();
    let priming = log.priming();
    let driven = log.clone();
    tokio::spawn(async move {
        let mut next = Some(first);
        loop {
            let out = match next.take() {
                Some(out) => out,
                None => tokio::select! {
                    out = fwd.next() => match out {
                        Some(out) => out,
                        None => break,
                    },
                    _ = session.closed.cancelled() => break,
                },
            };
            match out {
                Out::Message(ref m) | Out::Final(ref m) => {
                    let (event, live) = session.streams.push(&driven, m);
                    if let Some(tx) = live {
                        let _ = tx.send(event).await;
                    }
                    if matches!(out, Out::Final(_)) {
                        break;
                    }
                }
                Out::Pause { retry_ms } => {
                    // Mirror the upstream: the client is asked to come back after the delay.
                    if let Some(tx) = driven.live() {
                        let _ = tx.send(Bytes::from(format!("retry: {retry_ms}\n\n"))).await;
                    }
                    driven.detach();
                }
                Out::Cancelled | Out::Park { .. } => break,
            }
        }
        driven.finish();
    });
    sse_body(replay_body(vec![priming], Some(live)))
}

/// An event stream of `first` events, then the live ones until their sender goes away, with
/// keep-alives while nothing happens.
fn replay_body(first: Vec<Bytes>, live: Option<mpsc::Receiver<Bytes>>) -> Body {
    let head = futures_util::stream::iter(first);
    let tail = futures_util::stream::unfold(live, |live| async move {
        let mut rx = live?;
        tokio::select! {
            event = rx.recv() => event.map(|e| (e, Some(rx))),
            _ = tokio::time::sleep(KEEPALIVE_EVERY) => Some((Bytes::from_static(sse::KEEPALIVE), Some(rx))),
        }
    });
    Body::from_stream(head.chain(tail).map(Ok::<_, Infallible>))
}

/// Parks a call waiting for input; `Err` is the error to send instead when the tenant has
/// too many parked already (the call is then dropped, which cancels it upstream).
fn park(gw: &Gateway, state: String, fwd: Forward, subject: Arc<str>) -> Result<(), Answer> {
    let ttl = fwd.timeout();
    let limit = gw.config().limits.max_parked_per_tenant;
    gw.parked
        .park(state, fwd, subject, ttl, limit)
        .inspect_err(|_| gw.metrics.rejected("parked_limit"))
}

fn event(message: &[u8]) -> Bytes {
    Bytes::from(sse::encode(None, message))
}

fn sse_body(body: Body) -> Response {
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// A `subscriptions/listen` stream: ends when the client goes, the gateway drains, or the
/// credential it was opened with expires or is revoked.
fn sse_response(gw: &Arc<Gateway>, rx: mpsc::Receiver<Vec<u8>>, listen: Listen) -> Response {
    let draining = gw.draining.clone();
    let expiry = listen.expires_at.map(|at| {
        let left = at.saturating_sub(crate::auth::now_ms() / 1000).max(0);
        tokio::time::Instant::now() + Duration::from_secs(left.unsigned_abs())
    });
    let stream = futures_util::stream::unfold((rx, listen), move |(mut rx, listen)| {
        let draining = draining.clone();
        async move {
            let expired = async {
                match expiry {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                m = rx.recv() => m.map(|m| (event(&m), (rx, listen))),
                _ = tokio::time::sleep(KEEPALIVE_EVERY) => Some((Bytes::from_static(sse::KEEPALIVE), (rx, listen))),
                _ = draining.cancelled() => None,
                _ = listen.end.cancelled() => None,
                _ = expired => None,
            }
        }
    });
    sse_body(Body::from_stream(stream.map(Ok::<_, Infallible>)))
}

/// A legacy session's standalone stream: `first` (its priming event, or what a resuming client
/// missed), then messages from `rx`, each recorded on `log` under its event id; ends when the
/// session closes or the gateway drains.
fn standalone_response(
    gw: &Arc<Gateway>,
    rx: mpsc::Receiver<Vec<u8>>,
    session: Arc<Session>,
    log: Arc<resume::Log>,
    first: Vec<Bytes>,
) -> Response {
    let draining = gw.draining.clone();
    let head = futures_util::stream::iter(first);
    // When this response goes away the stream ends, but stays resumable for a while.
    let guard = Arc::new(resume::FinishOnDrop(log));
    let tail = futures_util::stream::unfold(rx, move |mut rx| {
        let draining = draining.clone();
        let session = session.clone();
        let guard = guard.clone();
        async move {
            tokio::select! {
                m = rx.recv() => m.map(|m| (session.streams.push(&guard.0, &m).0, rx)),
                _ = tokio::time::sleep(KEEPALIVE_EVERY) => Some((Bytes::from_static(sse::KEEPALIVE), rx)),
                _ = session.closed.cancelled() => None,
                _ = draining.cancelled() => None,
            }
        }
    });
    sse_body(Body::from_stream(head.chain(tail).map(Ok::<_, Infallible>)))
}

/// GET: the legacy era's stream for messages not tied to a request, or, with `Last-Event-ID`,
/// the rest of a stream that broke.
pub async fn get(
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
    let session = match session_of(&gw, &headers, &principal) {
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

/// DELETE: ends a legacy session.
pub async fn delete(
    State(gw): State<Arc<Gateway>>,
    conn: Option<Extension<Arc<ClientConn>>>,
    headers: HeaderMap,
) -> Response {
    let (principal, _tenant) = match gates(&gw, conn, &headers, Need::Delete).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    if header_str(&headers, mcp_header::PROTOCOL_VERSION) == Some(era::MODERN) {
        return method_not_allowed(
            "DELETE is not part of protocol version 2026-07-28: there are no sessions",
        );
    }
    let session = match session_of(&gw, &headers, &principal) {
        Ok(s) => s,
        Err(r) => return r,
    };
    gw.sessions.remove(&session.id);
    StatusCode::NO_CONTENT.into_response()
}

// ---- gates ---------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Need {
    Post,
    Get,
    Delete,
}

/// Origin/Host, Accept, Content-Type and authentication; the principal and its tenant. A
/// connection that authenticates no longer counts against its source address.
async fn gates(
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
fn refused(gw: &Gateway, e: &AuthError) -> Response {
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
fn challenge(gw: &Gateway, error: Option<&str>, scopes: Option<&str>) -> Option<HeaderValue> {
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
fn check_origin_and_host(gw: &Gateway, headers: &HeaderMap) -> Result<(), String> {
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
fn host_part(s: &str) -> &str {
    let s = s.split('/').next().unwrap_or(s);
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    s.rsplit_once(':').map_or(s, |(h, _)| h)
}

fn is_loopback_name(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn accepts(headers: &HeaderMap, mime: &str) -> bool {
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
fn detect_era(headers: &HeaderMap, msg: &Message) -> Result<Era, Response> {
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

fn session_of(
    gw: &Gateway,
    headers: &HeaderMap,
    principal: &Principal,
) -> Result<Arc<Session>, Response> {
    let Some(id) = header_str(headers, mcp_header::SESSION_ID) else {
        gw.metrics.rejected("no_session");
        return Err(rpc_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::INVALID_REQUEST,
            "the Mcp-Session-Id header is required: send initialize first",
        ));
    };
    gw.sessions.get(id, principal).map_err(|_| {
        gw.metrics.rejected("unknown_session");
        rpc_error(
            StatusCode::NOT_FOUND,
            ErrorCode::INVALID_REQUEST,
            "session not found: it ended or expired; send initialize again",
        )
    })
}

/// The `Mcp-Param-*` headers, by lowercase suffix.
fn param_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter_map(|(name, value)| {
            let suffix = name.as_str().strip_prefix(mcp_header::PARAM_PREFIX)?;
            Some((suffix.to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect()
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A refusal as the client gets it: an ordinary message, or a plain JSON response with its
/// status, `Retry-After` and `insufficient_scope` challenge.
fn refusal(
    gw: &Gateway,
    session: Option<&Arc<Session>>,
    sse_first: bool,
    answer: Answer,
) -> Response {
    let Some(status) = answer.status else {
        return one_message(session, sse_first, StatusCode::OK, answer.body);
    };
    let mut r = json(
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        answer.body,
    );
    if let Some(secs) = answer.retry_after_secs {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if let Some(scopes) = answer.challenge_scopes
        && let Some(v) = challenge(gw, Some("insufficient_scope"), Some(&scopes))
    {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

fn json(status: StatusCode, body: Vec<u8>) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn rpc_error(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    json(status, jsonrpc::error(None, code, message, None))
}

fn method_not_allowed(message: &str) -> Response {
    let mut r = rpc_error(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::INVALID_REQUEST,
        message,
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    r
}

#[cfg(test)]
mod tests {
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
    fn event_stream_preference_follows_q_then_order() {
        let prefers = |accept: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, HeaderValue::from_static(accept));
            prefers_event_stream(&h)
        };
        assert!(!prefers("application/json, text/event-stream"));
        assert!(prefers("text/event-stream, application/json"));
        assert!(!prefers("text/event-stream;q=0.5, application/json"));
        assert!(prefers("application/json;q=0.8, text/event-stream"));
        assert!(!prefers("*/*"));
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
