//! Upstreams: the MCP servers behind the gateway, and the gateway's client side of them.
//!
//! An [`Upstream`] owns one live connection at a time (a [`Link`]: a child process over stdio, or
//! an HTTP endpoint with its own MCP session), a supervisor that re-establishes it with
//! exponential backoff, and the table of calls in flight. Many clients share one link: every
//! request gets a gateway id, so client ids never collide upstream, and the client's progress
//! token is swapped for the same gateway id so progress finds its way back. The exception is a
//! legacy client session of an HTTP server spoken to in the legacy era (or in the modern era
//! under `protocol = "auto"`): it gets an upstream session of its own, a *session instance*
//! (see [`Upstream::call`] and the handshake module for why).
//!
//! Messages an upstream sends on its own (progress, logs, sampling/elicitation/roots requests)
//! are routed to the one call that caused them: by the HTTP stream they came on, by progress
//! token, or when all candidate calls belong to one client session (module `attribution`). A message
//! that cannot be attributed is never guessed at: requests get an error (`roots/list` an empty
//! list), notifications are dropped. This keeps one tenant's traffic out of another's session
//! (invariant 5).
//!
//! The files: `calls` (the call table), `link` (one connection), `pool` (which instance takes a
//! call), `inbound` (what the upstream sends on its own), `supervisor` (start, restart, retire),
//! `lists` (the list cache), `attribution`, `handshake`, and the transports `stdio` and `http`.

mod attribution;
mod calls;
pub mod handshake;
pub mod http;
mod inbound;
mod link;
mod lists;
mod pool;
pub mod sandbox;
pub mod stdio;
mod supervisor;
pub mod template;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mcp_wire::RawObject;
use palisade_ids::TenantId;
use serde_json::value::RawValue;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::config;
use crate::metrics::Metrics;
use attribution::{Owner, TRAILING, owner};
use calls::PendingCall;
pub(crate) use calls::{CallEvent, CallHandle, Step};
pub use handshake::UpstreamInfo;
pub use inbound::Subscriber;
pub(crate) use link::Link;
use link::Readiness;
use lists::CachedList;
pub use lists::ListKind;
use pool::Pool;
pub use supervisor::InstanceStatus;
use supervisor::OnDemand;
pub use template::TenantContext;

/// Why a call did not get an answer from its upstream. Messages name the upstream and never
/// include request data.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream `{server}` is unavailable: {reason}")]
    Unavailable { server: Arc<str>, reason: String },
    #[error(
        "upstream `{server}` went away while handling the call ({reason}); it may or may not have taken effect"
    )]
    Lost { server: Arc<str>, reason: String },
    #[error("upstream `{server}` did not answer within {ms} ms; the call was cancelled")]
    Timeout { server: Arc<str>, ms: u64 },
    #[error("upstream `{server}` failed: {reason}")]
    Failed { server: Arc<str>, reason: String },
    #[error(
        "upstream `{server}` already has {limit} calls in flight for this tenant (max_inflight_per_process); retry when one finishes"
    )]
    Busy { server: Arc<str>, limit: usize },
}

/// The final answer to a call: a JSON-RPC result or error object (raw), or no answer at all.
pub type Outcome = Result<Result<Box<RawValue>, Box<RawValue>>, UpstreamError>;

/// Which client a call belongs to, for routing what the upstream sends during it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// The gateway's own traffic (handshake, list fan-out).
    Internal,
    /// A client request: the principal's tenant and subject, and its legacy session id, if
    /// any.
    Client {
        tenant: TenantId,
        subject: Arc<str>,
        session: Option<Arc<str>>,
    },
}

/// Whose a resource update is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpdateOwner {
    /// It came on a client session's own upstream session: for that session alone.
    Session(Arc<str>),
    /// For this tenant's subscribed sessions and listeners: the instance is the tenant's own, or
    /// the tenant is the only one subscribed to the resource on a shared server.
    Tenant(TenantId),
}

/// A request on its way upstream: its method, and its params as the gateway holds them.
#[derive(Clone, Copy)]
pub(crate) struct Outgoing<'a> {
    pub method: &'a str,
    pub params: Option<&'a RawObject>,
}

/// What a client that sends no per-request `_meta` (a legacy session) declared once, for an
/// upstream that speaks the modern era and wants it on every request. Unused on a legacy hop.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClientDefaults<'a> {
    pub capabilities: Option<&'a RawValue>,
    pub(crate) log_level: Option<&'static str>,
    /// Cancelled when the legacy session ends (its own upstream session ends with it).
    pub closed: Option<&'a CancellationToken>,
    /// Whether the legacy session holds its GET stream.
    pub listening: bool,
}

/// Events every client of this upstream may care about.
#[derive(Clone, Debug)]
pub enum Notice {
    ListChanged(ListKind),
    /// A resource changed; only its owner's subscribed clients hear of it.
    ResourceUpdated {
        uri: String,
        params: String,
        owner: UpdateOwner,
    },
    /// A message for one legacy session's GET stream: it trailed the session's last call.
    ForSession {
        session: Arc<str>,
        message: Arc<[u8]>,
    },
    /// What the upstream of the same name said on another replica (with a fleet key), for a
    /// session whose GET stream may be here; never relayed again.
    Relayed(Box<Notice>),
}

pub struct Upstream {
    pub name: Arc<str>,
    pub config: config::Server,
    /// Set when `protocol = "auto"` found the upstream does not speak 2026-07-28.
    legacy_only: std::sync::atomic::AtomicBool,
    next_id: AtomicU64,
    next_link: AtomicU64,
    calls: Mutex<HashMap<u64, PendingCall>>,
    /// Client calls that finished within [`TRAILING`], newest last.
    recent: Mutex<std::collections::VecDeque<(Instant, Route)>>,
    readiness: watch::Sender<Readiness>,
    notices: broadcast::Sender<Notice>,
    lists: Mutex<HashMap<ListKind, CachedList>>,
    list_generation: AtomicU64,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    http_client: reqwest::Client,
    /// Dedicated placement: the tenant whose instance this is, and its template's context.
    pub tenant: Option<TenantContext>,
    /// How metrics and logs name this instance: the server, or `server/tenant`.
    label: Arc<str>,
    /// On-demand instances (dedicated placement) start on first use and stop when idle.
    on_demand: Option<OnDemand>,
    /// The sandbox layers the last process got (`rlimits+cgroup+…`), if sandboxed.
    sandbox_level: Mutex<Option<String>>,
    /// Dedicated placement: where template secrets not in the config are found.
    vault: Option<Arc<crate::secrets::Vault>>,
    /// Dedicated placement: this instance's place in its tenant's pool (0: the first, which
    /// the catalog sees; the others only take calls when it has no room).
    index: usize,
    /// The instances a call may go to instead of this one: a dedicated pool's other members
    /// (held by its first instance), and legacy client sessions' own upstream sessions.
    pool: Pool,
    /// The server refused the legacy era its session instances would speak: legacy clients
    /// are bridged on this instance's modern link.
    legacy_refused: std::sync::atomic::AtomicBool,
    /// A session instance: the instance it serves, whose list cache its list changes
    /// invalidate.
    primary: Option<std::sync::Weak<Upstream>>,
    /// A session instance: the client session it serves alone.
    client_session: Option<Arc<str>>,
    /// A session instance: its client holds its GET stream, so this one holds the upstream's.
    listening: std::sync::atomic::AtomicBool,
    /// A session instance: the capabilities its client declared at `initialize`, which the
    /// gateway declares upstream in its name (others declare the gateway's own).
    pub(crate) declared: Option<Box<RawValue>>,
    /// Its handshake was refused: the server does not speak the era it was asked to.
    refused: std::sync::atomic::AtomicBool,
    /// The tenants subscribed to each resource through this instance (by the upstream's URI),
    /// counted, so that an update on a shared server reaches a tenant only when it is the one
    /// subscribed. Each count is a live [`Subscriber`] held by a session or a listen, so this
    /// is bounded by their own limits and empties when they end.
    subscribers: Mutex<HashMap<String, HashMap<TenantId, usize>>>,
}

/// What sets one instance of a server apart from the others.
#[derive(Default)]
struct Kin {
    /// Dedicated placement: the tenant and where its secrets are.
    dedicated: Option<(TenantContext, Arc<crate::secrets::Vault>)>,
    /// Its place in the tenant's pool.
    index: usize,
    /// A session instance: the instance it serves, and that one's notices.
    primary: Option<(std::sync::Weak<Upstream>, broadcast::Sender<Notice>)>,
    /// A session instance: the client session it serves.
    session: Option<Arc<str>>,
    /// A session instance: the capabilities its client declared, to declare upstream.
    declared: Option<Box<RawValue>>,
}

impl Upstream {
    /// A shared instance: one for every tenant, kept running.
    pub fn new(
        config: config::Server,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        http_client: reqwest::Client,
    ) -> Arc<Upstream> {
        Upstream::build(config, Kin::default(), metrics, shutdown, http_client)
    }

    /// A tenant's own instance of a dedicated server: started on first use from the server's
    /// template filled for the tenant, stopped after `idle_secs` without use.
    pub fn dedicated(
        config: config::Server,
        tenant: TenantContext,
        vault: Arc<crate::secrets::Vault>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        http_client: reqwest::Client,
    ) -> Arc<Upstream> {
        let kin = Kin {
            dedicated: Some((tenant, vault)),
            ..Kin::default()
        };
        Upstream::build(config, kin, metrics, shutdown, http_client)
    }

    fn build(
        config: config::Server,
        kin: Kin,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        http_client: reqwest::Client,
    ) -> Arc<Upstream> {
        let index = kin.index;
        let (readiness, _) = watch::channel(Readiness::Starting);
        let (primary, notices) = match kin.primary {
            Some((primary, notices)) => (Some(primary), notices),
            None => (None, broadcast::channel(64).0),
        };
        let (tenant, vault) = kin.dedicated.unzip();
        let session = if kin.session.is_some() {
            "~session"
        } else {
            ""
        };
        let label: Arc<str> = match &tenant {
            Some(t) if index > 0 => format!("{}/{}#{index}{session}", config.name, t.tenant).into(),
            Some(t) => format!("{}/{}{session}", config.name, t.tenant).into(),
            None => format!("{}{session}", config.name).into(),
        };
        let pool = if tenant.is_some() && index == 0 && primary.is_none() {
            Pool::dedicated(config.max_processes)
        } else {
            Pool::default()
        };
        // The first `min_processes` of a pool: wanted from the start, never stopped for
        // idleness. A legacy sibling starts when a legacy client first needs it.
        let warm = config.min_processes > index && primary.is_none();
        let idle = tenant.as_ref().map(|_| config.idle_secs).unwrap_or(0);
        let on_demand = (tenant.is_some() || primary.is_some()).then(|| OnDemand {
            idle: (idle > 0 && !warm).then(|| Duration::from_secs(idle)),
            wanted: watch::channel(warm).0,
            last_used: AtomicU64::new(0),
            epoch: Instant::now(),
            restart: std::sync::atomic::AtomicBool::new(false),
            drain: std::sync::atomic::AtomicBool::new(false),
            poke: tokio::sync::Notify::new(),
        });
        Arc::new(Upstream {
            tenant,
            label,
            on_demand,
            sandbox_level: Mutex::new(None),
            vault,
            index,
            pool,
            subscribers: Mutex::new(HashMap::new()),
            legacy_refused: std::sync::atomic::AtomicBool::new(false),
            primary,
            client_session: kin.session,
            listening: std::sync::atomic::AtomicBool::new(false),
            declared: kin.declared,
            refused: std::sync::atomic::AtomicBool::new(false),
            name: config.name.as_str().into(),
            config,
            legacy_only: std::sync::atomic::AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            next_link: AtomicU64::new(1),
            calls: Mutex::new(HashMap::new()),
            recent: Mutex::new(std::collections::VecDeque::new()),
            readiness,
            notices,
            lists: Mutex::new(HashMap::new()),
            list_generation: AtomicU64::new(0),
            metrics,
            shutdown,
            http_client,
        })
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    // ---- supervision -----------------------------------------------------------------------
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock means a panic elsewhere; the data itself is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
