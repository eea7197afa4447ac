"""An upstream answer as ``gateway.upstream.h1`` reads it: the status and headers at once,
the body as it arrives, with back-pressure on the connection (a slow reader pauses the socket
rather than letting chunks pile up without bound)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from gateway.upstream.hop import connection_named, is_hop_by_hop

if TYPE_CHECKING:
    from gateway.upstream.h1 import H1Pool, _Conn

# A slow reader pauses the socket rather than letting chunks pile up without bound.
_PAUSE_AT = 64
#: Chunks under ``_SMALL`` bytes that arrive while ``_GATHER_AT`` others wait unread are
#: gathered into one of at most ``_GATHER``: a body sent a byte a chunk was a queue of one
#: object a byte (some 130 bytes each: 16 MiB of them took the gateway to 1.5 GiB, red-team
#: wave 35). Below that, chunks keep their bounds (a stream's answer told from what follows).
_SMALL = 4096
_GATHER = 64 * 1024
_GATHER_AT = 16
_RESUME_AT = 8
#: A reader is handed at most this much of a chunk at a time: each piece of a stream is
#: split into events and rewritten in one go, between two turns of the loop, and one chunk
#: of 256 KiB held 131,072 blank events (1.7 s of every caller's time, red-team wave 44).
_PIECE = 8 * 1024


class H1Response:
    """An upstream answer: status and headers at once, the body as it arrives.

    ``raw_headers`` holds the message's own headers only (hop-by-hop ones are taken out).
    """

    def __init__(self, conn: _Conn, pool: H1Pool) -> None:
        self.conn = conn
        self.pool = pool
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = False
        self.close_delimited = False  # no length given: the body ends with the connection
        self.complete = False
        self.head: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._chunks: deque[bytes | bytearray | None] = deque()
        self._taken = 0  # what the reader was given of the first chunk (see _PIECE)
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._released = False
        self._headers: dict[str, str] | None = None
        self._discard: asyncio.TimerHandle | None = None  # see release_when_done

    @property
    def headers(self) -> dict[str, str]:
        """Header values by lower-case name (the first of repeated headers)."""
        if self._headers is None:
            out: dict[str, str] = {}
            for name, value in self.raw_headers:
                out.setdefault(name.decode("latin-1").lower(), value.decode("latin-1").strip())
            self._headers = out
        return self._headers

    def take_head(self, status: int, keep_alive: bool) -> None:
        """The final head has been parsed: note its framing, drop hop-by-hop headers."""
        self.status = status
        self.keep_alive = keep_alive
        lowered = [
            (name.decode("latin-1").lower(), name, value) for name, value in self.raw_headers
        ]
        names = {key for key, _, _ in lowered}
        self.close_delimited = "content-length" not in names and "transfer-encoding" not in names
        named = connection_named(v.decode("latin-1") for k, _, v in lowered if k == "connection")
        self.raw_headers = [(n, v) for k, n, v in lowered if not is_hop_by_hop(k, named)]
        if not self.head.done():
            self.head.set_result(None)

    def push(self, chunk: bytes | None) -> None:
        if self._discard is not None:  # nobody reads on: only the end matters
            if chunk is None:
                self._stop_discarding()
            return
        if chunk is not None and len(chunk) < _SMALL and len(self._chunks) >= _GATHER_AT:
            tail = self._chunks[-1]
            if isinstance(tail, bytearray) and len(tail) < _GATHER:
                tail += chunk  # the reader was woken for the tail already
                return
            self._chunks.append(bytearray(chunk))
        else:
            self._chunks.append(chunk)
        if len(self._chunks) >= _PAUSE_AT:
            self.conn.pause()
        self._wake()

    def fail(self, error: BaseException) -> None:
        """The first failure is the one reported; an answer already whole stays whole."""
        if self.complete or self._error is not None:
            return
        if self._discard is not None:
            self._error = error
            self._stop_discarding()
            return
        self._error = error
        if not self.head.done():
            self.head.set_exception(error)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _drained(self) -> None:
        """The reader has caught up: let the sender go on (a paused socket reads again)."""
        self.conn.resume()

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """Body chunks as they come; raises UpstreamIOError if the answer is cut short."""
        while (chunk := await self.next_chunk()) is not None:
            yield chunk

    async def next_chunk(self) -> bytes | None:
        """The next body chunk, None once the answer has ended (ask no more after that).
        Safe to cancel (a timeout around it): a chunk that arrives meanwhile is kept."""
        while True:
            if self._chunks:
                chunk, taken = self._chunks[0], self._taken
                if chunk is not None and len(chunk) - taken > _PIECE:
                    self._taken = taken + _PIECE
                    return bytes(chunk[taken : taken + _PIECE])
                self._chunks.popleft()
                self._taken = 0
                if len(self._chunks) <= _RESUME_AT:
                    self._drained()
                if chunk is not None and (taken or isinstance(chunk, bytearray)):
                    return bytes(chunk[taken:])
                return chunk
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.iter_chunks()])

    def release_when_done(self, within: float = 5.0) -> None:
        """The reader needs no more of this answer (it has what it came for): what is left is
        dropped as it arrives, and the connection goes back to the pool once the answer ends,
        or is dropped if it has not ended within ``within`` seconds. No await; ``close`` does
        nothing meanwhile."""
        if self._released or self._discard is not None:
            return
        self._chunks.clear()
        self._taken = 0
        if self.complete or self._error is not None:
            self.close()
            return
        self._discard = asyncio.get_running_loop().call_later(within, self._stop_discarding)
        self._drained()

    def _stop_discarding(self) -> None:
        if self._discard is not None:
            self._discard.cancel()
            self._discard = None
        self.close()

    def close(self) -> None:
        """Give the connection back if the answer was read whole, else drop it. No await."""
        if self._released or self._discard is not None:
            return
        self._released = True
        conn = self.conn
        conn.response = None
        if self.complete and self.keep_alive and not conn.closed:
            conn.resume()  # an idle connection must see the upstream's close or stray bytes
            self.pool.release(conn)
        else:
            conn.abort()
