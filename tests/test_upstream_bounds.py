"""What one upstream answer may cost the gateway: bounded memory, and time linear in its size.

* ``SseRewriter`` splits a stream into events in time linear in the bytes received, however
  the stream is cut into pieces; every cut gives the caller the same bytes, and the same
  events unless it falls between a CR and its LF (the line then ends at the CR);
* the HTTP/1.1 client bounds an answer's head (and trailers) at ``MAX_HEAD_BYTES`` and
  ``MAX_HEADERS``: past them the call fails as for any malformed answer;
* end to end, a real gateway process relays to hostile upstreams started from this module
  (``python -m tests.test_upstream_bounds --port N --mode M``; modes in ``HOSTILE``) and to a
  well-behaved ``tests.servers.raw_upstream``: the hostile calls fail (-32001), the others
  are served meanwhile, and the gateway's memory stays put.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.auth.identity import hash_key
from gateway.errors import UpstreamIOError
from gateway.upstream.h1 import MAX_HEAD_BYTES, MAX_HEADERS, H1Pool
from gateway.wire import sse
from gateway.wire.sse import SseRewriter, StreamTooLarge
from tests.gateway_proc import GatewayProcess, run_gateway
from tests.peers import PeerProcess, free_port, start_process
from tests.servers.raw_upstream import answer, chunk, read_head, reply_to

# -- SseRewriter --------------------------------------------------------------------------

#: Every way two line ends in a row can be written (CRLF, LF and CR, mixed).
TERMINATORS = [b"\n\n", b"\r\r", b"\r\n\r\n", b"\r\n\n", b"\n\r\n", b"\r\n\r", b"\n\r", b"\r\r\n"]
#: Those with no CR before an LF: no cut can take them for a shorter terminator.
UNSPLITTABLE = [b"\n\n", b"\r\r", b"\n\r"]


class PassView:
    """Changes no message; event ids get a prefix so rewriting is seen to happen."""

    def wants(self, data: bytes) -> bool:
        return False

    def filter(self, message: Any) -> Any | None:
        return None

    def wrap_event_id(self, event_id: bytes) -> bytes:
        return b"v-" + event_id


def split_pieces(pieces: list[bytes]) -> list[bytes]:
    rewriter = SseRewriter(PassView())
    return [event for piece in pieces for event in rewriter.split(piece)]


def cut(stream: bytes, size: int) -> list[bytes]:
    return [stream[at : at + size] for at in range(0, len(stream), size)]


def reference(pieces: list[bytes]) -> list[bytes]:
    """The rule ``split`` keeps, written plainly: as each piece arrives, the first two line
    ends in a row in all the bytes pending end an event, until none is left. A piece ending in
    a CR ends a line there, as a client reading the stream would; an LF opening the next piece
    is then an empty line of the next event. Where an event begins, whole events that
    dispatch nothing (blank lines, comments, unknown fields) are skipped, and stand for one
    first comment if any. Quadratic: for small streams only."""
    pending, out = b"", []
    for piece in pieces:
        fresh = not pending  # an event begins with this piece
        pending += piece
        while True:
            if fresh and (run := sse.QUIET_EVENTS.match(pending)) is not None:
                lines = sse.LINE.split(pending[: run.end()])
                out += [line + b"\n\n" for line in lines if line.startswith(b":")][:1]
                pending = pending[run.end() :]
            if (match := sse.EVENT_END.search(pending)) is None:
                break
            out.append(pending[: match.end()])
            pending = pending[match.end() :]
            fresh = True
    return out


def rewritten(events: list[bytes]) -> bytes:
    return SseRewriter(PassView()).rewrite(events)


def sample_stream(ends: list[bytes]) -> bytes:
    """Events of every size from empty to large, each ended by each of ``ends`` in turn."""
    events = []
    for n, size in enumerate([0, 1, 3, 70, 4095, 4096, 4097, 70_000]):
        for end in ends:
            params = {"n": n, "text": "x" * size}
            body = json.dumps({"jsonrpc": "2.0", "method": "notifications/x", "params": params})
            body = body.encode()
            events.append(b"id: %d\nevent: message\ndata: %s%s" % (n, body, end))
    return b"".join(events) + b"data: an event never ended"


class TestSseSplit:
    @pytest.mark.parametrize("size", [1, 2, 3, 5, 64, 1000, 4096, 16384])
    def test_any_piece_size_gives_the_events_of_the_whole(self, size: int) -> None:
        stream = sample_stream(UNSPLITTABLE)
        expected = split_pieces([stream])
        assert len(expected) == 8 * len(UNSPLITTABLE)
        assert split_pieces(cut(stream, size)) == expected

    @pytest.mark.parametrize("size", [1, 2, 3, 5, 64, 1000, 4096, 16384])
    def test_any_piece_size_gives_the_bytes_of_the_whole(self, size: int) -> None:
        stream = sample_stream(TERMINATORS)
        rewriter = SseRewriter(PassView())
        sent = b"".join(rewriter.feed(piece) for piece in cut(stream, size))
        assert sent == SseRewriter(PassView()).feed(stream)
        assert sent.count(b"data: ") == 8 * len(TERMINATORS)
        assert b"id: v-7\nevent: message\ndata: " in sent

    @pytest.mark.parametrize("end", TERMINATORS)
    def test_a_terminator_straddling_pieces(self, end: bytes) -> None:
        stream = b"data: one" + end + b"id: 2\ndata: two" + end + b"data: three" + end
        expected = [b"data: one" + end, b"id: 2\ndata: two" + end, b"data: three" + end]
        assert split_pieces([stream]) == expected
        for first in range(len(stream) + 1):
            for second in range(first, len(stream) + 1):
                pieces = [stream[:first], stream[first:second], stream[second:]]
                events = split_pieces(pieces)
                assert events == reference(pieces), pieces
                assert rewritten(events) == rewritten(expected), pieces
                # A cut between a CR and its LF ends the line at the CR (see ``reference``).
                if all(stream[at - 1 : at + 1] != b"\r\n" for at in (first, second)):
                    assert events == expected, pieces

    @given(
        st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b"data: x", b":"]), max_size=40),
        st.lists(st.integers(min_value=0, max_value=200), max_size=8),
    )
    @settings(max_examples=500, deadline=None)
    def test_any_stream_cut_anywhere_follows_the_rule(
        self, parts: list[bytes], cuts: list[int]
    ) -> None:
        stream = b"".join(parts)
        marks = sorted({min(c, len(stream)) for c in cuts})
        pieces = [stream[a:b] for a, b in zip([0, *marks], [*marks, len(stream)], strict=True)]
        assert split_pieces(pieces) == reference(pieces)

    def test_a_4_mb_event_in_4_kib_pieces(self) -> None:
        """Searching the whole pending event on every piece took minutes here (1024 pieces of
        an event growing to 4 MB, each piece costing a scan and a copy of all before it)."""
        event = b"event: message\ndata: " + b"x" * (4 * 1024 * 1024) + b"\r\n\r\n"
        assert split_pieces(cut(event, 4096)) == [event]
        assert split_pieces(cut(event + event, 4096)) == [event, event]

    def test_events_past_the_cap_are_refused(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(sse, "MAX_EVENT_BYTES", 1000)
        rewriter = SseRewriter(PassView())
        assert rewriter.split(b"data: " + b"a" * 500) == []
        assert rewriter.split(b"a" * 494) == []  # 1000 bytes pending: still allowed
        assert rewriter.split(b"\n\n" + b"b" * 1000) == [b"data: " + b"a" * 994 + b"\n\n"]
        with pytest.raises(StreamTooLarge):
            rewriter.split(b"b")

    def test_events_not_ended_of_every_stream_share_one_budget(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Each stream under its own cap, together over the process's: the one whose event
        grows past it fails; what a stream held goes back when it ends, ends its event, or
        is let go."""
        monkeypatch.setattr(sse, "MAX_ALL_PENDING_BYTES", 2500)
        before = sse.SseEvents.held_by_all
        streams = [SseRewriter(PassView()) for _ in range(3)]
        streams[0].split(b"data: " + b"a" * 994)
        streams[1].split(b"data: " + b"b" * 994)
        with pytest.raises(StreamTooLarge):
            streams[2].split(b"data: " + b"c" * 994)
        assert streams[0].split(b"\n\n") == [b"data: " + b"a" * 994 + b"\n\n"]
        streams[1].close()
        streams.clear()
        assert sse.SseEvents.held_by_all == before
        fresh = SseRewriter(PassView())
        assert fresh.split(b"data: " + b"d" * 2000) == []  # room again

    def test_over_the_budget_the_stream_holding_most_fails(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """One upstream's unending event held most of the budget, and each other stream that
        grew past it failed: now that one fails (its bytes let go at once), the others go on."""
        monkeypatch.setattr(sse, "MAX_ALL_PENDING_BYTES", 2500)
        hog, other = SseRewriter(PassView()), SseRewriter(PassView())
        hog.split(b"data: " + b"h" * 2000)
        other.split(b"data: " + b"o" * 400)
        assert other.split(b"o" * 400) == []  # over the budget: the hog's event is let go
        assert hog.pending_bytes == 0
        assert other.split(b"\n\n") == [b"data: " + b"o" * 800 + b"\n\n"]
        with pytest.raises(StreamTooLarge):
            hog.split(b"h")

    def test_events_that_dispatch_nothing_are_one_match(self) -> None:
        """256 KiB of blank lines was 131,072 events, each split and rewritten in Python
        (1.7 s of every caller's time, red-team wave 44): none now; a run of comments and
        unknown fields is its first comment; what may dispatch something is as it came."""
        assert split_pieces([b"\n" * 262_144]) == []
        assert split_pieces([b"x\n\n" + b": ping\n\n" * 80_000 + b"event: y\n\n"]) == [
            b": ping\n\n"
        ]
        kept = [b"id: 1\n\n", b"retry: 5\n\n", b":c\ndata: z\n\n", b"data\n\n"]
        assert split_pieces([b"\n\n:p\n\n" + b"".join(kept)]) == [b":p\n\n", *kept]

    def test_close_drops_an_event_never_ended(self) -> None:
        rewriter = SseRewriter(PassView())
        half, note = b'{"jsonrpc":"2.0","method":"a"}', b'{"jsonrpc":"2.0","method":"b"}'
        assert rewriter.feed(b"data: " + half) == b""
        assert rewriter.close() == b""
        assert rewriter.feed(b"\n\ndata: " + note + b"\n\n") == b"data: " + note + b"\n\n"


# -- H1Pool: bounded heads --------------------------------------------------------------


@contextlib.asynccontextmanager
async def scripted(pieces: list[bytes]) -> AsyncIterator[H1Pool]:
    """A pool to a server that answers every request with ``pieces``, each written on its own
    (stopping when the client goes away)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    pool = H1Pool(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/mcp")
    try:
        yield pool
    finally:
        pool.close()
        server.close()


async def exchange(pieces: list[bytes]) -> tuple[dict[str, str], bytes]:
    async with scripted(pieces) as pool, asyncio.timeout(10):
        response = await pool.request("GET", {})
        try:
            return response.headers, await response.read()
        finally:
            response.close()


def head_of(size: int, fields: int = 1) -> bytes:
    """A whole head of exactly ``size`` bytes with ``fields`` headers (content-length one)."""
    head = b"HTTP/1.1 200 OK\r\n" + b"a: b\r\n" * (fields - 2) + b"content-length: 2\r\n"
    pad = size - len(head) - len(b"x: \r\n\r\n")
    assert pad >= 0
    return head + b"x: " + b"p" * pad + b"\r\n\r\n"


class TestHeadBounds:
    async def test_a_head_of_the_largest_size_and_count(self) -> None:
        head = head_of(MAX_HEAD_BYTES, MAX_HEADERS)
        assert len(head) == MAX_HEAD_BYTES and head.count(b"\r\n") == MAX_HEADERS + 2
        headers, body = await exchange([head + b"{}"])
        assert (headers["content-length"], body) == ("2", b"{}")

    async def test_one_byte_more_fails(self) -> None:
        with pytest.raises(UpstreamIOError, match="head over"):
            await exchange([head_of(MAX_HEAD_BYTES + 1) + b"{}"])

    async def test_one_header_more_fails(self) -> None:
        with pytest.raises(UpstreamIOError, match=f"over {MAX_HEADERS} headers"):
            await exchange([head_of(1000, MAX_HEADERS + 1) + b"{}"])

    async def test_a_head_in_small_pieces(self) -> None:
        head = head_of(MAX_HEAD_BYTES, 50)
        pieces = [head[at : at + 999] for at in range(0, len(head), 999)] + [b"{}"]
        _, body = await exchange(pieces)
        assert body == b"{}"
        with pytest.raises(UpstreamIOError, match="head over"):
            await exchange([b"HTTP/1.1 200 OK\r\nx: ", *[b"p" * 999] * 66])

    async def test_a_large_body_in_the_piece_of_a_large_head(self) -> None:
        head = head_of(MAX_HEAD_BYTES - 10).replace(b"content-length: 2", b"content-length: 300000")
        body = bytes(range(256)) * 1171 + b"b" * 224
        assert len(body) == 300000
        _, got = await exchange([head + body])
        assert got == body

    async def test_interim_heads_count_towards_the_bound(self) -> None:
        interim = b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n"
        _, body = await exchange([interim * 10, head_of(200) + b"{}"])
        assert body == b"{}"
        with pytest.raises(UpstreamIOError, match="headers"):
            await exchange([interim * (MAX_HEADERS + 1), head_of(200) + b"{}"])

    async def test_trailers_are_dropped_and_bounded(self) -> None:
        head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-t\r\n\r\n"
        headers, body = await exchange([head, chunk(b"{}"), b"0\r\nx-t: 1\r\n\r\n"])
        assert body == b"{}" and "x-t" not in headers
        endless = [b"a" * 4096] * 200  # past the bound and one piece read before it
        with pytest.raises(UpstreamIOError, match="trailers over"):
            await exchange([head, chunk(b"{}"), b"0\r\nx-t: ", *endless])
        many = b"x-t: 1\r\n" * (MAX_HEADERS + 1)
        with pytest.raises(UpstreamIOError, match="headers"):
            await exchange([head, chunk(b"{}"), b"0\r\n" + many + b"\r\n"])

    async def test_small_chunks_are_not_taken_for_trailers(self) -> None:
        head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        many = b"".join(chunk(b"%d" % (n % 10)) for n in range(60_000))  # 360 KB of framing
        _, body = await exchange([head, many, b"0\r\n\r\n"])
        assert body == b"".join(b"%d" % (n % 10) for n in range(60_000))


# -- End to end: hostile upstreams as processes ------------------------------------------

FIELDS = 10_000
VALUE_BYTES = 1024 * 1024
ENDLESS_BYTES = 512 * 1024 * 1024  # an endless upstream gives up after this much
SSE_TEXT_BYTES = 3 * 1024 * 1024
SSE_PIECE = 4096
RSS_GROWTH_MB = 200

Send = Callable[[asyncio.StreamWriter, dict[str, Any]], Awaitable[None]]


async def put(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()


async def flood(writer: asyncio.StreamWriter, start: bytes, piece: bytes) -> None:
    """``start``, then ``piece`` again and again: a head or trailer that never ends."""
    await put(writer, start)
    for _ in range(ENDLESS_BYTES // len(piece)):
        await put(writer, piece)


def echo_body(message: dict[str, Any], text: str) -> bytes:
    result = {"content": [{"type": "text", "text": text}], "isError": False}
    return json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result}).encode()


async def many_fields(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    ok = answer("200 OK", echo_body(message, "many fields"))
    await put(writer, ok.replace(b"\r\n", b"\r\n" + b"a: b\r\n" * FIELDS, 1))


async def long_value(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    ok = answer("200 OK", echo_body(message, "long value"))
    await put(writer, ok.replace(b"\r\n", b"\r\nx-big: " + b"a" * VALUE_BYTES + b"\r\n", 1))


async def sse_in_pieces(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    """The answer as one large SSE event, written in small chunks as a server serialising
    it would."""
    await put(writer, b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n")
    await put(writer, b"transfer-encoding: chunked\r\n\r\n")
    event = b"event: message\ndata: " + echo_body(message, big_text(message)) + b"\n\n"
    for at in range(0, len(event), SSE_PIECE):
        writer.write(chunk(event[at : at + SSE_PIECE]))
    await put(writer, b"0\r\n\r\n")


def big_text(message: dict[str, Any]) -> str:
    """A text that tells a cut or a reorder from the whole: numbered lines."""
    seed = message["params"]["arguments"]["text"]
    lines = [f"{seed} {n:08d}" for n in range(SSE_TEXT_BYTES // (len(seed) + 10))]
    return "\n".join(lines)


HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
CHUNKED = HEAD + b"transfer-encoding: chunked\r\n\r\n"

HOSTILE: dict[str, Send] = {
    "fields": many_fields,
    "value": long_value,
    "fields-endless": lambda w, m: flood(w, HEAD, b"a: b\r\n" * 4096),
    "value-endless": lambda w, m: flood(w, HEAD + b"x-big: ", b"a" * 65536),
    "trailers-endless": lambda w, m: flood(
        w, CHUNKED + chunk(echo_body(m, "x")) + b"0\r\nx-t: ", b"a" * 65536
    ),
    "sse-pieces": sse_in_pieces,
}


async def serve_one(mode: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Requests on one connection: a tools/call gets the mode's answer (then the connection
    ends); the rest, the well-behaved answers of ``raw_upstream`` (start-up probes work)."""
    try:
        while True:
            method, headers = await read_head(reader)
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            if method != "POST":
                await put(writer, answer("405 Method Not Allowed"))
                continue
            message = json.loads(body)
            if message.get("method") == "tools/call":
                await HOSTILE[mode](writer, message)
                break
            await put(writer, reply_to(message))
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve(port: int, mode: str) -> None:
    server = await asyncio.start_server(
        lambda r, w: serve_one(mode, r, w), "127.0.0.1", port, limit=1 << 20
    )
    async with server:
        await server.serve_forever()


# The gateway and its upstreams, shared by the end-to-end tests.

KEY_A = "cgk_bounds-agent-a-0123456789"
KEY_B = "cgk_bounds-agent-b-0123456789"
POLICY = 'version: "1"\ndefault: deny\ntools:\n  echo: {action: allow}\n'


@contextlib.contextmanager
def hostile_upstream(mode: str, out: Path) -> Iterator[PeerProcess]:
    port = free_port()
    argv = [sys.executable, "-m", "tests.test_upstream_bounds", "--port", str(port)]
    peer = start_process(
        [*argv, "--mode", mode], port=port, url=f"http://127.0.0.1:{port}/mcp", log_path=out
    )
    try:
        yield peer
    finally:
        peer.stop()


@contextlib.contextmanager
def normal_upstream(out: Path) -> Iterator[PeerProcess]:
    port = free_port()
    argv = [sys.executable, "-m", "tests.servers.raw_upstream", "--port", str(port)]
    peer = start_process(argv, port=port, url=f"http://127.0.0.1:{port}/mcp", log_path=out)
    try:
        yield peer
    finally:
        peer.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    directory = tmp_path_factory.mktemp("gw-bounds")
    with contextlib.ExitStack() as stack:
        servers: dict[str, Any] = {
            "normal": {"url": stack.enter_context(normal_upstream(directory / "normal.out")).url}
        }
        for mode in HOSTILE:
            peer = stack.enter_context(hostile_upstream(mode, directory / f"{mode}.out"))
            servers[mode] = {"url": peer.url, "timeout": 20}
        grants = {
            "agent-a": {"key_sha256": hash_key(KEY_A)},
            "agent-b": {"key_sha256": hash_key(KEY_B)},
        }
        yield stack.enter_context(run_gateway(directory, POLICY, servers, grants=grants))


JSON_FIRST = "application/json, text/event-stream"


async def call(
    gw: GatewayProcess, server: str, msg_id: str, key: str, accept: str = JSON_FIRST
) -> tuple[int, Any]:
    """One echo call through the gateway; the status and the JSON answer (the data of the
    answer's event when the gateway streams it)."""
    params = {"name": "echo", "arguments": {"text": msg_id}}
    message = {"jsonrpc": "2.0", "id": msg_id, "method": "tools/call", "params": params}
    headers = {"authorization": f"Bearer {key}", "accept": accept}
    async with httpx.AsyncClient(timeout=60) as client:
        response = await client.post(gw.url(server), json=message, headers=headers)
    if not response.headers["content-type"].startswith("text/event-stream"):
        return response.status_code, response.json()
    answers = [data for data in event_data(response.content) if b'"result"' in data]
    assert len(answers) == 1
    return response.status_code, json.loads(answers[0])


def event_data(stream: bytes) -> list[bytes]:
    """The data of each event of a stream the gateway wrote (it ends lines with LF)."""
    out = []
    for event in stream.split(b"\n\n"):
        lines = [line[6:] for line in event.split(b"\n") if line.startswith(b"data: ")]
        if lines:
            out.append(b"\n".join(lines))
    return out


def rss_mb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no VmRSS")


async def peak_rss(pid: int, until: asyncio.Future[Any]) -> int:
    peak = rss_mb(pid)
    while not until.done():
        peak = max(peak, rss_mb(pid))
        await asyncio.sleep(0.02)
    return max(peak, rss_mb(pid))


async def others_served(gw: GatewayProcess, until: asyncio.Future[Any]) -> int:
    """Calls by another agent to a healthy upstream while ``until`` runs (at least three);
    each must be answered rightly."""
    served = 0
    while served < 3 or not until.done():
        msg_id = f"other-{served}"
        status, reply = await call(gw, "normal", msg_id, KEY_B)
        assert (status, reply["result"]["content"][0]["text"]) == (200, f"{msg_id} {msg_id}")
        served += 1
    return served


class TestHostileHeads:
    """An upstream answer with a head past the bounds: its caller gets an error, others are
    served, and the gateway's memory does not follow the upstream's bytes."""

    @pytest.mark.parametrize(
        "mode", ["fields", "value", "fields-endless", "value-endless", "trailers-endless"]
    )
    async def test_the_call_fails_and_others_are_served(
        self, gateway: GatewayProcess, mode: str
    ) -> None:
        pid = gateway.peer.pid
        base = rss_mb(pid)
        async with asyncio.timeout(60):
            hostile = asyncio.ensure_future(call(gateway, mode, f"{mode}-1", KEY_A))
            peak, served = await asyncio.gather(
                peak_rss(pid, hostile), others_served(gateway, hostile)
            )
            status, reply = await hostile
        assert status == 200  # a JSON-RPC error every client reads
        assert reply["id"] == f"{mode}-1"
        assert reply["error"] == {"code": -32001, "message": f"upstream '{mode}' is unavailable"}
        assert served >= 3
        assert peak - base < RSS_GROWTH_MB, (base, peak)
        assert gateway.peer.alive()


class TestLargeSseAnswer:
    """One event of a few MB, in 4 KiB chunks, to a caller taking JSON (the gateway holds the
    stream and answers with the event's data) and to one taking a stream."""

    @pytest.mark.parametrize("accept", [JSON_FIRST, "text/event-stream, application/json"])
    async def test_a_few_mb_event_in_small_chunks_is_relayed_whole(
        self, gateway: GatewayProcess, accept: str
    ) -> None:
        async with asyncio.timeout(60):
            status, reply = await call(gateway, "sse-pieces", "big-1", KEY_A, accept)
        assert status == 200 and reply["id"] == "big-1"
        text = reply["result"]["content"][0]["text"]
        assert text == big_text({"params": {"arguments": {"text": "big-1"}}})
        assert len(text) > SSE_TEXT_BYTES * 0.9


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="A hostile upstream for these tests.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=sorted(HOSTILE), required=True)
    options = parser.parse_args()
    asyncio.run(serve(options.port, options.mode))
