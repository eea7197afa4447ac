"""``tools/list`` is decided in the caller's session, as its calls are: a rule that reads
``session`` shows an agent exactly the tools it can call, through the relay and ``/mcp``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway_proc import GatewayProcess, client, run_gateway
from tests.peers import http_upstream

POLICY = """\
version: "1"
default: deny
tools:
  echo:
    rules:
      - {id: in-a-session-only, when: 'session.id == null', action: deny}
    action: allow
  add:
    rules:
      - {id: never-in-a-session, when: 'session.id != null', action: deny}
    action: allow
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    tmp: Path = tmp_path_factory.mktemp("session-visibility")
    with http_upstream() as up, run_gateway(tmp, POLICY, {"up": {"url": up.url}}) as gw:
        yield gw


@pytest.mark.parametrize("path", ["/mcp/up", "/mcp"])
async def test_listed_exactly_when_callable(gw: GatewayProcess, path: str) -> None:
    async with client(gw.base + path, mode="legacy") as c:
        listed = {t.name for t in (await c.list_tools()).tools}
        echo = next(n for n in listed if n.endswith("echo"))
        assert not any(n.endswith("add") for n in listed)
        assert not (await c.call_tool(echo, {"text": "hi"})).is_error
        add = echo.removesuffix("echo") + "add"
        assert (await c.call_tool(add, {"a": 1, "b": 2})).is_error
