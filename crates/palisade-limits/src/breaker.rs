//! Circuit breakers, one per key (the gateway keys them by upstream and by tenant × upstream).
//!
//! Closed: calls go through; `failures` failures in a row open the breaker. Open: calls are
//! refused at once, with the time left, for `open_for`. Half-open: one probe call goes through;
//! its success closes the breaker, its failure opens it again. What counts as a failure is the
//! caller's choice (transport errors, timeouts, 5xx, crashes; never a tool's `isError` result).
//! A probe that never reports (its call was dropped) is replaced after `open_for`, so a breaker
//! cannot stay half-open for ever. Times come from `tokio::time`, so tests can pause the clock.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// When a breaker opens and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Failures in a row that open the breaker.
    pub failures: u32,
    /// How long an open breaker refuses calls before it lets a probe through.
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: 5,
            open_for: Duration::from_secs(30),
        }
    }
}

/// A breaker's state, as shown to operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn label(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug)]
struct Breaker {
    state: State,
    /// Failures in a row while closed.
    failures: u32,
    /// When it last opened.
    opened: Instant,
    /// When the current probe went out (half-open).
    probe: Option<Instant>,
}

/// Leave to make one call; report its outcome with [`Breakers::record`].
#[derive(Debug)]
#[must_use = "report the call's outcome with Breakers::record"]
pub struct Permit {
    probe: bool,
}

/// A refusal: the breaker is open (or its probe is out).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    pub retry_after: Duration,
}

/// Breakers by key, all with one configuration.
pub struct Breakers {
    config: Mutex<BreakerConfig>,
    map: Mutex<HashMap<String, Breaker>>,
}

impl Breakers {
    pub fn new(config: BreakerConfig) -> Breakers {
        Breakers {
            config: Mutex::new(config),
            map: Mutex::new(HashMap::new()),
        }
    }

    /// A new configuration (on reload); breakers keep their state.
    pub fn configure(&self, config: BreakerConfig) {
        *self.config.lock().unwrap_or_else(|e| e.into_inner()) = config;
    }

    fn config(&self) -> BreakerConfig {
        *self.config.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// May a call to `key` go now?
    pub fn permit(&self, key: &str) -> Result<Permit, Refused> {
        let cfg = self.config();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let Some(b) = map.get_mut(key) else {
            return Ok(Permit { probe: false });
        };
        let now = Instant::now();
        match b.state {
            State::Closed => Ok(Permit { probe: false }),
            State::Open => {
                let reopens = b.opened + cfg.open_for;
                if now < reopens {
                    return Err(Refused {
                        retry_after: reopens - now,
                    });
                }
                b.state = State::HalfOpen;
                b.probe = Some(now);
                Ok(Permit { probe: true })
            }
            State::HalfOpen => match b.probe {
                Some(sent) if now < sent + cfg.open_for => Err(Refused {
                    retry_after: sent + cfg.open_for - now,
                }),
                _ => {
                    b.probe = Some(now);
                    Ok(Permit { probe: true })
                }
            },
        }
    }

    /// The outcome of a permitted call: `ok` unless it failed in a way that counts.
    pub fn record(&self, key: &str, permit: Permit, ok: bool) {
        let cfg = self.config();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if ok && !map.contains_key(key) {
            // A healthy key needs no state: the map holds only keys that failed.
            return;
        }
        let b = map.entry(key.to_owned()).or_insert(Breaker {
            state: State::Closed,
            failures: 0,
            opened: Instant::now(),
            probe: None,
        });
        match (b.state, ok) {
            (State::Closed, true) => b.failures = 0,
            (State::Closed, false) => {
                b.failures += 1;
                if b.failures >= cfg.failures.max(1) {
                    b.state = State::Open;
                    b.opened = Instant::now();
                }
            }
            (State::HalfOpen, true) if permit.probe => {
                b.state = State::Closed;
                b.failures = 0;
                b.probe = None;
            }
            (State::HalfOpen, false) if permit.probe => {
                b.state = State::Open;
                b.opened = Instant::now();
                b.probe = None;
            }
            // Calls let through before the breaker opened, ending now: the probe decides.
            _ => {}
        }
        if b.state == State::Closed && b.failures == 0 {
            map.remove(key);
        }
    }

    /// The state of `key`'s breaker.
    pub fn state(&self, key: &str) -> State {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .map_or(State::Closed, |b| b.state)
    }

    /// Every breaker that is not plainly closed, with its state.
    pub fn states(&self) -> Vec<(String, State)> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<(String, State)> = map.iter().map(|(k, b)| (k.clone(), b.state)).collect();
        v.sort();
        v
    }

    /// Closes `key`'s breaker (an operator's reset); false if it was closed already.
    pub fn reset(&self, key: &str) -> bool {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key)
            .is_some_and(|b| b.state != State::Closed)
    }
}

impl PartialOrd for State {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for State {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.label().cmp(other.label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breakers() -> Breakers {
        Breakers::new(BreakerConfig {
            failures: 3,
            open_for: Duration::from_secs(10),
        })
    }

    fn fail(b: &Breakers, key: &str) {
        let p = b.permit(key).unwrap();
        b.record(key, p, false);
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_failures_in_a_row_and_a_success_resets_the_count() {
        let b = breakers();
        fail(&b, "k");
        fail(&b, "k");
        let p = b.permit("k").unwrap();
        b.record("k", p, true);
        fail(&b, "k");
        fail(&b, "k");
        assert_eq!(b.state("k"), State::Closed);
        fail(&b, "k");
        assert_eq!(b.state("k"), State::Open);
        let refused = b.permit("k").unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_secs(10));
        // Other keys are not affected.
        assert!(b.permit("other").is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_lets_one_probe_through_which_closes_or_reopens() {
        let b = breakers();
        for _ in 0..3 {
            fail(&b, "k");
        }
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(
            b.permit("k").unwrap_err().retry_after,
            Duration::from_secs(6)
        );
        tokio::time::advance(Duration::from_secs(6)).await;
        let probe = b.permit("k").unwrap();
        assert_eq!(b.state("k"), State::HalfOpen);
        assert!(b.permit("k").is_err(), "one probe at a time");
        b.record("k", probe, false);
        assert_eq!(b.state("k"), State::Open);

        tokio::time::advance(Duration::from_secs(10)).await;
        let probe = b.permit("k").unwrap();
        b.record("k", probe, true);
        assert_eq!(b.state("k"), State::Closed);
        assert!(
            b.states().is_empty(),
            "a closed, healthy breaker holds no state"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_probe_is_replaced_and_reset_closes() {
        let b = breakers();
        for _ in 0..3 {
            fail(&b, "k");
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        let lost = b.permit("k").unwrap();
        drop(lost);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(b.permit("k").is_ok(), "a new probe after open_for");
        assert_eq!(b.states(), vec![("k".to_owned(), State::HalfOpen)]);
        assert!(b.reset("k"));
        assert_eq!(b.state("k"), State::Closed);
        assert!(!b.reset("k"));
    }
}
