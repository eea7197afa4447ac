"""Forward one request to an upstream and stream its answer back, never buffering a stream.

The body goes on byte for byte. The answer's bytes are relayed as they arrive; only a
``tools/list`` answer is rewritten (JSON parsed whole, SSE event by event). The upstream
response is released in a ``finally`` with no ``await`` in it, so cancellation cannot skip it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.edge.asgi import Incoming, Receive, Send, reply
from gateway.edge.jsonrpc import UPSTREAM_UNAVAILABLE, error_body
from gateway.edge.sse import SseRewriter, Transform
from gateway.upstream.h1 import H1Response, UpstreamIOError
from gateway.upstream.http import HttpUpstream

# Hop-by-hop and framing headers are the connection's own, not the message's.
_DROP_REQUEST = frozenset(
    {
        "host",
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "upgrade",
        "proxy-authorization",
        "authorization",
        "content-length",
        "accept-encoding",
        "mcp-session-id",
        "cookie",
    }
)
# date: the gateway's server adds its own (two Date headers confuse caches); server: the
# upstream's software is nobody else's business.
_DROP_RESPONSE = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-encoding",
        "mcp-session-id",
        "date",
        "server",
    }
)
UPSTREAM_ERRORS = (UpstreamIOError, asyncio.TimeoutError, OSError)


@dataclass(slots=True)
class Forward:
    """What to send upstream and how to treat the answer."""

    upstream: HttpUpstream
    session_id: str | None  # the upstream's own id (already unwrapped)
    body: bytes | None
    msg_id: Any = None
    transform: Transform | None = None
    wrap_session: Callable[[str], str] | None = None


def request_headers(incoming: Incoming, fwd: Forward) -> dict[str, str]:
    headers = {k: v for k, v in incoming.headers.items() if k not in _DROP_REQUEST}
    headers["accept-encoding"] = (
        "identity"  # a compressed stream cannot be rewritten or relayed as is
    )
    if fwd.session_id is not None:
        headers["mcp-session-id"] = fwd.session_id
    headers.update(fwd.upstream.headers)
    return headers


def _response_headers(resp: H1Response, fwd: Forward) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    for name, value in resp.raw_headers:
        key = name.decode("latin-1").lower()
        if key in _DROP_RESPONSE or (fwd.transform is not None and key == "content-length"):
            continue
        if key == "cache-control" and fwd.transform is not None:
            value = value.replace(b"public", b"private")
        out.append((name, value))
    sid = resp.headers.get("mcp-session-id")
    if sid is not None and fwd.wrap_session is not None:
        out.append((b"mcp-session-id", fwd.wrap_session(sid.strip()).encode()))
    return out


async def _unavailable(send: Send, fwd: Forward) -> None:
    message = f"upstream {fwd.upstream.name!r} is unavailable"
    await reply(send, 502, error_body(fwd.msg_id, UPSTREAM_UNAVAILABLE, message))


def sse_error(fwd: Forward, what: str = "failed while answering") -> bytes:
    """An SSE event carrying the JSON-RPC error for the request the upstream left unanswered."""
    message = f"upstream {fwd.upstream.name!r} {what}"
    data = error_body(fwd.msg_id, UPSTREAM_UNAVAILABLE, message).decode()
    return f"event: message\ndata: {data}\n\n".encode()


async def forward(incoming: Incoming, send: Send, fwd: Forward) -> H1Response | None:
    """Relay one request; returns the upstream response (already released) or None if down."""
    upstream = fwd.upstream
    try:
        resp = await upstream.pool.request(
            incoming.method, request_headers(incoming, fwd), fwd.body
        )
    except UPSTREAM_ERRORS:
        await _unavailable(send, fwd)
        return None
    try:
        await _relay(incoming, send, resp, fwd)
    finally:
        resp.close()
    return resp


async def _relay(incoming: Incoming, send: Send, resp: H1Response, fwd: Forward) -> None:
    content_type = resp.headers.get("content-type", "")
    is_sse = content_type.startswith("text/event-stream")
    if fwd.transform is not None and not is_sse and content_type.startswith("application/json"):
        await _relay_json(send, resp, fwd)
        return
    start = {"type": "http.response.start", "status": resp.status}
    start["headers"] = _response_headers(resp, fwd)
    await send(start)
    if is_sse:
        await watching_disconnect(incoming.receive, _relay_sse(send, resp, fwd))
    else:
        await _relay_bytes(send, resp)


async def _relay_json(send: Send, resp: H1Response, fwd: Forward) -> None:
    try:
        raw = await resp.read()
    except UPSTREAM_ERRORS:
        await _unavailable(send, fwd)
        return
    body = raw
    assert fwd.transform is not None
    try:
        message = json.loads(raw)
        if isinstance(message, dict):
            changed = fwd.transform(message)
            if changed is not None:
                body = json.dumps(changed, ensure_ascii=False).encode()
    except ValueError:
        pass
    headers = _response_headers(resp, fwd)
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": resp.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _relay_bytes(send: Send, resp: H1Response) -> None:
    try:
        async for chunk in resp.iter_chunks():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except UPSTREAM_ERRORS:
        pass  # the client sees a truncated body; nothing else can be said mid-message
    await send({"type": "http.response.body", "body": b""})


async def _relay_sse(send: Send, resp: H1Response, fwd: Forward) -> None:
    rewriter = SseRewriter(fwd.transform) if fwd.transform is not None else None
    try:
        async for chunk in resp.iter_chunks():
            data = rewriter.feed(chunk) if rewriter is not None else chunk
            if data:
                await send({"type": "http.response.body", "body": data, "more_body": True})
    except UPSTREAM_ERRORS:
        # The upstream died mid-stream: tell the waiting request instead of leaving it hanging.
        if fwd.msg_id is not None:
            await send({"type": "http.response.body", "body": sse_error(fwd), "more_body": True})
    tail = rewriter.close() if rewriter is not None else b""
    await send({"type": "http.response.body", "body": tail})


# Most answers are over within a few milliseconds; the watcher starts only for those that
# are still streaming after this long, so a quick answer costs a timer, not a task.
WATCH_AFTER_SECONDS = 0.05


async def watching_disconnect(receive: Receive, work: Any) -> None:
    """Run ``work`` until it ends or the client goes away (then the upstream is dropped).

    A plain asyncio watcher task, not a task group, started only once the work has run for
    ``WATCH_AFTER_SECONDS``: this runs on every streamed answer, and a task group (or even a
    task per answer) cost more than the rest of the relaying. When the client disconnects,
    the watcher cancels this task; that cancellation is taken back here and the work ends.
    """
    current = asyncio.current_task()
    assert current is not None
    gone = False
    watcher: asyncio.Future[None] | None = None

    async def watch() -> None:
        nonlocal gone
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                gone = True
                current.cancel("client disconnected")
                return

    def start() -> None:
        nonlocal watcher
        watcher = asyncio.ensure_future(watch())

    timer = asyncio.get_running_loop().call_later(WATCH_AFTER_SECONDS, start)
    try:
        await work
    except asyncio.CancelledError:
        if not gone:
            raise
        current.uncancel()
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()
