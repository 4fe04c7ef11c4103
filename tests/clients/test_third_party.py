"""The official Python MCP SDK (mcp 2.3.0) against the gateway in front of upstreams we did not write.

The upstreams are the dual-era fixture servers of tests/servers, built on the official SDKs, so
the protocol handling on both sides of the gateway is someone else's:

- python-http:  tests/servers/everything.py (Python SDK) over Streamable HTTP, started here;
- ts-http:      tests/servers/ts/everything.mjs (TypeScript SDK v2) over Streamable HTTP, started here;
- python-stdio: tests/servers/everything.py over stdio, started by the gateway.

Each upstream is the one server of its own tenant (namespacing on: `py__test_sampling`,
`py+test://watched-resource`). Every test runs in both eras (legacy 2025-11-25 with a session,
modern 2026-07-28 stateless) against every upstream.

PALISADE_THIRD_PARTY_DIRECT=1 adds the targets python-http-direct and ts-http-direct: the same
tests against the fixture servers without the gateway, to tell a gateway defect from a test's.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import mcp_types as types
import pytest
from mcp.client.subscriptions import ResourceUpdated

from conftest import BIN_DIR, REPO, SHUTDOWN_TIMEOUT, STARTUP_TIMEOUT, _read_line, connect, key_hash, serve

# Logging, sampling, roots and resources/subscribe are deprecated in 2026-07-28 and tested on purpose.
pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")]

SERVERS = REPO / "tests" / "servers"
PYTHON = Path(os.environ.get("PALISADE_PYTHON", Path(__file__).resolve().parent / ".venv" / "bin" / "python"))
# How long a test waits for something that should arrive (a notification, an update).
DEADLINE = 15.0

WATCHED = "test://watched-resource"
AUTHORIZE_URL = "https://example.com/palisade/authorize"

UPSTREAMS = ["python-http", "ts-http", "python-stdio"]
if os.environ.get("PALISADE_THIRD_PARTY_DIRECT") == "1":
    UPSTREAMS += ["python-http-direct", "ts-http-direct"]


@dataclass
class Target:
    """Where a test connects, and how names of the upstream look there."""

    url: str
    key: str
    server: str | None  # the gateway's name for the upstream; None: connected directly

    def name(self, name: str) -> str:
        """A tool or prompt name as the client sees it."""
        return f"{self.server}__{name}" if self.server else name

    def uri(self, uri: str) -> str:
        """A resource URI as the client sees it."""
        return f"{self.server}+{uri}" if self.server else uri


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> int | None:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(SHUTDOWN_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


@pytest.fixture(scope="module")
def third_party(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Target]]:
    """Starts both fixture servers over HTTP and a gateway with one tenant per upstream."""
    if not (BIN_DIR / "palisade").is_file():
        pytest.fail(f"{BIN_DIR / 'palisade'} is missing: run `cargo build -p palisade`")
    node = shutil.which("node")
    if node is None or not (SERVERS / "ts" / "node_modules" / "@modelcontextprotocol" / "server").is_dir():
        pytest.fail("the TypeScript fixture server needs node and `npm ci` in tests/servers/ts")
    work = tmp_path_factory.mktemp("third-party")
    procs: list[tuple[subprocess.Popen, object]] = []
    try:
        urls = {}
        for name, argv in (
            ("python-http", [str(PYTHON), str(SERVERS / "everything.py"), "http", "--port", "0"]),
            ("ts-http", [node, str(SERVERS / "ts" / "everything.mjs"), "http", "--port", "0"]),
        ):
            log = open(work / f"{name}.stderr", "wb")
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log)
            procs.append((proc, log))
            urls[name] = _read_line(proc, "listening on ", STARTUP_TIMEOUT, name).split()[-1]

        pepper = secrets.token_hex(32).encode()
        (work / "pepper").write_bytes(pepper + b"\n")
        keys = {tenant: f"pal_{tenant}_" + secrets.token_urlsafe(32) for tenant in ("pyhttp", "tshttp", "pystdio")}
        config = work / "palisade.toml"
        config.write_text(
            f"""
[listen]
mcp = "127.0.0.1:0"
admin = "127.0.0.1:0"

[auth]
pepper_file = "{work / 'pepper'}"

[[servers]]
name = "py"
[servers.http]
url = "{urls['python-http']}"

[[servers]]
name = "ts"
[servers.http]
url = "{urls['ts-http']}"

[[servers]]
name = "pyio"
[servers.stdio]
command = "{PYTHON}"
args = ["{SERVERS / 'everything.py'}", "stdio"]
env = {{ HOME = "/tmp" }}

[[tenants]]
id = "pyhttp"
servers = ["py"]
keys = ["{key_hash(pepper, keys['pyhttp'])}"]

[[tenants]]
id = "tshttp"
servers = ["ts"]
keys = ["{key_hash(pepper, keys['tshttp'])}"]

[[tenants]]
id = "pystdio"
servers = ["pyio"]
keys = ["{key_hash(pepper, keys['pystdio'])}"]
"""
        )
        with serve(config, work / "palisade.stderr") as gw:
            yield {
                "python-http": Target(gw.mcp, keys["pyhttp"], "py"),
                "ts-http": Target(gw.mcp, keys["tshttp"], "ts"),
                "python-stdio": Target(gw.mcp, keys["pystdio"], "pyio"),
                "python-http-direct": Target(urls["python-http"], "unused", None),
                "ts-http-direct": Target(urls["ts-http"], "unused", None),
            }
    finally:
        for proc, log in reversed(procs):
            _stop(proc)
            log.close()  # type: ignore[attr-defined]


@pytest.fixture(params=UPSTREAMS)
def upstream(request: pytest.FixtureRequest, third_party: dict[str, Target]) -> Target:
    return third_party[request.param]


def text_of(result: types.CallToolResult) -> str:
    assert result.content, f"empty content: {result!r}"
    first = result.content[0]
    assert isinstance(first, types.TextContent), f"not text: {first!r}"
    return first.text


async def test_lists_the_fixture_tools(upstream, era):
    async with connect(upstream.url, upstream.key, era) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        result = await client.call_tool(upstream.name("test_simple_text"), {})
    for fixture in ("test_simple_text", "test_tool_with_progress", "test_sampling", "test_elicitation_url"):
        assert upstream.name(fixture) in names, sorted(names)
    assert not result.is_error
    assert text_of(result) == "This is a simple text response for testing."


async def test_progress_with_the_clients_token(upstream, era):
    seen: list[tuple[float, float | None]] = []
    raw: list[types.ProgressNotificationParams] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total))

    async def on_message(message) -> None:
        if isinstance(message, types.ProgressNotification):
            raw.append(message.params)

    token = f"progress-{secrets.token_hex(4)}"
    async with connect(upstream.url, upstream.key, era, message_handler=on_message) as client:
        # The SDK's own token (the request id) is matched by on_progress ...
        result = await client.call_tool(upstream.name("test_tool_with_progress"), {}, progress_callback=on_progress)
        assert text_of(result) == "Progress test completed"
        # ... and a token of the caller's choosing must come back exactly as sent.
        raw.clear()
        result = await client.call_tool(upstream.name("test_tool_with_progress"), {}, meta={"progressToken": token})
        assert text_of(result) == "Progress test completed"
    assert seen == [(0, 100), (50, 100), (100, 100)]
    assert [(p.progress_token, p.progress, p.total) for p in raw] == [(token, 0, 100), (token, 50, 100), (token, 100, 100)]


async def logs_of_a_call(upstream, era, level: str) -> list[types.LoggingMessageNotificationParams]:
    """The logs one `test_tool_with_logging` call brings a client that asked for `level` and above."""
    records: list[types.LoggingMessageNotificationParams] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        records.append(params)

    # 2026-07-28 servers log only for requests that opt in via _meta logLevel.
    options = {"logging_callback": on_log}
    if era == "modern":
        options["log_level"] = level
    async with connect(upstream.url, upstream.key, era, **options) as client:
        if era == "legacy":
            await client.set_logging_level(level)
        result = await client.call_tool(upstream.name("test_tool_with_logging"), {})
        assert text_of(result) == "Logging test completed"
    return records


async def test_log_messages(upstream, era):
    records = await logs_of_a_call(upstream, era, "info")
    assert [(r.level, r.logger, r.data) for r in records] == [
        ("info", "test_tool_with_logging", "Tool execution started"),
        ("info", "test_tool_with_logging", "Tool processing data"),
        ("info", "test_tool_with_logging", "Tool execution completed"),
    ]


async def test_log_level_filters(upstream, era):
    """Messages below the level the client asked for never reach it (all arrive before the result)."""
    assert await logs_of_a_call(upstream, era, "warning") == []


async def test_sampling(upstream, era):
    requests: list[types.CreateMessageRequestParams] = []

    async def sampling(context, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        requests.append(params)
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text=f"sampled<{params.messages[0].content.text}>"),
            model="third-party-test-model",
        )

    async with connect(upstream.url, upstream.key, era, sampling_callback=sampling) as client:
        result = await client.call_tool(upstream.name("test_sampling"), {"prompt": "what is 6x7?"})
    assert [(r.messages[0].content.text, r.max_tokens) for r in requests] == [("what is 6x7?", 100)]
    assert not result.is_error, text_of(result)
    assert text_of(result) == "LLM response: sampled<what is 6x7?>"


async def test_elicitation_form(upstream, era):
    asked: list[types.ElicitRequestParams] = []

    async def elicit(context, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params)
        return types.ElicitResult(action="accept", content={"username": "ada", "email": "ada@example.com"})

    async with connect(upstream.url, upstream.key, era, elicitation_callback=elicit) as client:
        result = await client.call_tool(upstream.name("test_elicitation"), {"message": "Who are you?"})
    assert len(asked) == 1, asked
    assert isinstance(asked[0], types.ElicitRequestFormParams), asked[0]
    assert asked[0].message == "Who are you?"
    assert set(asked[0].requested_schema["properties"]) == {"username", "email"}
    assert not result.is_error, text_of(result)
    assert text_of(result) == 'User response: action=accept, content={"username":"ada","email":"ada@example.com"}'


async def test_elicitation_url(upstream, era):
    asked: list[types.ElicitRequestParams] = []

    async def elicit(context, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params)
        return types.ElicitResult(action="accept")

    async with connect(upstream.url, upstream.key, era, elicitation_callback=elicit) as client:
        result = await client.call_tool(upstream.name("test_elicitation_url"), {})
    assert not result.is_error, text_of(result)
    assert len(asked) == 1, asked
    assert isinstance(asked[0], types.ElicitRequestURLParams), asked[0]
    assert (asked[0].mode, asked[0].url, asked[0].message) == ("url", AUTHORIZE_URL, "Please authorize access at the link")
    if era == "legacy":
        assert asked[0].elicitation_id, "2025-11-25 URL elicitation carries an elicitationId"
    assert text_of(result) == "URL elicitation: action=accept"


async def test_roots(upstream, era):
    calls = 0

    async def roots(context) -> types.ListRootsResult:
        nonlocal calls
        calls += 1
        return types.ListRootsResult(
            roots=[types.Root(uri="file:///srv/project", name="project"), types.Root(uri="file:///srv/data")]
        )

    async with connect(upstream.url, upstream.key, era, list_roots_callback=roots) as client:
        result = await client.call_tool(upstream.name("test_input_required_result_list_roots"), {})
    assert calls >= 1
    assert not result.is_error, text_of(result)
    assert text_of(result) == "Roots: file:///srv/project, file:///srv/data"


async def test_resources_list_and_read(upstream, era):
    async with connect(upstream.url, upstream.key, era) as client:
        resources = {str(r.uri): r for r in (await client.list_resources()).resources}
        templates = [t.uri_template for t in (await client.list_resource_templates()).resource_templates]
        static = await client.read_resource(upstream.uri("test://static-text"))
        watched = await client.read_resource(upstream.uri(WATCHED))
        templated = await client.read_resource(upstream.uri("test://template/42/data"))
    for uri in ("test://static-text", "test://static-binary", WATCHED):
        assert upstream.uri(uri) in resources, sorted(resources)
    assert resources[upstream.uri("test://static-text")].mime_type == "text/plain"
    assert upstream.uri("test://template/{id}/data") in templates, templates
    assert [(str(c.uri), c.text) for c in static.contents] == [
        (upstream.uri("test://static-text"), "This is the content of the static text resource.")
    ]
    assert [(str(c.uri), c.text) for c in watched.contents] == [(upstream.uri(WATCHED), "Watched resource content.")]
    assert len(templated.contents) == 1
    assert str(templated.contents[0].uri) == upstream.uri("test://template/42/data")
    assert json.loads(templated.contents[0].text) == {"id": "42", "templateTest": True, "data": "Data for ID: 42"}


async def _trigger_update(upstream: Target, era: str) -> None:
    """Changes the watched resource from another connection than the subscriber's."""
    async with connect(upstream.url, upstream.key, era) as other:
        result = await other.call_tool(upstream.name("test_update_watched_resource"), {})
    assert not result.is_error, text_of(result)
    assert text_of(result).startswith("test://watched-resource updated")


async def test_resource_subscription_legacy(upstream):
    """resources/subscribe, then a change made by another client reaches the subscriber."""
    uri = upstream.uri(WATCHED)
    updated: list[str] = []
    arrived = anyio.Event()

    async def on_message(message) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            updated.append(str(message.params.uri))
            arrived.set()

    async with connect(upstream.url, upstream.key, "legacy", message_handler=on_message) as client:
        capabilities = client.server_capabilities
        assert capabilities.resources is not None and capabilities.resources.subscribe, capabilities
        await client.subscribe_resource(uri)
        await _trigger_update(upstream, "legacy")
        with anyio.fail_after(DEADLINE):
            await arrived.wait()
        assert updated == [uri]
        reread = await client.read_resource(uri)
        assert reread.contents[0].text == "Watched resource content."
        await client.unsubscribe_resource(uri)


async def test_resource_subscription_modern(upstream):
    """subscriptions/listen with resourceSubscriptions, then another client's change reaches the listener."""
    uri = upstream.uri(WATCHED)
    async with connect(upstream.url, upstream.key, "modern") as client:
        async with client.listen(resource_subscriptions=[uri]) as subscription:
            assert uri in (subscription.honored.resource_subscriptions or []), subscription.honored
            await _trigger_update(upstream, "modern")
            with anyio.fail_after(DEADLINE):
                event = await subscription.__anext__()
    assert event == ResourceUpdated(uri=uri)


async def test_prompts(upstream, era):
    async with connect(upstream.url, upstream.key, era) as client:
        prompts = {p.name: p for p in (await client.list_prompts()).prompts}
        simple = await client.get_prompt(upstream.name("test_simple_prompt"))
        with_args = await client.get_prompt(upstream.name("test_prompt_with_arguments"), {"arg1": "x", "arg2": "y"})
    assert upstream.name("test_simple_prompt") in prompts, sorted(prompts)
    listed = prompts[upstream.name("test_prompt_with_arguments")]
    assert [(a.name, a.required) for a in listed.arguments or []] == [("arg1", True), ("arg2", True)]
    assert [(m.role, m.content.text) for m in simple.messages] == [("user", "This is a simple prompt for testing.")]
    assert [(m.role, m.content.text) for m in with_args.messages] == [
        ("user", "Prompt with arguments: arg1='x', arg2='y'")
    ]


async def test_completion(upstream, era):
    async with connect(upstream.url, upstream.key, era) as client:
        capabilities = client.server_capabilities
        ref = types.PromptReference(type="ref/prompt", name=upstream.name("test_prompt_with_arguments"))
        some = await client.complete(ref, {"name": "arg1", "value": "b"})
        every = await client.complete(ref, {"name": "arg1", "value": ""})
    assert capabilities.completions is not None, capabilities
    assert some.completion.values == ["beta"]
    assert every.completion.values == ["alpha", "beta", "gamma"]
