"""Token buckets in Valkey: exact across every gateway replica that shares the server.

All buckets of one call are checked and taken by one ``EVALSHA`` of ``token_bucket.lua``, on
the server's clock, so replicas whose clocks disagree still share one notion of time. The
script is loaded on first use and again whenever the server answers NOSCRIPT (it forgets
scripts on restart or SCRIPT FLUSH).

When Valkey cannot be reached, ``acquire`` never raises: each bucket's ``failure_mode`` decides
(see :func:`gateway.ratelimit.base.backend_failure`). Timeouts are short so a dead server
costs a call at most about half a second, and the pool reconnects by itself once the server
is back. ``peek`` and ``scan`` serve operators, not calls, and raise ``BackendUnavailable``.

``acquire`` is on every limited call's path, so it has a lean lane of its own
(:class:`gateway.ratelimit.lane.Lane`): connections that parse replies with libvalkey, the
command framed once per bucket shape, one deadline per exchange. Operator commands (``peek``'s
neighbours ``scan`` and ``load``) use the ``valkey`` package's pooled async client.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from importlib.resources import files
from typing import Any

import structlog
from valkey.asyncio import BlockingConnectionPool, Valkey
from valkey.asyncio.retry import Retry
from valkey.backoff import NoBackoff
from valkey.exceptions import ConnectionError as ValkeyConnectionError
from valkey.exceptions import NoScriptError, ValkeyError

from gateway.errors import BackendUnavailable
from gateway.ratelimit.base import (
    Bucket,
    BucketState,
    LimitResult,
    admission,
    backend_failure,
    check_cost,
    refill,
    refusal,
    state,
    unique,
)
from gateway.ratelimit.endpoint import client_defaults
from gateway.ratelimit.lane import Lane
from gateway.ratelimit.resp import resp_command

DEFAULT_PREFIX = "celgate:rl:"
SCRIPT = files("gateway.ratelimit").joinpath("token_bucket.lua").read_text(encoding="utf-8")
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode("utf-8")).hexdigest()
_CHUNK = 500  # keys per MGET or DEL
# Busy-poll budget per acquire (seconds); see lane.Lane. ``limits.busy_poll_us`` in the config.
DEFAULT_BUSY_POLL = 0.0003
_COMMAND_CACHE = 4096

log = structlog.get_logger(__name__)


class ValkeyRateLimiter:
    """Token buckets shared through Valkey; one pooled client per limiter, never per call."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = 0.5,
        max_connections: int = 64,
        pool_wait: float = 5.0,
        busy_poll: float = DEFAULT_BUSY_POLL,
    ) -> None:
        self._prefix = prefix
        pool = _make_pool(url, timeout, max_connections, pool_wait)
        self._client: Valkey = Valkey.from_pool(pool)
        self._lane = Lane(url, timeout, max_connections, pool_wait, busy_poll)
        # The same buckets make the same command: framed once (keys are per grant/agent/...).
        self._commands: dict[tuple[Any, ...], bytes] = {}
        self._outage = Outage()

    async def acquire(self, buckets: Sequence[Bucket], cost: int = 1) -> LimitResult:
        """Take ``cost`` from every bucket or from none, in one round trip.

        On every limited call's path, so the exchange is awaited directly (no helper
        coroutine in between) and the command comes from the cache.
        """
        check_cost(cost)
        buckets = unique(buckets)
        if not buckets:
            return LimitResult(True, ())
        command = self._command(buckets, cost, "take")
        try:
            try:
                reply = await self._lane.execute(command)
            except NoScriptError:
                reply = await self._reload_and_execute(command)
        except (ValkeyError, OSError) as exc:
            self._outage.failed(exc)
            return backend_failure(buckets)
        if self._outage.since is not None:
            self._outage.recovered()
        levels = [float(x) for x in reply[1:]]
        if reply[0] != 1:
            return refusal(buckets, levels, cost)
        return admission(tuple(map(state, buckets, levels)))

    async def peek(self, buckets: Sequence[Bucket]) -> tuple[BucketState, ...]:
        """Current tokens of each bucket; the script runs read-only."""
        if not buckets:
            return ()
        command = self._command(buckets, 1, "peek")
        try:
            try:
                reply = await self._lane.execute(command)
            except NoScriptError:
                reply = await self._reload_and_execute(command)
        except (ValkeyError, OSError) as exc:
            raise BackendUnavailable(f"valkey: {type(exc).__name__}") from exc
        return tuple(map(state, buckets, [float(x) for x in reply[1:]]))

    async def scan(self, prefix: str = "") -> list[tuple[str, float]]:
        """Draining buckets whose key starts with ``prefix`` (unprefixed), sorted by key."""
        try:
            return await self._scan(prefix)
        except (ValkeyError, OSError) as exc:
            raise BackendUnavailable(f"valkey: {type(exc).__name__}") from exc

    async def reset(self, keys: Sequence[str]) -> int:
        """Refill these buckets: delete their keys (a full bucket is not stored)."""
        names = sorted({self._prefix + key for key in keys})
        try:
            removed = 0
            for start in range(0, len(names), _CHUNK):
                removed += await self._client.delete(*names[start : start + _CHUNK])
        except (ValkeyError, OSError) as exc:
            raise BackendUnavailable(f"valkey: {type(exc).__name__}") from exc
        return removed

    async def load(self) -> None:
        """Load the script now (optional warm-up; ``acquire`` also loads it on demand)."""
        sha = await self._client.script_load(SCRIPT)
        if sha != SCRIPT_SHA:  # would mean the server hashes differently: fail loudly
            raise BackendUnavailable(f"valkey: script sha {sha} != {SCRIPT_SHA}")

    async def close(self) -> None:
        """Close the client, its pool and the acquire lane."""
        await self._lane.close()
        await self._client.aclose()

    def _command(self, buckets: Sequence[Bucket], cost: int, mode: str) -> bytes:
        """The EVALSHA for these buckets, framed once per shape and then reused."""
        if len(buckets) == 1:
            b = buckets[0]
            shape: tuple[Any, ...] = (cost, mode, b.key, b.max, b.window)
        else:
            shape = (cost, mode, *((b.key, b.max, b.window) for b in buckets))
        command = self._commands.get(shape)
        if command is None:
            parts: list[Any] = ["EVALSHA", SCRIPT_SHA, len(buckets)]
            parts += [self._prefix + b.key for b in buckets]
            parts += (cost, mode)
            for b in buckets:
                parts += (b.max, repr(b.window * 1000.0))
            command = resp_command(parts)
            if len(self._commands) >= _COMMAND_CACHE:
                self._commands.clear()
            self._commands[shape] = command
        return command

    async def _reload_and_execute(self, command: bytes) -> Any:
        """The server forgot the script (a restart, SCRIPT FLUSH): load it, then once more."""
        await self.load()
        return await self._lane.execute(command)

    async def _scan(self, prefix: str) -> list[tuple[str, float]]:
        match = _glob_escape(self._prefix + prefix) + "*"
        keys: list[bytes] = [k async for k in self._client.scan_iter(match=match, count=1000)]
        sec, usec = await self._client.time()
        now_ms = sec * 1000 + usec / 1000
        found: list[tuple[str, float]] = []
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start : start + _CHUNK]
            values = await self._client.mget(chunk)
            for key, value in zip(chunk, values, strict=True):
                if value is not None:  # expired between SCAN and MGET
                    found.append((key.decode()[len(self._prefix) :], _level(value, now_ms)))
        return sorted(found)


class Outage:
    """Logs a Valkey outage as it starts, while it lasts and when it ends, not once per call:
    during an outage every limited call fails the same way, and each decision record already
    says so (``backend_error``). ``clock`` and ``logger`` are injectable for tests."""

    REMIND = 30.0  # seconds between "still down" records

    def __init__(self, clock: Callable[[], float] = time.monotonic, logger: Any = None) -> None:
        self.clock = clock
        self.log = logger or log
        self.since: float | None = None  # when the current outage began
        self.calls = 0  # calls that failed in it
        self._reminded = 0.0
        self._last_error = ""

    def failed(self, exc: BaseException) -> None:
        now = self.clock()
        error, detail = type(exc).__name__, str(exc)
        self.calls += 1
        if self.since is None:
            self.since = self._reminded = now
            self._last_error = error
            self.log.error("ratelimit.backend_down", error=error, detail=detail)
        elif now - self._reminded >= self.REMIND or error != self._last_error:
            self._reminded = now
            self._last_error = error
            self.log.error(
                "ratelimit.backend_still_down",
                error=error,
                detail=detail,
                down_s=round(now - self.since, 1),
                failed_calls=self.calls,
            )

    def recovered(self) -> None:
        assert self.since is not None
        self.log.warning(
            "ratelimit.backend_recovered",
            down_s=round(self.clock() - self.since, 1),
            failed_calls=self.calls,
        )
        self.since = None
        self.calls = 0


def _make_pool(
    url: str, timeout: float, max_connections: int, pool_wait: float
) -> BlockingConnectionPool:
    """A bounded pool with short timeouts and one immediate retry on a broken connection.

    The retry is what lets the limiter recover by itself after a restart: the first command
    on each stale pooled connection fails, the connection is dropped, and the retry opens a
    fresh one. Timeouts are not retried (that would double the wait on a hung server). A retry
    after the server ran the script but before its reply arrived would take twice, which errs
    on the strict side.

    Waiting for a free pooled connection (``pool_wait``) is queueing behind other calls of a
    burst, not an outage: it gets seconds, while a silent server gets ``timeout``.

    Over TLS the server's name is checked against its certificate unless the URL says
    ``ssl_check_hostname=false`` (the ``valkey`` package alone would not check it).
    """
    return BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_wait,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1),
        retry_on_error=[ValkeyConnectionError],
        **client_defaults(url),
    )


def _level(value: bytes, now_ms: float) -> float:
    """Tokens now of a stored "<tokens> <stamp_ms> <max> <window_ms>" value."""
    tokens, stamp, max_, window = value.split()[:4]
    return refill(float(tokens), (now_ms - float(stamp)) / 1000, int(max_), float(window) / 1000)


def _glob_escape(text: str) -> str:
    """Escape SCAN MATCH metacharacters so a prefix matches literally."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
