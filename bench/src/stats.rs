//! Latency histograms, error counts and the report `bench-load` prints (text or one JSON object).
//!
//! Each session records into its own histogram (nanoseconds, 3 significant digits) with no
//! locking; the histograms are merged when the run ends. Only successful calls are samples;
//! errors are counted by kind, with the first few messages kept for the report.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::mcp::CallError;
use crate::procstat::Memory;

/// How many distinct error messages a run keeps for the report.
const KEPT_MESSAGES: usize = 5;

/// What one session (or the whole run, after merging) measured.
pub struct Tally {
    /// Successful call latencies, in nanoseconds.
    pub latency: Histogram<u64>,
    /// Errors by [`CallError::kind`].
    pub errors: BTreeMap<String, u64>,
    /// The first few error messages.
    pub messages: Vec<String>,
    /// When the last measured call finished.
    pub last_done: Option<Instant>,
}

impl Default for Tally {
    fn default() -> Self {
        Self::new()
    }
}

impl Tally {
    /// An empty tally (latencies from 1 ns to 1 hour).
    pub fn new() -> Tally {
        Tally {
            latency: Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
                .expect("constant histogram bounds are valid"),
            errors: BTreeMap::new(),
            messages: Vec::new(),
            last_done: None,
        }
    }

    /// Notes when a measured call finished.
    pub fn done(&mut self, at: Instant) {
        self.last_done = self.last_done.max(Some(at));
    }

    /// Records one successful call.
    pub fn ok(&mut self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.latency.saturating_record(nanos);
    }

    /// Records one failed call.
    pub fn error(&mut self, err: &CallError) {
        *self.errors.entry(err.kind()).or_default() += 1;
        let msg = err.to_string();
        if self.messages.len() < KEPT_MESSAGES && !self.messages.contains(&msg) {
            self.messages.push(msg);
        }
    }

    /// Number of successful calls.
    pub fn calls(&self) -> u64 {
        self.latency.len()
    }

    /// Number of failed calls.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Adds another session's tally into this one.
    pub fn merge(&mut self, other: &Tally) {
        // Both histograms have the same bounds, so adding cannot fail; ignore defensively.
        let _ = self.latency.add(&other.latency);
        for (kind, n) in &other.errors {
            *self.errors.entry(kind.clone()).or_default() += n;
        }
        self.last_done = self.last_done.max(other.last_done);
        for msg in &other.messages {
            if self.messages.len() < KEPT_MESSAGES && !self.messages.contains(msg) {
                self.messages.push(msg.clone());
            }
        }
    }

    /// Latency at quantile `q`, in microseconds.
    pub fn micros_at(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }
}

/// CPU and memory of one watched process over the measured window.
pub struct ProcessReport {
    pub label: String,
    pub pid: u32,
    /// CPU time (user + system) spent in the window, in microseconds.
    pub cpu_micros: u64,
    pub memory: Memory,
}

/// Everything a measurement run reports.
pub struct Report {
    pub target: String,
    pub transport: &'static str,
    pub era: &'static str,
    pub sessions: usize,
    /// Open-loop total rate, if any (closed loop otherwise).
    pub rate: Option<f64>,
    pub warmup: Duration,
    /// Length of the measured window.
    pub window: Duration,
    pub tally: Tally,
    pub processes: Vec<ProcessReport>,
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

impl Report {
    /// Successful calls per second over the window.
    pub fn throughput(&self) -> f64 {
        let secs = self.window.as_secs_f64();
        if secs > 0.0 {
            self.tally.calls() as f64 / secs
        } else {
            0.0
        }
    }

    fn cpu_per_call(&self, p: &ProcessReport) -> Option<f64> {
        let calls = self.tally.calls() + self.tally.error_count();
        (calls > 0).then(|| p.cpu_micros as f64 / calls as f64)
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> Value {
        let t = &self.tally;
        let latency = if t.calls() > 0 {
            json!({
                "p50": round1(t.micros_at(0.50)),
                "p90": round1(t.micros_at(0.90)),
                "p95": round1(t.micros_at(0.95)),
                "p99": round1(t.micros_at(0.99)),
                "p99_9": round1(t.micros_at(0.999)),
                "max": round1(t.latency.max() as f64 / 1000.0),
                "mean": round1(t.latency.mean() / 1000.0),
            })
        } else {
            Value::Null
        };
        let window = self.window.as_secs_f64();
        let processes: Vec<Value> = self
            .processes
            .iter()
            .map(|p| {
                json!({
                    "label": p.label,
                    "pid": p.pid,
                    "cpu_us": p.cpu_micros,
                    "cpu_us_per_call": self.cpu_per_call(p).map(round1),
                    "cpu_cores": if window > 0.0 {
                        (p.cpu_micros as f64 / 1e6 / window * 1000.0).round() / 1000.0
                    } else { 0.0 },
                    "vm_rss_kib": p.memory.rss_kib,
                    "vm_hwm_kib": p.memory.hwm_kib,
                })
            })
            .collect();
        json!({
            "target": self.target,
            "transport": self.transport,
            "era": self.era,
            "sessions": self.sessions,
            "mode": if self.rate.is_some() { "open" } else { "closed" },
            "rate": self.rate,
            "warmup_s": self.warmup.as_secs_f64(),
            "window_s": (window * 1000.0).round() / 1000.0,
            "calls": t.calls(),
            "errors": t.error_count(),
            "error_kinds": t.errors,
            "error_messages": t.messages,
            "throughput": round1(self.throughput()),
            "latency_us": latency,
            "processes": processes,
        })
    }

    /// The report as a few human-readable lines.
    pub fn to_text(&self) -> String {
        let t = &self.tally;
        let mut out = format!(
            "{} ({}, {} era, {} sessions, {}) window {:.1}s after {:.1}s warmup\n",
            self.target,
            self.transport,
            self.era,
            self.sessions,
            match self.rate {
                Some(r) => format!("open loop {r} calls/s"),
                None => "closed loop".into(),
            },
            self.window.as_secs_f64(),
            self.warmup.as_secs_f64(),
        );
        out += &format!(
            "calls {}  errors {}  throughput {:.1} calls/s\n",
            t.calls(),
            t.error_count(),
            self.throughput()
        );
        if t.calls() > 0 {
            out += &format!(
                "latency us: p50 {:.1}  p90 {:.1}  p95 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  mean {:.1}\n",
                t.micros_at(0.50),
                t.micros_at(0.90),
                t.micros_at(0.95),
                t.micros_at(0.99),
                t.micros_at(0.999),
                t.latency.max() as f64 / 1000.0,
                t.latency.mean() / 1000.0,
            );
        }
        for (kind, n) in &t.errors {
            out += &format!("errors {kind}: {n}\n");
        }
        for msg in &t.messages {
            out += &format!("  e.g. {msg}\n");
        }
        for p in &self.processes {
            out += &format!(
                "{} (pid {}): cpu {} us/call, {:.2} cores; VmRSS {:.1} MiB, VmHWM {:.1} MiB\n",
                p.label,
                p.pid,
                self.cpu_per_call(p)
                    .map_or_else(|| "-".into(), |c| format!("{c:.1}")),
                if self.window.as_secs_f64() > 0.0 {
                    p.cpu_micros as f64 / 1e6 / self.window.as_secs_f64()
                } else {
                    0.0
                },
                p.memory.rss_kib as f64 / 1024.0,
                p.memory.hwm_kib as f64 / 1024.0,
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_and_report() {
        let mut a = Tally::new();
        let mut b = Tally::new();
        for us in 1..=100u64 {
            a.ok(Duration::from_micros(us));
        }
        b.ok(Duration::from_micros(1000));
        b.error(&CallError::Status(503));
        b.error(&CallError::Status(503));
        a.merge(&b);
        assert_eq!(a.calls(), 101);
        assert_eq!(a.error_count(), 2);
        assert_eq!(a.errors.get("http 503"), Some(&2));
        assert_eq!(a.messages.len(), 1);
        let report = Report {
            target: "t".into(),
            transport: "http",
            era: "legacy",
            sessions: 2,
            rate: None,
            warmup: Duration::ZERO,
            window: Duration::from_secs(1),
            tally: a,
            processes: vec![ProcessReport {
                label: "x".into(),
                pid: 1,
                cpu_micros: 10_300,
                memory: Memory::default(),
            }],
        };
        let v = report.to_json();
        assert_eq!(v["calls"], 101);
        assert_eq!(v["throughput"], 101.0);
        assert_eq!(v["latency_us"]["p50"], 51.0);
        let max = v["latency_us"]["max"].as_f64().unwrap_or_default();
        assert!(
            (max - 1000.0).abs() <= 1.0,
            "max {max} within HDR precision"
        );
        assert_eq!(v["processes"][0]["cpu_us_per_call"], 100.0);
        assert!(report.to_text().contains("p99"));
    }
}
