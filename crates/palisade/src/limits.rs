//! Traffic protection in the call path (docs/ARCHITECTURE.md §4, steps 6 and 7). Before a tool
//! call, resource read or prompt is audited and forwarded, in this order:
//!
//! 1. its rate limits — the tenant's, then the subject's within the tenant, then the tool's,
//!    then the server's quota (shared between the tenants calling it, by weight);
//! 2. the tenant's quarantine from the server, if its calls crashed it repeatedly, then the
//!    server's circuit breakers — the server's, then the tenant's on that server;
//! 3. its server's bulkheads — calls in flight to the server, then the tenant's share of them.
//!
//! The first that says no refuses the call, naming the limit and when to retry. Rates come
//! from the tenant's tier (`[rate_limits.tiers.<name>]`, the policy's `tier` or
//! `[rate_limits] default_tier`), each replaced by the tenant's own in its policy's `rates`.
//! Buckets live in [`palisade_limits::local::Local`], or with `[rate_limits] redis_url` in
//! Redis, shared by every replica (while Redis is down, `when_redis_down` decides); idle ones
//! are dropped, so memory stays bounded however many subjects appear. A call let through holds an
//! [`Admission`]: its bulkhead places, and the breaker permits its outcome is reported to.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_limits::breaker::{BreakerConfig, Breakers, Permit};
use palisade_limits::bulkhead::{Bulkheads, Entry};
use palisade_limits::local::Local;
use palisade_limits::redis::Distributed;
use palisade_limits::{LimitError, Rate, Verdict};

use crate::config::{QuarantineSettings, RateLimits, Server};
use crate::policy::RateSet;
use crate::registry::Tenant;

/// A call refused by traffic protection.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    /// Which limit: `tenant`, `subject`, `tool` (rates), `breaker`, `tenant_breaker`,
    /// `bulkhead`, `tenant_bulkhead`.
    pub limit: &'static str,
    pub(crate) retry_after: Duration,
    /// What the client is told (the retry time is added).
    pub why: String,
}

impl Refused {
    fn rate(limit: &'static str, rate: Rate, retry_after: Duration) -> Refused {
        Refused {
            limit,
            retry_after,
            why: format!(
                "rate limit exceeded: the {limit} limit ({} calls/s, bursts of {})",
                rate.per_second, rate.burst
            ),
        }
    }

    /// The message the client sees.
    pub fn message(&self) -> String {
        format!("{}; retry in {} ms", self.why, self.retry_after_ms())
    }

    /// Milliseconds to wait, rounded up (never 0).
    pub(crate) fn retry_after_ms(&self) -> u64 {
        (self.retry_after.as_micros().div_ceil(1000) as u64).max(1)
    }
}

/// A call let through: its bulkhead places (freed when this is dropped) and its breaker
/// permits. Report the call's outcome with [`Admission::finish`].
pub(crate) struct Admission {
    permits: Vec<(Arc<Breakers>, String, Permit)>,
    _places: Vec<Entry>,
    /// Where a crash during the call is charged: the tenant on this server.
    crashes: Option<(Arc<Quarantine>, (String, String), QuarantineSettings)>,
}

impl Admission {
    /// `failed`: a transport error, a timeout or a crash (never a tool's own error result);
    /// `crashed`: the server went away while the call was in flight.
    pub(crate) fn finish(self, failed: bool, crashed: bool) {
        for (breakers, key, permit) in self.permits {
            breakers.record(&key, permit, !failed);
        }
        if crashed && let Some((quarantine, key, settings)) = self.crashes {
            quarantine.crashed(key, settings);
        }
    }
}

/// Crashes charged to each (tenant, server), and the quarantines they led to.
#[derive(Default)]
pub(crate) struct Quarantine {
    map: Mutex<HashMap<(String, String), Crashes>>,
}

#[derive(Default)]
struct Crashes {
    times: std::collections::VecDeque<tokio::time::Instant>,
    until: Option<tokio::time::Instant>,
}

impl Quarantine {
    fn crashed(&self, key: (String, String), q: QuarantineSettings) {
        let now = tokio::time::Instant::now();
        let window = Duration::from_secs(q.window_secs);
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let c = map.entry(key.clone()).or_default();
        c.times.push_back(now);
        while c
            .times
            .front()
            .is_some_and(|t| now.duration_since(*t) > window)
        {
            c.times.pop_front();
        }
        if c.times.len() >= q.crashes.max(1) as usize {
            c.until = Some(now + Duration::from_secs(q.for_secs));
            c.times.clear();
            tracing::warn!(
                tenant = %key.0,
                server = %key.1,
                crashes = q.crashes,
                for_secs = q.for_secs,
                "tenant quarantined from the server: its calls crashed it repeatedly"
            );
        }
    }

    /// Time left of `tenant`'s quarantine from `server`, if any.
    fn left(&self, tenant: &str, server: &str) -> Option<Duration> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let until = map.get(&(tenant.to_owned(), server.to_owned()))?.until?;
        until.checked_duration_since(tokio::time::Instant::now())
    }
}

/// One server's breakers: its own, and one per tenant on it (each with its threshold).
struct ServerBreakers {
    server: Arc<Breakers>,
    tenants: Arc<Breakers>,
}

/// The gateway's limiters, breakers and bulkheads.
#[derive(Default)]
pub(crate) struct Protection {
    local: Local,
    /// Buckets shared with the other replicas, when `[rate_limits] redis_url` is set.
    shared: Option<Distributed>,
    /// Breakers by server (each server has its own settings).
    breakers: Mutex<HashMap<String, ServerBreakers>>,
    bulkheads: Bulkheads,
    quarantine: Arc<Quarantine>,
    shares: Shares,
}

/// How long a tenant counts as calling a server (and so takes part of its quota) after its
/// last call.
const ACTIVE: Duration = Duration::from_secs(1);

/// Tenants calling one server: when each last did, and its weight.
type Callers = HashMap<String, (std::time::Instant, f64)>;

/// Which tenants are calling each server with a quota now, with their weights.
#[derive(Default)]
struct Shares {
    map: Mutex<HashMap<String, Callers>>,
}

impl Shares {
    /// `tenant`'s part of `server`'s quota: its weight over the weights of the tenants that
    /// called it within [`ACTIVE`] (1 when it is alone, so an idle tenant's part is used).
    fn share(&self, server: &str, tenant: &str, weight: f64) -> f64 {
        let now = std::time::Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let active = map.entry(server.to_owned()).or_default();
        active.insert(tenant.to_owned(), (now, weight.max(1e-6)));
        active.retain(|_, (seen, _)| now.duration_since(*seen) <= ACTIVE);
        let total: f64 = active.values().map(|(_, w)| *w).sum();
        (weight.max(1e-6) / total).min(1.0)
    }
}

impl Protection {
    /// In process, or shared through Redis when the config names one (keys under the fleet's
    /// name, `<fleet>:rl:`, so that fleets sharing one Redis keep their own buckets).
    pub(crate) fn new(config: &RateLimits, fleet: &str) -> Result<Protection, LimitError> {
        let shared = match config.redis_url() {
            Some(url) => Some(Distributed::new(
                &url,
                &format!("{fleet}:rl:"),
                config.when_redis_down,
            )?),
            None => None,
        };
        Ok(Protection {
            shared,
            ..Protection::default()
        })
    }

    /// `Some(false)` while the shared store (Redis) cannot be reached; `None` without one.
    pub(crate) fn store_up(&self) -> Option<bool> {
        self.shared.as_ref().map(Distributed::up)
    }

    /// Checks the rates of a call by `subject` of `tenant` to `server`'s `tool`.
    pub(crate) async fn check(
        &self,
        config: &RateLimits,
        tenant: &Tenant,
        subject: &str,
        upstream: &Server,
        tool: &str,
    ) -> Result<(), Refused> {
        let server = upstream.name.as_str();
        let own = &tenant.policy.rates;
        let tier = tenant
            .policy
            .tier
            .as_ref()
            .or(config.default_tier.as_ref())
            .and_then(|t| config.tiers.get(t));
        let pick = |f: fn(&RateSet) -> Option<Rate>| f(own).or_else(|| tier.and_then(f));
        let id = &tenant.id;
        let mut checks: Vec<(&'static str, String, Rate)> = Vec::with_capacity(3);
        if let Some(rate) = pick(|s| s.tenant) {
            checks.push(("tenant", format!("t\u{0}{id}"), rate));
        }
        if let Some(rate) = pick(|s| s.subject) {
            checks.push(("subject", format!("s\u{0}{id}\u{0}{subject}"), rate));
        }
        let tool_rate = own
            .tool(server, tool)
            .or_else(|| tier.and_then(|t| t.tool(server, tool)));
        if let Some((_, rate)) = tool_rate {
            checks.push(("tool", format!("x\u{0}{id}\u{0}{server}/{tool}"), rate));
        }
        if let Some(quota) = upstream.quota {
            // The server's quota, shared between the tenants calling it now by weight: a
            // tenant's share bucket, then the server's own.
            let weight = own
                .quota_weight
                .or_else(|| tier.and_then(|t| t.quota_weight))
                .unwrap_or(1.0);
            let share = self.shares.share(server, id, weight);
            let rate = Rate {
                per_second: quota.per_second * share,
                burst: ((f64::from(quota.burst) * share).ceil() as u32).max(1),
            };
            checks.push(("server_share", format!("q\u{0}{server}\u{0}{id}"), rate));
            checks.push(("server_quota", format!("q\u{0}{server}"), quota));
        }
        for (limit, key, rate) in checks {
            let verdict = match &self.shared {
                Some(shared) => shared.check(&key, rate).await,
                None => self.local.check(&key, rate),
            };
            match verdict {
                Verdict::Allowed => {}
                Verdict::Limited { retry_after } => {
                    let mut refused = Refused::rate(limit, rate, retry_after);
                    if let ("server_share" | "server_quota", Some(q)) = (limit, upstream.quota) {
                        refused.why = format!(
                            "server {server}'s quota ({} calls/s) is in use: {}",
                            q.per_second,
                            if limit == "server_share" {
                                format!("this tenant's share now is {:.3} calls/s", rate.per_second)
                            } else {
                                "all of it".to_owned()
                            }
                        );
                    }
                    return Err(refused);
                }
                Verdict::Unavailable { retry_after } => {
                    return Err(Refused {
                        limit: "rate_limit_store",
                        retry_after,
                        why: "the rate limit store (Redis) cannot be reached and the policy is to refuse calls meanwhile".into(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Passes a call to `server` by `tenant` through the server's breakers and bulkheads.
    pub(crate) async fn admit(&self, server: &Server, tenant: &str) -> Result<Admission, Refused> {
        let name = &server.name;
        if let Some(q) = server.quarantine
            && let Some(left) = self.quarantine.left(tenant, name)
        {
            return Err(Refused {
                limit: "quarantine",
                retry_after: left,
                why: format!(
                    "this tenant is quarantined from server {name}: its calls crashed the server {} times within {} s",
                    q.crashes, q.window_secs
                ),
            });
        }
        let mut permits = Vec::new();
        if let Some(b) = server.breaker {
            let (own, per_tenant) = {
                let mut map = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
                let config = |failures| BreakerConfig {
                    failures,
                    open_for: Duration::from_secs(b.open_secs),
                };
                let sb = map.entry(name.clone()).or_insert_with(|| ServerBreakers {
                    server: Arc::new(Breakers::new(config(b.server_failures()))),
                    tenants: Arc::new(Breakers::new(config(b.failures))),
                });
                sb.server.configure(config(b.server_failures()));
                sb.tenants.configure(config(b.failures));
                (sb.server.clone(), sb.tenants.clone())
            };
            for (limit, breakers, key, whose) in [
                ("breaker", own, format!("u\u{0}{name}"), "the server"),
                (
                    "tenant_breaker",
                    per_tenant,
                    format!("t\u{0}{tenant}\u{0}{name}"),
                    "this tenant's calls to the server",
                ),
            ] {
                match breakers.permit(&key) {
                    Ok(p) => permits.push((breakers, key, p)),
                    Err(open) => {
                        // Permits taken so far go back unused (not a failure).
                        for (b, k, p) in permits {
                            b.record(&k, p, true);
                        }
                        return Err(Refused {
                            limit,
                            retry_after: open.retry_after,
                            why: format!(
                                "server {name} is failing: the circuit breaker for {whose} is open"
                            ),
                        });
                    }
                }
            }
        }
        let wait = Duration::from_millis(server.queue_ms);
        let mut places = Vec::new();
        for (limit, key, max) in [
            ("bulkhead", format!("u\u{0}{name}"), server.max_inflight),
            (
                "tenant_bulkhead",
                format!("t\u{0}{tenant}\u{0}{name}"),
                server.max_inflight_per_tenant,
            ),
        ] {
            if max == 0 {
                continue;
            }
            match self.bulkheads.enter(&key, max, wait).await {
                Ok(place) => places.push(place),
                Err(full) => {
                    for (b, k, p) in permits {
                        b.record(&k, p, true);
                    }
                    let whose = if limit == "bulkhead" {
                        "all tenants"
                    } else {
                        "this tenant"
                    };
                    return Err(Refused {
                        limit,
                        // A place frees when a call ends: a short wait is the honest guess.
                        retry_after: Duration::from_millis(100),
                        why: format!(
                            "server {name} is busy: {} calls in flight from {whose}, the most allowed",
                            full.max
                        ),
                    });
                }
            }
        }
        Ok(Admission {
            permits,
            _places: places,
            crashes: server.quarantine.map(|q| {
                (
                    self.quarantine.clone(),
                    (tenant.to_owned(), name.clone()),
                    q,
                )
            }),
        })
    }

    /// Every breaker that is not closed: `(server, tenant or None for the server's own, state)`.
    pub(crate) fn breaker_states(&self) -> Vec<(String, Option<String>, &'static str)> {
        let map = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (server, sb) in map.iter() {
            for (_, state) in sb.server.states() {
                out.push((server.clone(), None, state.label()));
            }
            for (key, state) in sb.tenants.states() {
                let tenant = key
                    .strip_prefix("t\u{0}")
                    .and_then(|rest| rest.split('\u{0}').next())
                    .map(str::to_owned);
                out.push((server.clone(), tenant, state.label()));
            }
        }
        out.sort();
        out
    }

    /// Closes a breaker (an operator's reset): the server's own, or a tenant's on it.
    pub(crate) fn reset_breaker(&self, server: &str, tenant: Option<&str>) -> bool {
        let map = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        let Some(sb) = map.get(server) else {
            return false;
        };
        match tenant {
            Some(t) => sb.tenants.reset(&format!("t\u{0}{t}\u{0}{server}")),
            None => sb.server.reset(&format!("u\u{0}{server}")),
        }
    }

    /// Drops buckets that have refilled (called every few seconds).
    pub(crate) fn evict_idle(&self) -> usize {
        self.local.evict_idle() + self.shared.as_ref().map_or(0, Distributed::evict_idle)
    }

    /// Buckets held (for the memory bound).
    #[cfg(test)]
    fn buckets(&self) -> usize {
        self.local.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::policy::Policy;
    use palisade_store::Status;

    #[tokio::test]
    async fn buckets_stay_bounded_whatever_the_number_of_subjects() {
        let config = Config::from_toml(
            "[rate_limits]\ndefault_tier = \"t\"\n[rate_limits.tiers.t]\nsubject = { per_second = 1000, burst = 1 }\n\n[[servers]]\nname = \"kit\"\n[servers.stdio]\ncommand = \"true\"\n",
        )
        .unwrap();
        let tenant = Tenant {
            id: palisade_ids::TenantId::parse("acme").unwrap(),
            status: Status::Active,
            status_reason: None,
            upstreams: Vec::new(),
            namespacing: true,
            policy: Policy::default(),
            closed: Default::default(),
        };
        let p = Protection::new(&config.rate_limits, "palisade").unwrap();
        let server = config.server("kit").unwrap();
        for i in 0..100_000 {
            let subject = format!("user-{i}@issuer");
            assert!(
                p.check(&config.rate_limits, &tenant, &subject, server, "echo")
                    .await
                    .is_ok()
            );
        }
        // Each bucket is full again 1 ms after its call: dropping them forgets nothing.
        tokio::time::sleep(Duration::from_millis(5)).await;
        p.evict_idle();
        assert!(p.buckets() < 100, "{} buckets left", p.buckets());
    }
}
