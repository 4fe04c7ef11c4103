//! Bearer-token validation for Palisade as an OAuth 2.1 resource server (MCP authorization).
//!
//! Owns the `[oauth]` configuration types, each issuer's JWKS cache (fetched, discovered through
//! RFC 8414 / OpenID Connect metadata when no `jwks_uri` is given, refreshed periodically and on an
//! unknown `kid` at most once per `jwks_min_refresh_secs`), the JWT checks, and a small cache of
//! verified tokens. It serves nothing over HTTP: metadata and `WWW-Authenticate` challenges are the
//! gateway's.
//!
//! Invariants:
//! - **Asymmetric only**: RS256, PS256, ES256, EdDSA, each per-issuer opt-in; `none`, `HS*` and
//!   symmetric JWKS entries are never used.
//! - **Issuer-bound keys**: a token is checked only against the keys of the configured issuer its
//!   `iss` names, and that `iss`, `aud` (the resource URI), `exp`, `nbf` and `sub` are checked.
//! - **Fail closed**: an issuer whose keys were never fetched refuses every token
//!   ([`TokenError::Unavailable`]); a failed refresh keeps the previous keys.
//! - Error messages never contain the token, its claim values or key material.

mod cache;
mod config;
mod error;
mod jwks;
mod verifier;

#[cfg(feature = "testing")]
pub mod testing;

pub use config::{IssuerConfig, OAuthConfig, SUPPORTED_ALGORITHMS};
pub use error::{ConfigError, TokenError};
pub use verifier::{Claims, Verifier};
