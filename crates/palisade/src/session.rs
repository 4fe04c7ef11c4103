//! Legacy-era client sessions: what `initialize` negotiated, and the per-session state the
//! relay needs (server→client requests awaiting an answer, calls in flight for cancellation,
//! resource subscriptions, the GET stream).
//!
//! A session id is 256 random bits and is bound to the principal that opened it: presented with
//! any other principal's credentials it is unknown (404), exactly like an id that never existed.
//! Sessions cost O(1) memory while idle and are closed after the configured idle time.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use mcp_wire::Id;
use rand::RngCore;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::auth::{AuthMethod, Principal};
use crate::metrics::Metrics;
use crate::upstream::Upstream;

/// Who waits for the client's answer to a server→client request.
pub enum Awaiting {
    /// An upstream asked; the answer goes back to it under its own id.
    Upstream(Arc<Upstream>, Id),
    /// The gateway asked on behalf of a modern upstream's `InputRequiredResult`.
    Gateway(oneshot::Sender<ClientAnswer>),
}

/// A client's result or error object.
pub type ClientAnswer = Result<Box<serde_json::value::RawValue>, Box<serde_json::value::RawValue>>;

/// Both ends of a session's GET stream: the sender feeds it, the receiver is served.
pub type StreamEnds = (mpsc::Sender<Vec<u8>>, mpsc::Receiver<Vec<u8>>);

pub struct Session {
    pub id: Arc<str>,
    pub tenant: Arc<str>,
    pub subject: Arc<str>,
    /// The API key that opened it, so revoking the key ends the session.
    pub key: Option<Arc<str>>,
    /// Unix milliseconds.
    pub opened_at: i64,
    /// When the credential that opened it expires (unix seconds): the session ends then.
    expires_at: Option<i64>,
    pub protocol_version: String,
    /// What the client declared at `initialize`, passed on to modern upstreams.
    pub client_capabilities: Box<serde_json::value::RawValue>,
    last_seen: AtomicU64,
    /// The minimum log level the client asked for (`logging/setLevel`), as a severity rank.
    pub log_level: AtomicU64,
    pub subscriptions: Mutex<HashSet<String>>,
    server_requests: Mutex<HashMap<String, Awaiting>>,
    next_server_request: AtomicU64,
    inflight: Mutex<HashMap<String, CancellationToken>>,
    stream: Mutex<Option<mpsc::Sender<Vec<u8>>>>,
    /// Its resumable SSE streams (event ids, replay after `Last-Event-ID`).
    pub streams: crate::resume::Logs,
    /// Resource subscriptions the gateway keeps for it on a 2026-07-28 upstream, by URI.
    watches: Mutex<HashMap<String, CancellationToken>>,
    pub closed: CancellationToken,
}

impl Session {
    fn touch(&self, now: u64) {
        self.last_seen.store(now, Ordering::Relaxed);
    }

    /// Registers a server→client request and returns the id the client sees.
    pub fn register_server_request(&self, awaiting: Awaiting) -> Id {
        let n = self.next_server_request.fetch_add(1, Ordering::Relaxed);
        let id = Id::number(n);
        lock(&self.server_requests).insert(id.as_json().to_owned(), awaiting);
        id
    }

    /// Takes the server request a client response answers.
    pub fn take_server_request(&self, client_id: &Id) -> Option<Awaiting> {
        lock(&self.server_requests).remove(client_id.as_json())
    }

    /// The client-facing id of a pending request an upstream sent, forgetting it (the upstream
    /// cancelled it).
    pub fn forget_server_request(&self, upstream: &Arc<Upstream>, upstream_id: &Id) -> Option<Id> {
        let mut map = lock(&self.server_requests);
        let key = map.iter().find_map(|(k, a)| match a {
            Awaiting::Upstream(u, uid) if Arc::ptr_eq(u, upstream) && uid == upstream_id => {
                Some(k.clone())
            }
            _ => None,
        })?;
        map.remove(&key);
        serde_json::value::RawValue::from_string(key)
            .ok()
            .and_then(|raw| Id::from_raw(&raw))
    }

    /// Tracks a call in flight so `notifications/cancelled` can end it.
    pub fn track_call(&self, client_id: &Id) -> CancellationToken {
        let token = CancellationToken::new();
        lock(&self.inflight).insert(client_id.as_json().to_owned(), token.clone());
        token
    }

    pub fn untrack_call(&self, client_id: &Id) {
        lock(&self.inflight).remove(client_id.as_json());
    }

    pub fn cancel_call(&self, client_id: &str) {
        if let Some(token) = lock(&self.inflight).remove(client_id) {
            token.cancel();
        }
    }

    /// Starts watching a resource for the session: the token that ends the watch, or `None`
    /// when it is watched already. Bounded by the session's subscriptions.
    pub fn watch(&self, uri: &str) -> Option<CancellationToken> {
        let mut watches = lock(&self.watches);
        if watches.contains_key(uri) {
            return None;
        }
        let token = self.closed.child_token();
        watches.insert(uri.to_owned(), token.clone());
        Some(token)
    }

    /// Ends the watch of a resource.
    pub fn unwatch(&self, uri: &str) {
        if let Some(token) = lock(&self.watches).remove(uri) {
            token.cancel();
        }
    }

    /// Whether the client holds its GET stream.
    pub fn has_stream(&self) -> bool {
        lock(&self.stream)
            .as_ref()
            .is_some_and(|tx| !tx.is_closed())
    }

    /// Opens the GET stream; `None` if one is already open (a message must never be sent on
    /// two streams).
    pub fn open_stream(&self) -> Option<StreamEnds> {
        let mut slot = lock(&self.stream);
        if slot.as_ref().is_some_and(|tx| !tx.is_closed()) {
            return None;
        }
        let (tx, rx) = mpsc::channel(256);
        *slot = Some(tx.clone());
        Some((tx, rx))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct Sessions {
    map: RwLock<HashMap<Arc<str>, Arc<Session>>>,
    /// Open sessions per tenant, kept under `map`'s write lock.
    per_tenant: Mutex<HashMap<Arc<str>, usize>>,
    max_per_tenant: usize,
    idle: Duration,
    epoch: Instant,
    metrics: Arc<Metrics>,
}

/// A tenant already has the most sessions it may open.
#[derive(Debug, PartialEq, Eq)]
pub struct Full(pub usize);

/// Why a session id was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Unknown, expired, ended, or bound to another principal: all look the same (404).
    NotFound,
}

impl Sessions {
    pub fn new(idle: Duration, max_per_tenant: usize, metrics: Arc<Metrics>) -> Sessions {
        Sessions {
            map: RwLock::new(HashMap::new()),
            per_tenant: Mutex::new(HashMap::new()),
            max_per_tenant,
            idle,
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
    ) -> Result<Arc<Session>, Full> {
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
            expires_at: principal.expires_at,
            protocol_version: protocol_version.to_owned(),
            client_capabilities,
            last_seen: AtomicU64::new(self.now()),
            log_level: AtomicU64::new(0),
            subscriptions: Mutex::new(HashSet::new()),
            server_requests: Mutex::new(HashMap::new()),
            next_server_request: AtomicU64::new(1),
            inflight: Mutex::new(HashMap::new()),
            stream: Mutex::new(None),
            streams: crate::resume::Logs::default(),
            watches: Mutex::new(HashMap::new()),
            closed: CancellationToken::new(),
        });
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let mut counts = lock(&self.per_tenant);
        let count = counts.entry(principal.tenant.clone()).or_insert(0);
        if *count >= self.max_per_tenant {
            return Err(Full(self.max_per_tenant));
        }
        *count += 1;
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
            let mut counts = lock(&self.per_tenant);
            if let Some(n) = counts.get_mut(&session.tenant) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.remove(&session.tenant);
                }
            }
            session
        };
        session.closed.cancel();
        self.metrics.session_closed();
        Some(session)
    }

    /// Closes sessions idle for longer than the limit, or whose credential has expired;
    /// returns how many.
    pub fn reap_idle(&self) -> usize {
        let now = self.now();
        let idle = self.idle.as_secs();
        let wall = crate::auth::now_ms() / 1000;
        self.close_where(|s| {
            now.saturating_sub(s.last_seen.load(Ordering::Relaxed)) > idle
                || s.expires_at.is_some_and(|at| at <= wall)
        })
    }

    /// Ends every session (shutdown).
    pub fn close_all(&self) {
        self.close_where(|_| true);
    }

    /// Ends the sessions `doomed` picks; returns how many.
    pub fn close_where(&self, doomed: impl Fn(&Session) -> bool) -> usize {
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
    pub fn of_tenant(&self, tenant: &str) -> Vec<Arc<Session>> {
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

impl Session {
    /// A public handle for the session: the id itself is a bearer capability (with the
    /// principal's credentials) and is never shown, so admins see a digest of it.
    pub fn handle(&self) -> String {
        use sha2::Digest;
        hex::encode(&sha2::Sha256::digest(self.id.as_bytes())[..8])
    }
}

/// RFC 5424 severities as MCP names them, lowest first.
const LOG_LEVELS: [&str; 8] = [
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
];

/// The name of a severity rank.
pub fn log_name(rank: u64) -> &'static str {
    LOG_LEVELS.get(rank as usize).copied().unwrap_or("debug")
}

/// The rank of a severity name (unknown names rank as `info`).
pub fn log_rank(level: &str) -> u64 {
    LOG_LEVELS.iter().position(|l| *l == level).unwrap_or(1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(tenant: &str, subject: &str) -> Principal {
        Principal {
            tenant: tenant.into(),
            subject: subject.into(),
            method: AuthMethod::ApiKey,
            scopes: Arc::from(Vec::new()),
            credential: Some("pal_test".into()),
            expires_at: None,
        }
    }

    fn caps() -> Box<serde_json::value::RawValue> {
        serde_json::value::RawValue::from_string("{}".into()).unwrap()
    }

    #[test]
    fn sessions_are_bound_to_their_principal() {
        let sessions = Sessions::new(Duration::from_secs(60), 10, Arc::new(Metrics::new()));
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
        let sessions = Sessions::new(Duration::from_secs(60), 2, Arc::new(Metrics::new()));
        let a = principal("acme", "k");
        let first = sessions.create(&a, "2025-11-25", caps()).unwrap();
        sessions.create(&a, "2025-11-25", caps()).unwrap();
        assert_eq!(
            sessions.create(&a, "2025-11-25", caps()).err(),
            Some(Full(2))
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
        let sessions = Sessions::new(Duration::from_secs(0), 10, Arc::new(Metrics::new()));
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
        let sessions = Sessions::new(Duration::from_secs(3600), 10, Arc::new(Metrics::new()));
        let now = crate::auth::now_ms() / 1000;
        let mut expired = principal("acme", "a");
        expired.expires_at = Some(now - 1);
        let mut valid = principal("acme", "b");
        valid.expires_at = Some(now + 3600);
        let e = sessions.create(&expired, "2025-11-25", caps()).unwrap();
        let v = sessions.create(&valid, "2025-11-25", caps()).unwrap();
        assert_eq!(sessions.reap_idle(), 1);
        assert!(e.closed.is_cancelled() && !v.closed.is_cancelled());
    }
}
