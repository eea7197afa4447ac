"""An upstream whose answer's head comes in time and whose body then stalls ends in an error
after ``servers.X.timeout`` of silence, as a stream does: it held its caller (and a place
under ``max_requests_per_agent``) for good, and on ``/mcp`` one server's unended 202 to
``notifications/initialized`` held every caller's merged list."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway_proc import GatewayProcess, client, run_gateway
from tests.peers import PeerProcess, literal_upstream

POLICY = 'version: "1"\ndefault: deny\ntools:\n  echo: {}\n  "ok__echo": {}\n'
META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
}


@pytest.fixture(scope="module")
def stalling(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerProcess]:
    script = tmp_path_factory.mktemp("stall") / "script.json"
    stall = {"tools/call": "json", "notifications/initialized": "notice", "ping": "drip"}
    script.write_text(json.dumps({"stall": stall}))
    with literal_upstream({"LITERAL_SCRIPT": str(script)}) as peer:
        yield peer


@pytest.fixture(scope="module")
def gw(stalling: PeerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with literal_upstream() as ok:
        servers = {"st": {"url": stalling.url, "timeout": 1}, "ok": {"url": ok.url}}
        folder: Path = tmp_path_factory.mktemp("gw")
        security = {"max_requests_per_agent": 2}
        with run_gateway(folder, POLICY, servers, security=security) as gateway:
            yield gateway


def _call(gw: GatewayProcess, msg_id: int) -> httpx.Response:
    params = {"name": "echo", "arguments": {"text": "x"}, "_meta": META}
    body = {"jsonrpc": "2.0", "id": msg_id, "method": "tools/call", "params": params}
    headers = {
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": "echo",
    }
    return httpx.post(gw.url("st"), json=body, headers=headers, timeout=20)


def test_a_stalled_json_answer_ends_in_an_error_and_frees_its_place(gw: GatewayProcess) -> None:
    for msg_id in range(3):  # more than max_requests_per_agent: each place was given back
        answer = _call(gw, msg_id)
        assert answer.status_code == 200, answer.text
        error: dict[str, Any] = answer.json()["error"]
        assert error["code"] == -32001 and "did not answer in time" in error["message"]
        assert answer.json()["id"] == msg_id


async def test_one_servers_unended_notice_does_not_hold_the_merged_list(
    gw: GatewayProcess,
) -> None:
    async with client(gw.base + "/mcp", mode="legacy") as c:
        names = {t.name for t in (await c.list_tools()).tools}
    assert "ok__echo" in names


def test_a_dripping_json_answer_ends_in_an_error(gw: GatewayProcess) -> None:
    """A space a second kept a per-chunk deadline from ever firing: an answer read whole must
    be whole within ``servers.X.timeout`` of its head."""
    body = {"jsonrpc": "2.0", "id": 9, "method": "ping", "params": {"_meta": META}}
    headers = {
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "ping",
    }
    answer = httpx.post(gw.url("st"), json=body, headers=headers, timeout=20)
    assert answer.status_code == 200, answer.text
    assert "did not answer in time" in answer.json()["error"]["message"]
