//! Measurement kit for Palisade's overhead: the pieces shared by the `bench-echo` upstream and the
//! `bench-load` load generator.
//!
//! - [`echo`]: the request handler of the deliberately fast MCP echo upstream (transport-free).
//! - [`mcp`]: request bodies the load generator sends and the verification of each response.
//! - [`procstat`]: CPU time and memory of a process, read from `/proc`.
//! - [`driver`]: the per-session call loop (closed or open loop, warmup, measured window).
//! - [`stats`]: per-session latency histograms and error counts, and the final report.
//! - [`http_client`]: one MCP session over its own keep-alive HTTP/1.1 connection.
//! - [`stdio_client`]: many concurrent callers multiplexed over one stdio child's pipes.

pub mod driver;
pub mod echo;
pub mod http_client;
pub mod mcp;
pub mod procstat;
pub mod stats;
pub mod stdio_client;
