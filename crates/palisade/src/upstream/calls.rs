//! The call table: every request in flight on an upstream, by gateway id.
//!
//! [`Upstream::call`] picks the instance and link, gives the request a gateway id (so client
//! ids never collide upstream), swaps the client's progress token for that id
//! ([`prepare_params`]) and registers a [`PendingCall`]; the caller holds a [`CallHandle`] and
//! reads [`Step`]s from it. [`Upstream::finish`] ends a call with its outcome; a call whose
//! handle is dropped first is cancelled upstream. Events wait for a slow client only within
//! [`MAX_QUEUED_EVENTS`] and [`MAX_QUEUED_EVENT_BYTES`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mcp_wire::era::meta;
use mcp_wire::jsonrpc;
use mcp_wire::{Era, Id, RawObject};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

use super::link::{Link, Readiness, Transport};
use super::{
    ClientDefaults, Outcome, Outgoing, Route, TRAILING, Upstream, UpstreamError, handshake,
};

/// Something the upstream sent during a call, for the client that made it.
#[derive(Debug)]
pub enum CallEvent {
    /// A notification, with its progress token already restored to the client's.
    Notification {
        method: String,
        params: Option<Box<RawValue>>,
    },
    /// A server→client request (sampling, elicitation, roots); answer with [`Upstream::respond`].
    Request {
        upstream_id: Id,
        method: String,
        params: Option<Box<RawValue>>,
    },
    /// An HTTP upstream closed the call's event stream before answering, to be polled: the
    /// gateway resumes it after `retry_ms` (SSE polling, 2025-11-25).
    Paused { retry_ms: u64 },
}

impl CallEvent {
    /// Its size against the call's queue budget ([`MAX_QUEUED_EVENT_BYTES`]).
    fn size(&self) -> usize {
        match self {
            CallEvent::Notification { method, params }
            | CallEvent::Request { method, params, .. } => {
                method.len() + params.as_ref().map_or(0, |p| p.get().len())
            }
            CallEvent::Paused { .. } => 0,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            CallEvent::Notification { .. } => "notification",
            CallEvent::Request { .. } => "request",
            CallEvent::Paused { .. } => "pause",
        }
    }
}

/// How far a call's client may fall behind its upstream: at most this many events, and this many
/// bytes of them (or one event of any size), wait for the client to read its stream. Beyond
/// that, notifications for the call are dropped and requests refused to the upstream, counted
/// in `palisade_call_events_dropped_total`; the call itself goes on and its result is kept.
/// So a client that never reads holds at most this much of the gateway's memory per call, plus
/// what its connection buffers (hyper's write buffer, about 400 KiB).
pub(super) const MAX_QUEUED_EVENTS: usize = 64;

pub(super) const MAX_QUEUED_EVENT_BYTES: usize = 4 << 20;

pub(super) struct PendingCall {
    pub(super) route: Route,
    /// Parked: waiting for a modern client to come back with input; not a candidate owner of
    /// messages the upstream sends on its own.
    pub(super) waiting_on_client: bool,
    pub(super) events: mpsc::Sender<CallEvent>,
    /// Bytes of `events` the client has not read yet.
    pub(super) queued: Arc<AtomicUsize>,
    pub(super) done: oneshot::Sender<Outcome>,
    pub(super) client_progress_token: Option<Box<RawValue>>,
    pub(super) link: u64,
    pub(super) started: u64,
}

/// The client side of one call in flight. Dropping it before the outcome cancels the call
/// upstream (a client that goes away cancels its work).
pub struct CallHandle {
    pub(super) upstream: Arc<Upstream>,
    pub(super) id: u64,
    pub(super) events: mpsc::Receiver<CallEvent>,
    pub(super) queued: Arc<AtomicUsize>,
    pub(super) done: oneshot::Receiver<Outcome>,
    pub(super) deadline: tokio::time::Instant,
    /// The timeout the deadline came from, for the error.
    pub(super) timeout_ms: u64,
    pub(super) finished: bool,
}

impl CallHandle {
    /// Replaces the server's call timeout for this call (a tool's own, `tool_timeouts_ms`).
    pub(crate) fn set_timeout(&mut self, ms: u64) {
        let started = self.deadline - Duration::from_millis(self.timeout_ms);
        self.deadline = started + Duration::from_millis(ms);
        self.timeout_ms = ms;
    }

    /// This call's timeout in milliseconds.
    pub(crate) fn timeout_ms(&self) -> u64 {
        self.timeout_ms
    }
}

/// What [`CallHandle::next`] yields.
pub enum Step {
    Event(CallEvent),
    Done(Outcome),
}

impl CallHandle {
    /// The instance the call runs on (in a pool, not always the one it was sent to).
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// The next event, or the outcome. Past the deadline the call is cancelled upstream.
    pub async fn next(&mut self) -> Step {
        if self.finished {
            return Step::Done(Err(UpstreamError::Failed {
                server: self.upstream.name.clone(),
                reason: "call already finished".into(),
            }));
        }
        let step = tokio::select! {
            biased;
            Some(ev) = self.events.recv() => {
                self.queued.fetch_sub(ev.size(), Ordering::Relaxed);
                return Step::Event(ev);
            }
            outcome = &mut self.done => outcome.unwrap_or_else(|_| Err(UpstreamError::Lost {
                server: self.upstream.name.clone(),
                reason: "the connection closed".into(),
            })),
            _ = tokio::time::sleep_until(self.deadline) => {
                self.upstream.cancel(self.id, "timeout");
                Err(UpstreamError::Timeout {
                    server: self.upstream.name.clone(),
                    ms: self.timeout_ms,
                })
            }
        };
        self.finished = true;
        Step::Done(step)
    }
}

/// Removes an internal request's pending entry when its waiter goes.
pub(super) struct Forget<'a> {
    pub(super) upstream: &'a Upstream,
    pub(super) id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.upstream.lock_calls().remove(&self.id);
    }
}

impl Drop for CallHandle {
    fn drop(&mut self) {
        if !self.finished {
            self.upstream.cancel(self.id, "the client went away");
        }
    }
}

/// Rewrites the gateway-owned parts of a request's params: the progress token becomes the
/// gateway id, and the era's `_meta` keys are set for the upstream's era (from the client's
/// own `_meta`, else `defaults`). Returns the params text and the client's progress token.
pub(super) fn prepare_params(
    params: Option<&RawObject>,
    id: u64,
    era: Era,
    version: &str,
    defaults: ClientDefaults<'_>,
) -> (String, Option<Box<RawValue>>) {
    let mut meta_obj = params.and_then(|p| p.get_object("_meta"));
    let mut client_token = None;
    let mut client_caps = None;
    let mut log_level = None;
    if let Some(m) = meta_obj.as_mut() {
        client_caps = m.remove(meta::CLIENT_CAPABILITIES);
        log_level = m.remove(meta::LOG_LEVEL);
        client_token = m.remove(meta::PROGRESS_TOKEN);
        if client_token.is_some()
            && let Ok(raw) = RawValue::from_string(id.to_string())
        {
            m.set_raw(meta::PROGRESS_TOKEN, raw);
        }
        m.retain_keys(|k| !k.starts_with(meta::RESERVED_PREFIX));
    }
    if era == Era::Modern {
        let m = meta_obj.get_or_insert_with(RawObject::default);
        m.set_str(meta::PROTOCOL_VERSION, version);
        // The client's capabilities and log level tell the upstream what it may ask for and
        // send; without any, the gateway's own (it bridges input requests itself).
        let caps = client_caps
            .or_else(|| defaults.capabilities.map(ToOwned::to_owned))
            .or_else(|| RawValue::from_string(handshake::CLIENT_CAPABILITIES.to_owned()).ok());
        if let Some(caps) = caps {
            m.set_raw(meta::CLIENT_CAPABILITIES, caps);
        }
        match (log_level, defaults.log_level) {
            (Some(level), _) => m.set_raw(meta::LOG_LEVEL, level),
            (None, Some(level)) => m.set_str(meta::LOG_LEVEL, level),
            (None, None) => {}
        }
        if let Ok(info) = RawValue::from_string(handshake::client_info()) {
            m.set_raw(meta::CLIENT_INFO, info);
        }
    }
    let meta_json = meta_obj.filter(|m| !m.is_empty()).map(|m| m.to_json());
    let text = match params {
        Some(p) => p.to_json_with("_meta", meta_json.as_deref()),
        None => RawObject::default().to_json_with("_meta", meta_json.as_deref()),
    };
    (text, client_token)
}

pub(super) fn now_micros() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

impl Upstream {
    /// Sends a request and returns the handle that yields its events and outcome.
    ///
    /// `params` is the client's params object (or none); this rewrites only the gateway-owned
    /// parts: the progress token and the era's `_meta` keys.
    pub async fn call(
        self: &Arc<Self>,
        method: &str,
        params: Option<&RawObject>,
        route: Route,
        defaults: ClientDefaults<'_>,
    ) -> Result<CallHandle, UpstreamError> {
        // A dedicated pool spreads client calls over its processes.
        let instance = self.pick(&route)?;
        let wait = Duration::from_millis(instance.config.connect_timeout_ms);
        let link = instance.link(wait).await?;
        if let Some(own) = instance.instance_for(&link, &route, defaults) {
            match own.link(wait).await {
                Ok(l) => return own.call_on(&l, method, params, route, defaults),
                Err(e) if own.refused.load(Ordering::Relaxed) => {
                    tracing::info!(server = %instance.label, error = %e, "upstream refused the legacy era; its legacy clients are bridged to 2026-07-28");
                    instance.legacy_refused.store(true, Ordering::Relaxed);
                    own.shutdown.cancel();
                }
                // Its own session could not be opened: the shared link still serves the call.
                Err(e) if link.info().era == Era::Modern => {
                    tracing::warn!(server = %instance.label, error = %e, "a legacy client's own upstream session failed; its call is bridged");
                }
                Err(e) => return Err(e),
            }
        }
        instance.call_on(&link, method, params, route, defaults)
    }

    pub(super) fn call_on(
        self: &Arc<Self>,
        link: &Arc<Link>,
        method: &str,
        params: Option<&RawObject>,
        route: Route,
        defaults: ClientDefaults<'_>,
    ) -> Result<CallHandle, UpstreamError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Route::Client {
            tenant, subject, ..
        } = &route
        {
            link.calls.fetch_add(1, Ordering::Relaxed);
            link.served.record(tenant, subject);
        }
        let info = link.info();
        let (text, client_progress_token) =
            prepare_params(params, id, info.era, &info.protocol_version, defaults);
        let bytes = jsonrpc::request(&Id::number(id), method, Some(&text));
        let (events_tx, events) = mpsc::channel(MAX_QUEUED_EVENTS);
        let queued = Arc::new(AtomicUsize::new(0));
        let (done_tx, done) = oneshot::channel();
        self.lock_calls().insert(
            id,
            PendingCall {
                route,
                waiting_on_client: false,
                events: events_tx,
                queued: queued.clone(),
                done: done_tx,
                client_progress_token,
                link: link.generation,
                started: now_micros(),
            },
        );
        let handle = CallHandle {
            upstream: self.clone(),
            id,
            events,
            queued,
            done,
            deadline: tokio::time::Instant::now()
                + Duration::from_millis(self.config.call_timeout_ms),
            timeout_ms: self.config.call_timeout_ms,
            finished: false,
        };
        self.send(link, bytes, Some(id), Some(Outgoing { method, params }));
        Ok(handle)
    }

    /// Answers a server→client request with the client's result or error object.
    pub async fn respond(
        self: &Arc<Self>,
        upstream_id: &Id,
        outcome: Result<&RawValue, &RawValue>,
    ) {
        let bytes = match outcome {
            Ok(result) => jsonrpc::result(upstream_id, result.get()),
            Err(error) => jsonrpc::error_raw(Some(upstream_id), error.get()),
        };
        if let Ok(link) = self.link(Duration::from_millis(100)).await {
            self.send(&link, bytes, None, None);
        }
    }

    /// Sends one message on a link. `request` says what a request is, for transports that
    /// repeat it outside the body (HTTP headers in the modern era); `call` is its gateway id.
    pub(super) fn send(
        self: &Arc<Self>,
        link: &Arc<Link>,
        bytes: Vec<u8>,
        call: Option<u64>,
        request: Option<Outgoing<'_>>,
    ) {
        match &link.transport {
            Transport::Stdio(t) => {
                if !t.send(bytes)
                    && let Some(id) = call
                {
                    self.finish(
                        id,
                        Err(UpstreamError::Lost {
                            server: self.name.clone(),
                            reason: link.reason(),
                        }),
                    );
                }
            }
            Transport::Http(t) => t.send(self.clone(), link.clone(), bytes, call, request),
        }
    }

    /// Queues `event` for a call's client within the call's budget ([`MAX_QUEUED_EVENTS`]);
    /// `false` when the client has fallen too far behind (counted) or is gone.
    pub(super) fn deliver(&self, call: &PendingCall, event: CallEvent) -> bool {
        let size = event.size();
        let kind = event.kind();
        let held = call.queued.fetch_add(size, Ordering::Relaxed);
        let sent = if held == 0 || held + size <= MAX_QUEUED_EVENT_BYTES {
            call.events.try_send(event).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => true,
                mpsc::error::TrySendError::Closed(_) => false,
            })
        } else {
            Err(true)
        };
        match sent {
            Ok(()) => true,
            Err(behind) => {
                call.queued.fetch_sub(size, Ordering::Relaxed);
                if behind {
                    self.metrics.event_dropped(&self.name, kind);
                }
                false
            }
        }
    }

    /// Whether a call still waits for its outcome.
    pub(crate) fn is_pending(&self, id: u64) -> bool {
        self.lock_calls().contains_key(&id)
    }

    /// The upstream closed a call's stream to be polled; the call is told, so a client that
    /// can resume streams may be asked to do the same.
    pub(crate) fn stream_paused(&self, id: u64, retry_ms: u64) {
        if let Some(call) = self.lock_calls().get(&id) {
            self.deliver(call, CallEvent::Paused { retry_ms });
        }
    }

    /// Marks a call as parked (or no longer parked) while its client is away.
    pub(crate) fn set_waiting_on_client(&self, id: u64, waiting: bool) {
        if let Some(call) = self.lock_calls().get_mut(&id) {
            call.waiting_on_client = waiting;
        }
    }

    /// Cancels a call in flight: forgets it and tells the upstream.
    pub fn cancel(self: &Arc<Self>, id: u64, reason: &str) {
        let Some(call) = self.lock_calls().remove(&id) else {
            return;
        };
        drop(call);
        if let Readiness::Ready(link) = &*self.readiness.borrow() {
            let params = serde_json::json!({ "requestId": id, "reason": reason }).to_string();
            let bytes = jsonrpc::notification("notifications/cancelled", Some(&params));
            if let Transport::Http(t) = &link.transport {
                t.abort(id);
            }
            self.send(link, bytes, None, None);
        }
    }

    pub(super) fn lock_calls(&self) -> std::sync::MutexGuard<'_, HashMap<u64, PendingCall>> {
        // A poisoned lock means a panic elsewhere; the map itself is still consistent.
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn finish(&self, id: u64, outcome: Outcome) {
        let Some(call) = self.lock_calls().remove(&id) else {
            return;
        };
        if matches!(call.route, Route::Client { .. }) {
            let secs = (now_micros().saturating_sub(call.started)) as f64 / 1e6;
            self.metrics.upstream_latency(&self.name, secs);
            // A finished call may make the instance due for recycling or done draining.
            if let Some(od) = &self.on_demand
                && (self.config.max_calls_per_process > 0 || od.drain.load(Ordering::Relaxed))
            {
                od.poke.notify_one();
            }
        }
        // Only an HTTP upstream's GET stream can deliver messages after the response.
        if matches!(call.route, Route::Client { .. }) && self.config.http.is_some() {
            let now = Instant::now();
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            while recent
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > TRAILING)
                || recent.len() >= 256
            {
                recent.pop_front();
            }
            recent.push_back((now, call.route.clone()));
        }
        let _ = call.done.send(outcome);
    }

    /// Fails every call that was in flight on a link that is gone.
    pub(super) fn fail_calls_on(&self, generation: u64, reason: &str) {
        let dead: Vec<PendingCall> = {
            let mut calls = self.lock_calls();
            let ids: Vec<u64> = calls
                .iter()
                .filter(|(_, c)| c.link == generation)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter().filter_map(|id| calls.remove(&id)).collect()
        };
        for call in dead {
            let _ = call.done.send(Err(UpstreamError::Lost {
                server: self.name.clone(),
                reason: reason.to_owned(),
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_token_swapped_and_era_keys_set() {
        let p = RawObject::parse(r#"{"name":"x","_meta":{"progressToken":"abc","io.modelcontextprotocol/protocolVersion":"2026-07-28","k":1},"arguments":{"a":1}}"#).unwrap();
        let (text, token) = prepare_params(
            Some(&p),
            42,
            Era::Legacy,
            "2025-11-25",
            ClientDefaults::default(),
        );
        assert_eq!(token.unwrap().get(), "\"abc\"");
        assert_eq!(
            text,
            r#"{"name":"x","_meta":{"k":1,"progressToken":42},"arguments":{"a":1}}"#
        );
        let caps = RawValue::from_string(r#"{"sampling":{}}"#.into()).unwrap();
        let defaults = ClientDefaults {
            capabilities: Some(&caps),
            log_level: Some("warning"),
            ..ClientDefaults::default()
        };
        let (text, _) = prepare_params(None, 1, Era::Modern, "2026-07-28", defaults);
        assert!(
            text.contains(r#""io.modelcontextprotocol/clientCapabilities":{"sampling":{}}"#),
            "{text}"
        );
        assert!(
            text.contains(r#""io.modelcontextprotocol/logLevel":"warning""#),
            "{text}"
        );
        assert!(
            text.contains(r#""io.modelcontextprotocol/protocolVersion":"2026-07-28""#),
            "{text}"
        );
    }
}
