"""Handshake-era sessions through the relay are bounded, per caller and in all.

The relay keeps no state per session (the id it hands out is the upstream's, signed), so one
agent could open thousands of upstream sessions and never end them (red-team wave 33): the
upstream held them all. Now past ``servers.X.max_sessions_per_grant`` a caller's least
recently used session is ended upstream (DELETE) and answered 404 here, and past
``servers.X.max_sessions`` a caller with none to give up is refused a new one.

The upstream is ``tests.servers.raw_upstream`` in ``sessions`` mode (a new id per
``initialize``, DELETE ends one, an unknown one is 404), behind a real gateway process; what
it was sent is read from its log.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.auth.identity import hash_key
from gateway.upstream.sessions import SessionTable
from tests.gateway_proc import GatewayProcess, initialize_body, run_gateway
from tests.peers import raw_upstream

KEYS = {name: f"cgk_relay-sessions-{name}-0123456789" for name in ("alice", "bob", "carol")}
POLICY = 'version: "1"\ndefault: allow\n'


def headers(name: str, sid: str | None = None) -> dict[str, str]:
    out = {
        "authorization": f"Bearer {KEYS[name]}",
        "accept": "application/json, text/event-stream",
        "content-type": "application/json",
        "mcp-protocol-version": "2025-11-25",
    }
    if sid is not None:
        out["mcp-session-id"] = sid
    return out


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("relay-sessions-upstream") / "up.jsonl"


@pytest.fixture(scope="module")
def gateway(log: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with raw_upstream("sessions", log) as up:
        server = {"url": up.url, "max_sessions_per_grant": 3, "max_sessions": 5}
        grants = {name: {"key_sha256": hash_key(key)} for name, key in KEYS.items()}
        directory = tmp_path_factory.mktemp("gw-relay-sessions")
        with run_gateway(directory, POLICY, {"up": server}, grants=grants) as gw:
            yield gw


def _seen(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def _deletes(log: Path) -> list[str]:
    return [r["sid"] for r in _seen(log) if r["method"] == "DELETE"]


def _made(log: Path) -> int:
    return sum(1 for r in _seen(log) if r.get("rpc") == "initialize")


async def deleted(log: Path, count: int, before: list[str]) -> list[str]:
    """The session ids the upstream was sent a DELETE for since ``before``, once there are
    ``count`` (the gateway's start-up readings make and end sessions of their own)."""
    async with asyncio.timeout(20):
        while True:
            found = _deletes(log)[len(before) :]
            if len(found) >= count:
                return found
            await asyncio.sleep(0.05)  # polling for the upstream's log line, not for time


async def open_session(http: httpx.AsyncClient, gw: GatewayProcess, name: str) -> str:
    resp = await http.post(gw.url("up"), json=initialize_body(name), headers=headers(name))
    assert resp.status_code == 200, resp.text
    return resp.headers["mcp-session-id"]


async def listed(http: httpx.AsyncClient, gw: GatewayProcess, name: str, sid: str) -> int:
    body = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    resp = await http.post(gw.url("up"), json=body, headers=headers(name, sid))
    return resp.status_code


async def test_sessions_per_caller_and_in_all(gateway: GatewayProcess, log: Path) -> None:
    async with httpx.AsyncClient(timeout=20) as http:
        made, ended = _made(log), _deletes(log)  # sessions are s-1, s-2... in order made
        alice = [await open_session(http, gateway, "alice") for _ in range(3)]
        assert await listed(http, gateway, "alice", alice[0]) == 200  # now the most recent
        fourth = await open_session(http, gateway, "alice")
        # the least recently used (the second) was ended upstream, and is unknown here now
        assert await deleted(log, 1, ended) == [f"s-{made + 2}"]
        resp = await http.post(
            gateway.url("up"),
            json={"jsonrpc": "2.0", "id": 3, "method": "tools/list"},
            headers=headers("alice", alice[1]),
        )
        assert resp.status_code == 404
        assert resp.json()["error"]["message"] == "Session not found"
        for sid in (alice[0], alice[2], fourth):
            assert await listed(http, gateway, "alice", sid) == 200
        # bob's sessions are his own: alice's count never ends one of his
        bob = [await open_session(http, gateway, "bob") for _ in range(2)]
        assert len(_deletes(log)) == len(ended) + 1
        # five in all: carol, who holds none, is refused one (no initialize reaches upstream)
        before = _made(log)
        resp = await http.post(
            gateway.url("up"), json=initialize_body("carol"), headers=headers("carol")
        )
        error = resp.json()["error"]
        assert error["code"] == -32001 and "max_sessions" in error["message"]
        assert "mcp-session-id" not in resp.headers
        assert _made(log) == before
        # a session its client ends gives its place back
        resp = await http.delete(gateway.url("up"), headers=headers("bob", bob[0]))
        assert resp.status_code == 200
        await open_session(http, gateway, "carol")
        assert await listed(http, gateway, "bob", bob[1]) == 200


def test_table_keeps_the_most_recently_used() -> None:
    table = SessionTable(max_sessions=4, max_per_owner=2)
    assert table.used("a", "1") == [] and table.used("a", "2") == []
    assert table.used("a", "1") == []  # touched: "2" is now the oldest
    assert table.used("a", "3") == ["2"]
    assert table.was_ended("a", "2") and not table.was_ended("b", "2")
    assert table.used("b", "1") == [] and table.used("b", "2") == []
    assert table.count == 4 and table.full_for("c") and not table.full_for("a")
    table.ended("b", "1")
    table.ended("b", "1")  # twice: counted once
    table.ended("z", "9")  # never held: nothing
    assert table.count == 3 and not table.full_for("c")
    assert table.held_by("b") == 1 and table.held_by("c") == 0
