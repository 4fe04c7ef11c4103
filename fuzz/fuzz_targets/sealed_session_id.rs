//! Sealed session ids (a fleet key is set): the `Mcp-Session-Id` value as the front door reads
//! it (`HeaderValue` → `to_str`), opened by `palisade::session::seal::Sealer::open`.
//!
//! Checks:
//! - no panic on any header bytes;
//! - only an id the fleet sealed opens (under the current or the previous key), and only for
//!   the principal it was sealed for; another principal's credential never opens one.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use palisade::auth::{AuthMethod, Principal};
use palisade::session::seal::{FleetKey, Sealer};

struct State {
    sealer: Sealer,
    issued: Vec<String>,
    alice: Principal,
    mallory: Principal,
}

fn principal(tenant: &str, subject: &str) -> Principal {
    Principal {
        tenant: palisade_ids::TenantId::parse(tenant).expect("a valid tenant id"),
        subject: subject.into(),
        method: AuthMethod::ApiKey,
        scopes: Arc::from(Vec::<String>::new()),
        credential: Some("pal_alice001".into()),
        expires_at_secs: None,
    }
}

fn key(fill: u8) -> FleetKey {
    FleetKey::new(&[fill; 32]).expect("a 32-byte key")
}

fn state() -> &'static State {
    static S: OnceLock<State> = OnceLock::new();
    S.get_or_init(|| {
        let alice = principal("acme", "key:pal_alice001");
        let mallory = principal("globex", "key:pal_alice001");
        let before_rotation = Sealer::new(key(9), None);
        let sealer = Sealer::new(key(7), Some(key(9)));
        let mut issued = vec![before_rotation.seal(&alice, "2025-06-18", Some("pal_alice001"))];
        issued.extend((0..3).map(|_| sealer.seal(&alice, "2025-11-25", Some("pal_alice001"))));
        for id in &issued {
            assert!(sealer.open(id, &alice).is_some(), "an issued id opens");
        }
        State {
            sealer,
            issued,
            alice,
            mallory,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let st = state();
    // The front door only reads header values that are visible ASCII.
    let Ok(value) = http::HeaderValue::from_bytes(data) else {
        return;
    };
    let Ok(id) = value.to_str() else {
        return;
    };
    if st.sealer.open(id, &st.alice).is_some() {
        assert!(
            st.issued.iter().any(|i| i == id),
            "only a sealed id opens: {id:?}"
        );
    }
    assert!(
        st.sealer.open(id, &st.mallory).is_none(),
        "another principal's id opened"
    );
});
