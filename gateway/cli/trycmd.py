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
        calls = _demo_calls([tool.name for tool in tools.tools])
        if not calls:
            print(f"\nno calls made: `celgate try` calls the demo's {' and '.join(DEMO_CALLS)}")
        for name, args in calls:
            shown = f"call {printable(name)}({json.dumps(args)})"
            try:
                result = await client.call_tool(name, args, read_timeout_seconds=CALL_SECONDS)
            except Exception as exc:
                if "timed out" not in str(exc):
                    raise
                print(f"\n{shown}: no answer within {CALL_SECONDS:g} s")
                print("  a call held in `mode: wait` waits for an operator: approve it while")
                print(
                    "  `celgate try` waits (the console, or `celgate approvals list` / `approve`)"
                )
                continue
            text = " ".join(getattr(c, "text", "") for c in result.content)
            verdict = "REFUSED" if result.is_error else "ok"
            lines = "\n  ".join(printable(line) for line in text[:300].splitlines())
            print(f"\n{shown}: {verdict}\n  {lines}")


#: The demo server's tools that ``try`` calls, with their arguments (on ``/mcp`` under the
#: server's prefix, ``demo__list_notes``).
DEMO_CALLS = {"list_notes": {}, "delete_note": {"id": "1"}}
#: How long a call may take before ``try`` says it is waiting (a call held in ``wait`` mode).
CALL_SECONDS = 30.0


def _demo_calls(names: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """The demo's calls under the names this endpoint gives them (its ``list_notes`` listed:
    the demo is behind it; ``delete_note`` is called even when hidden, to show the refusal).
    None for any other server: ``try`` cannot know what its tools do."""
    first = next(iter(DEMO_CALLS))
    listed = [n for n in names if n == first or n.endswith("__" + first)]
    if not listed:
        return []
    prefix = listed[0][: -len(first)]
    return [(prefix + tool, args) for tool, args in DEMO_CALLS.items()]


_PING = {"jsonrpc": "2.0", "id": 0, "method": "ping"}


def preflight(url: str, key: str | None) -> str | None:
    """One plain POST: a line for nothing listening, a missing or refused key, no endpoint."""
    import httpx

    headers = {"Accept": "application/json, text/event-stream"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    try:
        resp = httpx.post(url, json=_PING, headers=headers, timeout=TIMEOUT_SECONDS)
    except httpx.InvalidURL as exc:  # (an IPv6 address written without its brackets)
        return f"celgate: {url!r} is no URL: {exc}"
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


def target_url(given: str | None) -> str:
    """The endpoint ``try`` reaches: the URL given, else ``$CELGATE_URL`` (the base URL that
    ``celgate run`` prints for the admin CLI) at its aggregated ``/mcp``, which serves every
    server, else the embedded demo's ``DEFAULT_URL``."""
    if given:
        return given
    base = os.environ.get("CELGATE_URL", "").strip().rstrip("/")
    return f"{base}/mcp" if base else DEFAULT_URL


def try_command(ns: argparse.Namespace) -> int:
    key = ns.key or os.environ.get("CELGATE_KEY") or None
    url = target_url(ns.url)
    line = preflight(url, key)
    if line is not None:
        raise SystemExit(line)
    try:
        asyncio.run(_try(url, key))
    except Exception as exc:  # the MCP client's failures, read and named in one line
        line = explain(exc, url, key)
        if line is None:
            line = f"celgate: try {url} failed: {type(exc).__name__}: {exc}"
        raise SystemExit(line) from None
    return 0


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "url", nargs="?", help=f"an MCP endpoint (default: $CELGATE_URL/mcp, else {DEFAULT_URL})"
    )
    parser.add_argument("--key", help="agent key, sent as Authorization: Bearer ($CELGATE_KEY)")
    parser.set_defaults(func=try_command)


PARSERS = {"try": _configure}
