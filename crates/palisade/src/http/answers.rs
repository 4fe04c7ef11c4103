//! How `/mcp` answers: one JSON message, or an SSE stream (resumable for a legacy session, with
//! `Last-Event-ID` replay; plain for a modern client, where closing it cancels the call), and
//! calls parked for a modern client's input.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use mcp_wire::jsonrpc::{self, ErrorCode};
use mcp_wire::sse;
use tokio::sync::mpsc;

use super::gates::challenge;
use crate::gateway::Gateway;
use crate::listens::Listen;
use crate::pipeline::{Answer, Forward, Out};
use crate::resume;
use crate::session::Session;

pub(super) const KEEPALIVE_EVERY: Duration = Duration::from_secs(15);

/// One message for the client: plain JSON, or, for a client that prefers event streams, a
/// stream of that one event (in a legacy session a resumable one: a priming event first, the
/// event with its id). Errors with their own HTTP status are always JSON.
pub(super) fn one_message(
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
pub(super) fn prefers_event_stream(headers: &HeaderMap) -> bool {
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
pub(super) async fn call_response(
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
                Err(answer) => refusal_response(gw, None, false, answer),
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
pub(super) fn resumable_call(session: Arc<Session>, mut fwd: Forward, first: Out) -> Response {
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
pub(super) fn replay_body(first: Vec<Bytes>, live: Option<mpsc::Receiver<Bytes>>) -> Body {
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
pub(super) fn park(
    gw: &Gateway,
    state: String,
    fwd: Forward,
    subject: Arc<str>,
) -> Result<(), Answer> {
    let ttl = fwd.timeout();
    let limit = gw.config().limits.max_parked_per_tenant;
    gw.parked
        .park(state, fwd, subject, ttl, limit)
        .inspect_err(|_| gw.metrics.rejected("parked_limit"))
}

pub(super) fn event(message: &[u8]) -> Bytes {
    Bytes::from(sse::encode(None, message))
}

pub(super) fn sse_body(body: Body) -> Response {
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
pub(super) fn sse_response(
    gw: &Arc<Gateway>,
    rx: mpsc::Receiver<Vec<u8>>,
    listen: Listen,
) -> Response {
    let draining = gw.draining.clone();
    let expiry = listen.expires_at_secs.map(|at| {
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
pub(super) fn standalone_response(
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

/// A refusal as the client gets it: an ordinary message, or a plain JSON response with its
/// status, `Retry-After` and `insufficient_scope` challenge.
pub(super) fn refusal_response(
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

pub(super) fn json(status: StatusCode, body: Vec<u8>) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub(super) fn rpc_error(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    json(status, jsonrpc::error(None, code, message, None))
}

pub(super) fn method_not_allowed(message: &str) -> Response {
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
}
