//! The example fleet (`examples/fleet/run.sh`, the files an operator starts by hand): three
//! replicas on one PostgreSQL registry and Redis, behind HAProxy balancing every request
//! round-robin with no stickiness. Legacy sessions that continue on any replica are not built
//! yet; this tests what the fleet does today with 2026-07-28 clients, whose requests carry
//! everything: calls land on every replica, the fleet lists itself, a rolling restart (each
//! replica in turn sent SIGTERM, leaving the load balancer before it stops) fails no call, and
//! a key revoked through one replica's admin API is refused by all within a second.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::common::{ACCEPT, read_answer};

/// What run.sh printed once the fleet was up.
#[derive(Clone)]
struct Fleet {
    mcp: String,
    admins: Vec<String>,
    key: String,
    admin_key: String,
    dir: PathBuf,
}

fn field<'a>(line: &'a str, name: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
}

/// A base port with the 14 after it free (the load balancer, three MCP and three admin ports).
fn free_base() -> u16 {
    (0..200)
        .map(|_| 20_000 + (rand::random::<u16>() % 2_000) * 20)
        .find(|base| (0..14).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()))
        .expect("a free run of ports")
}

/// SIGTERM to run.sh's process group when the test ends, however it ends: the replicas drain,
/// HAProxy stops, and run.sh drops the fleet's database.
struct StopsGroup(i32);

impl Drop for StopsGroup {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.0);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGTERM);
    }
}

/// One 2026-07-28 tool call through the load balancer: the echoed text, or what went wrong.
async fn echo(http: &reqwest::Client, fleet: &Fleet, key: &str, n: usize) -> Result<(), String> {
    let body = json!({"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": {
        "name": "kit__echo", "arguments": {"message": format!("call {n}")},
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                  "io.modelcontextprotocol/clientCapabilities": {}}}});
    let r = http
        .post(&fleet.mcp)
        .bearer_auth(key)
        .header("accept", ACCEPT)
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "kit__echo")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| format!("call {n}: {e}"))?;
    let status = r.status().as_u16();
    let answer = read_answer(r).await;
    let text = &answer.response()["result"]["content"][0]["text"];
    if status == 200 && *text == format!("call {n}") {
        Ok(())
    } else {
        Err(format!("call {n}: {status} {:?}", answer.messages))
    }
}

/// Tool calls a replica has forwarded, from its metrics.
async fn calls_on(http: &reqwest::Client, admin: &str) -> f64 {
    let text = http
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .filter(|l| l.starts_with("palisade_tool_calls_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The pid of replica `name`'s `palisade serve`, under the fleet's directory.
fn replica_pid(dir: &Path, name: &str) -> i32 {
    let config = format!("{}/{name}.toml", dir.display());
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .find_map(|p| {
            let pid: i32 = p.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(p.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let serves = args.contains(&b"serve".as_slice()) && args.contains(&config.as_bytes());
            serves.then_some(pid)
        })
        .unwrap_or_else(|| panic!("no process serves {config}"))
}

#[tokio::test]
async fn the_example_fleet_balances_every_request_and_loses_no_call_in_a_rolling_restart() {
    let (Some(postgres), Some(redis)) = (testenv::postgres(), testenv::redis()) else {
        return;
    };
    let haproxy = std::process::Command::new("haproxy").arg("-v").output();
    if !haproxy.is_ok_and(|o| o.status.success()) {
        testenv::lacking::<()>("haproxy is not installed");
        return;
    }
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_palisade"))
        .parent()
        .expect("bin dir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/fleet/run.sh");
    let mut run = tokio::process::Command::new("bash")
        .arg(&script)
        .env("PALISADE_BIN_DIR", bin_dir)
        .env("FLEET_POSTGRES", &postgres)
        .env("PALISADE_REDIS_URL", &redis)
        .env("FLEET_BASE_PORT", free_base().to_string())
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("run examples/fleet/run.sh");
    let _stops = StopsGroup(run.id().expect("run.sh pid") as i32);
    let mut lines = BufReader::new(run.stdout.take().expect("stdout")).lines();
    let line = tokio::time::timeout(Duration::from_secs(90), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.starts_with("fleet ") {
                return line;
            }
        }
        panic!("run.sh ended before the fleet was up");
    })
    .await
    .expect("the fleet was up within 90 s");
    let fleet = Fleet {
        mcp: field(&line, "mcp").to_owned(),
        admins: field(&line, "admin")
            .split(',')
            .map(str::to_owned)
            .collect(),
        key: field(&line, "key").to_owned(),
        admin_key: field(&line, "admin_key").to_owned(),
        dir: PathBuf::from(field(&line, "dir")),
    };
    let http = reqwest::Client::new();

    // Every request is balanced on its own: thirty calls land on all three replicas.
    for n in 0..30 {
        echo(&http, &fleet, &fleet.key, n).await.expect("a call");
    }
    for admin in &fleet.admins {
        assert!(
            calls_on(&http, admin).await >= 5.0,
            "{admin} took few calls"
        );
    }

    // Any replica lists the fleet.
    let listed: Value = http
        .get(format!("{}/admin/v1/replicas", fleet.admins[1]))
        .bearer_auth(&fleet.admin_key)
        .send()
        .await
        .expect("replicas")
        .bytes()
        .await
        .map(|b| serde_json::from_slice(&b).expect("replicas json"))
        .expect("replicas body");
    let names: Vec<(&str, bool)> = listed["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .map(|r| (r["name"].as_str().unwrap_or(""), r["alive"] == true))
        .collect();
    assert_eq!(
        names,
        [("r1", true), ("r2", true), ("r3", true)],
        "{listed}"
    );

    // A rolling restart while a client calls without pause: each replica in turn is sent
    // SIGTERM, leaves the load balancer (its /readyz says 503 while it still serves), drains,
    // exits, and run.sh starts it again; the next waits until it is back. No call fails.
    let (done, failed, made) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(std::sync::Mutex::new(Vec::new())),
        Arc::new(AtomicUsize::new(0)),
    );
    let client = {
        let (done, failed, made) = (done.clone(), failed.clone(), made.clone());
        let (http, fleet) = (http.clone(), fleet.clone());
        tokio::spawn(async move {
            let mut n = 1000;
            while !done.load(Ordering::Relaxed) {
                if let Err(e) = echo(&http, &fleet, &fleet.key, n).await {
                    failed.lock().unwrap_or_else(|e| e.into_inner()).push(e);
                }
                made.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
        })
    };
    for (i, name) in ["r1", "r2", "r3"].into_iter().enumerate() {
        let old = replica_pid(&fleet.dir, name);
        let before = made.load(Ordering::Relaxed);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(old),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
        let asked = Instant::now();
        testenv::wait_until(Duration::from_secs(30), "the replica exited", || async {
            !Path::new(&format!("/proc/{old}")).exists()
        })
        .await;
        assert!(
            asked.elapsed() >= Duration::from_secs(2),
            "{name} served out its notice period"
        );
        assert!(
            made.load(Ordering::Relaxed) > before,
            "calls were made while {name} left"
        );
        let readyz = format!("{}/readyz", fleet.admins[i]);
        testenv::wait_until(Duration::from_secs(30), "the replica is back", || async {
            let r = http.get(&readyz).send().await;
            r.is_ok_and(|r| r.status() == 200)
        })
        .await;
        assert_ne!(replica_pid(&fleet.dir, name), old, "{name} was restarted");
    }
    // A few more calls with every replica back.
    let back = made.load(Ordering::Relaxed);
    testenv::wait_until(Duration::from_secs(10), "calls after the restart", || {
        let made = made.clone();
        async move { made.load(Ordering::Relaxed) >= back + 6 }
    })
    .await;
    done.store(true, Ordering::Relaxed);
    client.await.expect("client");
    let failed = failed.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(
        failed.is_empty(),
        "calls failed in the rolling restart: {failed:?}"
    );

    // A key revoked through r1's admin API is refused through the load balancer (by every
    // replica) within a second.
    let id = palisade::apikey::key_id(&fleet.key);
    let revoked = http
        .delete(format!(
            "{}/admin/v1/tenants/acme/keys/{id}",
            fleet.admins[0]
        ))
        .bearer_auth(&fleet.admin_key)
        .send()
        .await
        .expect("revoke");
    assert_eq!(revoked.status(), 200);
    testenv::wait_until(
        Duration::from_secs(1),
        "the fleet refuses the revoked key",
        || async {
            let mut all = true;
            for n in 0..6 {
                all &= echo(&http, &fleet, &fleet.key, n).await.is_err();
            }
            all
        },
    )
    .await;

    // run.sh stops what it started on SIGTERM.
    let pid = nix::unistd::Pid::from_raw(run.id().expect("run.sh") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM run.sh");
    tokio::time::timeout(Duration::from_secs(30), run.wait())
        .await
        .expect("run.sh stopped the fleet within 30 s")
        .expect("run.sh exit");
    for name in ["r1", "r2", "r3"] {
        let config = format!("{}/{name}.toml", fleet.dir.display());
        let still = std::fs::read_dir("/proc")
            .expect("/proc")
            .flatten()
            .any(|p| {
                std::fs::read(p.path().join("cmdline"))
                    .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == config.as_bytes()))
            });
        assert!(!still, "{name} outlived run.sh");
    }
}
