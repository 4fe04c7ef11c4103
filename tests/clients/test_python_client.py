"""The official Python MCP SDK (mcp 2.3.0) against the Palisade gateway, in both eras.

Every test runs twice: `legacy` (initialize handshake, 2025-11-25, Mcp-Session-Id) and
`modern` (stateless 2026-07-28: server/discover, per-request _meta, InputRequiredResult
for sampling/elicitation/roots, which the SDK's Client drives transparently).
"""

from __future__ import annotations

import json

import anyio
import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError

from conftest import connect

pytestmark = pytest.mark.anyio

STATIC_TEXT = "This is the content of the static text resource."


def text_of(result: types.CallToolResult) -> str:
    assert result.content, f"empty content: {result!r}"
    first = result.content[0]
    assert isinstance(first, types.TextContent), f"not text: {first!r}"
    return first.text


async def test_list_tools_namespaced(gateway, era):
    async with connect(gateway.url, gateway.acme_key, era) as client:
        names = [tool.name for tool in (await client.list_tools()).tools]
    for expected in ("kit__echo", "kit__add", "kit__progress", "kit__sampling", "kit__test_simple_text"):
        assert expected in names
    assert all(name.startswith("kit__") for name in names), names
    assert "echo" not in names


async def test_echo(gateway, era):
    async with connect(gateway.url, gateway.acme_key, era) as client:
        result = await client.call_tool("kit__echo", {"message": f"hello from {era}"})
    assert not result.is_error
    assert text_of(result) == f"hello from {era}"


async def test_add_structured_content(gateway, era):
    async with connect(gateway.url, gateway.acme_key, era) as client:
        result = await client.call_tool("kit__add", {"a": 2, "b": 40})
    assert not result.is_error
    assert result.structured_content == {"sum": 42}
    assert text_of(result) == "42"


async def test_read_resource(gateway, era):
    async with connect(gateway.url, gateway.acme_key, era) as client:
        uris = [str(r.uri) for r in (await client.list_resources()).resources]
        assert "kit+test://static-text" in uris
        result = await client.read_resource("kit+test://static-text")
    assert len(result.contents) == 1
    content = result.contents[0]
    assert isinstance(content, types.TextResourceContents)
    assert content.text == STATIC_TEXT
    assert str(content.uri) == "kit+test://static-text"


async def test_get_prompt(gateway, era):
    async with connect(gateway.url, gateway.acme_key, era) as client:
        names = [p.name for p in (await client.list_prompts()).prompts]
        assert "kit__test_simple_prompt" in names
        result = await client.get_prompt("kit__test_simple_prompt")
        with_args = await client.get_prompt("kit__test_prompt_with_arguments", {"arg1": "x", "arg2": "y"})
    assert [m.role for m in result.messages] == ["user"]
    assert result.messages[0].content.text == "This is a simple prompt for testing."
    assert with_args.messages[0].content.text == "Prompt with arguments: arg1='x', arg2='y'"


async def test_progress_notifications(gateway, era):
    seen: list[tuple[float, float | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total))

    async with connect(gateway.url, gateway.acme_key, era) as client:
        result = await client.call_tool("kit__progress", {"steps": 4}, progress_callback=on_progress)
    assert text_of(result) == "done"
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


async def test_sampling_callback(gateway, era):
    prompts: list[str] = []

    async def sampling(context, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        prompt = params.messages[0].content.text
        prompts.append(prompt)
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text=f"sampled<{prompt}>"),
            model="test-model",
        )

    async with connect(gateway.url, gateway.acme_key, era, sampling_callback=sampling) as client:
        result = await client.call_tool("kit__sampling", {"prompt": "what is 6x7?"})
    assert prompts == ["what is 6x7?"]
    assert not result.is_error, text_of(result)
    assert text_of(result) == "sampled<what is 6x7?>"


async def test_elicitation_callback(gateway, era):
    messages: list[str] = []

    async def elicit(context, params: types.ElicitRequestParams) -> types.ElicitResult:
        messages.append(params.message)
        return types.ElicitResult(action="accept", content={"name": "Ada"})

    async with connect(gateway.url, gateway.acme_key, era, elicitation_callback=elicit) as client:
        result = await client.call_tool("kit__elicitation", {"message": "Who are you?"})
    assert messages == ["Who are you?"]
    assert not result.is_error, text_of(result)
    assert json.loads(text_of(result)) == {"action": "accept", "content": {"name": "Ada"}}


async def test_roots_callback(gateway, era):
    async def roots(context) -> types.ListRootsResult:
        return types.ListRootsResult(roots=[types.Root(uri="file:///srv/project", name="project")])

    async with connect(gateway.url, gateway.acme_key, era, list_roots_callback=roots) as client:
        result = await client.call_tool("kit__roots", {})
    assert not result.is_error, text_of(result)
    assert json.loads(text_of(result)) == ["file:///srv/project"]


async def test_logging_notifications(gateway, era):
    records: list[types.LoggingMessageNotificationParams] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        records.append(params)

    # 2026-07-28 servers log only for requests that opt in via _meta logLevel.
    options = {"logging_callback": on_log}
    if era == "modern":
        options["log_level"] = "debug"
    async with connect(gateway.url, gateway.acme_key, era, **options) as client:
        result = await client.call_tool("kit__log", {"message": "audit me", "level": "warning"})
        assert text_of(result) == "logged"
    assert [(r.level, r.data) for r in records] == [("warning", "audit me")]


async def test_error_result(gateway, era):
    async with connect(gateway.url, gateway.acme_key, era) as client:
        result = await client.call_tool("kit__error_result", {})
    assert result.is_error is True
    assert text_of(result) == "something failed"


async def test_unknown_tool_is_an_mcp_error(gateway, era):
    async with connect(gateway.url, gateway.acme_key, era) as client:
        with pytest.raises(MCPError) as raised:
            await client.call_tool("kit__no_such_tool", {})
    assert raised.value.code == types.INVALID_PARAMS, raised.value.error


async def test_tenant_isolation(gateway, era):
    async with connect(gateway.url, gateway.globex_key, era) as client:
        names = [tool.name for tool in (await client.list_tools()).tools]
        assert "kit2__echo" in names
        assert all(name.startswith("kit2__") for name in names), names
        uris = [str(r.uri) for r in (await client.list_resources()).resources]
        assert uris and all(uri.startswith("kit2+") for uri in uris), uris

        echoed = await client.call_tool("kit2__echo", {"message": "globex"})
        assert text_of(echoed) == "globex"

        # acme's server does not exist for globex: an error, never acme's echo.
        try:
            leaked = await client.call_tool("kit__echo", {"message": "leak?"})
        except MCPError:
            leaked = None
        assert leaked is None or leaked.is_error, f"globex reached acme's kit: {leaked!r}"
        with pytest.raises(MCPError):
            await client.read_resource("kit+test://static-text")

    async with connect(gateway.url, gateway.acme_key, era) as client:
        names = [tool.name for tool in (await client.list_tools()).tools]
        assert not any(name.startswith("kit2__") for name in names)


async def test_bad_key_is_rejected(gateway, era):
    with pytest.raises(Exception):
        async with connect(gateway.url, "not-a-key", era) as client:
            await client.list_tools()


@pytest.mark.parametrize("tenant", ["acme", "globex"])
async def test_log_notifications_arrive_before_the_result(gateway, era, tenant):
    """Notifications of a call are all relayed, each once, in order; before its result, except
    where the upstream itself sends them elsewhere: globex's upstream (the testkit over HTTP, on
    rmcp) sends a legacy session's logs on the session's GET stream, which races the call's
    result directly as it does through the gateway (the client's own upstream session)."""
    key, tool = (gateway.acme_key, "kit__") if tenant == "acme" else (gateway.globex_key, "kit2__")
    expected = ["Tool execution started", "Tool processing data", "Tool execution completed"]
    may_trail = tenant == "globex" and era == "legacy"
    records: list[str] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        records.append(params.data)

    options = {"logging_callback": on_log}
    if era == "modern":
        options["log_level"] = "debug"
    wrong = []
    async with connect(gateway.url, key, era, **options) as client:
        for attempt in range(15):
            records.clear()
            result = await client.call_tool(tool + "test_tool_with_logging", {})
            assert not result.is_error
            if may_trail:
                with anyio.move_on_after(5):
                    while len(records) < len(expected):
                        await anyio.sleep(0.01)
            if records != expected:
                wrong.append((attempt, list(records)))
    assert not wrong, f"calls whose log notifications were not all relayed in order, once: {wrong}"


async def test_abandoned_input_request_does_not_silence_other_clients(isolated_gateway):
    """A 2026-07-28 client may drop an InputRequiredResult without retrying; other clients of the
    same upstream must still get their notifications meanwhile."""
    gw = isolated_gateway

    async def sampling(context, params):  # declared so the capability is there; never invoked
        raise AssertionError("not reached: the call is abandoned")

    async with connect(gw.url, gw.acme_key, "modern", sampling_callback=sampling) as modern:
        first = await modern.session.call_tool(
            "kit__sampling", {"prompt": "never answered"}, allow_input_required=True
        )
        assert isinstance(first, types.InputRequiredResult), first

    records: list[str] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        records.append(params.data)

    async with connect(gw.url, gw.acme_key, "legacy", logging_callback=on_log) as legacy:
        result = await legacy.call_tool("kit__log", {"message": "still heard", "level": "info"})
        assert text_of(result) == "logged"
    assert records == ["still heard"], "log notification lost after another client abandoned an input request"
