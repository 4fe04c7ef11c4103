#!/usr/bin/env python3
"""bench/report.py: turns the JSON results of bench/run.sh into the markdown results table.

Usage: report.py DIR, where DIR holds {http,stdio}-{direct,gateway}-{latency,saturated}.json and
hold.json as written by run.sh (missing gateway results are shown as "pending"). Compares the
gateway against the direct path and checks the issue's targets: at most +150 us at p50 and
+1 ms at p99 (latency runs), saturated throughput at least 60% of direct, gateway RSS at most
30 MB (10^6 bytes) with 1,000 open legacy sessions.
"""

import json
import os
import platform
import sys
import time

TARGET_AUTH_US = 20
TARGET_P50_US = 150.0
TARGET_P99_US = 1000.0
TARGET_THROUGHPUT_RATIO = 0.60
TARGET_RSS_BYTES = 30_000_000


def load(directory, name):
    path = os.path.join(directory, name + ".json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def proc(result, label):
    for p in (result or {}).get("processes", []):
        if p.get("label") == label:
            return p
    return None


def procs(result, prefix):
    return [p for p in (result or {}).get("processes", []) if p.get("label", "").startswith(prefix)]


def fmt(x, digits=1):
    return "–" if x is None else f"{x:.{digits}f}"


def lat(result, key):
    return ((result or {}).get("latency_us") or {}).get(key)


def mb(kib):
    return None if kib is None else kib * 1024 / 1e6


def upstream_cpu(result):
    ups = procs(result, "upstream")
    if not ups or any(p.get("cpu_us_per_call") is None for p in ups):
        return None
    return sum(p["cpu_us_per_call"] for p in ups)


def row(upstream, path, r):
    if r is None:
        return f"| {upstream} | {path} | pending | pending | pending | pending | pending | pending | pending | pending | pending |"
    gw = proc(r, "gateway")
    me = proc(r, "bench-load")
    return (
        f"| {upstream} | {path} | {r['throughput']:.0f} | {fmt(lat(r, 'p50'))} | {fmt(lat(r, 'p95'))} "
        f"| {fmt(lat(r, 'p99'))} | {fmt(lat(r, 'p99_9'))} | {r['errors']} "
        f"| {fmt(gw and gw.get('cpu_us_per_call'))} / {fmt(mb(gw and gw.get('vm_rss_kib')))} "
        f"| {fmt(upstream_cpu(r))} | {fmt(me and me.get('cpu_cores'), 2)} |"
    )


def delta_row(upstream, d, g):
    if d is None or g is None or lat(d, "p50") is None or lat(g, "p50") is None:
        return f"| {upstream} | gateway − direct | – | pending | pending | pending | pending | – | – | – | – |"
    parts = []
    for key in ("p50", "p95", "p99", "p99_9"):
        parts.append(f"+{lat(g, key) - lat(d, key):.1f} (×{lat(g, key) / lat(d, key):.2f})")
    ratio = g["throughput"] / d["throughput"] if d["throughput"] else 0.0
    return f"| {upstream} | gateway − direct | ×{ratio:.2f} | {' | '.join(parts)} | – | – | – | – |"


def check(ok):
    return "pass" if ok else "**FAIL**"


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else "."
    res = {}
    for up in ("http", "stdio"):
        for path in ("direct", "gateway"):
            for run in ("latency", "saturated"):
                res[(up, path, run)] = load(directory, f"{up}-{path}-{run}")
    hold = load(directory, "hold")
    any_run = next((r for r in res.values() if r), {}) or {}
    latency_run = res[("http", "direct", "latency")] or {}

    print(f"## Results ({time.strftime('%Y-%m-%d')}, {platform.node()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f} at the end)")
    print()
    print(f"{any_run.get('sessions', '?')} sessions, {any_run.get('era', '?')} era, "
          f"{any_run.get('window_s', '?')} s measured after {any_run.get('warmup_s', '?')} s warmup. "
          "Latencies in µs; CPU in µs per call; RSS in MB (10^6 bytes); "
          "bench-load cores = CPU the load generator itself used.")
    header = ("| upstream | path | calls/s | p50 | p95 | p99 | p99.9 | errors "
              "| gateway CPU/call / RSS | upstream CPU/call | bench-load cores |")
    sep = "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for run, title in (
        ("latency", f"Latency: open loop, {latency_run.get('rate', '?')} calls/s in total"),
        ("saturated", "Saturated: closed loop"),
    ):
        print()
        print(f"### {title}")
        print()
        print(header)
        print(sep)
        for up, name in (("http", "HTTP"), ("stdio", "stdio")):
            d = res[(up, "direct", run)]
            g = res[(up, "gateway", run)]
            print(row(name, "direct", d))
            print(row(name, "gateway", g))
            print(delta_row(name, d, g))

    print()
    print("### Targets")
    print()
    print("| target | HTTP upstream | stdio upstream |")
    print("|---|---|---|")

    def target_line(label, run, fn):
        cells = []
        for up in ("http", "stdio"):
            d, g = res[(up, "direct", run)], res[(up, "gateway", run)]
            cells.append("pending" if not d or not g else fn(d, g))
        print(f"| {label} | {cells[0]} | {cells[1]} |")

    def lat_delta(key, limit):
        def fn(d, g):
            if lat(d, key) is None or lat(g, key) is None:
                return "no samples"
            delta = lat(g, key) - lat(d, key)
            return f"+{delta:.1f} µs {check(delta <= limit)}"
        return fn

    def thr(d, g):
        ratio = g["throughput"] / d["throughput"] if d["throughput"] else 0.0
        return f"{ratio * 100:.0f}% {check(ratio >= TARGET_THROUGHPUT_RATIO)}"

    target_line("gateway adds ≤ 150 µs at p50 (latency run)", "latency", lat_delta("p50", TARGET_P50_US))
    target_line("gateway adds ≤ 1 ms at p99 (latency run)", "latency", lat_delta("p99", TARGET_P99_US))
    target_line("saturated throughput ≥ 60% of direct", "saturated", thr)
    if hold:
        gw = proc(hold, "gateway") or {}
        rss = gw.get("vm_rss_kib")
        if rss is not None:
            ok = rss * 1024 <= TARGET_RSS_BYTES and hold.get("sessions") == hold.get("requested")
            cell = (f"{mb(rss):.1f} MB with {hold.get('sessions')} of {hold.get('requested')} sessions "
                    f"on {hold.get('connections')} connections (idle {mb(gw.get('vm_rss_kib_before')):.1f} MB, "
                    f"{gw.get('rss_kib_per_session')} KiB/session, HWM {mb(gw.get('vm_hwm_kib')):.1f} MB) "
                    f"{check(ok)}")
        else:
            cell = "no gateway pid"
    else:
        cell = "pending"
    print(f"| gateway RSS ≤ 30 MB with 1,000 open legacy sessions | {cell} | (same gateway) |")
    auth_section(directory, res[("http", "gateway", "latency")])


def auth_section(directory, key_run):
    """Authentication: in process against a no-auth baseline, and end to end (API key vs token)."""
    auth = load(directory, "auth")
    jwt_run = load(directory, "http-gateway-jwt-latency")
    print()
    print("### Authentication")
    print()
    if auth:
        print(f"In process (`bench-auth`, {auth['tenants']} tenants with a key each, "
              f"{auth['iterations']} requests per case), µs per request:")
        print()
        print("| case | p50 | p90 | p99 | added at p50 over no auth |")
        print("|---|---:|---:|---:|---:|")
        base = auth["baseline_us"]["p50"]
        for key, label in (("baseline_us", "no auth (read the header)"),
                           ("api_key_us", "API key"),
                           ("jwt_cached_us", "access token, seen before"),
                           ("jwt_new_token_us", "access token, new (signature check)")):
            r = auth[key]
            print(f"| {label} | {r['p50']:.2f} | {r['p90']:.2f} | {r['p99']:.2f} | {r['p50'] - base:+.2f} |")
        print()
        for key, label in (("api_key_us", "API key"), ("jwt_cached_us", "access token (cached)")):
            added = auth[key]["p50"] - base
            print(f"- target: authentication with a cached key adds ≤ {TARGET_AUTH_US} µs at p50, "
                  f"{label}: {added:+.2f} µs {check(added <= TARGET_AUTH_US)}")
    else:
        print("In process: pending (no auth.json).")
    if key_run and jwt_run and lat(key_run, "p50") is not None and lat(jwt_run, "p50") is not None:
        gk, gj = proc(key_run, "gateway") or {}, proc(jwt_run, "gateway") or {}
        print()
        print("End to end through the gateway, HTTP upstream, latency run: "
              f"API key p50 {fmt(lat(key_run, 'p50'))} / p99 {fmt(lat(key_run, 'p99'))} µs, "
              f"gateway CPU {fmt(gk.get('cpu_us_per_call'))} µs/call; "
              f"access token p50 {fmt(lat(jwt_run, 'p50'))} / p99 {fmt(lat(jwt_run, 'p99'))} µs, "
              f"gateway CPU {fmt(gj.get('cpu_us_per_call'))} µs/call.")


if __name__ == "__main__":
    main()
