//! Palisade's registry store: tenants, API keys, per-tenant policies and secrets' metadata.
//!
//! Invariants:
//! - **One interface, two backends.** [`Store`] runs every query, written once, on SQLite (an
//!   embedded file, the default) or PostgreSQL; each backend has its own migrations, applied on
//!   [`Store::open`].
//! - **Every write bumps the revision** in the same transaction ([`Store::revision`]), so a
//!   gateway that sees it move reloads a [`Snapshot`]. Only [`Store::record_last_used`] does not.
//! - **Hashes only.** The store sees an API key's HMAC, never the key, and a secret's name,
//!   never its value. Key hashes are never serialized or printed.
//!
//! Audit history lives elsewhere; nothing here references it, so deleting a tenant keeps it.

mod error;
mod model;
mod reconcile;
mod replicas;
mod rows;
mod store;

pub use error::StoreError;
pub use model::{
    Declared, KeyHash, KeyRecord, NewKey, NewTenant, ReconcileReport, SecretMeta, Snapshot, Source,
    Status, TenantPatch, TenantRecord,
};
pub use palisade_ids::TenantId;
pub use replicas::ReplicaRecord;
pub use store::{Backend, Store};
