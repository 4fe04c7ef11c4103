//! The supervisor: starts an instance's process or connection, restarts it with backoff when
//! it fails, checks its health, and retires it (idle, drained, recycled, restarted, unhealthy).
//! Also what the admin API lists of an instance ([`InstanceStatus`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mcp_wire::Era;
use tokio::sync::watch;

use super::link::{Link, Readiness, Transport};
use super::{ListKind, Notice, Route, Upstream, handshake};

/// Lazy start and idle stop of a dedicated instance.
pub(super) struct OnDemand {
    /// Stop after this long without use; `None` keeps it running once started.
    pub(super) idle: Option<Duration>,
    /// Whether a process is wanted: set by every use, cleared when the instance goes idle. A
    /// level, not a wake-up count, so a use while the process was starting leaves nothing
    /// behind to restart it after it stops.
    pub(super) wanted: watch::Sender<bool>,
    /// Last use, in milliseconds since `epoch`.
    pub(super) last_used: AtomicU64,
    pub(super) epoch: Instant,
    /// Set by an operator: restart now, or stop once no call is in flight.
    pub(super) restart: std::sync::atomic::AtomicBool,
    pub(super) drain: std::sync::atomic::AtomicBool,
    pub(super) poke: tokio::sync::Notify,
}

/// Why a healthy on-demand instance is stopped by its supervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Retire {
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
    pub(crate) uptime_secs: Option<u64>,
    /// Client calls served by the current process.
    pub calls: u64,
    pub rss_kib: Option<u64>,
    /// The sandbox layers its process got (`rlimits+cgroup+landlock+seccomp+nnp`), if any.
    pub sandbox: Option<String>,
}

/// A process's resident memory, from `/proc/PID/status`.
pub(super) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// 100 ms doubling to 30 s, with ±25% jitter so a fleet does not restart in lockstep.
pub(super) fn backoff(attempt: u32) -> Duration {
    let base = 100u64.saturating_mul(1u64 << attempt.min(9)).min(30_000);
    let jitter = rand::random_range(0.75..1.25);
    Duration::from_millis((base as f64 * jitter) as u64)
}

impl Upstream {
    /// Starts the supervisor, which keeps a link up until shutdown (an on-demand instance's
    /// waits for its first use). A pool's first instance also starts its warm members.
    pub fn start(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        for _ in 1..self.config.min_processes {
            self.grow();
        }
        let me = self.clone();
        tokio::spawn(async move { me.supervise().await })
    }

    pub(super) async fn supervise(self: Arc<Self>) {
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
    pub(super) async fn retire(self: &Arc<Self>, link: &Arc<Link>) -> Retire {
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
    pub(crate) fn sandbox_level(&self) -> Option<String> {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert!(backoff(0) <= Duration::from_millis(125));
        assert!(backoff(3) >= Duration::from_millis(600));
        assert!(backoff(40) <= Duration::from_millis(37_500));
    }
}
