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
//! (invariant 5). The list cache is in module `lists`.

mod attribution;
pub mod handshake;
pub mod http;
mod lists;
pub mod sandbox;
pub mod stdio;
pub mod template;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use mcp_wire::era::meta;
use mcp_wire::jsonrpc;
use mcp_wire::{Era, Id, Message, RawObject};
use serde_json::value::RawValue;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::config;
use crate::metrics::Metrics;
use attribution::{Owner, TRAILING, owner};
pub use handshake::UpstreamInfo;
use lists::CachedList;
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
const MAX_QUEUED_EVENTS: usize = 64;
const MAX_QUEUED_EVENT_BYTES: usize = 4 << 20;

/// Which client a call belongs to, for routing what the upstream sends during it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// The gateway's own traffic (handshake, list fan-out).
    Internal,
    /// A client request: the principal's tenant and subject, and its legacy session id, if
    /// any.
    Client {
        tenant: Arc<str>,
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
    Tenant(Arc<str>),
}

/// A request on its way upstream: its method, and its params as the gateway holds them.
#[derive(Clone, Copy)]
pub struct Outgoing<'a> {
    pub method: &'a str,
    pub params: Option<&'a RawObject>,
}

/// What a client that sends no per-request `_meta` (a legacy session) declared once, for an
/// upstream that speaks the modern era and wants it on every request. Unused on a legacy hop.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClientDefaults<'a> {
    pub capabilities: Option<&'a RawValue>,
    pub log_level: Option<&'static str>,
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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ListKind {
    Tools,
    Prompts,
    Resources,
    ResourceTemplates,
}

impl ListKind {
    pub fn method(self) -> &'static str {
        match self {
            ListKind::Tools => "tools/list",
            ListKind::Prompts => "prompts/list",
            ListKind::Resources => "resources/list",
            ListKind::ResourceTemplates => "resources/templates/list",
        }
    }

    /// The result field holding the items.
    pub fn field(self) -> &'static str {
        match self {
            ListKind::Tools => "tools",
            ListKind::Prompts => "prompts",
            ListKind::Resources => "resources",
            ListKind::ResourceTemplates => "resourceTemplates",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            ListKind::Tools => "tools",
            ListKind::Prompts => "prompts",
            ListKind::Resources => "resources",
            ListKind::ResourceTemplates => "resource_templates",
        }
    }

    pub fn changed_notification(self) -> Option<&'static str> {
        match self {
            ListKind::Tools => Some("notifications/tools/list_changed"),
            ListKind::Prompts => Some("notifications/prompts/list_changed"),
            ListKind::Resources => Some("notifications/resources/list_changed"),
            ListKind::ResourceTemplates => None,
        }
    }
}

struct PendingCall {
    route: Route,
    /// Parked: waiting for a modern client to come back with input; not a candidate owner of
    /// messages the upstream sends on its own.
    waiting_on_client: bool,
    events: mpsc::Sender<CallEvent>,
    /// Bytes of `events` the client has not read yet.
    queued: Arc<AtomicUsize>,
    done: oneshot::Sender<Outcome>,
    client_progress_token: Option<Box<RawValue>>,
    link: u64,
    started: u64,
}

enum Readiness {
    Starting,
    Ready(Arc<Link>),
    Down(String),
    /// An on-demand instance with no process: it starts on the next use.
    Idle,
    Stopped,
}

/// One live connection to an upstream.
pub struct Link {
    pub generation: u64,
    /// Set once the handshake succeeds; calls are only routed to links that have it.
    info: OnceLock<UpstreamInfo>,
    transport: Transport,
    closed: CancellationToken,
    close_reason: Mutex<Option<String>>,
    started: Instant,
    /// Client calls sent on this link (for recycling and the process list).
    calls: AtomicU64,
    /// The principals whose calls this link has carried: messages nobody can be named the
    /// owner of are attributed only while there has been one.
    served: attribution::Served,
}

enum Transport {
    Stdio(stdio::StdioTransport),
    Http(http::HttpTransport),
}

impl Link {
    pub fn info(&self) -> &UpstreamInfo {
        self.info.get().unwrap_or_else(|| handshake::provisional())
    }

    fn close(&self, reason: String) {
        if let Ok(mut r) = self.close_reason.lock() {
            r.get_or_insert(reason);
        }
        self.closed.cancel();
    }

    fn reason(&self) -> String {
        self.close_reason
            .lock()
            .ok()
            .and_then(|r| r.clone())
            .unwrap_or_else(|| "connection closed".into())
    }
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
    /// The first instance of a pool holds the others, and their supervisors.
    members: Option<Mutex<Vec<Arc<Upstream>>>>,
    member_tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// An HTTP server spoken to in the legacy era by legacy clients: one upstream session per
    /// client session, so that everything the server sends on a session (logs on its GET
    /// stream, list and resource changes, requests outside calls) has exactly one owner.
    session_instances: Mutex<HashMap<Arc<str>, Arc<Upstream>>>,
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
    subscribers: Mutex<HashMap<String, HashMap<Arc<str>, usize>>>,
}

/// One tenant's subscription to a resource on an instance, counted while this lives.
pub struct Subscriber {
    upstream: std::sync::Weak<Upstream>,
    tenant: Arc<str>,
    uri: String,
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

/// Lazy start and idle stop of a dedicated instance.
struct OnDemand {
    /// Stop after this long without use; `None` keeps it running once started.
    idle: Option<Duration>,
    /// Whether a process is wanted: set by every use, cleared when the instance goes idle. A
    /// level, not a wake-up count, so a use while the process was starting leaves nothing
    /// behind to restart it after it stops.
    wanted: watch::Sender<bool>,
    /// Last use, in milliseconds since `epoch`.
    last_used: AtomicU64,
    epoch: Instant,
    /// Set by an operator: restart now, or stop once no call is in flight.
    restart: std::sync::atomic::AtomicBool,
    drain: std::sync::atomic::AtomicBool,
    poke: tokio::sync::Notify,
}

/// Why a healthy on-demand instance is stopped by its supervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Retire {
    /// Unused for its idle time: stop until the next call.
    Idle,
    /// An operator drained it: stop once no call is in flight, until the next call.
    Drain,
    /// It served its calls or reached its age: replace it now.
    Recycle,
    /// An operator restarted it: replace it now.
    Restart,
    /// It did not answer its health check: replace it, with backoff like a crash.
    Unhealthy,
}

impl Retire {
    fn reason(self) -> &'static str {
        match self {
            Retire::Idle => "stopped after being idle",
            Retire::Drain => "drained by an operator",
            Retire::Recycle => "recycled (max_calls_per_process or max_age_secs)",
            Retire::Restart => "restarted by an operator",
            Retire::Unhealthy => "did not answer its health check",
        }
    }
}

/// An instance as the admin API lists it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct InstanceStatus {
    pub server: Arc<str>,
    /// Its place in the tenant's pool (0: the first).
    pub index: usize,
    /// `idle` (no process), `starting`, `ready`, `down` (restarting with backoff) or `stopped`.
    pub state: &'static str,
    /// The protocol era of its live connection: `legacy` or `modern`.
    pub era: Option<&'static str>,
    pub pid: Option<u32>,
    pub uptime_secs: Option<u64>,
    /// Client calls served by the current process.
    pub calls: u64,
    pub rss_kib: Option<u64>,
    /// The sandbox layers its process got (`rlimits+cgroup+landlock+seccomp+nnp`), if any.
    pub sandbox: Option<String>,
}

/// A process's resident memory, from `/proc/PID/status`.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The client side of one call in flight. Dropping it before the outcome cancels the call
/// upstream (a client that goes away cancels its work).
pub struct CallHandle {
    upstream: Arc<Upstream>,
    id: u64,
    events: mpsc::Receiver<CallEvent>,
    queued: Arc<AtomicUsize>,
    done: oneshot::Receiver<Outcome>,
    deadline: tokio::time::Instant,
    /// The timeout the deadline came from, for the error.
    timeout_ms: u64,
    finished: bool,
}

impl CallHandle {
    /// Replaces the server's call timeout for this call (a tool's own, `tool_timeouts_ms`).
    pub fn set_timeout(&mut self, ms: u64) {
        let started = self.deadline - Duration::from_millis(self.timeout_ms);
        self.deadline = started + Duration::from_millis(ms);
        self.timeout_ms = ms;
    }

    /// This call's timeout in milliseconds.
    pub fn timeout_ms(&self) -> u64 {
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
struct Forget<'a> {
    upstream: &'a Upstream,
    id: u64,
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
        let members =
            (tenant.is_some() && index == 0 && primary.is_none()).then(|| Mutex::new(Vec::new()));
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
            members,
            member_tasks: Mutex::new(Vec::new()),
            session_instances: Mutex::new(HashMap::new()),
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

    /// Starts the supervisor, which keeps a link up until shutdown.
    /// Starts the supervisor, which keeps a link up until shutdown (an on-demand instance's
    /// waits for its first use). A pool's first instance also starts its warm members.
    pub fn start(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        for _ in 1..self.config.min_processes {
            self.add_member();
        }
        let me = self.clone();
        tokio::spawn(async move { me.supervise().await })
    }

    /// The other instances of this pool (empty for a shared upstream).
    pub fn pool_members(&self) -> Vec<Arc<Upstream>> {
        self.members
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .unwrap_or_default()
    }

    /// Adds an instance to this pool and starts its supervisor (which waits for its first use,
    /// unless it is warm); `None` when the pool is full or this is not a pool.
    fn add_member(self: &Arc<Self>) -> Option<Arc<Upstream>> {
        let members = self.members.as_ref()?;
        let (tenant, vault) = (self.tenant.clone()?, self.vault.clone()?);
        let mut list = members.lock().unwrap_or_else(|e| e.into_inner());
        if list.len() + 1 >= self.config.max_processes {
            return None;
        }
        let kin = Kin {
            dedicated: Some((tenant, vault)),
            index: list.len() + 1,
            ..Kin::default()
        };
        let member = Upstream::build(
            self.config.clone(),
            kin,
            self.metrics.clone(),
            self.shutdown.child_token(),
            self.http_client.clone(),
        );
        let supervised = member.clone();
        let task = tokio::spawn(async move { supervised.supervise().await });
        if let Ok(mut tasks) = self.member_tasks.lock() {
            tasks.push(task);
        }
        list.push(member.clone());
        Some(member)
    }

    /// Waits (at most `limit` each) for the pool's other instances to stop, after shutdown.
    pub async fn stopped_members(&self, limit: Duration) {
        let tasks: Vec<_> = match self.member_tasks.lock() {
            Ok(mut t) => t.drain(..).collect(),
            Err(_) => Vec::new(),
        };
        for t in tasks {
            let _ = tokio::time::timeout(limit, t).await;
        }
    }

    /// Client calls in flight on this instance.
    fn client_inflight(&self) -> usize {
        self.lock_calls()
            .values()
            .filter(|c| matches!(c.route, Route::Client { .. }))
            .count()
    }

    /// The instance of this pool a client call goes to: a running one with room (the least
    /// loaded), else one that can start, else a new one while the pool has room. Room is
    /// `max_inflight_per_process` calls (one, when that is 0, so a busy process makes the pool
    /// grow); when every process is full, the limit refuses the call, or without a limit the
    /// least loaded takes it.
    fn pick(self: &Arc<Self>) -> Result<Arc<Upstream>, UpstreamError> {
        let limit = self.config.max_inflight_per_process;
        let room = limit.max(1);
        let mut all = vec![self.clone()];
        all.extend(self.pool_members());
        let loads: Vec<(usize, bool)> = all
            .iter()
            .map(|u| (u.client_inflight(), u.is_ready()))
            .collect();
        let best = |ready: bool| {
            (0..all.len())
                .filter(|&i| loads[i].0 < room && loads[i].1 == ready)
                .min_by_key(|&i| loads[i].0)
        };
        if let Some(i) = best(true).or_else(|| best(false)) {
            return Ok(all[i].clone());
        }
        if let Some(member) = self.add_member() {
            return Ok(member);
        }
        if limit > 0 {
            return Err(UpstreamError::Busy {
                server: self.name.clone(),
                limit,
            });
        }
        let least = (0..all.len()).min_by_key(|&i| loads[i].0).unwrap_or(0);
        Ok(all[least].clone())
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }

    /// A legacy client session opened its GET stream: its own upstream session opens the
    /// upstream's, now or when it connects.
    pub fn session_listening(self: &Arc<Self>, session: &str) {
        let Some(instance) = lock(&self.session_instances).get(session).cloned() else {
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
    pub fn subscriber(self: &Arc<Self>, tenant: &Arc<str>, uri: &str) -> Subscriber {
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
    fn update_owner(&self, uri: &str) -> Option<UpdateOwner> {
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
    pub fn publish(&self, notice: Notice) {
        let _ = self.notices.send(notice);
    }

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

    pub fn is_ready(&self) -> bool {
        matches!(*self.readiness.borrow(), Readiness::Ready(_))
    }

    async fn link(&self, wait: Duration) -> Result<Arc<Link>, UpstreamError> {
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

    fn unavailable(&self, reason: String) -> UpstreamError {
        UpstreamError::Unavailable {
            server: self.name.clone(),
            reason,
        }
    }

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
        let instance = if self.members.is_some() && matches!(route, Route::Client { .. }) {
            self.pick()?
        } else {
            self.clone()
        };
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

    /// Where a legacy client session's calls go when the server is reached over HTTP in the
    /// legacy era, or in the modern era under `protocol = "auto"`: its own upstream session, so
    /// that it gets what the server gives it directly (server→client requests, resource
    /// subscriptions, resumable streams) and everything the server sends on that session (logs
    /// on its GET stream, list and resource changes, requests outside calls) has exactly one
    /// owner. Made and started on first use; `None`: this instance's own link.
    fn instance_for(
        self: &Arc<Self>,
        link: &Link,
        route: &Route,
        defaults: ClientDefaults<'_>,
    ) -> Option<Arc<Upstream>> {
        let Route::Client {
            session: Some(session),
            ..
        } = route
        else {
            return None;
        };
        if self.primary.is_some() || self.config.http.is_none() {
            return None;
        }
        if link.info().era == Era::Modern && self.era_for(Era::Legacy) != Some(Era::Legacy) {
            return None;
        }
        let closed = defaults.closed?;
        let mut map = lock(&self.session_instances);
        if let Some(instance) = map.get(session) {
            return Some(instance.clone());
        }
        let declared = defaults.capabilities.map(ToOwned::to_owned);
        let instance = self.session_instance(session.clone(), declared);
        instance
            .listening
            .store(defaults.listening, Ordering::Relaxed);
        map.insert(session.clone(), instance.clone());
        // It ends with its client session (or the gateway).
        let (me, closed, ended) = (self.clone(), closed.clone(), instance.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = closed.cancelled() => ended.shutdown.cancel(),
                _ = ended.shutdown.cancelled() => {}
            }
            lock(&me.session_instances).retain(|_, i| !Arc::ptr_eq(i, &ended));
        });
        Some(instance)
    }

    /// A client session's own upstream session, supervised: the server in the legacy era,
    /// declaring the client's own capabilities at `initialize`.
    fn session_instance(
        self: &Arc<Self>,
        session: Arc<str>,
        declared: Option<Box<RawValue>>,
    ) -> Arc<Upstream> {
        let mut config = self.config.clone();
        config.protocol = config::UpstreamProtocol::Legacy;
        let kin = Kin {
            dedicated: self.tenant.clone().zip(self.vault.clone()),
            index: self.index,
            primary: Some((Arc::downgrade(self), self.notices.clone())),
            session: Some(session),
            declared,
        };
        let instance = Upstream::build(
            config,
            kin,
            self.metrics.clone(),
            self.shutdown.child_token(),
            self.http_client.clone(),
        );
        let supervised = instance.clone();
        let task = tokio::spawn(async move { supervised.supervise().await });
        if let Ok(mut tasks) = self.member_tasks.lock() {
            tasks.retain(|t| !t.is_finished());
            tasks.push(task);
        }
        instance
    }

    /// The era the gateway speaks to this upstream for a client of `client` era, once connected:
    /// a legacy client's own over HTTP where `protocol = "auto"` lets it (see
    /// [`Upstream::instance_for`]).
    pub fn era_for(&self, client: Era) -> Option<Era> {
        let era = self.era()?;
        let auto = self.config.protocol == config::UpstreamProtocol::Auto
            && self.primary.is_none()
            && !self.legacy_refused.load(Ordering::Relaxed);
        let own = client == Era::Legacy && era == Era::Modern && auto && self.config.http.is_some();
        Some(if own { client } else { era })
    }

    /// This instance and its pool's other instances: the processes and links an operator sees
    /// (client sessions' own upstream sessions are not listed).
    pub fn instances(self: &Arc<Self>) -> Vec<Arc<Upstream>> {
        let mut all = vec![self.clone()];
        all.extend(self.pool_members());
        all
    }

    /// The instances restarts and drains reach besides this one.
    fn dependents(&self) -> Vec<Arc<Upstream>> {
        let mut all = self.pool_members();
        all.extend(lock(&self.session_instances).values().cloned());
        all
    }

    fn call_on(
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
    fn send(
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
    fn deliver(&self, call: &PendingCall, event: CallEvent) -> bool {
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
    pub fn set_waiting_on_client(&self, id: u64, waiting: bool) {
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

    fn lock_calls(&self) -> std::sync::MutexGuard<'_, HashMap<u64, PendingCall>> {
        // A poisoned lock means a panic elsewhere; the map itself is still consistent.
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn finish(&self, id: u64, outcome: Outcome) {
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

    /// Who owns a message the upstream sent on its own (see [`owner`]). A child's stdout is one
    /// ordered stream, so a call's messages always precede its response there; only an HTTP
    /// upstream's separate GET stream can deliver them after it, so only there do calls that
    /// just finished count.
    fn owner_of(
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

    /// Fails every call that was in flight on a link that is gone.
    fn fail_calls_on(&self, generation: u64, reason: &str) {
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

    /// Everything an upstream sends comes through here. `origin` is the call whose HTTP
    /// response stream carried the message, when there is one.
    fn on_message(self: &Arc<Self>, link: &Arc<Link>, msg: Message, origin: Option<u64>) {
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

    fn on_notification(
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

    fn on_request(self: &Arc<Self>, link: &Arc<Link>, req: jsonrpc::Request, origin: Option<u64>) {
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

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    // ---- supervision -----------------------------------------------------------------------

    async fn supervise(self: Arc<Self>) {
        let mut attempt: u32 = 0;
        loop {
            if self.shutdown.is_cancelled() {
                break;
            }
            if let Some(od) = &self.on_demand
                && !*od.wanted.borrow()
            {
                self.readiness.send_replace(Readiness::Idle);
                let mut wanted = od.wanted.subscribe();
                tokio::select! {
                    _ = wanted.wait_for(|w| *w) => {}
                    _ = self.shutdown.cancelled() => break,
                }
            }
            self.readiness.send_replace(Readiness::Starting);
            let started = Instant::now();
            let generation = self.next_link.fetch_add(1, Ordering::Relaxed);
            // Boxed: connecting is the largest of the supervisor's states and a short one, so
            // a resting supervisor (one per client session of an HTTP upstream) stays small.
            let connect = tokio::time::timeout(
                Duration::from_millis(self.config.connect_timeout_ms),
                Box::pin(self.connect(generation)),
            );
            let reason = tokio::select! {
                r = connect => match r {
                    Ok(Ok(link)) => {
                        tracing::info!(server = %self.label, era = ?link.info().era, version = %link.info().protocol_version, "upstream connected");
                        if self.tenant.is_some() {
                            self.metrics
                                .instance_started(&self.name, started.elapsed().as_secs_f64());
                        }
                        self.invalidate_all();
                        if self.client_session.is_none() {
                            self.metrics.upstream_up(&self.label, true);
                        }
                        self.readiness.send_replace(Readiness::Ready(link.clone()));
                        // Lists come from the primary instance, not from a legacy sibling.
                        if self.primary.is_none() {
                            for kind in [ListKind::Tools, ListKind::Prompts, ListKind::Resources] {
                                let _ = self.notices.send(Notice::ListChanged(kind));
                            }
                        }
                        let retired = tokio::select! {
                            _ = link.closed.cancelled() => None,
                            _ = self.shutdown.cancelled() => {
                                link.close("the gateway is shutting down".into());
                                None
                            }
                            why = self.retire(&link) => {
                                link.close(why.reason().into());
                                Some(why)
                            }
                        };
                        if self.client_session.is_none() {
                            self.metrics.upstream_up(&self.label, false);
                        }
                        let reason = link.reason();
                        if let Some(why) = retired.filter(|w| *w != Retire::Unhealthy) {
                            if matches!(why, Retire::Idle | Retire::Drain) {
                                // Not wanted, then idle: a caller waiting for the link sees
                                // the instance idle and wants it again.
                                if let Some(od) = &self.on_demand {
                                    od.wanted.send_replace(false);
                                }
                                self.readiness.send_replace(Readiness::Idle);
                            } else {
                                self.readiness.send_replace(Readiness::Starting);
                            }
                            self.fail_calls_on(generation, &reason);
                            // The old process gets the graceful stop (stdin closed, then
                            // signals) in the background: its replacement need not wait.
                            let label = self.label.clone();
                            tokio::spawn(async move {
                                link.transport.stop().await;
                                tracing::info!(server = %label, %reason, "instance stopped");
                            });
                            attempt = 0;
                            continue;
                        }
                        self.readiness.send_replace(Readiness::Down(reason.clone()));
                        self.fail_calls_on(generation, &reason);
                        link.transport.stop().await;
                        if started.elapsed() > Duration::from_secs(30) {
                            attempt = 0;
                        }
                        reason
                    }
                    Ok(Err(e)) => e,
                    Err(_) => format!("no handshake within {} ms", self.config.connect_timeout_ms),
                },
                _ = self.shutdown.cancelled() => "the gateway is shutting down".into(),
            };
            self.fail_calls_on(generation, &reason);
            if self.shutdown.is_cancelled() {
                break;
            }
            // A session instance whose era the server refused is not a crash: it waits to be
            // stopped (its calls go to the shared link).
            if self.primary.is_some() && self.refused.load(Ordering::Relaxed) {
                self.readiness.send_replace(Readiness::Down(reason));
                self.shutdown.cancelled().await;
                break;
            }
            self.metrics.upstream_restart(&self.label);
            if self.tenant.is_some() {
                self.metrics.instance_crashed(&self.name);
            }
            let delay = backoff(attempt);
            attempt = attempt.saturating_add(1);
            tracing::warn!(server = %self.label, %reason, retry_in_ms = delay.as_millis() as u64, "upstream down");
            self.readiness.send_replace(Readiness::Down(reason));
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.shutdown.cancelled() => break,
            }
        }
        self.readiness.send_replace(Readiness::Stopped);
    }

    /// Resolves when a healthy on-demand instance should stop: an operator's restart at once;
    /// otherwise, once no client call is in flight, a drain, a recycle (calls served or age),
    /// or idleness. Never for a shared instance.
    async fn retire(self: &Arc<Self>, link: &Arc<Link>) -> Retire {
        let Some(od) = &self.on_demand else {
            return std::future::pending().await;
        };
        let cfg = &self.config;
        let health_every =
            (cfg.health_interval_secs > 0).then(|| Duration::from_secs(cfg.health_interval_secs));
        let every = od
            .idle
            .map_or(Duration::from_secs(5), |i| i / 4)
            .min(health_every.unwrap_or(Duration::MAX))
            .clamp(Duration::from_millis(100), Duration::from_secs(5));
        let mut tick = tokio::time::interval(every);
        let mut last_health = Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = od.poke.notified() => {}
            }
            if od.restart.swap(false, Ordering::AcqRel) {
                return Retire::Restart;
            }
            if health_every.is_some_and(|h| last_health.elapsed() >= h) {
                last_health = Instant::now();
                let within = Duration::from_millis(cfg.health_timeout_ms);
                if let Err(e) = handshake::health(self, link, within).await {
                    tracing::warn!(server = %self.label, error = %e, "health check failed: restarting");
                    return Retire::Unhealthy;
                }
            }
            // The gateway's own long-lived calls (its `subscriptions/listen`) are not use.
            let busy = self
                .lock_calls()
                .values()
                .any(|c| matches!(c.route, Route::Client { .. }));
            if busy {
                continue;
            }
            if od.drain.load(Ordering::Acquire) {
                return Retire::Drain;
            }
            let served = link.calls.load(Ordering::Relaxed);
            let too_old =
                cfg.max_age_secs > 0 && link.started.elapsed().as_secs() >= cfg.max_age_secs;
            if (cfg.max_calls_per_process > 0 && served >= cfg.max_calls_per_process) || too_old {
                return Retire::Recycle;
            }
            let now = od.epoch.elapsed().as_millis() as u64;
            let unused_for = now.saturating_sub(od.last_used.load(Ordering::Relaxed));
            if od
                .idle
                .is_some_and(|idle| unused_for >= idle.as_millis() as u64)
            {
                return Retire::Idle;
            }
        }
    }

    /// An operator's restart: the current process (if any) is replaced now.
    pub fn restart(&self) {
        if let Some(od) = &self.on_demand {
            od.restart.store(true, Ordering::Release);
            od.poke.notify_one();
        }
        for m in self.dependents() {
            m.restart();
        }
    }

    /// An operator's drain: the process stops once no call is in flight; the next call starts
    /// a new one.
    pub fn drain(&self) {
        if let Some(od) = &self.on_demand {
            od.drain.store(true, Ordering::Release);
            od.poke.notify_one();
        }
        for m in self.dependents() {
            m.drain();
        }
    }

    /// The sandbox layers the current (or last) process got, if sandboxed.
    pub fn sandbox_level(&self) -> Option<String> {
        self.sandbox_level.lock().ok().and_then(|l| l.clone())
    }

    /// The instance's state, as the admin API and metrics name it.
    pub fn state(&self) -> &'static str {
        match &*self.readiness.borrow() {
            Readiness::Starting => "starting",
            Readiness::Ready(_) => "ready",
            Readiness::Down(_) => "down",
            Readiness::Idle => "idle",
            Readiness::Stopped => "stopped",
        }
    }

    /// The instance's state, process and calls, for the admin API.
    pub fn status(&self) -> InstanceStatus {
        let state = self.state();
        let link = match &*self.readiness.borrow() {
            Readiness::Ready(link) => Some(link.clone()),
            _ => None,
        };
        let pid = link.as_ref().and_then(|l| match &l.transport {
            Transport::Stdio(t) => Some(t.pid()),
            Transport::Http(_) => None,
        });
        InstanceStatus {
            server: self.name.clone(),
            index: self.index,
            state,
            era: link.as_ref().map(|l| match l.info().era {
                Era::Legacy => "legacy",
                Era::Modern => "modern",
            }),
            pid,
            uptime_secs: link.as_ref().map(|l| l.started.elapsed().as_secs()),
            calls: link.as_ref().map_or(0, |l| l.calls.load(Ordering::Relaxed)),
            rss_kib: pid.and_then(rss_kib),
            sandbox: self.sandbox_level(),
        }
    }

    /// The secrets the template uses that the config does not give, from the registry store.
    async fn stored_secrets(&self, ctx: &TenantContext) -> Result<template::StoreSecrets, String> {
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
    async fn connect(self: &Arc<Self>, generation: u64) -> Result<Arc<Link>, String> {
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
    async fn request_on(
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

    /// For a modern upstream: keeps a `subscriptions/listen` open so list changes invalidate the
    /// cache and reach clients, as `list_changed` notifications do for legacy upstreams. Asked of
    /// every modern upstream, even one that does not announce `listChanged`: some send changes
    /// anyway, and a client talking to them directly would see them.
    fn listen_for_changes(self: &Arc<Self>, link: &Arc<Link>) {
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

    fn notify_on(self: &Arc<Self>, link: &Arc<Link>, method: &str, params: Option<&str>) {
        self.send(link, jsonrpc::notification(method, params), None, None);
    }
}

impl Transport {
    async fn stop(&self) {
        match self {
            Transport::Stdio(t) => t.stop().await,
            Transport::Http(t) => t.stop().await,
        }
    }
}

/// Rewrites the gateway-owned parts of a request's params: the progress token becomes the
/// gateway id, and the era's `_meta` keys are set for the upstream's era (from the client's
/// own `_meta`, else `defaults`). Returns the params text and the client's progress token.
fn prepare_params(
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock means a panic elsewhere; the data itself is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// 100 ms doubling to 30 s, with ±25% jitter so a fleet does not restart in lockstep.
fn backoff(attempt: u32) -> Duration {
    let base = 100u64.saturating_mul(1u64 << attempt.min(9)).min(30_000);
    let jitter = rand::random_range(0.75..1.25);
    Duration::from_millis((base as f64 * jitter) as u64)
}

fn now_micros() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
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

    #[test]
    fn backoff_grows_and_caps() {
        assert!(backoff(0) <= Duration::from_millis(125));
        assert!(backoff(3) >= Duration::from_millis(600));
        assert!(backoff(40) <= Duration::from_millis(37_500));
    }
}
