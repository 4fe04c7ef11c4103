//! Dispatch: what each MCP method means at the gateway.
//!
//! Some methods are answered here (the legacy lifecycle: `initialize`, `ping`,
//! `logging/setLevel`; the modern one: `server/discover`, `subscriptions/listen`), lists go to
//! the [`catalog`], and calls that reach one upstream go through the [`pipeline`]. Notifications and responses from the client are routed back to
//! the upstream and call they belong to. Nothing here knows about HTTP beyond the status codes
//! the modern era assigns to some errors.

use std::sync::Arc;
use std::time::Duration;

use mcp_wire::era::{self, meta};
use mcp_wire::jsonrpc::{self, ErrorCode, Notification, Request, Response};
use mcp_wire::{Era, Id, RawObject};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::auth::Principal;
use crate::catalog::{self, Addressing};
use crate::gateway::Gateway;
use crate::listens::{Full, Listen};
use crate::pipeline::{self, Answer, Caller, Forward, Refusal, complete_modern_result};
use crate::registry::Tenant;
use crate::session::{self, Awaiting, Session};
use crate::upstream::{CallEvent, ListKind, Notice, Route, Step, UpdateOwner, Upstream};

/// What the transport sends back.
pub enum Reply {
    /// One JSON-RPC message (HTTP 200).
    Message(Vec<u8>),
    /// The `initialize` result, and the session it opened.
    Initialized {
        body: Vec<u8>,
        session: Arc<Session>,
    },
    /// A notification or response was taken (HTTP 202).
    Accepted,
    /// A forwarded call: relay its messages, then its response.
    Call(Box<Forward>),
    /// A long-lived stream of notifications (`subscriptions/listen`), open while `listen` is.
    Stream {
        rx: mpsc::Receiver<Vec<u8>>,
        listen: Listen,
    },
    /// The request was refused (see [`Answer`] for how it is sent).
    Refused(Answer),
}

/// Handles one client request.
pub async fn request(
    gw: &Arc<Gateway>,
    principal: &Principal,
    caller: &Caller<'_>,
    req: Request,
) -> Reply {
    let id = &req.id;
    let params = req.params.as_deref();
    let method = req.method.as_str();
    let forward = |addressing| async move {
        match pipeline::forward(gw, caller, id, method, params, addressing).await {
            Ok(fwd) => Reply::Call(Box::new(fwd)),
            Err(refusal) => Reply::Refused(refusal.answer(id, caller.era)),
        }
    };
    match method {
        // 2026-07-28 removed the handshake and ping: unknown methods there, like any other.
        "initialize" if caller.era == Era::Legacy => {
            initialize(gw, principal, caller.tenant, &req).await
        }
        "server/discover" => Reply::Message(discover(gw, caller.tenant, id).await),
        "ping" if caller.era == Era::Legacy => Reply::Message(jsonrpc::result(id, "{}")),
        "tools/list" => list(gw, caller, id, params, ListKind::Tools).await,
        "prompts/list" => list(gw, caller, id, params, ListKind::Prompts).await,
        "resources/list" => list(gw, caller, id, params, ListKind::Resources).await,
        "resources/templates/list" => {
            list(gw, caller, id, params, ListKind::ResourceTemplates).await
        }
        "tools/call" => forward(Addressing::Tool).await,
        "prompts/get" => forward(Addressing::Prompt).await,
        "resources/read" => forward(Addressing::Resource).await,
        "completion/complete" => forward(Addressing::CompletionRef).await,
        "resources/subscribe" | "resources/unsubscribe" if caller.era == Era::Legacy => {
            let uri = params
                .and_then(|p| RawObject::parse(p.get()))
                .and_then(|o| o.get_str("uri"));
            let target = uri
                .as_deref()
                .and_then(|u| catalog::resolve_uri(caller.tenant, u));
            if let (Some(session), Some(uri)) = (&caller.session, &uri) {
                if method == "resources/subscribe" {
                    // What a shared server sends about a resource reaches only the tenants
                    // subscribed to it: this one is while the session holds the subscription.
                    let subscriber = target
                        .as_ref()
                        .map(|t| t.upstream.subscriber(&caller.tenant.id, &t.name));
                    if let Err(refused) = session.subscribe(uri, subscriber) {
                        return Reply::Message(subscribe_refused(caller.tenant, id, &refused));
                    }
                } else {
                    session.unsubscribe(uri);
                }
            }
            // 2026-07-28 has no resources/subscribe: when the gateway speaks that era to the
            // upstream even for legacy clients, it subscribes on a listen of its own for the
            // session, and acknowledges.
            let modern_target =
                target.filter(|t| t.upstream.era_for(Era::Legacy) == Some(Era::Modern));
            match (modern_target, &caller.session, uri) {
                (Some(target), Some(session), Some(uri)) => {
                    if method == "resources/subscribe" {
                        watch_for_session(
                            caller.tenant,
                            session,
                            target.upstream.clone(),
                            (uri, target.name),
                        );
                    } else {
                        session.unwatch(&uri);
                    }
                    Reply::Message(jsonrpc::result(id, "{}"))
                }
                _ => forward(Addressing::Resource).await,
            }
        }
        "logging/setLevel" if caller.era == Era::Legacy => {
            let level = params
                .and_then(|p| RawObject::parse(p.get()))
                .and_then(|o| o.get_str("level"));
            match (level, &caller.session) {
                (Some(level), Some(session)) => {
                    session.log_level.store(
                        session::log_rank(&level),
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    Reply::Message(jsonrpc::result(id, "{}"))
                }
                _ => Reply::Message(jsonrpc::error(
                    Some(id),
                    ErrorCode::INVALID_PARAMS,
                    "params.level must be a log level",
                    None,
                )),
            }
        }
        "subscriptions/listen" if caller.era == Era::Modern => {
            listen(gw, principal, caller, id, params)
        }
        other => {
            let refusal = Refusal::MethodNotFound(other.to_owned());
            Reply::Refused(refusal.answer(id, caller.era))
        }
    }
}

/// Handles a client notification.
pub fn notification(caller: &Caller<'_>, n: &Notification) {
    if n.method == "notifications/cancelled" {
        let request_id = n
            .params
            .as_ref()
            .and_then(|p| RawObject::parse(p.get()))
            .and_then(|o| o.get("requestId").map(|r| r.get().to_owned()));
        if let (Some(session), Some(request_id)) = (&caller.session, request_id) {
            session.cancel_call(&request_id);
        }
    }
    // `notifications/initialized`, `roots/list_changed` and others need nothing from the gateway.
}

/// Handles a client's response to a server→client request: back to the upstream that asked.
pub async fn response(caller: &Caller<'_>, resp: Response) {
    let (Some(session), Some(id)) = (&caller.session, resp.id.as_ref()) else {
        return;
    };
    match session.take_server_request(id) {
        Some(Awaiting::Upstream(upstream, upstream_id)) => match &resp.outcome {
            Ok(result) => upstream.respond(&upstream_id, Ok(result)).await,
            Err(error) => upstream.respond(&upstream_id, Err(error)).await,
        },
        Some(Awaiting::Gateway(tx)) => {
            let _ = tx.send(resp.outcome);
        }
        None => tracing::debug!("client answered an unknown server request; dropped"),
    }
}

async fn initialize(
    gw: &Arc<Gateway>,
    principal: &Principal,
    tenant: &Tenant,
    req: &Request,
) -> Reply {
    let requested = req
        .params
        .as_ref()
        .and_then(|p| RawObject::parse(p.get()))
        .and_then(|o| o.get_str("protocolVersion"));
    let Some(requested) = requested else {
        return Reply::Message(jsonrpc::error(
            Some(&req.id),
            ErrorCode::INVALID_PARAMS,
            "params.protocolVersion must be a string",
            None,
        ));
    };
    let version = era::negotiate_legacy(&requested);
    let (capabilities, instructions) = merged_capabilities(tenant).await;
    let mut body = json!({
        "protocolVersion": version,
        "capabilities": capabilities,
        "serverInfo": server_info(),
    });
    if let Some(instructions) = instructions {
        body["instructions"] = Value::String(instructions);
    }
    let capabilities = req
        .params
        .as_ref()
        .and_then(|p| RawObject::parse(p.get()))
        .and_then(|o| o.get("capabilities").map(ToOwned::to_owned))
        .filter(|c| c.get().starts_with('{'))
        .unwrap_or_else(|| RawObject::default().to_raw());
    if capabilities.get().len() > session::MAX_CAPABILITIES_BYTES {
        gw.metrics.rejected("session_limit");
        return Reply::Message(jsonrpc::error(
            Some(&req.id),
            ErrorCode::INVALID_PARAMS,
            &format!(
                "params.capabilities is larger than {} bytes; declare only the capabilities the client has",
                session::MAX_CAPABILITIES_BYTES
            ),
            None,
        ));
    }
    let session = match gw.sessions.create(principal, version, capabilities) {
        Ok(session) => session,
        Err(refused) => {
            gw.metrics.rejected("session_limit");
            return session_refused(tenant, &req.id, &refused);
        }
    };
    Reply::Initialized {
        body: jsonrpc::result(&req.id, &body.to_string()),
        session,
    }
}

/// The 429 answer to an `initialize` the tenant may not make now.
fn session_refused(tenant: &Tenant, id: &Id, refused: &session::Refused) -> Reply {
    let (message, data, retry_after_ms) = match refused {
        session::Refused::Full(limit) => (
            format!(
                "tenant `{}` already has {limit} open sessions (limits.max_sessions_per_tenant): end unused ones with DELETE, or raise the limit",
                tenant.id
            ),
            json!({ "limit": "limits.max_sessions_per_tenant", "value": limit }),
            None,
        ),
        session::Refused::Memory(budget) => (
            format!(
                "tenant `{}`'s sessions already store {budget} bytes (limits.session_memory_per_tenant): end unused ones with DELETE, or raise the limit",
                tenant.id
            ),
            json!({ "limit": "limits.session_memory_per_tenant", "value": budget }),
            None,
        ),
        session::Refused::Rate { retry_after } => (
            format!(
                "tenant `{}` opens sessions faster than limits.initialize_rate allows; retry later",
                tenant.id
            ),
            json!({ "limit": "limits.initialize_rate", "retryAfterMs": retry_after.as_millis() as u64 }),
            Some(retry_after.as_millis() as u64),
        ),
    };
    let refusal = Refusal::LimitReached {
        message,
        data,
        retry_after_ms,
    };
    Reply::Refused(refusal.answer(id, Era::Legacy))
}

/// The answer to a `resources/subscribe` the session may not hold.
fn subscribe_refused(tenant: &Tenant, id: &Id, refused: &session::SubscribeRefused) -> Vec<u8> {
    let (code, message) = match refused {
        session::SubscribeRefused::UriTooLong => (
            ErrorCode::INVALID_PARAMS,
            format!("params.uri is longer than {} bytes", session::MAX_URI_BYTES),
        ),
        session::SubscribeRefused::TooMany => (
            ErrorCode::LIMIT_REACHED,
            format!(
                "a session may hold at most {} resource subscriptions; unsubscribe from some first",
                session::MAX_SUBSCRIPTIONS
            ),
        ),
        session::SubscribeRefused::Memory(budget) => (
            ErrorCode::LIMIT_REACHED,
            format!(
                "tenant `{}`'s sessions already store {budget} bytes (limits.session_memory_per_tenant); unsubscribe or end unused sessions",
                tenant.id
            ),
        ),
    };
    jsonrpc::error(Some(id), code, &message, None)
}

async fn discover(_gw: &Arc<Gateway>, tenant: &Tenant, id: &Id) -> Vec<u8> {
    let (capabilities, instructions) = merged_capabilities(tenant).await;
    let mut body = json!({
        "resultType": "complete",
        "supportedVersions": era::ALL_VERSIONS,
        "capabilities": capabilities,
        "ttlMs": 0,
        "cacheScope": "private",
        "_meta": { "io.modelcontextprotocol/serverInfo": server_info() },
    });
    if let Some(instructions) = instructions {
        body["instructions"] = Value::String(instructions);
    }
    jsonrpc::result(id, &body.to_string())
}

fn server_info() -> Value {
    json!({ "name": "palisade", "title": "Palisade MCP gateway", "version": env!("CARGO_PKG_VERSION") })
}

/// The union of what the tenant's upstreams offer. `listChanged` is always declared: the
/// gateway itself announces changes when an upstream reconnects.
async fn merged_capabilities(tenant: &Tenant) -> (Value, Option<String>) {
    let infos = futures_util::future::join_all(tenant.upstreams.iter().map(|u| async move {
        (
            u.name.clone(),
            u.info(Duration::from_millis(u.config.list_timeout_ms))
                .await,
        )
    }))
    .await;
    let mut caps = serde_json::Map::new();
    let mut instructions = Vec::new();
    let mut subscribe = false;
    for (name, info) in infos {
        let Ok(info) = info else { continue };
        let c = &*info.capabilities;
        for key in ["tools", "prompts"] {
            if c.get(key).is_some() {
                caps.insert(key.into(), json!({ "listChanged": true }));
            }
        }
        if let Some(r) = c.get("resources") {
            subscribe |= r.get("subscribe").and_then(Value::as_bool).unwrap_or(false);
            caps.insert(
                "resources".into(),
                json!({ "listChanged": true, "subscribe": subscribe }),
            );
        }
        for key in ["logging", "completions"] {
            if c.get(key).is_some() {
                caps.insert(key.into(), json!({}));
            }
        }
        if let Some(text) = &info.instructions {
            instructions.push(format!("[{name}] {text}"));
        }
    }
    let instructions = (!instructions.is_empty()).then(|| instructions.join("\n\n"));
    (Value::Object(caps), instructions)
}

async fn list(
    gw: &Arc<Gateway>,
    caller: &Caller<'_>,
    id: &Id,
    params: Option<&serde_json::value::RawValue>,
    kind: ListKind,
) -> Reply {
    let cursor = params
        .and_then(|p| RawObject::parse(p.get()))
        .and_then(|o| o.get_str("cursor"));
    let items = catalog::list_items(&gw.names, caller.tenant, kind).await;
    let mut page = match catalog::page(kind, &items, cursor.as_deref()) {
        Ok(page) => page,
        Err(catalog::BadCursor) => {
            return Reply::Message(jsonrpc::error(
                Some(id),
                ErrorCode::INVALID_PARAMS,
                "invalid cursor",
                None,
            ));
        }
    };
    if caller.era == Era::Modern {
        complete_modern_result(&mut page, true);
    }
    Reply::Message(jsonrpc::result(id, &page.to_json()))
}

/// `subscriptions/listen`: acknowledges the accepted filter, then relays list changes and
/// updates of the resources it names (those of the tenant's upstreams; at most
/// [`session::MAX_SUBSCRIPTIONS`]).
fn listen(
    gw: &Arc<Gateway>,
    principal: &Principal,
    caller: &Caller<'_>,
    id: &Id,
    params: Option<&serde_json::value::RawValue>,
) -> Reply {
    let (tenant, subject) = (caller.tenant, &caller.subject);
    let max = gw.config().limits.max_listens_per_tenant;
    let listen = match gw.listens.open(principal, max) {
        Ok(listen) => listen,
        Err(Full(limit)) => {
            gw.metrics.rejected("listen_limit");
            let data = json!({ "limit": "limits.max_listens_per_tenant", "value": limit });
            let message = format!(
                "tenant `{}` already holds {limit} subscriptions/listen streams (limits.max_listens_per_tenant); close unused ones",
                tenant.id
            );
            let refusal = Refusal::LimitReached {
                message,
                data,
                retry_after_ms: None,
            };
            return Reply::Refused(refusal.answer(id, caller.era));
        }
    };
    let requested: Value = params
        .and_then(|p| serde_json::from_str::<Value>(p.get()).ok())
        .map(|p| p["notifications"].clone())
        .unwrap_or(Value::Null);
    let wants = |key: &str| requested.get(key).and_then(Value::as_bool).unwrap_or(false);
    let accepted: Vec<(ListKind, &str)> = [
        (ListKind::Tools, "toolsListChanged"),
        (ListKind::Prompts, "promptsListChanged"),
        (ListKind::Resources, "resourcesListChanged"),
    ]
    .into_iter()
    .filter(|(_, key)| wants(key))
    .collect();
    let mut filter = serde_json::Map::new();
    for (_, key) in &accepted {
        filter.insert((*key).into(), Value::Bool(true));
    }
    // The resources it names that belong to one of the tenant's upstreams, by upstream.
    let mut watched: Vec<(Arc<Upstream>, Vec<Watched>)> = Vec::new();
    let uris = requested["resourceSubscriptions"].as_array();
    for uri in uris
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .take(session::MAX_SUBSCRIPTIONS)
    {
        let Some(target) = catalog::resolve_uri(tenant, uri) else {
            continue;
        };
        match watched
            .iter_mut()
            .find(|(u, _)| Arc::ptr_eq(u, target.upstream))
        {
            Some((_, list)) => list.push((uri.to_owned(), target.name)),
            None => watched.push((target.upstream.clone(), vec![(uri.to_owned(), target.name)])),
        }
    }
    if !watched.is_empty() {
        let named: Vec<&str> = watched
            .iter()
            .flat_map(|(_, l)| l.iter().map(|(exposed, _)| exposed.as_str()))
            .collect();
        filter.insert("resourceSubscriptions".into(), json!(named));
    }
    let sub_meta = json!({ (meta::SUBSCRIPTION_ID): serde_json::from_str::<Value>(id.as_json()).unwrap_or(Value::Null) });
    let ack = json!({ "notifications": filter, "_meta": sub_meta }).to_string();
    let (tx, rx) = mpsc::channel(64);
    let _ = tx.try_send(jsonrpc::notification(
        "notifications/subscriptions/acknowledged",
        Some(&ack),
    ));
    // Updates from an upstream spoken to in the legacy era come as its notices; those of the
    // modern era on a listen of the gateway's own for this stream.
    let mut by_notice = std::collections::HashSet::new();
    // This listen counts among the subscribers of what it names on shared servers while it
    // lives: the relay below holds these.
    let mut subscribers = Vec::new();
    for (upstream, uris) in watched {
        if upstream.era_for(Era::Modern) == Some(Era::Modern) {
            watch_modern(
                client_route(&tenant.id, subject),
                upstream,
                uris,
                tx.clone(),
                Some(sub_meta.clone()),
            );
        } else {
            by_notice.extend(uris.iter().map(|(exposed, _)| exposed.clone()));
            let subscribes = uris
                .iter()
                .filter_map(|(_, own)| {
                    let mut params = RawObject::parse(&json!({ "uri": own }).to_string())?;
                    pipeline::tell_the_tenant(gw, caller, &upstream, None, &mut params);
                    subscribers.push(upstream.subscriber(&tenant.id, own));
                    Some(params)
                })
                .collect();
            subscribe_legacy(client_route(&tenant.id, subject), upstream, subscribes);
        }
    }
    let kinds: Vec<ListKind> = accepted.iter().map(|(k, _)| *k).collect();
    let namespacing = tenant.namespacing;
    let tenant_id = tenant.id.clone();
    let params = json!({ "_meta": sub_meta }).to_string();
    relay_notices(gw, tenant, tx, move |notice, upstream| {
        // Held for as long as the relay runs, that is as long as the listen.
        let _subscribers = &subscribers;
        match notice {
            Notice::ListChanged(kind) if kinds.contains(kind) => kind
                .changed_notification()
                .map(|m| jsonrpc::notification(m, Some(&params))),
            Notice::ResourceUpdated {
                uri,
                owner: UpdateOwner::Tenant(owner),
                ..
            } if *owner == tenant_id => {
                let exposed = if namespacing {
                    format!("{}+{uri}", upstream.name)
                } else {
                    uri.clone()
                };
                by_notice.contains(&exposed).then(|| {
                    let p = json!({ "uri": exposed, "_meta": sub_meta });
                    jsonrpc::notification("notifications/resources/updated", Some(&p.to_string()))
                })
            }
            _ => None,
        }
    });
    Reply::Stream { rx, listen }
}

/// The route of what the gateway itself keeps open for a client (no session of the upstream's).
fn client_route(tenant: &Arc<str>, subject: &Arc<str>) -> Route {
    Route::Client {
        tenant: tenant.clone(),
        subject: subject.clone(),
        session: None,
    }
}

/// A resource a `subscriptions/listen` names: as the client names it, and as its upstream does.
type Watched = (String, String);

/// How long the gateway's own listen for a client's stream may stay open.
const LISTEN_FOR: u64 = 365 * 24 * 3600 * 1000;

/// A 2026-07-28 upstream's updates of `uris` for one client: a listen of the gateway's own, open
/// while `tx` is, whose updates go to `tx` under the client's names (with the client's
/// subscription id when it listens itself).
fn watch_modern(
    route: Route,
    upstream: Arc<Upstream>,
    uris: Vec<Watched>,
    tx: mpsc::Sender<Vec<u8>>,
    sub_meta: Option<Value>,
) {
    tokio::spawn(async move {
        let own: Vec<&str> = uris.iter().map(|(_, u)| u.as_str()).collect();
        let params = json!({ "notifications": { "resourceSubscriptions": own } }).to_string();
        let Some(params) = RawObject::parse(&params) else {
            return;
        };
        let call = upstream
            .call(
                "subscriptions/listen",
                Some(&params),
                route,
                Default::default(),
            )
            .await;
        let Ok(mut handle) = call else { return };
        handle.set_timeout(LISTEN_FOR);
        loop {
            let step = tokio::select! {
                step = handle.next() => step,
                _ = tx.closed() => return,
            };
            const UPDATED: &str = "notifications/resources/updated";
            let params = match step {
                Step::Done(_) => return,
                Step::Event(CallEvent::Notification { method, params }) if method == UPDATED => {
                    params
                }
                Step::Event(_) => continue,
            };
            let uri = params
                .as_deref()
                .and_then(|p| RawObject::parse(p.get()))
                .and_then(|o| o.get_str("uri"));
            let Some((exposed, _)) = uri.and_then(|u| uris.iter().find(|(_, own)| *own == u))
            else {
                continue;
            };
            let mut p = json!({ "uri": exposed });
            if let Some(m) = &sub_meta {
                p["_meta"] = m.clone();
            }
            let update = jsonrpc::notification(UPDATED, Some(&p.to_string()));
            if tx.send(update).await.is_err() {
                return;
            }
        }
    });
}

/// A legacy session's subscription to a resource of an upstream spoken to in 2026-07-28: a
/// listen of the gateway's own for it, whose updates reach the session's GET stream, until the
/// session unsubscribes or ends.
fn watch_for_session(
    tenant: &Tenant,
    session: &Arc<Session>,
    upstream: Arc<Upstream>,
    uri: Watched,
) {
    let Some(stop) = session.watch(&uri.0) else {
        return;
    };
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
    let publisher = upstream.clone();
    let (session_id, closed) = (session.id.clone(), session.closed.clone());
    tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                m = rx.recv() => m,
                _ = stop.cancelled() => None,
                _ = closed.cancelled() => None,
            };
            let Some(message) = message else { return };
            publisher.publish(Notice::ForSession {
                session: session_id.clone(),
                message: message.into(),
            });
        }
    });
    let route = client_route(&tenant.id, &session.subject);
    watch_modern(route, upstream, vec![uri], tx, None);
}

/// A legacy-era upstream's updates of `uris`: subscribed on the connection the gateway shares
/// among modern clients; its updates reach every listener that names them through the
/// upstream's notices. (Not unsubscribed when the listener goes: other listeners may share the
/// subscription, and updates nobody named are not relayed.)
fn subscribe_legacy(route: Route, upstream: Arc<Upstream>, subscribes: Vec<RawObject>) {
    tokio::spawn(async move {
        for params in subscribes {
            let call = upstream
                .call(
                    "resources/subscribe",
                    Some(&params),
                    route.clone(),
                    Default::default(),
                )
                .await;
            if let Ok(mut handle) = call {
                while let Step::Event(_) = handle.next().await {}
            }
        }
    });
}

/// Messages for a legacy session's GET stream: list changes, and updates of subscribed resources.
pub fn relay_to_session(
    gw: &Arc<Gateway>,
    tenant: &Tenant,
    session: &Arc<Session>,
    tx: mpsc::Sender<Vec<u8>>,
) {
    let namespacing = tenant.namespacing;
    let session = session.clone();
    for upstream in &tenant.upstreams {
        upstream.session_listening(&session.id);
    }
    relay_notices(gw, tenant, tx, move |notice, upstream| match notice {
        Notice::ForSession {
            session: owner,
            message,
        } => (owner.as_ref() == session.id.as_ref()).then(|| message.to_vec()),
        Notice::ListChanged(kind) => kind
            .changed_notification()
            .map(|m| jsonrpc::notification(m, None)),
        Notice::ResourceUpdated { uri, params, owner } => {
            let mine = match owner {
                UpdateOwner::Session(id) => *id == session.id,
                UpdateOwner::Tenant(tenant) => *tenant == session.tenant,
            };
            if !mine {
                return None;
            }
            let exposed = if namespacing {
                format!("{}+{uri}", upstream.name)
            } else {
                uri.clone()
            };
            if !session.is_subscribed(&exposed) {
                return None;
            }
            let mut obj = RawObject::parse(params)?;
            obj.set_str("uri", &exposed);
            Some(jsonrpc::notification(
                "notifications/resources/updated",
                Some(&obj.to_json()),
            ))
        }
    });
}

/// One task per upstream of the tenant, feeding `tx` until it closes or the gateway drains.
fn relay_notices<F>(gw: &Arc<Gateway>, tenant: &Tenant, tx: mpsc::Sender<Vec<u8>>, render: F)
where
    F: Fn(&Notice, &Upstream) -> Option<Vec<u8>> + Send + Sync + 'static,
{
    let render = Arc::new(render);
    for upstream in &tenant.upstreams {
        let mut notices = upstream.subscribe();
        let upstream = upstream.clone();
        let tx = tx.clone();
        let render = render.clone();
        let draining = gw.draining.clone();
        let tenant_closed = tenant.closed.clone();
        tokio::spawn(async move {
            loop {
                let notice = tokio::select! {
                    n = notices.recv() => n,
                    _ = tx.closed() => return,
                    _ = draining.cancelled() => return,
                    _ = tenant_closed.cancelled() => return,
                };
                match notice {
                    Ok(notice) => {
                        if let Some(msg) = render(&notice, &upstream)
                            && tx.try_send(msg).is_err()
                            && tx.is_closed()
                        {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }
}

/// The modern era's checks of a request's `_meta` against its headers. `Err` is the HTTP
/// status and the error message.
pub fn check_modern(
    req_method: &str,
    params: Option<&serde_json::value::RawValue>,
    id: Option<&Id>,
    headers: &ModernHeaders<'_>,
) -> Result<(), (u16, Vec<u8>)> {
    let bad = |code: ErrorCode, msg: &str, data: Option<Value>| {
        (400, jsonrpc::error(id, code, msg, data.as_ref()))
    };
    let params_obj = params.and_then(|p| RawObject::parse(p.get()));
    let meta_obj = params_obj.as_ref().and_then(|p| p.get_object("_meta"));
    let Some(meta_obj) = meta_obj else {
        return Err(bad(
            ErrorCode::INVALID_PARAMS,
            "params._meta is required in protocol version 2026-07-28",
            None,
        ));
    };
    let Some(version) = meta_obj.get_str(meta::PROTOCOL_VERSION) else {
        return Err(bad(
            ErrorCode::INVALID_PARAMS,
            "params._meta[\"io.modelcontextprotocol/protocolVersion\"] is required",
            None,
        ));
    };
    // A header that disagrees with the body is a mismatch before it is anything else.
    if let Some(h) = headers.protocol_version
        && h != version
    {
        return Err(bad(
            ErrorCode::HEADER_MISMATCH,
            "the MCP-Protocol-Version header must equal params._meta protocolVersion",
            None,
        ));
    }
    if Era::of_version(&version) != Some(Era::Modern) {
        return Err(bad(
            ErrorCode::UNSUPPORTED_PROTOCOL_VERSION,
            &format!("unsupported protocol version: {version}"),
            Some(json!({ "supported": era::ALL_VERSIONS, "requested": version })),
        ));
    }
    if headers.protocol_version.is_none() {
        return Err(bad(
            ErrorCode::HEADER_MISMATCH,
            "the MCP-Protocol-Version header is required in protocol version 2026-07-28",
            None,
        ));
    }
    if meta_obj.get(meta::CLIENT_CAPABILITIES).is_none() {
        return Err(bad(
            ErrorCode::INVALID_PARAMS,
            "params._meta[\"io.modelcontextprotocol/clientCapabilities\"] is required",
            None,
        ));
    }
    if let Some(m) = headers.method {
        if m != req_method {
            return Err(bad(
                ErrorCode::HEADER_MISMATCH,
                "the Mcp-Method header does not match the request's method",
                None,
            ));
        }
    } else if id.is_some() {
        return Err(bad(
            ErrorCode::HEADER_MISMATCH,
            "the Mcp-Method header is required",
            None,
        ));
    }
    if let Some(field) = era::name_field(req_method) {
        let body_name = params_obj.as_ref().and_then(|p| p.get_str(field));
        if headers.name != body_name.as_deref() {
            return Err(bad(
                ErrorCode::HEADER_MISMATCH,
                &format!("the Mcp-Name header must equal params.{field}"),
                None,
            ));
        }
    }
    Ok(())
}

/// The modern-era headers of a request.
pub struct ModernHeaders<'a> {
    pub protocol_version: Option<&'a str>,
    pub method: Option<&'a str>,
    pub name: Option<&'a str>,
}
