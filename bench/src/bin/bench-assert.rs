//! bench-assert: what a tenant assertion costs: minting one (the gateway, per call to a shared
//! server) and verifying it as palisade-sql does on every call (its `Verifier`: split, decode,
//! find the key by `kid`, check the Ed25519 signature, `iss`, `aud`, `exp`, `iat`, the tenant).
//! In process; prints one markdown table.
//!
//! `bench-assert mint DIR` instead makes a gateway key in DIR, writes `DIR/jwks.json` and prints
//! one assertion for tenant `acme` to audience `sql` (valid 60 s): what `bench/sql.py` needs to
//! call palisade-sql directly.

use std::path::Path;
use std::time::Instant;

use aws_lc_rs::signature::{ED25519, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use hdrhistogram::Histogram;
use palisade::assertion::{Assertions, Context};
use palisade_sql::assertion::{KeySource, Verifier};

const N: usize = 20_000;

fn context(scopes: &[String]) -> Context<'_> {
    Context {
        tenant: "acme",
        subject: "h:0123456789abcdef",
        scopes,
        audit_id: Some("019abcde-0000-7000-8000-000000000000"),
        audience: "sql",
    }
}

/// Opens (or makes) the keys in `dir/keys` and publishes them in `dir/jwks.json`.
fn keys(dir: &Path) -> anyhow::Result<Assertions> {
    let assertions = Assertions::open(dir.join("keys"))?;
    std::fs::write(dir.join("jwks.json"), assertions.jwks().to_string())?;
    Ok(assertions)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let scopes = vec!["mcp".to_owned(), "sql:read".to_owned()];
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [mint, dir] = args.as_slice()
        && mint == "mint"
    {
        let assertions = keys(Path::new(dir))?;
        println!("{}", assertions.mint(&context(&scopes)));
        return Ok(());
    }

    let dir = tempfile::tempdir()?;
    let assertions = keys(dir.path())?;
    let verifier = Verifier::new(
        KeySource::File(dir.path().join("jwks.json")),
        "sql".into(),
        "palisade".into(),
        5,
    );
    let ctx = context(&scopes);
    // The Ed25519 check alone, for how much of `verify` is the signature itself.
    let x = assertions.jwks()["keys"][0]["x"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let public = UnparsedPublicKey::new(&ED25519, B64URL.decode(x)?);
    let (mut mint, mut check) = (Histogram::<u64>::new(3)?, Histogram::<u64>::new(3)?);
    let mut signature = Histogram::<u64>::new(3)?;
    for i in 0..N + 2_000 {
        let t = Instant::now();
        let token = assertions.mint(&ctx);
        let minted = t.elapsed();
        let t = Instant::now();
        let tenant = verifier
            .verify(&token)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let verified = t.elapsed();
        anyhow::ensure!(tenant == "acme", "wrong tenant");
        let (signed, sig) = token.rsplit_once('.').unwrap_or_default();
        let sig = B64URL.decode(sig)?;
        let t = Instant::now();
        public
            .verify(signed.as_bytes(), &sig)
            .map_err(|_| anyhow::anyhow!("bad signature"))?;
        let checked = t.elapsed();
        if i >= 2_000 {
            mint.record(minted.as_nanos() as u64)?;
            check.record(verified.as_nanos() as u64)?;
            signature.record(checked.as_nanos() as u64)?;
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
        "| verify (palisade-sql) | {:.1} µs | {:.1} µs |",
        us(&check, 0.5),
        us(&check, 0.99)
    );
    println!(
        "| of which the Ed25519 check | {:.1} µs | {:.1} µs |",
        us(&signature, 0.5),
        us(&signature, 0.99)
    );
    println!(
        "| together (mint + verify) | {:.1} µs | |",
        us(&mint, 0.5) + us(&check, 0.5)
    );
    Ok(())
}
