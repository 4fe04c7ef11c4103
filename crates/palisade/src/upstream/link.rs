//! Links: one live connection of an instance (a child process over stdio, or an HTTP endpoint
//! with its MCP session), numbered by generation.
//!
//! [`Upstream::link`] waits for the instance's [`Readiness`] (starting an on-demand instance);
//! [`Upstream::connect`] makes a link and runs the handshake; [`Upstream::request_on`] is a
//! request of the gateway's own on a link (handshake, health, lists).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use mcp_wire::jsonrpc;
use mcp_wire::{Era, Id};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::calls::{Forget, PendingCall, now_micros};
use super::{
    Outcome, Outgoing, Route, TenantContext, Upstream, UpstreamError, UpstreamInfo, attribution,
    handshake, http, sandbox, stdio, template,
};

pub(super) enum Readiness {
    Starting,
    Ready(Arc<Link>),
    Down(String),
    /// An on-demand instance with no process: it starts on the next use.
    Idle,
    Stopped,
}

/// One live connection to an upstream.
pub(crate) struct Link {
    pub(crate) generation: u64,
    /// Set once the handshake succeeds; calls are only routed to links that have it.
    pub(super) info: OnceLock<UpstreamInfo>,
    pub(super) transport: Transport,
    pub(super) closed: CancellationToken,
    pub(super) close_reason: Mutex<Option<String>>,
    pub(super) started: Instant,
    /// Client calls sent on this link (for recycling and the process list).
    pub(super) calls: AtomicU64,
    /// The principals whose calls this link has carried: messages nobody can be named the
    /// owner of are attributed only while there has been one.
    pub(super) served: attribution::Served,
}

pub(super) enum Transport {
    Stdio(stdio::StdioTransport),
    Http(http::HttpTransport),
}

impl Link {
    pub(crate) fn info(&self) -> &UpstreamInfo {
        self.info.get().unwrap_or_else(|| handshake::provisional())
    }

    pub(super) fn close(&self, reason: String) {
        if let Ok(mut r) = self.close_reason.lock() {
            r.get_or_insert(reason);
        }
        self.closed.cancel();
    }

    pub(super) fn reason(&self) -> String {
        self.close_reason
            .lock()
            .ok()
            .and_then(|r| r.clone())
            .unwrap_or_else(|| "connection closed".into())
    }
}

impl Transport {
    pub(super) async fn stop(&self) {
        match self {
            Transport::Stdio(t) => t.stop().await,
            Transport::Http(t) => t.stop().await,
        }
    }
}

impl Upstream {
    /// The handshake result of the current link, waiting for one up to `wait`.
    pub async fn info(self: &Arc<Self>, wait: Duration) -> Result<UpstreamInfo, UpstreamError> {
        Ok(self.link(wait).await?.info().clone())
    }

    /// The era of the live link, if there is one.
    pub fn era(&self) -> Option<Era> {
        match &*self.readiness.borrow() {
            Readiness::Ready(link) => Some(link.info().era),
            _ => None,
        }
    }

    pub(crate) fn is_ready(&self) -> bool {
        matches!(*self.readiness.borrow(), Readiness::Ready(_))
    }

    pub(super) async fn link(&self, wait: Duration) -> Result<Arc<Link>, UpstreamError> {
        // A tenant's own instance that is down is restarting with backoff: its calls fail at
        // once with the reason rather than queueing behind a crash loop; so do a legacy
        // instance's when the server refused the era.
        let fail_fast = self.tenant.is_some() || self.refused.load(Ordering::Relaxed);
        if let Some(od) = &self.on_demand {
            od.last_used
                .store(od.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
            od.drain.store(false, Ordering::Release);
            if let Readiness::Down(reason) = &*self.readiness.borrow()
                && fail_fast
            {
                return Err(self.unavailable(format!("{reason}; restarting with backoff")));
            }
            od.wanted.send_if_modified(|w| !std::mem::replace(w, true));
        }
        let mut rx = self.readiness.subscribe();
        let waited = tokio::time::timeout(wait, async {
            loop {
                match &*rx.borrow_and_update() {
                    Readiness::Ready(link) => return Ok(link.clone()),
                    Readiness::Stopped => {
                        return Err("the gateway is shutting down".to_string());
                    }
                    // A tenant's own instance that failed to start says why at once.
                    Readiness::Down(reason)
                        if self.tenant.is_some() || self.refused.load(Ordering::Relaxed) =>
                    {
                        return Err(reason.clone());
                    }
                    Readiness::Idle => {
                        if let Some(od) = &self.on_demand {
                            od.wanted.send_if_modified(|w| !std::mem::replace(w, true));
                        }
                    }
                    Readiness::Starting | Readiness::Down(_) => {}
                }
                if rx.changed().await.is_err() {
                    return Err("the gateway is shutting down".to_string());
                }
            }
        })
        .await;
        match waited {
            Ok(Ok(link)) => Ok(link),
            Ok(Err(reason)) => Err(self.unavailable(reason)),
            Err(_) => {
                let reason = match &*self.readiness.borrow() {
                    Readiness::Down(reason) => format!("{reason}; restarting with backoff"),
                    _ => format!("not connected within {} ms", wait.as_millis()),
                };
                Err(self.unavailable(reason))
            }
        }
    }

    pub(super) fn unavailable(&self, reason: String) -> UpstreamError {
        UpstreamError::Unavailable {
            server: self.name.clone(),
            reason,
        }
    }

    /// The secrets the template uses that the config does not give, from the registry store.
    pub(super) async fn stored_secrets(
        &self,
        ctx: &TenantContext,
    ) -> Result<template::StoreSecrets, String> {
        let mut out = template::StoreSecrets::new();
        let Some(vault) = &self.vault else {
            return Ok(out);
        };
        for name in crate::config::template::secret_names(&self.config) {
            if ctx.secrets.contains_key(&name) {
                continue;
            }
            if let Some(value) = vault
                .get(&ctx.tenant, &name)
                .await
                .map_err(|e| e.to_string())?
            {
                out.insert(name, value);
            }
        }
        Ok(out)
    }

    /// Opens a transport and performs the MCP handshake on it.
    pub(super) async fn connect(self: &Arc<Self>, generation: u64) -> Result<Arc<Link>, String> {
        let (transport, inbox) = if let Some(stdio) = &self.config.stdio {
            let filled;
            let mut sandboxed = None;
            let stdio = match &self.tenant {
                Some(ctx) => {
                    let stored = self.stored_secrets(ctx).await?;
                    filled = template::stdio_for(stdio, ctx, &stored)?;
                    let profile = sandbox::profile_of(&self.config);
                    let spawn = sandbox::prepare(&profile, &filled, &ctx.tenant, &self.name)?;
                    if let Ok(mut level) = self.sandbox_level.lock() {
                        *level = Some(spawn.level.clone());
                    }
                    sandboxed = Some(spawn);
                    &filled
                }
                None => stdio,
            };
            let (t, inbox) = stdio::StdioTransport::spawn(&self.name, stdio, sandboxed)
                .map_err(|e| e.to_string())?;
            (Transport::Stdio(t), Some(inbox))
        } else if let Some(http) = &self.config.http {
            let filled;
            let http = match &self.tenant {
                Some(ctx) => {
                    let stored = self.stored_secrets(ctx).await?;
                    filled = template::http_for(http, ctx, &stored)?;
                    &filled
                }
                None => http,
            };
            (
                Transport::Http(http::HttpTransport::new(self.http_client.clone(), http)?),
                None,
            )
        } else {
            return Err("server has no transport configured".into());
        };
        let link = Arc::new(Link {
            generation,
            info: OnceLock::new(),
            transport,
            closed: CancellationToken::new(),
            close_reason: Mutex::new(None),
            started: Instant::now(),
            calls: AtomicU64::new(0),
            served: attribution::Served::default(),
        });
        if let (Transport::Stdio(t), Some(inbox)) = (&link.transport, inbox) {
            t.start_reader(self.clone(), link.clone(), inbox);
        }
        match handshake::run(self, &link).await {
            Ok(info) => {
                let _ = link.info.set(info);
            }
            Err(e) => {
                link.close(e.clone());
                link.transport.stop().await;
                return Err(e);
            }
        }
        match (&link.transport, link.info().era) {
            (_, Era::Modern) => self.listen_for_changes(&link),
            // A client session's own upstream session has a GET stream while its client has one:
            // what the server sends there would reach nobody otherwise, as it would directly.
            (Transport::Http(t), Era::Legacy)
                if self.client_session.is_none() || self.listening.load(Ordering::Relaxed) =>
            {
                t.open_listen_stream(self.clone(), link.clone())
            }
            _ => {}
        }
        Ok(link)
    }

    /// Sends a request on a given link and waits for its outcome (handshake use).
    /// Sends a request on a given link and waits for its outcome, at most `within` (handshake).
    pub(super) async fn request_on(
        self: &Arc<Self>,
        link: &Arc<Link>,
        method: &str,
        params: &str,
        within: Option<Duration>,
    ) -> Outcome {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (events_tx, _events) = mpsc::channel(1);
        let (done_tx, done) = oneshot::channel();
        self.lock_calls().insert(
            id,
            PendingCall {
                route: Route::Internal,
                waiting_on_client: false,
                events: events_tx,
                queued: Default::default(),
                done: done_tx,
                client_progress_token: None,
                link: link.generation,
                started: now_micros(),
            },
        );
        let request = Outgoing {
            method,
            params: None,
        };
        self.send(
            link,
            jsonrpc::request(&Id::number(id), method, Some(params)),
            Some(id),
            Some(request),
        );
        // The entry goes however this ends, also when the caller stops waiting (the `auto`
        // handshake drops the request that loses its race).
        let _forget = Forget { upstream: self, id };
        let limit = within.unwrap_or(Duration::from_secs(24 * 3600));
        let lost = |reason: String| UpstreamError::Lost {
            server: self.name.clone(),
            reason,
        };
        tokio::select! {
            r = done => r.unwrap_or_else(|_| Err(lost(link.reason()))),
            _ = link.closed.cancelled() => Err(lost(link.reason())),
            _ = tokio::time::sleep(limit) => Err(UpstreamError::Timeout { server: self.name.clone(), ms: limit.as_millis() as u64 }),
        }
    }
}
