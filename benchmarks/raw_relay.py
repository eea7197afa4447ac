"""A relay with no server framework at all: the floor under any relay written in Python here.

An asyncio protocol on uvloop parses each request with httptools and forwards it with
celgate's own HTTP/1.1 client (``H1Pool``); the answer is written back as it arrives. No ASGI,
no uvicorn, no bounds, no authentication, no parsing of the message, no policy, no record:
two sockets' worth of reading and writing and nothing else. ``bench_floor.py`` runs it
beside ``bare_relay.py`` (the same relay under uvicorn, as celgate serves) and celgate, so
what each layer costs is measured in one run. Not a server to deploy: it trusts its client.

Run: ``python benchmarks/raw_relay.py --upstream URL --port N``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httptools
import uvloop

from gateway.upstream.h1 import H1Pool

_DROP = {"host", "content-length", "connection", "transfer-encoding"}


class RawRelay(asyncio.Protocol):
    pool: H1Pool

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        if key not in _DROP:
            self.headers[key] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode()
        headers, body = self.headers, b"".join(self.body)
        self.headers, self.body = {}, []
        asyncio.get_running_loop().create_task(self.relay(method, headers, body))

    async def relay(self, method: str, headers: dict[str, str], body: bytes) -> None:
        resp = await self.pool.request(method, headers, body)
        try:
            chunks = [chunk async for chunk in resp.iter_chunks()]
        finally:
            resp.close()
        payload = b"".join(chunks)
        lines = [f"HTTP/1.1 {resp.status} OK"]
        for name, value in resp.raw_headers:
            if name.decode("latin-1").lower() not in _DROP:
                lines.append(f"{name.decode('latin-1')}: {value.decode('latin-1')}")
        lines.append(f"content-length: {len(payload)}")
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload)


async def serve(upstream: str, port: int) -> None:
    RawRelay.pool = H1Pool(upstream)
    server = await asyncio.get_running_loop().create_server(RawRelay, "127.0.0.1", port)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port", type=int, required=True)
    ns = parser.parse_args()
    uvloop.run(serve(ns.upstream, ns.port))


if __name__ == "__main__":
    main()
