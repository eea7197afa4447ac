"""One request from the aggregate to one upstream, answered whole: what a merged list or a
merged ``server/discover`` is made of. Sent through the upstream's own pool (as the relay's
forwards are), the answer read as JSON or as the SSE event that carries it."""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
from typing import Any

import structlog

from gateway.edge.clientview import MAX_LIST_ANSWER_BYTES, OTHER_LISTS
from gateway.edge.forward import UPSTREAM_ERRORS, answer_media, read_bounded
from gateway.turns import Turns
from gateway.upstream.h1_response import H1Response
from gateway.upstream.http import GRANT_HEADER, HttpUpstream
from gateway.wire import jsonrpc as rpc
from gateway.wire.jsonrpc import loads as json_loads
from gateway.wire.sse import SseEvents, StreamTooLarge, carries_id, event_data, not_utf8

#: The ids the aggregate's own requests carry upstream (never seen by a client): each one
#: new, as two requests in flight on one upstream session must not share an id.
UPCALL_ID = "celgate-agg"
_numbers = itertools.count(1)
#: Each process's own: its requests' ids are no guess (clients may not use the prefix either).
_NONCE = secrets.token_urlsafe(9)
#: The list each list request's answer holds.
_LISTED = {"tools/list": "tools", **OTHER_LISTS}

log = structlog.get_logger("celgate.aggregate")


class UpcallFailed(Exception):
    """The upstream did not answer this request usefully (down, timed out, not JSON-RPC)."""


class UpcallDown(UpcallFailed):
    """The server could not be reached, or gave no whole answer in time: the server's own
    state, whatever the request (one a caller's parameters made it refuse is not)."""


class UpcallGone(UpcallFailed):
    """The upstream answered 404 to a request in its session: it no longer knows the session
    (it restarted), and a new link may be opened in its place (``Links.relink``)."""


class UpcallRefused(UpcallFailed):
    """The upstream answered 429 or 503: full for now (its message says which setting), not
    down. ``/mcp`` passes the status and the message on."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _headers(
    upstream: HttpUpstream,
    method: str | None,
    version: str,
    session: str | None,
    grant: str | None = None,
) -> dict[str, str]:
    headers = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "accept-encoding": "identity",
        "mcp-protocol-version": version,
        **upstream.headers,
    }
    if method:
        headers["mcp-method"] = method
    if session is not None:
        headers["mcp-session-id"] = session
    if grant is not None and upstream.takes_grant:  # an in-process stdio bridge's quotas
        headers[GRANT_HEADER] = grant
    return headers


def body_of(
    method: str, params: dict[str, Any], version: str, meta: Any, msg_id: Any = UPCALL_ID
) -> bytes:
    """The request, carrying the caller's own ``_meta`` (its envelope: client info and
    capabilities, which a 2026-07-28 server requires; a handshake-era one has it from
    ``initialize``). ``msg_id`` None makes it a notification."""
    meta = dict(meta) if isinstance(meta, dict) else {}
    if version not in rpc.HANDSHAKE_VERSIONS:
        meta[rpc.PROTOCOL_VERSION_META_KEY] = version
    request: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if msg_id is not None:
        request["id"] = msg_id
    if meta or params:
        request["params"] = {**params, "_meta": meta} if meta else params
    return json.dumps(request).encode()


async def upcall(
    upstream: HttpUpstream,
    method: str,
    params: dict[str, Any],
    version: str,
    meta: Any = None,
    *,
    session: str | None = None,
) -> dict[str, Any]:
    """The upstream's answer (a JSON-RPC response object, result or error)."""
    message, _ = await exchange(upstream, method, params, version, meta, session=session)
    return message


async def exchange(
    upstream: HttpUpstream,
    method: str,
    params: dict[str, Any],
    version: str,
    meta: Any = None,
    *,
    session: str | None = None,
    grant: str | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """The upstream's answer and the HTTP headers it came with, within the server's
    ``timeout`` (``servers.X.timeout``) for the whole of it (a stdio bridge keeps that
    deadline itself, from its child's first output: a cold start is not silence)."""
    headers = _headers(upstream, method, version, session, grant)
    msg_id = f"{UPCALL_ID}-{_NONCE}-{next(_numbers)}"
    body = body_of(method, params, version, meta, msg_id)
    try:
        resp = await upstream.pool.request("POST", headers, body)
    except (*UPSTREAM_ERRORS, TimeoutError) as exc:
        raise UpcallDown(f"upstream {upstream.name!r} is unavailable") from exc
    try:
        deadline = upstream.timeout if upstream.silence is not None else None
        async with asyncio.timeout(deadline):
            message = await _answer(upstream, resp, method, msg_id, version, session, grant)
    except TimeoutError as exc:
        raise UpcallDown(f"upstream {upstream.name!r} did not answer in time") from exc
    except (*UPSTREAM_ERRORS, StreamTooLarge) as exc:
        raise UpcallDown(f"upstream {upstream.name!r} failed while answering") from exc
    finally:
        resp.close()
    if resp.status == 404 and session is not None:
        raise UpcallGone(f"upstream {upstream.name!r} no longer knows its session")
    if message is None:
        raise UpcallFailed(f"upstream {upstream.name!r} gave no answer (HTTP {resp.status})")
    if resp.status in (429, 503):
        raise UpcallRefused(resp.status, _error_text(message, upstream.name))
    error = message.get("error")
    if isinstance(error, dict) and error.get("code") == rpc.UPSTREAM_UNAVAILABLE:
        # what a stdio server's bridge answers for a child that is down or did not answer
        # in time: the server's state, not this request's (a link opened to a mute stdio
        # server read as refused, and every /mcp session waited its timeout again; wave 39)
        raise UpcallDown(f"upstream {upstream.name!r} is unavailable")
    return message, dict(resp.headers)


async def _answer(
    upstream: HttpUpstream,
    resp: H1Response,
    method: str,
    msg_id: str,
    version: str,
    session: str | None,
    grant: str | None,
) -> dict[str, Any] | None:
    """The answer to ``msg_id`` in a JSON body or a stream (read up to the answer). A request
    the server makes of the client meanwhile is refused at once: the aggregate's own requests
    have no client to ask, and a server left waiting would never answer."""
    media = answer_media(resp)
    if media != "text/event-stream":
        data = await read_bounded(resp)  # within exchange's deadline for the whole answer
        if data is None:
            raise UpcallFailed(f"upstream {upstream.name!r} answered too much")
        if (emptied := _list_too_large(upstream, method, msg_id, data)) is not None:
            return emptied
        message = _loads(data) if media == "application/json" else None
        return message if isinstance(message, dict) and message.get("id") == msg_id else None
    events = SseEvents()
    turns = Turns()  # 200,000 notices before a list held every other caller's calls
    async for chunk in resp.iter_chunks():
        await turns.after_chunk()
        for event in events.split(chunk):
            data = event_data(event)
            if data is None or not carries_id(data):  # a notice: nothing to read in it
                continue
            if (emptied := _list_too_large(upstream, method, msg_id, data)) is not None:
                return emptied
            message = _loads(data)
            if not isinstance(message, dict):
                continue
            if message.get("id") == msg_id and "method" not in message:
                return message
            if "method" in message and "id" in message:
                error = rpc.error_body(message["id"], rpc.METHOD_NOT_FOUND, _NO_CLIENT)
                await post_once(upstream, None, error, version, session, grant=grant)
    return None


def _list_too_large(
    upstream: HttpUpstream, method: str, msg_id: str, data: bytes | str
) -> dict[str, Any] | None:
    """An empty list for a list answer past ``MAX_LIST_ANSWER_BYTES``, as the relay shows
    one, without reading its JSON (each value of a 45 MB list read and checked on the loop
    every caller shares held it 6 s); None for any other."""
    listed = _LISTED.get(method)
    if listed is None or len(data) <= MAX_LIST_ANSWER_BYTES:
        return None
    log.warning("upstream.list_too_large", server=upstream.name, list=listed, size=len(data))
    return {"jsonrpc": "2.0", "id": msg_id, "result": {listed: []}}


#: What a server that asks something of the client during one of the aggregate's own
#: requests (a merged list, say) is told.
_NO_CLIENT = "the gateway answers this request itself: there is no client to ask"


async def post_once(
    upstream: HttpUpstream,
    method: str | None,
    body: bytes,
    version: str,
    session: str | None,
    verb: str = "POST",
    grant: str | None = None,
) -> int:
    """Send a notification, an answer or a DELETE; the upstream's HTTP status (0: down, or
    its answer's body stalled past ``servers.X.timeout`` of silence: one server's unended
    202 held /mcp's link opening, every caller's merged list, and the idle reaper)."""
    headers = _headers(upstream, method, version, session, grant)
    try:
        resp = await upstream.pool.request(verb, headers, body if verb == "POST" else None)
    except (*UPSTREAM_ERRORS, TimeoutError):
        return 0
    try:
        await read_bounded(resp, upstream.silence)
    except (*UPSTREAM_ERRORS, TimeoutError):
        return 0
    finally:
        resp.close()
    return resp.status


def _loads(data: bytes) -> Any:
    if not_utf8(data):
        return None
    try:
        return json_loads(data)
    except (ValueError, RecursionError):
        return None


def _error_text(message: dict[str, Any], server: str) -> str:
    error = message.get("error")
    told = told_error(error if isinstance(error, dict) else {}, f"upstream {server!r} is full")
    return str(told["message"])


def told_error(error: dict[str, Any], otherwise: str) -> dict[str, Any]:
    """A server's error as ``/mcp`` tells it (no view read it): its integer code, its
    message cut short (``otherwise`` when it has none), and of its data only the protocol
    versions an unsupported version's error names. The error went on whole, a forged
    ``io.celgate`` key and all (red-team wave 60)."""
    code, text, data = error.get("code"), error.get("message"), error.get("data")
    told: dict[str, Any] = {
        "code": code if type(code) is int else rpc.INTERNAL_ERROR,
        "message": text[:300] if isinstance(text, str) else otherwise,
    }
    if isinstance(data, dict):
        versions = data.get("supported")
        if isinstance(versions, list) and all(isinstance(v, str) for v in versions):
            told["data"] = {"supported": [v[:40] for v in versions[:20]]}
    return told
