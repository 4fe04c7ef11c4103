//! Inbound: what an upstream sends on its own, and who it belongs to.
//!
//! Responses finish their calls; progress goes to the call named by its gateway token; other
//! notifications and server→client requests go to their owner ([`Upstream::owner_of`],
//! docs/ARCHITECTURE.md invariant 1), or reach nobody and are counted. List changes invalidate
//! the list cache and become [`Notice`]s; resource updates reach only the tenants subscribed
//! ([`Subscriber`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mcp_wire::era::meta;
use mcp_wire::jsonrpc;
use mcp_wire::{Id, Message, RawObject};
use palisade_ids::TenantId;
use serde_json::value::RawValue;
use tokio::sync::broadcast;

use super::calls::{CallEvent, PendingCall, Step};
use super::link::{Link, Readiness, Transport};
use super::{
    ClientDefaults, ListKind, Notice, Owner, Route, TRAILING, UpdateOwner, Upstream, lock, owner,
};

/// One tenant's subscription to a resource on an instance, counted while this lives.
pub struct Subscriber {
    pub(super) upstream: std::sync::Weak<Upstream>,
    pub(super) tenant: TenantId,
    pub(super) uri: String,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let Some(upstream) = self.upstream.upgrade() else {
            return;
        };
        let mut subs = lock(&upstream.subscribers);
        if let Some(tenants) = subs.get_mut(&self.uri) {
            if let Some(n) = tenants.get_mut(&self.tenant) {
                *n -= 1;
                if *n == 0 {
                    tenants.remove(&self.tenant);
                }
            }
            if tenants.is_empty() {
                subs.remove(&self.uri);
            }
        }
    }
}

impl Upstream {
    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }

    /// A legacy client session opened its GET stream: its own upstream session opens the
    /// upstream's, now or when it connects.
    pub(crate) fn session_listening(self: &Arc<Self>, session: &str) {
        let Some(instance) = self.pool.session(session) else {
            return;
        };
        instance.listening.store(true, Ordering::Relaxed);
        let link = match &*instance.readiness.borrow() {
            Readiness::Ready(link) => link.clone(),
            _ => return,
        };
        if let Transport::Http(t) = &link.transport {
            t.open_listen_stream(instance.clone(), link.clone());
        }
    }

    /// Counts `tenant` among the subscribers of the resource `uri` (the upstream's name) on
    /// this instance until the returned guard is dropped, with the session or listen that holds
    /// the subscription.
    pub fn subscriber(self: &Arc<Self>, tenant: &TenantId, uri: &str) -> Subscriber {
        *lock(&self.subscribers)
            .entry(uri.to_owned())
            .or_default()
            .entry(tenant.clone())
            .or_insert(0) += 1;
        Subscriber {
            upstream: Arc::downgrade(self),
            tenant: tenant.clone(),
            uri: uri.to_owned(),
        }
    }

    /// Whose an update of `uri` from this instance is; `None` when that is not established
    /// (several tenants, or none, subscribed to it on a shared server).
    pub(super) fn update_owner(&self, uri: &str) -> Option<UpdateOwner> {
        if let Some(session) = &self.client_session {
            return Some(UpdateOwner::Session(session.clone()));
        }
        if let Some(ctx) = &self.tenant {
            return Some(UpdateOwner::Tenant(ctx.tenant.clone()));
        }
        let subs = lock(&self.subscribers);
        let mut tenants = subs.get(uri)?.keys();
        match (tenants.next(), tenants.next()) {
            (Some(only), None) => Some(UpdateOwner::Tenant(only.clone())),
            _ => None,
        }
    }

    /// Tells this upstream's listeners something on its behalf (a subscription the gateway
    /// keeps for a session).
    pub(crate) fn publish(&self, notice: Notice) {
        let _ = self.notices.send(notice);
    }

    /// Who owns a message the upstream sent on its own (see [`owner`]). A child's stdout is one
    /// ordered stream, so a call's messages always precede its response there; only an HTTP
    /// upstream's separate GET stream can deliver them after it, so only there do calls that
    /// just finished count.
    pub(super) fn owner_of(
        &self,
        link: &Link,
        calls: &HashMap<u64, PendingCall>,
        origin: Option<u64>,
    ) -> Option<Owner> {
        if let Some(id) = origin {
            return calls.contains_key(&id).then_some(Owner::Call(id));
        }
        // Nothing names the owner: the message may come from anything any call on this link
        // set going, so it is attributed only if every call it carried was one principal's.
        if !link.served.by_one() {
            return None;
        }
        if matches!(link.transport, Transport::Stdio(_)) {
            return owner(calls, std::iter::empty());
        }
        let now = Instant::now();
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let trailing = recent
            .iter()
            .filter(|(t, _)| now.duration_since(*t) <= TRAILING)
            .map(|(_, r)| r);
        owner(calls, trailing)
    }

    /// Everything an upstream sends comes through here. `origin` is the call whose HTTP
    /// response stream carried the message, when there is one.
    pub(super) fn on_message(
        self: &Arc<Self>,
        link: &Arc<Link>,
        msg: Message,
        origin: Option<u64>,
    ) {
        match msg {
            Message::Response(resp) => {
                let Some(id) = resp.id.as_ref().and_then(Id::as_u64) else {
                    tracing::warn!(server = %self.name, "upstream sent a response without a usable id; dropped");
                    return;
                };
                self.finish(id, Ok(resp.outcome));
            }
            Message::Notification(n) => self.on_notification(link, n.method, n.params, origin),
            Message::Request(req) => self.on_request(link, req, origin),
        }
    }

    pub(super) fn on_notification(
        &self,
        link: &Link,
        method: String,
        params: Option<Box<RawValue>>,
        origin: Option<u64>,
    ) {
        let kind = match method.as_str() {
            "notifications/tools/list_changed" => Some(ListKind::Tools),
            "notifications/prompts/list_changed" => Some(ListKind::Prompts),
            "notifications/resources/list_changed" => Some(ListKind::Resources),
            _ => None,
        };
        if let Some(kind) = kind {
            // A legacy instance's lists are its primary's: that cache is the one to drop.
            let primary = self.primary.as_ref().and_then(std::sync::Weak::upgrade);
            let cache = primary.as_deref().unwrap_or(self);
            cache.invalidate(kind);
            if kind == ListKind::Resources {
                cache.invalidate(ListKind::ResourceTemplates);
            }
            // A client session's own upstream session told that session alone.
            let notice = match &self.client_session {
                Some(session) => Notice::ForSession {
                    session: session.clone(),
                    message: jsonrpc::notification(&method, params.as_ref().map(|p| p.get()))
                        .into(),
                },
                None => Notice::ListChanged(kind),
            };
            let _ = self.notices.send(notice);
            return;
        }
        if method == "notifications/subscriptions/acknowledged" {
            return;
        }
        if method == "notifications/resources/updated" {
            let obj = params.as_ref().and_then(|p| RawObject::parse(p.get()));
            // On a client's own `subscriptions/listen` (2026-07-28): that listen's alone, named
            // by the stream it came on or by its subscription id.
            let listen = origin.or_else(|| {
                obj.as_ref()
                    .and_then(|o| o.get_object("_meta"))
                    .and_then(|m| m.get(meta::SUBSCRIPTION_ID).map(|v| v.get().to_owned()))
                    .and_then(|id| id.parse::<u64>().ok())
            });
            if let Some(id) = listen {
                let calls = self.lock_calls();
                if let Some(call) = calls.get(&id) {
                    self.deliver(call, CallEvent::Notification { method, params });
                    return;
                }
            }
            if let (Some(obj), Some(p)) = (obj, params.as_ref())
                && let Some(uri) = obj.get_str("uri")
            {
                let Some(owner) = self.update_owner(&uri) else {
                    self.metrics.unattributed(&self.name, "notification");
                    tracing::debug!(server = %self.name, "resource update with subscribers in several tenants; dropped");
                    return;
                };
                let _ = self.notices.send(Notice::ResourceUpdated {
                    uri,
                    params: p.get().to_owned(),
                    owner,
                });
            }
            return;
        }
        if method == "notifications/progress" {
            let Some(mut obj) = params.as_ref().and_then(|p| RawObject::parse(p.get())) else {
                return;
            };
            let Some(id) = obj
                .get(meta::PROGRESS_TOKEN)
                .and_then(|t| t.get().parse::<u64>().ok())
            else {
                return;
            };
            let calls = self.lock_calls();
            if let Some(call) = calls.get(&id)
                && let Some(token) = &call.client_progress_token
            {
                obj.set_raw(meta::PROGRESS_TOKEN, token.clone());
                let params = Some(obj.to_raw());
                self.deliver(call, CallEvent::Notification { method, params });
            }
            return;
        }
        // Logs and anything else: only to the one client session that can own it.
        let calls = self.lock_calls();
        match self.owner_of(link, &calls, origin) {
            Some(Owner::Call(id)) => {
                if let Some(call) = calls.get(&id) {
                    self.deliver(call, CallEvent::Notification { method, params });
                }
            }
            Some(Owner::Session(Route::Client {
                session: Some(session),
                ..
            })) => {
                let message = jsonrpc::notification(&method, params.as_ref().map(|p| p.get()));
                let _ = self.notices.send(Notice::ForSession {
                    session,
                    message: message.into(),
                });
            }
            _ => {
                self.metrics.unattributed(&self.name, "notification");
                tracing::debug!(server = %self.name, %method, "notification not attributable to one client session; dropped");
            }
        }
    }

    pub(super) fn on_request(
        self: &Arc<Self>,
        link: &Arc<Link>,
        req: jsonrpc::Request,
        origin: Option<u64>,
    ) {
        if req.method == "ping" {
            self.send(link, jsonrpc::result(&req.id, "{}"), None, None);
            return;
        }
        let delivered = {
            let calls = self.lock_calls();
            match self.owner_of(link, &calls, origin) {
                Some(Owner::Call(id)) => calls.get(&id).map(|call| {
                    let event = CallEvent::Request {
                        upstream_id: req.id.clone(),
                        method: req.method.clone(),
                        params: req.params,
                    };
                    self.deliver(call, event)
                }),
                _ => None,
            }
        };
        let reply = match delivered {
            Some(true) => return,
            Some(false) => jsonrpc::error(
                Some(&req.id),
                jsonrpc::ErrorCode::INTERNAL_ERROR,
                "the client of this call is not reading what the gateway sends it; request refused",
                None,
            ),
            // Asked outside any call (e.g. right after the handshake): the gateway, the
            // upstream's one client, exposes no roots of its own.
            None if req.method == "roots/list" => jsonrpc::result(&req.id, r#"{"roots":[]}"#),
            None => {
                self.metrics.unattributed(&self.name, "request");
                tracing::warn!(server = %self.name, method = %req.method, "server request not attributable to one client call; refused");
                jsonrpc::error(
                    Some(&req.id),
                    jsonrpc::ErrorCode::INTERNAL_ERROR,
                    "the gateway could not attribute this request to exactly one client call in flight",
                    None,
                )
            }
        };
        self.send(link, reply, None, None);
    }

    /// For a modern upstream: keeps a `subscriptions/listen` open so list changes invalidate the
    /// cache and reach clients, as `list_changed` notifications do for legacy upstreams. Asked of
    /// every modern upstream, even one that does not announce `listChanged`: some send changes
    /// anyway, and a client talking to them directly would see them.
    pub(super) fn listen_for_changes(self: &Arc<Self>, link: &Arc<Link>) {
        let me = self.clone();
        let link = link.clone();
        tokio::spawn(async move {
            let mut pause = Duration::from_secs(1);
            while !link.closed.is_cancelled() {
                let mut params = RawObject::default();
                if let Ok(filter) = RawValue::from_string(
                    r#"{"toolsListChanged":true,"promptsListChanged":true,"resourcesListChanged":true}"#.into(),
                ) {
                    params.set_raw("notifications", filter);
                }
                let Ok(mut handle) = me.call_on(
                    &link,
                    "subscriptions/listen",
                    Some(&params),
                    Route::Internal,
                    ClientDefaults::default(),
                ) else {
                    return;
                };
                handle.deadline =
                    tokio::time::Instant::now() + Duration::from_secs(365 * 24 * 3600);
                let refused = loop {
                    match handle.next().await {
                        Step::Event(_) => continue,
                        Step::Done(Ok(Err(_))) => break true,
                        Step::Done(_) => break false,
                    }
                };
                if refused {
                    // Worth an operator's attention only from a server that says its lists change.
                    if link.info().announces_list_changes() {
                        tracing::info!(server = %me.name, "upstream refused subscriptions/listen; list changes will not be noticed");
                    } else {
                        tracing::debug!(server = %me.name, "upstream refused subscriptions/listen");
                    }
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = link.closed.cancelled() => return,
                }
                pause = (pause * 2).min(Duration::from_secs(60));
            }
        });
    }

    pub(super) fn notify_on(
        self: &Arc<Self>,
        link: &Arc<Link>,
        method: &str,
        params: Option<&str>,
    ) {
        self.send(link, jsonrpc::notification(method, params), None, None);
    }
}
