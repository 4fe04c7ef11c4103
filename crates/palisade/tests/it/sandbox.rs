//! Sandboxed dedicated processes through the real gateway: a tenant's process cannot touch
//! another tenant's working directory or the gateway's config and data; a memory hog is killed
//! by its cgroup and a fork bomb stopped by the pids limit, while the other tenant's calls all
//! succeed. Tests print `skipped: …` where the host lacks a kernel feature.

use crate::common;

use std::time::{Duration, Instant};

use common::{Gw, admin_table, skip, tenant_entry, testkit};
use serde_json::{Value, json};

const ACME_KEY: &str = "pal_sandbox_acme_key_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const GLOBEX_KEY: &str = "pal_sandbox_globex_key_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const ADMIN_KEY: &str = "pal_sandbox_admin_key_ccccccccccccccccccccccccccccccccccc";

/// `None` (after printing why) when the host lacks what the sandbox tests need; under
/// `CI=true` that is a failure, not a skip.
fn host_ready() -> Option<()> {
    let host = palisade_sandbox::detect();
    let missing = if host.landlock_abi.is_none() {
        "this kernel has no Landlock"
    } else if !host.cgroups_usable() {
        "no writable cgroup hierarchy (run as root with cgroups mounted)"
    } else if !host.seccomp {
        "this kernel has no seccomp filters"
    } else {
        return Some(());
    };
    skip(missing)
}

/// A gateway whose dedicated server `kit` runs sandboxed with `sandbox` (TOML keys of
/// `[servers.sandbox]`), for tenants `acme` and `globex`.
async fn sandboxed(sandbox: &str) -> Gw {
    dedicated_kit(&format!("[servers.sandbox]\n{sandbox}\n")).await
}

/// A gateway whose server `kit` is dedicated (with `sandbox_table`, TOML of its own, after
/// `[servers.stdio]`), for tenants `acme` and `globex`.
async fn dedicated_kit(sandbox_table: &str) -> Gw {
    let tenants = format!(
        "{}{}{}",
        admin_table(ADMIN_KEY),
        tenant_entry("acme", "kit", ACME_KEY, ""),
        tenant_entry("globex", "kit", GLOBEX_KEY, ""),
    );
    let server = format!(
        "[[servers]]\nname = \"kit\"\nplacement = \"dedicated\"\n[servers.stdio]\ncommand = \"{}\"\nargs = [\"stdio\"]\n{sandbox_table}",
        testkit().display()
    );
    let gw = Gw::start_with(&server, &[], &tenants);
    gw.healthy().await;
    gw
}

async fn call(gw: &Gw, key: &str, tool: &str, args: Value) -> Value {
    let s = gw.legacy_as(key).await;
    let a = s.call(1, tool, args).await;
    a.response().clone()
}

async fn text_of(gw: &Gw, key: &str, tool: &str, args: Value) -> String {
    let r = call(gw, key, tool, args).await;
    common::text(&r).to_owned()
}

/// `None` (after printing why) when the host cannot give processes their own pid and mount
/// namespaces; under `CI=true` that is a failure, not a skip.
fn namespaces_ready() -> Option<()> {
    let host = palisade_sandbox::detect();
    let ready =
        host.pid_namespaces && host.mount_namespaces && (host.is_root || host.user_namespaces);
    if ready {
        return Some(());
    }
    skip("no pid and mount namespaces on this host")
}

/// With no `[servers.sandbox]` at all, a dedicated server's processes are kept apart by
/// default: each sees only its own processes (pid 1 of its own namespace), not the gateway's
/// `/proc` entry and environment, not the gateway's data directory (assertion keys, registry,
/// audit trail) nor its secret files, not another tenant's working directory; and it still
/// reads the system and writes its own directory.
#[tokio::test]
async fn without_a_sandbox_table_tenants_processes_are_kept_apart() {
    if namespaces_ready().is_none() {
        return;
    }
    let gw = dedicated_kit("").await;
    let acme: Value =
        serde_json::from_str(&text_of(&gw, ACME_KEY, "whoami", json!({})).await).expect("whoami");
    let globex: Value =
        serde_json::from_str(&text_of(&gw, GLOBEX_KEY, "whoami", json!({})).await).expect("whoami");
    assert_eq!(acme["pid"], 1, "its own pid namespace: {acme}");
    let (acme_dir, globex_dir) = (
        acme["cwd"].as_str().unwrap().to_owned(),
        globex["cwd"].as_str().unwrap().to_owned(),
    );
    let probe = |key: &'static str, path: String, write: bool| {
        let gw = &gw;
        async move { text_of(gw, key, "fs_probe", json!({"path": path, "write": write})).await }
    };
    assert_eq!(
        probe(GLOBEX_KEY, format!("{globex_dir}/secret"), true).await,
        "ok"
    );
    assert_eq!(probe(ACME_KEY, format!("{acme_dir}/own"), true).await, "ok");
    assert_eq!(
        probe(ACME_KEY, format!("{acme_dir}/own"), false).await,
        "ok"
    );

    let data = gw.config.with_file_name("palisade-data");
    let key_file = std::fs::read_dir(data.join("assertion-keys"))
        .expect("assertion keys")
        .flatten()
        .next()
        .expect("a signing key")
        .path();
    let hidden = [
        format!("/proc/{}/environ", gw.pid()),
        format!("/proc/{}/cmdline", gw.pid()),
        key_file.display().to_string(),
        data.join("palisade.db").display().to_string(),
        format!("{globex_dir}/secret"),
    ];
    for path in hidden {
        let answer = probe(ACME_KEY, path.clone(), false).await;
        assert!(answer.starts_with("error"), "acme read {path}: {answer}");
    }
    let answer = probe(ACME_KEY, data.join("planted").display().to_string(), true).await;
    assert!(
        answer.starts_with("error"),
        "acme wrote into the data directory: {answer}"
    );
    assert_eq!(probe(ACME_KEY, "/etc/hostname".into(), false).await, "ok");

    let body = gw.processes("acme", ADMIN_KEY).await;
    let level = body["processes"][0]["sandbox"].as_str().unwrap_or("");
    assert!(level.contains("+ns+"), "{level}");
}

#[tokio::test]
async fn a_tenant_cannot_touch_another_tenants_files_or_the_gateways() {
    if host_ready().is_none() {
        return;
    }
    let gw = sandboxed("").await;
    let acme: Value =
        serde_json::from_str(&text_of(&gw, ACME_KEY, "whoami", json!({})).await).expect("whoami");
    let globex: Value =
        serde_json::from_str(&text_of(&gw, GLOBEX_KEY, "whoami", json!({})).await).expect("whoami");
    let acme_dir = acme["cwd"].as_str().unwrap().to_owned();
    let globex_dir = globex["cwd"].as_str().unwrap().to_owned();
    let probe = |key: &'static str, path: String, write: bool| {
        let gw = &gw;
        async move { text_of(gw, key, "fs_probe", json!({"path": path, "write": write})).await }
    };

    // Each writes its own directory.
    assert_eq!(probe(ACME_KEY, format!("{acme_dir}/own"), true).await, "ok");
    assert_eq!(
        probe(GLOBEX_KEY, format!("{globex_dir}/secret"), true).await,
        "ok"
    );
    assert_eq!(
        probe(ACME_KEY, format!("{acme_dir}/own"), false).await,
        "ok"
    );
    // Nothing of the other tenant's, nor of the gateway's config and data.
    let denied = [
        (format!("{globex_dir}/secret"), false),
        (format!("{globex_dir}/planted"), true),
        (gw.config.display().to_string(), false),
        (gw.config.display().to_string(), true),
        (
            gw.config
                .with_file_name("palisade-data/palisade.db")
                .display()
                .to_string(),
            false,
        ),
        (
            gw.config.with_file_name("pepper").display().to_string(),
            false,
        ),
    ];
    for (path, write) in denied {
        let answer = probe(ACME_KEY, path.clone(), write).await;
        assert!(
            answer.starts_with("error"),
            "acme {} {path}: {answer}",
            if write { "wrote" } else { "read" }
        );
    }
    // System files stay readable.
    assert_eq!(probe(ACME_KEY, "/etc/hostname".into(), false).await, "ok");

    let body = gw.processes("acme", ADMIN_KEY).await;
    let level = body["processes"][0]["sandbox"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    for layer in ["landlock", "seccomp", "cgroup", "rlimits"] {
        assert!(level.contains(layer), "{level}");
    }
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(&format!(
            "palisade_dedicated_sandboxed{{server=\"kit\",level=\"{level}\"}} 2"
        )),
        "{metrics}"
    );
}

#[tokio::test]
async fn memory_hogs_and_fork_bombs_are_contained() {
    if host_ready().is_none() {
        return;
    }
    let gw = sandboxed("[servers.sandbox.cgroup]\nmemory_mb = 64\npids_max = 16\n").await;
    let globex = gw.legacy_as(GLOBEX_KEY).await;
    let others = async {
        let mut ok = 0;
        for i in 0..30 {
            let a = globex
                .call(100 + i, "echo", json!({"message": "fine"}))
                .await;
            if common::text(a.response()) == "fine" {
                ok += 1;
            } else {
                eprintln!("globex call {i} failed: {:?}", a.messages);
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        ok
    };
    let hog = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        call(&gw, ACME_KEY, "hog", json!({"mb": 512})).await
    };
    let (ok, hog) = tokio::join!(others, hog);
    assert!(
        hog["error"].is_object() || hog["result"]["isError"] == true,
        "the hog was not stopped: {hog}"
    );
    assert_eq!(ok, 30, "the other tenant's calls all succeed");

    // The pids limit stops a fork bomb; the process itself survives and answers.
    let deadline = Instant::now() + Duration::from_secs(10);
    let answer = loop {
        let t = text_of(&gw, ACME_KEY, "spawn_children", json!({"n": 100})).await;
        if !t.is_empty() {
            break t;
        }
        assert!(Instant::now() < deadline, "acme's process never came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let report: Value = serde_json::from_str(&answer).expect("spawn report");
    let started = report["started"].as_u64().unwrap();
    assert!(started < 16, "{report}");
    assert!(!report["error"].as_str().unwrap().is_empty(), "{report}");
    assert_eq!(
        text_of(&gw, GLOBEX_KEY, "echo", json!({"message": "still fine"})).await,
        "still fine"
    );
}

#[tokio::test]
async fn doctor_reports_what_the_host_supports() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .arg("doctor")
        .output()
        .unwrap();
    assert!(out.status.success());
    let report = String::from_utf8_lossy(&out.stdout);
    for layer in ["landlock", "seccomp", "cgroup", "namespace"] {
        assert!(report.to_lowercase().contains(layer), "{report}");
    }

    // With a config: each dedicated server, and whether its tenants' processes are kept apart
    // (by default they are; a server that turns its sandbox off is called out).
    if namespaces_ready().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("palisade.toml");
    let server = |name: &str, extra: &str| {
        format!(
            "[[servers]]\nname = \"{name}\"\nplacement = \"dedicated\"\n[servers.stdio]\ncommand = \"{}\"\nargs = [\"stdio\"]\n{extra}",
            testkit().display()
        )
    };
    std::fs::write(
        &config,
        format!(
            "{}{}",
            server("apart", ""),
            server("open", "[servers.sandbox]\nenabled = false\n")
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["doctor", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (apart, open) = report
        .split_once("server open")
        .expect("both servers reported");
    assert!(
        apart.contains("server apart")
            && apart.contains("default isolation")
            && apart.contains("kept apart"),
        "{report}"
    );
    assert!(!apart.contains("NOT"), "{report}");
    assert!(open.contains("NOT kept apart"), "{report}");
}

/// The cgroups of a gateway that was killed (its pid gone) are swept when another starts.
#[tokio::test]
async fn a_dead_gateways_cgroups_are_swept_at_start() {
    if host_ready().is_none() {
        return;
    }
    let Some(mount) = ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"]
        .iter()
        .map(std::path::Path::new)
        .find(|m| m.join("cgroup.procs").exists())
    else {
        skip("no pids or unified cgroup hierarchy at the usual place");
        return;
    };
    // A pid above the kernel's maximum can never be alive.
    let stale = mount.join("palisade-4194305/acme/kit/1");
    std::fs::create_dir_all(&stale).unwrap();
    let gw = sandboxed("").await;
    assert!(
        !mount.join("palisade-4194305").exists(),
        "stale cgroups left behind: {}",
        gw.log()
    );
}
