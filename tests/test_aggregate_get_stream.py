"""The merged ``GET`` stream of a handshake-era ``/mcp`` session reads each server's own
stream for as long as the session lives: a server may end its stream at any time (SEP-1699),
and the gateway opens it again, resumed from its last event. Once ended it was never read
again, and every later message of that server's to the client was lost (red-team wave 64).

A real gateway process, the test upstream (the SDK's server, with an event store) over HTTP,
and a raw HTTP client reading the merged stream."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.gateway_proc import GatewayProcess, run_gateway
from tests.peers import http_upstream, raw_upstream
from tests.test_aggregate_relay import JSON_SSE, KEY, _init

POLICY = 'version: "1"\ndefault: allow\n'


@pytest.fixture
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with http_upstream(extra_env={"UPSTREAM_GET_STREAM_TOOLS": "1"}) as up:
        grants = {"bot": {"key_sha256": hashlib.sha256(KEY.encode()).hexdigest()}}
        folder = tmp_path_factory.mktemp("get-stream")
        with run_gateway(folder, POLICY, {"up": {"url": up.url}}, grants=grants) as gw:
            yield gw


async def _methods(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    async for line in lines:
        if line.startswith("data:") and line[5:].strip():
            yield str(json.loads(line[5:]).get("method"))


async def test_a_server_stream_that_ends_is_read_again(gateway: GatewayProcess) -> None:
    async with httpx.AsyncClient(base_url=gateway.base, timeout=30) as http:
        base = {"authorization": f"Bearer {KEY}", "accept": JSON_SSE}
        opened = await http.post("/mcp", json=_init(), headers=base)
        headers = {**base, "mcp-session-id": opened.headers["mcp-session-id"]}
        done = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        await http.post("/mcp", json=done, headers=headers)

        async def call(msg_id: int, tool: str) -> Any:
            body = {"jsonrpc": "2.0", "id": msg_id, "method": "tools/call"}
            body["params"] = {"name": f"up__{tool}", "arguments": {}}
            return (await http.post("/mcp", json=body, headers=headers)).text

        assert "announced" in await call(1, "announce")  # the link, and its stream, opened
        stream = {**headers, "accept": "text/event-stream"}
        async with http.stream("GET", "/mcp", headers=stream) as merged:
            methods = _methods(merged.aiter_lines())
            assert "announced" in await call(2, "announce")
            with anyio.fail_after(10):
                assert await anext(methods) == "notifications/tools/list_changed"
            assert "dropped" in await call(3, "drop_stream")  # the server ends its stream
            assert "announced" in await call(4, "announce")  # news while it is closed
            with anyio.fail_after(15):  # the stream is opened again, from its last event
                assert await anext(methods) == "notifications/tools/list_changed"
    assert gateway.records("aggregate.stream_reopened")


async def test_a_server_whose_every_get_is_404_is_not_relinked(tmp_path: Path) -> None:
    """A server that serves no GET at all (404 for each, its sessions alive) was taken for
    one that restarted: each 404 opened a new link, whose GET was 404 again, with no pause
    (15,000 sessions in 5 s from one listening client, red-team wave 68). A ``ping`` in the
    session tells them apart: alive, the server has no stream, as for a 405."""
    log = tmp_path / "up.jsonl"
    with raw_upstream("sessions,get-404", log) as up:
        grants = {"bot": {"key_sha256": hashlib.sha256(KEY.encode()).hexdigest()}}
        with run_gateway(tmp_path, POLICY, {"up": {"url": up.url}}, grants=grants) as gw:
            async with httpx.AsyncClient(base_url=gw.base, timeout=30) as http:
                base = {"authorization": f"Bearer {KEY}", "accept": JSON_SSE}
                opened = await http.post("/mcp", json=_init(), headers=base)
                headers = {**base, "mcp-session-id": opened.headers["mcp-session-id"]}
                body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call"}
                body["params"] = {"name": "up__echo", "arguments": {"text": "hi"}}
                assert "hi" in (await http.post("/mcp", json=body, headers=headers)).text
                opens = _initializes(log)
                stream = {**headers, "accept": "text/event-stream"}
                async with http.stream("GET", "/mcp", headers=stream):
                    assert gw.wait_records(1, "aggregate.no_stream", within=20)
            assert gw.records("aggregate.link_lost") == []
            assert _initializes(log) == opens


def _initializes(log: Path) -> int:
    lines = log.read_text().splitlines() if log.exists() else []
    return sum(1 for line in lines if json.loads(line).get("rpc") == "initialize")
