"""A call held for human approval in ``wait`` mode, answered as an SSE stream.

The stream opens as soon as the call is held; while the approval is pending, progress
notifications (when the client sent a progress token) or SSE comments keep it alive and name
the approval id. Once decided, the stream carries either the denial or the upstream's own
answer. Deciding, limits and the record are ``gateway.pipeline.admission.admit``'s; this is
the wire.
"""

from __future__ import annotations

import json
from collections.abc import Coroutine
from typing import Any

from gateway.edge.forward import (
    UPSTREAM_ERRORS,
    Forward,
    request_headers,
    sse_error,
    watching_disconnect,
)
from gateway.edge.replies import denial
from gateway.pipeline.admission import Admission, Wait, timed_upstream
from gateway.pipeline.gateway import Gateway
from gateway.policy.model import Call, Decision
from gateway.upstream.h1 import H1Response
from gateway.wire.asgi import Incoming, Send
from gateway.wire.jsonrpc import Message
from gateway.wire.sse import DROP, SseRewriter, StreamTooLarge, filtered

KEEPALIVE_SECONDS = 5.0


def accepts_sse(incoming: Incoming) -> bool:
    return "text/event-stream" in (incoming.header("accept") or "")


def event(data: bytes) -> bytes:
    """One SSE ``message`` event carrying a JSON-RPC message."""
    return b"event: message\ndata: " + data + b"\n\n"


class _Keepalive:
    def __init__(self, send: Send, message: Message, approval_hint: str) -> None:
        self.send = send
        meta = message.params.get("_meta")
        self.token = meta.get("progressToken") if isinstance(meta, dict) else None
        self.hint = approval_hint
        self.last = 0.0

    async def __call__(self, elapsed: float) -> None:
        if elapsed - self.last < KEEPALIVE_SECONDS:
            return
        self.last = elapsed
        if self.token is None:
            chunk = f": {self.hint} ({elapsed:.0f} s)\n\n".encode()
        else:
            note: dict[str, Any] = {
                "jsonrpc": "2.0",
                "method": "notifications/progress",
                "params": {
                    "progressToken": self.token,
                    "progress": round(elapsed, 1),
                    "message": f"{self.hint} ({elapsed:.0f} s)",
                },
            }
            chunk = event(json.dumps(note).encode())
        await self.send({"type": "http.response.body", "body": chunk, "more_body": True})


class HeldStream:
    """The relay's ``hold`` for a client that takes SSE (see ``gateway.pipeline.admission.admit``).

    ``hold`` opens the stream and keeps it alive while the approval waits; after ``admit``,
    ``answer`` writes the denial or the upstream's answer into it and closes it. A client
    that goes away ends the wait; the call is then recorded as still held.
    """

    __slots__ = ("gone", "incoming", "message", "opened", "send")

    def __init__(self, incoming: Incoming, send: Send, message: Message) -> None:
        self.incoming = incoming
        self.send = send
        self.message = message
        self.opened = False
        self.gone = False

    async def open(self) -> None:
        """Start the SSE answer (once)."""
        if self.opened:
            return
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await self.send({"type": "http.response.start", "status": 200, "headers": headers})
        self.opened = True

    async def write(self, chunk: bytes) -> None:
        await self.send({"type": "http.response.body", "body": chunk, "more_body": True})

    async def watching(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` unless the client goes away first (then ``gone`` is set)."""
        done = False

        async def run() -> None:
            nonlocal done
            await work
            done = True

        await watching_disconnect(self.incoming.receive, run())
        self.gone = not done

    async def hold(self, decision: Decision, wait: Wait) -> Decision:
        await self.open()
        tick = _Keepalive(self.send, self.message, "waiting for a human to approve this call")
        final: Decision | None = None

        async def work() -> None:
            nonlocal final
            final = await wait(tick)

        await self.watching(work())
        return decision if final is None else final

    async def answer(self, gw: Gateway, call: Call, fwd: Forward, admission: Admission) -> None:
        if not self.gone:
            await watching_disconnect(self.incoming.receive, self._answer(gw, call, fwd, admission))
        await self.send({"type": "http.response.body", "body": b""})

    async def _answer(self, gw: Gateway, call: Call, fwd: Forward, admission: Admission) -> None:
        if not admission.allowed:
            message = self.message
            version = message.protocol_version or self.incoming.header("mcp-protocol-version")
            body = denial(message.msg_id, admission.decision, admission.decision_id, version)
            await self.send({"type": "http.response.body", "body": event(body), "more_body": True})
            return
        async with timed_upstream(gw, call):
            await _forward_into_stream(self.incoming, self.send, fwd)


async def _forward_into_stream(incoming: Incoming, send: Send, fwd: Forward) -> None:
    upstream = fwd.upstream
    try:
        resp = await upstream.pool.request("POST", request_headers(incoming, fwd), fwd.body)
    except UPSTREAM_ERRORS:
        await _send_error(send, fwd)
        return
    try:
        await _pipe(send, resp, fwd)
    finally:
        resp.close()


async def _pipe(send: Send, resp: H1Response, fwd: Forward) -> None:
    """The upstream's answer into the held stream, through the caller's view either way."""
    assert fwd.view is not None
    is_sse = resp.headers.get("content-type", "").startswith("text/event-stream")
    try:
        if is_sse:
            rewriter = SseRewriter(fwd.view)
            async for chunk in resp.iter_chunks():
                data = rewriter.feed(chunk)
                if data:
                    await send({"type": "http.response.body", "body": data, "more_body": True})
            return
        body = await resp.read()
        changed = filtered(body, fwd.view)
        if changed is DROP:
            await _send_error(send, fwd)
        elif body.strip():
            out = event(changed if changed is not None else body)
            await send({"type": "http.response.body", "body": out, "more_body": True})
    except (*UPSTREAM_ERRORS, StreamTooLarge):
        await _send_error(send, fwd)


async def _send_error(send: Send, fwd: Forward) -> None:
    body = sse_error(fwd, "is unavailable")
    await send({"type": "http.response.body", "body": body, "more_body": True})
