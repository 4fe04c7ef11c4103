#!/usr/bin/env python3
"""bench/limits.py: what a rate-limit check costs per tool call, in process and in Redis.

Starts `bench-echo http` and three release gateways in front of it, identical (audit off, so
the disk does not hide anything) but for rate limits: none; a tenant limit in process; the same
limit in Redis (REDIS_URL, default redis://127.0.0.1:6379, on loopback). The limit is far above
the load, so no call is refused: only the check is measured. ROUNDS times, the same open-loop
load (16 sessions, RATE calls/s) runs against each, back to back; the medians of p50 / p99 and
of the gateway's CPU per call are reported, with each check's cost against limits off.

Usage: python3 bench/limits.py [--rounds 3] [--rate 2000] [--duration 10]
"""

import argparse
import os
import subprocess
import sys
import tempfile

from audit import (ROOT, checked, cpu_per_call, load, median_over, start_echo, start_gateway,
                   stop)

LIMIT = """[rate_limits]
default_tier = "t"
{redis}
[rate_limits.tiers.t]
tenant = {{ per_second = 1000000, burst = 1000000 }}
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--sessions", type=int, default=16)
    ap.add_argument("--redis", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="palisade-limits-bench.")
    subprocess.run(["cargo", "build", "--release", "-p", "palisade", "-p", "palisade-bench"],
                   cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="limits-bench.", dir=os.path.join(ROOT, "target"))
    procs = []
    try:
        _, echo_url = start_echo(procs)
        gateways = {}
        for name, extra in (("off", ""),
                            ("local", LIMIT.format(redis="")),
                            ("redis", LIMIT.format(redis=f'redis_url = "{args.redis}"'))):
            proc, url, key = start_gateway(work, name, echo_url, audit=False, extra=extra)
            procs.append(proc)
            gateways[name] = (proc, url, key)
        rows = []
        for i in range(args.rounds):
            row = {}
            for name, (proc, url, key) in gateways.items():
                r = checked(name, load(args, out, f"{name}-{i}", url, key,
                                       [("gateway", proc.pid)]))
                row[name] = (r["latency_us"]["p50"], r["latency_us"]["p99"],
                             cpu_per_call(r, "gateway"))
            rows.append(row)
            print(f"round {i + 1}: " + ", ".join(
                f"{n} p50 {v[0]} us cpu {v[2]:.1f}" for n, v in row.items()), file=sys.stderr)
    finally:
        stop(procs)

    med = median_over(rows)

    print(f"\n{args.rounds} rounds, {args.sessions} sessions, {args.rate} calls/s, "
          f"{args.duration} s each; medians over rounds (µs)\n")
    print("| rate limits | p50 | p99 | p50 − off | gateway CPU per call | CPU − off |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in ("off", "local", "redis"):
        p50, p99, cpu = (med(lambda r, k=k: r[name][k]) for k in range(3))
        d50 = med(lambda r: r[name][0] - r["off"][0])
        dcpu = med(lambda r: r[name][2] - r["off"][2])
        print(f"| {name} | {p50:.1f} | {p99:.1f} | {d50:+.1f} | {cpu:.1f} | {dcpu:+.1f} |")
    print(f"\nraw results in {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
