//! Sealed session ids: what a legacy session's id carries so that any replica of the fleet can
//! continue the session without asking anyone who opened it.
//!
//! An id is `base64url(key id ‖ nonce ‖ AES-256-GCM(facts) ‖ tag)`. The key id is one byte of
//! the fleet key's digest, so a replica holding the current and the previous key knows which to
//! try (both, if their bytes collide): a key is rotated by making the current one previous and
//! giving every replica a new current one, and no session drops. The facts are what never
//! changes in a session: its tenant, a keyed hash of the principal's subject (so the id names
//! nobody), the API key's id (revoking it ends the session), the negotiated version, when it
//! was opened and when the credential expires. What changes lives in Redis (`session::shared`).
//!
//! Invariants: an id that does not open under a fleet key, or that another principal presents,
//! is unknown (404) exactly like one that never existed; a sealed id is at most a few hundred
//! bytes (it is a header every request carries, through load balancers that cap headers).

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::auth::Principal;

/// The shortest fleet key accepted.
pub(crate) const MIN_FLEET_KEY: usize = 32;
/// Associated data of every sealed id, so nothing else sealed under a fleet key opens as one.
const AAD: &[u8] = b"palisade session id v1";
/// Bytes of the principal's keyed hash.
const PRINCIPAL_HASH: usize = 16;
/// A longer id is not one of ours (the facts are small).
const MAX_ID_LEN: usize = 1024;

/// One fleet key: the AEAD key sessions are sealed under, and the HMAC key principals are
/// hashed with, both derived from the operator's material.
pub struct FleetKey {
    id: u8,
    aead: LessSafeKey,
    principal: [u8; 32],
}

impl std::fmt::Debug for FleetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FleetKey(id {}, <redacted>)", self.id)
    }
}

impl FleetKey {
    /// The key from at least [`MIN_FLEET_KEY`] bytes of material; `None` when shorter.
    pub fn new(material: &[u8]) -> Option<FleetKey> {
        if material.len() < MIN_FLEET_KEY {
            return None;
        }
        let derive = |label: &[u8]| -> [u8; 32] {
            let mut hash = Sha256::new();
            hash.update(label);
            hash.update(material);
            hash.finalize().into()
        };
        let aead = UnboundKey::new(&AES_256_GCM, &derive(b"palisade fleet sessions v1\0")).ok()?;
        Some(FleetKey {
            id: derive(b"palisade fleet key id\0")[0],
            aead: LessSafeKey::new(aead),
            principal: derive(b"palisade fleet principal v1\0"),
        })
    }

    fn principal_hash(&self, tenant: &str, subject: &str) -> [u8; PRINCIPAL_HASH] {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.principal)
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        mac.update(tenant.as_bytes());
        mac.update(b"\0");
        mac.update(subject.as_bytes());
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; PRINCIPAL_HASH];
        out.copy_from_slice(&full[..PRINCIPAL_HASH]);
        out
    }
}

/// What a sealed id carries.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Facts {
    #[serde(rename = "t")]
    pub tenant: String,
    /// The keyed hash of the principal's subject (base64url).
    #[serde(rename = "p")]
    principal: String,
    /// The API key's id, when a key opened it.
    #[serde(rename = "k", default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(rename = "v")]
    pub protocol_version: String,
    /// Unix milliseconds.
    #[serde(rename = "o")]
    pub opened_at: i64,
    /// When the credential expires (unix seconds).
    #[serde(rename = "x", default, skip_serializing_if = "Option::is_none")]
    pub expires_at_secs: Option<i64>,
}

/// The fleet's keys: the current one seals, both open.
#[derive(Debug)]
pub struct Sealer {
    current: FleetKey,
    previous: Option<FleetKey>,
}

impl Sealer {
    pub fn new(current: FleetKey, previous: Option<FleetKey>) -> Sealer {
        Sealer { current, previous }
    }

    /// A new sealed id for a session `principal` opens now.
    pub fn seal(&self, principal: &Principal, protocol_version: &str, key: Option<&str>) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let facts = Facts {
            tenant: principal.tenant.to_string(),
            principal: b64.encode(
                self.current
                    .principal_hash(&principal.tenant, &principal.subject),
            ),
            key: key.map(str::to_owned),
            protocol_version: protocol_version.to_owned(),
            opened_at: crate::auth::now_ms(),
            expires_at_secs: principal.expires_at_secs,
        };
        let mut data = serde_json::to_vec(&facts).unwrap_or_default();
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        // Sealing only fails beyond AES-GCM's size limit (64 GiB); the facts are tiny.
        let _ = self.current.aead.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(AAD),
            &mut data,
        );
        let raw = [&[self.current.id][..], &nonce, &data].concat();
        b64.encode(raw)
    }

    /// The facts of an id this principal presents; `None` when it does not open under a fleet
    /// key or belongs to another principal.
    pub fn open(&self, id: &str, principal: &Principal) -> Option<Facts> {
        if id.len() > MAX_ID_LEN {
            return None;
        }
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(id)
            .ok()?;
        let (&key_id, rest) = raw.split_first()?;
        if rest.len() < NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let keys = std::iter::once(&self.current).chain(self.previous.as_ref());
        keys.filter(|k| k.id == key_id).find_map(|key| {
            let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
            let mut data = sealed.to_vec();
            let plain = key
                .aead
                .open_in_place(nonce, Aad::from(AAD), &mut data)
                .ok()?;
            let facts: Facts = serde_json::from_slice(plain).ok()?;
            let expected = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(key.principal_hash(&principal.tenant, &principal.subject));
            let same =
                subtle::ConstantTimeEq::ct_eq(facts.principal.as_bytes(), expected.as_bytes());
            (bool::from(same) && facts.tenant == *principal.tenant).then_some(facts)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(tenant: &str, subject: &str) -> Principal {
        Principal {
            expires_at_secs: Some(2_000_000_000),
            ..Principal::of_key(tenant, subject)
        }
    }

    fn key(fill: u8) -> FleetKey {
        FleetKey::new(&[fill; 32]).unwrap()
    }

    #[test]
    fn an_id_opens_for_its_principal_only() {
        let sealer = Sealer::new(key(1), None);
        let acme = principal("acme", "key:pal_abcdefgh");
        let id = sealer.seal(&acme, "2025-11-25", Some("pal_abcdefgh"));
        assert!(id.len() < 300, "{} bytes", id.len());
        assert!(
            id.bytes().all(|b| (0x21..=0x7e).contains(&b)),
            "visible ASCII"
        );
        let facts = sealer.open(&id, &acme).unwrap();
        assert_eq!(facts.tenant, "acme");
        assert_eq!(facts.key.as_deref(), Some("pal_abcdefgh"));
        assert_eq!(facts.protocol_version, "2025-11-25");
        assert_eq!(facts.expires_at_secs, Some(2_000_000_000));
        assert!(sealer.open(&id, &principal("acme", "key:other")).is_none());
        assert!(
            sealer
                .open(&id, &principal("globex", "key:pal_abcdefgh"))
                .is_none()
        );
        // Two sessions of one principal have different ids.
        assert_ne!(id, sealer.seal(&acme, "2025-11-25", Some("pal_abcdefgh")));
    }

    #[test]
    fn altered_or_foreign_ids_do_not_open() {
        let sealer = Sealer::new(key(1), None);
        let acme = principal("acme", "s");
        let id = sealer.seal(&acme, "2025-11-25", None);
        let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&id)
            .unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        let altered = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        assert!(sealer.open(&altered, &acme).is_none());
        assert!(
            Sealer::new(key(2), None).open(&id, &acme).is_none(),
            "another fleet"
        );
        for junk in ["", "x", "!!!!", &"A".repeat(5000)] {
            assert!(sealer.open(junk, &acme).is_none(), "{junk}");
        }
    }

    #[test]
    fn rotation_keeps_sessions_sealed_under_the_previous_key() {
        let acme = principal("acme", "s");
        let old = Sealer::new(key(1), None).seal(&acme, "2025-06-18", None);
        let rotated = Sealer::new(key(2), Some(key(1)));
        assert!(rotated.open(&old, &acme).is_some(), "previous key opens");
        let new = rotated.seal(&acme, "2025-06-18", None);
        assert!(Sealer::new(key(1), None).open(&new, &acme).is_none());
        assert!(
            Sealer::new(key(3), Some(key(2)))
                .open(&new, &acme)
                .is_some()
        );
        assert!(
            Sealer::new(key(3), Some(key(2)))
                .open(&old, &acme)
                .is_none(),
            "two rotations"
        );
        assert!(FleetKey::new(&[0; 31]).is_none(), "too short");
    }
}
