//! Pools: which instance of a server takes a call.
//!
//! Every instance holds a [`Pool`]: the instances a call that reaches it may go to instead, and
//! their supervisors. A tenant's pool of a dedicated server is held by its first instance
//! (`index` 0, the one the catalog sees): [`Upstream::pick`] sends a client call to the least
//! busy member with room, and grows the pool (up to `max_processes`) when none has. Shared
//! servers, pool members and session instances have a pool of one: their calls stay on them. A
//! legacy client session of an HTTP server spoken to in the legacy era gets its own *session
//! instance* ([`Upstream::instance_for`]), which the pool also holds. A member whose process is
//! retired (idle, drained, recycled; see the supervisor) stays in the pool as an idle slot that
//! its next call starts again, so the pool never shrinks below the processes it once needed and
//! never holds more than `max_processes`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mcp_wire::Era;
use serde_json::value::RawValue;
use tokio::task::JoinHandle;

use super::link::Link;
use super::{ClientDefaults, Kin, Route, Upstream, UpstreamError, lock};
use crate::config;

/// The instances a call may go to besides the one holding this pool, and their supervisors.
#[derive(Default)]
pub(super) struct Pool {
    /// A dedicated server's first instance: how many processes the tenant's pool may have, the
    /// first included. `None`: a pool of one (calls stay on this instance, unlimited).
    capacity: Option<usize>,
    /// The pool's other instances, in the order they were added (`index` 1, 2, …).
    members: Mutex<Vec<Arc<Upstream>>>,
    /// Legacy client sessions' own upstream sessions, by client session id.
    sessions: Mutex<HashMap<Arc<str>, Arc<Upstream>>>,
    /// The supervisors of the members and session instances, awaited at shutdown.
    supervisors: Mutex<Vec<JoinHandle<()>>>,
}

impl Pool {
    /// The pool of a dedicated server's first instance: up to `max_processes`.
    pub(super) fn dedicated(max_processes: usize) -> Pool {
        Pool {
            capacity: Some(max_processes),
            ..Pool::default()
        }
    }

    fn members(&self) -> Vec<Arc<Upstream>> {
        lock(&self.members).clone()
    }

    /// The session instance serving a legacy client session, if it has one.
    pub(super) fn session(&self, session: &str) -> Option<Arc<Upstream>> {
        lock(&self.sessions).get(session).cloned()
    }
}

impl Upstream {
    /// Adds an instance to this pool and starts its supervisor (which waits for its first use,
    /// unless it is warm); `None` when the pool is full or of one.
    pub(super) fn grow(self: &Arc<Self>) -> Option<Arc<Upstream>> {
        let capacity = self.pool.capacity?;
        let (tenant, vault) = (self.tenant.clone()?, self.vault.clone()?);
        let mut list = lock(&self.pool.members);
        if list.len() + 1 >= capacity {
            return None;
        }
        let kin = Kin {
            dedicated: Some((tenant, vault)),
            index: list.len() + 1,
            ..Kin::default()
        };
        let member = self.hold(self.config.clone(), kin);
        list.push(member.clone());
        Some(member)
    }

    /// Waits (at most `limit` each) for the pool's other instances to stop, after shutdown.
    pub(crate) async fn stopped_members(&self, limit: Duration) {
        let tasks: Vec<_> = lock(&self.pool.supervisors).drain(..).collect();
        for t in tasks {
            let _ = tokio::time::timeout(limit, t).await;
        }
    }

    /// Client calls in flight on this instance.
    pub(super) fn client_inflight(&self) -> usize {
        self.lock_calls()
            .values()
            .filter(|c| matches!(c.route, Route::Client { .. }))
            .count()
    }

    /// The instance of this pool a call on `route` goes to. The gateway's own calls, and every
    /// call to a pool of one, stay here. A client call to a dedicated pool goes to a running
    /// instance with room (the least loaded), else one that can start, else a new one while the
    /// pool has room. Room is `max_inflight_per_process` calls (one, when that is 0, so a busy
    /// process makes the pool grow); when every process is full, the limit refuses the call,
    /// or without a limit the least loaded takes it.
    pub(super) fn pick(self: &Arc<Self>, route: &Route) -> Result<Arc<Upstream>, UpstreamError> {
        if self.pool.capacity.is_none() || !matches!(route, Route::Client { .. }) {
            return Ok(self.clone());
        }
        let limit = self.config.max_inflight_per_process;
        let room = limit.max(1);
        let all = self.instances();
        let loads: Vec<(usize, bool)> = all
            .iter()
            .map(|u| (u.client_inflight(), u.is_ready()))
            .collect();
        let best = |ready: bool| {
            (0..all.len())
                .filter(|&i| loads[i].0 < room && loads[i].1 == ready)
                .min_by_key(|&i| loads[i].0)
        };
        if let Some(i) = best(true).or_else(|| best(false)) {
            return Ok(all[i].clone());
        }
        if let Some(member) = self.grow() {
            return Ok(member);
        }
        if limit > 0 {
            return Err(UpstreamError::Busy {
                server: self.name.clone(),
                limit,
            });
        }
        let least = (0..all.len()).min_by_key(|&i| loads[i].0).unwrap_or(0);
        Ok(all[least].clone())
    }

    /// Where a legacy client session's calls go when the server is reached over HTTP in the
    /// legacy era, or in the modern era under `protocol = "auto"`: its own upstream session, so
    /// that it gets what the server gives it directly (server→client requests, resource
    /// subscriptions, resumable streams) and everything the server sends on that session (logs
    /// on its GET stream, list and resource changes, requests outside calls) has exactly one
    /// owner. Made and started on first use; `None`: this instance's own link.
    pub(super) fn instance_for(
        self: &Arc<Self>,
        link: &Link,
        route: &Route,
        defaults: ClientDefaults<'_>,
    ) -> Option<Arc<Upstream>> {
        let Route::Client {
            session: Some(session),
            ..
        } = route
        else {
            return None;
        };
        if self.primary.is_some() || self.config.http.is_none() {
            return None;
        }
        if link.info().era == Era::Modern && self.era_for(Era::Legacy) != Some(Era::Legacy) {
            return None;
        }
        let closed = defaults.closed?;
        let mut map = lock(&self.pool.sessions);
        if let Some(instance) = map.get(session) {
            return Some(instance.clone());
        }
        let declared = defaults.capabilities.map(ToOwned::to_owned);
        let instance = self.session_instance(session.clone(), declared);
        instance
            .listening
            .store(defaults.listening, Ordering::Relaxed);
        map.insert(session.clone(), instance.clone());
        // It ends with its client session (or the gateway).
        let (me, closed, ended) = (self.clone(), closed.clone(), instance.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = closed.cancelled() => ended.shutdown.cancel(),
                _ = ended.shutdown.cancelled() => {}
            }
            lock(&me.pool.sessions).retain(|_, i| !Arc::ptr_eq(i, &ended));
        });
        Some(instance)
    }

    /// A client session's own upstream session, supervised: the server in the legacy era,
    /// declaring the client's own capabilities at `initialize`.
    pub(super) fn session_instance(
        self: &Arc<Self>,
        session: Arc<str>,
        declared: Option<Box<RawValue>>,
    ) -> Arc<Upstream> {
        let mut config = self.config.clone();
        config.protocol = config::UpstreamProtocol::Legacy;
        let kin = Kin {
            dedicated: self.tenant.clone().zip(self.vault.clone()),
            index: self.index,
            primary: Some((Arc::downgrade(self), self.notices.clone())),
            session: Some(session),
            declared,
        };
        self.hold(config, kin)
    }

    /// Builds an instance this one holds (a pool member or a session instance), ending with
    /// this one's shutdown, and starts its supervisor.
    fn hold(self: &Arc<Self>, config: config::Server, kin: Kin) -> Arc<Upstream> {
        let instance = Upstream::build(
            config,
            kin,
            self.metrics.clone(),
            self.shutdown.child_token(),
            self.http_client.clone(),
        );
        let supervised = instance.clone();
        let task = tokio::spawn(async move { supervised.supervise().await });
        let mut supervisors = lock(&self.pool.supervisors);
        supervisors.retain(|t| !t.is_finished());
        supervisors.push(task);
        instance
    }

    /// The era the gateway speaks to this upstream for a client of `client` era, once connected:
    /// a legacy client's own over HTTP where `protocol = "auto"` lets it (see
    /// [`Upstream::instance_for`]).
    pub(crate) fn era_for(&self, client: Era) -> Option<Era> {
        let era = self.era()?;
        let auto = self.config.protocol == config::UpstreamProtocol::Auto
            && self.primary.is_none()
            && !self.legacy_refused.load(Ordering::Relaxed);
        let own = client == Era::Legacy && era == Era::Modern && auto && self.config.http.is_some();
        Some(if own { client } else { era })
    }

    /// This instance and its pool's other instances: the processes and links an operator sees
    /// (client sessions' own upstream sessions are not listed).
    pub(crate) fn instances(self: &Arc<Self>) -> Vec<Arc<Upstream>> {
        let mut all = vec![self.clone()];
        all.extend(self.pool.members());
        all
    }

    /// The instances restarts and drains reach besides this one.
    pub(super) fn dependents(&self) -> Vec<Arc<Upstream>> {
        let mut all = self.pool.members();
        all.extend(lock(&self.pool.sessions).values().cloned());
        all
    }
}
