//! Legacy-era client sessions: what `initialize` negotiated, and the per-session state the
//! relay needs (server→client requests awaiting an answer, calls in flight for cancellation,
//! resource subscriptions, the GET stream).
//!
//! A session id is 256 random bits, or with a fleet key a sealed id (`seal`) that any replica
//! opens, and is bound to the principal that opened it: presented with any other principal's
//! credentials it is unknown (404), exactly like an id that never existed. Sessions cost O(1)
//! memory while idle and are closed after the configured idle time. With a fleet key, a
//! replica's `Session` is its copy of a session the fleet shares (`shared`, in Redis): the first
//! request a replica sees of a session loads it, and what changes is told to the other copies.
//!
//! Everything a client can make a session store is bounded: the capabilities it declares
//! ([`MAX_CAPABILITIES_BYTES`]), its resource subscriptions (count and URI length), its pending
//! server→client requests (count, and they expire). Per tenant, `initialize` is rate-limited and
//! what its sessions store is counted against `limits.session_memory_per_tenant`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mcp_wire::Id;
use palisade_ids::TenantId;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::upstream::{Subscriber, Upstream};
pub mod seal;
pub(crate) mod shared;
mod table;

pub use table::Lookup;
use table::Usage;
pub use table::{Refused, SessionLimits, Sessions, Sharing};

/// Largest `capabilities` object a client may declare at `initialize`.
pub(crate) const MAX_CAPABILITIES_BYTES: usize = 16 * 1024;
/// Resource subscriptions one session may hold, and the longest URI one may name.
pub(crate) const MAX_SUBSCRIPTIONS: usize = 1024;
pub(crate) const MAX_URI_BYTES: usize = 4096;
/// Server→client requests awaiting a session's answer, at most; each expires after
/// [`PENDING_TTL`] (the call that asked has ended by then).
pub(crate) const MAX_PENDING_REQUESTS: usize = 64;
const PENDING_TTL: Duration = Duration::from_secs(600);
/// What one session costs besides what its client declared (its maps, channels, resume log
/// index): the unit the per-tenant memory budget counts in, with the bytes of what it stores.
const SESSION_BYTES: usize = 2048;
const SUBSCRIPTION_BYTES: usize = 64;

/// Who waits for the client's answer to a server→client request.
pub(crate) enum Awaiting {
    /// An upstream asked; the answer goes back to it under its own id.
    Upstream(Arc<Upstream>, Id),
    /// The gateway asked on behalf of a modern upstream's `InputRequiredResult`.
    Gateway(oneshot::Sender<ClientAnswer>),
}

impl Awaiting {
    /// Gives the client's answer to whoever asked.
    pub(crate) async fn deliver(self, outcome: ClientAnswer) {
        match self {
            Awaiting::Upstream(upstream, upstream_id) => match &outcome {
                Ok(result) => upstream.respond(&upstream_id, Ok(result)).await,
                Err(error) => upstream.respond(&upstream_id, Err(error)).await,
            },
            Awaiting::Gateway(tx) => {
                let _ = tx.send(outcome);
            }
        }
    }
}

/// A client's result or error object.
pub(crate) type ClientAnswer =
    Result<Box<serde_json::value::RawValue>, Box<serde_json::value::RawValue>>;

/// Both ends of a session's GET stream: the sender feeds it, the receiver is served.
pub(crate) type StreamEnds = (mpsc::Sender<Vec<u8>>, mpsc::Receiver<Vec<u8>>);

pub struct Session {
    pub id: Arc<str>,
    /// A digest of the id, which admins and the fleet's store name it by (the id itself is a
    /// bearer capability, with the principal's credentials, and is never shown).
    handle: String,
    pub tenant: TenantId,
    pub subject: Arc<str>,
    /// The API key that opened it, so revoking the key ends the session.
    pub key: Option<Arc<str>>,
    /// Unix milliseconds.
    pub(crate) opened_at: i64,
    /// When the credential that opened it expires (unix seconds): the session ends then.
    expires_at_secs: Option<i64>,
    pub protocol_version: String,
    /// What the client declared at `initialize`, passed on to modern upstreams.
    pub(crate) client_capabilities: Box<serde_json::value::RawValue>,
    last_seen: AtomicU64,
    /// `last_seen` when the fleet's store was last told (shared sessions).
    flushed: AtomicU64,
    /// The fleet's store could not record it when it opened: it lives on this replica alone,
    /// and its absence from the store does not mean it ended.
    local_only: std::sync::atomic::AtomicBool,
    /// The minimum log level the client asked for (`logging/setLevel`), as a severity rank.
    pub(crate) log_level: AtomicU64,
    /// The resources it subscribed to (as the client names them), each with its count among
    /// the upstream's subscribers.
    subscriptions: Mutex<HashMap<String, Option<Subscriber>>>,
    server_requests: Mutex<HashMap<String, (Instant, Awaiting)>>,
    next_server_request: AtomicU64,
    inflight: Mutex<HashMap<String, CancellationToken>>,
    stream: Mutex<Option<mpsc::Sender<Vec<u8>>>>,
    /// Its resumable SSE streams (event ids, replay after `Last-Event-ID`).
    pub streams: crate::resume::Logs,
    /// Resource subscriptions the gateway keeps for it on a 2026-07-28 upstream, by URI.
    watches: Mutex<HashMap<String, CancellationToken>>,
    pub closed: CancellationToken,
    /// Its tenant's use, and the bytes this session is charged there.
    usage: Arc<Usage>,
    charged: AtomicUsize,
}

/// Why a subscription was not taken.
#[derive(Debug, PartialEq, Eq)]
pub enum SubscribeRefused {
    UriTooLong,
    TooMany,
    /// The tenant's sessions hold their whole memory budget.
    Memory(usize),
}

impl Session {
    fn touch(&self, now: u64) {
        self.last_seen.store(now, Ordering::Relaxed);
    }

    /// Registers a server→client request and returns the id the client sees; `None` when the
    /// session already awaits [`MAX_PENDING_REQUESTS`] answers (after forgetting expired ones
    /// and those nobody waits for any more).
    pub(crate) fn register_server_request(&self, awaiting: Awaiting) -> Option<Id> {
        let mut map = lock(&self.server_requests);
        if map.len() >= MAX_PENDING_REQUESTS {
            map.retain(|_, (at, a)| {
                at.elapsed() < PENDING_TTL && !matches!(a, Awaiting::Gateway(tx) if tx.is_closed())
            });
            if map.len() >= MAX_PENDING_REQUESTS {
                return None;
            }
        }
        let n = self.next_server_request.fetch_add(1, Ordering::Relaxed);
        let id = Id::number(n);
        map.insert(id.as_json().to_owned(), (Instant::now(), awaiting));
        Some(id)
    }

    /// Takes the server request a client response answers.
    pub(crate) fn take_server_request(&self, client_id: &Id) -> Option<Awaiting> {
        lock(&self.server_requests)
            .remove(client_id.as_json())
            .map(|(_, a)| a)
    }

    /// Subscribes the session to a resource (as the client names it), holding `subscriber`
    /// until it unsubscribes or ends; `Ok(false)` when it was subscribed already.
    pub fn subscribe(
        &self,
        uri: &str,
        subscriber: Option<Subscriber>,
    ) -> Result<bool, SubscribeRefused> {
        if uri.len() > MAX_URI_BYTES {
            return Err(SubscribeRefused::UriTooLong);
        }
        let mut subs = lock(&self.subscriptions);
        if subs.contains_key(uri) {
            return Ok(false);
        }
        if subs.len() >= MAX_SUBSCRIPTIONS {
            return Err(SubscribeRefused::TooMany);
        }
        self.charge(uri.len() + SUBSCRIPTION_BYTES)
            .map_err(SubscribeRefused::Memory)?;
        subs.insert(uri.to_owned(), subscriber);
        Ok(true)
    }

    pub fn unsubscribe(&self, uri: &str) {
        if lock(&self.subscriptions).remove(uri).is_some() {
            self.release(uri.len() + SUBSCRIPTION_BYTES);
        }
    }

    /// The subscriptions this copy holds without counting them on an upstream here (those it
    /// learned from the fleet).
    pub(crate) fn uncounted(&self) -> Vec<String> {
        let subs = lock(&self.subscriptions);
        subs.iter()
            .filter(|(_, s)| s.is_none())
            .map(|(uri, _)| uri.clone())
            .collect()
    }

    /// Counts a subscription on an upstream here, if the session still holds it.
    pub(crate) fn count(&self, uri: &str, subscriber: Subscriber) {
        if let Some(slot) = lock(&self.subscriptions).get_mut(uri) {
            *slot = Some(subscriber);
        }
    }

    pub(crate) fn is_subscribed(&self, uri: &str) -> bool {
        lock(&self.subscriptions).contains_key(uri)
    }

    /// Counts `bytes` more against the tenant's budget; `Err(budget)` when they do not fit.
    fn charge(&self, bytes: usize) -> Result<(), usize> {
        self.usage.charge(bytes)?;
        self.charged.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    fn release(&self, bytes: usize) {
        // Saturating: a session closed meanwhile has released everything already.
        let less = |held: usize| Some(held.saturating_sub(bytes));
        if self
            .charged
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, less)
            != Ok(0)
        {
            let _ = self
                .usage
                .bytes
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, less);
        }
    }

    /// The client-facing id of a pending request an upstream sent, forgetting it (the upstream
    /// cancelled it).
    pub(crate) fn forget_server_request(
        &self,
        upstream: &Arc<Upstream>,
        upstream_id: &Id,
    ) -> Option<Id> {
        let mut map = lock(&self.server_requests);
        let key = map.iter().find_map(|(k, (_, a))| match a {
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
    pub(crate) fn track_call(&self, client_id: &Id) -> CancellationToken {
        let token = CancellationToken::new();
        lock(&self.inflight).insert(client_id.as_json().to_owned(), token.clone());
        token
    }

    pub(crate) fn untrack_call(&self, client_id: &Id) {
        lock(&self.inflight).remove(client_id.as_json());
    }

    /// Cancels a call in flight here; `false` when this copy of the session has none by
    /// that id.
    pub(crate) fn cancel_call(&self, client_id: &str) -> bool {
        let token = lock(&self.inflight).remove(client_id);
        token.map(|t| t.cancel()).is_some()
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
    pub(crate) fn unwatch(&self, uri: &str) {
        if let Some(token) = lock(&self.watches).remove(uri) {
            token.cancel();
        }
    }

    /// Whether the client holds its GET stream.
    pub(crate) fn has_stream(&self) -> bool {
        lock(&self.stream)
            .as_ref()
            .is_some_and(|tx| !tx.is_closed())
    }

    /// Opens the GET stream; `None` if one is already open (a message must never be sent on
    /// two streams).
    pub(crate) fn open_stream(&self) -> Option<StreamEnds> {
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

impl Session {
    /// The session's public handle (see the field).
    pub fn handle(&self) -> &str {
        &self.handle
    }

    /// Whether this copy holds something that must outlive its idleness here: the GET stream,
    /// resource subscriptions, calls in flight.
    fn holds_more_than_state(&self) -> bool {
        self.has_stream()
            || !lock(&self.subscriptions).is_empty()
            || !lock(&self.inflight).is_empty()
    }
}

/// The public handle of a session id: 64 bits of its SHA-256, in hex.
pub(crate) fn handle_of(id: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(id.as_bytes())[..8])
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
pub(crate) fn log_name(rank: u64) -> &'static str {
    LOG_LEVELS.get(rank as usize).copied().unwrap_or("debug")
}

/// The rank of a severity name (unknown names rank as `info`).
pub(crate) fn log_rank(level: &str) -> u64 {
    LOG_LEVELS.iter().position(|l| *l == level).unwrap_or(1) as u64
}
