"""`palisade demo` as a newcomer runs it, driven by the official Python MCP SDK.

The demo's tenants acme and globex share one palisade-sql process (shared placement, SQLite).
Each sends the same `sql__query_database` call and must get its own orders only: the tenant
reaches palisade-sql in the gateway's signed assertion, never from the client. Beside it they
see a few plain tools of the test upstream, and none of its fault-injection tools.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess

import pytest

from mcp.shared.exceptions import MCPError

from conftest import BIN_DIR, STARTUP_TIMEOUT, _read_line, connect

pytestmark = pytest.mark.anyio


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def demo():
    port, admin_port = _free_port(), _free_port()
    proc = subprocess.Popen(
        [str(BIN_DIR / "palisade"), "demo", "--port", str(port), "--admin-port", str(admin_port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        keys = {}
        for tenant in ("acme", "globex"):
            line = _read_line(proc, f"{tenant}: API key", STARTUP_TIMEOUT, "palisade demo")
            keys[tenant] = line.split()[-1]
        _read_line(proc, "palisade listening", STARTUP_TIMEOUT, "palisade demo")
        yield f"http://127.0.0.1:{port}/mcp", keys
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.parametrize("era", ["legacy", "modern"])
async def test_demo_tenants_query_their_own_orders(demo, era):
    url, keys = demo
    seen = {}
    for tenant, key in keys.items():
        async with connect(url, key, era) as client:
            names = [tool.name for tool in (await client.list_tools()).tools]
            assert {"sql__query_database", "sql__list_tables", "sql__describe_table"} <= set(names)
            result = await client.call_tool(
                "sql__query_database",
                {"sql": "SELECT tenant_id, id, amount_cents FROM orders ORDER BY id LIMIT 100"},
            )
        assert not result.is_error, result
        rows = result.structured_content["rows"]
        assert len(rows) == 100
        assert {row[0] for row in rows} == {tenant}
        seen[tenant] = rows
    # Same query, different data.
    assert seen["acme"] != seen["globex"]


DEMO_TOOLS = {
    "sql__query_database",
    "sql__list_tables",
    "sql__describe_table",
    "kit__echo",
    "kit__add",
    "kit__progress",
}


@pytest.mark.parametrize("era", ["legacy", "modern"])
async def test_demo_tenants_see_a_small_useful_tool_set(demo, era):
    url, keys = demo
    async with connect(url, keys["acme"], era) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert names == DEMO_TOOLS
        echoed = await client.call_tool("kit__echo", {"message": "hi"})
        assert echoed.content[0].text == "hi"
        # The test upstream's fault injection is not the demo's: refused by the tenant's policy.
        with pytest.raises(MCPError, match="not allowed by the tenant's policy"):
            await client.call_tool("kit__crash", {})


async def test_demo_sql_errors_are_tool_errors(demo):
    url, keys = demo
    async with connect(url, keys["acme"], "modern") as client:
        result = await client.call_tool("sql__query_database", {"sql": "DELETE FROM orders"})
    assert result.is_error
    assert re.search(r"`DELETE` is not allowed", result.content[0].text)
