"""What request bodies in progress hold is bounded in all and per agent.

Each request in progress holds its body (its bytes, its text, its parse, the copy sent on):
one agent's 100 echoes of 3.9 MiB to a slow upstream, each within ``max_body_bytes`` and
within ``max_requests_per_agent``, held 660 MiB. Bodies over 64 KiB count, at four times their
bytes, against ``security.max_bodies_bytes``: past a quarter of it for one agent the request
is answered 429, past all of it 503, each with ``Retry-After``, and a body's share is given
back when its request ends.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.config import load_config
from gateway.errors import ConfigError
from gateway.pipeline.gateway import HeldBodies
from tests.gateway_proc import GatewayProcess, run_gateway, write_config
from tests.peers import PeerProcess, literal_upstream

POLICY = 'version: "1"\ndefault: deny\ntools:\n  echo: {}\n'
KEYS = {"alice": "cgk_bodies-alice-0000000000", "bob": "cgk_bodies-bob-00000000000"}
BODY = 128 * 1024  # max_body_bytes
ARG = "x" * (100 * 1024)  # a body of a little over 100 KiB: 400 KiB of the budget


def test_shares() -> None:
    held = HeldBodies(1600)
    assert held.cost(HeldBodies.SMALL - 1) == 0  # small bodies are not counted
    assert held.take("a", 400) is None
    assert held.take("a", 1) == "agent"  # a quarter each
    for owner in "bcd":
        assert held.take(owner, 400) is None
    assert held.take("e", 1) == "all"
    held.give("a", 400)
    assert held.take("e", 400) is None and "a" not in held.owned


def test_a_budget_smaller_than_one_body_per_agent_is_refused(tmp_path: Path) -> None:
    security = {"max_body_bytes": BODY, "max_bodies_bytes": 15 * BODY}
    config = write_config(tmp_path, POLICY, {}, 9, security=security)
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert "security.max_bodies_bytes" in str(info.value) and "16 times" in str(info.value)


@pytest.fixture(scope="module")
def slow() -> Iterator[PeerProcess]:
    """An upstream whose answers to calls never end (the gateway gives up after 2 s)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "script.json"
        script.write_text(json.dumps({"stall": {"tools/call": "json"}}))
        with literal_upstream({"LITERAL_SCRIPT": str(script)}) as peer:
            yield peer


@pytest.fixture(scope="module")
def gw(slow: PeerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    grants = {
        name: {"key_sha256": hashlib.sha256(key.encode()).hexdigest()} for name, key in KEYS.items()
    }
    security = {"max_body_bytes": BODY, "max_bodies_bytes": 16 * BODY}  # 512 KiB an agent
    servers = {"up": {"url": slow.url, "timeout": 2}}
    folder = tmp_path_factory.mktemp("gw")
    with run_gateway(folder, POLICY, servers, grants=grants, security=security) as gateway:
        yield gateway


async def _call(c: httpx.AsyncClient, gw: GatewayProcess, who: str, n: int) -> httpx.Response:
    body = {"jsonrpc": "2.0", "id": n, "method": "tools/call"}
    body["params"] = {"name": "echo", "arguments": {"text": ARG}}
    headers = {
        "authorization": f"Bearer {KEYS[who]}",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2025-11-25",
    }
    return await c.post(gw.url("up"), json=body, headers=headers, timeout=30)


async def test_one_agents_large_bodies_in_progress_are_bounded(gw: GatewayProcess) -> None:
    async with httpx.AsyncClient() as c:
        first = asyncio.ensure_future(_call(c, gw, "alice", 1))
        while not gw.records():  # until the first is decided: its body is held
            await asyncio.sleep(0.02)
        second = await _call(c, gw, "alice", 2)
        assert second.status_code == 429 and second.headers["retry-after"] == "1"
        assert "large requests in progress" in second.json()["error"]["message"]
        other = await _call(c, gw, "bob", 3)  # another agent's share is its own
        assert other.status_code == 200 and "did not answer in time" in other.text
        assert (await first).status_code == 200  # ended: its share given back
        again = await _call(c, gw, "alice", 4)
        assert again.status_code == 200 and "did not answer in time" in again.text
    assert gw.records("request.bodies_full")


async def test_a_body_still_arriving_holds_its_share(gw: GatewayProcess) -> None:
    """The budget was charged once a body was whole: 200 bodies of 4 MiB, each stopped 10
    bytes short of its end, held 800 MiB and were never refused. A declared body takes its
    share before it is read."""
    import socket

    body = json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
         "params": {"name": "echo", "arguments": {"text": ARG}}}
    ).encode()  # fmt: skip
    head = (
        f"POST /mcp/up HTTP/1.1\r\nhost: 127.0.0.1:{gw.port}\r\n"
        f"authorization: Bearer {KEYS['alice']}\r\ncontent-type: application/json\r\n"
        "accept: application/json, text/event-stream\r\nmcp-protocol-version: 2025-11-25\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", gw.port)) as stalled:
        stalled.sendall(head + body[:-10])  # and then nothing
        async with httpx.AsyncClient() as c:
            refused = await _call(c, gw, "alice", 2)
            assert refused.status_code == 429, refused.text
            assert (await _call(c, gw, "bob", 3)).status_code == 200  # another's share
    # the stalled request ended with its connection: its share is given back
    async with httpx.AsyncClient() as c:
        for _ in range(100):
            again = await _call(c, gw, "alice", 4)
            if again.status_code == 200:
                break
            await asyncio.sleep(0.05)  # (the gateway notices the closed connection)
    assert again.status_code == 200 and "did not answer in time" in again.text
