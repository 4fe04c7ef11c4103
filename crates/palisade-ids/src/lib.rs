//! The identifiers every Palisade crate agrees on, validated in one place. A [`TenantId`] can
//! only be made from a valid id, so the store, the gateway and palisade-sql hold ids that
//! palisade-sql can use to name a file (SQLite) and a setting (PostgreSQL). API keys and their
//! ids start with [`KEY_PREFIX`], which the gateway's authentication and its registry both read.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// The prefix of every API key and key id: `pal_` (access tokens, JWTs, never start with it).
pub const KEY_PREFIX: &str = "pal_";

/// Longest tenant id: a DNS label's length, so it can name things downstream.
pub const MAX_TENANT_ID_LEN: usize = 63;

/// A tenant id: 1–63 of `[a-z0-9-]`, starting with a letter or digit. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(Arc<str>);

/// Why a string is not a tenant id; its message says what one looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidTenantId;

impl fmt::Display for InvalidTenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a tenant id is 1-{MAX_TENANT_ID_LEN} lowercase letters, digits or '-', not starting with '-'"
        )
    }
}

impl std::error::Error for InvalidTenantId {}

impl TenantId {
    /// The id, if `id` is one.
    pub fn parse(id: &str) -> Result<TenantId, InvalidTenantId> {
        if valid_tenant_id(id) {
            Ok(TenantId(id.into()))
        } else {
            Err(InvalidTenantId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether `id` is a tenant id (see [`TenantId`]).
fn valid_tenant_id(id: &str) -> bool {
    (1..=MAX_TENANT_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
}

impl TryFrom<&str> for TenantId {
    type Error = InvalidTenantId;
    fn try_from(id: &str) -> Result<TenantId, InvalidTenantId> {
        TenantId::parse(id)
    }
}

impl TryFrom<String> for TenantId {
    type Error = InvalidTenantId;
    fn try_from(id: String) -> Result<TenantId, InvalidTenantId> {
        TenantId::parse(&id)
    }
}

impl std::str::FromStr for TenantId {
    type Err = InvalidTenantId;
    fn from_str(id: &str) -> Result<TenantId, InvalidTenantId> {
        TenantId::parse(id)
    }
}

impl Deref for TenantId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for TenantId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A tenant id names a directory or file of its own (it cannot climb out of its parent).
impl AsRef<std::path::Path> for TenantId {
    fn as_ref(&self) -> &std::path::Path {
        std::path::Path::new(&*self.0)
    }
}

impl Borrow<str> for TenantId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<TenantId> for Arc<str> {
    fn from(id: TenantId) -> Arc<str> {
        id.0
    }
}

impl From<TenantId> for String {
    fn from(id: TenantId) -> String {
        id.0.to_string()
    }
}

impl PartialEq<str> for TenantId {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for TenantId {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl serde::Serialize for TenantId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for TenantId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<TenantId, D::Error> {
        let id = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        TenantId::parse(&id).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids() {
        for ok in ["a", "acme", "acme-2", "0day", &"a".repeat(63)] {
            assert!(valid_tenant_id(ok), "{ok}");
            assert_eq!(
                TenantId::parse(ok).map(|t| t.to_string()),
                Ok(ok.to_string())
            );
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
            assert_eq!(TenantId::parse(bad), Err(InvalidTenantId), "{bad}");
        }
    }

    #[test]
    fn serde_validates() {
        let id: TenantId = serde_json::from_str(r#""acme""#).unwrap();
        assert_eq!(id, "acme");
        assert_eq!(serde_json::to_string(&id).unwrap(), r#""acme""#);
        let bad = serde_json::from_str::<TenantId>(r#""../etc""#).unwrap_err();
        assert!(bad.to_string().contains("a tenant id is"), "{bad}");
    }
}
