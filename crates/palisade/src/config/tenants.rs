//! `[[tenants]]` declared in the config: their servers, keys, scopes, policy and secrets.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use palisade_ids::TenantId;
use palisade_store::KeyHash;
use serde::Deserialize;

use super::{Problems, template, yes};
use crate::apikey::parse_stored_hash;

/// A tenant declared in the config. It is reconciled into the registry store at start and on
/// every reload; removing it from the file deletes it. Tenants created through the admin API
/// or the CLI live only in the store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantDecl {
    /// A slug: `[a-z0-9-]`, 1–63 characters.
    pub id: String,
    pub display_name: Option<String>,
    /// Names of the servers this tenant may use.
    pub servers: Vec<String>,
    /// Prefix tool and prompt names with `<server>__` and resource URIs with `<server>+`.
    /// May be `false` only for a tenant with a single server.
    #[serde(default = "yes")]
    pub namespacing: bool,
    /// API keys as `hmac-sha256:<hex>` = HMAC-SHA256(pepper, key); see `palisade key new`.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Scopes the keys above carry.
    #[serde(default)]
    pub(crate) key_scopes: Vec<String>,
    /// The tenant's tool policy; when absent, the one set through the admin API (if any) stays.
    pub policy: Option<crate::policy::Policy>,
    /// Secrets for its dedicated servers' templates (`${secret:NAME}`), read from the gateway
    /// host when an instance starts: `NAME = { env = "VAR" }` or `NAME = { file = "/path" }`.
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretSource>,
}

/// Where a tenant's secret is read from. The value never appears in the config, logs or errors.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    /// An environment variable of the gateway process.
    pub env: Option<String>,
    /// A file on the gateway host (one trailing newline is dropped).
    pub file: Option<PathBuf>,
}

/// The fix for a key that is not a stored hash.
pub(super) const STORED_KEY_FORMAT: &str = "keys are stored as `hmac-sha256:<64 hex digits>`; create one with `palisade key new --config FILE`";

/// Checks every tenant against the servers defined; returns the hashes of their keys (each
/// listed once), which no admin key may repeat.
pub(super) fn check(
    tenants: &[TenantDecl],
    servers: &HashSet<&str>,
    problems: &mut Problems,
) -> HashSet<KeyHash> {
    let mut ids = HashSet::new();
    let mut key_hashes = HashSet::new();
    for (i, t) in tenants.iter().enumerate() {
        let key = format!("tenants[{i}]");
        if TenantId::parse(&t.id).is_err() {
            problems.add(
                format!("{key}.id"),
                format!(
                    "`{}` is not a valid tenant id: use 1-63 of [a-z0-9-], starting with a letter or digit",
                    t.id
                ),
            );
        } else if !ids.insert(t.id.as_str()) {
            problems.add(
                format!("{key}.id"),
                format!("tenant `{}` is defined twice", t.id),
            );
        }
        for s in t.servers.iter().filter(|s| !servers.contains(s.as_str())) {
            problems.add(
                format!("{key}.servers"),
                format!(
                    "tenant `{}` names server `{s}`, which no [[servers]] entry defines",
                    t.id
                ),
            );
        }
        if !t.namespacing && t.servers.len() > 1 {
            problems.add(
                format!("{key}.namespacing"),
                format!(
                    "tenant `{}` has {} servers; names can only stay unprefixed with exactly one",
                    t.id,
                    t.servers.len()
                ),
            );
        }
        for k in &t.keys {
            match parse_stored_hash(k) {
                None => problems.add(format!("{key}.keys"), STORED_KEY_FORMAT),
                Some(hash) if !key_hashes.insert(hash) => problems.add(
                    format!("{key}.keys"),
                    "this key is listed twice in the config (a key belongs to exactly one tenant)",
                ),
                Some(_) => {}
            }
        }
        for (name, source) in &t.secrets {
            if !template::valid_secret_name(name) {
                problems.add(
                    format!("{key}.secrets"),
                    format!("`{name}` is not a valid secret name: use [A-Za-z0-9_-]"),
                );
            } else if source.env.is_some() == source.file.is_some() {
                problems.add(
                    format!("{key}.secrets.{name}"),
                    "give exactly one of env = \"VAR\" or file = \"/path\"",
                );
            }
        }
        if let Some(Err(e)) = t.policy.as_ref().map(|p| p.validate()) {
            problems.add(format!("{key}.policy"), e);
        }
    }
    key_hashes
}
