//! Attacks on the tenant assertion, against palisade-sql in shared placement: every one is
//! refused with a message naming the problem, and none returns a row.

use crate::common;

use std::time::Duration;

use common::{Issuer, Server, claims, error_text, now};
use serde_json::Value;

fn server(dir: &std::path::Path, issuer: &Issuer) -> Server {
    common::sqlite_sample(dir);
    common::shared_sqlite(
        dir,
        issuer,
        &["--audience", "sql", "--clock-skew-secs", "0"],
    )
}

fn with(tenant: &str, change: impl FnOnce(&mut Value)) -> Value {
    let mut c = claims(tenant);
    change(&mut c);
    c
}

#[test]
fn forged_expired_misdirected_and_altered_assertions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = Issuer::new("gw-1");
    let mut server = server(dir.path(), &issuer);
    let sql = "SELECT tenant_id FROM orders";

    // The good one works, so the refusals below are about the assertion.
    assert_eq!(
        common::tenants_in(&server.query(sql, Some(&issuer.for_tenant("acme")))),
        ["acme"]
    );

    let attacker = Issuer::new("gw-1");
    let valid = issuer.for_tenant("acme");
    let mut parts: Vec<String> = valid.split('.').map(str::to_owned).collect();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    // Tenant claim altered after signing.
    let mut altered_claims: Value =
        serde_json::from_slice(&b64.decode(&parts[1]).unwrap()).unwrap();
    altered_claims["tenant"] = "globex".into();
    parts[1] = b64.encode(altered_claims.to_string());
    let altered = parts.join(".");
    let unsigned = format!(
        "{}.{}.",
        b64.encode(r#"{"alg":"none","typ":"JWT","kid":"gw-1"}"#),
        b64.encode(claims("globex").to_string())
    );

    let cases: Vec<(String, &str)> = vec![
        (attacker.for_tenant("globex"), "signature does not verify"),
        (
            attacker.sign_as("other", &claims("globex")),
            "does not publish",
        ),
        (altered, "signature does not verify"),
        (unsigned, "does not use EdDSA"),
        (
            issuer.sign(&with("globex", |c| c["exp"] = (now() - 10).into())),
            "expired",
        ),
        (
            issuer.sign(&with("globex", |c| c["aud"] = "kit".into())),
            "for another server",
        ),
        (
            issuer.sign(&with("globex", |c| c["iss"] = "someone".into())),
            "issued by",
        ),
        (
            issuer.sign(&with("globex", |c| c["iat"] = (now() + 120).into())),
            "in the future",
        ),
        (
            issuer.sign(&with("globex", |c| c["exp"] = (now() + 3600).into())),
            "lives longer",
        ),
        (issuer.sign(&with("../globex", |_| {})), "no valid tenant"),
        ("not-a-token".to_owned(), "malformed"),
    ];
    for (token, expected) in &cases {
        let message = error_text(&server.query(sql, Some(token)));
        assert!(message.contains(expected), "{expected}: {message}");
        assert!(!message.contains(token.as_str()), "the token is not echoed");
    }
}

#[test]
fn an_assertion_replayed_after_expiry_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = Issuer::new("gw-1");
    let mut server = server(dir.path(), &issuer);
    let token = issuer.sign(&with("acme", |c| c["exp"] = (now() + 2).into()));
    let sql = "SELECT tenant_id FROM orders";
    assert_eq!(
        common::tenants_in(&server.query(sql, Some(&token))),
        ["acme"]
    );
    testenv::wait_until_blocking(Duration::from_secs(10), "the assertion expires", || {
        server.query(sql, Some(&token))["isError"] == true
    });
    assert!(error_text(&server.query(sql, Some(&token))).contains("expired"));
}

#[test]
fn a_rotated_key_is_picked_up_and_a_missing_key_source_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let old = Issuer::new("gw-1");
    let mut server = server(dir.path(), &old);
    let sql = "SELECT tenant_id FROM orders";
    assert_eq!(
        common::tenants_in(&server.query(sql, Some(&old.for_tenant("acme")))),
        ["acme"]
    );
    // The gateway rotates: the new key's kid is unknown, so the set is read again.
    let new = Issuer::new("gw-2");
    let both = serde_json::json!({"keys": [old.jwks()["keys"][0], new.jwks()["keys"][0]]});
    std::fs::write(dir.path().join("jwks.json"), both.to_string()).unwrap();
    testenv::wait_until_blocking(Duration::from_secs(10), "the new key is read", || {
        server.query(sql, Some(&new.for_tenant("globex")))["isError"] == false
    });
    assert_eq!(
        common::tenants_in(&server.query(sql, Some(&new.for_tenant("globex")))),
        ["globex"]
    );
    assert_eq!(
        common::tenants_in(&server.query(sql, Some(&old.for_tenant("acme")))),
        ["acme"]
    );

    // No key source at all: every call is refused, saying why.
    let mut blind = Server::spawn(
        &[
            "serve",
            "--placement",
            "shared",
            "--sqlite-dir",
            dir.path().to_str().unwrap(),
            "--jwks-file",
            dir.path().join("missing.json").to_str().unwrap(),
        ],
        &[],
    );
    let message = error_text(&blind.query(sql, Some(&old.for_tenant("acme"))));
    assert!(message.contains("keys are unavailable"), "{message}");
}
