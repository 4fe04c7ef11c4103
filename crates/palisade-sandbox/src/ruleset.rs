//! The Landlock and seccomp rules the helper installs on itself.
//!
//! Landlock: read-only hierarchies, read-write working directory (and `/dev/null`), TCP connect
//! limited to listed ports (ABI ≥ 4), signal and abstract-socket scoping (ABI ≥ 6). Always built
//! against [`TESTED_ABI`] in best-effort mode, so older kernels get what they support.
//!
//! seccomp: a deny-list returning EPERM, plus `clone` with namespace flags refused and `clone3`
//! answered ENOSYS (its flags are out of reach of a filter; libc falls back to `clone`). On
//! x86_64 the x32 syscall range is refused as a whole, so the deny-list cannot be bypassed
//! through it. Other architectures' syscalls (e.g. i386 compat) kill the process.

use crate::profile::{ALWAYS_READ_WRITE, DEFAULT_READ_ONLY, Landlock};
use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, NetPort, PathBeneath,
    PathFd, RestrictionStatus, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, sock_filter,
};
use std::collections::BTreeMap;
use std::path::Path;

/// The newest Landlock ABI this code was tested against.
pub(crate) const TESTED_ABI: ABI = ABI::V7;

/// Syscalls refused with EPERM.
pub(crate) const DENIED_SYSCALLS: &[(&str, libc::c_long)] = &[
    ("ptrace", libc::SYS_ptrace),
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    ("bpf", libc::SYS_bpf),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("reboot", libc::SYS_reboot),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("pivot_root", libc::SYS_pivot_root),
    ("chroot", libc::SYS_chroot),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("userfaultfd", libc::SYS_userfaultfd),
    // The new mount API: the same power as mount(2).
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("move_mount", libc::SYS_move_mount),
    ("open_tree", libc::SYS_open_tree),
    ("mount_setattr", libc::SYS_mount_setattr),
];

const NAMESPACE_FLAGS: [libc::c_int; 7] = [
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWNS,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWCGROUP,
];

#[derive(Debug, thiserror::Error)]
pub(crate) enum RulesError {
    #[error("read-only path {0}: {1}; create it or remove it from sandbox.landlock.read_only")]
    ReadOnlyPath(String, String),
    #[error("read-write path {0}: {1}; create it or remove it from sandbox.landlock.read_write")]
    ReadWritePath(String, String),
    #[error("{0}")]
    Ruleset(#[from] landlock::RulesetError),
    #[error(
        "the kernel enforced no Landlock rule (status {0:?}); the host needs Landlock, or drop \"landlock\" from sandbox.required"
    )]
    NotEnforced(RulesetStatus),
    #[error("{0}")]
    Seccomp(String),
}

/// Builds and enforces the Landlock ruleset on the calling thread (call after chdir, before exec).
/// With `required`, a missing configured path or an unenforced ruleset is an error; otherwise
/// missing paths are skipped.
pub(crate) fn apply_landlock(
    cfg: &Landlock,
    workdir: &Path,
    required: bool,
) -> Result<RestrictionStatus, RulesError> {
    let abi = TESTED_ABI;
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(abi))?;
    if cfg.connect_ports.is_some() {
        ruleset = ruleset.handle_access(AccessNet::ConnectTcp)?;
    }
    ruleset = ruleset.scope(Scope::from_all(abi))?;
    let mut created = ruleset.create()?;

    let rule = |path: &Path, access: BitFlags<AccessFs>| -> Result<PathBeneath<PathFd>, String> {
        let fd = PathFd::new(path).map_err(|e| e.to_string())?;
        let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
        let access = if meta.is_dir() {
            access
        } else {
            access & AccessFs::from_file(abi)
        };
        Ok(PathBeneath::new(fd, access))
    };
    let read = AccessFs::from_read(abi);
    for path in &cfg.read_only {
        match rule(path, read) {
            Ok(r) => created = created.add_rule(r)?,
            // A default path that this distribution lacks (e.g. /lib64 on aarch64) is fine.
            Err(e) if required && !DEFAULT_READ_ONLY.iter().any(|d| Path::new(d) == path) => {
                return Err(RulesError::ReadOnlyPath(path.display().to_string(), e));
            }
            Err(_) => {}
        }
    }
    let all = AccessFs::from_all(abi);
    let always = ALWAYS_READ_WRITE.iter().map(Path::new);
    for path in cfg.read_write.iter().map(|p| p.as_path()).chain(always) {
        match rule(path, all) {
            Ok(r) => created = created.add_rule(r)?,
            Err(e) if required && !ALWAYS_READ_WRITE.iter().any(|d| Path::new(d) == path) => {
                return Err(RulesError::ReadWritePath(path.display().to_string(), e));
            }
            Err(_) => {}
        }
    }
    // The working directory is always writable; it must exist (chdir already succeeded).
    created = created.add_rule(
        rule(workdir, all)
            .map_err(|e| RulesError::ReadWritePath(workdir.display().to_string(), e))?,
    )?;
    if let Some(ports) = &cfg.connect_ports {
        for port in ports {
            created = created.add_rule(NetPort::new(*port, AccessNet::ConnectTcp))?;
        }
    }
    // Landlock needs no_new_privs (or CAP_SYS_ADMIN, which a user namespace takes away); the
    // helper sets it anyway right after.
    let status = created.no_new_privs(true).restrict_self()?;
    if required && status.ruleset == RulesetStatus::NotEnforced {
        return Err(RulesError::NotEnforced(status.ruleset));
    }
    Ok(status)
}

/// The seccomp programs to install (all of them; the strictest answer wins).
pub(crate) fn seccomp_programs() -> Result<Vec<BpfProgram>, RulesError> {
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e: seccompiler::BackendError| {
            RulesError::Seccomp(format!("architecture: {e}"))
        })?;
    let err = |e: seccompiler::BackendError| RulesError::Seccomp(e.to_string());

    let mut deny: BTreeMap<i64, Vec<SeccompRule>> = DENIED_SYSCALLS
        .iter()
        .map(|(_, nr)| (*nr, Vec::new()))
        .collect();
    let clone_rules = NAMESPACE_FLAGS
        .iter()
        .map(|flag| {
            let flag = *flag as u64;
            SeccompRule::new(vec![SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )?])
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    deny.insert(libc::SYS_clone, clone_rules);
    let eperm = SeccompFilter::new(
        deny,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(err)?;
    let mut eperm: BpfProgram = eperm.try_into().map_err(err)?;
    if cfg!(target_arch = "x86_64") {
        refuse_x32(&mut eperm);
    }

    let clone3 = SeccompFilter::new(
        [(libc::SYS_clone3, Vec::new())].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(err)?;
    let clone3: BpfProgram = clone3.try_into().map_err(err)?;
    Ok(vec![eperm, clone3])
}

/// Inserts, right after seccompiler's 3-instruction architecture check, "syscall number has the
/// x32 bit → EPERM". Later jumps are relative and forward, so they stay valid.
fn refuse_x32(prog: &mut BpfProgram) {
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JMP_JGE_K: u16 = 0x35;
    const BPF_RET_K: u16 = 0x06;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    let insert = [
        sock_filter {
            code: BPF_LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 0,
        },
        sock_filter {
            code: BPF_JMP_JGE_K,
            jt: 0,
            jf: 1,
            k: X32_SYSCALL_BIT,
        },
        sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        },
    ];
    let at = 3.min(prog.len());
    prog.splice(at..at, insert);
}

/// Installs the programs on the calling thread (no_new_privs must already be set).
pub(crate) fn apply_seccomp(programs: &[BpfProgram]) -> Result<(), RulesError> {
    for p in programs {
        seccompiler::apply_filter(p).map_err(|e| RulesError::Seccomp(e.to_string()))?;
    }
    Ok(())
}
