//! `[listen]`: the MCP and admin listeners and the bounds every client connection lives by.

use std::net::SocketAddr;

use serde::Deserialize;

use super::{MAX_MS, Problems};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// Address of the MCP endpoint (served at `/mcp`).
    #[serde(default = "default_mcp_addr")]
    pub mcp: SocketAddr,
    /// Address of the admin listener: `/healthz`, `/readyz`, `/metrics`.
    #[serde(default = "default_admin_addr")]
    pub admin: SocketAddr,
    /// `Origin` values allowed besides loopback origins (exact match, e.g.
    /// `https://app.example.com`). A request without `Origin` (not from a browser) is allowed.
    #[serde(default)]
    pub(crate) allowed_origins: Vec<String>,
    /// `Host` values allowed besides loopback names, for DNS-rebinding protection. When the
    /// MCP listener binds a non-loopback address, list the names clients use to reach it, or `*`.
    #[serde(default)]
    pub(crate) allowed_hosts: Vec<String>,
    /// A client must send its request headers within this time, or the connection is closed
    /// (slow-header clients cannot hold connections open). A new connection must send its
    /// first request's headers within this time too, in either HTTP version.
    #[serde(default = "default_header_timeout")]
    pub header_read_timeout_ms: u64,
    /// A connection with no request in progress for this long is closed (either HTTP version;
    /// an open SSE stream counts as a request in progress).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_ms: u64,
    /// A request body must arrive within this time, or the request is answered 408.
    #[serde(default = "default_body_timeout")]
    pub body_read_timeout_ms: u64,
    /// Connections from one address that have not yet sent an authenticated request, at most;
    /// further ones are closed at once. Behind a load balancer every client shares its address:
    /// raise this there.
    #[serde(default = "default_unauthenticated_per_source")]
    pub(crate) max_unauthenticated_per_source: usize,
    /// Open connections to the MCP listener at most; further clients wait to be accepted.
    #[serde(default = "default_max_connections")]
    pub(crate) max_connections: usize,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            mcp: default_mcp_addr(),
            admin: default_admin_addr(),
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            header_read_timeout_ms: default_header_timeout(),
            idle_timeout_ms: default_idle_timeout(),
            body_read_timeout_ms: default_body_timeout(),
            max_unauthenticated_per_source: default_unauthenticated_per_source(),
            max_connections: default_max_connections(),
        }
    }
}

fn default_header_timeout() -> u64 {
    10_000
}

fn default_idle_timeout() -> u64 {
    120_000
}

fn default_body_timeout() -> u64 {
    30_000
}

fn default_unauthenticated_per_source() -> usize {
    128
}

fn default_max_connections() -> usize {
    10_000
}

fn default_mcp_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn default_admin_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}

impl Listen {
    pub(super) fn check(&self, problems: &mut Problems) {
        let timeouts = [
            ("listen.header_read_timeout_ms", self.header_read_timeout_ms),
            ("listen.idle_timeout_ms", self.idle_timeout_ms),
            ("listen.body_read_timeout_ms", self.body_read_timeout_ms),
        ];
        for (key, value) in timeouts {
            problems.at_most(key, value, MAX_MS);
        }
        if timeouts.iter().any(|(_, v)| *v == 0)
            || self.max_connections == 0
            || self.max_unauthenticated_per_source == 0
        {
            problems.add(
                "listen",
                "header_read_timeout_ms, idle_timeout_ms, body_read_timeout_ms, max_connections and max_unauthenticated_per_source must be greater than 0",
            );
        }
        if !self.mcp.ip().is_loopback() && self.allowed_hosts.is_empty() {
            problems.add(
                "listen.allowed_hosts",
                "the MCP listener binds a non-loopback address: list the host names clients use (or \"*\" to disable the DNS-rebinding check)",
            );
        }
    }
}
