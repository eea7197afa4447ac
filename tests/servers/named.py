"""A stdio MCP server whose tools are named by ``NAMED_TOOLS`` (comma separated); each answers
``<NAMED_TAG>:<tool>``, so a caller can tell which server ran which tool.

    NAMED_TAG=p1 NAMED_TOOLS=x,y python -m tests.servers.named
"""

from __future__ import annotations

import os
from collections.abc import Callable

from mcp.server.mcpserver import MCPServer


def answering(tag: str, name: str) -> Callable[[], str]:
    def tool() -> str:
        return f"{tag}:{name}"

    return tool


def main() -> None:
    tag = os.environ.get("NAMED_TAG", "?")
    server = MCPServer(f"named-{tag}")
    for name in os.environ.get("NAMED_TOOLS", "x").split(","):
        server.add_tool(answering(tag, name), name=name, description=f"{tag}'s {name}")
    server.run("stdio")


if __name__ == "__main__":
    main()
