//! The `[oauth]` configuration table and its validation.

use std::collections::HashSet;
use std::net::IpAddr;

use reqwest::Url;
use serde::{Deserialize, Serialize};

/// The algorithms a token may be signed with. Everything else (`none`, `HS*`, …) is refused, both in
/// configuration and in tokens.
pub const SUPPORTED_ALGORITHMS: [&str; 4] = ["RS256", "PS256", "ES256", "EdDSA"];

/// The gateway's `[oauth]` table: it acts as an OAuth 2.1 resource server for these issuers.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OAuthConfig {
    /// Canonical resource URI of the gateway (RFC 8707); a token's `aud` must contain it.
    pub resource: String,
    /// Scopes advertised in protected-resource metadata.
    #[serde(default)]
    pub scopes_supported: Vec<String>,
    /// Scopes every request needs. Not enforced by [`crate::Verifier::verify`]: a token lacking
    /// them is valid but insufficient (403 `insufficient_scope`, see [`crate::Claims::missing_scopes`]).
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// Clock-skew allowance for `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
    /// An unknown `kid` triggers a JWKS refresh at most this often per issuer, in seconds.
    #[serde(default = "default_jwks_min_refresh_secs")]
    pub jwks_min_refresh_secs: u64,
    /// Background JWKS refresh period in seconds; a smaller `Cache-Control: max-age` (at least 60 s)
    /// wins.
    #[serde(default = "default_jwks_max_age_secs")]
    pub jwks_max_age_secs: u64,
    /// Tokens longer than this are refused before any decoding.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// The trusted authorization servers.
    pub issuers: Vec<IssuerConfig>,
}

/// One trusted authorization server.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The exact `iss` value of its tokens.
    pub issuer: String,
    /// Where its JWKS lives. When absent it is discovered from the issuer's RFC 8414 (then OpenID
    /// Connect) metadata.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// JSON pointer (e.g. `/tenant_id`, `/org/id`) to the tenant id, which must be a string.
    #[serde(default)]
    pub tenant_claim: Option<String>,
    /// Or: every token of this issuer belongs to this tenant (issuer-per-tenant).
    #[serde(default)]
    pub tenant: Option<String>,
    /// With `tenant_claim`: the tenants its tokens may name, exact ids or patterns with `*`
    /// (`acme-*`); a token naming any other is refused. Default: every tenant.
    #[serde(default = "any_tenant")]
    pub tenants: Vec<String>,
    /// Whether its tokens may open the admin API (with the admin scope and no tenant). Only
    /// issuers marked so can mint admin tokens; an issuer-per-tenant (`tenant`) never can.
    #[serde(default)]
    pub admin: bool,
    /// JSON pointer to a string or an array of strings holding the caller's roles.
    #[serde(default)]
    pub roles_claim: Option<String>,
    /// Top-level claims that must be present (`exp`, `iss`, `aud` and `sub` always are).
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// Accepted signing algorithms, a subset of RS256, PS256, ES256, EdDSA.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
}

fn any_tenant() -> Vec<String> {
    vec!["*".to_owned()]
}
fn default_leeway_secs() -> u64 {
    30
}
fn default_jwks_min_refresh_secs() -> u64 {
    30
}
fn default_jwks_max_age_secs() -> u64 {
    3600
}
fn default_max_token_bytes() -> usize {
    16 * 1024
}
fn default_algorithms() -> Vec<String> {
    SUPPORTED_ALGORITHMS
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}

impl IssuerConfig {
    /// Whether its tokens may name `tenant`.
    pub fn may_name(&self, tenant: &str) -> bool {
        match &self.tenant {
            Some(fixed) => fixed == tenant,
            None => self.tenants.iter().any(|p| glob(p, tenant)),
        }
    }

    /// An issuer with the default algorithms and no tenant mapping, roles or extra claims.
    pub fn new(issuer: impl Into<String>) -> Self {
        IssuerConfig {
            issuer: issuer.into(),
            jwks_uri: None,
            tenant_claim: None,
            tenant: None,
            tenants: any_tenant(),
            admin: false,
            roles_claim: None,
            required_claims: Vec::new(),
            algorithms: default_algorithms(),
        }
    }
}

impl OAuthConfig {
    /// A configuration with the defaults for everything but the resource and the issuers.
    pub fn new(resource: impl Into<String>, issuers: Vec<IssuerConfig>) -> Self {
        OAuthConfig {
            resource: resource.into(),
            scopes_supported: Vec::new(),
            required_scopes: Vec::new(),
            leeway_secs: default_leeway_secs(),
            jwks_min_refresh_secs: default_jwks_min_refresh_secs(),
            jwks_max_age_secs: default_jwks_max_age_secs(),
            max_token_bytes: default_max_token_bytes(),
            issuers,
        }
    }

    /// Checks the whole table. The message names the offending key and says how to fix it.
    pub fn validate(&self) -> Result<(), String> {
        check_url(&self.resource, "oauth.resource", false)?;
        for (key, list) in [
            ("oauth.scopes_supported", &self.scopes_supported),
            ("oauth.required_scopes", &self.required_scopes),
        ] {
            for scope in list {
                if scope.is_empty()
                    || scope
                        .chars()
                        .any(|c| c.is_whitespace() || c == '"' || c == '\\')
                {
                    return Err(format!(
                        "{key}: {scope:?} is not a valid scope token; use non-empty scopes without spaces, quotes or backslashes"
                    ));
                }
            }
        }
        if !self.scopes_supported.is_empty() {
            for scope in &self.required_scopes {
                if !self.scopes_supported.contains(scope) {
                    return Err(format!(
                        "oauth.required_scopes: {scope:?} is not listed in oauth.scopes_supported; add it there or remove it"
                    ));
                }
            }
        }
        if self.leeway_secs > 300 {
            return Err(format!(
                "oauth.leeway_secs: {} is too large; clock-skew leeway must be at most 300 seconds",
                self.leeway_secs
            ));
        }
        if self.jwks_min_refresh_secs == 0 {
            return Err("oauth.jwks_min_refresh_secs: must be at least 1 second, or anyone could make the gateway refetch keys on every request".to_owned());
        }
        if self.jwks_max_age_secs == 0 {
            return Err(
                "oauth.jwks_max_age_secs: must be at least 1 second (the default is 3600)"
                    .to_owned(),
            );
        }
        if !(256..=1024 * 1024).contains(&self.max_token_bytes) {
            return Err(format!(
                "oauth.max_token_bytes: {} is out of range; use a value between 256 and 1048576 (the default is 16384)",
                self.max_token_bytes
            ));
        }
        if self.issuers.is_empty() {
            return Err(
                "oauth.issuers: at least one issuer is needed; add an [[oauth.issuers]] table"
                    .to_owned(),
            );
        }
        let mut seen = HashSet::new();
        for (i, iss) in self.issuers.iter().enumerate() {
            let key = format!("oauth.issuers[{i}]");
            if iss.issuer.is_empty() {
                return Err(format!(
                    "{key}.issuer: must not be empty; set it to the exact `iss` of the tokens"
                ));
            }
            if !seen.insert(iss.issuer.as_str()) {
                return Err(format!(
                    "{key}.issuer: {:?} is configured twice; merge the two entries",
                    iss.issuer
                ));
            }
            match &iss.jwks_uri {
                Some(uri) => check_url(uri, &format!("{key}.jwks_uri"), true)?,
                None => check_url(&iss.issuer, &format!("{key}.issuer"), true).map_err(|e| {
                    format!("{e} (needed to discover the JWKS; or set {key}.jwks_uri explicitly)")
                })?,
            }
            match (&iss.tenant_claim, &iss.tenant) {
                (Some(_), Some(_)) => {
                    return Err(format!(
                        "{key}: both tenant_claim and tenant are set; keep tenant_claim (tenant read from the token) or tenant (every token of this issuer belongs to that tenant), not both"
                    ));
                }
                // An admin-only issuer: its tokens name no tenant.
                (None, None) if iss.admin => {}
                (None, None) => {
                    return Err(format!(
                        "{key}: set exactly one of tenant_claim (a JSON pointer such as \"/tenant_id\") or tenant (issuer-per-tenant), or admin = true for an issuer of admin tokens only"
                    ));
                }
                (Some(ptr), None) => check_pointer(ptr, &format!("{key}.tenant_claim"))?,
                (None, Some(t)) => {
                    if t.is_empty() {
                        return Err(format!(
                            "{key}.tenant: must not be empty; name the tenant this issuer belongs to"
                        ));
                    }
                }
            }
            if iss.tenant.is_some() && iss.admin {
                return Err(format!(
                    "{key}: an issuer-per-tenant (tenant) cannot be an admin issuer, or that tenant's identity provider could administer every tenant; configure a separate issuer with admin = true"
                ));
            }
            if iss.tenant.is_some() && iss.tenants != any_tenant() {
                return Err(format!(
                    "{key}.tenants: only applies with tenant_claim; an issuer with a fixed tenant names only that one"
                ));
            }
            if iss.tenants.is_empty() || iss.tenants.iter().any(String::is_empty) {
                return Err(format!(
                    "{key}.tenants: list tenant ids or patterns such as \"acme-*\" (the default, [\"*\"], is every tenant)"
                ));
            }
            if let Some(ptr) = &iss.roles_claim {
                check_pointer(ptr, &format!("{key}.roles_claim"))?;
            }
            for claim in &iss.required_claims {
                if claim.is_empty() {
                    return Err(format!(
                        "{key}.required_claims: contains an empty claim name; remove it"
                    ));
                }
            }
            if iss.algorithms.is_empty() {
                return Err(format!(
                    "{key}.algorithms: must not be empty; use a subset of {} (or omit it for all four)",
                    SUPPORTED_ALGORITHMS.join(", ")
                ));
            }
            for alg in &iss.algorithms {
                if !SUPPORTED_ALGORITHMS.contains(&alg.as_str()) {
                    return Err(format!(
                        "{key}.algorithms: {alg:?} is not allowed; use a subset of {} (symmetric algorithms and \"none\" are never accepted)",
                        SUPPORTED_ALGORITHMS.join(", ")
                    ));
                }
            }
        }
        Ok(())
    }
}

fn check_pointer(ptr: &str, key: &str) -> Result<(), String> {
    if !ptr.starts_with('/') || ptr.len() < 2 {
        return Err(format!(
            "{key}: {ptr:?} is not a JSON pointer; write it like \"/tenant_id\" or \"/org/id\""
        ));
    }
    Ok(())
}

/// `https`, or `http` to a loopback host only; absolute; no fragment.
fn check_url(value: &str, key: &str, fetched: bool) -> Result<(), String> {
    let url = Url::parse(value).map_err(|e| {
        format!("{key}: {value:?} is not an absolute URL ({e}); write it like https://host/path")
    })?;
    let secure = match url.scheme() {
        "https" => true,
        "http" => is_loopback(&url),
        _ => false,
    };
    if !secure || url.host().is_none() {
        return Err(format!(
            "{key}: {value:?} must be an https URL (plain http is accepted only for localhost)"
        ));
    }
    if url.fragment().is_some() {
        return Err(format!(
            "{key}: {value:?} must not contain a fragment (#…); remove it"
        ));
    }
    if fetched && !url.username().is_empty() {
        return Err(format!(
            "{key}: {value:?} must not contain credentials; remove the user@ part"
        ));
    }
    Ok(())
}

pub(crate) fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether a URL may be fetched for keys or metadata (same rule as the configuration).
pub(crate) fn fetchable(value: &str) -> bool {
    check_url(value, "", true).is_ok()
}

/// Whether `text` matches `pattern`, where `*` stands for any run of characters (case-sensitive:
/// tenant ids are).
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let mut parts: Vec<&str> = parts.collect();
    let Some(last) = parts.pop() else {
        return rest.is_empty();
    };
    for part in parts {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_patterns() {
        assert!(glob("*", "acme"));
        assert!(glob("acme", "acme") && !glob("acme", "acme2"));
        assert!(glob("acme-*", "acme-eu") && !glob("acme-*", "globex"));
        assert!(glob("*-eu", "acme-eu") && !glob("*-eu", "acme-us"));
        assert!(glob("a*b*c", "abc") && glob("a*b*c", "aXbYc") && !glob("a*b*c", "acb"));
        assert!(!glob("ab*ba", "aba"), "the parts may not overlap");
        let mut shared = IssuerConfig::new("https://idp.example.com");
        shared.tenant_claim = Some("/org".into());
        shared.tenants = vec!["acme".into(), "initech-*".into()];
        assert!(shared.may_name("acme") && shared.may_name("initech-1"));
        assert!(!shared.may_name("globex"));
        let mut own = IssuerConfig::new("https://acme.example.com");
        own.tenant = Some("acme".into());
        assert!(own.may_name("acme") && !own.may_name("globex"));
    }

    #[test]
    fn a_tenants_issuer_cannot_be_an_admin_issuer() {
        let mut own = IssuerConfig::new("https://acme.example.com");
        own.tenant = Some("acme".into());
        own.admin = true;
        let config = OAuthConfig::new("https://mcp.example.com/mcp", vec![own]);
        let e = config.validate().unwrap_err();
        assert!(e.contains("cannot be an admin issuer"), "{e}");
        let mut admins = IssuerConfig::new("https://admins.example.com");
        admins.admin = true;
        let config = OAuthConfig::new("https://mcp.example.com/mcp", vec![admins]);
        assert_eq!(
            config.validate(),
            Ok(()),
            "an admin-only issuer needs no tenant"
        );
    }
}
