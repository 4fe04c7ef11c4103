#!/usr/bin/env python3
"""bench/sql.py: `query_database` of a 100-row result, through the gateway in shared placement
against calling palisade-sql directly.

Writes the sample SQLite databases (`palisade-sql migrate`), then starts a release gateway
(default settings: audit trail on) whose upstream `echo` is palisade-sql over stdio in shared
placement, on acme's data, told the tenant by the gateway's assertion (verified against the
gateway's JWKS URL), and palisade-sql over HTTP on its own. ROUNDS times, the same open-loop load
(SESSIONS sessions, RATE calls/s, `SELECT * FROM orders ORDER BY id LIMIT 100`) runs against:

  direct stdio   bench-load drives `palisade-sql serve` on its stdio, with an assertion minted
                 by `bench-assert mint` in `_meta` (the same verification work per call);
  direct HTTP    the same over Streamable HTTP, the assertion as `Authorization: Bearer`;
  gateway        HTTP to the gateway, which authenticates, audits, mints an assertion and
                 relays to palisade-sql over stdio.

Reports medians over rounds of p50 / p99, the gateway's added latency against each direct
path, and the CPU per call of the gateway and of palisade-sql. Then runs `bench-assert`: the
minting and verification of one assertion, in process.

Usage: python3 bench/sql.py [--rounds 3] [--rate 200] [--duration 10] [--sessions 4]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

from audit import (BIN, ROOT, checked, cpu_per_call, load, median_over, start_gateway, stop,
                   wait_port)
from dedicated import children, free_port

QUERY = {"sql": "SELECT * FROM orders ORDER BY id LIMIT 100"}


def mint(directory):
    """A fresh assertion for acme (60 s), and the JWKS file that verifies it."""
    token = subprocess.run([os.path.join(BIN, "bench-assert"), "mint", directory],
                           check=True, capture_output=True, text=True).stdout.strip()
    return token, os.path.join(directory, "jwks.json")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=int, default=200)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="palisade-sql-bench.")
    subprocess.run(["cargo", "build", "--release", "-p", "palisade", "-p", "palisade-sql",
                    "-p", "palisade-bench"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="sql-bench.", dir=os.path.join(ROOT, "target"))
    db = os.path.join(work, "db")
    sql_bin = os.path.join(BIN, "palisade-sql")
    # acme for the direct paths, bench for the gateway's tenant: the same rows but their ids.
    subprocess.run([sql_bin, "migrate", "--sqlite-dir", db, "--tenants", "acme,bench"],
                   check=True, stdout=subprocess.DEVNULL)
    keys = os.path.join(work, "direct")
    _, jwks = mint(keys)
    tool = ["--tool", "query_database", "--arguments", json.dumps(QUERY)]
    procs = []
    try:
        port = free_port()
        server = f"""[[servers]]
name = "echo"
placement = "shared"
[servers.stdio]
command = "{sql_bin}"
args = ["serve", "--placement", "shared", "--audience", "echo", "--sqlite-dir", "{db}",
        "--jwks-url", "http://127.0.0.1:{port}/.well-known/jwks.json"]
"""
        gw, gw_url, key = start_gateway(work, "gateway", None, audit=True, server=server,
                                        port=port)
        procs.append(gw)
        sql_pids = children(gw.pid)
        web_port = free_port()
        web = subprocess.Popen([sql_bin, "serve", "--http", f"127.0.0.1:{web_port}",
                                "--placement", "shared", "--audience", "sql", "--sqlite-dir", db,
                                "--jwks-file", jwks], stdout=subprocess.DEVNULL)
        procs.append(web)
        wait_port(web_port, web, "palisade-sql --http")
        rows = []
        for i in range(args.rounds):
            token, _ = mint(keys)
            direct_cmd = (f"{sql_bin} serve --placement shared --audience sql --sqlite-dir {db} "
                          f"--jwks-file {jwks}")
            runs = {
                "direct stdio": load(args, out, f"stdio-{i}", None, extra=[
                    "--stdio-cmd", direct_cmd, *tool,
                    "--meta", json.dumps({"io.palisade/tenant": token})]),
                "direct HTTP": load(args, out, f"http-{i}", f"http://127.0.0.1:{web_port}/mcp",
                                    token, [("sql", web.pid)], extra=tool),
                "gateway": load(args, out, f"gateway-{i}", gw_url, key,
                                [("gateway", gw.pid)] + [("sql", p) for p in sql_pids],
                                extra=tool),
            }
            row = {}
            for name, r in runs.items():
                checked(name, r)
                cpu_sql = cpu_per_call(r, "sql" if name != "direct stdio" else "upstream")
                row[name] = (r["latency_us"]["p50"], r["latency_us"]["p99"],
                             cpu_per_call(r, "gateway"), cpu_sql)
            rows.append(row)
            print(f"round {i + 1}: " + ", ".join(
                f"{n} p50 {v[0]} us" for n, v in row.items()), file=sys.stderr)
    finally:
        stop(procs)

    med = median_over(rows)

    print(f"\n{args.rounds} rounds, {args.sessions} sessions, {args.rate} calls/s, "
          f"{args.duration} s each; query_database returning 100 rows; medians over rounds (µs)\n")
    print("| path | p50 | p99 | gateway CPU per call | palisade-sql CPU per call |")
    print("|---|---:|---:|---:|---:|")
    for name in ("direct stdio", "direct HTTP", "gateway"):
        p50, p99, cpu_gw, cpu_sql = (med(lambda r, k=k: r[name][k]) for k in range(4))
        gw_cpu = f"{cpu_gw:.1f}" if name == "gateway" else "–"
        print(f"| {name} | {p50:.1f} | {p99:.1f} | {gw_cpu} | {cpu_sql:.1f} |")
    for base in ("direct stdio", "direct HTTP"):
        d50 = med(lambda r: r["gateway"][0] - r[base][0])
        d99 = med(lambda r: r["gateway"][1] - r[base][1])
        ratio = med(lambda r: r["gateway"][0] / r[base][0])
        print(f"\ngateway − {base}: p50 {d50:+.1f} µs (×{ratio:.2f}), p99 {d99:+.1f} µs")
    print("\nassertions, in process (bench-assert):\n")
    print(subprocess.run([os.path.join(BIN, "bench-assert")], check=True, capture_output=True,
                         text=True).stdout)
    print(f"raw results in {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
