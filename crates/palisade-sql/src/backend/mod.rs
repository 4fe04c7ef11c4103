//! The databases a call can run on, behind one interface: run a read-only query, list the
//! tables, describe one — always as one tenant, which the caller has already established.
//!
//! Each backend enforces the tenant inside the database (row-level security, or a file of
//! the tenant's own), and the limits below, on every call.

pub mod postgres;
pub mod sqlite;

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::TenantId;

/// Bounds on one call.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Rows returned at most; more are cut off and the result says so.
    pub max_rows: usize,
    /// Size of a result at most (its values as text, roughly): a larger one is an error, so
    /// that one call cannot make a reply the gateway refuses or exhaust memory.
    pub max_bytes: usize,
    /// How long one statement may run.
    pub timeout: Duration,
}

/// Limits for the server's own catalog queries (`list_tables`, `describe_table`).
pub(crate) const META_LIMITS: Limits = Limits {
    max_rows: 10_000,
    max_bytes: 4 << 20,
    timeout: Duration::from_secs(5),
};

/// A query's result.
#[derive(Debug, Serialize)]
pub struct Rows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
    pub row_count: usize,
    /// True when the query had more rows than `max_rows`.
    pub truncated: bool,
}

/// One column of a table.
#[derive(Debug, Serialize)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
    pub nullable: bool,
}

/// Why a call failed. The text goes back to the caller as a tool error, so it never holds a
/// connection string or a password.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// The caller's statement was refused or failed; the message is the database's.
    #[error("{0}")]
    Statement(String),
    #[error("the query ran longer than {0} ms and was cancelled; narrow it or add a LIMIT")]
    Timeout(u128),
    #[error("no table named {0:?} is visible to this tenant; list_tables shows those that are")]
    NoTable(String),
    /// The database could not be reached or is misconfigured; the details are logged.
    #[error("the database is unavailable right now ({0}); retry later")]
    Unavailable(String),
    #[error("the result is larger than {0} bytes; select fewer columns or rows")]
    TooLarge(usize),
}

/// A parameter for `$1`, `$2`… (PostgreSQL) or `?1`, `?2`… (SQLite), from JSON.
#[derive(Debug, Clone)]
pub enum Param {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl Param {
    /// Strings, numbers, booleans and null; arrays and objects are refused.
    pub fn from_json(value: &Value) -> Result<Param, String> {
        Ok(match value {
            Value::Null => Param::Null,
            Value::Bool(b) => Param::Bool(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Param::Int(i),
                None => Param::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => Param::Text(s.clone()),
            Value::Array(_) | Value::Object(_) => {
                return Err(
                    "parameters must be strings, numbers, booleans or null (pass JSON as a string)"
                        .into(),
                );
            }
        })
    }
}

/// A database, ready to run calls for any tenant it serves.
pub enum Backend {
    Postgres(postgres::Postgres),
    Sqlite(sqlite::Sqlite),
}

/// One `query_database` call: whose, what, with which parameters, within which bounds.
pub struct Query<'a> {
    pub tenant: &'a TenantId,
    pub sql: &'a str,
    pub params: Vec<Param>,
    pub limits: Limits,
}

impl Backend {
    pub async fn query(&self, query: Query<'_>) -> Result<Rows, SqlError> {
        if let Err(message) = crate::statement::check_query(query.sql) {
            return Err(SqlError::Statement(message));
        }
        match self {
            Backend::Postgres(pg) => pg.query(query).await,
            Backend::Sqlite(lite) => lite.query(query).await,
        }
    }

    pub async fn list_tables(&self, tenant: &TenantId) -> Result<Vec<String>, SqlError> {
        match self {
            Backend::Postgres(pg) => pg.list_tables(tenant).await,
            Backend::Sqlite(lite) => lite.list_tables(tenant).await,
        }
    }

    pub async fn describe_table(
        &self,
        tenant: &TenantId,
        table: &str,
    ) -> Result<Vec<Column>, SqlError> {
        let columns = match self {
            Backend::Postgres(pg) => pg.describe_table(tenant, table).await?,
            Backend::Sqlite(lite) => lite.describe_table(tenant, table).await?,
        };
        if columns.is_empty() {
            return Err(SqlError::NoTable(table.to_owned()));
        }
        Ok(columns)
    }
}

/// Collects up to `max_rows` rows and `max_bytes`; the row after the last tells whether there
/// were more.
pub(crate) struct Collector {
    pub rows: Vec<Vec<Value>>,
    limits: Limits,
    bytes: usize,
    pub truncated: bool,
}

/// Roughly how many bytes a value takes in the reply.
fn size_of(value: &Value) -> usize {
    match value {
        Value::String(s) => s.len() + 2,
        Value::Array(a) => a.iter().map(size_of).sum::<usize>() + 2,
        Value::Object(o) => {
            o.iter()
                .map(|(k, v)| k.len() + 3 + size_of(v))
                .sum::<usize>()
                + 2
        }
        _ => 8,
    }
}

impl Collector {
    pub fn new(limits: Limits) -> Self {
        Collector {
            rows: Vec::new(),
            limits,
            bytes: 0,
            truncated: false,
        }
    }

    /// Adds a row; `Ok(false)` once the row cap is passed (stop reading), an error once the
    /// size cap is.
    pub fn push(&mut self, row: Vec<Value>) -> Result<bool, SqlError> {
        if self.rows.len() >= self.limits.max_rows {
            self.truncated = true;
            return Ok(false);
        }
        self.bytes += row.iter().map(size_of).sum::<usize>() + 2;
        if self.bytes > self.limits.max_bytes {
            return Err(SqlError::TooLarge(self.limits.max_bytes));
        }
        self.rows.push(row);
        Ok(true)
    }

    pub fn finish(self, columns: Vec<String>) -> Rows {
        Rows {
            columns,
            row_count: self.rows.len(),
            rows: self.rows,
            truncated: self.truncated,
        }
    }
}
