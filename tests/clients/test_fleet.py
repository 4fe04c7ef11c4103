"""The official Python and TypeScript SDKs against the example fleet (examples/fleet/run.sh):
three replicas on one PostgreSQL registry and Redis, behind HAProxy balancing every request
round-robin, with a fleet key (a legacy session continues on any replica).

Four clients run at once, each one session of at least 200 calls (tool calls with progress,
logging, sampling round trips), Python and TypeScript, legacy and 2026-07-28. While they run,
one replica is killed with SIGKILL (run.sh starts it again), then every replica is restarted in
turn with SIGTERM. Counted: calls that failed (only one in flight on the killed replica may,
per client), sessions lost (none: a legacy client keeps its session id and every call after the
kill succeeds), executions of each call (the test server notes them: none twice).
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import anyio
import mcp_types as types
import pytest

from conftest import BIN_DIR, REPO, connect

pytestmark = pytest.mark.anyio

CALLS = 200
# What a retry of a 2026-07-28 input round trip hears on another replica than its state's.
RESUMES_THERE = "belongs to gateway replica"
RUN_SH = REPO / "examples" / "fleet" / "run.sh"
TS = Path(__file__).resolve().parent / "ts"


def _services_or_skip() -> None:
    missing = [tool for tool in ("haproxy", "psql", "redis-cli") if shutil.which(tool) is None]
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the fleet test needs {', '.join(missing)} (CI=true: not skipped)")
        pytest.skip(f"needs {', '.join(missing)}")


def _free_base() -> int:
    import random
    import socket

    for _ in range(200):
        base = 20000 + random.randrange(2000) * 20
        try:
            socks = []
            for i in range(14):
                s = socket.socket()
                s.bind(("127.0.0.1", base + i))
                socks.append(s)
            for s in socks:
                s.close()
            return base
        except OSError:
            for s in socks:
                s.close()
    raise RuntimeError("no free run of ports")


@pytest.fixture
def fleet(tmp_path: Path):
    """The example fleet: yields the fields of run.sh's `fleet …` line; stops it at the end."""
    _services_or_skip()
    env = dict(os.environ, PALISADE_BIN_DIR=str(BIN_DIR), FLEET_BASE_PORT=str(_free_base()),
               FLEET_DIR=str(tmp_path / "fleet"))
    if url := os.environ.get("PALISADE_TEST_POSTGRES_URL"):
        env["FLEET_POSTGRES"] = url
    proc = subprocess.Popen(["bash", str(RUN_SH)], env=env, stdout=subprocess.PIPE,
                            stderr=open(tmp_path / "run.stderr", "wb"), start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        line = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline().decode().strip()  # type: ignore[union-attr]
            if line.startswith("fleet ") or proc.poll() is not None:
                break
        assert line.startswith("fleet "), (tmp_path / "run.stderr").read_text()[-3000:]
        fields = dict(word.split("=", 1) for word in line.split()[1:])
        fields["admins"] = fields.pop("admin").split(",")
        yield fields
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)


def _replica_pid(fleet_dir: str, name: str) -> int | None:
    config = f"{fleet_dir}/{name}.toml".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in args and config in args:
            return int(entry)
    return None


def _wait(what: str, check, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {what}")


def _ready(admin: str) -> bool:
    try:
        with urllib.request.urlopen(f"{admin}/readyz", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def _disrupt(fleet: dict, progress: dict, log: list) -> None:
    """SIGKILL r2 once the clients are under way, then a rolling restart (SIGTERM) of all three;
    each time waits until the replica is back."""
    _wait("the clients are under way", lambda: min(progress.values(), default=0) >= 30, 120)
    for name, sig in (("r2", signal.SIGKILL), ("r1", signal.SIGTERM), ("r2", signal.SIGTERM),
                      ("r3", signal.SIGTERM)):
        index = int(name[1:]) - 1
        pid = _replica_pid(fleet["dir"], name)
        assert pid, f"{name} runs"
        os.kill(pid, sig)
        _wait(f"{name} exited", lambda: not Path(f"/proc/{pid}").exists())
        _wait(f"{name} is back", lambda: _replica_pid(fleet["dir"], name) not in (None, pid)
              and _ready(fleet["admins"][index]))
        log.append(f"{name} {sig.name} at calls {dict(progress)}")


async def _python_client(fleet: dict, era: str, label: str, stop: threading.Event,
                         progress: dict) -> dict:
    """One session of the Python SDK: calls until `stop` and at least CALLS calls."""
    logs: list[str] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(str(params.data))

    async def sampling(context, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        prompt = params.messages[0].content.text
        return types.CreateMessageResult(role="assistant", model="fleet",
                                         content=types.TextContent(type="text", text=f"sampled<{prompt}>"))

    options = {"logging_callback": on_log, "sampling_callback": sampling}
    if era == "modern":
        options["log_level"] = "info"
    tally = {"calls": 0, "failures": [], "sampled": 0, "progress": 0}
    # The SDK runs each request in a task of its transport: a request whose connection broke
    # (in flight on the killed replica) is raised again when the client closes. Counted too.
    try:
        async with connect(fleet["mcp"], fleet["key"], era, **options) as client:
            if era == "legacy":
                await client.set_logging_level("info")
            while tally["calls"] < CALLS or not stop.is_set():
                progress[label] = tally["calls"]
                await _one_call(client, label, tally)
    except Exception as e:  # noqa: BLE001 - counted and shown
        tally["failures"].append((-1, f"when the client closed: {type(e).__name__}: {e!r}"[:500]))
    return tally | {"logs": len(logs)}


async def _one_call(client, label: str, tally: dict) -> None:
    """Call number `tally["calls"]`: mostly `kit__count`; every 10th a progress call, every
    20th a log, every 25th a sampling round trip (as fleet.mjs does)."""
    n = tally["calls"]
    tally["calls"] += 1
    try:
        if n % 25 == 24:
            r = await client.call_tool("kit__sampling", {"prompt": f"{label}-{n}"})
            if r.content and getattr(r.content[0], "text", "") == f"sampled<{label}-{n}>":
                tally["sampled"] += 1
            else:
                tally["failures"].append((n, f"sampling answered {r!r}"))
        elif n % 20 == 19:
            await client.call_tool("kit__log", {"message": f"{label}-{n}", "level": "warning"})
        elif n % 10 == 9:
            seen: list[float] = []

            async def on_progress(p: float, total: float | None, message: str | None) -> None:
                seen.append(p)

            await client.call_tool("kit__progress", {"steps": 3}, progress_callback=on_progress)
            if len(seen) == 3:
                tally["progress"] += 1
            else:
                tally["failures"].append((n, f"progress: {len(seen)} of 3 notifications"))
        else:
            r = await client.call_tool("kit__count", {"message": f"{label}-{n}"})
            if r.is_error:
                tally["failures"].append((n, f"count: {r.content!r}"))
    except Exception as e:  # noqa: BLE001 - every failure is counted and shown
        tally["failures"].append((n, f"{type(e).__name__}: {e}"))


async def test_sdk_sessions_survive_a_killed_replica_and_a_rolling_restart(fleet, tmp_path):
    stop_file = tmp_path / "stop"
    stop = threading.Event()
    progress: dict[str, int] = {}
    node = [shutil.which("node") or "node", str(TS / "fleet.mjs"), "--url", fleet["mcp"],
            "--key", fleet["key"], "--stop", str(stop_file), "--calls", str(CALLS)]
    ts = {era: subprocess.Popen([*node, "--era", era, "--label", f"ts-{era}"], cwd=TS,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
          for era in ("legacy", "modern")}
    events: list[str] = []
    disruptor = threading.Thread(target=_disrupt, args=(fleet, progress, events))
    disruptor.start()
    results: dict[str, dict] = {}

    async def run(era: str) -> None:
        results[f"py-{era}"] = await _python_client(fleet, era, f"py-{era}", stop, progress)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "legacy")
        tg.start_soon(run, "modern")

        async def stop_when_disrupted() -> None:
            await anyio.to_thread.run_sync(disruptor.join)
            stop.set()
            stop_file.write_text("stop")

        tg.start_soon(stop_when_disrupted)
    for era, proc in ts.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()[-3000:]
        results[f"ts-{era}"] = json.loads(out.decode().strip().splitlines()[-1])

    assert len(events) == 4, events
    executions = collections.Counter(
        (Path(fleet["dir"]) / "executions").read_text().splitlines())
    report = {label: {k: v for k, v in r.items() if k != "failures"}
              | {"failed": len(r["failures"]),
                 "refused_elsewhere": sum(RESUMES_THERE in f[1] for f in r["failures"])}
              for label, r in results.items()}
    print(json.dumps({"disruptions": events, "clients": report}, indent=1))
    for label, r in results.items():
        assert r["calls"] >= CALLS, (label, r["calls"])
        # A 2026-07-28 input round trip with a stdio server resumes only on the replica whose
        # server process issued its state: a retry balanced elsewhere is refused, clearly and
        # as retryable. Besides those, only a call in flight on the killed replica may fail.
        elsewhere = [f for f in r["failures"] if RESUMES_THERE in f[1]]
        others = [f for f in r["failures"] if RESUMES_THERE not in f[1]]
        assert len(others) <= 1, (label, others)
        if label.endswith("legacy"):
            assert not elsewhere, (label, elsewhere)
        # Sampling round trips and progress calls (8 and 8 in 200), each but one that may fail.
        assert r["sampled"] + len(elsewhere) >= 7 and r["progress"] >= 7, (label, r)
        counted = [n for n in range(r["calls"]) if n % 10 != 9 and n % 20 != 19 and n % 25 != 24]
        failed = {n for n, _ in r["failures"]}
        twice = [n for n in counted if executions[f"{label}-{n}"] > 1]
        assert not twice, f"{label}: calls executed twice: {twice}"
        missing = [n for n in counted if n not in failed and executions[f"{label}-{n}"] != 1]
        assert not missing, f"{label}: calls that succeeded without one execution: {missing}"
    for label in ("ts-legacy",):
        r = results[label]
        assert r["sessionAtStart"] and r["sessionAtStart"] == r["sessionAtEnd"], r
