//! Errors. Messages never contain the token, its claim values or key material.

/// The `[oauth]` table is unusable.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("invalid [oauth] configuration: {0}")]
pub struct ConfigError(pub String);

/// Why a bearer token was refused. Every variant is a 401 `invalid_token` except
/// [`TokenError::Unavailable`], which is a 503: the issuer's keys could never be fetched, so nothing
/// from it can be verified (fail closed).
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// Longer than `max_token_bytes`; refused before any decoding.
    #[error("bearer token is longer than the {max_bytes}-byte limit")]
    TooLarge {
        /// The configured limit.
        max_bytes: usize,
    },
    /// Not a compact JWS of three base64url parts with JSON header and payload.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The signing algorithm is not one this issuer accepts (`none` and `HS*` never are).
    #[error(
        "token signing algorithm is not accepted: only the issuer's configured asymmetric algorithms (RS256, PS256, ES256, EdDSA) are, with a key of matching type"
    )]
    Algorithm,
    /// `iss` is not one of the configured issuers.
    #[error("token issuer is not a trusted issuer")]
    UnknownIssuer,
    /// No key of the issuer's JWKS matches the token's `kid` (checked again after a rate-limited
    /// refresh).
    #[error("token signing key is not in the issuer's published key set")]
    UnknownKey,
    /// The signature does not verify with the issuer's key.
    #[error("token signature is invalid")]
    Signature,
    /// `exp` is in the past (beyond the leeway).
    #[error("token has expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token is not valid yet (nbf is in the future)")]
    NotYetValid,
    /// `aud` does not contain the gateway's resource URI.
    #[error("token audience does not include this resource")]
    Audience,
    /// The tenant the token names is not one its issuer may issue tokens for (`tenants`).
    #[error("token names a tenant its issuer is not allowed to issue tokens for")]
    TenantNotAllowed,
    /// A required claim is absent (or not of the expected type).
    #[error("token lacks the required claim `{0}`")]
    MissingClaim(String),
    /// No JWKS could ever be fetched for this issuer: its tokens are refused until one is.
    #[error(
        "signing keys of issuer {issuer} are unavailable (its key set could not be fetched); its tokens are refused until a fetch succeeds"
    )]
    Unavailable {
        /// The configured issuer.
        issuer: String,
    },
}

impl TokenError {
    /// True for [`TokenError::Unavailable`] (answer 503, not 401).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, TokenError::Unavailable { .. })
    }

    pub(crate) fn from_jwt(err: &jsonwebtoken::errors::Error) -> TokenError {
        use jsonwebtoken::errors::ErrorKind as K;
        match err.kind() {
            K::InvalidSignature
            | K::InvalidEcdsaKey
            | K::InvalidEddsaKey
            | K::InvalidRsaKey(_)
            | K::InvalidKeyFormat => TokenError::Signature,
            K::ExpiredSignature => TokenError::Expired,
            K::ImmatureSignature => TokenError::NotYetValid,
            K::InvalidAudience => TokenError::Audience,
            K::InvalidIssuer => TokenError::UnknownIssuer,
            K::MissingRequiredClaim(c) => TokenError::MissingClaim(c.clone()),
            K::InvalidClaimFormat(_) => {
                TokenError::Malformed("a time claim (exp or nbf) is not a number")
            }
            K::InvalidAlgorithm
            | K::MissingAlgorithm
            | K::UnsupportedAlgorithm
            | K::InvalidAlgorithmName => TokenError::Algorithm,
            K::Base64(_) => TokenError::Malformed("a part is not valid base64url"),
            K::Json(_) | K::Utf8(_) => TokenError::Malformed("header or payload is not valid JSON"),
            _ => TokenError::Malformed("token could not be validated"),
        }
    }
}
