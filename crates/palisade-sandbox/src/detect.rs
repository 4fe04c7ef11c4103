//! Host capability detection: what each layer can do here, the `doctor` report, and the
//! [`Level`] a given profile gets. Detection only reads `/proc`, `/sys` and probes syscalls; it
//! never changes the calling process (namespace probes run in throw-away children).

use crate::profile::{Layer, Profile};
use crate::syscalls;
use std::path::{Path, PathBuf};

/// The cgroup controllers the sandbox uses.
pub const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

/// How cgroups are mounted here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CgroupLayout {
    /// Unified v2 hierarchy at `root` with (some of) memory, pids and cpu available.
    V2 {
        root: PathBuf,
        controllers: Vec<String>,
    },
    /// v1 controller hierarchies (`(controller, mount point)` for memory, pids, cpu when found),
    /// plus the v2 hierarchy if mounted (used only for `cgroup.kill`).
    Hybrid {
        v1: Vec<(String, PathBuf)>,
        unified: Option<PathBuf>,
    },
    /// No usable cgroup hierarchy.
    None,
}

/// What this host supports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostSupport {
    pub landlock_abi: Option<u8>,
    pub seccomp: bool,
    pub cgroups: CgroupLayout,
    pub user_namespaces: bool,
    pub network_namespaces: bool,
    pub pid_namespaces: bool,
    pub ipc_namespaces: bool,
    pub mount_namespaces: bool,
    pub is_root: bool,
}

/// Which layers a profile gets on this host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Level {
    /// Layers that will be applied, in application order.
    pub layers: Vec<Layer>,
    /// Layers the profile asks for that this host cannot apply, with the reason.
    pub skipped: Vec<(Layer, String)>,
}

impl Level {
    /// A metric label such as `rlimits+cgroup+landlock+seccomp+nnp` (`none` when empty).
    pub fn label(&self) -> String {
        if self.layers.is_empty() {
            return "none".into();
        }
        self.layers
            .iter()
            .map(|l| l.short())
            .collect::<Vec<_>>()
            .join("+")
    }
}

/// Detects what the running host supports.
pub fn detect() -> HostSupport {
    let is_root = nix::unistd::geteuid().is_root();
    let probe = |flag| syscalls::can_unshare(flag);
    HostSupport {
        landlock_abi: syscalls::landlock_abi(),
        seccomp: syscalls::seccomp_filter_available(),
        cgroups: cgroup_layout(
            &std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
        ),
        user_namespaces: probe(libc::CLONE_NEWUSER),
        network_namespaces: probe(libc::CLONE_NEWNET),
        pid_namespaces: probe(libc::CLONE_NEWPID),
        ipc_namespaces: probe(libc::CLONE_NEWIPC),
        mount_namespaces: probe(libc::CLONE_NEWNS),
        is_root,
    }
}

/// Reads the cgroup layout from the text of `/proc/self/mountinfo`.
pub(crate) fn cgroup_layout(mountinfo: &str) -> CgroupLayout {
    let mut v1 = Vec::new();
    let mut unified = None;
    for line in mountinfo.lines() {
        // "<id> <parent> <maj:min> <root> <mount point> <opts> ... - <fstype> <source> <super opts>"
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mount_point = left.split(' ').nth(4).map(unescape_mount);
        let mut rest = right.split(' ');
        let (fstype, super_opts) = (rest.next(), rest.nth(1).unwrap_or(""));
        let Some(mount_point) = mount_point else {
            continue;
        };
        match fstype {
            Some("cgroup2") if unified.is_none() => unified = Some(mount_point),
            Some("cgroup") => {
                for opt in super_opts.split(',') {
                    if CONTROLLERS.contains(&opt) && !v1.iter().any(|(c, _)| c == opt) {
                        v1.push((opt.to_string(), mount_point.clone()));
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(root) = &unified {
        let controllers =
            std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        let controllers: Vec<String> = controllers
            .split_whitespace()
            .filter(|c| CONTROLLERS.contains(c))
            .map(String::from)
            .collect();
        if controllers.iter().any(|c| c == "memory") && controllers.iter().any(|c| c == "pids") {
            return CgroupLayout::V2 {
                root: root.clone(),
                controllers,
            };
        }
    }
    if v1.is_empty() {
        return CgroupLayout::None;
    }
    v1.sort();
    CgroupLayout::Hybrid { v1, unified }
}

fn unescape_mount(s: &str) -> PathBuf {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

fn writable(p: &Path) -> bool {
    nix::unistd::access(p, nix::unistd::AccessFlags::W_OK).is_ok()
}

impl HostSupport {
    /// Whether the gateway can create cgroups here.
    pub fn cgroups_usable(&self) -> bool {
        match &self.cgroups {
            CgroupLayout::V2 { root, .. } => writable(root),
            CgroupLayout::Hybrid { v1, .. } => v1.iter().any(|(_, p)| writable(p)),
            CgroupLayout::None => false,
        }
    }

    /// Human-readable lines, one per layer.
    pub fn report(&self) -> String {
        let mut lines = Vec::new();
        lines.push(match self.landlock_abi {
            Some(abi) => {
                let mut what = vec!["filesystem"];
                if abi >= 4 {
                    what.push("TCP connect");
                }
                if abi >= 6 {
                    what.push("scoping");
                }
                format!("landlock: ABI {abi} ({})", what.join(", "))
            }
            None => "landlock: unavailable (kernel built without it or not in the lsm= boot list); filesystem and port rules are skipped".into(),
        });
        lines.push(if self.seccomp {
            "seccomp: filters available (deny-list with EPERM)".into()
        } else {
            "seccomp: unavailable (kernel without CONFIG_SECCOMP_FILTER); the deny-list is skipped"
                .into()
        });
        let usable = if self.cgroups_usable() {
            ""
        } else {
            "; not writable by this user: run as root or delegate a subtree"
        };
        lines.push(match &self.cgroups {
            CgroupLayout::V2 { root, controllers } => format!(
                "cgroups: v2 at {} ({}){usable}",
                root.display(),
                controllers.join(", ")
            ),
            CgroupLayout::Hybrid { v1, unified } => {
                let list: Vec<String> = v1
                    .iter()
                    .map(|(c, p)| format!("{c} at {}", p.display()))
                    .collect();
                let kill = match unified {
                    Some(u) => format!("; v2 at {} for cgroup.kill", u.display()),
                    None => "; no v2 hierarchy, teardown kills pid by pid".into(),
                };
                format!("cgroups: hybrid, v1 {}{kill}{usable}", list.join(", "))
            }
            CgroupLayout::None => {
                "cgroups: none usable (no memory/pids controller mounted); limits are skipped"
                    .into()
            }
        });
        let ns: Vec<&str> = [
            ("user", self.user_namespaces),
            ("network", self.network_namespaces),
            ("pid", self.pid_namespaces),
            ("ipc", self.ipc_namespaces),
            ("mount", self.mount_namespaces),
        ]
        .iter()
        .filter(|(_, ok)| *ok)
        .map(|(n, _)| *n)
        .collect();
        lines.push(if ns.is_empty() {
            "namespaces: none can be created here".into()
        } else {
            format!("namespaces: {}", ns.join(", "))
        });
        lines.push(format!(
            "rlimits: lowered per server{}",
            if self.is_root {
                "; running as root: RLIMIT_NPROC is not enforced, the pids cgroup limits processes"
            } else {
                ""
            }
        ));
        lines.push("no_new_privs: always set".into());
        lines.join("\n")
    }

    /// Which layers `p` gets on this host, and why the others are skipped.
    pub fn level(&self, p: &Profile) -> Level {
        let mut level = Level::default();
        if !p.enabled {
            return level;
        }
        level.push(Layer::Rlimits, None);
        level.push(
            Layer::Cgroup,
            (!self.cgroups_usable())
                .then(|| "no writable cgroup hierarchy with memory and pids".into()),
        );
        let ns = &p.namespaces;
        if ns.any() {
            let with_user = ns.user && self.user_namespaces;
            let missing: Vec<&str> = [
                ("user", ns.user, self.user_namespaces),
                ("network", ns.network, self.network_namespaces || with_user),
                ("pid", ns.pid, self.pid_namespaces || with_user),
                ("ipc", ns.ipc, self.ipc_namespaces || with_user),
                ("mount", ns.mount, self.mount_namespaces || with_user),
            ]
            .iter()
            .filter(|(_, wanted, ok)| *wanted && !*ok)
            .map(|(n, _, _)| *n)
            .collect();
            level.push(
                Layer::Namespaces,
                (!missing.is_empty())
                    .then(|| format!("cannot create {} namespace(s) here", missing.join(", "))),
            );
        }
        if p.landlock.enabled {
            match self.landlock_abi {
                None => level.push(Layer::Landlock, Some("kernel without Landlock".into())),
                Some(abi) => {
                    level.push(Layer::Landlock, None);
                    if abi < 4 && p.landlock.connect_ports.is_some() {
                        // Applied in part: the filesystem rules hold, the port rules cannot.
                        level.skipped.push((
                            Layer::Landlock,
                            format!("Landlock ABI {abi} cannot restrict TCP ports (needs 4)"),
                        ));
                    }
                }
            }
        }
        if p.seccomp {
            level.push(
                Layer::Seccomp,
                (!self.seccomp).then(|| "kernel without seccomp filters".into()),
            );
        }
        level.push(Layer::NoNewPrivs, None);
        level
    }
}

impl Level {
    fn push(&mut self, layer: Layer, skip: Option<String>) {
        match skip {
            None => self.layers.push(layer),
            Some(why) => self.skipped.push((layer, why)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hybrid_layout_from_mountinfo() {
        let text = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct\n\
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n\
41 31 0:38 / /nonexistent/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup_layout(text),
            CgroupLayout::Hybrid {
                v1: vec![
                    ("cpu".into(), "/sys/fs/cgroup/cpu".into()),
                    ("memory".into(), "/sys/fs/cgroup/memory".into()),
                    ("pids".into(), "/sys/fs/cgroup/pids".into()),
                ],
                unified: Some("/nonexistent/unified".into()),
            }
        );
        assert_eq!(cgroup_layout(""), CgroupLayout::None);
    }

    #[test]
    fn label_and_level() {
        let host = HostSupport {
            landlock_abi: Some(3),
            seccomp: false,
            cgroups: CgroupLayout::None,
            user_namespaces: false,
            network_namespaces: true,
            pid_namespaces: true,
            ipc_namespaces: true,
            mount_namespaces: true,
            is_root: true,
        };
        let mut p = Profile::default();
        p.landlock.connect_ports = Some(vec![]);
        p.namespaces.user = true;
        let level = host.level(&p);
        assert_eq!(level.label(), "rlimits+landlock+nnp");
        let skipped: Vec<Layer> = level.skipped.iter().map(|(l, _)| *l).collect();
        assert_eq!(
            skipped,
            vec![
                Layer::Cgroup,
                Layer::Namespaces,
                Layer::Landlock,
                Layer::Seccomp
            ]
        );
        assert_eq!(Level::default().label(), "none");
    }
}
