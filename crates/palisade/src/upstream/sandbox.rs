//! The sandbox of a dedicated server's process: what the host supports (detected once per
//! gateway), and how a spawn becomes `palisade sandbox-exec PLAN` in the instance's own cgroup.
//!
//! Invariants: a layer the profile marks required and the host lacks means the process does
//! not start (the error says which layer and why); each process gets its own cgroup
//! (`palisade-<gateway pid>/<tenant>/<server>/<instance>`, so gateways sharing a host never
//! share one), removed with it, so stopping an instance kills its whole tree and nothing else.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::OnceLock;

use palisade_sandbox::{Cgroup, DEFAULT_CGROUP_ROOT, HostSupport, Layer, Plan, Profile};

static HOST: OnceLock<HostSupport> = OnceLock::new();
/// What no sandboxed process may see (set once at start, see [`keep_private`]).
static HIDDEN: OnceLock<Vec<PathBuf>> = OnceLock::new();

/// The gateway's own files (data directory, secret files), hidden from every process it starts
/// in a mount namespace.
pub(crate) fn keep_private(paths: Vec<PathBuf>) {
    let _ = HIDDEN.set(paths);
}

/// The profile a dedicated stdio server's processes run with: its own, or [`Profile::isolation`].
pub(crate) fn profile_of(server: &config::Server) -> Profile {
    server.sandbox.clone().unwrap_or_else(Profile::isolation)
}

/// This gateway's cgroup root: `palisade-<pid>`.
fn cgroup_root() -> &'static str {
    static ROOT: OnceLock<String> = OnceLock::new();
    ROOT.get_or_init(|| format!("{DEFAULT_CGROUP_ROOT}-{}", std::process::id()))
}

/// Removes the cgroup roots of gateways that are gone (killed before they could clean up):
/// `palisade-<pid>` whose process no longer exists. Whatever still runs in them is killed.
pub(crate) fn sweep_stale() {
    let host = host();
    let mounts: Vec<PathBuf> = match &host.cgroups {
        palisade_sandbox::CgroupLayout::None => Vec::new(),
        palisade_sandbox::CgroupLayout::V2 { root, .. } => vec![root.clone()],
        palisade_sandbox::CgroupLayout::Hybrid { v1, unified } => v1
            .iter()
            .map(|(_, m)| m.clone())
            .chain(unified.iter().cloned())
            .collect(),
    };
    let prefix = format!("{DEFAULT_CGROUP_ROOT}-");
    let mut stale = std::collections::BTreeSet::new();
    for mount in mounts {
        let Ok(entries) = std::fs::read_dir(&mount) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix(&prefix)
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            {
                stale.insert(name);
            }
        }
    }
    for root in stale {
        tracing::info!(cgroup = %root, "removing the cgroups of a gateway that is gone");
        palisade_sandbox::remove_root(host, &root);
    }
}

/// Removes this gateway's cgroup root, if it sandboxed anything (at shutdown, after every
/// instance stopped).
pub(crate) fn cleanup() {
    if let Some(host) = HOST.get() {
        palisade_sandbox::remove_root(host, cgroup_root());
    }
}

use crate::config::{self, Stdio};

/// What this host supports, detected on first use.
pub fn host() -> &'static HostSupport {
    HOST.get_or_init(palisade_sandbox::detect)
}

/// A sandboxed spawn: the helper's command line, the instance's cgroup, and the layers the
/// process gets.
pub(crate) struct Spawn {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub cgroup: Option<Cgroup>,
    /// e.g. `rlimits+cgroup+landlock+seccomp+nnp`.
    pub level: String,
}

/// Prepares the sandboxed spawn of `cfg` (a template already filled for the tenant).
pub(crate) fn prepare(
    profile: &Profile,
    cfg: &Stdio,
    tenant: &str,
    server: &str,
) -> Result<Spawn, String> {
    // Unique within this gateway: pool members and a process replacing another never share.
    static NEXT_INSTANCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let instance = NEXT_INSTANCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let host = host();
    let level = host.level(profile);
    if let Some((layer, why)) = level.skipped.iter().find(|(l, _)| profile.requires(*l)) {
        return Err(format!(
            "sandbox layer `{}` is required but unavailable on this host: {why} (see `palisade doctor`)",
            layer.name()
        ));
    }
    let workdir = cfg
        .cwd
        .clone()
        .ok_or("a sandboxed process needs a working directory")?;
    let path = cfg
        .env
        .get("PATH")
        .map(String::as_str)
        .unwrap_or(config::DEFAULT_CHILD_PATH);
    let program = config::find_executable(&cfg.command, path, Some(&workdir)).ok_or_else(|| {
        format!(
            "`{}` is not an executable file, nor found on the child's PATH ({path})",
            cfg.command
        )
    })?;
    let cgroup = if level.layers.contains(&Layer::Cgroup) {
        let instance = instance.to_string();
        Some(
            Cgroup::prepare(
                host,
                cgroup_root(),
                &[tenant, server, &instance],
                &profile.cgroup,
            )
            .map_err(|e| format!("cannot prepare the instance's cgroup: {e}"))?,
        )
    } else {
        None
    };
    // The server's own program must stay readable and executable under Landlock.
    let mut profile = profile.clone();
    profile.landlock.read_only.push(program.clone());
    let plan = Plan {
        profile,
        workdir,
        cgroup_procs: cgroup.as_ref().map(Cgroup::procs_files).unwrap_or_default(),
        program,
        args: cfg.args.clone(),
        hidden: HIDDEN.get().cloned().unwrap_or_default(),
    };
    let plan = serde_json::to_string(&plan).map_err(|e| format!("sandbox plan: {e}"))?;
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot locate the palisade binary for its sandbox helper: {e}"))?;
    Ok(Spawn {
        program: exe,
        args: vec!["sandbox-exec".into(), plan.into()],
        cgroup,
        level: level.label(),
    })
}

/// Kills what is left in an instance's cgroup and removes it.
pub(crate) fn teardown(cgroup: &Cgroup) {
    cgroup.kill_all();
    cgroup.remove();
}
