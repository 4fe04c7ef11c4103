//! Who is calling: the front door turns credentials into a [`Principal`] exactly once per
//! request, and nothing below it reads a tenant from anywhere else (invariant 1).
//!
//! Two kinds of bearer credential: API keys (`pal_…`, looked up by their HMAC in the
//! [`Registry`] cache) and OAuth 2.1 access tokens (JWTs, checked by [`palisade_oauth`] against
//! their issuer's JWKS). Either way the tenant must exist and be active. Nothing here touches the
//! database: the registry is an in-memory snapshot.

use crate::apikey;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use palisade_ids::TenantId;
use palisade_oauth::{TokenError, Verifier};
use subtle::ConstantTimeEq;

use crate::registry::{Registry, Tenant};
use apikey::Pepper;

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub tenant: TenantId,
    /// Stable, non-secret identity of the caller within the tenant: `key:<key id>` for an API
    /// key, `<sub>@<issuer>` for a token.
    pub subject: Arc<str>,
    pub method: AuthMethod,
    /// Scopes held: the key's, or the token's plus those its roles grant under the tenant's
    /// policy.
    pub scopes: Arc<[String]>,
    /// The API key's id (so revoking it ends its sessions), or the token's `jti`.
    pub credential: Option<Arc<str>>,
    /// When the credential stops being valid (unix seconds), if it expires.
    pub expires_at_secs: Option<i64>,
}

#[cfg(test)]
impl Principal {
    /// An API key's principal with no scopes and no expiry, for unit tests.
    pub(crate) fn of_key(tenant: &str, subject: &str) -> Principal {
        Principal {
            tenant: TenantId::parse(tenant).unwrap_or_else(|e| panic!("{e}")),
            subject: subject.into(),
            method: AuthMethod::ApiKey,
            scopes: Arc::from(Vec::new()),
            credential: Some("pal_test".into()),
            expires_at_secs: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    ApiKey,
    Jwt,
}

/// Why a request was not authenticated or not admitted. Messages never include the presented
/// credential or anything read from it.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing credentials: send `Authorization: Bearer <access token or API key>`")]
    Missing,
    #[error("malformed Authorization header: expected `Bearer <access token or API key>`")]
    Malformed,
    #[error("invalid credentials: the API key is not recognised (revoked, deleted or mistyped)")]
    InvalidKey,
    #[error("invalid credentials: the API key has expired; issue a new one")]
    ExpiredKey,
    #[error(
        "invalid credentials: not an API key (those start with `pal_`), and this gateway accepts no access tokens (no [oauth] configured)"
    )]
    NoOAuth,
    #[error("invalid access token: {0}")]
    Token(TokenError),
    #[error("cannot verify access tokens right now: {0}")]
    Unavailable(TokenError),
    #[error(
        "the access token carries no tenant: the issuer must include the configured tenant claim"
    )]
    NoTenant,
    #[error("the credentials' tenant is not known to this gateway")]
    UnknownTenant,
    // The tenant's id is not repeated: it may come from a token, and errors echo nothing of it.
    #[error("the tenant is suspended: {reason}")]
    Suspended { reason: String },
    #[error("insufficient scope: this request needs the scopes `{0}`")]
    InsufficientScope(String),
}

impl AuthError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Missing
            | AuthError::Malformed
            | AuthError::InvalidKey
            | AuthError::ExpiredKey
            | AuthError::NoOAuth
            | AuthError::Token(_) => 401,
            AuthError::Unavailable(_) => 503,
            AuthError::NoTenant
            | AuthError::UnknownTenant
            | AuthError::Suspended { .. }
            | AuthError::InsufficientScope(_) => 403,
        }
    }

    /// The `error` parameter of the `WWW-Authenticate` challenge (RFC 6750 §3.1), if any.
    pub(crate) fn challenge_error(&self) -> Option<&'static str> {
        match self {
            AuthError::Missing => None,
            AuthError::InsufficientScope(_) => Some("insufficient_scope"),
            AuthError::Malformed => Some("invalid_request"),
            AuthError::Unavailable(_)
            | AuthError::NoTenant
            | AuthError::UnknownTenant
            | AuthError::Suspended { .. } => None,
            _ => Some("invalid_token"),
        }
    }
}

/// The bearer credential of an `Authorization` header value.
pub fn bearer(value: &[u8]) -> Result<&[u8], AuthError> {
    let value = value.trim_ascii();
    let (scheme, rest) = value
        .iter()
        .position(|b| *b == b' ')
        .map(|i| (&value[..i], value[i + 1..].trim_ascii()))
        .ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(rest)
}

/// Checks credentials against the registry and the OAuth issuers.
pub struct Authenticator {
    pepper: Pepper,
    /// Replaced on config reload; `None` when no `[oauth]` table is configured.
    oauth: ArcSwapOption<Verifier>,
    /// Last use of each API key (unix ms), flushed to the store in batches.
    last_used: Mutex<HashMap<Arc<str>, i64>>,
}

impl Authenticator {
    pub fn new(pepper: Pepper, oauth: Option<Arc<Verifier>>) -> Authenticator {
        Authenticator {
            pepper,
            oauth: ArcSwapOption::new(oauth),
            last_used: Mutex::new(HashMap::new()),
        }
    }

    pub fn pepper(&self) -> &Pepper {
        &self.pepper
    }

    pub fn oauth(&self) -> Option<Arc<Verifier>> {
        self.oauth.load_full()
    }

    pub(crate) fn set_oauth(&self, verifier: Option<Arc<Verifier>>) {
        self.oauth.store(verifier);
    }

    /// The principal and tenant for an `Authorization` header.
    pub async fn authenticate(
        &self,
        registry: &Registry,
        authorization: Option<&[u8]>,
    ) -> Result<(Principal, Arc<Tenant>), AuthError> {
        let credential = bearer(authorization.ok_or(AuthError::Missing)?)?;
        if credential.starts_with(apikey::KEY_PREFIX.as_bytes()) {
            return self.api_key(registry, credential);
        }
        self.token(registry, credential).await
    }

    fn api_key(
        &self,
        registry: &Registry,
        key: &[u8],
    ) -> Result<(Principal, Arc<Tenant>), AuthError> {
        let hash = self.pepper.hash(key);
        // The map is keyed by an HMAC the caller cannot steer, so the lookup leaks nothing
        // useful; the final comparison is constant-time regardless.
        let (stored, entry) = registry.key(&hash).ok_or(AuthError::InvalidKey)?;
        if !bool::from(stored.0.ct_eq(&hash.0)) {
            return Err(AuthError::InvalidKey);
        }
        let now = now_ms();
        if entry.expires_at_ms.is_some_and(|at| at <= now) {
            return Err(AuthError::ExpiredKey);
        }
        let tenant = admitted(registry, &entry.tenant)?;
        if let Ok(mut map) = self.last_used.lock() {
            map.insert(entry.id.clone(), now);
        }
        let principal = Principal {
            tenant: entry.tenant.clone(),
            subject: entry.subject.clone(),
            method: AuthMethod::ApiKey,
            scopes: entry.scopes.clone(),
            credential: Some(entry.id.clone()),
            expires_at_secs: entry.expires_at_ms.map(|ms| ms / 1000),
        };
        Ok((principal, tenant))
    }

    async fn token(
        &self,
        registry: &Registry,
        token: &[u8],
    ) -> Result<(Principal, Arc<Tenant>), AuthError> {
        let verifier = self.oauth.load_full().ok_or(AuthError::NoOAuth)?;
        let token = std::str::from_utf8(token)
            .map_err(|_| AuthError::Token(TokenError::Malformed("not UTF-8")))?;
        let claims = verifier.verify(token).await.map_err(|e| {
            if e.is_unavailable() {
                AuthError::Unavailable(e)
            } else {
                AuthError::Token(e)
            }
        })?;
        let tenant_id = claims.tenant.as_deref().ok_or(AuthError::NoTenant)?;
        let tenant = admitted(registry, tenant_id)?;
        let mut scopes = claims.scopes.clone();
        tenant.policy.grant_roles(&claims.roles, &mut scopes);
        let required = &verifier.config().required_scopes;
        let missing: Vec<&str> = required
            .iter()
            .filter(|s| !scopes.contains(s))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(AuthError::InsufficientScope(missing.join(" ")));
        }
        let principal = Principal {
            tenant: tenant.id.clone(),
            subject: format!("{}@{}", claims.subject, claims.issuer).into(),
            method: AuthMethod::Jwt,
            scopes: scopes.into(),
            credential: claims.token_id.map(Into::into),
            expires_at_secs: Some(claims.expires_at_secs),
        };
        Ok((principal, tenant))
    }

    /// Takes the last-use times recorded since the previous call.
    pub(crate) fn take_last_used(&self) -> Vec<(String, i64)> {
        match self.last_used.lock() {
            Ok(mut map) => map.drain().map(|(k, v)| (k.to_string(), v)).collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// The tenant, if it exists and is active.
fn admitted(registry: &Registry, id: &str) -> Result<Arc<Tenant>, AuthError> {
    let tenant = registry.tenant(id).ok_or(AuthError::UnknownTenant)?;
    if let Some(reason) = tenant.suspension() {
        return Err(AuthError::Suspended {
            reason: reason.to_owned(),
        });
    }
    Ok(tenant.clone())
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer(b"Bearer abc").unwrap(), b"abc");
        assert_eq!(bearer(b"bearer   abc ").unwrap(), b"abc");
        assert!(matches!(bearer(b"Basic abc"), Err(AuthError::Malformed)));
        assert!(matches!(bearer(b"Bearer"), Err(AuthError::Malformed)));
        assert!(matches!(bearer(b"Bearer  "), Err(AuthError::Malformed)));
    }
}
