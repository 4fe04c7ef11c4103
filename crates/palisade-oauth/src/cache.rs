//! Verified-token cache: SHA-256 of the token bytes → its claims, so that the same token presented
//! again costs a hash and a map lookup instead of a signature check. An entry lives until
//! `min(exp, verified_at + 300 s)`; the map is bounded.

use std::collections::HashMap;
use std::sync::RwLock;

use sha2::{Digest, Sha256};

use crate::Claims;

/// Longest time a verification result is reused.
const MAX_TTL_SECS: i64 = 300;
/// Most entries kept; when full, expired entries are dropped, and if that frees nothing the map is
/// cleared.
const MAX_ENTRIES: usize = 10_000;

pub(crate) type TokenHash = [u8; 32];

pub(crate) fn hash(token: &[u8]) -> TokenHash {
    Sha256::digest(token).into()
}

struct Entry {
    claims: Claims,
    until: i64,
}

#[derive(Default)]
pub(crate) struct VerifiedCache {
    map: RwLock<HashMap<TokenHash, Entry>>,
}

impl VerifiedCache {
    pub(crate) fn get(&self, key: &TokenHash, now: i64) -> Option<Claims> {
        {
            let map = self.map.read().unwrap_or_else(|e| e.into_inner());
            match map.get(key) {
                None => return None,
                Some(e) if now < e.until => return Some(e.claims.clone()),
                Some(_) => {}
            }
        }
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if map.get(key).is_some_and(|e| now >= e.until) {
            map.remove(key);
        }
        None
    }

    pub(crate) fn insert(&self, key: TokenHash, claims: &Claims, now: i64) {
        let until = claims.expires_at_secs.min(now.saturating_add(MAX_TTL_SECS));
        if until <= now {
            return;
        }
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_ENTRIES && !map.contains_key(&key) {
            map.retain(|_, e| now < e.until);
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
        }
        map.insert(
            key,
            Entry {
                claims: claims.clone(),
                until,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn claims(exp: i64) -> Claims {
        Claims {
            issuer: Arc::from("i"),
            admin_issuer: false,
            subject: "s".into(),
            tenant: None,
            scopes: vec![],
            roles: vec![],
            token_id: None,
            expires_at_secs: exp,
        }
    }

    #[test]
    fn entries_expire_and_stay_bounded() {
        let c = VerifiedCache::default();
        c.insert(hash(b"a"), &claims(1_000), 900);
        assert!(c.get(&hash(b"a"), 999).is_some());
        assert!(c.get(&hash(b"a"), 1_000).is_none());
        // capped at 300 s after verification
        c.insert(hash(b"b"), &claims(10_000), 1_000);
        assert!(c.get(&hash(b"b"), 1_299).is_some());
        assert!(c.get(&hash(b"b"), 1_300).is_none());
        // already expired: not stored
        c.insert(hash(b"c"), &claims(5), 10);
        assert!(c.get(&hash(b"c"), 4).is_none());
        for i in 0..(MAX_ENTRIES as u32 + 10) {
            c.insert(hash(&i.to_le_bytes()), &claims(10_000), 2_000);
        }
        assert!(c.map.read().unwrap().len() <= MAX_ENTRIES);
    }
}
