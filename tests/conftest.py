"""Shared fixtures: the real Valkey server lives in ``tests.valkey_server``; MCP peers are
started by ``tests.peers`` and the gateway by ``tests.gateway_proc``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers import PeerProcess, http_upstream

pytest_plugins = ["tests.valkey_server"]


@pytest.fixture(scope="module")
def call_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the module's test upstream records every tools/call that reached it."""
    return tmp_path_factory.mktemp("calls") / "calls.jsonl"


@pytest.fixture(scope="module")
def upstream(call_log: Path) -> Iterator[PeerProcess]:
    """The test upstream over Streamable HTTP, as a process, logging its calls."""
    with http_upstream(extra_env={"UPSTREAM_CALL_LOG": str(call_log)}) as up:
        yield up
