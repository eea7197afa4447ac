"""HTTP to an ASGI app in this process, with no socket: how the stdio bridges are reached.

``AsgiPool`` has ``H1Pool``'s interface (``request(method, headers, body)`` gives an answer
whose head is there at once and whose body comes as it is sent), so the relay fronts a stdio
server exactly as it fronts a Streamable HTTP one (the aggregate too).

Each request runs the app in a task of its own (in an empty context, as a server would), fed
by a ``receive`` that yields the body once and then waits for the answer to be closed
(``http.disconnect``), and a ``send`` that feeds the answer:

* the head is the caller's as soon as ``http.response.start`` is sent, within ``head_timeout``
  (else ``UpstreamTimeout``, and the app task is cancelled);
* body chunks are queued as sent, never joined; a sender more than ``_PAUSE_AT`` chunks or
  ``_PAUSE_BYTES`` ahead of its reader waits until the reader has caught up;
* an answer closed before it was whole cancels the app task (that is how a caller's
  going away reaches the bridge); closed whole, the app finishes on its own;
* an app that raises, or returns without a whole answer, fails the answer with
  ``UpstreamIOError`` (before the head or mid-body), never a hang.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping

import structlog

from gateway.errors import UpstreamIOError, UpstreamTimeout
from gateway.upstream.h1 import H1Response
from gateway.upstream.hop import connection_named, is_hop_by_hop
from gateway.wire.asgi import Message, Receive, Scope, Send

log = structlog.get_logger("celgate.inproc")

# A reader this many chunks behind pauses its sender until it is down to _RESUME_AT.
_PAUSE_AT = 64
_RESUME_AT = 8
# ... or this many bytes behind, whatever the count.
_PAUSE_BYTES = 4 * 1024 * 1024
# Never taken from the caller: this transport frames the request itself.
_OWN = frozenset({b"host", b"content-length"})

Headers = list[tuple[bytes, bytes]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class AsgiResponse(H1Response):
    """An in-process answer, with ``H1Response``'s interface (the relay types its answers as
    one); there is no connection behind it, so pausing and releasing are the app task's."""

    def __init__(self) -> None:  # not H1Response's: no connection, no pool
        self.status = 0
        self.raw_headers: Headers = []
        self.complete = False
        self.head: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = asyncio.Event()  # the app's receive() answers http.disconnect after it
        self.task: asyncio.Task[None] | None = None
        self._chunks: deque[bytes | bytearray | None] = deque()
        self._taken = 0
        self._waiter: asyncio.Future[None] | None = None
        self._room: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._released = False
        self._headers: dict[str, str] | None = None
        self._discard: asyncio.TimerHandle | None = None

    def start(self, status: int, headers: Iterable[tuple[bytes, bytes]]) -> None:
        """``http.response.start``: the head, without the connection's own headers."""
        if self.head.done():
            return
        lowered = [(bytes(name).lower(), bytes(value)) for name, value in headers]
        named = connection_named(v.decode("latin-1") for k, v in lowered if k == b"connection")
        self.status = status
        self.raw_headers = [(k, v) for k, v in lowered if not is_hop_by_hop(k.decode(), named)]
        self.head.set_result(None)

    async def feed(self, body: bytes, more: bool) -> None:
        """``http.response.body``: queue the chunk; wait while the reader is far behind."""
        if self._released or self.complete or not self.head.done():
            return
        if self._discard is not None:  # nobody reads on: only the end matters
            if not more:
                self.complete = True
                self._stop_discarding()
            return
        if body:
            self._chunks.append(body)
        if not more:
            self.complete = True
            self._chunks.append(None)
        self._wake()
        while self._far_ahead() and not self._released:
            self._room = asyncio.get_running_loop().create_future()
            await self._room

    def _far_ahead(self) -> bool:
        """Whether the reader is ``_PAUSE_AT`` chunks or ``_PAUSE_BYTES`` behind (a stdio
        server's events come one per chunk, each up to a message's size)."""
        chunks = self._chunks
        if len(chunks) >= _PAUSE_AT:
            return True
        return sum(len(c) for c in chunks if c is not None) > _PAUSE_BYTES

    def fail(self, error: BaseException) -> None:
        if not self._released:  # nobody would ever retrieve it
            super().fail(error)

    def _drained(self) -> None:
        """The reader has caught up: an app waiting for room goes on."""
        _settle(self._room)

    def close(self) -> None:
        """Done with the answer. Cut short, the app task is cancelled. No await."""
        if self._released or self._discard is not None:
            return
        self._released = True
        self.closed.set()
        _settle(self._room)
        if not self.complete and self.task is not None:
            self.task.cancel()


def _settle(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


class AsgiPool:
    """Requests to one ASGI app in this process (``H1Pool``'s interface, no connections).

    ``authority`` is the ``Host`` the app sees; ``head_timeout`` bounds each request's wait
    for its answer's head (``None``: no limit).
    """

    def __init__(
        self,
        app: App,
        name: str,
        *,
        authority: str = "localhost",
        path: str = "/mcp",
        head_timeout: float | None = None,
    ) -> None:
        self.app = app
        self.name = name
        self.authority = authority.encode("latin-1")
        self.path = path
        self.head_timeout = head_timeout
        self.tasks: set[asyncio.Task[None]] = set()

    async def request(
        self, method: str, headers: Mapping[str, str], body: bytes | None = None
    ) -> AsgiResponse:
        """Start the app on the request and wait for the answer's head (``H1Pool.request``).

        Raises UpstreamTimeout when the head is late, UpstreamIOError when the app fails."""
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        return await self.send(method, raw, body)

    async def send(self, method: str, headers: Headers, body: bytes | None) -> AsgiResponse:
        """``request`` with headers as (lower-case name, value) bytes, repeats allowed."""
        response = AsgiResponse()
        scope = self._scope(method, headers, body)
        # A context of its own, as a server's would be: the caller's (a decision id bound for
        # its log lines) must not follow the sessions and processes the request starts.
        run = self._run(scope, body or b"", response)
        task = asyncio.create_task(run, context=contextvars.Context())
        response.task = task
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        deadline = asyncio.timeout(self.head_timeout)
        try:
            async with deadline:
                await response.head
        except BaseException as exc:  # failed, late or cancelled: the app task goes too
            response.close()
            if isinstance(exc, TimeoutError) and deadline.expired():
                late = f"{self.name} sent no answer within {self.head_timeout} s"
                raise UpstreamTimeout(late) from None
            raise
        return response

    def _scope(self, method: str, headers: Headers, body: bytes | None) -> Scope:
        named = connection_named(v.decode("latin-1") for k, v in headers if k == b"connection")
        raw = [(b"host", self.authority)]
        raw += [
            (k, v) for k, v in headers if k not in _OWN and not is_hop_by_hop(k.decode(), named)
        ]
        if body is not None:
            raw.append((b"content-length", str(len(body)).encode()))
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": self.path,
            "raw_path": self.path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": raw,
            "server": None,
            "client": None,
        }

    async def _run(self, scope: Scope, body: bytes, response: AsgiResponse) -> None:
        unread = [body]

        async def receive() -> Message:
            if unread:
                return {"type": "http.request", "body": unread.pop(), "more_body": False}
            await response.closed.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                response.start(int(message["status"]), message.get("headers", ()))
            elif message["type"] == "http.response.body":
                await response.feed(message.get("body", b""), message.get("more_body", False))

        try:
            await self.app(scope, receive, send)
        except asyncio.CancelledError:
            response.fail(UpstreamIOError(f"{self.name}: the request was cancelled"))
            raise
        except Exception as exc:  # the app's bug must reach the caller as a failed answer
            log.exception("inproc.app_failed", upstream=self.name, error=type(exc).__name__)
            response.fail(UpstreamIOError(f"{self.name} failed while answering"))
        else:
            response.fail(UpstreamIOError(f"{self.name} ended without a whole answer"))

    def close(self) -> None:
        """Cancel every request still running (the gateway is stopping)."""
        for task in list(self.tasks):
            task.cancel()
