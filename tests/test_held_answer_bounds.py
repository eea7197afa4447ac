"""An approved held call's answer goes to its client through the held stream, read as the
relay reads one: whole within ``servers.X.timeout`` of its head, and within the answer caps
(a head then half a body held the approved caller past its own timeout; a 200 MiB answer was
buffered whole and relayed). The upstream is a real socket server; the pool is the gateway's."""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import anyio
import pytest

from gateway.edge import forward as forward_module
from gateway.edge.forward import Forward
from gateway.edge.held import _forward_into_stream, _pipe
from gateway.upstream.h1 import H1Pool
from gateway.wire.sse import SseRewriter


class PassAll:
    """A caller's view that reads nothing and changes nothing."""

    def wants(self, data: bytes) -> bool:
        return False

    def wrap_event_id(self, event_id: bytes) -> bytes:
        return event_id

    def filter(self, message: Any) -> Any:
        return None


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[H1Pool, list[bytes]]]:
    bodies: list[bytes] = []  # what each answer's body is; b"STALL": half of one, then nothing

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:  # keep-alive: the next request on the same connection
            try:
                await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            body = bodies.pop(0)
            if body == b"LATE":  # no head at all: the tool still runs
                await reader.read()
                return
            if body == b"ASK":  # a stream: a question to the client, then nothing ever
                asked = {"jsonrpc": "2.0", "id": 9, "method": "elicitation/create"}
                event = b"event: message\ndata: " + json.dumps(asked).encode() + b"\n\n"
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n")
                writer.write(b"content-length: 100000\r\n\r\n" + event)
                await writer.drain()
                await reader.read()  # until the gateway closes
                return
            if body == b"DRIP":  # the head, then a body in chunks of one byte each
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
                writer.write(b"transfer-encoding: chunked\r\n\r\n")
                await writer.drain()
                await asyncio.sleep(0.05)  # (the peer's pace: the head came alone)
                writer.write(DRIP_WIRE)  # made before anything is measured
                await writer.drain()
                continue
            if body == b"GONE":  # a server that restarted: the session is not found
                writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
                continue
            if body == b"NOTICE":  # a stream of a notice and no answer, then its end
                told = {"jsonrpc": "2.0", "method": "notifications/message", "params": {}}
                event = b"event: message\ndata: " + json.dumps(told).encode() + b"\n\n"
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n")
                writer.write(b"content-length: %d\r\n\r\n" % len(event) + event)
                await writer.drain()
                continue
            whole = b'{"jsonrpc":"2.0","id":1,"result":{}}' if body == b"STALL" else body
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
            writer.write(b"content-length: %d\r\n\r\n" % len(whole))
            writer.write(whole[: len(whole) // 2] if body == b"STALL" else whole)
            await writer.drain()
            if body == b"STALL":
                await reader.read()  # until the gateway closes
                return

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield H1Pool(f"http://127.0.0.1:{port}/mcp"), bodies
    server.close()


async def _piped(pool: H1Pool, silence: float) -> str:
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    upstream: Any = SimpleNamespace(name="up", silence=silence)
    fwd = Forward(upstream, None, b"{}", 1, PassAll(), grant="g")
    resp = await pool.request("POST", {}, b"{}")
    try:
        await _pipe(send, resp, fwd)
    finally:
        resp.close()
    return b"".join(m.get("body", b"") for m in sent).decode()


async def test_a_stalled_answer_ends_after_the_servers_timeout(
    upstream: tuple[H1Pool, list[bytes]],
) -> None:
    pool, bodies = upstream
    bodies.append(b"STALL")
    told = await _piped(pool, 0.3)
    assert "did not answer in time" in told and '"id": 1' in told.replace('"id":1', '"id": 1')


async def test_an_approved_call_whose_head_is_late_did_not_answer_in_time(
    upstream: tuple[H1Pool, list[bytes]],
) -> None:
    """A 2026-07-28 upstream sends its JSON answer's head when the tool ends: an approved
    held call past servers.X.timeout was told the upstream "is unavailable" (the call had
    reached it and the tool ran: an agent told so may run it again), and nothing logged."""
    pool, bodies = upstream
    late = H1Pool(f"http://127.0.0.1:{pool.port}/mcp", head_timeout=0.3)
    bodies.append(b"LATE")
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    upstream_stub: Any = SimpleNamespace(
        name="up", silence=0.3, pool=late, headers={}, takes_grant=False
    )
    fwd = Forward(upstream_stub, None, b"{}", 1, PassAll(), grant="g")
    incoming: Any = SimpleNamespace(headers={}, method="POST")
    await _forward_into_stream(incoming, send, fwd)
    told = b"".join(m.get("body", b"") for m in sent).decode()
    assert "did not answer in time" in told and "unavailable" not in told


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"", "answered the request with no message"),
        (b"NOTICE", "ended its stream without answering"),
    ],
)
async def test_an_approved_call_with_no_answer_is_told_so(
    upstream: tuple[H1Pool, list[bytes]], body: bytes, words: str
) -> None:
    """An empty answer or a stream with no answer (or only another id's): the held
    stream ended with no answer for the call, and the TypeScript SDK waited its whole
    timeout for one (red-team wave 66). The relay's errors, on the held stream."""
    pool, bodies = upstream
    bodies.append(body)
    told = await _piped(pool, 5)
    assert words in told and "-32001" in told


async def test_an_approved_call_opens_the_session_a_restart_lost(
    upstream: tuple[H1Pool, list[bytes]],
) -> None:
    """On ``/mcp`` a server that restarted while a call was held answered it 404: the
    approved call failed ("unavailable") where an allowed one opened a new link and ran
    (red-team wave 66). Asked as the relay asks: once relinked, the call runs."""
    pool, bodies = upstream
    bodies.extend([b"GONE", b'{"jsonrpc":"2.0","id":1,"result":{"ran":true}}'])
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    relinked: list[str] = []

    async def relink() -> str:
        relinked.append("sid-2")
        return "sid-2"

    upstream_stub: Any = SimpleNamespace(
        name="up", silence=5, pool=pool, headers={}, takes_grant=False
    )
    fwd = Forward(upstream_stub, "sid-1", b"{}", 1, PassAll(), grant="g")
    fwd.relink = relink
    await _forward_into_stream(SimpleNamespace(headers={}, method="POST"), send, fwd)
    told = b"".join(m.get("body", b"") for m in sent).decode()
    assert relinked == ["sid-2"] and fwd.session_id == "sid-2"
    assert '"ran":true' in told and "error" not in told


async def test_an_answer_past_the_cap_is_an_error_not_relayed(
    upstream: tuple[H1Pool, list[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    pool, bodies = upstream
    monkeypatch.setattr(forward_module, "MAX_JSON_ANSWER_BYTES", 1000)
    result = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"x": "y" * 5000}}).encode()
    bodies.append(result)
    told = await _piped(pool, 5)
    # said as it is: the same call will never fit (not "unavailable", an outage to retry)
    assert "answered more than 1000 bytes" in told and "yyyy" not in told


async def test_a_relayed_answer_past_the_cap_says_so(
    upstream: tuple[H1Pool, list[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 70 MB answer was told as "upstream 'big' is unavailable", the words of an outage:
    agents retried a call that can never fit, operators looked for a dead server."""
    from gateway.edge.forward import _relay_whole

    pool, bodies = upstream
    monkeypatch.setattr(forward_module, "MAX_JSON_ANSWER_BYTES", 1000)
    bodies.append(json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"x": "y" * 5000}}).encode())
    told: list[Any] = []

    async def send(message: Any) -> None:
        told.append(message)

    fwd = Forward(SimpleNamespace(name="big", silence=5), None, b"{}", 1, PassAll(), grant="g")
    resp = await pool.request("POST", {}, b"{}")
    try:
        await _relay_whole(send, resp, fwd, "application/json")
    finally:
        resp.close()
    error = json.loads(told[-1]["body"])["error"]
    assert (told[0]["status"], error["code"]) == (200, -32001)
    assert error["message"] == "upstream 'big' answered more than 1000 bytes"


async def test_answers_being_sent_count_against_what_all_may_hold(
    upstream: tuple[H1Pool, list[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The budget counted answers only while they arrived: 24 answers of 30 MiB being
    rewritten and sent at once took the gateway to 1 GiB. An answer is held until sent."""
    from gateway.edge.forward import _relay_whole

    pool, bodies = upstream
    monkeypatch.setattr(forward_module, "HELD_COUNTED_BYTES", 100)
    monkeypatch.setattr(forward_module, "HELD_ALONE_BYTES", 100)
    monkeypatch.setattr(forward_module, "MAX_HELD_ANSWER_BYTES", 8_000)
    result = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"x": "y" * 5000}}).encode()
    bodies.extend([result, result, result])
    upstream_stub: Any = SimpleNamespace(name="up", silence=5)
    release = asyncio.Event()
    told: list[list[Any]] = [[], [], []]

    def sender(n: int, wait: bool) -> Any:
        async def send(message: Any) -> None:
            told[n].append(message)
            if wait and message["type"] == "http.response.body":
                await release.wait()  # a client slow to take it

        return send

    async def relay(n: int, wait: bool) -> None:
        fwd = Forward(upstream_stub, None, b"{}", 1, PassAll(), grant="g")
        resp = await pool.request("POST", {}, b"{}")
        try:
            await _relay_whole(sender(n, wait), resp, fwd, "application/json")
        finally:
            resp.close()

    first = asyncio.ensure_future(relay(0, True))
    while not told[0] or told[0][-1]["type"] != "http.response.body":
        await asyncio.sleep(0)  # until the first answer is being sent (no time passes)
    await relay(1, False)  # 5 KiB more would pass what all may hold while the first is sent
    assert b"held too many answers: try again" in told[1][-1]["body"]
    release.set()
    await first
    await relay(2, False)
    assert b"yyyy" in told[2][-1]["body"]


class ReadsAll(PassAll):
    """A caller's view that reads every answer (as one with a tools list is)."""

    def wants(self, data: bytes) -> bool:
        return True


async def test_an_answer_of_many_small_objects_is_charged_for_them(
    upstream: tuple[H1Pool, list[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``{},`` is 3 bytes, and some 64 once parsed: an answer was charged three times its
    bytes, and 33 MiB of them parsed to 0.9 GiB (red-team wave 35). Each object or list is
    charged ``CONTAINER_BYTES`` when that is more."""
    from gateway.edge.forward import _relay_whole

    pool, bodies = upstream
    monkeypatch.setattr(forward_module, "HELD_COUNTED_BYTES", 100)
    monkeypatch.setattr(forward_module, "HELD_ALONE_BYTES", 100)
    monkeypatch.setattr(forward_module, "MAX_HELD_ANSWER_BYTES", 100_000)
    many = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"tools": [{}] * 3000}}).encode()
    assert len(many) * (forward_module.PARSED_FACTOR + 1) < 100_000  # by its bytes: it fits
    few = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"tools": [], "x": "y" * 9000}})
    bodies.extend([many, few.encode()])
    told: list[list[Any]] = [[], []]
    for n in range(2):

        async def send(message: Any, n: int = n) -> None:
            told[n].append(message)

        fwd = Forward(SimpleNamespace(name="up", silence=5), None, b"{}", 1, ReadsAll(), grant="g")
        resp = await pool.request("POST", {}, b"{}")
        try:
            await _relay_whole(send, resp, fwd, "application/json")
        finally:
            resp.close()
    assert b"held too many answers: try again" in told[0][-1]["body"]
    assert b"yyyy" in told[1][-1]["body"]


DRIPPED = 100_000
_WHOLE = b'{"jsonrpc":"2.0","id":1,"result":{"x":"' + b"y" * DRIPPED + b'"}}'
DRIP_WIRE = b"".join(b"1\r\n%c\r\n" % byte for byte in _WHOLE) + b"0\r\n\r\n"


async def test_a_body_in_tiny_chunks_is_held_as_its_bytes(
    upstream: tuple[H1Pool, list[bytes]],
) -> None:
    """Each chunk was kept as an object of its own in a list (some 90 bytes for one byte):
    16 MiB sent a byte a chunk took the gateway to 1.5 GiB (red-team wave 35)."""
    pool, bodies = upstream
    bodies.append(b"DRIP")
    resp = await pool.request("POST", {}, b"{}")
    try:
        tracemalloc.start()
        body = await forward_module.read_bounded(resp, 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        resp.close()
    assert body is not None and body.count(b"y") == DRIPPED
    assert peak < 8 * DRIPPED  # a list of 100,000 one-byte objects alone is 4 MB


async def test_a_tool_that_asked_then_stalled_is_ended_in_time(
    upstream: tuple[H1Pool, list[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the client is being asked, the silence allowed is ``ASKING_SECONDS`` (a person
    answering), never more: the clock stopped until the server spoke again, and a tool that
    asked once and stalled held its caller's place for good (red-team wave 36)."""
    monkeypatch.setattr(forward_module, "ASKING_SECONDS", 0.5)
    pool, bodies = upstream
    bodies.append(b"ASK")
    resp = await pool.request("POST", {}, b"{}")
    rewriter = SseRewriter(ReadsAll())
    heard: list[bytes] = []
    try:
        with anyio.fail_after(10), pytest.raises(TimeoutError):
            async for data in forward_module.relayed_events(resp, rewriter, 0.1):
                heard.append(data)
    finally:
        resp.close()
    assert b"elicitation/create" in b"".join(heard)
