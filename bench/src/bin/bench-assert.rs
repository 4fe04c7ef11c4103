//! bench-assert: what a tenant assertion costs: minting one (the gateway, per call to a shared
//! server) and verifying it as a shared server would (split, decode, find the key by `kid`,
//! check the Ed25519 signature, parse the claims, check `aud` and `exp`). In process; prints one
//! markdown table.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{ED25519, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use hdrhistogram::Histogram;
use palisade::assertion::{Assertions, Context};

const N: usize = 20_000;

fn verify(token: &str, kid: &str, key: &UnparsedPublicKey<Vec<u8>>) -> anyhow::Result<()> {
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s)) = (parts.next(), parts.next(), parts.next()) else {
        anyhow::bail!("not a JWS");
    };
    let header: serde_json::Value = serde_json::from_slice(&B64URL.decode(h)?)?;
    anyhow::ensure!(
        header["alg"] == "EdDSA" && header["kid"] == kid,
        "wrong key"
    );
    let sig = B64URL.decode(s)?;
    key.verify(&token.as_bytes()[..h.len() + 1 + c.len()], &sig)
        .map_err(|_| anyhow::anyhow!("bad signature"))?;
    let claims: serde_json::Value = serde_json::from_slice(&B64URL.decode(c)?)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    anyhow::ensure!(claims["aud"] == "sql", "wrong audience");
    anyhow::ensure!(claims["exp"].as_u64().is_some_and(|e| e > now), "expired");
    anyhow::ensure!(claims["tenant"].is_string(), "no tenant");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let assertions = Assertions::open(dir.path().join("keys"))?;
    let jwks = assertions.jwks();
    let jwk = &jwks["keys"][0];
    let kid = jwk["kid"].as_str().unwrap_or_default().to_owned();
    let key = UnparsedPublicKey::new(
        &ED25519,
        B64URL.decode(jwk["x"].as_str().unwrap_or_default())?,
    );
    let scopes = vec!["mcp".to_owned(), "sql:read".to_owned()];
    let ctx = Context {
        tenant: "acme",
        subject: "h:0123456789abcdef",
        scopes: &scopes,
        audit_id: Some("019abcde-0000-7000-8000-000000000000"),
        audience: "sql",
    };
    let (mut mint, mut check) = (Histogram::<u64>::new(3)?, Histogram::<u64>::new(3)?);
    for i in 0..N + 2_000 {
        let t = Instant::now();
        let token = assertions.mint(&ctx);
        let minted = t.elapsed();
        let t = Instant::now();
        verify(&token, &kid, &key)?;
        let verified = t.elapsed();
        if i >= 2_000 {
            mint.record(minted.as_nanos() as u64)?;
            check.record(verified.as_nanos() as u64)?;
        }
    }
    let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!("| {N} assertions | p50 | p99 |");
    println!("|---|---:|---:|");
    println!(
        "| mint (gateway) | {:.1} µs | {:.1} µs |",
        us(&mint, 0.5),
        us(&mint, 0.99)
    );
    println!(
        "| verify (server) | {:.1} µs | {:.1} µs |",
        us(&check, 0.5),
        us(&check, 0.99)
    );
    println!(
        "| together | {:.1} µs | |",
        us(&mint, 0.5) + us(&check, 0.5)
    );
    Ok(())
}
