//! palisade-sql's tenant assertion: `palisade_sql::assertion::Verifier::verify`, the parser of
//! the signed token the gateway puts in every shared-placement call (header, kid, signature,
//! claims, lifetime, tenant id), with its JWKS read from a file.
//!
//! Input byte 0 picks the mode: below 0x40 the rest is the token as sent; otherwise the rest is
//! `header NUL payload`, signed with the gateway key the JWKS publishes, and with bit 0x80 both
//! are JSON objects completed with valid `alg`/`kid` and `iss`/`aud`/`exp`/`iat`/`tenant`
//! (members the input gives win).
//!
//! Checks:
//! - no panic on any token;
//! - an accepted assertion is what the checks promise: signed EdDSA header, `iss` and `aud`
//!   match, not expired, `iat` not in the future, lifetime at most 300 s, a valid tenant id
//!   (the one returned);
//! - refusals never echo the token.
#![no_main]

use std::sync::OnceLock;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use palisade_fuzz::{echoes, fields, refusal, runtime};
use palisade_sql::assertion::{KeySource, MAX_LIFETIME_SECS, Verifier};
use serde_json::{Value, json};

const AUDIENCE: &str = "sql";
const ISSUER: &str = "palisade";

struct State {
    verifier: Verifier,
    key: Ed25519KeyPair,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn state() -> &'static State {
    static S: OnceLock<State> = OnceLock::new();
    S.get_or_init(|| {
        let key = Ed25519KeyPair::from_seed_unchecked(&[0x17; 32]).expect("seed");
        let jwks = json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "kid": "g1",
             "x": URL_SAFE_NO_PAD.encode(key.public_key().as_ref())},
            {"kty": "EC", "crv": "P-256", "kid": "ec", "x": "AA", "y": "AA"}
        ]});
        let dir = std::env::temp_dir().join(format!("palisade-fuzz-sql-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("jwks.json");
        std::fs::write(&path, jwks.to_string()).expect("write the JWKS");
        let verifier = Verifier::new(KeySource::File(path), AUDIENCE.into(), ISSUER.into(), 5);
        State { verifier, key }
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
        let f = fields(rest, 2);
        let (header, payload) = if mode & 0x80 != 0 {
            let t = now();
            (
                complete(f[0], &[("alg", json!("EdDSA")), ("kid", json!("g1"))]),
                complete(
                    f[1],
                    &[
                        ("iss", json!(ISSUER)),
                        ("aud", json!(AUDIENCE)),
                        ("exp", json!(t + 60)),
                        ("iat", json!(t)),
                        ("tenant", json!("acme")),
                        ("sub", json!("u")),
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
        let sig = st.key.sign(msg.as_bytes());
        format!("{msg}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    };

    let result = runtime().block_on(st.verifier.verify(&token));
    let parts: Vec<&str> = token.split('.').collect();
    let decode = |i: usize| -> Option<Value> {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts.get(i)?).ok()?).ok()
    };
    match result {
        Ok(tenant) => {
            let header = decode(0).expect("accepted token has a JSON header");
            let payload = decode(1).expect("accepted token has a JSON payload");
            assert_eq!(header["alg"], "EdDSA");
            assert_eq!(payload["iss"], ISSUER);
            let aud_ok = match &payload["aud"] {
                Value::String(s) => s == AUDIENCE,
                Value::Array(a) => a.iter().any(|v| v == AUDIENCE),
                _ => false,
            };
            assert!(
                aud_ok,
                "accepted an assertion for another audience: {payload}"
            );
            let (exp, iat) = (
                payload["exp"].as_u64().expect("exp"),
                payload["iat"].as_u64().expect("iat"),
            );
            let t = now();
            assert!(t < exp + 5 + 2, "accepted an expired assertion");
            assert!(iat <= t + 5 + 2 && exp.saturating_sub(iat) <= MAX_LIFETIME_SECS);
            // A `TenantId` is valid by construction; it must be the one signed.
            assert_eq!(payload["tenant"].as_str(), Some(tenant.as_str()));
        }
        Err(e) => {
            let msg = e.to_string();
            let refuse = |t: &str| refusal(st.verifier.verify(t));
            assert!(
                !echoes(&token, &msg, refuse),
                "refusal echoes the token: {msg}"
            );
        }
    }
});
