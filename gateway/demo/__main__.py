"""``python -m gateway.demo --host 127.0.0.1 --port N``: the demo server over Streamable HTTP."""

from __future__ import annotations

import argparse

from gateway.demo.server import DEFAULT_HOST, DEFAULT_PORT, MCP_PATH, serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.demo",
        description=f"celgate demo MCP server (in-memory notes), Streamable HTTP at {MCP_PATH}",
    )
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help=f"bind address (default {DEFAULT_HOST})"
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"(default {DEFAULT_PORT})")
    parser.add_argument("--log-level", default="warning", help="uvicorn log level")
    args = parser.parse_args(argv)
    serve(args.host, args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
