"""Fixtures for the external-client tests: a real `palisade serve` with two tenants.

- acme   -> server "kit"  = palisade-testkit over stdio (started by the gateway)
- globex -> server "kit2" = palisade-testkit over Streamable HTTP (started here)

Both tenants keep the default namespacing, so tools are `kit__echo` / `kit2__echo`.
The binaries come from $PALISADE_BIN_DIR (default: <repo>/target/debug).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import signal
import subprocess
import threading
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

REPO = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("PALISADE_BIN_DIR", REPO / "target" / "debug"))
STARTUP_TIMEOUT = 30.0
SHUTDOWN_TIMEOUT = 15.0

LEGACY_VERSION = "2025-11-25"
MODERN_VERSION = "2026-07-28"


@dataclass
class Gateway:
    url: str
    admin: str
    acme_key: str
    globex_key: str
    log_path: Path


def _read_line(proc: subprocess.Popen, prefix: str, timeout: float, what: str) -> str:
    """Reads stdout lines until one starts with `prefix` (in a thread, to honour the timeout)."""
    found: list[str] = []

    def reader() -> None:
        for raw in proc.stdout:  # type: ignore[union-attr]
            line = raw.decode(errors="replace").strip()
            if line.startswith(prefix):
                found.append(line)
                return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    thread.join(timeout)
    if not found:
        proc.kill()
        raise RuntimeError(f"{what} did not print {prefix!r} within {timeout}s (exit code {proc.poll()})")
    return found[0]


def key_hash(pepper: bytes, key: str) -> str:
    """The config form of an API key: hex(HMAC-SHA256(key=pepper, msg=API key))."""
    return "hmac-sha256:" + hmac.new(pepper, key.encode(), hashlib.sha256).hexdigest()


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Serving:
    """A running `palisade serve`: its MCP and admin URLs, and the process."""

    mcp: str
    admin: str
    proc: subprocess.Popen


@contextmanager
def serve(config: Path, log_path: Path, **popen):
    """Runs `palisade serve --config CONFIG` (stderr to LOG_PATH; `popen` as for subprocess.Popen)
    until it prints its listening line, then yields it. At the end: SIGTERM, and asserts that it
    exits 0 within SHUTDOWN_TIMEOUT."""
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [str(BIN_DIR / "palisade"), "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=log,
        **popen,
    )
    try:
        try:
            line = _read_line(proc, "palisade listening ", STARTUP_TIMEOUT, "palisade serve")
        except RuntimeError:
            raise RuntimeError(f"gateway did not start; stderr:\n{log_path.read_text(errors='replace')[-4000:]}")
        fields = dict(part.split("=", 1) for part in line.split()[2:])
        yield Serving(mcp=fields["mcp"], admin=fields["admin"], proc=proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(SHUTDOWN_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = None
        log.close()
        assert code == 0, (
            f"palisade did not exit 0 within {SHUTDOWN_TIMEOUT}s of SIGTERM (exit code {code}); "
            f"stderr tail:\n{log_path.read_text(errors='replace')[-3000:]}"
        )


@contextmanager
def run_gateway(work: Path):
    """Starts kit2 (testkit over HTTP) and `palisade serve` in `work`; SIGTERMs both at the end.

    Asserts that the gateway exits 0 within SHUTDOWN_TIMEOUT of SIGTERM.
    """
    for name in ("palisade", "palisade-testkit"):
        if not (BIN_DIR / name).is_file():
            pytest.exit(f"{BIN_DIR / name} is missing: run `cargo build -p palisade -p testkit`", returncode=2)
    testkit = str(BIN_DIR / "palisade-testkit")

    # The globex upstream: the testkit over Streamable HTTP.
    kit2_log = open(work / "kit2.stderr", "wb")
    kit2 = subprocess.Popen(
        [testkit, "http", "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=kit2_log
    )
    kit2_url = _read_line(kit2, "listening on ", STARTUP_TIMEOUT, "palisade-testkit http").split()[-1]

    pepper = secrets.token_hex(32).encode()
    (work / "pepper").write_bytes(pepper + b"\n")
    acme_key = "pal_acme_" + secrets.token_urlsafe(32)
    globex_key = "pal_globex_" + secrets.token_urlsafe(32)
    config = work / "palisade.toml"
    config.write_text(
        f"""
[listen]
mcp = "127.0.0.1:0"
admin = "127.0.0.1:0"

[auth]
pepper_file = "{work / 'pepper'}"

[[servers]]
name = "kit"
[servers.stdio]
command = "{testkit}"
args = ["stdio"]
env = {{ HOME = "/tmp" }}

[[servers]]
name = "kit2"
[servers.http]
url = "{kit2_url}"

[[tenants]]
id = "acme"
servers = ["kit"]
keys = ["{key_hash(pepper, acme_key)}"]

[[tenants]]
id = "globex"
servers = ["kit2"]
keys = ["{key_hash(pepper, globex_key)}"]
"""
    )

    log_path = work / "palisade.stderr"
    try:
        with serve(config, log_path) as gw:
            yield Gateway(
                url=gw.mcp,
                admin=gw.admin,
                acme_key=acme_key,
                globex_key=globex_key,
                log_path=log_path,
            )
    finally:
        kit2.send_signal(signal.SIGINT)  # the testkit shuts down gracefully on ctrl-c
        try:
            kit2.wait(10)
        except subprocess.TimeoutExpired:
            kit2.kill()
            kit2.wait()
        kit2_log.close()


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory):
    """One gateway shared by the tests that leave no state behind."""
    with run_gateway(tmp_path_factory.mktemp("gateway")) as gw:
        yield gw


@pytest.fixture
def isolated_gateway(tmp_path: Path):
    """A gateway of its own, for a test that leaves state behind in the upstream."""
    with run_gateway(tmp_path) as gw:
        yield gw


@pytest.fixture(params=["legacy", "modern"])
def era(request: pytest.FixtureRequest) -> str:
    return request.param


@asynccontextmanager
async def connect(url: str, key: str, era: str, **client_options):
    """An `mcp.Client` over Streamable HTTP with the bearer key, in the requested era.

    legacy: `initialize` handshake (mode="legacy").
    modern: mode="auto" probes `server/discover` and must end up on 2026-07-28 (the
    test fails if the client silently falls back to the handshake).
    """
    mode = "legacy" if era == "legacy" else "auto"
    async with create_mcp_http_client(headers={"Authorization": f"Bearer {key}"}) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode, **client_options) as client:
            expected = LEGACY_VERSION if era == "legacy" else MODERN_VERSION
            assert client.protocol_version == expected, (
                f"negotiated {client.protocol_version}, expected {expected}"
            )
            yield client
