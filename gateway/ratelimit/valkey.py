"""Token buckets in Valkey: exact across every gateway replica that shares the server.

All buckets of one call are checked and taken by one ``EVALSHA`` of ``token_bucket.lua``, on
the server's clock, so replicas whose clocks disagree still share one notion of time. The
script is loaded on first use and again whenever the server answers NOSCRIPT (it forgets
scripts on restart or SCRIPT FLUSH).

When Valkey cannot be reached, ``acquire`` never raises: each bucket's ``failure_mode`` decides
(see :func:`gateway.ratelimit.base.backend_failure`). Timeouts are short so a dead server
costs a call at most about half a second, and the pool reconnects by itself once the server
is back. ``peek`` and ``scan`` serve operators, not calls, and raise ``BackendUnavailable``.

``acquire`` is on every limited call's path, so it has a lean lane of its own (:class:`_Lane`):
valkey-py's ``Connection`` objects (connect, AUTH, SELECT, TLS, the reply parser, ``libvalkey``
when installed) kept in a plain list, the command framed once, and one deadline for the whole
exchange. valkey-py's own pool probes each connection for stray bytes on every checkout (a task
per command) and arms a timer per read; on the benchmark that was about half of the time of an
acquire. Operator commands keep using the client and its pool.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence
from importlib.resources import files
from typing import Any

import structlog
from valkey.asyncio import BlockingConnectionPool, ConnectionPool, Valkey
from valkey.asyncio.connection import AbstractConnection
from valkey.asyncio.retry import Retry
from valkey.backoff import NoBackoff
from valkey.exceptions import ConnectionError as ValkeyConnectionError
from valkey.exceptions import NoScriptError, ResponseError, ValkeyError

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

DEFAULT_PREFIX = "celgate:rl:"
SCRIPT = files("gateway.ratelimit").joinpath("token_bucket.lua").read_text(encoding="utf-8")
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode("utf-8")).hexdigest()
_MGET_CHUNK = 500
# Busy-poll budget per acquire (seconds); see _Lane. ``limits.busy_poll_us`` in the config.
DEFAULT_BUSY_POLL = 0.0003
_COMMAND_CACHE = 4096
_WATCH_STEPS = 4  # deadline checks per timeout
_REPROBE = 32  # while polling does not pay, one exchange in this many still polls

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
        self._lane = _Lane(url, timeout, max_connections, pool_wait, busy_poll)
        # The same buckets make the same command: framed once (keys are per grant/agent/...).
        self._commands: dict[tuple[Any, ...], bytes] = {}

    async def acquire(self, buckets: Sequence[Bucket], cost: int = 1) -> LimitResult:
        """Take ``cost`` from every bucket or from none, in one round trip."""
        check_cost(cost)
        buckets = unique(buckets)
        if not buckets:
            return LimitResult(True, ())
        try:
            admitted, levels = await self._run(buckets, cost, "take")
        except (ValkeyError, OSError) as exc:
            log.warning("ratelimit.backend_error", error=type(exc).__name__, detail=str(exc))
            return backend_failure(buckets)
        if not admitted:
            return refusal(buckets, levels, cost)
        return admission(tuple(map(state, buckets, levels)))

    async def peek(self, buckets: Sequence[Bucket]) -> tuple[BucketState, ...]:
        """Current tokens of each bucket; the script runs read-only."""
        if not buckets:
            return ()
        try:
            _, levels = await self._run(buckets, 1, "peek")
        except (ValkeyError, OSError) as exc:
            raise BackendUnavailable(f"valkey: {type(exc).__name__}") from exc
        return tuple(map(state, buckets, levels))

    async def scan(self, prefix: str = "") -> list[tuple[str, float]]:
        """Draining buckets whose key starts with ``prefix`` (unprefixed), sorted by key."""
        try:
            return await self._scan(prefix)
        except (ValkeyError, OSError) as exc:
            raise BackendUnavailable(f"valkey: {type(exc).__name__}") from exc

    async def load(self) -> None:
        """Load the script now (optional warm-up; ``acquire`` also loads it on demand)."""
        sha = await self._client.script_load(SCRIPT)
        if sha != SCRIPT_SHA:  # would mean the server hashes differently: fail loudly
            raise BackendUnavailable(f"valkey: script sha {sha} != {SCRIPT_SHA}")

    async def close(self) -> None:
        """Close the client, its pool and the acquire lane."""
        await self._lane.close()
        await self._client.aclose()

    async def _run(
        self, buckets: Sequence[Bucket], cost: int, mode: str
    ) -> tuple[bool, list[float]]:
        """One EVALSHA for all buckets; loads the script and retries once on NOSCRIPT."""
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
        try:
            reply = await self._lane.execute(command)
        except NoScriptError:
            await self.load()
            reply = await self._lane.execute(command)
        return reply[0] == 1, [float(x) for x in reply[1:]]

    async def _scan(self, prefix: str) -> list[tuple[str, float]]:
        match = _glob_escape(self._prefix + prefix) + "*"
        keys: list[bytes] = [k async for k in self._client.scan_iter(match=match, count=1000)]
        sec, usec = await self._client.time()
        now_ms = sec * 1000 + usec / 1000
        found: list[tuple[str, float]] = []
        for start in range(0, len(keys), _MGET_CHUNK):
            chunk = keys[start : start + _MGET_CHUNK]
            values = await self._client.mget(chunk)
            for key, value in zip(chunk, values, strict=True):
                if value is not None:  # expired between SCAN and MGET
                    found.append((key.decode()[len(self._prefix) :], _level(value, now_ms)))
        return sorted(found)


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
    """
    return BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_wait,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1),
        retry_on_error=[ValkeyConnectionError],
    )


def resp_command(parts: Sequence[Any]) -> bytes:
    """One command in RESP framing: an array of bulk strings."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Lane:
    """Connections for ``acquire``: reused while healthy, dropped at the first sign of trouble.

    At most ``max_connections`` exchanges at once; a call that finds them all busy waits up to
    ``pool_wait`` (queueing in a burst, not an outage). Each exchange gets one deadline,
    ``timeout``, for connecting, sending and reading. A connection that fails, times out or is
    cancelled mid-exchange is disconnected, never reused (its reply could still arrive). A
    reused connection that turns out to be dead (the server restarted) is replaced once, at
    once; a retry after the script ran but before its reply arrived would take twice, which
    errs on the strict side. Deadlines are kept by one watchdog timer (see ``_watch``).

    Busy polling: while an exchange is in flight, the event loop is kept polling (a callback
    that re-schedules itself, so the loop's wait for I/O has a zero timeout) for up to
    ``busy_poll`` seconds instead of going to sleep. Other work on the loop runs as usual. On
    the 2-core VMs this was measured on, a process that sleeps for a loopback round trip takes
    about 90 µs to wake up, several times the round trip itself, and the wake-up also costs
    CPU; polling for the answer was both faster and about as cheap. It applies while polled
    exchanges have recently finished within the budget (a moving average of their times); once
    they do not (a distant or slow server), only one exchange in ``_REPROBE`` polls, to notice
    when the server is fast again. ``busy_poll=0`` turns it off.
    """

    def __init__(
        self,
        url: str,
        timeout: float,
        max_connections: int,
        pool_wait: float,
        busy_poll: float = 0.0,
    ) -> None:
        # The pool is only the factory: it turns the URL (host, db, user, password, TLS) into
        # connections. Per-read timeouts are off; the lane sets one deadline per exchange.
        self._factory = ConnectionPool.from_url(
            url, socket_timeout=None, socket_connect_timeout=timeout
        )
        self._timeout = timeout
        self._pool_wait = pool_wait
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[AbstractConnection] = []
        self._busy_poll = busy_poll
        self._recent = 0.0  # moving average of polled exchanges' times, seconds
        self._exchanges = 0
        self._inflight = 0
        self._spin_until = 0.0
        self._spinning = False
        self._deadlines: dict[asyncio.Task[Any], float] = {}
        self._expired: dict[asyncio.Task[Any], bool] = {}
        self._watchdog: asyncio.TimerHandle | None = None

    async def execute(self, command: bytes) -> Any:
        if self._slots.locked():
            async with asyncio.timeout(self._pool_wait):
                await self._slots.acquire()
        else:
            await self._slots.acquire()
        try:
            if self._idle:
                conn = self._idle.pop()
                try:
                    return await self._exchange(conn, command)
                except (ValkeyConnectionError, ConnectionError):
                    pass  # a stale connection: try once more on a fresh one
            fresh = self._factory.make_connection()  # type: ignore[no-untyped-call]
            return await self._exchange(fresh, command)
        finally:
            self._slots.release()

    async def _exchange(self, conn: AbstractConnection, command: bytes) -> Any:
        started = time.perf_counter()
        self._inflight += 1
        self._exchanges += 1
        polled = bool(self._busy_poll) and (
            self._recent < self._busy_poll or self._exchanges % _REPROBE == 0
        )
        task = asyncio.current_task()
        assert task is not None
        self._deadlines[task] = started + self._timeout
        if self._watchdog is None:
            self._arm_watchdog()
        try:
            if not conn.is_connected:
                await conn.connect()  # type: ignore[no-untyped-call]
            await conn.send_packed_command(command, check_health=False)
            if polled:
                self._start_polling(started)
            reply = await conn.read_response()
        except ResponseError:  # an error reply (NOSCRIPT...): the connection is fine
            self._idle.append(conn)
            raise
        except asyncio.CancelledError:
            await conn.disconnect(nowait=True)
            if self._expired.pop(task, False) and task.uncancel() == 0:
                raise TimeoutError(f"valkey did not answer within {self._timeout} s") from None
            raise
        except BaseException:  # not handled here: drop the connection (a reply may follow) and
            await conn.disconnect(nowait=True)  # re-raise; acquire() turns it into failure_mode
            raise
        finally:
            self._inflight -= 1
            self._deadlines.pop(task, None)
            self._expired.pop(task, None)
        self._idle.append(conn)
        if polled:
            took = time.perf_counter() - started
            self._recent = took if not self._recent else 0.9 * self._recent + 0.1 * took
        return reply

    def _arm_watchdog(self) -> None:
        loop = asyncio.get_running_loop()
        self._watchdog = loop.call_later(self._timeout / _WATCH_STEPS, self._watch)

    def _watch(self) -> None:
        """Cancel the exchanges past their deadline; re-arm while any are in flight.

        One timer for all exchanges, every ``timeout / _WATCH_STEPS`` seconds, instead of a
        timeout context made and left per exchange (``asyncio.timeout``: about 10 µs each,
        measured in a loop on this machine). A deadline is thus kept to within a quarter of it.
        """
        self._watchdog = None
        now = time.perf_counter()
        for task, deadline in list(self._deadlines.items()):
            if deadline <= now and task not in self._expired:
                self._expired[task] = True
                task.cancel("valkey deadline")
        if self._deadlines:
            self._arm_watchdog()

    def _start_polling(self, now: float) -> None:
        self._spin_until = now + self._busy_poll
        if not self._spinning:
            self._spinning = True
            loop = asyncio.get_running_loop()
            loop.call_soon(self._poll, loop)

    def _poll(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._inflight and time.perf_counter() < self._spin_until:
            loop.call_soon(self._poll, loop)
        else:
            self._spinning = False

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.disconnect(nowait=True)
        await self._factory.disconnect()


def _level(value: bytes, now_ms: float) -> float:
    """Tokens now of a stored "<tokens> <stamp_ms> <max> <window_ms>" value."""
    tokens, stamp, max_, window = value.split()[:4]
    return refill(float(tokens), (now_ms - float(stamp)) / 1000, int(max_), float(window) / 1000)


def _glob_escape(text: str) -> str:
    """Escape SCAN MATCH metacharacters so a prefix matches literally."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
