//! Palisade traffic protection (docs/ARCHITECTURE.md §4, steps 6 and 7): what decides whether
//! a call may go on now.
//!
//! Owns: GCRA rate limits in process ([`local`]) and across replicas in Redis ([`redis`]), with
//! a configured policy for when Redis is down; bulkheads ([`bulkhead`]) that cap calls in
//! flight; circuit breakers ([`breaker`]). Keys are opaque strings chosen by the caller (the
//! gateway keys by tenant, tool, subject and upstream); nothing here knows about MCP.
//!
//! Invariants: a refusal always carries when to retry; memory is bounded however many keys
//! appear (idle keys are dropped once forgetting them changes nothing).

pub mod breaker;
pub mod bulkhead;
pub mod local;
pub mod redis;

use std::time::Duration;

/// A rate: `per_second` calls per second on average, in bursts of up to `burst`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

impl Rate {
    /// The time between two calls at the steady rate.
    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.per_second.max(1e-9))
    }
}

/// The answer of a rate limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Over the limit: the call may succeed after `retry_after`.
    Limited {
        retry_after: Duration,
    },
    /// The shared limiter (Redis) cannot be reached and the policy is to fail closed.
    Unavailable {
        retry_after: Duration,
    },
}

/// Errors setting up traffic protection.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("rate limit store: {0}")]
    Store(String),
    #[error("rate limit configuration: {0}")]
    Config(String),
}
