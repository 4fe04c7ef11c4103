//! The `Authorization` header: `palisade::auth::bearer`, then the API-key helpers that see the
//! credential (`apikey::key_id`, `parse_stored_hash`, `Pepper::hash`).
//!
//! Checks:
//! - no panic on any header bytes;
//! - an accepted header starts (after optional whitespace) with the scheme `Bearer`, in any
//!   case, then a space, and the credential is the trimmed, non-empty rest;
//! - a stored hash that parses prints back (`hex`) to the same lowercase text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade::apikey;
use palisade::auth::bearer;

fuzz_target!(|data: &[u8]| {
    match bearer(data) {
        Ok(credential) => {
            assert!(!credential.is_empty());
            assert_eq!(credential, credential.trim_ascii());
            let v = data.trim_ascii();
            assert!(v.len() > 7 && v[..6].eq_ignore_ascii_case(b"bearer") && v[6] == b' ');
            assert_eq!(v[7..].trim_ascii(), credential);
            if let Ok(key) = std::str::from_utf8(credential) {
                let id = apikey::key_id(key);
                assert!(key.starts_with(&id));
                // The config form of the key's hash parses back to the hash.
                if let Ok(pepper) = apikey::Pepper::new(vec![7u8; 64]) {
                    let stored = pepper.stored_hash(key);
                    assert_eq!(
                        apikey::parse_stored_hash(&stored),
                        Some(pepper.hash(key.as_bytes()))
                    );
                }
            }
        }
        Err(_) => {
            let v = data.trim_ascii();
            let ok_shape = v.len() > 7
                && v[..6].eq_ignore_ascii_case(b"bearer")
                && v[6] == b' '
                && !v[7..].trim_ascii().is_empty();
            assert!(!ok_shape, "a well-formed bearer header was refused");
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Some(h) = apikey::parse_stored_hash(s) {
            let printed = hex::encode(h.0);
            assert!(
                s.to_ascii_lowercase().contains(&printed),
                "{s:?} parsed to {printed}"
            );
        }
    }
});
