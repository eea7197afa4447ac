"""Shared fixtures: the real Valkey server and MCP peers live in their own modules."""

pytest_plugins = ["tests.valkey_server"]
