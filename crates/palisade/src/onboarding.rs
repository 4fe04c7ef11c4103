//! Onboarding: the operations on tenants, API keys and policies that the admin API and the
//! CLI both offer, with their validation. They write to the registry store only; running
//! gateways see the change at their next refresh (within a second).
//!
//! Keys are generated here and returned in plain form exactly once; the store only ever sees
//! their HMAC under the server pepper.

use palisade_ids::TenantId;
use palisade_store::{
    KeyRecord, NewKey, NewTenant, Source, Status, Store, StoreError, TenantPatch, TenantRecord,
};
use serde::Deserialize;

use crate::apikey::{Pepper, generate_key, key_id};
use crate::auth::now_ms;
use crate::config::Config;
use crate::policy::Policy;

/// Why an operation was refused; the message names the thing and the fix.
#[derive(Debug, thiserror::Error)]
pub enum OnboardError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("registry store: {0}")]
    Store(StoreError),
}

impl From<StoreError> for OnboardError {
    fn from(e: StoreError) -> OnboardError {
        match e {
            StoreError::NotFound { .. } => OnboardError::NotFound(e.to_string()),
            StoreError::Conflict { .. } => OnboardError::Conflict(e.to_string()),
            StoreError::Invalid(_) => OnboardError::Invalid(e.to_string()),
            other => OnboardError::Store(other),
        }
    }
}

impl OnboardError {
    pub(crate) fn status(&self) -> u16 {
        match self {
            OnboardError::Invalid(_) => 400,
            OnboardError::NotFound(_) => 404,
            OnboardError::Conflict(_) => 409,
            OnboardError::Store(_) => 503,
        }
    }
}

/// A new tenant, as the admin API and CLI take it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    pub id: String,
    pub display_name: Option<String>,
    pub servers: Vec<String>,
    #[serde(default = "yes")]
    pub namespacing: bool,
}

fn yes() -> bool {
    true
}

/// Changes to a tenant; absent fields stay.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateTenant {
    pub display_name: Option<String>,
    pub servers: Option<Vec<String>>,
    pub namespacing: Option<bool>,
}

/// A key to issue.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueKey {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Seconds until the key expires; absent means never.
    pub expires_in_secs: Option<u64>,
}

/// A freshly issued key: `key` is shown once and never stored.
pub struct Issued {
    pub key: String,
    pub record: KeyRecord,
}

pub struct Onboarding<'a> {
    pub store: &'a Store,
    pub config: &'a Config,
    pub pepper: &'a Pepper,
}

impl Onboarding<'_> {
    pub async fn create_tenant(&self, req: CreateTenant) -> Result<TenantRecord, OnboardError> {
        let Ok(id) = TenantId::parse(&req.id) else {
            return Err(OnboardError::Invalid(format!(
                "`{}` is not a valid tenant id: use 1-63 of [a-z0-9-], starting with a letter or digit",
                req.id
            )));
        };
        self.check_servers(&req.servers, req.namespacing)?;
        let display_name = req.display_name.unwrap_or_else(|| req.id.clone());
        check_display_name(&display_name)?;
        Ok(self
            .store
            .create_tenant(&NewTenant {
                id,
                display_name,
                servers: req.servers,
                namespacing: req.namespacing,
                limits: serde_json::json!({}),
                source: Source::Api,
            })
            .await?)
    }

    pub(crate) async fn update_tenant(
        &self,
        id: &str,
        req: UpdateTenant,
    ) -> Result<TenantRecord, OnboardError> {
        let current = self.tenant(id).await?;
        self.refuse_declared(&current, "change")?;
        let servers = req.servers.as_ref().unwrap_or(&current.servers);
        self.check_servers(servers, req.namespacing.unwrap_or(current.namespacing))?;
        if let Some(name) = &req.display_name {
            check_display_name(name)?;
        }
        let patch = TenantPatch {
            display_name: req.display_name,
            servers: req.servers,
            namespacing: req.namespacing,
            limits: None,
        };
        Ok(self.store.update_tenant(id, &patch).await?)
    }

    pub(crate) async fn suspend(
        &self,
        id: &str,
        reason: Option<&str>,
    ) -> Result<TenantRecord, OnboardError> {
        if let Some(r) = reason {
            check_display_name(r)?;
        }
        Ok(self.store.set_status(id, Status::Suspended, reason).await?)
    }

    pub(crate) async fn resume(&self, id: &str) -> Result<TenantRecord, OnboardError> {
        Ok(self.store.set_status(id, Status::Active, None).await?)
    }

    pub(crate) async fn delete_tenant(&self, id: &str) -> Result<(), OnboardError> {
        let current = self.tenant(id).await?;
        self.refuse_declared(&current, "delete")?;
        Ok(self.store.delete_tenant(id).await?)
    }

    pub(crate) async fn tenant(&self, id: &str) -> Result<TenantRecord, OnboardError> {
        self.store
            .get_tenant(id)
            .await?
            .ok_or_else(|| OnboardError::NotFound(format!("tenant `{id}` not found")))
    }

    pub async fn issue_key(&self, tenant: &str, req: IssueKey) -> Result<Issued, OnboardError> {
        check_scopes(&req.scopes)?;
        check_display_name(&req.name)?;
        let tenant = self.tenant(tenant).await?.id;
        let expires_at_ms = match req.expires_in_secs {
            Some(0) => {
                return Err(OnboardError::Invalid(
                    "expires_in_secs must be greater than 0 (omit it for a key that does not expire)".into(),
                ));
            }
            Some(s) => Some(
                now_ms().saturating_add(
                    i64::try_from(s)
                        .unwrap_or(i64::MAX / 2)
                        .saturating_mul(1000),
                ),
            ),
            None => None,
        };
        let key = generate_key();
        let record = self
            .store
            .insert_key(&NewKey {
                id: key_id(&key),
                tenant_id: tenant,
                name: req.name,
                hash: self.pepper.hash(key.as_bytes()),
                scopes: req.scopes,
                source: Source::Api,
                expires_at_ms,
            })
            .await?;
        Ok(Issued { key, record })
    }

    pub(crate) async fn policy(&self, tenant: &str) -> Result<Policy, OnboardError> {
        self.tenant(tenant).await?;
        match self.store.get_policy(tenant).await? {
            None => Ok(Policy::default()),
            Some(v) => serde_json::from_value(v).map_err(|e| {
                OnboardError::Invalid(format!(
                    "the stored policy of `{tenant}` is unreadable ({e}); replace it"
                ))
            }),
        }
    }

    pub(crate) async fn set_policy(
        &self,
        tenant: &str,
        policy: &Policy,
    ) -> Result<(), OnboardError> {
        policy.validate().map_err(OnboardError::Invalid)?;
        if let Some(servers) = &policy.servers
            && let Some(s) = servers.iter().find(|s| self.config.server(s).is_none())
        {
            return Err(OnboardError::Invalid(format!(
                "policy names server `{s}`, which the gateway's config does not define"
            )));
        }
        let value =
            serde_json::to_value(policy).map_err(|e| OnboardError::Invalid(e.to_string()))?;
        Ok(self.store.put_policy(tenant, &value).await?)
    }

    fn check_servers(&self, servers: &[String], namespacing: bool) -> Result<(), OnboardError> {
        if let Some(s) = servers.iter().find(|s| self.config.server(s).is_none()) {
            return Err(OnboardError::Invalid(format!(
                "server `{s}` is not defined in the gateway's config ([[servers]])"
            )));
        }
        if !namespacing && servers.len() > 1 {
            return Err(OnboardError::Invalid(
                "namespacing may be false only for a tenant with exactly one server".into(),
            ));
        }
        Ok(())
    }

    fn refuse_declared(&self, t: &TenantRecord, verb: &str) -> Result<(), OnboardError> {
        if t.source == Source::Config {
            return Err(OnboardError::Conflict(format!(
                "tenant `{}` is declared in the config file: {verb} it there (suspending it and managing its keys works here)",
                t.id
            )));
        }
        Ok(())
    }
}

fn check_display_name(s: &str) -> Result<(), OnboardError> {
    if s.len() > 200 || s.chars().any(char::is_control) {
        return Err(OnboardError::Invalid(
            "names and reasons are at most 200 characters, without control characters".into(),
        ));
    }
    Ok(())
}

fn check_scopes(scopes: &[String]) -> Result<(), OnboardError> {
    if let Some(s) = scopes.iter().find(|s| {
        s.is_empty()
            || s.len() > 128
            || s.bytes()
                .any(|b| b <= b' ' || b == b'"' || b == b'\\' || b >= 0x7f)
    }) {
        return Err(OnboardError::Invalid(format!(
            "scope `{}` is invalid: scopes are 1-128 printable ASCII characters without spaces, quotes or backslashes",
            s.escape_debug()
        )));
    }
    Ok(())
}
