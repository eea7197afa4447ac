"""Turns of the event loop for readers whose data may all be there already.

A read from a stream whose buffer holds data returns at once, without letting any other task
run: a peer that floods one (an upstream's SSE stream, a stdio child's stdout or stderr)
held every other caller's calls, and the gateway's own health checks, for seconds.
"""

from __future__ import annotations

import asyncio

#: A reader gives the loop a turn after this many pieces (chunks, lines), or this long, at most.
FAIR_CHUNKS = 16
FAIR_SECONDS = 0.005


class Turns:
    """Gives the event loop a turn every ``FAIR_CHUNKS`` pieces read, or ``FAIR_SECONDS``: a
    reader whose pieces are all there already never waits otherwise."""

    __slots__ = ("_chunks", "_loop", "_turn")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._turn = self._loop.time()
        self._chunks = 0

    async def after_chunk(self) -> None:
        self._chunks += 1
        if self._chunks % FAIR_CHUNKS == 0 or self._loop.time() - self._turn > FAIR_SECONDS:
            await asyncio.sleep(0)
            self._turn = self._loop.time()
