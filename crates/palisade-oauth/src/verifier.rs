//! The token verifier: per-issuer key caches, their refresh, and the checks of a bearer JWT.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::Value;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cache::{self, VerifiedCache};
use crate::config::{IssuerConfig, OAuthConfig};
use crate::error::{ConfigError, TokenError};
use crate::jwks::{self, CachedKey, KeySet, Lookup};

/// Longest [`Verifier::start`] waits for the first key fetches.
const STARTUP_WAIT: Duration = Duration::from_secs(15);

/// Who is calling, from a verified token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    /// The configured issuer that signed the token.
    pub issuer: Arc<str>,
    /// Whether that issuer is configured to issue admin tokens (`admin = true`).
    pub admin_issuer: bool,
    /// `sub`.
    pub subject: String,
    /// From the issuer's `tenant_claim` pointer (None when absent, empty or not a string), or the
    /// issuer's fixed `tenant`.
    pub tenant: Option<String>,
    /// `scope` (space-separated) or else `scp` (array or space-separated string).
    pub scopes: Vec<String>,
    /// From the issuer's `roles_claim` pointer (a string or the strings of an array).
    pub roles: Vec<String>,
    /// `jti`.
    pub token_id: Option<String>,
    /// `exp`, unix seconds.
    pub expires_at_secs: i64,
}

impl Claims {
    /// The scopes of `required` this token lacks (empty when it has them all).
    pub fn missing_scopes<'a>(&self, required: &'a [String]) -> Vec<&'a str> {
        required
            .iter()
            .filter(|r| !self.scopes.iter().any(|s| s == *r))
            .map(String::as_str)
            .collect()
    }
}

/// What triggered a JWKS fetch.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// Start-up or the periodic timer: always fetch.
    Scheduled,
    /// A token named a key we do not have (or no keys were ever fetched): rate-limited.
    OnDemand { seen_generation: u64 },
}

/// Guarded by the issuer's refresh lock (single flight).
struct RefreshState {
    /// Configured, or discovered and kept until a JWKS fetch from it fails.
    jwks_uri: Option<String>,
    last_on_demand: Option<Instant>,
    failures: u32,
}

struct IssuerState {
    cfg: IssuerConfig,
    name: Arc<str>,
    validations: Vec<(Algorithm, Validation)>,
    /// None until a JWKS fetch succeeds: tokens are then refused (fail closed).
    keys: ArcSwapOption<KeySet>,
    /// Bumped after every successful fetch.
    generation: AtomicU64,
    refresh: tokio::sync::Mutex<RefreshState>,
    next_due: Mutex<Instant>,
}

impl IssuerState {
    fn validation(&self, alg: Algorithm) -> Option<&Validation> {
        self.validations
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v)
    }
}

/// Verifies bearer JWTs for the configured issuers. `Send + Sync`; share it in an `Arc`.
///
/// Verified tokens are remembered (by SHA-256 of the token) until `min(exp, now + 300 s)`, so a
/// repeated token costs a hash and a lookup; a key withdrawn from the JWKS therefore stops
/// verifying already-seen tokens only when their cache entry ends.
pub struct Verifier {
    config: OAuthConfig,
    http: reqwest::Client,
    issuers: Vec<IssuerState>,
    by_name: HashMap<String, usize>,
    verified: VerifiedCache,
}

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Verifier>();
};

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("resource", &self.config.resource)
            .field("issuers", &self.by_name.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct RawHeader<'a> {
    #[serde(borrow)]
    alg: Cow<'a, str>,
    #[serde(default, borrow)]
    kid: Option<Cow<'a, str>>,
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct PeekIssuer<'a> {
    #[serde(default, borrow)]
    iss: Option<Cow<'a, str>>,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn allowed_algorithm(name: &str) -> Option<Algorithm> {
    match name {
        "RS256" => Some(Algorithm::RS256),
        "PS256" => Some(Algorithm::PS256),
        "ES256" => Some(Algorithm::ES256),
        "EdDSA" => Some(Algorithm::EdDSA),
        _ => None,
    }
}

fn b64_json<'a, T: Deserialize<'a>>(
    part: &str,
    buf: &'a mut Vec<u8>,
    what: &'static str,
) -> Result<T, TokenError> {
    URL_SAFE_NO_PAD
        .decode_vec(part, buf)
        .map_err(|_| TokenError::Malformed(what))?;
    serde_json::from_slice(buf).map_err(|_| TokenError::Malformed(what))
}

fn strings(v: &Value, split: bool) -> Vec<String> {
    match v {
        Value::String(s) if split => s.split_whitespace().map(str::to_owned).collect(),
        Value::String(s) if !s.is_empty() => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

impl Verifier {
    /// Checks the configuration and prepares the (still empty) key caches. Call
    /// [`Verifier::start`] from within a Tokio runtime to fetch the keys.
    pub fn new(config: OAuthConfig, http: reqwest::Client) -> Result<Verifier, ConfigError> {
        config.validate().map_err(ConfigError)?;
        // If another crate enabled jsonwebtoken's second backend, its automatic choice panics on
        // first use; pin the aws-lc one. An already installed provider is kept.
        let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();

        let now = Instant::now();
        let mut issuers = Vec::with_capacity(config.issuers.len());
        let mut by_name = HashMap::new();
        for (i, cfg) in config.issuers.iter().enumerate() {
            let mut validations = Vec::new();
            for name in &cfg.algorithms {
                let alg = allowed_algorithm(name).ok_or_else(|| {
                    ConfigError(format!(
                        "oauth.issuers[{i}].algorithms: {name:?} is not allowed"
                    ))
                })?;
                let mut v = Validation::new(alg);
                v.set_issuer(&[&cfg.issuer]);
                v.set_audience(&[&config.resource]);
                v.leeway = config.leeway_secs;
                v.validate_exp = true;
                v.validate_nbf = true;
                v.validate_aud = true;
                v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
                validations.push((alg, v));
            }
            by_name.insert(cfg.issuer.clone(), i);
            issuers.push(IssuerState {
                cfg: cfg.clone(),
                name: Arc::from(cfg.issuer.as_str()),
                validations,
                keys: ArcSwapOption::empty(),
                generation: AtomicU64::new(0),
                refresh: tokio::sync::Mutex::new(RefreshState {
                    jwks_uri: cfg.jwks_uri.clone(),
                    last_on_demand: None,
                    failures: 0,
                }),
                next_due: Mutex::new(now),
            });
        }
        Ok(Verifier {
            config,
            http,
            issuers,
            by_name,
            verified: VerifiedCache::default(),
        })
    }

    /// The configuration this verifier was built from.
    pub fn config(&self) -> &OAuthConfig {
        &self.config
    }

    /// Fetches every issuer's JWKS once (concurrently; failures are logged, and that issuer's tokens
    /// are refused with [`TokenError::Unavailable`] until a fetch succeeds), then spawns the periodic
    /// refresh task. The task ends when `shutdown` is cancelled or the verifier is dropped.
    ///
    /// Waits at most 15 s for the first fetches; slower ones go on in the background.
    pub async fn start(self: &Arc<Self>, shutdown: CancellationToken) -> JoinHandle<()> {
        let handles: Vec<_> = (0..self.issuers.len())
            .map(|idx| {
                let this = Arc::clone(self);
                tokio::spawn(async move { this.refresh(idx, Trigger::Scheduled).await })
            })
            .collect();
        let all = async {
            for h in handles {
                let _ = h.await;
            }
        };
        tokio::select! {
            () = all => {}
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(STARTUP_WAIT) => {
                tracing::warn!("JWKS of some issuers still being fetched after {STARTUP_WAIT:?}; continuing without them for now");
            }
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(refresh_loop(weak, shutdown))
    }

    /// Verifies a bearer token (the part after `Bearer `) and returns who is calling.
    ///
    /// Required scopes are not checked here; see [`Claims::missing_scopes`].
    pub async fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let max = self.config.max_token_bytes;
        if token.len() > max {
            return Err(TokenError::TooLarge { max_bytes: max });
        }
        let key = cache::hash(token.as_bytes());
        let now = unix_now();
        if let Some(claims) = self.verified.get(&key, now) {
            return Ok(claims);
        }
        let claims = self.verify_uncached(token).await?;
        self.verified.insert(key, &claims, now);
        Ok(claims)
    }

    async fn verify_uncached(&self, token: &str) -> Result<Claims, TokenError> {
        if !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(TokenError::Malformed(
                "not a compact JWS (only base64url parts separated by dots)",
            ));
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(_sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed(
                "a JWT has exactly three dot-separated parts",
            ));
        };
        if header_b64.is_empty() || payload_b64.is_empty() {
            return Err(TokenError::Malformed("empty header or payload"));
        }

        let mut buf = Vec::new();
        let header: RawHeader<'_> =
            b64_json(header_b64, &mut buf, "header is not base64url-encoded JSON")?;
        let alg = allowed_algorithm(&header.alg).ok_or(TokenError::Algorithm)?;
        if header.crit.is_some() {
            return Err(TokenError::Malformed(
                "critical header extensions are not supported",
            ));
        }
        let kid = header.kid.map(Cow::into_owned);

        // Unverified, only to pick the issuer whose keys and rules apply.
        let mut buf = Vec::new();
        let peek: PeekIssuer<'_> = b64_json(
            payload_b64,
            &mut buf,
            "payload is not base64url-encoded JSON with a string iss",
        )?;
        let iss = peek
            .iss
            .ok_or_else(|| TokenError::MissingClaim("iss".into()))?;
        let idx = *self
            .by_name
            .get(iss.as_ref())
            .ok_or(TokenError::UnknownIssuer)?;
        let issuer = &self.issuers[idx];
        let validation = issuer.validation(alg).ok_or(TokenError::Algorithm)?;

        let key = self.key_for(idx, kid.as_deref(), alg).await?;
        let data = jsonwebtoken::decode::<Value>(token, &key.key, validation)
            .map_err(|e| TokenError::from_jwt(&e))?;
        self.extract(issuer, &data.claims)
    }

    /// The key of issuer `idx` for this `kid` and algorithm, refreshing the issuer's JWKS once
    /// (rate-limited, single flight) when it is not there.
    async fn key_for(
        &self,
        idx: usize,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Arc<CachedKey>, TokenError> {
        let issuer = &self.issuers[idx];
        let mut refreshed = false;
        loop {
            let generation = issuer.generation.load(Ordering::Acquire);
            let lookup = issuer
                .keys
                .load()
                .as_deref()
                .map(|set| set.lookup(kid, alg));
            match lookup {
                Some(Lookup::Found(k)) => return Ok(k),
                Some(Lookup::WrongAlgorithm) => return Err(TokenError::Algorithm),
                Some(Lookup::Ambiguous) => return Err(TokenError::UnknownKey),
                Some(Lookup::NotFound) if refreshed => return Err(TokenError::UnknownKey),
                None if refreshed => {
                    return Err(TokenError::Unavailable {
                        issuer: issuer.cfg.issuer.clone(),
                    });
                }
                Some(Lookup::NotFound) | None => {
                    self.refresh(
                        idx,
                        Trigger::OnDemand {
                            seen_generation: generation,
                        },
                    )
                    .await;
                    refreshed = true;
                }
            }
        }
    }

    fn extract(&self, issuer: &IssuerState, claims: &Value) -> Result<Claims, TokenError> {
        let obj = claims
            .as_object()
            .ok_or(TokenError::Malformed("payload is not a JSON object"))?;
        let subject = obj
            .get("sub")
            .and_then(Value::as_str)
            .ok_or_else(|| TokenError::MissingClaim("sub".into()))?
            .to_owned();
        let expires_at = match obj.get("exp") {
            Some(Value::Number(n)) => n
                .as_i64()
                .or_else(|| n.as_u64().map(|_| i64::MAX))
                .or_else(|| n.as_f64().map(|f| f as i64))
                .ok_or_else(|| TokenError::MissingClaim("exp".into()))?,
            _ => return Err(TokenError::MissingClaim("exp".into())),
        };
        for name in &issuer.cfg.required_claims {
            if obj.get(name).is_none_or(Value::is_null) {
                return Err(TokenError::MissingClaim(name.clone()));
            }
        }
        let tenant = match (&issuer.cfg.tenant, &issuer.cfg.tenant_claim) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(ptr)) => claims
                .pointer(ptr)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
            (None, None) => None,
        };
        if let Some(t) = &tenant
            && !issuer.cfg.may_name(t)
        {
            return Err(TokenError::TenantNotAllowed);
        }
        let scopes = match (obj.get("scope"), obj.get("scp")) {
            (Some(v @ Value::String(_)), _) => strings(v, true),
            (_, Some(v)) => strings(v, true),
            _ => Vec::new(),
        };
        let roles = issuer
            .cfg
            .roles_claim
            .as_deref()
            .and_then(|ptr| claims.pointer(ptr))
            .map(|v| strings(v, false))
            .unwrap_or_default();
        let token_id = obj.get("jti").and_then(Value::as_str).map(str::to_owned);
        Ok(Claims {
            issuer: Arc::clone(&issuer.name),
            admin_issuer: issuer.cfg.admin,
            subject,
            tenant,
            scopes,
            roles,
            token_id,
            expires_at_secs: expires_at,
        })
    }

    /// Refreshes several issuers concurrently.
    async fn refresh_many(self: &Arc<Self>, indices: &[usize]) {
        let mut set = JoinSet::new();
        for &idx in indices {
            let this = Arc::clone(self);
            set.spawn(async move { this.refresh(idx, Trigger::Scheduled).await });
        }
        while set.join_next().await.is_some() {}
    }

    /// Fetches issuer `idx`'s JWKS (discovering its location first if needed) and swaps the keys
    /// in. Single flight per issuer; on-demand fetches happen at most once per
    /// `jwks_min_refresh_secs`, and not at all if another fetch succeeded meanwhile.
    async fn refresh(&self, idx: usize, trigger: Trigger) {
        let issuer = &self.issuers[idx];
        let mut st = issuer.refresh.lock().await;
        if let Trigger::OnDemand { seen_generation } = trigger {
            if issuer.generation.load(Ordering::Acquire) != seen_generation {
                return;
            }
            let window = Duration::from_secs(self.config.jwks_min_refresh_secs);
            if st.last_on_demand.is_some_and(|t| t.elapsed() < window) {
                tracing::debug!(issuer = %issuer.name, "JWKS refresh skipped: rate-limited");
                return;
            }
            st.last_on_demand = Some(Instant::now());
        }

        let result = match st.jwks_uri.clone() {
            Some(uri) => Ok(uri),
            None => jwks::discover(&self.http, &issuer.cfg.issuer).await,
        };
        let result = match result {
            Ok(uri) => {
                let fetched = jwks::fetch_jwks(&self.http, &uri, &issuer.cfg.issuer).await;
                if fetched.is_ok() {
                    st.jwks_uri = Some(uri);
                } else if issuer.cfg.jwks_uri.is_none() {
                    st.jwks_uri = None; // rediscover next time
                }
                fetched
            }
            Err(e) => Err(e),
        };

        let max_age = self.config.jwks_max_age_secs;
        let next = match result {
            Ok(fetched) => {
                let count = fetched.keys.len();
                issuer.keys.store(Some(Arc::new(fetched.keys)));
                issuer.generation.fetch_add(1, Ordering::AcqRel);
                st.failures = 0;
                tracing::debug!(issuer = %issuer.name, keys = count, "JWKS refreshed");
                if count == 0 {
                    tracing::warn!(issuer = %issuer.name, "JWKS has no usable asymmetric signing key; tokens of this issuer will be refused");
                }
                let period = fetched.max_age.map_or(max_age, |m| m.max(60).min(max_age));
                Duration::from_secs(period)
            }
            Err(error) => {
                st.failures = st.failures.saturating_add(1);
                let have_keys = issuer.keys.load().is_some();
                tracing::warn!(
                    issuer = %issuer.name,
                    error,
                    failures = st.failures,
                    "JWKS fetch failed; {}",
                    if have_keys { "keeping the previous keys" } else { "tokens of this issuer are refused until a fetch succeeds" }
                );
                let base = self.config.jwks_min_refresh_secs.max(5);
                let shift = (st.failures - 1).min(16);
                Duration::from_secs(base.saturating_mul(1 << shift).min(max_age))
            }
        };
        *issuer.next_due.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now() + next;
    }

    fn earliest_due(&self) -> Option<Instant> {
        self.issuers
            .iter()
            .map(|i| *i.next_due.lock().unwrap_or_else(|e| e.into_inner()))
            .min()
    }

    fn due_now(&self) -> Vec<usize> {
        let now = Instant::now();
        self.issuers
            .iter()
            .enumerate()
            .filter(|(_, i)| *i.next_due.lock().unwrap_or_else(|e| e.into_inner()) <= now)
            .map(|(idx, _)| idx)
            .collect()
    }
}

async fn refresh_loop(weak: Weak<Verifier>, shutdown: CancellationToken) {
    loop {
        let Some(due) = weak.upgrade().and_then(|v| v.earliest_due()) else {
            return;
        };
        // Re-check at least once a minute so a dropped verifier ends the task.
        let wake = due.min(Instant::now() + Duration::from_secs(60));
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep_until(wake) => {}
        }
        let Some(this) = weak.upgrade() else {
            return;
        };
        let due = this.due_now();
        if due.is_empty() {
            continue;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = this.refresh_many(&due) => {}
        }
    }
}
