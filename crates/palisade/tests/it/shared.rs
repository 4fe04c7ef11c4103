//! Shared placement's signed tenant context, through the real gateway: a shared server gets,
//! in each call's `_meta`, an EdDSA assertion of the calling tenant that verifies against the
//! gateway's published keys, lives at most 60 s, names the server as audience and the call's
//! audit record; a client cannot forge one; a rotated key takes over without breaking the
//! old ones' assertions.

use crate::common;

use std::time::{Duration, Instant};

use aws_lc_rs::signature::{ED25519, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use common::Gw;
use serde_json::{Value, json};

const META_KEY: &str = "io.palisade/tenant";

/// The assertion a shared server received, from the testkit's `whoami`.
async fn assertion_seen(s: &common::Legacy<'_>, id: u64, meta: Option<Value>) -> String {
    let mut args = json!({});
    if let Some(m) = meta {
        args = json!({});
        let a = s
            .request(
                id,
                "tools/call",
                json!({"name": "kit__whoami", "arguments": args, "_meta": m}),
            )
            .await;
        return token_of(common::text(a.response()));
    }
    let a = s.call(id, "kit__whoami", args).await;
    token_of(common::text(a.response()))
}

fn token_of(whoami: &str) -> String {
    let v: Value = serde_json::from_str(whoami).unwrap();
    v["meta"][META_KEY]
        .as_str()
        .unwrap_or_else(|| panic!("no assertion in {}", v["meta"]))
        .to_owned()
}

/// Header and claims of `token` once its signature checks against `jwks`.
fn verified(token: &str, jwks: &Value) -> (Value, Value) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header: Value = serde_json::from_slice(&B64URL.decode(parts[0]).unwrap()).unwrap();
    let claims: Value = serde_json::from_slice(&B64URL.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(header["alg"], "EdDSA");
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .unwrap_or_else(|| panic!("kid {} not published", header["kid"]));
    let x = B64URL.decode(key["x"].as_str().unwrap()).unwrap();
    let sig = B64URL.decode(parts[2]).unwrap();
    UnparsedPublicKey::new(&ED25519, x)
        .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
        .expect("signature verifies against the published key");
    (header, claims)
}

async fn jwks(gw: &Gw) -> Value {
    let url = gw.mcp.replace("/mcp", "/.well-known/jwks.json");
    let text = gw.http.get(url).send().await.unwrap().text().await.unwrap();
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn a_shared_server_gets_a_signed_context_of_the_calling_tenant() {
    let gw = common::two_tenants_on_kit_with("", "").await;
    gw.ready().await;
    let keys = jwks(&gw).await;
    let acme = gw.legacy("acme").await;
    let globex = gw.legacy("globex").await;

    let token = assertion_seen(&acme, 1, None).await;
    let (header, claims) = verified(&token, &keys);
    assert_eq!(header["typ"], "JWT");
    assert_eq!(claims["tenant"], "acme");
    assert_eq!(claims["aud"], "kit");
    assert_eq!(claims["iss"], "palisade");
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert!(exp > iat && exp - iat <= 60, "lifetime {}", exp - iat);
    assert!(claims["sub"].as_str().is_some_and(|s| !s.is_empty()));
    // It names the call's BEGIN record.
    let audit_id = claims["audit_id"].as_str().unwrap().to_owned();
    let trail =
        palisade_audit::list_files(&gw.config.with_file_name("palisade-data").join("audit"))
            .unwrap()
            .iter()
            .map(|f| palisade_audit::read_file(f).unwrap().text)
            .collect::<String>();
    assert!(
        trail
            .lines()
            .any(|l| l.contains("\"kind\":\"BEGIN\"") && l.contains(&audit_id)),
        "no BEGIN {audit_id}"
    );
    // Each tenant gets its own; the client's key is never passed on.
    let other = assertion_seen(&globex, 2, None).await;
    assert_eq!(verified(&other, &keys).1["tenant"], "globex");
    assert!(!token.contains(gw.key("acme")) && !other.contains(gw.key("globex")));

    // A client's own entry of that name is replaced, never passed on.
    let forged = "eyJhbGciOiJub25lIn0.eyJ0ZW5hbnQiOiJnbG9iZXgifQ.";
    let seen = assertion_seen(&acme, 3, Some(json!({ META_KEY: forged }))).await;
    assert_ne!(seen, forged);
    assert_eq!(verified(&seen, &keys).1["tenant"], "acme");
}

#[tokio::test]
async fn a_rotated_key_signs_within_seconds_and_the_old_one_stays_published() {
    let gw = common::two_tenants_on_kit_with("", "").await;
    gw.ready().await;
    let acme = gw.legacy("acme").await;
    let before = jwks(&gw).await;
    let (old, _) = verified(&assertion_seen(&acme, 1, None).await, &before);
    let out = gw.cli(&["assertions", "rotate"]).await;
    assert!(out.status.success(), "{out:?}");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut id = 2;
    loop {
        // The keys are read after the assertion, as a verifier meeting a new kid refetches
        // them: read before, they could predate the rotation the assertion already uses.
        let token = assertion_seen(&acme, id, None).await;
        let keys = jwks(&gw).await;
        let (header, _) = verified(&token, &keys);
        if header["kid"] != old["kid"] {
            // Both published: an assertion signed a moment ago still verifies.
            let kids: Vec<&Value> = keys["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| &k["kid"])
                .collect();
            assert!(kids.contains(&&old["kid"]) && kids.len() == 2, "{kids:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the new key never took over");
        id += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn a_shared_http_server_gets_the_assertion_as_its_bearer_token() {
    for protocol in ["legacy", "modern"] {
        let (gw, _web) = common::acme_on_web(protocol, true).await;
        let s = gw.legacy("acme").await;
        let a = s.call(1, "web__whoami", json!({})).await;
        let seen: Value = serde_json::from_str(common::text(a.response())).unwrap();
        let token = seen["meta"][META_KEY].as_str().expect("assertion in _meta");
        assert_eq!(
            seen["authorization"].as_str(),
            Some(format!("Bearer {token}").as_str()),
            "{protocol}"
        );
        let (_, claims) = verified(token, &jwks(&gw).await);
        assert_eq!(
            (claims["tenant"].as_str(), claims["aud"].as_str()),
            (Some("acme"), Some("web"))
        );
        assert!(
            !seen.to_string().contains(gw.key("acme")),
            "the client's key is not passed on"
        );
    }
}

fn tool_names(list: &common::Answer) -> Vec<String> {
    list.response()["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn each_tenant_sees_only_its_own_prefixed_tools_without_the_prefix() {
    let server = common::stdio_server("kit", "tenant_tools = true").replace(
        "args = [\"stdio\"]",
        "args = [\"stdio\"]\nenv = { TESTKIT_TENANT_TOOLS = \"acme,globex\" }",
    );
    // A rate on the tool as tenants know it: it holds for each tenant's own tool.
    let rates = "[rate_limits]\ndefault_tier = \"t\"\n[rate_limits.tiers.t]\ntools = { \"kit/monthly_report\" = { per_second = 0.01, burst = 1 } }\n";
    let gw = Gw::in_process(
        &server,
        &[
            common::TenantSpec {
                id: "acme",
                servers: &["kit"],
                namespacing: true,
            },
            common::TenantSpec {
                id: "globex",
                servers: &["kit"],
                namespacing: true,
            },
        ],
        rates,
    )
    .await;
    gw.ready().await;
    for (tenant, other) in [("acme", "globex"), ("globex", "acme")] {
        let s = gw.legacy(tenant).await;
        let names = tool_names(&s.request(1, "tools/list", json!({})).await);
        assert!(
            names.contains(&"kit__monthly_report".to_owned()),
            "{names:?}"
        );
        assert!(names.contains(&"kit__echo".to_owned()), "common tools stay");
        assert!(
            !names
                .iter()
                .any(|n| n.contains(&format!("{other}__")) || n.contains(&format!("{tenant}__"))),
            "no prefixed name is shown: {names:?}"
        );
        let a = s.call(2, "kit__monthly_report", json!({})).await;
        assert_eq!(
            common::text(a.response()),
            format!("monthly report of {tenant}")
        );
        // Another tenant's tool, named with its prefix, is an unknown tool.
        let a = s
            .call(3, &format!("kit__{other}__monthly_report"), json!({}))
            .await;
        let msg = a.response()["error"]["message"].as_str().unwrap_or("");
        assert!(msg.contains("unknown tool"), "{:?}", a.response());
        let a = s.call(4, "kit__monthly_report", json!({})).await;
        assert_eq!(
            a.response()["error"]["code"],
            -32029,
            "the tool's rate applies: {:?}",
            a.response()
        );
    }
    // The audit trail names the tool as the policy and the rate limit did.
    let trail = gw.config.with_file_name("palisade-data").join("audit");
    let text: String = palisade_audit::list_files(&trail)
        .unwrap_or_default()
        .iter()
        .map(|f| String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned())
        .collect();
    assert!(text.contains(r#""target":"monthly_report""#), "{text}");
    assert!(!text.contains("__monthly_report"), "{text}");
}
