"""FastMCP's proxy in front of one Streamable HTTP upstream: the alternative users would pick.

Runs inside its own virtual environment (FastMCP pins its own ``mcp``), started by
``bench_e2e.py``; imports nothing of celgate.

    <venv>/bin/python benchmarks/fastmcp_proxy.py --upstream http://127.0.0.1:N/mcp --port M
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from fastmcp.server import create_proxy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="the upstream's MCP URL")
    parser.add_argument("--port", type=int, required=True)
    ns = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    proxy = create_proxy(ns.upstream, name="fastmcp-proxy")
    run = proxy.run_http_async(
        show_banner=False,
        transport="http",
        host="127.0.0.1",
        port=ns.port,
        log_level="warning",
        path="/mcp",
        uvicorn_config={"access_log": False, "loop": "uvloop", "http": "httptools"},
    )
    asyncio.run(run)


if __name__ == "__main__":
    main()
