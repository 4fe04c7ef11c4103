//! Who is calling: the front door turns credentials into a [`Principal`] exactly once per
//! request, and nothing below it reads a tenant from anywhere else (invariant 1).
//!
//! Today the credentials are static API keys from the config; OAuth and a tenant store plug in
//! behind [`Authenticator`] without the rest of the gateway changing.

pub mod apikey;

use std::sync::Arc;

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub tenant: Arc<str>,
    /// Stable, non-secret identity of the caller within the tenant (for an API key: `key:` and
    /// the first hex digits of its stored hash).
    pub subject: Arc<str>,
    pub method: AuthMethod,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    ApiKey,
}

/// Why a request was not authenticated. Messages never include the presented credential.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing credentials: send `Authorization: Bearer <API key>`")]
    Missing,
    #[error("malformed Authorization header: expected `Bearer <API key>`")]
    Malformed,
    #[error("invalid credentials: the API key is not recognised")]
    Invalid,
}

/// Turns the `Authorization` header into a principal.
pub trait Authenticator: Send + Sync {
    fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Principal, AuthError>;
}

/// The bearer credential of an `Authorization` header value.
pub fn bearer(value: &[u8]) -> Result<&[u8], AuthError> {
    let value = value.trim_ascii();
    let (scheme, rest) = value
        .iter()
        .position(|b| *b == b' ')
        .map(|i| (&value[..i], value[i + 1..].trim_ascii()))
        .ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer(b"Bearer abc").unwrap(), b"abc");
        assert_eq!(bearer(b"bearer   abc ").unwrap(), b"abc");
        assert_eq!(bearer(b"Basic abc").unwrap_err(), AuthError::Malformed);
        assert_eq!(bearer(b"Bearer").unwrap_err(), AuthError::Malformed);
        assert_eq!(bearer(b"Bearer  ").unwrap_err(), AuthError::Malformed);
    }
}
