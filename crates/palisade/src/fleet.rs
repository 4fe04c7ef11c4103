//! This gateway among its replicas: the health its `/readyz` reports, and the heartbeat it
//! writes to the registry store every second (name, version, start, sessions, health), from
//! which any replica lists the fleet (`GET /admin/v1/replicas`). It reads the gateway; the
//! gateway does not read it.

use std::sync::Arc;
use std::time::Duration;

use palisade_store::ReplicaRecord;
use tokio::task::JoinHandle;

use crate::auth::now_ms;
use crate::gateway::Gateway;

/// How often a replica writes its heartbeat.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// A replica whose last heartbeat is older than this is not alive (a few missed beats).
pub(crate) const ALIVE_WITHIN_MS: i64 = 5_000;

/// What `/readyz` answers: whether load balancers should send this replica calls (a leaving
/// replica still serves them, but says no), and what it says of itself.
pub(crate) struct Health {
    pub(crate) serving: bool,
    pub(crate) says: String,
}

/// Serving while it can: every upstream up (`ready`), or some down (`degraded`, naming them).
/// Not serving once it is asked to stop (`leaving`: still serving during the notice period, so
/// that a load balancer takes it out first), while draining, or when no upstream is up at all.
/// One broken upstream must not take every replica out of a load balancer: its tenants get
/// precise errors, the others keep being served, and `palisade_upstream_up` says which one.
pub(crate) fn health(gw: &Gateway) -> Health {
    let says = |serving: bool, says: String| Health { serving, says };
    if gw.draining.is_cancelled() {
        return says(false, "draining".into());
    }
    if gw.leaving.is_cancelled() {
        return says(false, "leaving: still serving until the drain".into());
    }
    let upstreams = gw.upstreams();
    let down: Vec<&str> = upstreams
        .iter()
        .filter(|u| !u.is_ready())
        .map(|u| &*u.name)
        .collect();
    let store_down = gw.protection.store_up() == Some(false);
    if store_down && down.len() < upstreams.len() {
        // Still serving, under the configured policy: say so, but stay in the load balancer.
        let policy = match gw.config().rate_limits.when_redis_down {
            palisade_limits::redis::WhenDown::FailOpen => "fail_open: each replica limits alone",
            palisade_limits::redis::WhenDown::FailClosed => {
                "fail_closed: rate-limited calls are refused"
            }
        };
        return says(
            true,
            format!("degraded: the rate limit store (Redis) is down ({policy})"),
        );
    }
    if down.is_empty() {
        says(true, "ready".into())
    } else if down.len() == upstreams.len() {
        says(false, format!("no upstream is up: {}", down.join(", ")))
    } else {
        says(
            true,
            format!("degraded: upstreams not up: {}", down.join(", ")),
        )
    }
}

/// Writes this replica's heartbeat every second until the gateway stops, then a last one
/// that says `stopped`. A store that cannot be written is said once per outage; the fleet
/// list shows the replica as not alive meanwhile, and nothing else depends on it.
pub(crate) fn spawn_heartbeat(gw: Arc<Gateway>) -> JoinHandle<()> {
    let started_at = now_ms();
    tokio::spawn(async move {
        let mut failing = false;
        loop {
            beat(&gw, started_at, health(&gw).says, &mut failing).await;
            tokio::select! {
                _ = tokio::time::sleep(HEARTBEAT) => {}
                _ = gw.stopping.cancelled() => break,
            }
        }
        beat(&gw, started_at, "stopped".into(), &mut failing).await;
    })
}

async fn beat(gw: &Gateway, started_at: i64, health: String, failing: &mut bool) {
    let record = ReplicaRecord {
        name: gw.replica.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        started_at,
        heartbeat_at: now_ms(),
        sessions: i64::try_from(gw.sessions.count()).unwrap_or(i64::MAX),
        health,
    };
    match gw.store.heartbeat(&record).await {
        Ok(()) if *failing => {
            *failing = false;
            tracing::info!("replica heartbeat written again");
        }
        Ok(()) => {}
        Err(e) if !*failing => {
            *failing = true;
            tracing::warn!(error = %e, replica = %gw.replica, "cannot write this replica's heartbeat; the fleet list shows it as not alive until it can");
        }
        Err(_) => {}
    }
}
