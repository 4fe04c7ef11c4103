//! API keys: `pal_` + 43 base64url characters (256 random bits), stored only as HMAC-SHA256
//! under a server pepper. A presented key is hashed and compared in constant time; the plain key
//! exists only in the response that created it. Its first characters (the key id, e.g.
//! `pal_AbCd1234`) identify it in lists and logs without revealing it.

use std::path::Path;

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
pub use palisade_store::KeyHash;
use rand::RngCore;
use sha2::Sha256;

/// Every API key starts with this; access tokens (JWTs) never do.
pub use palisade_ids::KEY_PREFIX;

const PREFIX: &str = "hmac-sha256:";
const MIN_PEPPER: usize = 32;

/// The server-side secret keys are hashed under. Never logged; `Debug` is redacted.
pub struct Pepper(Vec<u8>);

impl std::fmt::Debug for Pepper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pepper(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PepperError {
    #[error("cannot read the pepper file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
    #[error(
        "the pepper must be at least {MIN_PEPPER} bytes; generate one with `head -c 48 /dev/urandom | base64 > pepper`"
    )]
    TooShort,
    #[error("no pepper configured: set auth.pepper_file or auth.pepper_env")]
    NotConfigured,
}

impl Pepper {
    pub fn new(bytes: Vec<u8>) -> Result<Pepper, PepperError> {
        if bytes.len() < MIN_PEPPER {
            return Err(PepperError::TooShort);
        }
        Ok(Pepper(bytes))
    }

    pub fn random() -> Pepper {
        let mut bytes = vec![0u8; 48];
        rand::rng().fill_bytes(&mut bytes);
        Pepper(bytes)
    }

    /// HMAC-SHA256(pepper, key).
    pub fn hash(&self, key: &[u8]) -> KeyHash {
        // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        mac.update(key);
        KeyHash(mac.finalize().into_bytes().into())
    }

    /// The config form of a key's hash: `hmac-sha256:<hex>`.
    pub fn stored_hash(&self, key: &str) -> String {
        format!("{PREFIX}{}", hex::encode(self.hash(key.as_bytes()).0))
    }
}

/// A server secret (pepper, master key) from a file or an environment variable, `None` when
/// neither is configured; trailing whitespace is dropped.
pub(crate) fn key_material(
    file: Option<&Path>,
    env: Option<&str>,
) -> Result<Option<Vec<u8>>, PepperError> {
    if let Some(path) = file {
        return read_key_file(path).map(Some);
    }
    if let Some(var) = env {
        let value = std::env::var(var).map_err(|_| PepperError::MissingEnv(var.to_owned()))?;
        return Ok(Some(value.trim_end().as_bytes().to_vec()));
    }
    Ok(None)
}

fn read_key_file(path: &Path) -> Result<Vec<u8>, PepperError> {
    let mut bytes = std::fs::read(path).map_err(|source| PepperError::Read {
        path: path.display().to_string(),
        source,
    })?;
    while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
        bytes.pop();
    }
    Ok(bytes)
}

/// A fresh API key (the only time it exists in plain form).
pub(crate) fn generate_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// The public id of a key: its first 8 random characters after the prefix (48 of 256 bits).
pub fn key_id(key: &str) -> String {
    key.chars().take(KEY_PREFIX.len() + 8).collect()
}

/// The id of a key declared in the config, where only its hash is known.
pub(crate) fn config_key_id(hash: &KeyHash) -> String {
    format!("cfg_{}", hex::encode(&hash.0[..6]))
}

/// Parses `hmac-sha256:<64 hex>` into the hash bytes.
pub fn parse_stored_hash(s: &str) -> Option<KeyHash> {
    let hex = s.strip_prefix(PREFIX)?;
    let bytes = hex::decode(hex).ok()?;
    bytes.try_into().ok().map(KeyHash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_long_random_and_identifiable() {
        let key = generate_key();
        assert!(key.starts_with(KEY_PREFIX) && key.len() == KEY_PREFIX.len() + 43);
        assert_ne!(key, generate_key());
        let id = key_id(&key);
        assert!(key.starts_with(&id) && id.len() == KEY_PREFIX.len() + 8);
    }

    #[test]
    fn another_pepper_does_not_match() {
        let key = generate_key();
        let (a, b) = (Pepper::random(), Pepper::random());
        assert_ne!(a.stored_hash(&key), b.stored_hash(&key));
        assert_eq!(
            parse_stored_hash(&a.stored_hash(&key)),
            Some(a.hash(key.as_bytes()))
        );
    }

    #[test]
    fn short_pepper_is_refused() {
        assert!(matches!(
            Pepper::new(vec![1; 8]),
            Err(PepperError::TooShort)
        ));
    }
}
