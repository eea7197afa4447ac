"""What both MCP faces (the relay and ``/mcp``) do first and last, written once: the error
boundary (a refusal answered with its own message; a store's outage answered 503, logged by
the store; anything else logged in full here and answered as an internal error, never
shown), the Host and Origin guard, the caller's credentials, and a JSON body read within its
bound."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.auth.identity import ANONYMOUS_LOCAL, refusal_answer
from gateway.auth.tokens import Refusal
from gateway.edge.replies import error_reply
from gateway.errors import BackendUnavailable
from gateway.pipeline.gateway import Gateway, InProgress
from gateway.policy import Identity
from gateway.telemetry.audit import log
from gateway.wire import jsonrpc as rpc
from gateway.wire.asgi import Incoming, Receive, Scope, Send, is_json_type, reply
from gateway.wire.jsonrpc import BadMessage
from gateway.wire.sse import message_event


class _Answer:
    """What has gone back so far: after an error, the client is still answered. Before the
    head, with the error's status and body; on a stream already open (a held call, say), with
    the error as its last event, so no client is left with a stream that ends in nothing."""

    __slots__ = ("_send", "ended", "started", "streaming")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = self.streaming = self.ended = False

    async def send(self, message: Any) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            headers = message.get("headers") or []
            self.streaming = any(
                k.lower() == b"content-type" and v.startswith(b"text/event-stream")
                for k, v in headers
            )
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.ended = True
        await self._send(message)

    async def fail(self, exc: BaseException, msg_id: Any) -> None:
        if not self.started:
            extra: list[tuple[bytes, bytes]] = []
            if isinstance(exc, BadMessage):
                extra += [_CLOSE] if exc.close else []
                extra += [(b"allow", exc.allow.encode())] if exc.allow else []
            await reply(self._send, *error_reply(exc, msg_id), extra=extra or None)
        elif self.streaming and not self.ended:
            _, body = error_reply(exc, msg_id)
            with contextlib.suppress(OSError):  # the client may be gone: nothing to tell
                await self._send({"type": "http.response.body", "body": message_event(body)})


async def serve(
    handle: Callable[[Incoming, Send], Awaitable[None]],
    scope: Scope,
    receive: Receive,
    send: Send,
    event: str,
) -> None:
    """Run ``handle`` inside the boundary; ``event`` names its internal errors in the log."""
    incoming = Incoming(scope, receive)
    answer = _Answer(send)
    try:
        await handle(incoming, answer.send)
    except BadMessage as exc:
        await answer.fail(exc, None)
    except BackendUnavailable as exc:
        # An outage of a shared store: its store logs it as it starts, lasts and ends (the
        # call's decision record says so too), not a traceback per call.
        await answer.fail(exc, incoming.msg_id)
    except Exception as exc:  # the boundary: logged in full here, never shown to the client
        log.exception(event, path=incoming.path, method=incoming.method)
        await answer.fail(exc, incoming.msg_id)
    finally:
        if incoming.release is not None:  # the caller's place among its grant's requests
            incoming.release()
        if incoming.body_release is not None:  # what its body held
            incoming.body_release()


def check_guard(gw: Gateway, incoming: Incoming) -> None:
    """DNS rebinding and foreign pages are refused before anything else is looked at."""
    if not gw.guard.host_ok(incoming.header("host")):
        raise BadMessage(rpc.INVALID_REQUEST, "Host not allowed", status=421, close=True)
    if not gw.guard.origin_ok(incoming.header("origin")):
        raise BadMessage(rpc.INVALID_REQUEST, "Origin not allowed", status=403, close=True)


#: Headers a proxy adds to say whom it passes a request on for.
_PROXIED = ("x-forwarded-for", "forwarded", "x-real-ip", "x-forwarded-host", "via")
#: On a refusal of who is calling (401, 403): the connection ends with it. A client without
#: a valid credential kept a request queued behind each refusal on a thousand connections,
#: never idle, so none gave way to an honest client (red-team wave 33); one that gets its
#: credential right opens a new connection.
_CLOSE = (b"connection", b"close")
#: The methods an MCP endpoint takes, as a 405 names them.
ALLOWED = "GET, POST, DELETE"


async def caller(gw: Gateway, incoming: Incoming, send: Send, resource: str) -> Identity | None:
    """Who is calling ``resource``; None once refused (401/403 with its challenge, answered)."""
    identity = await gw.auth.resolve(incoming.header("authorization"), resource)
    if identity is ANONYMOUS_LOCAL and any(incoming.header(h) is not None for h in _PROXIED):
        # Keyless access is for processes on this host: a request a proxy passed on came
        # from elsewhere (a proxy on this host would make every caller local).
        msg = "anonymous access is for local callers: this request came through a proxy"
        await reply(send, 401, rpc.error_body(None, rpc.INVALID_REQUEST, msg), extra=[_CLOSE])
        return None
    if isinstance(identity, Refusal):
        status, message, challenge = refusal_answer(identity)
        body = rpc.error_body(None, rpc.INVALID_REQUEST, message)
        await reply(send, status, body, extra=[*challenge, _CLOSE])
        return None
    if incoming.method == "POST":
        # Its place among the requests in progress is taken once its body shows a request
        # (place_for); while the body comes, it holds one among the caller's bodies being
        # read: a body sent a byte at a time held a connection each, past every cap.
        return identity if await _take_place(gw, incoming, send, identity, gw.reading) else None
    # A DELETE ends a session (and what it holds): it passes among the caller's notices, so
    # that a client at its cap can still give its places back (it was 429 too).
    places = gw.notices if incoming.method == "DELETE" else None
    return identity if await _take_place(gw, incoming, send, identity, places) else None


async def place_for(
    gw: Gateway, incoming: Incoming, send: Send, identity: Identity, value: Any
) -> bool:
    """A POST's place among its caller's requests in progress, once its body is read. A
    notification or an answer takes one among its caller's notices instead (under the same
    cap), so a ``notifications/cancelled`` passes when its caller's requests are at the cap
    (refused, the calls it would end kept the places for good); it took none at all, and
    one agent kept a thousand in progress against a slow upstream, each waiting for its
    202 with a connection held, until no one else could connect. False once refused (429,
    answered)."""
    if incoming.release is not None:  # its body is read: that place is given back
        incoming.release()
        incoming.release = None
    if isinstance(value, dict) and ("id" not in value or "method" not in value):
        return await _take_place(gw, incoming, send, identity, gw.notices)
    return await _take_place(gw, incoming, send, identity)


async def _take_place(
    gw: Gateway,
    incoming: Incoming,
    send: Send,
    identity: Identity,
    places: InProgress | None = None,
) -> bool:
    """A place among ``places`` (the requests in progress unless said), given back when the
    request ends; False once refused (429, answered)."""
    places = gw.in_progress if places is None else places
    owner = identity.owner  # one user of a grant cannot take another's places
    if not places.begin(owner):
        cap = gw.config.security.max_requests_per_agent
        message = f"more than {cap} requests of this agent in progress: try again later"
        body = rpc.error_body(None, rpc.INVALID_REQUEST, message)
        await reply(send, 429, body, extra=[(b"retry-after", b"1")])
        return False
    incoming.release = lambda: places.done(owner)  # when the request ends
    return True


async def json_body(
    gw: Gateway, incoming: Incoming, send: Send, identity: Identity
) -> bytes | None:
    """A POST's body: JSON only (415), within ``security.max_body_bytes`` (413), and within
    what bodies in progress may hold (``security.max_bodies_bytes``: 429 past the caller's
    share, 503 past all, each to try again in a second; None once answered so)."""
    if not is_json_type(incoming.header("content-type")):
        msg = "Content-Type must be application/json (UTF-8)"
        raise BadMessage(rpc.INVALID_REQUEST, msg, status=415)
    bodies, owner = gw.bodies, identity.owner
    held = 0  # what this body holds of the budget so far
    over: str | None = None

    def grow(size: int) -> bool:
        # Charged as the body is declared or arrives, not once whole: 200 bodies of 4 MiB,
        # each stopped 10 bytes short, held 800 MiB and the budget never said no.
        nonlocal held, over
        cost = bodies.cost(size)
        if cost <= held:
            return True
        over = bodies.take(owner, cost - held)
        if over is not None:
            return False
        held = cost
        return True

    incoming.body_release = lambda: bodies.give(owner, held)
    body = await incoming.body(gw.config.security.max_body_bytes, grow)
    if over is not None:
        log.warning("request.bodies_full", grant=identity.grant, over=over, size=held)
        whose = "this agent's" if over == "agent" else "all"
        msg = f"{whose} large requests in progress hold what they may: try again later"
        answer = rpc.error_body(None, rpc.INVALID_REQUEST, msg)
        await reply(send, 429 if over == "agent" else 503, answer, extra=[(b"retry-after", b"1")])
        return None
    if body is None:
        raise BadMessage(rpc.INVALID_REQUEST, "request body too large", status=413)
    return body
