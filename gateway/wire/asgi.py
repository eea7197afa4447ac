"""Small helpers over raw ASGI: the incoming request and the replies the gateway writes."""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from gateway.wire.jsonrpc import INVALID_REQUEST, BadMessage

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BodyCut(BadMessage):
    """The client went away before its body ended (fewer bytes than Content-Length, or no
    last chunk): what came is part of a request, and a part is neither decided nor sent on.
    A refusal like any other, so the boundary answers it (nobody may be left to read it)."""

    def __init__(self) -> None:
        super().__init__(INVALID_REQUEST, "request body incomplete", status=400)


class Incoming:
    """The parts of an HTTP request the relay reads; header names lowercased."""

    __slots__ = (
        "body_release",
        "client_ip",
        "headers",
        "method",
        "msg_id",
        "path",
        "raw_headers",
        "receive",
        "release",
        "repeated",
    )

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.method: str = scope["method"]
        self.release: Callable[[], None] | None = None  # run when the request ends
        self.body_release: Callable[[], None] | None = None  # and this: what its body holds
        self.path: str = scope["path"]
        self.raw_headers: list[tuple[bytes, bytes]] = list(scope["headers"])
        headers: dict[str, str] = {}
        repeated: set[str] = set()
        for name, value in self.raw_headers:
            key = name.decode("latin-1").lower()
            if key in headers:
                repeated.add(key)
            else:
                headers[key] = value.decode("latin-1").strip()
        self.headers = headers
        self.repeated = repeated  # names given more than once
        client = scope.get("client")
        self.client_ip: str | None = client[0] if client else None
        self.receive = receive
        self.msg_id: Any = None  # the request's id once its body is read: every error carries it

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def count(self, name: str) -> int:
        """How many times a header is given: 0, 1, or 2 meaning "more than once"."""
        if name in self.repeated:
            return 2
        return 1 if name in self.headers else 0

    async def body(self, limit: int, grow: Callable[[int], bool] | None = None) -> bytes | None:
        """The whole body, or None when it is larger than ``limit`` bytes or ``grow`` (told
        the size it is declared or has reached so far) says no more; raises
        :class:`BodyCut` when the client disconnects before the body has ended."""
        declared = self.headers.get("content-length")
        size = int(declared) if declared is not None and declared.isdigit() else 0
        if size > limit or (size and grow is not None and not grow(size)):
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise BodyCut
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit or (grow is not None and chunk and not grow(size)):
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def is_json_type(content_type: str | None) -> bool:
    """``application/json``, with no charset or UTF-8 (JSON between systems is UTF-8: a body
    the upstream would read in another charset is not one this gateway has read)."""
    return media_type(content_type) == "application/json"


def media_type(content_type: str | None) -> str | None:
    """The media type, lower case, when the charset is UTF-8 or not given; None for any other
    charset (a peer reading the body in it would read what this gateway did not)."""
    media, _, params = (content_type or "").partition(";")
    for param in params.split(";"):
        name, _, value = param.partition("=")
        name = name.strip().lower()
        if "*" in name:  # an RFC 2231 parameter (charset*=utf-8''utf-7): read otherwise
            return None
        if name == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return None
    return media.strip().lower()


def accepts(incoming: Incoming) -> tuple[bool, bool]:
    """(JSON, SSE) for the request's Accept header, wildcards included (as the SDK reads it)."""
    json_ok, sse_ok, _ = _accept(incoming.header("accept") or "")
    return json_ok, sse_ok


def prefers_sse(incoming: Incoming) -> bool:
    """Whether the client names ``text/event-stream`` first in Accept: then every answer is
    a stream, as it asks (JSON, the cheaper, otherwise)."""
    return _accept(incoming.header("accept") or "")[2]


def wants_json(incoming: Incoming) -> bool:
    """An answer may go as JSON rather than as a stream: the client accepts it and does not
    name ``text/event-stream`` first."""
    json_ok, _, sse_first = _accept(incoming.header("accept") or "")
    return json_ok and not sse_first


def _accept(header: str) -> tuple[bool, bool, bool]:
    """(JSON, SSE, SSE named first): a client sends the same Accept on every call, so the
    short ones are read once (the cache holds 256 of at most 200 characters each)."""
    if len(header) > 200:
        return _read_accept(header)
    return _read_accept_cached(header)


def _read_accept(header: str) -> tuple[bool, bool, bool]:
    named = [part.split(";")[0].strip().lower() for part in header.split(",")]
    types = set(named)
    anything = "*/*" in types
    json_ok = anything or bool(types & {"application/json", "application/*"})
    sse_ok = anything or bool(types & {"text/event-stream", "text/*"})
    return json_ok, sse_ok, named[0] == "text/event-stream"


_read_accept_cached = functools.lru_cache(maxsize=256)(_read_accept)


async def reply(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = b"application/json",
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def reply_json(send: Send, status: int, payload: Any) -> None:
    await reply(send, status, json.dumps(payload).encode())
