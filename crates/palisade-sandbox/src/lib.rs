//! Sandboxing of dedicated MCP server processes.
//!
//! The gateway never sandboxes in `pre_exec` of its own (multi-threaded) process. It starts a
//! fresh, single-threaded helper (`palisade sandbox-exec PLAN_JSON`) which applies every layer to
//! itself and then execs the server:
//!
//! - [`profile`]: the per-server settings (`[servers.sandbox]`) and their validation.
//! - [`detect`]: what the host supports, the human report for `doctor`, and the [`Level`] a
//!   profile gets here (for warnings and the metric label).
//! - [`cgroup`]: the parent-side cgroup of one instance (v2, or v1 controllers with the v2
//!   unified hierarchy for `cgroup.kill`), its limits, teardown and removal.
//! - [`helper`]: the helper-side [`Plan`] and [`exec`], which applies the layers in a fixed order.
//!
//! Invariant shared by all modules: a layer listed in [`Profile::required`] is either applied or
//! the start fails (exit [`EXIT_SANDBOX_FAILED`] from the helper); any other layer is best effort.

pub mod cgroup;
pub mod detect;
pub mod helper;
pub mod profile;
mod ruleset;
mod syscalls;

pub use cgroup::{Cgroup, DEFAULT_CGROUP_ROOT, remove_root};
pub use detect::{CgroupLayout, HostSupport, Level, detect};
pub use helper::{EXIT_SANDBOX_FAILED, Plan, exec};
pub use profile::{CgroupLimits, DEFAULT_READ_ONLY, Landlock, Layer, Namespaces, Profile, Rlimits};

use std::path::PathBuf;

/// Errors of the parent side (cgroup preparation) and of the helper's layers.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "no usable cgroup hierarchy on this host (need cgroup v2 with memory and pids, or v1 memory/pids controllers, and root or a delegated subtree); set `sandbox.required` without \"cgroup\" to run without one"
    )]
    NoCgroups,
    #[error(
        "cgroup {path}: {source}; check that the gateway runs as root or owns a delegated cgroup subtree"
    )]
    CgroupIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid cgroup name part {0:?}: use a non-empty name without '/' or '..'")]
    CgroupName(String),
    #[error("invalid sandbox profile: {0}")]
    Profile(String),
    #[error("{what}: {detail}")]
    Layer { what: &'static str, detail: String },
}

impl SandboxError {
    pub(crate) fn layer(what: &'static str, detail: impl ToString) -> Self {
        SandboxError::Layer {
            what,
            detail: detail.to_string(),
        }
    }
}
