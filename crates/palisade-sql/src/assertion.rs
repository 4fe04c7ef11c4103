//! Verifies the tenant assertion the gateway attaches to every call in shared placement
//! (docs/ARCHITECTURE.md §5): a compact JWS signed with EdDSA, carrying `tenant`, `sub`,
//! `scope` and `audit_id`, for one audience (this server), valid for at most a minute.
//!
//! Keys come from the gateway's JWKS URL (fetched on first use, again when an unknown `kid`
//! appears — a rotation — at most once a second, and every five minutes) or from a JWKS file
//! (re-read the same way). When no keys can be had, every call is refused: fail closed.
//!
//! Checked, in order: the form, `alg` = EdDSA, the key, the signature, `iss`, `aud`, `exp`,
//! `iat` (not in the future, lifetime ≤ [`MAX_LIFETIME_SECS`]), and the tenant id's syntax.
//! Nothing from an unverified token is used or echoed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{ED25519, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::TenantId;

/// Where the assertion travels in a call's `params._meta`.
pub const META_KEY: &str = "io.palisade/tenant";

/// The longest lifetime (`exp - iat`) accepted; the gateway mints 60 s.
pub const MAX_LIFETIME_SECS: u64 = 300;

/// How often the key set is fetched again even when every `kid` is known (a removed key
/// stops being accepted within this time).
const REFRESH_EVERY: Duration = Duration::from_secs(300);
/// How often an unknown `kid` may trigger a fetch (a flood of forged kids must not become a
/// flood of fetches).
const UNKNOWN_KID_EVERY: Duration = Duration::from_secs(1);

/// Where the gateway's public keys are.
#[derive(Debug, Clone)]
pub enum KeySource {
    Url(String),
    File(PathBuf),
}

/// What a verified assertion says about the call.
#[derive(Debug, Clone, Deserialize)]
pub struct Claims {
    pub tenant: String,
    #[serde(default)]
    pub sub: String,
    #[serde(default)]
    pub scope: String,
    #[serde(default)]
    pub audit_id: Option<String>,
}

/// Why a call's assertion was refused. Messages name the problem, never the token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error(
        "this server runs in shared placement and the call carries no tenant assertion: call it through the Palisade gateway"
    )]
    Missing,
    #[error("the tenant assertion is malformed ({0})")]
    Malformed(&'static str),
    // Neither echoes the token's header: nothing unverified is repeated.
    #[error("the tenant assertion does not use EdDSA, the only algorithm accepted")]
    Algorithm,
    #[error("the tenant assertion is signed with a key the gateway does not publish")]
    UnknownKey,
    #[error("the tenant assertion's signature does not verify")]
    BadSignature,
    #[error("the tenant assertion was issued by {0:?}, not by the gateway this server trusts")]
    WrongIssuer(String),
    #[error("the tenant assertion is for another server, not for {0:?}")]
    WrongAudience(String),
    #[error("the tenant assertion has expired")]
    Expired,
    #[error(
        "the tenant assertion is issued in the future or lives longer than {MAX_LIFETIME_SECS} s"
    )]
    BadLifetime,
    #[error("the tenant assertion names no valid tenant")]
    BadTenant,
    #[error("the call carries two different tenant assertions (in _meta and in Authorization)")]
    Conflicting,
    #[error(
        "the gateway's keys are unavailable ({0}), so no call can be verified; check the JWKS source"
    )]
    KeysUnavailable(String),
}

/// An Ed25519 public key.
type PublicKey = [u8; 32];

/// The public keys in force, by `kid`.
struct KeySet {
    keys: HashMap<String, PublicKey>,
    fetched: Option<Instant>,
}

/// Checks assertions for one audience against one key source.
pub struct Verifier {
    source: KeySource,
    audience: String,
    issuer: String,
    clock_skew: u64,
    http: reqwest::Client,
    keys: Mutex<KeySet>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
}

/// The whole claim set, read once; [`Claims`] is what a verified one hands on.
#[derive(Deserialize)]
struct Payload {
    iss: Option<String>,
    aud: Option<serde_json::Value>,
    exp: Option<u64>,
    iat: Option<u64>,
    #[serde(flatten)]
    claims: Claims,
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: Option<String>,
    crv: Option<String>,
    kid: Option<String>,
    x: Option<String>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The Ed25519 keys of a JWK set; other key types are skipped.
fn parse_jwks(body: &[u8]) -> Result<HashMap<String, PublicKey>, String> {
    let jwks: Jwks = serde_json::from_slice(body).map_err(|e| format!("not a JWK set: {e}"))?;
    Ok(jwks
        .keys
        .into_iter()
        .filter(|k| k.kty.as_deref() == Some("OKP") && k.crv.as_deref() == Some("Ed25519"))
        .filter_map(|k| {
            let x = PublicKey::try_from(B64URL.decode(k.x?).ok()?).ok()?;
            Some((k.kid?, x))
        })
        .collect())
}

impl Verifier {
    pub fn new(source: KeySource, audience: String, issuer: String, clock_skew_secs: u64) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        Verifier {
            source,
            audience,
            issuer,
            clock_skew: clock_skew_secs,
            http,
            keys: Mutex::new(KeySet {
                keys: HashMap::new(),
                fetched: None,
            }),
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, PublicKey>, String> {
        let body = match &self.source {
            KeySource::File(path) => tokio::fs::read(path)
                .await
                .map_err(|e| format!("reading {}: {e}", path.display()))?,
            KeySource::Url(url) => {
                let response = self
                    .http
                    .get(url)
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())
                    .map_err(|e| format!("fetching {url}: {e}"))?;
                response
                    .bytes()
                    .await
                    .map_err(|e| format!("reading {url}: {e}"))?
                    .to_vec()
            }
        };
        parse_jwks(&body)
    }

    /// The key for `kid`, fetching the set when it is stale or does not have it yet.
    async fn key(&self, kid: &str) -> Result<PublicKey, Refused> {
        let mut set = self.keys.lock().await;
        let age = set.fetched.map(|t| t.elapsed());
        let stale = age.is_none_or(|a| a >= REFRESH_EVERY);
        let missing = !set.keys.contains_key(kid);
        if stale || (missing && age.is_none_or(|a| a >= UNKNOWN_KID_EVERY)) {
            match self.fetch().await {
                Ok(keys) => {
                    set.keys = keys;
                    set.fetched = Some(Instant::now());
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot load the gateway's assertion keys");
                    // Keys fetched before stay usable until the next attempt succeeds; with
                    // none at all, every call is refused.
                    if set.keys.is_empty() {
                        return Err(Refused::KeysUnavailable(error));
                    }
                }
            }
        }
        set.keys.get(kid).copied().ok_or(Refused::UnknownKey)
    }

    /// Verifies `token` and returns the tenant it asserts.
    pub async fn verify(&self, token: &str) -> Result<TenantId, Refused> {
        let mut parts = token.split('.');
        let (Some(header_b64), Some(claims_b64), Some(sig_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Refused::Malformed("not three dot-separated parts"));
        };
        let header: Header = B64URL
            .decode(header_b64)
            .ok()
            .and_then(|h| serde_json::from_slice(&h).ok())
            .ok_or(Refused::Malformed("bad header"))?;
        if header.alg != "EdDSA" {
            return Err(Refused::Algorithm);
        }
        let kid = header.kid.ok_or(Refused::Malformed("no kid"))?;
        let signature = B64URL
            .decode(sig_b64)
            .map_err(|_| Refused::Malformed("bad signature encoding"))?;
        let key = self.key(&kid).await?;
        let signing_input = &token[..header_b64.len() + 1 + claims_b64.len()];
        UnparsedPublicKey::new(&ED25519, &key)
            .verify(signing_input.as_bytes(), &signature)
            .map_err(|_| Refused::BadSignature)?;

        // Signed by the gateway from here on; still checked, since a valid token may be
        // for another server or out of date.
        let payload = B64URL
            .decode(claims_b64)
            .map_err(|_| Refused::Malformed("bad claims encoding"))?;
        let registered: Payload = serde_json::from_slice(&payload)
            .map_err(|_| Refused::Malformed("bad claims, or no tenant claim"))?;
        let issuer = registered.iss.unwrap_or_default();
        if issuer != self.issuer {
            return Err(Refused::WrongIssuer(issuer));
        }
        let for_us = match &registered.aud {
            Some(serde_json::Value::String(aud)) => *aud == self.audience,
            Some(serde_json::Value::Array(auds)) => {
                auds.iter().any(|a| a.as_str() == Some(&self.audience))
            }
            _ => false,
        };
        if !for_us {
            return Err(Refused::WrongAudience(self.audience.clone()));
        }
        let (Some(exp), Some(iat)) = (registered.exp, registered.iat) else {
            return Err(Refused::Malformed("no exp or iat"));
        };
        let now = now();
        if now >= exp.saturating_add(self.clock_skew) {
            return Err(Refused::Expired);
        }
        if iat > now.saturating_add(self.clock_skew) || exp.saturating_sub(iat) > MAX_LIFETIME_SECS
        {
            return Err(Refused::BadLifetime);
        }
        TenantId::parse(&registered.claims.tenant).map_err(|_| Refused::BadTenant)
    }
}
