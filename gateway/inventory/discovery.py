"""Ask each upstream for its tools with the SDK's client: the risk catalogue, the pins, and
``tool.risk``/``tool.kind`` for CEL before any agent has listed tools."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Mapping
from typing import Any

from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from gateway.config import ServerConfig
from gateway.telemetry.audit import log
from gateway.telemetry.childlog import StderrLog

LIST_TIMEOUT = 15.0


def _target(server: ServerConfig, url: str | None) -> Any:
    url = None if server.is_stdio else url or server.url  # stdio: its own process, no bridge
    if url is not None:
        if not server.headers:
            return url
        http = create_mcp_http_client(headers=dict(server.headers))
        return streamable_http_client(url, http_client=http)
    return _stdio_logged(server)


@contextlib.asynccontextmanager
async def _stdio_logged(server: ServerConfig) -> AsyncIterator[Any]:
    """The SDK's stdio transport to a process of the server's own (for its list), with the
    child's stderr read into ``stdio.stderr`` log lines as a serving child's is, never into
    the gateway's stderr raw (where a child could forge the gateway's log lines)."""
    assert server.command is not None
    params = StdioServerParameters(
        command=server.command, args=list(server.args), env=server.env or None, cwd=server.cwd
    )
    read_fd, write_fd = os.pipe()
    errlog = os.fdopen(write_fd, "w")
    stream = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(stream), os.fdopen(read_fd, "rb", buffering=0)
    )
    drain = asyncio.ensure_future(StderrLog(server.name, f"{server.name}[catalog]").drain(stream))
    try:
        async with stdio_client(params, errlog=errlog) as streams:
            errlog.close()  # the child holds its own copy: its exit ends the stream
            yield streams
    finally:
        errlog.close()
        await asyncio.wait({drain}, timeout=1.0)
        drain.cancel()
        transport.close()


#: What one server's list may bring into the catalogue: pages, tools and bytes (past any, the
#: tools read so far are kept and ``catalog.list_too_long`` is logged). A server that answered
#: every page with a new cursor had the gateway hold 1.6 GiB for the read's 15 s, again at
#: every refresh, and whenever an agent called a name the catalogue lacked.
MAX_PAGES = 200
MAX_TOOLS = 5000
MAX_LIST_BYTES = 32 * 1024 * 1024


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


def _cut(server: ServerConfig, tools: list[dict[str, Any]], why: str) -> list[dict[str, Any]]:
    log.warning("catalog.list_too_long", server=server.name, tools=len(tools), past=why)
    return tools


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
