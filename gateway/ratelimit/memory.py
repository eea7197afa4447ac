"""Token buckets in this process's memory: the embedded default, exact for one replica only.

There is no ``await`` between reading and writing a bucket, so the whole check-and-take runs
synchronously on the event loop and no lock is needed. Full buckets carry no information (a
missing bucket *is* a full one), so they are dropped: on access, and by a sweep at most once
per ``sweep_interval`` seconds, which keeps the dict bounded by the buckets that are actually
draining. Past ``MAX_BUCKETS`` draining ones (sessions without end, say), the tenth that will
be full soonest is let go (logged ``limits.memory_full``): memory stays bounded, and each of
those keys has its whole budget again at once, early by as little as any held bucket is (a
caller who makes 200,000 buckets of its own can so refill one it drained: use Valkey for
limits that must hold against that).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Sequence

import structlog

from gateway.ratelimit.base import (
    EPSILON,
    Bucket,
    BucketState,
    LimitResult,
    admission,
    check_cost,
    refill,
    refusal,
    state,
    unique,
)

Clock = Callable[[], float]
log = structlog.get_logger("celgate.ratelimit")

#: Draining buckets held at most (about 300 bytes each, with its key).
MAX_BUCKETS = 200_000

# Per key: [tokens, stamp, full_at, max, window]. A list, not a dataclass: this is the hot path
# and list indexing is the cheapest mutable record in CPython.
_TOKENS, _STAMP, _FULL_AT, _MAX, _WINDOW = range(5)


class MemoryRateLimiter:
    """In-process token buckets with an injectable clock (``time.monotonic`` by default)."""

    def __init__(
        self,
        clock: Clock | None = None,
        *,
        sweep_interval: float = 1.0,
        max_buckets: int = MAX_BUCKETS,
    ) -> None:
        self._clock: Clock = clock or time.monotonic
        self._buckets: dict[str, list[float]] = {}
        self._sweep_interval = sweep_interval
        self._next_sweep = self._clock() + sweep_interval
        self._max_buckets = max_buckets

    def __len__(self) -> int:
        """Buckets currently held (full ones may linger until the next sweep)."""
        return len(self._buckets)

    async def acquire(self, buckets: Sequence[Bucket], cost: int = 1) -> LimitResult:
        """Take ``cost`` from every bucket or from none; see :meth:`acquire_now`."""
        return self.acquire_now(buckets, cost)

    def acquire_now(self, buckets: Sequence[Bucket], cost: int = 1) -> LimitResult:
        """The synchronous check-and-take (usable where no event loop runs)."""
        check_cost(cost)
        now = self._clock()
        if now >= self._next_sweep:
            self.sweep(now)
        if len(buckets) == 1:  # the common case, kept lean: this is the per-call hot path
            return self._acquire_one(buckets[0], cost, now)
        return self._acquire_many(unique(buckets), cost, now)

    def _acquire_one(self, bucket: Bucket, cost: int, now: float) -> LimitResult:
        level = self._level(bucket, now)
        if level + EPSILON < cost:
            return refusal((bucket,), (level,), cost)
        left = level - cost if level > cost else 0.0
        self._store(bucket, left, now)
        return admission((state(bucket, left),))

    def _acquire_many(self, buckets: Sequence[Bucket], cost: int, now: float) -> LimitResult:
        levels = [self._level(b, now) for b in buckets]
        for level in levels:
            if level + EPSILON < cost:
                return refusal(buckets, levels, cost)
        states = []
        for bucket, level in zip(buckets, levels, strict=True):
            left = level - cost if level > cost else 0.0
            self._store(bucket, left, now)
            states.append(state(bucket, left))
        return admission(tuple(states))

    async def peek(self, buckets: Sequence[Bucket]) -> tuple[BucketState, ...]:
        """Current tokens of each bucket; nothing is taken."""
        now = self._clock()
        return tuple(state(b, self._level(b, now)) for b in buckets)

    async def scan(self, prefix: str = "") -> list[tuple[str, float]]:
        """Draining buckets whose key starts with ``prefix``, sorted by key."""
        now = self._clock()
        self.sweep(now)
        return sorted(
            (key, refill(e[_TOKENS], now - e[_STAMP], int(e[_MAX]), e[_WINDOW]))
            for key, e in self._buckets.items()
            if key.startswith(prefix)
        )

    async def reset(self, keys: Sequence[str]) -> int:
        """Refill these buckets: a bucket that is not stored is full."""
        return sum(self._buckets.pop(key, None) is not None for key in set(keys))

    async def close(self) -> None:
        """Forget every bucket."""
        self._buckets.clear()

    def sweep(self, now: float | None = None) -> int:
        """Drop every bucket that has refilled to full; returns how many were dropped."""
        now = self._clock() if now is None else now
        full = [key for key, e in self._buckets.items() if e[_FULL_AT] <= now]
        for key in full:
            del self._buckets[key]
        self._next_sweep = now + self._sweep_interval
        return len(full)

    def _level(self, bucket: Bucket, now: float) -> float:
        """Tokens in ``bucket`` now (``refill``, inlined); a full bucket is dropped on the way."""
        entry = self._buckets.get(bucket.key)
        if entry is None:
            return float(bucket.max)
        level, elapsed = entry[_TOKENS], now - entry[_STAMP]
        if elapsed > 0:
            level += elapsed * bucket.max / bucket.window
        if level >= bucket.max:
            del self._buckets[bucket.key]
            return float(bucket.max)
        return level

    def _store(self, bucket: Bucket, tokens: float, now: float) -> None:
        """Record ``tokens`` at ``now`` with the instant the bucket will be full again."""
        full_at = now + (bucket.max - tokens) * bucket.window / bucket.max
        buckets = self._buckets
        if len(buckets) >= self._max_buckets and bucket.key not in buckets:
            self._make_room(now)
        buckets[bucket.key] = [tokens, now, full_at, bucket.max, bucket.window]

    def _make_room(self, now: float) -> None:
        """At the cap: full buckets go, then (if that was not enough) the tenth of the rest
        that will be full soonest (one pass, so the next ones come at no cost)."""
        count = max(1, self._max_buckets // 10)
        short = count - self.sweep(now)
        if short <= 0:
            return
        buckets = self._buckets
        soonest = heapq.nsmallest(short, buckets.items(), key=lambda item: item[1][_FULL_AT])
        for key, _ in soonest:
            del buckets[key]
        log.warning("limits.memory_full", held=len(buckets), let_go=len(soonest))
