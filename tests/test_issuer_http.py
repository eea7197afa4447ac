"""What the gateway reads from the authorization server is bounded: an answer past 1 MiB, a
compressed one (1 MiB of gzip was a key set of 1 GiB, inflated before its size was looked
at), and one not whole within the client's timeout (a key set dripped a byte at a time held
the key set's lock, and every token waiting on it, for good) are refused (red-team wave 35).
A real HTTP server on loopback plays the misbehaving issuer."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator

import anyio
import pytest

from gateway.auth import http as issuer_http
from gateway.auth.http import IssuerHttp

KEYS = json.dumps({"keys": []}).encode()


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    path = head.split(b" ", 2)[1]
    try:
        if path == b"/drip":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
            writer.write(b"content-length: 100000\r\n\r\n")
            while True:  # a byte at a time, each well within a read's own timeout
                writer.write(b" ")
                await writer.drain()
                await asyncio.sleep(0.05)
        if path == b"/gzip":
            body = gzip.compress(b" " * (8 << 20) + KEYS)
            extra = b"content-encoding: gzip\r\n"
        elif path == b"/big":
            body, extra = b" " * (2 << 20) + KEYS, b""
        else:
            body, extra = KEYS, b""
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n" + extra)
        writer.write(b"content-length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@pytest.fixture
async def issuer() -> AsyncIterator[str]:
    server = await asyncio.start_server(_serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()


async def test_a_plain_answer_is_read(issuer: str) -> None:
    client = IssuerHttp()
    try:
        assert await client.get(issuer + "/keys") == (200, KEYS)
    finally:
        await client.close()


@pytest.mark.parametrize("path", ["/big", "/gzip"])
async def test_a_large_or_compressed_answer_is_refused(issuer: str, path: str) -> None:
    client = IssuerHttp()
    try:
        with pytest.raises(issuer_http.AnswerRefused):
            await client.get(issuer + path)
    finally:
        await client.close()


async def test_an_answer_not_whole_in_time_is_refused(issuer: str) -> None:
    client = IssuerHttp(timeout=0.5)
    try:
        with anyio.fail_after(10), pytest.raises(TimeoutError):
            await client.get(issuer + "/drip")
    finally:
        await client.close()
