//! The gateway's integration tests: one binary, a module per area. Every test runs the real
//! `palisade` binary (or, where a process boundary is not the point, a gateway in this process)
//! in front of real upstream processes and talks to it over real sockets; `common` is the
//! harness.

mod audit;
mod audit_cli;
mod chaos;
mod common;
mod dedicated;
mod eras;
mod fleet;
mod framing;
mod front_door;
mod identity;
mod limits;
mod oauth_tokens;
mod relay;
mod sandbox;
mod shared;
mod sql;
mod upstream_failures;
