//! The identifiers every Palisade crate agrees on, validated in one place: the gateway's config
//! and admin API accept a tenant id only if palisade-sql can use it to name a file (SQLite) and
//! a setting (PostgreSQL), so both ask [`valid_tenant_id`]. API keys and their ids start with
//! [`KEY_PREFIX`], which the gateway's authentication and its registry both read.

/// The prefix of every API key and key id: `pal_` (access tokens, JWTs, never start with it).
pub const KEY_PREFIX: &str = "pal_";

/// Longest tenant id: a DNS label's length, so it can name things downstream.
pub const MAX_TENANT_ID_LEN: usize = 63;

/// A tenant id: 1–63 of `[a-z0-9-]`, starting with a letter or digit.
pub fn valid_tenant_id(id: &str) -> bool {
    (1..=MAX_TENANT_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids() {
        for ok in ["a", "acme", "acme-2", "0day", &"a".repeat(63)] {
            assert!(valid_tenant_id(ok), "{ok}");
        }
        for bad in [
            "",
            "-acme",
            "Acme",
            "acme_2",
            "acme.io",
            "ac me",
            "é",
            "a/b",
            "../x",
            "a'b",
            &"a".repeat(64),
        ] {
            assert!(!valid_tenant_id(bad), "{bad}");
        }
    }
}
