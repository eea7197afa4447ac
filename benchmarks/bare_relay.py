"""The floor under celgate's relay: the same server stack relaying bytes and nothing else.

uvicorn (uvloop, httptools, the coalescing protocol celgate serves with) in front of a raw
ASGI app that forwards each request with celgate's own HTTP/1.1 client and streams the answer
back. No authentication, no parsing, no policy, no log record, no metrics. ``bench_e2e.py``
runs it beside celgate so the CPU a relay costs on this machine, before celgate does anything,
is measured in the same run.

Run: ``python benchmarks/bare_relay.py --upstream URL --port N``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import uvicorn

from gateway.upstream.h1 import H1Pool
from gateway.wire.coalesce import CoalescingHttpToolsProtocol

_DROP = {b"host", b"content-length", b"connection", b"transfer-encoding"}


def make_app(upstream: str) -> Any:
    pool: H1Pool | None = None

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal pool
        if scope["type"] != "http":
            return
        if pool is None:
            pool = H1Pool(upstream)
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"] if k not in _DROP}
        resp = await pool.request(scope["method"], headers, b"".join(chunks))
        try:
            out = [(k, v) for k, v in resp.raw_headers if k.lower() not in _DROP]
            await send({"type": "http.response.start", "status": resp.status, "headers": out})
            async for chunk in resp.iter_chunks():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            resp.close()

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port", type=int, required=True)
    ns = parser.parse_args()
    config = uvicorn.Config(
        make_app(ns.upstream),
        host="127.0.0.1",
        port=ns.port,
        loop="uvloop",
        http=CoalescingHttpToolsProtocol,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
