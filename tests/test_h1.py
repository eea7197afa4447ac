"""The relay's HTTP/1.1 upstream client against scripted servers on 127.0.0.1: keep-alive,
chunked streams, bodies that end with the connection, cuts mid-answer, stale connections; and
hostile or broken upstreams: interim heads, bytes after the answer, closes after the write,
answers that never come, hop-by-hop headers."""

from __future__ import annotations

import asyncio
import select
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from gateway.errors import UpstreamIOError, UpstreamTimeout
from gateway.upstream.h1 import MAX_IDLE_SECONDS, H1Pool

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + (await reader.readexactly(length) if length else b"")


class Server:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


Serve = Callable[..., Awaitable[tuple[Server, H1Pool]]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler, **pool_options: Any) -> tuple[Server, H1Pool]:
        state = Server(handler)
        server = await asyncio.start_server(state._serve, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}/mcp?x=1"
        return state, H1Pool(url, connect_timeout=2, **pool_options)

    yield start
    for server in servers:
        server.close()


def keep_alive_json(state_requests: list[bytes]) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            state_requests.append(await read_request(reader))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
            writer.write(b"Content-Length: 2\r\n\r\n{}")
            await writer.drain()

    return handler


class TestH1Pool:
    async def test_request_line_headers_and_body(self, serve: Serve) -> None:
        requests: list[bytes] = []
        _, pool = await serve(keep_alive_json(requests))
        resp = await pool.request("POST", {"content-type": "application/json"}, b'{"a":1}')
        assert (resp.status, await resp.read()) == (200, b"{}")
        resp.close()
        sent = requests[0]
        assert sent.startswith(b"POST /mcp?x=1 HTTP/1.1\r\nhost: 127.0.0.1:")
        assert b"content-length: 7\r\n" in sent and sent.endswith(b'{"a":1}')

    async def test_connections_are_kept_alive(self, serve: Serve) -> None:
        requests: list[bytes] = []
        state, pool = await serve(keep_alive_json(requests))
        for _ in range(5):
            resp = await pool.request("POST", {}, b"{}")
            await resp.read()
            resp.close()
        assert len(requests) == 5 and state.connections == 1

    async def test_a_connection_idle_past_the_bound_is_not_used(self, serve: Serve) -> None:
        """An upstream closes a connection idle for its own timeout (uvicorn's: 5 s): a
        request written into that close failed (-32001) though the upstream was up."""
        now = [0.0]
        requests: list[bytes] = []
        state, pool = await serve(keep_alive_json(requests), clock=lambda: now[0])
        for wait in (0.0, MAX_IDLE_SECONDS - 0.5, MAX_IDLE_SECONDS + 0.5):
            now[0] += wait
            resp = await pool.request("POST", {}, b"{}")
            await resp.read()
            resp.close()
        assert len(requests) == 3 and state.connections == 2  # the third on a new connection

    async def test_chunked_stream_arrives_chunk_by_chunk(self, serve: Serve) -> None:
        release = asyncio.Event()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n")
            writer.write(b"Transfer-Encoding: chunked\r\n\r\n")
            writer.write(b"a\r\ndata: one\n\r\n")
            await writer.drain()
            await release.wait()
            writer.write(b"a\r\ndata: two\n\r\n0\r\n\r\n")
            await writer.drain()

        _, pool = await serve(handler)
        resp = await pool.request("GET", {})
        chunks = resp.iter_chunks()
        assert await chunks.__anext__() == b"data: one\n"  # before the server sends more
        release.set()
        assert [c async for c in chunks] == [b"data: two\n"]
        assert resp.complete

    async def test_body_ending_with_the_connection(self, serve: Serve) -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
            await writer.drain()

        _, pool = await serve(handler)
        resp = await pool.request("GET", {})
        assert await resp.read() == b"all of it"

    async def test_cut_mid_answer_is_an_error(self, serve: Serve) -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly a part")
            await writer.drain()

        _, pool = await serve(handler)
        resp = await pool.request("POST", {}, b"{}")
        with pytest.raises(UpstreamIOError, match="closed"):
            await resp.read()
        resp.close()
        assert pool.idle == []  # a broken connection is never reused

    async def test_stale_kept_alive_connection_is_replaced(self, serve: Serve) -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()
            # then the server drops the idle connection without saying Connection: close

        state, pool = await serve(handler)
        first = await pool.request("POST", {}, b"{}")
        await first.read()
        first.close()
        async with asyncio.timeout(5):  # wait for the server's FIN to reach the idle connection
            while not pool.idle[0].closed:
                await asyncio.sleep(0)
        second = await pool.request("POST", {}, b"{}")
        assert await second.read() == b"{}"
        assert state.connections == 2

    async def test_unreachable_upstream(self) -> None:
        pool = H1Pool("http://127.0.0.1:9/mcp", connect_timeout=1)
        with pytest.raises(OSError):
            await pool.request("POST", {}, b"{}")

    async def test_header_injection_is_refused(self, serve: Serve) -> None:
        requests: list[bytes] = []
        _, pool = await serve(keep_alive_json(requests))
        with pytest.raises(UpstreamIOError, match="line break"):
            await pool.request("POST", {"x-evil": "a\r\nx-admin: yes"}, b"{}")
        assert requests == []


ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"


def answer(body: bytes) -> bytes:
    return ANSWER % (len(body), body)


def body_of(request: bytes) -> bytes:
    return request.split(b"\r\n\r\n", 1)[1]


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop run (no time has to pass) until ``condition`` holds; 5 s at most."""
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0)


class TestInterimHeads:
    """1xx heads are skipped; the answer is the final head, and the next caller gets its own."""

    async def test_interim_heads_then_the_answer(self, serve: Serve) -> None:
        requests: list[bytes] = []

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                requests.append(await read_request(reader))
                writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n")
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                writer.write(answer(body_of(requests[-1])))
                await writer.drain()

        state, pool = await serve(handler)
        for n in range(3):
            resp = await pool.request("POST", {}, b'{"n":%d}' % n)
            assert (resp.status, await resp.read()) == (200, b'{"n":%d}' % n)
            assert "link" not in resp.headers  # an interim head's headers are not the answer's
            resp.close()
        assert state.connections == 1

    async def test_continue_arriving_alone_is_not_the_answer(self, serve: Serve) -> None:
        """The cross-talk hole: a 100 taken as the answer left the real one for the next caller."""
        interim_sent = asyncio.Event()
        release = asyncio.Event()
        seen: list[bytes] = []

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                seen.append(await read_request(reader))
                if len(seen) == 1:
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    await writer.drain()
                    interim_sent.set()
                    await release.wait()
                writer.write(answer(body_of(seen[-1])))
                await writer.drain()

        state, pool = await serve(handler)
        first = asyncio.create_task(pool.request("POST", {"expect": "100-continue"}, b"agent-a"))
        await interim_sent.wait()
        for _ in range(50):  # let the client read the interim head
            await asyncio.sleep(0)
        assert not first.done()
        release.set()
        resp_a = await first
        assert (resp_a.status, await resp_a.read()) == (200, b"agent-a")
        resp_a.close()
        resp_b = await pool.request("POST", {}, b"agent-b")
        assert await resp_b.read() == b"agent-b"
        resp_b.close()
        assert b"expect" not in seen[0].lower()  # never forwarded: nobody waits for a 100
        assert state.connections == 1

    async def test_switching_protocols_is_an_error(self, serve: Serve) -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n")
            writer.write(b"Upgrade: websocket\r\n\r\n\x81\x00")
            await writer.drain()
            await reader.read()

        _, pool = await serve(handler)
        with pytest.raises(UpstreamIOError, match="101"):
            await pool.request("GET", {})
        assert pool.idle == []


class TestBytesAfterTheAnswer:
    """A connection goes back to the pool only after a whole answer with nothing after it."""

    @pytest.mark.parametrize(
        "extra",
        [b"garbage\r\n", answer(b"stale answer for whoever asks next")],
        ids=["garbage", "a-second-answer"],
    )
    async def test_extra_bytes_in_the_same_write(self, serve: Serve, extra: bytes) -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                request = await read_request(reader)
                writer.write(answer(body_of(request)) + extra)
                await writer.drain()

        state, pool = await serve(handler)
        first = await pool.request("POST", {}, b"one")
        assert await first.read() == b"one"  # the answer itself is intact
        first.close()
        async with asyncio.timeout(5):
            second = await pool.request("POST", {}, b"two")
            assert await second.read() == b"two"
        second.close()
        assert state.connections == 2

    async def test_bytes_on_an_idle_connection_kill_it(self, serve: Serve) -> None:
        stray = asyncio.Event()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            request = await read_request(reader)
            writer.write(answer(body_of(request)))
            await writer.drain()
            await stray.wait()
            writer.write(answer(b"stale"))
            await writer.drain()
            while True:
                request = await read_request(reader)
                writer.write(answer(body_of(request)))
                await writer.drain()

        state, pool = await serve(handler)
        first = await pool.request("POST", {}, b"one")
        assert await first.read() == b"one"
        first.close()
        idle = pool.idle[0]
        stray.set()
        await until(lambda: idle.closed)
        second = await pool.request("POST", {}, b"two")
        assert await second.read() == b"two"
        assert state.connections == 2


class TestSentOnce:
    """A request is written once: resent only when it certainly never left."""

    async def test_close_after_reading_a_reused_connection(self, serve: Serve) -> None:
        seen: list[bytes] = []

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(await read_request(reader))
            writer.write(answer(b"{}"))
            await writer.drain()
            seen.append(await read_request(reader))  # ran it, then the connection died

        state, pool = await serve(handler)
        first = await pool.request("POST", {}, b"warm-up")
        await first.read()
        first.close()
        with pytest.raises(UpstreamIOError, match="closed"):
            await pool.request("POST", {}, b"single-use")
        assert [body_of(r) for r in seen] == [b"warm-up", b"single-use"]
        assert state.connections == 1  # no second attempt anywhere
        assert pool.idle == []

    async def test_close_after_reading_a_fresh_connection(self, serve: Serve) -> None:
        seen: list[bytes] = []

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(await read_request(reader))

        state, pool = await serve(handler)
        with pytest.raises(UpstreamIOError):
            await pool.request("POST", {}, b"single-use")
        assert len(seen) == 1 and state.connections == 1

    async def test_idle_connection_closed_before_reuse_goes_unused(self, serve: Serve) -> None:
        """The upstream's FIN is in the socket but the loop has not read it: checked before
        the write, so the request goes once, on a new connection."""
        seen: list[bytes] = []
        hang_up = asyncio.Event()
        hung_up = asyncio.Event()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(await read_request(reader))
            writer.write(answer(body_of(seen[-1])))
            await writer.drain()
            if len(seen) == 1:
                await hang_up.wait()
                writer.close()
                await writer.wait_closed()
                hung_up.set()

        state, pool = await serve(handler)
        first = await pool.request("POST", {}, b"one")
        await first.read()
        first.close()
        idle = pool.idle[0]
        assert idle.transport is not None
        idle.transport.pause_reading()  # the loop will not see the FIN on its own
        hang_up.set()
        await hung_up.wait()
        fd = idle.transport.get_extra_info("socket").fileno()
        assert select.select([fd], [], [], 5)[0] == [fd]  # the FIN is in the socket
        assert not idle.closed
        async with asyncio.timeout(5):
            second = await pool.request("POST", {}, b"two")
            assert await second.read() == b"two"
        assert [body_of(r) for r in seen] == [b"one", b"two"]  # "two" exactly once
        assert state.connections == 2


class TestHeadTimeout:
    """``head_timeout`` bounds the wait for the answer's head, not a stream after it."""

    async def test_an_upstream_that_never_answers(self, serve: Serve) -> None:
        gone = asyncio.Event()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            await reader.read()  # never answers; returns when the client drops the connection
            gone.set()

        _, pool = await serve(handler, head_timeout=0.2)
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout, match=r"no answer within 0\.2 s") as caught:
            await pool.request("POST", {}, b"{}")
        assert 0.2 <= time.monotonic() - started < 2
        assert isinstance(caught.value, TimeoutError) and isinstance(caught.value, OSError)
        async with asyncio.timeout(5):
            await gone.wait()  # the connection was dropped, never pooled
        assert pool.idle == []

    async def test_a_stream_may_idle_after_the_head(self, serve: Serve) -> None:
        release = asyncio.Event()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n")
            writer.write(b"Transfer-Encoding: chunked\r\n\r\n")
            await writer.drain()
            await release.wait()
            writer.write(b"a\r\ndata: one\n\r\n0\r\n\r\n")
            await writer.drain()

        _, pool = await serve(handler, head_timeout=0.05)
        resp = await pool.request("GET", {})
        await asyncio.sleep(0.2)  # four times the head timeout: time has to pass here
        release.set()
        assert await resp.read() == b"data: one\n"

    async def test_a_cancelled_request_drops_its_connection(self, serve: Serve) -> None:
        arrived = asyncio.Event()
        gone = asyncio.Event()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            arrived.set()
            await reader.read()
            gone.set()

        _, pool = await serve(handler)
        task = asyncio.create_task(pool.request("POST", {}, b"{}"))
        await arrived.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with asyncio.timeout(5):
            await gone.wait()
        assert pool.idle == []


class TestHopByHop:
    """The connection's own headers are never written, nor handed on from an answer."""

    async def test_request_hop_by_hop_headers_are_not_written(self, serve: Serve) -> None:
        requests: list[bytes] = []
        _, pool = await serve(keep_alive_json(requests))
        hostile = {
            "Expect": "100-continue",
            "Connection": "close",
            "Keep-Alive": "timeout=1",
            "TE": "trailers",
            "Trailer": "x-late",
            "Transfer-Encoding": "chunked",
            "Upgrade": "h2c",
            "Host": "elsewhere.example",
            "Content-Length": "0",
            "x-kept": "yes",
        }
        resp = await pool.request("POST", hostile, b"{}")
        await resp.read()
        head = requests[0].split(b"\r\n\r\n")[0].lower().split(b"\r\n")
        names = [line.split(b":")[0] for line in head[1:]]
        assert names == [b"host", b"x-kept", b"content-length"]
        assert b"host: elsewhere.example" not in head

    async def test_answer_hop_by_hop_headers_are_taken_out(self, serve: Serve) -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Connection: X-Hop, keep-alive\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\n"
                b"Proxy-Authenticate: Basic\r\nTrailer: X-Late\r\nUpgrade: h2c\r\n"
                b"Transfer-Encoding: chunked\r\nX-End: kept\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
            )
            await writer.drain()

        _, pool = await serve(handler)
        resp = await pool.request("GET", {})
        assert await resp.read() == b"{}"
        assert [n.lower() for n, _ in resp.raw_headers] == [b"content-type", b"x-end"]
        assert not resp.close_delimited
