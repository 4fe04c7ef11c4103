//! palisade-sql: an MCP server with one job, read-only SQL for one tenant at a time.
//!
//! A call flows top to bottom through these modules:
//! 1. [`server`] receives `tools/call` (stdio or Streamable HTTP) and works out the tenant:
//!    from the gateway's signed assertion ([`assertion`]) in shared placement, from `TENANT_ID`
//!    in dedicated placement. Nothing else the caller sends can name a tenant.
//! 2. [`backend`] runs the statement as that tenant: PostgreSQL with forced row-level security
//!    ([`backend::postgres`]) or the tenant's own SQLite file behind an authorizer
//!    ([`backend::sqlite`]). The database, not this process, keeps tenants apart.
//! 3. The rows go back as structured content and text; failures are tool errors carrying the
//!    database's message, never a connection string.
//!
//! [`migrate`] creates the PostgreSQL roles, policies and sample schema, and the per-tenant
//! SQLite files with the same sample data ([`sample`]).

pub mod assertion;
pub mod backend;
pub mod migrate;
pub mod sample;
pub mod server;
pub mod statement;

/// A tenant id as the gateway allows it. It names a file (SQLite) and a setting (PostgreSQL),
/// so nothing else is accepted.
pub use palisade_ids::TenantId;
