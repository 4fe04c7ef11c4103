//! The per-session call loop of `bench-load`: closed loop (next call as soon as the last one is
//! answered) or open loop (calls on a fixed schedule), warmup, then the measured window.
//!
//! A call is measured when it starts (closed loop) or is due (open loop) inside the window
//! `[start, end)`.
//!
//! Open loop: a pacer thread hands out due times, evenly spaced over all sessions in turn, and
//! sleeps between them with `nanosleep` and a 1 ns timer slack, so calls leave at the requested
//! spacing rather than in bursts on tokio's 1 ms timer tick. Latency is free of coordinated
//! omission without charging the load generator's own lateness to the target: each session
//! models an ideal sender that sends every call when it is due or, if the previous call is still
//! in flight, the moment that call's answer arrives. A call's latency is the wait in that ideal
//! queue plus its measured service time (send to verified answer). A slow answer therefore shows
//! in every call queued behind it, as it would for a client with a schedule to keep, while a late
//! wakeup of the pacer or of the session does not. Calls are sent when due, or at once when
//! behind, so the offered rate stays the requested one.

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

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
    /// Number of concurrent sessions (the pacer serves them in turn).
    pub sessions: usize,
}

/// The due times of one session's calls, from the pacer thread (open loop only).
pub type DueTimes = mpsc::UnboundedReceiver<Instant>;

/// One due-time stream per session: `None`s for the closed loop, else fed by a pacer thread that
/// runs until the window ends or every session has hung up.
pub fn pacers(plan: &Plan) -> std::io::Result<Vec<Option<DueTimes>>> {
    let sessions = plan.sessions.max(1);
    let Some(interval) = plan.interval else {
        return Ok((0..sessions).map(|_| None).collect());
    };
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..sessions).map(|_| mpsc::unbounded_channel()).unzip();
    let step_nanos = (interval.as_nanos() / sessions as u128).max(1);
    let run_start = plan.run_start.into_std();
    let end = plan.end.map(Instant::into_std);
    std::thread::Builder::new()
        .name("bench-pacer".into())
        .spawn(move || {
            // SAFETY: PR_SET_TIMERSLACK only changes this thread's timer slack (1 ns).
            unsafe {
                libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
            }
            let mut open: Vec<bool> = vec![true; txs.len()];
            let mut remaining = txs.len();
            for k in 0u128.. {
                let offset = u64::try_from(step_nanos * k).unwrap_or(u64::MAX);
                let due = run_start + Duration::from_nanos(offset);
                if end.is_some_and(|end| due >= end) {
                    break;
                }
                let now = std::time::Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                let s = (k % txs.len() as u128) as usize;
                if open[s] && txs[s].send(Instant::from_std(due)).is_err() {
                    open[s] = false;
                    remaining -= 1;
                    if remaining == 0 {
                        break;
                    }
                }
            }
        })?;
    Ok(rxs.into_iter().map(Some).collect())
}

/// How long after the window a call that was due inside it may still be sent (open loop).
pub const UNSENT_GRACE: Duration = Duration::from_millis(250);

/// Runs one session under `plan` and returns what it measured; `due` is its stream from
/// [`pacers`] (open loop) or `None` (closed loop).
pub async fn drive<C: Caller>(
    plan: Plan,
    caller: &mut C,
    mut due_times: Option<DueTimes>,
) -> Tally {
    let mut tally = Tally::new();
    let mut measured = 0u64;
    // When the ideal sender's connection is free again (open loop).
    let mut ideal_free = plan.run_start;
    loop {
        if plan.calls.is_some_and(|n| measured >= n) {
            break;
        }
        let due = match due_times.as_mut() {
            Some(rx) => match rx.recv().await {
                Some(due) => Some(due),
                None => break, // the pacer reached the end of the window
            },
            None => None,
        };
        let sent = Instant::now();
        if let Some(end) = plan.end {
            match (due, due_times.as_mut()) {
                (None, _) if sent >= end => break,
                (Some(due), Some(rx)) if sent >= end + UNSENT_GRACE => {
                    // The target fell behind the schedule: what is still due is not sent, and
                    // counts as errors, not as (missing) samples.
                    let mut unsent = u64::from(due >= plan.start);
                    while let Some(due) = rx.recv().await {
                        unsent += u64::from(due >= plan.start);
                    }
                    for _ in 0..unsent {
                        tally.error(&CallError::Unsent);
                    }
                    break;
                }
                _ => {}
            }
        }
        let result = caller.call().await;
        let done = Instant::now();
        let service = done - sent;
        let (mark, latency) = match due {
            Some(due) => {
                let ideal_start = ideal_free.max(due);
                ideal_free = ideal_start + service;
                (due, (ideal_start - due) + service)
            }
            None => (sent, service),
        };
        if mark >= plan.start && plan.end.is_none_or(|end| mark < end) {
            measured += 1;
            tally.done(done);
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
        let tally = drive(
            plan,
            &mut fake,
            pacers(&plan).expect("pacer").pop().flatten(),
        )
        .await;
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
        let tally = drive(
            plan,
            &mut Fake::new(),
            pacers(&plan).expect("pacer").pop().flatten(),
        )
        .await;
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
        let tally = drive(
            plan,
            &mut fake,
            pacers(&plan).expect("pacer").pop().flatten(),
        )
        .await;
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

    struct Slow;

    impl Caller for Slow {
        async fn call(&mut self) -> Result<(), CallError> {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(())
        }
    }

    #[tokio::test]
    async fn open_loop_counts_what_a_slow_target_never_got() {
        let now = Instant::now();
        let plan = Plan {
            run_start: now,
            start: now,
            end: Some(now + Duration::from_millis(200)),
            calls: None,
            interval: Some(Duration::from_millis(10)),
            sessions: 1,
        };
        let due = pacers(&plan).expect("pacer").pop().flatten();
        let tally = drive(plan, &mut Slow, due).await;
        // 20 calls due; about 5 fit in the window and the grace, the rest are unsent.
        assert_eq!(tally.calls() + tally.error_count(), 20);
        assert!(
            tally.errors.get("unsent").is_some_and(|n| *n >= 10),
            "{:?}",
            tally.errors
        );
        assert!(tally.last_done.is_some_and(|d| d >= now + UNSENT_GRACE));
    }
}
