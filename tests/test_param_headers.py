"""``Mcp-Param-*`` headers (SEP-2243): a tool whose input schema marks an argument
``x-mcp-header`` gets that argument as a header too, and a 2026-07-28 server refuses a call
whose header and body disagree or whose header is missing. The gateway makes the headers from
the body it decided on (the client's are never copied upstream) and refuses a client's
mismatching ones itself; on the relay and through ``/mcp``, in both eras."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.gateway_proc import GatewayProcess, calls_in, client, run_gateway, text_of
from tests.peers import PeerProcess, http_upstream

POLICY = 'version: "1"\ndefault: allow\n'
MODERN = "2026-07-28"


@pytest.fixture(scope="module")
def call_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("params") / "calls.jsonl"


@pytest.fixture(scope="module")
def upstream(call_log: Path) -> Iterator[PeerProcess]:
    env = {"UPSTREAM_PARAM_HEADERS": "1", "UPSTREAM_CALL_LOG": str(call_log)}
    with http_upstream(extra_env=env) as up:
        yield up


@pytest.fixture(scope="module")
def gateway(
    upstream: PeerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    directory = tmp_path_factory.mktemp("params-gw")
    with run_gateway(directory, POLICY, {"up": {"url": upstream.url}}) as gw:
        yield gw


@pytest.mark.parametrize("mode", ["legacy", "auto"])
@pytest.mark.parametrize(("path", "tool"), [("/mcp/up", "locate"), ("/mcp", "up__locate")])
async def test_the_header_reaches_the_server_made_from_the_body(
    gateway: GatewayProcess, mode: str, path: str, tool: str
) -> None:
    async with client(gateway.base + path, mode=mode) as c:
        await c.list_tools()
        result = await c.call_tool(tool, {"region": f"eu-{mode}"})
    assert not result.is_error, text_of(result)
    assert text_of(result) == f"region eu-{mode}"


def test_a_mismatching_client_header_is_refused_before_the_server(
    gateway: GatewayProcess, call_log: Path
) -> None:
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    body = {
        "jsonrpc": "2.0",
        "id": 3,
        "method": "tools/call",
        "params": {"name": "locate", "arguments": {"region": "allowed"}, "_meta": meta},
    }
    headers = {
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": MODERN,
        "mcp-method": "tools/call",
        "mcp-name": "locate",
        "mcp-param-region": "somewhere-else",
    }
    refused = httpx.post(f"{gateway.base}/mcp/up", json=body, headers=headers, timeout=10)
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == -32020
    arguments = [c.get("arguments") for c in calls_in(call_log) if c.get("tool") == "locate"]
    assert {"region": "allowed"} not in arguments
