#!/usr/bin/env python3
"""bench/neighbour.py: does a tenant flooding at ten times its quota slow another tenant down?

Starts `bench-echo http` and one release gateway in front of it with two tenants, `a` and `b`,
each limited to 50 calls/s (bursts of 10), the audit trail off (its fsync tail, tens of ms on
some disks, would swamp the p99s, which are about scheduling between tenants). ROUNDS times:
B calls at 25 calls/s (half its quota, one session) for DURATION s alone, then again while A
calls at 500 calls/s from five sessions. Reports B's p50 / p99 alone and beside the flood, the
ratio of the p99s, and the refusals: A's must be most of its calls, B's none.

This was a timed assertion in the test suite; the suite now checks only the refusals.

Usage: python3 bench/neighbour.py [--rounds 3] [--duration 8]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from audit import BIN, ROOT, Gateway, start_echo, stop

LIMITS = """[audit]
enabled = false
[rate_limits]
default_tier = "t"
[rate_limits.tiers.t]
tenant = { per_second = 50, burst = 10 }
"""


def bench_load(url, key, sessions, rate, duration):
    return subprocess.Popen(
        [os.path.join(BIN, "bench-load"), "--json", "--url", url, "--warmup", "1",
         "-H", f"Authorization: Bearer {key}", "--sessions", str(sessions),
         "--rate", str(rate), "--duration", str(duration),
         "--tool", "echo", "--arguments", '{"message": "hello"}'],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result(proc):
    out, err = proc.communicate()
    try:
        return json.loads(out)
    except ValueError:
        sys.exit(f"bench-load printed no result: {err[-2000:]}")


def refused(r):
    """Calls refused by a rate limit (-32029); other errors are counted apart."""
    return sum(n for kind, n in r.get("error_kinds", {}).items() if "-32029" in kind)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=8)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-p", "palisade", "-p", "palisade-bench"],
                   cwd=ROOT, check=True)
    procs = []
    rows = []
    try:
        _, echo_url = start_echo(procs)
        server = f'[[servers]]\nname = "echo"\n[servers.http]\nurl = "{echo_url}"\n'
        gw = Gateway(tempfile.mkdtemp(prefix="palisade-neighbour-"), server, ["a", "b"],
                     extra=LIMITS, namespacing=False)
        procs.append(gw.proc)
        for i in range(args.rounds):
            alone = result(bench_load(gw.url, gw.keys["b"], 1, 25, args.duration))
            flood = bench_load(gw.url, gw.keys["a"], 5, 500, args.duration + 2)
            beside = result(bench_load(gw.url, gw.keys["b"], 1, 25, args.duration))
            a = result(flood)
            row = {
                "alone_p50": alone["latency_us"]["p50"], "alone_p99": alone["latency_us"]["p99"],
                "beside_p50": beside["latency_us"]["p50"],
                "beside_p99": beside["latency_us"]["p99"],
                "b_refused": refused(alone) + refused(beside),
                "b_other_errors": alone["errors"] + beside["errors"] - refused(alone)
                - refused(beside),
                "a_calls": a["calls"] + a["errors"], "a_refused": refused(a),
            }
            rows.append(row)
            print(f"round {i + 1}: {row}", file=sys.stderr)
    finally:
        stop(procs)
    med = lambda k: statistics.median(r[k] for r in rows)  # noqa: E731
    print(f"\n{args.rounds} rounds of {args.duration:g} s; medians (µs)\n")
    print("| B at 25 calls/s | p50 | p99 |")
    print("|---|---:|---:|")
    print(f"| alone | {med('alone_p50'):.0f} | {med('alone_p99'):.0f} |")
    print(f"| beside A at 500 calls/s | {med('beside_p50'):.0f} | {med('beside_p99'):.0f} |")
    print(f"\nB's p99 beside the flood / alone: {med('beside_p99') / med('alone_p99'):.2f}; "
          f"A refused {med('a_refused'):.0f} of {med('a_calls'):.0f} calls; "
          f"B refused {sum(r['b_refused'] for r in rows)} in all, "
          f"other errors of B {sum(r['b_other_errors'] for r in rows)}")


if __name__ == "__main__":
    main()
