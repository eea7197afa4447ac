"""When a reading that callers prompt (a server's lists, its ``initialize``) may run again.

Callers name what is missing (a URI no server is known to have, a server not learned yet),
and what they name is theirs to make up: each made-up name re-read every server. A gate runs
one reading at a time, none within ``first`` seconds of the last, and doubles that interval
(up to ``most``) while readings learn nothing new.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

#: The interval after a reading that learned something, and the longest one.
FIRST_SECONDS = 10.0
MOST_SECONDS = 320.0


class Gate:
    __slots__ = ("clock", "every", "first", "last", "most", "running")

    def __init__(
        self,
        first: float = FIRST_SECONDS,
        most: float = MOST_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.first = first
        self.most = most
        self.clock = clock
        self.every = first
        self.last = float("-inf")
        self.running: asyncio.Future[bool] | None = None

    def start(self, read: Callable[[], Awaitable[bool]]) -> asyncio.Future[bool] | None:
        """The reading under way, or a new one (``read``, which says whether it learned
        anything) when one is due; None when none is."""
        if self.running is not None:
            return self.running
        if self.clock() - self.last < self.every:
            return None
        self.last = self.clock()
        running = self.running = asyncio.ensure_future(read())
        running.add_done_callback(self._ended)
        return running

    def _ended(self, done: asyncio.Future[bool]) -> None:
        self.running = None
        learned = not done.cancelled() and done.exception() is None and done.result()
        self.every = self.first if learned else min(self.every * 2, self.most)
