#!/usr/bin/env python3
"""bench/dedicated.py: what dedicated placement costs.

Starts the release gateway with two dedicated servers running `bench-echo stdio` (a small Rust
stdio server): `echo`, sandboxed with the default `[servers.sandbox]` profile, and `plain`,
not sandboxed; TENANTS tenants on `echo` and COLD more on `plain`. Then:

  cold start   the time of a tenant's first request (`initialize`, which starts the tenant's
               process: spawn + sandbox + MCP handshake + the gateway's own work), sandboxed and
               not, interleaved, against spawn + handshake done directly (no gateway) in the same
               run: the sandbox's share is sandboxed − plain;
  memory       the gateway's RSS with every tenant's process running, minus its RSS before any
               started, per tenant (children excluded; their RSS is reported beside);
  idle reaping after idle_secs without calls, the number of processes left.

Usage: python3 bench/dedicated.py [--tenants 1000] [--idle-secs 5] [--cold 200]
Prints a markdown summary and writes the raw numbers as JSON to --out (default /tmp).
"""

import argparse
import hashlib
import hmac
import http.client
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid):
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return out


def pct(values, q):
    values = sorted(values)
    if not values:
        return float("nan")
    i = min(len(values) - 1, max(0, int(round(q * (len(values) - 1)))))
    return values[i]


INIT = json.dumps({
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {},
               "clientInfo": {"name": "bench-dedicated", "version": "1"}},
})


def direct_cold_start():
    """Spawn bench-echo stdio and complete the handshake, as the gateway would (no sandbox)."""
    t = time.perf_counter()
    p = subprocess.Popen([os.path.join(BIN, "bench-echo"), "stdio"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, env={"PATH": "/usr/bin:/bin"})
    p.stdin.write(INIT.encode() + b"\n")
    p.stdin.flush()
    p.stdout.readline()
    elapsed = time.perf_counter() - t
    p.stdin.close()
    p.wait()
    return elapsed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tenants", type=int, default=1000)
    ap.add_argument("--cold", type=int, default=200, help="tenants timed for cold start")
    ap.add_argument("--idle-secs", type=int, default=20,
                    help="longer than starting every tenant's process takes")
    ap.add_argument("--out", default=tempfile.gettempdir())
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="palisade-bench-dedicated.")
    pepper = secrets.token_hex(32)
    with open(os.path.join(work, "pepper"), "w") as f:
        f.write(pepper)
    mcp, admin = free_port(), free_port()
    keys = {}
    lines = [
        f'[listen]\nmcp = "127.0.0.1:{mcp}"\nadmin = "127.0.0.1:{admin}"\nmax_connections = 20000\n',
        f'[auth]\npepper_file = "{work}/pepper"\n',
        f'[limits]\nmax_sessions_per_tenant = 100\n',
        f'[[servers]]\nname = "echo"\nplacement = "dedicated"\nidle_secs = {args.idle_secs}\n'
        f'protocol = "legacy"\n[servers.stdio]\ncommand = "{BIN}/bench-echo"\nargs = ["stdio"]\n'
        f'[servers.sandbox]\n',
        f'[[servers]]\nname = "plain"\nplacement = "dedicated"\nidle_secs = {args.idle_secs}\n'
        f'protocol = "legacy"\n[servers.stdio]\ncommand = "{BIN}/bench-echo"\nargs = ["stdio"]\n',
    ]
    tenants = [(f"t{i}", "echo") for i in range(args.tenants)]
    tenants += [(f"u{i}", "plain") for i in range(args.cold)]
    for tid, server in tenants:
        key = f"pal_{tid}_{secrets.token_urlsafe(32)}"
        keys[tid] = key
        digest = hmac.new(pepper.encode(), key.encode(), hashlib.sha256).hexdigest()
        lines.append(f'[[tenants]]\nid = "{tid}"\nservers = ["{server}"]\nnamespacing = false\n'
                     f'keys = ["hmac-sha256:{digest}"]\n')
    conf = os.path.join(work, "palisade.toml")
    with open(conf, "w") as f:
        f.write("\n".join(lines))
    gw = subprocess.Popen([os.path.join(BIN, "palisade"), "serve", "--config", conf],
                          stdout=subprocess.PIPE, stderr=open(os.path.join(work, "gateway.log"), "w"))
    try:
        gw.stdout.readline()  # "palisade listening …"
        time.sleep(1.0)
        rss_before = rss_kib(gw.pid)
        conn = http.client.HTTPConnection("127.0.0.1", mcp)

        def first_request(tid):
            t = time.perf_counter()
            conn.request("POST", "/mcp", INIT, {
                "Authorization": f"Bearer {keys[tid]}", "Content-Type": "application/json",
                "Accept": "application/json, text/event-stream"})
            r = conn.getresponse()
            body = r.read()
            if r.status != 200:
                sys.exit(f"{tid}: HTTP {r.status} {body[:200]!r}")
            return time.perf_counter() - t

        # Cold start, sandboxed and not, interleaved with the direct path: all see the same
        # machine.
        gw_cold, plain_cold, direct = [], [], []
        for i in range(args.cold):
            gw_cold.append(first_request(f"t{i}"))
            plain_cold.append(first_request(f"u{i}"))
            direct.append(direct_cold_start())

        # Warm: the same tenants again (their processes run).
        warm = [first_request(f"t{i}") for i in range(args.cold)]
        # Every other tenant's process.
        for i in range(args.cold, args.tenants):
            first_request(f"t{i}")
        time.sleep(0.5)
        kids = children(gw.pid)
        rss_all = rss_kib(gw.pid)
        child_rss = [rss_kib(c) for c in kids]
        # Idle reaping.
        t = time.perf_counter()
        deadline = t + args.idle_secs + 30
        while children(gw.pid) and time.perf_counter() < deadline:
            time.sleep(0.25)
        reaped_after = time.perf_counter() - t
        left = len(children(gw.pid))
        rss_after_reap = rss_kib(gw.pid)
    finally:
        gw.terminate()
        gw.wait(timeout=30)

    ms = lambda v: v * 1000.0
    res = {
        "tenants": args.tenants, "cold_timed": args.cold, "idle_secs": args.idle_secs,
        "gateway_cold_ms": {"p50": ms(pct(gw_cold, .5)), "p90": ms(pct(gw_cold, .9)), "p99": ms(pct(gw_cold, .99))},
        "gateway_cold_unsandboxed_ms": {"p50": ms(pct(plain_cold, .5)), "p90": ms(pct(plain_cold, .9)), "p99": ms(pct(plain_cold, .99))},
        "direct_cold_ms": {"p50": ms(pct(direct, .5)), "p90": ms(pct(direct, .9)), "p99": ms(pct(direct, .99))},
        "warm_ms": {"p50": ms(pct(warm, .5)), "p99": ms(pct(warm, .99))},
        "processes_running": len(kids),
        "gateway_rss_kib_before": rss_before, "gateway_rss_kib_all_running": rss_all,
        "gateway_kib_per_tenant": (rss_all - rss_before) / max(1, len(kids)),
        "child_rss_kib_median": statistics.median(child_rss) if child_rss else None,
        "child_rss_mib_total": sum(child_rss) / 1024.0,
        "processes_left_after_idle": left, "reaped_within_s": reaped_after,
        "gateway_rss_kib_after_reap": rss_after_reap,
    }
    out = os.path.join(args.out, "dedicated.json")
    with open(out, "w") as f:
        json.dump(res, f, indent=2)
    g, u, d = res["gateway_cold_ms"], res["gateway_cold_unsandboxed_ms"], res["direct_cold_ms"]
    print(f"## Dedicated placement ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores)\n")
    print("| | p50 ms | p90 ms | p99 ms |\n|---|---:|---:|---:|")
    print(f"| cold start through the gateway, sandboxed (first `initialize`: spawn + sandbox + handshake + gateway) | {g['p50']:.2f} | {g['p90']:.2f} | {g['p99']:.2f} |")
    print(f"| cold start through the gateway, no sandbox | {u['p50']:.2f} | {u['p90']:.2f} | {u['p99']:.2f} |")
    print(f"| the sandbox's share (sandboxed − no sandbox) | {g['p50'] - u['p50']:+.2f} | {g['p90'] - u['p90']:+.2f} | {g['p99'] - u['p99']:+.2f} |")
    print(f"| spawn + handshake directly, same server, no gateway | {d['p50']:.2f} | {d['p90']:.2f} | {d['p99']:.2f} |")
    print(f"| warm (process running) | {res['warm_ms']['p50']:.2f} | | {res['warm_ms']['p99']:.2f} |")
    print()
    print(f"- target cold start p50 ≤ 15 ms: {g['p50']:.2f} ms {'pass' if g['p50'] <= 15 else 'FAIL'}; "
          f"p99 ≤ 40 ms: {g['p99']:.2f} ms {'pass' if g['p99'] <= 40 else 'FAIL'}")
    print(f"- {res['processes_running']} processes running ({args.tenants} sandboxed, {args.cold} not): gateway RSS {rss_before/1024:.1f} → {rss_all/1024:.1f} MiB, "
          f"{res['gateway_kib_per_tenant']:.1f} KiB per tenant "
          f"({'pass' if res['gateway_kib_per_tenant'] * 1024 <= 100_000 else 'FAIL'} against ≤ 100 KB); "
          f"children {res['child_rss_mib_total']:.0f} MiB in all, median {res['child_rss_kib_median']} KiB each")
    print(f"- idle reaping (idle_secs = {args.idle_secs}): {left} processes left after {reaped_after:.1f} s "
          f"({'pass' if left == 0 else 'FAIL'} against the configured minimum of 0); gateway RSS then {rss_after_reap/1024:.1f} MiB")
    print(f"\nraw: {out}; gateway log: {work}/gateway.log")


if __name__ == "__main__":
    main()
