//! The pipeline: the ordered steps of one forwarded call (`tools/call`, `resources/read`,
//! `prompts/get`, and the other requests that go to exactly one upstream).
//!
//! Read top to bottom, [`forward`] is the whole story of a call:
//!   0. a retry carrying a `requestState` the gateway issued resumes its parked call ([`Parked`]);
//!   1. resolve the target: which of the tenant's upstreams, under which original name
//!      (a name outside the tenant's servers is an unknown tool, -32602); authorize a tool
//!      call against the tenant's [`Policy`](crate::policy::Policy) (a denied tool is refused,
//!      missing scopes are a 403 `insufficient_scope` so the client can step up); and for a
//!      modern client check its `Mcp-Param-*` headers against the arguments;
//!   2. the protection checks of [`crate::limits`]: rate limits, then quarantine, breakers and
//!      bulkheads;
//!   3. say what the client can take (capabilities, log level) for the upstream hop;
//!   4. the BEGIN audit record, durable before anything is sent, and the tenant assertion for a
//!      shared server ([`tell_the_tenant`]);
//!   5. send it upstream; [`Forward::next`] then relays what comes back, in order, ending with
//!      the response, and bridges input requests between the eras.
//!
//! Only what the gateway owns is rewritten here (the name or URI); ids, progress tokens and the
//! era's `_meta` keys are the upstream module's.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mcp_wire::era::meta;
use mcp_wire::jsonrpc::{self, ErrorCode};
use mcp_wire::param_headers;
use mcp_wire::{Era, Id, RawObject};
use rand::RngCore;
use serde_json::value::RawValue;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::assertion;
use crate::audit::{Auditor, CallFacts};
use crate::catalog::{self, Target};
use crate::config::Placement;
use crate::gateway::Gateway;
use crate::metrics;
use crate::policy::Denied;
use crate::registry::Tenant;
use crate::session::{self, Awaiting, ClientAnswer, Session};
use crate::upstream::{
    CallEvent, CallHandle, ClientDefaults, ListKind, Route, Step, Upstream, UpstreamError,
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

/// How a request addresses its upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addressing {
    /// `params.name` is a tool name.
    Tool,
    /// `params.name` is a prompt name.
    Prompt,
    /// `params.uri` is a resource URI.
    Resource,
    /// `params.ref` is a prompt or resource reference (`completion/complete`).
    CompletionRef,
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
    /// client retries with it (see [`Parked`]).
    Park { body: Vec<u8>, state: String },
    /// The upstream closed the call's stream to be polled (legacy clients only, who can resume
    /// streams): end the client's stream too, asking it to come back after `retry_ms`; the call
    /// goes on.
    Pause { retry_ms: u64 },
}

/// The prefix of every `requestState` the gateway issues itself.
pub const PARK_PREFIX: &str = "palisade.";

/// A call in flight. Dropping it before the final message cancels the call upstream.
pub struct Forward {
    handle: CallHandle,
    client_id: Id,
    era: Era,
    session: Option<Arc<Session>>,
    cancel: Option<CancellationToken>,
    upstream: Arc<Upstream>,
    route: Route,
    tenant: Arc<str>,
    metric_name: String,
    uri_prefix: Option<String>,
    method: String,
    /// The params as sent upstream, to re-issue the call after an `InputRequiredResult`.
    params: RawObject,
    /// Upstream requests waiting for a modern client's retry: input key → upstream request id.
    parked_inputs: Vec<(String, Id)>,
    /// Messages to give the client before anything else.
    outbox: VecDeque<Vec<u8>>,
    /// Answers a legacy client owes for a modern upstream's `InputRequiredResult`.
    collecting: Option<Collecting>,
    started: Instant,
    done: bool,
    /// The HTTP status the modern era gives the final message (some errors are 400 / 404).
    status: u16,
    /// A modern client's declared capabilities (what it can be asked for).
    client_caps: Option<Box<RawValue>>,
    /// The lowest log severity the client wants; `None`: no log messages (a modern client
    /// that did not opt in).
    log_min: Option<u64>,
    /// Set when the call is audited: its END record is written when it finishes.
    audit: Option<Audited>,
    /// Its bulkhead places and breaker permits (audited methods only): the outcome is
    /// reported to the breakers when it finishes; dropped unfinished, nothing is reported.
    admission: Option<crate::limits::Admission>,
}

struct Collecting {
    answers: Vec<(String, oneshot::Receiver<ClientAnswer>)>,
    request_state: Option<Box<RawValue>>,
}

/// Why a call was not forwarded.
pub enum Refusal {
    /// The complete JSON-RPC error message for the client.
    Error(Vec<u8>),
    /// The caller lacks these scopes (space-separated): HTTP 403 `insufficient_scope`, with
    /// the error message as the body.
    InsufficientScope { scopes: String, body: Vec<u8> },
}

impl From<Vec<u8>> for Refusal {
    fn from(error: Vec<u8>) -> Refusal {
        Refusal::Error(error)
    }
}

/// Forwards one request to the upstream that owns its target.
pub async fn forward(
    gw: &Gateway,
    caller: &Caller<'_>,
    id: &Id,
    method: &str,
    params: Option<&RawValue>,
    addressing: Addressing,
) -> Result<Forward, Refusal> {
    let invalid = |msg: &str| jsonrpc::error(Some(id), ErrorCode::INVALID_PARAMS, msg, None);
    let mut params = match params {
        Some(p) => RawObject::parse(p.get()).ok_or_else(|| invalid("params must be an object"))?,
        None => RawObject::default(),
    };
    if caller.era == Era::Modern {
        check_round_trip_fields(&params, id)?;
    }
    if let Some(state) = params
        .get_str("requestState")
        .filter(|s| s.starts_with(PARK_PREFIX))
    {
        return Ok(gw.parked.resume(caller, id, &state, &params).await?);
    }

    // 1. Resolve the target.
    let tenant = caller.tenant;
    let (target, metric_name): (Target<'_>, String) = match addressing {
        Addressing::Tool | Addressing::Prompt => {
            let name = params
                .get_str("name")
                .ok_or_else(|| invalid("params.name must be a string"))?;
            let kind = if addressing == Addressing::Tool {
                ListKind::Tools
            } else {
                ListKind::Prompts
            };
            let what = if addressing == Addressing::Tool {
                "tool"
            } else {
                "prompt"
            };
            let target = catalog::resolve_name(&gw.names, tenant, kind, &name)
                .await
                .ok_or_else(|| invalid(&format!("unknown {what}: {name}")))?;
            // A server with per-tenant tools: the caller's own, or a common one; never
            // another tenant's.
            let own = if addressing == Addressing::Tool && target.upstream.config.tenant_tools {
                Some(
                    catalog::tenant_tool(tenant, target.upstream, &target.name)
                        .await
                        .ok_or_else(|| invalid(&format!("unknown {what}: {name}")))?,
                )
            } else {
                None
            };
            let label = metric_label(target.upstream, kind, &target.name);
            if addressing == Addressing::Tool {
                if let Err(refusal) = authorize(gw, caller, &target, &name, id) {
                    if let Some(audit) = &gw.audit {
                        let reason = match &refusal {
                            Refusal::InsufficientScope { scopes, .. } => {
                                format!("insufficient scope (needs {scopes})")
                            }
                            Refusal::Error(_) => "tool not allowed by the tenant's policy".into(),
                        };
                        let facts = call_facts(caller, method, &target);
                        audit.denied(&facts, params.get("arguments"), &reason).await;
                    }
                    return Err(refusal);
                }
                if caller.era == Era::Modern {
                    check_param_headers(caller, &target, &params, id).await?;
                }
            }
            // Policy, rate limits, audit and metrics all know the tool by the name the tenant
            // sees; only the upstream is told its own name for it.
            params.set_str("name", own.as_deref().unwrap_or(&target.name));
            (target, label)
        }
        Addressing::Resource => {
            let uri = params
                .get_str("uri")
                .ok_or_else(|| invalid("params.uri must be a string"))?;
            let target = catalog::resolve_uri(tenant, &uri).ok_or_else(|| {
                let code = if caller.era == Era::Legacy {
                    ErrorCode::RESOURCE_NOT_FOUND
                } else {
                    ErrorCode::INVALID_PARAMS
                };
                jsonrpc::error(
                    Some(id),
                    code,
                    &format!("resource not found: {uri}"),
                    Some(&serde_json::json!({ "uri": uri })),
                )
            })?;
            params.set_str("uri", &target.name);
            (target, "resource".to_owned())
        }
        Addressing::CompletionRef => {
            let mut reference = params
                .get_object("ref")
                .ok_or_else(|| invalid("params.ref must be an object"))?;
            let target = match reference.get_str("type").as_deref() {
                Some("ref/prompt") => {
                    let name = reference
                        .get_str("name")
                        .ok_or_else(|| invalid("params.ref.name must be a string"))?;
                    catalog::resolve_name(&gw.names, tenant, ListKind::Prompts, &name)
                        .await
                        .inspect(|t| {
                            reference.set_str("name", &t.name);
                        })
                }
                Some("ref/resource") => {
                    let uri = reference
                        .get_str("uri")
                        .ok_or_else(|| invalid("params.ref.uri must be a string"))?;
                    catalog::resolve_uri(tenant, &uri).inspect(|t| {
                        reference.set_str("uri", &t.name);
                    })
                }
                _ => {
                    return Err(
                        invalid("params.ref.type must be ref/prompt or ref/resource").into(),
                    );
                }
            }
            .ok_or_else(|| invalid("unknown completion reference"))?;
            params.set_object("ref", &reference);
            (target, "completion".to_owned())
        }
    };
    let upstream = target.upstream.clone();

    // Traffic protection (rates, breakers, bulkheads), before the call is audited and forwarded.
    let admission = if AUDITED.contains(&method) {
        let admitted = match gw
            .protection
            .check(
                &gw.config().rate_limits,
                tenant,
                &caller.subject,
                &upstream.config,
                &target.name,
            )
            .await
        {
            Ok(()) => gw.protection.admit(&upstream.config, &tenant.id).await,
            Err(refused) => Err(refused),
        };
        match admitted {
            Ok(admission) => Some(admission),
            Err(refused) => {
                gw.metrics.protection_refused(&tenant.id, refused.limit);
                if let Some(audit) = &gw.audit {
                    let facts = call_facts(caller, method, &target);
                    let reason = format!("{}: {}", refused.limit, refused.why);
                    audit.denied(&facts, params.get("arguments"), &reason).await;
                }
                return Err(Refusal::Error(jsonrpc::error(
                    Some(id),
                    ErrorCode::RATE_LIMITED,
                    &refused.message(),
                    Some(&serde_json::json!({
                        "limit": refused.limit,
                        "retryAfterMs": refused.retry_after_ms(),
                    })),
                )));
            }
        }
    } else {
        None
    };

    // 2. What the client can take. A modern client says it in each request's `_meta`, which
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

    // 3. Send it upstream.
    let route = Route::Client {
        tenant: tenant.id.clone(),
        subject: caller.subject.clone(),
        session: caller.session.as_ref().map(|s| s.id.clone()),
    };
    // The audit record: durable before the call leaves (invariant 2), or the call is refused.
    let audit = match &gw.audit {
        Some(auditor) if AUDITED.contains(&method) => {
            let facts = call_facts(caller, method, &target);
            let waited = Instant::now();
            let begun = auditor.begin(&facts, params.get("arguments")).await;
            gw.metrics.audit_begin(waited.elapsed().as_secs_f64());
            match begun {
                Ok(audit_id) => Some(Audited {
                    auditor: auditor.clone(),
                    id: audit_id,
                    facts,
                }),
                Err(e) => {
                    gw.metrics.rejected("audit_unavailable");
                    tracing::error!(error = %e, tenant = %tenant.id, "audit trail unavailable: call refused");
                    return Err(Refusal::Error(jsonrpc::error(
                        Some(id),
                        ErrorCode::INTERNAL_ERROR,
                        "the audit trail cannot record this call right now, so it was not run; retry later",
                        None,
                    )));
                }
            }
        }
        _ => None,
    };
    let audit_id = audit.as_ref().map(|a| a.id.as_str());
    tell_the_tenant(gw, caller, &upstream, audit_id, &mut params);
    let started = Instant::now();
    let defaults = client_defaults(caller.session.as_deref());
    let handle = match upstream.call(method, Some(&params), route, defaults).await {
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
            gw.metrics.call(
                &tenant.id,
                &upstream.name,
                &metric_name,
                metrics::Outcome::Unavailable,
                started.elapsed().as_secs_f64(),
            );
            if let Some(a) = audit {
                a.end(
                    metrics::Outcome::Unavailable.label().into(),
                    started.elapsed(),
                );
            }
            return Err(upstream_error(id, &e).into());
        }
    };
    // In a dedicated pool the call may run on another instance than the catalog's: what
    // follows (answers to its requests, parking) goes to that one.
    let upstream = handle.upstream().clone();
    let cancel = caller.session.as_ref().map(|s| s.track_call(id));
    let route = Route::Client {
        tenant: tenant.id.clone(),
        subject: caller.subject.clone(),
        session: caller.session.as_ref().map(|s| s.id.clone()),
    };
    let uri_prefix = (addressing == Addressing::Resource && tenant.namespacing)
        .then(|| format!("{}+", upstream.name));
    Ok(Forward {
        handle,
        client_id: id.clone(),
        era: caller.era,
        session: caller.session.clone(),
        cancel,
        upstream,
        route,
        tenant: tenant.id.clone(),
        metric_name,
        uri_prefix,
        method: method.to_owned(),
        params,
        parked_inputs: Vec::new(),
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

/// The methods whose calls are audited (docs/ARCHITECTURE.md, invariant 3).
/// Requests that can carry a tenant's data: rate-limited, audited, and sent to a shared server
/// with the tenant's signed context.
const AUDITED: [&str; 6] = [
    "tools/call",
    "resources/read",
    "prompts/get",
    "resources/subscribe",
    "resources/unsubscribe",
    "completion/complete",
];

/// The tenant context a shared server trusts, in `params._meta`: signed here for the caller,
/// never taken from the client (a client's own entry of that name is removed).
pub fn tell_the_tenant(
    gw: &Gateway,
    caller: &Caller<'_>,
    upstream: &Upstream,
    audit_id: Option<&str>,
    params: &mut RawObject,
) {
    let mut meta = params.get_object("_meta").unwrap_or_default();
    let mut changed = meta.remove(assertion::META_KEY).is_some();
    if upstream.config.placement == Placement::Shared {
        let token = gw.assertions.mint(&assertion::Context {
            tenant: &caller.tenant.id,
            subject: &caller.subject,
            scopes: &caller.scopes,
            audit_id,
            audience: &upstream.name,
        });
        meta.set_str(assertion::META_KEY, &token);
        changed = true;
    }
    if changed {
        params.set_object("_meta", &meta);
    }
}

/// A call's audit identity: its BEGIN's id, for the END record.
struct Audited {
    auditor: Arc<Auditor>,
    id: String,
    facts: CallFacts,
}

impl Audited {
    /// Writes the END record in the background: the client need not wait for it.
    fn end(self, outcome: String, elapsed: Duration) {
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

fn call_facts(caller: &Caller<'_>, method: &str, target: &Target<'_>) -> CallFacts {
    CallFacts {
        tenant: caller.tenant.id.clone(),
        subject: caller.subject.clone(),
        session: caller.session.as_ref().map(|s| s.id.clone()),
        method: method.to_owned(),
        server: target.upstream.name.clone(),
        target: target.name.clone(),
    }
}

/// The tenant's policy on a tool call. `exposed` is the name the client used.
fn authorize(
    gw: &Gateway,
    caller: &Caller<'_>,
    target: &Target<'_>,
    exposed: &str,
    id: &Id,
) -> Result<(), Refusal> {
    let verdict =
        caller
            .tenant
            .policy
            .check_call(&target.upstream.name, &target.name, &caller.scopes);
    match verdict {
        Ok(()) => Ok(()),
        Err(Denied::Tool) => {
            gw.metrics.rejected("policy");
            let msg = format!("tool `{exposed}` is not allowed by the tenant's policy");
            Err(Refusal::Error(jsonrpc::error(
                Some(id),
                ErrorCode::INVALID_PARAMS,
                &msg,
                None,
            )))
        }
        Err(Denied::Scopes(scopes)) => {
            gw.metrics.rejected("insufficient_scope");
            let msg = format!(
                "insufficient scope: tool `{exposed}` needs the scopes `{scopes}`; obtain a token or key that carries them"
            );
            let body = jsonrpc::error(
                Some(id),
                ErrorCode::INVALID_REQUEST,
                &msg,
                Some(
                    &serde_json::json!({ "requiredScopes": scopes.split(' ').collect::<Vec<_>>() }),
                ),
            );
            Err(Refusal::InsufficientScope { scopes, body })
        }
    }
}

/// The modern era's `Mcp-Param-*` headers must agree with the arguments they mirror.
async fn check_param_headers(
    caller: &Caller<'_>,
    target: &Target<'_>,
    params: &RawObject,
    id: &Id,
) -> Result<(), Vec<u8>> {
    let annotated = target.upstream.header_params(&target.name).await;
    if annotated.is_empty() {
        return Ok(());
    }
    let args = params.get_object("arguments");
    let header = |suffix: &str| {
        let suffix = suffix.to_ascii_lowercase();
        caller
            .param_headers
            .iter()
            .find(|(k, _)| *k == suffix)
            .map(|(_, v)| v.as_str())
    };
    param_headers::check(&annotated, args.as_ref(), header)
        .map_err(|problem| jsonrpc::error(Some(id), ErrorCode::HEADER_MISMATCH, &problem, None))
}

/// A 2026-07-28 request's round-trip fields must have their shapes: `inputResponses` an object
/// whose members are the client's results or errors (objects), `requestState` a string. Checked
/// here whoever answers the call, since a legacy upstream would never look at them.
fn check_round_trip_fields(params: &RawObject, id: &Id) -> Result<(), Vec<u8>> {
    let invalid = |msg: &str| jsonrpc::error(Some(id), ErrorCode::INVALID_PARAMS, msg, None);
    if let Some(responses) = params.get("inputResponses") {
        let well_formed = RawObject::parse(responses.get()).is_some_and(|o| {
            o.keys()
                .all(|k| o.get(k).is_some_and(|v| v.get().starts_with('{')))
        });
        if !well_formed {
            return Err(invalid(
                "params.inputResponses must be an object whose members are the results (objects) of the input requests they answer",
            ));
        }
    }
    if params
        .get("requestState")
        .is_some_and(|s| !s.get().starts_with('"'))
    {
        return Err(invalid(
            "params.requestState must be the string the server gave",
        ));
    }
    Ok(())
}

/// What a legacy session declared at `initialize`, for an upstream hop in the modern era.
fn client_defaults(session: Option<&Session>) -> ClientDefaults<'_> {
    session.map_or_else(ClientDefaults::default, |s| ClientDefaults {
        capabilities: Some(&s.client_capabilities),
        log_level: Some(session::log_name(
            s.log_level.load(std::sync::atomic::Ordering::Relaxed),
        )),
        closed: Some(&s.closed),
        listening: s.has_stream(),
    })
}

/// Tool names become metric labels only when the upstream listed them (bounded cardinality).
fn metric_label(upstream: &Upstream, kind: ListKind, name: &str) -> String {
    if upstream.has_listed(kind, name) {
        name.to_owned()
    } else {
        "other".to_owned()
    }
}

pub fn upstream_error(id: &Id, e: &UpstreamError) -> Vec<u8> {
    let server = match e {
        UpstreamError::Unavailable { server, .. }
        | UpstreamError::Lost { server, .. }
        | UpstreamError::Timeout { server, .. }
        | UpstreamError::Failed { server, .. }
        | UpstreamError::Busy { server, .. } => server.to_string(),
    };
    let code = match e {
        UpstreamError::Busy { .. } => ErrorCode::LIMIT_REACHED,
        _ => ErrorCode::UPSTREAM_UNAVAILABLE,
    };
    jsonrpc::error(
        Some(id),
        code,
        &e.to_string(),
        Some(&serde_json::json!({ "server": server })),
    )
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
                            let error = format!(
                                r#"{{"code":{},"message":"the client already has {} requests awaiting its answer"}}"#,
                                ErrorCode::LIMIT_REACHED.0,
                                session::MAX_PENDING_REQUESTS
                            );
                            if let Ok(error) = RawValue::from_string(error) {
                                self.upstream.respond(&upstream_id, Err(&error)).await;
                            }
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

    /// Modern client, upstream asks for input mid-call: answer with an `InputRequiredResult`
    /// whose `requestState` names this call, which the transport then parks. A request the
    /// client did not declare the capability for ends the call with -32021, as the spec has a
    /// server do.
    async fn park(&mut self, upstream_id: Id, method: &str, params: Option<&RawValue>) -> Out {
        let needed = match method {
            "sampling/createMessage" => Some("sampling"),
            "elicitation/create" => Some("elicitation"),
            "roots/list" => Some("roots"),
            _ => None,
        };
        let declared = |cap: &str| {
            self.client_caps
                .as_ref()
                .and_then(|c| RawObject::parse(c.get()))
                .is_some_and(|c| c.get(cap).is_some())
        };
        if let Some(cap) = needed.filter(|cap| !declared(cap)) {
            let refusal = jsonrpc::error_object(
                ErrorCode::MISSING_CLIENT_CAPABILITY,
                "Missing required client capability",
                None,
            );
            if let Ok(raw) = RawValue::from_string(refusal) {
                self.upstream.respond(&upstream_id, Err(&raw)).await;
            }
            self.done = true;
            self.status = 400;
            let data = serde_json::json!({ "requiredCapabilities": { cap: {} } });
            return Out::Final(jsonrpc::error(
                Some(&self.client_id),
                ErrorCode::MISSING_CLIENT_CAPABILITY,
                "Missing required client capability",
                Some(&data),
            ));
        }
        let key = format!("palisade-{}", self.parked_inputs.len() + 1);
        self.parked_inputs.push((key.clone(), upstream_id));
        self.upstream.set_waiting_on_client(self.handle.id(), true);
        let mut token = [0u8; 32];
        rand::rng().fill_bytes(&mut token);
        let state = format!("{PARK_PREFIX}{}", hex::encode(token));
        let request = match params {
            Some(p) => format!(r#"{{"method":{},"params":{}}}"#, json_str(method), p.get()),
            None => format!(r#"{{"method":{}}}"#, json_str(method)),
        };
        let body = format!(
            r#"{{"resultType":"input_required","inputRequests":{{{}:{request}}},"requestState":{}}}"#,
            json_str(&key),
            json_str(&state)
        );
        Out::Park {
            body: jsonrpc::result(&self.client_id, &body),
            state,
        }
    }

    /// Legacy client, modern upstream answered `input_required`: ask the client each input
    /// request as a server→client request on this call's stream, and collect the answers.
    fn ask_legacy_client(&mut self, result: &RawValue) -> Result<(), Vec<u8>> {
        let fail =
            |msg: &str| jsonrpc::error(Some(&self.client_id), ErrorCode::INTERNAL_ERROR, msg, None);
        let obj = RawObject::parse(result.get())
            .ok_or_else(|| fail("malformed input_required result from upstream"))?;
        let requests = obj.get_object("inputRequests").unwrap_or_default();
        let Some(session) = &self.session else {
            return Err(fail("no session to ask"));
        };
        let mut answers = Vec::new();
        for key in requests.keys() {
            let Some(req) = requests.get_object(key) else {
                continue;
            };
            let Some(method) = req.get_str("method") else {
                continue;
            };
            let (tx, rx) = oneshot::channel();
            let id = session
                .register_server_request(Awaiting::Gateway(tx))
                .ok_or_else(|| {
                    fail("the client already has too many requests awaiting its answer")
                })?;
            let params = legacy_request_params(&method, req.get_object("params"));
            self.outbox
                .push_back(jsonrpc::request(&id, &method, params.as_deref()));
            answers.push((key.to_owned(), rx));
        }
        self.collecting = Some(Collecting {
            answers,
            request_state: obj.get("requestState").map(ToOwned::to_owned),
        });
        Ok(())
    }

    /// Waits for the legacy client's answers, then re-issues the call upstream with them.
    async fn reissue_with_answers(&mut self, collecting: Collecting) -> Result<(), Vec<u8>> {
        let timeout = self.timeout();
        let mut responses = RawObject::default();
        for (key, rx) in collecting.answers {
            let answer = tokio::time::timeout(timeout, rx).await;
            match answer {
                Ok(Ok(Ok(result))) => responses.set_raw(&key, result),
                Ok(Ok(Err(error))) => {
                    return Err(jsonrpc::error_raw(Some(&self.client_id), error.get()));
                }
                _ => {
                    return Err(jsonrpc::error(
                        Some(&self.client_id),
                        ErrorCode::INTERNAL_ERROR,
                        "the client did not answer the upstream's input request in time",
                        None,
                    ));
                }
            }
        }
        let mut params = self.params.clone();
        params.set_object("inputResponses", &responses);
        match collecting.request_state {
            Some(state) => params.set_raw("requestState", state),
            None => {
                params.remove("requestState");
            }
        }
        match self
            .upstream
            .call(
                &self.method,
                Some(&params),
                self.route.clone(),
                client_defaults(self.session.as_deref()),
            )
            .await
        {
            Ok(handle) => {
                self.handle = handle;
                Ok(())
            }
            Err(e) => Err(upstream_error(&self.client_id, &e)),
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
                    metrics::Outcome::ToolError
                } else {
                    metrics::Outcome::Ok
                };
                (jsonrpc::result(&self.client_id, &result), counted)
            }
            Ok(Err(error)) => {
                rpc_code = RawObject::parse(error.get())
                    .and_then(|o| o.get("code").and_then(|c| c.get().parse::<i64>().ok()));
                let error = if self.era == Era::Modern {
                    let error = modern_error(&error);
                    self.status = modern_status(&error);
                    error
                } else {
                    error.get().to_owned()
                };
                (
                    jsonrpc::error_raw(Some(&self.client_id), &error),
                    metrics::Outcome::RpcError,
                )
            }
            Err(e) => {
                let counted = match e {
                    UpstreamError::Timeout { .. } => metrics::Outcome::Timeout,
                    _ => metrics::Outcome::Unavailable,
                };
                (upstream_error(&self.client_id, &e), counted)
            }
        };
        self.upstream_metrics(counted, elapsed);
        if let Some(admission) = self.admission.take() {
            // The upstream failed to answer; a JSON-RPC error or a tool error is an answer.
            let failed = matches!(
                counted,
                metrics::Outcome::Unavailable | metrics::Outcome::Timeout
            );
            admission.finish(failed, crashed);
        }
        if let Some(a) = self.audit.take() {
            let outcome = match (counted, &rpc_code) {
                (metrics::Outcome::RpcError, Some(code)) => format!("rpc_error {code}"),
                _ => counted.label().to_owned(),
            };
            a.end(outcome, self.started.elapsed());
        }
        bytes
    }

    fn upstream_metrics(&self, outcome: metrics::Outcome, elapsed: f64) {
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

/// An input request of a 2026-07-28 upstream as the legacy era has it: a URL-mode elicitation
/// there carries an `elicitationId`, which the modern era's input requests do not.
fn legacy_request_params(method: &str, params: Option<RawObject>) -> Option<String> {
    let mut params = params?;
    let url_mode =
        method == "elicitation/create" && params.get_str("mode").as_deref() == Some("url");
    if url_mode && params.get("elicitationId").is_none() {
        let mut id = [0u8; 16];
        rand::rng().fill_bytes(&mut id);
        params.set_str("elicitationId", &hex::encode(id));
    }
    Some(params.to_json())
}

/// Adds what the modern era requires on results that a legacy upstream does not send:
/// `resultType`, and cache hints on reads. Returns whether anything was added.
pub fn complete_modern_result(obj: &mut RawObject, cacheable: bool) -> bool {
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

/// The HTTP status of a complete error message in the modern era.
pub fn modern_status_of(message: &[u8]) -> u16 {
    serde_json::from_slice::<serde_json::Value>(message)
        .ok()
        .map(|m| modern_status(&m["error"].to_string()))
        .unwrap_or(200)
}

/// The modern era carries some JSON-RPC errors in the HTTP status too.
fn modern_status(error: &str) -> u16 {
    let code = serde_json::from_str::<serde_json::Value>(error)
        .ok()
        .and_then(|v| v["code"].as_i64());
    match code.map(ErrorCode) {
        Some(ErrorCode::METHOD_NOT_FOUND) => 404,
        // The whole request was refused by a limit: 429, with Retry-After (see `http::mcp`).
        Some(ErrorCode::RATE_LIMITED) => 429,
        Some(
            ErrorCode::HEADER_MISMATCH
            | ErrorCode::MISSING_CLIENT_CAPABILITY
            | ErrorCode::UNSUPPORTED_PROTOCOL_VERSION,
        ) => 400,
        _ => 200,
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

fn is_input_required(result: &RawValue) -> bool {
    // Cheap pre-check before parsing: most results are not.
    result.get().contains("input_required")
        && RawObject::parse(result.get())
            .and_then(|o| o.get_str("resultType"))
            .as_deref()
            == Some("input_required")
}

/// Calls waiting for a modern client to retry with the input an upstream asked for.
///
/// The `requestState` the client gets is 256 random bits; a parked call is resumed only by a
/// retry from the same tenant and subject, and is dropped (cancelling it upstream) when the
/// client does not come back in time.
#[derive(Default)]
pub struct Parked {
    calls: Mutex<HashMap<String, ParkedCall>>,
}

struct ParkedCall {
    fwd: Forward,
    tenant: Arc<str>,
    subject: Arc<str>,
}

impl Parked {
    /// Parks a call; it is dropped after `ttl` unless resumed. A tenant with `limit` calls
    /// parked already gets the error message to send instead, and the call is dropped.
    pub fn park(
        self: &Arc<Self>,
        state: String,
        fwd: Forward,
        subject: Arc<str>,
        ttl: Duration,
        limit: usize,
    ) -> Result<(), Vec<u8>> {
        let tenant = fwd.tenant.clone();
        {
            let mut calls = self.lock();
            if calls.values().filter(|c| c.tenant == tenant).count() >= limit {
                let data =
                    serde_json::json!({ "limit": "limits.max_parked_per_tenant", "value": limit });
                return Err(jsonrpc::error(
                    Some(&fwd.client_id),
                    ErrorCode::LIMIT_REACHED,
                    &format!(
                        "tenant `{tenant}` already has {limit} calls waiting for input (limits.max_parked_per_tenant): answer or abandon some first"
                    ),
                    Some(&data),
                ));
            }
            calls.insert(
                state.clone(),
                ParkedCall {
                    fwd,
                    tenant,
                    subject,
                },
            );
        }
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(ttl).await;
            me.lock().remove(&state);
        });
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ParkedCall>> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resumes a parked call with the client's `inputResponses`.
    async fn resume(
        &self,
        caller: &Caller<'_>,
        id: &Id,
        state: &str,
        params: &RawObject,
    ) -> Result<Forward, Vec<u8>> {
        let parked = {
            let mut calls = self.lock();
            match calls.get(state) {
                Some(p) if p.tenant == caller.tenant.id && p.subject == caller.subject => {
                    calls.remove(state)
                }
                _ => None,
            }
        };
        let Some(ParkedCall { mut fwd, .. }) = parked else {
            return Err(jsonrpc::error(
                Some(id),
                ErrorCode::INVALID_PARAMS,
                "requestState is unknown or expired: send the request again without it",
                None,
            ));
        };
        let responses = params.get_object("inputResponses").unwrap_or_default();
        for (key, upstream_id) in std::mem::take(&mut fwd.parked_inputs) {
            match responses.get(&key) {
                Some(answer) => fwd.upstream.respond(&upstream_id, Ok(answer)).await,
                None => {
                    let err = jsonrpc::error_object(
                        ErrorCode::INVALID_PARAMS,
                        "the client gave no answer to this request",
                        None,
                    );
                    if let Ok(raw) = RawValue::from_string(err) {
                        fwd.upstream.respond(&upstream_id, Err(&raw)).await;
                    }
                }
            }
        }
        fwd.upstream.set_waiting_on_client(fwd.handle.id(), false);
        fwd.client_id = id.clone();
        Ok(fwd)
    }
}
