#!/usr/bin/env python3
"""bench/audit.py: what the audit trail costs per tool call.

Starts `bench-echo http` and two release gateways in front of it, identical but for the audit
trail: one with `[audit] enabled = false`, one with the default trail (JSONL files with
`fdatasync`, in a directory on the same disk as the project). Then, ROUNDS times, runs the same
open-loop latency load (16 sessions, RATE calls/s in total, legacy era) against: the upstream
directly, the gateway without audit, the gateway with audit, in that order, so that the machine's
noise hits all three alike. Reports per round and the median over rounds: p50 / p99 latency, the
gateway's added latency over direct, the trail's cost (audit on - audit off), and the gateway's
CPU time per call. Finally runs `bench-audit` (the writer alone, in process) for records/s.

Usage: python3 bench/audit.py [--rounds 3] [--rate 2000] [--duration 10] [--sessions 16]
Prints a markdown summary; raw bench-load JSON goes to --out (default: a temp dir).
"""

import argparse
import hashlib
import hmac
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from dedicated import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")


def wait_port(port, proc, what):
    for _ in range(400):
        if proc.poll() is not None:
            sys.exit(f"{what} exited early (status {proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not start listening on port {port}")


def new_key(pepper, tenant="bench"):
    """A fresh API key and its stored hash under `pepper`."""
    key = f"pal_{tenant}_" + secrets.token_hex(16)
    return key, "hmac-sha256:" + hmac.new(pepper.encode(), key.encode(),
                                          hashlib.sha256).hexdigest()


def start_gateway(work, name, echo_url, audit, extra="", server=None, port=None):
    """A release gateway in front of `echo_url` for tenant `bench`; `extra` TOML goes first.

    `server` replaces the echo upstream with another `[[servers]]` entry named `echo`;
    `port` fixes the MCP port (for a config that names its own URL)."""
    conf = os.path.join(work, name)
    os.makedirs(conf)
    pepper = secrets.token_hex(32)
    with open(os.path.join(conf, "pepper"), "w") as f:
        f.write(pepper)
    os.chmod(os.path.join(conf, "pepper"), 0o600)
    key, stored = new_key(pepper)
    port, admin = port or free_port(), free_port()
    server = server or f"""[[servers]]
name = "echo"
protocol = "legacy"
[servers.http]
url = "{echo_url}"
"""
    audit_table = "" if audit else "[audit]\nenabled = false\n"
    with open(os.path.join(conf, "palisade.toml"), "w") as f:
        f.write(f"""{extra}
[listen]
mcp = "127.0.0.1:{port}"
admin = "127.0.0.1:{admin}"

[auth]
pepper_file = "{conf}/pepper"

{audit_table}
{server}

[[tenants]]
id = "bench"
servers = ["echo"]
namespacing = false
keys = ["{stored}"]
""")
    log = open(os.path.join(conf, "gateway.log"), "w")
    proc = subprocess.Popen(
        [os.path.join(BIN, "palisade"), "serve", "--config", os.path.join(conf, "palisade.toml")],
        stdout=log, stderr=subprocess.STDOUT)
    wait_port(port, proc, f"gateway {name}")
    return proc, f"http://127.0.0.1:{port}/mcp", key


class Gateway:
    """A release gateway with `servers` and one key per tenant (`keys`), each tenant on every
    server; `url`, `admin` and `pid` say where it is."""

    def __init__(self, work, servers, tenants, extra="", namespacing=True):
        pepper = os.urandom(32).hex()
        with open(os.path.join(work, "pepper"), "w") as f:
            f.write(pepper)
        os.chmod(os.path.join(work, "pepper"), 0o600)
        port, admin = free_port(), free_port()
        names = [line.split('"')[1] for line in servers.splitlines()
                 if line.startswith("name = ")]
        self.keys, entries = {}, []
        for t in tenants:
            key, stored = new_key(pepper, t)
            self.keys[t] = key
            entries.append(f'[[tenants]]\nid = "{t}"\nservers = {json.dumps(names)}\n'
                           f'namespacing = {json.dumps(namespacing)}\nkeys = ["{stored}"]\n')
        conf = os.path.join(work, "palisade.toml")
        with open(conf, "w") as f:
            f.write(f"""{extra}
[listen]
mcp = "127.0.0.1:{port}"
admin = "127.0.0.1:{admin}"

[auth]
pepper_file = "{work}/pepper"

{servers}
{"".join(entries)}""")
        log = open(os.path.join(work, "gateway.log"), "w")
        self.proc = subprocess.Popen([os.path.join(BIN, "palisade"), "serve", "--config", conf],
                                     stdout=log, stderr=subprocess.STDOUT)
        wait_port(port, self.proc, "gateway")
        self.url, self.admin = f"http://127.0.0.1:{port}/mcp", f"http://127.0.0.1:{admin}"
        self.pid = self.proc.pid


def load(args, out, name, url, key=None, pids=(), extra=()):
    """Runs bench-load against `url` (or, with `url` None, what `extra` names) and returns its
    JSON result, saved in `out`."""
    cmd = [os.path.join(BIN, "bench-load"), "--json", "--era", "legacy",
           "--sessions", str(args.sessions), "--warmup", str(args.warmup),
           "--duration", str(args.duration), "--rate", str(args.rate), *extra]
    if url:
        cmd += ["--url", url]
    if key:
        cmd += ["-H", f"Authorization: Bearer {key}"]
    for label, pid in pids:
        cmd += ["--pid", f"{label}={pid}"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        f.write(res.stdout)
    try:
        return json.loads(res.stdout)
    except ValueError:
        sys.exit(f"{name}: bench-load printed no result: {res.stderr[-2000:]}")


def stop(procs):
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait()


def start_echo(procs):
    """Starts `bench-echo http` (added to `procs`); returns its URL."""
    echo = subprocess.Popen([os.path.join(BIN, "bench-echo"), "http", "--listen",
                             "127.0.0.1:0"], stdout=subprocess.PIPE, text=True)
    procs.append(echo)
    return echo, echo.stdout.readline().strip().removeprefix("listening on ")


def checked(name, r):
    """`r` (a bench-load result), or exit if any of its calls failed."""
    if r["errors"]:
        sys.exit(f"{name}: {r['errors']} errors: {r.get('error_kinds')} "
                 f"{r.get('error_messages')}")
    return r


def median_over(rows):
    """`med(f)`: the median of `f(row)` over the rounds' rows."""
    return lambda f: statistics.median(f(r) for r in rows)


def cpu_per_call(r, label):
    for p in r.get("processes", []):
        if p.get("label") == label and p.get("cpu_us_per_call") is not None:
            return p["cpu_us_per_call"]
    return float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--sessions", type=int, default=16)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="palisade-audit-bench.")
    os.makedirs(out, exist_ok=True)
    subprocess.run(["cargo", "build", "--release", "-p", "palisade", "-p", "palisade-bench"],
                   cwd=ROOT, check=True)
    # On the project's disk, so that fdatasync costs what it costs there.
    work = tempfile.mkdtemp(prefix="audit-bench.", dir=os.path.join(ROOT, "target"))
    procs = []
    try:
        echo, echo_url = start_echo(procs)
        off, off_url, off_key = start_gateway(work, "off", echo_url, audit=False)
        procs.append(off)
        on, on_url, on_key = start_gateway(work, "on", echo_url, audit=True)
        procs.append(on)
        rows = []
        for i in range(args.rounds):
            d = load(args, out, f"direct-{i}", echo_url, pids=[("upstream", echo.pid)])
            a = load(args, out, f"off-{i}", off_url, off_key, [("gateway", off.pid)])
            b = load(args, out, f"on-{i}", on_url, on_key, [("gateway", on.pid)])
            row = {}
            for name, r in (("direct", d), ("off", a), ("on", b)):
                lat = r["latency_us"]
                row[name] = (lat["p50"], lat["p99"], r["errors"], r["calls"])
            row["cpu_off"] = cpu_per_call(a, "gateway")
            row["cpu_on"] = cpu_per_call(b, "gateway")
            rows.append(row)
            print(f"round {i + 1}: direct p50 {row['direct'][0]} / off {row['off'][0]} / "
                  f"on {row['on'][0]} us; cpu/call off {row['cpu_off']:.1f} on "
                  f"{row['cpu_on']:.1f} us", file=sys.stderr)
        writer = subprocess.run([os.path.join(BIN, "bench-audit"), "--dir",
                                 os.path.join(work, "writer")],
                                capture_output=True, text=True, check=True)
    finally:
        stop(procs)

    med = median_over(rows)

    print(f"\n{args.rounds} rounds, {args.sessions} sessions, {args.rate} calls/s, "
          f"{args.duration} s each; medians over rounds (µs)\n")
    print("| | p50 | p99 | added p50 over direct | added p99 over direct | gateway CPU per call | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, label in (("direct", "direct"), ("off", "gateway, audit off"),
                        ("on", "gateway, audit on")):
        p50, p99 = med(lambda r: r[name][0]), med(lambda r: r[name][1])
        errs = sum(r[name][2] for r in rows)
        if name == "direct":
            print(f"| {label} | {p50:.1f} | {p99:.1f} | | | | {errs} |")
        else:
            cpu = med(lambda r: r[f"cpu_{name}"])
            print(f"| {label} | {p50:.1f} | {p99:.1f} | "
                  f"+{med(lambda r: r[name][0] - r['direct'][0]):.1f} | "
                  f"+{med(lambda r: r[name][1] - r['direct'][1]):.1f} | {cpu:.1f} | {errs} |")
    cost50 = med(lambda r: r["on"][0] - r["off"][0])
    cost99 = med(lambda r: r["on"][1] - r["off"][1])
    verdict = "met" if cost50 <= 200 else "NOT met"
    print(f"\nThe audit trail's cost (on - off, same round): p50 +{cost50:.1f} µs "
          f"(target ≤ 200: {verdict}), p99 +{cost99:.1f} µs, CPU "
          f"+{med(lambda r: r['cpu_on'] - r['cpu_off']):.1f} µs per call\n")
    print(writer.stdout.strip())
    print(f"\nraw results in {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
