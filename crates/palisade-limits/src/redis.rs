//! GCRA rate limits shared by every gateway replica through Redis.
//!
//! Owns: one connection to Redis (a `ConnectionManager`), the GCRA script in `gcra.lua`, the
//! up/down state of the store, and the in-process fallback used while it is down.
//!
//! Invariants:
//! - A check never waits on Redis longer than its timeout (50 ms unless set with
//!   [`Distributed::with_timeout`]). An error or a timeout marks the store down, and that call
//!   and every later one is answered by the [`WhenDown`] policy, without touching Redis, until
//!   a background task has reconnected. That task tries at most once every 500 ms and ends
//!   once connected (or once the [`Distributed`] is dropped); there is at most one at a time.
//! - While down: `fail_open` answers from an in-process [`Local`] limiter with the same rates
//!   (so N replicas let through up to N times the rate), `fail_closed` refuses with
//!   [`Verdict::Unavailable`] and a retry after 1 s.
//! - Time is Redis server time (`TIME` inside the script), so replica clocks do not matter.
//!   Buckets expire in Redis once full, so idle keys cost nothing there.
//! - The Redis URL may hold a password: it is never logged nor put in an error.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::local::Local;
use crate::{LimitError, Rate, Verdict};

/// The default time a check may wait for Redis.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);
/// The least time between two connection attempts.
const RETRY_EVERY: Duration = Duration::from_millis(500);
/// How long one connection attempt (connect, then PING) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// What a client is told to wait when the store is down and the policy is to fail closed.
const UNAVAILABLE_RETRY: Duration = Duration::from_secs(1);

/// What the gateway does while Redis cannot be reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenDown {
    /// Fall back to an in-process limiter with the same rates.
    FailOpen,
    /// Refuse calls with [`Verdict::Unavailable`].
    FailClosed,
}

/// The live connection, with a generation so a late failure on an old connection cannot
/// take down a newer one.
struct Conn {
    generation: u64,
    manager: ConnectionManager,
}

struct ConnState {
    conn: Option<Conn>,
    next_generation: u64,
    /// A reconnect task is running. Changed only under this lock, together with `conn`, so
    /// "down and nobody reconnecting" cannot happen once a runtime has been seen.
    reconnecting: bool,
    /// When the last connection attempt started (to space attempts by [`RETRY_EVERY`]).
    last_attempt: Option<Instant>,
}

/// What the check path and the reconnect task share.
struct Shared {
    client: redis::Client,
    state: Mutex<ConnState>,
    /// Mirrors `state.conn.is_some()`, for a lock-free [`Distributed::up`].
    up: AtomicBool,
    /// Turns true once the first connection attempt has finished, whatever its outcome:
    /// until then a check waits (up to its timeout) instead of declaring the store down.
    settled: watch::Sender<bool>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ConnState> {
        // Every update under this lock is a few plain assignments; a poisoned lock still
        // holds a consistent state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live connection, if any.
    fn current(&self) -> Option<(u64, ConnectionManager)> {
        self.lock()
            .conn
            .as_ref()
            .map(|c| (c.generation, c.manager.clone()))
    }

    /// Starts the reconnect task unless one is running (or there is no runtime to run it on:
    /// the next check, which runs on one, starts it then).
    fn start_reconnect(self: &Arc<Shared>, state: &mut ConnState) {
        if state.reconnecting || state.conn.is_some() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            state.reconnecting = true;
            runtime.spawn(reconnect(Arc::downgrade(self)));
        }
    }

    /// Marks the store down after `generation`'s connection failed with `why`.
    fn mark_down(self: &Arc<Shared>, generation: u64, why: &str) {
        let mut state = self.lock();
        if state.conn.as_ref().map(|c| c.generation) == Some(generation) {
            state.conn = None;
            self.up.store(false, Ordering::Release);
            tracing::warn!(
                error = why,
                "rate limit store (Redis) unreachable; applying the when-down policy and reconnecting"
            );
        }
        self.start_reconnect(&mut state);
    }
}

/// One connection attempt: connect, then PING, so a server that accepts connections but
/// does not answer is not taken for up.
async fn connect(client: redis::Client) -> Result<ConnectionManager, redis::RedisError> {
    // One try per attempt: the reconnect task does the retrying, at its own pace.
    let config = ConnectionManagerConfig::new()
        .set_number_of_retries(0)
        .set_connection_timeout(Some(CONNECT_TIMEOUT));
    let mut manager = ConnectionManager::new_with_config(client, config).await?;
    redis::cmd("PING").query_async::<()>(&mut manager).await?;
    Ok(manager)
}

/// Reconnects until it succeeds or the limiter is dropped. Holds only a weak reference
/// while waiting, so a dropped [`Distributed`] (e.g. replaced on reload) does not leave it
/// running forever.
async fn reconnect(shared: Weak<Shared>) {
    let mut failures: u64 = 0;
    loop {
        let Some(s) = shared.upgrade() else { return };
        let wait = s
            .lock()
            .last_attempt
            .map(|at| (at + RETRY_EVERY).saturating_duration_since(Instant::now()))
            .unwrap_or_default();
        drop(s);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let Some(s) = shared.upgrade() else { return };
        s.lock().last_attempt = Some(Instant::now());
        let outcome = tokio::time::timeout(CONNECT_TIMEOUT, connect(s.client.clone())).await;
        match outcome {
            Ok(Ok(manager)) => {
                let mut state = s.lock();
                let generation = state.next_generation;
                state.next_generation += 1;
                state.conn = Some(Conn {
                    generation,
                    manager,
                });
                state.reconnecting = false;
                s.up.store(true, Ordering::Release);
                drop(state);
                s.settled.send_replace(true);
                tracing::info!(
                    after_failed_attempts = failures,
                    "rate limit store (Redis) connected"
                );
                return;
            }
            Ok(Err(e)) => {
                failures += 1;
                tracing::debug!(error = %e, failures, "rate limit store (Redis): connection attempt failed");
            }
            Err(_) => {
                failures += 1;
                tracing::debug!(
                    failures,
                    "rate limit store (Redis): connection attempt timed out"
                );
            }
        }
        s.settled.send_replace(true);
    }
}

/// Rate limits shared across replicas through Redis, with a policy for when it is down.
pub struct Distributed {
    shared: Arc<Shared>,
    prefix: String,
    when_down: WhenDown,
    timeout: Duration,
    script: redis::Script,
    /// Answers while the store is down and the policy is to fail open.
    fallback: Local,
}

impl std::fmt::Debug for Distributed {
    // Written by hand: the client holds the URL, which may hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Distributed")
            .field("prefix", &self.prefix)
            .field("when_down", &self.when_down)
            .field("timeout", &self.timeout)
            .field("up", &self.up())
            .finish_non_exhaustive()
    }
}

impl Distributed {
    /// Never fails because Redis is down at start: it just starts Down and keeps retrying.
    /// Errors only on a malformed URL. Bucket keys in Redis are `prefix` followed by the key.
    ///
    /// Called inside a Tokio runtime, it starts connecting at once; otherwise on the first
    /// check.
    pub fn new(url: &str, prefix: &str, when_down: WhenDown) -> Result<Distributed, LimitError> {
        // The parse error is not passed on: its text could quote part of the URL.
        let client = redis::Client::open(url)
            .map_err(|_| LimitError::Config("the Redis URL is malformed".to_owned()))?;
        let shared = Arc::new(Shared {
            client,
            state: Mutex::new(ConnState {
                conn: None,
                next_generation: 0,
                reconnecting: false,
                last_attempt: None,
            }),
            up: AtomicBool::new(false),
            settled: watch::Sender::new(false),
        });
        shared.start_reconnect(&mut shared.lock());
        Ok(Distributed {
            shared,
            prefix: prefix.to_owned(),
            when_down,
            timeout: DEFAULT_TIMEOUT,
            script: redis::Script::new(include_str!("gcra.lua")),
            fallback: Local::new(),
        })
    }

    /// Sets how long a check may wait for Redis before the store counts as down.
    pub fn with_timeout(mut self, timeout: Duration) -> Distributed {
        self.timeout = timeout;
        self
    }

    /// False while Redis is unreachable (for /readyz and a metric).
    pub fn up(&self) -> bool {
        self.shared.up.load(Ordering::Acquire)
    }

    /// Drops idle buckets of the fail-open fallback (see [`Local::evict_idle`]); returns how
    /// many. Buckets in Redis expire by themselves.
    pub fn evict_idle(&self) -> usize {
        self.fallback.evict_idle()
    }

    /// Takes one call from `key`'s bucket.
    pub async fn check(&self, key: &str, rate: Rate) -> Verdict {
        let Some((generation, mut manager)) = self.connection().await else {
            return self.down(key, rate);
        };
        let interval = rate.interval();
        if interval.is_zero() {
            // Too fast to count, as in [`Local`]: no limit.
            return Verdict::Allowed;
        }
        // The script counts in whole microseconds; anything faster counts as 1 µs.
        let interval_us = u64::try_from(interval.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let burst = rate.burst.max(1);
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(format!("{}{key}", self.prefix))
            .arg(interval_us)
            .arg(burst)
            .arg(1);
        let call = invocation.invoke_async::<(i64, i64)>(&mut manager);
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok((1, _))) => Verdict::Allowed,
            Ok(Ok((_, retry_after_us))) => Verdict::Limited {
                // Never zero: a refusal always says to wait.
                retry_after: Duration::from_micros(retry_after_us.max(1).unsigned_abs()),
            },
            Ok(Err(e)) => {
                self.shared.mark_down(generation, &e.to_string());
                self.down(key, rate)
            }
            Err(_) => {
                self.shared.mark_down(generation, "timed out");
                self.down(key, rate)
            }
        }
    }

    /// The live connection. Before the first connection attempt has finished, waits for it
    /// (within the check's timeout) so a limiter that was just built is not taken for down.
    async fn connection(&self) -> Option<(u64, ConnectionManager)> {
        if let Some(c) = self.shared.current() {
            return Some(c);
        }
        // Down, or not connected yet: make sure someone is reconnecting (this also starts
        // the first attempt when `new` ran outside a runtime).
        self.shared.start_reconnect(&mut self.shared.lock());
        let mut settled = self.shared.settled.subscribe();
        if !*settled.borrow() {
            let _ = tokio::time::timeout(self.timeout, settled.wait_for(|s| *s)).await;
            return self.shared.current();
        }
        None
    }

    fn down(&self, key: &str, rate: Rate) -> Verdict {
        match self.when_down {
            WhenDown::FailOpen => self.fallback.check(key, rate),
            WhenDown::FailClosed => Verdict::Unavailable {
                retry_after: UNAVAILABLE_RETRY,
            },
        }
    }
}
