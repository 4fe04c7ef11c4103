//! Palisade: a multi-tenant gateway for the Model Context Protocol.
//!
//! The path of one request, module by module: [`http`] (the front door: Origin/Host, body limit,
//! era detection) → [`auth`] (credentials → [`auth::Principal`], checked against the
//! [`registry`], an in-memory cache of the registry store) → [`session`] (legacy era) →
//! [`dispatch`] (lifecycle answered here, lists to the [`catalog`], calls to the [`pipeline`],
//! which asks the [`policy`] first) →
//! [`upstream`] (stdio processes and HTTP servers, supervised). [`metrics`] counts along the way;
//! [`resume`] keeps legacy sessions' event streams resumable.
//! `docs/ARCHITECTURE.md` is the map.

#![warn(unreachable_pub)]

pub mod apikey;
pub mod assertion;
pub mod audit;
pub mod auth;
pub mod catalog;
pub mod cli;
pub mod config;
pub(crate) mod dispatch;
pub(crate) mod fleet;
pub mod gateway;
pub(crate) mod http;
pub(crate) mod limits;
pub(crate) mod listens;
pub mod metrics;
pub mod onboarding;
pub mod pipeline;
pub mod policy;
pub mod registry;
pub mod resume;
pub(crate) mod secrets;
pub mod serve;
pub mod session;
pub mod upstream;
