"""Streamable HTTP framing for the stdio links, written straight onto the ASGI ``send``.

One request's answer goes out as JSON when the answer comes alone (the common, cheap case),
and as an SSE stream once anything else comes first (progress, a log line, a question to the
client) or the answer is slow: a stream's head goes out at once, so a caller (and the
in-process head deadline) sees the request is being worked on. The links put ``Item``\\ s, a
message and its JSON text, in a request's ``Inbox``; this module frames them.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio
import msgspec

from gateway.upstream.stdio_child import LINE_LIMIT
from gateway.wire.asgi import Incoming, Send, accepts, is_json_type, reply
from gateway.wire.jsonrpc import INVALID_REQUEST, PARSE_ERROR, SESSION_NOT_FOUND, json_bytes
from gateway.wire.jsonrpc import error_body as rpc_error
from gateway.wire.jsonrpc import loads as json_loads
from gateway.wire.sse import message_event as event

Item = tuple[dict[str, Any], bytes]  # a message, and its JSON text as it goes on the wire
Headers = list[tuple[bytes, bytes]]
SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache, no-transform"),
]
#: An answer not there this long opens the SSE stream (its head), so a slow call is seen as
#: going on: a caller's head deadline never fires on it, and a going-away client is noticed.
HEAD_AFTER = 1.0
#: Messages an inbox keeps beyond its answer; past this, while nobody reads them (the caller
#: went away), notifications are dropped. The answer never is.
BACKLOG = 256
INBOX_BYTES = 8 * 1024 * 1024  # waiting in one inbox at most (the answer itself excepted)
ALL_INBOX_BYTES = 256 * 1024 * 1024  # ... and in every inbox together


class Inbox:
    """The messages on their way to one HTTP answer: put without waiting, taken by one reader.

    Not a memory object stream: a reader cancelled (its caller went away, or its wait for the
    head ran out) while a message was being handed over would lose it, and with it maybe the
    answer. Here a message leaves the inbox only when it is taken, with no await between.
    """

    __slots__ = ("_waiter", "closed", "held", "items")

    #: Bytes waiting in every inbox of the process.
    held_by_all = 0

    def __init__(self) -> None:
        self.items: deque[Item] = deque()
        self.closed = False
        self.held = 0
        self._waiter: asyncio.Future[None] | None = None

    def put(self, item: Item, final: bool = False) -> None:
        """Queue ``item``; a message other than the answer (``final``) is dropped when the
        reader is ``BACKLOG`` messages, ``INBOX_BYTES`` or (all inboxes, notifications only)
        ``ALL_INBOX_BYTES`` behind: a server cannot make the gateway hold what an agent does
        not read."""
        if self.closed:
            return
        size = len(item[1])
        # A server's request (an id and a method: elicitation, sampling) is never dropped for
        # what other inboxes hold: its caller's call would wait for it to its timeout.
        asks = "id" in item[0] and "method" in item[0]
        if not final and (
            len(self.items) >= BACKLOG
            or self.held + size > INBOX_BYTES
            or (not asks and Inbox.held_by_all + size > ALL_INBOX_BYTES)
        ):
            return
        self.items.append(item)
        self.held += size
        Inbox.held_by_all += size
        self._wake()

    def _taken(self, item: Item) -> Item:
        size = len(item[1])
        self.held -= size
        Inbox.held_by_all -= size
        return item

    def drain(self) -> list[Item]:
        """Every message waiting, taken at once (no reader will come for them)."""
        items = [self._taken(item) for item in self.items]
        self.items.clear()
        return items

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self, within: float = math.inf) -> Item | None:
        """The next message; None when ``within`` seconds pass first; EndOfStream once the
        inbox is closed and empty."""
        if not self.items:
            if self.closed:
                raise anyio.EndOfStream
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = None if within == math.inf else loop.call_later(within, _settle, waiter)
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
            if not self.items:
                if self.closed:
                    raise anyio.EndOfStream
                return None
        return self._taken(self.items.popleft())

    def __del__(self) -> None:
        # An inbox let go with messages in it (its request ended): their bytes are free.
        Inbox.held_by_all -= self.held


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def read_post(incoming: Incoming, send: Send) -> tuple[dict[str, Any], bytes] | None:
    """A handshake-era POST's one message and its body; None once refused (as the SDK's
    transport refuses: 406, 415, 413, 400)."""
    json_ok, sse_ok = accepts(incoming)
    body = None
    if not (json_ok and sse_ok):
        status, code = 406, INVALID_REQUEST
        msg = "Not Acceptable: Client must accept both application/json and text/event-stream"
    elif not is_json_type(incoming.header("content-type")):
        status, code = 415, INVALID_REQUEST
        msg = "Unsupported Media Type: Content-Type must be application/json"
    elif (body := await incoming.body(LINE_LIMIT)) is None:
        status, code, msg = 413, INVALID_REQUEST, "Payload Too Large"
    else:
        try:
            message = json_loads(body)
        except ValueError:
            message = None
        if isinstance(message, dict) and message.get("jsonrpc") == "2.0":
            return message, body
        status, code, msg = 400, PARSE_ERROR, "Parse error: one JSON-RPC message per request"
    await reply(send, status, rpc_error(None, code, msg))
    return None


async def session_not_found(
    incoming: Incoming, send: Send, message: dict[str, Any] | None = None
) -> None:
    """404 "Session not found", answering a POSTed request by its id (``message``: the
    POST's, when read already), as a session the gateway itself does not know is answered: a
    client reads the error as its request's, and starts a new session."""
    if message is None and incoming.method == "POST":
        body = await incoming.body(LINE_LIMIT)
        try:
            message = json_loads(body) if body else None
        except ValueError:
            message = None
    request = isinstance(message, dict) and "method" in message
    msg_id = message.get("id") if request and isinstance(message, dict) else None
    await reply(send, 404, rpc_error(msg_id, SESSION_NOT_FOUND, "Session not found"))


def encode(message: dict[str, Any]) -> Item:
    return message, json_bytes(message, (",", ":"))


class _AnswerParts(msgspec.Struct):
    result: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    error: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


_ANSWER_PARTS = msgspec.json.Decoder(_AnswerParts)


def answer_text(line: bytes, msg_id: Any) -> bytes | None:
    """A child's answer (its JSON line) under ``msg_id``: its ``result`` or ``error`` as the
    child wrote it, put in a new envelope, not encoded again (a 60 MiB answer encoded held
    the loop every caller shares for seconds); None when it is not one answer read so."""
    try:
        parts = _ANSWER_PARTS.decode(line)
    except (msgspec.DecodeError, RecursionError):
        return None
    if (parts.result is msgspec.UNSET) == (parts.error is msgspec.UNSET):
        return None
    key, part = b"result", parts.result
    if isinstance(parts.error, msgspec.Raw):
        key, part = b"error", parts.error
    assert isinstance(part, msgspec.Raw)
    head = b'{"jsonrpc":"2.0","id":' + json_bytes(msg_id, (",", ":")) + b',"' + key + b'":'
    return head + bytes(part) + b"}"


async def open_stream(send: Send, headers: Headers, first: bytes = b"") -> None:
    await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS + headers})
    if first:
        await send({"type": "http.response.body", "body": first, "more_body": True})


async def respond(
    send: Send,
    inbox: Inbox,
    *,
    sse: bool,
    headers: Headers,
    status: Callable[[dict[str, Any]], int] = lambda message: 200,
    priming: Callable[[], bytes] = lambda: b"",
    framed: Callable[[bytes], bytes] = event,
    stream_now: bool = False,
) -> bool:
    """Send one request's answer, and what comes before it; True once the answer went out.

    ``priming`` gives the first bytes of an SSE stream (an event id to resume from), ``framed``
    an event's bytes (with its id); a stream's head, priming event and first event go out
    together. Without SSE (the client takes JSON only) what comes before the answer is
    dropped. The inbox closing with no answer (the request was cancelled) ends the stream
    empty. ``stream_now``: the stream opens at once (the client prefers SSE).
    """
    started = False
    if stream_now and sse:
        started = True
        await open_stream(send, headers, priming())
    while True:
        try:
            item = await inbox.get(math.inf if started or not sse else HEAD_AFTER)
        except anyio.EndOfStream:
            break
        if item is None:  # slow: the stream opens now
            started = True
            await open_stream(send, headers, priming())
            continue
        message, body = item
        final = "method" not in message
        if final and not started:
            await reply(send, status(message), body, extra=headers)
            return True
        if not sse:
            continue
        first = b""
        if not started:
            started = True
            first = priming()  # its id comes before the event's
            await send(
                {"type": "http.response.start", "status": 200, "headers": SSE_HEADERS + headers}
            )
        chunk = first + framed(body)
        await send({"type": "http.response.body", "body": chunk, "more_body": not final})
        if final:
            return True
    if not started:
        await open_stream(send, headers)
    await send({"type": "http.response.body", "body": b""})
    return False
