"""The test upstream: one MCP server for the conformance suite and the gateway's end-to-end tests.

Run it as a process:

    python -m tests.servers.upstream --http --port N [--stateless]   # Streamable HTTP at /mcp
    python -m tests.servers.upstream --stdio

It carries:

* everything the server scenarios of ``@modelcontextprotocol/conformance`` 0.1.16 exercise
  (``test_*`` tools, ``test://`` resources, ``test_*`` prompts, completion, logging/setLevel,
  resources/subscribe, an event store for SSE resumption);
* tools for the gateway's own tests: ``echo``, ``add``, ``execute_query``, ``delete_item``,
  ``write_file``, ``slow_progress``, ``ask_user``, ``sample``, ``crash``, ``hang``,
  ``calls_seen``.

Proof of delivery: every ``tools/call`` that reaches this process is appended, before the tool
runs, as one JSON line ``{"tool": name, "arguments": {...}, "pid": ...}`` to the file named by
``UPSTREAM_CALL_LOG`` (flushed at once), and ``calls_seen()`` returns the tool names seen so far.
A cancelled ``hang`` call appends ``{"event": "cancelled", "tool": "hang"}``.

Server-to-client requests (``ask_user``, ``sample`` and the conformance elicitation/sampling
tools) work in both protocol eras: on 2025-11-25 and earlier they are sent mid-call on the
request's stream; on 2026-07-28 the tool answers with an ``InputRequiredResult`` and reads the
client's answer from ``input_responses`` on the retry (so a 2026 call is logged once per round).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import struct
import sys
import threading
import warnings
import wave
import zlib
from typing import Annotated, Any

import anyio
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer, UserMessage
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import Field

from gateway.upstream.stdio_events import MemoryEvents

SERVER_NAME = "celgate-test-upstream"
CALL_LOG_ENV = "UPSTREAM_CALL_LOG"


# --------------------------------------------------------------------------- test media


def _png_1x1_red() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1x1, 8-bit RGB
    pixels = zlib.compress(b"\x00\xff\x00\x00")  # filter byte + one red pixel
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def _wav_silence() -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00\x00" * 80)  # 10 ms of silence
    return buf.getvalue()


PNG_BYTES = _png_1x1_red()
PNG_B64 = base64.b64encode(PNG_BYTES).decode()
WAV_B64 = base64.b64encode(_wav_silence()).decode()


# --------------------------------------------------------------------------- call log


class CallLog:
    """Records every tools/call that reached this process (memory + optional JSONL file)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.names: list[str] = []
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        with self._lock:
            if "tool" in record and "event" not in record:
                self.names.append(str(record["tool"]))
            if self.path:
                line = json.dumps(record, sort_keys=True, default=str) + "\n"
                with open(self.path, "a", encoding="utf-8") as fh:
                    fh.write(line)
                    fh.flush()
                    os.fsync(fh.fileno())


# --------------------------------------------------------------------------- event store


class MemoryEventStore(MemoryEvents):
    """The gateway's own bounded in-memory event store (resumption with Last-Event-ID)."""

    def __init__(self, max_events: int = 10_000) -> None:
        super().__init__(max_events)


# --------------------------------------------------------------------------- helpers

LOG_LEVELS = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"]


def _conn_key(headers: Any) -> str:
    """Which connection a request belongs to: the HTTP session id, or one stdio connection."""
    if headers is None:
        return "-"
    return str(headers.get("mcp-session-id") or "-")


def _is_modern(ctx: Context) -> bool:
    return ctx.protocol_version in MODERN_PROTOCOL_VERSIONS


def _text(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)])


def _elicit_request(message: str, schema: dict[str, Any]) -> types.ElicitRequest:
    return types.ElicitRequest(
        params=types.ElicitRequestFormParams(message=message, requested_schema=schema)
    )


def _sampling_request(prompt: str, max_tokens: int = 100) -> types.CreateMessageRequest:
    return types.CreateMessageRequest(
        params=types.CreateMessageRequestParams(
            messages=[
                types.SamplingMessage(
                    role="user", content=types.TextContent(type="text", text=prompt)
                )
            ],
            max_tokens=max_tokens,
        )
    )


async def _ask_client(
    ctx: Context, key: str, request: types.ElicitRequest | types.CreateMessageRequest
) -> Any:
    """Send a server-to-client request in either era.

    Returns the client's result, or an ``InputRequiredResult`` the tool must return as is
    (2026-07-28: the client answers by retrying the call with ``input_responses``).
    """
    if _is_modern(ctx):
        responses = ctx.input_responses or {}
        if key in responses:
            return responses[key]
        return types.InputRequiredResult(input_requests={key: request})
    session = ctx.session
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        if isinstance(request, types.ElicitRequest):
            params = request.params
            assert isinstance(params, types.ElicitRequestFormParams)
            return await session.elicit_form(
                params.message, params.requested_schema, related_request_id=ctx.request_id
            )
        p = request.params
        return await session.create_message(
            p.messages, max_tokens=p.max_tokens, related_request_id=ctx.request_id
        )


def _sampled_text(result: Any) -> str:
    content = getattr(result, "content", None)
    if isinstance(content, list):
        return " ".join(getattr(c, "text", "") for c in content)
    return str(getattr(content, "text", content))


def _elicited(result: Any) -> str:
    return f"action={result.action}, content={json.dumps(result.content, sort_keys=True)}"


# --------------------------------------------------------------------------- server


def build_server(call_log_path: str | None = None, log_level: str = "WARNING") -> MCPServer:
    """Build the test upstream. ``call_log_path`` defaults to ``$UPSTREAM_CALL_LOG``."""
    call_log = CallLog(call_log_path if call_log_path is not None else os.environ.get(CALL_LOG_ENV))
    log_levels: dict[str, str] = {}

    async def record_calls(ctx: ServerRequestContext[Any, Any], call_next: Any) -> Any:
        if ctx.method == "tools/call" and ctx.request_id is not None:
            params = dict(ctx.params or {})
            call_log.write(
                {
                    "tool": params.get("name"),
                    "arguments": params.get("arguments") or {},
                    "pid": os.getpid(),
                }
            )
        return await call_next(ctx)

    server = MCPServer(
        SERVER_NAME,
        version="1.0.0",
        middleware=[record_calls],
        log_level=log_level.upper(),  # type: ignore[arg-type]
    )
    lowlevel = server._lowlevel_server

    # ---- logging/setLevel, resources/subscribe (handshake era; not served by MCPServer itself)

    async def set_level(
        ctx: ServerRequestContext[Any, Any], params: types.SetLevelRequestParams
    ) -> types.EmptyResult:
        log_levels[_conn_key(getattr(ctx.request, "headers", None))] = params.level
        call_log.write({"event": "set_level", "level": params.level, "pid": os.getpid()})
        return types.EmptyResult()

    subscriptions: set[str] = set()

    async def subscribe(
        ctx: ServerRequestContext[Any, Any], params: types.SubscribeRequestParams
    ) -> types.EmptyResult:
        subscriptions.add(str(params.uri))
        call_log.write({"event": "subscribed", "uri": str(params.uri), "pid": os.getpid()})
        return types.EmptyResult()

    async def unsubscribe(
        ctx: ServerRequestContext[Any, Any], params: types.UnsubscribeRequestParams
    ) -> types.EmptyResult:
        subscriptions.discard(str(params.uri))
        return types.EmptyResult()

    lowlevel.add_request_handler("logging/setLevel", types.SetLevelRequestParams, set_level)
    lowlevel.add_request_handler("resources/subscribe", types.SubscribeRequestParams, subscribe)
    lowlevel.add_request_handler(
        "resources/unsubscribe", types.UnsubscribeRequestParams, unsubscribe
    )

    async def log(ctx: Context, level: types.LoggingLevel, data: Any) -> None:
        threshold = log_levels.get(_conn_key(ctx.headers), "debug")
        if LOG_LEVELS.index(level) < LOG_LEVELS.index(threshold):
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MCPDeprecationWarning)
            await ctx.log(level, data, logger_name=SERVER_NAME)

    # ================================================================ conformance tools

    @server.tool(description="Returns a simple text response")
    def test_simple_text() -> types.CallToolResult:
        return _text("This is a simple text response for testing.")

    @server.tool(description="Returns an image (1x1 red PNG)")
    def test_image_content() -> types.CallToolResult:
        return types.CallToolResult(
            content=[types.ImageContent(type="image", data=PNG_B64, mime_type="image/png")]
        )

    @server.tool(description="Returns audio (a short silent WAV)")
    def test_audio_content() -> types.CallToolResult:
        return types.CallToolResult(
            content=[types.AudioContent(type="audio", data=WAV_B64, mime_type="audio/wav")]
        )

    @server.tool(description="Returns an embedded text resource")
    def test_embedded_resource() -> types.CallToolResult:
        return types.CallToolResult(
            content=[
                types.EmbeddedResource(
                    type="resource",
                    resource=types.TextResourceContents(
                        uri="test://embedded-resource",
                        mime_type="text/plain",
                        text="This is an embedded resource content.",
                    ),
                )
            ]
        )

    @server.tool(description="Returns text, image and resource content together")
    def test_multiple_content_types() -> types.CallToolResult:
        return types.CallToolResult(
            content=[
                types.TextContent(type="text", text="Multiple content types test:"),
                types.ImageContent(type="image", data=PNG_B64, mime_type="image/png"),
                types.EmbeddedResource(
                    type="resource",
                    resource=types.TextResourceContents(
                        uri="test://mixed-content-resource",
                        mime_type="application/json",
                        text=json.dumps({"test": "data", "value": 123}),
                    ),
                ),
            ]
        )

    @server.tool(description="Sends three info log notifications while it runs")
    async def test_tool_with_logging(ctx: Context) -> types.CallToolResult:
        await log(ctx, "info", "Tool execution started")
        await anyio.sleep(0.05)
        await log(ctx, "info", "Tool processing data")
        await anyio.sleep(0.05)
        await log(ctx, "info", "Tool execution completed")
        return _text("Tool with logging executed successfully")

    @server.tool(description="Always fails, as a tool error (isError: true)")
    def test_error_handling() -> types.CallToolResult:
        raise RuntimeError("This tool intentionally returns an error for testing")

    @server.tool(description="Reports progress 0/100, 50/100, 100/100")
    async def test_tool_with_progress(ctx: Context) -> types.CallToolResult:
        for step, value in enumerate((0, 50, 100)):
            if step:
                await anyio.sleep(0.05)
            await ctx.report_progress(value, 100, f"step {step + 1}/3")
        return _text("Tool with progress executed successfully")

    @server.tool(
        description="Asks the client's LLM (sampling/createMessage) and returns its answer"
    )
    async def test_sampling(prompt: str, ctx: Context) -> Any:
        result = await _ask_client(ctx, "sampling", _sampling_request(prompt))
        if isinstance(result, types.InputRequiredResult):
            return result
        return _text(f"LLM response: {_sampled_text(result)}")

    @server.tool(description="Asks the user (elicitation/create) for a username and email")
    async def test_elicitation(message: str, ctx: Context) -> Any:
        schema = {
            "type": "object",
            "properties": {
                "username": {"type": "string", "description": "User's response"},
                "email": {"type": "string", "description": "User's email address"},
            },
            "required": ["username", "email"],
        }
        result = await _ask_client(ctx, "elicitation", _elicit_request(message, schema))
        if isinstance(result, types.InputRequiredResult):
            return result
        return _text(f"User response: {_elicited(result)}")

    @server.tool(
        description="Elicitation whose schema has defaults for every primitive type (SEP-1034)"
    )
    async def test_elicitation_sep1034_defaults(ctx: Context) -> Any:
        schema = {
            "type": "object",
            "properties": {
                "name": {"type": "string", "description": "User name", "default": "John Doe"},
                "age": {"type": "integer", "description": "User age", "default": 30},
                "score": {"type": "number", "description": "User score", "default": 95.5},
                "status": {
                    "type": "string",
                    "description": "User status",
                    "enum": ["active", "inactive", "pending"],
                    "default": "active",
                },
                "verified": {"type": "boolean", "description": "Verified user", "default": True},
            },
        }
        result = await _ask_client(
            ctx, "defaults", _elicit_request("Please review and update the form fields", schema)
        )
        if isinstance(result, types.InputRequiredResult):
            return result
        return _text(f"Elicitation completed: {_elicited(result)}")

    @server.tool(description="Elicitation with the five enum schema variants (SEP-1330)")
    async def test_elicitation_sep1330_enums(ctx: Context) -> Any:
        def titled(prefix: str, titles: list[str]) -> list[dict[str, str]]:
            return [{"const": f"{prefix}{i}", "title": t} for i, t in enumerate(titles, 1)]

        schema = {
            "type": "object",
            "properties": {
                "untitledSingle": {
                    "type": "string",
                    "description": "Untitled single-select",
                    "enum": ["option1", "option2", "option3"],
                },
                "titledSingle": {
                    "type": "string",
                    "description": "Titled single-select",
                    "oneOf": titled("value", ["First Option", "Second Option", "Third Option"]),
                },
                "legacyEnum": {
                    "type": "string",
                    "description": "Legacy titled enum",
                    "enum": ["opt1", "opt2", "opt3"],
                    "enumNames": ["Option One", "Option Two", "Option Three"],
                },
                "untitledMulti": {
                    "type": "array",
                    "description": "Untitled multi-select",
                    "items": {"type": "string", "enum": ["option1", "option2", "option3"]},
                },
                "titledMulti": {
                    "type": "array",
                    "description": "Titled multi-select",
                    "items": {
                        "anyOf": titled("value", ["First Choice", "Second Choice", "Third Choice"])
                    },
                },
            },
        }
        result = await _ask_client(ctx, "enums", _elicit_request("Please choose options", schema))
        if isinstance(result, types.InputRequiredResult):
            return result
        return _text(f"Elicitation completed: {_elicited(result)}")

    @server.tool(description="Closes its SSE stream mid-call, then answers (SEP-1699 resumption)")
    async def test_reconnection(ctx: Context) -> types.CallToolResult:
        await anyio.sleep(0.05)
        await ctx.close_sse_stream()
        await anyio.sleep(0.2)
        return _text("Reconnection test completed")

    def json_schema_2020_12_tool(
        name: str | None = None, address: dict[str, Any] | None = None
    ) -> str:
        return f"name={name!r}, address={json.dumps(address, sort_keys=True)}"

    server.add_tool(
        json_schema_2020_12_tool,
        description="Tool with JSON Schema 2020-12 features",
        structured_output=False,
    )
    registered = server._tool_manager.get_tool("json_schema_2020_12_tool")
    assert registered is not None
    registered.parameters = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "$defs": {
            "address": {
                "type": "object",
                "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
            }
        },
        "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
        "additionalProperties": False,
    }

    # ================================================================ conformance resources

    @server.resource(
        "test://static-text",
        name="static-text",
        description="A static text resource",
        mime_type="text/plain",
    )
    def static_text() -> str:
        return "This is the content of the static text resource."

    @server.resource(
        "test://static-binary",
        name="static-binary",
        description="A static binary resource (1x1 PNG)",
        mime_type="image/png",
    )
    def static_binary() -> bytes:
        return PNG_BYTES

    @server.resource(
        "test://watched-resource",
        name="watched-resource",
        description="A resource clients may subscribe to",
        mime_type="text/plain",
    )
    def watched_resource() -> str:
        return "Watched resource content."

    @server.resource(
        "test://template/{id}/data",
        name="template-data",
        description="A resource template that substitutes {id}",
        mime_type="application/json",
    )
    def template_data(id: str) -> str:
        return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})

    # ================================================================ conformance prompts

    @server.prompt(description="A simple prompt without arguments")
    def test_simple_prompt() -> list[UserMessage]:
        return [UserMessage("This is a simple prompt for testing.")]

    @server.prompt(description="A prompt with two required arguments")
    def test_prompt_with_arguments(arg1: str, arg2: str) -> list[UserMessage]:
        return [UserMessage(f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'")]

    @server.prompt(description="A prompt that embeds a resource")
    def test_prompt_with_embedded_resource(resourceUri: str) -> list[UserMessage]:
        return [
            UserMessage(
                types.EmbeddedResource(
                    type="resource",
                    resource=types.TextResourceContents(
                        uri=resourceUri,
                        mime_type="text/plain",
                        text="Embedded resource content for testing.",
                    ),
                )
            ),
            UserMessage("Please process the embedded resource above."),
        ]

    @server.prompt(description="A prompt with an image")
    def test_prompt_with_image() -> list[UserMessage]:
        return [
            UserMessage(types.ImageContent(type="image", data=PNG_B64, mime_type="image/png")),
            UserMessage("Please analyze the image above."),
        ]

    suggestions = ["paris", "park", "party", "test", "testing", "tested"]

    @server.completion()
    async def complete(
        ref: types.PromptReference | types.ResourceTemplateReference,
        argument: types.CompletionArgument,
        context: types.CompletionContext | None,
    ) -> types.Completion:
        values = [s for s in suggestions if s.startswith(argument.value)]
        return types.Completion(values=values, total=len(values), has_more=False)

    # ================================================================ gateway test tools

    read_only = types.ToolAnnotations(read_only_hint=True)

    # Tests of tool pinning restart the upstream with another description for ``echo``.
    echo_description = os.environ.get("UPSTREAM_ECHO_DESCRIPTION", "Echoes the text back")

    @server.tool(description=echo_description, annotations=read_only)
    def echo(text: str) -> str:
        return text

    @server.tool(description="Adds two numbers", annotations=read_only)
    def add(a: float, b: float) -> float:
        return a + b

    @server.tool(description="Pretends to run SQL; returns the SQL it was given")
    def execute_query(sql: str) -> str:
        return sql

    @server.tool(
        description="Pretends to delete an item",
        annotations=types.ToolAnnotations(destructive_hint=True),
    )
    def delete_item(id: str) -> str:
        return f"deleted {id}"

    @server.tool(
        description="Pretends to write a file (nothing is written to disk)",
        annotations=types.ToolAnnotations(read_only_hint=False, destructive_hint=False),
    )
    def write_file(path: str, content: str) -> str:
        return f"wrote {len(content.encode())} bytes to {path}"

    @server.tool(description="Sends one progress notification per step, delay_ms apart")
    async def slow_progress(ctx: Context, steps: int = 3, delay_ms: int = 50) -> str:
        for step in range(1, steps + 1):
            await anyio.sleep(delay_ms / 1000)
            await ctx.report_progress(step, steps, f"step {step}/{steps}")
        return f"done after {steps} steps"

    @server.tool(description="Asks the user a question (elicitation) and returns the answer")
    async def ask_user(question: str, ctx: Context) -> Any:
        schema = {
            "type": "object",
            "properties": {"answer": {"type": "string", "description": "Your answer"}},
            "required": ["answer"],
        }
        result = await _ask_client(ctx, "ask_user", _elicit_request(question, schema))
        if isinstance(result, types.InputRequiredResult):
            return result
        if result.action != "accept":
            return _text(f"user did not answer: {result.action}")
        return _text(str((result.content or {}).get("answer", "")))

    @server.tool(description="Asks the client's LLM (sampling) and returns its text")
    async def sample(prompt: str, ctx: Context) -> Any:
        result = await _ask_client(ctx, "sample", _sampling_request(prompt))
        if isinstance(result, types.InputRequiredResult):
            return result
        return _text(_sampled_text(result))

    @server.tool(description="Kills this server process mid-call (os._exit)")
    def crash() -> str:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(17)

    if os.environ.get("UPSTREAM_PARAM_HEADERS"):  # a 2026-07-28 tool routed by a header

        @server.tool(description="Says the region its Mcp-Param-Region header named")
        def locate(
            region: Annotated[str, Field(json_schema_extra={"x-mcp-header": "Region"})],
        ) -> str:
            return f"region {region}"

    if os.environ.get("UPSTREAM_LIST_ASKS"):  # tools/list asks the client first (elicitation)

        async def list_asking(
            ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
        ) -> types.ListToolsResult:
            schema = {"type": "object", "properties": {"set": {"type": "string"}}}
            try:
                answer = await ctx.session.elicit_form(
                    "Which tools?", schema, related_request_id=ctx.request_id
                )
                call_log.write({"event": "list_asked", "answer": answer.action})
            except Exception as exc:  # refused by the peer: listed all the same
                call_log.write({"event": "list_asked", "refused": str(exc)})
            return types.ListToolsResult(tools=await server.list_tools())

        lowlevel.add_request_handler("tools/list", types.PaginatedRequestParams, list_asking)

    if os.environ.get("UPSTREAM_GET_STREAM_TOOLS"):  # the session's own (GET) stream
        # (SEP-1699: a server may end its GET stream at any time; its client reconnects.)

        @server.tool(description="Ends this session's GET stream")
        async def drop_stream(ctx: Context) -> str:
            await ctx.close_standalone_sse_stream()
            return "dropped"

        @server.tool(description="Sends tools/list_changed on this session's GET stream")
        async def announce(ctx: Context) -> str:
            await ctx.session.send_tool_list_changed()
            return "announced"

    @server.tool(description="Never answers until cancelled")
    async def hang() -> str:
        try:
            await anyio.sleep_forever()
        finally:
            call_log.write({"event": "cancelled", "tool": "hang", "pid": os.getpid()})
        return "unreachable"

    @server.tool(
        description="The names of the tools called on this process so far", annotations=read_only
    )
    def calls_seen() -> list[str]:
        return list(call_log.names)

    return server


# --------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.servers.upstream", description=__doc__)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--http", action="store_true", help="Streamable HTTP at /mcp on 127.0.0.1")
    mode.add_argument("--stdio", action="store_true", help="stdio transport")
    parser.add_argument("--port", type=int, default=0, help="HTTP port (required with --http)")
    parser.add_argument(
        "--stateless", action="store_true", help="stateless HTTP with JSON responses (no sessions)"
    )
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--ssl-certfile", help="serve HTTPS with this certificate (PEM)")
    parser.add_argument("--ssl-keyfile", help="the certificate's private key (PEM)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=MCPDeprecationWarning)

    server = build_server(log_level=args.log_level)
    if args.stdio:
        server.run("stdio")
        return
    if not args.port:
        parser.error("--http needs --port")
    if args.ssl_certfile:
        _serve_https(server, args)
        return
    server.run(
        "streamable-http",
        host="127.0.0.1",
        port=args.port,
        streamable_http_path="/mcp",
        stateless_http=args.stateless,
        json_response=args.stateless,
        event_store=None if args.stateless else MemoryEventStore(),
        retry_interval=1000,
    )


def _serve_https(server: Any, args: argparse.Namespace) -> None:
    """The same Streamable HTTP app over TLS (the SDK's ``run`` has no TLS options)."""
    import uvicorn

    app = server.streamable_http_app(
        streamable_http_path="/mcp",
        event_store=MemoryEventStore(),
        retry_interval=1000,
    )
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
