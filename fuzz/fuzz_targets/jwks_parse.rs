//! JWKS documents and authorization-server metadata, as `palisade_oauth` fetches them: each
//! input is served by a loopback fixture to a fresh `Verifier` (`new` + `start`, which fetches
//! and parses the key set, with its `Cache-Control`), which then verifies tokens signed by
//! known test keys. The parser (`jwks::parse_jwks`) is private; this is its public path.
//!
//! Input fields (split at NUL): the JWKS body, the metadata body (used when bit 0 of the first
//! byte of the third field is set: the issuer then has no `jwks_uri` and discovers it), a
//! `Cache-Control` value. In both bodies `$EC_X`, `$EC_Y`, `$ED_X`, `$RSA_N`, `$RSA_E` stand for
//! the test keys' coordinates, `$ISSUER` for the issuer and `$JWKS` for the fixture's JWKS URL,
//! so that seeds (and the fuzzer) can build key sets that really verify.
//!
//! Every request goes to the fixture (it is also the client's proxy): no fuzzed URL leaves the
//! machine.
//!
//! Checks:
//! - no panic, hang or unbounded allocation on any document (bad base64, wrong lengths, RSA
//!   moduli of any size, `oct` and unknown keys, duplicate kids, huge arrays);
//! - a token verifies only if the served document carries its key's public coordinates (no
//!   key is invented, symmetric or `alg`-mismatched keys are never used).
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use palisade_fuzz::{Fixture, Served, fields, runtime};
use palisade_oauth::testing::{TestKey, now};
use palisade_oauth::{IssuerConfig, OAuthConfig, Verifier};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const RESOURCE: &str = "https://mcp.example.test/mcp";
const ISSUER: &str = "https://idp.example.test";

struct State {
    fixture: Fixture,
    client: reqwest::Client,
    keys: Vec<TestKey>,
    /// (issuer, tokens by key index, plus one ES256 token without `kid`)
    tokens: Vec<(String, Vec<String>)>,
    substitutions: Vec<(&'static str, String)>,
}

fn state() -> &'static State {
    static S: OnceLock<State> = OnceLock::new();
    S.get_or_init(|| {
        let fixture = Fixture::start();
        let client = fixture.client();
        let keys = vec![
            TestKey::es256("ec1"),
            TestKey::eddsa("ed1"),
            TestKey::rsa("rsa1", "RS256", true),
            TestKey::rsa("ps1", "PS256", false),
        ];
        let discovered = format!("{}/a", fixture.base());
        let tokens = [ISSUER.to_owned(), discovered]
            .into_iter()
            .map(|iss| {
                let claims = json!({"iss": iss, "aud": RESOURCE, "sub": "u", "exp": now() + 86400,
                                    "tenant": "acme"});
                let mut list: Vec<String> = keys.iter().map(|k| k.token(&claims)).collect();
                list.push(keys[0].sign_with(&json!({"alg": "ES256"}), &claims));
                (iss, list)
            })
            .collect();
        let field = |k: &TestKey, f: &str| k.jwk[f].as_str().expect("jwk field").to_owned();
        let substitutions = vec![
            ("$EC_X", field(&keys[0], "x")),
            ("$EC_Y", field(&keys[0], "y")),
            ("$ED_X", field(&keys[1], "x")),
            ("$RSA_N", field(&keys[2], "n")),
            ("$RSA_E", field(&keys[2], "e")),
            ("$JWKS", format!("{}/jwks", fixture.base())),
        ];
        State {
            fixture,
            client,
            keys,
            tokens,
            substitutions,
        }
    })
}

fn substitute(st: &State, bytes: &[u8], issuer: &str) -> Vec<u8> {
    let mut s = String::from_utf8_lossy(bytes).into_owned();
    if !s.contains('$') {
        return bytes.to_vec();
    }
    for (k, v) in &st.substitutions {
        s = s.replace(k, v);
    }
    s.replace("$ISSUER", issuer).into_bytes()
}

fuzz_target!(|data: &[u8]| {
    let st = state();
    let f = fields(data, 3);
    let discover = f[2].first().is_some_and(|b| b & 1 == 1);
    let (issuer, tokens) = &st.tokens[usize::from(discover)];
    let body = substitute(st, f[0], issuer);
    st.fixture.set(Served {
        body: body.clone(),
        metadata: substitute(st, f[1], issuer),
        cache_control: (f[2].len() > 1).then(|| f[2][1..].to_vec()),
    });

    let mut cfg = IssuerConfig::new(issuer.as_str());
    if !discover {
        cfg.jwks_uri = Some(format!("{}/jwks", st.fixture.base()));
    }
    cfg.tenant_claim = Some("/tenant".into());
    let config = OAuthConfig::new(RESOURCE, vec![cfg]);
    let verifier = Arc::new(Verifier::new(config, st.client.clone()).expect("valid config"));
    let shutdown = CancellationToken::new();
    let results = runtime().block_on(async {
        let refresher = verifier.start(shutdown.clone()).await;
        let mut results = Vec::new();
        for t in tokens {
            results.push(verifier.verify(t).await);
        }
        shutdown.cancel();
        let _ = refresher.await;
        results
    });

    // In discovery mode the metadata may name any fixture path as the JWKS, so either body
    // may be the one that was used.
    let served = format!(
        "{}{}",
        String::from_utf8_lossy(&body),
        String::from_utf8_lossy(&substitute(st, f[1], issuer))
    );
    for (i, r) in results.iter().enumerate() {
        if r.is_ok() {
            let key = &st.keys[if i < st.keys.len() { i } else { 0 }];
            let coordinate = if key.alg == "ES256" || key.alg == "EdDSA" {
                "x"
            } else {
                "n"
            };
            let value = key.jwk[coordinate].as_str().expect("coordinate");
            assert!(
                served.contains(value),
                "token {i} verified with a key the JWKS does not carry"
            );
        }
    }
});
