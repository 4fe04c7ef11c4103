//! `palisade-sql migrate`: makes a database ready for palisade-sql and loads the sample data.
//!
//! PostgreSQL (run as an administrator, once per database; running it again is harmless):
//! - the reader role (NOLOGIN NOSUPERUSER NOBYPASSRLS) that may SELECT the tenant tables;
//! - the login role (LOGIN NOSUPERUSER NOBYPASSRLS NOINHERIT) that may switch to the reader
//!   and call `set_config`, and read nothing itself;
//! - `set_config`, `pg_terminate_backend` and `pg_cancel_backend` revoked from PUBLIC in this
//!   database, so a query cannot change its tenant or stop another tenant's query (roles other
//!   than superusers that need them must be granted them again);
//! - the sample tables with RLS enabled and forced, one policy on `tenant_id`;
//! - the sample rows for the tenants named.
//!
//! SQLite: one file per tenant, `<dir>/<tenant>.db`, with the same tables and rows.

use std::path::Path;

use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, Connection as _, Executor as _};

use crate::TenantId;
use crate::backend::postgres::valid_role;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{0:?} is not a valid role name: use [a-z_][a-z0-9_]*")]
    Role(String),
    #[error(
        "{0:?} is not a valid tenant id: use 1-63 of [a-z0-9-], starting with a letter or digit"
    )]
    Tenant(String),
    #[error("PostgreSQL refused the migration: {0}")]
    Postgres(String),
    #[error("creating {path}: {source}")]
    Sqlite {
        path: String,
        source: rusqlite::Error,
    },
    #[error("creating {0}: {1}")]
    Dir(String, std::io::Error),
}

/// What the PostgreSQL migration creates.
pub struct PgPlan<'a> {
    pub login_role: &'a str,
    /// The login role's password, if it authenticates by password.
    pub login_password: Option<&'a str>,
    pub reader_role: &'a str,
    pub tenants: &'a [String],
}

fn check(plan: &PgPlan<'_>) -> Result<(), MigrateError> {
    for role in [plan.login_role, plan.reader_role] {
        if !valid_role(role) {
            return Err(MigrateError::Role(role.to_owned()));
        }
    }
    check_tenants(plan.tenants)
}

fn check_tenants(tenants: &[String]) -> Result<(), MigrateError> {
    match tenants.iter().find(|t| TenantId::parse(t).is_err()) {
        Some(bad) => Err(MigrateError::Tenant(bad.clone())),
        None => Ok(()),
    }
}

/// The statements that set up roles, grants, tables and policies (no data).
fn pg_setup(plan: &PgPlan<'_>) -> String {
    let (login, reader) = (plan.login_role, plan.reader_role);
    let password = match plan.login_password {
        // Quoted as a literal: doubled quotes cannot end it.
        Some(p) => format!(" PASSWORD '{}'", p.replace('\'', "''")),
        None => String::new(),
    };
    let mut sql = format!(
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{reader}') THEN CREATE ROLE {reader}; END IF;
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{login}') THEN CREATE ROLE {login}; END IF;
         END $$;
         ALTER ROLE {reader} NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION;
         ALTER ROLE {login} LOGIN NOSUPERUSER NOBYPASSRLS NOINHERIT NOCREATEDB NOCREATEROLE NOREPLICATION{password};
         GRANT {reader} TO {login};
         REVOKE EXECUTE ON FUNCTION pg_catalog.set_config(text, text, boolean) FROM PUBLIC;
         GRANT EXECUTE ON FUNCTION pg_catalog.set_config(text, text, boolean) TO {login};
         REVOKE EXECUTE ON FUNCTION pg_catalog.pg_terminate_backend(integer, bigint) FROM PUBLIC;
         REVOKE EXECUTE ON FUNCTION pg_catalog.pg_cancel_backend(integer) FROM PUBLIC;
         REVOKE CREATE ON SCHEMA public FROM PUBLIC;
         GRANT USAGE ON SCHEMA public TO {reader};
         "
    );
    for ddl in crate::sample::SCHEMA {
        sql.push_str(ddl);
        sql.push_str(";\n");
    }
    for table in crate::sample::TENANT_TABLES {
        sql.push_str(&format!(
            "ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
             ALTER TABLE {table} FORCE ROW LEVEL SECURITY;
             DROP POLICY IF EXISTS tenant_isolation ON {table};
             CREATE POLICY tenant_isolation ON {table}
               USING (tenant_id = current_setting('app.tenant_id', true));
             REVOKE ALL ON {table} FROM PUBLIC;
             GRANT SELECT ON {table} TO {reader};
             "
        ));
    }
    sql
}

/// Runs the PostgreSQL migration as an administrator (the connection must be allowed to
/// create roles and revoke from PUBLIC: a superuser, typically).
pub async fn postgres(admin: PgConnectOptions, plan: &PgPlan<'_>) -> Result<(), MigrateError> {
    check(plan)?;
    let pg = |e: sqlx::Error| {
        MigrateError::Postgres(match &e {
            sqlx::Error::Database(db) => db.message().to_owned(),
            _ => e.to_string(),
        })
    };
    let mut conn = sqlx::PgConnection::connect_with(&admin).await.map_err(pg)?;
    let mut tx = conn.begin().await.map_err(pg)?;
    tx.execute(sqlx::raw_sql(AssertSqlSafe(pg_setup(plan))))
        .await
        .map_err(pg)?;
    for tenant in plan.tenants {
        // The administrator is subject to forced RLS too, as owner; say which tenant it writes.
        sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
            .bind(tenant)
            .execute(&mut *tx)
            .await
            .map_err(pg)?;
        for table in ["orders", "customers"] {
            sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE tenant_id = $1"
            )))
            .bind(tenant)
            .execute(&mut *tx)
            .await
            .map_err(pg)?;
        }
        for c in crate::sample::customers(tenant) {
            sqlx::query(
                "INSERT INTO customers (tenant_id, id, name, email) VALUES ($1, $2, $3, $4)",
            )
            .bind(tenant)
            .bind(c.id)
            .bind(c.name)
            .bind(c.email)
            .execute(&mut *tx)
            .await
            .map_err(pg)?;
        }
        for o in crate::sample::orders(tenant) {
            sqlx::query(
                "INSERT INTO orders (tenant_id, id, customer_id, item, amount_cents, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(tenant)
            .bind(o.id)
            .bind(o.customer_id)
            .bind(o.item)
            .bind(o.amount_cents)
            .bind(o.created_at)
            .execute(&mut *tx)
            .await
            .map_err(pg)?;
        }
    }
    tx.commit().await.map_err(pg)
}

/// Creates `<dir>/<tenant>.db` with the sample data for each tenant.
pub fn sqlite(dir: &Path, tenants: &[String]) -> Result<(), MigrateError> {
    check_tenants(tenants)?;
    std::fs::create_dir_all(dir).map_err(|e| MigrateError::Dir(dir.display().to_string(), e))?;
    for tenant in tenants {
        crate::backend::sqlite::create_sample(dir, tenant).map_err(|source| {
            MigrateError::Sqlite {
                path: dir.join(format!("{tenant}.db")).display().to_string(),
                source,
            }
        })?;
    }
    Ok(())
}
