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

use super::{Collector, Column, Limits, META_LIMITS, Param, Query, Rows, SqlError};
use crate::TenantId;

#[derive(Clone)]
pub struct Sqlite {
    dir: PathBuf,
}

/// The SQL functions a read-only query may call, by the name SQLite resolves (compared
/// ignoring ASCII case): the core scalar functions, aggregates, window functions, date and
/// time, JSON (`->` and `->>` are functions of those names to the authorizer) and the math
/// functions where they are compiled in.
///
/// An allow-list, not a deny-list, because SQLite and its bundled extensions register
/// functions no query needs and some that are dangerous: `fts3_tokenizer` returns a raw
/// pointer (a leak of the address layout), `load_extension` loads code,
/// `sqlite_compileoption_*` and `sqlite_source_id` describe the build, `sqlite_log` writes to
/// the process's error log. Whatever a new SQLite version or extension adds is refused until
/// it is listed here.
const ALLOWED_FUNCTIONS: &[&str] = &[
    // Core scalar functions.
    "abs",
    "char",
    "coalesce",
    "concat",
    "concat_ws",
    "format",
    "glob",
    "hex",
    "if",
    "ifnull",
    "iif",
    "instr",
    "length",
    "like",
    "likelihood",
    "likely",
    "lower",
    "ltrim",
    "max",
    "min",
    "nullif",
    "octet_length",
    "printf",
    "quote",
    "random",
    "randomblob",
    "replace",
    "round",
    "rtrim",
    "sign",
    "soundex",
    "substr",
    "substring",
    "trim",
    "typeof",
    "unhex",
    "unicode",
    "unistr",
    "unlikely",
    "upper",
    "zeroblob",
    // Aggregates (`max` and `min` above are both).
    "avg",
    "count",
    "group_concat",
    "median",
    "percentile",
    "percentile_cont",
    "percentile_disc",
    "string_agg",
    "sum",
    "total",
    // Window functions.
    "cume_dist",
    "dense_rank",
    "first_value",
    "lag",
    "last_value",
    "lead",
    "nth_value",
    "ntile",
    "percent_rank",
    "rank",
    "row_number",
    // Date and time (`CURRENT_TIMESTAMP` and the like call the functions of those names).
    "current_date",
    "current_time",
    "current_timestamp",
    "date",
    "datetime",
    "julianday",
    "strftime",
    "time",
    "timediff",
    "unixepoch",
    // JSON: values in, values out; none touches a table.
    "->",
    "->>",
    "json",
    "json_array",
    "json_array_length",
    "json_error_position",
    "json_extract",
    "json_group_array",
    "json_group_object",
    "json_insert",
    "json_object",
    "json_patch",
    "json_pretty",
    "json_quote",
    "json_remove",
    "json_replace",
    "json_set",
    "json_type",
    "json_valid",
    "jsonb",
    "jsonb_array",
    "jsonb_extract",
    "jsonb_group_array",
    "jsonb_group_object",
    "jsonb_insert",
    "jsonb_object",
    "jsonb_patch",
    "jsonb_remove",
    "jsonb_replace",
    "jsonb_set",
    // Math, where SQLite is built with SQLITE_ENABLE_MATH_FUNCTIONS (the bundled one is not).
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atan2",
    "atanh",
    "ceil",
    "ceiling",
    "cos",
    "cosh",
    "degrees",
    "exp",
    "floor",
    "ln",
    "log",
    "log10",
    "log2",
    "mod",
    "pi",
    "pow",
    "power",
    "radians",
    "sin",
    "sinh",
    "sqrt",
    "tan",
    "tanh",
    "trunc",
];

fn allowed_function(name: &str) -> bool {
    ALLOWED_FUNCTIONS
        .iter()
        .any(|allowed| allowed.eq_ignore_ascii_case(name))
}

/// Only reads of the main database (its tables, views and schema) and of the statement's own
/// CTEs are allowed, and calls of the functions in [`ALLOWED_FUNCTIONS`].
fn authorize(ctx: AuthContext<'_>) -> Authorization {
    match ctx.action {
        AuthAction::Select | AuthAction::Recursive => Authorization::Allow,
        AuthAction::Function { function_name } if allowed_function(function_name) => {
            Authorization::Allow
        }
        // No database name: a CTE or subquery of this statement.
        AuthAction::Read { .. } if matches!(ctx.database_name, None | Some("main")) => {
            Authorization::Allow
        }
        _ => Authorization::Deny,
    }
}

/// The function the authorizer refused to call, when that is why `error` happened (SQLite
/// reports it as a plain `SQLITE_ERROR` with this message, not as `SQLITE_AUTH`).
fn refused_function(error: &rusqlite::Error) -> Option<&str> {
    let message = match error {
        rusqlite::Error::SqliteFailure(_, Some(message)) => message,
        rusqlite::Error::SqlInputError { msg, .. } => msg,
        _ => return None,
    };
    message.strip_prefix("not authorized to use function: ")
}

/// Says what a SQLite failure means for the caller.
fn statement_error(error: rusqlite::Error, limits: Limits) -> SqlError {
    if let Some(function) = refused_function(&error) {
        return SqlError::Statement(format!(
            "not authorized: the function {function} is not allowed here (built-in scalar, aggregate, window, date and JSON functions are)"
        ));
    }
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
    fn open(
        &self,
        tenant: &TenantId,
        limits: Limits,
        guarded: bool,
    ) -> Result<Connection, SqlError> {
        // A tenant id is a plain file name: it cannot climb out of the directory.
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
        tenant: &TenantId,
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

    pub async fn query(&self, query: Query<'_>) -> Result<Rows, SqlError> {
        let this = self.clone();
        let Query {
            tenant,
            sql,
            params,
            limits,
        } = query;
        let (tenant, sql) = (tenant.clone(), sql.to_owned());
        blocking(move || this.query_blocking(&tenant, &sql, &params, limits)).await
    }

    pub async fn list_tables(&self, tenant: &TenantId) -> Result<Vec<String>, SqlError> {
        let rows = self
            .query(Query {
                tenant,
                sql: "SELECT name FROM sqlite_schema WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%' ORDER BY name",
                params: Vec::new(),
                limits: META_LIMITS,
            })
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

    pub async fn describe_table(
        &self,
        tenant: &TenantId,
        table: &str,
    ) -> Result<Vec<Column>, SqlError> {
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

    fn tenant(id: &str) -> TenantId {
        TenantId::parse(id).unwrap()
    }

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
            let m = message(lite.query_blocking(&tenant("acme"), sql, &[], META_LIMITS));
            assert!(m.contains("not authorized"), "{sql}: {m}");
        }
    }

    #[test]
    fn only_listed_functions_may_be_called() {
        let (_dir, lite) = setup();
        for sql in [
            "SELECT fts3_tokenizer('simple')",
            "SELECT FTS3_Tokenizer('porter')",
            "SELECT load_extension('/tmp/evil')",
            "SELECT sqlite_compileoption_get(0)",
            "SELECT sqlite_source_id()",
            "SELECT sqlite_log(1, 'x')",
            "SELECT id FROM orders WHERE hex(fts3_tokenizer('simple')) <> ''",
        ] {
            let m = message(lite.query_blocking(&tenant("acme"), sql, &[], META_LIMITS));
            assert!(
                m.contains("not authorized: the function") && m.contains("is not allowed here"),
                "{sql}: {m}"
            );
        }
        let rows = lite
            .query_blocking(
                &tenant("acme"),
                "SELECT lower('A'), count(*), json_extract('{\"a\":1}', '$.a'), '{\"b\":2}' ->> '$.b', \
                 length(datetime('now')), length(CURRENT_TIMESTAMP), COALESCE(NULL, 3), row_number() OVER () \
                 FROM orders WHERE item LIKE '%a%' OR item GLOB '*'",
                &[],
                META_LIMITS,
            )
            .unwrap();
        assert_eq!(
            rows.rows,
            [vec![
                Value::from("a"),
                Value::from(150),
                Value::from(1),
                Value::from(2),
                Value::from(19),
                Value::from(19),
                Value::from(3),
                Value::from(1),
            ]]
        );
    }

    #[test]
    fn without_the_authorizer_attach_is_still_impossible_and_the_file_read_only() {
        let (dir, lite) = setup();
        let conn = lite.open(&tenant("acme"), META_LIMITS, false).unwrap();
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
    fn unknown_tenants_have_no_database() {
        let (_dir, lite) = setup();
        assert!(
            message(lite.query_blocking(&tenant("initech"), "SELECT 1", &[], META_LIMITS))
                .contains("no database")
        );
    }
}
