"""Live decisions for the console: the decision log's recent records, handed to subscribers.

``DecisionFeed`` takes the place of ``DecisionLog.recent`` (a bounded deque): every record
appended is also pushed to each subscriber's own bounded buffer. A subscriber that falls
behind loses its oldest records and is told how many (``dropped``), so a slow page never holds
memory or slows the relay. At most ``MAX_STREAMS`` subscribers at once; a page that stops
reading altogether (a closed laptop) is cut after ``WRITE_SECONDS`` of a write that cannot go
out (``StalledWrites``), so it gives its place back.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import anyio
from litestar.types import Message, Send

from gateway.pipeline.gateway import Gateway
from gateway.policy.secrets import mask_args, secret_paths

BUFFER = 256  # records one subscriber may have waiting
MAX_STREAMS = 8
FEED_PATH = "/console/events"
#: The scope key under which a live stream's place is kept: (feed, subscriber).
FEED_PLACE = "celgate.feed_place"
#: How long one write to a live stream may wait for its reader before the stream is cut.
WRITE_SECONDS = 10.0
Record = dict[str, Any]
Clock = Callable[[], float]


class StalledWrites:
    """The ``send`` of one live stream, each write bounded by ``seconds``; ``stalled`` once
    one was not taken in time (the stream is then ended by the error the write raises)."""

    def __init__(self, send: Send, seconds: float = WRITE_SECONDS) -> None:
        self.send = send
        self.seconds = seconds
        self.stalled = False

    async def __call__(self, message: Message) -> None:
        with anyio.move_on_after(self.seconds):
            await self.send(message)
            return
        self.stalled = True
        raise ConnectionError("the reader of a live stream stopped reading")


#: A subscriber that has not come for its records for this long (a stream that never started,
#: or one stuck writing) gives its place to a new one when every place is taken.
STALE_SECONDS = 60.0


class Subscriber:
    def __init__(self, now: float, limit: int = BUFFER) -> None:
        self.buffer: deque[Record] = deque(maxlen=limit)
        self.dropped = 0
        self.event = anyio.Event()
        self.seen = now  # when it last came for its records
        self.gone = False  # its place was given to another: its stream ends
        #: The records before it, taken as it subscribed (sent first, then let go).
        self.backlog: list[Record] = []

    def push(self, record: Record) -> None:
        if len(self.buffer) == self.buffer.maxlen:
            self.dropped += 1
        self.buffer.append(record)
        self.event.set()

    async def take(self, within: float) -> tuple[list[Record], int]:
        """What arrived (waiting up to ``within`` seconds for something), and how many were
        dropped since the last take."""
        if not self.buffer:
            with anyio.move_on_after(within):
                await self.event.wait()
        self.event = anyio.Event()
        items, dropped = list(self.buffer), self.dropped
        self.buffer.clear()
        self.dropped = 0
        return items, dropped

    def came(self, now: float) -> None:
        self.seen = now


class DecisionFeed(deque[Record]):
    """A bounded deque of records that also feeds subscribers."""

    def __init__(
        self, items: Iterable[Record], maxlen: int | None, clock: Clock = time.monotonic
    ) -> None:
        super().__init__(items, maxlen)
        self.subscribers: set[Subscriber] = set()
        self.clock = clock

    def append(self, record: Record) -> None:
        super().append(record)
        for subscriber in list(self.subscribers):
            subscriber.push(record)

    def subscribe(self) -> Subscriber | None:
        """A new subscriber, or None when ``MAX_STREAMS`` are listening (those that have not
        come for their records in ``STALE_SECONDS`` are let go first)."""
        now = self.clock()
        if len(self.subscribers) >= MAX_STREAMS:
            for stale in [s for s in self.subscribers if now - s.seen > STALE_SECONDS]:
                stale.gone = True
                stale.event.set()
                self.subscribers.discard(stale)
        if len(self.subscribers) >= MAX_STREAMS:
            return None
        subscriber = Subscriber(now)
        self.subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        subscriber.gone = True  # its stream, if it ever goes on, ends
        subscriber.event.set()
        self.subscribers.discard(subscriber)


def install_feed(gateway: Gateway) -> DecisionFeed:
    """Put a feed in place of the decision log's recent records (once)."""
    recent = gateway.decisions.recent
    if isinstance(recent, DecisionFeed):
        return recent
    feed = DecisionFeed(recent, recent.maxlen)
    gateway.decisions.recent = feed
    return feed


def matches(record: Mapping[str, Any], filters: Mapping[str, str]) -> bool:
    """``filters``: grant, tool (``tool`` or ``server/tool``) and effect, each exact."""
    for name, wanted in filters.items():
        if name == "tool":
            if wanted not in (record.get("tool"), f"{record.get('server')}/{record.get('tool')}"):
                return False
        elif record.get(name) != wanted:
            return False
    return True


def masked(gateway: Gateway, record: Record) -> Record:
    """A record as operators see it: logged arguments (``log_arguments``) with the fields any
    matching entry marks secret masked."""
    if "args" not in record:
        return record
    paths = secret_paths(gateway.policy, record.get("server"), str(record.get("tool", "")))
    return {**record, "args": mask_args(record["args"], paths)} if paths else record
