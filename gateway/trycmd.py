"""``celgate try URL``: list the tools an agent sees through the gateway and make two calls."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


async def _try(url: str, key: str | None) -> None:
    target: Any = url
    if key:
        headers = {"Authorization": f"Bearer {key}"}
        http = create_mcp_http_client(headers=headers)
        target = streamable_http_client(url, http_client=http)
    async with Client(target, cache=None) as client:
        tools = await client.list_tools()
        print(f"tools this agent may call ({len(tools.tools)}):")
        for tool in tools.tools:
            print(f"  - {tool.name}")
        for name, args in (("list_notes", {}), ("delete_note", {"id": "1"})):
            result = await client.call_tool(name, args)
            text = " ".join(getattr(c, "text", "") for c in result.content)
            verdict = "REFUSED" if result.is_error else "ok"
            print(f"\ncall {name}({json.dumps(args)}): {verdict}\n  {text[:300]}")


def try_command(ns: argparse.Namespace) -> int:
    asyncio.run(_try(ns.url, ns.key))
    return 0


def register(sub: Any) -> None:
    cmd = sub.add_parser("try", help="list tools and make two calls through a gateway URL")
    cmd.add_argument("url", nargs="?", default="http://127.0.0.1:8787/mcp/demo")
    cmd.add_argument("--key", help="agent key (Authorization: Bearer)")
    cmd.set_defaults(func=try_command)
