"""Handshake-era sessions through the relay are bounded, per caller and in all.

The relay keeps no state per session (the id it hands out is the upstream's, signed), so one
agent could open thousands of upstream sessions and never end them (red-team wave 33): the
upstream held them all. Now a new session past ``servers.X.max_sessions_per_grant`` for one
caller, or past ``servers.X.max_sessions`` in all, is refused, and a session idle for
``servers.X.session_idle`` (nothing in progress) is ended upstream.

The upstream is ``tests.servers.raw_upstream`` in ``sessions`` mode (a new id per
``initialize``, DELETE ends one, an unknown one is 404), behind a real gateway process; what
it was sent is read from its log.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.auth.identity import hash_key
from gateway.upstream.sessions import GIVE_WAY_SECONDS as GRACE
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
        # (no give-way within the test: its sessions are all refused past the cap)
        server = {
            "url": up.url,
            "max_sessions_per_grant": 3,
            "max_sessions": 5,
            "session_give_way": 3600,
        }
        grants = {name: {"key_sha256": hash_key(key)} for name, key in KEYS.items()}
        directory = tmp_path_factory.mktemp("gw-relay-sessions")
        with run_gateway(directory, POLICY, {"up": server}, grants=grants) as gw:
            yield gw


def _seen(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def _made(log: Path) -> int:
    return sum(1 for r in _seen(log) if r.get("rpc") == "initialize")


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
        alice = [await open_session(http, gateway, "alice") for _ in range(3)]
        # a fourth is refused (never a session in use ended to make room: one that was
        # broke its client's running call, and neither SDK opens another; wave 38)
        before = _made(log)
        resp = await http.post(
            gateway.url("up"), json=initialize_body("alice"), headers=headers("alice")
        )
        assert resp.status_code == 429 and "max_sessions_per_grant" in resp.text
        assert _made(log) == before and "mcp-session-id" not in resp.headers
        for sid in alice:
            assert await listed(http, gateway, "alice", sid) == 200
        # five in all: carol, with none, is refused one too (no initialize reaches upstream)
        bob = [await open_session(http, gateway, "bob") for _ in range(2)]
        resp = await http.post(
            gateway.url("up"), json=initialize_body("carol"), headers=headers("carol")
        )
        error = resp.json()["error"]
        assert error["code"] == -32001 and "max_sessions" in error["message"]
        assert _made(log) == before + 2
        # a session its client ends gives its place back
        resp = await http.delete(gateway.url("up"), headers=headers("bob", bob[0]))
        assert resp.status_code == 200
        await open_session(http, gateway, "carol")
        assert await listed(http, gateway, "bob", bob[1]) == 200


def test_an_idle_session_is_ended_and_a_busy_one_never() -> None:
    now = [0.0]
    table = SessionTable(max_sessions=4, max_per_owner=2, idle=60.0, clock=lambda: now[0])
    table.opened("a", "1")
    table.opened("a", "2")
    assert table.refusal("a") == (429, "max_sessions_per_grant") and table.refusal("b") is None
    table.began("a", "2")  # a stream held open on it
    now[0] = 30.0
    table.opened("b", "3")
    now[0] = 61.0
    assert table.idle_ones() == [("a", "1")]  # "2" is busy, "3" is young
    assert table.refusal("a") is None and table.held_by("a") == 1
    table.done("a", "2")
    now[0] = 200.0
    assert sorted(table.idle_ones()) == [("a", "2"), ("b", "3")]
    assert table.count == 0
    table.began("c", "9")  # presented here, made elsewhere (another replica): counted
    table.ended("c", "9")
    table.ended("c", "9")  # twice: counted once
    assert table.count == 0 and table.held_by("c") == 0
    assert SessionTable(max_sessions=3, max_per_owner=256, idle=1.0).max_per_owner == 3


def test_at_its_cap_a_callers_long_idle_session_gives_way() -> None:
    """The TypeScript SDK and the Inspector never end their sessions (no DELETE): an agent
    using them was refused every new session once it had opened its cap's worth within
    ``session_idle`` (red-team wave 39). Its own session idle GIVE_WAY_SECONDS gives way; one in use
    (a call, a stream), one younger, or another caller's never does."""
    now = [0.0]
    table = SessionTable(max_sessions=10, max_per_owner=3, idle=3600.0, clock=lambda: now[0])
    table.opened("a", "1")
    table.opened("b", "2")  # another caller's, older than a's second
    now[0] = GRACE / 6
    table.opened("a", "3")
    table.began("a", "1")  # a's oldest is in use (its GET stream open)
    table.opened("a", "4")
    now[0] = GRACE / 2
    assert table.give_way("a") is None  # all younger than the grace, or busy
    now[0] = GRACE * 5 / 3
    assert table.give_way("b") is None  # b is not at its cap
    assert table.give_way("a") == "3"  # a's own, idle, least recently used
    assert table.held_by("a") == 2 and table.refusal("a") is None
    table.opened("a", "5")
    assert table.give_way("a") == "4"
    table.opened("a", "6")
    assert table.give_way("a") is None  # "5" and "6" were just used, "1" is busy
    assert table.held_by("b") == 1  # never another's


def test_a_session_being_made_holds_its_place() -> None:
    """Counted only once made, 60 initializes sent at once all passed a cap of 5 (red-team
    wave 39): each holds its place from before it is sent until it is answered."""
    table = SessionTable(max_sessions=3, max_per_owner=2, idle=60.0, clock=lambda: 0.0)
    table.making("a")
    table.making("a")
    assert table.refusal("a") == (429, "max_sessions_per_grant")
    table.making("b")
    assert table.refusal("c") == (503, "max_sessions")
    table.opened("a", "1")  # one made
    table.made("a")
    table.made("a")  # the other not (refused upstream): its place is free again
    table.made("b")
    assert table.refusal("a") is None and table.held_by("a") == 1 and table.count == 1
