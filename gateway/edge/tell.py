"""Messages the gateway itself posts to an upstream in the background, for no client: a
``notifications/cancelled`` for a request it ended (``forward.end_upstream_call``), and the
error answer to a server's request of a method no client is known to serve (such a request
is dropped, never shown to a client: without an answer the server waited for one until its
own timeout). Each is posted once, its answer read and thrown away within the server's
silence deadline; a failure is nobody's to hear of."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.errors import UpstreamIOError
from gateway.telemetry.audit import log
from gateway.upstream.http import GRANT_HEADER, HttpUpstream
from gateway.wire.jsonrpc import METHOD_NOT_FOUND, json_bytes

_ERRORS = (UpstreamIOError, asyncio.TimeoutError, OSError)
#: What is read of the answer to a message told (an upstream answers it 202, no body).
_MAX_ANSWER = 64 * 1024
#: Posts in flight to one upstream, and to all: past either, a message is not told (each
#: holds a connection of its own until answered: an upstream that asked ten unknown things
#: on every call's stream and never answered the posts held a thousand of the gateway's
#: file descriptors, and other servers' clients failed: red-team wave 47).
MAX_TOLD_PER_UPSTREAM = 16
MAX_TOLD = 128
_TOLD: set[asyncio.Future[None]] = set()
_PER_UPSTREAM: dict[str, int] = {}


def tell(upstream: HttpUpstream, headers: dict[str, str], body: bytes) -> bool:
    """Post ``body`` to ``upstream`` in the background; False when too many posts are in
    flight already (nothing is sent)."""
    name = upstream.name
    if len(_TOLD) >= MAX_TOLD or _PER_UPSTREAM.get(name, 0) >= MAX_TOLD_PER_UPSTREAM:
        log.warning("upstream.tell_skipped", server=name, in_flight=len(_TOLD))
        return False
    _PER_UPSTREAM[name] = _PER_UPSTREAM.get(name, 0) + 1
    task = asyncio.ensure_future(_post(upstream, headers, body))
    _TOLD.add(task)
    task.add_done_callback(lambda done: _told(done, name))
    return True


def _told(task: asyncio.Future[None], name: str) -> None:
    _TOLD.discard(task)
    left = _PER_UPSTREAM.get(name, 1) - 1
    if left > 0:
        _PER_UPSTREAM[name] = left
    else:
        _PER_UPSTREAM.pop(name, None)


def in_flight(name: str | None = None) -> int:
    """Posts in flight (to upstream ``name``, or to all)."""
    return len(_TOLD) if name is None else _PER_UPSTREAM.get(name, 0)


def refuse_server_request(
    upstream: HttpUpstream, session: str | None, grant: str | None, msg_id: Any
) -> bool:
    """Answer the server's request ``msg_id`` (on its session) "method not found" (False:
    not sent, too many posts in flight)."""
    headers = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "accept-encoding": "identity",
        **upstream.headers,
    }
    if session is not None:
        headers["mcp-session-id"] = session
    if grant is not None and upstream.takes_grant:
        headers[GRANT_HEADER] = grant
    error = {"code": METHOD_NOT_FOUND, "message": "Method not found"}
    return tell(upstream, headers, json_bytes({"jsonrpc": "2.0", "id": msg_id, "error": error}))


async def _post(upstream: HttpUpstream, headers: dict[str, str], body: bytes) -> None:
    try:
        resp = await upstream.pool.request("POST", headers, body)
    except (*_ERRORS, TimeoutError):
        return
    try:
        async with asyncio.timeout(upstream.silence):
            read = 0
            async for chunk in resp.iter_chunks():
                read += len(chunk)
                if read > _MAX_ANSWER:
                    break
    except (*_ERRORS, TimeoutError):
        pass
    finally:
        resp.close()
