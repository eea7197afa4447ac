"""A stream relayed to a caller gives the event loop a turn now and then: an upstream whose
events are all there already (a flood of progress notices to a caller that reads fast) never
made the relay wait, and every other caller's calls stood still for seconds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

from gateway.edge.forward import Forward, _relay_sse
from gateway.edge.held import _pipe
from gateway.turns import FAIR_CHUNKS
from gateway.upstream.h1_response import _PIECE, H1Response
from tests.test_held_answer_bounds import PassAll


class Flood:
    """An answer whose chunks are all there: each is returned without waiting."""

    def __init__(self, chunks: int) -> None:
        self.left = chunks
        self.headers: dict[str, str] = {}

    async def next_chunk(self) -> bytes | None:
        if not self.left:
            return None
        self.left -= 1
        notice = b'{"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1}}'
        return b"data: " + notice + b"\n\n"

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        while (chunk := await self.next_chunk()) is not None:
            yield chunk


async def test_a_flood_lets_other_callers_run_while_it_is_relayed() -> None:
    sent: list[Any] = []

    async def send(message: Any) -> None:  # a caller that reads as fast as it comes
        sent.append(message)

    upstream: Any = SimpleNamespace(name="up", silence=None)
    fwd = Forward(upstream, None, None, None, PassAll(), grant="g")
    start = {"type": "http.response.start", "status": 200, "headers": []}
    turns = 0
    relayed = asyncio.ensure_future(_relay_sse(send, Flood(50 * FAIR_CHUNKS), fwd, start, False))
    while not relayed.done():  # another caller's work: one step each turn it is given
        turns += 1
        await asyncio.sleep(0)
    await relayed
    assert turns >= 50
    assert len(sent) > 50 * FAIR_CHUNKS


class Pings(Flood):
    """A stream of keep-alives only, each after a short wait (a comment resets nothing)."""

    async def next_chunk(self) -> bytes | None:
        await asyncio.sleep(0.02)  # the upstream's pace, not the test's wait
        return b": ping\n\n"


def _held(silence: float | None) -> tuple[Forward, list[Any], Any]:
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    upstream: Any = SimpleNamespace(name="up", silence=silence)
    fwd = Forward(upstream, None, None, 1, PassAll(), grant="g")
    return fwd, sent, send


async def test_an_approved_held_calls_flood_lets_other_callers_run() -> None:
    """The held stream (an approved call's answer) had its own loop, with no turn: four
    such calls held another agent's call for 17 s."""
    fwd, sent, send = _held(None)
    flood: Any = Flood(50 * FAIR_CHUNKS)
    flood.raw_headers = [(b"content-type", b"text/event-stream")]
    piped = asyncio.ensure_future(_pipe(send, flood, fwd))
    turns = 0
    while not piped.done():
        turns += 1
        await asyncio.sleep(0)
    await piped
    assert turns >= 50
    assert len(sent) >= 50 * FAIR_CHUNKS


async def test_an_approved_held_call_of_keep_alives_ends_after_the_servers_timeout() -> None:
    """Its deadline was reset by anything passed on, a comment too: a ping every half
    second kept the approved call (and its caller's place) open for good."""
    fwd, sent, send = _held(0.3)
    pings: Any = Pings(0)
    pings.raw_headers = [(b"content-type", b"text/event-stream")]
    async with asyncio.timeout(10):  # (the old code: never)
        await _pipe(send, pings, fwd)
    told = b"".join(m.get("body", b"") for m in sent).decode()
    assert "sent nothing" in told or "did not answer in time" in told


class Sse(Flood):
    """A flood of notices as an upstream's event stream, then (``last``) one more event."""

    def __init__(self, chunks: int, last: bytes = b"") -> None:
        super().__init__(chunks)
        self.status = 200
        self.raw_headers = [(b"content-type", b"text/event-stream")]
        self.last = last

    async def next_chunk(self) -> bytes | None:
        chunk = await super().next_chunk()
        if chunk is None and self.last:
            chunk, self.last = b"data: " + self.last + b"\n\n", b""
        return chunk

    def close(self) -> None:
        return None


async def _turns_while(work: Any) -> int:
    task = asyncio.ensure_future(work)
    turns = 0
    while not task.done():
        turns += 1
        await asyncio.sleep(0)
    await task
    return turns


async def test_a_flood_before_an_aggregate_upcalls_answer_lets_other_callers_run() -> None:
    """/mcp's own requests (a merged list) read a server's stream to the answer: 200,000
    notices before it, each parsed whole with no turn, held another agent's call 11 s."""
    from gateway.edge.agg.upcall import _answer

    answer = b'{"jsonrpc":"2.0","id":"agg-1","result":{"tools":[]}}'
    resp: Any = Sse(50 * FAIR_CHUNKS, answer)
    upstream: Any = SimpleNamespace(name="up")
    found: list[Any] = []

    async def read() -> None:
        found.append(await _answer(upstream, resp, "tools/list", "agg-1", "2025-11-25", None, "g"))

    assert await _turns_while(read()) >= 50
    assert found == [{"jsonrpc": "2.0", "id": "agg-1", "result": {"tools": []}}]


def _merged(resp: Any) -> tuple[Any, Any]:
    """The aggregate's face and a server's link, as ``_read_stream`` reads them (one GET of
    the server's stream, which ``_pump`` opens again while its session lives), over
    ``resp``."""

    async def request(*_: Any) -> Any:
        return resp

    upstream = SimpleNamespace(headers={}, pool=SimpleNamespace(request=request))
    face = SimpleNamespace(
        gw=SimpleNamespace(upstreams={"up": upstream}), view=lambda *_: PassAll()
    )
    return face, SimpleNamespace(server="up", version="2025-11-25", sid="s")


async def test_a_flood_on_the_aggregates_merged_stream_lets_other_callers_run() -> None:
    """/mcp's merged GET stream rewrote a server's flood with no turn: 6 s for another's
    call."""
    from gateway.edge.agg.streams import _read_stream

    resp: Any = Sse(50 * FAIR_CHUNKS)

    face, link = _merged(resp)
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()
    session: Any = None
    read = _read_stream(face, session, None, link, queue, [None])  # type: ignore[arg-type]
    assert await _turns_while(read) >= 50
    assert queue.qsize() >= 50 * FAIR_CHUNKS


async def test_a_merged_stream_holds_what_its_client_has_not_read_within_its_bytes() -> None:
    """/mcp's merged GET stream queued 64 chunks of up to 32 MiB each for a client that read
    nothing (two such streams took the gateway to 1 GiB, outside every budget): the servers'
    pumps now wait once the queue holds its bytes."""
    from gateway.edge.agg.streams import ChunkQueue, _read_stream

    resp: Any = Sse(50)
    big = b'{"jsonrpc":"2.0","method":"notifications/message","params":{"data":"%s"}}' % (
        b"x" * 1000
    )

    async def next_big() -> bytes | None:
        chunk = await Sse.next_chunk(resp)
        return None if chunk is None else b"data: " + big + b"\n\n"

    resp.next_chunk = next_big

    face, link = _merged(resp)
    queue = ChunkQueue(64, max_bytes=5000)
    read = _read_stream(face, None, None, link, queue, [None])  # type: ignore[arg-type]
    pump = asyncio.ensure_future(read)
    for _ in range(200):  # every turn the pump could want
        await asyncio.sleep(0)
    assert not pump.done() and queue.qsize() <= 6  # 5,000 bytes and one chunk more
    while not pump.done():  # a client reading: the rest comes
        await queue.get()
        await asyncio.sleep(0)


async def test_a_stdio_childs_flood_of_blank_lines_lets_other_callers_run() -> None:
    """A stdio server writing blank lines (64 KiB/s) kept the loop in its reader, every line
    there already: every other caller's calls took 20 s, /healthz 17 s (red-team wave 37)."""
    from gateway.config.sections import ServerConfig
    from gateway.upstream.stdio_child import Child

    heard: list[bytes] = []

    async def on_message(_message: dict[str, Any], raw: bytes) -> None:
        heard.append(raw)

    child = Child(ServerConfig("st", command="true"), "st", on_message)
    reader = asyncio.StreamReader(limit=1 << 20)
    reader.feed_data(b"\n" * 500_000 + b"  \r\n" * 1000 + b'{"jsonrpc":"2.0","method":"x"}\n')
    reader.feed_eof()
    turns = await _turns_while(child._read_lines(child._lines(reader)))
    assert turns >= 500_000 // FAIR_CHUNKS // 2  # a turn every 16 lines at most (or 5 ms)
    assert heard == [b'{"jsonrpc":"2.0","method":"x"}']  # blank lines: nothing to hear


async def test_a_stdio_childs_stderr_flood_lets_other_callers_run() -> None:
    from gateway.telemetry.childlog import StderrLog

    reader = asyncio.StreamReader()
    for _ in range(64):
        reader.feed_data(b"\n" * 65536)
    reader.feed_eof()
    turns = await _turns_while(StderrLog("st", "st[1]").drain(reader))
    assert turns >= 64 // FAIR_CHUNKS


async def test_a_large_chunk_is_handed_out_in_pieces() -> None:
    """Each piece of a stream is split into events between two turns of the loop: a chunk of
    256 KiB held 131,072 events to split at once (red-team wave 44). A reader gets 8 KiB at
    most a read, all of it, in order."""
    conn = SimpleNamespace(pause=lambda: None, resume=lambda: None)
    resp = H1Response(conn, None)  # type: ignore[arg-type]  # no socket: fed by hand
    big = bytes(range(256)) * 1200  # 300 KiB
    resp.push(big)
    resp.push(b"tail")
    resp.push(None)
    pieces = [piece async for piece in resp.iter_chunks()]
    assert max(len(piece) for piece in pieces) == _PIECE
    assert b"".join(pieces) == big + b"tail" and pieces[-1] == b"tail"
