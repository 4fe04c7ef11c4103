//! palisade-sql's integration tests: one binary, a module per backend, against the real
//! `palisade-sql` binary over real pipes; `common` is the harness.

mod assertion;
mod common;
mod postgres;
mod sqlite;
