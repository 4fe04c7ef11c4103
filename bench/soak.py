#!/usr/bin/env python3
"""bench/soak.py: mixed traffic for a long time, then rest: does the gateway come back to where
it started?

Starts `bench-echo http` and one release gateway with the defaults a user gets (audit trail on,
API keys), three tenants and three servers: `echo` (bench-echo, shared, HTTP), `kit` (the
testkit, shared, stdio) and `kitd` (the testkit, dedicated to each tenant, stopped after 30 s
unused). Legacy sessions idle for 60 s are closed.

Traffic, in back-to-back rounds of about 20 s until --minutes are up, all at once within a
round:
  - acme, legacy era: echo at 200 calls/s for 20 s (16 sessions);
  - globex, 2026-07-28 era: echo at 200 calls/s for 20 s;
  - initech: its dedicated kitd at 30 calls/s for 20 s (its process starts, then idles out);
  - acme: kit's `progress` (50 notifications per call) at 20 calls/s for 10 s;
  - globex: kit's `slow` (5 s) with a 0.5 s client timeout, 5 calls/s for 10 s: every call is
    abandoned by its client and cancelled upstream;
  - initech: 200 legacy sessions opened and abandoned (never deleted);
  - every fifth round (about every 2 minutes), kit crashes (tool `crash`) and is restarted by
    the gateway.
Then no traffic until the sessions and dedicated processes are gone (at most --rest seconds).

Sampled every 10 s from /proc and /metrics: the gateway's RSS and open files, open sessions,
tasks alive in its runtime, dedicated instances, and kit's restarts. The baseline is taken after
one warm-up round and its rest; the run passes if at the end sessions and instances are back to
0, tasks and open files at most a few above the baseline, and RSS within 25% or 16 MiB of it.

Usage: python3 bench/soak.py [--minutes 30] [--rest 300] [--out DIR]
Writes samples.csv to --out and prints a markdown summary with the curves (one row a minute).
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

from audit import BIN, ROOT, Gateway, start_echo, stop

TESTKIT = os.path.join(ROOT, "target", "release", "palisade-testkit")


def metrics(admin):
    with urllib.request.urlopen(f"{admin}/metrics", timeout=10) as r:
        text = r.read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        series, value = line.rsplit(" ", 1)
        try:
            values[series] = float(value)
        except ValueError:
            pass
    return values


def sample(pid, admin, started):
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    m = metrics(admin)
    restarts = sum(v for k, v in m.items() if k.startswith("palisade_upstream_restarts_total"))
    return {
        "t": round(time.time() - started),
        "rss_kib": rss,
        "open_files": len(os.listdir(f"/proc/{pid}/fd")),
        "sessions": int(m.get("palisade_sessions_active", 0)),
        "tasks": int(m.get("palisade_runtime_tasks", 0)),
        # Dedicated instances with a process (an idle one has none).
        "instances": int(sum(v for k, v in m.items()
                             if k.startswith("palisade_dedicated_instances")
                             and 'state="idle"' not in k)),
        "restarts": int(restarts),
    }


class Sampler(threading.Thread):
    """Samples every 10 s into `rows` until stopped."""

    def __init__(self, pid, admin, started):
        super().__init__(daemon=True)
        self.pid, self.admin, self.started = pid, admin, started
        self.rows, self.stopped = [], threading.Event()

    def run(self):
        while not self.stopped.is_set():
            self.rows.append(sample(self.pid, self.admin, self.started))
            self.stopped.wait(10)


def bench_load(url, key, *args):
    """Starts bench-load (its errors are expected for the abandoned and crashing calls)."""
    cmd = [os.path.join(BIN, "bench-load"), "--json", "--url", url, "--warmup", "0",
           "-H", f"Authorization: Bearer {key}", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def call_once(url, key, tool, arguments):
    """One legacy-era session that calls `tool` once; errors are ignored (a crash answers
    with one)."""
    def post(body, session=None):
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json",
                   "Accept": "application/json, text/event-stream"}
        if session:
            headers["Mcp-Session-Id"] = session
        req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                r.read()
                return r.headers.get("Mcp-Session-Id")
        except urllib.error.URLError:
            return None
    session = post({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "soak", "version": "1"}}})
    post({"jsonrpc": "2.0", "method": "notifications/initialized"}, session)
    post({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
          "params": {"name": tool, "arguments": arguments}}, session)


ECHO = ["--tool", "echo__echo", "--arguments", '{"message": "hello"}']


def round_of_traffic(url, keys, n):
    a, g, i = keys["acme"], keys["globex"], keys["initech"]
    procs = [
        bench_load(url, a, "--era", "legacy", "--sessions", "16", "--rate", "200",
                   "--duration", "20", *ECHO),
        bench_load(url, g, "--era", "modern", "--sessions", "16", "--rate", "200",
                   "--duration", "20", *ECHO),
        bench_load(url, i, "--sessions", "4", "--rate", "30", "--duration", "20",
                   "--tool", "kitd__echo", "--arguments", '{"message": "x"}'),
        bench_load(url, a, "--sessions", "4", "--rate", "20", "--duration", "10",
                   "--tool", "kit__progress", "--arguments", '{"steps": 50}',
                   "--meta", '{"progressToken": "p"}'),
        bench_load(url, g, "--sessions", "4", "--rate", "5", "--duration", "10",
                   "--tool", "kit__slow", "--arguments", '{"ms": 5000}', "--timeout", "0.5"),
        bench_load(url, i, "--hold-sessions", "200", "--hold-conns", "20", "--hold-secs", "5"),
    ]
    if n % 5 == 4:
        call_once(url, a, "kit__crash", {})
    calls = 0
    for p in procs:
        out, err = p.communicate()
        try:
            calls += json.loads(out).get("calls", 0)
        except ValueError:
            pass
    return calls


def settle(sampler, rest):
    """Waits until sessions and instances are gone (at most `rest` s); returns the sample."""
    deadline = time.time() + rest
    while True:
        last = sample(sampler.pid, sampler.admin, sampler.started)
        if (last["sessions"] == 0 and last["instances"] == 0) or time.time() > deadline:
            return last
        time.sleep(5)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--rest", type=float, default=300)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="palisade-soak-")
    os.makedirs(out, exist_ok=True)
    for b in ["palisade", "bench-load", "bench-echo", "palisade-testkit"]:
        if not os.path.exists(os.path.join(BIN, b)):
            sys.exit(f"missing {b}: cargo build --release -p palisade -p palisade-bench "
                     "-p testkit")
    procs = []
    work = tempfile.mkdtemp(prefix="palisade-soak-gw-")
    _, echo_url = start_echo(procs)
    servers = f"""[[servers]]
name = "echo"
[servers.http]
url = "{echo_url}"

[[servers]]
name = "kit"
[servers.stdio]
command = "{TESTKIT}"
args = ["stdio"]

[[servers]]
name = "kitd"
placement = "dedicated"
idle_secs = 30
[servers.stdio]
command = "{TESTKIT}"
args = ["stdio"]
"""
    gw = Gateway(work, servers, ["acme", "globex", "initech"],
                 extra="[limits]\nsession_idle_secs = 60\n")
    procs.append(gw.proc)
    url, keys, admin = gw.url, gw.keys, gw.admin
    started = time.time()
    sampler = Sampler(gw.pid, admin, started)
    try:
        round_of_traffic(url, keys, 0)
        base = settle(sampler, args.rest)
        print(f"baseline after a warm-up round: {base}", file=sys.stderr)
        sampler.start()
        calls, n = 0, 1
        soak_end = time.time() + args.minutes * 60
        while time.time() < soak_end:
            calls += round_of_traffic(url, keys, n)
            n += 1
        traffic_end = round(time.time() - started)
        settle(sampler, args.rest)
        sampler.stopped.set()
        sampler.join()
        end = sample(gw.pid, admin, started)
        sampler.rows.append(end)
    finally:
        stop(procs)

    with open(os.path.join(out, "samples.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(base.keys()))
        w.writeheader()
        w.writerows(sampler.rows)
    checks = {
        "sessions back to 0": end["sessions"] == 0,
        "instances back to 0": end["instances"] == 0,
        "tasks back to baseline (at most 5 more)": end["tasks"] <= base["tasks"] + 5,
        "open files back to baseline (at most 3 more)":
            end["open_files"] <= base["open_files"] + 3,
        "RSS within 25% or 16 MiB of baseline":
            end["rss_kib"] <= max(base["rss_kib"] * 1.25, base["rss_kib"] + 16384),
    }
    peak = {k: max(r[k] for r in sampler.rows) for k in base if k != "t"}
    print(f"## Soak: {args.minutes:g} minutes, {n - 1} rounds, {calls} measured calls; "
          f"traffic ended at {traffic_end} s\n")
    print("| | RSS (MiB) | open files | sessions | tasks | instances | kit restarts |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, r in [("baseline", base), ("peak", peak), ("end", end)]:
        print(f"| {label} | {r['rss_kib'] / 1024:.1f} | {r['open_files']} | {r['sessions']} | "
              f"{r['tasks']} | {r['instances']} | {r['restarts']} |")
    print("\nCurves (one sample a minute):\n")
    print("| t (s) | RSS (MiB) | open files | sessions | tasks | instances | kit restarts |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    last_minute = -1
    for r in sampler.rows:
        if r["t"] // 60 != last_minute or r is sampler.rows[-1]:
            last_minute = r["t"] // 60
            print(f"| {r['t']} | {r['rss_kib'] / 1024:.1f} | {r['open_files']} | "
                  f"{r['sessions']} | {r['tasks']} | {r['instances']} | {r['restarts']} |")
    print()
    for name, ok in checks.items():
        print(f"- {name}: {'yes' if ok else 'NO'}")
    print(f"\nsamples: {out}/samples.csv")
    sys.exit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
