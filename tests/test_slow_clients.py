"""Unauthenticated clients cannot exhaust the gateway: heads and bodies that never end are cut
off, oversized heads are refused without being held, connections are capped, and memory stays
bounded. The gateway and the MCP upstream are real processes; the attackers are raw sockets on
127.0.0.1. Run with ``-s`` to see the memory figures (also recorded as test properties)."""

from __future__ import annotations

import hashlib
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.errors import ConfigError
from gateway.wire.protocol import MAX_PIPELINED
from tests.gateway_proc import GatewayProcess, client, run_gateway, text_of
from tests.peers import PeerProcess
from tests.slow_peers import (
    MiB,
    close_all,
    ensure_fd_limit,
    open_slow,
    read_all,
    request,
    rss_mib,
    still_open,
    wait_all_closed,
)

POLICY = 'version: "1"\ndefault: deny\ntools:\n  echo: {action: allow}\n'
HEAD_TIMEOUT = 2.0
BODY_TIMEOUT = 1.0
KEEPALIVE_TIMEOUT = 0.5
RSS_BOUND_MIB = 200  # unbounded, 20 streamed 16 MiB headers took the gateway to 978 MiB
HALF_HEAD = b"POST /mcp/up HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty"
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

Record = Callable[[str, object], None]
Factory = pytest.TempPathFactory


def _gateway(
    upstream: PeerProcess, factory: pytest.TempPathFactory, **security: float
) -> Iterator[GatewayProcess]:
    directory = factory.mktemp("gw")
    servers = {"up": {"url": upstream.url}}
    with run_gateway(directory, POLICY, servers, security=security) as gw:
        yield gw


@pytest.fixture(scope="module")
def quick(
    upstream: PeerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """Short deadlines, default head limits and connection cap."""
    yield from _gateway(
        upstream,
        tmp_path_factory,
        head_timeout=HEAD_TIMEOUT,
        body_timeout=BODY_TIMEOUT,
        keepalive_timeout=KEEPALIVE_TIMEOUT,
    )


@pytest.fixture(scope="module", autouse=True)
def _descriptors() -> None:
    if ensure_fd_limit(4096) < 1200:
        pytest.skip("needs about 1,200 file descriptors (ulimit -n)")


async def _echo(gw: GatewayProcess, text: str) -> None:
    async with client(gw.url("up")) as c:
        result = await c.call_tool("echo", {"text": text})
    assert not result.is_error and text in text_of(result)


def _healthz(gw: GatewayProcess) -> int:
    with urllib.request.urlopen(f"{gw.base}/healthz", timeout=5) as resp:
        return int(resp.status)


def _status(reply: bytes) -> int | None:
    return int(reply[9:12]) if reply.startswith(b"HTTP/1.1 ") else None


def _with_headers(count: int) -> bytes:
    """A /healthz request with ``count`` headers in all (Host included)."""
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(count - 1))
    return b"GET /healthz HTTP/1.1\r\nHost: a\r\n" + headers + b"\r\n"


def _report(record: Record, name: str, value: float) -> None:
    print(f"\n  {name}: {value:.1f}")
    record(name, round(value, 1))


class TestHeadTimeout:
    """A head not complete within head_timeout is answered 408 and closed."""

    async def test_held_half_heads_are_closed_while_calls_go_through(
        self, quick: GatewayProcess
    ) -> None:
        opened = time.monotonic()
        socks = [open_slow(quick.port, HALF_HEAD) for _ in range(300)]
        try:
            assert all(still_open(s) for s in socks[-10:])
            await _echo(quick, "during the attack")  # held heads cost the others nothing
            got = wait_all_closed(socks, time.monotonic() + HEAD_TIMEOUT + 10)
            closed = time.monotonic()
        finally:
            close_all(socks)
        assert closed - opened >= HEAD_TIMEOUT * 0.9  # not before the deadline
        assert {_status(reply) for reply in got.values()} == {408}
        assert _healthz(quick) == 200

    def test_silent_connection_is_closed_without_an_answer(self, quick: GatewayProcess) -> None:
        sock = socket.create_connection(("127.0.0.1", quick.port))
        with sock:
            reply, closed = read_all(sock, time.monotonic() + HEAD_TIMEOUT + 10)
        assert closed and reply == b""

    def test_deadline_restarts_for_each_request_on_a_kept_alive_connection(
        self, quick: GatewayProcess
    ) -> None:
        sock, reply = request(quick.port, HEALTHZ)
        with sock:
            assert _status(reply) == 200
            sock.sendall(b"GET /heal")
            started = time.monotonic()
            reply, closed = read_all(sock, started + HEAD_TIMEOUT + 10)
        assert closed and _status(reply) == 408
        assert time.monotonic() - started >= HEAD_TIMEOUT * 0.9


class TestHeadSize:
    """A head over max_head_bytes or with more than max_headers headers: 431 and close."""

    def test_too_many_headers(self, quick: GatewayProcess) -> None:
        headers = b"".join(b"X-H%d: v\r\n" % i for i in range(101))
        sock, reply = request(
            quick.port, b"GET /healthz HTTP/1.1\r\nHost: a\r\n" + headers + b"\r\n"
        )
        with sock:
            assert _status(reply) == 431
            assert read_all(sock, time.monotonic() + 5)[1]

    def test_a_hundred_headers_pass(self, quick: GatewayProcess) -> None:
        headers = b"".join(b"X-H%d: v\r\n" % i for i in range(99))
        sock, reply = request(
            quick.port, b"GET /healthz HTTP/1.1\r\nHost: a\r\n" + headers + b"\r\n"
        )
        with sock:
            assert _status(reply) == 200

    def test_a_head_pipelined_behind_a_request_is_bounded_too(self, quick: GatewayProcess) -> None:
        """A head sent in the same read as the request before it went to the parser
        uncounted: a 40 KB header passed where alone it was 431 (red-team wave 47)."""
        big = b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * (40 * 1024) + b"\r\n\r\n"
        with open_slow(quick.port, HEALTHZ + big) as sock:
            replies, _ = read_all(sock, time.monotonic() + 5)
        # refused (431, or closed unanswered while the first was still being answered: an
        # answer then would be read as the first one's), never served, never the first's
        assert replies.count(b"HTTP/1.1 200") <= 1 and not replies.startswith(b"HTTP/1.1 431")

    def test_long_url(self, quick: GatewayProcess) -> None:
        url = b"/healthz?" + b"a" * (40 * 1024)
        sock, reply = request(quick.port, b"GET " + url + b" HTTP/1.1\r\nHost: a\r\n\r\n")
        with sock:
            assert _status(reply) in (431, None)  # None: the reset overtook the answer
            assert read_all(sock, time.monotonic() + 5)[1]

    def test_huge_streamed_headers_are_cut_off_and_memory_stays_bounded(
        self, quick: GatewayProcess, record_property: Record
    ) -> None:
        before = rss_mib(quick.peer.pid)
        socks = [open_slow(quick.port, b"GET /healthz HTTP/1.1\r\nX-Big: ") for _ in range(20)]
        sent = _stream_headers(socks, 16 * MiB, quick.peer.pid)
        peak = sent.pop("peak_rss")
        close_all(socks)
        _report(record_property, "huge headers: RSS before (MiB)", before)
        _report(record_property, "huge headers: peak RSS, 20 x 16 MiB header (MiB)", peak)
        assert all(n < 16 * MiB for n in sent.values()), sent  # every one was cut off
        assert peak < RSS_BOUND_MIB
        assert _healthz(quick) == 200


class TestTrailers:
    """Trailers of a chunked body are bounded like a head (httptools holds them too)."""

    def test_endless_trailer_is_cut_off(
        self, quick: GatewayProcess, record_property: Record
    ) -> None:
        head = (
            b"POST /mcp/up HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nX-Trailer: "
        )
        before = rss_mib(quick.peer.pid)
        socks = [open_slow(quick.port, head) for _ in range(5)]
        sent = _stream_headers(socks, 64 * MiB, quick.peer.pid)
        peak = sent.pop("peak_rss")
        close_all(socks)
        _report(record_property, "endless trailers: RSS before (MiB)", before)
        _report(record_property, "endless trailers: peak RSS, 5 x 64 MiB trailer (MiB)", peak)
        assert all(n < 64 * MiB for n in sent.values()), sent
        assert peak - before < 20

    def test_chunked_body_with_a_trailer_still_works(self, quick: GatewayProcess) -> None:
        raw = (
            b"POST /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\n{}\r\n0\r\nX-Trailer: yes\r\n\r\n"
        )
        sock, reply = request(quick.port, raw)
        with sock:
            assert _status(reply) is not None and _status(reply) != 431


class TestHeadsInPieces:
    """Heads held until they end still reach the parser whole, however they were cut."""

    def test_blank_line_split_across_packets(self, quick: GatewayProcess) -> None:
        with open_slow(quick.port, HEALTHZ[:-1]) as sock:
            assert still_open(sock)
            sock.sendall(HEALTHZ[-1:])
            assert _status(sock.recv(65536)) == 200

    def test_byte_by_byte(self, quick: GatewayProcess) -> None:
        with socket.create_connection(("127.0.0.1", quick.port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for byte in HEALTHZ:
                sock.sendall(bytes([byte]))
            assert _status(sock.recv(65536)) == 200

    @pytest.mark.parametrize("split", [0, 1, 2], ids=["whole", "LF|LF", "LF LF|"])
    def test_a_head_ended_by_bare_line_feeds_is_refused_at_once(
        self, quick: GatewayProcess, split: int
    ) -> None:
        """A head whose lines end with a bare LF never ended for the gateway, which looked
        for CRLF CRLF: the client waited for the head timeout (red-team wave 58). It is
        refused at once, however the blank line was cut."""
        head = HEALTHZ.replace(b"\r\n", b"\n")
        cut = len(head) - split if split else len(head)
        with open_slow(quick.port, head[:cut]) as sock:
            if split:
                assert still_open(sock)
                sock.sendall(head[cut:])
            reply = sock.recv(65536)
        assert _status(reply) == 400 and b"CRLF" in reply

    def test_pipelined_requests_the_second_cut_short(self, quick: GatewayProcess) -> None:
        with open_slow(quick.port, HEALTHZ + HEALTHZ[:12]) as sock:
            sock.sendall(HEALTHZ[12:])
            replies = b""
            while replies.count(b"HTTP/1.1 200") < 2:
                chunk = sock.recv(65536)
                assert chunk, replies
                replies += chunk

    def test_a_few_pipelined_requests_are_each_answered_in_order(
        self, quick: GatewayProcess
    ) -> None:
        with open_slow(quick.port, HEALTHZ * MAX_PIPELINED) as sock:
            replies = b""
            while replies.count(b"HTTP/1.1 200") < MAX_PIPELINED:
                chunk = sock.recv(65536)
                assert chunk, replies
                replies += chunk

    def test_pipelined_requests_past_the_bound_close_the_connection(
        self, quick: GatewayProcess
    ) -> None:
        """uvicorn queued every pipelined request and read on after each answer: one
        connection of tiny unauthenticated requests held half a million of them (1.2 GiB)
        and another agent waited 17 s. More than may wait close the connection, unanswered
        past what was answered (an answer now would be read as an earlier request's)."""
        tiny = (
            b"POST /mcp/up HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            b"content-length: 2\r\n\r\n{}"
        )
        for _ in range(5):
            with open_slow(quick.port, tiny * 5000) as sock:
                replies, closed = read_all(sock, time.monotonic() + 10)
            assert closed and replies.count(b"HTTP/1.1 ") <= MAX_PIPELINED + 1
        assert _healthz(quick) == 200


def _stream_headers(socks: list[socket.socket], size: int, pid: int) -> dict[str, float]:
    """Send ``size`` bytes of header value on every socket, in turns, until each is cut off."""
    chunk = b"a" * (64 * 1024)
    sent = {str(i): 0.0 for i in range(len(socks))}
    live = dict(enumerate(socks))
    peak = rss_mib(pid)
    while live:
        for i, sock in list(live.items()):
            sock.settimeout(10)  # the gateway neither reads nor closes: fail, do not hang
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                del live[i]
                continue
            sent[str(i)] += len(chunk)
            if sent[str(i)] >= size:
                del live[i]
        peak = max(peak, rss_mib(pid))
    return {**sent, "peak_rss": peak}


class TestBodyAndKeepAlive:
    def test_slow_body_is_cut_off(self, quick: GatewayProcess) -> None:
        """A body not complete within body_timeout of its head: 408 and close."""
        head = (
            b"POST /mcp/up HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Accept: application/json, text/event-stream\r\nContent-Length: 100\r\n\r\n"
        )
        sock = open_slow(quick.port, head + b'{"jsonrpc"')
        started = time.monotonic()
        with sock:
            reply, closed = read_all(sock, started + BODY_TIMEOUT + 10)
        assert closed and _status(reply) == 408
        assert time.monotonic() - started >= BODY_TIMEOUT * 0.9

    def test_idle_kept_alive_connection_is_closed(self, quick: GatewayProcess) -> None:
        sock, reply = request(quick.port, HEALTHZ)
        started = time.monotonic()
        with sock:
            assert _status(reply) == 200
            rest, closed = read_all(sock, started + KEEPALIVE_TIMEOUT + 10)
        assert closed and rest == b""
        assert time.monotonic() - started >= KEEPALIVE_TIMEOUT * 0.9

    def test_a_connection_answered_before_its_body_came_is_closed_once_idle(
        self, quick: GatewayProcess
    ) -> None:
        """A refusal given before the body is read (415 here; a 401 for a request with no
        key is another), then the body, then nothing: the body's bytes cancelled the
        keep-alive deadline and nothing set it again, so the connection stayed open with no
        deadline at all (red-team wave 32)."""
        body = b'{"jsonrpc": "2.0"}'
        head = (
            b"POST /mcp/up HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        sock, reply = request(quick.port, head)
        with sock:
            assert _status(reply) == 415, reply
            sock.sendall(body)
            started = time.monotonic()
            rest, closed = read_all(sock, started + KEEPALIVE_TIMEOUT + 10)
        assert closed and rest == b"", rest
        assert time.monotonic() - started < KEEPALIVE_TIMEOUT + 10


@pytest.fixture(scope="module")
def patient(
    upstream: PeerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """Deadlines long enough to hold a thousand slow connections while measuring."""
    yield from _gateway(upstream, tmp_path_factory, head_timeout=60, max_connections=1100)


class TestManySlowConnections:
    async def test_a_thousand_slow_connections(
        self, patient: GatewayProcess, record_property: Record
    ) -> None:
        """Memory stays bounded, and the gateway still answers, with 1,000 slow clients."""
        await _echo(patient, "warm up")
        before = rss_mib(patient.peer.pid)
        socks = [open_slow(patient.port, HALF_HEAD) for _ in range(1000)]
        try:
            assert _healthz(patient) == 200
            await _echo(patient, "one of 1001")
            held = rss_mib(patient.peer.pid)
            assert all(still_open(s) for s in socks[::50])
        finally:
            close_all(socks)
        _report(record_property, "1000 slow: RSS before (MiB)", before)
        _report(record_property, "1000 slow: RSS with 1000 held (MiB)", held)
        assert held < RSS_BOUND_MIB
        assert held - before < 50


@pytest.fixture(scope="module")
def capped(
    upstream: PeerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    yield from _gateway(
        upstream, tmp_path_factory, max_connections=20, keepalive_timeout=60, head_timeout=60
    )


@pytest.fixture(scope="module")
def capped_keyed(
    upstream: PeerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """The capped gateway with keys: a request without one is answered 401 at once."""
    grants = {"bot": {"key_sha256": hashlib.sha256(b"cgk_capped-key-0123456789").hexdigest()}}
    security = {"max_connections": 20, "keepalive_timeout": 60, "head_timeout": 60}
    directory = tmp_path_factory.mktemp("gw")
    servers = {"up": {"url": upstream.url}}
    with run_gateway(directory, POLICY, servers, security=security, grants=grants) as gw:
        yield gw


class TestConnectionCap:
    """At max_connections a new connection takes the place of the one that has waited longest
    with no request in progress (a head never finished, or idle between requests); only when
    every connection has a request under way is it answered 503 and closed."""

    def test_heads_never_finished_cannot_keep_anyone_out(self, capped: GatewayProcess) -> None:
        """The red team's lockout: every place taken by a connection sending half a head."""
        kept = [
            _connect(capped.port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            for _ in range(20)
        ]
        try:
            for _ in range(5):
                assert _status(_healthz_once(capped.port)) == 200
            _until(lambda: not still_open(kept[0]), time.monotonic() + 5)  # the oldest went
            assert still_open(kept[-1])
        finally:
            close_all(kept)

    def test_idle_connections_give_way_oldest_first(self, capped: GatewayProcess) -> None:
        kept: list[socket.socket] = []
        try:
            for _ in range(20):
                sock, reply = request(capped.port, HEALTHZ)
                assert _status(reply) == 200
                kept.append(sock)
            sock, reply = request(capped.port, HEALTHZ)
            kept.append(sock)
            assert _status(reply) == 200
            _until(lambda: not still_open(kept[0]), time.monotonic() + 5)
            kept[-2].sendall(HEALTHZ)  # a later one still serves
            assert _status(kept[-2].recv(65536)) == 200
        finally:
            close_all(kept)

    def test_when_every_request_is_under_way_a_new_one_is_503(self, capped: GatewayProcess) -> None:
        busy = (
            b"POST /mcp/up HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        kept = [_connect(capped.port, busy) for _ in range(20)]
        try:
            _until(lambda: _status(_healthz_once(capped.port)) == 503, time.monotonic() + 5)
            assert all(still_open(sock) for sock in kept)  # requests under way are never cut
        finally:
            close_all(kept)
        _until(lambda: _status(_healthz_once(capped.port)) == 200, time.monotonic() + 10)

    def test_bodies_trickling_after_a_refusal_cannot_keep_anyone_out(
        self, capped_keyed: GatewayProcess
    ) -> None:
        """No credentials, a long body sent a byte at a time: answered 401 at once, the
        connection then waits for nothing of its own, and gives way like a half head."""
        slow = (
            b"POST /mcp/up HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\n\r\n{"
        )
        kept = [_connect(capped_keyed.port, slow) for _ in range(20)]
        try:
            for _ in range(5):
                assert _status(_healthz_once(capped_keyed.port)) == 200
        finally:
            close_all(kept)

    async def test_an_open_mcp_session_goes_on_at_the_cap(self, capped: GatewayProcess) -> None:
        kept: list[socket.socket] = []
        try:
            async with client(capped.url("up")) as c:
                assert not (await c.call_tool("echo", {"text": "before"})).is_error
                half = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                kept = [_connect(capped.port, half) for _ in range(30)]
                result = await c.call_tool("echo", {"text": "at the cap"})
                assert not result.is_error and "at the cap" in text_of(result)
        finally:
            close_all(kept)


def _connect(port: int, raw: bytes) -> socket.socket:
    """A new connection that has sent ``raw`` (part of a request) and waits."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(raw)
    return sock


def _healthz_once(port: int) -> bytes:
    sock, reply = request(port, HEALTHZ)
    sock.close()
    return reply


def _until(check: Callable[[], bool], deadline: float) -> None:
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


class TestConfig:
    """Each limit is optional, positive, and reported with file:line when it is not."""

    def test_defaults(self, tmp_path: Path) -> None:
        sec = load_config(_config(tmp_path, "")).security
        limits = (sec.max_head_bytes, sec.max_headers, sec.max_connections)
        assert limits == (32 * 1024, 100, 1000)
        assert (sec.head_timeout, sec.body_timeout, sec.keepalive_timeout) == (10, 30, 5)

    def test_values(self, tmp_path: Path) -> None:
        text = (
            "security:\n  max_head_bytes: 8192\n  max_headers: 50\n  head_timeout: 0.5\n"
            "  body_timeout: 2\n  keepalive_timeout: 1.5\n  max_connections: 10\n"
        )
        sec = load_config(_config(tmp_path, text)).security
        assert (sec.max_head_bytes, sec.max_headers, sec.max_connections) == (8192, 50, 10)
        assert (sec.head_timeout, sec.body_timeout, sec.keepalive_timeout) == (0.5, 2, 1.5)

    def test_errors_with_file_and_line(self, tmp_path: Path) -> None:
        text = (
            "security:\n"
            "  max_head_bytes: 0\n"  # 6
            "  max_headers: 1.5\n"  # 7
            "  head_timeout: -1\n"  # 8
            "  body_timeout: soon\n"  # 9
            "  keepalive_timeout: 0\n"  # 10
            "  max_connections: true\n"  # 11
        )
        with pytest.raises(ConfigError) as caught:
            load_config(_config(tmp_path, text))
        found = [str(p) for p in caught.value.problems]
        names = ["max_head_bytes", "max_headers", "head_timeout", "body_timeout"]
        names += ["keepalive_timeout", "max_connections"]
        for line, name in enumerate(names, start=6):
            assert any(f"celgate.yaml:{line}:" in p and f"security.{name}" in p for p in found), (
                name,
                found,
            )


def _config(tmp_path: Path, extra: str) -> Path:
    (tmp_path / "p.yaml").write_text(POLICY)
    path = tmp_path / "celgate.yaml"
    path.write_text(
        "listen: {host: 127.0.0.1, port: 8787}\npolicy: p.yaml\n"
        "servers: {up: {url: 'http://127.0.0.1:1/mcp'}}\nanonymous: true\n" + extra
    )
    return path
