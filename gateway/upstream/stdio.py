"""stdio upstreams: each stdio MCP server served as a Streamable HTTP endpoint in process.

A ``StdioBridge`` is a raw ASGI app inside the gateway process, bound to no socket: the relay
reaches it through an ``AsgiPool`` (``gateway.upstream.inproc``, the ``H1Pool`` interface) and
the aggregate through an httpx2 transport over the same pool, so it fronts a stdio server as
an ordinary Streamable HTTP upstream and policy stays at one choke point. The bridge does not
terminate MCP: JSON-RPC messages pass between HTTP and the child's stdin/stdout unchanged (the
SDK's ``StreamableHTTPServerTransport`` does the HTTP framing: SSE streams, session ids,
priming events, resumption).

How client sessions map onto processes (docs/stdio-and-aggregate.md):

* handshake era (``initialize``, ``Mcp-Session-Id``): one process per client session, at most
  ``max_processes`` per server, ended by DELETE or after ``idle_timeout`` without traffic.
  Server-to-client requests (elicitation, sampling, roots) can only belong to that session.
* 2026-07-28 era (stateless, each request carries its own envelope, and servers never send
  requests mid-call): one shared process per server; request ids and progress tokens are
  remapped so answers go back to the HTTP request that asked.

A child that exits is restarted with backoff (the session's ``initialize`` is replayed to the
new process); requests in flight get a JSON-RPC error at once. Children run in their own
process group and get SIGTERM when the gateway dies (``PR_SET_PDEATHSIG``); ``stop`` kills
every one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import json
import os
import signal
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import anyio
import httpx2
import mcp_types as types
import structlog
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.client.stdio import get_default_environment
from mcp.server.streamable_http import (
    EventCallback,
    EventMessage,
    EventStore,
    StreamableHTTPServerTransport,
)
from mcp.shared.inbound import (
    ERROR_CODE_HTTP_STATUS,
    InboundLadderRejection,
    classify_inbound_request,
)
from mcp.shared.message import ServerMessageMetadata, SessionMessage
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from gateway.config import ServerConfig
from gateway.upstream.http import HttpUpstream
from gateway.upstream.inproc import AsgiPool, AsgiTransport
from gateway.wire.asgi import Incoming, Receive, Scope, Send, reply
from gateway.wire.jsonrpc import (
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PROTOCOL_VERSION_META_KEY,
    SESSION_NOT_FOUND,
    UPSTREAM_UNAVAILABLE,
)
from gateway.wire.jsonrpc import error_body as rpc_error

log = structlog.get_logger("celgate.stdio")

LINE_LIMIT = 64 * 1024 * 1024  # one JSON-RPC message per line; images make long lines
BACKOFF_FIRST, BACKOFF_MAX, HEALTHY_AFTER = 0.2, 10.0, 30.0
KILL_GRACE = 2.0
STARTUP_GRACE = 30.0  # a cold start (imports) is not a request's silence; this long at most
# What the bridge is called in URLs and Host headers: a reserved name (RFC 2606) that no
# resolver answers, so nothing can reach a stdio server by it over a network.
BRIDGE_AUTHORITY = "stdio.invalid"
BRIDGE_URL = f"http://{BRIDGE_AUTHORITY}/mcp"
OnMessage = Callable[[dict[str, Any]], Awaitable[None]]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Child:
    """One supervised stdio process: JSON lines in and out, restarted with backoff."""

    def __init__(self, config: ServerConfig, label: str, on_message: OnMessage) -> None:
        self.config = config
        self.label = label
        self.on_message = on_message
        self.on_exit: Callable[[], Awaitable[None]] | None = None
        self.on_start: Callable[[], Awaitable[None]] | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.ready = anyio.Event()
        self.stopping = False
        self.restarts = 0
        # Supervision state: failed starts or exits in a row, the last one's cause, and when
        # the current process started. A streak is logged when it begins, when its cause
        # changes and when it ends (``stdio.recovered``), never once per attempt.
        self.failures = 0
        self.last_error: str | None = None
        self.started_at = 0.0
        # Silence counts against a request from here on: the child's first word since its
        # start, or STARTUP_GRACE after the start if it has said nothing yet.
        self.warm_at = 0.0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def _spawn(self) -> asyncio.subprocess.Process:
        assert self.config.command is not None
        env = {**get_default_environment(), **self.config.env}
        return await asyncio.create_subprocess_exec(
            self.config.command,
            *self.config.args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
            cwd=self.config.cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent,
            limit=LINE_LIMIT,
        )

    async def run(self) -> None:
        """Start the process and keep it running until ``stop``; never raises for a crash."""
        delay = BACKOFF_FIRST
        while not self.stopping:
            started = self.started_at = time.monotonic()
            self.warm_at = started + STARTUP_GRACE
            try:
                self.proc = await self._spawn()
            except OSError as exc:
                error = spawn_error(exc, self.config.command)
                self._failed("stdio.spawn_failed", error, started)
            else:
                level = log.debug if self.failures else log.info
                level("stdio.started", server=self.label, pid=self.proc.pid)
                if self.on_start is not None:
                    await self.on_start()
                self.ready.set()
                await self._read(self.proc)
                self.ready = anyio.Event()
                code = await self._reap(self.proc)
                if self.on_exit is not None:
                    await self.on_exit()
                if self.stopping:
                    return
                self._failed("stdio.exited", f"exited with code {code}", started, code=code)
            if time.monotonic() - started > HEALTHY_AFTER:
                delay = BACKOFF_FIRST
            if self.failures == 1:
                log.info("stdio.restarting", server=self.label, backoff=delay)
            await anyio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)
            self.restarts += 1

    def _failed(self, event: str, error: str, started: float, **fields: Any) -> None:
        """One more failed start or exit; logged when a streak begins or its cause changes."""
        if self.failures and time.monotonic() - started > HEALTHY_AFTER:
            self._recovered()  # it ran well for a while: this is a new streak
        self.failures += 1
        if self.failures == 1 or error != self.last_error:
            log.error(
                event,
                server=self.label,
                command=self.config.command,
                error=error,
                failures=self.failures,
                **fields,
            )
        self.last_error = error

    def _recovered(self) -> None:
        if self.failures:
            log.info("stdio.recovered", server=self.label, failures=self.failures)
        self.failures, self.last_error = 0, None

    def health(self) -> tuple[bool, str | None]:
        """Up while a process runs and is not in a streak of failures (one that has run well
        for ``HEALTHY_AFTER`` seconds ends its streak); else down, with the last cause."""
        proc = self.proc
        running = proc is not None and proc.returncode is None and self.ready.is_set()
        if running and self.failures and time.monotonic() - self.started_at > HEALTHY_AFTER:
            self._recovered()
        if running and not self.failures:
            return True, None
        return False, self.last_error or "not started yet"

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            try:
                line = await proc.stdout.readline()
            except (ValueError, OSError) as exc:  # a line over the limit, a broken pipe
                log.error("stdio.read_failed", server=self.label, error=str(exc))
                return
            if not line:
                return
            self.warm_at = min(self.warm_at, time.monotonic())
            if self.failures:
                self._recovered()  # it speaks: the streak is over
            try:
                message = json.loads(line)
            except ValueError:
                log.warning(
                    "stdio.not_json", server=self.label, line=line[:200].decode(errors="replace")
                )
                continue
            if isinstance(message, dict):
                await self.on_message(message)

    async def _reap(self, proc: asyncio.subprocess.Process) -> int | None:
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(KILL_GRACE):
                await proc.wait()
            if proc.returncode is None:
                _kill_group(proc)
            await proc.wait()
        return proc.returncode

    async def send(self, message: dict[str, Any]) -> bool:
        """Write one message; False when there is no live process to take it."""
        proc = self.proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            return False
        data = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        try:
            proc.stdin.write(data)
            await proc.stdin.drain()
        except (ConnectionError, OSError):
            return False
        return True

    async def wait_ready(self, within: float) -> bool:
        with anyio.move_on_after(within):
            await self.ready.wait()
            return True
        return False

    def stop(self) -> None:
        """Close stdin (a polite stdio server exits on EOF), then SIGTERM the group."""
        self.stopping = True
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)


def spawn_error(exc: OSError, command: str | None) -> str:
    """A start failure as an operator reads it: "No such file or directory: 'cmd'" (an exec
    that fails in the forked child reports no file name: the command is the one)."""
    text = exc.strerror or str(exc) or type(exc).__name__
    filename = exc.filename or command
    return f"{text}: {filename!r}" if filename else text


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _error(msg_id: Any, message: str) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": msg_id,
        "error": {"code": UPSTREAM_UNAVAILABLE, "message": message},
    }


def _too_slow(name: str, timeout: float, msg_id: Any) -> dict[str, Any]:
    return _error(msg_id, f"stdio server {name!r} did not answer within {timeout:g} s")


def _cancelled(inner: Any, reason: str) -> dict[str, Any]:
    params = {"requestId": inner, "reason": reason}
    return {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": params}


async def _deadline(
    within: float, last_sign: Callable[[], float | None], expire: Callable[[], Awaitable[None]]
) -> None:
    """Expire a request after ``within`` seconds without a sign of life from the child
    (``last_sign`` gives its time, or None once the request is answered)."""
    while (seen := last_sign()) is not None:
        left = seen + within - time.monotonic()
        if left <= 0:
            await expire()
            return
        await anyio.sleep(left)


def _progress_token(message: dict[str, Any]) -> Any:
    params = message.get("params")
    if not isinstance(params, dict):
        return None
    if message.get("method") == "notifications/progress":
        return params.get("progressToken")
    meta = params.get("_meta")
    return meta.get("progressToken") if isinstance(meta, dict) else None


class MemoryEvents(EventStore):
    """A bounded per-session event store, so SSE streams can resume with Last-Event-ID."""

    def __init__(self, max_events: int = 2000) -> None:
        self._events: OrderedDict[str, tuple[str, types.JSONRPCMessage | None]] = OrderedDict()
        self._ids = itertools.count(1)
        self._max = max_events

    async def store_event(self, stream_id: str, message: types.JSONRPCMessage | None) -> str:
        event_id = str(next(self._ids))
        self._events[event_id] = (stream_id, message)
        while len(self._events) > self._max:
            self._events.popitem(last=False)
        return event_id

    async def replay_events_after(
        self, last_event_id: str, send_callback: EventCallback
    ) -> str | None:
        if last_event_id not in self._events:
            return None
        stream_id = self._events[last_event_id][0]
        after = False
        for event_id, (sid, message) in list(self._events.items()):
            if after and sid == stream_id and message is not None:
                await send_callback(EventMessage(message, event_id))
            after = after or event_id == last_event_id
        return stream_id


class SessionLink:
    """One handshake-era client session and its own process.

    stdio carries no request correlation, so a message from the child is put on the stream
    of: its request (answers), the request that gave its progress token (progress), the most
    recent request still in flight (server-to-client requests, log messages), else the GET
    stream. With one process per session, every one of them reaches the right client.
    """

    def __init__(self, bridge: StdioBridge, session_id: str) -> None:
        self.bridge = bridge
        self.session_id = session_id
        config = bridge.config
        self.transport = StreamableHTTPServerTransport(
            session_id,
            event_store=MemoryEvents(),
            retry_interval=1000,
            idle_timeout=config.idle_timeout,
        )
        self.child = Child(config, f"{config.name}[{session_id[:8]}]", self._from_child)
        self.child.on_exit = self._child_exited
        self.child.on_start = self._replay_handshake
        self.in_flight: dict[Any, ServerMessageMetadata | None] = {}
        self.heard: dict[Any, float] = {}  # per request in flight: the child's last sign of life
        self.asking: set[Any] = set()  # the child's own requests the client has not answered
        self.tokens: dict[Any, Any] = {}
        self.handshake: list[dict[str, Any]] = []
        self.replaying: set[str] = set()
        self.write: Any = None
        self.tg: anyio.abc.TaskGroup | None = None
        self.last_used = time.monotonic()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            async with self.transport.connect() as (read, write), anyio.create_task_group() as tg:
                self.write = write
                tg.start_soon(self.child.run)
                scope = self.transport.idle_scope or anyio.CancelScope()
                # The requests' deadline watchers end with the session, not at their next
                # wake-up (up to ``timeout`` later, with the session still counted).
                async with anyio.create_task_group() as watchers:
                    self.tg = watchers
                    task_status.started()
                    with scope:
                        await self._pump(read)
                    watchers.cancel_scope.cancel()
                if scope.cancelled_caught:
                    log.info(
                        "stdio.session_idle",
                        server=self.bridge.config.name,
                        session=self.session_id,
                    )
                self.child.stop()
        finally:
            self.child.stop()
            self.bridge.sessions.pop(self.session_id, None)
            with anyio.CancelScope(shield=True):
                await self.transport.terminate()

    async def _pump(self, read: Any) -> None:
        try:
            async for item in read:
                if isinstance(item, SessionMessage):
                    await self._to_child(item)
        except (anyio.ClosedResourceError, anyio.EndOfStream):
            pass  # the session was terminated (DELETE)
        except Exception:  # one broken session must never take the bridge down
            log.exception("stdio.session_failed", server=self.bridge.config.name)

    async def _to_child(self, item: SessionMessage) -> None:
        self.last_used = time.monotonic()
        message = item.message.model_dump(by_alias=True, exclude_unset=True, mode="json")
        method, msg_id = message.get("method"), message.get("id")
        if method is not None and msg_id is not None:  # a request from the client
            self.in_flight[msg_id] = (
                item.metadata if isinstance(item.metadata, ServerMessageMetadata) else None
            )
            token = _progress_token(message)
            if token is not None:
                self.tokens[token] = msg_id
        elif method is None:  # the client's answer to one of the child's requests
            self.asking.discard(msg_id)
        if method in ("initialize", "notifications/initialized"):
            self.handshake.append(message)
        if method == "notifications/cancelled":
            await self._end_cancelled(message)
        if not self.child.ready.is_set():
            await self.child.wait_ready(10.0)
        sent = await self.child.send(message)
        if msg_id is None or method is None:
            return
        if not sent:
            self.in_flight.pop(msg_id, None)
            await self._answer(
                _error(msg_id, f"stdio server {self.bridge.config.name!r} is not running")
            )
        elif msg_id in self.in_flight:  # the clock starts once the child has the request
            self.heard[msg_id] = time.monotonic()
            assert self.tg is not None
            self.tg.start_soon(self._watch, msg_id)

    async def _watch(self, msg_id: Any) -> None:
        def last_sign() -> float | None:
            if msg_id not in self.in_flight:
                return None
            # While the client is being asked (a person may be answering), the clock stops.
            if self.asking:
                return time.monotonic()
            return max(self.heard.get(msg_id, 0.0), self.child.warm_at)

        async def expire() -> None:
            self.in_flight.pop(msg_id, None)
            timeout = self.bridge.config.timeout
            await self.child.send(_cancelled(msg_id, f"no answer within {timeout:g} s"))
            await self._answer(_too_slow(self.bridge.config.name, timeout, msg_id))

        await _deadline(self.bridge.config.timeout, last_sign, expire)

    async def _end_cancelled(self, message: dict[str, Any]) -> None:
        params = message.get("params") or {}
        meta = self.in_flight.pop(params.get("requestId"), None)
        if meta is not None and meta.on_request_unanswered is not None:
            await meta.on_request_unanswered()

    async def _from_child(self, message: dict[str, Any]) -> None:
        msg_id = message.get("id")
        if "method" not in message:  # an answer
            if isinstance(msg_id, str) and msg_id in self.replaying:
                self.replaying.discard(msg_id)
                return
            if msg_id not in self.in_flight:
                return  # answered already (cancelled, expired, or failed when the child died)
            self.in_flight.pop(msg_id, None)
            self.heard.pop(msg_id, None)
            await self._answer(message)
            return
        if msg_id is not None:
            self.asking.add(msg_id)
        related = self._related(message)
        if related in self.heard:
            self.heard[related] = time.monotonic()
        await self._send(message, related)

    def _related(self, message: dict[str, Any]) -> Any:
        token = _progress_token(message)
        if token is not None and token in self.tokens:
            return self.tokens[token]
        method = str(message.get("method"))
        if method.startswith("notifications/") and method != "notifications/message":
            return None  # list changes, resource updates: the session's GET stream
        return next(reversed(self.in_flight), None)

    async def _answer(self, message: dict[str, Any]) -> None:
        for token, owner in list(self.tokens.items()):
            if owner == message.get("id"):
                del self.tokens[token]
        await self._send(message, None)

    async def _send(self, message: dict[str, Any], related: Any) -> None:
        parsed = types.jsonrpc_message_adapter.validate_python(message, by_name=False)
        meta = ServerMessageMetadata(related_request_id=related) if related is not None else None
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            await self.write.send(SessionMessage(parsed, metadata=meta))

    async def _child_exited(self) -> None:
        name = self.bridge.config.name
        why = f"stdio server {name!r} exited before answering; it is being restarted"
        for msg_id in list(self.in_flight):
            self.in_flight.pop(msg_id, None)
            await self._send(_error(msg_id, why), None)
        self.tokens.clear()
        self.heard.clear()
        self.asking.clear()

    async def _replay_handshake(self) -> None:
        """A restarted child gets the session's initialize again; its answer is swallowed."""
        if self.child.restarts == 0:
            return
        for message in self.handshake:
            if "id" in message:
                message = {**message, "id": f"celgate-replay-{uuid.uuid4().hex}"}
                self.replaying.add(message["id"])
            await self.child.send(message)


class SharedLink:
    """The 2026-07-28 era: one process for every stateless request, ids remapped."""

    def __init__(self, config: ServerConfig) -> None:
        self.child = Child(config, f"{config.name}[shared]", self._from_child)
        self.child.on_exit = self._child_exited
        self.child.on_start = self._discover
        self.ids = itertools.count(1)
        self.waiting: dict[str, tuple[Any, Any, MemoryObjectSendStream[dict[str, Any]]]] = {}
        self.tokens: dict[str, str] = {}
        self.heard: dict[str, float] = {}
        self.name = config.name
        self.timeout = config.timeout

    async def handle(self, incoming: Incoming, send: Send, message: dict[str, Any]) -> None:
        if not self.child.ready.is_set() and not await self.child.wait_ready(10.0):
            await reply(
                send,
                502,
                rpc_error(message.get("id"), UPSTREAM_UNAVAILABLE, "stdio server is not running"),
            )
            return
        if message.get("method") in _HANDSHAKE_ONLY:
            # The shared child serves the stateless era: a handshake would switch its one
            # connection to the other era for every caller. The era has no such method.
            if "id" in message:
                error = rpc_error(message["id"], METHOD_NOT_FOUND, "Method not found")
                await reply(send, 404, error)
            else:
                await reply(send, 202, b"")
            return
        if "id" not in message or "method" not in message:
            await self._notify(message)
            await reply(send, 202, b"")
            return
        inner = f"c{next(self.ids)}"
        original_id = message["id"]
        outgoing = {**message, "id": inner}
        token = _progress_token(message)
        if token is not None:
            params = dict(message["params"])
            params["_meta"] = {**params["_meta"], "progressToken": inner}
            outgoing["params"] = params
            self.tokens[inner] = inner
        sender, receiver = anyio.create_memory_object_stream[dict[str, Any]](64)
        self.waiting[inner] = (original_id, token, sender)
        self.heard[inner] = time.monotonic()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_deadline, self.timeout, self._last_sign(inner), self._expire(inner))
                if not await self.child.send(outgoing):
                    await sender.send(_error(inner, f"stdio server {self.name!r} is not running"))
                cancel = self._cancel(inner, "the client went away")
                await _stream_answer(incoming, send, receiver, original_id, token, cancel)
                tg.cancel_scope.cancel()
        finally:
            self.waiting.pop(inner, None)
            self.tokens.pop(inner, None)
            self.heard.pop(inner, None)

    async def _discover(self) -> None:
        """A server on stdio takes its connection's era from the first message it reads: a
        caller's malformed first request must not set it for every caller after. So each
        (re)started child first hears a well-formed ``server/discover``; its answer, with an
        id no caller has, is dropped."""
        await self.child.send(
            {
                "jsonrpc": "2.0",
                "id": "celgate-discover",
                "method": "server/discover",
                "params": {
                    "_meta": {
                        PROTOCOL_VERSION_META_KEY: "2026-07-28",
                        "io.modelcontextprotocol/clientCapabilities": {},
                        "io.modelcontextprotocol/clientInfo": {
                            "name": "celgate",
                            "version": "stdio-shared",
                        },
                    }
                },
            }
        )

    async def _notify(self, message: dict[str, Any]) -> None:
        """A client notification (client answers never come here: no requests mid-call).

        ``notifications/cancelled`` names a request id of the sender's own; the ids the child
        knows are ours, and a notification's exchange has no request of its own to map one to.
        So it is dropped: a caller cancels by closing its request's stream (as the 2026 wire
        says), which cancels that request's own inner id (``_cancel``), never another's.
        """
        if message.get("method") == "notifications/cancelled":
            log.debug("stdio.cancel_dropped", server=self.name)
            return
        await self.child.send(message)

    def _cancel(self, inner: str, reason: str) -> Callable[[], Awaitable[None]]:
        async def cancel() -> None:
            if inner in self.waiting:
                await self.child.send(_cancelled(inner, reason))

        return cancel

    def _last_sign(self, inner: str) -> Callable[[], float | None]:
        def last_sign() -> float | None:
            heard = self.heard.get(inner)
            return None if heard is None else max(heard, self.child.warm_at)

        return last_sign

    def _expire(self, inner: str) -> Callable[[], Awaitable[None]]:
        async def expire() -> None:
            await self._cancel(inner, f"no answer within {self.timeout:g} s")()
            self.heard.pop(inner, None)
            entry = self.waiting.get(inner)
            if entry is not None:
                with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError):
                    entry[2].send_nowait(_too_slow(self.name, self.timeout, inner))

        return expire

    async def _from_child(self, message: dict[str, Any]) -> None:
        key = message.get("id") if "method" not in message else _progress_token(message)
        inner = str(key) if key is not None and str(key) in self.waiting else None
        if inner is None and "method" in message and len(self.waiting) == 1:
            inner = next(iter(self.waiting))  # a log line while one call runs
        if inner is None:
            return
        if inner in self.heard:
            self.heard[inner] = time.monotonic()
        with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError):
            self.waiting[inner][2].send_nowait(message)

    async def _child_exited(self) -> None:
        for inner, (_, _, sender) in list(self.waiting.items()):
            why = f"stdio server {self.name!r} exited before answering; it is being restarted"
            with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError):
                sender.send_nowait(_error(inner, why))


#: Methods of the handshake era only; never sent to the shared (stateless-era) child.
_HANDSHAKE_ONLY = frozenset({"initialize", "notifications/initialized"})


async def _stream_answer(
    incoming: Incoming,
    send: Send,
    receiver: MemoryObjectReceiveStream[dict[str, Any]],
    original_id: Any,
    token: Any,
    cancel: Callable[[], Awaitable[None]],
) -> None:
    """SSE when the client takes it (progress arrives as it happens), JSON otherwise. The
    stream opens at the first message that is not the answer: an answer that comes alone goes
    as JSON, an error with the status the stateless era's HTTP binding gives it."""
    sse = "text/event-stream" in (incoming.header("accept") or "")
    started = False
    finished = False
    try:
        async for message in receiver:
            final = "method" not in message
            if final:
                message = {**message, "id": original_id}
            elif token is not None and _progress_token(message) is not None:
                message = _with_token(message, token)
            body = json.dumps(message, ensure_ascii=False).encode()
            if final and not started:
                finished = True
                await reply(send, _answer_status(message), body)
                return
            if not sse:
                continue
            if not started:
                started = True
                headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
            event = b"event: message\ndata: " + body + b"\n\n"
            await send({"type": "http.response.body", "body": event, "more_body": not final})
            if final:
                finished = True
                return
    finally:
        if not finished:
            with anyio.CancelScope(shield=True):
                await cancel()


def _answer_status(message: dict[str, Any]) -> int:
    error = message.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    return ERROR_CODE_HTTP_STATUS.get(code, 200) if isinstance(code, int) else 200


def _with_token(message: dict[str, Any], token: Any) -> dict[str, Any]:
    params = dict(message["params"])
    if message.get("method") == "notifications/progress":
        params["progressToken"] = token
    else:
        params["_meta"] = {**params["_meta"], "progressToken": token}
    return {**message, "params": params}


class StdioBridge:
    """The Streamable HTTP endpoint of one stdio server: a raw ASGI app on no socket.

    Only code in the gateway process holding the bridge can call it (the relay and the
    aggregate, through ``StdioUpstream.pool``): no other local process, and no web page
    through DNS rebinding, has a port to reach. So it checks no secret and no ``Host``.
    """

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.sessions: dict[str, SessionLink] = {}
        self.shared = SharedLink(config)
        self._tg: anyio.abc.TaskGroup | None = None

    def pids(self) -> list[int]:
        children = [link.child for link in self.sessions.values()] + [self.shared.child]
        return [
            c.pid for c in children if c.pid is not None and c.proc and c.proc.returncode is None
        ]

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Hold the sessions' task group until cancelled; then end every child."""
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self.shared.child.run)
                log.info("stdio.bridge", server=self.config.name, listening=False)
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._tg = None
            with anyio.CancelScope(shield=True):
                await self._stop()

    async def _stop(self) -> None:
        children = [link.child for link in list(self.sessions.values())] + [self.shared.child]
        for child in children:
            child.stop()
        with anyio.move_on_after(KILL_GRACE):
            for child in children:
                if child.proc is not None:
                    await child.proc.wait()
        for child in children:
            if child.proc is not None and child.proc.returncode is None:
                _kill_group(child.proc)
        log.info("stdio.stopped", server=self.config.name, processes=len(children))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        incoming = Incoming(scope, receive)
        sid = incoming.header("mcp-session-id")
        if sid is not None:
            link = self.sessions.get(sid)
            if link is None:
                await reply(send, 404, rpc_error(None, SESSION_NOT_FOUND, "Session not found"))
                return
            await link.transport.handle_request(scope, receive, send)
            return
        version = incoming.header("mcp-protocol-version")
        if (
            incoming.method == "POST"
            and version is not None
            and version not in HANDSHAKE_PROTOCOL_VERSIONS
        ):
            await self._modern(incoming, send)
            return
        if incoming.method != "POST":
            msg = "Bad Request: Mcp-Session-Id is required"
            await reply(send, 400, rpc_error(None, INVALID_REQUEST, msg))
            return
        await self._open_session(scope, receive, send)

    async def _modern(self, incoming: Incoming, send: Send) -> None:
        body = await incoming.body(LINE_LIMIT)
        try:
            message = json.loads(body or b"")
        except ValueError:
            message = None
        if not isinstance(message, dict):
            await reply(
                send, 400, rpc_error(None, INVALID_REQUEST, "one JSON-RPC message per request")
            )
            return
        if "id" in message and "method" in message:
            # What the SDK's HTTP transport checks before a request reaches a server, which a
            # stdio child cannot: the envelope, the routing headers, the version.
            verdict = classify_inbound_request(message, headers=incoming.headers)
            if isinstance(verdict, InboundLadderRejection):
                error = rpc_error(message["id"], verdict.code, verdict.message, verdict.data)
                await reply(send, ERROR_CODE_HTTP_STATUS.get(verdict.code, 400), error)
                return
        await self.shared.handle(incoming, send, message)

    async def _evict_idle(self) -> None:
        """At the cap, the least recently used session with no call in flight gives way."""
        idle = [link for link in self.sessions.values() if not link.in_flight]
        if not idle:
            return
        victim = min(idle, key=lambda link: link.last_used)
        self.sessions.pop(victim.session_id, None)
        log.info("stdio.session_evicted", server=self.config.name, session=victim.session_id)
        victim.child.stop()
        await victim.transport.terminate()

    async def _open_session(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A request without a session: only ``initialize`` opens one (and a process)."""
        if len(self.sessions) >= self.config.max_processes:
            await self._evict_idle()
        if len(self.sessions) >= self.config.max_processes:
            msg = (
                f"stdio server {self.config.name!r} is at max_processes={self.config.max_processes}"
            )
            log.warning(
                "stdio.at_capacity",
                server=self.config.name,
                max_processes=self.config.max_processes,
            )
            await reply(send, 503, rpc_error(None, UPSTREAM_UNAVAILABLE, msg))
            return
        if self._tg is None:  # not running (yet, or any more)
            msg = f"stdio server {self.config.name!r} is not running"
            await reply(send, 503, rpc_error(None, UPSTREAM_UNAVAILABLE, msg))
            return
        link = SessionLink(self, uuid.uuid4().hex)
        self.sessions[link.session_id] = link
        await self._tg.start(link.run)
        status: list[int] = []

        async def watch(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
            await send(message)

        try:
            await link.transport.handle_request(scope, receive, watch)
        finally:
            if not status or status[0] >= 400:  # nothing was opened: no session, no process
                link.child.stop()
                with anyio.CancelScope(shield=True):
                    await link.transport.terminate()


#: How much later than the bridge's own deadline the in-process head deadline fires.
BRIDGE_DEADLINE_SLACK = 2.0


class StdioUpstream(HttpUpstream):
    """The relay's view of a stdio server: an HTTP upstream whose pool is its bridge, called
    in process (``BRIDGE_URL`` names it, but no socket serves it)."""

    def __init__(self, config: ServerConfig) -> None:
        super().__init__(replace(config, url=BRIDGE_URL, headers={}))
        self.bridge = StdioBridge(config)
        pool = AsgiPool(
            self.bridge,
            f"stdio server {config.name!r}",
            authority=BRIDGE_AUTHORITY,
            # The bridge keeps each request's deadline itself (and says which request and how
            # long); the head deadline is the backstop behind it, so it comes a little later.
            head_timeout=config.timeout + BRIDGE_DEADLINE_SLACK,
        )
        self.pool = pool
        self.transport = AsgiTransport(pool)

    def sdk_client(self) -> httpx2.AsyncClient:
        """An httpx2 client for the SDK's ``streamable_http_client(self.url, ...)``: it reaches
        the bridge in process (its timeouts are the pool's, not httpx2's)."""
        return httpx2.AsyncClient(transport=self.transport, headers=self.headers)

    async def probe(self, wait: float = 2.0) -> bool:
        """Up while its shared process runs: a command that cannot start, or one that keeps
        exiting, is down with the cause (the child logs it; the probe does not again)."""
        up, error = self.bridge.shared.child.health()
        return self.report(up, error, quiet=True)

    def target(self) -> dict[str, str]:
        return {"transport": "stdio", "command": self.bridge.config.command or ""}

    def health_view(self) -> dict[str, Any]:
        child = self.bridge.shared.child
        return {**super().health_view(), "failures": child.failures, "restarts": child.restarts}

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the bridge until cancelled (a task of the gateway-wide task group); then
        cancel the requests still running on it."""
        try:
            await self.bridge.run(task_status=task_status)
        finally:
            self.pool.close()


@asynccontextmanager
async def running_bridges(upstreams: Mapping[str, HttpUpstream]) -> AsyncIterator[None]:
    """Serve every stdio upstream's bridge for the life of the block (one task group)."""
    async with anyio.create_task_group() as tg:
        for upstream in upstreams.values():
            if isinstance(upstream, StdioUpstream):
                await tg.start(upstream.run)
        try:
            yield
        finally:
            tg.cancel_scope.cancel()
