"""A call held for human approval in ``wait`` mode, answered as an SSE stream.

The stream opens at once; while the approval is pending, progress notifications (when the
client sent a progress token) or SSE comments keep it alive and name the approval id. Once
decided, the stream carries either the denial or the upstream's own answer.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.edge.asgi import Incoming, Send
from gateway.edge.forward import (
    UPSTREAM_ERRORS,
    Forward,
    request_headers,
    sse_error,
    watching_disconnect,
)
from gateway.edge.jsonrpc import Message
from gateway.edge.replies import denial
from gateway.edge.sse import DROP, SseRewriter, StreamTooLarge, filtered
from gateway.enforce import apply_limits
from gateway.policy.model import Call, Decision
from gateway.runtime import Gateway
from gateway.upstream.h1 import H1Response

KEEPALIVE_SECONDS = 5.0


def accepts_sse(incoming: Incoming) -> bool:
    return "text/event-stream" in (incoming.header("accept") or "")


def _event(data: bytes) -> bytes:
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
            chunk = _event(json.dumps(note).encode())
        await self.send({"type": "http.response.body", "body": chunk, "more_body": True})


async def held_call(
    gw: Gateway,
    incoming: Incoming,
    send: Send,
    fwd: Forward,
    message: Message,
    call: Call,
    decision: Decision,
    decision_id: str,
) -> Decision:
    """Hold, stream keep-alives, then answer; returns the final decision (for the record)."""
    headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    approvals = gw.approvals
    assert approvals is not None
    tick = _Keepalive(send, message, "waiting for a human to approve this call")
    final = decision

    async def work() -> None:
        nonlocal final
        final = await approvals.resolve(call, decision, decision_id, tick)
        final = await apply_limits(gw, final)
        version = message.protocol_version or incoming.header("mcp-protocol-version")
        if not final.allowed:
            body = denial(message.msg_id, final, decision_id, version)
            await send({"type": "http.response.body", "body": _event(body), "more_body": True})
            return
        await _forward_into_stream(incoming, send, fwd)

    await watching_disconnect(incoming.receive, work())
    await send({"type": "http.response.body", "body": b""})
    return final


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
            out = _event(changed if changed is not None else body)
            await send({"type": "http.response.body", "body": out, "more_body": True})
    except (*UPSTREAM_ERRORS, StreamTooLarge):
        await _send_error(send, fwd)


async def _send_error(send: Send, fwd: Forward) -> None:
    body = sse_error(fwd, "is unavailable")
    await send({"type": "http.response.body", "body": body, "more_body": True})
