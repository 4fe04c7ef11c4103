//! Session ids: the `Mcp-Session-Id` header value as the front door reads it (`HeaderValue` →
//! `to_str`) and looks it up (`palisade::session::Sessions::get` / `remove`).
//!
//! Checks:
//! - no panic on any header bytes;
//! - only an id the gateway issued finds a session, and only for the principal it was issued
//!   to; an unknown id never removes one;
//! - issued ids are 43 base64url characters (256 random bits) and lookups by them work.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use palisade::auth::{AuthMethod, Principal};
use palisade::config::Limits;
use palisade::metrics::Metrics;
use palisade::session::{Session, SessionLimits, Sessions};
use serde_json::value::RawValue;

struct State {
    sessions: Sessions,
    issued: Vec<Arc<Session>>,
    alice: Principal,
    mallory: Principal,
}

fn principal(tenant: &str, subject: &str) -> Principal {
    Principal {
        tenant: palisade_ids::TenantId::parse(tenant).expect("a valid tenant id"),
        subject: subject.into(),
        method: AuthMethod::ApiKey,
        scopes: Arc::from(Vec::<String>::new()),
        credential: Some("k1".into()),
        expires_at_secs: None,
    }
}

fn state() -> &'static State {
    static S: OnceLock<State> = OnceLock::new();
    S.get_or_init(|| {
        let sessions = Sessions::new(
            SessionLimits::of(&Limits::default()),
            Arc::new(Metrics::new()),
        );
        let alice = principal("acme", "key:alice");
        let mallory = principal("globex", "key:alice");
        let issued = (0..4)
            .map(|_| {
                let caps = RawValue::from_string("{}".into()).expect("raw");
                sessions
                    .create(&alice, "2025-11-25", caps)
                    .ok()
                    .expect("session")
            })
            .collect::<Vec<_>>();
        for s in &issued {
            assert_eq!(s.id.len(), 43);
            assert!(
                s.id.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            );
        }
        State {
            sessions,
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
    let known = st.issued.iter().find(|s| &*s.id == id);
    match st.sessions.get(id, &st.alice) {
        Ok(s) => assert!(
            known.is_some_and(|k| Arc::ptr_eq(k, &s)),
            "unknown id {id:?} found a session"
        ),
        Err(_) => assert!(known.is_none(), "issued id {id:?} not found"),
    }
    assert!(
        st.sessions.get(id, &st.mallory).is_err(),
        "another tenant found a session by id"
    );
    if known.is_none() {
        assert!(
            st.sessions.remove(id).is_none(),
            "an unknown id removed a session"
        );
    }
    for s in &st.issued {
        assert!(st.sessions.get(&s.id, &st.alice).is_ok());
    }
});
