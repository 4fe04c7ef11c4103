//! Open `subscriptions/listen` streams (2026-07-28): the one thing a modern client holds open.
//!
//! Each is counted against its tenant (`limits.max_listens_per_tenant`) and carries what ends
//! it besides the client: its credential's expiry, and an end the registry refresh fires when
//! the tenant is suspended or deleted or the API key revoked, as it ends legacy sessions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use palisade_ids::TenantId;
use tokio_util::sync::CancellationToken;

use crate::auth::{AuthMethod, Principal};

#[derive(Default)]
pub struct Listens {
    open: Mutex<HashMap<u64, Entry>>,
    next: AtomicU64,
}

struct Entry {
    tenant: TenantId,
    /// The API key that opened it, if one did.
    key: Option<Arc<str>>,
    end: CancellationToken,
}

/// A tenant already holds the most listens it may.
#[derive(Debug, PartialEq, Eq)]
pub struct Full(pub usize);

/// One open listen: counted until dropped (with the stream that holds it).
pub struct Listen {
    listens: Arc<Listens>,
    id: u64,
    /// Fired when its credential stops being valid or its tenant is suspended.
    pub end: CancellationToken,
    /// When the credential that opened it expires (unix seconds).
    pub expires_at_secs: Option<i64>,
}

impl Drop for Listen {
    fn drop(&mut self) {
        lock(&self.listens.open).remove(&self.id);
    }
}

impl Listens {
    /// Opens a listen for `principal`, unless its tenant holds `max_per_tenant` already.
    pub fn open(
        self: &Arc<Self>,
        principal: &Principal,
        max_per_tenant: usize,
    ) -> Result<Listen, Full> {
        let mut open = lock(&self.open);
        let held = open
            .values()
            .filter(|e| e.tenant == principal.tenant)
            .count();
        if held >= max_per_tenant {
            return Err(Full(max_per_tenant));
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let end = CancellationToken::new();
        open.insert(
            id,
            Entry {
                tenant: principal.tenant.clone(),
                key: match principal.method {
                    AuthMethod::ApiKey => principal.credential.clone(),
                    AuthMethod::Jwt => None,
                },
                end: end.clone(),
            },
        );
        Ok(Listen {
            listens: self.clone(),
            id,
            end,
            expires_at_secs: principal.expires_at_secs,
        })
    }

    /// Ends the listens whose tenant and key `doomed` picks; returns how many.
    pub(crate) fn end_where(&self, doomed: impl Fn(&str, Option<&str>) -> bool) -> usize {
        let open = lock(&self.open);
        let mut ended = 0;
        for e in open.values() {
            if doomed(&e.tenant, e.key.as_deref()) {
                e.end.cancel();
                ended += 1;
            }
        }
        ended
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(tenant: &str, key: &str) -> Principal {
        Principal {
            tenant: TenantId::parse(tenant).unwrap(),
            subject: format!("key:{key}").into(),
            method: AuthMethod::ApiKey,
            scopes: Arc::new([]),
            credential: Some(key.into()),
            expires_at_secs: None,
        }
    }

    #[test]
    fn listens_are_capped_per_tenant_and_ended_by_key() {
        let listens = Arc::new(Listens::default());
        let a = listens.open(&principal("acme", "k1"), 2).unwrap();
        let b = listens.open(&principal("acme", "k2"), 2).unwrap();
        assert_eq!(
            listens.open(&principal("acme", "k1"), 2).err(),
            Some(Full(2))
        );
        assert!(
            listens.open(&principal("globex", "k3"), 2).is_ok(),
            "per tenant"
        );
        assert_eq!(listens.end_where(|_, key| key == Some("k1")), 1);
        assert!(a.end.is_cancelled() && !b.end.is_cancelled());
        drop(a);
        assert!(
            listens.open(&principal("acme", "k2"), 2).is_ok(),
            "a closed listen frees its place"
        );
    }
}
