"""The rate-limiter contract and the token-bucket arithmetic both backends share.

A call takes ``cost`` tokens from every bucket it falls under, atomically: from all of them or
from none. A bucket holds at most ``max`` tokens (the burst) and refills continuously at
``max / window`` tokens a second. The in-memory limiter runs this arithmetic in Python; the
Valkey limiter runs the same arithmetic in Lua (``token_bucket.lua``) on the server's clock, so
the pure helpers here are also the reference the contract tests hold both to.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

Scope = Literal["grant", "agent", "session", "tool", "global"]
FailureMode = Literal["closed", "open"]

# Refill arithmetic on doubles can land a hair below a whole token (1/rate*rate < 1); without
# this slack a caller that waits exactly `retry_after` could be refused again. The Lua script
# uses the same constant.
EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class Bucket:
    """One bucket a call takes from; ``key`` is its full identity, built by the caller."""

    counter: str
    key: str
    max: int
    window: float
    failure_mode: FailureMode = "closed"

    def __post_init__(self) -> None:
        # A zero max or window would divide by zero deep inside a backend; refuse it here.
        if self.max < 1:
            raise ValueError(f"bucket {self.key!r}: max must be >= 1, got {self.max}")
        if not self.window > 0:
            raise ValueError(f"bucket {self.key!r}: window must be > 0, got {self.window}")


@dataclass(frozen=True, slots=True)
class BucketState:
    """A bucket's tokens at one instant (after the operation that produced it)."""

    counter: str
    key: str
    max: int
    window: float
    remaining: float


@dataclass(frozen=True, slots=True)
class LimitResult:
    """The outcome of one ``acquire``.

    ``retry_after`` is set only on a refusal the bucket can ever satisfy (None when
    ``cost > max``, or when the backend is down). ``states`` is empty when the backend could
    not be asked.
    """

    admitted: bool
    states: tuple[BucketState, ...]
    refused_by: str | None = None
    retry_after: float | None = None
    backend_error: bool = False
    failed_open: bool = False


class RateLimiter(Protocol):
    """What the edge calls; the in-memory and the Valkey limiter behave identically."""

    async def acquire(self, buckets: Sequence[Bucket], cost: int = 1) -> LimitResult:
        """Take ``cost`` tokens from every bucket, or from none if any is short."""
        ...

    async def peek(self, buckets: Sequence[Bucket]) -> tuple[BucketState, ...]:
        """Current tokens of each bucket, changing nothing."""
        ...

    async def scan(self, prefix: str = "") -> list[tuple[str, float]]:
        """Existing (not full) bucket keys starting with ``prefix`` and their tokens."""
        ...

    async def reset(self, keys: Sequence[str]) -> int:
        """Refill these buckets at once (an operator's remedy); how many were not full."""
        ...

    async def close(self) -> None:
        """Release connections; the limiter is unusable afterwards."""
        ...


def refill(tokens: float, elapsed: float, max_: int, window: float) -> float:
    """Tokens after ``elapsed`` seconds of continuous refill, capped at ``max_``."""
    if elapsed <= 0:
        return tokens
    return min(float(max_), tokens + elapsed * max_ / window)


def seconds_to_full(tokens: float, max_: int, window: float) -> float:
    """How long until a bucket at ``tokens`` is full again (when its state may be dropped)."""
    return (max_ - tokens) * window / max_


def wait_for(level: float, cost: int, max_: int, window: float) -> float | None:
    """Seconds until ``level`` reaches ``cost``; None when the bucket can never hold it."""
    if cost > max_:
        return None
    return max(0.0, cost - level) * window / max_


def check_cost(cost: int) -> None:
    """Reject a non-positive cost: a zero-cost acquire is a ``peek``, a negative one a bug."""
    if cost < 1:
        raise ValueError(f"cost must be >= 1, got {cost}")


def unique(buckets: Sequence[Bucket]) -> Sequence[Bucket]:
    """Drop repeated keys (first wins) so one call never takes twice from one bucket."""
    if len(buckets) < 2:
        return buckets
    seen: dict[str, Bucket] = {}
    for bucket in buckets:
        seen.setdefault(bucket.key, bucket)
    return tuple(seen.values()) if len(seen) < len(buckets) else buckets


# Building a frozen dataclass goes through object.__setattr__ once per field, which is most of
# the cost of an in-memory acquire (~2 of ~3.5 µs). The two results built on every admitted
# call are instead filled through their slot descriptors, as the generated __init__ would; the
# objects are indistinguishable (same class, same fields, still frozen afterwards).
def _slot_setters(cls: type, names: Sequence[str]) -> tuple[Callable[[object, Any], None], ...]:
    return tuple(getattr(cls, name).__set__ for name in names)


_new = object.__new__
_S_COUNTER, _S_KEY, _S_MAX, _S_WINDOW, _S_REMAINING = _slot_setters(
    BucketState, ("counter", "key", "max", "window", "remaining")
)
_R_FIELDS = _slot_setters(
    LimitResult,
    ("admitted", "states", "refused_by", "retry_after", "backend_error", "failed_open"),
)
_R_ADMITTED, _R_STATES, _R_REFUSED_BY, _R_RETRY_AFTER, _R_BACKEND_ERROR, _R_FAILED_OPEN = _R_FIELDS


def state(bucket: Bucket, remaining: float) -> BucketState:
    """The public state of ``bucket`` holding ``remaining`` tokens (fast path, see above)."""
    obj: BucketState = _new(BucketState)
    _S_COUNTER(obj, bucket.counter)
    _S_KEY(obj, bucket.key)
    _S_MAX(obj, bucket.max)
    _S_WINDOW(obj, bucket.window)
    _S_REMAINING(obj, remaining)
    return obj


def admission(states: tuple[BucketState, ...]) -> LimitResult:
    """An admission with ``states`` (fast path, see above)."""
    obj: LimitResult = _new(LimitResult)
    _R_ADMITTED(obj, True)
    _R_STATES(obj, states)
    _R_REFUSED_BY(obj, None)
    _R_RETRY_AFTER(obj, None)
    _R_BACKEND_ERROR(obj, False)
    _R_FAILED_OPEN(obj, False)
    return obj


def refusal(buckets: Sequence[Bucket], levels: Sequence[float], cost: int) -> LimitResult:
    """A refusal: names the first short bucket, waits for the slowest one to refill."""
    short = [i for i, level in enumerate(levels) if level + EPSILON < cost]
    waits = [wait_for(levels[i], cost, buckets[i].max, buckets[i].window) for i in short]
    retry = None if any(w is None for w in waits) else max(w for w in waits if w is not None)
    return LimitResult(
        admitted=False,
        states=tuple(state(b, lvl) for b, lvl in zip(buckets, levels, strict=True)),
        refused_by=buckets[short[0]].counter,
        retry_after=retry,
    )


def backend_failure(buckets: Sequence[Bucket]) -> LimitResult:
    """The result when the backend cannot be asked: each bucket's failure_mode decides.

    The call goes through only if every bucket says ``open``; the first ``closed`` bucket is
    named as the one that refused, so the denial can say which limit could not be checked.
    """
    closed = next((b.counter for b in buckets if b.failure_mode == "closed"), None)
    admitted = closed is None
    return LimitResult(
        admitted=admitted,
        states=(),
        refused_by=closed,
        retry_after=None,
        backend_error=True,
        failed_open=admitted,
    )
