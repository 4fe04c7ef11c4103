//! Bearer JWTs: `palisade_oauth::Verifier::verify`, the one public entry to the token parser
//! (compact-JWS split, base64url + JSON header and payload, `alg`/`kid`/`crit`, the issuer
//! peek, key lookup, jsonwebtoken's checks, claim extraction).
//!
//! The verifier has two issuers whose JWKS (ES256, EdDSA and RSA test keys) it fetched once at
//! start-up from a loopback fixture. Input byte 0 picks the mode:
//! - below 0x40: the rest is the token, as sent;
//! - otherwise the rest is `header NUL payload`, signed with a real key (byte 0 picks which),
//!   so that fuzzed claims reach the checks after the signature; with bit 0x80 set, header and
//!   payload are JSON objects completed with valid `alg`/`kid` and `iss`/`aud`/`exp`/`sub`
//!   (members the input gives win).
//!
//! Checks:
//! - no panic, hang or unbounded allocation on any token;
//! - an accepted token really says what the claims say: its payload's `iss` is the issuer,
//!   `sub` the subject, `aud` names the resource, its `alg` is one the issuer allows, and the
//!   tenant comes from the issuer's fixed tenant or the `/tenant` claim;
//! - errors never echo the token, and name only fixed claims or configured issuers.
#![no_main]

use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use palisade_fuzz::{Fixture, Served, echoes, fields, refusal, runtime};
use palisade_oauth::testing::{TestKey, now};
use palisade_oauth::{IssuerConfig, OAuthConfig, TokenError, Verifier};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const RESOURCE: &str = "https://mcp.example.test/mcp";
const ISS_A: &str = "https://idp.example.test/a";
const ISS_B: &str = "https://idp.example.test/b";

struct State {
    verifier: Arc<Verifier>,
    keys: Vec<TestKey>,
    _fixture: Fixture,
}

fn state() -> &'static State {
    static S: OnceLock<State> = OnceLock::new();
    S.get_or_init(|| {
        let fixture = Fixture::start();
        let keys = vec![
            TestKey::es256("ec1"),
            TestKey::eddsa("ed1"),
            TestKey::rsa("rsa1", "RS256", true),
            TestKey::rsa("ps1", "PS256", false),
        ];
        let jwks = json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() });
        fixture.set(Served {
            body: jwks.to_string().into_bytes(),
            ..Served::default()
        });
        let jwks_uri = format!("{}/jwks", fixture.base());
        let mut a = IssuerConfig::new(ISS_A);
        a.jwks_uri = Some(jwks_uri.clone());
        a.tenant_claim = Some("/tenant".into());
        a.roles_claim = Some("/roles".into());
        let mut b = IssuerConfig::new(ISS_B);
        b.jwks_uri = Some(jwks_uri);
        b.tenant = Some("acme".into());
        b.algorithms = vec!["EdDSA".into(), "PS256".into()];
        let mut config = OAuthConfig::new(RESOURCE, vec![a, b]);
        config.jwks_min_refresh_secs = 3600;
        let verifier = Arc::new(Verifier::new(config, fixture.client()).expect("valid config"));
        let rt = runtime();
        rt.block_on(verifier.start(CancellationToken::new()));
        let probe = keys[0].token(&json!({"iss": ISS_A, "aud": RESOURCE, "sub": "u",
                                          "exp": now() + 600, "tenant": "acme"}));
        rt.block_on(verifier.verify(&probe))
            .expect("the fixture's keys were fetched");
        State {
            verifier,
            keys,
            _fixture: fixture,
        }
    })
}

fn complete(bytes: &[u8], defaults: &[(&str, Value)]) -> Vec<u8> {
    let mut obj = match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    for (k, v) in defaults {
        obj.entry(k.to_string()).or_insert_with(|| v.clone());
    }
    Value::Object(obj).to_string().into_bytes()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let st = state();
    let token = if mode < 0x40 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        let key = &st.keys[mode as usize % st.keys.len()];
        let f = fields(rest, 2);
        let (header, payload) = if mode & 0x80 != 0 {
            let iss = if mode & 0x20 != 0 { ISS_B } else { ISS_A };
            (
                complete(f[0], &[("alg", json!(key.alg)), ("kid", json!(key.kid))]),
                complete(
                    f[1],
                    &[
                        ("iss", json!(iss)),
                        ("aud", json!(RESOURCE)),
                        ("exp", json!(now() + 600)),
                        ("sub", json!("user-1")),
                        ("tenant", json!("acme")),
                    ],
                ),
            )
        } else {
            (f[0].to_vec(), f[1].to_vec())
        };
        let msg = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&header),
            URL_SAFE_NO_PAD.encode(&payload)
        );
        format!("{msg}.{}", key.signature(msg.as_bytes()))
    };

    let result = runtime().block_on(st.verifier.verify(&token));
    let parts: Vec<&str> = token.split('.').collect();
    let decode = |i: usize| -> Option<Value> {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts.get(i)?).ok()?).ok()
    };
    match result {
        Ok(claims) => {
            let header = decode(0).expect("accepted token has a JSON header");
            let payload = decode(1).expect("accepted token has a JSON payload");
            assert_eq!(payload["iss"].as_str(), Some(&*claims.issuer));
            assert_eq!(payload["sub"].as_str(), Some(claims.subject.as_str()));
            let aud_ok = match &payload["aud"] {
                Value::String(s) => s == RESOURCE,
                Value::Array(a) => a.iter().any(|v| v == RESOURCE),
                _ => false,
            };
            assert!(aud_ok, "accepted a token for another audience: {payload}");
            let alg = header["alg"].as_str().unwrap_or_default();
            if &*claims.issuer == ISS_B {
                assert!(alg == "EdDSA" || alg == "PS256", "issuer B accepted {alg}");
                assert_eq!(claims.tenant.as_deref(), Some("acme"));
            } else {
                assert_eq!(&*claims.issuer, ISS_A);
                let claimed = payload["tenant"].as_str().filter(|t| !t.is_empty());
                assert_eq!(claims.tenant.as_deref(), claimed);
            }
            assert!(["ES256", "EdDSA", "RS256", "PS256"].contains(&alg));
        }
        Err(e) => {
            let msg = e.to_string();
            let refuse = |t: &str| refusal(st.verifier.verify(t));
            assert!(
                !echoes(&token, &msg, refuse),
                "error echoes the token: {msg}"
            );
            // The only text an error carries is a claim name or a configured issuer, never
            // something read from the token (a claim value equal to part of a fixed message
            // is not an echo).
            match &e {
                TokenError::MissingClaim(name) => assert!(
                    ["iss", "sub", "exp", "aud", "nbf"].contains(&name.as_str()),
                    "error names a claim read from the token: {msg}"
                ),
                TokenError::Unavailable { issuer } => {
                    assert!([ISS_A, ISS_B].contains(&issuer.as_str()))
                }
                _ => {}
            }
        }
    }
});
