//! The relay: a call in flight. [`send`] hands the call to its upstream; [`Forward::next`]
//! then gives the client what comes back, in order, ending with the response, and writes the
//! call's END record and reports its outcome to the breakers when it ends.
//!
//! Only what the gateway owns is rewritten here (the URI prefix of a namespaced resource, the
//! era's result fields); ids, progress tokens and the era's `_meta` keys are the upstream
//! module's. What crosses between the eras mid-call (input requests) is in [`super::bridge`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mcp_wire::era::meta;
use mcp_wire::jsonrpc::{self, ErrorCode};
use mcp_wire::{Era, Id, RawObject};
use palisade_ids::TenantId;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use super::bridge::{Collecting, Parked, is_input_required, refuse_request};
use super::refusal::{Refusal, modern_status, upstream_error};
use crate::audit::{Auditor, CallFacts};
use crate::catalog::{Addressing, Resolved};
use crate::limits::Admission;
use crate::metrics::{self, Metrics};
use crate::registry::Tenant;
use crate::session::{self, Awaiting, Session};
use crate::upstream::{
    CallEvent, CallHandle, ClientDefaults, Route, Step, Upstream, UpstreamError,
};

/// Who is making a call, as dispatch knows them.
pub struct Caller<'a> {
    pub tenant: &'a Tenant,
    pub subject: Arc<str>,
    /// The principal's scopes, for the tenant's tool policy.
    pub scopes: Arc<[String]>,
    pub era: Era,
    pub session: Option<Arc<Session>>,
    /// Modern era: the request's `Mcp-Param-*` headers, by lowercase suffix.
    pub param_headers: Vec<(String, String)>,
}

/// What the pipeline yields to the transport, in order.
pub enum Out {
    /// A notification or server→client request for the client.
    Message(Vec<u8>),
    /// The response; nothing follows.
    Final(Vec<u8>),
    /// The client cancelled the call: end without a response.
    Cancelled,
    /// The call needs the client's input and the client speaks the modern era: send `body`
    /// (an `InputRequiredResult`) as the response and park the call under `state` until the
    /// client retries with it (see [`super::Parked`]).
    Park { body: Vec<u8>, state: String },
    /// The upstream closed the call's stream to be polled (legacy clients only, who can resume
    /// streams): end the client's stream too, asking it to come back after `retry_ms`; the call
    /// goes on.
    Pause { retry_ms: u64 },
}

/// A call in flight. Dropping it before the final message cancels the call upstream.
pub struct Forward {
    pub(super) handle: CallHandle,
    pub(super) client_id: Id,
    pub(super) era: Era,
    pub(super) session: Option<Arc<Session>>,
    pub(super) cancel: Option<CancellationToken>,
    pub(super) upstream: Arc<Upstream>,
    pub(super) route: Route,
    pub(super) tenant: TenantId,
    pub(super) metric_name: String,
    pub(super) uri_prefix: Option<String>,
    pub(super) method: String,
    /// The params as sent upstream, to re-issue the call after an `InputRequiredResult`.
    pub(super) params: RawObject,
    /// Upstream requests waiting for a modern client's retry: input key → upstream request id.
    pub(super) parked_inputs: Vec<(String, Id)>,
    /// Where the call waits if it parks (for the `requestState` it is given).
    pub(super) parking: Arc<Parked>,
    /// Messages to give the client before anything else.
    pub(super) outbox: VecDeque<Vec<u8>>,
    /// Answers a legacy client owes for a modern upstream's `InputRequiredResult`.
    pub(super) collecting: Option<Collecting>,
    pub(super) started: Instant,
    pub(super) done: bool,
    /// The HTTP status the modern era gives the final message (some errors are 400 / 404).
    pub(super) status: u16,
    /// A modern client's declared capabilities (what it can be asked for).
    pub(super) client_caps: Option<Box<RawValue>>,
    /// The lowest log severity the client wants; `None`: no log messages (a modern client
    /// that did not opt in).
    pub(super) log_min: Option<u64>,
    /// Set when the call is audited: its END record is written when it finishes.
    pub(super) audit: Option<Audited>,
    /// Its bulkhead places and breaker permits (audited methods only): the outcome is
    /// reported to the breakers when it finishes; dropped unfinished, nothing is reported.
    pub(super) admission: Option<Admission>,
}

/// Sends a resolved, admitted and audited call to its upstream.
#[allow(clippy::too_many_arguments)]
pub(super) async fn send(
    metrics: &Metrics,
    parking: &Arc<Parked>,
    caller: &Caller<'_>,
    id: &Id,
    method: &str,
    params: RawObject,
    addressing: Addressing,
    resolved: Resolved<'_>,
    admission: Option<Admission>,
    audit: Option<Audited>,
) -> Result<Forward, Refusal> {
    let tenant = caller.tenant;
    let upstream = resolved.target.upstream.clone();
    let route = Route::Client {
        tenant: tenant.id.clone(),
        subject: caller.subject.clone(),
        session: caller.session.as_ref().map(|s| s.id.clone()),
    };
    let started = Instant::now();
    let defaults = client_defaults(caller.session.as_deref());
    let handle = match upstream
        .call(method, Some(&params), route.clone(), defaults)
        .await
    {
        Ok(mut h) => {
            if method == "tools/call"
                && let Some(ms) = params
                    .get_str("name")
                    .and_then(|name| upstream.config.tool_timeouts_ms.get(name.as_str()))
            {
                h.set_timeout(*ms);
            }
            h
        }
        Err(e) => {
            let unavailable = metrics::CallEnd::Unavailable;
            let elapsed = started.elapsed();
            let label = &resolved.metric_label;
            metrics.call(
                &tenant.id,
                &upstream.name,
                label,
                unavailable,
                elapsed.as_secs_f64(),
            );
            if let Some(a) = audit {
                a.end(unavailable.label().into(), elapsed);
            }
            return Err(Refusal::Upstream(e));
        }
    };
    // What the client can take. A modern client says it in each request's `_meta`, which
    // travels on; a legacy client said it once, and its session answers for it (the upstream
    // layer puts that in `_meta` only when the upstream speaks the modern era).
    let (client_caps, log_min) = match &caller.session {
        Some(session) => (
            None,
            Some(session.log_level.load(std::sync::atomic::Ordering::Relaxed)),
        ),
        None => {
            let m = params.get_object("_meta").unwrap_or_default();
            let caps = m.get(meta::CLIENT_CAPABILITIES).map(ToOwned::to_owned);
            (
                caps,
                m.get_str(meta::LOG_LEVEL).map(|l| session::log_rank(&l)),
            )
        }
    };
    // In a dedicated pool the call may run on another instance than the catalog's: what
    // follows (answers to its requests, parking) goes to that one.
    let upstream = handle.upstream().clone();
    let uri_prefix = (addressing == Addressing::Resource && tenant.namespacing)
        .then(|| format!("{}+", upstream.name));
    Ok(Forward {
        handle,
        client_id: id.clone(),
        era: caller.era,
        session: caller.session.clone(),
        cancel: caller.session.as_ref().map(|s| s.track_call(id)),
        upstream,
        route,
        tenant: tenant.id.clone(),
        metric_name: resolved.metric_label,
        uri_prefix,
        method: method.to_owned(),
        params,
        parked_inputs: Vec::new(),
        parking: parking.clone(),
        outbox: VecDeque::new(),
        collecting: None,
        started,
        done: false,
        status: 200,
        client_caps,
        log_min,
        audit,
        admission,
    })
}

/// A call's audit identity: its BEGIN's id, for the END record.
pub(super) struct Audited {
    pub(super) auditor: Arc<Auditor>,
    pub(super) id: String,
    pub(super) facts: CallFacts,
}

impl Audited {
    /// Writes the END record in the background: the client need not wait for it.
    pub(super) fn end(self, outcome: String, elapsed: Duration) {
        let latency_us = elapsed.as_micros() as u64;
        // A call dropped outside the runtime (at shutdown) has nowhere to run this.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                self.auditor
                    .end(self.id, &self.facts, &outcome, latency_us)
                    .await;
            });
        }
    }
}

/// What a legacy session declared at `initialize`, for an upstream hop in the modern era.
pub(super) fn client_defaults(session: Option<&Session>) -> ClientDefaults<'_> {
    session.map_or_else(ClientDefaults::default, |s| ClientDefaults {
        capabilities: Some(&s.client_capabilities),
        log_level: Some(session::log_name(
            s.log_level.load(std::sync::atomic::Ordering::Relaxed),
        )),
        closed: Some(&s.closed),
        listening: s.has_stream(),
    })
}

impl Forward {
    /// The next message for the client; `None` once the final one was given.
    pub async fn next(&mut self) -> Option<Out> {
        if self.done {
            return None;
        }
        loop {
            if let Some(m) = self.outbox.pop_front() {
                return Some(Out::Message(m));
            }
            if let Some(collecting) = self.collecting.take()
                && let Err(bytes) = self.reissue_with_answers(collecting).await
            {
                self.done = true;
                return Some(Out::Final(bytes));
            }
            let step = match &self.cancel {
                Some(token) => tokio::select! {
                    step = self.handle.next() => step,
                    _ = token.cancelled() => {
                        self.done = true;
                        return Some(Out::Cancelled);
                    }
                },
                None => self.handle.next().await,
            };
            match step {
                Step::Event(CallEvent::Notification { method, params }) => {
                    if method == "notifications/message" && self.below_log_level(params.as_deref())
                    {
                        continue;
                    }
                    let params = if method == "notifications/cancelled" {
                        // The upstream withdrew one of its requests: name it by the client's id.
                        match self.client_view_of_cancel(params.as_deref()) {
                            Some(p) => Some(p),
                            None => continue,
                        }
                    } else {
                        params
                    };
                    return Some(Out::Message(jsonrpc::notification(
                        &method,
                        params.as_ref().map(|p| p.get()),
                    )));
                }
                Step::Event(CallEvent::Paused { retry_ms }) => {
                    // Only a legacy session can resume a stream; any other client keeps its own
                    // open while the gateway resumes the upstream's.
                    if self.era == Era::Legacy && self.session.is_some() {
                        return Some(Out::Pause { retry_ms });
                    }
                }
                Step::Event(CallEvent::Request {
                    upstream_id,
                    method,
                    params,
                }) => match (&self.session, self.era) {
                    (Some(session), Era::Legacy) => {
                        let awaiting =
                            Awaiting::Upstream(self.upstream.clone(), upstream_id.clone());
                        let Some(id) = session.register_server_request(awaiting) else {
                            // The client already has the most requests it may leave unanswered:
                            // the upstream hears so at once rather than waiting for nothing.
                            let message = format!(
                                "the client already has {} requests awaiting its answer",
                                session::MAX_PENDING_REQUESTS
                            );
                            let code = ErrorCode::LIMIT_REACHED;
                            refuse_request(&self.upstream, &upstream_id, code, &message).await;
                            continue;
                        };
                        return Some(Out::Message(jsonrpc::request(
                            &id,
                            &method,
                            params.as_ref().map(|p| p.get()),
                        )));
                    }
                    _ => return Some(self.park(upstream_id, &method, params.as_deref()).await),
                },
                Step::Done(Ok(Ok(result)))
                    if self.era == Era::Legacy
                        && self.session.is_some()
                        && is_input_required(&result) =>
                {
                    if let Err(bytes) = self.ask_legacy_client(&result) {
                        self.done = true;
                        return Some(Out::Final(bytes));
                    }
                }
                Step::Done(outcome) => {
                    self.done = true;
                    return Some(Out::Final(self.finish(outcome)));
                }
            }
        }
    }

    fn client_view_of_cancel(&self, params: Option<&RawValue>) -> Option<Box<RawValue>> {
        let mut obj = RawObject::parse(params?.get())?;
        let upstream_id = Id::from_raw(obj.get("requestId")?)?;
        let client_id = self
            .session
            .as_ref()?
            .forget_server_request(&self.upstream, &upstream_id)?;
        obj.set_raw(
            "requestId",
            RawValue::from_string(client_id.as_json().to_owned()).ok()?,
        );
        Some(obj.to_raw())
    }

    /// The HTTP status for the final message when it is sent as a plain JSON response.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// How long the call may take upstream, which is also how long it may stay parked.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.handle.timeout_ms())
    }

    fn below_log_level(&self, params: Option<&RawValue>) -> bool {
        let Some(min) = self.log_min else {
            return true;
        };
        let level = params
            .and_then(|p| RawObject::parse(p.get()))
            .and_then(|o| o.get_str("level"))
            .map(|l| session::log_rank(&l))
            .unwrap_or(1);
        level < min
    }

    fn finish(&mut self, outcome: crate::upstream::Outcome) -> Vec<u8> {
        let elapsed = self.started.elapsed().as_secs_f64();
        let mut rpc_code = None;
        let crashed = matches!(outcome, Err(UpstreamError::Lost { .. }));
        let (bytes, counted) = match outcome {
            Ok(Ok(result)) => {
                let (result, is_error) = self.rewrite_result(&result);
                let counted = if is_error {
                    metrics::CallEnd::ToolError
                } else {
                    metrics::CallEnd::Ok
                };
                (jsonrpc::result(&self.client_id, &result), counted)
            }
            Ok(Err(error)) => {
                rpc_code = RawObject::parse(error.get())
                    .and_then(|o| o.get("code").and_then(|c| c.get().parse::<i64>().ok()));
                let error = if self.era == Era::Modern {
                    self.status = rpc_code.map_or(200, |code| modern_status(ErrorCode(code)));
                    modern_error(&error)
                } else {
                    error.get().to_owned()
                };
                (
                    jsonrpc::error_raw(Some(&self.client_id), &error),
                    metrics::CallEnd::RpcError,
                )
            }
            Err(e) => {
                let counted = match e {
                    UpstreamError::Timeout { .. } => metrics::CallEnd::Timeout,
                    _ => metrics::CallEnd::Unavailable,
                };
                (upstream_error(&self.client_id, &e), counted)
            }
        };
        self.upstream_metrics(counted, elapsed);
        if let Some(admission) = self.admission.take() {
            // The upstream failed to answer; a JSON-RPC error or a tool error is an answer.
            let failed = matches!(
                counted,
                metrics::CallEnd::Unavailable | metrics::CallEnd::Timeout
            );
            admission.finish(failed, crashed);
        }
        if let Some(a) = self.audit.take() {
            let outcome = match (counted, &rpc_code) {
                (metrics::CallEnd::RpcError, Some(code)) => format!("rpc_error {code}"),
                _ => counted.label().to_owned(),
            };
            a.end(outcome, self.started.elapsed());
        }
        bytes
    }

    fn upstream_metrics(&self, outcome: metrics::CallEnd, elapsed: f64) {
        // Counted once per call; `gw.metrics` is shared with the upstream.
        self.upstream.metrics().call(
            &self.tenant,
            &self.upstream.name,
            &self.metric_name,
            outcome,
            elapsed,
        );
    }

    /// Era and namespacing fix-ups of a result. Returns the text and whether it is a tool error.
    fn rewrite_result(&self, result: &RawValue) -> (String, bool) {
        let from_modern = self.era == Era::Legacy && self.upstream.era() == Some(Era::Modern);
        let needs_rewrite = self.era == Era::Modern
            || from_modern
            || self.uri_prefix.is_some()
            || self.method == "tools/call";
        if !needs_rewrite {
            return (result.get().to_owned(), false);
        }
        let Some(mut obj) = RawObject::parse(result.get()) else {
            return (result.get().to_owned(), false);
        };
        let is_error = obj.get("isError").is_some_and(|v| v.get() == "true");
        let mut changed = false;
        if let Some(prefix) = &self.uri_prefix
            && let Some(contents) = obj.get("contents")
            && let Ok(items) = serde_json::from_str::<Vec<Box<RawValue>>>(contents.get())
        {
            let rewritten: Vec<String> = items
                .iter()
                .map(|item| match RawObject::parse(item.get()) {
                    Some(mut o) => {
                        if let Some(uri) = o.get_str("uri") {
                            o.set_str("uri", &format!("{prefix}{uri}"));
                        }
                        o.to_json()
                    }
                    None => item.get().to_owned(),
                })
                .collect();
            if let Ok(raw) = RawValue::from_string(format!("[{}]", rewritten.join(","))) {
                obj.set_raw("contents", raw);
                changed = true;
            }
        }
        if self.era == Era::Modern {
            changed |= complete_modern_result(&mut obj, self.method == "resources/read");
            // In a fleet, the state a process of this replica issued resumes only here.
            if self.upstream.config.stdio.is_some()
                && let Some(state) = obj.get_str("requestState")
                && let Some(bound) = self.parking.bind(&state)
            {
                obj.set_str("requestState", &bound);
                changed = true;
            }
        }
        if from_modern {
            // The modern era's own fields mean nothing to a legacy client.
            for field in ["resultType", "ttlMs", "cacheScope"] {
                changed |= obj.remove(field).is_some();
            }
        }
        if changed {
            (obj.to_json(), is_error)
        } else {
            (result.get().to_owned(), is_error)
        }
    }
}

/// Adds what the modern era requires on results that a legacy upstream does not send:
/// `resultType`, and cache hints on reads. Returns whether anything was added.
pub(crate) fn complete_modern_result(obj: &mut RawObject, cacheable: bool) -> bool {
    let mut changed = false;
    if obj.get("resultType").is_none() {
        obj.set_str("resultType", "complete");
        changed = true;
    }
    if cacheable {
        if obj.get("ttlMs").is_none() {
            if let Ok(raw) = RawValue::from_string("0".into()) {
                obj.set_raw("ttlMs", raw);
            }
            changed = true;
        }
        if obj.get("cacheScope").is_none() {
            obj.set_str("cacheScope", "private");
            changed = true;
        }
    }
    changed
}

impl Drop for Forward {
    fn drop(&mut self) {
        if let Some(session) = &self.session {
            session.untrack_call(&self.client_id);
        }
        // Dropped before it finished (the client went away, or the call was cancelled): its
        // BEGIN still gets an END.
        if let Some(a) = self.audit.take() {
            a.end("abandoned".into(), self.started.elapsed());
        }
    }
}

/// A legacy upstream's error in modern terms: resource-not-found became -32602.
fn modern_error(error: &RawValue) -> String {
    match RawObject::parse(error.get()) {
        Some(mut obj) if obj.get("code").map(RawValue::get) == Some("-32002") => {
            if let Ok(code) = RawValue::from_string(ErrorCode::INVALID_PARAMS.0.to_string()) {
                obj.set_raw("code", code);
            }
            obj.to_json()
        }
        _ => error.get().to_owned(),
    }
}
