"""One socket write per event-loop pass on the client side of the gateway.

uvicorn writes every ASGI message to the socket at once: a relayed ``tools/call`` answer went
out as four writes (head, the SSE priming event, the result event, the chunked terminator),
and each write to a loopback or LAN peer can wake that peer. On the 2-core VMs this was
measured on, a write that wakes the peer costs 40 µs or more of CPU on each side. The
protocol here keeps uvicorn's parser and ASGI handling and only changes the transport it
writes to: bytes written during one pass of the event loop are joined and sent together at
the end of that pass (``call_soon``), or as soon as the response is complete, so the answer
above leaves in one write. Nothing waits for more data: a chunk that arrives on its own is
sent on the very next pass, so streams stay unbuffered.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class CoalescingTransport:
    """Wraps a transport: ``write`` collects, the next loop pass flushes once."""

    __slots__ = ("_handle", "_inner", "_loop", "_pending")

    def __init__(self, inner: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._inner = inner
        self._loop = loop
        self._pending: list[bytes] = []
        self._handle: asyncio.Handle | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        self._pending.append(bytes(data))
        if self._handle is None:
            self._handle = self._loop.call_soon(self.flush)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        pending = self._pending
        if not pending:
            return
        self._pending = []
        if self._inner.is_closing():
            return
        self._inner.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self.flush()  # what was written before close() is sent before the FIN
        self._inner.close()

    def write_eof(self) -> None:
        self.flush()
        self._inner.write_eof()

    def get_write_buffer_size(self) -> int:
        return self._inner.get_write_buffer_size() + sum(len(p) for p in self._pending)

    def __getattr__(self, name: str) -> Any:  # everything else is the real transport's
        return getattr(self._inner, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol writing through a :class:`CoalescingTransport`."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        wrapped = CoalescingTransport(transport, self.loop)  # type: ignore[arg-type]
        super().connection_made(wrapped)  # type: ignore[arg-type]

    def on_response_complete(self) -> None:
        # The answer is whole: send it now rather than on the next pass.
        transport = self.transport
        if isinstance(transport, CoalescingTransport):
            transport.flush()
        super().on_response_complete()
