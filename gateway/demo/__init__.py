"""The demo upstream shipped with celgate: a tiny in-memory notes MCP server."""

from gateway.demo.server import build_demo_server, serve, serve_async

__all__ = ["build_demo_server", "serve", "serve_async"]
