//! JWKS documents: fetching (with RFC 8414 / OpenID Connect discovery) and turning them into the
//! verification keys of one issuer. Only asymmetric signing keys are kept.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use reqwest::Url;
use reqwest::header::{ACCEPT, CACHE_CONTROL};
use serde::Deserialize;

use crate::config::fetchable;

/// Per-request timeout for metadata and JWKS fetches.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Largest metadata document accepted.
const MAX_METADATA_BYTES: usize = 256 * 1024;

/// What a key can verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Rsa,
    EcP256,
    Ed25519,
}

impl KeyKind {
    pub(crate) fn fits(self, alg: Algorithm) -> bool {
        matches!(
            (self, alg),
            (KeyKind::Rsa, Algorithm::RS256 | Algorithm::PS256)
                | (KeyKind::EcP256, Algorithm::ES256)
                | (KeyKind::Ed25519, Algorithm::EdDSA)
        )
    }
}

/// One usable verification key.
pub(crate) struct CachedKey {
    pub(crate) key: DecodingKey,
    /// The JWK's own `alg`, when it names one.
    pub(crate) alg: Option<Algorithm>,
    pub(crate) kind: KeyKind,
}

impl CachedKey {
    pub(crate) fn fits(&self, alg: Algorithm) -> bool {
        self.alg.is_none_or(|a| a == alg) && self.kind.fits(alg)
    }
}

/// The usable keys of one issuer's JWKS.
#[derive(Default)]
pub(crate) struct KeySet {
    pub(crate) by_kid: HashMap<String, Arc<CachedKey>>,
    pub(crate) all: Vec<Arc<CachedKey>>,
}

/// Outcome of looking a token's key up.
pub(crate) enum Lookup {
    Found(Arc<CachedKey>),
    /// The key exists but cannot verify this algorithm.
    WrongAlgorithm,
    NotFound,
    /// No `kid` and several keys could verify the algorithm.
    Ambiguous,
}

impl KeySet {
    pub(crate) fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Lookup {
        match kid {
            Some(kid) => match self.by_kid.get(kid) {
                Some(k) if k.fits(alg) => Lookup::Found(Arc::clone(k)),
                Some(_) => Lookup::WrongAlgorithm,
                None => Lookup::NotFound,
            },
            None => {
                let mut it = self.all.iter().filter(|k| k.fits(alg));
                match (it.next(), it.next()) {
                    (Some(k), None) => Lookup::Found(Arc::clone(k)),
                    (Some(_), Some(_)) => Lookup::Ambiguous,
                    _ => Lookup::NotFound,
                }
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.all.len()
    }
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    key_ops: Option<Vec<String>>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

/// Parses a JWKS document, skipping (with a debug log) every entry that is not a usable asymmetric
/// signing key. Fails only when the document itself is not a JWKS.
pub(crate) fn parse_jwks(body: &[u8], issuer: &str) -> Result<KeySet, String> {
    let raw: RawSet = serde_json::from_slice(body)
        .map_err(|e| format!("JWKS is not a JSON object with a `keys` array: {e}"))?;
    let mut set = KeySet::default();
    for (i, value) in raw.keys.into_iter().enumerate() {
        let jwk: RawJwk = match serde_json::from_value(value) {
            Ok(j) => j,
            Err(e) => {
                tracing::debug!(issuer, index = i, error = %e, "JWKS entry skipped: not a JWK");
                continue;
            }
        };
        let kid = jwk.kid.clone();
        match usable_key(jwk) {
            Ok(key) => {
                let key = Arc::new(key);
                if let Some(kid) = kid {
                    if set.by_kid.contains_key(&kid) {
                        tracing::debug!(issuer, index = i, "JWKS entry skipped: duplicate kid");
                        continue;
                    }
                    set.by_kid.insert(kid, Arc::clone(&key));
                }
                set.all.push(key);
            }
            Err(why) => tracing::debug!(issuer, index = i, why, "JWKS entry skipped"),
        }
    }
    Ok(set)
}

fn b64(field: Option<&str>, name: &'static str) -> Result<Vec<u8>, &'static str> {
    let s = field.ok_or(name)?;
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| "a key parameter is not base64url")
}

fn usable_key(jwk: RawJwk) -> Result<CachedKey, &'static str> {
    if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
        return Err("not a signature key (use)");
    }
    if let Some(ops) = &jwk.key_ops
        && !ops.iter().any(|o| o == "verify")
    {
        return Err("not a verification key (key_ops)");
    }
    let alg = match jwk.alg.as_deref() {
        None => None,
        Some("RS256") => Some(Algorithm::RS256),
        Some("PS256") => Some(Algorithm::PS256),
        Some("ES256") => Some(Algorithm::ES256),
        Some("EdDSA") => Some(Algorithm::EdDSA),
        Some(_) => return Err("alg is not one of RS256, PS256, ES256, EdDSA"),
    };
    let (kind, key) = match jwk.kty.as_str() {
        "RSA" => {
            let n = b64(jwk.n.as_deref(), "RSA key without n")?;
            let e = b64(jwk.e.as_deref(), "RSA key without e")?;
            let n_start = n.iter().position(|b| *b != 0).unwrap_or(n.len());
            let e_start = e.iter().position(|b| *b != 0).unwrap_or(e.len());
            let (n, e) = (&n[n_start..], &e[e_start..]);
            if !(256..=1024).contains(&n.len()) {
                return Err("RSA modulus is not between 2048 and 8192 bits");
            }
            if e.is_empty() || e.len() > 8 {
                return Err("RSA exponent is unusable");
            }
            (KeyKind::Rsa, DecodingKey::from_rsa_raw_components(n, e))
        }
        "EC" => {
            if jwk.crv.as_deref() != Some("P-256") {
                return Err("EC key not on P-256");
            }
            let x = b64(jwk.x.as_deref(), "EC key without x")?;
            let y = b64(jwk.y.as_deref(), "EC key without y")?;
            if x.len() != 32 || y.len() != 32 {
                return Err("EC P-256 coordinates are not 32 bytes");
            }
            let mut point = Vec::with_capacity(65);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (KeyKind::EcP256, DecodingKey::from_ec_der(&point))
        }
        "OKP" => {
            if jwk.crv.as_deref() != Some("Ed25519") {
                return Err("OKP key not on Ed25519");
            }
            let x = b64(jwk.x.as_deref(), "OKP key without x")?;
            if x.len() != 32 {
                return Err("Ed25519 public key is not 32 bytes");
            }
            (KeyKind::Ed25519, DecodingKey::from_ed_der(&x))
        }
        "oct" => return Err("symmetric (oct) key ignored"),
        _ => return Err("unknown kty"),
    };
    if let Some(a) = alg
        && !kind.fits(a)
    {
        return Err("alg does not match the key type");
    }
    Ok(CachedKey { key, alg, kind })
}

/// A fetched JWKS with its `Cache-Control: max-age`, if any.
pub(crate) struct Fetched {
    pub(crate) keys: KeySet,
    pub(crate) max_age: Option<u64>,
}

/// Fetches and parses the JWKS at `uri`.
pub(crate) async fn fetch_jwks(
    http: &reqwest::Client,
    uri: &str,
    issuer: &str,
) -> Result<Fetched, String> {
    let (body, max_age) = get(http, uri, MAX_JWKS_BYTES).await?;
    let keys = parse_jwks(&body, issuer).map_err(|e| format!("{uri}: {e}"))?;
    Ok(Fetched { keys, max_age })
}

#[derive(Deserialize)]
struct Metadata {
    issuer: String,
    #[serde(default)]
    jwks_uri: Option<String>,
}

/// The metadata URLs to try for an issuer, in order: RFC 8414 path insertion, OpenID Connect path
/// insertion, then OpenID Connect path appending (the last only for issuers with a path).
pub(crate) fn discovery_urls(issuer: &str) -> Result<Vec<String>, String> {
    let url = Url::parse(issuer).map_err(|e| format!("issuer is not a URL: {e}"))?;
    let origin = url.origin().ascii_serialization();
    let path = url.path().trim_end_matches('/');
    let mut out = vec![
        format!("{origin}/.well-known/oauth-authorization-server{path}"),
        format!("{origin}/.well-known/openid-configuration{path}"),
    ];
    if !path.is_empty() {
        out.push(format!("{origin}{path}/.well-known/openid-configuration"));
    }
    Ok(out)
}

/// Finds the issuer's `jwks_uri` from its authorization-server metadata. The metadata's `issuer`
/// must equal the configured one exactly (RFC 8414 §3.3).
pub(crate) async fn discover(http: &reqwest::Client, issuer: &str) -> Result<String, String> {
    let mut errors = Vec::new();
    for url in discovery_urls(issuer)? {
        let body = match get(http, &url, MAX_METADATA_BYTES).await {
            Ok((body, _)) => body,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let meta: Metadata = match serde_json::from_slice(&body) {
            Ok(m) => m,
            Err(e) => {
                errors.push(format!("{url}: not authorization-server metadata: {e}"));
                continue;
            }
        };
        if meta.issuer != issuer {
            errors.push(format!("{url}: metadata names a different issuer"));
            continue;
        }
        match meta.jwks_uri {
            Some(uri) if fetchable(&uri) => return Ok(uri),
            Some(_) => errors.push(format!(
                "{url}: jwks_uri is not an https URL (http only for localhost)"
            )),
            None => errors.push(format!("{url}: metadata has no jwks_uri")),
        }
    }
    Err(format!("JWKS discovery failed: {}", errors.join("; ")))
}

/// GETs `url`, requiring a 2xx answer of at most `limit` bytes. Returns the body and
/// `Cache-Control: max-age`.
async fn get(
    http: &reqwest::Client,
    url: &str,
    limit: usize,
) -> Result<(Vec<u8>, Option<u64>), String> {
    let mut resp = http
        .get(url)
        .header(ACCEPT, "application/json")
        .timeout(FETCH_TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("{url}: HTTP {}", resp.status()));
    }
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(format!("{url}: document larger than {limit} bytes"));
    }
    let max_age = resp
        .headers()
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(parse_max_age);
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| format!("{url}: {e}"))? {
        if body.len() + chunk.len() > limit {
            return Err(format!("{url}: document larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, max_age))
}

fn parse_max_age(value: &str) -> Option<u64> {
    value.split(',').find_map(|d| {
        let (k, v) = d.trim().split_once('=')?;
        if k.trim().eq_ignore_ascii_case("max-age") {
            v.trim().trim_matches('"').parse().ok()
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_urls_follow_rfc8414() {
        assert_eq!(
            discovery_urls("https://h").unwrap(),
            [
                "https://h/.well-known/oauth-authorization-server",
                "https://h/.well-known/openid-configuration"
            ]
        );
        assert_eq!(
            discovery_urls("https://h:8443/tenant1/").unwrap(),
            [
                "https://h:8443/.well-known/oauth-authorization-server/tenant1",
                "https://h:8443/.well-known/openid-configuration/tenant1",
                "https://h:8443/tenant1/.well-known/openid-configuration"
            ]
        );
    }

    #[test]
    fn max_age_parsing() {
        assert_eq!(parse_max_age("public, max-age=600"), Some(600));
        assert_eq!(parse_max_age("no-store"), None);
        assert_eq!(parse_max_age("MAX-AGE = 5 , private"), Some(5));
    }

    #[test]
    fn jwks_skips_unusable_entries() {
        let doc = br#"{"keys":[
            {"kty":"oct","kid":"s","k":"c2VjcmV0"},
            {"kty":"XYZ","kid":"u"},
            {"kty":"EC","kid":"p384","crv":"P-384","x":"AA","y":"AA"},
            {"kty":"RSA","kid":"enc","use":"enc","n":"AQAB","e":"AQAB"},
            {"kty":"OKP","kid":"ed","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty":"OKP","kid":"ed-bad-alg","alg":"ES256","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            "not an object"
        ]}"#;
        let set = parse_jwks(doc, "i").unwrap();
        assert_eq!(set.len(), 1);
        assert!(matches!(
            set.lookup(Some("ed"), Algorithm::EdDSA),
            Lookup::Found(_)
        ));
        assert!(matches!(
            set.lookup(Some("ed"), Algorithm::ES256),
            Lookup::WrongAlgorithm
        ));
        assert!(matches!(
            set.lookup(Some("s"), Algorithm::EdDSA),
            Lookup::NotFound
        ));
        assert!(matches!(
            set.lookup(None, Algorithm::EdDSA),
            Lookup::Found(_)
        ));
        assert!(matches!(
            set.lookup(None, Algorithm::RS256),
            Lookup::NotFound
        ));
        assert!(parse_jwks(b"[]", "i").is_err());
    }
}
