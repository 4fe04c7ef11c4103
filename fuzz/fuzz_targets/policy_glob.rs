//! Tool policies and their globs: a policy document parsed as `palisade::policy::Policy`
//! (admin API and config), validated, and its patterns matched through `Policy::allows_tool`,
//! `Policy::check_call` and `RateSet::tool`; and the issuer tenant patterns of `[oauth]`.
//!
//! Input fields (split at NUL): a policy (JSON), a pattern, a server name, a tool name.
//!
//! Checks:
//! - no panic on any document, pattern or name;
//! - a parsed policy serializes and parses back equal, and validates the same way;
//! - the glob agrees with a reference matcher (dynamic programming over bytes: `*` any run,
//!   `?` one byte) for `tool` and `server/tool` patterns: in their own case as allow patterns,
//!   in any ASCII case as deny and scope patterns;
//! - deny wins over allow;
//! - an OAuth issuer's `tenants` patterns (`palisade_oauth::IssuerConfig::may_name`: `*` only,
//!   exact case) agree with the same reference;
//! - matching stays polynomial: patterns and names are capped at 256 bytes here, as
//!   `validate` caps patterns.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade::policy::{Denied, Policy};
use palisade_fuzz::{fields, text};

fn glob_ref(p: &[u8], t: &[u8], any_case: bool) -> bool {
    glob_ref_with(p, t, any_case, true)
}

/// `question`: whether `?` is a wildcard (tool patterns) or a literal (tenant patterns).
fn glob_ref_with(p: &[u8], t: &[u8], any_case: bool, question: bool) -> bool {
    // m[j] = pattern[..i] matches text[..j]
    let mut m = vec![false; t.len() + 1];
    m[0] = true;
    for &c in p {
        let mut next = vec![false; t.len() + 1];
        if c == b'*' {
            let mut any = false;
            for j in 0..=t.len() {
                any |= m[j];
                next[j] = any;
            }
        } else {
            for j in 1..=t.len() {
                next[j] = m[j - 1]
                    && ((question && c == b'?')
                        || c == t[j - 1]
                        || any_case && c.eq_ignore_ascii_case(&t[j - 1]));
            }
        }
        m = next;
    }
    m[t.len()]
}

fn matches_ref(pattern: &str, server: &str, tool: &str, any_case: bool) -> bool {
    match pattern.split_once('/') {
        Some((sp, tp)) => {
            glob_ref(sp.as_bytes(), server.as_bytes(), any_case)
                && glob_ref(tp.as_bytes(), tool.as_bytes(), any_case)
        }
        None => glob_ref(pattern.as_bytes(), tool.as_bytes(), any_case),
    }
}

fuzz_target!(|data: &[u8]| {
    let f = fields(data, 4);
    let doc = text(f[0]);
    let cap = |b: &[u8]| text(&b[..b.len().min(256)]);
    let (pattern, server, tool) = (cap(f[1]), cap(f[2]), cap(f[3]));

    if let Ok(policy) = serde_json::from_str::<Policy>(&doc) {
        let verdict = policy.validate();
        let json = serde_json::to_string(&policy).expect("a policy serializes");
        let back: Policy = serde_json::from_str(&json).expect("own output parses");
        assert_eq!(back, policy, "policy round trip: {json}");
        assert_eq!(back.validate(), verdict);
        // Whatever it says, asking never panics, and deny wins.
        let allowed = policy.allows_tool(&server, &tool);
        let denied_by = policy
            .deny_tools
            .iter()
            .any(|p| matches_ref(p, &server, &tool, true));
        if denied_by {
            assert!(!allowed, "a denied tool is allowed");
        }
        match policy.check_call(&server, &tool, &[]) {
            Err(Denied::Tool) => assert!(!allowed),
            Ok(()) | Err(Denied::Scopes(_)) => assert!(allowed),
        }
        let _ = policy.rates.tool(&server, &tool);
        let mut scopes = Vec::new();
        policy.grant_roles(&[tool.clone()], &mut scopes);
    }

    // Allow patterns match their own case only; deny patterns (and scopes, rates) any case.
    let exact = matches_ref(&pattern, &server, &tool, false);
    let any = matches_ref(&pattern, &server, &tool, true);
    assert!(any || !exact);
    let allow = Policy {
        allow_tools: vec![pattern.clone()],
        ..Policy::default()
    };
    assert_eq!(
        allow.allows_tool(&server, &tool),
        exact,
        "allow {pattern:?} on {server:?}/{tool:?}"
    );
    let deny = Policy {
        deny_tools: vec![pattern.clone()],
        ..Policy::default()
    };
    assert_eq!(
        deny.allows_tool(&server, &tool),
        !any,
        "deny {pattern:?} on {server:?}/{tool:?}"
    );
    let mut scoped = Policy::default();
    scoped.tool_scopes.insert(pattern.clone(), vec!["s".into()]);
    assert_eq!(
        scoped.check_call(&server, &tool, &[]).is_err(),
        any,
        "scopes {pattern:?}"
    );
    // The tenant patterns of an OAuth issuer (`tenants = ["acme-*"]`): `*` only, exact case.
    let mut issuer = palisade_oauth::IssuerConfig::new("https://idp.example.test");
    issuer.tenants = vec![pattern.clone()];
    assert_eq!(
        issuer.may_name(&tool),
        glob_ref_with(pattern.as_bytes(), tool.as_bytes(), false, false),
        "issuer tenants {pattern:?} naming {tool:?}"
    );

    let both = Policy {
        allow_tools: vec![pattern.clone()],
        deny_tools: vec![pattern.clone()],
        ..Policy::default()
    };
    assert!(!both.allows_tool(&server, &tool));
});
