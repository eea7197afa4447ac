"""The relay's HTTP/1.1 upstream client against scripted servers on 127.0.0.1: keep-alive,
chunked streams, bodies that end with the connection, cuts mid-answer, stale connections."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from gateway.upstream.h1 import H1Pool, UpstreamIOError

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


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[tuple[Server, H1Pool]]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> tuple[Server, H1Pool]:
        state = Server(handler)
        server = await asyncio.start_server(state._serve, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return state, H1Pool(f"http://127.0.0.1:{port}/mcp?x=1", connect_timeout=2)

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
    async def test_request_line_headers_and_body(self, serve: Callable[..., object]) -> None:
        requests: list[bytes] = []
        _, pool = await serve(keep_alive_json(requests))  # type: ignore[misc]
        resp = await pool.request("POST", {"content-type": "application/json"}, b'{"a":1}')
        assert (resp.status, await resp.read()) == (200, b"{}")
        resp.close()
        sent = requests[0]
        assert sent.startswith(b"POST /mcp?x=1 HTTP/1.1\r\nhost: 127.0.0.1:")
        assert b"content-length: 7\r\n" in sent and sent.endswith(b'{"a":1}')

    async def test_connections_are_kept_alive(self, serve: Callable[..., object]) -> None:
        requests: list[bytes] = []
        state, pool = await serve(keep_alive_json(requests))  # type: ignore[misc]
        for _ in range(5):
            resp = await pool.request("POST", {}, b"{}")
            await resp.read()
            resp.close()
        assert len(requests) == 5 and state.connections == 1  # type: ignore[attr-defined]

    async def test_chunked_stream_arrives_chunk_by_chunk(
        self, serve: Callable[..., object]
    ) -> None:
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

        _, pool = await serve(handler)  # type: ignore[misc]
        resp = await pool.request("GET", {})
        chunks = resp.iter_chunks()
        assert await chunks.__anext__() == b"data: one\n"  # before the server sends more
        release.set()
        assert [c async for c in chunks] == [b"data: two\n"]
        assert resp.complete

    async def test_body_ending_with_the_connection(self, serve: Callable[..., object]) -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
            await writer.drain()

        _, pool = await serve(handler)  # type: ignore[misc]
        resp = await pool.request("GET", {})
        assert await resp.read() == b"all of it"

    async def test_cut_mid_answer_is_an_error(self, serve: Callable[..., object]) -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly a part")
            await writer.drain()

        _, pool = await serve(handler)  # type: ignore[misc]
        resp = await pool.request("POST", {}, b"{}")
        with pytest.raises(UpstreamIOError, match="closed"):
            await resp.read()
        resp.close()
        assert pool.idle == []  # a broken connection is never reused

    async def test_stale_kept_alive_connection_is_replaced(
        self, serve: Callable[..., object]
    ) -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()
            # then the server drops the idle connection without saying Connection: close

        state, pool = await serve(handler)  # type: ignore[misc]
        first = await pool.request("POST", {}, b"{}")
        await first.read()
        first.close()
        async with asyncio.timeout(5):  # wait for the server's FIN to reach the idle connection
            while not pool.idle[0].closed:
                await asyncio.sleep(0)
        second = await pool.request("POST", {}, b"{}")
        assert await second.read() == b"{}"
        assert state.connections == 2  # type: ignore[attr-defined]

    async def test_unreachable_upstream(self) -> None:
        pool = H1Pool("http://127.0.0.1:9/mcp", connect_timeout=1)
        with pytest.raises(OSError):
            await pool.request("POST", {}, b"{}")

    async def test_header_injection_is_refused(self, serve: Callable[..., object]) -> None:
        requests: list[bytes] = []
        _, pool = await serve(keep_alive_json(requests))  # type: ignore[misc]
        with pytest.raises(UpstreamIOError, match="line break"):
            await pool.request("POST", {"x-evil": "a\r\nx-admin: yes"}, b"{}")
        assert requests == []
