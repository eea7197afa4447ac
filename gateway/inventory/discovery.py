"""Ask each upstream for its tools with the SDK's client: the risk catalogue, the pins, and
``tool.risk``/``tool.kind`` for CEL before any agent has listed tools."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any

import anyio
import httpx2
import mcp_types
from mcp import Client
from mcp.client.stdio import get_default_environment
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import MCP_DEFAULT_SSE_READ_TIMEOUT, MCP_DEFAULT_TIMEOUT
from mcp.shared.message import SessionMessage

from gateway.children import KILL_GRACE, READ_CHUNK, close_pipes, die_with_parent, kill_group
from gateway.config import ServerConfig
from gateway.telemetry.audit import log
from gateway.telemetry.childlog import StderrLog
from gateway.turns import Turns
from gateway.wire.jsonrpc import count_containers
from gateway.wire.sse import MAX_UNSKIMMED_LINE, wanted_line

LIST_TIMEOUT = 15.0


def _target(server: ServerConfig, url: str | None) -> Any:
    url = None if server.is_stdio else url or server.url  # stdio: its own process, no bridge
    if url is not None:
        return streamable_http_client(url, http_client=_bounded_http(server))
    return _stdio_bounded(server)


class AnswerRefused(Exception):
    """An answer to the gateway's own reading of a server's tools that it will not read: past
    ``MAX_ANSWER_BYTES``, or compressed (its size unknown until it is inflated)."""


def _bounded_http(server: ServerConfig) -> httpx2.AsyncClient:
    """The SDK's HTTP client as ``create_mcp_http_client`` makes it, on a transport that
    stops any answer past ``MAX_ANSWER_BYTES`` (the SDK reads a page whole and parses it
    before any of the bounds below is looked at: a page of 1 GiB took the gateway to 3 GiB)
    and asks for no compression (a small gzip body inflates past any bound)."""
    headers = {**dict(server.headers), "Accept-Encoding": "identity"}
    timeout = httpx2.Timeout(MCP_DEFAULT_TIMEOUT, read=MCP_DEFAULT_SSE_READ_TIMEOUT)
    # The server's own CA, as the relay verifies it: without it a server behind a private CA
    # was never read (pins could not be updated, every tool of it read as high risk until an
    # agent listed it: red-team wave 63).
    verify: ssl.SSLContext | bool = True
    if server.ca_file:
        verify = ssl.create_default_context(cafile=server.ca_file)
    transport = _BoundedTransport(verify)
    return httpx2.AsyncClient(headers=headers, timeout=timeout, transport=transport)


class _BoundedTransport(httpx2.AsyncBaseTransport):
    def __init__(self, verify: ssl.SSLContext | bool = True) -> None:
        self._inner = httpx2.AsyncHTTPTransport(verify=verify)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self._inner.handle_async_request(request)
        coding = response.headers.get("content-encoding", "").strip().lower()
        if coding not in ("", "identity"):
            await response.aclose()
            raise AnswerRefused(f"an answer compressed ({coding[:40]}) though none was asked")
        assert isinstance(response.stream, httpx2.AsyncByteStream)
        return httpx2.Response(
            response.status_code,
            headers=response.headers,
            stream=_BoundedStream(response.stream),
            extensions=response.extensions,
            request=request,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


class _BoundedStream(httpx2.AsyncByteStream):
    def __init__(self, inner: httpx2.AsyncByteStream) -> None:
        self._inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        size = containers = 0
        async for chunk in self._inner:
            size += len(chunk)
            containers += count_containers(chunk)
            if size > MAX_ANSWER_BYTES or containers > MAX_ANSWER_CONTAINERS:
                raise AnswerRefused(_too_much(size, containers))
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


def _too_much(size: int, containers: int) -> str:
    if size > MAX_ANSWER_BYTES:
        return f"an answer past {MAX_ANSWER_BYTES} bytes"
    return f"an answer of more than {MAX_ANSWER_CONTAINERS} objects and lists"


@contextlib.asynccontextmanager
async def _stdio_bounded(server: ServerConfig) -> AsyncIterator[Any]:
    """A stdio transport for the SDK's client to a process of the server's own (for its
    list), in its own process group, whose lines are read within ``MAX_ANSWER_BYTES`` (the
    SDK's own transport holds a line however long it grows), and whose stderr becomes
    ``stdio.stderr`` log lines as a serving child's does, never the gateway's stderr raw
    (where a child could forge the gateway's log lines)."""
    assert server.command is not None
    proc = await asyncio.create_subprocess_exec(
        server.command,
        *server.args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**get_default_environment(), **server.env},
        cwd=server.cwd,
        start_new_session=True,
        preexec_fn=die_with_parent,
        limit=READ_CHUNK,  # read in chunks: no line is held by the stream
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    stdin, stdout = proc.stdin, proc.stdout
    drain = asyncio.ensure_future(
        StderrLog(server.name, f"{server.name}[catalog]").drain(proc.stderr)
    )
    to_client, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_stream, from_client = anyio.create_memory_object_stream[SessionMessage](0)
    asked: set[Any] = set()  # the ids of the client's requests not yet answered

    async def read() -> None:
        pending = bytearray()
        turns = Turns()  # a child flooding its stdout held the loop (red-team wave 37)
        async with to_client:
            while chunk := await stdout.read(READ_CHUNK):
                pending += chunk
                while (end := pending.find(b"\n")) >= 0:
                    line = bytes(pending[:end])
                    del pending[: end + 1]
                    await turns.after_chunk()
                    if line.isspace() or not line:
                        continue
                    # A long line is built only as an answer the client awaits: the list
                    # needs no notice, and a stray 16 MiB log line was validated whole (4 s
                    # of the loop, 1.3 GB), at every refresh (red-team wave 58).
                    if len(line) > MAX_UNSKIMMED_LINE and not wanted_line(
                        line, asked.__contains__, 0
                    ):
                        continue
                    if count_containers(line) > MAX_ANSWER_CONTAINERS:
                        log.warning("catalog.line_too_long", server=server.name, held=len(line))
                        return
                    try:
                        message = mcp_types.jsonrpc_message_adapter.validate_json(line)
                    except ValueError:
                        continue  # not a message: the list's answer is what is waited for
                    if isinstance(message, mcp_types.JSONRPCResponse | mcp_types.JSONRPCError):
                        asked.discard(message.id)
                    await to_client.send(SessionMessage(message))
                if len(pending) > MAX_ANSWER_BYTES:  # the client sees the stream end
                    log.warning("catalog.line_too_long", server=server.name, held=len(pending))
                    return

    async def write() -> None:
        async with from_client:
            async for sent in from_client:
                if isinstance(sent.message, mcp_types.JSONRPCRequest):
                    asked.add(sent.message.id)
                data = sent.message.model_dump_json(by_alias=True, exclude_unset=True)
                stdin.write(data.encode() + b"\n")
                await stdin.drain()

    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(read)
            tasks.start_soon(write)
            try:
                yield read_stream, write_stream
            finally:
                tasks.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            stdin.close()
            with anyio.move_on_after(KILL_GRACE):
                await proc.wait()
            kill_group(proc)  # and whatever it started
            # A pipe the reader stopped reading (a line past the bound) is never read to its
            # end, and the process is not waited for until its pipes are closed.
            close_pipes(proc)
            await proc.wait()
            await asyncio.wait({drain}, timeout=1.0)
            drain.cancel()


#: What one server's list may bring into the catalogue: pages, tools and bytes (past any, the
#: tools read so far are kept and ``catalog.list_too_long`` is logged). A server that answered
#: every page with a new cursor had the gateway hold 1.6 GiB for the read's 15 s, again at
#: every refresh, and whenever an agent called a name the catalogue lacked.
MAX_PAGES = 200
MAX_TOOLS = 5000
MAX_LIST_BYTES = 32 * 1024 * 1024
#: One answer (a page), as bytes before it is parsed: a page up to the list's bound, and its
#: envelope.
MAX_ANSWER_BYTES = MAX_LIST_BYTES + 1024 * 1024
#: ... and as objects and lists (counted as their opening brackets, strings' too): the SDK's
#: client builds each as a pydantic model and a dict, some 350 bytes each (33 MiB of ``{},``
#: took the gateway to 3.8 GiB, red-team wave 35): half a million is under 200 MB.
MAX_ANSWER_CONTAINERS = 500_000


async def list_tools(server: ServerConfig, url: str | None = None) -> list[dict[str, Any]]:
    """The server's tools as wire JSON (camelCase), following pagination within bounds."""
    async with Client(_target(server, url), mode="legacy", cache=None) as client:
        tools: list[dict[str, Any]] = []
        cursor: str | None = None
        seen: set[str] = set()
        size = 0
        for _ in range(MAX_PAGES):
            page = await client.list_tools(cursor=cursor) if cursor else await client.list_tools()
            for tool in page.tools:
                wire = tool.model_dump(by_alias=True, mode="json", exclude_none=True)
                size += len(json.dumps(wire))
                if len(tools) >= MAX_TOOLS or size > MAX_LIST_BYTES:
                    return _cut(server, tools, "tools or bytes")
                tools.append(wire)
            cursor = page.next_cursor
            if not cursor:
                return tools
            if cursor in seen:  # a server going round in circles
                return _cut(server, tools, "a cursor given twice")
            seen.add(cursor)
        return _cut(server, tools, "pages")


class CutList(list[dict[str, Any]]):
    """A server's tools as far as a reading went: the list went on past a bound."""


def _cut(server: ServerConfig, tools: list[dict[str, Any]], why: str) -> list[dict[str, Any]]:
    log.warning("catalog.list_too_long", server=server.name, tools=len(tools), past=why)
    return CutList(tools)


async def list_all(
    servers: Mapping[str, ServerConfig],
    urls: Mapping[str, str] | None = None,
    errors: dict[str, str] | None = None,
) -> dict[str, list[dict[str, Any]] | None]:
    """Tools per server; None for a server that could not be asked (logged, and its reason
    put in ``errors`` when given: a command that is not installed, say)."""
    urls = urls or {}

    async def one(name: str) -> list[dict[str, Any]] | None:
        try:
            async with asyncio.timeout(LIST_TIMEOUT):
                return await list_tools(servers[name], urls.get(name))
        except Exception as exc:  # any failure of one upstream: logged, others go on
            reason = _reason(exc)
            log.warning("catalog.list_failed", server=name, error=type(exc).__name__, detail=reason)
            if errors is not None:
                errors[name] = reason
            return None

    names = list(servers)
    results = await asyncio.gather(*(one(n) for n in names))
    return dict(zip(names, results, strict=True))


def _reason(exc: BaseException) -> str:
    """What an operator reads of why a server could not be asked (the innermost error of a
    task group's, which says "unhandled errors in a TaskGroup")."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, TimeoutError):
        return f"no answer within {LIST_TIMEOUT:g} s"
    text = str(exc).strip() or type(exc).__name__
    return text[:300]
