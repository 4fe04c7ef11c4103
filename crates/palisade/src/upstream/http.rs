//! The Streamable HTTP transport: an upstream reached by URL, in either era.
//!
//! Every message is its own POST; the answer is a JSON body or an SSE stream, and everything on
//! a request's stream belongs to that request (so server→client requests on it route to the
//! right call). A legacy upstream's `Mcp-Session-Id` is kept per link: when the upstream
//! forgets it (404) the link closes and the supervisor re-handshakes. Responses are hostile
//! input too: bodies and SSE events are size-limited and must parse as JSON-RPC.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use mcp_wire::era::header;
use mcp_wire::{Era, Message, RawObject, param_headers, sse};
use tokio::task::AbortHandle;

use super::{Link, Outgoing, Upstream, UpstreamError};
use crate::config;

/// Largest message (JSON body or SSE event) accepted from an HTTP upstream.
const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// The longest reconnection delay an upstream's `retry:` may ask for.
const MAX_RETRY_MS: u64 = 10_000;
/// How often an upstream may close a call's stream without sending anything new before the
/// call is failed (each close is followed by a `Last-Event-ID` reconnection).
const MAX_RESUMES_WITHOUT_PROGRESS: u32 = 3;

pub(crate) struct HttpTransport {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    url: reqwest::Url,
    headers: HeaderMap,
    session: RwLock<Option<HeaderValue>>,
    inflight: Mutex<HashMap<u64, AbortHandle>>,
    listen: Mutex<Option<AbortHandle>>,
}

impl HttpTransport {
    pub(crate) fn new(
        client: reqwest::Client,
        cfg: &config::Http,
    ) -> Result<HttpTransport, String> {
        let url = reqwest::Url::parse(&cfg.url).map_err(|e| format!("invalid url: {e}"))?;
        let mut headers = HeaderMap::new();
        for (k, v) in &cfg.headers {
            let name = HeaderName::try_from(k.as_str())
                .map_err(|_| format!("invalid header name `{k}`"))?;
            let mut value = HeaderValue::try_from(v.as_str())
                .map_err(|_| format!("invalid value for header `{k}`"))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        headers.insert(
            http::header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Ok(HttpTransport {
            inner: Arc::new(Inner {
                client,
                url,
                headers,
                session: RwLock::new(None),
                inflight: Mutex::new(HashMap::new()),
                listen: Mutex::new(None),
            }),
        })
    }

    /// POSTs one message. For a request (`call` set), the response stream is read and its
    /// messages delivered with the call as their origin.
    pub(crate) fn send(
        &self,
        up: Arc<Upstream>,
        link: Arc<Link>,
        bytes: Vec<u8>,
        call: Option<u64>,
        request: Option<Outgoing<'_>>,
    ) {
        let headers = self.inner.request_headers(&up, &link, request);
        let inner = self.inner.clone();
        let mut inflight = inner.inflight.lock().unwrap_or_else(|e| e.into_inner());
        let task_inner = inner.clone();
        let task = tokio::spawn(async move {
            if let Err(reason) = task_inner.exchange(&up, &link, headers, bytes, call).await {
                if let Some(id) = call {
                    up.finish(
                        id,
                        Err(UpstreamError::Failed {
                            server: up.name.clone(),
                            reason,
                        }),
                    );
                } else {
                    tracing::debug!(server = %up.name, %reason, "notification to upstream failed");
                }
            }
            if let Some(id) = call {
                task_inner
                    .inflight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
            }
        });
        if let Some(id) = call {
            inflight.insert(id, task.abort_handle());
        }
    }

    /// Stops reading a call's response stream (closing it is how the modern era cancels).
    pub(crate) fn abort(&self, id: u64) {
        if let Some(h) = self
            .inner
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)
        {
            h.abort();
        }
    }

    /// Opens the legacy GET stream for messages not tied to a request (list_changed, …), unless
    /// it is open already.
    pub(crate) fn open_listen_stream(&self, up: Arc<Upstream>, link: Arc<Link>) {
        let no_session = self
            .inner
            .session
            .read()
            .map(|s| s.is_none())
            .unwrap_or(true);
        let open = self
            .inner
            .listen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|h| !h.is_finished());
        if link.info().era != Era::Legacy || no_session || open {
            return;
        }
        let inner = self.inner.clone();
        let task = tokio::spawn(async move {
            let mut delay = Duration::from_secs(1);
            loop {
                match inner.listen_once(&up, &link).await {
                    Ok(ListenEnd::NotOffered) => return,
                    Ok(ListenEnd::Ended) => delay = Duration::from_secs(1),
                    Err(reason) => {
                        tracing::debug!(server = %up.name, %reason, "upstream GET stream failed")
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = link.closed.cancelled() => return,
                }
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        });
        *self.inner.listen.lock().unwrap_or_else(|e| e.into_inner()) = Some(task.abort_handle());
    }

    /// Ends the link: aborts streams and, for a legacy session, asks the upstream to end it.
    pub(crate) async fn stop(&self) {
        if let Some(h) = self
            .inner
            .listen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            h.abort();
        }
        for (_, h) in self
            .inner
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
        {
            h.abort();
        }
        let session = self.inner.session.write().ok().and_then(|mut s| s.take());
        if let Some(session) = session {
            let req = self
                .inner
                .client
                .delete(self.inner.url.clone())
                .headers(self.inner.headers.clone())
                .header(header::SESSION_ID, session)
                .timeout(Duration::from_secs(1));
            let _ = req.send().await;
        }
    }
}

enum ListenEnd {
    NotOffered,
    Ended,
}

/// How an event stream ended: what a client needs to resume it.
#[derive(Default)]
struct StreamEnd {
    last_event_id: Option<String>,
    retry_ms: Option<u64>,
}

/// How a response body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Json,
    Sse,
}

/// The framing a response's `Content-Type` names. A body is never parsed by guessing: anything
/// but JSON or an event stream is an error that names the type.
fn framing(headers: &HeaderMap) -> Result<Framing, String> {
    let Some(value) = headers.get(http::header::CONTENT_TYPE) else {
        return Err(
            "the response has no Content-Type (expected application/json or text/event-stream)"
                .into(),
        );
    };
    let text = String::from_utf8_lossy(value.as_bytes());
    let media = text.split(';').next().unwrap_or("").trim();
    if media.eq_ignore_ascii_case("text/event-stream") {
        Ok(Framing::Sse)
    } else if media.eq_ignore_ascii_case("application/json") {
        Ok(Framing::Json)
    } else {
        Err(format!(
            "the response's Content-Type `{}` is neither application/json nor text/event-stream",
            super::truncate(&text, 64)
        ))
    }
}

impl Inner {
    fn request_headers(
        &self,
        up: &Upstream,
        link: &Link,
        request: Option<Outgoing<'_>>,
    ) -> HeaderMap {
        let mut h = self.headers.clone();
        if let Some(s) = self.session.read().ok().and_then(|s| s.clone()) {
            h.insert(header::SESSION_ID, s);
        }
        // A shared server gets the call's tenant assertion as its bearer token too (it replaces
        // a configured Authorization header on such calls; see `crate::assertion`).
        let assertion = request
            .and_then(|r| r.params)
            .and_then(|p| p.get_object("_meta"))
            .and_then(|m| m.get_str(crate::assertion::META_KEY));
        if let Some(v) = assertion.and_then(|t| HeaderValue::try_from(format!("Bearer {t}")).ok()) {
            h.insert(http::header::AUTHORIZATION, v);
        }
        let handshake_done = link.info.get().is_some();
        // Modern requests repeat their method and name in headers; the handshake's
        // `server/discover` is modern before the link knows its era.
        let modern = handshake_done && link.info().era == Era::Modern
            || request.is_some_and(|r| r.method == "server/discover");
        if modern {
            h.insert(
                header::PROTOCOL_VERSION,
                HeaderValue::from_static(mcp_wire::era::MODERN),
            );
            if let Some(req) = request {
                if let Ok(v) = HeaderValue::try_from(req.method) {
                    h.insert(header::METHOD, v);
                }
                let name = mcp_wire::era::name_field(req.method)
                    .and_then(|field| req.params.and_then(|o| o.get_str(field)));
                if let Some(v) = name.as_deref().and_then(|n| HeaderValue::try_from(n).ok()) {
                    h.insert(header::NAME, v);
                }
                if let (Some(tool), "tools/call") = (&name, req.method) {
                    add_param_headers(&mut h, &up.cached_header_params(tool), req.params);
                }
            }
        } else if handshake_done
            && let Ok(v) = HeaderValue::try_from(link.info().protocol_version.as_str())
        {
            h.insert(header::PROTOCOL_VERSION, v);
        }
        h
    }

    async fn exchange(
        &self,
        up: &Arc<Upstream>,
        link: &Arc<Link>,
        headers: HeaderMap,
        bytes: Vec<u8>,
        call: Option<u64>,
    ) -> Result<(), String> {
        let resp = self
            .client
            .post(self.url.clone())
            .headers(headers)
            .body(bytes)
            .send()
            .await
            .map_err(|e| format!("request failed: {}", without_url(&e)))?;
        if let Some(s) = resp.headers().get(header::SESSION_ID)
            && let Ok(mut slot) = self.session.write()
            && slot.is_none()
        {
            *slot = Some(s.clone());
        }
        let status = resp.status();
        if status == StatusCode::NOT_FOUND
            && self.session.read().map(|s| s.is_some()).unwrap_or(false)
        {
            link.close("the upstream ended its MCP session (HTTP 404)".into());
            return Err("the upstream ended its MCP session (HTTP 404); reconnecting".into());
        }
        if status == StatusCode::ACCEPTED {
            return match call {
                Some(_) => Err("the upstream answered a request with 202 and no response".into()),
                None => Ok(()),
            };
        }
        if !status.is_success() {
            // The modern era answers some JSON-RPC errors with 4xx; the error itself is the
            // answer then, not the status.
            let json = matches!(framing(resp.headers()), Ok(Framing::Json));
            if let (Some(id), true) = (call, json && status.is_client_error()) {
                self.read_messages(up, link, resp, Some(id)).await?;
            }
            return Err(format!("HTTP {status}"));
        }
        let Some(id) = call else { return Ok(()) };
        let mut end = self.read_messages(up, link, resp, Some(id)).await?;
        // A legacy upstream may close a call's stream before answering (SSE polling) and expect
        // the client to come back for the rest with `Last-Event-ID`.
        let mut attempts = 0;
        while up.is_pending(id) {
            let Some(last) = end.last_event_id.take() else {
                break;
            };
            if attempts >= MAX_RESUMES_WITHOUT_PROGRESS {
                return Err(format!(
                    "the upstream closed the call's stream {attempts} times without sending anything new"
                ));
            }
            let retry_ms = end.retry_ms.unwrap_or(1000).min(MAX_RETRY_MS);
            up.stream_paused(id, retry_ms);
            tokio::time::sleep(Duration::from_millis(retry_ms)).await;
            let resumed = self.resume(up, link, &last, id).await?;
            attempts = if resumed.last_event_id.as_deref().is_some_and(|l| l != last) {
                0
            } else {
                attempts + 1
            };
            end = StreamEnd {
                last_event_id: resumed.last_event_id.or(Some(last)),
                retry_ms: resumed.retry_ms.or(end.retry_ms),
            };
        }
        if up.is_pending(id) {
            return Err("the upstream closed its response without answering".into());
        }
        Ok(())
    }

    /// Reopens a legacy session's stream after `last` (`GET` with `Last-Event-ID`); what it
    /// carries belongs to `call`, whose stream it resumes.
    async fn resume(
        &self,
        up: &Arc<Upstream>,
        link: &Arc<Link>,
        last: &str,
        call: u64,
    ) -> Result<StreamEnd, String> {
        let last = HeaderValue::try_from(last)
            .map_err(|_| "the upstream sent an event id that cannot be sent back".to_string())?;
        let resp = self
            .get_stream(up, link, Some(last))
            .await
            .map_err(|e| format!("resuming the call's stream failed: {}", without_url(&e)))?;
        if !resp.status().is_success() {
            return Err(format!(
                "resuming the call's stream failed: HTTP {}",
                resp.status()
            ));
        }
        self.read_messages(up, link, resp, Some(call)).await
    }

    /// Delivers every message of a response, framed as its `Content-Type` says: one JSON-RPC
    /// message (`application/json`) or an event stream (`text/event-stream`). Returns when it
    /// ends, with what is needed to resume an event stream; the caller treats a call still
    /// pending after that as failed or resumes it.
    async fn read_messages(
        &self,
        up: &Arc<Upstream>,
        link: &Arc<Link>,
        resp: reqwest::Response,
        origin: Option<u64>,
    ) -> Result<StreamEnd, String> {
        let framing = framing(resp.headers())?;
        let mut body = resp.bytes_stream();
        if framing == Framing::Json {
            let mut buf = Vec::new();
            while let Some(chunk) = body.next().await {
                let chunk = chunk
                    .map_err(|e| format!("reading the response failed: {}", without_url(&e)))?;
                if buf.len() + chunk.len() > MAX_MESSAGE {
                    return Err(format!("the response exceeds {MAX_MESSAGE} bytes"));
                }
                buf.extend_from_slice(&chunk);
            }
            let msg = Message::parse(&buf)
                .map_err(|e| format!("the response is not a JSON-RPC message: {e}"))?;
            up.on_message(link, msg, origin);
            return Ok(StreamEnd::default());
        }
        let mut decoder = sse::Decoder::new(MAX_MESSAGE);
        while let Some(chunk) = body.next().await {
            let chunk = chunk
                .map_err(|e| format!("reading the event stream failed: {}", without_url(&e)))?;
            decoder.push(&chunk);
            while let Some(event) = decoder.next_event().map_err(|e| e.to_string())? {
                // Priming events carry only an id (and a retry delay).
                if event.data.trim().is_empty() {
                    continue;
                }
                match Message::parse(event.data.as_bytes()) {
                    Ok(msg) => up.on_message(link, msg, origin),
                    Err(e) => return Err(format!("an event is not a JSON-RPC message: {e}")),
                }
            }
        }
        Ok(StreamEnd {
            last_event_id: decoder.last_event_id().map(str::to_owned),
            retry_ms: decoder.retry_ms(),
        })
    }

    /// `GET` on the session: its stream of messages not tied to a request, or with `last` the
    /// rest of a stream that was closed.
    async fn get_stream(
        &self,
        up: &Arc<Upstream>,
        link: &Arc<Link>,
        last: Option<HeaderValue>,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let mut headers = self.request_headers(up, link, None);
        headers.insert(
            http::header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.remove(http::header::CONTENT_TYPE);
        if let Some(last) = last {
            headers.insert(header::LAST_EVENT_ID, last);
        }
        self.client
            .get(self.url.clone())
            .headers(headers)
            .send()
            .await
    }

    async fn listen_once(&self, up: &Arc<Upstream>, link: &Arc<Link>) -> Result<ListenEnd, String> {
        let resp = self
            .get_stream(up, link, None)
            .await
            .map_err(|e| format!("GET failed: {}", without_url(&e)))?;
        match resp.status() {
            StatusCode::METHOD_NOT_ALLOWED => return Ok(ListenEnd::NotOffered),
            s if !s.is_success() => return Err(format!("GET answered HTTP {s}")),
            _ => {}
        }
        self.read_messages(up, link, resp, None).await?;
        Ok(ListenEnd::Ended)
    }
}

/// As a client of a modern upstream, mirror annotated arguments into `Mcp-Param-*` headers.
fn add_param_headers(
    h: &mut HeaderMap,
    params: &[param_headers::HeaderParam],
    body: Option<&RawObject>,
) {
    let args = body.and_then(|b| b.get_object("arguments"));
    for p in params {
        let value = args
            .as_ref()
            .and_then(|a| a.get(&p.property))
            .and_then(|v| serde_json::from_str::<serde_json::Value>(v.get()).ok());
        let encoded = value.as_ref().and_then(param_headers::encode);
        let name = HeaderName::try_from(format!("{}{}", header::PARAM_PREFIX, p.header));
        if let (Some(encoded), Ok(name)) = (encoded, name)
            && let Ok(v) = HeaderValue::try_from(encoded)
        {
            h.insert(name, v);
        }
    }
}

/// reqwest errors print the URL, which may carry credentials in its query; leave it out.
fn without_url(e: &reqwest::Error) -> String {
    let mut e = e.to_string();
    if let Some(i) = e.find(" for url (") {
        e.truncate(i);
    }
    e
}
