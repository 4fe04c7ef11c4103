//! The per-server sandbox profile: the `[servers.sandbox]` table of the gateway config.
//!
//! Every field is optional; a present table means "sandbox on" with the defaults below. Unknown
//! keys are refused. [`Profile::validate`] checks what serde cannot (absolute paths, sane
//! numbers, required layers that the profile itself turns off).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Read-only paths granted by default under Landlock (missing ones are skipped).
///
/// Enough for a dynamically linked binary, `sh`, `python3` and `node` to start: the system
/// binaries and libraries, the dynamic loader's cache, name resolution, time zones and TLS roots,
/// random devices, and the process's own `/proc/self` (resolved in the sandboxed process, so a
/// child it forks does not see its own `/proc/<pid>`; add `/proc` to `read_only` if a server needs
/// it, which exposes other processes' command lines unless `namespaces.pid` is on). `/etc` as a
/// whole is not granted: it holds secrets such as `/etc/shadow`. `/dev/null` is always granted
/// read-write, like the working directory.
pub const DEFAULT_READ_ONLY: &[&str] = &[
    "/usr",
    "/lib",
    "/lib64",
    "/bin",
    "/sbin",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/hostname",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/protocols",
    "/etc/services",
    "/etc/passwd",
    "/etc/group",
    "/etc/mime.types",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/pki",
    "/etc/crypto-policies",
    "/dev/zero",
    "/dev/random",
    "/dev/urandom",
    "/proc/self",
];

/// Paths granted read-write in addition to the working directory, always.
pub(crate) const ALWAYS_READ_WRITE: &[&str] = &["/dev/null"];

/// Per-server sandbox settings.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Profile {
    /// `false` runs the server without any sandbox layer (the table's presence means `true`).
    pub enabled: bool,
    pub rlimits: Rlimits,
    pub cgroup: CgroupLimits,
    pub namespaces: Namespaces,
    pub landlock: Landlock,
    /// The seccomp deny-list (see `helper` for the syscalls it refuses).
    pub seccomp: bool,
    /// Layers that must be applied, or the start fails.
    pub required: Vec<Layer>,
}

impl Profile {
    /// What a dedicated server's processes get when its config names no sandbox: kept from
    /// each other and from the gateway (their own pid, mount and IPC namespaces, so they see and
    /// can signal only their own processes and their `/proc` shows only those; the gateway's
    /// data and secret files hidden; ptrace refused), and otherwise free to read and connect
    /// as the server needs. Every layer is best effort: what the host lacks is skipped, said
    /// so at start and by `palisade doctor`.
    pub fn isolation() -> Profile {
        Profile {
            namespaces: Namespaces {
                pid: true,
                mount: true,
                ipc: true,
                // Unprivileged, namespaces need a user namespace of their own.
                user: !nix::unistd::geteuid().is_root(),
                network: false,
            },
            landlock: Landlock {
                enabled: false,
                ..Landlock::default()
            },
            ..Profile::default()
        }
    }

    /// Whether its processes are kept from other tenants' processes and the gateway: a pid
    /// and a mount namespace (with Landlock or the hidden paths keeping the gateway's files).
    pub fn isolates(&self) -> bool {
        self.enabled && self.namespaces.pid && self.namespaces.mount
    }
}

impl Default for Profile {
    fn default() -> Self {
        Profile {
            enabled: true,
            rlimits: Rlimits::default(),
            cgroup: CgroupLimits::default(),
            namespaces: Namespaces::default(),
            landlock: Landlock::default(),
            seccomp: true,
            required: Vec::new(),
        }
    }
}

/// Resource limits, only ever lowered. Core dumps are always off.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Rlimits {
    /// RLIMIT_NOFILE (soft and hard).
    pub nofile: u64,
    /// RLIMIT_AS in MiB. Note: runtimes that reserve large virtual ranges (node, JVM) need
    /// several GiB here; prefer `cgroup.memory_mb` for a memory cap.
    pub address_space_mb: Option<u64>,
    /// RLIMIT_CPU in seconds of CPU time (SIGXCPU, then SIGKILL one second later).
    pub cpu_secs: Option<u64>,
}

impl Default for Rlimits {
    fn default() -> Self {
        Rlimits {
            nofile: 1024,
            address_space_mb: None,
            cpu_secs: None,
        }
    }
}

/// Limits of the instance's cgroup.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct CgroupLimits {
    /// Memory limit in MiB (swap is not allowed on top of it).
    pub memory_mb: Option<u64>,
    /// Maximum number of processes and threads.
    pub pids_max: Option<u64>,
    /// CPU time in percent of one core (200 = two cores).
    pub cpu_percent: Option<u32>,
}

impl Default for CgroupLimits {
    fn default() -> Self {
        CgroupLimits {
            memory_mb: None,
            pids_max: Some(256),
            cpu_percent: None,
        }
    }
}

/// Namespaces to unshare. `network = true` means no network at all (only a loopback device).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Namespaces {
    pub network: bool,
    pub pid: bool,
    pub ipc: bool,
    pub mount: bool,
    pub user: bool,
}

impl Namespaces {
    pub fn any(&self) -> bool {
        self.network || self.pid || self.ipc || self.mount || self.user
    }
}

/// Landlock rules.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Landlock {
    pub enabled: bool,
    /// Readable (and executable) hierarchies; defaults to [`DEFAULT_READ_ONLY`].
    pub read_only: Vec<PathBuf>,
    /// Writable hierarchies; the working directory and `/dev/null` are always added.
    pub read_write: Vec<PathBuf>,
    /// `None`: TCP connect is not restricted. `Some(ports)`: TCP connect only to these ports
    /// (`Some([])`: none at all). Needs Landlock ABI 4.
    pub connect_ports: Option<Vec<u16>>,
}

impl Default for Landlock {
    fn default() -> Self {
        Landlock {
            enabled: true,
            read_only: DEFAULT_READ_ONLY.iter().map(PathBuf::from).collect(),
            read_write: Vec::new(),
            connect_ports: None,
        }
    }
}

/// One sandbox layer.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    Rlimits,
    Cgroup,
    Namespaces,
    Landlock,
    Seccomp,
    NoNewPrivs,
}

impl Layer {
    /// All layers, in the order the helper applies them.
    pub const ALL: [Layer; 6] = [
        Layer::Rlimits,
        Layer::Cgroup,
        Layer::Namespaces,
        Layer::Landlock,
        Layer::Seccomp,
        Layer::NoNewPrivs,
    ];

    /// The config name (as in `required`).
    pub fn name(self) -> &'static str {
        match self {
            Layer::Rlimits => "rlimits",
            Layer::Cgroup => "cgroup",
            Layer::Namespaces => "namespaces",
            Layer::Landlock => "landlock",
            Layer::Seccomp => "seccomp",
            Layer::NoNewPrivs => "nonewprivs",
        }
    }

    /// The short name used in the metric label.
    pub fn short(self) -> &'static str {
        match self {
            Layer::Namespaces => "ns",
            Layer::NoNewPrivs => "nnp",
            other => other.name(),
        }
    }
}

impl std::fmt::Display for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Profile {
    /// Whether `layer` is listed in `required`.
    pub fn requires(&self, layer: Layer) -> bool {
        self.enabled && self.required.contains(&layer)
    }

    /// Checks what deserialization cannot; the message names the key and the fix.
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled {
            if !self.required.is_empty() {
                return Err(
                    "sandbox.enabled = false but sandbox.required lists layers: remove one of them"
                        .into(),
                );
            }
            return Ok(());
        }
        if self.rlimits.nofile < 8 {
            return Err(format!(
                "sandbox.rlimits.nofile = {}: a process needs at least 8 descriptors (default 1024)",
                self.rlimits.nofile
            ));
        }
        if self.rlimits.address_space_mb.is_some_and(|m| m < 16) {
            return Err("sandbox.rlimits.address_space_mb must be at least 16".into());
        }
        if self.rlimits.cpu_secs == Some(0) {
            return Err(
                "sandbox.rlimits.cpu_secs must be at least 1 (leave it out for no limit)".into(),
            );
        }
        if self.cgroup.memory_mb.is_some_and(|m| m < 4) {
            return Err("sandbox.cgroup.memory_mb must be at least 4".into());
        }
        if self.cgroup.pids_max == Some(0) {
            return Err("sandbox.cgroup.pids_max must be at least 1 (default 256)".into());
        }
        if let Some(p) = self.cgroup.cpu_percent
            && !(1..=100_000).contains(&p)
        {
            return Err(format!(
                "sandbox.cgroup.cpu_percent = {p}: use 1..=100000 (100 = one core)"
            ));
        }
        for (key, paths) in [
            ("read_only", &self.landlock.read_only),
            ("read_write", &self.landlock.read_write),
        ] {
            if let Some(p) = paths.iter().find(|p| !p.is_absolute()) {
                return Err(format!(
                    "sandbox.landlock.{key}: {} is not an absolute path",
                    p.display()
                ));
            }
        }
        for layer in &self.required {
            let off = match layer {
                Layer::Landlock => (!self.landlock.enabled).then_some("landlock.enabled = false"),
                Layer::Seccomp => (!self.seccomp).then_some("seccomp = false"),
                Layer::Namespaces => {
                    (!self.namespaces.any()).then_some("no namespace is turned on")
                }
                _ => None,
            };
            if let Some(why) = off {
                return Err(format!(
                    "sandbox.required lists \"{layer}\" but {why}: turn it on or drop it from required"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_table_gets_the_defaults() {
        let p: Profile = serde_json::from_str("{}").unwrap();
        assert_eq!(p, Profile::default());
        assert!(p.enabled && p.seccomp && p.landlock.enabled);
        assert_eq!(p.rlimits.nofile, 1024);
        assert_eq!(p.cgroup.pids_max, Some(256));
        assert_eq!(p.landlock.connect_ports, None);
        assert!(p.landlock.read_only.contains(&PathBuf::from("/usr")));
        assert!(p.validate().is_ok());
    }

    #[test]
    fn fields_parse_and_unknown_keys_are_refused() {
        let p: Profile = serde_json::from_str(
            r#"{"cgroup": {"memory_mb": 64}, "landlock": {"connect_ports": []},
                "namespaces": {"network": true}, "required": ["landlock", "nonewprivs"]}"#,
        )
        .unwrap();
        assert_eq!(p.cgroup.memory_mb, Some(64));
        assert_eq!(p.cgroup.pids_max, Some(256));
        assert_eq!(p.landlock.connect_ports, Some(vec![]));
        assert!(p.namespaces.network && !p.namespaces.pid);
        assert_eq!(p.required, vec![Layer::Landlock, Layer::NoNewPrivs]);
        let err = serde_json::from_str::<Profile>(r#"{"cgroups": {}}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `cgroups`"), "{err}");
        let err = serde_json::from_str::<Profile>(r#"{"landlock": {"readonly": []}}"#).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `readonly`"),
            "{err}"
        );
        assert!(serde_json::from_str::<Profile>(r#"{"required": ["apparmor"]}"#).is_err());
    }

    #[test]
    fn validate_names_the_key_at_fault() {
        let check = |f: fn(&mut Profile)| {
            let mut p = Profile::default();
            f(&mut p);
            p.validate().unwrap_err()
        };
        assert!(check(|p| p.rlimits.nofile = 2).contains("rlimits.nofile"));
        assert!(check(|p| p.cgroup.pids_max = Some(0)).contains("cgroup.pids_max"));
        assert!(check(|p| p.cgroup.cpu_percent = Some(0)).contains("cgroup.cpu_percent"));
        assert!(check(|p| p.landlock.read_write = vec!["data".into()]).contains("read_write"));
        let e = check(|p| {
            p.seccomp = false;
            p.required = vec![Layer::Seccomp];
        });
        assert!(
            e.contains("\"seccomp\"") && e.contains("seccomp = false"),
            "{e}"
        );
        let e = check(|p| p.required = vec![Layer::Namespaces]);
        assert!(e.contains("no namespace"), "{e}");
        let e = check(|p| {
            p.enabled = false;
            p.required = vec![Layer::Rlimits];
        });
        assert!(e.contains("sandbox.enabled = false"), "{e}");
    }
}
