//! Palisade audit trail (core library).
//!
//! Owns: the audit [`Record`] and its one-line JSON form, RFC 8785 canonical JSON and
//! per-tenant argument fingerprints, the SHA-256 hash chain over exact stored bytes, the durable
//! JSONL writer (group commit, fail closed, rotation, signed checkpoints) and the verifier.
//!
//! Invariants: arguments never enter a record (only their keyed fingerprint and size);
//! [`AuditLog::append`] returns `Ok` only once the line is on disk (`fdatasync`); every record's
//! hash covers the previous hash and its exact stored bytes (see [`chain`]).

pub mod chain;
pub mod checkpoint;
pub mod file;
pub mod log;
pub mod postgres;
pub mod read;
pub mod record;
pub mod stdout;
pub mod time;
pub mod verify;
pub mod writer;

pub use chain::{Chain, GENESIS_HASH, hash_line, split_line};
pub use checkpoint::{Checkpoint, CheckpointLine};
pub use file::{FileSink, FileText, list_files, read_file};
pub use log::{AuditConfig, AuditLog, Sink};
pub use postgres::PgSink;
pub use record::{Fingerprinter, Kind, Record, canonical_json, new_uuid_v7};
pub use stdout::StreamSink;
pub use time::now_rfc3339;
pub use verify::{
    Problem, ProblemKind, Report, VerifyOptions, verify, verify_sources, verify_with,
};

/// Errors from the audit trail.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The sink cannot make records durable; callers must fail closed.
    #[error("audit trail unavailable: {0}")]
    Unavailable(String),
    /// A record could not be encoded.
    #[error("audit record encoding failed: {0}")]
    Encode(String),
    /// Bad configuration or key material.
    #[error("audit configuration error: {0}")]
    Config(String),
    /// I/O error outside the write path (opening, scanning).
    #[error("audit I/O error: {0}")]
    Io(#[from] std::io::Error),
}
