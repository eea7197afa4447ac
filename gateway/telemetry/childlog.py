"""A child process's stderr as the gateway's own log lines (stdio upstreams, and the process
the tool catalogue is read from)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from gateway.printable import printable
from gateway.turns import Turns

log = structlog.get_logger("celgate.stdio")

#: A child's stderr becomes the gateway's log lines (``stdio.stderr``): each line cut at this
#: many characters, and at most this many lines a second (the rest counted, then dropped).
STDERR_LINE = 4096
STDERR_LINES_PER_SECOND = 50


class LogBudget:
    """At most ``per_second`` log lines a second of one kind: ``allow`` says whether the next
    may be written; the rest are counted, then told as one ``dropped_event`` line."""

    def __init__(
        self,
        dropped_event: str,
        fields: dict[str, str],
        per_second: int = STDERR_LINES_PER_SECOND,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dropped_event = dropped_event
        self.fields = fields
        self.per_second = per_second
        self.clock = clock
        self.window = -1.0
        self.logged = self.dropped = 0

    def allow(self) -> bool:
        now = self.clock()
        if now - self.window >= 1.0:
            self.flush()
            self.window, self.logged = now, 0
        if self.logged >= self.per_second:
            self.dropped += 1
            return False
        self.logged += 1
        return True

    def flush(self) -> None:
        if self.dropped:
            log.warning(self.dropped_event, **self.fields, lines=self.dropped)
            self.dropped = 0


class StderrLog:
    """A child's stderr as the gateway's own log lines: each line one ``stdio.stderr`` event
    naming its server and child process, control characters escaped, cut at ``STDERR_LINE``
    characters, at most ``STDERR_LINES_PER_SECOND`` lines a second (then one
    ``stdio.stderr_dropped`` with the count). A child can neither forge the gateway's log
    lines nor flood them, and its stderr is always read to the end: a child whose stderr pipe
    fills up stops."""

    def __init__(
        self, server: str, child: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.fields = {"server": server, "child": child}
        self.budget = LogBudget("stdio.stderr_dropped", self.fields, clock=clock)

    async def drain(self, stream: asyncio.StreamReader) -> None:
        partial = bytearray()
        turns = Turns()  # a child flooding its stderr held the loop (red-team wave 37)
        while chunk := await stream.read(65536):
            await turns.after_chunk()
            lines = chunk.split(b"\n")
            for piece in lines[:-1]:
                self._take(partial, piece)
                self.line(bytes(partial))
                partial.clear()
            self._take(partial, lines[-1])
        if partial:
            self.line(bytes(partial))
        self.budget.flush()

    @staticmethod
    def _take(partial: bytearray, piece: bytes) -> None:
        room = STDERR_LINE * 4 - len(partial)  # UTF-8: at most four bytes a character
        if room > 0:
            partial += piece[:room]

    def line(self, raw: bytes) -> None:
        if not raw or raw.isspace() or not self.budget.allow():  # a blank line says nothing
            return
        text = raw.decode(errors="replace").rstrip("\r")
        cut = {"cut": True} if len(text) > STDERR_LINE or len(raw) >= STDERR_LINE * 4 else {}
        log.info("stdio.stderr", **self.fields, line=printable(text[:STDERR_LINE]), **cut)
