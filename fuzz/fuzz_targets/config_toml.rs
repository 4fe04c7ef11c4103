//! The gateway configuration: `palisade::config::Config::from_toml` (TOML through figment, then
//! `validate`), including the `[oauth]` table, servers, tenants and their policies.
//!
//! Checks:
//! - no panic on any text (the parse and every validation rule);
//! - parsing is deterministic (the same text gives the same config or the same error);
//! - a config that validated validates again, every server it lists is found by name, and
//!   its `[oauth]` table builds a `palisade_oauth::Verifier` (what `validate` accepted, the
//!   token verifier accepts too).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use palisade::config::Config;

fn client() -> &'static reqwest::Client {
    static C: OnceLock<reqwest::Client> = OnceLock::new();
    C.get_or_init(|| {
        // Nothing is fetched here; a client that could only reach loopback anyway.
        reqwest::Client::builder()
            .proxy(reqwest::Proxy::all("http://127.0.0.1:9").expect("proxy"))
            .build()
            .expect("client")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let first = Config::from_toml(text);
    let second = Config::from_toml(text);
    match (&first, &second) {
        (Ok(a), Ok(b)) => assert_eq!(format!("{a:?}"), format!("{b:?}")),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        _ => panic!("the same text parsed once and failed once"),
    }
    let Ok(cfg) = first else {
        return;
    };
    cfg.validate().expect("a validated config validates again");
    for s in &cfg.servers {
        assert!(
            cfg.server(&s.name).is_some(),
            "server {:?} not found by name",
            s.name
        );
    }
    let _ = cfg.data_paths(std::path::Path::new("/nonexistent-fuzz-base"));
    if let Some(oauth) = &cfg.oauth {
        if let Err(e) = palisade_oauth::Verifier::new(oauth.clone(), client().clone()) {
            panic!("validated [oauth] refused by the verifier: {e}");
        }
    }
});
