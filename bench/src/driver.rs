//! The per-session call loop of `bench-load`: closed loop (next call as soon as the last one is
//! answered) or open loop (calls on a fixed schedule), warmup, then the measured window.
//!
//! A call is measured when it starts (closed loop) or is due (open loop) inside the window
//! `[start, end)`.
//!
//! Open-loop latency is free of coordinated omission without charging the load generator's own
//! lateness to the target: each session models an ideal sender that sends every call when it is
//! due or, if the previous call is still in flight, the moment that call's answer arrives. A
//! call's latency is then the wait in that ideal queue plus its measured service time (send to
//! verified answer). A slow answer therefore shows in every call queued behind it, as it would
//! for a client with a schedule to keep, while a late timer wakeup (tokio's timer has a 1 ms
//! tick) or a late poll does not. Calls are actually sent when due, or at once when behind, so
//! the offered rate stays the requested one.

use std::future::Future;
use std::time::Duration;

use tokio::time::{Instant, sleep_until};

use crate::mcp::CallError;
use crate::stats::Tally;

/// Something that makes one verified call: an HTTP session or a stdio multiplexer slot.
pub trait Caller {
    fn call(&mut self) -> impl Future<Output = Result<(), CallError>> + Send;
}

/// When and how much every session calls.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// When the sessions start (warmup begins).
    pub run_start: Instant,
    /// When the measured window begins (after warmup).
    pub start: Instant,
    /// When the measured window ends (duration mode).
    pub end: Option<Instant>,
    /// Measured calls per session (calls mode).
    pub calls: Option<u64>,
    /// Open loop: the interval between one session's calls.
    pub interval: Option<Duration>,
    /// Number of concurrent sessions (staggers the open-loop schedules).
    pub sessions: usize,
}

/// Runs session `idx` under `plan` and returns what it measured.
pub async fn drive<C: Caller>(plan: Plan, idx: usize, caller: &mut C) -> Tally {
    let mut tally = Tally::new();
    let mut measured = 0u64;
    let mut next_due = plan
        .interval
        .map(|iv| plan.run_start + iv.mul_f64(idx as f64 / plan.sessions.max(1) as f64));
    // When the ideal sender's connection is free again (open loop).
    let mut ideal_free = plan.run_start;
    loop {
        if plan.calls.is_some_and(|n| measured >= n) {
            break;
        }
        let due = match (next_due.as_mut(), plan.interval) {
            (Some(at), Some(interval)) => {
                let due = *at;
                *at += interval;
                if plan.end.is_some_and(|end| due >= end) {
                    break;
                }
                if due > Instant::now() {
                    sleep_until(due).await;
                }
                Some(due)
            }
            _ => None,
        };
        let sent = Instant::now();
        if due.is_none() && plan.end.is_some_and(|end| sent >= end) {
            break;
        }
        let result = caller.call().await;
        let service = sent.elapsed();
        let (mark, latency) = match due {
            Some(due) => {
                let ideal_start = ideal_free.max(due);
                ideal_free = ideal_start + service;
                (due, (ideal_start - due) + service)
            }
            None => (sent, service),
        };
        if mark >= plan.start {
            measured += 1;
            match &result {
                Ok(()) => tally.ok(latency),
                Err(e) => tally.error(e),
            }
        }
        if matches!(result, Err(CallError::Closed)) {
            break;
        }
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct Fake {
        n: Arc<AtomicU64>,
        first_call: Duration,
    }

    impl Fake {
        fn new() -> Fake {
            Fake {
                n: Arc::new(AtomicU64::new(0)),
                first_call: Duration::from_millis(1),
            }
        }
    }

    impl Caller for Fake {
        fn call(&mut self) -> impl Future<Output = Result<(), CallError>> + Send {
            let n = self.n.fetch_add(1, Ordering::Relaxed);
            let pause = if n == 0 {
                self.first_call
            } else {
                Duration::from_millis(1)
            };
            async move {
                tokio::time::sleep(pause).await;
                if n % 10 == 9 {
                    Err(CallError::Status(500))
                } else {
                    Ok(())
                }
            }
        }
    }

    #[tokio::test]
    async fn calls_mode_counts_only_measured_calls() {
        let now = Instant::now();
        let plan = Plan {
            run_start: now,
            start: now + Duration::from_millis(20),
            end: None,
            calls: Some(20),
            interval: None,
            sessions: 1,
        };
        let mut fake = Fake::new();
        let n = fake.n.clone();
        let tally = drive(plan, 0, &mut fake).await;
        assert_eq!(tally.calls() + tally.error_count(), 20);
        assert_eq!(tally.error_count(), 2);
        assert!(n.load(Ordering::Relaxed) > 20, "warmup calls happened");
    }

    #[tokio::test]
    async fn open_loop_keeps_the_rate() {
        let now = Instant::now();
        let plan = Plan {
            run_start: now,
            start: now,
            end: Some(now + Duration::from_millis(300)),
            calls: None,
            interval: Some(Duration::from_millis(10)),
            sessions: 1,
        };
        let tally = drive(plan, 0, &mut Fake::new()).await;
        let total = tally.calls() + tally.error_count();
        assert!(
            (25..=31).contains(&total),
            "{total} calls in 300 ms at 100/s"
        );
    }

    #[tokio::test]
    async fn open_loop_charges_the_wait_behind_a_slow_call() {
        let now = Instant::now();
        let plan = Plan {
            run_start: now,
            start: now,
            end: Some(now + Duration::from_millis(300)),
            calls: None,
            interval: Some(Duration::from_millis(10)),
            sessions: 1,
        };
        let mut fake = Fake::new();
        fake.first_call = Duration::from_millis(35);
        let tally = drive(plan, 0, &mut fake).await;
        // Due at 0, 10, 20, 30 ms: the first takes 35 ms, the next three wait behind it.
        let slow = tally
            .latency
            .iter_recorded()
            .filter(|v| v.value_iterated_to() >= 7_000_000)
            .map(|v| v.count_at_value())
            .sum::<u64>();
        assert!(slow >= 3, "{slow} calls charged with the wait");
        assert!(tally.latency.max() >= 35_000_000);
    }
}
