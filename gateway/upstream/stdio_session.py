"""The handshake era on stdio: one process per client session (``SessionLink``).

Server-to-client requests (elicitation, sampling, roots) can only belong to that session. A
restarted child gets the session's ``initialize`` replayed; requests in flight when it exits
get a JSON-RPC error at once.
"""

from __future__ import annotations

import contextlib
import itertools
import time
import uuid
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import anyio
import mcp_types as types
from anyio.abc import TaskStatus
from mcp.server.streamable_http import (
    EventCallback,
    EventMessage,
    EventStore,
    StreamableHTTPServerTransport,
)
from mcp.shared.message import ServerMessageMetadata, SessionMessage

from gateway.upstream.stdio_child import Child, log
from gateway.upstream.stdio_messages import (
    cancelled,
    deadline,
    progress_token,
    too_slow,
    unavailable,
)

if TYPE_CHECKING:
    from gateway.upstream.stdio import StdioBridge


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
            token = progress_token(message)
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
                unavailable(msg_id, f"stdio server {self.bridge.config.name!r} is not running")
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
            await self.child.send(cancelled(msg_id, f"no answer within {timeout:g} s"))
            await self._answer(too_slow(self.bridge.config.name, timeout, msg_id))

        await deadline(self.bridge.config.timeout, last_sign, expire)

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
        token = progress_token(message)
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
            await self._send(unavailable(msg_id, why), None)
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
