//! PostgreSQL with row-level security: the database keeps tenants apart.
//!
//! Roles (made by `palisade-sql migrate`): the server logs in as a role with NOSUPERUSER
//! NOBYPASSRLS NOINHERIT that owns nothing and may read no table itself; it may call
//! `set_config` (revoked from everyone else) and switch to the reader role, which may SELECT
//! the tenant tables and nothing more. Every tenant table has RLS enabled and forced, with
//! the policy `tenant_id = current_setting('app.tenant_id', true)`.
//!
//! Each call, on one pooled connection:
//! 1. `BEGIN READ ONLY`, then `set_config('app.tenant_id', <tenant>, true)` and the statement
//!    timeout (both end with the transaction), then `SET LOCAL ROLE <reader>`;
//! 2. the caller's query as the reader, nested as `SELECT to_json(r.*) FROM (<query>) r LIMIT n`
//!    with the extended protocol, so it is exactly one query: a second statement, `SET`,
//!    `RESET ROLE` or `COPY` there is a syntax error, and as the reader it cannot call
//!    `set_config` to change tenant mid-query;
//! 3. `ROLLBACK` and `pg_advisory_unlock_all()`, so nothing a call did outlives it on the
//!    pooled connection.
//!
//! A call whose future is dropped before step 3 has finished (the call was cancelled, or timed
//! out around us) does not give its connection back to the pool: `CallConnection` closes it
//! instead, so the next call can never start inside another call's transaction.
//!
//! The server refuses to start as a superuser or BYPASSRLS role.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

use futures_util::TryStreamExt as _;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Column as _, Executor as _, Row as _, SqlSafeStr as _, Statement as _};

use super::{Collector, Column, Limits, META_LIMITS, Param, Query, Rows, SqlError};
use crate::TenantId;

pub struct Postgres {
    pool: PgPool,
    reader_role: String,
}

/// A role name we put in SQL text ourselves: a plain lower-case identifier only.
pub fn valid_role(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Maps a database failure to what the caller sees; connection-level details are only logged.
fn sql_error(error: sqlx::Error, limits: Limits) -> SqlError {
    match &error {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("57014") => {
            SqlError::Timeout(limits.timeout.as_millis())
        }
        sqlx::Error::Database(db) => SqlError::Statement(db.message().to_owned()),
        _ => unavailable(error),
    }
}

fn unavailable(error: sqlx::Error) -> SqlError {
    tracing::warn!(%error, "PostgreSQL is unavailable");
    SqlError::Unavailable("PostgreSQL cannot be reached".into())
}

/// One row of `to_json(row.*)`, its columns in order (serde_json's own map would sort them).
struct OrderedRow(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for OrderedRow {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RowVisitor;
        impl<'de> Visitor<'de> for RowVisitor {
            type Value = OrderedRow;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedRow, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(field) = map.next_entry::<String, Value>()? {
                    fields.push(field);
                }
                Ok(OrderedRow(fields))
            }
        }
        deserializer.deserialize_map(RowVisitor)
    }
}

/// A pooled connection inside a call's transaction, from `begin` to `end`.
///
/// sqlx hands a dropped [`PoolConnection`] back to the pool after only a ping, which waits for
/// whatever was in flight and succeeds inside an open transaction. So a call dropped between
/// `BEGIN` and the end of its `ROLLBACK` would leave its transaction, with its tenant setting
/// and `SET LOCAL ROLE`, to whichever call takes the connection next. Unless `end` has rolled
/// back, dropping this guard closes the connection instead (sqlx's `close_on_drop`: the pool
/// may open a fresh connection in its place, and the server ends the old session, rolling the
/// transaction back, once a statement still running there ends or hits its statement
/// timeout). Closing rather than rolling back on the way back to the pool needs no async work
/// in `Drop` and does not wait for a cancelled statement to finish.
struct CallConnection {
    conn: PoolConnection<sqlx::Postgres>,
    /// Set once the transaction is rolled back and the connection clean.
    ended: bool,
}

impl Deref for CallConnection {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl DerefMut for CallConnection {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

impl Drop for CallConnection {
    fn drop(&mut self) {
        if !self.ended {
            // `conn` is dropped right after this, and then closes instead of going back.
            self.conn.close_on_drop();
        }
    }
}

impl Postgres {
    /// Connects (lazily; the first call opens connections) and checks the login role cannot
    /// bypass row-level security.
    pub async fn connect(
        options: PgConnectOptions,
        reader_role: String,
    ) -> Result<Postgres, SqlError> {
        if !valid_role(&reader_role) {
            return Err(SqlError::Unavailable(format!(
                "the reader role {reader_role:?} is not a plain identifier ([a-z_][a-z0-9_]*)"
            )));
        }
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(options);
        let (superuser, bypass, user): (bool, bool, String) = sqlx::query_as(
            "SELECT rolsuper, rolbypassrls, rolname::text FROM pg_roles WHERE rolname = current_user",
        )
        .fetch_one(&pool)
        .await
        .map_err(unavailable)?;
        if superuser || bypass {
            return Err(SqlError::Unavailable(format!(
                "palisade-sql connects as {user:?}, a role that bypasses row-level security (superuser or BYPASSRLS); \
                 connect as the login role `palisade-sql migrate` created"
            )));
        }
        Ok(Postgres { pool, reader_role })
    }

    /// Opens the call's transaction on a pooled connection, as `tenant`, as the reader role.
    async fn begin(&self, tenant: &TenantId, limits: Limits) -> Result<CallConnection, SqlError> {
        // Both values are plain identifiers (a tenant id is `[a-z0-9-]`, the role is checked at
        // start), so nothing can be injected; the setup is one round trip.
        // Guarded from here on: `BEGIN` may be sent before this future is dropped.
        let mut conn = CallConnection {
            conn: self.pool.acquire().await.map_err(unavailable)?,
            ended: false,
        };
        let setup = format!(
            "BEGIN READ ONLY; \
             SELECT set_config('app.tenant_id', '{tenant}', true), set_config('statement_timeout', '{}', true); \
             SET LOCAL ROLE \"{}\"",
            limits.timeout.as_millis(),
            self.reader_role
        );
        if let Err(error) = sqlx::raw_sql(AssertSqlSafe(setup))
            .execute(&mut *conn)
            .await
        {
            self.end(conn).await;
            return Err(match &error {
                sqlx::Error::Database(_) => {
                    tracing::error!(%error, "cannot set up a tenant transaction; run `palisade-sql migrate`");
                    SqlError::Unavailable(
                        "the database is not set up for palisade-sql (roles or grants missing); run `palisade-sql migrate`"
                            .into(),
                    )
                }
                _ => unavailable(error),
            });
        }
        Ok(conn)
    }

    /// Ends the call's transaction; a connection that cannot be cleaned (or whose cleaning is
    /// itself cancelled) is closed by the guard, not reused.
    async fn end(&self, mut conn: CallConnection) {
        let cleaned = sqlx::raw_sql("ROLLBACK; SELECT pg_advisory_unlock_all()")
            .execute(&mut *conn)
            .await;
        match cleaned {
            Ok(_) => conn.ended = true,
            Err(error) => {
                tracing::warn!(%error, "closing a connection that could not be rolled back");
            }
        }
    }

    pub async fn query(&self, query: Query<'_>) -> Result<Rows, SqlError> {
        let mut conn = self.begin(query.tenant, query.limits).await?;
        let result = Self::run(&mut conn, query.sql, query.params, query.limits).await;
        self.end(conn).await;
        result
    }

    async fn run(
        conn: &mut PgConnection,
        sql: &str,
        params: Vec<Param>,
        limits: Limits,
    ) -> Result<Rows, SqlError> {
        let body = crate::statement::strip_trailing_semicolon(sql);
        // The newline keeps a trailing `-- comment` from swallowing the closing parenthesis;
        // `alias.*` is the whole row even when the query has a column of the alias's name.
        let nested = format!(
            "SELECT to_json(palisade_row.*)::text FROM (\n{body}\n) AS palisade_row LIMIT {}",
            limits.max_rows.saturating_add(1)
        );
        let mut query = sqlx::query(AssertSqlSafe(nested)).persistent(false);
        for param in params {
            query = match param {
                Param::Null => query.bind(None::<String>),
                Param::Bool(b) => query.bind(b),
                Param::Int(n) => query.bind(n),
                Param::Float(f) => query.bind(f),
                Param::Text(s) => query.bind(s),
            };
        }
        let mut columns = Vec::new();
        let mut collected = Collector::new(limits);
        {
            let mut stream = query.fetch(&mut *conn);
            while let Some(row) = stream.try_next().await.map_err(|e| sql_error(e, limits))? {
                let text: String = row.try_get(0).map_err(|e| sql_error(e, limits))?;
                let OrderedRow(fields) = serde_json::from_str(&text)
                    .map_err(|e| SqlError::Statement(format!("unreadable row: {e}")))?;
                if columns.is_empty() {
                    columns = fields.iter().map(|(name, _)| name.clone()).collect();
                }
                if !collected.push(fields.into_iter().map(|(_, v)| v).collect())? {
                    break;
                }
            }
        }
        if columns.is_empty() {
            // No rows: the statement's description still names the columns.
            if let Ok(statement) = (&mut *conn)
                .prepare(AssertSqlSafe(body.to_owned()).into_sql_str())
                .await
            {
                columns = statement
                    .columns()
                    .iter()
                    .map(|c| c.name().to_owned())
                    .collect();
            }
        }
        Ok(collected.finish(columns))
    }

    pub async fn list_tables(&self, tenant: &TenantId) -> Result<Vec<String>, SqlError> {
        let mut conn = self.begin(tenant, META_LIMITS).await?;
        let tables = sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = current_schema() ORDER BY 1",
        )
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| sql_error(e, META_LIMITS));
        self.end(conn).await;
        tables
    }

    pub async fn describe_table(
        &self,
        tenant: &TenantId,
        table: &str,
    ) -> Result<Vec<Column>, SqlError> {
        let mut conn = self.begin(tenant, META_LIMITS).await?;
        let rows: Result<Vec<(String, String, bool)>, _> = sqlx::query_as(
            "SELECT column_name::text, data_type::text, is_nullable = 'YES' \
             FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
        )
        .bind(table)
        .fetch_all(&mut *conn)
        .await;
        self.end(conn).await;
        Ok(rows
            .map_err(|e| sql_error(e, META_LIMITS))?
            .into_iter()
            .map(|(name, data_type, nullable)| Column {
                name,
                data_type,
                nullable,
            })
            .collect())
    }
}
