"""Connections to upstream MCP servers."""
