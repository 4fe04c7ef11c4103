//! The rows of each table: the statements every [`Store`](crate::Store) method and the
//! reconciler run inside their transactions, and the mapping of rows to the model. Columns are
//! read by name; booleans and JSON columns are read the same way on SQLite and PostgreSQL.

use std::time::{SystemTime, UNIX_EPOCH};

use palisade_ids::TenantId;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::any::AnyRow;
use sqlx::{Any, AnyConnection, Row, Transaction};

use crate::error::{StoreError, unique_as_conflict};
use crate::model::{KeyHash, KeyRecord, NewKey, NewTenant, Source, Status, TenantRecord};

// Column lists, spelled once so every SELECT/RETURNING decodes the same way.
macro_rules! tenant_cols {
    () => {
        "id, display_name, status, status_reason, servers, namespacing, limits, source, \
         created_at, updated_at"
    };
}
macro_rules! key_cols {
    () => {
        "id, tenant_id, name, hash, scopes, source, created_at, expires_at, revoked_at, \
         last_used_at"
    };
}
pub(crate) use {key_cols, tenant_cols};

pub(crate) type Tx = Transaction<'static, Any>;

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub(crate) fn to_json<T: Serialize + ?Sized>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Invalid(format!("cannot encode JSON: {e}")))
}

pub(crate) fn json_col<T: DeserializeOwned>(
    row: &AnyRow,
    col: &str,
    what: &str,
    id: &str,
) -> Result<T, StoreError> {
    let text: String = row.try_get(col)?;
    serde_json::from_str(&text)
        .map_err(|e| StoreError::Corrupt(format!("{what} `{id}`: column `{col}` ({e})")))
}

/// PostgreSQL stores booleans as BOOLEAN, SQLite as 0/1 integers.
pub(crate) fn bool_col(row: &AnyRow, col: &str) -> Result<bool, StoreError> {
    match row.try_get::<bool, _>(col) {
        Ok(b) => Ok(b),
        Err(_) => Ok(row.try_get::<i64, _>(col)? != 0),
    }
}

pub(crate) fn source_col(row: &AnyRow, what: &str, id: &str) -> Result<Source, StoreError> {
    let s: String = row.try_get("source")?;
    Source::parse(&s)
        .ok_or_else(|| StoreError::Corrupt(format!("{what} `{id}`: unknown source `{s}`")))
}

/// A tenant id column; a stored id that is not one means the database was edited by hand.
pub(crate) fn tenant_col(row: &AnyRow, column: &str) -> Result<TenantId, StoreError> {
    let id: String = row.try_get(column)?;
    TenantId::parse(&id).map_err(|e| StoreError::Corrupt(format!("tenant id `{id}`: {e}")))
}

pub(crate) fn tenant_from_row(row: &AnyRow) -> Result<TenantRecord, StoreError> {
    let id = tenant_col(row, "id")?;
    let status: String = row.try_get("status")?;
    let status = Status::parse(&status)
        .ok_or_else(|| StoreError::Corrupt(format!("tenant `{id}`: unknown status `{status}`")))?;
    Ok(TenantRecord {
        display_name: row.try_get("display_name")?,
        status,
        status_reason: row.try_get("status_reason")?,
        servers: json_col(row, "servers", "tenant", &id)?,
        namespacing: bool_col(row, "namespacing")?,
        limits: json_col(row, "limits", "tenant", &id)?,
        source: source_col(row, "tenant", &id)?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        id,
    })
}

pub(crate) fn key_from_row(row: &AnyRow) -> Result<KeyRecord, StoreError> {
    let id: String = row.try_get("id")?;
    let hash: Vec<u8> = row.try_get("hash")?;
    let hash: [u8; 32] = hash.as_slice().try_into().map_err(|_| {
        StoreError::Corrupt(format!(
            "API key `{id}`: the stored hash has {} bytes, not 32",
            hash.len()
        ))
    })?;
    Ok(KeyRecord {
        tenant_id: tenant_col(row, "tenant_id")?,
        name: row.try_get("name")?,
        hash: KeyHash(hash),
        scopes: json_col(row, "scopes", "API key", &id)?,
        source: source_col(row, "API key", &id)?,
        created_at: row.try_get("created_at")?,
        expires_at_ms: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
        last_used_at: row.try_get("last_used_at")?,
        id,
    })
}

pub(crate) async fn tenant_exists(conn: &mut AnyConnection, id: &str) -> Result<bool, StoreError> {
    Ok(sqlx::query("SELECT id FROM tenants WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .is_some())
}

pub(crate) async fn fetch_tenant(
    conn: &mut AnyConnection,
    id: &str,
) -> Result<Option<TenantRecord>, StoreError> {
    sqlx::query(concat!(
        "SELECT ",
        tenant_cols!(),
        " FROM tenants WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .as_ref()
    .map(tenant_from_row)
    .transpose()
}

/// Inserts an active tenant with the given source.
pub(crate) async fn insert_tenant(
    conn: &mut AnyConnection,
    t: &NewTenant,
    source: Source,
    now: i64,
) -> Result<TenantRecord, StoreError> {
    let row = sqlx::query(concat!(
        "INSERT INTO tenants (id, display_name, status, status_reason, servers, namespacing, ",
        "limits, source, created_at, updated_at) ",
        "VALUES ($1, $2, 'active', NULL, $3, $4, $5, $6, $7, $7) RETURNING ",
        tenant_cols!()
    ))
    .bind(t.id.as_str())
    .bind(&t.display_name)
    .bind(to_json(&t.servers)?)
    .bind(t.namespacing)
    .bind(to_json(&t.limits)?)
    .bind(source.as_str())
    .bind(now)
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| unique_as_conflict(e, "tenant", &t.id))?;
    tenant_from_row(&row)
}

/// Rewrites a tenant's fields (status untouched); `updated_at` strictly increases.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn update_tenant_row(
    conn: &mut AnyConnection,
    id: &str,
    display_name: &str,
    servers: &[String],
    namespacing: bool,
    limits: &serde_json::Value,
    source: Source,
    now: i64,
) -> Result<TenantRecord, StoreError> {
    let row = sqlx::query(concat!(
        "UPDATE tenants SET display_name = $2, servers = $3, namespacing = $4, limits = $5, ",
        "source = $6, updated_at = CASE WHEN $7 > updated_at THEN $7 ELSE updated_at + 1 END ",
        "WHERE id = $1 RETURNING ",
        tenant_cols!()
    ))
    .bind(id)
    .bind(display_name)
    .bind(to_json(servers)?)
    .bind(namespacing)
    .bind(to_json(limits)?)
    .bind(source.as_str())
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::not_found("tenant", id))?;
    tenant_from_row(&row)
}

/// Deletes a tenant and everything it owns; false if it did not exist.
pub(crate) async fn delete_tenant_rows(
    conn: &mut AnyConnection,
    id: &str,
) -> Result<bool, StoreError> {
    // The foreign keys cascade too; deleting explicitly does not depend on them.
    for sql in [
        "DELETE FROM api_keys WHERE tenant_id = $1",
        "DELETE FROM policies WHERE tenant_id = $1",
        "DELETE FROM secret_meta WHERE tenant_id = $1",
    ] {
        sqlx::query(sql).bind(id).execute(&mut *conn).await?;
    }
    let done = sqlx::query("DELETE FROM tenants WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() > 0)
}

pub(crate) async fn key_by_hash(
    conn: &mut AnyConnection,
    hash: &KeyHash,
) -> Result<Option<KeyRecord>, StoreError> {
    sqlx::query(concat!(
        "SELECT ",
        key_cols!(),
        " FROM api_keys WHERE hash = $1"
    ))
    .bind(&hash.0[..])
    .fetch_optional(&mut *conn)
    .await?
    .as_ref()
    .map(key_from_row)
    .transpose()
}

pub(crate) async fn key_id_exists(conn: &mut AnyConnection, id: &str) -> Result<bool, StoreError> {
    Ok(sqlx::query("SELECT id FROM api_keys WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .is_some())
}

/// The conflict reported when a key's hash is already stored. It names the new key, never
/// the holder of the hash, which may belong to another tenant.
pub(crate) fn hash_conflict(key_id: &str) -> StoreError {
    StoreError::conflict("an API key with the same hash as", key_id)
}

/// Inserts a key (not revoked, never used), checking id and hash first.
pub(crate) async fn insert_key_row(
    conn: &mut AnyConnection,
    k: &NewKey,
    source: Source,
    now: i64,
) -> Result<KeyRecord, StoreError> {
    if k.id.is_empty() {
        return Err(StoreError::Invalid("an API key id cannot be empty".into()));
    }
    if key_id_exists(conn, &k.id).await? {
        return Err(StoreError::conflict("API key", &k.id));
    }
    if key_by_hash(conn, &k.hash).await?.is_some() {
        return Err(hash_conflict(&k.id));
    }
    let row = sqlx::query(concat!(
        "INSERT INTO api_keys (id, tenant_id, name, hash, scopes, source, created_at, ",
        "expires_at, revoked_at, last_used_at) ",
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, NULL) RETURNING ",
        key_cols!()
    ))
    .bind(&k.id)
    .bind(k.tenant_id.as_str())
    .bind(&k.name)
    .bind(&k.hash.0[..])
    .bind(to_json(&k.scopes)?)
    .bind(source.as_str())
    .bind(now)
    .bind(k.expires_at_ms)
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| unique_as_conflict(e, "API key", &k.id))?;
    key_from_row(&row)
}

pub(crate) async fn fetch_policy(
    conn: &mut AnyConnection,
    tenant: &str,
) -> Result<Option<serde_json::Value>, StoreError> {
    sqlx::query("SELECT document FROM policies WHERE tenant_id = $1")
        .bind(tenant)
        .fetch_optional(&mut *conn)
        .await?
        .map(|row| json_col(&row, "document", "policy of tenant", tenant))
        .transpose()
}

pub(crate) async fn upsert_policy(
    conn: &mut AnyConnection,
    tenant: &str,
    policy: &serde_json::Value,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO policies (tenant_id, document, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT (tenant_id) DO UPDATE SET document = excluded.document, \
         updated_at = excluded.updated_at",
    )
    .bind(tenant)
    .bind(to_json(policy)?)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
