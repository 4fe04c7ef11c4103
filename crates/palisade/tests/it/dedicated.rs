//! Dedicated placement through the real gateway: each tenant's own instance of a server,
//! started from the template on first use, in its own working directory with exactly the
//! configured environment; stopped when idle, when the tenant is suspended, and restarted after
//! a crash without disturbing other tenants.

use crate::common;

use std::time::{Duration, Instant};

use common::{Gw, admin_table, alive, children_of, tenant_entry, testkit, wait_until};
use serde_json::{Value, json};

const ACME_KEY: &str = "pal_dedicated_acme_key_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const GLOBEX_KEY: &str = "pal_dedicated_globex_key_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const ADMIN_KEY: &str = "pal_dedicated_admin_key_ccccccccccccccccccccccccccccccccc";

/// A dedicated server's sandbox here: none. These tests tell processes apart by the pid they
/// report, which only the host's pid namespace gives; `sandbox.rs` tests the default
/// isolation, in which every process is pid 1 of its own namespace.
const NO_SANDBOX: &str = "[servers.sandbox]\nenabled = false\n";

/// A gateway whose server `kit` is dedicated (with `server_extra` keys), and tenants `acme`
/// and `globex`, each with a `token` secret read from a file.
async fn dedicated(server_extra: &str) -> (Gw, tempfile::TempDir) {
    let secrets = tempfile::tempdir().unwrap();
    let mut tenants = admin_table(ADMIN_KEY);
    for (id, key) in [("acme", ACME_KEY), ("globex", GLOBEX_KEY)] {
        let file = secrets.path().join(id);
        std::fs::write(&file, format!("{id}-secret\n")).unwrap();
        let secrets = format!(
            "[tenants.secrets]\ntoken = {{ file = \"{}\" }}\n",
            file.display()
        );
        tenants.push_str(&tenant_entry(id, "kit", key, &secrets));
    }
    let server = format!(
        "[[servers]]\nname = \"kit\"\nplacement = \"dedicated\"\n{server_extra}\n[servers.stdio]\ncommand = \"{}\"\nargs = [\"stdio\"]\nenv = {{ TENANT_ID = \"${{tenant.id}}\", TOKEN = \"${{secret:token}}\" }}\n{NO_SANDBOX}",
        testkit().display()
    );
    let gw = Gw::start_with(&server, &[], &tenants);
    gw.healthy().await;
    (gw, secrets)
}

/// The instance's answer to `whoami`: pid, cwd and environment.
async fn whoami(gw: &Gw, key: &str) -> Value {
    let s = gw.legacy_as(key).await;
    let a = s.call(1, "whoami", json!({})).await;
    let text = common::text(a.response());
    serde_json::from_str(text).unwrap_or_else(|_| panic!("whoami: {:?}", a.messages))
}

fn pid_of(who: &Value) -> u32 {
    who["pid"].as_u64().expect("pid") as u32
}

#[tokio::test]
async fn each_tenant_gets_its_own_instance_on_first_use() {
    let (gw, _secrets) = dedicated("").await;
    assert!(
        children_of(gw.pid()).is_empty(),
        "no process before first use"
    );

    let acme = whoami(&gw, ACME_KEY).await;
    let acme_pid = pid_of(&acme);
    assert_eq!(children_of(gw.pid()), vec![acme_pid]);
    assert!(
        acme["cwd"].as_str().unwrap().ends_with("tenants/acme/kit"),
        "{acme}"
    );
    // Exactly the configured environment (and the default PATH): nothing of the gateway's.
    assert_eq!(
        acme["env"],
        json!({
            "TENANT_ID": "acme",
            "TOKEN": "acme-secret",
            "PATH": "/usr/local/bin:/usr/bin:/bin",
        })
    );

    let globex = whoami(&gw, GLOBEX_KEY).await;
    assert_ne!(pid_of(&globex), acme_pid);
    assert_eq!(globex["env"]["TOKEN"], "globex-secret");
    assert!(
        globex["cwd"]
            .as_str()
            .unwrap()
            .ends_with("tenants/globex/kit")
    );
    let mut kids = children_of(gw.pid());
    kids.sort();
    let mut want = vec![acme_pid, pid_of(&globex)];
    want.sort();
    assert_eq!(kids, want);

    // Many sessions of one tenant share its instance.
    assert_eq!(pid_of(&whoami(&gw, ACME_KEY).await), acme_pid);
}

#[tokio::test]
async fn idle_instances_stop_and_start_again() {
    let (gw, _secrets) = dedicated("idle_secs = 1").await;
    let first = pid_of(&whoami(&gw, ACME_KEY).await);
    assert!(alive(first));
    wait_until(
        Duration::from_secs(5),
        "the idle instance stops",
        || async { !alive(first) },
    )
    .await;
    assert!(children_of(gw.pid()).is_empty());
    let second = pid_of(&whoami(&gw, ACME_KEY).await);
    assert_ne!(first, second);
}

#[tokio::test]
async fn suspending_a_tenant_stops_its_instance_only() {
    let (gw, _secrets) = dedicated("").await;
    let acme = pid_of(&whoami(&gw, ACME_KEY).await);
    let globex = pid_of(&whoami(&gw, GLOBEX_KEY).await);
    gw.cli_ok(&["tenant", "suspend", "acme"]).await;
    wait_until(
        Duration::from_secs(2),
        "the suspended tenant's process stops",
        || async { !alive(acme) },
    )
    .await;
    assert!(alive(globex));
    assert_eq!(pid_of(&whoami(&gw, GLOBEX_KEY).await), globex);
}

#[tokio::test]
async fn a_killed_instance_fails_its_call_only_and_restarts() {
    let (gw, _secrets) = dedicated("").await;
    let acme = pid_of(&whoami(&gw, ACME_KEY).await);
    let globex_session = gw.legacy_as(GLOBEX_KEY).await;
    let acme_session = gw.legacy_as(ACME_KEY).await;

    let slow = acme_session.call(1, "slow", json!({"ms": 3000}));
    let others = async {
        let mut ok = 0;
        for i in 0..20 {
            let a = globex_session
                .call(100 + i, "echo", json!({"message": "still here"}))
                .await;
            if common::text(a.response()) == "still here" {
                ok += 1;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        ok
    };
    // Killed while its call runs upstream.
    let kill = async {
        gw.wait_logged("slow started", 1).await;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(acme as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    };
    let (slow, ok, ()) = tokio::join!(slow, others, kill);
    let error = &slow.response()["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "the killed call must get an error: {:?}",
        slow.messages
    );
    assert_eq!(ok, 20, "every call of the other tenant succeeds");

    // The next call of that tenant runs on a new process (after the restart backoff).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let a = acme_session
            .call(2, "echo", json!({"message": "again"}))
            .await;
        if common::text(a.response()) == "again" {
            break;
        }
        assert!(Instant::now() < deadline, "no restart: {:?}", a.messages);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_ne!(pid_of(&whoami(&gw, ACME_KEY).await), acme);
}

#[tokio::test]
async fn a_missing_secret_is_named_and_its_value_never_shown() {
    let (gw, secrets) = dedicated("").await;
    std::fs::remove_file(secrets.path().join("acme")).unwrap();
    let s = gw.legacy_as(ACME_KEY).await;
    let a = s.call(1, "echo", json!({"message": "x"})).await;
    let msg = a.response()["error"]["message"].as_str().unwrap_or("");
    assert!(
        msg.contains("secret `token`") && msg.contains("acme"),
        "{:?}",
        a.messages
    );
    // A crash loop answers at once while backing off, instead of queueing calls behind it.
    let started = Instant::now();
    let a = s.call(2, "echo", json!({"message": "x"})).await;
    assert!(a.response()["error"].is_object());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(!gw.log().contains("globex-secret"));
}

#[tokio::test]
async fn operators_list_restart_and_drain_instances() {
    let (gw, _secrets) = dedicated("").await;
    let first = pid_of(&whoami(&gw, ACME_KEY).await);

    let body = gw.processes("acme", ADMIN_KEY).await;
    let p = &body["processes"][0];
    assert_eq!(p["server"], "kit");
    assert_eq!(p["state"], "ready");
    assert_eq!(p["pid"], first);
    assert!(
        p["calls"].as_u64().unwrap() >= 1 && p["rss_kib"].as_u64().unwrap() > 0,
        "{p}"
    );

    // The CLI goes through the admin API of the running gateway.
    let cli = |args: &[&str]| {
        common::succeeded(
            std::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
                .args(args)
                .arg("--config")
                .arg(&gw.config)
                .arg("--admin-url")
                .arg(&gw.admin)
                .env("PALISADE_ADMIN_KEY", ADMIN_KEY)
                .output()
                .unwrap(),
        )
    };
    let listed = cli(&["process", "list", "acme"]);
    assert!(
        listed.contains("kit\tready") && listed.contains(&format!("pid={first}")),
        "{listed}"
    );

    cli(&["process", "restart", "acme", "--server", "kit"]);
    wait_until(
        Duration::from_secs(3),
        "the restarted process is gone",
        || async { !alive(first) },
    )
    .await;
    let second = pid_of(&whoami(&gw, ACME_KEY).await);
    assert_ne!(second, first);

    let (status, _) = gw
        .admin_api(
            "POST",
            "/admin/v1/tenants/acme/processes/drain",
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(status, 202);
    wait_until(
        Duration::from_secs(3),
        "the drained process stops",
        || async { !alive(second) },
    )
    .await;
    let body = gw.processes("acme", ADMIN_KEY).await;
    assert_eq!(body["processes"][0]["state"], "idle");
    // acme's drained instance and globex's never-started one.
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(r#"palisade_dedicated_instances{server="kit",state="idle"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"palisade_dedicated_starts_total{server="kit"} 2"#),
        "{metrics}"
    );

    let (status, _) = gw
        .admin_api(
            "POST",
            "/admin/v1/tenants/acme/processes/restart",
            Some(ADMIN_KEY),
            Some(json!({"server": "nope"})),
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn processes_are_recycled_after_max_calls() {
    let (gw, _secrets) = dedicated("max_calls_per_process = 3").await;
    let s = gw.legacy_as(ACME_KEY).await;
    let mut pids = Vec::new();
    for i in 0..8 {
        let a = s.call(i, "whoami", json!({})).await;
        let who: Value = serde_json::from_str(common::text(a.response())).unwrap();
        pids.push(pid_of(&who));
        // The supervisor notices between calls.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let distinct: std::collections::HashSet<u32> = pids.iter().copied().collect();
    assert!(distinct.len() >= 2, "never recycled: {pids:?}");
    let first_run = pids.iter().take_while(|p| **p == pids[0]).count();
    assert!(first_run <= 3, "served more than 3 calls: {pids:?}");
}

/// Zombie processes among the gateway's children.
fn zombies_of(pid: u32) -> Vec<u32> {
    children_of(pid)
        .into_iter()
        .filter(|c| {
            std::fs::read_to_string(format!("/proc/{c}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .map(|(_, rest)| rest.trim_start().starts_with('Z'))
                })
                .unwrap_or(false)
        })
        .collect()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Start and kill a tenant's process 1,000 times: no zombie is left and the gateway holds no
/// more file descriptors than before.
#[tokio::test]
async fn a_thousand_start_kill_cycles_leak_nothing() {
    let (gw, _secrets) = dedicated("").await;
    let s = gw.legacy_as(ACME_KEY).await;
    let echo = |i: u64| s.call(i, "echo", json!({"message": "x"}));
    assert_eq!(common::text(echo(0).await.response()), "x");
    let fds_before = open_fds(gw.pid());
    let cycles: u64 = std::env::var("PALISADE_TEST_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let started = Instant::now();
    let mut last = 0;
    for i in 1..=cycles {
        let (status, _) = gw
            .admin_api(
                "POST",
                "/admin/v1/tenants/acme/processes/restart",
                Some(ADMIN_KEY),
                None,
            )
            .await;
        assert_eq!(status, 202);
        // The next call runs on the new process.
        loop {
            let a = echo(i).await;
            if common::text(a.response()) == "x" {
                break;
            }
        }
        let pid = pid_of(&whoami(&gw, ACME_KEY).await);
        assert_ne!(pid, last, "cycle {i} did not replace the process");
        last = pid;
    }
    eprintln!("{cycles} cycles in {:?}", started.elapsed());
    // Replaced processes get a graceful stop in the background (stdin closed, 500 ms, then
    // signals): all are gone, and reaped, within a few seconds.
    wait_until(
        Duration::from_secs(5),
        "only the live process is left",
        || async { children_of(gw.pid()).len() == 1 },
    )
    .await;
    assert!(zombies_of(gw.pid()).is_empty());
    let fds_after = open_fds(gw.pid());
    assert!(
        fds_after <= fds_before + 2,
        "file descriptors grew from {fds_before} to {fds_after}"
    );
}

/// Secrets set through the admin API or the CLI are sealed in the store, never shown again,
/// and reach the tenant's process through its template.
#[tokio::test]
async fn secrets_in_the_store_are_sealed_and_reach_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let master = dir.path().join("master.key");
    std::fs::write(&master, "m".repeat(48)).unwrap();
    let top = format!(
        "{}[secrets]\nmaster_key_file = \"{}\"\n{}{}",
        admin_table(ADMIN_KEY),
        master.display(),
        tenant_entry("acme", "kit", ACME_KEY, ""),
        tenant_entry("globex", "kit", GLOBEX_KEY, ""),
    );
    let server = format!(
        "[[servers]]\nname = \"kit\"\nplacement = \"dedicated\"\n[servers.stdio]\ncommand = \"{}\"\nargs = [\"stdio\"]\nenv = {{ DB = \"${{secret:db}}\" }}\n{NO_SANDBOX}",
        testkit().display()
    );
    let gw = Gw::start_with(&server, &[], &top);
    gw.healthy().await;

    // Without the secret, the process cannot start, and the error says how to set it.
    let s = gw.legacy_as(ACME_KEY).await;
    let a = s.call(1, "echo", json!({"message": "x"})).await;
    let msg = a.response()["error"]["message"].as_str().unwrap_or("");
    assert!(
        msg.contains("secret `db`") && msg.contains("/secrets/db"),
        "{msg}"
    );

    let (status, _) = gw
        .admin_api(
            "PUT",
            "/admin/v1/tenants/acme/secrets/db",
            Some(ADMIN_KEY),
            Some(json!({"value": "acme-db-password"})),
        )
        .await;
    assert_eq!(status, 204);
    let (status, listed) = gw
        .admin_api(
            "GET",
            "/admin/v1/tenants/acme/secrets",
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(listed["secrets"][0]["name"], "db");
    assert!(!listed.to_string().contains("acme-db-password"));

    // The CLI sets globex's from standard input.
    let mut cli = std::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["secret", "set", "globex", "db", "--config"])
        .arg(&gw.config)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        cli.stdin
            .take()
            .unwrap()
            .write_all(b"globex-db-password\n")
            .unwrap();
    }
    assert!(cli.wait().unwrap().success());

    // After the restart backoff, the process starts with the value.
    let deadline = Instant::now() + Duration::from_secs(10);
    let who = loop {
        let a = s.call(2, "whoami", json!({})).await;
        if let Ok(who) = serde_json::from_str::<Value>(common::text(a.response())) {
            break who;
        }
        assert!(Instant::now() < deadline, "never started: {:?}", a.messages);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(who["env"]["DB"], "acme-db-password");
    assert_eq!(
        whoami(&gw, GLOBEX_KEY).await["env"]["DB"],
        "globex-db-password"
    );

    // At rest, only ciphertext.
    let mut at_rest = Vec::new();
    for file in ["palisade.db", "palisade.db-wal"] {
        let path = gw.config.with_file_name("palisade-data").join(file);
        at_rest.extend(std::fs::read(path).unwrap_or_default());
    }
    assert!(at_rest.len() > 4096, "the store's files were not found");
    for plain in [&b"acme-db-password"[..], b"globex-db-password"] {
        assert!(!at_rest.windows(plain.len()).any(|w| w == plain));
    }
    assert!(!gw.log().contains("db-password"));
}

#[tokio::test]
async fn warm_instances_start_with_their_tenant_and_stay() {
    let (gw, _secrets) = dedicated("min_processes = 1\nidle_secs = 1").await;
    wait_until(
        Duration::from_secs(5),
        "both tenants' processes start without a call",
        || async { children_of(gw.pid()).len() == 2 },
    )
    .await;
    let before = children_of(gw.pid());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        children_of(gw.pid()),
        before,
        "warm processes are not stopped for idleness"
    );
}

#[tokio::test]
async fn calls_beyond_the_inflight_limit_are_refused_at_once() {
    let (gw, _secrets) = dedicated("max_inflight_per_process = 1").await;
    let s = gw.legacy_as(ACME_KEY).await;
    let slow = s.call(1, "slow", json!({"ms": 1500}));
    let second = async {
        gw.wait_logged("slow started", 1).await;
        let started = Instant::now();
        (
            s.call(2, "echo", json!({"message": "x"})).await,
            started.elapsed(),
        )
    };
    let (slow, (second, took)) = tokio::join!(slow, second);
    assert_eq!(common::text(slow.response()), "slept");
    let error = &second.response()["error"];
    assert_eq!(error["code"], -32005, "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("max_inflight_per_process")
    );
    assert!(
        took < Duration::from_millis(500),
        "refused at once, not queued: {took:?}"
    );
    // Another tenant's process has its own limit.
    assert!(pid_of(&whoami(&gw, GLOBEX_KEY).await) > 0);
}

#[tokio::test]
async fn a_process_that_stops_answering_is_restarted() {
    let (gw, _secrets) = dedicated("health_interval_secs = 1\nhealth_timeout_ms = 300").await;
    let first = pid_of(&whoami(&gw, ACME_KEY).await);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first as i32),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    wait_until(
        Duration::from_secs(6),
        "the frozen process is replaced",
        || async { !alive(first) },
    )
    .await;
    assert!(gw.log().contains("health check failed"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = gw.legacy_as(ACME_KEY).await;
        let a = s.call(1, "whoami", json!({})).await;
        if let Ok(who) = serde_json::from_str::<Value>(common::text(a.response())) {
            assert_ne!(pid_of(&who), first);
            break;
        }
        assert!(Instant::now() < deadline, "not restarted: {:?}", a.messages);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A pool grows to `max_processes` when its processes are busy, and refuses beyond.
#[tokio::test]
async fn a_busy_pool_grows_to_its_maximum() {
    let (gw, _secrets) = dedicated("max_processes = 2\nmax_inflight_per_process = 1").await;
    let first = pid_of(&whoami(&gw, ACME_KEY).await);
    let s = gw.legacy_as(ACME_KEY).await;
    let slow = |id: u64| s.call(id, "slow", json!({"ms": 1500}));
    // Each step waits until the slow calls before it run upstream.
    let third = async {
        gw.wait_logged("slow started", 2).await;
        s.call(3, "echo", json!({"message": "x"})).await
    };
    let during = async {
        gw.wait_logged("slow started", 2).await;
        gw.processes("acme", ADMIN_KEY).await
    };
    let (a, b, third, during) = tokio::join!(
        slow(1),
        async {
            gw.wait_logged("slow started", 1).await;
            slow(2).await
        },
        third,
        during
    );
    assert_eq!(common::text(a.response()), "slept");
    assert_eq!(
        common::text(b.response()),
        "slept",
        "the second call runs on a second process"
    );
    assert_eq!(
        third.response()["error"]["code"],
        -32005,
        "a full pool refuses: {:?}",
        third.messages
    );
    let processes = during["processes"].as_array().unwrap();
    assert_eq!(processes.len(), 2, "{during}");
    let pids: Vec<u64> = processes.iter().filter_map(|p| p["pid"].as_u64()).collect();
    assert_eq!(pids.len(), 2, "{during}");
    assert!(pids.contains(&(first as u64)));
    assert_ne!(pids[0], pids[1]);
}

#[tokio::test]
async fn warm_spares_start_with_the_tenant() {
    let (gw, _secrets) = dedicated("min_processes = 2\nmax_processes = 3").await;
    wait_until(
        Duration::from_secs(5),
        "two warm processes per tenant",
        || async { children_of(gw.pid()).len() == 4 },
    )
    .await;
    // A spawned process is listed as starting until its handshake is done.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let body = gw.processes("acme", ADMIN_KEY).await;
        let states: Vec<&str> = body["processes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["state"].as_str())
            .collect();
        if states == ["ready", "ready"] {
            break;
        }
        assert!(Instant::now() < deadline, "two ready spares: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A dedicated HTTP server: each tenant gets its own instance of a templated URL and headers
/// (one pod per tenant, say), filled per tenant; no process is spawned.
#[tokio::test]
async fn a_dedicated_http_server_gets_a_per_tenant_url() {
    let (child, url) = common::testkit_http();
    let _reap = common::Reap(child);
    let secrets = tempfile::tempdir().unwrap();
    let token = secrets.path().join("acme-token");
    std::fs::write(&token, "acme-upstream-token\n").unwrap();
    let acme_secrets = format!(
        "[tenants.secrets]\ntok = {{ file = \"{}\" }}\n",
        token.display()
    );
    let top = format!(
        "{}{}{}",
        admin_table(ADMIN_KEY),
        tenant_entry("acme", "web", ACME_KEY, &acme_secrets),
        tenant_entry("globex", "web", GLOBEX_KEY, ""),
    );
    let server = format!(
        "[[servers]]\nname = \"web\"\nplacement = \"dedicated\"\n[servers.http]\nurl = \"{url}?tenant=${{tenant.id}}\"\nheaders = {{ Authorization = \"Bearer ${{secret:tok}}\" }}\n"
    );
    let gw = Gw::start_with(&server, &[], &top);
    gw.healthy().await;
    let s = gw.legacy_as(ACME_KEY).await;
    let a = s.call(1, "echo", json!({"message": "over http"})).await;
    assert_eq!(common::text(a.response()), "over http", "{:?}", a.messages);
    // globex has no `tok`: its instance's template cannot be filled, and the error says why.
    let s = gw.legacy_as(GLOBEX_KEY).await;
    let a = s.call(1, "echo", json!({"message": "x"})).await;
    let msg = a.response()["error"]["message"].as_str().unwrap_or("");
    assert!(
        msg.contains("globex") && msg.contains("secret `tok`"),
        "{msg}"
    );
    assert!(!msg.contains("acme-upstream-token"));
    assert!(
        children_of(gw.pid()).is_empty(),
        "no process for an HTTP instance"
    );
    let body = gw.processes("acme", ADMIN_KEY).await;
    assert_eq!(body["processes"][0]["state"], "ready", "{body}");
    assert!(body["processes"][0]["pid"].is_null());
}
