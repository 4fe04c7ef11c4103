//! The figures operators watch, served on the admin listener at `/metrics`.
//!
//! Labels are bounded: tenants and servers come from the config, tools only when the upstream
//! listed them (anything else is `other`), outcomes and reasons from fixed sets. No label ever
//! carries a session id, a credential or request data (invariant 4).

use std::collections::HashMap;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    tenant: String,
    server: String,
    tool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    tenant: String,
    server: String,
    tool: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabels {
    server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    server: String,
    list: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BreakerLabels {
    server: String,
    /// `*` for the server's own breaker.
    tenant: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    tenant: String,
    limit: &'static str,
}

/// A server and a kind of message (notification, request).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MessageLabels {
    server: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// How a forwarded call ended, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallEnd {
    Ok,
    /// The tool ran and reported `isError: true`: the upstream worked.
    ToolError,
    /// The upstream answered with a JSON-RPC error.
    RpcError,
    Timeout,
    /// The upstream was down, crashed or broke the protocol.
    Unavailable,
}

impl CallEnd {
    pub fn label(self) -> &'static str {
        match self {
            CallEnd::Ok => "ok",
            CallEnd::ToolError => "tool_error",
            CallEnd::RpcError => "rpc_error",
            CallEnd::Timeout => "timeout",
            CallEnd::Unavailable => "unavailable",
        }
    }
}

fn latency_histogram() -> Histogram {
    // 100 µs … ~100 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 21))
}

pub struct Metrics {
    registry: Registry,
    store_up: Gauge,
    breakers: Family<BreakerLabels, Gauge>,
    audit_seconds: Histogram,
    refused: Family<LimitLabels, Counter>,
    call_seconds: Family<CallLabels, Histogram, fn() -> Histogram>,
    calls: Family<OutcomeLabels, Counter>,
    upstream_seconds: Family<ServerLabels, Histogram, fn() -> Histogram>,
    catalog: Family<CacheLabels, Counter>,
    sessions: Gauge,
    sessions_continued: Counter,
    session_store_failures: Counter,
    restarts: Family<ServerLabels, Counter>,
    up: Family<ServerLabels, Gauge>,
    rejections: Family<ReasonLabels, Counter>,
    unattributed: Family<MessageLabels, Counter>,
    event_drops: Family<MessageLabels, Counter>,
    tasks: Gauge,
    list_failures: Family<ListLabels, Counter>,
    config_reloads: Family<OutcomeOnly, Counter>,
    registry_refresh_failures: Counter,
    instance_starts: Family<ServerLabels, Counter>,
    instance_crashes: Family<ServerLabels, Counter>,
    instance_start_seconds: Family<ServerLabels, Histogram, fn() -> Histogram>,
    instances: Family<InstanceLabels, Gauge>,
    sandboxes: Family<SandboxLabels, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SandboxLabels {
    server: String,
    level: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    server: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeOnly {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListLabels {
    server: String,
    list: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("palisade");
        let call_seconds = Family::<CallLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "tool_call_duration_seconds",
            "Latency of tools/call, resources/read and prompts/get through the gateway",
            call_seconds.clone(),
        );
        let calls = Family::<OutcomeLabels, Counter>::default();
        registry.register("tool_calls", "Forwarded calls by outcome", calls.clone());
        let upstream_seconds =
            Family::<ServerLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram as fn() -> Histogram,
            );
        registry.register(
            "upstream_request_duration_seconds",
            "Time from sending a client call upstream to its answer",
            upstream_seconds.clone(),
        );
        let catalog = Family::<CacheLabels, Counter>::default();
        registry.register(
            "catalog_cache",
            "List cache lookups per upstream",
            catalog.clone(),
        );
        let sessions = Gauge::default();
        registry.register(
            "sessions_active",
            "Open legacy-era client sessions (with a fleet key: this replica's copies)",
            sessions.clone(),
        );
        let sessions_continued = Counter::default();
        registry.register(
            "sessions_continued",
            "Sessions another replica opened that this one continued (fleet key)",
            sessions_continued.clone(),
        );
        let session_store_failures = Counter::default();
        registry.register(
            "session_store_failures",
            "Reads and writes of the fleet's session store (Redis) that failed or timed out",
            session_store_failures.clone(),
        );
        let tasks = Gauge::default();
        registry.register(
            "runtime_tasks",
            "Tasks alive in the gateway's async runtime (a count that keeps growing is a leak)",
            tasks.clone(),
        );
        let restarts = Family::<ServerLabels, Counter>::default();
        registry.register(
            "upstream_restarts",
            "Times an upstream link was lost or failed to start",
            restarts.clone(),
        );
        let up = Family::<ServerLabels, Gauge>::default();
        registry.register(
            "upstream_up",
            "1 when the upstream's link is established",
            up.clone(),
        );
        let rejections = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "http_rejections",
            "Requests refused at the front door, by reason",
            rejections.clone(),
        );
        let unattributed = Family::<MessageLabels, Counter>::default();
        registry.register(
            "upstream_unattributed",
            "Messages an upstream sent on its own whose owner could not be established: dropped (a request is refused to the upstream), never guessed",
            unattributed.clone(),
        );
        let event_drops = Family::<MessageLabels, Counter>::default();
        registry.register(
            "call_events_dropped",
            "Messages for a call in flight dropped because its client reads its stream slower than the upstream writes (a dropped request is refused to the upstream)",
            event_drops.clone(),
        );
        let list_failures = Family::<ListLabels, Counter>::default();
        registry.register(
            "catalog_upstream_skipped",
            "List fan-outs served without an upstream that failed or was too slow",
            list_failures.clone(),
        );
        let config_reloads = Family::<OutcomeOnly, Counter>::default();
        registry.register(
            "config_reloads",
            "Config reloads by outcome: applied, or rejected (the old config keeps serving)",
            config_reloads.clone(),
        );
        let registry_refresh_failures = Counter::default();
        registry.register(
            "registry_refresh_failures",
            "Failed reads of the registry store (the last snapshot keeps serving)",
            registry_refresh_failures.clone(),
        );
        let instance_starts = Family::<ServerLabels, Counter>::default();
        registry.register(
            "dedicated_starts",
            "Tenants' own instances started (spawn and handshake succeeded), by server",
            instance_starts.clone(),
        );
        let instance_crashes = Family::<ServerLabels, Counter>::default();
        registry.register(
            "dedicated_crashes",
            "Tenants' own instances that exited or failed unasked, by server",
            instance_crashes.clone(),
        );
        let instance_start_seconds =
            Family::<ServerLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "dedicated_start_seconds",
            "Time from spawn to a finished MCP handshake of a tenant's own instance",
            instance_start_seconds.clone(),
        );
        let instances = Family::<InstanceLabels, Gauge>::default();
        registry.register(
            "dedicated_instances",
            "Tenants' own instances by server and state (idle: no process)",
            instances.clone(),
        );
        let sandboxes = Family::<SandboxLabels, Gauge>::default();
        registry.register(
            "dedicated_sandboxed",
            "Tenants' running processes by server and the sandbox layers they got (none: unsandboxed)",
            sandboxes.clone(),
        );
        let audit_seconds = Histogram::new(exponential_buckets(0.000_01, 2.0, 20));
        registry.register(
            "audit_begin_duration_seconds",
            "Time a call waits for its BEGIN audit record to be durable in every sink",
            audit_seconds.clone(),
        );
        let refused = Family::<LimitLabels, Counter>::default();
        registry.register(
            "protection_refusals",
            "Calls refused by traffic protection, by tenant and limit (tenant, subject, tool, breaker, tenant_breaker, bulkhead, tenant_bulkhead)",
            refused.clone(),
        );
        let store_up = Gauge::default();
        registry.register(
            "rate_limit_store_up",
            "1 while the shared rate limit store (Redis) answers, 0 while it is down (absent without one)",
            store_up.clone(),
        );
        let breakers = Family::<BreakerLabels, Gauge>::default();
        registry.register(
            "breaker_state",
            "1 for each circuit breaker that is open or half-open (tenant `*`: the server's own); absent: closed",
            breakers.clone(),
        );
        Metrics {
            registry,
            store_up,
            breakers,
            audit_seconds,
            refused,
            list_failures,
            sandboxes,
            instance_starts,
            instance_crashes,
            instance_start_seconds,
            instances,
            config_reloads,
            registry_refresh_failures,
            call_seconds,
            calls,
            upstream_seconds,
            catalog,
            sessions,
            sessions_continued,
            session_store_failures,
            restarts,
            up,
            rejections,
            unattributed,
            event_drops,
            tasks,
        }
    }

    pub fn call(&self, tenant: &str, server: &str, tool: &str, outcome: CallEnd, seconds: f64) {
        let labels = CallLabels {
            tenant: tenant.to_owned(),
            server: server.to_owned(),
            tool: tool.to_owned(),
        };
        self.call_seconds.get_or_create(&labels).observe(seconds);
        self.calls
            .get_or_create(&OutcomeLabels {
                tenant: labels.tenant,
                server: labels.server,
                tool: labels.tool,
                outcome: outcome.label(),
            })
            .inc();
    }

    pub(crate) fn upstream_latency(&self, server: &str, seconds: f64) {
        self.upstream_seconds
            .get_or_create(&ServerLabels {
                server: server.to_owned(),
            })
            .observe(seconds);
    }

    pub(crate) fn catalog_cache(&self, server: &str, list: &'static str, hit: bool) {
        self.catalog
            .get_or_create(&CacheLabels {
                server: server.to_owned(),
                list,
                result: if hit { "hit" } else { "miss" },
            })
            .inc();
    }

    pub(crate) fn session_opened(&self) {
        self.sessions.inc();
    }

    pub(crate) fn session_closed(&self) {
        self.sessions.dec();
    }

    pub(crate) fn session_continued(&self) {
        self.sessions_continued.inc();
    }

    pub(crate) fn session_store_failed(&self) {
        self.session_store_failures.inc();
    }

    pub(crate) fn upstream_restart(&self, server: &str) {
        self.restarts
            .get_or_create(&ServerLabels {
                server: server.to_owned(),
            })
            .inc();
    }

    pub(crate) fn upstream_up(&self, server: &str, up: bool) {
        self.up
            .get_or_create(&ServerLabels {
                server: server.to_owned(),
            })
            .set(i64::from(up));
    }

    /// A request refused before dispatch; `reason` is one of a fixed set of words.
    /// The breakers that are not closed, as [`crate::limits::Protection::breaker_states`] lists them.
    pub(crate) fn breakers_observed(&self, states: &[(String, Option<String>, &'static str)]) {
        self.breakers.clear();
        for (server, tenant, state) in states {
            self.breakers
                .get_or_create(&BreakerLabels {
                    server: server.clone(),
                    tenant: tenant.clone().unwrap_or_else(|| "*".into()),
                    state,
                })
                .set(1);
        }
    }

    /// Whether the shared rate limit store answers (`None`: there is none).
    pub fn rate_limit_store(&self, up: Option<bool>) {
        if let Some(up) = up {
            self.store_up.set(i64::from(up));
        }
    }

    /// A call refused by traffic protection's `limit`.
    pub(crate) fn protection_refused(&self, tenant: &str, limit: &'static str) {
        self.refused
            .get_or_create(&LimitLabels {
                tenant: tenant.to_owned(),
                limit,
            })
            .inc();
    }

    /// A BEGIN record became durable after `seconds`.
    pub(crate) fn audit_begin(&self, seconds: f64) {
        self.audit_seconds.observe(seconds);
    }

    /// A message from `server` with no established owner: `notification` or `request`.
    pub fn unattributed(&self, server: &str, kind: &'static str) {
        self.unattributed
            .get_or_create(&MessageLabels {
                server: server.to_owned(),
                kind,
            })
            .inc();
    }

    pub(crate) fn event_dropped(&self, server: &str, kind: &'static str) {
        self.event_drops
            .get_or_create(&MessageLabels {
                server: server.to_owned(),
                kind,
            })
            .inc();
    }

    pub fn rejected(&self, reason: &'static str) {
        self.rejections
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// A config reload: `applied` or `rejected`.
    pub(crate) fn config_reload(&self, outcome: &'static str) {
        self.config_reloads
            .get_or_create(&OutcomeOnly { outcome })
            .inc();
    }

    /// A tenant's instance finished its handshake `seconds` after its spawn began.
    pub(crate) fn instance_started(&self, server: &str, seconds: f64) {
        let labels = ServerLabels {
            server: server.to_owned(),
        };
        self.instance_starts.get_or_create(&labels).inc();
        self.instance_start_seconds
            .get_or_create(&labels)
            .observe(seconds);
    }

    pub(crate) fn instance_crashed(&self, server: &str) {
        self.instance_crashes
            .get_or_create(&ServerLabels {
                server: server.to_owned(),
            })
            .inc();
    }

    /// Sets the gauges of running processes by (server, sandbox level).
    pub(crate) fn sandboxes_observed(&self, census: &HashMap<(String, String), i64>) {
        self.sandboxes.clear();
        for ((server, level), n) in census {
            self.sandboxes
                .get_or_create(&SandboxLabels {
                    server: server.clone(),
                    level: level.clone(),
                })
                .set(*n);
        }
    }

    /// Sets the instance gauges from a census of (server, state) → count; states absent from
    /// it read 0.
    pub(crate) fn instances_observed(&self, census: &HashMap<(String, &'static str), i64>) {
        self.instances.clear();
        for ((server, state), n) in census {
            self.instances
                .get_or_create(&InstanceLabels {
                    server: server.clone(),
                    state,
                })
                .set(*n);
        }
    }

    pub(crate) fn registry_refresh_failed(&self) {
        self.registry_refresh_failures.inc();
    }

    pub(crate) fn list_skipped(&self, server: &str, list: &'static str) {
        self.list_failures
            .get_or_create(&ListLabels {
                server: server.to_owned(),
                list,
            })
            .inc();
    }

    pub(crate) fn render(&self) -> String {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            self.tasks.set(runtime.metrics().num_alive_tasks() as i64);
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
