//! Test support: a local identity provider and signing keys. Not for production; compiled only
//! with the `testing` feature.
//!
//! [`TestKey`] generates an ES256, EdDSA or RSA key, exports its public JWK and signs tokens
//! (also with arbitrary headers, for attacks). [`Idp`] is a small authorization server on a
//! loopback port serving RFC 8414 metadata at `/.well-known/oauth-authorization-server[/<path>]`
//! and the JWKS at `/jwks` and `/<path>/jwks`; its issuers are `<base>` and `<base>/<path>`.
//!
//! The server runs as a task on the Tokio runtime that calls [`Idp::start`]. A test that blocks
//! that runtime's thread while another process talks to the server (a gateway fetching keys at
//! start-up) needs a multi-thread runtime.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

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
use serde_json::{Value, json};

/// Unpadded base64url, as used in JWTs and JWKs.
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// A compact JWS of `header` and `claims` with an empty signature (for `alg: none` attacks).
pub fn unsigned_token(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

/// A compact JWS of `header` and `claims` with an HMAC-SHA256 tag under `secret` (for
/// key-confusion attacks: HS256 "signed" with a public key).
pub fn hs256_token(secret: &[u8], header: &Value, claims: &Value) -> String {
    let msg = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, msg.as_bytes());
    format!("{msg}.{}", b64(tag.as_ref()))
}

// ---------------------------------------------------------------------------------------------
// Keys

#[derive(Clone)]
enum Signer {
    Ec(Arc<Vec<u8>>),
    Ed(Arc<Vec<u8>>),
    Rsa(Arc<RsaKeyPair>),
}

/// A signing key with its public JWK.
#[derive(Clone)]
pub struct TestKey {
    /// The key id, in the JWK and in the headers of [`TestKey::token`].
    pub kid: String,
    /// The JWS algorithm this key signs with.
    pub alg: &'static str,
    /// The public key as a JWK.
    pub jwk: Value,
    signer: Signer,
}

fn shared_rsa() -> Arc<RsaKeyPair> {
    static KEY: OnceLock<Arc<RsaKeyPair>> = OnceLock::new();
    KEY.get_or_init(|| Arc::new(RsaKeyPair::generate(KeySize::Rsa2048).expect("RSA key")))
        .clone()
}

impl TestKey {
    /// A fresh P-256 key for ES256.
    pub fn es256(kid: &str) -> TestKey {
        let doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .expect("EC key");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref())
            .expect("EC key");
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

    /// A fresh Ed25519 key for EdDSA.
    pub fn eddsa(kid: &str) -> TestKey {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("Ed25519 key");
        let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).expect("Ed25519 key");
        TestKey {
            kid: kid.into(),
            alg: "EdDSA",
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA",
                        "x": b64(pair.public_key().as_ref())}),
            signer: Signer::Ed(Arc::new(doc.as_ref().to_vec())),
        }
    }

    /// An RSA key for `alg` (`RS256` or `PS256`). All RSA keys share one generated key pair
    /// (generation is slow); the JWK names `alg` only when `with_alg`.
    pub fn rsa(kid: &str, alg: &'static str, with_alg: bool) -> TestKey {
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

    /// The public key's raw bytes: the uncompressed point (EC), the 32 bytes (Ed25519) or the
    /// modulus (RSA).
    pub fn public_bytes(&self) -> Vec<u8> {
        let field = |name: &str| {
            URL_SAFE_NO_PAD
                .decode(self.jwk[name].as_str().expect("JWK field"))
                .expect("JWK base64url")
        };
        match &self.signer {
            Signer::Ec(_) => [&[4u8][..], &field("x"), &field("y")].concat(),
            Signer::Ed(_) => field("x"),
            Signer::Rsa(_) => field("n"),
        }
    }

    /// A token for `claims` with header `{alg, typ: JWT, kid}`, built by jsonwebtoken's own
    /// encoder (EC/Ed) or by hand (RSA).
    pub fn token(&self, claims: &Value) -> String {
        match &self.signer {
            Signer::Ec(der) => {
                let mut h = Header::new(Algorithm::ES256);
                h.kid = Some(self.kid.clone());
                jsonwebtoken::encode(&h, claims, &EncodingKey::from_ec_der(der)).expect("sign")
            }
            Signer::Ed(der) => {
                let mut h = Header::new(Algorithm::EdDSA);
                h.kid = Some(self.kid.clone());
                jsonwebtoken::encode(&h, claims, &EncodingKey::from_ed_der(der)).expect("sign")
            }
            Signer::Rsa(_) => self.sign_with(
                &json!({"alg": self.alg, "typ": "JWT", "kid": self.kid}),
                claims,
            ),
        }
    }

    /// A token with an arbitrary header, signed with this key under this key's algorithm.
    pub fn sign_with(&self, header: &Value, claims: &Value) -> String {
        let msg = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        format!("{msg}.{}", self.signature(msg.as_bytes()))
    }

    /// The base64url signature of `msg` under this key's algorithm.
    pub fn signature(&self, msg: &[u8]) -> String {
        match &self.signer {
            Signer::Ec(der) => {
                jsonwebtoken::crypto::sign(msg, &EncodingKey::from_ec_der(der), Algorithm::ES256)
                    .expect("sign")
            }
            Signer::Ed(der) => {
                jsonwebtoken::crypto::sign(msg, &EncodingKey::from_ed_der(der), Algorithm::EdDSA)
                    .expect("sign")
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
                    .expect("sign");
                b64(&sig)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A local authorization server

#[derive(Default)]
struct IdpState {
    base: OnceLock<String>,
    jwks: Mutex<HashMap<String, Vec<Value>>>,
    jwks_fetches: Mutex<HashMap<String, usize>>,
    metadata_fetches: AtomicUsize,
    down: AtomicBool,
    /// Requests answered with 503 while down.
    refused: AtomicUsize,
}

/// A local authorization server: metadata at `/.well-known/oauth-authorization-server[/<path>]`,
/// JWKS at `/jwks` and `/<path>/jwks`. Issuers are `<base>` and `<base>/<path>`; a path serves
/// nothing (404) until keys are set for it. Stops when dropped.
pub struct Idp {
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
        s.refused.fetch_add(1, Ordering::SeqCst);
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    s.metadata_fetches.fetch_add(1, Ordering::SeqCst);
    let base = s.base.get().expect("base set at start");
    if !s.jwks.lock().expect("jwks").contains_key(path) {
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
        s.refused.fetch_add(1, Ordering::SeqCst);
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    *s.jwks_fetches
        .lock()
        .expect("fetches")
        .entry(path.to_owned())
        .or_default() += 1;
    match s.jwks.lock().expect("jwks").get(path) {
        Some(keys) => json_response(json!({ "keys": keys })),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

impl Idp {
    /// Binds a loopback port and serves on the current Tokio runtime.
    pub async fn start() -> Idp {
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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the identity provider");
        let addr: SocketAddr = listener.local_addr().expect("local addr");
        let base = format!("http://{addr}");
        state.base.set(base.clone()).expect("base set once");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Idp {
            base,
            state,
            server,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The issuer for `path`: the base for `""`, else `<base>/<path>`.
    pub fn issuer(&self, path: &str) -> String {
        if path.is_empty() {
            self.base.clone()
        } else {
            format!("{}/{path}", self.base)
        }
    }

    /// Replaces the JWKS of `path` with these keys' public JWKs.
    pub fn set_keys(&self, path: &str, keys: &[&TestKey]) {
        let jwks: Vec<Value> = keys.iter().map(|k| k.jwk.clone()).collect();
        self.set_raw_keys(path, jwks);
    }

    /// Replaces the JWKS of `path` with arbitrary entries.
    pub fn set_raw_keys(&self, path: &str, keys: Vec<Value>) {
        self.state
            .jwks
            .lock()
            .expect("jwks")
            .insert(path.to_owned(), keys);
    }

    /// Adds a key to the JWKS of `path`.
    pub fn add_key(&self, path: &str, key: &TestKey) {
        self.state
            .jwks
            .lock()
            .expect("jwks")
            .entry(path.to_owned())
            .or_default()
            .push(key.jwk.clone());
    }

    /// How often the JWKS of `path` was fetched.
    pub fn jwks_fetches(&self, path: &str) -> usize {
        self.state
            .jwks_fetches
            .lock()
            .expect("fetches")
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// How often any metadata document was fetched.
    pub fn metadata_fetches(&self) -> usize {
        self.state.metadata_fetches.load(Ordering::SeqCst)
    }

    /// All JWKS and metadata fetches.
    pub fn total_fetches(&self) -> usize {
        self.state
            .jwks_fetches
            .lock()
            .expect("fetches")
            .values()
            .sum::<usize>()
            + self.metadata_fetches()
    }

    /// How many requests were answered with 503 while down.
    pub fn refused(&self) -> usize {
        self.state.refused.load(Ordering::SeqCst)
    }

    /// While down, every request is answered with 503 (counted by [`Idp::refused`] only).
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// Marks the server down and stops it.
    pub fn stop(&self) {
        self.set_down(true);
        self.server.abort();
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.server.abort();
    }
}
