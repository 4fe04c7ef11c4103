//! The session table: every open legacy session by id, what each tenant holds (count and
//! bytes, against `limits.max_sessions_per_tenant` and `limits.session_memory_per_tenant`), the
//! per-tenant `initialize` rate, and the idle reaper. With a fleet key ([`Sharing`]) it holds
//! this replica's copies of the fleet's sessions: a request for a session it has no copy of
//! opens the sealed id and loads the session from the fleet's store, and ending a session ends
//! it everywhere.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use palisade_ids::TenantId;
use palisade_limits::Rate;
use palisade_limits::local::Local;
use rand::RngCore;
use tokio_util::sync::CancellationToken;

use tokio::sync::mpsc;

use super::seal::Sealer;
use super::shared::{Event, Record, Shared};
use super::{SESSION_BYTES, Session, handle_of, lock};
use crate::auth::{AuthMethod, Principal};
use crate::config::Limits;
use crate::metrics::Metrics;
use crate::resume::{Logs, Mirror, Mirrored};

pub struct Sessions {
    map: RwLock<HashMap<Arc<str>, Arc<Session>>>,
    /// Each tenant's use; its session count changes under `map`'s write lock.
    per_tenant: Mutex<HashMap<TenantId, Arc<Usage>>>,
    limits: SessionLimits,
    /// `initialize` per tenant.
    opened: Local,
    epoch: Instant,
    metrics: Arc<Metrics>,
    sharing: Option<Sharing>,
}

/// `Session::flushed` of a copy whose activity the fleet has not heard of at all.
const NEVER_FLUSHED: u64 = u64::MAX;

/// With a fleet key: how ids are sealed, where the fleet keeps sessions' state, and the
/// channel to the writer that copies their SSE events there (`Shared::mirror_writer`).
pub struct Sharing {
    pub sealer: Sealer,
    pub store: Arc<Shared>,
    pub(crate) mirror: mpsc::Sender<Mirrored>,
}

/// What a session is made of, whether a client opens it here or it continues here.
struct Opening {
    id: Arc<str>,
    tenant: TenantId,
    subject: Arc<str>,
    key: Option<Arc<str>>,
    opened_at: i64,
    expires_at_secs: Option<i64>,
    protocol_version: String,
    client_capabilities: Box<serde_json::value::RawValue>,
}

/// What bounds a tenant's sessions (from `[limits]`).
#[derive(Clone, Copy, Debug)]
pub struct SessionLimits {
    pub idle: Duration,
    pub(crate) max_per_tenant: usize,
    pub(crate) memory_per_tenant: usize,
    pub initialize: Rate,
}

impl SessionLimits {
    pub fn of(limits: &Limits) -> SessionLimits {
        SessionLimits {
            idle: Duration::from_secs(limits.session_idle_secs),
            max_per_tenant: limits.max_sessions_per_tenant,
            memory_per_tenant: limits.session_memory_per_tenant,
            initialize: limits.initialize_rate,
        }
    }
}

/// One tenant's sessions and the bytes they store.
pub(super) struct Usage {
    sessions: AtomicUsize,
    pub(super) bytes: AtomicUsize,
    budget: usize,
}

impl Usage {
    pub(super) fn charge(&self, bytes: usize) -> Result<(), usize> {
        self.bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                held.checked_add(bytes).filter(|&b| b <= self.budget)
            })
            .map(|_| ())
            .map_err(|_| self.budget)
    }
}

/// Why a tenant may not open a session now.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// It has `limits.max_sessions_per_tenant` open.
    Full(usize),
    /// Its sessions hold `limits.session_memory_per_tenant` bytes.
    Memory(usize),
    /// It opens them faster than `limits.initialize_rate`.
    Rate { retry_after: Duration },
}

/// Why a session id was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Unknown, expired, ended, or bound to another principal: all look the same (404).
    NotFound,
    /// The session is the fleet's, but its store (Redis) cannot be reached to continue it here.
    Unavailable,
    /// The session is the fleet's, but this replica holds all the tenant's sessions it may.
    Refused(Refused),
}

impl Sessions {
    pub fn new(limits: SessionLimits, metrics: Arc<Metrics>) -> Sessions {
        Sessions {
            map: RwLock::new(HashMap::new()),
            per_tenant: Mutex::new(HashMap::new()),
            limits,
            opened: Local::new(),
            epoch: Instant::now(),
            metrics,
            sharing: None,
        }
    }

    /// Sessions that any replica of the fleet continues.
    pub fn shared(self, sharing: Sharing) -> Sessions {
        Sessions {
            sharing: Some(sharing),
            ..self
        }
    }

    /// How long a session may go unused.
    pub(crate) fn idle(&self) -> Duration {
        self.limits.idle
    }

    pub(crate) fn sharing(&self) -> Option<&Sharing> {
        self.sharing.as_ref()
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_secs()
    }

    pub fn create(
        &self,
        principal: &Principal,
        protocol_version: &str,
        client_capabilities: Box<serde_json::value::RawValue>,
    ) -> Result<Arc<Session>, Refused> {
        if let palisade_limits::Verdict::Limited { retry_after } =
            self.opened.check(&principal.tenant, self.limits.initialize)
        {
            return Err(Refused::Rate { retry_after });
        }
        let key = match principal.method {
            AuthMethod::ApiKey => principal.credential.clone(),
            AuthMethod::Jwt => None,
        };
        let id: Arc<str> = match &self.sharing {
            Some(sharing) => sharing
                .sealer
                .seal(principal, protocol_version, key.as_deref())
                .into(),
            None => {
                let mut bytes = [0u8; 32];
                rand::rng().fill_bytes(&mut bytes);
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(bytes)
                    .into()
            }
        };
        self.insert(Opening {
            id,
            tenant: principal.tenant.clone(),
            subject: principal.subject.clone(),
            key,
            opened_at: crate::auth::now_ms(),
            expires_at_secs: principal.expires_at_secs,
            protocol_version: protocol_version.to_owned(),
            client_capabilities,
        })
    }

    /// Adds a session to the table, counted against its tenant's limits; the copy already
    /// here when another request put it there first.
    fn insert(&self, o: Opening) -> Result<Arc<Session>, Refused> {
        let cost = SESSION_BYTES + o.client_capabilities.get().len();
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if let Some(there) = map.get(&o.id) {
            return Ok(there.clone());
        }
        let usage = lock(&self.per_tenant)
            .entry(o.tenant.clone())
            .or_insert_with(|| {
                Arc::new(Usage {
                    sessions: AtomicUsize::new(0),
                    bytes: AtomicUsize::new(0),
                    budget: self.limits.memory_per_tenant,
                })
            })
            .clone();
        if usage.sessions.load(Ordering::Relaxed) >= self.limits.max_per_tenant {
            return Err(Refused::Full(self.limits.max_per_tenant));
        }
        usage.charge(cost).map_err(Refused::Memory)?;
        usage.sessions.fetch_add(1, Ordering::Relaxed);
        let now = self.now();
        let handle = handle_of(&o.id);
        let session = Arc::new(Session {
            handle: handle.clone(),
            id: o.id.clone(),
            tenant: o.tenant,
            subject: o.subject,
            key: o.key,
            opened_at: o.opened_at,
            expires_at_secs: o.expires_at_secs,
            protocol_version: o.protocol_version,
            client_capabilities: o.client_capabilities,
            last_seen: AtomicU64::new(now),
            flushed: AtomicU64::new(now),
            local_only: std::sync::atomic::AtomicBool::new(false),
            log_level: AtomicU64::new(0),
            subscriptions: Mutex::new(HashMap::new()),
            server_requests: Mutex::new(HashMap::new()),
            // Copies of one session on several replicas each ask the client things: their
            // request ids start apart (below 2^53, which JSON numbers hold exactly).
            next_server_request: AtomicU64::new(if self.sharing.is_some() {
                rand::random::<u64>() >> 12
            } else {
                1
            }),
            inflight: Mutex::new(HashMap::new()),
            stream: Mutex::new(None),
            streams: match &self.sharing {
                Some(sharing) => Logs::mirrored(Mirror {
                    handle: handle.as_str().into(),
                    tx: sharing.mirror.clone(),
                }),
                None => Logs::default(),
            },
            watches: Mutex::new(HashMap::new()),
            closed: CancellationToken::new(),
            usage,
            charged: AtomicUsize::new(cost),
        });
        map.insert(o.id, session.clone());
        self.metrics.session_opened();
        Ok(session)
    }

    /// Tells the fleet about a session a client just opened here, so any replica can continue
    /// it. If the store cannot be reached the session still works here (another replica would
    /// answer 404, and the client opens a new one).
    pub(crate) async fn announce(&self, session: &Session) {
        let Some(sharing) = &self.sharing else {
            return;
        };
        let record = Record {
            handle: session.handle.clone(),
            tenant: session.tenant.to_string(),
            subject: session.subject.to_string(),
            key: session.key.as_deref().map(str::to_owned),
            protocol_version: session.protocol_version.clone(),
            opened_at: session.opened_at,
            client_capabilities: session.client_capabilities.get().to_owned(),
            log_level: session.log_level.load(Ordering::Relaxed),
            replica: String::new(),
        };
        if sharing.store.opened(&record).await.is_err() {
            session.local_only.store(true, Ordering::Relaxed);
            self.metrics.session_store_failed();
            tracing::warn!(
                "the session store (Redis) cannot be reached: a new session can continue only on this replica"
            );
        }
    }

    /// The session this principal presents `id` of: this replica's copy, or with a fleet key
    /// the fleet's session, continued here (then `true`: its subscriptions are to be counted on
    /// this replica's upstreams, `dispatch::count_subscriptions`).
    pub async fn find(
        &self,
        id: &str,
        principal: &Principal,
    ) -> Result<(Arc<Session>, bool), Lookup> {
        let found = self.get(id, principal);
        let Some(sharing) = &self.sharing else {
            return found.map(|s| (s, false));
        };
        if let Ok(session) = found {
            return Ok((session, false));
        }
        let facts = sharing.sealer.open(id, principal).ok_or(Lookup::NotFound)?;
        let wall = crate::auth::now_ms() / 1000;
        if facts.expires_at_secs.is_some_and(|at| at <= wall) {
            return Err(Lookup::NotFound);
        }
        let handle = handle_of(id);
        let (record, subscriptions) = match sharing.store.load(&handle).await {
            Ok(Some(found)) => found,
            Ok(None) => return Err(Lookup::NotFound),
            Err(_) => {
                self.metrics.session_store_failed();
                return Err(Lookup::Unavailable);
            }
        };
        let caps = serde_json::value::RawValue::from_string(record.client_capabilities)
            .map_err(|_| Lookup::NotFound)?;
        if record.tenant != *principal.tenant || *record.subject != *principal.subject {
            return Err(Lookup::NotFound);
        }
        let session = self
            .insert(Opening {
                id: id.into(),
                tenant: principal.tenant.clone(),
                subject: principal.subject.clone(),
                key: facts.key.map(Arc::from),
                opened_at: facts.opened_at,
                expires_at_secs: facts.expires_at_secs,
                protocol_version: facts.protocol_version,
                client_capabilities: caps,
            })
            .map_err(Lookup::Refused)?;
        session.log_level.store(record.log_level, Ordering::Relaxed);
        for uri in subscriptions.iter().take(super::MAX_SUBSCRIPTIONS) {
            let _ = session.subscribe(uri, None);
        }
        // The request that continues it here is activity the fleet has not heard of.
        session.flushed.store(NEVER_FLUSHED, Ordering::Relaxed);
        self.metrics.session_continued();
        Ok((session, true))
    }

    /// The session with this id, if it exists and belongs to this principal.
    pub fn get(&self, id: &str, principal: &Principal) -> Result<Arc<Session>, Lookup> {
        let session = self
            .map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .ok_or(Lookup::NotFound)?;
        if session.tenant != principal.tenant || session.subject != principal.subject {
            return Err(Lookup::NotFound);
        }
        session.touch(self.now());
        Ok(session)
    }

    pub fn remove(&self, id: &str) -> Option<Arc<Session>> {
        let session = {
            let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
            let session = map.remove(id)?;
            let usage = &session.usage;
            usage.bytes.fetch_sub(
                session.charged.swap(0, Ordering::Relaxed),
                Ordering::Relaxed,
            );
            if usage.sessions.fetch_sub(1, Ordering::Relaxed) == 1 {
                lock(&self.per_tenant).remove(&session.tenant);
            }
            session
        };
        session.closed.cancel();
        lock(&session.subscriptions).clear();
        self.metrics.session_closed();
        Some(session)
    }

    /// Ends a session: here, and with a fleet key on every replica.
    pub(crate) async fn end(&self, id: &str) {
        let handle = handle_of(id);
        self.remove(id);
        if let Some(sharing) = &self.sharing
            && sharing.store.end(&handle).await.is_err()
        {
            self.metrics.session_store_failed();
            tracing::warn!(
                "the session store (Redis) cannot be reached: an ended session lives on other replicas until it expires"
            );
        }
    }

    /// Tells the fleet a session's new log level (with a fleet key).
    pub(crate) async fn share_level(&self, session: &Session, rank: u64) {
        if let Some(sharing) = &self.sharing
            && sharing
                .store
                .set_level(&session.handle, rank)
                .await
                .is_err()
        {
            self.store_failed();
        }
    }

    /// Tells the fleet a subscription a session took or dropped (with a fleet key).
    pub(crate) async fn share_subscription(&self, session: &Session, uri: &str, on: bool) {
        if let Some(sharing) = &self.sharing
            && sharing
                .store
                .subscribed(&session.handle, uri, on)
                .await
                .is_err()
        {
            self.store_failed();
        }
    }

    /// Tells the other replicas something only one of them can act on (with a fleet key).
    pub(crate) async fn tell_fleet(&self, event: Event) {
        if let Some(sharing) = &self.sharing
            && sharing.store.publish(event).await.is_err()
        {
            self.store_failed();
        }
    }

    fn store_failed(&self) {
        self.metrics.session_store_failed();
        tracing::warn!(
            "the session store (Redis) cannot be reached: other replicas do not see this change to a session"
        );
    }

    /// Ends the session with this handle: with a fleet key on every replica (an error when the
    /// fleet's store cannot be told), else here.
    pub(crate) async fn end_handle(&self, handle: &str) -> Result<(), super::shared::Down> {
        if let Some(copy) = self.by_handle(handle) {
            self.remove(&copy.id);
        }
        match &self.sharing {
            Some(sharing) => sharing.store.end(handle).await,
            None => Ok(()),
        }
    }

    /// This replica's copy of the session with this handle.
    pub(crate) fn by_handle(&self, handle: &str) -> Option<Arc<Session>> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.values().find(|s| s.handle == handle).cloned()
    }

    /// Applies what another replica did to a session this one holds a copy of.
    pub(crate) fn apply(&self, event: &Event) {
        let (Event::Ended { session }
        | Event::Level { session, .. }
        | Event::Subscribed { session, .. }
        | Event::Answer { session, .. }
        | Event::Cancel { session, .. }) = event
        else {
            return;
        };
        let Some(copy) = self.by_handle(session) else {
            return;
        };
        match event {
            Event::Ended { .. } => {
                self.remove(&copy.id);
            }
            Event::Level { rank, .. } => copy.log_level.store(*rank, Ordering::Relaxed),
            Event::Subscribed { uri, on: true, .. } => {
                let _ = copy.subscribe(uri, None);
            }
            Event::Subscribed { uri, on: false, .. } => copy.unsubscribe(uri),
            Event::Cancel { id, .. } => {
                copy.cancel_call(id);
            }
            // Answers go back to whoever asked (`dispatch::answer_elsewhere`), notices to the
            // GET streams (`fleet::relay`).
            Event::Answer { .. } | Event::Notice { .. } => {}
        }
    }

    /// Open sessions on this gateway.
    pub(crate) fn count(&self) -> usize {
        self.map.read().map_or(0, |m| m.len())
    }

    /// Closes sessions idle for longer than the limit, or whose credential has expired;
    /// returns how many. With a fleet key, a copy idle here is closed only when the fleet's
    /// store no longer has the session (it ended, or was idle everywhere); otherwise the copy is
    /// dropped if it holds nothing but state (another replica serves the session), or kept.
    pub(crate) async fn reap_idle(&self) -> usize {
        let now = self.now();
        let idle = self.limits.idle.as_secs();
        let wall = crate::auth::now_ms() / 1000;
        let mut closed = self.close_where(|s| s.expires_at_secs.is_some_and(|at| at <= wall));
        let idle_here: Vec<Arc<Session>> = self
            .map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|s| now.saturating_sub(s.last_seen.load(Ordering::Relaxed)) > idle)
            .cloned()
            .collect();
        let alive = match &self.sharing {
            Some(sharing) if !idle_here.is_empty() => {
                let handles: Vec<String> = idle_here.iter().map(|s| s.handle.clone()).collect();
                sharing.store.alive(&handles).await.unwrap_or_else(|_| {
                    // Not knowing, each replica applies the idle limit alone.
                    self.metrics.session_store_failed();
                    vec![false; handles.len()]
                })
            }
            _ => vec![false; idle_here.len()],
        };
        for (s, alive) in idle_here.iter().zip(alive) {
            if alive && s.holds_more_than_state() {
                s.touch(now);
                continue;
            }
            if self.remove(&s.id).is_some() && !alive {
                closed += 1;
            }
        }
        closed
    }

    /// Tells the fleet's store which sessions this replica saw since the last flush, so
    /// that they live another idle period everywhere; a copy of one the fleet no longer has
    /// closes (so a missed `Ended` event is made up for within a flush interval).
    pub(crate) async fn flush_activity(&self) {
        let Some(sharing) = &self.sharing else {
            return;
        };
        let seen: Vec<(Arc<Session>, u64)> = self
            .map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|s| !s.local_only.load(Ordering::Relaxed))
            .filter_map(|s| {
                let last = s.last_seen.load(Ordering::Relaxed);
                let flushed = s.flushed.load(Ordering::Relaxed);
                (flushed == NEVER_FLUSHED || last > flushed).then(|| (s.clone(), last))
            })
            .collect();
        let handles: Vec<String> = seen.iter().map(|(s, _)| s.handle.clone()).collect();
        let Ok(alive) = sharing.store.refresh(&handles).await else {
            self.metrics.session_store_failed();
            return;
        };
        for ((s, last), alive) in seen.into_iter().zip(alive) {
            if alive {
                s.flushed.store(last, Ordering::Relaxed);
            } else {
                // Ended elsewhere (an event this replica missed) or expired fleet-wide.
                self.remove(&s.id);
            }
        }
    }

    /// Ends every session (shutdown).
    pub(crate) fn close_all(&self) {
        self.close_where(|_| true);
    }

    /// Ends the sessions `doomed` picks; returns how many.
    pub(crate) fn close_where(&self, doomed: impl Fn(&Session) -> bool) -> usize {
        let ids: Vec<Arc<str>> = self
            .map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|s| doomed(s))
            .map(|s| s.id.clone())
            .collect();
        for id in &ids {
            self.remove(id);
        }
        ids.len()
    }

    /// This replica's sessions, of one tenant or all, oldest first.
    pub(crate) fn list(&self, tenant: Option<&str>) -> Vec<Arc<Session>> {
        let mut list: Vec<Arc<Session>> = self
            .map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|s| tenant.is_none_or(|t| &*s.tenant == t))
            .cloned()
            .collect();
        list.sort_by_key(|s| s.opened_at);
        list
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use palisade_limits::Rate;

    use super::*;
    use crate::auth::Principal;
    use crate::metrics::Metrics;
    use crate::session::*;

    fn principal(tenant: &str, subject: &str) -> Principal {
        Principal::of_key(tenant, subject)
    }

    fn limits(idle_secs: u64, max_per_tenant: usize) -> SessionLimits {
        SessionLimits {
            idle: Duration::from_secs(idle_secs),
            max_per_tenant,
            memory_per_tenant: 64 << 20,
            initialize: Rate {
                per_second: 1000.0,
                burst: 1000,
            },
        }
    }

    fn sessions(limits: SessionLimits) -> Sessions {
        Sessions::new(limits, Arc::new(Metrics::new()))
    }

    fn caps_of(bytes: usize) -> Box<serde_json::value::RawValue> {
        let pad = "x".repeat(bytes.saturating_sub(8));
        serde_json::value::RawValue::from_string(format!(r#"{{"x":"{pad}"}}"#)).unwrap()
    }

    #[test]
    fn a_tenants_sessions_fit_its_memory_budget() {
        let sessions = sessions(SessionLimits {
            memory_per_tenant: 2 * SESSION_BYTES + 9_500,
            ..limits(60, 100)
        });
        let a = principal("acme", "k");
        let big = sessions.create(&a, "2025-11-25", caps_of(8_000)).unwrap();
        let small = sessions.create(&a, "2025-11-25", caps()).unwrap();
        assert_eq!(
            sessions.create(&a, "2025-11-25", caps_of(8_000)).err(),
            Some(Refused::Memory(2 * SESSION_BYTES + 9_500))
        );
        assert!(
            sessions
                .create(&principal("globex", "k"), "2025-11-25", caps_of(8_000))
                .is_ok(),
            "per tenant"
        );
        // Subscriptions count too, and give their bytes back.
        let uri = "u".repeat(1_000);
        assert_eq!(small.subscribe(&uri, None), Ok(true));
        assert_eq!(small.subscribe(&uri, None), Ok(false), "once");
        assert!(matches!(
            small.subscribe(&"v".repeat(1_000), None),
            Err(SubscribeRefused::Memory(_))
        ));
        small.unsubscribe(&uri);
        assert_eq!(small.subscribe(&"v".repeat(1_000), None), Ok(true));
        sessions.remove(&big.id);
        assert!(sessions.create(&a, "2025-11-25", caps_of(8_000)).is_ok());
        // Closing a session gives back all it held, subscriptions included.
        sessions.close_all();
        assert!(lock(&sessions.per_tenant).is_empty());
        small.unsubscribe(&"v".repeat(1_000));
    }

    #[test]
    fn subscriptions_are_bounded_in_length_and_number() {
        let sessions = sessions(limits(60, 10));
        let s = sessions
            .create(&principal("acme", "k"), "2025-11-25", caps())
            .unwrap();
        assert_eq!(
            s.subscribe(&"u".repeat(MAX_URI_BYTES + 1), None),
            Err(SubscribeRefused::UriTooLong)
        );
        for i in 0..MAX_SUBSCRIPTIONS {
            assert_eq!(s.subscribe(&format!("file:///{i}"), None), Ok(true));
        }
        assert_eq!(
            s.subscribe("file:///one-more", None),
            Err(SubscribeRefused::TooMany)
        );
        assert_eq!(s.subscribe("file:///0", None), Ok(false), "held ones stay");
    }

    #[test]
    fn pending_server_requests_are_bounded_and_abandoned_ones_forgotten() {
        let sessions = sessions(limits(60, 10));
        let s = sessions
            .create(&principal("acme", "k"), "2025-11-25", caps())
            .unwrap();
        let mut waiting = Vec::new();
        for _ in 0..MAX_PENDING_REQUESTS {
            let (tx, rx) = oneshot::channel();
            assert!(s.register_server_request(Awaiting::Gateway(tx)).is_some());
            waiting.push(rx);
        }
        let (tx, _rx) = oneshot::channel();
        assert!(s.register_server_request(Awaiting::Gateway(tx)).is_none());
        // Nobody waits for one any more: its place is free.
        waiting.pop();
        let (tx, _rx) = oneshot::channel();
        assert!(s.register_server_request(Awaiting::Gateway(tx)).is_some());
    }

    #[test]
    fn initialize_is_rate_limited_per_tenant() {
        let sessions = sessions(SessionLimits {
            initialize: Rate {
                per_second: 0.5,
                burst: 2,
            },
            ..limits(60, 100)
        });
        let a = principal("acme", "k");
        assert!(sessions.create(&a, "2025-11-25", caps()).is_ok());
        assert!(sessions.create(&a, "2025-11-25", caps()).is_ok());
        assert!(matches!(
            sessions.create(&a, "2025-11-25", caps()),
            Err(Refused::Rate { retry_after }) if retry_after > Duration::ZERO
        ));
        assert!(
            sessions
                .create(&principal("globex", "k"), "2025-11-25", caps())
                .is_ok(),
            "per tenant"
        );
    }

    fn caps() -> Box<serde_json::value::RawValue> {
        serde_json::value::RawValue::from_string("{}".into()).unwrap()
    }

    #[test]
    fn sessions_are_bound_to_their_principal() {
        let sessions = sessions(limits(60, 10));
        let a = principal("acme", "key:1");
        let s = sessions.create(&a, "2025-11-25", caps()).unwrap();
        assert!(s.id.len() >= 43);
        assert!(sessions.get(&s.id, &a).is_ok());
        assert_eq!(
            sessions.get(&s.id, &principal("globex", "key:2")).err(),
            Some(Lookup::NotFound)
        );
        assert_eq!(
            sessions.get(&s.id, &principal("acme", "key:other")).err(),
            Some(Lookup::NotFound)
        );
        sessions.remove(&s.id);
        assert_eq!(sessions.get(&s.id, &a).err(), Some(Lookup::NotFound));
    }

    #[test]
    fn sessions_per_tenant_are_capped() {
        let sessions = sessions(limits(60, 2));
        let a = principal("acme", "k");
        let first = sessions.create(&a, "2025-11-25", caps()).unwrap();
        sessions.create(&a, "2025-11-25", caps()).unwrap();
        assert_eq!(
            sessions.create(&a, "2025-11-25", caps()).err(),
            Some(Refused::Full(2))
        );
        assert!(
            sessions
                .create(&principal("globex", "k"), "2025-11-25", caps())
                .is_ok(),
            "per tenant"
        );
        sessions.remove(&first.id);
        assert!(
            sessions.create(&a, "2025-11-25", caps()).is_ok(),
            "a closed session frees its slot"
        );
    }

    #[tokio::test]
    async fn a_copy_of_a_session_the_fleet_no_longer_has_closes_at_the_next_flush() {
        let Some(url) = testenv::redis() else {
            return;
        };
        let fleet = format!("palisade-test-{}", rand::random::<u32>());
        let sharing = |replica: &str| Sharing {
            sealer: Sealer::new(super::super::seal::FleetKey::new(&[3; 32]).unwrap(), None),
            store: Arc::new(Shared::new(&url, &fleet, replica, Duration::from_secs(60)).unwrap()),
            mirror: mpsc::channel(16).0,
        };
        let r1 = sessions(limits(60, 10)).shared(sharing("r1"));
        let r2 = sessions(limits(60, 10)).shared(sharing("r2"));
        let p = principal("acme", "k");
        let s = r1.create(&p, "2025-11-25", caps()).unwrap();
        r1.announce(&s).await;
        let (copy, continued) = r2.find(&s.id, &p).await.unwrap();
        assert!(continued, "r2 continues what r1 opened");
        // r1 ends it; r2 hears nothing (no listener here, as when its channel was down).
        r1.end(&s.id).await;
        assert!(r2.get(&s.id, &p).is_ok(), "r2's copy still serves");
        assert!(!copy.closed.is_cancelled());
        // Its next flush (the request that continued it there is activity to flush).
        r2.flush_activity().await;
        assert!(copy.closed.is_cancelled(), "closed at r2's next flush");
        assert_eq!(r2.find(&s.id, &p).await.err(), Some(Lookup::NotFound));
    }

    #[tokio::test]
    async fn idle_sessions_are_reaped() {
        let sessions = sessions(limits(0, 10));
        let s = sessions
            .create(&principal("acme", "k"), "2025-11-25", caps())
            .unwrap();
        s.last_seen.store(0, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(sessions.reap_idle().await, 1);
        assert!(s.closed.is_cancelled());
    }

    #[tokio::test]
    async fn sessions_end_when_their_credential_expires() {
        let sessions = sessions(limits(3600, 10));
        let now = crate::auth::now_ms() / 1000;
        let mut expired = principal("acme", "a");
        expired.expires_at_secs = Some(now - 1);
        let mut valid = principal("acme", "b");
        valid.expires_at_secs = Some(now + 3600);
        let e = sessions.create(&expired, "2025-11-25", caps()).unwrap();
        let v = sessions.create(&valid, "2025-11-25", caps()).unwrap();
        assert_eq!(sessions.reap_idle().await, 1);
        assert!(e.closed.is_cancelled() && !v.closed.is_cancelled());
    }
}
