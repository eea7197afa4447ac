"""What a client leaves unread is bounded in time and in all.

An answer is handed to the connection's transport whole, and the request has ended (its
place under ``max_requests_per_agent`` given back) once it is: an agent that asked for large
answers on many connections and never read its sockets held them all in the gateway (48
answers of 30 MiB, 1.7 GiB), and closing such a connection kept its buffer until the client
read it. Now a connection whose unsent bytes grow no smaller for ``security.send_timeout`` is
cut, and past ``security.max_unsent_bytes`` unsent in all, the connection that stopped
reading first is cut; a client that reads gets its answer whole.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.wire import protocol
from tests.gateway_proc import GatewayProcess, run_gateway
from tests.peers import PeerProcess, literal_upstream

POLICY = 'version: "1"\ndefault: deny\ntools:\n  echo: {}\n'
FILLER = 12 * 1024 * 1024  # each answer: a little over 12 MiB of JSON (the kernel takes
# some of it, a few MiB, into the socket's buffers)


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerProcess]:
    script = tmp_path_factory.mktemp("big") / "script.json"
    script.write_text(json.dumps({"call_extra": {"filler": "x" * FILLER}}))
    with literal_upstream({"LITERAL_SCRIPT": str(script)}) as peer:
        yield peer


def _gateway(folder: Path, big: PeerProcess, **security: float) -> Iterator[GatewayProcess]:
    with run_gateway(folder, POLICY, {"up": {"url": big.url}}, security=security) as gateway:
        yield gateway


@pytest.fixture
def by_time(big: PeerProcess, tmp_path: Path) -> Iterator[GatewayProcess]:
    yield from _gateway(tmp_path, big, send_timeout=0.5)


@pytest.fixture
def by_budget(big: PeerProcess, tmp_path: Path) -> Iterator[GatewayProcess]:
    yield from _gateway(tmp_path, big, send_timeout=300, max_unsent_bytes=FILLER * 3 // 2)


def _unread_call(gw: GatewayProcess, msg_id: int) -> socket.socket:
    """A raw connection that asks for an answer and reads none of it (a small receive
    window, so the kernel takes little of it either)."""
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": msg_id,
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"n": msg_id}},
        }
    ).encode()
    head = (
        f"POST /mcp/up HTTP/1.1\r\nhost: 127.0.0.1:{gw.port}\r\n"
        "content-type: application/json\r\naccept: application/json, text/event-stream\r\n"
        f"mcp-protocol-version: 2025-11-25\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", gw.port))
    sock.sendall(head + body)
    return sock


def _read_all(sock: socket.socket) -> int:
    """What the connection gives before it ends (reset or closed)."""
    sock.settimeout(20)
    got = 0
    try:
        while chunk := sock.recv(1 << 20):
            got += len(chunk)
    except ConnectionResetError:
        pass
    sock.close()
    return got


def _whole_answer(gw: GatewayProcess) -> int:
    body = {"jsonrpc": "2.0", "id": 99, "method": "tools/call"}
    body["params"] = {"name": "echo", "arguments": {"n": 99}}
    headers = {"accept": "application/json, text/event-stream"}
    headers["mcp-protocol-version"] = "2025-11-25"
    answer = httpx.post(gw.url("up"), json=body, headers=headers, timeout=30)
    assert answer.status_code == 200
    return len(answer.json()["result"]["filler"])


def test_a_client_that_reads_nothing_is_cut_after_send_timeout(by_time: GatewayProcess) -> None:
    sock = _unread_call(by_time, 1)
    cut = by_time.wait_records(1, "client.unread", within=20)
    assert cut and cut[0]["unsent"] > 0 and cut[0]["seconds"] == 0.5
    assert _read_all(sock) < FILLER  # its answer was dropped, not kept for it
    assert _whole_answer(by_time) == FILLER  # a client that reads gets it whole


def test_past_the_budget_the_first_to_stop_reading_is_cut(by_budget: GatewayProcess) -> None:
    """Three unread answers are over the budget whatever the kernel takes of each; one is
    not."""
    socks = []
    for n in range(3):
        socks.append(_unread_call(by_budget, n))
        by_budget.wait_records(n + 1)  # decided and forwarded: its answer is on its way
    cut = by_budget.wait_records(1, "client.unread_budget", within=20)
    assert cut and cut[0]["total"] > FILLER * 3 // 2
    by_port = {s.getsockname()[1]: s for s in socks}
    victim = by_port.pop(int(cut[0]["client"].rpartition(":")[2]))
    assert _read_all(victim) < FILLER
    assert _whole_answer(by_budget) == FILLER
    for sock in by_port.values():
        sock.close()


def _read_some(sock: socket.socket, size: int) -> int:
    """Read ``size`` bytes of a connection's answer (the client is reading, then pauses)."""
    sock.settimeout(20)
    got = 0
    while got < size:
        chunk = sock.recv(min(1 << 16, size - got))
        assert chunk, "the connection ended"
        got += len(chunk)
    return got


def test_past_the_budget_a_client_still_reading_is_cut_last(by_budget: GatewayProcess) -> None:
    """The first to pause was cut whatever it had read since: a client reading its answer
    was reset for two that read nothing (red-team wave 52). Those that read nothing go
    first; the reader gets its answer whole."""
    reader = _unread_call(by_budget, 0)
    by_budget.wait_records(1)
    got = _read_some(reader, 1 << 20)  # it reads, after its writing paused
    idle = []
    for n in (1, 2):
        idle.append(_unread_call(by_budget, n))
        by_budget.wait_records(n + 1)
    cut = by_budget.wait_records(1, "client.unread_budget", within=20)
    ports = {int(record["client"].rpartition(":")[2]) for record in cut}
    # those that read nothing (one or both: the reader drains its own meanwhile), never it
    assert cut and ports <= {sock.getsockname()[1] for sock in idle}
    assert got + _read_all(reader) > FILLER  # whole: FILLER bytes of filler and its JSON
    for sock in idle:
        sock.close()


@pytest.fixture
def capped(big: PeerProcess, tmp_path: Path) -> Iterator[GatewayProcess]:
    yield from _gateway(tmp_path, big, send_timeout=300, max_connections=8)


def test_at_the_connection_cap_a_download_under_way_is_not_closed(capped: GatewayProcess) -> None:
    """Room is made by closing the connection idle longest; one whose answer was all handed
    over counted as idle while its client still read it: a 12 MB download was reset for an
    attacker's kept-alive connections (red-team wave 52). Those with nothing left to send
    go first."""
    reader = _unread_call(capped, 0)
    capped.wait_records(1)
    got = _read_some(reader, 1 << 20)
    kept = []
    for _ in range(12):  # past the cap: each one served, then kept open
        sock = socket.create_connection(("127.0.0.1", capped.port))
        sock.sendall(f"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1:{capped.port}\r\n\r\n".encode())
        sock.settimeout(20)
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")
        kept.append(sock)
    assert got + _read_all(reader) > FILLER
    for sock in kept:
        sock.close()


class _Paused:
    """A paused connection as ``_cut_past_budget`` reads it: what it holds, whether (and
    when) its client was seen reading, and whether it was cut."""

    def __init__(self, name: str, unsent: int, read_at: float | None, reads_now: bool) -> None:
        self.name, self._unsent, self._read_at = name, unsent, read_at
        self._seen = 100
        self.reads_now = reads_now
        self.cut = False

    def _count_unsent(self) -> int:
        return self._unsent

    def _observe(self, now: float) -> int:
        if self.reads_now:
            self._read_at = now
        return self._seen

    def _cut_unread(self, event: str, **fields: Any) -> None:
        self.cut = True
        protocol._Unsent.paused.pop(self, None)  # type: ignore[call-overload]
        protocol._Unsent.total -= self._unsent


def test_past_the_budget_those_never_seen_reading_go_first_then_the_longest_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client reading in bursts counted as idle from each stall check to its next burst,
    and as the first to pause it was cut before dozens of connections that never read a
    byte (red-team wave 55). The order: never seen reading, the first to pause first; then
    the longest without reading."""
    conns = [
        _Paused("bursty", 4, read_at=50.0, reads_now=False),  # read, not since its check
        _Paused("never-1", 4, read_at=None, reads_now=False),
        _Paused("reading", 4, read_at=10.0, reads_now=True),  # reading at this moment
        _Paused("never-2", 4, read_at=None, reads_now=False),
        _Paused("long-ago", 4, read_at=20.0, reads_now=False),
    ]
    monkeypatch.setattr(protocol._Unsent, "paused", dict.fromkeys(conns))
    monkeypatch.setattr(protocol._Unsent, "total", 20)
    order = []
    for budget in (16, 12, 8, 4, 0):  # one more cut each time
        protocol._cut_past_budget(budget)
        order += [c.name for c in conns if c.cut and c.name not in order]
    assert order == ["never-1", "never-2", "long-ago", "bursty", "reading"]
