//! Tenants' secrets kept in the registry store, sealed at rest: AES-256-GCM under a key derived
//! from the gateway's master key (`[secrets]`), each value bound to its tenant and name (the
//! AEAD's associated data), so a sealed value copied to another tenant or name does not open.
//!
//! The store holds only ciphertext; plain values exist in the gateway's memory only while a
//! dedicated process starts. They are never logged, returned by the admin API, or put in errors.

use std::sync::Arc;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use palisade_store::Store;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::apikey::{PepperError, key_material};
use crate::config::Config;

/// Format version of a sealed value: `1 ‖ nonce ‖ ciphertext ‖ tag`.
const VERSION: u8 = 1;
const MIN_MASTER_KEY: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("[secrets] master key: {0}")]
    Key(#[from] PepperError),
    #[error(
        "[secrets] master key must be at least {MIN_MASTER_KEY} bytes; generate one with `head -c 48 /dev/urandom | base64 > master.key`"
    )]
    TooShort,
    #[error(
        "no [secrets] master key is configured: set secrets.master_key_file or secrets.master_key_env to keep secrets in the store"
    )]
    NoMasterKey,
    #[error(
        "secret `{name}` of tenant `{tenant}` does not open with this master key (it was sealed under another, or altered)"
    )]
    Unseal { tenant: String, name: String },
    #[error("registry store: {0}")]
    Store(#[from] palisade_store::StoreError),
}

/// The key secrets are sealed under. `Debug` shows nothing of it.
pub struct MasterKey(LessSafeKey);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    /// The key the config names, if any.
    pub(crate) fn from_config(config: &Config) -> Result<Option<MasterKey>, SecretError> {
        let material = key_material(
            config.secrets.master_key_file.as_deref(),
            config.secrets.master_key_env.as_deref(),
        )?;
        material.map(|m| MasterKey::new(&m)).transpose()
    }

    pub fn new(material: &[u8]) -> Result<MasterKey, SecretError> {
        if material.len() < MIN_MASTER_KEY {
            return Err(SecretError::TooShort);
        }
        let mut hash = Sha256::new();
        hash.update(b"palisade secrets v1\0");
        hash.update(material);
        let key =
            UnboundKey::new(&AES_256_GCM, &hash.finalize()).map_err(|_| SecretError::TooShort)?;
        Ok(MasterKey(LessSafeKey::new(key)))
    }

    fn aad(tenant: &str, name: &str) -> Vec<u8> {
        [
            b"palisade-secret\0",
            tenant.as_bytes(),
            b"\0",
            name.as_bytes(),
        ]
        .concat()
    }

    pub(crate) fn seal(&self, tenant: &str, name: &str, value: &str) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let mut data = value.as_bytes().to_vec();
        // Sealing in place only fails for inputs beyond AES-GCM's size limit (64 GiB).
        if self
            .0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(Self::aad(tenant, name)),
                &mut data,
            )
            .is_err()
        {
            data.clear();
        }
        [&[VERSION][..], &nonce, &data].concat()
    }

    pub fn open(&self, tenant: &str, name: &str, sealed: &[u8]) -> Result<String, SecretError> {
        let fail = || SecretError::Unseal {
            tenant: tenant.to_owned(),
            name: name.to_owned(),
        };
        let (version, rest) = sealed.split_first().ok_or_else(fail)?;
        if *version != VERSION || rest.len() < NONCE_LEN {
            return Err(fail());
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| fail())?;
        let mut data = ciphertext.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(Self::aad(tenant, name)), &mut data)
            .map_err(|_| fail())?;
        String::from_utf8(plain.to_vec()).map_err(|_| fail())
    }
}

/// Where dedicated processes' `${secret:NAME}` find values the config does not give.
pub struct Vault {
    pub store: Store,
    pub key: Option<Arc<MasterKey>>,
}

impl Vault {
    /// Seals and stores a value.
    pub(crate) async fn put(
        &self,
        tenant: &str,
        name: &str,
        value: &str,
    ) -> Result<(), SecretError> {
        let key = self.key.as_ref().ok_or(SecretError::NoMasterKey)?;
        let sealed = key.seal(tenant, name, value);
        Ok(self.store.put_secret(tenant, name, &sealed).await?)
    }

    /// A tenant's secret from the store, opened; `None` when it has none by that name.
    pub async fn get(&self, tenant: &str, name: &str) -> Result<Option<String>, SecretError> {
        let Some(sealed) = self.store.get_secret(tenant, name).await? else {
            return Ok(None);
        };
        let key = self.key.as_ref().ok_or(SecretError::NoMasterKey)?;
        key.open(tenant, name, &sealed).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_for_their_tenant_and_name() {
        let key = MasterKey::new(&[7u8; 48]).unwrap();
        let sealed = key.seal("acme", "token", "s3cret");
        assert!(!sealed.windows(6).any(|w| w == b"s3cret"));
        assert_eq!(key.open("acme", "token", &sealed).unwrap(), "s3cret");
        assert!(key.open("globex", "token", &sealed).is_err());
        assert!(key.open("acme", "other", &sealed).is_err());
        let other = MasterKey::new(&[8u8; 48]).unwrap();
        let e = other
            .open("acme", "token", &sealed)
            .unwrap_err()
            .to_string();
        assert!(e.contains("token") && !e.contains("s3cret"), "{e}");
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(key.open("acme", "token", &tampered).is_err());
        // A fresh nonce each time.
        assert_ne!(key.seal("acme", "token", "s3cret"), sealed);
        assert!(matches!(
            MasterKey::new(&[1u8; 8]),
            Err(SecretError::TooShort)
        ));
    }
}
