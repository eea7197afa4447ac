"""``celgate try URL``: list the tools an agent sees through the gateway and make two calls.

What can go wrong before the first tool shows (nothing listening, a gateway that wants a key,
a key it refuses) is one line, never a traceback: a first plain request reads the HTTP status
(the MCP client turns a 401 into a JSON-RPC error that no longer says it was one), and what
the client raises later (inside anyio's exception groups) is named in one line too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from typing import Any

from gateway.printable import printable

DEFAULT_URL = "http://127.0.0.1:8787/mcp/demo"
TIMEOUT_SECONDS = 10.0


async def _try(url: str, key: str | None) -> None:
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    target: Any = url
    if key:
        http = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
        target = streamable_http_client(url, http_client=http)
    async with Client(target, cache=None) as client:
        tools = await client.list_tools()
        print(f"tools this agent may call ({len(tools.tools)}):")
        for tool in tools.tools:
            print(f"  - {printable(tool.name)}")
        for name, args in (("list_notes", {}), ("delete_note", {"id": "1"})):
            result = await client.call_tool(name, args)
            text = " ".join(getattr(c, "text", "") for c in result.content)
            verdict = "REFUSED" if result.is_error else "ok"
            print(f"\ncall {name}({json.dumps(args)}): {verdict}\n  {printable(text[:300])}")


_PING = {"jsonrpc": "2.0", "id": 0, "method": "ping"}


def preflight(url: str, key: str | None) -> str | None:
    """One plain POST: a line for nothing listening, a missing or refused key, no endpoint."""
    import httpx

    headers = {"Accept": "application/json, text/event-stream"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    try:
        resp = httpx.post(url, json=_PING, headers=headers, timeout=TIMEOUT_SECONDS)
    except httpx.HTTPError as exc:
        return explain(exc, url, key) or f"celgate: no answer from {url}: {exc}"
    if resp.status_code in (401, 404):
        return _status_line(resp.status_code, url, key)
    return None


def _leaves(exc: BaseException) -> list[BaseException]:
    """The errors inside (nested) exception groups, and their causes."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    cause = exc.__cause__ or exc.__context__
    return [exc, *(_leaves(cause) if cause is not None else [])]


def explain(exc: BaseException, url: str, key: str | None) -> str | None:
    """One line for a failure we know, or None."""
    import httpx

    for leaf in _leaves(exc):
        if isinstance(leaf, httpx.ConnectError | ConnectionRefusedError):
            return f"celgate: no gateway at {url} (nothing answers there)"
        if isinstance(leaf, httpx.HTTPStatusError):
            return _status_line(leaf.response.status_code, url, key)
        if isinstance(leaf, httpx.TimeoutException):
            return f"celgate: {url} did not answer in time"
        if type(leaf).__name__ == "MCPError":  # the server's JSON-RPC error, as it said it
            return f"celgate: {url}: {leaf}"
    return None


def _status_line(status: int, url: str, key: str | None) -> str:
    if status == 401 and key is None:
        return f"celgate: {url} needs an agent key: pass --key or set CELGATE_KEY"
    if status == 401:
        return f"celgate: {url} refused the agent key (401)"
    if status == 404:
        return f"celgate: no MCP endpoint at {url} (404); servers are at /mcp/<server>"
    return f"celgate: {url} answered HTTP {status}"


def try_command(ns: argparse.Namespace) -> int:
    key = ns.key or os.environ.get("CELGATE_KEY") or None
    line = preflight(ns.url, key)
    if line is not None:
        raise SystemExit(line)
    try:
        asyncio.run(_try(ns.url, key))
    except Exception as exc:  # the MCP client's failures, read and named in one line
        line = explain(exc, ns.url, key)
        if line is None:
            line = f"celgate: try {ns.url} failed: {type(exc).__name__}: {exc}"
        raise SystemExit(line) from None
    return 0


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", nargs="?", default=DEFAULT_URL)
    parser.add_argument("--key", help="agent key, sent as Authorization: Bearer ($CELGATE_KEY)")
    parser.set_defaults(func=try_command)


PARSERS = {"try": _configure}
