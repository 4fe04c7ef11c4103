//! In-process GCRA rate limits, one bucket per key, each key with its own [`Rate`].
//!
//! Owns: a map from key to a `governor` direct limiter, sharded 16 ways by key hash so
//! concurrent checks on different keys rarely wait on the same lock.
//!
//! Invariants:
//! - A bucket is built for the rate it is checked with; when a key is checked with another
//!   rate (a config reload), its bucket is rebuilt full at the new rate. That may let one
//!   extra burst through at the moment of a reload, which is accepted: governor does not
//!   expose a bucket's state to carry it over.
//! - A bucket is dropped only once it has refilled completely, so forgetting it changes no
//!   answer: a new bucket for the same key starts full, as the old one would have been.
//! - Memory is bounded by the keys active within their refill time: [`Local::evict_idle`]
//!   drops the rest, and a shard also sweeps itself whenever it has doubled in size since its
//!   last sweep, so even without the periodic call the map stays within twice the live keys.
//! - A burst of 0 is treated as 1 (a bucket that can never pass a call is a configuration
//!   mistake, not a limit), and a rate too fast to express as an interval is no limit at all.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::num::NonZeroU32;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::{Rate, Verdict};

const SHARDS: usize = 16;
/// A shard never sweeps itself below this size: sweeping small maps would cost more than
/// the memory it saves.
const MIN_SWEEP: usize = 1024;

type Limiter<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

struct Bucket<C: Clock> {
    limiter: Limiter<C>,
    /// The rate the limiter was built with, compared bit for bit so a NaN rate does not
    /// count as a change on every call.
    per_second_bits: u64,
    burst: u32,
    /// The last call let through. The bucket's theoretical arrival time is at most
    /// `last_allowed + refill`, so from then on the bucket is full. Refusals leave the
    /// bucket's state unchanged, so they do not move this.
    last_allowed: C::Instant,
    /// burst × interval: the time an empty bucket takes to fill.
    refill: Duration,
}

impl<C: Clock> Bucket<C> {
    fn is_full(&self, now: C::Instant) -> bool {
        Duration::from(now.duration_since(self.last_allowed)) >= self.refill
    }
}

struct Shard<C: Clock> {
    map: HashMap<String, Bucket<C>>,
    /// Sweep idle buckets when the map reaches this size (see the module invariants).
    sweep_at: usize,
}

impl<C: Clock> Shard<C> {
    fn evict_idle(&mut self, now: C::Instant) -> usize {
        let before = self.map.len();
        self.map.retain(|_, b| !b.is_full(now));
        self.sweep_at = (self.map.len() * 2).max(MIN_SWEEP);
        before - self.map.len()
    }
}

/// In-process rate limits by key. Cheap to share behind an `Arc`; all methods take `&self`.
/// The clock is the monotonic one; tests may give another ([`Local::with_clock`]).
pub struct Local<C: Clock = DefaultClock> {
    shards: Box<[Mutex<Shard<C>>]>,
    hasher: RandomState,
    /// One clock for every bucket, so instants from different buckets compare.
    clock: C,
}

impl Default for Local {
    fn default() -> Local {
        Local::new()
    }
}

impl<C: Clock + Clone> std::fmt::Debug for Local<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Local").field("keys", &self.keys()).finish()
    }
}

impl Local {
    pub fn new() -> Local {
        Local::with_clock(DefaultClock::default())
    }
}

impl<C: Clock + Clone> Local<C> {
    pub fn with_clock(clock: C) -> Local<C> {
        Local {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::new(),
                        sweep_at: MIN_SWEEP,
                    })
                })
                .collect(),
            hasher: RandomState::new(),
            clock,
        }
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, Shard<C>> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        // A panic while holding a shard cannot leave a bucket half-updated (governor's state
        // is one atomic), so a poisoned lock is still safe to use.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one call from `key`'s bucket.
    pub fn check(&self, key: &str, rate: Rate) -> Verdict {
        let burst = rate.burst.max(1);
        let interval = rate.interval();
        let Some(quota) = Quota::with_period(interval) else {
            // An interval that rounds to zero: the rate is beyond anything we can count.
            return Verdict::Allowed;
        };
        let quota = quota.allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        let per_second_bits = rate.per_second.to_bits();

        let mut shard = self.shard(key);
        let now = self.clock.now();
        if shard.map.len() >= shard.sweep_at && !shard.map.contains_key(key) {
            shard.evict_idle(now);
        }
        let build = || Bucket {
            limiter: RateLimiter::direct_with_clock(quota, self.clock.clone()),
            per_second_bits,
            burst,
            last_allowed: now,
            refill: interval.saturating_mul(burst),
        };
        // Look up by &str first so a known key costs no allocation.
        let bucket = match shard.map.get_mut(key) {
            Some(b) => {
                if b.per_second_bits != per_second_bits || b.burst != burst {
                    *b = build();
                }
                b
            }
            None => shard.map.entry(key.to_owned()).or_insert_with(build),
        };
        match bucket.limiter.check() {
            Ok(()) => {
                bucket.last_allowed = now;
                Verdict::Allowed
            }
            Err(not_until) => Verdict::Limited {
                retry_after: not_until.wait_time_from(now),
            },
        }
    }

    /// Keys currently held.
    pub fn keys(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).map.len())
            .sum()
    }

    /// Drops keys whose bucket has refilled completely (forgetting them changes nothing);
    /// returns how many. The gateway calls this periodically.
    pub fn evict_idle(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let mut shard = s.lock().unwrap_or_else(|e| e.into_inner());
                // Read the clock under the lock, after any check that went before it.
                let now = self.clock.now();
                shard.evict_idle(now)
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant as StdInstant;

    fn rate(per_second: f64, burst: u32) -> Rate {
        Rate { per_second, burst }
    }

    fn retry_after(v: Verdict) -> Duration {
        match v {
            Verdict::Limited { retry_after } => retry_after,
            other => panic!("expected Limited, got {other:?}"),
        }
    }

    #[test]
    fn burst_then_limited() {
        let l = Local::new();
        let r = rate(1.0, 5);
        for i in 0..5 {
            assert_eq!(l.check("k", r), Verdict::Allowed, "call {i}");
        }
        assert!(matches!(l.check("k", r), Verdict::Limited { .. }));
        // Keys are independent.
        assert_eq!(l.check("other", r), Verdict::Allowed);
        assert_eq!(l.keys(), 2);
    }

    #[test]
    fn retry_after_is_time_to_next_token() {
        let l = Local::new();
        let r = rate(10.0, 2); // one token every 100 ms
        assert_eq!(l.check("k", r), Verdict::Allowed);
        assert_eq!(l.check("k", r), Verdict::Allowed);
        let wait = retry_after(l.check("k", r));
        assert!(
            wait > Duration::from_millis(80) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        std::thread::sleep(wait);
        assert_eq!(l.check("k", r), Verdict::Allowed);
        assert!(matches!(l.check("k", r), Verdict::Limited { .. }));
    }

    #[test]
    fn refusals_do_not_consume() {
        let l = Local::new();
        let r = rate(20.0, 1); // 50 ms
        assert_eq!(l.check("k", r), Verdict::Allowed);
        for _ in 0..100 {
            assert!(matches!(l.check("k", r), Verdict::Limited { .. }));
        }
        std::thread::sleep(Duration::from_millis(55));
        assert_eq!(l.check("k", r), Verdict::Allowed);
    }

    #[test]
    fn rate_change_on_reload_rebuilds_bucket() {
        let l = Local::new();
        let old = rate(1.0, 1);
        assert_eq!(l.check("k", old), Verdict::Allowed);
        let wait = retry_after(l.check("k", old));
        assert!(wait > Duration::from_millis(900), "{wait:?}");

        // A larger burst takes effect at once, in a fresh bucket.
        let new = rate(100.0, 3);
        for _ in 0..3 {
            assert_eq!(l.check("k", new), Verdict::Allowed);
        }
        let wait = retry_after(l.check("k", new));
        assert!(wait <= Duration::from_millis(10), "{wait:?}");
        assert_eq!(l.keys(), 1);

        // Going back to the old rate rebuilds again.
        assert_eq!(l.check("k", old), Verdict::Allowed);
        assert!(matches!(l.check("k", old), Verdict::Limited { .. }));
    }

    #[test]
    fn degenerate_rates() {
        let l = Local::new();
        // Burst 0 behaves as burst 1.
        assert_eq!(l.check("zero", rate(1.0, 0)), Verdict::Allowed);
        assert!(matches!(
            l.check("zero", rate(1.0, 0)),
            Verdict::Limited { .. }
        ));
        // An infinite rate is no limit and holds no key.
        for _ in 0..10 {
            assert_eq!(l.check("inf", rate(f64::INFINITY, 1)), Verdict::Allowed);
        }
        // A NaN rate is still one stable bucket (not rebuilt, i.e. not reset, every call).
        assert_eq!(l.check("nan", rate(f64::NAN, 1)), Verdict::Allowed);
        assert!(matches!(
            l.check("nan", rate(f64::NAN, 1)),
            Verdict::Limited { .. }
        ));
        assert_eq!(l.keys(), 2);
    }

    #[test]
    fn evict_idle_only_drops_full_buckets() {
        let l = Local::new();
        assert_eq!(l.check("busy", rate(1.0, 2)), Verdict::Allowed); // full again in 2 s
        assert_eq!(l.check("quick", rate(1000.0, 1)), Verdict::Allowed); // in 1 ms
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(l.evict_idle(), 1);
        assert_eq!(l.keys(), 1);
        // The surviving bucket kept its state: one of two tokens left.
        assert_eq!(l.check("busy", rate(1.0, 2)), Verdict::Allowed);
        assert!(matches!(
            l.check("busy", rate(1.0, 2)),
            Verdict::Limited { .. }
        ));
    }

    #[test]
    fn memory_is_bounded_after_many_keys() {
        let l = Local::new();
        let r = rate(1000.0, 1);
        for i in 0..100_000 {
            assert_eq!(l.check(&format!("key-{i}"), r), Verdict::Allowed);
        }
        // The self-sweep keeps the map small even before the periodic eviction runs.
        assert!(l.keys() <= 100_000);
        std::thread::sleep(Duration::from_millis(5));
        l.evict_idle();
        assert_eq!(l.keys(), 0);
    }

    #[test]
    fn self_sweep_bounds_memory_without_evict_idle() {
        let l = Local::new();
        let r = rate(1_000_000.0, 1); // refills in 1 µs
        for i in 0..200_000 {
            l.check(&format!("key-{i}"), r);
        }
        // Each shard sweeps at MIN_SWEEP or at twice its live keys; nearly all are idle.
        assert!(l.keys() <= SHARDS * MIN_SWEEP, "{}", l.keys());
    }

    /// GCRA as the textbook gives it, one key at a time: the theoretical arrival time `tat`
    /// of the next call; a call at `now` passes unless `now < tat - interval × (burst - 1)`,
    /// and moves `tat` to `max(tat, now) + interval`. A bucket checked with another rate
    /// starts over, full.
    #[derive(Default)]
    struct Model {
        keys: HashMap<&'static str, (u64, u32, u64)>,
    }

    impl Model {
        fn check(&mut self, now: u64, key: &'static str, rate: Rate) -> Verdict {
            let t = rate.interval().as_nanos() as u64;
            let burst = rate.burst.max(1);
            let tat = match self.keys.get(key) {
                Some(&(bits, b, tat)) if bits == rate.per_second.to_bits() && b == burst => tat,
                _ => now,
            };
            let earliest = tat.saturating_sub(t * u64::from(burst - 1));
            if now < earliest {
                return Verdict::Limited {
                    retry_after: Duration::from_nanos(earliest - now),
                };
            }
            let tat = tat.max(now) + t;
            self.keys
                .insert(key, (rate.per_second.to_bits(), burst, tat));
            Verdict::Allowed
        }
    }

    #[derive(Debug, Clone)]
    enum Step {
        Wait(u64),
        Check(usize, usize),
        Evict,
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            (0u64..3_000_000_000).prop_map(Step::Wait),
            (0usize..3, 0usize..3).prop_map(|(k, r)| Step::Check(k, r)),
            Just(Step::Evict),
        ]
    }

    proptest::proptest! {
        /// The limiter agrees with the model on every answer, including each refusal's retry
        /// time, whatever the keys, waits, rate changes and evictions in between.
        #[test]
        fn agrees_with_the_gcra_model(steps in proptest::collection::vec(step(), 1..200)) {
            const KEYS: [&str; 3] = ["tenant:a", "tenant:b", "tool:a/x"];
            let rates = [rate(2.0, 3), rate(0.5, 1), rate(1000.0, 50)];
            let clock = governor::clock::FakeRelativeClock::default();
            let limiter = Local::with_clock(clock.clone());
            let mut model = Model::default();
            let mut now = 0u64;
            for step in steps {
                match step {
                    Step::Wait(ns) => {
                        clock.advance(Duration::from_nanos(ns));
                        now += ns;
                    }
                    Step::Check(k, r) => {
                        let got = limiter.check(KEYS[k], rates[r]);
                        let want = model.check(now, KEYS[k], rates[r]);
                        proptest::prop_assert_eq!(got, want, "{} at {} ns", KEYS[k], now);
                    }
                    Step::Evict => {
                        limiter.evict_idle();
                    }
                }
            }
        }
    }

    /// Rough timing, not an assertion: `cargo test -p palisade-limits -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn timing() {
        let l = Local::new();
        let r = rate(1e9, 1000);
        let keys: Vec<String> = (0..1000).map(|i| format!("tenant-{i}")).collect();
        for k in &keys {
            l.check(k, r);
        }
        let mut samples = Vec::with_capacity(200_000);
        for i in 0..200_000 {
            let k = &keys[i % keys.len()];
            let t = StdInstant::now();
            std::hint::black_box(l.check(k, r));
            samples.push(t.elapsed());
        }
        samples.sort();
        let pct = |p: usize| samples[samples.len() * p / 100];
        println!(
            "Local::check over 1000 keys: p50 {:?}, p99 {:?}, max {:?}",
            pct(50),
            pct(99),
            samples[samples.len() - 1]
        );
    }
}
