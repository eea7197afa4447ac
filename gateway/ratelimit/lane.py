"""The Valkey limiter's hot path: lean RESP connections for ``acquire`` and ``peek``.

Every limited call waits for one ``EVALSHA``, so this path is kept to what that needs: an
``asyncio.Protocol`` per connection that feeds the bytes it receives to libvalkey's C reply
parser and wakes the one waiting exchange (``gateway.ratelimit.resp``); connections opened as
the ``valkey`` client would open them (``gateway.ratelimit.endpoint``) and kept in a plain
list; one deadline per exchange, kept by a single watchdog timer; optional bounded busy polling.

Measured on the 2-core VMs this project runs on, valkey-py's own connection (a stream reader,
a pool that probes each connection for stray bytes on checkout, a timer per read) cost 10-20 µs
more per exchange than this, on an exchange of 100-150 µs; ``benchmarks/bench_limiter.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from valkey.exceptions import ConnectionError as ValkeyConnectionError

from gateway.ratelimit.endpoint import Endpoint, connect
from gateway.ratelimit.resp import Wire, check

_WATCH_STEPS = 4  # deadline checks per timeout
_REPROBE = 32  # while polling does not pay, one exchange in this many still polls
_KEEP = 0.9  # weight of the past in the share of polled replies that came within budget


class BusyPoll:
    """Whether the next exchange polls for its reply, from how the polled ones went.

    Polling pays when the reply comes within the budget: the loop spun and caught it. When
    it comes later, the spin was wasted and the process slept anyway. So this keeps the share
    of polled replies that arrived within the budget (weighted to the recent ones) and polls
    while at least half of them did. One slow reply (a cold start, a server pause) costs a
    tenth of the share, not the polling; a server that is slow for good turns it off after
    seven misses in a row. Then one exchange in ``_REPROBE`` still polls, and the first of
    those probes whose reply comes within the budget turns polling back on.
    """

    __slots__ = ("budget", "exchanges", "polled", "share")

    def __init__(self, budget: float) -> None:
        self.budget = budget  # seconds; 0 never polls
        self.share = 1.0
        self.exchanges = 0
        self.polled = 0

    def wanted(self) -> bool:
        """Called once per exchange, as it starts."""
        self.exchanges += 1
        if self.budget and (self.share >= 0.5 or self.exchanges % _REPROBE == 0):
            self.polled += 1
            return True
        return False

    def record(self, took: float) -> None:
        """How long a polled exchange waited for its reply."""
        if took > self.budget:
            self.share *= _KEEP
        elif self.share < 0.5:
            self.share = 0.5  # a probe came back in time: the server is fast again
        else:
            self.share = _KEEP * self.share + (1 - _KEEP)


class Lane:
    """Connections for ``acquire``: reused while healthy, dropped at the first sign of trouble.

    At most ``max_connections`` exchanges at once; a call that finds them all busy waits up to
    ``pool_wait`` (queueing in a burst, not an outage). Each exchange gets one deadline,
    ``timeout``, for connecting, sending and reading. A connection that fails, times out or is
    cancelled mid-exchange is closed, never reused (its reply could still arrive). A reused
    connection that turns out to be dead (the server restarted) is replaced once, at once; a
    retry after the script ran but before its reply arrived would take twice, which errs on the
    strict side. Deadlines are kept by one watchdog timer (see ``_watch``).

    Busy polling: while an exchange is in flight, the event loop is kept polling (a callback
    that re-schedules itself, so the loop's wait for I/O has a zero timeout) for up to
    ``busy_poll`` seconds instead of going to sleep. Other work on the loop runs as usual. On
    the 2-core VMs this was measured on, a process that sleeps for a loopback round trip takes
    about 90 µs to wake up, several times the round trip itself, and the wake-up also costs
    CPU; polling for the answer was both faster and about as cheap when calls come back to
    back. When they are spread out (one agent, a call every few ms), both processes' vCPUs halt
    in between and the reply is slow whether or not the loop polls (the guest scheduler may
    even put the server on the polling vCPU); ``BusyPoll`` then turns polling off, as the paced
    rows of ``bench_limiter.py`` show. It applies while polled replies keep arriving within the
    budget (:class:`BusyPoll`). ``busy_poll=0`` turns it off.
    """

    def __init__(
        self,
        url: str,
        timeout: float,
        max_connections: int,
        pool_wait: float,
        busy_poll: float = 0.0,
    ) -> None:
        self._endpoint = Endpoint.from_url(url)
        self._timeout = timeout
        self._pool_wait = pool_wait
        self._free = max_connections  # exchange slots not in use
        self._queue: deque[asyncio.Future[None]] = deque()  # callers waiting for a slot
        self._idle: list[Wire] = []
        self.polling = BusyPoll(busy_poll)
        self._inflight = 0
        self._spin_until = 0.0
        self._spinning = False
        self._deadlines: dict[asyncio.Task[Any], float] = {}
        self._expired: dict[asyncio.Task[Any], bool] = {}
        self._watchdog: asyncio.TimerHandle | None = None

    async def execute(self, command: bytes) -> Any:
        """Send one command and return its reply; error replies are raised (``check``).

        Everything between taking a connection and writing the command, and between the
        reply and returning it, is on every limited call's path, so it is kept inline and
        short: the deadline and the poller are set up after the write, while the server works.
        """
        if self._free:
            self._free -= 1
        else:
            await self._wait_for_slot()
        wire = None
        while self._idle:
            wire = self._idle.pop()
            if not wire.closed:
                break  # else the server closed it while it was idle
            wire = None
        reused = wire is not None
        task = asyncio.current_task()
        assert task is not None
        try:
            while True:
                if wire is None:
                    self._set_deadline(task, time.perf_counter())
                    wire = await connect(self._endpoint)
                try:
                    pending = wire.send(command)
                    started = time.perf_counter()
                    self._inflight += 1
                    polled = self.polling.wanted()
                    if polled:
                        self._start_polling(started)
                    self._set_deadline(task, started)
                    try:
                        reply = await pending
                    finally:
                        self._inflight -= 1
                except ValkeyConnectionError:
                    if not reused:
                        raise
                    wire.close()  # a stale connection: once more on a fresh one
                    wire, reused = None, False
                    continue
                self._idle.append(wire)
                if polled:
                    self.polling.record(wire.arrived - started)
                return check(reply)
        except BaseException as exc:  # cleanup, then re-raised: close the connection (its
            if wire is not None:  # reply may still come); acquire() applies failure_mode
                wire.close()
            expired = isinstance(exc, asyncio.CancelledError) and self._expired.pop(task, False)
            if expired and task.uncancel() == 0:  # our deadline, not the caller's cancel
                raise TimeoutError(f"valkey did not answer within {self._timeout} s") from None
            raise
        finally:
            self._deadlines.pop(task, None)
            self._expired.pop(task, None)
            self._release()

    async def _wait_for_slot(self) -> None:
        """Queue for a slot (first come, first served) for up to ``pool_wait`` seconds."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(waiter)
        try:
            async with asyncio.timeout(self._pool_wait):
                await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed a slot just as it gave up: pass it on
            raise

    def _release(self) -> None:
        """Give a slot back: to the first caller still waiting, else to the free count."""
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1

    def _set_deadline(self, task: asyncio.Task[Any], now: float) -> None:
        self._deadlines[task] = now + self._timeout
        if self._watchdog is None:
            self._arm_watchdog()

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
        self._spin_until = now + self.polling.budget
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
        for wire in idle:
            wire.close()
