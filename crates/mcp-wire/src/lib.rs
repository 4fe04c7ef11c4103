//! The MCP wire format, and nothing else: JSON-RPC 2.0 envelopes parsed from raw bytes, the
//! protocol eras with their versions, headers and `_meta` keys, the SSE codec and stdio's line
//! framing.
//!
//! This crate does no I/O and knows nothing of tenants or upstreams. Its one rule: bytes the
//! gateway does not own pass through untouched. Params and results stay [`RawValue`]s, and the
//! few rewrites the gateway needs (ids, progress tokens, names) go through [`RawObject`], which
//! re-serializes only the top level of an object and keeps every nested value's original bytes.
//!
//! [`RawValue`]: serde_json::value::RawValue

pub mod era;
pub mod jsonrpc;
pub mod lines;
pub mod param_headers;
pub mod raw;
pub mod sse;

pub use era::Era;
pub use jsonrpc::{ErrorCode, Id, Message, Notification, Request, Response, WireError};
pub use raw::RawObject;
