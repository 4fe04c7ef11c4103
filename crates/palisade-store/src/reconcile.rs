//! [`Store::reconcile`]: the config file's tenants applied in one transaction.

use std::collections::{HashMap, HashSet};

use palisade_ids::TenantId;

use crate::error::StoreError;
use crate::model::{Declared, KeyHash, ReconcileReport, Source};
use crate::rows::{
    delete_tenant_rows, fetch_policy, fetch_tenant, hash_conflict, insert_key_row, insert_tenant,
    key_by_hash, key_cols, key_from_row, key_id_exists, now_ms, tenant_col, to_json,
    update_tenant_row, upsert_policy,
};
use crate::store::Store;

impl Store {
    /// Applies the tenants declared in the config file, in ONE transaction:
    ///
    /// - each declared tenant is inserted, or updated if it exists (display name, servers,
    ///   namespacing, limits; its source becomes `Config`; its status is kept, so an
    ///   operator's suspension survives a reload);
    /// - its config-sourced keys are replaced by the declared ones, matched by hash: a key
    ///   that stays keeps `created_at`, `last_used_at` and `revoked_at` (a revocation survives a
    ///   reload too); its API-sourced keys are kept;
    /// - its policy is set if declared (`Some`) and left alone if `None`;
    /// - config-sourced tenants no longer declared are deleted with their keys, policy and
    ///   secrets' metadata. API-sourced tenants are never touched unless declared.
    ///
    /// A reconcile that changes nothing writes nothing and leaves the revision alone.
    /// Declared keys must carry their tenant's id; a declared key whose hash is held by an
    /// API key or by another tenant's key is a [`StoreError::Conflict`].
    pub async fn reconcile(&self, declared: &[Declared]) -> Result<ReconcileReport, StoreError> {
        validate(declared)?;
        let now = now_ms();
        let mut report = ReconcileReport::default();
        let mut tx = self.write_tx().await?;

        // 1. Config tenants that are no longer declared go, with everything they own.
        let declared_ids: HashSet<&str> = declared.iter().map(|d| d.tenant.id.as_str()).collect();
        let config_tenants: Vec<TenantId> =
            sqlx::query("SELECT id FROM tenants WHERE source = 'config' ORDER BY id")
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|row| tenant_col(row, "id"))
                .collect::<Result<_, _>>()?;
        for id in config_tenants {
            if !declared_ids.contains(id.as_str()) {
                delete_tenant_rows(&mut tx, &id).await?;
                report.deleted.push(id);
            }
        }

        // 2. Config keys of declared tenants that are no longer declared go first, so that a
        //    key may move between tenants in one reload.
        let wanted: HashSet<(&str, KeyHash)> = declared
            .iter()
            .flat_map(|d| d.keys.iter().map(|k| (d.tenant.id.as_str(), k.hash)))
            .collect();
        let mut keys_changed: HashSet<TenantId> = HashSet::new();
        let config_keys = sqlx::query(concat!(
            "SELECT ",
            key_cols!(),
            " FROM api_keys WHERE source = 'config'"
        ))
        .fetch_all(&mut *tx)
        .await?;
        for row in &config_keys {
            let key = key_from_row(row)?;
            let tenant = key.tenant_id.as_str();
            if declared_ids.contains(tenant) && !wanted.contains(&(tenant, key.hash)) {
                sqlx::query("DELETE FROM api_keys WHERE id = $1")
                    .bind(&key.id)
                    .execute(&mut *tx)
                    .await?;
                keys_changed.insert(key.tenant_id);
            }
        }

        // 3. Each declared tenant, its keys and its policy.
        for d in declared {
            let t = &d.tenant;
            let existing = fetch_tenant(&mut tx, &t.id).await?;
            let mut changed = keys_changed.contains(&t.id);
            match &existing {
                None => {
                    insert_tenant(&mut tx, t, Source::Config, now).await?;
                    report.created.push(t.id.clone());
                }
                Some(cur) => {
                    changed |= cur.display_name != t.display_name
                        || cur.servers != t.servers
                        || cur.namespacing != t.namespacing
                        || cur.limits != t.limits
                        || cur.source != Source::Config;
                }
            }

            for k in &d.keys {
                match key_by_hash(&mut tx, &k.hash).await? {
                    None => {
                        insert_key_row(&mut tx, k, Source::Config, now).await?;
                        changed = true;
                    }
                    Some(cur) if cur.tenant_id == t.id && cur.source == Source::Config => {
                        let same = cur.id == k.id
                            && cur.name == k.name
                            && cur.scopes == k.scopes
                            && cur.expires_at_ms == k.expires_at_ms;
                        if !same {
                            if cur.id != k.id && key_id_exists(&mut tx, &k.id).await? {
                                return Err(StoreError::conflict("API key", &k.id));
                            }
                            sqlx::query(
                                "UPDATE api_keys SET id = $2, name = $3, scopes = $4, \
                                 expires_at = $5 WHERE id = $1",
                            )
                            .bind(&cur.id)
                            .bind(&k.id)
                            .bind(&k.name)
                            .bind(to_json(&k.scopes)?)
                            .bind(k.expires_at_ms)
                            .execute(&mut *tx)
                            .await?;
                            changed = true;
                        }
                    }
                    Some(_) => return Err(hash_conflict(&k.id)),
                }
            }

            if let Some(policy) = &d.policy
                && fetch_policy(&mut tx, &t.id).await?.as_ref() != Some(policy)
            {
                upsert_policy(&mut tx, &t.id, policy, now).await?;
                changed = true;
            }

            if existing.is_some() && changed {
                update_tenant_row(
                    &mut tx,
                    &t.id,
                    &t.display_name,
                    &t.servers,
                    t.namespacing,
                    &t.limits,
                    Source::Config,
                    now,
                )
                .await?;
                report.updated.push(t.id.clone());
            }
        }

        if report.is_empty() {
            // Nothing changed: undo the revision bump so gateways do not reload for nothing.
            tx.rollback().await?;
            return Ok(report);
        }
        tx.commit().await?;
        report.created.sort();
        report.updated.sort();
        report.deleted.sort();
        tracing::info!(
            created = report.created.len(),
            updated = report.updated.len(),
            deleted = report.deleted.len(),
            "declared tenants reconciled"
        );
        Ok(report)
    }
}

/// Declared tenants, and their keys' ids and hashes, must be unique; keys must name their
/// tenant.
fn validate(declared: &[Declared]) -> Result<(), StoreError> {
    let mut tenants = HashSet::new();
    let mut key_ids = HashSet::new();
    let mut hashes: HashMap<KeyHash, &str> = HashMap::new();
    for d in declared {
        let id = d.tenant.id.as_str();
        if !tenants.insert(id) {
            return Err(StoreError::Invalid(format!(
                "tenant `{id}` is declared more than once"
            )));
        }
        for k in &d.keys {
            if k.tenant_id != id {
                return Err(StoreError::Invalid(format!(
                    "key `{}` is declared under tenant `{id}` but names tenant `{}`",
                    k.id, k.tenant_id
                )));
            }
            if !key_ids.insert(k.id.as_str()) {
                return Err(StoreError::Invalid(format!(
                    "key `{}` is declared more than once",
                    k.id
                )));
            }
            if let Some(other) = hashes.insert(k.hash, k.id.as_str()) {
                return Err(StoreError::Invalid(format!(
                    "keys `{other}` and `{}` are the same key (same hash)",
                    k.id
                )));
            }
        }
    }
    Ok(())
}
