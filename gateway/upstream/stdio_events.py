"""Event stores: the handshake-era links' own (``EventLog``), and one for the SDK's transport.

``EventLog`` keeps the SSE events a session sent (as framed), so a client that lost a stream
resumes it with ``Last-Event-ID``; only streamed answers and the GET stream write to it (an
answer sent as JSON has no event to resume). ``MemoryEvents`` is the same idea behind the
SDK's ``EventStore`` interface, for servers run on the SDK's own transport (the test upstream).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Hashable, Iterator

import mcp_types as types
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore

from gateway.wire.sse import one_line

#: The reconnection delay a priming event asks for, in milliseconds.
RETRY_MS = 1000


#: What one session's log keeps for replay at most, and every log of the process together.
#: An event that would pass either is not kept (a resumed stream goes on without it), and a
#: log over them forgets its oldest first: a server (or an agent) making big events cannot
#: make the gateway hold them after they were sent.
MAX_LOG_BYTES = 8 * 1024 * 1024
MAX_ALL_LOG_BYTES = 128 * 1024 * 1024


class EventLog:
    """The last ``max_events`` SSE events of one session, each under the stream it was on,
    within ``MAX_LOG_BYTES`` (and ``MAX_ALL_LOG_BYTES`` for all logs)."""

    held_by_all = 0  # bytes kept by every log of the process

    def __init__(self, max_events: int = 2000, max_bytes: int = MAX_LOG_BYTES) -> None:
        self._events: OrderedDict[str, tuple[Hashable, bytes | None]] = OrderedDict()
        self._ids = itertools.count(1)
        self._max = max_events
        self._max_bytes = max_bytes
        self.held = 0
        self.ended = False  # cleared for good: nothing is kept after

    def _store(self, stream: Hashable, framed: bytes | None) -> str:
        event_id = str(next(self._ids))
        self._events[event_id] = (stream, framed)
        while len(self._events) > self._max:
            self._forget_oldest()
        return event_id

    def _keep(self, event_id: str, stream: Hashable, framed: bytes) -> None:
        """Keep ``framed`` for replay if it fits, forgetting this log's oldest to make room."""
        size = len(framed)
        if self.ended or size > self._max_bytes or size > MAX_ALL_LOG_BYTES:
            return
        while self._events and (
            self.held + size > self._max_bytes or EventLog.held_by_all + size > MAX_ALL_LOG_BYTES
        ):
            if next(iter(self._events)) == event_id:
                break  # only this event is left to forget: it is not kept
            self._forget_oldest()
        if self.held + size > self._max_bytes or EventLog.held_by_all + size > MAX_ALL_LOG_BYTES:
            return
        self._events[event_id] = (stream, framed)
        self.held += size
        EventLog.held_by_all += size

    def _forget_oldest(self) -> None:
        _, (_, framed) = self._events.popitem(last=False)
        if framed is not None:
            self.held -= len(framed)
            EventLog.held_by_all -= len(framed)

    def clear(self) -> None:
        """Forget every event (the session ended): their bytes go back to the process, and
        an answer framed after (a ``respond`` still under way) is not kept: its bytes were
        counted for the process and never given back."""
        self.ended = True
        EventLog.held_by_all -= self.held
        self.held = 0
        self._events.clear()

    def priming(self, stream: Hashable) -> bytes:
        """An event with an id and no data: a client can resume a stream cut before its
        first message."""
        event_id = self._store(stream, None)
        return f"id: {event_id}\nretry: {RETRY_MS}\ndata: \n\n".encode()

    def framed(self, stream: Hashable, body: bytes) -> bytes:
        """One message as an SSE event with an id of its own, kept for replay."""
        event_id = self._store(stream, None)
        framed = f"id: {event_id}\nevent: message\n".encode() + b"data: " + one_line(body) + b"\n\n"
        self._keep(event_id, stream, framed)
        return framed

    def has_stream(self, stream: Hashable) -> bool:
        """Whether an event of ``stream`` was sent (a client may resume it)."""
        return any(where == stream for where, _ in self._events.values())

    def stream_of(self, event_id: str) -> Hashable | None:
        entry = self._events.get(event_id)
        return None if entry is None else entry[0]

    def after(self, event_id: str) -> Iterator[bytes]:
        """The events of ``event_id``'s stream that came after it, in order."""
        stream = self.stream_of(event_id)
        if stream is None:  # not an id of ours (or long gone): nothing to replay
            return
        seen = False
        for each, (where, framed) in list(self._events.items()):
            if seen and where == stream and framed is not None:
                yield framed
            seen = seen or each == event_id


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
