"""An httpx2 transport over the gateway's in-process ``AsgiPool``: the SDK's own HTTP client
talking to a stdio bridge with no socket, for tests that drive the bridge with a real SDK
client (the gateway reaches the bridge through the pool itself, as the relay does). httpx2's
own ``ASGITransport`` hands back a response only once the app has finished it, which never
happens on an SSE stream."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx2

from gateway.errors import UpstreamIOError, UpstreamTimeout
from gateway.upstream.inproc import AsgiPool, AsgiResponse


class AsgiTransport(httpx2.AsyncBaseTransport):
    """An httpx2 transport over an ``AsgiPool``: the SDK's HTTP client, with no socket.

    Unlike httpx2's ``ASGITransport``, the response comes back at its head and its body
    streams, so SSE works. httpx2's timeouts are not applied (they are the socket's); the
    pool's ``head_timeout`` is.
    """

    def __init__(self, pool: AsgiPool) -> None:
        self.pool = pool

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        body = await request.aread()
        headers = [(k.lower(), v) for k, v in request.headers.raw]
        try:
            answer = await self.pool.send(request.method, headers, body)
        except UpstreamTimeout as exc:
            raise httpx2.ReadTimeout(str(exc), request=request) from exc
        except UpstreamIOError as exc:
            raise httpx2.ReadError(str(exc), request=request) from exc
        return httpx2.Response(
            answer.status, headers=answer.raw_headers, stream=_Body(answer, request)
        )


class _Body(httpx2.AsyncByteStream):
    def __init__(self, answer: AsgiResponse, request: httpx2.Request) -> None:
        self.answer = answer
        self.request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.answer.iter_chunks():
                yield chunk
        except UpstreamIOError as exc:
            raise httpx2.ReadError(str(exc), request=self.request) from exc

    async def aclose(self) -> None:
        self.answer.close()
