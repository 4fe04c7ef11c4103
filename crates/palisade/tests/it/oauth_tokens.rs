//! OAuth access tokens through the real gateway: a local identity provider (RFC 8414 metadata and
//! JWKS over HTTP) issues ES256 and EdDSA tokens, and the `palisade` binary must accept the good
//! ones, refuse every forged, stale or misdirected one with the right status and challenge, admit
//! only known and active tenants, keep tenants' sessions apart, and fail closed when the issuer's
//! keys cannot be fetched. No answer may echo the token or anything read from it.
//!
//! The identity provider runs in the test process while the gateway (another process) fetches
//! from it during start-up, which blocks this thread: hence multi-thread runtimes.

use crate::common;

use std::time::{Duration, Instant};

use common::{Answer, Gw, text};
use palisade_oauth::testing::{Idp, TestKey, b64, hs256_token, now, unsigned_token};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

/// The gateway's resource identifier: tokens' `aud` must contain it.
const RESOURCE: &str = "http://127.0.0.1/mcp";
/// Where the challenge points for [`RESOURCE`] (RFC 9728 §3.1).
const METADATA_URL: &str = "http://127.0.0.1/.well-known/oauth-protected-resource/mcp";
const SUB: &str = "user-91c2e7-subject";
const JTI: &str = "jti-4b8d-unique-id";
const EMAIL: &str = "alice.private@example.com";

const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"oauth-test","version":"1"}}}"#;

/// `[oauth]` for this gateway as a resource server, before its issuers.
fn oauth_resource() -> String {
    format!(
        "[oauth]\nresource = \"{RESOURCE}\"\nscopes_supported = [\"mcp\", \"palisade:admin\"]\nrequired_scopes = [\"mcp\"]\n"
    )
}

fn oauth_table(issuer: &str) -> String {
    format!(
        r#"{}[[oauth.issuers]]
issuer = "{issuer}"
tenant_claim = "/tenant_id"
roles_claim = "/roles"
"#,
        oauth_resource()
    )
}

/// A ready gateway with tenants `acme` and `globex` on server `kit`, trusting `issuer`.
async fn gateway(issuer: &str) -> Gw {
    let gw = common::two_tenants_on_kit_with("", &oauth_table(issuer)).await;
    gw.ready().await;
    gw
}

/// An identity provider publishing one ES256 and one EdDSA key, and a gateway trusting it.
async fn setup() -> (Idp, TestKey, TestKey, Gw) {
    let idp = Idp::start().await;
    let es = TestKey::es256("es-1");
    let ed = TestKey::eddsa("ed-1");
    idp.set_keys("", &[&es, &ed]);
    let gw = gateway(&idp.issuer("")).await;
    (idp, es, ed, gw)
}

/// Valid claims for `tenant` with `scope` from `iss`.
fn claims(iss: &str, tenant: &str, scope: &str) -> Value {
    let t = now();
    json!({"iss": iss, "sub": SUB, "aud": RESOURCE, "exp": t + 600, "iat": t, "nbf": t - 5,
           "tenant_id": tenant, "scope": scope, "jti": JTI, "email": EMAIL, "roles": ["member"]})
}

/// Neither the headers nor the body contain the token (or any sizeable part of it) nor any of
/// the claim values: the subject, token id, email and the given extra values (tenant ids).
fn assert_clean(what: &str, headers: &HeaderMap, body: &str, token: &str, values: &[&str]) {
    let mut texts = vec![body.to_owned()];
    for (name, value) in headers {
        texts.push(format!(
            "{name}: {}",
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    for t in &texts {
        assert!(
            token.is_empty() || !t.contains(token),
            "{what}: the answer echoes the token"
        );
        for part in token.split('.').filter(|p| p.len() >= 8) {
            let probe = &part[..part.len().min(64)];
            assert!(!t.contains(probe), "{what}: the answer echoes a token part");
        }
        for v in [SUB, JTI, EMAIL].iter().chain(values) {
            assert!(
                !t.contains(v),
                "{what}: the answer contains the claim value {v:?}: {t}"
            );
        }
    }
}

fn answer_body(a: &Answer) -> String {
    serde_json::to_string(&a.messages).unwrap_or_default()
}

fn assert_answer_clean(what: &str, a: &Answer, token: &str, values: &[&str]) {
    assert_clean(what, &a.headers, &answer_body(a), token, values);
}

fn challenge(a: &Answer) -> String {
    a.headers
        .get("www-authenticate")
        .map(|v| v.to_str().expect("ascii challenge").to_owned())
        .unwrap_or_default()
}

fn message(a: &Answer) -> String {
    a.response()["error"]["message"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

async fn initialize(gw: &Gw, token: &str) -> Answer {
    gw.post(Some(token), &[], INITIALIZE).await
}

/// `initialize` with `token` is refused with 401 `invalid_token` and a clean answer.
async fn assert_invalid(gw: &Gw, what: &str, token: &str, values: &[&str]) {
    let a = initialize(gw, token).await;
    assert_eq!(a.status, 401, "{what}: {:?}", a.messages);
    let c = challenge(&a);
    assert!(c.contains(r#"error="invalid_token""#), "{what}: {c}");
    assert!(
        c.contains(&format!(r#"resource_metadata="{METADATA_URL}""#)),
        "{what}: {c}"
    );
    assert!(
        message(&a).starts_with("invalid access token"),
        "{what}: {}",
        message(&a)
    );
    let mut values = values.to_vec();
    values.extend(["acme", "globex"]);
    assert_answer_clean(what, &a, token, &values);
}

/// `initialize` with `token` is refused with 403 and no `error=` in any challenge.
async fn assert_forbidden(gw: &Gw, what: &str, token: &str, values: &[&str]) -> Answer {
    let a = initialize(gw, token).await;
    assert_eq!(a.status, 403, "{what}: {:?}", a.messages);
    assert!(
        !challenge(&a).contains("error="),
        "{what}: {}",
        challenge(&a)
    );
    assert_answer_clean(what, &a, token, values);
    a
}

// ---------------------------------------------------------------------------------------------
// Accepted tokens and discovery

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_and_eddsa_tokens_reach_the_tools() {
    let (idp, es, ed, gw) = setup().await;
    for key in [&es, &ed] {
        let token = key.token(&claims(&idp.issuer(""), "acme", "mcp"));
        let a = initialize(&gw, &token).await;
        assert_eq!(a.status, 200, "{}: {:?}", key.alg, a.messages);
        assert!(a.headers.contains_key("mcp-session-id"));
        assert_answer_clean(key.alg, &a, &token, &["acme"]);

        let s = gw.legacy_as(&token).await;
        let call = s.call(1, "kit__echo", json!({"message": "hi"})).await;
        assert_eq!(call.status, 200, "{}: {:?}", key.alg, call.messages);
        assert_eq!(text(call.response()), "hi", "{}", key.alg);
        assert_answer_clean(key.alg, &call, &token, &["acme"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_credentials_get_a_challenge_and_metadata_names_the_issuer() {
    let (idp, _es, _ed, gw) = setup().await;
    let a = gw.post(None, &[], INITIALIZE).await;
    assert_eq!(a.status, 401, "{:?}", a.messages);
    let c = challenge(&a);
    assert!(c.starts_with("Bearer "), "{c}");
    assert!(
        c.contains(&format!(r#"resource_metadata="{METADATA_URL}""#)),
        "{c}"
    );
    assert!(c.contains(r#"scope="mcp""#), "{c}");
    assert!(!c.contains("error="), "{c}");

    let base = gw.mcp.trim_end_matches("/mcp");
    for path in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
    ] {
        let r = gw
            .http
            .get(format!("{base}{path}"))
            .send()
            .await
            .expect("metadata");
        assert_eq!(r.status().as_u16(), 200, "{path}");
        let doc: Value =
            serde_json::from_str(&r.text().await.expect("body")).expect("metadata json");
        assert_eq!(doc["resource"], RESOURCE, "{path}: {doc}");
        assert_eq!(
            doc["authorization_servers"],
            json!([idp.issuer("")]),
            "{path}: {doc}"
        );
        assert_eq!(
            doc["scopes_supported"],
            json!(["mcp", "palisade:admin"]),
            "{path}: {doc}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Refused tokens: 401 invalid_token

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_stale_and_misdirected_tokens_are_invalid() {
    let (idp, es, _ed, gw) = setup().await;
    let iss = idp.issuer("");
    let good = claims(&iss, "acme", "mcp");
    let t = now();

    let mut c = good.clone();
    c["exp"] = json!(t - 120);
    c["iat"] = json!(t - 720);
    c["nbf"] = json!(t - 720);
    assert_invalid(&gw, "expired", &es.token(&c), &[]).await;

    let mut c = good.clone();
    c["nbf"] = json!(t + 120);
    assert_invalid(&gw, "not yet valid", &es.token(&c), &[]).await;

    let mut c = good.clone();
    c["aud"] = json!("https://other-resource.example/mcp");
    assert_invalid(&gw, "wrong audience", &es.token(&c), &["other-resource"]).await;

    let c = claims("https://evil-issuer.example", "acme", "mcp");
    assert_invalid(&gw, "unknown issuer", &es.token(&c), &["evil-issuer"]).await;

    for alg in ["none", "None"] {
        let token = unsigned_token(&json!({"alg": alg, "typ": "JWT"}), &good);
        assert_invalid(&gw, "alg none", &token, &[]).await;
    }

    // Key confusion: HS256 with the issuer's public key as the secret, as raw bytes and as the
    // published JWK text.
    for secret in [es.public_bytes(), es.jwk.to_string().into_bytes()] {
        let header = json!({"alg": "HS256", "typ": "JWT", "kid": "es-1"});
        let token = hs256_token(&secret, &header, &good);
        assert_invalid(&gw, "HS256 with the public key", &token, &[]).await;
    }

    let ghost = TestKey::es256("ghost-kid");
    assert_invalid(&gw, "unknown kid", &ghost.token(&good), &[]).await;

    // A second identity provider's key, with its own kid and with the first one's kid.
    let other = Idp::start().await;
    let foreign = TestKey::es256("other-idp-key");
    let squatter = TestKey::es256("es-1");
    other.set_keys("", &[&foreign, &squatter]);
    assert_invalid(&gw, "other issuer's key", &foreign.token(&good), &[]).await;
    assert_invalid(
        &gw,
        "other issuer's key under our kid",
        &squatter.token(&good),
        &[],
    )
    .await;

    // One claim changed, the signature kept.
    let token = es.token(&good);
    let parts: Vec<&str> = token.split('.').collect();
    let mut forged = good.clone();
    forged["tenant_id"] = json!("globex");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(forged.to_string().as_bytes()),
        parts[2]
    );
    assert_invalid(&gw, "tampered payload", &tampered, &[]).await;

    // Longer than 16 KiB: a signed one and plain junk.
    let mut c = good.clone();
    c["padding"] = json!("p".repeat(17 * 1024));
    let big = es.token(&c);
    assert!(big.len() > 16 * 1024);
    assert_invalid(&gw, "oversized", &big, &[]).await;
    assert_invalid(&gw, "oversized junk", &"x".repeat(16 * 1024 + 1), &[]).await;

    // Malformed: bad base64 in the payload, and only two parts.
    let malformed = format!("{}.%%%not-base64%%%.{}", parts[0], parts[2]);
    assert_invalid(&gw, "bad base64", &malformed, &[]).await;
    let two_parts = format!("{}.{}", parts[0], parts[1]);
    assert_invalid(&gw, "two parts", &two_parts, &[]).await;

    // The unmodified token still works.
    assert_eq!(initialize(&gw, &token).await.status, 200);
}

// ---------------------------------------------------------------------------------------------
// Valid tokens that may not pass: 403

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_must_be_named_known_and_active() {
    let (idp, es, _ed, gw) = setup().await;
    let iss = idp.issuer("");

    let mut c = claims(&iss, "acme", "mcp");
    c.as_object_mut().unwrap().remove("tenant_id");
    let a = assert_forbidden(&gw, "no tenant claim", &es.token(&c), &["acme"]).await;
    assert!(message(&a).contains("carries no tenant"), "{}", message(&a));

    let c = claims(&iss, "initech-unknown-7", "mcp");
    let a = assert_forbidden(&gw, "unknown tenant", &es.token(&c), &["initech-unknown-7"]).await;
    assert!(message(&a).contains("not known"), "{}", message(&a));

    let token = es.token(&claims(&iss, "acme", "mcp"));
    assert_eq!(initialize(&gw, &token).await.status, 200);
    gw.cli_ok(&["tenant", "suspend", "acme", "--reason", "test"])
        .await;
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut a = initialize(&gw, &token).await;
    while a.status == 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        a = initialize(&gw, &token).await;
    }
    assert_eq!(a.status, 403, "suspended: {:?}", a.messages);
    assert!(!challenge(&a).contains("error="), "{}", challenge(&a));
    let msg = message(&a);
    assert!(
        msg.contains("suspended") && msg.contains("test"),
        "suspended: {msg}"
    );
    assert_answer_clean("suspended", &a, &token, &["acme"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_the_required_scope_is_insufficient() {
    let (idp, es, _ed, gw) = setup().await;
    let token = es.token(&claims(&idp.issuer(""), "acme", "files:read"));
    let a = initialize(&gw, &token).await;
    assert_eq!(a.status, 403, "{:?}", a.messages);
    let c = challenge(&a);
    assert!(c.contains(r#"error="insufficient_scope""#), "{c}");
    assert!(c.contains(r#"scope="mcp""#), "{c}");
    assert!(
        c.contains(&format!(r#"resource_metadata="{METADATA_URL}""#)),
        "{c}"
    );
    assert_answer_clean("insufficient scope", &a, &token, &["acme"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_cannot_use_another_tenants_session() {
    let (idp, es, _ed, gw) = setup().await;
    let globex = gw.legacy("globex").await;
    let token = es.token(&claims(&idp.issuer(""), "acme", "mcp"));
    let a = gw
        .post(
            Some(&token),
            &[
                ("mcp-session-id", &globex.session),
                ("mcp-protocol-version", "2025-11-25"),
            ],
            json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"kit__echo","arguments":{"message":"hi"}}}).to_string(),
        )
        .await;
    assert_eq!(a.status, 404, "{:?}", a.messages);
    assert_answer_clean("foreign session", &a, &token, &["acme", "globex"]);
    // The session still serves its owner.
    let mine = globex
        .call(2, "kit__echo", json!({"message": "still"}))
        .await;
    assert_eq!(text(mine.response()), "still");
}

// ---------------------------------------------------------------------------------------------
// The admin API

async fn admin_raw(gw: &Gw, path: &str, token: &str) -> (u16, HeaderMap, String) {
    let r = gw
        .http
        .get(format!("{}{path}", gw.admin))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .expect("admin request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap_or_default())
}

/// Issuer-per-tenant: acme's own identity provider, a shared one allowed to name `glob*`
/// tenants only, and one configured as the admins' issuer; one ES256 key each.
async fn three_issuers() -> (Idp, TestKey, Gw) {
    let idp = Idp::start().await;
    let es = TestKey::es256("es-1");
    for path in ["acme", "shared", "admins"] {
        idp.set_keys(path, &[&es]);
    }
    let table = format!(
        r#"{}[[oauth.issuers]]
issuer = "{}"
tenant = "acme"
[[oauth.issuers]]
issuer = "{}"
tenant_claim = "/tenant_id"
tenants = ["glob*"]
[[oauth.issuers]]
issuer = "{}"
tenant_claim = "/tenant_id"
admin = true
"#,
        oauth_resource(),
        idp.issuer("acme"),
        idp.issuer("shared"),
        idp.issuer("admins")
    );
    let gw = common::two_tenants_on_kit_with("", &table).await;
    gw.ready().await;
    (idp, es, gw)
}

async fn admin_post(gw: &Gw, path: &str, token: &str, body: Value) -> (u16, String) {
    let r = gw
        .http
        .post(format!("{}{path}", gw.admin))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("admin request");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admin_issuers_mint_admin_tokens() {
    let (idp, es, gw) = three_issuers().await;
    let admin_scope = "mcp palisade:admin";

    // acme's own identity provider: its tokens work for acme, never on the admin API, whatever
    // scope they carry, so it cannot give itself globex's keys.
    let acme = es.token(&claims(&idp.issuer("acme"), "acme", admin_scope));
    assert_eq!(initialize(&gw, &acme).await.status, 200);
    let (status, _, body) = admin_raw(&gw, "/admin/v1/tenants", &acme).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("not an admin issuer"), "{body}");
    let (status, body) = admin_post(
        &gw,
        "/admin/v1/tenants/globex/keys",
        &acme,
        json!({"scopes": ["mcp"]}),
    )
    .await;
    assert_eq!(status, 403, "acme's IdP issued a globex key: {body}");

    // The admins' issuer: an admin token names no tenant and carries the admin scope.
    let admins = idp.issuer("admins");
    let mut no_tenant = claims(&admins, "", admin_scope);
    no_tenant.as_object_mut().unwrap().remove("tenant_id");
    let admin = es.token(&no_tenant);
    let (status, headers, body) = admin_raw(&gw, "/admin/v1/tenants", &admin).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("globex"), "{body}");
    assert_clean("admin token", &headers, &body, &admin, &[]);
    let named = es.token(&claims(&admins, "acme", admin_scope));
    let (status, headers, body) = admin_raw(&gw, "/admin/v1/tenants", &named).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("must carry no tenant"), "{body}");
    assert_clean(
        "admin token naming a tenant",
        &headers,
        &body,
        &named,
        &["acme"],
    );
    no_tenant["scope"] = json!("mcp");
    let unscoped = es.token(&no_tenant);
    let (status, _, body) = admin_raw(&gw, "/admin/v1/tenants", &unscoped).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("palisade:admin"), "{body}");

    // The shared issuer names only the tenants it is allowed to.
    let shared = idp.issuer("shared");
    let globex = es.token(&claims(&shared, "globex", "mcp"));
    assert_eq!(initialize(&gw, &globex).await.status, 200);
    let not_allowed = es.token(&claims(&shared, "acme", "mcp"));
    let a = initialize(&gw, &not_allowed).await;
    assert_eq!(a.status, 401, "{:?}", a.messages);
    assert!(message(&a).contains("not allowed"), "{}", message(&a));
    assert_answer_clean("tenant not allowed", &a, &not_allowed, &["acme"]);
}

// ---------------------------------------------------------------------------------------------
// Fail closed

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_keys_fail_closed_with_503() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let issuer = format!("http://127.0.0.1:{closed}");
    let gw = gateway(&issuer).await;
    let token = TestKey::es256("k").token(&claims(&issuer, "acme", "mcp"));
    let a = initialize(&gw, &token).await;
    assert_eq!(a.status, 503, "{:?}", a.messages);
    assert!(!challenge(&a).contains("error="), "{}", challenge(&a));
    let msg = message(&a);
    assert!(msg.contains("keys") && msg.contains("unavailable"), "{msg}");
    assert_answer_clean("unavailable", &a, &token, &["acme"]);
}
