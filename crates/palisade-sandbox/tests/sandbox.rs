//! End-to-end tests of the helper: each spawns the `sandbox-exec` binary with a plan running a
//! shell snippet and checks what the sandboxed process could and could not do. A test whose
//! kernel feature is missing prints `skipped: <why>` and returns.

use palisade_sandbox::{
    Cgroup, CgroupLimits, HostSupport, Layer, Plan, Profile, detect, remove_root,
};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Out {
    code: Option<i32>,
    signal: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "code {:?} signal {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.signal, self.stdout, self.stderr
        )
    }
}

fn plan(
    profile: Profile,
    workdir: &Path,
    cgroup: Option<&Cgroup>,
    program: &str,
    args: &[&str],
) -> Plan {
    Plan {
        profile,
        workdir: workdir.to_path_buf(),
        cgroup_procs: cgroup.map(|c| c.procs_files()).unwrap_or_default(),
        program: PathBuf::from(program),
        args: args.iter().map(|s| s.to_string()).collect(),
        hidden: Vec::new(),
    }
}

fn command(plan: &Plan) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sandbox-exec"));
    cmd.arg(serde_json::to_string(plan).unwrap())
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .env("LANG", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn run_plan(plan: &Plan) -> Out {
    let out = command(plan).output().unwrap();
    Out {
        code: out.status.code(),
        signal: out.status.signal(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `script` with `shell -c` under `profile` in `workdir`.
fn sh(profile: Profile, workdir: &Path, cgroup: Option<&Cgroup>, shell: &str, script: &str) -> Out {
    run_plan(&plan(profile, workdir, cgroup, shell, &["-c", script]))
}

fn host() -> HostSupport {
    detect()
}

/// A test whose kernel feature is missing: skipped here, a failure under `CI=true`.
fn skip(why: &str) {
    testenv::lacking::<()>(why);
}

/// A per-test cgroup root, removed (with anything left in it) on drop.
struct TestRoot {
    support: HostSupport,
    name: String,
}

impl TestRoot {
    fn new(support: &HostSupport, test: &str) -> TestRoot {
        TestRoot {
            support: support.clone(),
            name: format!("palisade-test-{}-{test}", std::process::id()),
        }
    }
}

impl Drop for TestRoot {
    fn drop(&mut self) {
        remove_root(&self.support, &self.name);
    }
}

fn cgroup_host() -> Option<HostSupport> {
    let h = host();
    if !h.cgroups_usable() {
        skip("no writable cgroup hierarchy (needs root or a delegated subtree)");
        return None;
    }
    Some(h)
}

fn landlock_host(min_abi: u8) -> Option<HostSupport> {
    let h = host();
    match h.landlock_abi {
        Some(abi) if abi >= min_abi => Some(h),
        other => {
            skip(&format!("Landlock ABI {other:?} < {min_abi}"));
            None
        }
    }
}

#[test]
fn landlock_confines_the_filesystem_to_the_workdir_and_system_paths() {
    let Some(_) = landlock_host(1) else { return };
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap(); // "tenant B's workdir"
    std::fs::write(b.path().join("secret"), "tenant B secret\n").unwrap();
    let script = format!(
        "echo mine > own.txt && cat own.txt
         if cat {b}/secret; then echo READ_B=yes; else echo READ_B=no; fi
         if echo x > {b}/new 2>/dev/null; then echo WRITE_B=yes; else echo WRITE_B=no; fi
         if cat /etc/hostname >/dev/null; then echo HOSTNAME=yes; else echo HOSTNAME=no; fi
         if ls /root >/dev/null 2>&1; then echo ROOT=yes; else echo ROOT=no; fi",
        b = b.path().display()
    );
    let out = sh(Profile::default(), a.path(), None, "/bin/sh", &script);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("mine\n"), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(a.path().join("own.txt")).unwrap(),
        "mine\n"
    );
    assert!(out.stdout.contains("READ_B=no"), "{out:?}");
    assert!(out.stderr.contains("Permission denied"), "{out:?}");
    assert!(out.stdout.contains("WRITE_B=no"), "{out:?}");
    assert!(!b.path().join("new").exists());
    assert!(out.stdout.contains("HOSTNAME=yes"), "{out:?}");
    assert!(out.stdout.contains("ROOT=no"), "{out:?}");
}

#[test]
fn landlock_limits_tcp_connect_to_listed_ports() {
    let Some(_) = landlock_host(4) else { return };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let script =
        format!("if exec 3<>/dev/tcp/127.0.0.1/{port}; then echo CONNECTED; else echo REFUSED; fi");
    let connect = |ports: Option<Vec<u16>>| {
        let mut p = Profile::default();
        p.landlock.connect_ports = ports;
        sh(p, dir.path(), None, "/bin/bash", &script)
    };
    let out = connect(Some(vec![]));
    assert!(out.stdout.contains("REFUSED"), "no port allowed: {out:?}");
    assert!(out.stderr.contains("Permission denied"), "{out:?}");
    let out = connect(Some(vec![port.wrapping_add(1)]));
    assert!(
        out.stdout.contains("REFUSED"),
        "another port allowed: {out:?}"
    );
    let out = connect(Some(vec![port]));
    assert!(
        out.stdout.contains("CONNECTED"),
        "this port allowed: {out:?}"
    );
    let out = connect(None);
    assert!(out.stdout.contains("CONNECTED"), "no restriction: {out:?}");
}

#[test]
fn default_profile_starts_python_and_node() {
    let dir = tempfile::tempdir().unwrap();
    let python = sh(
        Profile::default(),
        dir.path(),
        None,
        "/usr/bin/python3",
        "import json, ssl, socket; print('python ok')",
    );
    assert_eq!(python.code, Some(0), "{python:?}");
    assert!(python.stdout.contains("python ok"), "{python:?}");
    if Path::new("/usr/bin/node").exists() {
        let node = run_plan(&plan(
            Profile::default(),
            dir.path(),
            None,
            "/usr/bin/node",
            &[
                "-e",
                "require('fs').writeFileSync('n.txt', 'x'); console.log('node ok')",
            ],
        ));
        assert_eq!(node.code, Some(0), "{node:?}");
        assert!(node.stdout.contains("node ok"), "{node:?}");
    } else {
        skip("node is not installed");
    }
}

#[test]
fn cgroup_memory_limit_oom_kills_a_hog() {
    let Some(h) = cgroup_host() else { return };
    let root = TestRoot::new(&h, "mem");
    let limits = CgroupLimits {
        memory_mb: Some(32),
        ..CgroupLimits::default()
    };
    let cg = Cgroup::prepare(&h, &root.name, &["acme", "hog"], &limits).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = sh(
        Profile::default(),
        dir.path(),
        Some(&cg),
        "/usr/bin/python3",
        "b = bytearray(200 * 1024 * 1024)\nfor i in range(0, len(b), 4096): b[i] = 1\nprint('survived')",
    );
    assert_eq!(out.signal, Some(9), "{out:?}");
    assert!(!out.stdout.contains("survived"), "{out:?}");
    assert!(
        cg.memory_events_oom_kills().unwrap_or(0) >= 1,
        "oom kills: {:?}",
        cg.memory_events_oom_kills()
    );
    cg.kill_all();
    cg.remove();
    for p in cg.paths() {
        assert!(!p.exists(), "{} left behind", p.display());
        assert!(
            !p.parent().unwrap().exists(),
            "tenant dir {} left behind",
            p.display()
        );
    }
}

#[test]
fn cgroup_pids_limit_stops_a_fork_loop_but_not_the_parent() {
    let Some(h) = cgroup_host() else { return };
    let root = TestRoot::new(&h, "pids");
    let limits = CgroupLimits {
        pids_max: Some(8),
        ..CgroupLimits::default()
    };
    let cg = Cgroup::prepare(&h, &root.name, &["acme", "forky"], &limits).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let script = "import os, time
failed = None
children = []
for _ in range(50):
    try:
        pid = os.fork()
    except OSError as e:
        failed = e
        break
    if pid == 0:
        time.sleep(2)
        os._exit(0)
    children.append(pid)
print('forked', len(children), 'then:', failed)
for pid in children:
    os.waitpid(pid, 0)
print('PARENT_ALIVE')";
    let out = sh(
        Profile::default(),
        dir.path(),
        Some(&cg),
        "/usr/bin/python3",
        script,
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("PARENT_ALIVE"), "{out:?}");
    // The pids limit counts the parent: at most 7 children.
    assert!(
        out.stdout.contains("Resource temporarily unavailable"),
        "{out:?}"
    );
    let forked: usize = out
        .stdout
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(forked < 8, "{out:?}");
    cg.kill_all();
    cg.remove();
    assert!(cg.paths().iter().all(|p| !p.exists()));
}

#[test]
fn cgroup_kill_all_kills_the_whole_tree_and_remove_cleans_up() {
    let Some(h) = cgroup_host() else { return };
    let root = TestRoot::new(&h, "kill");
    let cg = Cgroup::prepare(&h, &root.name, &["acme", "tree"], &CgroupLimits::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = plan(
        Profile::default(),
        dir.path(),
        Some(&cg),
        "/bin/sh",
        &[
            "-c",
            "sleep 60 & sleep 60 & (sleep 60 &) ; echo started; wait",
        ],
    );
    let mut child = command(&p).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while cg.pids().len() < 4 {
        assert!(
            Instant::now() < deadline,
            "processes never appeared: {:?}",
            cg.pids()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let pids = cg.pids();
    cg.kill_all();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "{status:?}");
    assert!(cg.pids().is_empty(), "left: {:?}", cg.pids());
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .next();
        assert!(
            matches!(state, None | Some("Z")),
            "pid {pid} still alive: {stat}"
        );
    }
    cg.remove();
    assert!(cg.paths().iter().all(|p| !p.exists()));
}

#[test]
fn rlimits_cap_descriptors_and_disable_core_dumps() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Profile::default();
    p.rlimits.nofile = 16;
    let out = sh(
        p,
        dir.path(),
        None,
        "/bin/sh",
        "ulimit -c; ulimit -n; /usr/bin/python3 -c \"import os\nfds = [os.open('/dev/null', os.O_RDONLY) for _ in range(32)]\nprint('opened', len(fds))\"; echo rc=$?",
    );
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"0"), "core: {out:?}");
    assert_eq!(lines.get(1), Some(&"16"), "nofile: {out:?}");
    assert!(!out.stdout.contains("opened"), "{out:?}");
    assert!(out.stderr.contains("Too many open files"), "{out:?}");
    assert!(out.stdout.contains("rc=1"), "{out:?}");
}

#[test]
fn seccomp_refuses_unshare_and_nothing_else_breaks() {
    if !host().seccomp {
        return skip("no seccomp filters");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = sh(
        Profile::default(),
        dir.path(),
        None,
        "/bin/sh",
        "unshare -U true; echo unshare_rc=$?; ls /usr >/dev/null && echo ls_ok; (echo subshell_ok); /usr/bin/python3 -c 'import threading; t = threading.Thread(target=print, args=(\"thread_ok\",)); t.start(); t.join()'",
    );
    assert!(out.stdout.contains("unshare_rc=1"), "{out:?}");
    assert!(out.stderr.contains("Operation not permitted"), "{out:?}");
    for want in ["ls_ok", "subshell_ok", "thread_ok"] {
        assert!(out.stdout.contains(want), "{want}: {out:?}");
    }
    if cfg!(target_arch = "x86_64") {
        // clone(CLONE_NEWUSER) is refused, clone3 answers ENOSYS (libc falls back to clone),
        // and the x32 syscall range cannot be used to get around the deny-list.
        let code = "import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
for name, nr, args in [('clone', 56, (0x10000000 | 17, 0, 0, 0, 0)), ('clone3', 435, (0, 0)), ('x32', 0x40000000 | 272, (0,))]:
    r = libc.syscall(nr, *args)
    if r == 0:
        os._exit(0)
    print(name, r, os.strerror(ctypes.get_errno()))";
        let out = sh(
            Profile::default(),
            dir.path(),
            None,
            "/usr/bin/python3",
            code,
        );
        assert!(
            out.stdout.contains("clone -1 Operation not permitted"),
            "{out:?}"
        );
        assert!(
            out.stdout.contains("clone3 -1 Function not implemented"),
            "{out:?}"
        );
        assert!(
            out.stdout.contains("x32 -1 Operation not permitted"),
            "{out:?}"
        );
    }
    let p = Profile {
        seccomp: false,
        ..Profile::default()
    };
    let out = sh(
        p,
        dir.path(),
        None,
        "/bin/sh",
        "unshare -U true; echo unshare_rc=$?",
    );
    assert!(
        out.stdout.contains("unshare_rc=0"),
        "without seccomp: {out:?}"
    );
}

#[test]
fn no_new_privs_and_seccomp_show_in_proc_status() {
    let dir = tempfile::tempdir().unwrap();
    let out = sh(
        Profile::default(),
        dir.path(),
        None,
        "/bin/sh",
        "exec cat /proc/self/status",
    );
    assert!(out.stdout.contains("NoNewPrivs:\t1"), "{out:?}");
    if host().seccomp {
        assert!(out.stdout.contains("Seccomp:\t2"), "{out:?}");
    }
}

#[test]
fn the_child_is_a_session_leader() {
    let dir = tempfile::tempdir().unwrap();
    let out = sh(
        Profile::default(),
        dir.path(),
        None,
        "/bin/sh",
        "exec cat /proc/self/stat",
    );
    let (pid, rest) = out.stdout.split_once(' ').unwrap();
    let fields: Vec<&str> = rest
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    // state ppid pgrp session
    assert_eq!(fields[3], pid, "session of {pid}: {out:?}");
    assert_eq!(fields[2], pid, "process group of {pid}: {out:?}");
}

#[test]
fn the_child_dies_with_the_helpers_parent() {
    let dir = tempfile::tempdir().unwrap();
    let p = plan(Profile::default(), dir.path(), None, "/bin/sleep", &["30"]);
    let json = serde_json::to_string(&p).unwrap();
    // An intermediate shell starts the helper in the background, prints its pid and exits.
    let out = Command::new("/bin/sh")
        .args(["-c", "\"$0\" \"$1\" >/dev/null 2>&1 & echo $!; sleep 0.3"])
        .arg(env!("CARGO_BIN_EXE_sandbox-exec"))
        .arg(json)
        .output()
        .unwrap();
    let pid: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .next()
            .map(String::from);
        if matches!(state.as_deref(), None | Some("Z")) {
            break;
        }
        if Instant::now() > deadline {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("sleep {pid} outlived its parent: {stat}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn network_namespace_means_no_network() {
    let h = host();
    if !h.network_namespaces {
        return skip("cannot create network namespaces");
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let mut p = Profile::default();
    p.namespaces.network = true;
    p.required = vec![Layer::Namespaces];
    let script = format!(
        "ip -o link show | cut -d: -f2; if exec 3<>/dev/tcp/127.0.0.1/{port}; then echo CONNECTED; else echo REFUSED; fi"
    );
    let out = sh(p, dir.path(), None, "/bin/bash", &script);
    let links: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| !l.contains("CONNECTED") && !l.contains("REFUSED"))
        .map(str::trim)
        .collect();
    assert_eq!(links, vec!["lo"], "{out:?}");
    assert!(out.stdout.contains("REFUSED"), "{out:?}");
}

#[test]
fn pid_namespace_makes_the_child_pid_1() {
    let h = host();
    if !h.pid_namespaces {
        return skip("cannot create pid namespaces");
    }
    let dir = tempfile::tempdir().unwrap();
    let mut p = Profile::default();
    p.namespaces.pid = true;
    p.required = vec![Layer::Namespaces];
    let out = sh(
        p.clone(),
        dir.path(),
        None,
        "/bin/sh",
        "echo pid=$$; exit 7",
    );
    assert!(out.stdout.contains("pid=1\n"), "{out:?}");
    assert_eq!(out.code, Some(7), "the exit status passes through: {out:?}");
}

/// The default isolation hides the gateway's files from the process: a directory (here the one
/// holding the working directory, which stays usable) and a secret file.
#[test]
fn isolation_hides_the_gateways_files_but_keeps_the_workdir() {
    let h = host();
    if !(h.pid_namespaces && h.mount_namespaces && (h.is_root || h.user_namespaces)) {
        return skip("cannot create pid and mount namespaces");
    }
    let data = tempfile::tempdir().unwrap();
    let workdir = data.path().join("tenants/acme/kit");
    std::fs::create_dir_all(&workdir).unwrap();
    std::fs::write(data.path().join("signing.key"), "private").unwrap();
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("pepper");
    std::fs::write(&secret, "pepper-value").unwrap();
    let mut profile = Profile::isolation();
    profile.required = vec![Layer::Namespaces];
    let mut p = plan(
        profile,
        &workdir,
        None,
        "/bin/sh",
        &[
            "-c",
            &format!(
                "cat {key} 2>&1; cat {secret}; echo; ls {data}; echo mine > own && cat own; echo planted > {data}/x 2>&1; echo pid=$$",
                key = data.path().join("signing.key").display(),
                secret = secret.display(),
                data = data.path().display(),
            ),
        ],
    );
    p.hidden = vec![data.path().to_owned(), secret.clone()];
    let out = run_plan(&p);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        !out.stdout.contains("private"),
        "the data directory is hidden: {out:?}"
    );
    assert!(
        !out.stdout.contains("pepper-value"),
        "the secret file is hidden: {out:?}"
    );
    assert!(
        out.stdout.contains("mine\n"),
        "the workdir still works: {out:?}"
    );
    assert!(out.stderr.contains("Read-only file system"), "{out:?}");
    assert!(out.stdout.contains("pid=1\n"), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(workdir.join("own")).unwrap(),
        "mine\n",
        "written where the gateway sees it"
    );
    assert!(!data.path().join("x").exists());
}

#[test]
fn all_namespaces_together() {
    let h = host();
    if !(h.user_namespaces && h.pid_namespaces && h.mount_namespaces && h.network_namespaces) {
        return skip("cannot create user, pid, mount and network namespaces");
    }
    let dir = tempfile::tempdir().unwrap();
    let p = Profile {
        namespaces: palisade_sandbox::Namespaces {
            network: true,
            pid: true,
            ipc: true,
            mount: true,
            user: true,
        },
        required: vec![Layer::Namespaces, Layer::Landlock, Layer::Seccomp],
        ..Profile::default()
    };
    let out = sh(
        p,
        dir.path(),
        None,
        "/bin/sh",
        "echo pid=$$; ls /proc | grep -c '^[0-9]'; echo data > f && cat f",
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("pid=1\n"), "{out:?}");
    assert!(out.stdout.contains("data\n"), "{out:?}");
}

#[test]
fn a_required_layer_that_fails_exits_121_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Profile::default();
    p.landlock
        .read_only
        .push("/nonexistent/palisade-test".into());
    p.required = vec![Layer::Landlock];
    let out = sh(p.clone(), dir.path(), None, "/bin/sh", "echo ran");
    if host().landlock_abi.is_some() {
        assert_eq!(out.code, Some(121), "{out:?}");
        assert!(!out.stdout.contains("ran"), "{out:?}");
        assert!(
            out.stderr.starts_with(
                "palisade sandbox: landlock: read-only path /nonexistent/palisade-test:"
            ),
            "{out:?}"
        );
    }
    // Not required: the missing path is skipped and the program runs.
    p.required.clear();
    let out = sh(p, dir.path(), None, "/bin/sh", "echo ran");
    assert_eq!(out.code, Some(0), "{out:?}");

    // A required cgroup that was never prepared.
    let p = Profile {
        required: vec![Layer::Cgroup],
        ..Profile::default()
    };
    let out = sh(p, dir.path(), None, "/bin/sh", "echo ran");
    assert_eq!(out.code, Some(121), "{out:?}");
    assert!(
        out.stderr
            .starts_with("palisade sandbox: cgroup: no cgroup was prepared"),
        "{out:?}"
    );

    // exec failures are reported the same way.
    let out = sh(
        Profile::default(),
        dir.path(),
        None,
        "/nonexistent/server",
        "x",
    );
    assert_eq!(out.code, Some(121), "{out:?}");
    assert!(
        out.stderr
            .starts_with("palisade sandbox: exec: /nonexistent/server:"),
        "{out:?}"
    );
    let out = run_plan(&plan(
        Profile::default(),
        Path::new("/nonexistent/workdir"),
        None,
        "/bin/true",
        &[],
    ));
    assert_eq!(out.code, Some(121), "{out:?}");
    assert!(out.stderr.contains("working directory"), "{out:?}");
}

#[test]
fn the_host_report_names_every_layer() {
    let h = host();
    let report = h.report();
    println!("{report}");
    for layer in ["landlock", "seccomp", "cgroups", "namespaces", "rlimits"] {
        assert!(
            report.contains(&format!("{layer}:")),
            "{layer} missing from:\n{report}"
        );
    }
    let level = h.level(&Profile::default());
    println!("level: {} skipped: {:?}", level.label(), level.skipped);
    assert!(level.label().starts_with("rlimits"));
    assert!(level.label().ends_with("nnp"));
}
