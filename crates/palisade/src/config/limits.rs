//! `[limits]` (what one tenant or client may hold at the gateway) and `[rate_limits]` (rates,
//! tiers, the Redis backing), with the breaker and quarantine settings servers use.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{MAX_SECS, Problems};

/// A server's circuit breakers. A tenant's breaker on the server opens after `failures`
/// failures in a row of that tenant's calls (transport errors, timeouts, crashes; not a tool's
/// `isError` result), the server's own after `server_failures` of anyone's (default: four times
/// `failures`, so that one tenant's bad calls close the server to that tenant first). An open
/// breaker refuses calls for `open_secs`; then one probe call decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerSettings {
    #[serde(default = "default_breaker_failures")]
    pub failures: u32,
    pub(crate) server_failures: Option<u32>,
    #[serde(default = "default_breaker_open")]
    pub open_secs: u64,
}

impl BreakerSettings {
    pub(crate) fn server_failures(&self) -> u32 {
        self.server_failures
            .unwrap_or(self.failures.saturating_mul(4))
    }
}

fn default_breaker_failures() -> u32 {
    5
}

fn default_breaker_open() -> u64 {
    30
}

/// See [`Server::quarantine`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineSettings {
    #[serde(default = "default_quarantine_crashes")]
    pub crashes: u32,
    #[serde(default = "default_quarantine_window")]
    pub window_secs: u64,
    #[serde(default = "default_quarantine_for")]
    pub for_secs: u64,
}

fn default_quarantine_crashes() -> u32 {
    3
}

fn default_quarantine_window() -> u64 {
    3600
}

fn default_quarantine_for() -> u64 {
    600
}

/// Rate limits (docs/ARCHITECTURE.md §4, steps 6 and 7): named tiers of per-tenant, per-subject
/// and per-tool rates; a tenant's policy picks its tier and may replace any of its rates.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    /// The tier of tenants whose policy names none (absent: no limits for them).
    pub default_tier: Option<String>,
    #[serde(default)]
    pub tiers: BTreeMap<String, crate::policy::RateSet>,
    /// Share the buckets between replicas in this Redis (`redis://…`); absent: in process.
    /// Read at start; a change needs a restart.
    pub(crate) redis_url: Option<String>,
    /// Or: the name of an environment variable holding that URL (it may hold a password).
    pub(crate) redis_url_env: Option<String>,
    /// While Redis cannot be reached: `fail_open` (each replica applies the limits alone) or
    /// `fail_closed` (calls are refused).
    #[serde(default = "default_when_redis_down")]
    pub(crate) when_redis_down: palisade_limits::redis::WhenDown,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            default_tier: None,
            tiers: BTreeMap::new(),
            redis_url: None,
            redis_url_env: None,
            when_redis_down: default_when_redis_down(),
        }
    }
}

fn default_when_redis_down() -> palisade_limits::redis::WhenDown {
    palisade_limits::redis::WhenDown::FailOpen
}

impl RateLimits {
    /// The Redis URL, from the config or its environment variable.
    pub(crate) fn redis_url(&self) -> Option<String> {
        self.redis_url.clone().or_else(|| {
            self.redis_url_env
                .as_ref()
                .and_then(|v| std::env::var(v).ok())
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest accepted request body; larger gets 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Deepest nesting of arrays and objects in a client's message; deeper gets 400 (-32600).
    /// At most 100, below what the gateway's and most upstreams' JSON parsers accept.
    #[serde(default = "default_max_json_depth")]
    pub max_json_depth: usize,
    /// Legacy sessions idle this long are closed.
    #[serde(default = "default_session_idle")]
    pub(crate) session_idle_secs: u64,
    /// On shutdown, how long in-flight calls may take to finish.
    #[serde(default = "default_drain")]
    pub(crate) shutdown_grace_secs: u64,
    /// On SIGTERM, how long `/readyz` answers 503 while new calls are still served, before the
    /// drain begins: a load balancer's health checks see the replica leave before it stops
    /// accepting. 0 (the default, for a single gateway): the drain begins at once. A second
    /// SIGTERM (or ctrl-c) begins it at once too.
    #[serde(default)]
    pub(crate) shutdown_notice_secs: u64,
    /// Open legacy sessions per tenant; `initialize` beyond it is refused (429).
    #[serde(default = "default_max_sessions")]
    pub max_sessions_per_tenant: usize,
    /// Calls per tenant parked waiting for a modern client's input; beyond it such a call ends
    /// with an error instead of parking.
    #[serde(default = "default_max_parked")]
    pub(crate) max_parked_per_tenant: usize,
    /// Bytes a tenant's legacy sessions may store in all (what their clients declared, their
    /// subscriptions, and a fixed cost per session); `initialize` or `resources/subscribe`
    /// beyond it is refused.
    #[serde(default = "default_session_memory")]
    pub(crate) session_memory_per_tenant: usize,
    /// `subscriptions/listen` streams a tenant may hold open at once.
    #[serde(default = "default_max_listens")]
    pub max_listens_per_tenant: usize,
    /// `initialize` per tenant: sessions opened per second on average, in bursts of `burst`.
    #[serde(default = "default_initialize_rate")]
    pub initialize_rate: palisade_limits::Rate,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: default_max_body(),
            max_json_depth: default_max_json_depth(),
            session_idle_secs: default_session_idle(),
            shutdown_grace_secs: default_drain(),
            shutdown_notice_secs: 0,
            max_sessions_per_tenant: default_max_sessions(),
            max_parked_per_tenant: default_max_parked(),
            session_memory_per_tenant: default_session_memory(),
            initialize_rate: default_initialize_rate(),
            max_listens_per_tenant: default_max_listens(),
        }
    }
}

fn default_max_body() -> usize {
    4 * 1024 * 1024
}

fn default_max_listens() -> usize {
    1000
}

fn default_session_memory() -> usize {
    64 << 20
}

fn default_initialize_rate() -> palisade_limits::Rate {
    palisade_limits::Rate {
        per_second: 50.0,
        burst: 200,
    }
}

fn default_max_json_depth() -> usize {
    64
}

fn default_session_idle() -> u64 {
    30 * 60
}

fn default_drain() -> u64 {
    10
}

fn default_max_sessions() -> usize {
    10_000
}

fn default_max_parked() -> usize {
    1_000
}

impl Limits {
    pub(super) fn check(&self, problems: &mut Problems) {
        problems.at_most("limits.session_idle_secs", self.session_idle_secs, MAX_SECS);
        problems.at_most(
            "limits.shutdown_grace_secs",
            self.shutdown_grace_secs,
            MAX_SECS,
        );
        problems.at_most(
            "limits.shutdown_notice_secs",
            self.shutdown_notice_secs,
            MAX_SECS,
        );
        if self.max_body_bytes < 1024 {
            problems.add("limits.max_body_bytes", "must be at least 1024");
        }
        if self.session_memory_per_tenant < 1 << 20 {
            problems.add(
                "limits.session_memory_per_tenant",
                "must be at least 1048576 (1 MiB)",
            );
        }
        let rate = self.initialize_rate;
        if !(rate.per_second > 0.0 && rate.per_second.is_finite()) || rate.burst == 0 {
            problems.add(
                "limits.initialize_rate",
                "per_second must be a positive number and burst at least 1",
            );
        }
        if !(2..=100).contains(&self.max_json_depth) {
            problems.add("limits.max_json_depth", "must be between 2 and 100");
        }
    }
}

impl RateLimits {
    pub(super) fn check(&self, problems: &mut Problems) {
        for (name, set) in &self.tiers {
            if let Err(e) = set.validate() {
                problems.add(format!("rate_limits.tiers.{name}"), e);
            }
        }
        if let Some(t) = &self.default_tier
            && !self.tiers.contains_key(t)
        {
            problems.add(
                "rate_limits.default_tier",
                format!("there is no [rate_limits.tiers.{t}]"),
            );
        }
    }
}
