//! This gateway among its replicas: the health its `/readyz` reports, the heartbeat it
//! writes to the registry store every second (name, version, start, sessions, health), from
//! which any replica lists the fleet (`GET /admin/v1/replicas`), and with a fleet key the
//! notices its upstreams send for sessions whose GET stream another replica may hold, relayed
//! both ways on the fleet's events channel.

use std::sync::Arc;
use std::time::Duration;

use mcp_wire::Id;
use palisade_ids::TenantId;
use palisade_store::ReplicaRecord;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::auth::now_ms;
use crate::catalog;
use crate::gateway::Gateway;
use crate::registry::Tenant;
use crate::session::Session;
use crate::session::shared::{Event, Said, Target};
use crate::upstream::{Notice, UpdateOwner};

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

/// With a fleet key: listens to the other replicas' events (until the gateway drains) and
/// applies them here: to the session copies (`Sessions::apply`), answers to the requests this
/// replica holds, notices to the GET streams it holds.
pub(crate) fn spawn_events(gw: &Arc<Gateway>) {
    let Some(sharing) = gw.sessions.sharing() else {
        return;
    };
    let (tx, mut events) = mpsc::channel(1024);
    sharing.store.listen(tx, gw.draining.clone());
    let gw = gw.clone();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            match &event {
                Event::Answer {
                    session,
                    id,
                    outcome,
                } => {
                    if let Some(copy) = gw.sessions.by_handle(session) {
                        answer_elsewhere(&copy, id, outcome).await;
                    }
                }
                Event::Notice {
                    server,
                    target,
                    said,
                } => relay(&gw, server, target, said),
                Event::Subscribed {
                    session, on: true, ..
                } => {
                    gw.sessions.apply(&event);
                    let copy = gw.sessions.by_handle(session);
                    let registry = gw.registry();
                    if let Some((copy, tenant)) =
                        copy.and_then(|c| registry.tenant(&c.tenant).cloned().map(|t| (c, t)))
                    {
                        count_subscriptions(&tenant, &copy);
                    }
                }
                _ => gw.sessions.apply(&event),
            }
        }
    });
}

/// A client's answer that another replica received for a request this one holds.
async fn answer_elsewhere(session: &Session, id: &str, outcome: &Result<String, String>) {
    let raw = |json: &str| RawValue::from_string(json.to_owned()).ok();
    let Some(id) = raw(id).and_then(|id| Id::from_raw(&id)) else {
        return;
    };
    let outcome = match outcome {
        Ok(result) => raw(result).map(Ok),
        Err(error) => raw(error).map(Err),
    };
    if let Some(outcome) = outcome
        && let Some(awaiting) = session.take_server_request(&id)
    {
        awaiting.deliver(outcome).await;
    }
}

/// Counts the subscriptions a session's copy learned from the fleet among the subscribers of
/// this replica's upstreams, so that an update one of them sends here is attributed to the
/// tenant as it would be on the replica that took the subscription.
pub(crate) fn count_subscriptions(tenant: &Tenant, session: &Session) {
    for uri in session.uncounted() {
        if let Some(t) = catalog::resolve_uri(tenant, &uri) {
            session.count(&uri, t.upstream.subscriber(&tenant.id, &t.name));
        }
    }
}

/// Hands a notice another replica relayed to the GET streams here that it is for: those of
/// the session's copy, or of the tenant's sessions, on the tenant's upstream of that name.
fn relay(gw: &Gateway, server: &str, target: &Target, said: &Said) {
    let (tenant, session) = match target {
        Target::Session(handle) => match gw.sessions.by_handle(handle) {
            Some(copy) => (copy.tenant.clone(), Some(copy.id.clone())),
            None => return,
        },
        Target::Tenant(tenant) => match TenantId::parse(tenant) {
            Ok(tenant) => (tenant, None),
            Err(_) => return,
        },
    };
    let notice = match (said, session) {
        (Said::Updated { uri, params }, session) => Notice::ResourceUpdated {
            uri: uri.clone(),
            params: params.clone(),
            owner: match session {
                Some(id) => UpdateOwner::Session(id),
                None => UpdateOwner::Tenant(tenant.clone()),
            },
        },
        (Said::Message(message), Some(session)) => Notice::ForSession {
            session,
            message: message.as_bytes().into(),
        },
        (Said::Message(_), None) => return,
    };
    let registry = gw.registry();
    let upstream = registry
        .tenant(&tenant)
        .and_then(|t| t.upstreams.iter().find(|u| *u.name == *server).cloned());
    if let Some(upstream) = upstream {
        upstream.publish(Notice::Relayed(Box::new(notice)));
    }
}
