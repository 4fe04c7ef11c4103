//! bench-auth: what authentication adds to each request, in process.
//!
//! Builds a registry of `--tenants` tenants with one API key each in a real store (SQLite in a
//! temp dir), then times [`Authenticator::authenticate`] per request, which is all the front
//! door does beyond a no-auth gateway: the header parse, the key's HMAC, the cached lookup,
//! the tenant check. Prints percentiles in microseconds as one JSON object.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

use clap::Parser;
use hdrhistogram::Histogram;
use palisade::auth::Authenticator;
use palisade::auth::apikey::Pepper;
use palisade::config::Config;
use palisade::onboarding::{CreateTenant, IssueKey, Onboarding};
use palisade::registry::Registry;
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
        &HashMap::new(),
        &Registry::default(),
    );
    let auth = Authenticator::new(Pepper::new(pepper_bytes)?, None);
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
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{}",
        json!({
            "tenants": args.tenants,
            "iterations": args.iterations,
            "baseline_us": baseline,
            "api_key_us": api_key,
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
