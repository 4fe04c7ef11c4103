//! bench-idp: a local OAuth issuer for the gateway benchmark. Serves its metadata and JWKS,
//! prints one line `issuer=<url> token=<JWT>` (an ES256 access token for `--tenant` and
//! `--resource`, scope `mcp`), then serves until killed.

use clap::Parser;
use palisade_oauth::testing::{Idp, TestKey, now};
use serde_json::json;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    tenant: String,
    /// The gateway's `[oauth] resource`.
    #[arg(long)]
    resource: String,
    #[arg(long, default_value_t = 3600)]
    ttl_secs: i64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let idp = Idp::start().await;
    let key = TestKey::es256("bench");
    idp.set_keys("", &[&key]);
    let token = key.token(&json!({
        "iss": idp.issuer(""), "sub": "bench-user", "aud": args.resource,
        "exp": now() + args.ttl_secs, "tenant_id": args.tenant, "scope": "mcp",
    }));
    println!("issuer={} token={token}", idp.issuer(""));
    std::future::pending::<()>().await;
}
