//! End-to-end checks of the two binaries together: `bench-load` against `bench-echo` over HTTP
//! (both eras, closed and open loop, hold mode, a wrong path) and over stdio.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

const ECHO: &str = env!("CARGO_BIN_EXE_bench-echo");
const LOAD: &str = env!("CARGO_BIN_EXE_bench-load");

/// A running `bench-echo http`, killed on drop.
struct Echo {
    child: Child,
    url: String,
}

impl Echo {
    fn start() -> Echo {
        let mut child = Command::new(ECHO)
            .args(["http", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start bench-echo");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .expect("listening line")
            .to_string();
        Echo { child, url }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn load(args: &[&str]) -> (bool, Value) {
    let out = Command::new(LOAD)
        .args(args)
        .arg("--json")
        .output()
        .expect("run bench-load");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(stdout.lines().next().unwrap_or_default()).unwrap_or_else(|e| {
        panic!(
            "bench-load printed no JSON ({e}): {stdout} / {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), v)
}

#[test]
fn http_both_eras_closed_and_open_loop() {
    let echo = Echo::start();
    let pid = format!("echo={}", echo.child.id());
    for era in ["legacy", "modern"] {
        let (ok, v) = load(&[
            "--url",
            &echo.url,
            "--era",
            era,
            "--sessions",
            "4",
            "--calls",
            "200",
            "--warmup",
            "0.2",
            "--pid",
            &pid,
        ]);
        assert!(ok, "{v}");
        assert_eq!(v["calls"], 800, "{v}");
        assert_eq!(v["errors"], 0, "{v}");
        assert!(v["latency_us"]["p50"].as_f64().is_some_and(|p| p > 0.0));
        assert_eq!(v["processes"][0]["label"], "echo");
        assert!(
            v["processes"][0]["vm_rss_kib"]
                .as_u64()
                .is_some_and(|r| r > 0)
        );
    }
    let (ok, v) = load(&[
        "--url",
        &echo.url,
        "--rate",
        "400",
        "--duration",
        "0.5",
        "--warmup",
        "0",
        "--header",
        "Authorization: Bearer not-checked",
    ]);
    assert!(ok, "{v}");
    assert_eq!(v["mode"], "open");
    let calls = v["calls"].as_u64().unwrap_or_default();
    assert!(
        (180..=201).contains(&calls),
        "{calls} calls at 400/s for 0.5 s"
    );
}

#[test]
fn errors_are_counted_not_sampled() {
    let echo = Echo::start();
    let wrong = echo.url.replace("/mcp", "/nope");
    let (ok, v) = load(&[
        "--url",
        &wrong,
        "--sessions",
        "2",
        "--calls",
        "5",
        "--warmup",
        "0",
    ]);
    assert!(!ok, "no successful call must fail the run");
    assert_eq!(v["calls"], 0);
    assert_eq!(v["errors"], 10);
    assert_eq!(v["error_kinds"]["http 404"], 10);
    assert!(v["latency_us"].is_null());
}

#[test]
fn hold_sessions() {
    let echo = Echo::start();
    let pid = format!("echo={}", echo.child.id());
    let (ok, v) = load(&[
        "--url",
        &echo.url,
        "--hold-sessions",
        "50",
        "--hold-conns",
        "5",
        "--hold-secs",
        "0",
        "--pid",
        &pid,
    ]);
    assert!(ok, "{v}");
    assert_eq!(v["sessions"], 50);
    assert_eq!(v["connections"], 5);
    assert!(
        v["processes"][0]["vm_rss_kib"]
            .as_u64()
            .is_some_and(|r| r > 0)
    );
}

#[test]
fn stdio_direct() {
    let cmd = format!("{ECHO} stdio");
    for era in ["legacy", "modern"] {
        let (ok, v) = load(&[
            "--stdio-cmd",
            &cmd,
            "--era",
            era,
            "--sessions",
            "8",
            "--calls",
            "100",
            "--warmup",
            "0",
        ]);
        assert!(ok, "{v}");
        assert_eq!(v["transport"], "stdio");
        assert_eq!(v["calls"], 800);
        assert_eq!(v["errors"], 0);
        assert!(
            v["processes"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p["label"] == "upstream"))
        );
    }
}
