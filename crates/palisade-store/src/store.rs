//! [`Store`]: opening, the revision, and the row-level operations.

use std::str::FromStr;
use std::sync::Once;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AnyConnection, AnyPool, Connection, Row};

use crate::error::{StoreError, redact_url};
use crate::model::{
    KeyRecord, NewKey, NewTenant, SecretMeta, Snapshot, Status, TenantPatch, TenantRecord,
};
use crate::rows::{
    Tx, delete_tenant_rows, fetch_policy, fetch_tenant, insert_key_row, insert_tenant, json_col,
    key_cols, key_from_row, now_ms, tenant_col, tenant_cols, tenant_exists, tenant_from_row,
    update_tenant_row, upsert_policy,
};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");
static INSTALL_DRIVERS: Once = Once::new();

/// Which database a [`Store`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// An embedded SQLite file (the default).
    Sqlite,
    /// A PostgreSQL server (several gateways sharing one registry).
    Postgres,
}

/// The registry store. Cheap to clone: all clones share one connection pool.
#[derive(Clone)]
pub struct Store {
    pub(crate) pool: AnyPool,
    pub(crate) backend: Backend,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens `sqlite://PATH` (the file and its directory are created if missing) or
    /// `postgres://…`, and brings the schema up to date.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        INSTALL_DRIVERS.call_once(sqlx::any::install_default_drivers);
        let scheme = url
            .split_once(':')
            .map(|(s, _)| s.to_ascii_lowercase())
            .unwrap_or_default();
        let (backend, url) = match scheme.as_str() {
            "sqlite" => (Backend::Sqlite, prepare_sqlite(url)?),
            "postgres" | "postgresql" => (Backend::Postgres, url.to_string()),
            _ => return Err(StoreError::UnsupportedUrl(redact_url(url))),
        };
        let open_err = |source| StoreError::Open {
            target: redact_url(&url),
            source,
        };

        // One direct connection first: it fails fast with the real reason (refused, bad
        // password, no such database), where the pool would only report a timeout.
        let mut first = AnyConnection::connect(&url).await.map_err(open_err)?;
        if backend == Backend::Sqlite {
            // Persistent in the file: readers never block the writer.
            let row = sqlx::query("PRAGMA journal_mode = WAL")
                .fetch_one(&mut first)
                .await
                .map_err(open_err)?;
            let mode: String = row.try_get(0)?;
            if !mode.eq_ignore_ascii_case("wal") {
                tracing::warn!(journal_mode = %mode, "the SQLite store could not switch to WAL mode");
            }
        }
        first.close().await.map_err(open_err)?;

        let options = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(10));
        let options = match backend {
            Backend::Postgres => options.max_connections(10),
            // SQLite has one writer at a time anyway; each connection costs a worker thread and
            // its page cache in the gateway's memory.
            Backend::Sqlite => options.max_connections(2).after_connect(|conn, _meta| {
                Box::pin(async move {
                    sqlx::query("PRAGMA foreign_keys = ON")
                        .execute(&mut *conn)
                        .await?;
                    // How long a writer waits for another before failing with "busy".
                    sqlx::query("PRAGMA busy_timeout = 5000")
                        .execute(&mut *conn)
                        .await?;
                    // The registry is small: 512 KiB of page cache per connection is plenty.
                    sqlx::query("PRAGMA cache_size = -512")
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            }),
        };
        let pool = options.connect(&url).await.map_err(open_err)?;

        let migrator = match backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator.run(&pool).await?;
        tracing::debug!(?backend, "registry store open");
        Ok(Store { pool, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes the pool; later calls fail. Dropping every clone has the same effect, lazily.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// A counter bumped in the same transaction as every write except
    /// [`record_last_used`](Store::record_last_used). Gateways poll it (every ~250 ms) to know
    /// when to reload their in-memory cache.
    pub async fn revision(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT revision FROM registry_meta WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("revision")?)
    }

    /// The revision, all tenants, all non-revoked keys and all policies, read in one
    /// transaction so they agree with each other.
    pub async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let mut tx = match self.backend {
            // SQLite: a deferred transaction reads one WAL snapshot from its first SELECT.
            Backend::Sqlite => self.pool.begin().await?,
            // PostgreSQL: READ COMMITTED would give each statement its own snapshot.
            Backend::Postgres => {
                self.pool
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await?
            }
        };
        let revision: i64 = sqlx::query("SELECT revision FROM registry_meta WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?
            .try_get("revision")?;
        let tenants = sqlx::query(concat!(
            "SELECT ",
            tenant_cols!(),
            " FROM tenants ORDER BY id"
        ))
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(tenant_from_row)
        .collect::<Result<Vec<_>, _>>()?;
        let keys = sqlx::query(concat!(
            "SELECT ",
            key_cols!(),
            " FROM api_keys WHERE revoked_at IS NULL ORDER BY tenant_id, created_at, id"
        ))
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(key_from_row)
        .collect::<Result<Vec<_>, _>>()?;
        let policies = sqlx::query("SELECT tenant_id, document FROM policies ORDER BY tenant_id")
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|row| {
                let tenant = tenant_col(row, "tenant_id")?;
                let doc = json_col(row, "document", "policy of tenant", &tenant)?;
                Ok((tenant, doc))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        tx.commit().await?;
        Ok(Snapshot {
            revision,
            tenants,
            keys,
            policies,
        })
    }

    // ---- tenants ----

    /// Creates an active tenant. [`StoreError::Conflict`] if the id exists.
    pub async fn create_tenant(&self, t: &NewTenant) -> Result<TenantRecord, StoreError> {
        let mut tx = self.write_tx().await?;
        if tenant_exists(&mut tx, &t.id).await? {
            return Err(StoreError::conflict("tenant", t.id.as_str()));
        }
        let tenant = insert_tenant(&mut tx, t, t.source, now_ms()).await?;
        tx.commit().await?;
        Ok(tenant)
    }

    pub async fn get_tenant(&self, id: &str) -> Result<Option<TenantRecord>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        fetch_tenant(&mut conn, id).await
    }

    /// All tenants, ordered by id.
    pub async fn list_tenants(&self) -> Result<Vec<TenantRecord>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            tenant_cols!(),
            " FROM tenants ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(tenant_from_row)
        .collect()
    }

    /// Changes the fields set in `p`. [`StoreError::NotFound`] if the tenant is absent.
    pub async fn update_tenant(
        &self,
        id: &str,
        p: &TenantPatch,
    ) -> Result<TenantRecord, StoreError> {
        let mut tx = self.write_tx().await?;
        let cur = fetch_tenant(&mut tx, id)
            .await?
            .ok_or_else(|| StoreError::not_found("tenant", id))?;
        let tenant = update_tenant_row(
            &mut tx,
            id,
            p.display_name.as_deref().unwrap_or(&cur.display_name),
            p.servers.as_ref().unwrap_or(&cur.servers),
            p.namespacing.unwrap_or(cur.namespacing),
            p.limits.as_ref().unwrap_or(&cur.limits),
            cur.source,
            now_ms(),
        )
        .await?;
        tx.commit().await?;
        Ok(tenant)
    }

    /// Suspends or resumes a tenant; `reason` replaces the stored one (`None` clears it).
    pub async fn set_status(
        &self,
        id: &str,
        status: Status,
        reason: Option<&str>,
    ) -> Result<TenantRecord, StoreError> {
        let mut tx = self.write_tx().await?;
        let row = sqlx::query(concat!(
            "UPDATE tenants SET status = $2, status_reason = $3, ",
            "updated_at = CASE WHEN $4 > updated_at THEN $4 ELSE updated_at + 1 END ",
            "WHERE id = $1 RETURNING ",
            tenant_cols!()
        ))
        .bind(id)
        .bind(status.as_str())
        .bind(reason)
        .bind(now_ms())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::not_found("tenant", id))?;
        let tenant = tenant_from_row(&row)?;
        tx.commit().await?;
        Ok(tenant)
    }

    /// Deletes a tenant with its keys, policy and secrets' metadata.
    pub async fn delete_tenant(&self, id: &str) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        if !delete_tenant_rows(&mut tx, id).await? {
            return Err(StoreError::not_found("tenant", id));
        }
        tx.commit().await?;
        Ok(())
    }

    // ---- API keys ----

    /// Stores a key's HMAC. [`StoreError::NotFound`] if the tenant is absent,
    /// [`StoreError::Conflict`] if the id or the hash is taken.
    pub async fn insert_key(&self, k: &NewKey) -> Result<KeyRecord, StoreError> {
        let mut tx = self.write_tx().await?;
        if !tenant_exists(&mut tx, &k.tenant_id).await? {
            return Err(StoreError::not_found("tenant", k.tenant_id.as_str()));
        }
        let key = insert_key_row(&mut tx, k, k.source, now_ms()).await?;
        tx.commit().await?;
        Ok(key)
    }

    /// A tenant's keys, revoked ones included, ordered by creation.
    pub async fn list_keys(&self, tenant: &str) -> Result<Vec<KeyRecord>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        if !tenant_exists(&mut conn, tenant).await? {
            return Err(StoreError::not_found("tenant", tenant));
        }
        sqlx::query(concat!(
            "SELECT ",
            key_cols!(),
            " FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, id"
        ))
        .bind(tenant)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(key_from_row)
        .collect()
    }

    /// Marks a key revoked (idempotent: a revoked key keeps its first `revoked_at`).
    /// [`StoreError::NotFound`] unless the key exists and belongs to `tenant`.
    pub async fn revoke_key(&self, tenant: &str, key_id: &str) -> Result<KeyRecord, StoreError> {
        let mut tx = self.write_tx().await?;
        let row = sqlx::query(concat!(
            "SELECT ",
            key_cols!(),
            " FROM api_keys WHERE id = $1 AND tenant_id = $2"
        ))
        .bind(key_id)
        .bind(tenant)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::not_found("API key", key_id))?;
        let key = key_from_row(&row)?;
        if key.revoked_at.is_some() {
            // Nothing changes, so the revision must not move either.
            tx.rollback().await?;
            return Ok(key);
        }
        let row = sqlx::query(concat!(
            "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 RETURNING ",
            key_cols!()
        ))
        .bind(key_id)
        .bind(now_ms())
        .fetch_one(&mut *tx)
        .await?;
        let key = key_from_row(&row)?;
        tx.commit().await?;
        Ok(key)
    }

    /// Records when keys were last used, in one transaction, keeping the latest time per key.
    /// Unknown key ids are ignored. Does not bump the revision: no consumer must reload for it.
    pub async fn record_last_used(&self, batch: &[(String, i64)]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        // Take the writers' lock without changing the revision, so this batch never
        // interleaves with (or deadlocks against) a reconcile touching the same keys.
        sqlx::query("UPDATE registry_meta SET revision = revision WHERE id = 1")
            .execute(&mut *tx)
            .await?;
        for (key_id, at) in batch {
            sqlx::query(
                "UPDATE api_keys SET last_used_at = $2 \
                 WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)",
            )
            .bind(key_id)
            .bind(*at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    // ---- policies ----

    /// The tenant's policy document, if one was stored.
    pub async fn get_policy(&self, tenant: &str) -> Result<Option<serde_json::Value>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        fetch_policy(&mut conn, tenant).await
    }

    /// Replaces the tenant's policy document. [`StoreError::NotFound`] if the tenant is absent.
    pub async fn put_policy(
        &self,
        tenant: &str,
        policy: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        if !tenant_exists(&mut tx, tenant).await? {
            return Err(StoreError::not_found("tenant", tenant));
        }
        upsert_policy(&mut tx, tenant, policy, now_ms()).await?;
        tx.commit().await?;
        Ok(())
    }

    // ---- secrets' metadata ----

    /// A write transaction in which the tenant's secret `name` is recorded (created, or its
    /// `updated_at` moved strictly forward).
    async fn secret_tx(&self, tenant: &str, name: &str) -> Result<Tx, StoreError> {
        if name.is_empty() {
            return Err(StoreError::Invalid("a secret name cannot be empty".into()));
        }
        let mut tx = self.write_tx().await?;
        if !tenant_exists(&mut tx, tenant).await? {
            return Err(StoreError::not_found("tenant", tenant));
        }
        sqlx::query(
            "INSERT INTO secret_meta (tenant_id, name, created_at, updated_at) \
             VALUES ($1, $2, $3, $3) \
             ON CONFLICT (tenant_id, name) DO UPDATE SET updated_at = \
             CASE WHEN excluded.updated_at > secret_meta.updated_at \
             THEN excluded.updated_at ELSE secret_meta.updated_at + 1 END",
        )
        .bind(tenant)
        .bind(name)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        Ok(tx)
    }

    /// Stores a secret's sealed value (and its metadata) in one transaction. The store never
    /// sees the plain value: `sealed` is the gateway's ciphertext.
    pub async fn put_secret(
        &self,
        tenant: &str,
        name: &str,
        sealed: &[u8],
    ) -> Result<(), StoreError> {
        let mut tx = self.secret_tx(tenant, name).await?;
        sqlx::query(
            "INSERT INTO secret_values (tenant_id, name, sealed) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant_id, name) DO UPDATE SET sealed = excluded.sealed",
        )
        .bind(tenant)
        .bind(name)
        .bind(sealed.to_vec())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A secret's sealed value, if the tenant has one under that name.
    pub async fn get_secret(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let row =
            sqlx::query("SELECT sealed FROM secret_values WHERE tenant_id = $1 AND name = $2")
                .bind(tenant)
                .bind(name)
                .fetch_optional(&mut *conn)
                .await?;
        Ok(match row {
            Some(row) => Some(row.try_get("sealed")?),
            None => None,
        })
    }

    /// The tenant's secrets' metadata, ordered by name.
    pub async fn list_secret_meta(&self, tenant: &str) -> Result<Vec<SecretMeta>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        if !tenant_exists(&mut conn, tenant).await? {
            return Err(StoreError::not_found("tenant", tenant));
        }
        sqlx::query(
            "SELECT name, created_at, updated_at FROM secret_meta \
             WHERE tenant_id = $1 ORDER BY name",
        )
        .bind(tenant)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|row| {
            Ok(SecretMeta {
                name: row.try_get("name")?,
                created_at: row.try_get("created_at")?,
                updated_at: row.try_get("updated_at")?,
            })
        })
        .collect()
    }

    /// Forgets a secret's metadata. [`StoreError::NotFound`] if the tenant or the secret is
    /// absent.
    pub async fn delete_secret_meta(&self, tenant: &str, name: &str) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        if !tenant_exists(&mut tx, tenant).await? {
            return Err(StoreError::not_found("tenant", tenant));
        }
        let done = sqlx::query("DELETE FROM secret_meta WHERE tenant_id = $1 AND name = $2")
            .bind(tenant)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::not_found("secret", name));
        }
        tx.commit().await?;
        Ok(())
    }

    // ---- transactions ----

    /// A write transaction holding the writers' lock (SQLite: `BEGIN IMMEDIATE`, so a read
    /// never has to be upgraded; PostgreSQL: the row lock taken by the revision bump).
    pub(crate) async fn begin_write(&self) -> Result<Tx, StoreError> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// A write transaction whose first statement bumps the revision. Bumping first takes the
    /// writers' lock before anything is read, so the checks that follow cannot race another
    /// writer; a transaction that ends without commit leaves the revision as it was.
    pub(crate) async fn write_tx(&self) -> Result<Tx, StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE registry_meta SET revision = revision + 1 WHERE id = 1")
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }
}

/// Adds `mode=rwc` unless a mode is given, and creates the file's directory.
fn prepare_sqlite(url: &str) -> Result<String, StoreError> {
    let has_mode = url
        .split_once('?')
        .is_some_and(|(_, q)| q.split('&').any(|kv| kv.starts_with("mode=")));
    let url = if has_mode {
        url.to_string()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    };
    let open_err = |source| StoreError::Open {
        target: redact_url(&url),
        source,
    };
    let options = SqliteConnectOptions::from_str(&url).map_err(open_err)?;
    if let Some(dir) = options.get_filename().parent()
        && url.contains("mode=rwc")
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).map_err(|e| open_err(sqlx::Error::Io(e)))?;
    }
    Ok(url)
}

// ---- row helpers shared with reconcile ----
