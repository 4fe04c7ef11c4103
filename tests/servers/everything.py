"""A dual-era MCP fixture server built on the official MCP Python SDK (`mcp` 2.3).

It implements the fixtures the official conformance suite calls (`test_simple_text`,
`test://static-text`, `test_simple_prompt`, the `test_input_required_result_*` tools, ...)
with the names and texts the suite checks, mirroring palisade-testkit, so the suite's
results against this server directly and through the Palisade gateway can be compared.

One server speaks both protocol eras:

- 2025-11-25 and older ("legacy"): `initialize`, sessions, server-to-client requests
  (sampling, elicitation, roots) sent mid-call, `logging/setLevel`, `resources/subscribe`.
- 2026-07-28 ("modern"): stateless requests carrying `_meta`, `server/discover`,
  `subscriptions/listen`, and an `InputRequiredResult` (with a `requestState` the SDK
  seals) instead of server-to-client requests.

Fixtures that need client input declare it with `Resolve(...)`, which the SDK turns into a
real request on legacy connections and into an `InputRequiredResult` on 2026-07-28.

Usage (with the SDK's virtualenv, e.g. tests/clients/.venv/bin/python):

    python everything.py stdio            # newline-delimited JSON-RPC on stdin/stdout
    python everything.py http --port N    # Streamable HTTP at http://127.0.0.1:N/mcp (0: any free port)

Over HTTP legacy clients get stateful sessions with resumable SSE streams (an in-memory
event store, Last-Event-ID), and 2026-07-28 requests are served on the same endpoint (the
SDK routes by the MCP-Protocol-Version header). Once it accepts connections the server
prints exactly one line to stdout, `listening on http://127.0.0.1:PORT/mcp`; logs go to
stderr.
"""

import argparse
import base64
import functools
import itertools
import json
import logging
import socket
import sys
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from typing import Annotated, Any, Literal, get_args

import anyio
import uvicorn
from mcp.server import NotificationOptions, ServerRequestContext
from mcp.server.caching import CACHEABLE_METHODS, CacheHint
from mcp.server.elicitation import render_elicitation_schema
from mcp.server.mcpserver import (
    AcceptedElicitation,
    Audio,
    CancelledElicitation,
    Context,
    DeclinedElicitation,
    Elicit,
    ElicitationResult,
    Image,
    ListRoots,
    MCPServer,
    Resolve,
    Sample,
    UserMessage,
)
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.tools import Tool
from mcp.server.session import ServerSession
from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp_types import (
    MISSING_REQUIRED_CLIENT_CAPABILITY,
    CallToolResult,
    ClientCapabilities,
    Completion,
    CompletionArgument,
    CompletionContext,
    CreateMessageResult,
    ElicitationCapability,
    ElicitRequest,
    ElicitRequestFormParams,
    ElicitRequestURLParams,
    ElicitResult,
    EmbeddedResource,
    EmptyResult,
    InputRequiredResult,
    JSONRPCMessage,
    ListRootsResult,
    LoggingLevel,
    MissingRequiredClientCapabilityErrorData,
    PromptReference,
    ResourceTemplateReference,
    SamplingMessage,
    SetLevelRequestParams,
    SubscribeRequestParams,
    TextContent,
    TextResourceContents,
    UnsubscribeRequestParams,
    UrlElicitationCapability,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel, Field, ValidationError, WithJsonSchema

# This fixture serves logging, sampling and roots on purpose: the SDK marks them deprecated
# as of 2026-07-28 (SEP-2577) and would warn on every use.
warnings.filterwarnings("ignore", category=MCPDeprecationWarning)

logger = logging.getLogger("everything")

# A 1x1 red PNG and a 16-bit mono 8 kHz WAV with eight silent samples.
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC")
WAV = base64.b64decode("UklGRjQAAABXQVZFZm10IBAAAAABAAEAQB8AAIA+AAACABAAZGF0YRAAAAAAAAAAAAAAAAAAAAAAAAAA")

# How long (ms) an SSE client waits before resuming a stream the server closed.
SSE_RETRY_MS = 200

# Log levels from least to most severe (the RFC 5424 order of the `LoggingLevel` literal).
LOG_LEVELS: tuple[LoggingLevel, ...] = get_args(LoggingLevel)


def compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def is_modern(ctx: Context) -> bool:
    """Whether the request runs under the stateless 2026-07-28 lifecycle."""
    return ctx.protocol_version in MODERN_PROTOCOL_VERSIONS


# --- Resumable SSE streams ------------------------------------------------------------------------


class InMemoryEventStore(EventStore):
    """Keeps recent SSE events so a client can resume a closed stream with Last-Event-ID."""

    def __init__(self, max_events: int = 10_000) -> None:
        self._events: OrderedDict[EventId, tuple[StreamId, JSONRPCMessage | None]] = OrderedDict()
        self._ids = itertools.count(1)
        self._max_events = max_events

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        event_id = str(next(self._ids))
        self._events[event_id] = (stream_id, message)
        if len(self._events) > self._max_events:
            self._events.popitem(last=False)
        return event_id

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        if last_event_id not in self._events:
            return None
        stream_id, _ = self._events[last_event_id]
        replaying = False
        for event_id, (event_stream, message) in list(self._events.items()):
            # A None message is a priming event: it only marks a resume point.
            if replaying and event_stream == stream_id and message is not None:
                await send_callback(EventMessage(message, event_id))
            replaying = replaying or event_id == last_event_id
        return stream_id


# --- A tool whose input schema pydantic cannot express --------------------------------------------

JSON_SCHEMA_2020_12 = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "$anchor": "addressDef",
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        },
    },
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
        "phone": {"type": "string"},
        "email": {"type": "string"},
    },
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}


def json_schema_2020_12_tool(
    name: str | None = None,
    address: dict[str, str] | None = None,
    contactMethod: Literal["phone", "email"] | None = None,  # camelCase: the schema's property name
    phone: str | None = None,
    email: str | None = None,
) -> str:
    """Tool with JSON Schema 2020-12 features"""
    received = {"name": name, "address": address, "contactMethod": contactMethod, "phone": phone, "email": email}
    return f"Received: {compact_json({key: value for key, value in received.items() if value is not None})}"


# The signature validates the arguments; the listing advertises the full 2020-12 schema.
JSON_SCHEMA_TOOL = Tool.from_function(json_schema_2020_12_tool).model_copy(update={"parameters": JSON_SCHEMA_2020_12})

mcp = MCPServer(
    "palisade-everything",
    title="Palisade everything fixture (Python SDK)",
    version="1.0.0",
    instructions="Conformance fixture server built on the MCP Python SDK: every fixture, both protocol eras.",
    tools=[JSON_SCHEMA_TOOL],
    # Lists change at runtime (test_trigger_*), so cached results are immediately stale.
    cache_hints={method: CacheHint(ttl_ms=0, scope="private") for method in CACHEABLE_METHODS},
)

# The legacy `initialize` capabilities take their listChanged flags from NotificationOptions,
# which MCPServer has no setting for, and the HTTP session manager builds them itself: bind ours.
_lowlevel = mcp._lowlevel_server  # MCPServer exposes no public hook for this or the handlers below
_lowlevel.create_initialization_options = functools.partial(
    _lowlevel.create_initialization_options, NotificationOptions(prompts_changed=True, tools_changed=True)
)


# --- Legacy logging/setLevel and resources/subscribe ----------------------------------------------

# The minimum level each legacy session asked for, keyed by Mcp-Session-Id (None: stdio). The SDK
# gives handlers no per-connection storage; a fixture can afford to keep ended sessions' entries.
session_log_levels: dict[str | None, LoggingLevel] = {}


def session_key(headers: Mapping[str, str] | None) -> str | None:
    return headers.get("mcp-session-id") if headers is not None else None


async def set_logging_level(ctx: ServerRequestContext, params: SetLevelRequestParams) -> EmptyResult:
    session_log_levels[session_key(getattr(ctx.request, "headers", None))] = params.level
    return EmptyResult()


# The legacy sessions subscribed to each resource URI, keyed by Mcp-Session-Id (None: stdio):
# test_update_watched_resource sends them `notifications/resources/updated`.
subscribers: dict[str, dict[str | None, ServerSession]] = {}


async def subscribe_resource(ctx: ServerRequestContext, params: SubscribeRequestParams) -> EmptyResult:
    logger.info("resources/subscribe %s", params.uri)
    subscribers.setdefault(str(params.uri), {})[session_key(getattr(ctx.request, "headers", None))] = ctx.session
    return EmptyResult()


async def unsubscribe_resource(ctx: ServerRequestContext, params: UnsubscribeRequestParams) -> EmptyResult:
    logger.info("resources/unsubscribe %s", params.uri)
    subscribers.get(str(params.uri), {}).pop(session_key(getattr(ctx.request, "headers", None)), None)
    return EmptyResult()


# Registering them also advertises the `logging` and `resources.subscribe` capabilities.
_lowlevel.add_request_handler("logging/setLevel", SetLevelRequestParams, set_logging_level)
_lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, subscribe_resource)
_lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, unsubscribe_resource)


async def log(ctx: Context, level: LoggingLevel, message: str, logger_name: str) -> None:
    """Sends `notifications/message`, honouring the session's `logging/setLevel` (legacy).

    On 2026-07-28 the SDK sends only what the request's `_meta` log level opts into.
    """
    if not is_modern(ctx):
        threshold = session_log_levels.get(session_key(ctx.headers))
        if threshold is not None and LOG_LEVELS.index(level) < LOG_LEVELS.index(threshold):
            return
    await ctx.log(level, message, logger_name=logger_name)


# --- Content fixtures -----------------------------------------------------------------------------


@mcp.tool()
def test_simple_text() -> str:
    """Returns simple text"""
    return "This is a simple text response for testing."


@mcp.tool()
def test_image_content() -> Image:
    """Returns an image"""
    return Image(data=PNG, format="png")


@mcp.tool()
def test_audio_content() -> Audio:
    """Returns audio"""
    return Audio(data=WAV, format="wav")


@mcp.tool()
def test_embedded_resource() -> EmbeddedResource:
    """Returns an embedded resource"""
    return EmbeddedResource(
        type="resource",
        resource=TextResourceContents(
            uri="test://embedded-resource", mime_type="text/plain", text="This is an embedded resource content."
        ),
    )


@mcp.tool()
def test_multiple_content_types() -> list[TextContent | Image | EmbeddedResource]:
    """Returns text, image and resource content"""
    return [
        TextContent(type="text", text="Multiple content types test:"),
        Image(data=PNG, format="png"),
        EmbeddedResource(
            type="resource",
            resource=TextResourceContents(
                uri="test://mixed-content-resource",
                mime_type="application/json",
                text=compact_json({"test": "data", "value": 123}),
            ),
        ),
    ]


@mcp.tool()
def test_error_handling() -> CallToolResult:
    """Always returns an isError result"""
    # Returned rather than raised: a raised ToolError's text gets an "Error executing tool" prefix.
    return CallToolResult(
        content=[TextContent(type="text", text="This tool intentionally returns an error for testing")], is_error=True
    )


@mcp.tool()
def test_custom_header(
    region: Annotated[str, Field(json_schema_extra={"x-mcp-header": "Region"})],
) -> str:
    """Echoes `region`, which clients mirror in the Mcp-Param-Region header"""
    return f"region={region}"


# --- Notifications during a call ------------------------------------------------------------------


@mcp.tool()
async def test_tool_with_logging(ctx: Context) -> str:
    """Sends three info log messages ~50ms apart"""
    for i, message in enumerate(["Tool execution started", "Tool processing data", "Tool execution completed"]):
        if i > 0:
            await anyio.sleep(0.05)
        await log(ctx, "info", message, "test_tool_with_logging")
    return "Logging test completed"


@mcp.tool()
async def test_logging_tool(ctx: Context) -> str:
    """Logs three messages, honouring the request's logLevel"""
    for message in ["first log message", "second log message", "third log message"]:
        await log(ctx, "info", message, "test_logging_tool")
    return "Logging tool completed"


@mcp.tool()
async def test_tool_with_progress(ctx: Context) -> str:
    """Reports progress 0, 50, 100 of 100"""
    for i, progress in enumerate([0, 50, 100]):
        if i > 0:
            await anyio.sleep(0.05)
        await ctx.report_progress(progress, 100)
    return "Progress test completed"


@mcp.tool()
async def test_reconnection(ctx: Context) -> str:
    """Closes its SSE stream mid-call, then answers (SSE polling scenario)"""
    # The client resumes the closed stream with Last-Event-ID and gets the result there. The SDK
    # makes this a no-op where that is impossible (stdio, clients older than 2025-11-25).
    await ctx.close_sse_stream()
    await anyio.sleep(0.1)
    return "Reconnection test completed"


# --- Client input: resolvers ask, the SDK picks the era's transport -------------------------------


class UserInfo(BaseModel):
    username: str = Field(description="User's response")
    email: str = Field(description="User's email address")


class Defaults(BaseModel):
    name: str = "John Doe"
    age: int = 30
    score: float = 95.5
    status: Literal["active", "inactive", "pending"] = "active"
    verified: bool = True


def titled(options: dict[str, str]) -> list[dict[str, str]]:
    return [{"const": value, "title": title} for value, title in options.items()]


# pydantic renders a Literal as an untitled `enum`; the titled variants bring their own schema.
TitledSingle = Annotated[
    Literal["value1", "value2", "value3"],
    WithJsonSchema(
        {
            "type": "string",
            "oneOf": titled({"value1": "First Option", "value2": "Second Option", "value3": "Third Option"}),
        }
    ),
]
TitledMulti = Annotated[
    list[Literal["value1", "value2", "value3"]],
    WithJsonSchema(
        {
            "type": "array",
            "items": {"anyOf": titled({"value1": "First Choice", "value2": "Second Choice", "value3": "Third Choice"})},
        }
    ),
]
LegacyTitledEnum = Annotated[
    Literal["opt1", "opt2", "opt3"],
    Field(json_schema_extra={"enumNames": ["Option One", "Option Two", "Option Three"]}),
]


class EnumChoices(BaseModel):
    """One field per enum schema variant of SEP-1330."""

    untitledSingle: Literal["option1", "option2", "option3"] | None = None
    titledSingle: TitledSingle | None = None
    legacyEnum: LegacyTitledEnum | None = None
    untitledMulti: list[Literal["option1", "option2", "option3"]] | None = None
    titledMulti: TitledMulti | None = None


class Name(BaseModel):
    name: str


class Color(BaseModel):
    color: str


class Confirmation(BaseModel):
    ok: bool


class OptionalConfirmation(BaseModel):
    ok: bool | None = None


def outcome(result: ElicitationResult[Any]) -> str:
    """`action=…, content=…` for an elicitation outcome, content as the client sent it."""
    content = result.data.model_dump_json(exclude_unset=True) if isinstance(result, AcceptedElicitation) else "null"
    return f"action={result.action}, content={content}"


def sampled_text(result: CreateMessageResult) -> str:
    return result.content.text if isinstance(result.content, TextContent) else result.content.model_dump_json()


def root_uris(result: ListRootsResult) -> str:
    return ", ".join(str(root.uri) for root in result.roots)


def user_says(text: str) -> list[SamplingMessage]:
    return [SamplingMessage(role="user", content=TextContent(type="text", text=text))]


def ask_user_info(message: str) -> Elicit[UserInfo]:
    return Elicit(message, UserInfo)


def ask_defaults() -> Elicit[Defaults]:
    return Elicit("Please review the defaults", Defaults)


def ask_enum_choices() -> Elicit[EnumChoices]:
    return Elicit("Please choose", EnumChoices)


def ask_llm(prompt: str) -> Sample:
    return Sample(user_says(prompt), max_tokens=100)


def ask_something() -> Sample:
    return Sample(user_says("Say something"), max_tokens=50)


def ask_name() -> Elicit[Name]:
    return Elicit("What is your name?", Name)


async def ask_name_with_progress(ctx: Context) -> Elicit[Name]:
    await ctx.report_progress(0, 1, "asking the user")
    return Elicit("What is your name?", Name)


def ask_capital() -> Sample:
    return Sample(user_says("What is the capital of France?"), max_tokens=100)


def ask_greeting() -> Sample:
    return Sample(user_says("Generate a greeting"), max_tokens=50)


def ask_roots() -> ListRoots:
    return ListRoots()


def ask_confirmation() -> Elicit[Confirmation]:
    return Elicit("Please confirm", Confirmation)


def ask_step1() -> Elicit[Name]:
    return Elicit("Step 1: What is your name?", Name)


def ask_step2(step1: Annotated[Name, Resolve(ask_step1)]) -> Elicit[Color]:
    # Depending on step 1 makes this a second round on 2026-07-28.
    return Elicit("Step 2: What is your favorite color?", Color)


def declares(ctx: Context, capability: Literal["elicitation", "sampling", "roots"]) -> bool:
    capabilities = ctx.client_capabilities
    return capabilities is not None and getattr(capabilities, capability) is not None


def confirm_if_declared(ctx: Context) -> Elicit[OptionalConfirmation] | None:
    return Elicit("Please confirm", OptionalConfirmation) if declares(ctx, "elicitation") else None


def say_hello_if_declared(ctx: Context) -> Sample | None:
    return Sample(user_says("Say hello"), max_tokens=20) if declares(ctx, "sampling") else None


@mcp.tool()
def test_sampling(prompt: str, reply: Annotated[CreateMessageResult, Resolve(ask_llm)]) -> str:
    """Requests LLM sampling from the client"""
    return f"LLM response: {sampled_text(reply)}"


@mcp.tool()
def test_elicitation(message: str, answer: Annotated[ElicitationResult[UserInfo], Resolve(ask_user_info)]) -> str:
    """Requests user input (username, email) from the client"""
    return f"User response: {outcome(answer)}"


@mcp.tool()
def test_elicitation_sep1034_defaults(answer: Annotated[ElicitationResult[Defaults], Resolve(ask_defaults)]) -> str:
    """Elicitation with default values for every primitive type (SEP-1034)"""
    return f"Elicitation completed: {outcome(answer)}"


@mcp.tool()
def test_elicitation_sep1330_enums(answer: Annotated[ElicitationResult[EnumChoices], Resolve(ask_enum_choices)]) -> str:
    """Elicitation with every enum schema variant (SEP-1330)"""
    return f"Elicitation completed: {outcome(answer)}"


@mcp.tool()
def test_missing_capability(reply: Annotated[CreateMessageResult, Resolve(ask_something)]) -> str:
    """Needs the client's sampling capability (-32021 without it)"""
    return f"Sampled: {sampled_text(reply)}"


@mcp.tool()
def test_streaming_elicitation(answer: Annotated[ElicitationResult[Name], Resolve(ask_name_with_progress)]) -> str:
    """Reports progress, then needs elicitation (MRTR on 2026-07-28)"""
    return outcome(answer)


@mcp.tool()
def test_input_required_result_sampling(reply: Annotated[CreateMessageResult, Resolve(ask_capital)]) -> str:
    """MRTR: asks for a sampled answer"""
    return sampled_text(reply)


@mcp.tool()
def test_input_required_result_list_roots(roots: Annotated[ListRootsResult, Resolve(ask_roots)]) -> str:
    """MRTR: asks for the client's roots"""
    return f"Roots: {root_uris(roots)}"


@mcp.tool()
def test_input_required_result_multiple_inputs(
    user: Annotated[Name, Resolve(ask_name)],
    greeting: Annotated[CreateMessageResult, Resolve(ask_greeting)],
    roots: Annotated[ListRootsResult, Resolve(ask_roots)],
) -> str:
    """MRTR: elicitation, sampling and roots at once"""
    return f"name={user.name}, greeting={sampled_text(greeting)}, roots={root_uris(roots)}"


@mcp.tool()
def test_input_required_result_multi_round(
    step1: Annotated[Name, Resolve(ask_step1)], step2: Annotated[Color, Resolve(ask_step2)]
) -> str:
    """MRTR: two rounds with evolving requestState"""
    return f"name={step1.name}, color={step2.color}"


def state_bound(confirmation: Annotated[Confirmation, Resolve(ask_confirmation)]) -> str:
    # On 2026-07-28 the SDK accepts the answer only with the requestState it sealed when asking,
    # and rejects a tampered one with -32602 before this runs.
    return "state-ok: requestState verified"


mcp.add_tool(state_bound, name="test_input_required_result_request_state", description="MRTR: round-trips requestState")
mcp.add_tool(
    state_bound, name="test_input_required_result_tampered_state", description="MRTR: rejects a tampered requestState"
)


@mcp.tool()
def test_input_required_result_capabilities(
    confirmation: Annotated[OptionalConfirmation | None, Resolve(confirm_if_declared)],
    hello: Annotated[CreateMessageResult | None, Resolve(say_hello_if_declared)],
) -> str:
    """MRTR: asks only for declared capabilities"""
    answered = [answer for answer in (confirmation, hello) if answer is not None]
    return f"answered: {len(answered)}" if answered else "no input capabilities declared"


# --- Client input under a key the suite names -----------------------------------------------------
# `Resolve` keys each question by its resolver (`module:qualname`), but the suite expects
# `inputRequests.user_name` and `inputRequests.user_context`, and prompts take no resolvers:
# these fixtures ask by hand, still leaving the wire format to the SDK.


async def elicit_as(
    ctx: Context, key: str, message: str, schema: type[BaseModel]
) -> ElicitationResult[Any] | InputRequiredResult:
    """Asks for a form elicitation under `key`: returns the outcome, or (2026-07-28) the round's result."""
    if not declares(ctx, "elicitation"):
        required = ClientCapabilities(elicitation=ElicitationCapability())
        raise MCPError(
            code=MISSING_REQUIRED_CLIENT_CAPABILITY,
            message="Client did not declare the elicitation capability",
            data=MissingRequiredClientCapabilityErrorData(required_capabilities=required).model_dump(
                by_alias=True, mode="json", exclude_none=True
            ),
        )
    if not is_modern(ctx):
        return await ctx.elicit(message, schema)
    answer = (ctx.input_responses or {}).get(key)
    if isinstance(answer, ElicitResult):
        if answer.action == "decline":
            return DeclinedElicitation()
        if answer.action == "cancel":
            return CancelledElicitation()
        try:
            return AcceptedElicitation(data=schema.model_validate(answer.content))
        except ValidationError:
            logger.info("re-asking %r: the answer does not match the schema", key)
    # No (usable) answer yet: ask, and finish when the client retries with it.
    request = ElicitRequest(
        params=ElicitRequestFormParams(message=message, requested_schema=render_elicitation_schema(schema))
    )
    return InputRequiredResult(input_requests={key: request})


@mcp.tool()
async def test_input_required_result_elicitation(ctx: Context) -> str | InputRequiredResult:
    """MRTR: asks for a name"""
    answer = await elicit_as(ctx, "user_name", "What is your name?", Name)
    if isinstance(answer, InputRequiredResult):
        return answer
    return f"Hello, {answer.data.name if isinstance(answer, AcceptedElicitation) else 'stranger'}!"


# --- URL-mode elicitation -------------------------------------------------------------------------

AUTHORIZE_URL = "https://example.com/palisade/authorize"


@mcp.tool()
async def test_elicitation_url(ctx: Context) -> str | InputRequiredResult:
    """Asks the user to open a URL (URL-mode elicitation)"""
    message = "Please authorize access at the link"
    capabilities = ctx.client_capabilities
    if capabilities is None or capabilities.elicitation is None or capabilities.elicitation.url is None:
        # A server must not send a mode the client did not declare (the TypeScript SDK refuses too).
        required = ClientCapabilities(elicitation=ElicitationCapability(url=UrlElicitationCapability()))
        raise MCPError(
            code=MISSING_REQUIRED_CLIENT_CAPABILITY,
            message="Client did not declare URL-mode elicitation",
            data=MissingRequiredClientCapabilityErrorData(required_capabilities=required).model_dump(
                by_alias=True, mode="json", exclude_none=True
            ),
        )
    if not is_modern(ctx):
        outcome = await ctx.elicit_url(message, AUTHORIZE_URL, elicitation_id=uuid.uuid4().hex)
        return f"URL elicitation: action={outcome.action}"
    answer = (ctx.input_responses or {}).get("authorize")
    if isinstance(answer, ElicitResult):
        return f"URL elicitation: action={answer.action}"
    # 2026-07-28 URL elicitation has no elicitationId: the retry carries the answer.
    request = ElicitRequest(params=ElicitRequestURLParams(message=message, url=AUTHORIZE_URL))
    return InputRequiredResult(input_requests={"authorize": request})


# --- List changes ---------------------------------------------------------------------------------


def extra() -> str:
    """Listed while test_trigger_tool_change has added it"""
    return "extra tool called"


def test_extra_prompt() -> str:
    """Listed while test_trigger_prompt_change has toggled it on"""
    return "Extra prompt."


@mcp.tool()
async def test_trigger_tool_change(ctx: Context) -> str:
    """Toggles the `extra` tool and announces tools/list_changed"""
    try:
        mcp.remove_tool("extra")
        listed = False
    except ToolError:
        mcp.add_tool(extra)
        listed = True
    # Each era hears of it its own way; the SDK drops what the request's era cannot carry.
    await ctx.notify_tools_changed()  # 2026-07-28 subscriptions/listen streams
    await ctx.session.send_tool_list_changed()  # legacy session
    return f"extra tool listed: {str(listed).lower()}"


@mcp.tool()
async def test_trigger_prompt_change(ctx: Context) -> str:
    """Toggles `test_extra_prompt` and announces prompts/list_changed"""
    try:
        mcp.remove_prompt("test_extra_prompt")
        listed = False
    except ValueError:
        mcp.prompt()(test_extra_prompt)
        listed = True
    await ctx.notify_prompts_changed()
    await ctx.session.send_prompt_list_changed()
    return f"test_extra_prompt listed: {str(listed).lower()}"


# --- Resources ------------------------------------------------------------------------------------


@mcp.resource(
    "test://static-text",
    name="static-text",
    title="Static text",
    description="A static text resource",
    mime_type="text/plain",
)
def static_text() -> str:
    return "This is the content of the static text resource."


@mcp.resource(
    "test://static-binary",
    name="static-binary",
    title="Static binary",
    description="A static binary resource (1x1 PNG)",
    mime_type="image/png",
)
def static_binary() -> bytes:
    return PNG


@mcp.resource(
    "test://watched-resource",
    name="watched-resource",
    description="A resource clients may subscribe to",
    mime_type="text/plain",
)
def watched_resource() -> str:
    return "Watched resource content."


@mcp.tool()
async def test_update_watched_resource(ctx: Context) -> str:
    """Announces an update of test://watched-resource to its subscribers"""
    uri = "test://watched-resource"
    await ctx.notify_resource_updated(uri)  # 2026-07-28 subscriptions/listen streams
    notified = 0
    sessions = subscribers.get(uri, {})
    for key, session in list(sessions.items()):  # legacy sessions that sent resources/subscribe
        try:
            await session.send_resource_updated(uri)
            notified += 1
        except Exception:  # the session ended without unsubscribing
            logger.info("dropping the subscription of ended session %s", key)
            sessions.pop(key, None)
    return f"test://watched-resource updated; legacy subscribers notified: {notified}"


@mcp.resource(
    "test://template/{id}/data",
    name="template-data",
    title="Templated data",
    description="JSON data for an id",
    mime_type="application/json",
)
def template_data(id: str) -> str:  # named like the template variable
    return compact_json({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})


# --- Prompts and completion -----------------------------------------------------------------------


@mcp.prompt(description="A prompt with no arguments")
def test_simple_prompt() -> UserMessage:
    return UserMessage("This is a simple prompt for testing.")


@mcp.prompt(description="A prompt with two required arguments")
def test_prompt_with_arguments(
    arg1: Annotated[str, Field(description="First test argument")],
    arg2: Annotated[str, Field(description="Second test argument")],
) -> UserMessage:
    return UserMessage(f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'")


@mcp.prompt(description="A prompt that embeds a resource")
def test_prompt_with_embedded_resource(
    resourceUri: Annotated[str, Field(description="URI of the resource to embed")],  # the argument's wire name
) -> list[UserMessage]:
    resource = TextResourceContents(
        uri=resourceUri, mime_type="text/plain", text="Embedded resource content for testing."
    )
    return [
        UserMessage(EmbeddedResource(type="resource", resource=resource)),
        UserMessage("Please process the embedded resource above."),
    ]


@mcp.prompt(description="A prompt with image content")
def test_prompt_with_image() -> list[UserMessage]:
    return [UserMessage(Image(data=PNG, format="png")), UserMessage("Please analyze the image above.")]


class PromptContext(BaseModel):
    context: str


@mcp.prompt(description="A prompt that needs elicited context first (MRTR on 2026-07-28)")
async def test_input_required_result_prompt(ctx: Context) -> UserMessage | InputRequiredResult:
    answer = await elicit_as(ctx, "user_context", "What context should the prompt use?", PromptContext)
    if isinstance(answer, InputRequiredResult):
        return answer
    context = answer.data.context if isinstance(answer, AcceptedElicitation) else "(none)"
    return UserMessage(f"Prompt with context: {context}")


COMPLETIONS = ["alpha", "beta", "gamma"]


@mcp.completion()
async def complete(
    ref: PromptReference | ResourceTemplateReference, argument: CompletionArgument, context: CompletionContext | None
) -> Completion:
    """Prefix matches for `arg1` of test_prompt_with_arguments; nothing else completes."""
    values: list[str] = []
    if isinstance(ref, PromptReference) and ref.name == "test_prompt_with_arguments" and argument.name == "arg1":
        values = [value for value in COMPLETIONS if value.startswith(argument.value)]
    return Completion(values=values, total=len(values), has_more=False)


# --- Command line ---------------------------------------------------------------------------------


class AnnouncingServer(uvicorn.Server):
    """Prints the endpoint to stdout once uvicorn accepts connections."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            port = self.servers[0].sockets[0].getsockname()[1]
            print(f"listening on http://127.0.0.1:{port}/mcp", flush=True)


def serve_http(port: int) -> None:
    app = mcp.streamable_http_app(event_store=InMemoryEventStore(), retry_interval=SSE_RETRY_MS)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_config=None,  # keep uvicorn on the root logger: stderr
        access_log=False,
        # Open SSE streams would otherwise hold a shutdown forever.
        timeout_graceful_shutdown=1,
    )
    AnnouncingServer(config).run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    transports = parser.add_subparsers(dest="transport", required=True)
    transports.add_parser("stdio", help="serve newline-delimited JSON-RPC on stdin/stdout")
    http = transports.add_parser("http", help="serve Streamable HTTP at http://127.0.0.1:PORT/mcp")
    http.add_argument("--port", type=int, required=True, help="port to bind on 127.0.0.1 (0: any free port)")
    args = parser.parse_args()

    # Replaces the bare-message handler MCPServer installed; stdout is the protocol's (stdio) or the announcement's.
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    if args.transport == "stdio":
        mcp.run("stdio")
    else:
        serve_http(args.port)


if __name__ == "__main__":
    main()
