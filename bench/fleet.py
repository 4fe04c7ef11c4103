#!/usr/bin/env python3
"""bench/fleet.py: what sessions that any replica continues cost, per call and in memory, and
what a rolling restart does to the tail.

Starts `bench-echo http`, a release gateway with in-memory sessions (no fleet key), three
release replicas with a fleet key and Redis (REDIS_URL, default redis://127.0.0.1:6379), and
HAProxy (round-robin, every request on its own, like examples/fleet) in front of the three and,
separately, in front of the in-memory gateway. Every gateway has the defaults a user gets (audit
trail on, one shared server, an API key). Then:

1. ROUNDS times, the same open-loop load (16 legacy sessions, RATE calls/s) against:
   `memory` (the in-memory gateway), `fleet-1` (replica r1 alone: sessions sealed and recorded
   in Redis, served from its copies), `memory-lb` (the in-memory gateway behind HAProxy), and
   `fleet-lb` (the three replicas behind HAProxy: every request of a session on another replica
   than the one before). Medians of p50 / p99 and of the gateways' CPU per call (all replicas'
   CPU over the calls).
2. RSS: 1,000 legacy sessions opened through HAProxy (spread over the three replicas), then the
   same 1,000 on the in-memory gateway alone.
3. A rolling restart: the load runs through HAProxy for RESTART_SECS; a third of the way in,
   each replica in turn gets SIGTERM (it leaves the load balancer, drains, exits) and is started
   again; the next one waits until it is ready. Compared with the same run without a restart:
   p50 / p99 / max and failed calls.

Usage: python3 bench/fleet.py [--rounds 3] [--rate 1000] [--duration 10] [--restart-secs 30]
       [--gw-cpus 1] [--only memory,fleet-1] [--no-hold] [--no-restart]
`--gw-cpus` pins every gateway with `taskset -c`; run the script itself under `taskset -c 0`
so that the load tool, the echo upstream and HAProxy (its children) share the other core.
"""

import argparse
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from audit import (BIN, ROOT, checked, cpu_per_call, load, median_over, new_key, start_echo,
                   stop, wait_port)
from dedicated import free_port

HAPROXY = """global
    maxconn 8192
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout check 2s
    retries 3
    option redispatch 1
    option http-server-close
frontend mcp
    bind 127.0.0.1:{port}
    default_backend replicas
backend replicas
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 200ms fall 1 rise 2
{servers}
"""


class Replica:
    """A release gateway; with `fleet` (the fleet's name), a replica sharing sessions."""

    def __init__(self, work, name, echo_url, pepper, stored, fleet=None, redis=None, cpus=None):
        self.cpus = cpus
        self.name, self.work = name, os.path.join(work, name)
        os.makedirs(self.work, exist_ok=True)
        self.port, self.admin = free_port(), free_port()
        fleet_table = ""
        if fleet:
            with open(os.path.join(work, "fleet.key"), "a+") as f:
                f.seek(0)
                if not f.read():
                    f.write(secrets.token_hex(32))
            fleet_table = (f'[fleet]\nname = "{fleet}"\nkey_file = "{work}/fleet.key"\n\n'
                           f'[rate_limits]\nredis_url = "{redis}"\n')
        self.conf = os.path.join(self.work, "palisade.toml")
        with open(self.conf, "w") as f:
            f.write(f"""{fleet_table}
[listen]
mcp = "127.0.0.1:{self.port}"
admin = "127.0.0.1:{self.admin}"
max_unauthenticated_per_source = 100000

[auth]
pepper_file = "{work}/pepper"

[limits]
shutdown_notice_secs = 1
initialize_rate = {{ per_second = 100000, burst = 100000 }}

[[servers]]
name = "echo"
protocol = "legacy"
[servers.http]
url = "{echo_url}"

[[tenants]]
id = "bench"
servers = ["echo"]
namespacing = false
keys = ["{stored}"]
""")
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.start()

    def start(self):
        log = open(os.path.join(self.work, "gateway.log"), "a")
        env = dict(os.environ, PALISADE_REPLICA=self.name)
        pin = ["taskset", "-c", self.cpus] if self.cpus else []
        self.proc = subprocess.Popen([*pin, os.path.join(BIN, "palisade"), "serve", "--config",
                                      self.conf], stdout=log, stderr=subprocess.STDOUT, env=env)
        wait_port(self.port, self.proc, f"gateway {self.name}")
        self.wait_ready()

    def wait_ready(self):
        for _ in range(200):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/readyz") as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        sys.exit(f"{self.name} did not become ready")


def haproxy(work, name, replicas):
    port = free_port()
    servers = "\n".join(f"    server {r.name} 127.0.0.1:{r.port} check port {r.admin}"
                        for r in replicas)
    cfg = os.path.join(work, f"{name}.cfg")
    with open(cfg, "w") as f:
        f.write(HAPROXY.format(port=port, servers=servers))
    proc = subprocess.Popen(["haproxy", "-db", "-f", cfg], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    wait_port(port, proc, f"haproxy {name}")
    time.sleep(1)  # the first health checks (rise 2 at 200 ms)
    return proc, f"http://127.0.0.1:{port}/mcp"


def cpu_of(r, labels):
    return sum(cpu_per_call(r, label) for label in labels)


def rolling_restart(fleet, delay):
    time.sleep(delay)
    for r in fleet:
        r.proc.send_signal(signal.SIGTERM)
        r.proc.wait()
        r.start()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--sessions", type=int, default=16)
    ap.add_argument("--hold", type=int, default=1000)
    ap.add_argument("--restart-secs", type=int, default=30)
    ap.add_argument("--redis", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"))
    ap.add_argument("--gw-cpus", default=None)
    ap.add_argument("--only", default=None, help="comma-separated targets of part 1")
    ap.add_argument("--no-hold", action="store_true")
    ap.add_argument("--no-restart", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="palisade-fleet-bench.")
    subprocess.run(["cargo", "build", "--release", "-p", "palisade", "-p", "palisade-bench"],
                   cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="fleet-bench.", dir=os.path.join(ROOT, "target"))
    pepper = secrets.token_hex(32)
    with open(os.path.join(work, "pepper"), "w") as f:
        f.write(pepper)
    os.chmod(os.path.join(work, "pepper"), 0o600)
    key, stored = new_key(pepper)
    fleet_name = f"bench-{secrets.token_hex(4)}"
    procs = []
    try:
        _, echo_url = start_echo(procs)
        memory = Replica(work, "memory", echo_url, pepper, stored, cpus=args.gw_cpus)
        fleet = [Replica(work, f"r{i}", echo_url, pepper, stored, fleet_name, args.redis,
                         args.gw_cpus) for i in (1, 2, 3)]
        procs += [memory.proc] + [r.proc for r in fleet]
        lb_fleet, fleet_url = haproxy(work, "lb-fleet", fleet)
        lb_memory, memory_lb_url = haproxy(work, "lb-memory", [memory])
        procs += [lb_fleet, lb_memory]

        targets = {
            "memory": (memory.url, [("gateway", memory.proc.pid)], ["gateway"]),
            "fleet-1": (fleet[0].url, [("r1", fleet[0].proc.pid)], ["r1"]),
            "memory-lb": (memory_lb_url, [("gateway", memory.proc.pid)], ["gateway"]),
            "fleet-lb": (fleet_url, [(r.name, r.proc.pid) for r in fleet],
                         [r.name for r in fleet]),
        }
        if args.only:
            targets = {k: v for k, v in targets.items() if k in args.only.split(",")}
        rows = []
        for i in range(args.rounds):
            row = {}
            for name, (url, pids, labels) in targets.items():
                r = checked(name, load(args, out, f"{name}-{i}", url, key, pids))
                row[name] = (r["latency_us"]["p50"], r["latency_us"]["p99"], cpu_of(r, labels))
            rows.append(row)
            print(f"round {i + 1}: " + ", ".join(
                f"{n} p50 {v[0]} us cpu {v[2]:.1f}" for n, v in row.items()), file=sys.stderr)

        # Memory: sessions held open.
        hold = ["--hold-sessions", str(args.hold), "--hold-secs", "1"]
        if not args.no_hold:
            held_fleet = load(args, out, "hold-fleet", fleet_url, key,
                              [(r.name, r.proc.pid) for r in fleet], hold)
            held_memory = load(args, out, "hold-memory", memory.url, key,
                               [("gateway", memory.proc.pid)], hold)

        # A rolling restart under load, against the same run without one.
        long_run = argparse.Namespace(**{**vars(args), "duration": args.restart_secs,
                                         "rate": args.rate // 2})
        if not args.no_restart:
            steady = load(long_run, out, "steady", fleet_url, key)
            restarter = threading.Thread(target=rolling_restart,
                                         args=(fleet, args.warmup + args.restart_secs / 3))
            restarter.start()
            restarted = load(long_run, out, "restart", fleet_url, key)
            restarter.join()
            procs += [r.proc for r in fleet]
    finally:
        stop([p for p in procs if p.poll() is None])

    med = median_over(rows)
    print(f"\n{args.rounds} rounds, {args.sessions} legacy sessions, {args.rate} calls/s, "
          f"{args.duration} s each; medians over rounds (µs)\n")
    print("| sessions | p50 | p99 | gateway CPU per call (all replicas) |")
    print("|---|---:|---:|---:|")
    for name in targets:
        p50, p99, cpu = (med(lambda r, k=k: r[name][k]) for k in range(3))
        print(f"| {name} | {p50:.0f} | {p99:.0f} | {cpu:.1f} |")
    if "fleet-1" in targets and "fleet-lb" in targets:
        print(f"\nfleet-1 − memory: p50 {med(lambda r: r['fleet-1'][0] - r['memory'][0]):+.0f} µs, "
              f"CPU {med(lambda r: r['fleet-1'][2] - r['memory'][2]):+.1f} µs; "
              f"fleet-lb − memory-lb: p50 {med(lambda r: r['fleet-lb'][0] - r['memory-lb'][0]):+.0f} µs, "
              f"CPU {med(lambda r: r['fleet-lb'][2] - r['memory-lb'][2]):+.1f} µs")
    elif "fleet-1" in targets and "memory" in targets:
        print(f"\nfleet-1 − memory: p50 {med(lambda r: r['fleet-1'][0] - r['memory'][0]):+.0f} µs, "
              f"CPU {med(lambda r: r['fleet-1'][2] - r['memory'][2]):+.1f} µs")

    def rss(held, labels):
        procs = {p["label"]: p for p in held.get("processes", [])}
        return ", ".join(f"{l} {procs[l]['vm_rss_kib'] / 1024:.1f} MB" for l in labels
                         if l in procs)
    if args.no_hold:
        held_fleet = None
    if held_fleet:
        print(f"\n{args.hold} sessions held: three replicas ({held_fleet.get('sessions')} opened "
              f"through HAProxy): {rss(held_fleet, ['r1', 'r2', 'r3'])}; one in-memory gateway "
              f"({held_memory.get('sessions')} opened): {rss(held_memory, ['gateway'])}")
    if args.no_restart:
        return
    print(f"\nrolling restart, {long_run.rate} calls/s for {args.restart_secs} s through HAProxy:")
    print("| run | calls | failed | p50 | p99 | max |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in (("steady", steady), ("rolling restart", restarted)):
        lat = r["latency_us"]
        print(f"| {name} | {r.get('calls')} | {r['errors']} | {lat['p50']} | {lat['p99']} | "
              f"{lat.get('max')} |")
    print(f"\nraw results in {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
