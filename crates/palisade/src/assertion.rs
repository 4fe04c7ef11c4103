//! Signed tenant context for shared servers (docs/ARCHITECTURE.md §5): for each call to a
//! `placement = "shared"` server the gateway mints a short-lived JWT (EdDSA) that says which
//! tenant, subject and scopes the call is for and which audit record it belongs to, and puts it
//! in the call's `_meta` under [`META_KEY`]. A shared server trusts that, checked against the
//! keys the gateway publishes at `/.well-known/jwks.json`, and nothing the client sent: a
//! client's own `_meta` entry of that name is always removed.
//!
//! Keys: Ed25519 seeds in `<data>/assertion-keys/<kid>.key` (0600), made on first start. The
//! newest (kids sort by time) signs; every key in the directory is published, so rotating
//! (`palisade assertions rotate` adds a key; the gateway picks it up within seconds) never
//! breaks an assertion in flight, which lives at most 60 s. Old keys are removed by hand once
//! a minute has passed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde_json::json;

/// Where the assertion travels in a call's `params._meta`.
pub const META_KEY: &str = "io.palisade/tenant";

/// How long an assertion is valid.
pub(crate) const LIFETIME_SECS: u64 = 60;

/// Who and what a call is for.
pub struct Context<'a> {
    pub tenant: &'a str,
    pub subject: &'a str,
    pub scopes: &'a [String],
    /// The call's BEGIN audit record, if audited.
    pub audit_id: Option<&'a str>,
    /// The server the assertion is for (its `aud`).
    pub audience: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum AssertionError {
    #[error("assertion keys in {dir}: {source}; check the directory's permissions")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("assertion key {0} is not a 32-byte Ed25519 seed: remove or replace it")]
    BadKey(PathBuf),
}

struct Key {
    kid: String,
    pair: Ed25519KeyPair,
}

/// The keys in force: the newest signs, all are published.
struct Ring {
    keys: Vec<Key>,
}

/// Mints assertions; re-reads its key directory on [`Assertions::reload`].
pub struct Assertions {
    dir: PathBuf,
    ring: ArcSwap<Ring>,
}

fn io(dir: &Path) -> impl Fn(std::io::Error) -> AssertionError + '_ {
    move |source| AssertionError::Io {
        dir: dir.to_owned(),
        source,
    }
}

/// Adds a new key to `dir` (it signs from then on) and returns its id.
pub fn rotate(dir: &Path) -> Result<String, AssertionError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    // Kids sort by creation time (microseconds), so the newest is the last.
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    let kid = format!("k{micros:017}-{:04x}", rand::random::<u16>());
    let seed: [u8; 32] = rand::random();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.join(format!("{kid}.key")))
        .map_err(io(dir))?;
    f.write_all(&seed)
        .and_then(|()| f.sync_all())
        .map_err(io(dir))?;
    Ok(kid)
}

fn load(dir: &Path) -> Result<Ring, AssertionError> {
    let mut keys = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        let Some(kid) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".key"))
        else {
            continue;
        };
        let seed = std::fs::read(&path).map_err(io(dir))?;
        let pair = <[u8; 32]>::try_from(seed.as_slice())
            .ok()
            .and_then(|s| Ed25519KeyPair::from_seed_unchecked(&s).ok())
            .ok_or_else(|| AssertionError::BadKey(path.clone()))?;
        keys.push(Key {
            kid: kid.to_owned(),
            pair,
        });
    }
    keys.sort_by(|a, b| a.kid.cmp(&b.kid));
    Ok(Ring { keys })
}

impl Assertions {
    /// Opens `dir`, making a first key if it has none.
    pub fn open(dir: PathBuf) -> Result<Assertions, AssertionError> {
        let mut ring = if dir.exists() {
            load(&dir)?
        } else {
            Ring { keys: Vec::new() }
        };
        if ring.keys.is_empty() {
            rotate(&dir)?;
            ring = load(&dir)?;
        }
        Ok(Assertions {
            dir,
            ring: ArcSwap::from_pointee(ring),
        })
    }

    /// Re-reads the key directory (a rotation adds a key); keeps the old ring on error.
    pub fn reload(&self) {
        match load(&self.dir) {
            Ok(ring) if !ring.keys.is_empty() => self.ring.store(Arc::new(ring)),
            Ok(_) => {
                tracing::warn!(dir = %self.dir.display(), "no assertion keys left; still signing with the last ones loaded")
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot reload the assertion keys; keeping the current ones")
            }
        }
    }

    /// The public keys, as a JWK set.
    pub fn jwks(&self) -> serde_json::Value {
        let ring = self.ring.load();
        let keys: Vec<_> = ring
            .keys
            .iter()
            .map(|k| {
                json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "alg": "EdDSA",
                    "use": "sig",
                    "kid": k.kid,
                    "x": B64URL.encode(k.pair.public_key().as_ref()),
                })
            })
            .collect();
        json!({ "keys": keys })
    }

    /// A signed assertion for one call (compact JWS, EdDSA).
    pub fn mint(&self, c: &Context<'_>) -> String {
        let ring = self.ring.load();
        // `open` and `reload` never leave the ring empty.
        let Some(key) = ring.keys.last() else {
            return String::new();
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": key.kid});
        let claims = json!({
            "iss": "palisade",
            "aud": c.audience,
            "iat": now,
            "exp": now + LIFETIME_SECS,
            "jti": format!("{:032x}", rand::random::<u128>()),
            "tenant": c.tenant,
            "sub": c.subject,
            "scope": c.scopes.join(" "),
            "audit_id": c.audit_id,
        });
        let signing_input = format!(
            "{}.{}",
            B64URL.encode(header.to_string()),
            B64URL.encode(claims.to_string())
        );
        let sig = key.pair.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", B64URL.encode(sig.as_ref()))
    }
}
