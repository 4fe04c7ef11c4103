//! End-to-end checks of the verifier against a real local authorization server (metadata + JWKS
//! over HTTP) with keys generated per test.

use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_oauth::testing::{Idp, TestKey, b64, hs256_token, now, unsigned_token};
use palisade_oauth::{Claims, IssuerConfig, OAuthConfig, TokenError, Verifier};
use serde_json::{Value, json};
use testenv::wait_until;
use tokio_util::sync::CancellationToken;

const RESOURCE: &str = "https://gateway.example/mcp";
const SUB: &str = "user-7f3a9c-subject";
const TENANT: &str = "tenant-acme-42";
const JTI: &str = "jti-5e1d-unique";

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
            admin_issuer: false,
            subject: SUB.into(),
            tenant: Some(TENANT.into()),
            scopes: vec!["tools:read".into(), "tools:call".into()],
            roles: vec!["admin".into(), "auditor".into()],
            token_id: Some(JTI.into()),
            expires_at_secs: c["exp"].as_i64().unwrap(),
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
    cfg.jwks_uri = Some(format!("{}/jwks", idp.base()));
    let v = started(oauth(vec![cfg])).await;
    assert_eq!(
        idp.metadata_fetches(),
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

#[tokio::test]
async fn a_shared_issuer_names_only_its_allowed_tenants() {
    let idp = Idp::start().await;
    let key = TestKey::es256("k");
    idp.set_keys("", &[&key]);
    let mut cfg = issuer_cfg(&idp.issuer(""));
    cfg.tenants = vec![TENANT.into(), "initech-*".into()];
    let v = started(oauth(vec![cfg])).await;
    let mut c = claims_for(&idp.issuer(""));
    let claims = v.verify(&key.token(&c)).await.unwrap();
    assert_eq!(claims.tenant.as_deref(), Some(TENANT));
    assert!(!claims.admin_issuer);
    c["tenant_id"] = json!("initech-7");
    assert!(v.verify(&key.token(&c)).await.is_ok());
    c["tenant_id"] = json!("globex");
    assert_eq!(
        expect_err(&v, &key.token(&c), &["globex"]).await,
        TokenError::TenantNotAllowed
    );
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
    let claims = claims_for(&idp.issuer(""));

    for alg in ["none", "None", "NONE"] {
        let token = unsigned_token(&json!({"alg": alg, "typ": "JWT"}), &claims);
        assert_eq!(expect_err(&v, &token, &[]).await, TokenError::Algorithm);
    }

    // HS256 "signed" with the issuer's public key, as published (the classic key-confusion attack),
    // both over the JWK text and over the raw EC point.
    for secret in [key.jwk.to_string().into_bytes(), key.public_bytes()] {
        let header = json!({"alg": "HS256", "typ": "JWT", "kid": "k"});
        let token = hs256_token(&secret, &header, &claims);
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
    let newer_token = newer.token(&c);
    wait_until(
        Duration::from_secs(5),
        "the newer key is picked up",
        || async { v.verify(&newer_token).await.is_ok() },
    )
    .await;
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
    let token = hs256_token(
        b"secret-secret-secret",
        &json!({"alg": "HS256", "kid": "hmac"}),
        &c,
    );
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
    wait_until(
        Duration::from_secs(5),
        "the short token expires",
        || async { v.verify(&short).await.is_err() },
    )
    .await;
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
    wait_until(
        Duration::from_secs(10),
        "the periodic refresh runs twice",
        || async { idp.jwks_fetches("") >= 3 },
    )
    .await;

    // The server fails from now on: the keys already fetched stay in use.
    idp.set_down(true);
    wait_until(Duration::from_secs(10), "a refresh fails", || async {
        idp.refused() >= 1
    })
    .await;
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
