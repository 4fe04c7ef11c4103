//! What stays open for a client: `subscriptions/listen` streams (modern), a legacy session's
//! resource subscriptions, and the relay of upstream notices to them. What a shared server sends
//! about a resource reaches only the tenants subscribed to it.

use std::sync::Arc;

use mcp_wire::era::meta;
use mcp_wire::jsonrpc::{self, ErrorCode};
use mcp_wire::{Era, Id, RawObject};
use palisade_ids::TenantId;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::Reply;
use crate::auth::Principal;
use crate::catalog::{self};
use crate::gateway::Gateway;
use crate::listens::Full;
use crate::pipeline::{self, Caller, Refusal};
use crate::registry::Tenant;
use crate::session::{self, Session};
use crate::upstream::{CallEvent, ListKind, Notice, Route, Step, UpdateOwner, Upstream};

/// `resources/subscribe` and `resources/unsubscribe` of a legacy session: the session holds the
/// subscription (so that what a shared server sends about the resource reaches this tenant
/// while it does). `None`: the upstream subscribes itself, so the call goes on to it.
pub(super) async fn subscribe(
    gw: &Gateway,
    caller: &Caller<'_>,
    id: &Id,
    params: Option<&RawValue>,
    subscribe: bool,
) -> Option<Reply> {
    let uri = params
        .and_then(|p| RawObject::parse(p.get()))
        .and_then(|o| o.get_str("uri"));
    let target = uri
        .as_deref()
        .and_then(|u| catalog::resolve_uri(caller.tenant, u));
    if let (Some(session), Some(uri)) = (&caller.session, &uri) {
        if subscribe {
            let subscriber = target
                .as_ref()
                .map(|t| t.upstream.subscriber(&caller.tenant.id, &t.name));
            match session.subscribe(uri, subscriber) {
                Err(refused) => {
                    return Some(Reply::Message(subscribe_refused(
                        caller.tenant,
                        id,
                        &refused,
                    )));
                }
                Ok(true) => gw.sessions.share_subscription(session, uri, true).await,
                Ok(false) => {}
            }
        } else {
            session.unsubscribe(uri);
            gw.sessions.share_subscription(session, uri, false).await;
        }
    }
    // 2026-07-28 has no resources/subscribe: when the gateway speaks that era to the upstream
    // even for legacy clients, it subscribes on a listen of its own for the session, and
    // acknowledges.
    let modern_target = target.filter(|t| t.upstream.era_for(Era::Legacy) == Some(Era::Modern));
    let (Some(target), Some(session), Some(uri)) = (modern_target, &caller.session, uri) else {
        return None;
    };
    if subscribe {
        let watched = (uri, target.name);
        watch_for_session(caller.tenant, session, target.upstream.clone(), watched);
    } else {
        session.unwatch(&uri);
    }
    Some(Reply::Message(jsonrpc::result(id, "{}")))
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

/// `subscriptions/listen`: acknowledges the accepted filter, then relays list changes and
/// updates of the resources it names (those of the tenant's upstreams; at most
/// [`session::MAX_SUBSCRIPTIONS`]).
pub(super) fn listen(
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
pub(super) fn client_route(tenant: &TenantId, subject: &Arc<str>) -> Route {
    Route::Client {
        tenant: tenant.clone(),
        subject: subject.clone(),
        session: None,
    }
}

/// A resource a `subscriptions/listen` names: as the client names it, and as its upstream does.
pub(super) type Watched = (String, String);

/// How long the gateway's own listen for a client's stream may stay open.
pub(super) const LISTEN_FOR: u64 = 365 * 24 * 3600 * 1000;

/// A 2026-07-28 upstream's updates of `uris` for one client: a listen of the gateway's own, open
/// while `tx` is, whose updates go to `tx` under the client's names (with the client's
/// subscription id when it listens itself).
pub(super) fn watch_modern(
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
pub(super) fn watch_for_session(
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
pub(super) fn subscribe_legacy(route: Route, upstream: Arc<Upstream>, subscribes: Vec<RawObject>) {
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
pub(crate) fn relay_to_session(
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
        // Unwrapped by `relay_notices`.
        Notice::Relayed(_) => None,
    });
}

/// One task per upstream of the tenant, feeding `tx` until it closes or the gateway drains.
pub(super) fn relay_notices<F>(
    gw: &Arc<Gateway>,
    tenant: &Tenant,
    tx: mpsc::Sender<Vec<u8>>,
    render: F,
) where
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
                        let notice = match notice {
                            Notice::Relayed(notice) => *notice,
                            here => here,
                        };
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
