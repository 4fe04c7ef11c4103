//! End-to-end checks of the verifier against a real local authorization server (metadata + JWKS
//! over HTTP) with keys generated per test.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RSA_PKCS1_SHA256,
    RSA_PSS_SHA256,
};
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use palisade_oauth::{Claims, IssuerConfig, OAuthConfig, TokenError, Verifier};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const RESOURCE: &str = "https://gateway.example/mcp";
const SUB: &str = "user-7f3a9c-subject";
const TENANT: &str = "tenant-acme-42";
const JTI: &str = "jti-5e1d-unique";

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

// ---------------------------------------------------------------------------------------------
// Keys

#[derive(Clone)]
enum Signer {
    Ec(Arc<Vec<u8>>),
    Ed(Arc<Vec<u8>>),
    Rsa(Arc<RsaKeyPair>),
}

#[derive(Clone)]
struct TestKey {
    kid: String,
    alg: &'static str,
    jwk: Value,
    signer: Signer,
}

fn shared_rsa() -> Arc<RsaKeyPair> {
    static KEY: OnceLock<Arc<RsaKeyPair>> = OnceLock::new();
    KEY.get_or_init(|| Arc::new(RsaKeyPair::generate(KeySize::Rsa2048).unwrap()))
        .clone()
}

impl TestKey {
    fn es256(kid: &str) -> TestKey {
        let doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref()).unwrap();
        let point = pair.public_key().as_ref();
        assert_eq!(point.len(), 65);
        assert_eq!(point[0], 4);
        TestKey {
            kid: kid.into(),
            alg: "ES256",
            jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
                        "x": b64(&point[1..33]), "y": b64(&point[33..65])}),
            signer: Signer::Ec(Arc::new(doc.as_ref().to_vec())),
        }
    }

    fn eddsa(kid: &str) -> TestKey {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
        TestKey {
            kid: kid.into(),
            alg: "EdDSA",
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA",
                        "x": b64(pair.public_key().as_ref())}),
            signer: Signer::Ed(Arc::new(doc.as_ref().to_vec())),
        }
    }

    /// RSA keys share one generated key pair (generation is slow); the JWK names `alg` only when
    /// `with_alg`.
    fn rsa(kid: &str, alg: &'static str, with_alg: bool) -> TestKey {
        let pair = shared_rsa();
        let public = pair.public_key();
        let mut jwk = json!({"kty": "RSA", "kid": kid,
            "n": b64(public.modulus().big_endian_without_leading_zero()),
            "e": b64(public.exponent().big_endian_without_leading_zero())});
        if with_alg {
            jwk["alg"] = json!(alg);
        }
        TestKey {
            kid: kid.into(),
            alg,
            jwk,
            signer: Signer::Rsa(pair),
        }
    }

    /// A token built by jsonwebtoken's own encoder (EC/Ed) or by hand (RSA).
    fn token(&self, claims: &Value) -> String {
        match &self.signer {
            Signer::Ec(der) => {
                let mut h = Header::new(Algorithm::ES256);
                h.kid = Some(self.kid.clone());
                jsonwebtoken::encode(&h, claims, &EncodingKey::from_ec_der(der)).unwrap()
            }
            Signer::Ed(der) => {
                let mut h = Header::new(Algorithm::EdDSA);
                h.kid = Some(self.kid.clone());
                jsonwebtoken::encode(&h, claims, &EncodingKey::from_ed_der(der)).unwrap()
            }
            Signer::Rsa(_) => self.sign_with(
                &json!({"alg": self.alg, "typ": "JWT", "kid": self.kid}),
                claims,
            ),
        }
    }

    /// A token with an arbitrary header, signed with this key under this key's algorithm.
    fn sign_with(&self, header: &Value, claims: &Value) -> String {
        let msg = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        format!("{msg}.{}", self.signature(msg.as_bytes()))
    }

    fn signature(&self, msg: &[u8]) -> String {
        match &self.signer {
            Signer::Ec(der) => {
                jsonwebtoken::crypto::sign(msg, &EncodingKey::from_ec_der(der), Algorithm::ES256)
                    .unwrap()
            }
            Signer::Ed(der) => {
                jsonwebtoken::crypto::sign(msg, &EncodingKey::from_ed_der(der), Algorithm::EdDSA)
                    .unwrap()
            }
            Signer::Rsa(pair) => {
                let mut sig = vec![0; pair.public_modulus_len()];
                let padding: &'static dyn aws_lc_rs::signature::RsaEncoding = if self.alg == "PS256"
                {
                    &RSA_PSS_SHA256
                } else {
                    &RSA_PKCS1_SHA256
                };
                pair.sign(padding, &SystemRandom::new(), msg, &mut sig)
                    .unwrap();
                b64(&sig)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A local authorization server: metadata at `/.well-known/oauth-authorization-server[/<path>]`,
// JWKS at `/jwks` and `/<path>/jwks`. Issuers are `<base>` and `<base>/<path>`.

#[derive(Default)]
struct IdpState {
    base: OnceLock<String>,
    jwks: Mutex<HashMap<String, Vec<Value>>>,
    jwks_fetches: Mutex<HashMap<String, usize>>,
    metadata_fetches: AtomicUsize,
    down: AtomicBool,
}

struct Idp {
    base: String,
    state: Arc<IdpState>,
    server: tokio::task::JoinHandle<()>,
}

fn json_response(v: Value) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "public, max-age=600"),
        ],
        v.to_string(),
    )
        .into_response()
}

fn metadata(s: &IdpState, path: &str) -> Response {
    if s.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    s.metadata_fetches.fetch_add(1, Ordering::SeqCst);
    let base = s.base.get().unwrap();
    if !s.jwks.lock().unwrap().contains_key(path) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let (issuer, jwks_uri) = if path.is_empty() {
        (base.clone(), format!("{base}/jwks"))
    } else {
        (format!("{base}/{path}"), format!("{base}/{path}/jwks"))
    };
    json_response(json!({"issuer": issuer, "jwks_uri": jwks_uri,
                         "response_types_supported": ["code"]}))
}

fn jwks(s: &IdpState, path: &str) -> Response {
    if s.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    *s.jwks_fetches
        .lock()
        .unwrap()
        .entry(path.to_owned())
        .or_default() += 1;
    match s.jwks.lock().unwrap().get(path) {
        Some(keys) => json_response(json!({ "keys": keys })),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

impl Idp {
    async fn start() -> Idp {
        let state = Arc::new(IdpState::default());
        let app =
            Router::new()
                .route(
                    "/.well-known/oauth-authorization-server",
                    get(|State(s): State<Arc<IdpState>>| async move { metadata(&s, "") }),
                )
                .route(
                    "/.well-known/oauth-authorization-server/{path}",
                    get(
                        |State(s): State<Arc<IdpState>>, Path(p): Path<String>| async move {
                            metadata(&s, &p)
                        },
                    ),
                )
                .route(
                    "/jwks",
                    get(|State(s): State<Arc<IdpState>>| async move { jwks(&s, "") }),
                )
                .route(
                    "/{path}/jwks",
                    get(
                        |State(s): State<Arc<IdpState>>, Path(p): Path<String>| async move {
                            jwks(&s, &p)
                        },
                    ),
                )
                .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let base = format!("http://{addr}");
        state.base.set(base.clone()).unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Idp {
            base,
            state,
            server,
        }
    }

    fn issuer(&self, path: &str) -> String {
        if path.is_empty() {
            self.base.clone()
        } else {
            format!("{}/{path}", self.base)
        }
    }

    fn set_keys(&self, path: &str, keys: &[&TestKey]) {
        let jwks: Vec<Value> = keys.iter().map(|k| k.jwk.clone()).collect();
        self.state
            .jwks
            .lock()
            .unwrap()
            .insert(path.to_owned(), jwks);
    }

    fn set_raw_keys(&self, path: &str, keys: Vec<Value>) {
        self.state
            .jwks
            .lock()
            .unwrap()
            .insert(path.to_owned(), keys);
    }

    fn add_key(&self, path: &str, key: &TestKey) {
        self.state
            .jwks
            .lock()
            .unwrap()
            .entry(path.to_owned())
            .or_default()
            .push(key.jwk.clone());
    }

    fn jwks_fetches(&self, path: &str) -> usize {
        self.state
            .jwks_fetches
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    fn total_fetches(&self) -> usize {
        self.state
            .jwks_fetches
            .lock()
            .unwrap()
            .values()
            .sum::<usize>()
            + self.state.metadata_fetches.load(Ordering::SeqCst)
    }

    fn stop(&self) {
        self.state.down.store(true, Ordering::SeqCst);
        self.server.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn issuer_cfg(issuer: &str) -> IssuerConfig {
    let mut c = IssuerConfig::new(issuer);
    c.tenant_claim = Some("/tenant_id".into());
    c
}

fn oauth(issuers: Vec<IssuerConfig>) -> OAuthConfig {
    OAuthConfig::new(RESOURCE, issuers)
}

async fn started(cfg: OAuthConfig) -> Arc<Verifier> {
    let v = Arc::new(Verifier::new(cfg, reqwest::Client::new()).unwrap());
    let _task = v.start(CancellationToken::new()).await;
    v
}

fn claims_for(iss: &str) -> Value {
    let t = now();
    json!({"iss": iss, "sub": SUB, "aud": RESOURCE, "exp": t + 600, "iat": t, "nbf": t - 5,
           "tenant_id": TENANT, "jti": JTI, "email": "someone@example.com"})
}

/// The error's Display and Debug contain neither the token (nor any of its parts) nor claim values.
fn assert_clean(err: &TokenError, token: &str, extra: &[&str]) {
    for text in [err.to_string(), format!("{err:?}")] {
        assert!(token.is_empty() || !text.contains(token), "{text}");
        for part in token.split('.').filter(|p| p.len() >= 6) {
            assert!(!text.contains(part), "{text} contains a token part");
        }
        for v in [SUB, TENANT, JTI, "someone@example.com"]
            .iter()
            .chain(extra)
        {
            assert!(!text.contains(v), "{text} contains {v}");
        }
    }
}

async fn expect_err(v: &Verifier, token: &str, extra: &[&str]) -> TokenError {
    let err = v.verify(token).await.expect_err("token must be refused");
    assert_clean(&err, token, extra);
    assert!(!err.is_unavailable());
    err
}

// ---------------------------------------------------------------------------------------------
// Valid tokens

#[tokio::test]
async fn es256_token_with_tenant_claim_scope_and_roles() {
    let idp = Idp::start().await;
    let key = TestKey::es256("es-1");
    idp.set_keys("", &[&key]);
    let mut cfg = issuer_cfg(&idp.issuer(""));
    cfg.roles_claim = Some("/roles".into());
    let v = started(oauth(vec![cfg])).await;

    let mut c = claims_for(&idp.issuer(""));
    c["scope"] = json!("tools:read  tools:call");
    c["roles"] = json!(["admin", "auditor", 7]);
    let claims = v.verify(&key.token(&c)).await.unwrap();
    assert_eq!(
        claims,
        Claims {
            issuer: Arc::from(idp.issuer("").as_str()),
            subject: SUB.into(),
            tenant: Some(TENANT.into()),
            scopes: vec!["tools:read".into(), "tools:call".into()],
            roles: vec!["admin".into(), "auditor".into()],
            token_id: Some(JTI.into()),
            expires_at: c["exp"].as_i64().unwrap(),
        }
    );
    let required = ["tools:read".to_owned(), "admin:write".to_owned()];
    assert_eq!(claims.missing_scopes(&required), ["admin:write"]);
}

#[tokio::test]
async fn eddsa_token_with_nested_tenant_pointer_and_scp() {
    let idp = Idp::start().await;
    let key = TestKey::eddsa("ed-1");
    idp.set_keys("tenant1", &[&key]);
    // Discovery through the RFC 8414 path-insertion form: issuer `<base>/tenant1`.
    let mut cfg = IssuerConfig::new(idp.issuer("tenant1"));
    cfg.tenant_claim = Some("/org/id".into());
    cfg.roles_claim = Some("/realm_access/role".into());
    let v = started(oauth(vec![cfg])).await;
    assert_eq!(idp.jwks_fetches("tenant1"), 1);

    let mut c = claims_for(&idp.issuer("tenant1"));
    c["org"] = json!({"id": "org-nested-9"});
    c["scp"] = json!(["files:read", "files:write"]);
    c["realm_access"] = json!({"role": "editor"});
    let claims = v.verify(&key.token(&c)).await.unwrap();
    assert_eq!(claims.tenant.as_deref(), Some("org-nested-9"));
    assert_eq!(claims.scopes, ["files:read", "files:write"]);
    assert_eq!(claims.roles, ["editor"]);

    // `scp` as a space-separated string.
    c["scp"] = json!("a b");
    assert_eq!(v.verify(&key.token(&c)).await.unwrap().scopes, ["a", "b"]);
}

#[tokio::test]
async fn rsa_tokens_and_issuer_per_tenant() {
    let idp = Idp::start().await;
    let rs = TestKey::rsa("rsa-plain", "RS256", false); // JWK without `alg`
    let ps = TestKey::rsa("rsa-pss", "PS256", true);
    idp.set_keys("", &[&rs, &ps]);
    let mut cfg = IssuerConfig::new(idp.issuer(""));
    cfg.tenant = Some("acme-by-issuer".into());
    cfg.jwks_uri = Some(format!("{}/jwks", idp.base));
    let v = started(oauth(vec![cfg])).await;
    assert_eq!(
        idp.state.metadata_fetches.load(Ordering::SeqCst),
        0,
        "jwks_uri configured: no discovery"
    );

    let mut c = claims_for(&idp.issuer(""));
    c["tenant_id"] = json!("ignored-for-issuer-per-tenant");
    for key in [&rs, &ps] {
        let claims = v.verify(&key.token(&c)).await.unwrap();
        assert_eq!(claims.tenant.as_deref(), Some("acme-by-issuer"));
        assert_eq!(claims.subject, SUB);
    }
    // The PS256 JWK pins its alg: an RS256 token under its kid is refused.
    let wrong = ps.sign_with(&json!({"alg": "RS256", "kid": "rsa-pss"}), &c);
    assert_eq!(expect_err(&v, &wrong, &[]).await, TokenError::Algorithm);
}

#[tokio::test]
async fn missing_or_non_string_tenant_claim_gives_none() {
    let idp = Idp::start().await;
    let key = TestKey::es256("k");
    idp.set_keys("", &[&key]);
    let v = started(oauth(vec![issuer_cfg(&idp.issuer(""))])).await;
    let mut c = claims_for(&idp.issuer(""));
    c.as_object_mut().unwrap().remove("tenant_id");
    assert_eq!(v.verify(&key.token(&c)).await.unwrap().tenant, None);
    c["tenant_id"] = json!(42);
    assert_eq!(v.verify(&key.token(&c)).await.unwrap().tenant, None);
}

// ---------------------------------------------------------------------------------------------
// Time and audience

#[tokio::test]
async fn expiry_nbf_and_leeway() {
    let idp = Idp::start().await;
    let key = TestKey::es256("k");
    idp.set_keys("", &[&key]);
    let v = started(oauth(vec![issuer_cfg(&idp.issuer(""))])).await; // leeway 30 s
    let base = claims_for(&idp.issuer(""));
    let t = now();

    let mut c = base.clone();
    c["exp"] = json!(t - 120);
    assert_eq!(
        expect_err(&v, &key.token(&c), &[]).await,
        TokenError::Expired
    );

    let mut c = base.clone();
    c["nbf"] = json!(t + 120);
    assert_eq!(
        expect_err(&v, &key.token(&c), &[]).await,
        TokenError::NotYetValid
    );

    // Within the leeway on both sides.
    let mut c = base.clone();
    c["exp"] = json!(t - 10);
    v.verify(&key.token(&c)).await.unwrap();
    let mut c = base.clone();
    c["nbf"] = json!(t + 10);
    v.verify(&key.token(&c)).await.unwrap();

    // exp is always required.
    let mut c = base.clone();
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(
        expect_err(&v, &key.token(&c), &[]).await,
        TokenError::MissingClaim("exp".into())
    );
}

#[tokio::test]
async fn audience_must_contain_the_resource() {
    let idp = Idp::start().await;
    let key = TestKey::es256("k");
    idp.set_keys("", &[&key]);
    let v = started(oauth(vec![issuer_cfg(&idp.issuer(""))])).await;
    let mut c = claims_for(&idp.issuer(""));

    c["aud"] = json!("https://other-resource.example/secret-aud");
    let err = expect_err(&v, &key.token(&c), &["other-resource"]).await;
    assert_eq!(err, TokenError::Audience);

    c["aud"] = json!(["https://other-resource.example/", RESOURCE]);
    v.verify(&key.token(&c)).await.unwrap();

    c.as_object_mut().unwrap().remove("aud");
    assert_eq!(
        expect_err(&v, &key.token(&c), &[]).await,
        TokenError::MissingClaim("aud".into())
    );
}

// ---------------------------------------------------------------------------------------------
// Issuers, algorithms and keys

#[tokio::test]
async fn unknown_issuer_is_refused() {
    let idp = Idp::start().await;
    let key = TestKey::es256("k");
    idp.set_keys("", &[&key]);
    let v = started(oauth(vec![issuer_cfg(&idp.issuer(""))])).await;
    let fetches = idp.total_fetches();
    let c = claims_for("https://evil-issuer.example");
    let err = expect_err(&v, &key.token(&c), &["evil-issuer"]).await;
    assert_eq!(err, TokenError::UnknownIssuer);
    assert_eq!(idp.total_fetches(), fetches);

    let mut c = claims_for("x");
    c.as_object_mut().unwrap().remove("iss");
    assert_eq!(
        expect_err(&v, &key.token(&c), &[]).await,
        TokenError::MissingClaim("iss".into())
    );
}

#[tokio::test]
async fn alg_none_and_hs256_are_refused() {
    let idp = Idp::start().await;
    let key = TestKey::es256("k");
    idp.set_keys("", &[&key]);
    let v = started(oauth(vec![issuer_cfg(&idp.issuer(""))])).await;
    let payload = b64(claims_for(&idp.issuer("")).to_string().as_bytes());

    for alg in ["none", "None", "NONE"] {
        let header = b64(json!({"alg": alg, "typ": "JWT"}).to_string().as_bytes());
        let token = format!("{header}.{payload}.");
        assert_eq!(expect_err(&v, &token, &[]).await, TokenError::Algorithm);
    }

    // HS256 "signed" with the issuer's public key, as published (the classic key-confusion attack),
    // both over the JWK text and over the raw EC point.
    let point = {
        let x = URL_SAFE_NO_PAD
            .decode(key.jwk["x"].as_str().unwrap())
            .unwrap();
        let y = URL_SAFE_NO_PAD
            .decode(key.jwk["y"].as_str().unwrap())
            .unwrap();
        [&[4u8][..], &x, &y].concat()
    };
    for secret in [key.jwk.to_string().into_bytes(), point] {
        let header = b64(json!({"alg": "HS256", "typ": "JWT", "kid": "k"})
            .to_string()
            .as_bytes());
        let msg = format!("{header}.{payload}");
        let mac_key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &secret);
        let tag = aws_lc_rs::hmac::sign(&mac_key, msg.as_bytes());
        let token = format!("{msg}.{}", b64(tag.as_ref()));
        assert_eq!(expect_err(&v, &token, &[]).await, TokenError::Algorithm);
    }
}

#[tokio::test]
async fn algorithm_must_be_allowed_for_the_issuer_and_fit_the_key() {
    let idp = Idp::start().await;
    let es = TestKey::es256("es");
    let ed = TestKey::eddsa("ed");
    idp.set_keys("", &[&es, &ed]);
    let mut cfg = issuer_cfg(&idp.issuer(""));
    cfg.algorithms = vec!["ES256".into()];
    let v = started(oauth(vec![cfg])).await;
    let c = claims_for(&idp.issuer(""));

    v.verify(&es.token(&c)).await.unwrap();
    // EdDSA is not in this issuer's allow-list.
    assert_eq!(
        expect_err(&v, &ed.token(&c), &[]).await,
        TokenError::Algorithm
    );

    // A header claiming ES256 under the Ed25519 key's kid: key type does not fit.
    let idp2 = Idp::start().await;
    idp2.set_keys("", &[&es, &ed]);
    let v2 = started(oauth(vec![issuer_cfg(&idp2.issuer(""))])).await;
    let c2 = claims_for(&idp2.issuer(""));
    let confused = es.sign_with(&json!({"alg": "ES256", "kid": "ed"}), &c2);
    assert_eq!(expect_err(&v2, &confused, &[]).await, TokenError::Algorithm);
    // And EdDSA under the EC key's kid.
    let confused = ed.sign_with(&json!({"alg": "EdDSA", "kid": "es"}), &c2);
    assert_eq!(expect_err(&v2, &confused, &[]).await, TokenError::Algorithm);
}

#[tokio::test]
async fn unknown_kid_refresh_is_rate_limited_and_single_flight() {
    let idp = Idp::start().await;
    let key = TestKey::es256("known");
    idp.set_keys("", &[&key]);
    let v = started(oauth(vec![issuer_cfg(&idp.issuer(""))])).await; // min refresh 30 s
    assert_eq!(idp.jwks_fetches(""), 1);
    let c = claims_for(&idp.issuer(""));
    let ghost = TestKey::es256("ghost-kid-1");

    let err = expect_err(&v, &ghost.token(&c), &["ghost-kid"]).await;
    assert_eq!(err, TokenError::UnknownKey);
    assert_eq!(idp.jwks_fetches(""), 2, "first unknown kid refreshes once");

    let ghost2 = TestKey::es256("ghost-kid-2");
    assert_eq!(
        expect_err(&v, &ghost2.token(&c), &[]).await,
        TokenError::UnknownKey
    );
    assert_eq!(
        idp.jwks_fetches(""),
        2,
        "second unknown kid within the window: no refetch"
    );

    let mut tasks = Vec::new();
    for i in 0..16 {
        let v = v.clone();
        let t = TestKey::es256(&format!("ghost-many-{i}")).token(&c);
        tasks.push(tokio::spawn(async move { v.verify(&t).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap_err(), TokenError::UnknownKey);
    }
    assert_eq!(idp.jwks_fetches(""), 2);
    // The known key still works.
    v.verify(&key.token(&c)).await.unwrap();
}

#[tokio::test]
async fn concurrent_unknown_kids_cause_one_fetch() {
    let idp = Idp::start().await;
    let key = TestKey::es256("known");
    idp.set_keys("", &[&key]);
    let v = started(oauth(vec![issuer_cfg(&idp.issuer(""))])).await;
    let c = claims_for(&idp.issuer(""));
    let mut tasks = Vec::new();
    for i in 0..16 {
        let v = v.clone();
        let t = TestKey::es256(&format!("burst-{i}")).token(&c);
        tasks.push(tokio::spawn(async move { v.verify(&t).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap_err(), TokenError::UnknownKey);
    }
    assert_eq!(idp.jwks_fetches(""), 2, "start + one single-flight refresh");
}

#[tokio::test]
async fn rotated_key_is_picked_up_on_first_use() {
    let idp = Idp::start().await;
    let old = TestKey::es256("2026-01");
    idp.set_keys("", &[&old]);
    let mut cfg = oauth(vec![issuer_cfg(&idp.issuer(""))]);
    cfg.jwks_min_refresh_secs = 1;
    let v = started(cfg).await;
    let c = claims_for(&idp.issuer(""));
    v.verify(&old.token(&c)).await.unwrap();

    let new = TestKey::eddsa("2026-02");
    idp.add_key("", &new);
    v.verify(&new.token(&c)).await.unwrap();
    assert_eq!(idp.jwks_fetches(""), 2);

    // A second rotation right away is inside the refresh window …
    let newer = TestKey::es256("2026-03");
    idp.add_key("", &newer);
    assert_eq!(
        expect_err(&v, &newer.token(&c), &[]).await,
        TokenError::UnknownKey
    );
    // … and is picked up once the window has passed.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    v.verify(&newer.token(&c)).await.unwrap();
    assert_eq!(idp.jwks_fetches(""), 3);
    v.verify(&old.token(&c)).await.unwrap();
}

#[tokio::test]
async fn another_issuers_key_never_verifies() {
    let idp = Idp::start().await;
    let a = TestKey::es256("a-key");
    let b = TestKey::es256("b-key");
    idp.set_keys("", &[&a]);
    idp.set_keys("b", &[&b]);
    let v = started(oauth(vec![
        issuer_cfg(&idp.issuer("")),
        issuer_cfg(&idp.issuer("b")),
    ]))
    .await;
    let ca = claims_for(&idp.issuer(""));
    let cb = claims_for(&idp.issuer("b"));
    v.verify(&a.token(&ca)).await.unwrap();
    v.verify(&b.token(&cb)).await.unwrap();

    // B's key, B's kid, iss = A: the kid is not in A's key set.
    assert_eq!(
        expect_err(&v, &b.token(&ca), &[]).await,
        TokenError::UnknownKey
    );
    // B's key, no kid, iss = A: A's only key is tried, and fails.
    let no_kid = b.sign_with(&json!({"alg": "ES256", "typ": "JWT"}), &ca);
    assert_eq!(expect_err(&v, &no_kid, &[]).await, TokenError::Signature);
    // B's key claiming A's kid.
    let stolen_kid = b.sign_with(&json!({"alg": "ES256", "kid": "a-key"}), &ca);
    assert_eq!(
        expect_err(&v, &stolen_kid, &[]).await,
        TokenError::Signature
    );
    // A token without kid is fine when the issuer has exactly one fitting key.
    let a_no_kid = a.sign_with(&json!({"alg": "ES256"}), &ca);
    v.verify(&a_no_kid).await.unwrap();
}

#[tokio::test]
async fn tampered_payload_fails_the_signature() {
    let idp = Idp::start().await;
    let es = TestKey::es256("es");
    let ed = TestKey::eddsa("ed");
    let rs = TestKey::rsa("rs", "RS256", true);
    idp.set_keys("", &[&es, &ed, &rs]);
    let v = started(oauth(vec![issuer_cfg(&idp.issuer(""))])).await;
    let c = claims_for(&idp.issuer(""));
    for key in [&es, &ed, &rs] {
        let token = key.token(&c);
        let mut forged = c.clone();
        forged["tenant_id"] = json!("tenant-victim-77");
        let parts: Vec<&str> = token.split('.').collect();
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            b64(forged.to_string().as_bytes()),
            parts[2]
        );
        let err = expect_err(&v, &tampered, &["tenant-victim-77"]).await;
        assert_eq!(err, TokenError::Signature, "{}", key.alg);
    }
}

// ---------------------------------------------------------------------------------------------
// Shape and size

#[tokio::test]
async fn oversized_token_is_refused_before_decoding_or_fetching() {
    let idp = Idp::start().await;
    let key = TestKey::es256("k");
    idp.set_keys("", &[&key]);
    // Not started: any key lookup would fetch.
    let v = Verifier::new(
        oauth(vec![issuer_cfg(&idp.issuer(""))]),
        reqwest::Client::new(),
    )
    .unwrap();
    let mut c = claims_for(&idp.issuer(""));
    c["padding"] = json!("p".repeat(17 * 1024));
    let token = key.token(&c);
    let err = expect_err(&v, &token, &[]).await;
    assert_eq!(
        err,
        TokenError::TooLarge {
            max_bytes: 16 * 1024
        }
    );
    assert_eq!(
        expect_err(&v, &"x".repeat(16 * 1024 + 1), &[]).await,
        TokenError::TooLarge { max_bytes: 16384 }
    );
    assert_eq!(idp.total_fetches(), 0);
}

#[tokio::test]
async fn malformed_tokens() {
    let idp = Idp::start().await;
    let key = TestKey::es256("k");
    idp.set_keys("", &[&key]);
    let v = Verifier::new(
        oauth(vec![issuer_cfg(&idp.issuer(""))]),
        reqwest::Client::new(),
    )
    .unwrap();
    let good = key.token(&claims_for(&idp.issuer("")));
    let parts: Vec<&str> = good.split('.').collect();
    let not_json = b64(b"definitely not json");
    let cases = [
        String::new(),
        "abc".to_owned(),
        format!("{}.{}", parts[0], parts[1]),
        format!("{good}.extra"),
        format!("{}.{}.{}", parts[0], "%%%not-base64%%%", parts[2]),
        format!("{}.{}.{}", "***", parts[1], parts[2]),
        format!("{}.{}.{}", not_json, parts[1], parts[2]),
        format!("{}.{}.{}", parts[0], not_json, parts[2]),
        format!("{}.{}.{}", parts[0], b64(b"[1,2]"), parts[2]),
        format!(".{}.{}", parts[1], parts[2]),
        format!("{} .{}.{}", parts[0], parts[1], parts[2]),
    ];
    for token in &cases {
        let err = expect_err(&v, token, &[]).await;
        assert!(
            matches!(err, TokenError::Malformed(_)),
            "{token:?}: {err:?}"
        );
    }
    // Critical header extensions are refused.
    let crit = key.sign_with(
        &json!({"alg": "ES256", "kid": "k", "crit": ["b64"], "b64": false}),
        &claims_for(&idp.issuer("")),
    );
    assert!(matches!(
        expect_err(&v, &crit, &[]).await,
        TokenError::Malformed(_)
    ));
    assert_eq!(idp.total_fetches(), 0);
}

#[tokio::test]
async fn required_claims_are_enforced() {
    let idp = Idp::start().await;
    let key = TestKey::es256("k");
    idp.set_keys("", &[&key]);
    let mut cfg = issuer_cfg(&idp.issuer(""));
    cfg.required_claims = vec!["email".into(), "azp".into()];
    let v = started(oauth(vec![cfg])).await;
    let mut c = claims_for(&idp.issuer(""));
    c["azp"] = json!("client-1");
    v.verify(&key.token(&c)).await.unwrap();

    c.as_object_mut().unwrap().remove("email");
    let err = expect_err(&v, &key.token(&c), &[]).await;
    assert_eq!(err, TokenError::MissingClaim("email".into()));
    assert!(err.to_string().contains("email"));

    let mut c = claims_for(&idp.issuer(""));
    c["azp"] = json!("client-1");
    c.as_object_mut().unwrap().remove("sub");
    assert_eq!(
        expect_err(&v, &key.token(&c), &[]).await,
        TokenError::MissingClaim("sub".into())
    );
}

// ---------------------------------------------------------------------------------------------
// Availability and the verified-token cache

#[tokio::test]
async fn unreachable_jwks_fails_closed() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let key = TestKey::es256("k");
    // Explicit jwks_uri that nobody serves, and an issuer whose discovery fails.
    let explicit = "https://issuer-explicit.example".to_owned();
    let mut a = issuer_cfg(&explicit);
    a.jwks_uri = Some(format!("http://{closed}/jwks"));
    let discovered = format!("http://{closed}/realm");
    let b = issuer_cfg(&discovered);
    let v = started(oauth(vec![a, b])).await;

    for iss in [&explicit, &discovered] {
        let token = key.token(&claims_for(iss));
        let err = v.verify(&token).await.unwrap_err();
        assert!(err.is_unavailable(), "{err:?}");
        assert_eq!(
            err,
            TokenError::Unavailable {
                issuer: iss.clone()
            }
        );
        assert_clean(&err, &token, &[]);
        assert!(err.to_string().contains("unavailable"));
    }
}

#[tokio::test]
async fn unusable_jwks_entries_are_skipped() {
    let idp = Idp::start().await;
    let key = TestKey::es256("good");
    idp.set_raw_keys(
        "",
        vec![
            json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQ"}),
            json!({"kty": "weird", "kid": "w"}),
            json!("garbage"),
            key.jwk.clone(),
        ],
    );
    let v = started(oauth(vec![issuer_cfg(&idp.issuer(""))])).await;
    let c = claims_for(&idp.issuer(""));
    v.verify(&key.token(&c)).await.unwrap();
    // HS256 under the symmetric entry's kid is refused on the algorithm already.
    let header = b64(json!({"alg": "HS256", "kid": "hmac"})
        .to_string()
        .as_bytes());
    let msg = format!("{header}.{}", b64(c.to_string().as_bytes()));
    let mac = aws_lc_rs::hmac::sign(
        &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, b"secret-secret-secret"),
        msg.as_bytes(),
    );
    let token = format!("{msg}.{}", b64(mac.as_ref()));
    assert_eq!(expect_err(&v, &token, &[]).await, TokenError::Algorithm);
}

#[tokio::test]
async fn verified_tokens_are_cached_until_expiry() {
    let idp = Idp::start().await;
    let key = TestKey::es256("k");
    idp.set_keys("", &[&key]);
    let mut cfg = oauth(vec![issuer_cfg(&idp.issuer(""))]);
    cfg.leeway_secs = 0;
    let v = started(cfg).await;
    let iss = idp.issuer("");

    let long = key.token(&claims_for(&iss));
    let mut c = claims_for(&iss);
    c["exp"] = json!(now() + 2);
    let short = key.token(&c);

    let first = v.verify(&long).await.unwrap();
    v.verify(&short).await.unwrap();
    let fetches = idp.total_fetches();
    idp.stop();

    let t = Instant::now();
    let n = 1000u32;
    for _ in 0..n {
        assert_eq!(v.verify(&long).await.unwrap(), first);
    }
    eprintln!("cached verify: {:?} per call", t.elapsed() / n);
    assert_eq!(
        idp.total_fetches(),
        fetches,
        "cached verification makes no request"
    );

    // The short-lived token expires out of the cache and is then refused.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(expect_err(&v, &short, &[]).await, TokenError::Expired);
    assert_eq!(v.verify(&long).await.unwrap(), first);
}

#[tokio::test]
async fn background_refresh_runs_keeps_keys_on_failure_and_stops_on_cancel() {
    let idp = Idp::start().await;
    let key = TestKey::es256("k");
    idp.set_keys("", &[&key]);
    let mut cfg = oauth(vec![issuer_cfg(&idp.issuer(""))]);
    cfg.jwks_max_age_secs = 1; // smaller than the server's max-age=600, so it wins
    let v = Arc::new(Verifier::new(cfg, reqwest::Client::new()).unwrap());
    let shutdown = CancellationToken::new();
    let task = v.start(shutdown.clone()).await;
    assert_eq!(idp.jwks_fetches(""), 1);
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let fetched = idp.jwks_fetches("");
    assert!(fetched >= 3, "periodic refresh ran {fetched} times");

    // The server fails from now on: the keys already fetched stay in use.
    idp.state.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut c = claims_for(&idp.issuer(""));
    c["jti"] = json!("fresh-token-after-outage");
    v.verify(&key.token(&c)).await.unwrap();

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .unwrap()
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Configuration

fn config_json(issuer: Value) -> Value {
    json!({"resource": RESOURCE, "issuers": [issuer]})
}

fn parse(v: Value) -> Result<OAuthConfig, String> {
    serde_json::from_value::<OAuthConfig>(v).map_err(|e| e.to_string())
}

#[test]
fn config_defaults_and_unknown_keys() {
    let cfg = parse(config_json(
        json!({"issuer": "https://idp.example", "tenant_claim": "/tid"}),
    ))
    .unwrap();
    assert_eq!(cfg.leeway_secs, 30);
    assert_eq!(cfg.jwks_min_refresh_secs, 30);
    assert_eq!(cfg.jwks_max_age_secs, 3600);
    assert_eq!(cfg.max_token_bytes, 16384);
    assert_eq!(
        cfg.issuers[0].algorithms,
        ["RS256", "PS256", "ES256", "EdDSA"]
    );
    cfg.validate().unwrap();

    let err = parse(json!({"resource": RESOURCE, "issuers": [], "leway_secs": 1})).unwrap_err();
    assert!(err.contains("leway_secs"), "{err}");
    let err = parse(config_json(
        json!({"issuer": "https://idp.example", "tenant_claim": "/t", "tennant": "x"}),
    ))
    .unwrap_err();
    assert!(err.contains("tennant"), "{err}");
}

#[test]
fn config_validation_rejects_symmetric_algorithms_and_tenant_ambiguity() {
    let check = |issuer: Value| parse(config_json(issuer)).unwrap().validate();

    for alg in ["HS256", "none", "RS384"] {
        let err = check(json!({"issuer": "https://idp.example", "tenant_claim": "/t", "algorithms": ["ES256", alg]})).unwrap_err();
        assert!(
            err.contains("oauth.issuers[0].algorithms") && err.contains(alg),
            "{err}"
        );
    }
    let err =
        check(json!({"issuer": "https://idp.example", "tenant_claim": "/t", "tenant": "acme"}))
            .unwrap_err();
    assert!(
        err.contains("tenant_claim") && err.contains("tenant"),
        "{err}"
    );
    let err = check(json!({"issuer": "https://idp.example"})).unwrap_err();
    assert!(err.contains("exactly one of tenant_claim"), "{err}");
    let err =
        check(json!({"issuer": "https://idp.example", "tenant_claim": "tenant_id"})).unwrap_err();
    assert!(err.contains("JSON pointer"), "{err}");
    let err = check(json!({"issuer": "https://idp.example", "tenant": "a", "jwks_uri": "http://idp.example/jwks"})).unwrap_err();
    assert!(err.contains("jwks_uri") && err.contains("https"), "{err}");
    let err = check(json!({"issuer": "https://idp.example", "tenant": "a", "algorithms": []}))
        .unwrap_err();
    assert!(err.contains("algorithms"), "{err}");
    check(json!({"issuer": "http://127.0.0.1:8080/realm", "tenant": "a"})).unwrap();

    let mut cfg = parse(config_json(
        json!({"issuer": "https://idp.example", "tenant": "a"}),
    ))
    .unwrap();
    cfg.resource = "https://gw.example/mcp#frag".into();
    assert!(cfg.validate().unwrap_err().contains("oauth.resource"));
    let mut cfg = parse(config_json(
        json!({"issuer": "https://idp.example", "tenant": "a"}),
    ))
    .unwrap();
    cfg.jwks_min_refresh_secs = 0;
    assert!(
        cfg.validate()
            .unwrap_err()
            .contains("jwks_min_refresh_secs")
    );

    let bad = parse(config_json(
        json!({"issuer": "https://idp.example", "tenant": "a", "algorithms": ["HS256"]}),
    ))
    .unwrap();
    let err = Verifier::new(bad, reqwest::Client::new()).unwrap_err();
    assert!(err.to_string().contains("HS256"), "{err}");
}
