//! bench-auth: what authentication adds to each request, in process.
//!
//! Builds a registry of `--tenants` tenants with one API key each in a real store (SQLite in a
//! temp dir), and a real OAuth verifier whose issuer (a local identity provider serving its
//! metadata and JWKS over HTTP) signs ES256 access tokens. Then times
//! [`Authenticator::authenticate`] per request, which is all the front door does beyond a
//! no-auth gateway (the baseline: reading the header): for an API key (its HMAC, the cached
//! lookup, the tenant check), for a token seen before (the verified-token cache), and for a new
//! token each time (the signature check). Prints percentiles in microseconds as one JSON object.

use std::hint::black_box;
use std::time::Instant;

use clap::Parser;
use hdrhistogram::Histogram;
use palisade::apikey::Pepper;
use palisade::auth::Authenticator;
use palisade::config::Config;
use palisade::onboarding::{CreateTenant, IssueKey, Onboarding};
use palisade::registry::Registry;
use palisade_oauth::testing::{Idp, TestKey, now};
use palisade_oauth::{IssuerConfig, OAuthConfig, Verifier};
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Tenants (each with one key) in the registry.
    #[arg(long, default_value_t = 1000)]
    tenants: usize,
    /// Timed requests per case.
    #[arg(long, default_value_t = 200_000)]
    iterations: usize,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("bench-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let store = palisade_store::Store::open(&format!("sqlite://{}/r.db", dir.display())).await?;
    let config =
        Config::from_toml("[[servers]]\nname = \"kit\"\n[servers.stdio]\ncommand = \"true\"\n")?;
    let pepper_bytes = vec![7u8; 48];
    let pepper = Pepper::new(pepper_bytes.clone())?;
    let ops = Onboarding {
        store: &store,
        config: &config,
        pepper: &pepper,
    };
    let mut key = String::new();
    for i in 0..args.tenants {
        let id = format!("t{i}");
        ops.create_tenant(CreateTenant {
            id: id.clone(),
            display_name: None,
            servers: vec!["kit".into()],
            namespacing: true,
        })
        .await?;
        let issued = ops
            .issue_key(
                &id,
                IssueKey {
                    scopes: vec!["mcp".into()],
                    ..IssueKey::default()
                },
            )
            .await?;
        if i == args.tenants / 2 {
            key = issued.key;
        }
    }
    let registry = Registry::build(
        store.snapshot().await?,
        &mut |_, _| None,
        &Registry::default(),
    );

    let idp = Idp::start().await;
    let signing = TestKey::es256("bench-key");
    idp.set_keys("", &[&signing]);
    let resource = "https://gateway.bench/mcp";
    let mut oauth = OAuthConfig::new(
        resource,
        vec![IssuerConfig {
            tenant_claim: Some("/tenant_id".into()),
            ..IssuerConfig::new(idp.issuer(""))
        }],
    );
    oauth.scopes_supported = vec!["mcp".into()];
    oauth.required_scopes = vec!["mcp".into()];
    let verifier = std::sync::Arc::new(Verifier::new(oauth, reqwest::Client::new())?);
    let stop = tokio_util::sync::CancellationToken::new();
    let _refresh = verifier.start(stop.clone()).await;
    let claims = |jti: usize| {
        json!({
            "iss": idp.issuer(""), "sub": "user-1", "aud": resource, "exp": now() + 3600,
            "tenant_id": format!("t{}", args.tenants / 2), "scope": "mcp", "jti": jti.to_string(),
        })
    };
    let token_header = format!("Bearer {}", signing.token(&claims(0)));
    let fresh: Vec<String> = (1..=args.iterations + args.iterations / 10)
        .map(|i| format!("Bearer {}", signing.token(&claims(i))))
        .collect();
    let next_fresh = std::cell::Cell::new(0usize);

    let auth = Authenticator::new(Pepper::new(pepper_bytes)?, Some(verifier));
    let header = format!("Bearer {key}");

    let baseline = time(args.iterations, || async {
        black_box(header.as_bytes());
    })
    .await;
    let api_key = time(args.iterations, || async {
        let r = auth.authenticate(&registry, Some(header.as_bytes())).await;
        assert!(r.is_ok(), "the key must authenticate");
        black_box(r.ok());
    })
    .await;
    let jwt_cached = time(args.iterations, || async {
        let r = auth
            .authenticate(&registry, Some(token_header.as_bytes()))
            .await;
        assert!(r.is_ok(), "the token must authenticate: {:?}", r.err());
        black_box(r.ok());
    })
    .await;
    let jwt_new = time(args.iterations, || {
        let i = next_fresh.get();
        next_fresh.set(i + 1);
        let h = &fresh[i];
        let auth = &auth;
        let registry = &registry;
        async move {
            let r = auth.authenticate(registry, Some(h.as_bytes())).await;
            assert!(r.is_ok(), "the token must authenticate: {:?}", r.err());
            black_box(r.ok());
        }
    })
    .await;
    stop.cancel();
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{}",
        json!({
            "tenants": args.tenants,
            "iterations": args.iterations,
            "baseline_us": baseline,
            "api_key_us": api_key,
            "jwt_cached_us": jwt_cached,
            "jwt_new_token_us": jwt_new,
        })
    );
    Ok(())
}

/// Runs `op` `n` times (after `n / 10` warm-up runs) and returns p50/p90/p99/max in µs.
async fn time<F, Fut>(n: usize, op: F) -> serde_json::Value
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..n / 10 {
        op().await;
    }
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds");
    for _ in 0..n {
        let t = Instant::now();
        op().await;
        let _ = h.record(t.elapsed().as_nanos() as u64);
    }
    let us = |q: f64| (h.value_at_quantile(q) as f64 / 1000.0 * 100.0).round() / 100.0;
    json!({ "p50": us(0.5), "p90": us(0.9), "p99": us(0.99), "max": us(1.0) })
}
