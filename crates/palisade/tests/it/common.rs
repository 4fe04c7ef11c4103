//! Test harness: runs a real gateway against real upstream processes (`palisade-testkit`) and
//! talks to it over real sockets.
//!
//! `Gw::start` writes a config with fresh keys into a temp dir, starts the `palisade serve`
//! binary on port 0, reads the bound addresses from its one stdout line and keeps its stderr
//! (the log) for assertions. Dropping it sends SIGTERM. `Gw::in_process` builds the same
//! gateway from the same config inside the test, on the test's runtime
//! (`palisade::serve::GatewayBuilder`), for tests where the process boundary is not the point:
//! no binary to spawn, and the test's panics show the gateway's state. Its log is this
//! process's (nextest runs each test in a process of its own).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hmac::{KeyInit, Mac};
use serde_json::{Value, json};

pub use testenv::wait_until;

pub const ACCEPT: &str = "application/json, text/event-stream";

/// The pepper every test gateway uses.
pub const PEPPER: &str = "pppppppppppppppppppppppppppppppppppppppppppppppp";

/// `None` after printing why the test cannot run on this host; under `CI=true` a failure.
pub fn skip(why: &str) -> Option<()> {
    testenv::lacking(why)
}

/// The standard output of a command that must have succeeded; on failure the test fails with
/// all it printed.
pub fn succeeded(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The number in a metrics line `series value`, 0 when absent.
pub fn metric(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The config form of an API key under [`PEPPER`].
pub fn stored_hash(key: &str) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(PEPPER.as_bytes()).expect("hmac");
    mac.update(key.as_bytes());
    format!("hmac-sha256:{}", hex::encode(mac.finalize().into_bytes()))
}

pub fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_palisade"))
        .parent()
        .expect("binary dir")
        .to_owned()
}

pub fn testkit() -> PathBuf {
    let p = bin_dir().join("palisade-testkit");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace` first",
        p.display()
    );
    p
}

/// An `[admin]` table whose one admin key is `key`.
pub fn admin_table(key: &str) -> String {
    format!("[admin]\nkeys = [\"{}\"]\n", stored_hash(key))
}

/// A `[[tenants]]` entry without namespacing, on `server`, with one API key, followed by
/// `extra` TOML lines (its subtables, such as `[tenants.secrets]`).
pub fn tenant_entry(id: &str, server: &str, key: &str, extra: &str) -> String {
    format!(
        "[[tenants]]\nid = \"{id}\"\nservers = [\"{server}\"]\nnamespacing = false\nkeys = [\"{}\"]\n{extra}",
        stored_hash(key)
    )
}

/// A stdio server entry running the testkit, with optional extra TOML lines.
pub fn stdio_server(name: &str, extra: &str) -> String {
    format!(
        "[[servers]]\nname = \"{name}\"\n{extra}\n[servers.stdio]\ncommand = \"{}\"\nargs = [\"stdio\"]\n",
        testkit().display()
    )
}

pub fn http_server(name: &str, url: &str) -> String {
    format!("[[servers]]\nname = \"{name}\"\n[servers.http]\nurl = \"{url}\"\n")
}

/// A ready in-process gateway with one stdio testkit server `kit` (its extra TOML keys given)
/// and one tenant, `acme`, with namespacing.
pub async fn one_kit(extra: &str) -> Gw {
    acme_on_kit(&stdio_server("kit", extra)).await
}

/// Tenant `acme` on server `kit`, with namespacing.
pub const ACME_ON_KIT: [TenantSpec<'static>; 1] = [TenantSpec {
    id: "acme",
    servers: &["kit"],
    namespacing: true,
}];

/// A ready gateway with a stdio testkit server `kit` and tenant `acme` on it, `extra_top` (TOML
/// tables) first in its config.
pub async fn acme_on_kit_with(extra_top: &str) -> Gw {
    let gw = Gw::in_process(&stdio_server("kit", ""), &ACME_ON_KIT, extra_top).await;
    gw.ready().await;
    gw
}

/// A ready gateway with the given servers, one of them `kit`, and tenant `acme` on `kit`.
pub async fn acme_on_kit(servers: &str) -> Gw {
    let gw = Gw::in_process(servers, &ACME_ON_KIT, "").await;
    gw.ready().await;
    gw
}

/// An in-process gateway with one stdio testkit server `kit` (its extra TOML keys given) shared
/// by two tenants, `acme` and `globex`, both with namespacing. Not yet waited for.
pub async fn two_tenants_on_kit(extra: &str) -> Gw {
    two_tenants_on_kit_with(extra, "").await
}

/// [`two_tenants_on_kit`] with `extra_top` TOML before the `[listen]` table.
pub async fn two_tenants_on_kit_with(extra: &str, extra_top: &str) -> Gw {
    Gw::in_process(
        &stdio_server("kit", extra),
        &ACME_AND_GLOBEX_ON_KIT,
        extra_top,
    )
    .await
}

/// Tenants `acme` and `globex` on server `kit`, both with namespacing.
pub const ACME_AND_GLOBEX_ON_KIT: [TenantSpec<'static>; 2] = [
    TenantSpec {
        id: "acme",
        servers: &["kit"],
        namespacing: true,
    },
    TenantSpec {
        id: "globex",
        servers: &["kit"],
        namespacing: true,
    },
];

pub struct TenantSpec<'a> {
    pub id: &'a str,
    pub servers: &'a [&'a str],
    pub namespacing: bool,
}

/// How the gateway under test runs.
enum Run {
    /// The `palisade` binary, a child of the test.
    Process(Child),
    /// A gateway on the test's runtime, held for its drop, which drains it.
    InProcess { _running: palisade::serve::Running },
}

pub struct Gw {
    run: Run,
    pub mcp: String,
    pub admin: String,
    pub keys: Vec<(String, String)>,
    pub log: Arc<Mutex<String>>,
    stdout: Arc<Mutex<String>>,
    /// The config file and the text first written to it.
    pub config: PathBuf,
    pub toml: String,
    _dir: tempfile::TempDir,
    pub http: reqwest::Client,
    /// Environment variables the gateway process gets besides the test's own.
    env: Vec<(String, String)>,
}

impl Gw {
    pub fn start(servers: &str, tenants: &[TenantSpec<'_>]) -> Gw {
        Gw::start_with(servers, tenants, "")
    }

    pub fn start_with(servers: &str, tenants: &[TenantSpec<'_>], extra_top: &str) -> Gw {
        Gw::start_full(servers, tenants, extra_top, "")
    }

    /// `extra_top` goes before the `[listen]` table, `listen_extra` inside it.
    pub fn start_full(
        servers: &str,
        tenants: &[TenantSpec<'_>],
        extra_top: &str,
        listen_extra: &str,
    ) -> Gw {
        Gw::start_at(servers, tenants, extra_top, listen_extra, "127.0.0.1:0")
    }

    /// [`Gw::start_with`], the gateway process getting `env` besides the test's environment.
    pub fn start_with_env(
        servers: &str,
        tenants: &[TenantSpec<'_>],
        extra_top: &str,
        env: &[(&str, &str)],
    ) -> Gw {
        Gw::launch(servers, tenants, extra_top, "", "127.0.0.1:0", env)
    }

    /// [`Gw::start_full`] with the MCP listener on `mcp` (for configs that name its URL).
    pub fn start_at(
        servers: &str,
        tenants: &[TenantSpec<'_>],
        extra_top: &str,
        listen_extra: &str,
        mcp: &str,
    ) -> Gw {
        Gw::launch(servers, tenants, extra_top, listen_extra, mcp, &[])
    }

    /// [`Gw::start_with`], the gateway running in this process on the test's runtime.
    pub async fn in_process(servers: &str, tenants: &[TenantSpec<'_>], extra_top: &str) -> Gw {
        let written = Written::new(servers, tenants, extra_top, "", "127.0.0.1:0");
        // Before the gateway starts, so that its first lines are kept.
        let log = in_process_log();
        let config = palisade::config::Config::load(&written.config).expect("config");
        let paths = config.data_paths(written.dir.path());
        let running = palisade::serve::GatewayBuilder::new(config, paths)
            .start()
            .await
            .expect("gateway starts");
        Gw {
            mcp: running.mcp_url.clone(),
            admin: running.admin_url.clone(),
            run: Run::InProcess { _running: running },
            keys: written.keys,
            log,
            stdout: Arc::default(),
            config: written.config,
            toml: written.toml,
            _dir: written.dir,
            http: reqwest::Client::new(),
            env: Vec::new(),
        }
    }

    fn launch(
        servers: &str,
        tenants: &[TenantSpec<'_>],
        extra_top: &str,
        listen_extra: &str,
        mcp: &str,
        env: &[(&str, &str)],
    ) -> Gw {
        let written = Written::new(servers, tenants, extra_top, listen_extra, mcp);
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let (child, mcp, admin, log, stdout) = spawn_gateway(&written.config, &env);
        Gw {
            run: Run::Process(child),
            mcp,
            admin,
            keys: written.keys,
            log,
            stdout,
            config: written.config,
            toml: written.toml,
            _dir: written.dir,
            http: reqwest::Client::new(),
            env,
        }
    }

    /// The gateway's process: only a gateway started as a binary has one of its own.
    fn child(&mut self) -> &mut Child {
        match &mut self.run {
            Run::Process(child) => child,
            Run::InProcess { .. } => {
                panic!("this test needs the gateway as a process: use Gw::start")
            }
        }
    }

    /// Kills the gateway with SIGKILL (no shutdown at all) and starts it again on the same
    /// config and data; its addresses change.
    pub fn kill_and_restart(&mut self) {
        let _ = self.child().kill();
        let _ = self.child().wait();
        let (child, mcp, admin, log, stdout) = spawn_gateway(&self.config, &self.env);
        self.run = Run::Process(child);
        self.mcp = mcp;
        self.admin = admin;
        self.log = log;
        self.stdout = stdout;
    }

    /// What the gateway process wrote to stdout after its first line.
    pub fn stdout(&self) -> String {
        assert!(
            matches!(self.run, Run::Process(_)),
            "this test reads the gateway's stdout: start it with Gw::start"
        );
        self.stdout.lock().expect("stdout").clone()
    }

    /// Runs the `palisade` CLI against this gateway's config (and so its registry store).
    /// Awaited, not blocking: an in-process gateway must go on serving the CLI's requests.
    pub async fn cli(&self, args: &[&str]) -> std::process::Output {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .await
            .expect("run palisade")
    }

    /// `palisade <args> --config <its config>`, which must succeed; what it printed.
    pub async fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args).await;
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "palisade {args:?}: {said}");
        said
    }

    /// An admin API request: status and JSON body (`Null` when empty).
    pub async fn admin_api(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, format!("{}{path}", self.admin));
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let r = req.send().await.expect("admin request");
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub fn key(&self, tenant: &str) -> &str {
        &self
            .keys
            .iter()
            .find(|(t, _)| t == tenant)
            .expect("tenant")
            .1
    }

    /// The gateway's process id: the test's own for an in-process gateway.
    pub fn pid(&self) -> u32 {
        match &self.run {
            Run::Process(child) => child.id(),
            Run::InProcess { .. } => std::process::id(),
        }
    }

    /// Waits until the admin listener answers `/healthz` (with only dedicated upstreams,
    /// `/readyz` has nothing to wait for).
    pub async fn healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self
            .http
            .get(format!("{}/healthz", self.admin))
            .send()
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "gateway not up: {}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A tenant's processes, as the admin API lists them.
    pub async fn processes(&self, tenant: &str, admin_key: &str) -> Value {
        let path = format!("/admin/v1/tenants/{tenant}/processes");
        let (status, body) = self.admin_api("GET", &path, Some(admin_key), None).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Waits until `/readyz` says every upstream is up (not merely degraded).
    pub async fn ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = self.http.get(format!("{}/readyz", self.admin)).send().await
                && r.text().await.is_ok_and(|t| t == "ready\n")
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "gateway not ready; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().expect("log").clone()
    }

    /// Waits until `needle` is in the log `times` times (a `slow` call of the testkit logs
    /// "slow started" once it runs upstream); after 20 s the test fails, showing the log.
    pub async fn wait_logged(&self, needle: &str, times: usize) {
        let within = Duration::from_secs(20);
        let logged = tokio::time::timeout(within, async {
            while self.log().matches(needle).count() < times {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(
            logged.is_ok(),
            "{needle:?} not {times} times in the log within {within:?}; log:\n{}",
            self.log()
        );
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// Sends SIGTERM, without waiting.
    pub fn sigterm(&self) {
        let Run::Process(child) = &self.run else {
            panic!("this test needs the gateway as a process: use Gw::start")
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }

    /// Whether the process has not exited.
    pub fn running(&mut self) -> bool {
        matches!(self.child().try_wait(), Ok(None))
    }

    /// SIGTERM and wait for exit; returns the exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        self.sigterm();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child().try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child().kill();
        None
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        // An in-process gateway drains when its `Running` drops.
        if let Run::Process(child) = &mut self.run
            && let Ok(None) = child.try_wait()
        {
            self.terminate();
        }
    }
}

/// A test gateway's config, written to a temp dir with fresh keys for its tenants.
struct Written {
    dir: tempfile::TempDir,
    config: PathBuf,
    toml: String,
    keys: Vec<(String, String)>,
}

impl Written {
    fn new(
        servers: &str,
        tenants: &[TenantSpec<'_>],
        extra_top: &str,
        listen_extra: &str,
        mcp: &str,
    ) -> Written {
        let dir = tempfile::tempdir().expect("tempdir");
        let pepper = dir.path().join("pepper");
        std::fs::write(&pepper, PEPPER).expect("pepper");
        let mut toml = format!(
            "{extra_top}\n[listen]\nmcp = \"{mcp}\"\nadmin = \"127.0.0.1:0\"\n{listen_extra}\n[auth]\npepper_file = \"{}\"\n{servers}\n",
            pepper.display()
        );
        let mut keys = Vec::new();
        for (i, t) in tenants.iter().enumerate() {
            let key = format!("pal_test_key_{}_{i}_{}", t.id, "k".repeat(32));
            let hash = stored_hash(&key);
            let servers: Vec<String> = t.servers.iter().map(|s| format!("\"{s}\"")).collect();
            toml.push_str(&format!(
                "[[tenants]]\nid = \"{}\"\nservers = [{}]\nnamespacing = {}\nkeys = [\"{hash}\"]\n",
                t.id,
                servers.join(", "),
                t.namespacing
            ));
            keys.push((t.id.to_owned(), key));
        }
        let config = dir.path().join("palisade.toml");
        std::fs::write(&config, &toml).expect("config");
        Written {
            dir,
            config,
            toml,
            keys,
        }
    }
}

/// The log of the gateways this process runs: a JSON subscriber like the binary's
/// (`--log-format json`, `PALISADE_LOG=info,palisade=debug`), installed once.
fn in_process_log() -> Arc<Mutex<String>> {
    static LOG: std::sync::OnceLock<Arc<Mutex<String>>> = std::sync::OnceLock::new();
    LOG.get_or_init(|| {
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        let writer = move || LogWriter(sink.clone());
        let _ = tracing_subscriber::fmt()
            .json()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info,palisade=debug"))
            .with_writer(writer)
            .try_init();
        log
    })
    .clone()
}

struct LogWriter(Arc<Mutex<String>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .expect("log")
            .push_str(&String::from_utf8_lossy(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

type Spawned = (
    Child,
    String,
    String,
    Arc<Mutex<String>>,
    Arc<Mutex<String>>,
);

/// Starts `palisade serve` on `config`: the child, its MCP and admin addresses, and its stderr
/// (the log) and stdout, each collected by a thread.
fn spawn_gateway(config: &Path, env: &[(String, String)]) -> Spawned {
    let mut child = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["--log-format", "json", "serve", "--config"])
        .arg(config)
        .env("PALISADE_LOG", "info,palisade=debug")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn palisade");
    let collect = |mut from: Box<dyn Read + Send>| {
        let sink = Arc::new(Mutex::new(String::new()));
        let to = sink.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 {
                    break;
                }
                to.lock()
                    .expect("output")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        sink
    };
    let log = collect(Box::new(child.stderr.take().expect("stderr")));
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("read stdout");
    // Keep reading: a closed stdout would fail a gateway that writes records there.
    let stdout = collect(Box::new(out));
    let mcp = field(&line, "mcp=").unwrap_or_else(|| {
        panic!(
            "gateway did not start: {line:?} log: {}",
            log.lock().unwrap()
        )
    });
    let admin = field(&line, "admin=").expect("admin addr");
    (child, mcp, admin, log, stdout)
}

fn field(line: &str, prefix: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(prefix))
        .map(|s| s.trim_end_matches("/mcp").to_owned())
        .map(|s| {
            if prefix == "mcp=" {
                format!("{s}/mcp")
            } else {
                s
            }
        })
}

/// A legacy-era client session over raw HTTP.
pub struct Legacy<'a> {
    pub gw: &'a Gw,
    pub key: String,
    pub session: String,
}

/// One HTTP answer: status, headers, and the JSON-RPC messages in its body (JSON or SSE).
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub messages: Vec<Value>,
    pub sse: bool,
}

impl Answer {
    /// The last message (the response, for a request).
    pub fn response(&self) -> &Value {
        self.messages.last().unwrap_or(&Value::Null)
    }
}

pub async fn read_answer(r: reqwest::Response) -> Answer {
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let sse = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let body = r.bytes().await.unwrap_or_default();
    let messages = if sse {
        let mut d = mcp_wire::sse::Decoder::new(64 << 20);
        d.push(&body);
        let mut out = Vec::new();
        while let Ok(Some(e)) = d.next_event() {
            if !e.data.is_empty() {
                out.push(serde_json::from_str(&e.data).expect("event json"));
            }
        }
        out
    } else if body.is_empty() {
        Vec::new()
    } else {
        vec![
            serde_json::from_slice(&body)
                .unwrap_or(Value::String(String::from_utf8_lossy(&body).into_owned())),
        ]
    };
    Answer {
        status,
        headers,
        messages,
        sse,
    }
}

impl Gw {
    /// POST a body with the standard headers plus `extra`.
    pub async fn post(
        &self,
        key: Option<&str>,
        extra: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
    ) -> Answer {
        let mut req = self
            .http
            .post(&self.mcp)
            .header("accept", ACCEPT)
            .header("content-type", "application/json")
            .body(body);
        if let Some(key) = key {
            req = req.header("authorization", format!("Bearer {key}"));
        }
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        read_answer(req.send().await.expect("post")).await
    }

    pub async fn legacy(&self, tenant: &str) -> Legacy<'_> {
        self.legacy_as(self.key(tenant)).await
    }

    /// A legacy session opened with any key.
    /// A legacy-era `initialize` with `key`.
    pub async fn initialize(&self, key: &str) -> Answer {
        self.post(
            Some(key),
            &[],
            json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{"sampling":{},"elicitation":{}},"clientInfo":{"name":"test","version":"1"}}}).to_string(),
        )
        .await
    }

    /// Whether a session opened with `key` would be let in now.
    pub async fn admits(&self, key: &str) -> bool {
        self.initialize(key).await.status == 200
    }

    pub async fn legacy_as(&self, key: &str) -> Legacy<'_> {
        let key = key.to_owned();
        let a = self.initialize(&key).await;
        assert_eq!(a.status, 200, "initialize: {:?}", a.messages);
        let session = a
            .headers
            .get("mcp-session-id")
            .expect("session id")
            .to_str()
            .expect("ascii")
            .to_owned();
        let l = Legacy {
            gw: self,
            key,
            session,
        };
        let n = l
            .send(json!({"jsonrpc":"2.0","method":"notifications/initialized"}))
            .await;
        assert_eq!(n.status, 202);
        l
    }

    /// Opens a 2026-07-28 `subscriptions/listen` stream for list changes with `key`.
    pub async fn listen(&self, key: &str) -> reqwest::Response {
        self.listen_for(key, json!({"toolsListChanged": true}))
            .await
    }

    /// Opens a 2026-07-28 `subscriptions/listen` stream for `notifications` with `key`.
    pub async fn listen_for(&self, key: &str, notifications: Value) -> reqwest::Response {
        self.http
            .post(&self.mcp)
            .header("accept", ACCEPT)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {key}"))
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "subscriptions/listen")
            .body(json!({"jsonrpc":"2.0","id":"sub-1","method":"subscriptions/listen","params":{"notifications":notifications,"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}).to_string())
            .send()
            .await
            .expect("listen")
    }

    /// A modern-era (2026-07-28) request with correct `_meta` and headers, from a client that
    /// can answer sampling and elicitation requests.
    pub async fn modern(&self, tenant: &str, id: u64, method: &str, mut params: Value) -> Answer {
        params["_meta"] = json!({
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {"sampling": {}, "elicitation": {}},
        });
        let name = params
            .get("name")
            .or_else(|| params.get("uri"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let mut headers = vec![
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", method),
        ];
        if let Some(n) = &name {
            headers.push(("mcp-name", n));
        }
        let body = json!({"jsonrpc":"2.0","id":id,"method":method,"params":params}).to_string();
        self.post(Some(self.key(tenant)), &headers, body).await
    }
}

impl Legacy<'_> {
    pub async fn send(&self, msg: Value) -> Answer {
        self.gw
            .post(
                Some(&self.key),
                &[
                    ("mcp-session-id", &self.session),
                    ("mcp-protocol-version", "2025-11-25"),
                ],
                msg.to_string(),
            )
            .await
    }

    pub async fn request(&self, id: u64, method: &str, params: Value) -> Answer {
        self.send(json!({"jsonrpc":"2.0","id":id,"method":method,"params":params}))
            .await
    }

    pub async fn call(&self, id: u64, tool: &str, args: Value) -> Answer {
        self.request(id, "tools/call", json!({"name": tool, "arguments": args}))
            .await
    }

    /// Ends the session (`DELETE`); the HTTP status.
    pub async fn delete(&self) -> u16 {
        self.gw
            .http
            .delete(&self.gw.mcp)
            .header("authorization", format!("Bearer {}", self.key))
            .header("mcp-session-id", &self.session)
            .send()
            .await
            .expect("DELETE")
            .status()
            .as_u16()
    }

    /// A `GET` of this session's endpoint for an event stream.
    fn get(&self) -> reqwest::RequestBuilder {
        self.gw
            .http
            .get(&self.gw.mcp)
            .header("accept", "text/event-stream")
            .header("authorization", format!("Bearer {}", self.key))
            .header("mcp-session-id", &self.session)
    }

    /// Opens the session's GET stream (messages not tied to a request).
    pub async fn open_get_stream(&self) -> reqwest::Response {
        self.get().send().await.expect("GET stream")
    }

    /// Reopens a broken stream of this session after `last_event_id` (`GET`).
    pub async fn resume(&self, last_event_id: &str) -> reqwest::Response {
        self.get()
            .header("mcp-protocol-version", "2025-11-25")
            .header("last-event-id", last_event_id)
            .send()
            .await
            .expect("GET with Last-Event-ID")
    }

    /// Runs a call whose response streams server→client requests, answering each with
    /// `reply(request)`; returns the methods asked and the final response.
    pub async fn call_answering(
        &self,
        call: Value,
        reply: impl Fn(&Value) -> Value,
    ) -> (Vec<String>, Value) {
        let resp = self.start(call).await;
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        let mut body = resp.bytes_stream();
        let mut decoder = mcp_wire::sse::Decoder::new(1 << 20);
        let mut asked = Vec::new();
        let mut final_msg = Value::Null;
        while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("stream stalled")
        {
            decoder.push(&chunk.unwrap());
            while let Some(ev) = decoder.next_event().unwrap() {
                // A legacy stream opens with a priming event: an id and no data.
                if ev.data.is_empty() {
                    continue;
                }
                let msg: Value = serde_json::from_str(&ev.data).unwrap();
                if msg.get("method").is_some() && msg.get("id").is_some() {
                    asked.push(msg["method"].as_str().unwrap().to_owned());
                    let answer = json!({"jsonrpc":"2.0","id":msg["id"],"result":reply(&msg)});
                    assert_eq!(self.send(answer).await.status, 202);
                } else if msg.get("result").is_some() || msg.get("error").is_some() {
                    final_msg = msg;
                }
            }
        }
        (asked, final_msg)
    }

    /// Starts a POST and returns the raw response, for streaming reads.
    pub async fn start(&self, msg: Value) -> reqwest::Response {
        self.gw
            .http
            .post(&self.gw.mcp)
            .header("accept", ACCEPT)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {}", self.key))
            .header("mcp-session-id", &self.session)
            .header("mcp-protocol-version", "2025-11-25")
            .body(msg.to_string())
            .send()
            .await
            .expect("post")
    }
}

/// A client's answer to `sampling/createMessage`: "four".
pub fn sampling_reply(_: &Value) -> Value {
    json!({"role":"assistant","content":{"type":"text","text":"four"},"model":"test-model","stopReason":"endTurn"})
}

/// Text of the first content item of a tool result message.
pub fn text(msg: &Value) -> &str {
    msg["result"]["content"][0]["text"].as_str().unwrap_or("")
}

/// Starts `palisade-testkit http` and returns it with its URL.
pub fn testkit_http() -> (Child, String) {
    let mut cmd = Command::new(testkit());
    cmd.args(["http", "--listen", "127.0.0.1:0"]);
    listening(cmd)
}

/// Starts an HTTP server that prints `listening on URL` first on stdout; returns it and the URL.
pub fn listening(mut cmd: Command) -> (Child, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn an HTTP server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("line");
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .expect("listening line")
        .to_owned();
    (child, url)
}

/// A ready gateway in front of `palisade-testkit http` (server `web`, spoken to in `protocol`),
/// with tenant `acme` on it. Keep the returned [`Reap`] alive as long as the gateway.
pub async fn acme_on_web(protocol: &str, namespacing: bool) -> (Gw, Reap) {
    let (web, url) = testkit_http();
    let web = Reap(web);
    (acme_on_http(&url, protocol, namespacing).await, web)
}

/// A ready in-process gateway with tenant `acme` on the HTTP server at `url` (server `web`),
/// spoken to in `protocol`.
pub async fn acme_on_http(url: &str, protocol: &str, namespacing: bool) -> Gw {
    let server = http_server("web", url).replace(
        "[servers.http]",
        &format!("protocol = \"{protocol}\"\n[servers.http]"),
    );
    let gw = Gw::in_process(
        &server,
        &[TenantSpec {
            id: "acme",
            servers: &["web"],
            namespacing,
        }],
        "",
    )
    .await;
    gw.ready().await;
    gw
}

/// Kills a child on drop.
pub struct Reap(pub Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Children of a process, from /proc.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
        }
    }
    out
}

pub fn alive(pid: u32) -> bool {
    // A zombie is not alive for our purposes, but it would be a leak: count it as alive.
    std::fs::metadata(format!("/proc/{pid}")).is_ok()
}
