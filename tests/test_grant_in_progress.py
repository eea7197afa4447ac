"""``security.max_requests_per_agent``: one agent's requests in progress at once (held calls,
streams) are capped per replica, so one client cannot hold every connection the gateway has.
Past the cap its next request is 429 with ``Retry-After``; others go on, and its places come
back as its requests end (or its client goes away). Per agent of a grant: two users of one
OAuth client count apart (``tests/test_oauth_same_client.py``)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway_proc import GatewayProcess, run_gateway
from tests.peers import PeerProcess, http_upstream, raw_upstream
from tests.servers.test_servers_smoke import eventually
from tests.test_stdio_wire import MODERN_META

HOG, OTHER = "cgk_in-progress-hog-0123456789", "cgk_in-progress-other-0123456789"
CAP = 3
POLICY = """
version: "1"
default: deny
tools:
  slow_progress: {action: allow}
  echo: {action: allow}
  hang: {action: allow}
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    grants = {
        name: {"key_sha256": hashlib.sha256(key.encode()).hexdigest()}
        for name, key in (("hog", HOG), ("other", OTHER))
    }
    security = {"max_requests_per_agent": CAP}
    up: PeerProcess
    with http_upstream() as up:
        servers = {"up": {"url": up.url}}
        directory = tmp_path_factory.mktemp("in-progress")
        with run_gateway(directory, POLICY, servers, grants=grants, security=security) as gw:
            yield gw


def headers(key: str, tool: str) -> dict[str, str]:
    return {
        "authorization": f"Bearer {key}",
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": tool,
    }


def body(tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    params = {"name": tool, "arguments": arguments, "_meta": MODERN_META}
    return {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}


async def test_one_grant_past_its_cap_is_429_others_go_on(gateway: GatewayProcess) -> None:
    async with httpx.AsyncClient(base_url=gateway.base, timeout=20) as http:

        async def slow() -> int:
            arguments = {"steps": 2, "delay_ms": 1500}
            answer = await http.post(
                "/mcp/up",
                json=body("slow_progress", arguments),
                headers=headers(HOG, "slow_progress"),
            )
            return answer.status_code

        async def echo(key: str) -> httpx.Response:
            return await http.post(
                "/mcp/up", json=body("echo", {"text": "hi"}), headers=headers(key, "echo")
            )

        def hanging() -> int:
            return len(gateway.records()) - before

        before = len(gateway.records())
        held = [asyncio.ensure_future(slow()) for _ in range(CAP)]
        await eventually(lambda: hanging() == CAP, 20)  # all decided and under way
        over = await echo(HOG)
        assert over.status_code == 429 and over.headers["retry-after"] == "1"
        assert f"more than {CAP} requests of this agent" in over.json()["error"]["message"]
        # A notification takes no place: a cancel passes at the cap (refused, the calls it
        # would end kept the places, and a TypeScript SDK host was locked out for good).
        cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled",
                  "params": {"requestId": 99, "_meta": MODERN_META}}  # fmt: skip
        note = {**headers(HOG, "echo"), "mcp-method": "notifications/cancelled"}
        note.pop("mcp-name")
        passed = await http.post("/mcp/up", json=cancel, headers=note)
        assert passed.status_code == 202, passed.text
        assert (await echo(OTHER)).status_code == 200
        assert await asyncio.gather(*held) == [200] * CAP
        assert (await echo(HOG)).status_code == 200  # its places came back as they ended


def test_a_client_gone_before_the_answer_gives_its_place_back(gateway: GatewayProcess) -> None:
    """A call whose upstream never answers, its client gone: the request ends at once (not
    after servers.X.timeout), and its place among the grant's requests comes back."""
    sent = json.dumps(body("hang", {})).encode()
    raw = raw_head(gateway, "hang", len(sent)) + sent
    before = len(gateway.records())
    gone = [socket.create_connection(("127.0.0.1", gateway.port)) for _ in range(CAP)]
    for sock in gone:
        sock.sendall(raw)
    gateway.wait_records(before + CAP)  # all decided and sent upstream
    echo = body("echo", {"text": "hi"})
    url = gateway.url("up")
    assert httpx.post(url, json=echo, headers=headers(HOG, "echo")).status_code == 429
    for sock in gone:
        sock.close()
    assert served_again(gateway)["result"]["content"][0]["text"] == "hi"


def test_bodies_still_coming_count_against_the_cap(gateway: GatewayProcess) -> None:
    """A request's place is taken once its body shows a request (a cancel at the cap passes),
    but a body sent a byte at a time held a connection past every cap: one agent's slow
    bodies took all of them, and other grants were answered 503. They count too."""
    raw = raw_head(gateway, "echo", 1000) + b"{"
    slow = [socket.create_connection(("127.0.0.1", gateway.port)) for _ in range(CAP)]
    for sock in slow:
        sock.sendall(raw)
    echo = body("echo", {"text": "hi"})
    url = gateway.url("up")
    deadline = time.monotonic() + 10
    while httpx.post(url, json=echo, headers=headers(HOG, "echo")).status_code != 429:
        assert time.monotonic() < deadline, "slow bodies took no place"
    assert httpx.post(url, json=echo, headers=headers(OTHER, "echo")).status_code == 200
    for sock in slow:
        sock.close()
    served_again(gateway)


def raw_head(gateway: GatewayProcess, tool: str, length: int) -> bytes:
    """The head of HOG's ``tools/call`` of ``tool`` whose body is ``length`` bytes."""
    head = "".join(f"{k}: {v}\r\n" for k, v in headers(HOG, tool).items())
    return (
        f"POST /mcp/up HTTP/1.1\r\nHost: 127.0.0.1:{gateway.port}\r\n{head}"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def served_again(gateway: GatewayProcess) -> Any:
    """HOG's echo once its places have come back (within 10 s): the answer's JSON."""
    echo = body("echo", {"text": "hi"})
    deadline = time.monotonic() + 10
    while (
        answer := httpx.post(gateway.url("up"), json=echo, headers=headers(HOG, "echo"))
    ).status_code != 200:
        assert time.monotonic() < deadline, answer.text
    return answer.json()


@pytest.fixture(scope="module")
def slow_notes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, Path]]:
    """A gateway in front of a server that never takes a notification (its 202 never comes)."""
    directory = tmp_path_factory.mktemp("slow-notes")
    grants = {
        name: {"key_sha256": hashlib.sha256(key.encode()).hexdigest()}
        for name, key in (("hog", HOG), ("other", OTHER))
    }
    log = directory / "up.jsonl"
    with raw_upstream("notes-hang", log) as up:
        servers = {"up": {"url": up.url, "timeout": 60}}
        security = {"max_requests_per_agent": CAP}
        with run_gateway(directory, POLICY, servers, grants=grants, security=security) as gw:
            yield gw, log


async def test_notifications_waiting_on_their_server_hold_places(
    slow_notes: tuple[GatewayProcess, Path],
) -> None:
    """A notification is passed on and waits for its server's 202: it took no place, and
    one agent kept a thousand in progress against a slow server, each holding a connection,
    until no one else could connect (red-team wave 32). Now notifications count under the
    cap apart from requests (so a cancel still passes when the requests are at the cap)."""
    gateway, log = slow_notes

    def sent_on() -> int:
        lines = log.read_text().splitlines() if log.exists() else []
        return sum(1 for line in lines if json.loads(line)["rpc"] == "notifications/cancelled")

    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled",
              "params": {"requestId": 99, "_meta": MODERN_META}}  # fmt: skip

    def note(key: str) -> dict[str, str]:
        sent = {**headers(key, "echo"), "mcp-method": "notifications/cancelled"}
        sent.pop("mcp-name")
        return sent

    async with httpx.AsyncClient(base_url=gateway.base, timeout=60) as http:
        waiting = [
            asyncio.ensure_future(http.post("/mcp/up", json=cancel, headers=note(HOG)))
            for _ in range(CAP)
        ]
        await eventually(lambda: sent_on() == CAP, 20)  # each passed on, waiting for its 202
        over = await http.post("/mcp/up", json=cancel, headers=note(HOG))
        assert over.status_code == 429, over.text
        assert f"more than {CAP} requests of this agent" in over.json()["error"]["message"]
        echo = await http.post(
            "/mcp/up", json=body("echo", {"text": "hi"}), headers=headers(HOG, "echo")
        )
        assert echo.status_code == 200, echo.text  # its requests' places are its own
        others = asyncio.ensure_future(http.post("/mcp/up", json=cancel, headers=note(OTHER)))
        await eventually(lambda: sent_on() == CAP + 1, 20)  # another agent's passes
        for task in [*waiting, others]:
            task.cancel()
        await asyncio.gather(*waiting, others, return_exceptions=True)

    async with httpx.AsyncClient(base_url=gateway.base, timeout=60) as http:
        again = asyncio.ensure_future(http.post("/mcp/up", json=cancel, headers=note(HOG)))
        await eventually(lambda: sent_on() == CAP + 2, 20)  # the places came back
        again.cancel()
        await asyncio.gather(again, return_exceptions=True)


@pytest.mark.parametrize(
    ("key", "host", "status"),
    [("cgk_not-a-key-0123456789", "127.0.0.1", 401), (HOG, "evil.example", 421)],
)
def test_a_refusal_before_any_caller_ends_its_connection(
    gateway: GatewayProcess, key: str, host: str, status: int
) -> None:
    """A wrong key (or a foreign Host): answered, and the connection closed, the requests
    queued behind it never read. A client without a key kept one request queued behind each
    refusal on a thousand connections, none of them ever idle, so none gave way to an honest
    client at max_connections (red-team wave 33)."""
    from tests.slow_peers import read_all

    sent = json.dumps(body("echo", {"text": "hi"})).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in headers(key, "echo").items())
    one = (
        f"POST /mcp/up HTTP/1.1\r\nHost: {host}\r\n{head}Content-Length: {len(sent)}\r\n\r\n"
    ).encode() + sent
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(one * 3)  # pipelined
        reply, closed = read_all(sock, time.monotonic() + 10)
    assert closed, reply
    assert reply.count(b"HTTP/1.1 ") == 1 and reply.startswith(b"HTTP/1.1 %d" % status), reply
    assert b"connection: close" in reply.lower()


def test_an_agents_notices_are_a_few_not_another_full_pool(tmp_path: Any) -> None:
    """With a pool of notices as large as the requests' one agent held three times
    max_requests_per_agent in connections (requests, bodies, notices), and two ordinary keys
    filled max_connections (red-team wave 33): notices are 32 at most."""
    from gateway.config import load_config
    from gateway.server.build import build_gateway
    from tests.gateway_proc import write_config

    servers = {"up": {"url": "http://127.0.0.1:9/mcp"}}
    for cap, notices in ((256, 32), (3, 3)):
        security = {"max_requests_per_agent": cap}
        gw = build_gateway(
            load_config(write_config(tmp_path, POLICY, servers, 9, security=security))
        )
        assert (gw.in_progress.cap, gw.notices.cap) == (cap, notices)
