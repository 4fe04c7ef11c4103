//! Chaos: what the gateway depends on fails under load, and what it promises still holds. It
//! fails closed where it says it does (no call runs unaudited), recovers by itself once the
//! dependency is back, loses no record of a call it ran, and no call waits past its timeout.
//!
//! PostgreSQL here is a cluster of the test's own (initdb in a temporary directory), so that
//! stopping it disturbs nothing else; the audit disk is a small tmpfs of the test's own.

use crate::common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use sqlx::{Connection, Executor, Row};

const ADMIN_KEY: &str = "pal_chaos_admin_key_dddddddddddddddddddddddddddddddddddddd";

/// A PostgreSQL cluster of the test's own on a free port, stopped when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl Cluster {
    /// Creates and starts one; `None` (see [`skip`]) without PostgreSQL's server programs.
    fn start() -> Option<Cluster> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| Some(e.ok()?.path().join("bin")))
            .find(|b| b.join("initdb").exists());
        let Some(bin) = bin else {
            skip("no PostgreSQL server programs (initdb, pg_ctl) under /usr/lib/postgresql")?;
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        // PostgreSQL refuses to run as root: then the cluster belongs to `postgres`.
        if nix::unistd::geteuid().is_root() {
            let owned = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(owned.success(), "chown to postgres");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = Cluster { dir, bin, port };
        let data = cluster.data();
        cluster.run(
            "initdb",
            &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"],
        );
        cluster.up();
        Some(cluster)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// `program` of PostgreSQL's, as the cluster's owner.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if nix::unistd::geteuid().is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        }
    }

    fn run(&self, program: &str, args: &[&str]) {
        succeeded(self.command(program).args(args).output().unwrap());
    }

    fn up(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "start",
            ],
        );
    }

    /// Stops it at once, as a crash would (no shutdown checkpoint, clients cut off).
    fn crash(&self) {
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
    }

    fn url(&self, user: &str, db: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self
            .command("pg_ctl")
            .args(["-D", &data, "-m", "immediate", "stop"])
            .output();
    }
}

/// How one call during the chaos ended.
#[derive(Debug, PartialEq)]
enum Ended {
    Ran,
    /// Refused because the audit trail could not record it: failing closed.
    Unaudited,
    RateLimited,
    Other(String),
}

async fn one_call(s: &Legacy<'_>, id: u64) -> Ended {
    // The gateway's call timeout is 60 s; a call that has not ended in 20 s hangs.
    let answer = tokio::time::timeout(
        Duration::from_secs(20),
        s.call(id, "kit__echo", json!({ "message": format!("call {id}") })),
    )
    .await
    .unwrap_or_else(|_| panic!("call {id} hung"));
    let response = answer.response();
    if text(response) == format!("call {id}") {
        return Ended::Ran;
    }
    let message = response["error"]["message"].as_str().unwrap_or_default();
    if message.contains("audit trail cannot record") {
        Ended::Unaudited
    } else if response["error"]["code"] == -32029 {
        Ended::RateLimited
    } else {
        Ended::Other(format!("{}: {response}", answer.status))
    }
}

/// What the load saw: calls that ran and calls refused, counted as they end.
#[derive(Default)]
struct Tally {
    ran: std::sync::atomic::AtomicU64,
    unaudited: std::sync::atomic::AtomicU64,
}

impl Tally {
    fn get(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.ran.load(Relaxed), self.unaudited.load(Relaxed))
    }

    /// Waits until `see` holds of the counts.
    async fn until(&self, what: &str, within: Duration, see: impl Fn((u64, u64)) -> bool) {
        let deadline = Instant::now() + within;
        while !see(self.get()) {
            assert!(Instant::now() < deadline, "{what}: {:?}", self.get());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Runs `chaos` while four clients of acme call back to back, counting in `tally`; every call
/// runs or is refused as unaudited, none hangs.
async fn under_load(gw: &Gw, tally: &Tally, chaos: impl std::future::Future<Output = ()>) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut sessions = Vec::new();
    for _ in 0..4 {
        sessions.push(gw.legacy("acme").await);
    }
    let stop = std::sync::atomic::AtomicBool::new(false);
    let chaos = async {
        chaos.await;
        stop.store(true, Relaxed);
    };
    let stop = &stop;
    let clients = sessions.iter().enumerate().map(|(n, s)| async move {
        let mut id = (n as u64) << 32;
        while !stop.load(Relaxed) {
            id += 1;
            match one_call(s, id).await {
                Ended::Ran => tally.ran.fetch_add(1, Relaxed),
                Ended::Unaudited => tally.unaudited.fetch_add(1, Relaxed),
                ended => panic!("call {id}: {ended:?}"),
            };
        }
    });
    tokio::join!(futures_util::future::join_all(clients), chaos);
}

/// The registry and the audit sink both on PostgreSQL, which crashes under load and comes
/// back: calls are refused (not run unaudited) while it is down, keys keep working from the
/// registry's last snapshot, calls and registry writes resume by themselves once it is back,
/// and every call that ran has its audit records.
#[tokio::test]
async fn postgres_crashes_and_restarts_under_load() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let admin = cluster.url("postgres", "postgres");
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    for db in ["registry", "audit"] {
        conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
            .await
            .unwrap();
    }
    drop(conn);
    palisade_audit::postgres::install(&cluster.url("postgres", "audit"), "palisade_audit_w")
        .await
        .unwrap();
    let top = format!(
        "{}[storage]\ndatabase_url = \"{}\"\n[audit]\nsinks = [\"postgres\"]\npostgres_url = \"{}\"\nreplica = \"r1\"\n",
        admin_table(ADMIN_KEY),
        cluster.url("postgres", "registry"),
        cluster.url("palisade_audit_w", "audit"),
    );
    let gw = acme_on_kit_with(&top).await;
    let tally = Tally::default();
    let chaos = async {
        tally
            .until("calls run", Duration::from_secs(10), |(ran, _)| ran >= 20)
            .await;
        cluster.crash();
        // Down: keys still authenticate (the registry's last snapshot); calls are refused.
        let (ran_before, _) = tally.get();
        tally
            .until("calls refused", Duration::from_secs(30), |(_, refused)| {
                refused >= 20
            })
            .await;
        let deadline = Instant::now() + Duration::from_secs(15);
        while !gw
            .metrics()
            .await
            .contains("palisade_registry_refresh_failures_total")
        {
            assert!(Instant::now() < deadline, "registry failures not counted");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (ran_down, _) = tally.get();
        // At most the calls in flight at the crash ran after it.
        assert!(
            ran_down <= ran_before + 4,
            "{ran_before} then {ran_down} ran"
        );

        cluster.up();
        // Back: calls run again without a restart of the gateway.
        tally
            .until("calls run again", Duration::from_secs(60), |(ran, _)| {
                ran >= ran_down + 20
            })
            .await;
    };
    under_load(&gw, &tally, chaos).await;
    let (ran, refused) = tally.get();

    // The registry takes writes again: a key issued now works.
    let deadline = Instant::now() + Duration::from_secs(30);
    let key = loop {
        let (status, issued) = gw
            .admin_api(
                "POST",
                "/admin/v1/tenants/acme/keys",
                Some(ADMIN_KEY),
                Some(json!({})),
            )
            .await;
        if status == 201 {
            break issued["key"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "{status}: {issued}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let fresh = gw.legacy_as(&key).await;
    assert_eq!(one_call(&fresh, 1).await, Ended::Ran);
    let ran = ran + 1;

    // Nothing lost: each call that ran has its BEGIN record in the audit database.
    let mut conn = sqlx::PgConnection::connect(&cluster.url("postgres", "audit"))
        .await
        .unwrap();
    let begun: i64 = sqlx::query("SELECT count(*) FROM palisade_audit WHERE kind = 'BEGIN'")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get(0);
    assert!(
        begun >= ran as i64,
        "{ran} calls ran, {begun} BEGIN records"
    );
    eprintln!(
        "{ran} calls ran, {refused} refused while PostgreSQL was down; {begun} BEGIN records"
    );
    gw.cli_ok(&["audit", "verify"]).await;
}

/// A tmpfs of the test's own, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` (see [`skip`]) where the test may not mount one.
    fn mount(bytes: u64) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .is_ok_and(|o| o.status.success());
        if !mounted {
            skip("cannot mount a tmpfs (the test needs root)")?;
        }
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Takes every free byte with a file of its own; returns its path.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![1u8; 4096];
        while f.write_all(&chunk).and_then(|()| f.sync_data()).is_ok() {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// The audit trail's disk fills up under load: calls are refused, not run unaudited; once
/// space is freed they run again by themselves, and the trail verifies, with a BEGIN record
/// for every call that ran.
#[tokio::test]
async fn the_audit_disk_fills_up_under_load() {
    let Some(disk) = Tmpfs::mount(5 << 20) else {
        return;
    };
    // Small files, so that a new one (and its 4 MiB of reserved space) is soon needed.
    let top = format!(
        "[audit]\ndir = \"{}\"\nmax_file_bytes = 65536\n",
        disk.path().display()
    );
    let gw = acme_on_kit_with(&top).await;
    let tally = Tally::default();
    let chaos = async {
        tally
            .until("calls run", Duration::from_secs(10), |(ran, _)| ran >= 5)
            .await;
        let filler = disk.fill();
        tally
            .until("calls refused", Duration::from_secs(120), |(_, refused)| {
                refused >= 20
            })
            .await;
        std::fs::remove_file(filler).unwrap();
        let (ran_full, _) = tally.get();
        tally
            .until("calls run again", Duration::from_secs(60), |(ran, _)| {
                ran >= ran_full + 20
            })
            .await;
    };
    under_load(&gw, &tally, chaos).await;
    let (ran, refused) = tally.get();

    let text: String = palisade_audit::list_files(disk.path())
        .unwrap()
        .iter()
        .map(|f| String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned())
        .collect();
    let begun = text
        .lines()
        .filter(|l| l.contains(r#""kind":"BEGIN""#))
        .count() as u64;
    assert!(begun >= ran, "{ran} calls ran, {begun} BEGIN records");
    gw.cli_ok(&["audit", "verify"]).await;
    eprintln!("{ran} calls ran, {refused} refused while the disk was full; {begun} BEGIN records");
}

/// Event streams the half-event upstream holds open.
static OPEN_STREAMS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Counts itself among [`OPEN_STREAMS`] while the server holds it.
struct Held;

impl Held {
    fn new() -> Held {
        OPEN_STREAMS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Held
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        OPEN_STREAMS.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// An HTTP upstream (legacy era) whose tool `hang` answers with an event stream, writes half an
/// event and then nothing, never closing; its tool `ok` answers at once. Returns its URL.
async fn half_event_upstream() -> String {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    use futures_util::StreamExt;
    use serde_json::Value;
    async fn mcp(body: String) -> axum::response::Response {
        let msg: Value = serde_json::from_str(&body).unwrap_or_default();
        let id = msg["id"].clone();
        let answer = |result: Value| {
            let body = json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string();
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        };
        match msg["method"].as_str().unwrap_or_default() {
            _ if id.is_null() => StatusCode::ACCEPTED.into_response(),
            "initialize" => answer(json!({"protocolVersion": "2025-06-18",
                "capabilities": {"tools": {}}, "serverInfo": {"name": "half", "version": "1"}})),
            "tools/list" => answer(json!({"tools": [
                {"name": "hang", "inputSchema": {"type": "object"}},
                {"name": "ok", "inputSchema": {"type": "object"}}]})),
            "tools/call" if msg["params"]["name"] == "ok" => {
                answer(json!({"content": [{"type": "text", "text": "ok"}]}))
            }
            "tools/call" => {
                let half = format!(
                    "event: message\ndata: {{\"jsonrpc\":\"2.0\",\"id\":{id},\"result\":{{\"content\""
                );
                let held = Held::new();
                let first = futures_util::stream::once(async move {
                    Ok::<_, std::io::Error>(bytes::Bytes::from(half))
                });
                // Nothing more, ever; `held` goes when the connection does.
                let rest = futures_util::stream::pending().map(move |b: bytes::Bytes| {
                    let _ = &held;
                    Ok(b)
                });
                let body = axum::body::Body::from_stream(first.chain(rest));
                ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
            }
            _ => answer(json!({})),
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/mcp", axum::routing::post(mcp));
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/mcp")
}

/// An upstream writes half an event and hangs: each such call ends at the server's call
/// timeout with a clear error, the gateway lets go of the upstream's stream, and the upstream's
/// other tools keep answering meanwhile.
#[tokio::test]
async fn an_upstream_that_stops_mid_event() {
    let url = half_event_upstream().await;
    let server = http_server("half", &url).replace(
        "[servers.http]",
        "protocol = \"legacy\"\ncall_timeout_ms = 1500\n[servers.http]",
    );
    let gw = Gw::start(
        &server,
        &[TenantSpec {
            id: "acme",
            servers: &["half"],
            namespacing: true,
        }],
    );
    gw.ready().await;
    let s = gw.legacy("acme").await;
    let hanging = (1..=3).map(|id| {
        let s = &s;
        async move {
            let started = Instant::now();
            let answer =
                tokio::time::timeout(Duration::from_secs(20), s.call(id, "half__hang", json!({})))
                    .await
                    .unwrap_or_else(|_| panic!("call {id} hung"));
            (started.elapsed(), answer)
        }
    });
    let meanwhile = async {
        // While the three hang: the other tool answers.
        while OPEN_STREAMS.load(std::sync::atomic::Ordering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        text(s.call(9, "half__ok", json!({})).await.response()).to_owned()
    };
    let (ended, ok) = tokio::join!(futures_util::future::join_all(hanging), meanwhile);
    assert_eq!(ok, "ok");
    for (took, answer) in ended {
        let message = answer.response()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(message.contains("1500"), "{took:?}: {:?}", answer.messages);
        assert!(took >= Duration::from_millis(1500), "{took:?}");
    }
    // And no stream of the upstream's is left open.
    let deadline = Instant::now() + Duration::from_secs(10);
    while OPEN_STREAMS.load(std::sync::atomic::Ordering::SeqCst) > 0 {
        assert!(
            Instant::now() < deadline,
            "{} upstream streams still open",
            OPEN_STREAMS.load(std::sync::atomic::Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// libfaketime (multi-threaded), which steps a process's wall clock and leaves its monotonic
/// clock alone, as NTP stepping the system clock would.
fn faketime() -> Option<PathBuf> {
    let lib = [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib",
    ]
    .iter()
    .map(|d| PathBuf::from(d).join("faketime/libfaketimeMT.so.1"))
    .find(|p| p.exists());
    if lib.is_none() {
        skip("no libfaketime (Debian package faketime)")?;
    }
    lib
}

/// The wall clock steps two hours forward, then four back, under the gateway: its sessions
/// live on (idleness is measured on the monotonic clock), rate limits neither lock the tenant
/// out nor let it loose, calls run, and the audit trail (whose times jump) still verifies.
#[tokio::test]
async fn the_wall_clock_steps() {
    let Some(lib) = faketime() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let offset = dir.path().join("offset");
    std::fs::write(&offset, "+0\n").unwrap();
    let env = [
        ("LD_PRELOAD", lib.to_str().unwrap()),
        ("FAKETIME_TIMESTAMP_FILE", offset.to_str().unwrap()),
        ("FAKETIME_NO_CACHE", "1"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ];
    let gw = Gw::start_with_env(
        &stdio_server("kit", ""),
        &[TenantSpec {
            id: "acme",
            servers: &["kit"],
            namespacing: true,
        }],
        "[limits]\nsession_idle_secs = 600\n[rate_limits]\ndefault_tier = \"t\"\n[rate_limits.tiers.t]\ntenant = { per_second = 0.5, burst = 5 }\n",
        &env,
    );
    gw.ready().await;
    let s = gw.legacy("acme").await;
    let trail = gw.config.with_file_name("palisade-data").join("audit");
    // The five calls a burst allows, then a refusal.
    let mut id = 0;
    for _ in 0..5 {
        id += 1;
        assert_eq!(one_call(&s, id).await, Ended::Ran, "call {id}");
    }
    // Refused by the rate limit (-32029).
    let over = async |id: u64| {
        let answer = s.call(id, "kit__echo", json!({"message": "over"})).await;
        answer.response()["error"]["code"] == -32029
    };
    assert!(over(100).await, "a sixth call in the burst ran");

    let stepped = Instant::now();
    std::fs::write(&offset, "+2h\n").unwrap();
    // Forward: the bucket is not refilled by the jump...
    assert!(over(101).await, "stepping forward refilled the bucket");
    // ...the gateway's clock did move (its records are dated ahead of the real clock)...
    let dated_ahead = || {
        let now = palisade_audit::now_rfc3339();
        palisade_audit::list_files(&trail)
            .unwrap()
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap())
            .any(|text| {
                text.lines()
                    .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                    .any(|r| r["time"].as_str().is_some_and(|t| t > now.as_str()))
            })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dated_ahead() {
        assert!(
            Instant::now() < deadline,
            "the gateway's wall clock did not move"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ...and the bucket refills at its real pace (a token every 2 s).
    let refilled = async |first_id: u64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut id = first_id;
        loop {
            match one_call(&s, id).await {
                Ended::Ran => return,
                ended => assert!(Instant::now() < deadline, "still refused: {ended:?}"),
            }
            id += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    refilled(200).await;

    // Back four hours: the tenant is not locked out for them.
    std::fs::write(&offset, "-2h\n").unwrap();
    refilled(300).await;
    // The session outlived a reaper pass (every 5 s) on the stepped clock.
    if let Some(left) = Duration::from_secs(6).checked_sub(stepped.elapsed()) {
        tokio::time::sleep(left).await;
    }
    refilled(400).await;
    assert_eq!(metric(&gw.metrics().await, "palisade_sessions_active"), 1.0);
    gw.cli_ok(&["audit", "verify"]).await;
}
