//! The store's errors. Messages say what to do and never carry secrets (no passwords from
//! URLs, no key hashes, no stored values).

/// Everything a store operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The named row does not exist.
    #[error("{what} `{id}` not found")]
    NotFound { what: &'static str, id: String },
    /// A row with the same identity already exists.
    #[error("{what} `{id}` already exists")]
    Conflict { what: &'static str, id: String },
    /// The caller's input cannot be stored as given.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// A stored value cannot be read back (edited by hand, or written by another program).
    #[error("stored data is unreadable: {0}; fix or delete the row, or restore a backup")]
    Corrupt(String),
    /// The URL names no backend this store has.
    #[error(
        "unsupported store URL scheme `{0}`: use sqlite://PATH (a file, created if missing) \
         or postgres://USER@HOST/DATABASE"
    )]
    UnsupportedUrl(String),
    /// The database could not be opened or reached at startup.
    #[error(
        "cannot open the store at {target}: {source}; check that the database is running, \
         the URL and credentials are right, and (SQLite) the directory is writable"
    )]
    Open {
        /// The URL with any password and query removed.
        target: String,
        #[source]
        source: sqlx::Error,
    },
    /// Applying the schema migrations failed.
    #[error(
        "store migration failed: {0}; if the database was migrated by a newer version, \
         run that version, and never edit a migration that has already run"
    )]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// Any other database failure.
    #[error("store database error: {0}; check that the database is reachable and not read-only")]
    Database(#[source] sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Database(e)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Migrate(e)
    }
}

impl StoreError {
    pub(crate) fn not_found(what: &'static str, id: impl Into<String>) -> Self {
        StoreError::NotFound {
            what,
            id: id.into(),
        }
    }

    pub(crate) fn conflict(what: &'static str, id: impl Into<String>) -> Self {
        StoreError::Conflict {
            what,
            id: id.into(),
        }
    }

    /// Whether this is [`StoreError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }

    /// Whether this is [`StoreError::Conflict`].
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }
}

/// Maps a unique-constraint violation to [`StoreError::Conflict`], anything else to
/// [`StoreError::Database`]. Explicit checks run first; this covers what they cannot.
pub(crate) fn unique_as_conflict(e: sqlx::Error, what: &'static str, id: &str) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::conflict(what, id),
        _ => StoreError::Database(e),
    }
}

/// A URL fit for a message: scheme, host and path; no password, no query.
pub(crate) fn redact_url(url: &str) -> String {
    let without_query = url.split(['?', '#']).next().unwrap_or_default();
    let Some((scheme, rest)) = without_query.split_once("://") else {
        return without_query.to_string();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            if userinfo.contains(':') {
                format!("{user}:***@{host}")
            } else {
                format!("{user}@{host}")
            }
        }
        None => authority.to_string(),
    };
    format!("{scheme}://{authority}{path}")
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn redacts_password_and_query() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/palisade?sslmode=require&password=x"),
            "postgres://app:***@db:5432/palisade"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1/postgres"),
            "postgres://postgres@127.0.0.1/postgres"
        );
        assert_eq!(
            redact_url("sqlite://data/palisade.db?mode=rwc"),
            "sqlite://data/palisade.db"
        );
        assert_eq!(redact_url("sqlite:palisade.db"), "sqlite:palisade.db");
    }
}
