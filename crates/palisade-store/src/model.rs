//! The records the store keeps. Timestamps are unix milliseconds.

use std::fmt;

use palisade_ids::TenantId;
use serde::{Deserialize, Serialize};

/// Whether a tenant may use the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Active,
    Suspended,
}

impl Status {
    /// The stored (and serialized) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Suspended => "suspended",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Status> {
        match s {
            "active" => Some(Status::Active),
            "suspended" => Some(Status::Suspended),
            _ => None,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who owns a row: the config file (reconciled on every load) or the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Config,
    Api,
}

impl Source {
    /// The stored (and serialized) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::Api => "api",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Source> {
        match s {
            "config" => Some(Source::Config),
            "api" => Some(Source::Api),
            _ => None,
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tenant as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TenantRecord {
    pub id: TenantId,
    pub display_name: String,
    pub status: Status,
    pub status_reason: Option<String>,
    /// Names of the upstream servers the tenant may reach.
    pub servers: Vec<String>,
    /// Whether tool names are prefixed with their server.
    pub namespacing: bool,
    /// Opaque to the store; `{}` when unset.
    pub limits: serde_json::Value,
    pub source: Source,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A tenant to create. It starts [`Status::Active`].
#[derive(Debug, Clone, PartialEq)]
pub struct NewTenant {
    pub id: TenantId,
    pub display_name: String,
    pub servers: Vec<String>,
    pub namespacing: bool,
    /// Opaque to the store; pass `{}` for none.
    pub limits: serde_json::Value,
    pub source: Source,
}

impl NewTenant {
    /// A tenant with no servers, no namespacing and no limits.
    pub fn new(id: TenantId, display_name: impl Into<String>, source: Source) -> Self {
        NewTenant {
            id,
            display_name: display_name.into(),
            servers: Vec::new(),
            namespacing: false,
            limits: empty_object(),
            source,
        }
    }
}

/// Fields to change on a tenant; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct TenantPatch {
    pub display_name: Option<String>,
    pub servers: Option<Vec<String>>,
    pub namespacing: Option<bool>,
    pub limits: Option<serde_json::Value>,
}

/// An API key's HMAC-SHA256 under the gateway's pepper: all that is kept of a key. Its `Debug`
/// says nothing of it, so a record can be logged whole.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash(pub [u8; 32]);

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHash(<redacted>)")
    }
}

/// An API key as stored: its HMAC, never the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyRecord {
    /// The key's short public prefix, e.g. `pal_AbCd1234`.
    pub id: String,
    pub tenant_id: TenantId,
    pub name: String,
    /// HMAC-SHA256 of the key under the server pepper. Never serialized.
    #[serde(skip_serializing)]
    pub hash: KeyHash,
    pub scopes: Vec<String>,
    pub source: Source,
    pub created_at: i64,
    /// Unix milliseconds; `expires_at` in JSON.
    #[serde(rename = "expires_at")]
    pub expires_at_ms: Option<i64>,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

/// An API key to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    pub id: String,
    pub tenant_id: TenantId,
    pub name: String,
    pub hash: KeyHash,
    pub scopes: Vec<String>,
    pub source: Source,
    /// Unix milliseconds.
    pub expires_at_ms: Option<i64>,
}

/// A tenant declared in the config file, with its keys and (optionally) its policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Declared {
    pub tenant: NewTenant,
    pub keys: Vec<NewKey>,
    /// `None` leaves the stored policy alone.
    pub policy: Option<serde_json::Value>,
}

/// What [`crate::Store::reconcile`] changed, by tenant id (sorted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReconcileReport {
    pub created: Vec<TenantId>,
    pub updated: Vec<TenantId>,
    pub deleted: Vec<TenantId>,
}

impl ReconcileReport {
    /// Whether the reconcile changed nothing.
    pub fn is_empty(&self) -> bool {
        self.created.is_empty() && self.updated.is_empty() && self.deleted.is_empty()
    }
}

/// A secret's metadata: its name and when it was set. The value lives elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretMeta {
    pub name: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Everything a gateway needs to serve, read in one transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub revision: i64,
    /// Ordered by id.
    pub tenants: Vec<TenantRecord>,
    /// Keys that are not revoked (expired ones included), ordered by tenant, then creation.
    pub keys: Vec<KeyRecord>,
    /// `(tenant id, policy)`, ordered by tenant id.
    pub policies: Vec<(TenantId, serde_json::Value)>,
}

pub(crate) fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}
