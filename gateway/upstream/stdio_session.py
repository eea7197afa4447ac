"""The handshake era on stdio: one process per client session (``SessionLink``).

The session's Streamable HTTP wire is served here, straight onto its child's pipes: a POST
carries one message to the child; a request's answer comes back as JSON when nothing comes
before it, as an SSE stream when the child sends something for it first (or is slow); GET
opens the stream for what belongs to no request; DELETE ends the session and its process.
Server-to-client requests (elicitation, sampling, roots) can only belong to that session. A
restarted child gets the session's ``initialize`` replayed; requests in flight when it exits
get a JSON-RPC error at once.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus

from gateway.printable import printable
from gateway.upstream.stdio_child import Child, log
from gateway.upstream.stdio_events import EventLog
from gateway.upstream.stdio_messages import (
    Deadline,
    cancelled,
    keyable,
    progress_token,
    too_slow,
    unavailable,
)
from gateway.upstream.stdio_wire import (
    Inbox,
    Item,
    encode,
    open_stream,
    read_post,
    respond,
    session_not_found,
)
from gateway.wire.asgi import Incoming, Send, accepts, prefers_sse, reply
from gateway.wire.jsonrpc import INVALID_REQUEST
from gateway.wire.jsonrpc import error_body as rpc_error

if TYPE_CHECKING:
    from gateway.upstream.stdio import StdioBridge

GET_STREAM = ("get",)  # the event-log key of the session's GET stream (no request id is a tuple)
#: Questions of the child's (sampling, elicitation, roots) the client may be answering at once,
#: each stopping the deadlines of the requests it concerns for ASK_SECONDS at most; an id
#: longer than ID_CHARS is passed on but not kept.
MAX_ASKING = 64
MAX_ABANDONED = 256
ASK_SECONDS = 600.0
ID_CHARS = 256


def _short_id(msg_id: Any) -> bool:
    return isinstance(msg_id, int) or (isinstance(msg_id, str) and len(msg_id) <= ID_CHARS)


_REQUESTS = itertools.count(1)


class Pending:
    """One request in flight: the stream its answer goes out on, and its deadline."""

    __slots__ = ("clock", "heard", "inbox", "reading", "stream", "token")

    def __init__(self, token: Any, msg_id: Any = None) -> None:
        #: Its events' stream in the session's log: this request's alone. Keyed by the id
        #: alone, a later request under the id (once this one was answered) added its events
        #: to this one's stream, and resuming the call's stream replayed a later tools/list
        #: whole, hidden tools and all (red-team wave 72).
        self.stream = (msg_id, next(_REQUESTS))
        self.inbox = Inbox()
        self.token = token
        self.heard = time.monotonic()  # the child's last sign of life for it
        self.clock: Deadline | None = None
        self.reading = False  # an HTTP answer is sending its stream


class SessionLink:
    """One handshake-era client session and its own process.

    stdio carries no request correlation, so a message from the child is put on the stream
    of: its request (answers), the request that gave its progress token (progress), the most
    recent request still in flight (server-to-client requests, log messages), else the GET
    stream. With one process per session, every one of them reaches the right client.
    """

    def __init__(self, bridge: StdioBridge, session_id: str, grant: str = "") -> None:
        self.bridge = bridge
        self.session_id = session_id
        self.grant = grant  # whose process this is (quotas: StdioBridge._refusal)
        self.name = bridge.config.name
        label = f"{self.name}[{session_id[:8]}]"
        self.child = Child(bridge.config, label, self._from_child, self._awaits)
        self.child.on_exit = self._child_exited
        self.child.on_start = self._replay_handshake
        self.in_flight: dict[Any, Pending] = {}
        #: The child's own requests passed to the client and not answered yet: each with the
        #: request whose stream carried it (None: the GET stream) and when (``_last_sign``).
        self.asking: dict[Any, tuple[Any, float]] = {}
        self.tokens: dict[Any, Any] = {}
        #: The session's initialize and notifications/initialized, the last of each: what a
        #: restarted child is told again (every copy was kept: 1 MiB a message, unbounded).
        self.handshake: dict[str, dict[str, Any]] = {}
        self.replaying: set[str] = set()
        #: Requests the child was sent that ended without its answer (cancelled, or past
        #: their deadline), and when: the child may answer yet, and a new request under the
        #: same id would take that answer (a late tools/list, unfiltered, as a call's result:
        #: red-team wave 64). Such an id is refused until the answer comes (it is dropped) or
        #: the process that had it exits. None is forgotten while its process lives: past
        #: ``MAX_ABANDONED`` the process is ended (and started again) instead. The oldest
        #: were forgotten, and an agent that cancelled 260 pings pushed a cancelled list's id
        #: out, then took its answer (red-team wave 68).
        self.abandoned: set[Any] = set()
        self.get_stream: Inbox | None = None
        self.events = EventLog()
        self.headers = [(b"mcp-session-id", session_id.encode())]
        self.serving = 0  # HTTP requests being answered (an open GET stream among them)
        self.last_used = time.monotonic()
        self.ended = anyio.Event()
        self.reaped = anyio.Event()  # its process is gone (``run`` has ended)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the child until the session ends (DELETE, eviction, idle), then stop it;
        counted among the bridge's running sessions until its process is reaped."""
        running = self.bridge.running
        running[self.session_id] = self
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.child.run)
                task_status.started()
                await self._until_idle()
                self.end()  # the group waits for the child to exit
        finally:
            self.end()
            try:
                await self.child.reap()  # cancelled (the bridge stops): no orphan, no zombie
            finally:
                running.pop(self.session_id, None)
                self.reaped.set()

    async def _until_idle(self) -> None:
        idle_timeout = self.bridge.config.idle_timeout
        while not self.ended.is_set():
            left = idle_timeout
            if not self.serving:
                left = self.last_used + idle_timeout - time.monotonic()
                if left <= 0:
                    log.info("stdio.session_idle", server=self.name, session=self.session_id)
                    return
            with anyio.move_on_after(left):
                await self.ended.wait()

    def end(self) -> None:
        """End the session: its process, and every stream still open on it. No await."""
        self.ended.set()
        self.child.stop()
        self.bridge.sessions.pop(self.session_id, None)
        for pending in self.in_flight.values():
            if pending.clock is not None:
                pending.clock.cancel()
            pending.inbox.close()
        self.in_flight.clear()
        if self.get_stream is not None:
            self.get_stream.close()
        self.events.clear()

    # --- HTTP, from the bridge

    async def handle(
        self,
        incoming: Incoming,
        send: Send,
        message: dict[str, Any] | None = None,
        body: bytes | None = None,
    ) -> None:
        """One HTTP request on this session (``message``: a POST's, already read)."""
        self.serving += 1
        try:
            if self.ended.is_set():
                await session_not_found(incoming, send, message)
            elif incoming.method == "POST":
                await self._post(incoming, send, message, body)
            elif incoming.method == "GET":
                await self._get(incoming, send)
            elif incoming.method == "DELETE":
                self.end()
                await reply(send, 200, b"", extra=self.headers)
            else:
                error = rpc_error(None, INVALID_REQUEST, "Method Not Allowed")
                await reply(send, 405, error, extra=[(b"allow", b"GET, POST, DELETE")])
        finally:
            self.serving -= 1
            self.last_used = time.monotonic()

    async def _post(
        self, incoming: Incoming, send: Send, message: dict[str, Any] | None, body: bytes | None
    ) -> None:
        if message is None:
            read = await read_post(incoming, send)
            if read is None:
                return
            message, body = read
        self.last_used = time.monotonic()
        method, msg_id = message.get("method"), message.get("id")
        if method is None or "id" not in message:  # a notification, or the client's answer
            await self._notify(message, body)  # with the child before the client goes on
            await reply(send, 202, b"", extra=self.headers)
            return
        if msg_id in self.in_flight or self._unanswered(msg_id):
            # The same id again while the first is under way (or the child may still answer
            # it): the child's one answer went to the later request, whatever asked first
            # (the gateway's own merged list's answer to a call that took its id, red-team
            # wave 63). The later one is refused.
            msg = "a request with this id is in progress, or ended before its answer came"
            error = rpc_error(msg_id, INVALID_REQUEST, msg)
            await reply(send, 400, error, extra=self.headers)
            return
        if method == "initialize":
            self.handshake.pop("notifications/initialized", None)  # a new handshake begins
            self.handshake["initialize"] = message
        pending = self._begin(msg_id, message)
        if not self.child.ready.is_set():
            await self.child.wait_ready(10.0)
        if self.in_flight.get(msg_id) is not pending:
            # Answered while it waited for the process ("exited before answering": the one
            # it would have gone to died), so never sent: it ran on the restarted process
            # after its client was told it had not, and its id was free again for another
            # request to take its late answer, a whole unfiltered list (red-team wave 66).
            pass
        elif await self.child.send(message):
            pending.heard = time.monotonic()  # the clock starts once the child has it
            pending.clock = Deadline(
                self.bridge.config.timeout, self._last_sign(msg_id), self._expire(msg_id)
            )
        else:
            self._answer(encode(unavailable(msg_id, f"stdio server {self.name!r} is not running")))
        version = incoming.header("mcp-protocol-version") or _offered(message)
        sse = accepts(incoming)[1]
        prime = version >= "2025-11-25"
        await self._respond(send, pending.stream, pending, sse, prime, prefers_sse(incoming))

    def _begin(self, msg_id: Any, message: dict[str, Any]) -> Pending:
        old = self.in_flight.pop(msg_id, None)
        if old is not None:  # the same id again: the earlier answer could not be told apart
            self._done(old)  # its token and its deadline too (each kept what it was sent)
        pending = self.in_flight[msg_id] = Pending(progress_token(message), msg_id)
        if pending.token is not None:
            self.tokens[pending.token] = msg_id
        return pending

    async def _respond(
        self, send: Send, key: Any, pending: Pending, sse: bool, prime: bool, now: bool = False
    ) -> None:
        pending.reading = True
        try:
            await respond(
                send,
                pending.inbox,
                sse=sse,
                headers=self.headers,
                priming=(lambda: self.events.priming(key)) if prime else (lambda: b""),
                framed=lambda body: self.events.framed(key, body),
                stream_now=now,
            )
        finally:
            pending.reading = False

    async def _get(self, incoming: Incoming, send: Send) -> None:
        if not accepts(incoming)[1]:
            msg = "Not Acceptable: Client must accept text/event-stream"
            await reply(send, 406, rpc_error(None, INVALID_REQUEST, msg))
            return
        last = incoming.header("last-event-id")
        if last is not None:
            await self._resume(last, send)
            return
        if self.get_stream is not None:
            msg = "Conflict: Only one SSE stream is allowed per session"
            await reply(send, 409, rpc_error(None, INVALID_REQUEST, msg))
            return
        await open_stream(send, self.headers)
        await self._serve_get(send)

    async def _serve_get(self, send: Send) -> None:
        inbox = self.get_stream = Inbox()
        try:
            while True:
                try:
                    item = await inbox.get()
                except anyio.EndOfStream:
                    break
                assert item is not None  # no time limit
                framed = self.events.framed(GET_STREAM, item[1])
                await send({"type": "http.response.body", "body": framed, "more_body": True})
        finally:
            if self.get_stream is inbox:
                self.get_stream = None
            inbox.close()
        await send({"type": "http.response.body", "body": b""})

    async def _resume(self, last: str, send: Send) -> None:
        """Replay a stream's events after ``last``; then go on with it if it is still live."""
        stream = self.events.stream_of(last)
        replay = list(self.events.after(last))
        pending = None
        if isinstance(stream, tuple) and len(stream) == 2:  # a request's (GET_STREAM has one)
            pending = self.in_flight.get(stream[0])
            if pending is not None and pending.stream != stream:
                pending = None  # a later request under the same id: not this stream's
        if stream is not None and stream != GET_STREAM and pending is None and not replay:
            # A request's stream that is over (answered, cancelled, or ended by the gateway
            # for silence) with nothing left to replay: 405 at once, as the relay answers
            # for a request that is over (forward.refuse_over). Held open, the TypeScript
            # client's stream ended later and it reported a broken connection (a plain GET,
            # 409 while its own was open; red-team wave 38).
            msg = "the request of this stream was cancelled or ended: nothing more will come"
            await reply(send, 405, rpc_error(None, INVALID_REQUEST, msg))
            return
        await open_stream(send, self.headers)
        for framed in replay:
            await send({"type": "http.response.body", "body": framed, "more_body": True})
        if stream == GET_STREAM and self.get_stream is None:
            await self._serve_get(send)
            return
        if pending is not None and not pending.reading:
            await self._respond(send, stream, pending, True, False)
            return
        if stream is not None and stream != GET_STREAM:
            # A request's stream that has ended, resumed: kept open (nothing more will come)
            # until the client leaves or the session ends, as the SDK's own server keeps it,
            # but for servers.X.timeout at most, as the relay ends every resumed stream that
            # is silent that long: each held a place of its agent's, and the TypeScript
            # client resumes the stream of every call it gives up on (red-team wave 37; the
            # relay refuses resuming a cancelled request's stream at once). That client
            # takes a stream that ended with an error (not a result) for one cut short and
            # resumes it; ended at once, it tried again, then a plain GET (409: its own was
            # open), then reported the connection lost.
            with anyio.move_on_after(self.bridge.config.timeout):
                await self.ended.wait()
        await send({"type": "http.response.body", "body": b""})

    # --- to the child

    async def _notify(self, message: dict[str, Any], body: bytes | None) -> None:
        method = message.get("method")
        if method is None:  # the client's answer to one of the child's requests
            self.asking.pop(message.get("id"), None)
        elif method == "notifications/initialized":
            self.handshake[method] = message
        elif method == "notifications/cancelled":
            self._end_cancelled(message)
        await self._to_child(message, body)

    async def _to_child(self, message: dict[str, Any], body: bytes | None) -> bool:
        """The message, written anew (never the client's bytes: a raw carriage return
        between JSON tokens is whitespace to the gateway's parser and a line break to the
        SDK's stdio reader, which then ran the ``tools/call`` smuggled between two)."""
        if not self.child.ready.is_set():
            await self.child.wait_ready(10.0)
        return await self.child.send(message)

    def _end_cancelled(self, message: dict[str, Any]) -> None:
        """The client cancelled a request of its own: its stream ends with no answer."""
        params = message.get("params")
        request_id = params.get("requestId") if isinstance(params, dict) else None
        pending = self.in_flight.pop(request_id, None) if request_id is not None else None
        if pending is not None:
            self._done(pending)
            self._abandon(request_id)

    def _abandon(self, msg_id: Any) -> None:
        """``msg_id`` ended without the child's answer, which may still come."""
        self.abandoned.add(msg_id)
        if len(self.abandoned) > MAX_ABANDONED:
            log.warning("stdio.too_many_abandoned", server=self.name, abandoned=MAX_ABANDONED)
            self.child.restart()  # its exit answers what is in flight, and clears the list

    def _unanswered(self, msg_id: Any) -> bool:
        """Whether ``msg_id`` ended without its answer (the child may answer yet)."""
        return msg_id in self.abandoned

    def _last_sign(self, msg_id: Any) -> Callable[[], float | None]:
        def last_sign() -> float | None:
            pending = self.in_flight.get(msg_id)
            if pending is None:
                return None
            # While the client is being asked on this request's stream, or on the session's
            # (a person may be answering), the clock stops; for ASK_SECONDS at most.
            now = time.monotonic()
            for carried, asked_at in self.asking.values():
                if carried in (None, msg_id) and now - asked_at < ASK_SECONDS:
                    return now
            return max(pending.heard, self.child.warm_at)

        return last_sign

    def _expire(self, msg_id: Any) -> Callable[[], Awaitable[None]]:
        async def expire() -> None:
            timeout = self.bridge.config.timeout
            await self.child.send(cancelled(msg_id, f"no answer within {timeout:g} s"))
            self._answer(encode(too_slow(self.name, timeout, msg_id)))
            self._abandon(msg_id)

        return expire

    # --- from the child

    def _awaits(self, msg_id: Any) -> bool:
        """Whether an answer with this id is awaited (a request in flight, a replay)."""
        if not keyable(msg_id):
            return False
        return msg_id in self.in_flight or msg_id in self.replaying

    async def _from_child(self, message: dict[str, Any], line: bytes) -> None:
        msg_id = message.get("id")
        if not keyable(msg_id) or not keyable(progress_token(message)):
            if self.child.junk.allow():
                method = printable(str(message.get("method"))[:100])
                log.warning("stdio.bad_id", server=self.name, method=method)
            return  # an id or a token no request of ours could have: nobody's message
        if "method" not in message:  # an answer
            if isinstance(msg_id, str) and msg_id in self.replaying:
                self.replaying.discard(msg_id)
                return
            if msg_id in self.abandoned:
                self.abandoned.discard(msg_id)
                return  # its request ended without it (cancelled, or too late): nobody's
            self._answer((message, line))
            return
        related = self._related(message)
        pending = self.in_flight.get(related)
        if pending is not None:
            pending.heard = time.monotonic()
            pending.inbox.put((message, line))
        elif self.get_stream is not None:
            related = None
            self.get_stream.put((message, line))
        else:  # asked of nobody: no clock stops for it (one stopped the session's for good)
            log.debug("stdio.no_stream", server=self.name, method=message.get("method"))
            return
        # Kept only while few and short: 300 questions of 1 MiB ids, never answered, were
        # 300 MiB held for the session's life (red-team wave 42).
        if msg_id is not None and len(self.asking) < MAX_ASKING and _short_id(msg_id):
            self.asking[msg_id] = (related, time.monotonic())

    def _related(self, message: dict[str, Any]) -> Any:
        token = progress_token(message)
        if token is not None and token in self.tokens:
            return self.tokens[token]
        method = str(message.get("method"))
        if method.startswith("notifications/") and method != "notifications/message":
            return None  # list changes, resource updates: the session's GET stream
        return next(reversed(self.in_flight), None)

    def _answer(self, item: Item) -> None:
        """The answer goes on its request's stream, which then ends (once only)."""
        msg_id = item[0].get("id")
        pending = self.in_flight.pop(msg_id, None)
        if pending is not None:  # else answered already (cancelled, expired, child died)
            pending.inbox.put(item, final=True)
            if not pending.reading and self.events.has_stream(pending.stream):
                # Its client left the stream (a dropped connection) and may resume it: what
                # was waiting for it, the answer last, goes to the stream's log for the
                # replay. It was lost, and the resumed stream told "nothing more will come"
                # of a call that had run (red-team wave 59).
                for waiting in pending.inbox.drain():
                    self.events.framed(pending.stream, waiting[1])
            self._done(pending)

    def _done(self, pending: Pending) -> None:
        if pending.token is not None:
            self.tokens.pop(pending.token, None)
        if pending.clock is not None:
            pending.clock.cancel()
        pending.inbox.close()

    async def _child_exited(self) -> None:
        why = f"stdio server {self.name!r} exited before answering; it is being restarted"
        for msg_id in list(self.in_flight):
            self._answer(encode(unavailable(msg_id, why)))
        self.tokens.clear()
        self.asking.clear()
        self.abandoned.clear()  # a new process answers none of the old one's requests

    async def _replay_handshake(self) -> None:
        """A restarted child gets the session's initialize again; its answer is swallowed."""
        if self.child.restarts == 0:
            return
        for message in list(self.handshake.values()):  # initialize first
            if "id" in message:
                message = {**message, "id": f"celgate-replay-{uuid.uuid4().hex}"}
                self.replaying.add(message["id"])
            await self.child.send(message)


def _offered(message: dict[str, Any]) -> str:
    """The protocol version an ``initialize`` offers ("" for any other request)."""
    params = message.get("params")
    version = params.get("protocolVersion") if isinstance(params, dict) else None
    return version if isinstance(version, str) else ""
