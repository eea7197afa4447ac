"""One server's odd answers on ``/mcp`` are that server's loss, never everyone's: a tools list
that is not a list, a ``server/discover`` with a ``ttlMs`` of "soon" and versions as a string,
an ``initialize`` naming a list as its protocol version. Each made the merged answer fail
(500) for every agent; the good server's tools are listed and called."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.gateway_proc import GatewayProcess, client, run_gateway, text_of
from tests.peers import literal_upstream

ODD = {
    "tools/list": {"tools": 5},
    "server/discover": {
        "supportedVersions": "2026-07-28",
        "ttlMs": "soon",
        "capabilities": {"tools": {}},
        "instructions": {"not": "text"},
        "resultType": "complete",
    },
    "initialize": {
        "protocolVersion": ["2025-11-25"],
        "capabilities": {"tools": {}},
        "serverInfo": {"name": "odd", "version": "1"},
    },
}
META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientInfo": {"name": "odd", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {},
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    folder = tmp_path_factory.mktemp("agg-odd")
    (folder / "odd.json").write_text(json.dumps({"results": ODD}))
    with (
        literal_upstream() as good,
        literal_upstream({"LITERAL_SCRIPT": str(folder / "odd.json")}) as odd,
    ):
        servers = {"good": {"url": good.url}, "odd": {"url": odd.url}}
        with run_gateway(folder, 'version: "1"\ndefault: allow\n', servers) as gw:
            yield gw


def post(gw: GatewayProcess, method: str, params: dict[str, Any] | None = None) -> httpx.Response:
    body = {
        "jsonrpc": "2.0",
        "id": 3,
        "method": method,
        "params": {**(params or {}), "_meta": META},
    }
    headers = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": method,
    }
    return httpx.post(gw.base + "/mcp", json=body, headers=headers, timeout=10)


async def test_the_handshake_era_lists_and_calls_the_good_server(gateway: GatewayProcess) -> None:
    async with client(gateway.base + "/mcp", mode="legacy") as agent:
        names = {t.name for t in (await agent.list_tools()).tools}
        assert "good__echo" in names and not any(n.startswith("odd__") for n in names)
        assert "hi" in text_of(await agent.call_tool("good__echo", {"text": "hi"}))


def test_the_stateless_era_lists_the_good_server(gateway: GatewayProcess) -> None:
    answer = post(gateway, "tools/list")
    assert answer.status_code == 200
    names = {t["name"] for t in answer.json()["result"]["tools"]}
    assert "good__echo" in names


def test_discover_takes_only_what_reads(gateway: GatewayProcess) -> None:
    answer = post(gateway, "server/discover")
    assert answer.status_code == 200
    result = answer.json()["result"]
    assert result["ttlMs"] == 0 and result["supportedVersions"] == []
    assert "not" not in result.get("instructions", "")
    assert gateway.records("aggregate.internal_error") == []
