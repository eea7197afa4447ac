"""Forward one request to an upstream and stream its answer back, never buffering a stream.

The body goes on byte for byte. The answer's bytes are relayed as they arrive; only a
``tools/list`` answer is rewritten (JSON parsed whole, SSE event by event). The upstream
response is released in a ``finally`` with no ``await`` in it, so cancellation cannot skip it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway.edge.clientview import ClientView, id_digest
from gateway.edge.tell import tell
from gateway.errors import UpstreamIOError
from gateway.telemetry.audit import log
from gateway.turns import Turns
from gateway.upstream.h1 import H1Response
from gateway.upstream.http import GRANT_HEADER, HttpUpstream
from gateway.wire.asgi import Incoming, Receive, Send, is_json_type, media_type, reply, wants_json
from gateway.wire.jsonrpc import (
    INVALID_REQUEST,
    MODERN_VERSIONS,
    UPSTREAM_UNAVAILABLE,
    BadMessage,
    count_containers,
    error_body,
    json_bytes,
    upstream_failure_status,
)
from gateway.wire.sse import (
    DROP,
    SseRewriter,
    StreamTooLarge,
    View,
    answer_alone,
    asks,
    filtered,
    has_data,
)

# The request headers that travel upstream: what describes the message itself. Everything else
# stays here: hop-by-hop and framing headers (the connection's own; ``expect`` above all: an
# upstream's 100 Continue must never stand for an answer), the caller's credentials, cookies,
# Origin and forwarding headers (checked here, not the upstream's to judge), and any header the
# relay does not know. Mcp-Session-Id and Last-Event-ID are set from the caller's own, checked
# values only; Mcp-Method and Mcp-Name were checked against the body.
_FORWARD_REQUEST = frozenset(
    {
        "accept",
        "content-type",
        "user-agent",
        "mcp-protocol-version",
        "mcp-method",
        "mcp-name",
        "traceparent",
        "tracestate",
    }
)
# The answer headers that reach the caller: those that describe the MCP message, as for a
# request. Every other header an upstream sets would speak for the gateway's own origin: a
# cookie (the console's among them), an auth challenge (the caller's OAuth discovery sent where
# the upstream likes), CORS, HSTS, Alt-Svc, Location; framing, Date and Server are the gateway's
# own. Mcp-Session-Id goes back wrapped (see _response_headers); cache-control is made private.
_PASS_RESPONSE = frozenset(
    {
        "cache-control",
        "content-language",
        "mcp-protocol-version",
        "retry-after",
        "allow",  # a 405's methods: what the relay path takes is what the upstream takes
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
    view: View | None = None  # every message back passes the caller's view
    wrap_session: Callable[[str], str] | None = None
    last_event_id: str | None = None  # the upstream's own event id (already unwrapped)
    # whose call it is (Identity.owner: the grant and agent), for an upstream in this
    # process (a stdio bridge's quotas: one user of an OAuth client cannot end another's)
    grant: str | None = None
    params: dict[str, str] | None = None  # Mcp-Param-* headers, made here from the body
    sent_headers: dict[str, str] | None = None  # as the request went upstream
    # The gateway's own upstream session (``/mcp``'s link): a 404 for it (the upstream
    # restarted, and lost it) opens another, once, and the request goes again on it.
    relink: Callable[[], Awaitable[str | None]] | None = None
    # What the gateway told the client of the upstream's failure, if it failed this request
    # (a call's decision record said only "allow": ``call.upstream_failed`` says the rest).
    failure: str | None = None
    # The answer being relayed: a stream's rewriter (it knows whether the answer came), or
    # True for one read whole (its head came: the answer is in it). See ``left_unanswered``.
    answering: SseRewriter | bool = False


#: Requests that are over without their answer, per caller (owner), by (server, session,
#: digest of the id), with when: ended by the gateway (no answer in time, its client told
#: so), cancelled by their client, or left by it. A resumed stream of theirs brings no
#: answer, and one resumed again after it ended is refused at once (``over``); a new request
#: under the id is refused (``was_over``). Kept per caller, ``MAX_OVER`` each, the callers
#: least recently heard of given up past ``MAX_OVER_OWNERS``: one list for all let one agent
#: push every other's out with made-up cancels (red-team wave 38).
_ENDED: OrderedDict[str | None, OrderedDict[tuple[str, str | None, str], float]] = OrderedDict()
MAX_OVER = 1024
MAX_OVER_OWNERS = 10_000
#: An entry forgotten younger than this (pushed out by newer ones) leaves its session unable
#: to tell its cancelled ids apart: the session is then ``lossy``, and refuses every request.
#: An agent flooded its own list with cancels, and a cancelled tools/list's late answer came
#: back as a new call's result under the forgotten id (red-team wave 68).
OVER_KEEP_SECONDS = 600.0
_LOSSY: OrderedDict[tuple[str | None, str, str | None], None] = OrderedDict()
MAX_LOSSY = 10_000


def request_over(server: str, owner: str | None, session: str | None, msg_id: Any) -> None:
    """The request ``msg_id`` of this caller's session is over without its answer."""
    now = time.monotonic()
    mine = _ENDED.get(owner)
    if mine is None:
        mine = _ENDED[owner] = OrderedDict()
        while len(_ENDED) > MAX_OVER_OWNERS:
            gone, theirs = _ENDED.popitem(last=False)
            for key, at in theirs.items():
                _forgotten(gone, key, at, now)
    _ENDED.move_to_end(owner)
    key = (server, session, id_digest(msg_id))
    mine.pop(key, None)
    mine[key] = now
    while len(mine) > MAX_OVER:
        old, at = mine.popitem(last=False)
        _forgotten(owner, old, at, now)


def _forgotten(owner: str | None, key: tuple[str, str | None, str], at: float, now: float) -> None:
    server, session, _ = key
    if session is not None and now - at < OVER_KEEP_SECONDS:
        _LOSSY[(owner, server, session)] = None
        while len(_LOSSY) > MAX_LOSSY:
            _LOSSY.popitem(last=False)


def over(server: str, owner: str | None, session: str | None, digest: str | None) -> bool:
    """Whether the request of this digest (``ClientView.resumed_request``) is over."""
    mine = _ENDED.get(owner)
    if digest is not None and mine is not None and (server, session, digest) in mine:
        return True
    return bool(_LOSSY) and (owner, server, session) in _LOSSY


def was_over(server: str, owner: str | None, session: str | None, msg_id: Any) -> bool:
    """Whether the request ``msg_id`` of this caller's session is over without its answer
    (its id is then no new request's), or the session cannot tell (``lossy``); no digest is
    made for a caller with none over."""
    if _LOSSY and (owner, server, session) in _LOSSY:
        return True
    mine = _ENDED.get(owner)
    return mine is not None and (server, session, id_digest(msg_id)) in mine


def refuse_reused(server: str, owner: str | None, session: str | None, msg_id: Any) -> None:
    """Refuse a request under an id its client cancelled (or the gateway ended) in this
    session (``was_over``): the server may answer that one yet, and gives its answer to the
    new request (its streams are by id): a late tools/list, whole, as a call's result
    (red-team wave 64). MCP forbids reusing an id in a session."""
    if was_over(server, owner, session, msg_id):
        msg = (
            "this request id was used in this session by a request that was cancelled "
            "(or the session cancelled too many to tell them apart: open a new one)"
        )
        raise BadMessage(INVALID_REQUEST, msg, msg_id=msg_id)


def ended_here(server: str, owner: str | None, session: str | None) -> Callable[[Any], bool]:
    """The answers a resumed stream of this session may carry: any but to a request the
    gateway ended (``end_upstream_call``) or its client cancelled."""
    return lambda msg_id: not over(server, owner, session, id_digest(msg_id))


#: A stream resumed (GET with ``Last-Event-ID``) for a request that is over is answered
#: with this status at once: the TypeScript SDK resumes the stream of every call it gave up
#: on (after cancelling it), and resumes again each time the stream ends (after
#: ``servers.X.timeout`` of silence), for good: each held a place of its agent's, and a few
#: such calls locked the agent out (red-team wave 37). 405 is the protocol's "no stream
#: here", which that client takes without trying again.
OVER_STATUS = 405


def refuse_over(server: str, owner: str | None, session: str | None, view: ClientView) -> None:
    """Refuse (``OVER_STATUS``) resuming the stream of a request that is over."""
    if over(server, owner, session, view.resumed_request()):
        msg = "the request of this stream was cancelled or ended: nothing more will come"
        raise BadMessage(INVALID_REQUEST, msg, status=OVER_STATUS)


def left_unanswered(fwd: Forward) -> None:
    """The client went away from a request of its session that reached the upstream: the
    upstream may answer it yet, and gives that answer to a later request under the same id
    (an SDK server's streams are by id), a late tools/list whole as a call's result. Its id
    is over, as a cancelled one's."""
    if fwd.msg_id is None or fwd.session_id is None or fwd.sent_headers is None:
        return
    answering = fwd.answering
    if answering is True or (isinstance(answering, SseRewriter) and answering.answered):
        return  # its answer came: none is left to come (a client drops a stream once read)
    request_over(fwd.upstream.name, fwd.grant, fwd.session_id, fwd.msg_id)


def end_upstream_call(fwd: Forward, why: str) -> None:
    """The gateway told its client this request ended (no answer in time): its upstream is
    told so too (``notifications/cancelled``, in the background) and an answer it sends
    later on a resumed stream is dropped. The tool went on running upstream, and its late
    answer reached a client that had been told the call was over (one that calls again
    runs the tool twice). A 2026-07-28 upstream is told by its connection closing."""
    if fwd.msg_id is None or fwd.sent_headers is None:
        return
    request_over(fwd.upstream.name, fwd.grant, fwd.session_id, fwd.msg_id)
    if fwd.sent_headers.get("mcp-protocol-version") in MODERN_VERSIONS:
        return
    headers = {
        k: v
        for k, v in fwd.sent_headers.items()
        if k not in ("mcp-method", "mcp-name", "last-event-id") and not k.startswith("mcp-param-")
    }
    params = {"requestId": fwd.msg_id, "reason": f"celgate: {why}"}
    body = json_bytes({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": params})
    tell(fwd.upstream, headers, body)


def request_headers(incoming: Incoming, fwd: Forward) -> dict[str, str]:
    headers = {k: v for k, v in incoming.headers.items() if k in _FORWARD_REQUEST}
    given = headers.get("content-type")
    if given is not None and given != "application/json" and is_json_type(given):
        # The body was read as UTF-8 JSON; it goes as that, spelled as every server reads it
        # (media types are case-insensitive, but an SDK server refused "Application/JSON").
        headers["content-type"] = "application/json"
    headers["accept-encoding"] = "identity"  # a compressed stream cannot be rewritten
    if fwd.session_id is not None:
        headers["mcp-session-id"] = fwd.session_id
    if fwd.last_event_id is not None:
        headers["last-event-id"] = fwd.last_event_id
    headers.update(fwd.upstream.headers)
    if fwd.grant is not None and fwd.upstream.takes_grant:
        headers[GRANT_HEADER] = fwd.grant
    if fwd.params:
        headers.update(fwd.params)
    return headers


Header = tuple[bytes, bytes]


def answer_media(resp: H1Response) -> str | None:
    """The media type of an upstream's answer, as the gateway reads its body: one
    Content-Type, UTF-8 or no charset; None for anything else (two headers a client may join
    into a third type, a charset in any spelling but UTF-8)."""
    values = [value for name, value in resp.raw_headers if name.lower() == b"content-type"]
    if len(values) != 1:
        return None
    return media_type(values[0].decode("latin-1"))


#: The one Content-Type a relayed answer carries: the type the gateway read the body as,
#: with no parameter a client could read otherwise.
_CONTENT_TYPES = {
    "text/event-stream": b"text/event-stream",
    "application/json": b"application/json",
}


def _response_headers(resp: H1Response, fwd: Forward, media: str | None) -> list[Header]:
    out: list[Header] = []
    if media in _CONTENT_TYPES:
        out.append((b"content-type", _CONTENT_TYPES[media]))
    for name, value in resp.raw_headers:
        key = name.decode("latin-1").lower()
        if key not in _PASS_RESPONSE:
            continue
        if key == "cache-control":
            value = _private(value)  # what a caller sees is per caller
        out.append((name, value))
    sid = resp.headers.get("mcp-session-id")
    if sid is not None and fwd.wrap_session is not None:
        out.append((b"mcp-session-id", fwd.wrap_session(sid.strip()).encode()))
    return out


#: Cache-Control directives that let a shared cache keep an answer (read in any case).
_SHARED_CACHE = (b"public", b"s-maxage", b"private")


def _private(value: bytes) -> bytes:
    """An upstream's Cache-Control as a caller gets it: ``private`` first, and nothing that
    lets a shared cache keep it (``public``, ``s-maxage``; directives are read in any case:
    ``PUBLIC`` passed as it came, and a proxy kept one agent's filtered list for everyone)."""
    kept = [
        part.strip()
        for part in value.split(b",")
        if part.strip() and part.split(b"=")[0].strip().lower() not in _SHARED_CACHE
    ]
    return b", ".join([b"private", *kept])


async def _unavailable(send: Send, fwd: Forward) -> None:
    message = f"upstream {fwd.upstream.name!r} is unavailable"
    await _failed(send, fwd, 502, message)


def too_large_words(why: list[str]) -> str:
    """What an upstream did, for an answer ``read_bounded`` would not hold (``why``)."""
    if "large" in why:  # the same call will never fit: not "unavailable", an outage to retry
        cap = MAX_JSON_ANSWER_BYTES
        told = f"{cap // 1048576} MiB" if cap % 1048576 == 0 else f"{cap} bytes"
        return f"answered more than {told}"
    return "answered while the gateway held too many answers: try again"


async def _too_large(send: Send, fwd: Forward, alone: bool) -> None:
    """An answer the gateway would not hold: over its own cap (``alone``), or over what every
    answer being read may hold at once (a moment's load: 503 where no request is answered)."""
    words = too_large_words(["large"] if alone else [])
    await _failed(send, fwd, 502 if alone else 503, f"upstream {fwd.upstream.name!r} {words}")


async def _failed(send: Send, fwd: Forward, status: int, message: str) -> None:
    """The upstream failed this request: a JSON-RPC error every client reads."""
    fwd.failure = message
    status = upstream_failure_status(fwd.msg_id, status)
    await reply(send, status, error_body(fwd.msg_id, UPSTREAM_UNAVAILABLE, message))


def sse_error(fwd: Forward, what: str = "failed while answering") -> bytes:
    """An SSE event carrying the JSON-RPC error for the request the upstream left unanswered."""
    return sse_failure(fwd, f"upstream {fwd.upstream.name!r} {what}")


def sse_failure(fwd: Forward, message: str) -> bytes:
    """An SSE event carrying the JSON-RPC error ``message`` for the request."""
    fwd.failure = message
    data = error_body(fwd.msg_id, UPSTREAM_UNAVAILABLE, message).decode()
    return f"event: message\ndata: {data}\n\n".encode()


async def forward(incoming: Incoming, send: Send, fwd: Forward) -> H1Response | None:
    """Relay one request; returns the upstream response (already released) or None if down."""
    resp, failure = await asked(incoming, fwd)
    if resp is None:
        if failure is not None:
            await _failed(send, fwd, *failure)
        return None
    try:
        await _relay(incoming, send, resp, fwd)
    finally:
        resp.close()
    return resp


async def asked(
    incoming: Incoming, fwd: Forward, watch: bool = True
) -> tuple[H1Response | None, tuple[int, str] | None]:
    """The upstream's answer to the request, its head read and its status one to relay; or
    no answer, and what to tell the caller (a status and a message; None when the caller
    went away). The relay and an approved held call both ask this way: a held call that
    asked otherwise lost its session to a server's restart, and relayed a redirect.
    ``watch``: a client that goes away before the upstream's head ends the request there
    too (and gives back its place among its grant's requests), not after servers.X.timeout
    (a held call's stream watches for itself)."""
    upstream = fwd.upstream
    got: list[H1Response] = []

    async def ask() -> None:
        fwd.sent_headers = request_headers(incoming, fwd)
        got.append(await upstream.pool.request(incoming.method, fwd.sent_headers, fwd.body))

    async def asking() -> H1Response | None:
        got.clear()
        if not watch:
            await ask()
        elif await watching_disconnect(incoming.receive, ask()):
            left_unanswered(fwd)
        return got[0] if got else None

    lost = f"upstream {upstream.name!r} lost its session"
    try:
        resp = await asking()
        if resp is None:
            return None, None
        if resp.status == 404 and fwd.relink is not None and fwd.session_id is not None:
            resp.close()
            relink, fwd.relink = fwd.relink, None
            sid = await relink()
            if sid is None:  # never the upstream's 404: the client's own session lives on
                return None, (502, lost)
            fwd.session_id = sid
            log.info("aggregate.relinked", server=upstream.name)
            resp = await asking()
            if resp is None:
                return None, None
            if resp.status == 404:
                resp.close()
                return None, (502, lost)
    except TimeoutError:  # no head within servers.X.timeout; the connection was dropped
        end_upstream_call(fwd, "no answer in time")
        return None, (504, f"upstream {upstream.name!r} did not answer in time")
    except UPSTREAM_ERRORS:
        return None, (502, f"upstream {upstream.name!r} is unavailable")
    if resp.status in (401, 403):
        # An upstream's 401 or 403 refuses the credentials the gateway sends it (the
        # caller's never travel), which no caller can mend: relayed, it would read as the
        # gateway's own challenge or refusal and send a client to sign in again here (the
        # Inspector does, for a 403), or where the upstream's challenge points. Answered 502,
        # and logged for the operator, whose configuration it is.
        resp.close()
        log.warning("upstream.unauthorized", server=upstream.name, status=resp.status)
        words = f"refused the gateway's credentials (HTTP {resp.status})"
        return None, (502, f"upstream {upstream.name!r} {words}")
    if not (200 <= resp.status < 300 or 400 <= resp.status < 600):
        # A redirect (its Location is never passed on) or a status no client reads: with an
        # answer in its body it went on as a 302 with nowhere to go, which a fetch client
        # (the TypeScript SDK) takes as a failure (red-team wave 58).
        resp.close()
        log.warning("upstream.odd_status", server=upstream.name, status=resp.status)
        return None, (502, f"upstream {upstream.name!r} answered HTTP {resp.status}")
    if fwd.msg_id is not None and resp.status in NO_ANSWER_STATUSES:
        # A request's answer under a status no client reads as one: the Python SDK fails the
        # call on a 202, the TypeScript SDK drops its body and waits out its timeout, though
        # the tool ran (red-team wave 63). Sent as 200, what the caller's view lets through
        # of it (an empty one is refused as before).
        log.warning("upstream.odd_status", server=upstream.name, status=resp.status)
        resp.status = 200
    return resp, None


#: 2xx statuses that say "no answer here" to a client (202 Accepted, 205 Reset Content).
NO_ANSWER_STATUSES = frozenset({202, 205})


#: A JSON answer is read whole to pass the caller's view; past this it is refused.
MAX_JSON_ANSWER_BYTES = 64 * 1024 * 1024


#: The longest upstream session id passed on (wrapped, it grows by a third): the protocol
#: allows any visible ASCII, and a 60 KB one made every later request of its client 431.
MAX_SESSION_ID_CHARS = 1024


def usable_session_id(sid: str) -> bool:
    """Whether an upstream's session id is one the gateway passes on: 1 to
    ``MAX_SESSION_ID_CHARS`` visible ASCII characters (0x21 to 0x7E), as the protocol says."""
    return 0 < len(sid) <= MAX_SESSION_ID_CHARS and all("!" <= c <= "~" for c in sid)


async def _relay(incoming: Incoming, send: Send, resp: H1Response, fwd: Forward) -> None:
    sid = resp.headers.get("mcp-session-id")
    if sid is not None and not usable_session_id(sid.strip()):
        log.warning("upstream.bad_session_id", server=fwd.upstream.name, length=len(sid))
        await _failed(send, fwd, 502, f"upstream {fwd.upstream.name!r} gave an unusable session id")
        return
    if isinstance(fwd.view, ClientView) and fwd.view.session is None:
        sid = resp.headers.get("mcp-session-id")  # an initialize: events belong to the new one
        fwd.view.session = sid.strip() if sid is not None else None
    media = answer_media(resp)
    if media == "text/event-stream":
        start = {"type": "http.response.start", "status": resp.status}
        start["headers"] = _response_headers(resp, fwd, media)
        # An answer that comes alone may go as JSON (the client's choice of the two the
        # protocol allows): a stream costs both ends more, and the SDK's client drops the
        # connection of every stream it stops reading at the answer.
        alone = (
            fwd.msg_id is not None
            and resp.status == 200
            and incoming.method == "POST"
            and wants_json(incoming)
        )
        # A request's stream ends when its upstream sends no message (keep-alives aside) for
        # servers.X.timeout: a stuck tool held its caller (and its place) for good. So does a
        # resumed one (GET with Last-Event-ID): the TypeScript SDK resumes the stream of every
        # call it gave up on, and each held one of its agent's places until none was left.
        # A DELETE answered as a stream, likewise: keep-alives held it (a place among its
        # caller's notices, and a connection) for good (red-team wave 36). Only a GET with
        # nothing to resume (a server's own stream) may be quiet for as long as it likes.
        resumed = incoming.method == "GET" and fwd.last_event_id is not None
        listen = incoming.method == "GET" and not resumed
        silence = None if listen else fwd.upstream.silence
        relay = _relay_sse(send, resp, fwd, start, alone, silence)
        if await watching_disconnect(incoming.receive, relay):
            left_unanswered(fwd)
    else:
        await _relay_whole(send, resp, fwd, media)


def unreadable(body: bytes, media: str | None) -> bool:
    """Whether a whole answer has a body the gateway does not relay: anything but JSON."""
    return bool(body.strip()) and media != "application/json"


async def _relay_whole(send: Send, resp: H1Response, fwd: Forward, media: str | None) -> None:
    """Anything but a stream: read whole (bounded), passed through the view if JSON. A body
    of any other type (or charset) is not relayed: the gateway has not read it as the caller
    would, so its status goes on with an error of the gateway's own."""
    why: list[str] = []
    try:
        body = await read_bounded(resp, fwd.upstream.silence, why)
    except TimeoutError:
        log.warning("upstream.silent", server=fwd.upstream.name, seconds=fwd.upstream.silence)
        end_upstream_call(fwd, "no answer in time")
        await _failed(send, fwd, 504, f"upstream {fwd.upstream.name!r} did not answer in time")
        return
    except UPSTREAM_ERRORS:
        await _unavailable(send, fwd)
        return
    if body is None:
        await _too_large(send, fwd, "large" in why)
        return
    if fwd.msg_id is not None and resp.status < 400 and not body.strip():
        # A request answered with no message (a 202, an empty 200, a redirect): no answer
        # could follow, and the TypeScript SDK took a 202 as "accepted" and waited its whole
        # timeout (red-team wave 47).
        log.warning("upstream.no_answer", server=fwd.upstream.name, status=resp.status)
        message = f"upstream {fwd.upstream.name!r} answered the request with no message"
        await _failed(send, fwd, 502, message)
        return
    if unreadable(body, media):
        log.warning("upstream.unreadable_answer", server=fwd.upstream.name, status=resp.status)
        message = f"upstream {fwd.upstream.name!r} answered with a body that is not UTF-8 JSON"
        await _failed(send, fwd, resp.status if resp.status >= 400 else 502, message)
        return
    # Counted as held until it is sent, with what reading it as objects may take besides: the
    # budget counted only answers still arriving, and 24 answers of 30 MiB being rewritten
    # and sent at once took the gateway to 1 GiB.
    held = 0
    if len(body) > HELD_COUNTED_BYTES:
        reading = fwd.view is not None and fwd.view.wants(body)
        held = len(body) + (parsed_bytes(body) if reading else 0)
        if held > HELD_ALONE_BYTES and _Held.total + held > MAX_HELD_ANSWER_BYTES:
            log.warning("upstream.answer_too_large", size=len(body), held=_Held.total)
            await _too_large(send, fwd, False)
            return
    _Held.total += held
    try:
        if fwd.view is not None and body:
            changed = filtered(body, fwd.view, answer=fwd.msg_id is not None)
            if changed is DROP:
                if fwd.msg_id is not None:
                    log.warning("upstream.not_its_answer", server=fwd.upstream.name)
                await _unavailable(send, fwd)
                return
            if changed is not None:
                body = changed
        headers = _response_headers(resp, fwd, media if body.strip() else None)
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    finally:
        _Held.total -= held


#: What all the answers being read whole may hold at once: each may be large, and a thousand
#: callers at a time could each have one read. Past it an answer is refused, as one past
#: ``MAX_JSON_ANSWER_BYTES`` is, rather than the process growing without bound.
MAX_HELD_ANSWER_BYTES = 256 * 1024 * 1024


#: What a JSON answer read as Python objects takes, as a multiple of its bytes, or per
#: object or list in it when that is more (``{},`` is 3 bytes and some 64 once parsed: 33
#: MiB of them was 0.9 GiB, charged 100 MiB, red-team wave 35); answers past the first size
#: are counted, and those held under the second go through whatever the budget says.
PARSED_FACTOR = 3
CONTAINER_BYTES = 100
HELD_COUNTED_BYTES = 64 * 1024
HELD_ALONE_BYTES = 1024 * 1024


def parsed_bytes(body: bytes) -> int:
    """What reading ``body`` as Python objects may take, at most about."""
    return max(len(body) * PARSED_FACTOR, count_containers(body) * CONTAINER_BYTES)


class _Held:
    """Bytes held right now by answers being read whole (one event loop: no lock)."""

    total = 0


async def read_bounded(
    resp: H1Response, within: float | None = None, why: list[str] | None = None
) -> bytes | None:
    """The whole answer, or None past its own cap or past what all answers may hold (which
    of the two is appended to ``why``, "large" or "busy"); ``TimeoutError`` when it is not
    whole ``within`` seconds of its head (a body that stalled, or dripped a byte a second,
    held its caller and its place under ``max_requests_per_agent`` for good)."""
    chunks: list[bytes] = []
    size = 0

    def over() -> bool:
        if size <= MAX_JSON_ANSWER_BYTES and _Held.total <= MAX_HELD_ANSWER_BYTES:
            return False
        log.warning("upstream.answer_too_large", size=size, held=_Held.total)
        if why is not None:
            why.append("large" if size > MAX_JSON_ANSWER_BYTES else "busy")
        return True

    try:
        if resp.complete:  # most answers came whole with their head: no timer
            async for chunk in resp.iter_chunks():
                chunks.append(chunk)
                size += len(chunk)
                _Held.total += len(chunk)
        else:  # in one buffer: a body sent a byte a chunk held 90 bytes of list and object
            body = bytearray()  # for each (16 MiB of them took the gateway to 1.5 GiB)
            async with asyncio.timeout(within):
                async for chunk in resp.iter_chunks():
                    size += len(chunk)
                    _Held.total += len(chunk)
                    if over():
                        return None
                    body += chunk
            return None if over() else bytes(body)
        return None if over() else b"".join(chunks)
    finally:
        _Held.total -= size


#: How long the head of a streamed answer may wait to become a JSON answer: the stdio
#: bridge's rule too. A call still running after this is answered as a stream, its priming
#: event first, so the client holds an event id to resume from.
HOLD_SECONDS = 1.0


async def _relay_sse(
    send: Send,
    resp: H1Response,
    fwd: Forward,
    start: dict[str, Any],
    alone: bool,
    silence: float | None = None,
) -> None:
    """The stream, event by event through the caller's view.

    With ``alone``, the head waits (``HOLD_SECONDS`` at most) for the first event that carries
    a message, holding one event without one (a priming event) meanwhile: when that message
    is the request's answer and nothing came after it, the answer goes as JSON and the rest of
    the upstream's stream (its end) is not waited for. Anything else (a second event with no
    message, such as a keep-alive, or a message that is not the answer, or the time running
    out) starts the stream, with the event held first.
    """
    assert fwd.view is not None
    rewriter = fwd.answering = SseRewriter(fwd.view, fwd.msg_id)
    pending: dict[str, Any] | None = start
    held: list[bytes] = []
    ended = False
    try:
        if alone:
            ended, quiet = await _hold(resp, rewriter, held)
            data = _alone(held, fwd.msg_id, quiet)
            if data is not None:
                fwd.answering = True  # (the answer came)
                await _answer_json(send, resp, fwd, data, start["headers"])
                return
        first = rewriter.rewrite(held)
        if rewriter.lost_answer:  # the answer was there, and no client could read it
            first, ended = first + unreadable_answer(fwd), True
        await _flush(send, pending, first)
        pending, held = None, []
        if not ended:
            relayed = relayed_events(resp, rewriter, silence, asking=asks(first))
            async with contextlib.aclosing(relayed) as events:
                async for data in events:
                    if rewriter.lost_answer:
                        data += unreadable_answer(fwd)
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                    if rewriter.lost_answer:
                        break
        if ended_unanswered(fwd, rewriter):
            await send({"type": "http.response.body", "body": no_answer(fwd), "more_body": True})
    except TimeoutError:
        log.warning("upstream.silent", server=fwd.upstream.name, seconds=silence)
        what = f"sent nothing for {silence:g} s: the call is ended here"
        end_upstream_call(fwd, f"nothing for {silence:g} s")
        # A resumed stream answers no request of its own: it ends, with no error to misread.
        await _flush(send, pending, sse_error(fwd, what) if fwd.msg_id is not None else b"")
    except (*UPSTREAM_ERRORS, StreamTooLarge):
        # The upstream died mid-stream: tell the waiting request instead of leaving it hanging.
        tail = sse_error(fwd) if fwd.msg_id is not None else b""
        await _flush(send, pending, rewriter.rewrite(held) + tail)
    await send({"type": "http.response.body", "body": rewriter.close()})


def ended_unanswered(fwd: Forward, rewriter: SseRewriter) -> bool:
    """Whether a request's stream ended with no answer and no event id to resume it from
    (no answer could come: the TypeScript SDK waited its whole timeout, 60 s, for one)."""
    return (
        fwd.msg_id is not None
        and not rewriter.answered
        and not rewriter.lost_answer
        and not rewriter.resumable
    )


def no_answer(fwd: Forward) -> bytes:
    log.warning("upstream.stream_unanswered", server=fwd.upstream.name)
    return sse_error(fwd, "ended its stream without answering")


def unreadable_answer(fwd: Forward) -> bytes:
    """The request's error for an answer its view dropped (no client could read it, or it
    was not this caller's to read), logged."""
    log.warning("upstream.unreadable_answer", server=fwd.upstream.name, streamed=True)
    return sse_error(fwd, "answered with a message no client can read")


#: The silence allowed on a request's stream while the client is being asked something (a
#: person answering), when ``servers.X.timeout`` is less.
ASKING_SECONDS = 300.0


async def relayed_events(
    resp: H1Response, rewriter: SseRewriter, silence: float | None, asking: bool = False
) -> AsyncGenerator[bytes, None]:
    """An upstream's stream, as the caller's view rewrites it, chunk by chunk: ``TimeoutError``
    once ``silence`` seconds pass with no message (keep-alives and comments reset nothing:
    a ping every half second held an approved call for good), with the loop's turns
    (:class:`Turns`). While the client is being asked something (the server's last message
    was a request: elicitation, sampling, roots), the silence allowed is ``ASKING_SECONDS``
    if that is more: a person may be answering (the call was ended after servers.X.timeout
    of their thinking, red-team wave 35), but a tool that asked once and then stalled held
    its caller's place for good (red-team wave 36)."""
    loop = asyncio.get_running_loop()
    heard = loop.time()
    turns = Turns()
    while True:
        allowed = max(silence, ASKING_SECONDS) if asking and silence is not None else silence
        deadline = None if allowed is None else heard + allowed
        if deadline is not None and loop.time() >= deadline:
            # A timeout fires only while the read waits: an upstream whose keep-alives are
            # always there already is never waited for (blank lines for good, wave 44).
            raise TimeoutError
        async with asyncio.timeout_at(deadline):  # a chunk is taken only when returned
            chunk = await resp.next_chunk()
        if chunk is None:
            return
        pending = rewriter.pending_bytes
        data = rewriter.feed(chunk)
        if rewriter.pending_bytes > pending:  # a large event still arriving is no silence
            heard = loop.time()
        if data:
            if _carries_message(data):
                heard = loop.time()
                asking = asks(data)
            yield data
        elif rewriter.lost_answer:  # (its events came to nothing: the caller is told so)
            yield data
        await turns.after_chunk()


def _carries_message(events: bytes) -> bool:
    """Whether relayed events hold a message (a ``data`` line), not only keep-alives."""
    return events.startswith(b"data:") or b"\ndata:" in events


def _alone(held: list[bytes], msg_id: Any, quiet: bool = False) -> bytes | None:
    """The answer's data when the held events are the answer, after one event with no
    message at most (``quiet``: the first is already known to have none)."""
    if not held or len(held) > 2:
        return None
    if len(held) == 2 and not quiet and has_data(held[0]):
        return None
    return answer_alone(held[-1], msg_id)


async def _hold(resp: H1Response, rewriter: SseRewriter, held: list[bytes]) -> tuple[bool, bool]:
    """Read events into ``held`` while the head waits: until one carries a message, a second
    without one comes, the stream ends or ``HOLD_SECONDS`` pass. What is held is the
    upstream's first chunks: at most one event without a message, and the chunk that ended
    the wait. Kept in ``held`` as read, so that an upstream dying meanwhile loses nothing.
    Returns (the stream ended, the first event was seen to carry no message)."""
    quiet = False
    try:
        async with asyncio.timeout(HOLD_SECONDS):  # one deadline over every read: each is
            while True:  # safe to cancel (a chunk is taken only when it is returned)
                chunk = await resp.next_chunk()
                if chunk is None:
                    return True, quiet
                held += rewriter.split(chunk)
                if len(held) > 1:
                    return False, quiet
                if held:  # one event: a message ends the wait, a priming event is held
                    if has_data(held[0]):
                        return False, False
                    quiet = True
    except TimeoutError:
        return False, quiet


async def _flush(send: Send, pending: dict[str, Any] | None, data: bytes) -> None:
    """The head if it still waits, then ``data`` if any."""
    if pending is not None:
        await send(pending)
    if data:
        await send({"type": "http.response.body", "body": data, "more_body": True})


async def _answer_json(
    send: Send, resp: H1Response, fwd: Forward, data: bytes, stream_headers: list[Header]
) -> None:
    """A streamed answer that came alone, sent as one JSON body (through the view), with
    the stream's response headers but its content type."""
    assert fwd.view is not None
    resp.release_when_done()
    changed = filtered(data, fwd.view, answer=True)
    if changed is DROP:
        await _unavailable(send, fwd)
        return
    body = data if changed is None else changed
    headers = [(k, v) for k, v in stream_headers if k.lower() != b"content-type"]
    headers.append((b"content-type", b"application/json"))
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# Most answers are over within a few milliseconds; the watcher starts only for those that
# are still streaming after this long, so a quick answer costs a timer, not a task.
WATCH_AFTER_SECONDS = 0.05


async def watching_disconnect(receive: Receive, work: Any) -> bool:
    """Run ``work`` until it ends or the client goes away (then the upstream is dropped);
    whether the client went away.

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
    return gone
