//! Tool policy: what one tenant may reach, and which scopes a tool needs.
//!
//! A policy is a JSON document per tenant (stored in the registry, or declared in the config's
//! `[tenants.policy]`). Tool patterns are globs (`*`, `?`) matched against `<server>/<tool>`;
//! a pattern without `/` matches the tool name on any server. Deny wins over allow. A denied tool
//! is absent from `tools/list` and refused on `tools/call`; a tool whose scopes the caller lacks
//! is listed (so the client can step up) and refused with `insufficient_scope`.
//!
//! Some upstreams match tool names without regard to case, so a pattern that restricts (deny,
//! scopes, per-tool rates) matches any case of a name, and one that permits (allow) only its
//! exact case: `DELETE_all` can never slip past a deny of `delete_*`, nor an allow of `read_*`
//! let `READ_all` through.

use std::collections::BTreeMap;

use palisade_limits::Rate;
use serde::{Deserialize, Serialize};

/// The policy document, as stored and as the admin API shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Servers the tenant may use, a subset of its placed servers; absent means all of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub servers: Option<Vec<String>>,
    /// Tools allowed; empty means every tool.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_tools: Vec<String>,
    /// Tools denied, even when an allow pattern matches.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deny_tools: Vec<String>,
    /// Scopes a caller needs for the tools a pattern matches (all patterns that match apply).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tool_scopes: BTreeMap<String, Vec<String>>,
    /// Scopes granted by a role in the token's roles claim.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub roles: BTreeMap<String, Vec<String>>,
    /// The rate-limit tier (`[rate_limits.tiers.<name>]`); absent: the default tier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// The tenant's own rates, each replacing its tier's.
    #[serde(skip_serializing_if = "RateSet::is_empty")]
    pub rates: RateSet,
}

/// Rate limits of one tenant (a tier's, or the tenant's own overrides).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateSet {
    /// All the tenant's calls together.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<Rate>,
    /// Each subject's calls within the tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<Rate>,
    /// Calls of one tool (`server/tool`, globs allowed; the first matching pattern counts).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tools: BTreeMap<String, Rate>,
    /// The tenant's weight in a server's quota (`[[servers]] quota`), against the other tenants
    /// calling it at the same time (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) quota_weight: Option<f64>,
}

impl RateSet {
    pub fn is_empty(&self) -> bool {
        self.tenant.is_none()
            && self.subject.is_none()
            && self.tools.is_empty()
            && self.quota_weight.is_none()
    }

    /// The rate of `server/tool` under this set, if a pattern matches.
    pub fn tool(&self, server: &str, tool: &str) -> Option<(&str, Rate)> {
        self.tools
            .iter()
            .find(|(p, _)| matches_tool(p, server, tool, Case::Any))
            .map(|(p, r)| (p.as_str(), *r))
    }

    /// Checks rates and patterns; the message names the field and the fix.
    pub fn validate(&self) -> Result<(), String> {
        let rates = self
            .tenant
            .iter()
            .chain(&self.subject)
            .chain(self.tools.values());
        for r in rates {
            if !(r.per_second > 0.0 && r.per_second.is_finite()) || r.burst == 0 {
                return Err(format!(
                    "rate {{ per_second = {}, burst = {} }} is invalid: per_second must be > 0 and burst ≥ 1",
                    r.per_second, r.burst
                ));
            }
        }
        if let Some(w) = self.quota_weight
            && !(w > 0.0 && w.is_finite())
        {
            return Err(format!("quota_weight {w} is invalid: give a number > 0"));
        }
        self.tools.keys().try_for_each(|p| check_pattern(p))
    }
}

/// Why a call is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    /// The policy does not allow the tool at all.
    Tool,
    /// The caller lacks these scopes (space-separated, for `WWW-Authenticate`).
    Scopes(String),
}

impl Policy {
    /// Checks patterns and names; the message names the field and the fix.
    pub fn validate(&self) -> Result<(), String> {
        let patterns = self
            .allow_tools
            .iter()
            .chain(&self.deny_tools)
            .chain(self.tool_scopes.keys());
        patterns.into_iter().try_for_each(|p| check_pattern(p))?;
        let scopes = self
            .tool_scopes
            .values()
            .chain(self.roles.values())
            .flatten();
        for s in scopes {
            if s.is_empty() || s.bytes().any(|b| b <= b' ' || b == b'"' || b == b'\\') {
                return Err(format!(
                    "scope `{s}` is invalid: scopes are non-empty and contain no spaces, quotes or backslashes"
                ));
            }
        }
        self.rates.validate()
    }

    /// Whether the tenant may use this server at all.
    pub(crate) fn allows_server(&self, server: &str) -> bool {
        self.servers
            .as_ref()
            .is_none_or(|list| list.iter().any(|s| s == server))
    }

    /// Whether every tool is allowed (lists need no filtering).
    pub(crate) fn allows_all_tools(&self) -> bool {
        self.allow_tools.is_empty() && self.deny_tools.is_empty()
    }

    /// Whether the tool is allowed, regardless of scopes.
    pub fn allows_tool(&self, server: &str, tool: &str) -> bool {
        let hit = |case| move |p: &String| matches_tool(p, server, tool, case);
        (self.allow_tools.is_empty() || self.allow_tools.iter().any(hit(Case::Exact)))
            && !self.deny_tools.iter().any(hit(Case::Any))
    }

    /// Checks a call of `server/tool` by a caller holding `scopes`.
    pub fn check_call(&self, server: &str, tool: &str, scopes: &[String]) -> Result<(), Denied> {
        if !self.allows_tool(server, tool) {
            return Err(Denied::Tool);
        }
        let mut missing: Vec<&str> = Vec::new();
        for (pattern, needed) in &self.tool_scopes {
            if !matches_tool(pattern, server, tool, Case::Any) {
                continue;
            }
            for s in needed {
                if !scopes.iter().any(|have| have == s) && !missing.contains(&s.as_str()) {
                    missing.push(s);
                }
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Denied::Scopes(missing.join(" ")))
        }
    }

    /// The scopes the roles grant, added to `scopes` (without duplicates).
    pub fn grant_roles(&self, roles: &[String], scopes: &mut Vec<String>) {
        for role in roles {
            for s in self.roles.get(role).into_iter().flatten() {
                if !scopes.contains(s) {
                    scopes.push(s.clone());
                }
            }
        }
    }
}

/// A tool pattern is `tool` or `server/tool`, with globs, and not absurdly long.
fn check_pattern(p: &str) -> Result<(), String> {
    if p.is_empty() || p.len() > 256 || p.matches('/').count() > 1 {
        return Err(format!(
            "tool pattern `{p}` is invalid: use `tool`, `server/tool` or globs with `*` and `?`"
        ));
    }
    Ok(())
}

/// How a pattern's letters match a name's.
#[derive(Clone, Copy)]
enum Case {
    /// Only the same case: for patterns that permit.
    Exact,
    /// Any case (ASCII): for patterns that restrict.
    Any,
}

fn matches_tool(pattern: &str, server: &str, tool: &str, case: Case) -> bool {
    match pattern.split_once('/') {
        Some((sp, tp)) => {
            glob(sp.as_bytes(), server.as_bytes(), case)
                && glob(tp.as_bytes(), tool.as_bytes(), case)
        }
        None => glob(pattern.as_bytes(), tool.as_bytes(), case),
    }
}

/// `*` matches any run of bytes, `?` one byte; everything else matches itself (in any case with
/// [`Case::Any`]). Iterative with one backtrack point, so hostile patterns cannot make it
/// exponential.
fn glob(pattern: &[u8], text: &[u8], case: Case) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c)
                if c == b'?'
                    || c == text[t]
                    || matches!(case, Case::Any) && c.eq_ignore_ascii_case(&text[t]) =>
            {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|c| *c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let glob = |p: &[u8], t: &[u8]| glob(p, t, Case::Exact);
        assert!(glob(b"*", b""));
        assert!(glob(b"echo", b"echo"));
        assert!(!glob(b"echo", b"echoes"));
        assert!(glob(b"ec*o", b"echo"));
        assert!(glob(b"*_admin", b"db_admin"));
        assert!(!glob(b"*_admin", b"db_admins"));
        assert!(glob(b"a?c", b"abc"));
        assert!(glob(b"*a*b*c*", b"xxaxxbxxcxx"));
        assert!(!glob(b"*a*b*c*d", b"xxaxxbxxcxx"));
        assert!(!glob(b"echo", b"ECHO"));
    }

    #[test]
    fn restrictions_match_any_case_and_permissions_only_their_own() {
        let mut p = Policy {
            allow_tools: vec!["read_*".into(), "delete_*".into()],
            deny_tools: vec!["delete_*".into()],
            ..Policy::default()
        };
        p.tool_scopes
            .insert("read_secret*".into(), vec!["admin".into()]);
        assert!(p.allows_tool("kit", "read_x"));
        assert!(!p.allows_tool("kit", "READ_x"), "not what the allow names");
        assert!(!p.allows_tool("kit", "DELETE_all") && !p.allows_tool("kit", "Delete_all"));
        p.allow_tools.push("READ_*".into());
        assert_eq!(
            p.check_call("kit", "READ_SECRETS", &[]),
            Err(Denied::Scopes("admin".into())),
            "a scope requirement holds in any case"
        );
        p.rates.tools.insert(
            "read_*".into(),
            Rate {
                per_second: 1.0,
                burst: 1,
            },
        );
        assert!(p.rates.tool("kit", "READ_x").is_some(), "so does a rate");
    }

    #[test]
    fn deny_wins_and_server_patterns() {
        let p = Policy {
            allow_tools: vec!["kit/*".into()],
            deny_tools: vec!["*/delete_*".into(), "shutdown".into()],
            ..Policy::default()
        };
        assert!(p.allows_tool("kit", "echo"));
        assert!(!p.allows_tool("other", "echo"));
        assert!(!p.allows_tool("kit", "delete_row"));
        assert!(!p.allows_tool("kit", "shutdown"));
        assert_eq!(p.check_call("kit", "shutdown", &[]), Err(Denied::Tool));
    }

    #[test]
    fn scopes_and_roles() {
        let mut p = Policy::default();
        p.tool_scopes
            .insert("admin_*".into(), vec!["admin".into(), "mcp".into()]);
        p.roles.insert("operator".into(), vec!["admin".into()]);
        assert_eq!(
            p.check_call("kit", "admin_reset", &["mcp".into()]),
            Err(Denied::Scopes("admin".into()))
        );
        let mut scopes = vec!["mcp".to_owned()];
        p.grant_roles(&["operator".into(), "unknown".into()], &mut scopes);
        assert_eq!(scopes, ["mcp", "admin"]);
        assert_eq!(p.check_call("kit", "admin_reset", &scopes), Ok(()));
        assert_eq!(p.check_call("kit", "echo", &[]), Ok(()));
    }

    #[test]
    fn validation_names_the_problem() {
        let p = Policy {
            deny_tools: vec!["a/b/c".into()],
            ..Policy::default()
        };
        assert!(p.validate().unwrap_err().contains("a/b/c"));
        let mut p = Policy::default();
        p.roles.insert("r".into(), vec!["has space".into()]);
        assert!(p.validate().unwrap_err().contains("has space"));
        let json = r#"{"allow_tools":["*"],"bogus":1}"#;
        assert!(serde_json::from_str::<Policy>(json).is_err());
    }
}
