//! The registry: the in-memory snapshot of tenants, API keys and policies that every request
//! reads, so the hot path never waits on the database.
//!
//! It is rebuilt whole from a store [`Snapshot`] whenever the store's revision moves (every
//! write bumps it; the gateway polls it) or the set of upstreams changes, and swapped in
//! atomically. A tenant's view resolves its server names to running upstreams and compiles its
//! policy once per rebuild.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use palisade_ids::{KEY_PREFIX, TenantId};
use palisade_store::{KeyHash, Snapshot, Status, TenantRecord};
use tokio_util::sync::CancellationToken;

use crate::policy::Policy;
use crate::upstream::Upstream;

/// What one tenant may reach.
pub struct Tenant {
    pub id: TenantId,
    pub status: Status,
    pub(crate) status_reason: Option<String>,
    /// The tenant's servers that its policy allows and that are running on this gateway.
    pub upstreams: Vec<Arc<Upstream>>,
    /// Whether names are prefixed with their server (see [`crate::catalog`]).
    pub namespacing: bool,
    pub policy: Policy,
    /// Cancelled when a rebuild finds the tenant suspended or deleted: its streams end.
    pub closed: CancellationToken,
}

impl Tenant {
    pub fn upstream(&self, server: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.iter().find(|u| &*u.name == server)
    }

    /// The reason the tenant is refused, if it is suspended.
    pub fn suspension(&self) -> Option<&str> {
        match self.status {
            Status::Active => None,
            Status::Suspended => Some(
                self.status_reason
                    .as_deref()
                    .unwrap_or("suspended by an operator"),
            ),
        }
    }
}

/// An API key that may authenticate (not revoked; expiry is checked per request).
pub struct KeyEntry {
    pub id: Arc<str>,
    pub tenant: TenantId,
    /// `key:<id>`, the principal's subject.
    pub subject: Arc<str>,
    pub scopes: Arc<[String]>,
    /// Unix milliseconds.
    pub expires_at_ms: Option<i64>,
}

#[derive(Default)]
pub struct Registry {
    pub revision: i64,
    tenants: HashMap<TenantId, Arc<Tenant>>,
    keys: HashMap<KeyHash, Arc<KeyEntry>>,
    key_ids: HashSet<Arc<str>>,
}

impl Registry {
    /// Builds the registry from a snapshot; `resolve` names the upstream instance that serves
    /// a tenant's server (shared, or the tenant's own), if it runs. `previous` hands over the
    /// close tokens of tenants that stay active.
    pub fn build(
        snapshot: Snapshot,
        resolve: &mut dyn FnMut(&TenantRecord, &str) -> Option<Arc<Upstream>>,
        previous: &Registry,
    ) -> Registry {
        let mut policies: HashMap<TenantId, serde_json::Value> =
            snapshot.policies.into_iter().collect();
        let mut tenants = HashMap::new();
        for t in snapshot.tenants {
            let policy = match policies.remove(&t.id).map(serde_json::from_value::<Policy>) {
                None => Policy::default(),
                Some(Ok(p)) => p,
                Some(Err(e)) => {
                    // Fail closed: a policy that cannot be read allows nothing.
                    tracing::error!(tenant = %t.id, error = %e, "stored policy is unreadable; the tenant may use no tools until it is replaced");
                    Policy {
                        deny_tools: vec!["*".into()],
                        ..Policy::default()
                    }
                }
            };
            let ups: Vec<Arc<Upstream>> = t
                .servers
                .iter()
                .filter(|s| policy.allows_server(s))
                .filter_map(|s| resolve(&t, s))
                .collect();
            let id = t.id.clone();
            let closed = match previous.tenants.get(&id) {
                Some(old) if t.status == Status::Active && old.status == Status::Active => {
                    old.closed.clone()
                }
                _ => CancellationToken::new(),
            };
            tenants.insert(
                id.clone(),
                Arc::new(Tenant {
                    id,
                    status: t.status,
                    status_reason: t.status_reason,
                    upstreams: ups,
                    namespacing: t.namespacing,
                    policy,
                    closed,
                }),
            );
        }
        let mut keys = HashMap::new();
        let mut key_ids = HashSet::new();
        for k in snapshot.keys {
            if k.revoked_at.is_some() {
                continue;
            }
            let Some(tenant) = tenants.get(k.tenant_id.as_str()) else {
                continue;
            };
            let id: Arc<str> = k.id.as_str().into();
            key_ids.insert(id.clone());
            keys.insert(
                k.hash,
                Arc::new(KeyEntry {
                    subject: format!("key:{}", k.id.trim_start_matches(KEY_PREFIX)).into(),
                    id,
                    tenant: tenant.id.clone(),
                    scopes: k.scopes.into(),
                    expires_at_ms: k.expires_at_ms,
                }),
            );
        }
        // Streams of tenants that are gone or no longer active end now.
        for (id, old) in &previous.tenants {
            let still_active = tenants.get(id).is_some_and(|t| t.status == Status::Active);
            if !still_active {
                old.closed.cancel();
            }
        }
        Registry {
            revision: snapshot.revision,
            tenants,
            keys,
            key_ids,
        }
    }

    pub fn tenant(&self, id: &str) -> Option<&Arc<Tenant>> {
        self.tenants.get(id)
    }

    pub fn tenants(&self) -> impl Iterator<Item = &Arc<Tenant>> {
        self.tenants.values()
    }

    /// The stored hash and entry of a key, by its HMAC.
    pub fn key(&self, hash: &KeyHash) -> Option<(&KeyHash, &Arc<KeyEntry>)> {
        self.keys.get_key_value(hash)
    }

    /// Whether a key id may still authenticate.
    pub(crate) fn key_is_live(&self, id: &str) -> bool {
        self.key_ids.contains(id)
    }
}
