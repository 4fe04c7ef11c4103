//! SQLite, the embedded default: one database file per tenant, `<dir>/<tenant>.db`.
//!
//! A tenant's call opens only that tenant's file, and the connection is locked down before the
//! caller's SQL is prepared: opened read-only (no URI names), `query_only`, no attached
//! databases (`SQLITE_LIMIT_ATTACHED = 0`, so `ATTACH` of another tenant's file fails even if
//! the authorizer did not stop it), an authorizer that allows reading the main database and
//! nothing else (no ATTACH, PRAGMA, writes, schema changes or transactions), a progress handler
//! that stops the statement at the timeout, and the row and size caps.
//!
//! SQLite is synchronous: calls run on tokio's blocking pool.

use std::path::PathBuf;
use std::time::Instant;

use base64::Engine as _;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::limits::Limit;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, ErrorCode, OpenFlags};
use serde_json::Value;

use super::{Collector, Column, Limits, META_LIMITS, Param, Rows, SqlError};

#[derive(Clone)]
pub struct Sqlite {
    dir: PathBuf,
}

/// Only reads of the main database (its tables, views and schema) and of the statement's own
/// CTEs are allowed.
fn authorize(ctx: AuthContext<'_>) -> Authorization {
    match ctx.action {
        AuthAction::Select | AuthAction::Recursive | AuthAction::Function { .. } => {
            Authorization::Allow
        }
        // No database name: a CTE or subquery of this statement.
        AuthAction::Read { .. } if matches!(ctx.database_name, None | Some("main")) => {
            Authorization::Allow
        }
        _ => Authorization::Deny,
    }
}

/// Says what a SQLite failure means for the caller.
fn statement_error(error: rusqlite::Error, limits: Limits) -> SqlError {
    match &error {
        rusqlite::Error::SqliteFailure(e, _) if e.code == ErrorCode::OperationInterrupted => {
            SqlError::Timeout(limits.timeout.as_millis())
        }
        rusqlite::Error::SqliteFailure(e, _) if e.code == ErrorCode::AuthorizationForStatementDenied => {
            SqlError::Statement(
                "not authorized: only reads of this tenant's own tables are allowed (ATTACH, PRAGMA, writes and transactions are refused)"
                    .into(),
            )
        }
        rusqlite::Error::MultipleStatement => {
            SqlError::Statement("only one statement per call is run; remove the `;` and what follows".into())
        }
        _ => SqlError::Statement(error.to_string()),
    }
}

fn json_value(value: ValueRef<'_>) -> Value {
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::from(i),
        ValueRef::Real(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        ValueRef::Text(t) => Value::String(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
    }
}

impl Sqlite {
    /// Serves `<dir>/<tenant>.db` for each tenant (see `palisade-sql migrate --sqlite-dir`).
    pub fn new(dir: PathBuf) -> Sqlite {
        Sqlite { dir }
    }

    /// Opens the tenant's file read-only; `guarded` adds the authorizer and the timeout,
    /// which every statement built from the caller's text runs under.
    fn open(&self, tenant: &str, limits: Limits, guarded: bool) -> Result<Connection, SqlError> {
        if !crate::valid_tenant_id(tenant) {
            return Err(SqlError::Statement(format!(
                "{tenant:?} is not a valid tenant id"
            )));
        }
        let path = self.dir.join(format!("{tenant}.db"));
        if !path.is_file() {
            tracing::warn!(path = %path.display(), "no SQLite database for this tenant");
            return Err(SqlError::Unavailable(format!(
                "tenant {tenant} has no database here; create it with `palisade-sql migrate --sqlite-dir`"
            )));
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let unavailable = |e: rusqlite::Error| {
            tracing::warn!(path = %path.display(), error = %e, "cannot open the tenant's SQLite database");
            SqlError::Unavailable(format!("cannot open tenant {tenant}'s database"))
        };
        let conn = Connection::open_with_flags(&path, flags).map_err(unavailable)?;
        conn.pragma_update(None, "query_only", true)
            .map_err(unavailable)?;
        conn.set_limit(Limit::SQLITE_LIMIT_ATTACHED, 0)
            .map_err(unavailable)?;
        // No single value larger than a whole result may be (`zeroblob(1e9)`).
        let longest = i32::try_from(limits.max_bytes).unwrap_or(i32::MAX);
        conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, longest)
            .map_err(unavailable)?;
        if guarded {
            conn.authorizer(Some(authorize)).map_err(unavailable)?;
            let deadline = Instant::now() + limits.timeout;
            conn.progress_handler(1000, Some(move || Instant::now() > deadline))
                .map_err(unavailable)?;
        }
        Ok(conn)
    }

    fn query_blocking(
        &self,
        tenant: &str,
        sql: &str,
        params: &[Param],
        limits: Limits,
    ) -> Result<Rows, SqlError> {
        let conn = self.open(tenant, limits, true)?;
        let fail = |e| statement_error(e, limits);
        let mut stmt = conn.prepare(sql).map_err(fail)?;
        if !stmt.readonly() {
            return Err(SqlError::Statement(
                "only read-only queries are run here".into(),
            ));
        }
        if stmt.parameter_count() != params.len() {
            return Err(SqlError::Statement(format!(
                "the query has {} parameters but {} were given",
                stmt.parameter_count(),
                params.len()
            )));
        }
        for (i, param) in params.iter().enumerate() {
            let bound = match param {
                Param::Null => stmt.raw_bind_parameter(i + 1, rusqlite::types::Null),
                Param::Bool(b) => stmt.raw_bind_parameter(i + 1, b),
                Param::Int(n) => stmt.raw_bind_parameter(i + 1, n),
                Param::Float(f) => stmt.raw_bind_parameter(i + 1, f),
                Param::Text(s) => stmt.raw_bind_parameter(i + 1, s),
            };
            bound.map_err(fail)?;
        }
        let columns: Vec<String> = stmt.column_names().into_iter().map(str::to_owned).collect();
        let width = columns.len();
        let mut collected = Collector::new(limits);
        let mut rows = stmt.raw_query();
        while let Some(row) = rows.next().map_err(fail)? {
            let mut values = Vec::with_capacity(width);
            for i in 0..width {
                values.push(json_value(row.get_ref(i).map_err(fail)?));
            }
            if !collected.push(values)? {
                break;
            }
        }
        Ok(collected.finish(columns))
    }

    pub async fn query(
        &self,
        tenant: &str,
        sql: &str,
        params: Vec<Param>,
        limits: Limits,
    ) -> Result<Rows, SqlError> {
        let this = self.clone();
        let (tenant, sql) = (tenant.to_owned(), sql.to_owned());
        blocking(move || this.query_blocking(&tenant, &sql, &params, limits)).await
    }

    pub async fn list_tables(&self, tenant: &str) -> Result<Vec<String>, SqlError> {
        let rows = self
            .query(
                tenant,
                "SELECT name FROM sqlite_schema WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%' ORDER BY name",
                Vec::new(),
                META_LIMITS,
            )
            .await?;
        Ok(rows
            .rows
            .into_iter()
            .filter_map(|mut r| match r.pop() {
                Some(Value::String(name)) => Some(name),
                _ => None,
            })
            .collect())
    }

    pub async fn describe_table(&self, tenant: &str, table: &str) -> Result<Vec<Column>, SqlError> {
        let this = self.clone();
        let (tenant, table) = (tenant.to_owned(), table.to_owned());
        blocking(move || {
            // A fixed statement with the name bound: no authorizer needed (it would refuse
            // the table_info pragma function).
            let conn = this.open(&tenant, META_LIMITS, false)?;
            let fail = |e| statement_error(e, META_LIMITS);
            let mut stmt = conn
                .prepare("SELECT name, type, \"notnull\" FROM pragma_table_info(?1) ORDER BY cid")
                .map_err(fail)?;
            let columns = stmt
                .query_map([&table], |row| {
                    Ok(Column {
                        name: row.get(0)?,
                        data_type: row.get(1)?,
                        nullable: row.get::<_, i64>(2)? == 0,
                    })
                })
                .map_err(fail)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(fail)?;
            Ok(columns)
        })
        .await
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, SqlError> + Send + 'static,
) -> Result<T, SqlError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| SqlError::Unavailable("the query's worker stopped".into()))?
}

/// Creates (or refills) `<dir>/<tenant>.db` with the sample schema and data.
pub fn create_sample(dir: &std::path::Path, tenant: &str) -> Result<PathBuf, rusqlite::Error> {
    let path = dir.join(format!("{tenant}.db"));
    let mut conn = Connection::open(&path)?;
    let tx = conn.transaction()?;
    for ddl in crate::sample::SCHEMA {
        tx.execute(ddl, [])?;
    }
    tx.execute("DELETE FROM orders", [])?;
    tx.execute("DELETE FROM customers", [])?;
    for c in crate::sample::customers(tenant) {
        tx.execute(
            "INSERT INTO customers (tenant_id, id, name, email) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![tenant, c.id, c.name, c.email],
        )?;
    }
    for o in crate::sample::orders(tenant) {
        tx.execute(
            "INSERT INTO orders (tenant_id, id, customer_id, item, amount_cents, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            rusqlite::params![tenant, o.id, o.customer_id, o.item, o.amount_cents, o.created_at],
        )?;
    }
    tx.commit()?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    //! Each layer on its own, below the statement check the server runs first.
    use super::*;

    fn setup() -> (tempfile::TempDir, Sqlite) {
        let dir = tempfile::tempdir().unwrap();
        for tenant in ["acme", "globex"] {
            create_sample(dir.path(), tenant).unwrap();
        }
        let lite = Sqlite::new(dir.path().to_owned());
        (dir, lite)
    }

    fn message(result: Result<Rows, SqlError>) -> String {
        match result {
            Ok(rows) => panic!("expected an error, got {} rows", rows.row_count),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_authorizer_refuses_attach_pragma_and_writes() {
        let (dir, lite) = setup();
        let attach = format!(
            "ATTACH DATABASE '{}' AS g",
            dir.path().join("globex.db").display()
        );
        for sql in [
            attach.as_str(),
            "PRAGMA query_only = 0",
            "DELETE FROM orders",
            "CREATE TABLE x (a)",
            "BEGIN",
        ] {
            let m = message(lite.query_blocking("acme", sql, &[], META_LIMITS));
            assert!(m.contains("not authorized"), "{sql}: {m}");
        }
    }

    #[test]
    fn without_the_authorizer_attach_is_still_impossible_and_the_file_read_only() {
        let (dir, lite) = setup();
        let conn = lite.open("acme", META_LIMITS, false).unwrap();
        let attach = format!(
            "ATTACH DATABASE '{}' AS g",
            dir.path().join("globex.db").display()
        );
        let e = conn.execute(&attach, []).unwrap_err().to_string();
        assert!(e.contains("too many attached databases"), "{e}");
        let e = conn
            .execute("DELETE FROM orders", [])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("readonly") || e.contains("read-only") || e.contains("query_only"),
            "{e}"
        );
    }

    #[test]
    fn unknown_and_invalid_tenants_have_no_database() {
        let (_dir, lite) = setup();
        assert!(
            message(lite.query_blocking("initech", "SELECT 1", &[], META_LIMITS))
                .contains("no database")
        );
        assert!(
            message(lite.query_blocking("../acme", "SELECT 1", &[], META_LIMITS))
                .contains("not a valid tenant")
        );
    }
}
