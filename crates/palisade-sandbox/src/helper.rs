//! The helper side: [`Plan`] and [`exec`], run in a fresh single-threaded process
//! (`palisade sandbox-exec PLAN_JSON`) before anything else.
//!
//! Order (each step relies on the previous ones): setsid; PR_SET_PDEATHSIG(SIGKILL); join the
//! cgroups (before Landlock hides `/sys`, and before a user namespace drops the rights to do it);
//! rlimits (lowered only, core dumps 0); namespaces (user first; in a mount namespace the
//! plan's hidden paths are covered; a pid namespace forks once: the child continues as pid 1
//! with a `/proc` of its own, the parent waits and exits with the child's status); chdir(workdir);
//! Landlock; PR_SET_NO_NEW_PRIVS; seccomp (last, as it also refuses `unshare`/`mount`); execvp.
//!
//! A failing layer listed in `required` (or a failing exec) prints one line
//! `palisade sandbox: <what failed>: <error>` to stderr and exits [`EXIT_SANDBOX_FAILED`]; any
//! other failing layer is skipped silently (the gateway already warned from `detect()`).

use crate::SandboxError;
use crate::profile::{Layer, Profile};
use crate::{ruleset, syscalls};
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// The helper's exit status when the sandbox could not be set up as required.
pub const EXIT_SANDBOX_FAILED: i32 = 121;

/// What the helper applies and runs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub profile: Profile,
    /// The working directory; always writable under Landlock. Must exist.
    pub workdir: PathBuf,
    /// `cgroup.procs` files to join (from [`crate::Cgroup::procs_files`]); empty for none.
    pub cgroup_procs: Vec<PathBuf>,
    /// The program, looked up in `PATH` when it has no `/`.
    pub program: PathBuf,
    /// Arguments after the program name. The environment is the helper's own.
    pub args: Vec<String>,
    /// Paths the process must not see (the gateway's data directory and secret files): with a
    /// mount namespace, an empty read-only tmpfs covers each directory and `/dev/null` each
    /// file; the working directory stays reachable where it was, even inside one of them.
    #[serde(default)]
    pub hidden: Vec<PathBuf>,
}

/// Applies the plan to the calling process and execs the program; never returns. Call it first
/// thing in a fresh, single-threaded process.
pub fn exec(plan: Plan) -> ! {
    match run(&plan) {
        Err(e) => {
            eprintln!("palisade sandbox: {e}");
            // SAFETY: _exit ends the process without running anything else.
            unsafe { libc::_exit(EXIT_SANDBOX_FAILED) }
        }
        Ok(never) => match never {},
    }
}

/// Runs `step` for `layer`: its failure is an error only when the layer is required.
fn step(
    profile: &Profile,
    layer: Layer,
    what: &'static str,
    f: impl FnOnce() -> Result<(), String>,
) -> Result<(), SandboxError> {
    match f() {
        Err(e) if profile.requires(layer) => Err(SandboxError::layer(what, e)),
        _ => Ok(()),
    }
}

fn run(plan: &Plan) -> Result<Infallible, SandboxError> {
    let p = &plan.profile;
    let program = cstring(plan.program.as_os_str().as_bytes(), "program")?;
    let mut argv = vec![program.clone()];
    for a in &plan.args {
        argv.push(cstring(a.as_bytes(), "argument")?);
    }
    // Rust ignores SIGPIPE at startup and that survives exec: give the child the default back.
    // SAFETY: resetting a disposition to SIG_DFL in a single-threaded process.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );

    // A process group leader cannot setsid; the gateway starts us as a plain child, so this
    // only fails when run by hand from a shell that made us a group leader.
    let _ = nix::unistd::setsid();
    die_with_parent()?;

    if !p.enabled {
        return execvp(&program, &argv, plan);
    }

    step(p, Layer::Cgroup, "cgroup", || {
        if plan.cgroup_procs.is_empty() {
            return Err("no cgroup was prepared for this instance (the host has no usable cgroup hierarchy)".into());
        }
        let pid = std::process::id().to_string();
        for f in &plan.cgroup_procs {
            std::fs::write(f, &pid).map_err(|e| format!("joining {}: {e}", f.display()))?;
        }
        Ok(())
    })?;

    step(p, Layer::Rlimits, "rlimits", || apply_rlimits(p))?;

    if p.namespaces.any() {
        let unshared = unshare(p);
        step(p, Layer::Namespaces, "namespaces", || unshared.clone())?;
        // With a mount namespace in place, hiding cannot fail for want of support: a failure
        // is unexpected, and the process does not start with the gateway's files in view.
        if unshared.is_ok() && p.namespaces.mount {
            hide(&plan.hidden, &plan.workdir)
                .map_err(|e| SandboxError::layer("hiding the gateway's files", e))?;
        }
        if p.namespaces.pid {
            fork_into_pid_namespace(p)?;
        }
    }

    nix::unistd::chdir(&plan.workdir).map_err(|e| {
        SandboxError::layer(
            "working directory",
            format!(
                "{}: {e}; create it before starting the server",
                plan.workdir.display()
            ),
        )
    })?;

    if p.landlock.enabled {
        let required = p.requires(Layer::Landlock);
        step(p, Layer::Landlock, "landlock", || {
            ruleset::apply_landlock(&p.landlock, &plan.workdir, required)
                .map(drop)
                .map_err(|e| e.to_string())
        })?;
    }

    // Always: the program can never gain privileges (setuid binaries, file capabilities).
    let nnp = nix::sys::prctl::set_no_new_privs().map_err(|e| e.to_string());
    if let Err(e) = nnp {
        return Err(SandboxError::layer("no_new_privs", e));
    }

    if p.seccomp {
        step(p, Layer::Seccomp, "seccomp", || {
            let programs = ruleset::seccomp_programs().map_err(|e| e.to_string())?;
            ruleset::apply_seccomp(&programs).map_err(|e| e.to_string())
        })?;
    }

    execvp(&program, &argv, plan)
}

fn cstring(bytes: &[u8], what: &'static str) -> Result<CString, SandboxError> {
    CString::new(bytes).map_err(|_| SandboxError::layer(what, "contains a NUL byte"))
}

fn execvp(program: &CString, argv: &[CString], plan: &Plan) -> Result<Infallible, SandboxError> {
    let e = match nix::unistd::execvp(program, argv) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    let hint = if e == nix::errno::Errno::EACCES
        && plan.profile.enabled
        && plan.profile.landlock.enabled
    {
        "; if the file exists, add its directory to sandbox.landlock.read_only"
    } else {
        ""
    };
    Err(SandboxError::layer(
        "exec",
        format!("{}: {e}{hint}", plan.program.display()),
    ))
}

/// SIGKILL when the parent (the gateway, or the pid-namespace parent) dies; exits at once if it
/// already died before the request took effect.
fn die_with_parent() -> Result<(), SandboxError> {
    let parent = nix::unistd::getppid();
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(|e| SandboxError::layer("PR_SET_PDEATHSIG", e))?;
    if nix::unistd::getppid() != parent {
        return Err(SandboxError::layer(
            "PR_SET_PDEATHSIG",
            "the parent exited during startup",
        ));
    }
    Ok(())
}

fn apply_rlimits(p: &Profile) -> Result<(), String> {
    use rlimit::Resource;
    const MIB: u64 = 1024 * 1024;
    // Lower only: never above the current hard limit (raising it needs CAP_SYS_RESOURCE).
    let lower = |res: Resource, soft: u64, hard: u64| -> Result<(), String> {
        let (_, cur_hard) = rlimit::getrlimit(res).map_err(|e| format!("{res:?}: {e}"))?;
        let hard = hard.min(cur_hard);
        rlimit::setrlimit(res, soft.min(hard), hard).map_err(|e| format!("{res:?}: {e}"))
    };
    lower(Resource::CORE, 0, 0)?;
    let n = p.rlimits.nofile;
    lower(Resource::NOFILE, n, n)?;
    if let Some(mb) = p.rlimits.address_space_mb {
        let bytes = mb.saturating_mul(MIB);
        lower(Resource::AS, bytes, bytes)?;
    }
    if let Some(secs) = p.rlimits.cpu_secs {
        // SIGXCPU at the soft limit, SIGKILL one second later.
        lower(Resource::CPU, secs, secs.saturating_add(1))?;
    }
    Ok(())
}

fn unshare(p: &Profile) -> Result<(), String> {
    use nix::sched::CloneFlags;
    let ns = &p.namespaces;
    if ns.user {
        let uid = nix::unistd::getuid();
        let gid = nix::unistd::getgid();
        nix::sched::unshare(CloneFlags::CLONE_NEWUSER).map_err(|e| format!("user: {e}"))?;
        // Map our own ids onto themselves: the server keeps its uid but its capabilities only
        // count inside the new namespace.
        std::fs::write("/proc/self/setgroups", "deny").map_err(|e| format!("setgroups: {e}"))?;
        std::fs::write("/proc/self/uid_map", format!("{uid} {uid} 1"))
            .map_err(|e| format!("uid_map: {e}"))?;
        std::fs::write("/proc/self/gid_map", format!("{gid} {gid} 1"))
            .map_err(|e| format!("gid_map: {e}"))?;
    }
    let mut flags = CloneFlags::empty();
    for (on, flag) in [
        (ns.network, CloneFlags::CLONE_NEWNET),
        (ns.pid, CloneFlags::CLONE_NEWPID),
        (ns.ipc, CloneFlags::CLONE_NEWIPC),
        (ns.mount, CloneFlags::CLONE_NEWNS),
    ] {
        if on {
            flags |= flag;
        }
    }
    if !flags.is_empty() {
        nix::sched::unshare(flags).map_err(|e| format!("{flags:?}: {e}"))?;
    }
    if ns.mount {
        // Nothing the server does to mounts may propagate back to the host.
        use nix::mount::MsFlags;
        nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(|e| format!("making / private: {e}"))?;
    }
    if ns.network {
        // No network at all, but loopback inside the namespace works.
        syscalls::loopback_up().map_err(|e| format!("bringing lo up: {e}"))?;
    }
    Ok(())
}

/// Covers each of `paths` in the (new, private) mount namespace, keeping `workdir` reachable.
fn hide(paths: &[PathBuf], workdir: &std::path::Path) -> Result<(), String> {
    use nix::mount::{MsFlags, mount};
    use std::os::fd::AsRawFd;
    // Opened before anything is covered, so it can be bound back where it was.
    let workdir =
        &std::fs::canonicalize(workdir).map_err(|e| format!("{}: {e}", workdir.display()))?;
    let kept = std::fs::File::open(workdir).map_err(|e| format!("{}: {e}", workdir.display()))?;
    let kept_path = format!("/proc/self/fd/{}", kept.as_raw_fd());
    let sealed = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    for path in paths {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            continue; // nothing there to hide
        };
        let covered = |e: nix::Error| format!("hiding {}: {e}", path.display());
        if !meta.is_dir() {
            mount(
                Some("/dev/null"),
                path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(covered)?;
            continue;
        }
        mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            sealed,
            Some("size=64k,mode=0755"),
        )
        .map_err(covered)?;
        if workdir.starts_with(path) {
            std::fs::create_dir_all(workdir).map_err(|e| format!("{}: {e}", workdir.display()))?;
            mount(
                Some(kept_path.as_str()),
                workdir,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| format!("keeping {}: {e}", workdir.display()))?;
        }
        mount(
            None::<&str>,
            path,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | sealed,
            None::<&str>,
        )
        .map_err(covered)?;
    }
    Ok(())
}

/// After `unshare(CLONE_NEWPID)` only a child enters the namespace: fork once. The child
/// returns and continues as pid 1; the parent waits and exits with the child's status (re-raising
/// its fatal signal). Only when unshare actually created the namespace is a fork needed.
fn fork_into_pid_namespace(p: &Profile) -> Result<(), SandboxError> {
    use nix::sys::wait::{WaitStatus, waitpid};
    use nix::unistd::{ForkResult, fork};
    let own = std::fs::read_link("/proc/self/ns/pid").ok();
    let children = std::fs::read_link("/proc/self/ns/pid_for_children").ok();
    if own == children {
        return Ok(()); // unshare was skipped (not required and not available)
    }
    // SAFETY: the helper is single-threaded, so the child may do anything after fork.
    match unsafe { fork() } {
        Err(e) => {
            if p.requires(Layer::Namespaces) {
                return Err(SandboxError::layer(
                    "namespaces",
                    format!("fork into the pid namespace: {e}"),
                ));
            }
            Ok(())
        }
        Ok(ForkResult::Child) => {
            die_with_parent()?;
            if p.namespaces.mount {
                // A /proc that shows the namespace's processes only.
                use nix::mount::MsFlags;
                let r = nix::mount::mount(
                    Some("proc"),
                    "/proc",
                    Some("proc"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                    None::<&str>,
                );
                // Both namespaces exist, so this cannot fail for want of support; without it
                // the host's /proc (other processes' environments) would stay in view.
                if let Err(e) = r {
                    return Err(SandboxError::layer(
                        "namespaces",
                        format!("mounting /proc: {e}"),
                    ));
                }
            }
            Ok(())
        }
        Ok(ForkResult::Parent { child }) => {
            // Signals the gateway sends to the helper reach the child through its session and
            // process group (it shares ours); the parent itself only waits.
            let code = loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => break code,
                    Ok(WaitStatus::Signaled(_, sig, _)) => {
                        // SAFETY: restore the default action and die the same way.
                        unsafe {
                            libc::signal(sig as libc::c_int, libc::SIG_DFL);
                            libc::kill(libc::getpid(), sig as libc::c_int);
                        }
                        break 128 + sig as i32;
                    }
                    Ok(_) => continue,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(_) => break EXIT_SANDBOX_FAILED,
                }
            };
            // SAFETY: _exit ends the process without running anything else.
            unsafe { libc::_exit(code) }
        }
    }
}
