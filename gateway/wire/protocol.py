"""The HTTP/1.1 protocol the gateway serves with: uvicorn's httptools parser, bounded.

uvicorn bounds little on its own: a request head may be sent as slowly and grow as large as a
client likes (httptools joins a header's pieces until the header ends, so a 16 MiB header is
held whole before any callback sees it), and only idle keep-alive connections time out. Before
any client is authenticated, this protocol bounds what one connection may cost:

- the head (request line and headers, as sent) is held until its blank line and only then
  given to the parser; a head that has not ended within ``max_head_bytes`` is answered 431
  and closed, so no more than that is ever held;
- more than ``max_headers`` headers: 431 and close; the trailers of a chunked body (which
  httptools holds the same way) count against both limits;
- a chunked body's chunks must carry ``MIN_CHUNK_AVERAGE`` bytes each on average past its
  first ``FREE_CHUNKS``: otherwise 400 and close (each chunk is Python callbacks, and one
  client's 1-byte chunks, 2 MB/s of them, held the event loop for seconds at a time);
- a head must be complete within ``head_timeout`` of the connection opening or of the first
  byte of the next request on a kept-alive connection, and a body within ``body_timeout`` of
  its head: otherwise 408 and close;
- an idle kept-alive connection closes after ``keepalive_timeout`` (uvicorn's own timer);
- past ``max_connections`` open connections (long SSE streams count), a new connection is
  answered 503 and closed at once;
- what a client leaves unread is bounded in time and in all: a connection whose unsent bytes
  (past the transport's high-water mark) grow no smaller for ``send_timeout`` is cut, and
  when all such connections hold more than ``max_unsent_bytes``, the one that stopped
  reading first is cut (an answer is handed to the transport whole, and a caller that never
  read its socket held it there: 48 answers of 30 MiB, 1.7 GiB);
- requests pipelined behind one in progress wait unread-from (no more of the connection is
  read until they are answered: uvicorn read on after every answer, and one connection of
  tiny pipelined requests queued half a million of them, 1.2 GiB); more than
  ``MAX_PIPELINED`` waiting at once (within what one read gave) close the connection, with
  no answer (one out of order would be read as an earlier request's).

A head whose framing or addressing the application would read otherwise than a proxy or the
client meant is refused before the application sees it (:func:`head_refusal`): a transfer
coding other than ``chunked`` (501), ``Transfer-Encoding`` in HTTP/1.0, more than one Host or
Origin, a request target naming another authority than Host (400); then closed.

Writes still go through :class:`CoalescingTransport` (one write per event-loop pass).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import fcntl
import http
import re
import socket
import struct
import termios
import time
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol

import structlog

from gateway.wire.coalesce import CoalescingHttpToolsProtocol

log = structlog.get_logger("celgate.edge")


class ConnectionLimits(Protocol):
    """The bounds, as ``security:`` in the config gives them (``SecurityConfig``)."""

    @property
    def max_head_bytes(self) -> int: ...
    @property
    def max_headers(self) -> int: ...
    @property
    def head_timeout(self) -> float: ...
    @property
    def body_timeout(self) -> float: ...
    @property
    def keepalive_timeout(self) -> float: ...
    @property
    def max_connections(self) -> int: ...
    @property
    def send_timeout(self) -> float: ...
    @property
    def max_unsent_bytes(self) -> int: ...


def _drop(transport: asyncio.Transport) -> None:
    """Close a connection and drop what it has not sent, now: in the gateway's buffer and in
    the kernel's. abort() alone closes its socket only on a later turn of the event loop, and
    a client that began reading meanwhile was sent all of it (9.8 MB in 14 ms, as a 12 MB
    answer's JSON was read for another client); the kernel would also deliver what it holds
    (a few MB) after close. Writing is shut now, and the close resets the connection."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
            # uvloop's socket object has no shutdown(); one of the same descriptor does
            # (detached again, so the descriptor stays the transport's to close).
            own = socket.socket(sock.family, sock.type, sock.proto, fileno=sock.fileno())
            try:
                own.shutdown(socket.SHUT_WR)
            finally:
                own.detach()
        except OSError:  # already closed or reset by the client: nothing left to drop
            pass
    transport.abort()


_INT = struct.pack("i", 0)
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets and drops what is queued


def _cut_past_budget(budget: int) -> None:
    """Past ``max_unsent_bytes`` in all: what each paused connection holds is counted again
    (a client reading drains its own), then, while still past, connections are cut: first
    those whose client was never seen reading, the first to stop first, then the others, the
    longest without reading first. Cutting the first to pause whatever it had read since cut
    a client reading its 12 MB answer for two that read nothing (red-team wave 52); counting
    only what it read since its last stall check cut a client that reads in bursts, between
    two, for dozens that never read a byte (wave 55)."""
    paused = list(_Unsent.paused)
    now = time.monotonic()
    for conn in paused:
        conn._count_unsent()
        conn._observe(now)
    # never seen reading first (-1.0), then the longest without reading
    for conn in sorted(paused, key=lambda c: -1.0 if c._read_at is None else c._read_at):
        if _Unsent.total <= budget:
            return
        conn._cut_unread("client.unread_budget", total=_Unsent.total)


class _Unsent:
    """What connections whose writing is paused (their client reads slower than they are
    written to, or not at all) hold unsent, in all, and those connections, the first to stop
    reading first (one event loop: no lock)."""

    total = 0
    paused: ClassVar[dict[GuardedHttpProtocol, None]] = {}


#: A chunked body's chunks past which each must carry ``MIN_CHUNK_AVERAGE`` body bytes on
#: average (no MCP client writes a body in pieces this small; a parser callback a byte is
#: what one client's 1-byte chunks cost every other client: red-team wave 44).
FREE_CHUNKS = 256  # a small body a JSON encoder streams a token a chunk still passes
MIN_CHUNK_AVERAGE = 1024  # 256 cost 9 times a Content-Length body a byte (red-team wave 45)

#: Requests that may wait behind the one in progress on one connection (no MCP client
#: pipelines: each waits for its answer, or opens another connection).
MAX_PIPELINED = 16


class _Stage(enum.Enum):
    HEAD = "head"  # waiting for the rest of a request head
    BODY = "body"  # head parsed, body not yet complete
    DONE = "done"  # request whole; what comes next starts another request


def _plain_response(status: int, text: str) -> bytes:
    body = text.encode("ascii")
    phrase = http.HTTPStatus(status).phrase
    return (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode("ascii") + body


class _Refused(Exception):
    """Raised inside the parser's callback to stop it; answered with the refusal noted."""


Refusal = tuple[int, str]
_AUTHORITY_END = re.compile(rb"[/?#]")


def head_refusal(
    headers: Sequence[tuple[bytes, bytes]], target: bytes, method: bytes, version: str
) -> Refusal | None:
    """Why a parsed head is refused, or None; header names lower case, as uvicorn gives them.

    Each is a head that two readers may take for two different requests (RFC 9112 3.2, 3.2.2,
    6.1; RFC 9110 7.2, 11.6.2): the Host and Origin guards and the caller's credentials read
    one value, so a second is not theirs to pick (a proxy that adds its own credential
    without removing the client's would otherwise leave the client's first); a transfer
    coding the parser does not undo would leave the body coded while it is read as JSON; an
    absolute-form target's authority replaces Host, which the guard would otherwise check in
    its place.
    """
    hosts: list[bytes] = []
    origins = credentials = upgrades = 0
    for name, value in headers:
        if name == b"host":
            hosts.append(value.strip())
        elif name == b"origin":
            origins += 1
        elif name == b"authorization":
            credentials += 1
        elif name == b"upgrade" or (name == b"connection" and _names_upgrade(value)):
            upgrades += 1
    if upgrades:
        # The parser reads what follows an upgrade's head as the new protocol's, not as its
        # body: uvicorn, serving no upgrade, answered the head and read a body arriving
        # later as a request of its own, one a proxy framing by Content-Length never saw
        # (red-team wave 40). No upgrade is served here.
        return 400, "protocol upgrades are not served"
    if len(hosts) > 1:
        return 400, "more than one Host header"
    if origins > 1:
        return 400, "more than one Origin header"
    if credentials > 1:
        return 400, "more than one Authorization header"
    refused = _coding_refusal(headers, version)
    if refused is None and not _target_ok(target, method, hosts[0] if hosts else None):
        refused = 400, "request target is not on this server"
    return refused


def _names_upgrade(connection: bytes) -> bool:
    return any(token.strip().lower() == b"upgrade" for token in connection.split(b","))


def _coding_refusal(headers: Sequence[tuple[bytes, bytes]], version: str) -> Refusal | None:
    """Only ``chunked``, once, which the parser takes off: any other coding would reach the
    application still applied (RFC 9112 6.1: a coding not understood is 501). HTTP/1.0 has
    no transfer codings, so a Transfer-Encoding there leaves the framing in doubt."""
    values = [value for name, value in headers if name == b"transfer-encoding"]
    if not values:
        return None
    if version == "1.0":
        return 400, "Transfer-Encoding in an HTTP/1.0 request"
    codings = [c.strip().lower() for value in values for c in value.split(b",") if c.strip()]
    if any(coding != b"chunked" for coding in codings):
        return 501, "transfer coding not implemented"
    if codings != [b"chunked"]:
        return 400, "chunked must be given once"
    return None


def _target_ok(target: bytes, method: bytes, host: bytes | None) -> bool:
    """Origin-form; ``*`` for OPTIONS; absolute-form only when its authority is the Host
    given (this is an origin server, not a proxy: another authority is not served here)."""
    if target.startswith(b"/"):
        return True
    if target == b"*":
        return method == b"OPTIONS"
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https") or host is None:
        return False
    authority = _AUTHORITY_END.split(rest, maxsplit=1)[0]
    return authority.lower() == host.lower()


class GuardedHttpProtocol(CoalescingHttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds above. Use :func:`protocol_class`."""

    limits: ClassVar[ConnectionLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout_keep_alive = self.limits.keepalive_timeout  # type: ignore[assignment]
        self._refused = False  # over the connection cap: never joined the server's set
        self._quiet_since = 0.0  # since when no request of its own is in progress
        self._served = False  # whether one of its requests was answered (a client, kept alive)
        self._stage = _Stage.HEAD
        self._head_bytes = 0
        self._refusal: Refusal | None = None  # why the parser was stopped, to answer it
        self._body_got = 0  # body bytes the parser gave, this request
        self._chunks = 0  # chunk headers the parser read, this request
        self._in_trailers = False  # a chunk header without body yet: maybe the last chunk
        self._trailer_bytes = 0
        self._held = bytearray()  # a head received in part, before the parser sees it
        self._field_bytes = 0  # the target and header fields the parser read, this head
        self._parsing_head = False  # the parser holds part of a (pipelined) head
        self._timer: asyncio.TimerHandle | None = None  # the head's or the body's deadline
        self._overflow = False  # more requests pipelined than may wait: closed, unanswered
        self._unsent = 0  # bytes counted in _Unsent.total while writing is paused
        self._mark = 0  # undelivered when writing paused, or at the last stall check
        self._seen = 0  # undelivered when last looked at (paused, a check, the budget's)
        self._read_at: float | None = None  # when its client was last seen reading
        self._stall: asyncio.TimerHandle | None = None  # send_timeout, while paused

    # Connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if len(self.connections) >= self.limits.max_connections and not self._make_room():
            self._refused = True
            transport.write(_plain_response(503, "too many connections"))  # type: ignore[attr-defined]
            transport.close()
            return
        self._quiet_since = time.monotonic()
        super().connection_made(transport)
        self._arm(self.limits.head_timeout, self._head_timed_out)

    def _make_room(self) -> bool:
        """At the connection cap: close the connection that has waited longest with no
        request of its own in progress (a head not yet whole, idle between requests, or a
        body still coming for a request already answered), if any; one never answered before
        one that was. Connections that never send a whole request must not keep everyone
        else out: they go first, and a client whose request is under way is never cut."""
        waiting = [c for c in self.connections if isinstance(c, GuardedHttpProtocol) and c._idle()]
        if not waiting:
            return False
        # Never served first: an MCP client's kept-alive connection, idle between its calls,
        # was closed under it for 30 half heads that came after it. And one whose answer is
        # still going out last: a client downloading 12 MB was reset for the 20th /healthz
        # connection an attacker kept open (red-team wave 52); one that stopped reading is
        # cut by send_timeout and max_unsent_bytes.
        sent = [c for c in waiting if not c.transport.get_write_buffer_size()]
        oldest = min(sent or waiting, key=lambda c: (c._served, c._quiet_since))
        if oldest.transport.get_write_buffer_size():
            _drop(oldest.transport)  # close() would keep what its client has not read
        else:
            oldest.transport.close()
        oldest._quiet_since = float("inf")  # closing: not chosen again while it goes
        return True

    def _idle(self) -> bool:
        """No request of its own in progress: none yet, or its last one answered (even with
        its body still trickling in, as after a 401 to a request with no credentials)."""
        cycle = self.cycle
        return cycle is None or cycle.response_complete

    def on_response_complete(self) -> None:
        self._quiet_since = time.monotonic()
        self._served = True
        super().on_response_complete()  # reads on, and starts the next pipelined request
        if self.pipeline:  # more are waiting: read nothing more until they are answered
            self.flow.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self._disarm()
        self._forget_unsent()
        super().connection_lost(exc)

    # What the client has not read

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._refused or self in _Unsent.paused:
            return
        _Unsent.paused[self] = None
        self._count_unsent()
        self._mark = self._seen = self._undelivered()
        self._stall = self.loop.call_later(self.limits.send_timeout, self._check_stall)
        if _Unsent.total > self.limits.max_unsent_bytes:
            _cut_past_budget(self.limits.max_unsent_bytes)

    def resume_writing(self) -> None:
        if self in _Unsent.paused:  # its buffer drained: its client read
            self._read_at = time.monotonic()
        self._forget_unsent()
        super().resume_writing()

    def _count_unsent(self) -> int:
        """Count what is unsent now; returns what was counted before."""
        before = self._unsent
        self._unsent = self.transport.get_write_buffer_size()
        _Unsent.total += self._unsent - before
        return before

    def _undelivered(self) -> int:
        """What the client has not taken yet: the transport's buffer and the kernel's send
        queue (what a client reads comes out of the kernel's first: a client that read 1 MiB
        of its answer had the transport's buffer as full as when it stopped)."""
        size = self.transport.get_write_buffer_size()
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # closed meanwhile: the buffer alone
                size += struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, _INT))[0]
        return size

    def _observe(self, now: float) -> int:
        """What is undelivered now, noting ``now`` as a time its client read if less is
        than when last looked at."""
        undelivered = self._undelivered()
        if undelivered < self._seen:
            self._read_at = now
        self._seen = undelivered
        return undelivered

    def _check_stall(self) -> None:
        """``send_timeout`` after writing paused, and after every check since: cut unless
        the client read some of it meanwhile."""
        self._stall = None
        if self not in _Unsent.paused:
            return
        self._count_unsent()
        undelivered = self._observe(time.monotonic())
        if undelivered >= self._mark:
            self._cut_unread("client.unread", seconds=self.limits.send_timeout)
            return
        self._mark = undelivered
        self._stall = self.loop.call_later(self.limits.send_timeout, self._check_stall)

    def _cut_unread(self, event: str, **fields: Any) -> None:
        log.warning(event, unsent=self._unsent, client=_peer(self.client), **fields)
        self._forget_unsent()
        _drop(self.transport)  # close() would wait for the client to read it all

    def _forget_unsent(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        if _Unsent.paused.pop(self, 0) is None:  # (its value is None: it was there)
            _Unsent.total -= self._unsent
        self._unsent = 0

    # Feeding the parser

    def data_received(self, data: bytes) -> None:
        if self._refused or self.transport.is_closing():
            return
        self._unset_keepalive_if_required()  # uvicorn's, cancelled only once bytes reach it
        if self._stage is _Stage.DONE:
            self._begin_head()
        if self._stage is _Stage.HEAD and not self._parsing_head:
            whole = self._whole_head(data)
            if whole is not None:
                super().data_received(whole)  # type: ignore[arg-type]
        elif self._stage is _Stage.HEAD:  # the rest of a head pipelined behind a request
            self._head_bytes += len(data)
            super().data_received(data)
        else:
            self._feed_body(data)
        if self.transport.is_closing():
            return
        # Deadlines are set only for what is still missing: most heads and bodies are whole
        # in the piece that began them, and then no timer is needed.
        if self._stage is _Stage.HEAD and self._head_bytes >= self.limits.max_head_bytes:
            self._close_with(431, "request head too large")
        elif self._stage is _Stage.HEAD and self._timer is None:
            self._arm(self.limits.head_timeout, self._head_timed_out)
        elif self._stage is _Stage.BODY and self._timer is None:
            self._arm(self.limits.body_timeout, self._body_timed_out)

    def _whole_head(self, data: bytes) -> bytes | bytearray | None:
        """The head and what follows it once the head has ended; None while it has not.

        A head is held here until its blank line, not in the parser: httptools joins the
        pieces of a header (and uvicorn those of the URL) by copying, which costs quadratic
        time for a head that trickles in; a head that has ended is then parsed in one piece.
        """
        limit = self.limits.max_head_bytes
        start = max(0, len(self._held) - 3)  # the blank line may straddle two pieces
        buf: bytes | bytearray = data
        if self._held:
            self._held += data
            buf = self._held
        self._head_bytes = len(buf)
        end = buf.find(b"\r\n\r\n", start, limit)
        bare = buf.find(b"\n\n", start, limit if end < 0 else end)
        if bare >= 0:  # a blank line of a bare LF: no head this reads ends there, and the
            # client waited for the head timeout (10 s) for an answer; refused at once
            self._close_with(400, "request head lines must end with CRLF")
            return None
        if end >= 0:
            self._held = bytearray()
            return buf
        if len(buf) >= limit:
            self._close_with(431, "request head too large")
        elif buf is data:
            self._held = bytearray(data)
        return None

    def _feed_body(self, data: bytes) -> None:
        """Feed body bytes; bound the trailers of a chunked body as a head is bounded.

        httptools joins a trailer's pieces as it does a header's, and no body flow control
        applies to them: past the last chunk, what is not body counts against max_head_bytes.
        """
        got = self._body_got
        super().data_received(data)
        if self._in_trailers and self._stage is _Stage.BODY:
            self._trailer_bytes += len(data) - (self._body_got - got)
            if self._trailer_bytes >= self.limits.max_head_bytes:
                self._cut_body(431, "request trailers too large")

    def send_400_response(self, msg: str) -> None:
        if self._overflow:  # an answer now would be read as an earlier request's
            self._disarm()
            self.transport.close()
        elif self._refusal is not None and self._stage is _Stage.BODY:
            self._cut_body(*self._refusal)  # the application may have answered already
        elif self._refusal is not None:  # the parser was stopped here, not by a parse error
            self._close_with(*self._refusal)
        else:
            super().send_400_response(msg)

    # Parser callbacks

    def on_message_begin(self) -> None:
        if self._stage is _Stage.DONE:  # pipelined: began inside the chunk that ended the last
            self._begin_head()
        self._parsing_head = True
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._field_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        # A chunked body's trailer fields come through here too, and uvicorn adds them to
        # the list that is the request's headers: an Authorization, or an X-Forwarded-For,
        # sent after the body would have been read as if in the head (past a proxy that
        # checked the head). Only the head's fields are headers; trailers are dropped.
        if self._stage is _Stage.HEAD:
            self._field_bytes += len(name) + len(value)
            super().on_header(name, value)

    def on_chunk_header(self) -> None:
        self._in_trailers = True  # until body bytes follow: only the last chunk has none
        self._chunks += 1
        # the last chunk (size 0) is no chunk of data: the first FREE_CHUNKS of data are free
        if self._chunks > FREE_CHUNKS + 1 + self._body_got // MIN_CHUNK_AVERAGE:
            log.warning("client.chunks_too_small", chunks=self._chunks, client=_peer(self.client))
            self._refusal = 400, "request body chunks too small"
            raise _Refused  # the parser stops: answered (unless answered) and closed

    def on_body(self, body: bytes) -> None:
        self._body_got += len(body)
        self._in_trailers = False
        self._trailer_bytes = 0
        super().on_body(body)

    def on_headers_complete(self) -> None:
        if len(self.pipeline) >= MAX_PIPELINED:  # (only requests behind one in progress wait)
            self._overflow = True
            raise _Refused
        # Counted once the head is whole (it is held whole before parsing, within
        # max_head_bytes, so counting each header as parsed would bound nothing more).
        if len(self.headers) > self.limits.max_headers:
            self._refusal = 431, "too many request headers"
        elif self._field_bytes >= self.limits.max_head_bytes:
            # A head pipelined in the same read as the end of the request before it goes to
            # the parser as it came, uncounted: a 250 KB header passed (red-team wave 47).
            self._refusal = 431, "request head too large"
        else:
            parser = self.parser
            self._refusal = head_refusal(
                self.headers, self.url, parser.get_method(), parser.get_http_version()
            )
        if self._refusal is not None:
            raise _Refused  # the parser stops; feed_data raises HttpParserCallbackError
        self._stage = _Stage.BODY
        self._parsing_head = False
        self._disarm()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._stage = _Stage.DONE
        self._disarm()
        super().on_message_complete()
        cycle = self.cycle
        if (
            cycle is not None
            and cycle.response_complete
            and not self.pipeline
            and self.timeout_keep_alive_task is None
            and not self.transport.is_closing()
        ):
            # Answered before its body was whole (a 401, a 415): the body's bytes cancelled
            # the keep-alive deadline the answer set, and nothing else would set it again.
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    # Deadlines

    def _begin_head(self) -> None:
        self._stage = _Stage.HEAD
        self._head_bytes = self._field_bytes = 0
        self._refusal = None
        self._body_got = self._trailer_bytes = self._chunks = 0
        self._in_trailers = False

    def _arm(self, seconds: float, handler: Any) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, handler)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timed_out(self) -> None:
        self._timer = None
        if self._head_bytes:
            self._close_with(408, "request head not complete in time")
        elif not self.transport.is_closing():
            self.transport.close()  # nothing was asked: nothing to answer

    def _body_timed_out(self) -> None:
        self._timer = None
        self._cut_body(408, "request body not complete in time")

    def _cut_body(self, status: int, text: str) -> None:
        """Answer ``status`` unless the application already answered; close either way."""
        if self.cycle is not None and not self.cycle.response_started:
            self._close_with(status, text)
        elif not self.transport.is_closing():
            self._disarm()
            self.transport.close()

    def _close_with(self, status: int, text: str) -> None:
        self._disarm()
        if self.transport.is_closing():
            return
        cycle = self.cycle  # while a head is read, the request before it (if any)
        if self._stage is not _Stage.HEAD or cycle is None or cycle.response_complete:
            self.transport.write(_plain_response(status, text))
        # else a request pipelined behind one still being answered: an answer now would be
        # read as that one's, so the connection closes unanswered
        self.transport.close()


def _peer(client: Any) -> str | None:
    return f"{client[0]}:{client[1]}" if client else None


def protocol_class(limits: ConnectionLimits) -> type[GuardedHttpProtocol]:
    """A :class:`GuardedHttpProtocol` bound to ``limits``, for ``uvicorn.Config(http=...)``."""
    return type("GuardedHttpProtocol", (GuardedHttpProtocol,), {"limits": limits})
