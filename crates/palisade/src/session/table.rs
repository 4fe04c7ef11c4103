//! The session table: every open legacy session by id, what each tenant holds (count and
//! bytes, against `limits.max_sessions_per_tenant` and `limits.session_memory_per_tenant`), the
//! per-tenant `initialize` rate, and the idle reaper.

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

use super::{SESSION_BYTES, Session, lock};
use crate::auth::{AuthMethod, Principal};
use crate::config::Limits;
use crate::metrics::Metrics;

pub struct Sessions {
    map: RwLock<HashMap<Arc<str>, Arc<Session>>>,
    /// Each tenant's use; its session count changes under `map`'s write lock.
    per_tenant: Mutex<HashMap<TenantId, Arc<Usage>>>,
    limits: SessionLimits,
    /// `initialize` per tenant.
    opened: Local,
    epoch: Instant,
    metrics: Arc<Metrics>,
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
        }
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
        let cost = SESSION_BYTES + client_capabilities.get().len();
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let usage = lock(&self.per_tenant)
            .entry(principal.tenant.clone())
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
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let id: Arc<str> = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(bytes)
            .into();
        let session = Arc::new(Session {
            id: id.clone(),
            tenant: principal.tenant.clone(),
            subject: principal.subject.clone(),
            key: match principal.method {
                AuthMethod::ApiKey => principal.credential.clone(),
                AuthMethod::Jwt => None,
            },
            opened_at: crate::auth::now_ms(),
            expires_at_secs: principal.expires_at_secs,
            protocol_version: protocol_version.to_owned(),
            client_capabilities,
            last_seen: AtomicU64::new(self.now()),
            log_level: AtomicU64::new(0),
            subscriptions: Mutex::new(HashMap::new()),
            server_requests: Mutex::new(HashMap::new()),
            next_server_request: AtomicU64::new(1),
            inflight: Mutex::new(HashMap::new()),
            stream: Mutex::new(None),
            streams: crate::resume::Logs::default(),
            watches: Mutex::new(HashMap::new()),
            closed: CancellationToken::new(),
            usage,
            charged: AtomicUsize::new(cost),
        });
        map.insert(id, session.clone());
        self.metrics.session_opened();
        Ok(session)
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

    /// Closes sessions idle for longer than the limit, or whose credential has expired;
    /// returns how many.
    /// Open sessions on this gateway.
    pub(crate) fn count(&self) -> usize {
        self.map.read().map_or(0, |m| m.len())
    }

    pub(crate) fn reap_idle(&self) -> usize {
        let now = self.now();
        let idle = self.limits.idle.as_secs();
        let wall = crate::auth::now_ms() / 1000;
        self.close_where(|s| {
            now.saturating_sub(s.last_seen.load(Ordering::Relaxed)) > idle
                || s.expires_at_secs.is_some_and(|at| at <= wall)
        })
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

    /// A tenant's open sessions.
    pub(crate) fn of_tenant(&self, tenant: &str) -> Vec<Arc<Session>> {
        let mut list: Vec<Arc<Session>> = self
            .map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|s| &*s.tenant == tenant)
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
    use crate::auth::{AuthMethod, Principal};
    use crate::metrics::Metrics;
    use crate::session::*;

    fn principal(tenant: &str, subject: &str) -> Principal {
        Principal {
            tenant: TenantId::parse(tenant).unwrap(),
            subject: subject.into(),
            method: AuthMethod::ApiKey,
            scopes: Arc::from(Vec::new()),
            credential: Some("pal_test".into()),
            expires_at_secs: None,
        }
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

    #[test]
    fn idle_sessions_are_reaped() {
        let sessions = sessions(limits(0, 10));
        let s = sessions
            .create(&principal("acme", "k"), "2025-11-25", caps())
            .unwrap();
        s.last_seen.store(0, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(sessions.reap_idle(), 1);
        assert!(s.closed.is_cancelled());
    }

    #[test]
    fn sessions_end_when_their_credential_expires() {
        let sessions = sessions(limits(3600, 10));
        let now = crate::auth::now_ms() / 1000;
        let mut expired = principal("acme", "a");
        expired.expires_at_secs = Some(now - 1);
        let mut valid = principal("acme", "b");
        valid.expires_at_secs = Some(now + 3600);
        let e = sessions.create(&expired, "2025-11-25", caps()).unwrap();
        let v = sessions.create(&valid, "2025-11-25", caps()).unwrap();
        assert_eq!(sessions.reap_idle(), 1);
        assert!(e.closed.is_cancelled() && !v.closed.is_cancelled());
    }
}
