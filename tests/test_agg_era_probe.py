"""On ``/mcp`` in the 2026-07-28 era a server is routed to only when its ``tools/list`` in that
era gives a result. What one caller's request made the servers answer must not decide that for
every agent: an envelope whose capabilities are no object (which every server refuses) left
every server unrouted, for every agent, for a minute (red-team wave 53). Real gateway, a real
SDK upstream, the SDK's client for the agent that did nothing wrong."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway_proc import GatewayProcess, client, run_gateway, text_of
from tests.peers import http_upstream

MODERN = "2026-07-28"
POLICY = 'version: "1"\ndefault: deny\ntools:\n  echo: {action: allow}\n'
_ids = itertools.count(1)


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[GatewayProcess]:
    with http_upstream() as web, run_gateway(tmp_path, POLICY, {"web": {"url": web.url}}) as gw:
        yield gw


def hostile(gw: GatewayProcess, method: str, params: dict[str, Any]) -> httpx.Response:
    """A request whose envelope's capabilities are no object: every server refuses it."""
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": [1, 2],
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
    }
    body = {"jsonrpc": "2.0", "id": next(_ids), "method": method, "params": {**params}}
    body["params"]["_meta"] = meta
    headers = {
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": MODERN,
        "mcp-method": method,
    }
    if "name" in params:
        headers["mcp-name"] = params["name"]
    return httpx.post(gw.base + "/mcp", json=body, headers=headers, timeout=20)


async def _others_call_works(gw: GatewayProcess) -> None:
    async with client(gw.base + "/mcp", mode=MODERN) as agent:
        result = await agent.call_tool("web__echo", {"text": "still routed"})
    assert not result.is_error, text_of(result)
    assert "still routed" in text_of(result)


async def test_a_callers_refused_list_leaves_the_servers_routed_for_others(
    gw: GatewayProcess,
) -> None:
    async with client(gw.base + "/mcp", mode=MODERN) as agent:
        assert "web__echo" in {t.name for t in (await agent.list_tools()).tools}
    refused = hostile(gw, "tools/list", {})
    assert "web__echo" not in refused.text  # its own request failed, as it should
    await _others_call_works(gw)


async def test_a_callers_first_call_does_not_decide_the_era_for_others(
    gw: GatewayProcess,
) -> None:
    """No list yet: the first call asks the server whether it speaks the era, and asked
    with the caller's envelope, the refusal was remembered as the server's."""
    hostile(gw, "tools/call", {"name": "web__echo", "arguments": {"text": "x"}})
    await _others_call_works(gw)
