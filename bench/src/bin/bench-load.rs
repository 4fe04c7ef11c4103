//! `bench-load`: the load generator that measures an MCP endpoint (the gateway, or the upstream
//! directly) with N concurrent sessions, closed or open loop, and reports throughput, latency
//! percentiles, errors, and the CPU per call and memory of labelled processes.
//!
//! Targets: a Streamable HTTP endpoint (`--url`, one keep-alive HTTP/1.1 connection per session)
//! or a stdio server started and driven directly (`--stdio-cmd`, all sessions multiplexed over
//! one pipe). `--hold-sessions N` instead opens N legacy sessions and keeps them open, for memory
//! measurements. See bench/README.md.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use palisade_bench::driver::{Caller, Plan, drive, pacers};
use palisade_bench::http_client::{self, Config, Connection, HttpCaller, Session, Target};
use palisade_bench::mcp::{self, CallError, Era};
use palisade_bench::procstat::{self, Memory, Watched};
use palisade_bench::stats::{ProcessReport, Report, Tally};
use palisade_bench::stdio_client::{self, StdioCaller};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::time::{Instant, sleep_until};

#[derive(Parser)]
#[command(
    version,
    about = "Load generator for MCP endpoints: latency, throughput, CPU per call, memory"
)]
struct Cli {
    /// Streamable HTTP endpoint, e.g. http://127.0.0.1:18080/mcp.
    #[arg(
        long,
        conflicts_with = "stdio_cmd",
        required_unless_present = "stdio_cmd"
    )]
    url: Option<String>,
    /// Drive a stdio MCP server directly: program and arguments, separated by spaces.
    #[arg(long)]
    stdio_cmd: Option<String>,
    /// Extra request header 'Name: value' (repeatable), e.g. 'Authorization: Bearer KEY'.
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// Protocol era to speak.
    #[arg(long, value_enum, default_value_t = Era::Legacy)]
    era: Era,
    /// Concurrent sessions.
    #[arg(long, default_value_t = 16)]
    sessions: usize,
    /// Length of the measured window, in seconds (ignored with --calls).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Measure this many calls per session instead of a fixed duration.
    #[arg(long)]
    calls: Option<u64>,
    /// Seconds of unmeasured calls before the window.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Open loop: total calls per second over all sessions (default: closed loop, saturated).
    #[arg(long)]
    rate: Option<f64>,
    /// Open N legacy sessions, keep them open, report memory and wait (ctrl-c or --hold-secs).
    #[arg(long)]
    hold_sessions: Option<usize>,
    /// With --hold-sessions: release after this many seconds instead of waiting for ctrl-c.
    #[arg(long)]
    hold_secs: Option<f64>,
    /// With --hold-sessions: spread the sessions over this many connections (default: one each).
    #[arg(long)]
    hold_conns: Option<usize>,
    /// Watch a process: LABEL=PID (repeatable). Reports its CPU per call and VmRSS/VmHWM.
    #[arg(long = "pid")]
    pids: Vec<String>,
    /// Print one JSON object on stdout instead of text.
    #[arg(long)]
    json: bool,
    /// The message each call echoes.
    #[arg(long, default_value = "hello")]
    message: String,
    /// Call this tool instead of `echo`; any result that is not `isError` counts.
    #[arg(long)]
    tool: Option<String>,
    /// With --tool: its arguments, a JSON object.
    #[arg(long, default_value = "{}")]
    arguments: String,
    /// With --tool: extra `_meta` entries for every call, a JSON object (a tenant assertion
    /// when calling a shared server directly, for example).
    #[arg(long, default_value = "{}")]
    meta: String,
    /// Per-request timeout, in seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Load-generator runtime threads (1 = single-threaded runtime, the cheapest).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = if cli.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.threads)
            .enable_all()
            .build()
    };
    let result = match runtime {
        Ok(rt) => rt.block_on(run(cli)),
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bench-load: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn seconds(what: &str, secs: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(secs).with_context(|| format!("bad {what}: {secs}"))
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if cli.sessions == 0 {
        bail!("--sessions must be at least 1");
    }
    if cli.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        bail!("--rate must be a positive number");
    }
    let mut watched = Vec::new();
    for spec in &cli.pids {
        let w = Watched::parse(spec).map_err(anyhow::Error::msg)?;
        procstat::cpu_micros(w.pid).with_context(|| format!("cannot read /proc/{}", w.pid))?;
        watched.push(w);
    }
    let timeout = seconds("--timeout", cli.timeout)?;
    let call = match &cli.tool {
        None => mcp::ToolCall::echo(&cli.message),
        Some(tool) => {
            let arguments: serde_json::Value =
                serde_json::from_str(&cli.arguments).context("--arguments is not JSON")?;
            let serde_json::Value::Object(meta) =
                serde_json::from_str(&cli.meta).context("--meta is not JSON")?
            else {
                bail!("--meta must be a JSON object");
            };
            mcp::ToolCall::other(tool, &arguments, &meta)
        }
    };

    if let Some(cmd) = &cli.stdio_cmd {
        if cli.hold_sessions.is_some() {
            bail!("--hold-sessions needs --url");
        }
        let (mux, child) = stdio_client::spawn(cmd, timeout)?;
        if let Some(pid) = child.id() {
            watched.push(Watched {
                label: "upstream".into(),
                pid,
            });
        }
        mux.handshake(cli.era)
            .await
            .context("stdio handshake failed")?;
        let call = Arc::new(call);
        let callers: Vec<StdioCaller> = (0..cli.sessions)
            .map(|_| StdioCaller {
                mux: mux.clone(),
                era: cli.era,
                call: call.clone(),
            })
            .collect();
        let report = measure(&cli, format!("stdio:{cmd}"), "stdio", callers, watched).await?;
        drop(child);
        return print_report(&cli, &report);
    }

    let Some(url) = &cli.url else {
        bail!("give --url or --stdio-cmd");
    };
    let mut headers = Vec::new();
    for spec in &cli.headers {
        headers.push(http_client::parse_header(spec)?);
    }
    let cfg = Arc::new(Config {
        target: Target::parse(url)?,
        era: cli.era,
        headers,
        timeout,
        call,
    });
    if let Some(n) = cli.hold_sessions {
        return hold(&cli, cfg, n, watched).await;
    }
    let callers: Vec<HttpCaller> = (0..cli.sessions)
        .map(|_| HttpCaller::new(cfg.clone()))
        .collect();
    let report = measure(&cli, url.clone(), "http", callers, watched).await?;
    print_report(&cli, &report)
}

fn read_cpu(watched: &[Watched]) -> Vec<Option<u64>> {
    watched
        .iter()
        .map(|w| procstat::cpu_micros(w.pid).ok())
        .collect()
}

/// Runs every caller under one plan, reading the watched processes' CPU time at the edges of the
/// measured window.
async fn measure<C: Caller + Send + 'static>(
    cli: &Cli,
    target: String,
    transport: &'static str,
    callers: Vec<C>,
    mut watched: Vec<Watched>,
) -> anyhow::Result<Report> {
    watched.push(Watched {
        label: "bench-load".into(),
        pid: std::process::id(),
    });
    let warmup = seconds("--warmup", cli.warmup)?;
    let duration = seconds("--duration", cli.duration)?;
    let run_start = Instant::now();
    let start = run_start + warmup;
    let plan = Plan {
        run_start,
        start,
        end: cli.calls.is_none().then_some(start + duration),
        calls: cli.calls,
        interval: cli
            .rate
            .map(|rate| Duration::from_secs_f64(cli.sessions as f64 / rate)),
        sessions: cli.sessions,
    };
    let due_times = pacers(&plan).context("cannot start the pacer thread")?;
    let tasks: Vec<_> = callers
        .into_iter()
        .zip(due_times)
        .map(|(mut caller, due)| tokio::spawn(async move { drive(plan, &mut caller, due).await }))
        .collect();

    sleep_until(start).await;
    let cpu_before = read_cpu(&watched);
    let mut cpu_after = None;
    if let Some(end) = plan.end {
        sleep_until(end).await;
        cpu_after = Some(read_cpu(&watched));
    }
    let mut tally = Tally::new();
    for task in tasks {
        tally.merge(&task.await.context("a session task failed")?);
    }
    // The window runs to the end of the plan, or to the last measured answer if that came later
    // (closed loop: the calls in flight at the end; open loop: a target that fell behind).
    let planned = plan.end.map_or(Duration::ZERO, |end| end - start);
    let window = tally.last_done.map_or(planned, |done| {
        planned.max(done.saturating_duration_since(start))
    });
    let cpu_after = cpu_after.unwrap_or_else(|| read_cpu(&watched));
    let processes = watched
        .into_iter()
        .zip(cpu_before.into_iter().zip(cpu_after))
        .map(|(w, (before, after))| ProcessReport {
            cpu_micros: match (before, after) {
                (Some(b), Some(a)) => a.saturating_sub(b),
                _ => 0,
            },
            memory: procstat::memory(w.pid).unwrap_or_default(),
            label: w.label,
            pid: w.pid,
        })
        .collect();
    Ok(Report {
        target,
        transport,
        era: match cli.era {
            Era::Legacy => "legacy",
            Era::Modern => "modern",
        },
        sessions: cli.sessions,
        rate: cli.rate,
        warmup,
        window,
        tally,
        processes,
    })
}

fn print_report(cli: &Cli, report: &Report) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    if cli.json {
        writeln!(out, "{}", report.to_json())?;
    } else {
        write!(out, "{}", report.to_text())?;
    }
    out.flush()?;
    Ok(if report.tally.calls() == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// What one connection of the hold run established.
struct Held {
    conn: Option<Connection>,
    sessions: Vec<Session>,
    errors: Vec<CallError>,
}

async fn open_on_connection(cfg: Arc<Config>, count: usize) -> Held {
    let mut held = Held {
        conn: None,
        sessions: Vec::with_capacity(count),
        errors: Vec::new(),
    };
    let mut conn = match Connection::connect(&cfg.target, cfg.timeout).await {
        Ok(conn) => conn,
        Err(e) => {
            held.errors.extend(std::iter::repeat_n(e, count));
            return held;
        }
    };
    for _ in 0..count {
        let opened = match Session::start(&mut conn, &cfg).await {
            // One verified call, so the session is fully live end to end.
            Ok(mut session) => session.call(&mut conn, &cfg).await.map(|()| session),
            Err(e) => Err(e),
        };
        match opened {
            Ok(session) => held.sessions.push(session),
            Err(e) => held.errors.push(e),
        }
    }
    held.conn = Some(conn);
    held
}

/// Opens `n` legacy sessions, keeps them (and their connections) open, reports memory, waits.
async fn hold(
    cli: &Cli,
    cfg: Arc<Config>,
    n: usize,
    watched: Vec<Watched>,
) -> anyhow::Result<ExitCode> {
    if cfg.era != Era::Legacy {
        bail!("--hold-sessions opens legacy sessions; use --era legacy");
    }
    let conns = cli.hold_conns.unwrap_or(n).clamp(1, n.max(1));
    let before: Vec<Memory> = watched
        .iter()
        .map(|w| procstat::memory(w.pid).unwrap_or_default())
        .collect();
    let started = Instant::now();
    let limit = Arc::new(Semaphore::new(64));
    let tasks: Vec<_> = (0..conns)
        .map(|c| {
            let count = n / conns + usize::from(c < n % conns);
            let cfg = cfg.clone();
            let limit = limit.clone();
            tokio::spawn(async move {
                let _permit = limit.acquire_owned().await;
                open_on_connection(cfg, count).await
            })
        })
        .collect();
    let mut held = Vec::with_capacity(conns);
    let mut tally = Tally::new();
    for task in tasks {
        let h = task.await.context("a session task failed")?;
        for e in &h.errors {
            tally.error(e);
        }
        held.push(h);
    }
    let setup = started.elapsed();
    let opened: usize = held.iter().map(|h| h.sessions.len()).sum();
    let open_conns = held.iter().filter(|h| h.conn.is_some()).count();
    // Let the processes settle (allocator, deferred work) before reading memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let processes: Vec<_> = watched
        .iter()
        .zip(&before)
        .map(|(w, before)| {
            let after = procstat::memory(w.pid).unwrap_or_default();
            let per_session = if opened > 0 {
                (after.rss_kib as f64 - before.rss_kib as f64) / opened as f64
            } else {
                0.0
            };
            json!({
                "label": w.label,
                "pid": w.pid,
                "vm_rss_kib_before": before.rss_kib,
                "vm_rss_kib": after.rss_kib,
                "vm_hwm_kib": after.hwm_kib,
                "rss_kib_per_session": (per_session * 100.0).round() / 100.0,
            })
        })
        .collect();
    let mut out = std::io::stdout().lock();
    if cli.json {
        let v = json!({
            "target": cli.url,
            "mode": "hold",
            "requested": n,
            "sessions": opened,
            "connections": open_conns,
            "errors": tally.error_count(),
            "error_kinds": tally.errors,
            "error_messages": tally.messages,
            "setup_s": (setup.as_secs_f64() * 1000.0).round() / 1000.0,
            "processes": processes,
        });
        writeln!(out, "{v}")?;
    } else {
        writeln!(
            out,
            "holding {opened} of {n} legacy sessions on {open_conns} connections (setup {:.2}s, {} errors)",
            setup.as_secs_f64(),
            tally.error_count()
        )?;
        for msg in &tally.messages {
            writeln!(out, "  e.g. {msg}")?;
        }
        for p in &processes {
            writeln!(
                out,
                "{} (pid {}): VmRSS {:.1} MiB (before {:.1} MiB, {} KiB/session), VmHWM {:.1} MiB",
                p["label"].as_str().unwrap_or_default(),
                p["pid"],
                p["vm_rss_kib"].as_f64().unwrap_or_default() / 1024.0,
                p["vm_rss_kib_before"].as_f64().unwrap_or_default() / 1024.0,
                p["rss_kib_per_session"],
                p["vm_hwm_kib"].as_f64().unwrap_or_default() / 1024.0,
            )?;
        }
    }
    out.flush()?;
    drop(out);
    match cli.hold_secs {
        Some(secs) => {
            eprintln!("bench-load: holding for {secs}s");
            tokio::select! {
                _ = tokio::time::sleep(seconds("--hold-secs", secs)?) => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        None => {
            eprintln!("bench-load: holding; ctrl-c to release");
            tokio::signal::ctrl_c().await?;
        }
    }
    drop(held);
    Ok(if opened == n {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
