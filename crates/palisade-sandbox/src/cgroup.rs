//! The parent side of the cgroup layer: one cgroup per server instance under a gateway-owned
//! root, `<hierarchy>/<root>/<tenant>/<server>[/...]`.
//!
//! - Pure v2: one directory under the unified mount; memory, pids and cpu are enabled in the
//!   `cgroup.subtree_control` of every ancestor the gateway creates.
//! - Hybrid/v1: one directory per v1 controller hierarchy (memory, pids, cpu), plus one in the
//!   controller-less v2 hierarchy when it is mounted, used only for `cgroup.kill`.
//!
//! Invariants: name parts are single path components (no `/`, `.` or `..`), so an instance can
//! never escape its root; limits are always written (an unset limit writes "no limit"), so a
//! directory left over from an earlier instance does not keep stale limits; teardown is
//! [`Cgroup::kill_all`] then [`Cgroup::remove`]. The parts must be unique per running instance.

use crate::SandboxError;
use crate::detect::{CONTROLLERS, CgroupLayout, HostSupport};
use crate::profile::CgroupLimits;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The gateway's cgroup root name under each hierarchy.
pub const DEFAULT_CGROUP_ROOT: &str = "palisade";

const CPU_PERIOD_US: u64 = 100_000;
const MIB: u64 = 1024 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    /// A v2 directory with controllers.
    V2,
    /// A v1 directory of one controller.
    V1(String),
    /// A directory in a controller-less v2 hierarchy (membership and `cgroup.kill` only).
    Unified,
}

#[derive(Clone, Debug)]
struct Dir {
    /// The hierarchy's mount point.
    mount: PathBuf,
    /// The instance's directory.
    path: PathBuf,
    kind: Kind,
}

/// The cgroup(s) of one sandboxed instance.
#[derive(Clone, Debug)]
pub struct Cgroup {
    dirs: Vec<Dir>,
    /// `root` followed by the name parts, relative to each mount point.
    relative: Vec<String>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SandboxError + '_ {
    move |source| SandboxError::CgroupIo {
        path: path.to_path_buf(),
        source,
    }
}

fn write(path: &Path, value: &str) -> Result<(), SandboxError> {
    std::fs::write(path, value).map_err(io_err(path))
}

fn check_part(part: &str) -> Result<(), SandboxError> {
    if part.is_empty() || part == "." || part == ".." || part.contains('/') || part.contains('\0') {
        return Err(SandboxError::CgroupName(part.to_string()));
    }
    Ok(())
}

/// Creates `mount/relative...`, calling `each_parent` on every directory above the leaf
/// (including the mount point itself). Retries when a concurrent `remove` of a sibling deleted a
/// shared parent between two `mkdir`s.
fn create(
    mount: &Path,
    relative: &[String],
    mut each_parent: impl FnMut(&Path) -> Result<(), SandboxError>,
) -> Result<PathBuf, SandboxError> {
    let mut attempt = 0;
    loop {
        let mut path = mount.to_path_buf();
        let mut result = Ok(());
        for part in relative {
            if let Err(e) = each_parent(&path) {
                result = Err(e);
                break;
            }
            path.push(part);
            match std::fs::create_dir(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    result = Err(io_err(&path)(e));
                    break;
                }
            }
        }
        match result {
            Ok(()) => return Ok(path),
            Err(SandboxError::CgroupIo { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound && attempt < 3 =>
            {
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

impl Cgroup {
    /// Creates the instance's cgroup directories under `root` (e.g. [`DEFAULT_CGROUP_ROOT`]) and
    /// writes `limits`. `parts` name the instance, e.g. `["acme", "kit"]`.
    pub fn prepare(
        support: &HostSupport,
        root: &str,
        parts: &[&str],
        limits: &CgroupLimits,
    ) -> Result<Cgroup, SandboxError> {
        check_part(root)?;
        if parts.is_empty() {
            return Err(SandboxError::CgroupName(String::new()));
        }
        for p in parts {
            check_part(p)?;
        }
        let relative: Vec<String> = std::iter::once(root)
            .chain(parts.iter().copied())
            .map(String::from)
            .collect();
        let mut cg = Cgroup {
            dirs: Vec::new(),
            relative,
        };
        let result = cg.create_all(support, limits);
        if let Err(e) = result {
            cg.remove();
            return Err(e);
        }
        Ok(cg)
    }

    fn create_all(
        &mut self,
        support: &HostSupport,
        limits: &CgroupLimits,
    ) -> Result<(), SandboxError> {
        match &support.cgroups {
            CgroupLayout::None => return Err(SandboxError::NoCgroups),
            CgroupLayout::V2 { root, controllers } => {
                let enable: String = controllers
                    .iter()
                    .map(|c| format!("+{c}"))
                    .collect::<Vec<_>>()
                    .join(" ");
                let path = create(root, &self.relative, |parent| {
                    write(&parent.join("cgroup.subtree_control"), &enable)
                })?;
                self.dirs.push(Dir {
                    mount: root.clone(),
                    path: path.clone(),
                    kind: Kind::V2,
                });
                write_v2_limits(&path, controllers, limits)?;
            }
            CgroupLayout::Hybrid { v1, unified } => {
                for (controller, mount) in v1 {
                    let path = create(mount, &self.relative, |_| Ok(()))?;
                    self.dirs.push(Dir {
                        mount: mount.clone(),
                        path: path.clone(),
                        kind: Kind::V1(controller.clone()),
                    });
                    write_v1_limits(&path, controller, limits)?;
                }
                if let Some(mount) = unified {
                    // Best effort: without it teardown kills pid by pid.
                    if let Ok(path) = create(mount, &self.relative, |_| Ok(())) {
                        self.dirs.push(Dir {
                            mount: mount.clone(),
                            path,
                            kind: Kind::Unified,
                        });
                    }
                }
            }
        }
        if !self.dirs.iter().any(|d| d.kind != Kind::Unified) {
            return Err(SandboxError::NoCgroups);
        }
        Ok(())
    }

    /// The `cgroup.procs` files the helper writes its pid to (one per hierarchy).
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .map(|d| d.path.join("cgroup.procs"))
            .collect()
    }

    /// The instance's directories (one per hierarchy).
    pub fn paths(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.path.clone()).collect()
    }

    /// Pids currently in the instance's cgroups (including sub-cgroups).
    pub fn pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for d in &self.dirs {
            collect_pids(&d.path, &mut pids, 0);
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Kills every process of the instance: `cgroup.kill` where a v2 directory has it, else
    /// SIGKILL to every pid listed, repeated until the cgroups are empty (at most ~2 s).
    pub fn kill_all(&self) {
        let killed_by_kernel = self
            .dirs
            .iter()
            .filter(|d| !matches!(d.kind, Kind::V1(_)))
            .any(|d| std::fs::write(d.path.join("cgroup.kill"), "1").is_ok());
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut round = 0;
        loop {
            let pids = self.pids();
            if pids.is_empty() || Instant::now() > deadline {
                return;
            }
            // The kernel's kill is asynchronous; signal by hand only if it is missing or slow.
            if !killed_by_kernel || round > 5 {
                for pid in pids {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            round += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Removes the instance's directories and its now-empty parents below the root (call after
    /// [`Cgroup::kill_all`]). Errors are ignored: a busy directory stays.
    pub fn remove(&self) {
        for d in &self.dirs {
            remove_tree(&d.path);
            let mut parent = d.path.clone();
            // Parents strictly between the root and the leaf (the root is shared, keep it).
            for _ in 1..self.relative.len().saturating_sub(1) {
                parent.pop();
                if parent.starts_with(&d.mount) && parent != d.mount {
                    let _ = std::fs::remove_dir(&parent);
                }
            }
        }
    }

    /// The number of OOM kills in the instance (v2 `memory.events`, v1 `memory.oom_control`).
    pub fn memory_events_oom_kills(&self) -> Option<u64> {
        let file = self.dirs.iter().find_map(|d| match &d.kind {
            Kind::V2 => Some(d.path.join("memory.events")),
            Kind::V1(c) if c == "memory" => Some(d.path.join("memory.oom_control")),
            _ => None,
        })?;
        let text = std::fs::read_to_string(file).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse().ok())
    }
}

/// Removes a whole cgroup root (e.g. a test's `palisade-test-<pid>`) in every hierarchy,
/// killing what is left in it first. Errors are ignored.
pub fn remove_root(support: &HostSupport, root: &str) {
    if check_part(root).is_err() {
        return;
    }
    let mounts: Vec<PathBuf> = match &support.cgroups {
        CgroupLayout::None => Vec::new(),
        CgroupLayout::V2 { root, .. } => vec![root.clone()],
        CgroupLayout::Hybrid { v1, unified } => v1
            .iter()
            .map(|(_, m)| m.clone())
            .chain(unified.iter().cloned())
            .collect(),
    };
    for m in mounts {
        let path = m.join(root);
        if path.is_dir() {
            let mut pids = Vec::new();
            collect_pids(&path, &mut pids, 0);
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            remove_tree(&path);
        }
    }
}

fn collect_pids(dir: &Path, pids: &mut Vec<i32>, depth: usize) {
    if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if depth > 16 {
        return;
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_pids(&e.path(), pids, depth + 1);
            }
        }
    }
}

/// rmdir bottom-up (cgroup directories are removed with their control files by rmdir), retrying
/// briefly while exiting processes still hold the directory busy.
fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    for _ in 0..100 {
        match std::fs::remove_dir(dir) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(Duration::from_millis(10))
            }
            _ => return,
        }
    }
}

fn write_v2_limits(
    path: &Path,
    controllers: &[String],
    l: &CgroupLimits,
) -> Result<(), SandboxError> {
    let has = |c: &str| controllers.iter().any(|x| x == c);
    if has("memory") {
        let max = l
            .memory_mb
            .map_or("max".to_string(), |m| (m * MIB).to_string());
        write(&path.join("memory.max"), &max)?;
        let swap = path.join("memory.swap.max");
        if swap.exists() {
            write(&swap, if l.memory_mb.is_some() { "0" } else { "max" })?;
        }
        // An OOM kills the whole instance rather than one of its processes.
        let group = path.join("memory.oom.group");
        if group.exists() {
            write(&group, "1")?;
        }
    }
    if has("pids") {
        let max = l.pids_max.map_or("max".to_string(), |p| p.to_string());
        write(&path.join("pids.max"), &max)?;
    }
    if has("cpu") {
        let max = l.cpu_percent.map_or(format!("max {CPU_PERIOD_US}"), |p| {
            format!("{} {CPU_PERIOD_US}", u64::from(p) * CPU_PERIOD_US / 100)
        });
        write(&path.join("cpu.max"), &max)?;
    }
    Ok(())
}

fn write_v1_limits(path: &Path, controller: &str, l: &CgroupLimits) -> Result<(), SandboxError> {
    debug_assert!(CONTROLLERS.contains(&controller));
    match controller {
        "memory" => {
            let max = l
                .memory_mb
                .map_or("-1".to_string(), |m| (m * MIB).to_string());
            let memsw = path.join("memory.memsw.limit_in_bytes");
            if l.memory_mb.is_none() && memsw.exists() {
                // Raise memsw first: it may not be below limit_in_bytes.
                write(&memsw, "-1")?;
            }
            write(&path.join("memory.limit_in_bytes"), &max)?;
            if memsw.exists() {
                // Equal to the memory limit: no swap on top of it.
                write(&memsw, &max)?;
            }
        }
        "pids" => {
            let max = l.pids_max.map_or("max".to_string(), |p| p.to_string());
            write(&path.join("pids.max"), &max)?;
        }
        "cpu" => {
            write(&path.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
            let quota = l.cpu_percent.map_or("-1".to_string(), |p| {
                (u64::from(p) * CPU_PERIOD_US / 100).to_string()
            });
            write(&path.join("cpu.cfs_quota_us"), &quota)?;
        }
        _ => {}
    }
    Ok(())
}
