//! Static API keys: `pal_` + 43 base64url characters (256 random bits), stored only as
//! HMAC-SHA256 under a server pepper. A presented key is hashed and compared in constant time;
//! the plain key exists only in the response that created it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::{AuthError, AuthMethod, Authenticator, Principal, bearer};
use crate::config::Config;

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
    #[error("environment variable {0} (auth.pepper_env) is not set")]
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

    pub fn from_file(path: &Path) -> Result<Pepper, PepperError> {
        let mut bytes = std::fs::read(path).map_err(|source| PepperError::Read {
            path: path.display().to_string(),
            source,
        })?;
        while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
            bytes.pop();
        }
        Pepper::new(bytes)
    }

    /// The pepper the config names.
    pub fn from_config(config: &Config) -> Result<Pepper, PepperError> {
        if let Some(path) = &config.auth.pepper_file {
            return Pepper::from_file(path);
        }
        if let Some(var) = &config.auth.pepper_env {
            let value = std::env::var(var).map_err(|_| PepperError::MissingEnv(var.clone()))?;
            return Pepper::new(value.trim_end().as_bytes().to_vec());
        }
        Err(PepperError::NotConfigured)
    }

    /// HMAC-SHA256(pepper, key).
    pub fn hash(&self, key: &[u8]) -> [u8; 32] {
        // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        mac.update(key);
        mac.finalize().into_bytes().into()
    }

    /// The config form of a key's hash: `hmac-sha256:<hex>`.
    pub fn stored_hash(&self, key: &str) -> String {
        format!("{PREFIX}{}", hex::encode(self.hash(key.as_bytes())))
    }
}

/// A fresh API key (the only time it exists in plain form).
pub fn generate_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "pal_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Parses `hmac-sha256:<64 hex>` into the hash bytes.
pub fn parse_stored_hash(s: &str) -> Option<[u8; 32]> {
    let hex = s.strip_prefix(PREFIX)?;
    let bytes = hex::decode(hex).ok()?;
    bytes.try_into().ok()
}

/// The keys of every tenant, indexed by hash.
pub struct ApiKeys {
    pepper: Pepper,
    by_hash: HashMap<[u8; 32], Arc<str>>,
}

impl ApiKeys {
    pub fn from_config(config: &Config, pepper: Pepper) -> ApiKeys {
        let mut by_hash = HashMap::new();
        for tenant in &config.tenants {
            let id: Arc<str> = tenant.id.as_str().into();
            for stored in &tenant.keys {
                if let Some(hash) = parse_stored_hash(stored) {
                    by_hash.insert(hash, id.clone());
                }
            }
        }
        ApiKeys { pepper, by_hash }
    }
}

impl Authenticator for ApiKeys {
    fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Principal, AuthError> {
        let key = bearer(authorization.ok_or(AuthError::Missing)?)?;
        let hash = self.pepper.hash(key);
        // The map is keyed by an HMAC the caller cannot steer, so the lookup leaks nothing
        // useful; the final comparison is constant-time regardless.
        let (stored, tenant) = self
            .by_hash
            .get_key_value(&hash)
            .ok_or(AuthError::Invalid)?;
        if !bool::from(stored.ct_eq(&hash)) {
            return Err(AuthError::Invalid);
        }
        Ok(Principal {
            tenant: tenant.clone(),
            subject: format!("key:{}", hex::encode(&hash[..6])).into(),
            method: AuthMethod::ApiKey,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_for(pepper: &Pepper, key: &str) -> ApiKeys {
        let toml = format!(
            r#"
[auth]
pepper_env = "UNUSED"
[[servers]]
name = "kit"
[servers.stdio]
command = "true"
[[tenants]]
id = "acme"
servers = ["kit"]
keys = ["{}"]
"#,
            pepper.stored_hash(key)
        );
        let config = Config::from_toml(&toml).unwrap();
        ApiKeys::from_config(&config, Pepper::new(pepper.0.clone()).unwrap())
    }

    #[test]
    fn key_round_trip() {
        let pepper = Pepper::random();
        let key = generate_key();
        assert!(key.starts_with("pal_") && key.len() == 4 + 43);
        let keys = keys_for(&pepper, &key);
        let p = keys
            .authenticate(Some(format!("Bearer {key}").as_bytes()))
            .unwrap();
        assert_eq!(&*p.tenant, "acme");
        assert!(p.subject.starts_with("key:"));
        assert_eq!(
            keys.authenticate(Some(b"Bearer pal_wrong")).unwrap_err(),
            AuthError::Invalid
        );
        assert_eq!(keys.authenticate(None).unwrap_err(), AuthError::Missing);
    }

    #[test]
    fn another_pepper_does_not_match() {
        let key = generate_key();
        let keys = keys_for(&Pepper::random(), &key);
        let other = Pepper::random();
        assert_ne!(other.stored_hash(&key), keys.pepper.stored_hash(&key));
    }

    #[test]
    fn short_pepper_is_refused() {
        assert!(matches!(
            Pepper::new(vec![1; 8]),
            Err(PepperError::TooShort)
        ));
    }
}
