"""Writes joined per event-loop pass: the client transport and the decision-log sink.

The transport under test wraps a real socket transport; what reaches the peer is read from
the peer's socket, and the number of writes is counted on the wrapped transport itself.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
from typing import Any

from gateway.telemetry.audit import LineSink
from gateway.wire.coalesce import CoalescingTransport


class CountingTransport:
    """The real transport, with its write calls counted."""

    def __init__(self, inner: asyncio.Transport) -> None:
        self.inner = inner
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self.inner.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def _pair() -> tuple[CountingTransport, socket.socket]:
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    b.setblocking(False)
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, a)
    return CountingTransport(transport), b  # type: ignore[arg-type]


async def _wrapped() -> tuple[CoalescingTransport, CountingTransport, socket.socket]:
    counting, peer = await _pair()
    wrapped = CoalescingTransport(counting, asyncio.get_running_loop())  # type: ignore[arg-type]
    return wrapped, counting, peer


async def _read_all(peer: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    got = b""
    while len(got) < size:
        got += await loop.sock_recv(peer, 65536)
    return got


async def test_writes_in_one_pass_leave_as_one() -> None:
    wrapped, counting, peer = await _wrapped()
    for part in (b"HTTP/1.1 200 OK\r\n\r\n", b"20\r\nevent\r\n", b"0\r\n\r\n"):
        wrapped.write(part)
    assert counting.writes == []  # nothing yet: the pass is not over
    await asyncio.sleep(0)
    assert counting.writes == [b"HTTP/1.1 200 OK\r\n\r\n20\r\nevent\r\n0\r\n\r\n"]
    assert await _read_all(peer, len(counting.writes[0])) == counting.writes[0]
    counting.close()
    peer.close()


async def test_a_later_chunk_is_not_held_back() -> None:
    wrapped, counting, peer = await _wrapped()
    wrapped.write(b"first")
    await asyncio.sleep(0)
    wrapped.write(b"second")
    await asyncio.sleep(0)
    assert counting.writes == [b"first", b"second"]  # each pass flushes its own
    assert await _read_all(peer, 11) == b"firstsecond"
    counting.close()
    peer.close()


async def test_flush_and_close_send_what_is_pending() -> None:
    wrapped, counting, peer = await _wrapped()
    wrapped.write(b"a")
    wrapped.write(b"b")
    wrapped.flush()  # the response is complete: sent now, not on the next pass
    assert counting.writes == [b"ab"]
    wrapped.write(b"tail")
    wrapped.close()  # before the FIN
    assert counting.writes == [b"ab", b"tail"]
    assert await _read_all(peer, 6) == b"abtail"
    await asyncio.sleep(0)  # the cancelled pass-end flush finds nothing more to send
    assert counting.writes == [b"ab", b"tail"]
    peer.close()


class CountingStream(io.BytesIO):
    def __init__(self) -> None:
        super().__init__()
        self.write_calls = 0

    def write(self, data: Any) -> int:
        self.write_calls += 1
        return super().write(data)


async def test_log_lines_in_a_loop_are_written_at_once_and_in_order() -> None:
    """No turn of the loop is waited for (it cost a call 30 µs served, and saved nothing)."""
    stream = CountingStream()
    sink = LineSink(stream)  # type: ignore[arg-type]
    for n in range(5):
        sink.write(json.dumps({"n": n}).encode() + b"\n")
        assert stream.write_calls == n + 1
    lines = stream.getvalue().decode().splitlines()
    assert [json.loads(line)["n"] for line in lines] == [0, 1, 2, 3, 4]


def test_log_lines_from_threads_stay_whole() -> None:
    stream = CountingStream()
    sink = LineSink(stream)  # type: ignore[arg-type]

    def writer(k: int) -> None:
        for n in range(300):
            sink.write(json.dumps({"k": k, "n": n, "pad": "x" * 200}).encode() + b"\n")

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    records = [json.loads(line) for line in stream.getvalue().decode().splitlines()]
    assert len(records) == 1200
    for k in range(4):
        assert [r["n"] for r in records if r["k"] == k] == list(range(300))


def test_log_lines_outside_a_loop_are_written_at_once() -> None:
    stream = CountingStream()
    sink = LineSink(stream)  # type: ignore[arg-type]
    sink.write(b'{"a":1}\n')
    assert stream.getvalue() == b'{"a":1}\n'
    sink.write(b'{"a":2}\n')
    assert stream.write_calls == 2
